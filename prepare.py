"""
Text in, tokens out: trains (or reuses) a SentencePiece tokenizer and writes the token files
train.py reads.

    python prepare.py                                          # built-in corpus, no network: ~10 s
    python prepare.py --dataset=tinyshakespeare                # a named dataset, downloaded once
    python prepare.py --input='notes/**/*.md' --dataset=notes  # your own text

Reads the corpus; writes data/<dataset>/: tokenizer.model, train.bin, val.bin (+ test.bin for
wikitext103), meta.json. Stages: load documents -> train a tokenizer on a random sample -> tokenize
(streamed) -> write tokens.
The stages' machinery is in corpus.py, the token-file format in files.py.

Corpora
  pystdlib         (default) the Python standard library's own source, which ships with every
                   Python: each module is a document (~730 modules, ~12 MB on 3.11), test suites
                   and site-packages left out, plus the ~80 pydoc help topics (prose). Code and
                   English, always on disk, same for everyone on one Python.
  tinyshakespeare  char-rnn's 1.1 MB of Shakespeare; one document, so val is its last 10%, as in
                   nanoGPT.
  tinystories      TinyStoriesV2-GPT4 (2.2 GB), one story per document, the dataset's own
                   train/valid files.
  wikitext103      WikiText-103 raw (540 MB), one article per document, the dataset's own
                   train/valid/test split.
  --input=...      a file, folder or glob: .txt/.md files are one document each, .jsonl rows
                   {"text": ...} are too.
Without a split of their own, documents (not bytes) are split, so no text is in both train and val:
every 1/val_fraction-th document goes to val. A single document is split by text instead: its last
val_fraction is val.
Downloads are cached in data/<dataset>/raw/, resumed when cut, and checked against a known SHA-256
or size.
"""
import glob
import hashlib
import json
import os
import sys
import time

import sentencepiece as spm

import corpus
from configurator import configure
from files import write_atomic, write_tokens

# -----------------------------------------------------------------------------
# output folder data/<dataset>/ and corpus: pystdlib, tinyshakespeare, tinystories, wikitext103
dataset = "pystdlib"
# your own text instead: a file, folder or glob of .txt/.md (a document each) or .jsonl
# ({"text": ...} rows)
input = ""
# reuse this SentencePiece .model (e.g. Llama 2's tokenizer.model) instead of training one
tokenizer = ""
# size of the tokenizer trained here; 0: the dataset's own (corpus.VOCAB_SIZES), 4096 for --input
vocab_size = 0
# the tokenizer learns from a random sample of documents this big: bounds its time
tokenizer_sample_bytes = 20_000_000
# share of documents held out for validation (named datasets bring their own split)
val_fraction = 0.05
data_dir = "data"
seed = 1337  # picks the tokenizer's sample
num_threads = os.cpu_count() or 1  # for tokenizer training and encoding
url = ""  # download from this mirror instead (tinyshakespeare, wikitext103)
train_url = ""  # tinystories' train file from a mirror
val_url = ""  # tinystories' valid file from a mirror
# -----------------------------------------------------------------------------
settings = configure(globals())

# the settings -------------------------------------------------------------------------------------
names = ", ".join(["pystdlib", *corpus.DATASETS])
if input and (dataset == "pystdlib" or dataset in corpus.DATASETS):
    sys.exit(f"error: --input needs --dataset=NAME, a name of your own for its folder "
             f"{data_dir}/NAME (not one of {names})")
if not input and dataset != "pystdlib" and dataset not in corpus.DATASETS:
    sys.exit(f"error: unknown --dataset={dataset}; pick one of {names}, or bring your own text "
             "with --input=")
mirrors = {"url": url, "train_url": train_url, "val_url": val_url}
for setting, value in mirrors.items():
    if value and (input or setting not in corpus.DATASETS.get(dataset, {}).get("files", {})):
        sys.exit(f"error: --{setting} does not apply to {'--input' if input else dataset}")
if not 0 < val_fraction < 1:
    sys.exit(f"error: --val_fraction={val_fraction} must be between 0 and 1")
vocab_size = vocab_size or corpus.VOCAB_SIZES.get(dataset, 4096)
out_dir = os.path.join(data_dir, dataset)
# from a run that was killed while writing
for leftover in glob.glob(os.path.join(out_dir, "*.tmp")):
    os.remove(leftover)

# 1. the documents: read lazily, again for each split ----------------------------------------------
if input or dataset == "pystdlib":
    # listed once: outputs may match a glob
    paths = corpus.input_files(input) if input else corpus.stdlib_files()
    read = corpus.input_documents if input else corpus.stdlib_documents
    splits = ("train", "val")
    documents = lambda split: (  # noqa: E731
        t for s, t in corpus.split_documents(read(paths), val_fraction) if s == split)
else:
    spec, raw = corpus.DATASETS[dataset], {}
    for setting, (name, default_url, size, sha256) in spec["files"].items():
        path = os.path.join(out_dir, "raw", name)
        raw[setting] = corpus.download(mirrors[setting] or default_url, path, size, sha256, setting)
    splits = spec["splits"]
    documents = lambda split: spec["read"](raw, split)  # noqa: E731

# 2. the tokenizer: trained on a random sample of the train documents, or reused -------------------
start = time.time()
sample, n_docs = corpus.sample_documents(documents("train"), tokenizer_sample_bytes, seed)
if n_docs == 0:
    sys.exit(f"error: no text in {input or dataset}: no documents, or only empty ones")
if tokenizer:
    model = corpus.load_tokenizer(tokenizer)
else:
    model = corpus.train_tokenizer(corpus.sample_lines(sample, tokenizer_sample_bytes), vocab_size,
                                   num_threads)
del sample
sp, sha256 = spm.SentencePieceProcessor(model_proto=model), hashlib.sha256(model).hexdigest()
print(f"tokenizer: {sp.get_piece_size()} pieces, {'from ' + tokenizer if tokenizer else 'trained'} "
      f"({time.time() - start:.1f} s)", flush=True)

# 3. the tokens: each split streamed through the tokenizer into its token file ---------------------
os.makedirs(out_dir, exist_ok=True)
meta = dict(dataset=dataset, vocab_size=sp.get_piece_size(), tokenizer_sha256=sha256, splits={},
            settings=settings)
for split in splits:
    stats = dict(name=split, docs=0, bytes=0, seconds=0.0)
    n_tokens = write_tokens(os.path.join(out_dir, f"{split}.bin"),
                            corpus.tokenize(documents(split), sp, stats, num_threads),
                            sp.get_piece_size(), None, sha256)
    corpus.status(f"{split}: {stats['docs']:,} docs, {stats['bytes'] / 1e6:,.1f} MB -> "
                  f"{n_tokens:,} tokens ({stats['bytes'] / max(n_tokens, 1):.2f} bytes/token) in "
                  f"{stats['seconds']:.1f} s, "
                  f"{stats['bytes'] / 1e6 / max(stats['seconds'], 1e-9):.1f} MB/s", done=True)
    meta["splits"][split] = dict(docs=stats["docs"], tokens=n_tokens, bytes=stats["bytes"],
                                 seconds=stats["seconds"])
# after the tokens: their header names its sha256
write_atomic(os.path.join(out_dir, "tokenizer.model"), model)
write_atomic(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=2).encode())
total_bytes = sum(s["bytes"] for s in meta["splits"].values())
total_seconds = sum(s["seconds"] for s in meta["splits"].values())
print(f"wrote {out_dir}/: {', '.join(f'{k}.bin' for k in splits)}, tokenizer.model, meta.json; "
      f"tokenized {total_bytes / 1e6:,.1f} MB at "
      f"{total_bytes / 1e6 / max(total_seconds, 1e-9):.1f} MB/s; "
      f"{time.time() - start:.0f} s in all", flush=True)
