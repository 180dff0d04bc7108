"""
Text in, tokens out: trains (or reuses) a SentencePiece tokenizer and writes the token files
train.py reads.

    python prepare.py                                          # built-in corpus, no network: ~10 s
    python prepare.py --dataset=tinyshakespeare                # a named dataset, downloaded once
    python prepare.py --input='notes/**/*.md' --dataset=notes  # your own text
    python prepare.py --dataset=pystdlib-chat                  # conversations, to fine-tune on
    python prepare.py --dataset=fineweb-edu --shards=1         # web text: 1 of 1,822 shards

Reads the corpus; writes data/<dataset>/: tokenizer.model, train.bin, val.bin (+ test.bin for
wikitext103), meta.json. Stages: load documents -> train a tokenizer on a random sample -> tokenize
(streamed) -> write tokens.
The stages' machinery is in corpus.py, the token-file format in files.py, the chat format in
chat.py.

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
  fineweb-edu      FineWeb-Edu as nanochat distributes it (karpathy/fineweb-edu-100b-shuffle):
                   1,823 shuffled parquet shards of ~100 MB (~250M characters); --shards=N trains
                   on the first N, and the last shard is val, as in nanochat. Needs pyarrow.
  --input=...      a file, folder or glob: .txt/.md files are one document each, .jsonl rows
                   {"text": ...} are too; .jsonl rows {"messages": [...]} are conversations.
Conversations, to fine-tune a base on (chat token files: the loss is on the replies only; the
tokenizer is the base's, data/pystdlib/tokenizer.model unless --tokenizer= says otherwise):
  pystdlib-chat    ~12,000 questions on the standard library answered from its own docstrings
                   and signatures, built here in seconds; every 20th module is val.
  dolly-chat       databricks-dolly-15k, 15k human-written instructions and replies (13 MB).
Without a split of their own, documents (not bytes) are split, so no text is in both train and val:
every 1/val_fraction-th document goes to val. A single document is split by text instead: its last
val_fraction is val.
Downloads are cached in data/<dataset>/raw/, resumed when cut, and checked against a known SHA-256
or size.
"""
import glob
import hashlib
import itertools
import json
import os
import sys
import time

import sentencepiece as spm

import chat
import corpus
from configurator import configure
from errors import Error
from files import write_atomic, write_tokens

# -----------------------------------------------------------------------------
# output folder data/<dataset>/ and corpus: pystdlib, tinyshakespeare, tinystories, wikitext103,
# fineweb-edu; conversations: pystdlib-chat, dolly-chat
dataset = "pystdlib"
# your own text instead: a file, folder or glob of .txt/.md (a document each) or .jsonl
# ({"text": ...} rows; {"messages": [...]} rows are conversations)
input = ""
# reuse this SentencePiece .model (e.g. Llama 2's tokenizer.model) instead of training one;
# conversations take data/pystdlib/tokenizer.model (the default run's) unless this says otherwise
tokenizer = ""
# size of the tokenizer trained here; 0: the dataset's own (corpus.VOCAB_SIZES), 4096 for --input
vocab_size = 0
# the tokenizer learns from a random sample of documents this big: bounds its time
tokenizer_sample_bytes = 20_000_000
# share of documents held out for validation (named datasets bring their own split)
val_fraction = 0.05
# >0: keep only the first this many val documents: train.py's final pass over a whole fineweb-edu
# val shard (~250M characters) takes a small model hours on a CPU
val_docs = 0
shards = 1  # fineweb-edu: train on its first this many shards (~100 MB each, 1,822 in all)
data_dir = "data"
seed = 1337  # picks the tokenizer's sample
num_threads = os.cpu_count() or 1  # for tokenizer training and encoding
# download from this mirror instead: the file's URL (tinyshakespeare, wikitext103, dolly-chat), or
# the folder that holds shard_00000.parquet ... (fineweb-edu)
url = ""
train_url = ""  # tinystories' train file from a mirror
val_url = ""  # tinystories' valid file from a mirror
# -----------------------------------------------------------------------------
settings = configure(globals())

# the settings -------------------------------------------------------------------------------------
built_in = ("pystdlib", "pystdlib-chat")
names = ", ".join([*built_in, *corpus.DATASETS])
if input and (dataset in built_in or dataset in corpus.DATASETS):
    sys.exit(f"error: --input needs --dataset=NAME, a name of your own for its folder "
             f"{data_dir}/NAME (not one of {names})")
if not input and dataset not in built_in and dataset not in corpus.DATASETS:
    sys.exit(f"error: unknown --dataset={dataset}; pick one of {names}, or bring your own text "
             "with --input=")
mirrors = {"url": url, "train_url": train_url, "val_url": val_url}
for setting, value in mirrors.items():
    if value and (input or setting not in corpus.DATASETS.get(dataset, {}).get("files", {})):
        sys.exit(f"error: --{setting} does not apply to {'--input' if input else dataset}")
if not 0 < val_fraction < 1:
    sys.exit(f"error: --val_fraction={val_fraction} must be between 0 and 1")
if val_docs < 0:
    sys.exit(f"error: --val_docs={val_docs} must be at least 0 (0 keeps every val document)")
n_shards = corpus.DATASETS.get(dataset, {}).get("shards")
if shards != 1 and (input or not n_shards):
    sys.exit(f"error: --shards does not apply to {'--input' if input else dataset}, only to "
             "fineweb-edu")
if n_shards and not 1 <= shards < n_shards:
    sys.exit(f"error: --shards={shards} must be between 1 and {n_shards - 1:,}: {dataset} has "
             f"{n_shards:,} shards, and the last is val")
vocab_size = vocab_size or corpus.VOCAB_SIZES.get(dataset, 4096)
out_dir = os.path.join(data_dir, dataset)
# from a run that was killed while writing
for leftover in glob.glob(os.path.join(out_dir, "*.tmp")):
    os.remove(leftover)

# 1. the documents (or conversations): read lazily, again for each split ---------------------------
# listed once: outputs may match a glob
paths = (corpus.input_files(input) if input else corpus.stdlib_files() if dataset == "pystdlib"
         else [])
spec = corpus.DATASETS.get(dataset, {})
splits = spec.get("splits", ("train", "val"))
chats = (dataset == "pystdlib-chat" or spec.get("chat", False)
         or any(chat.is_chat_file(p) for p in paths))
base = os.path.join(data_dir, "pystdlib", "tokenizer.model")
if chats and not tokenizer:  # a chat set fine-tunes a base, so its tokens must be the base's
    if not os.path.isfile(base):
        sys.exit(f"error: {input or dataset} holds conversations, to fine-tune a base model on, "
                 f"so it takes the base's tokenizer, and {base} (the default run's) is not there; "
                 f"run `python prepare.py` first, or pass --tokenizer=PATH")
    tokenizer = base
if spec:
    if n_shards:  # parquet: say what is missing before downloading 100 MB files
        corpus.import_pyarrow()
    raw = {}
    for setting, (name, default_url, size, sha256) in spec["files"].items():
        if not n_shards:
            path = os.path.join(out_dir, "raw", name)
            raw[setting] = corpus.download(mirrors[setting] or default_url, path, size, sha256,
                                           setting)
            continue
        raw[setting] = []  # a file a shard: the first --shards for train, then the last for val
        for index in [*range(shards), n_shards - 1]:
            shard = name.format(index=index)
            source = (mirrors[setting].rstrip("/") + "/" + shard if mirrors[setting]
                      else default_url.format(index=index))
            raw[setting].append(corpus.download(source, os.path.join(out_dir, "raw", shard), size,
                                                sha256, setting))
    documents = lambda split: spec["read"](raw, split)  # noqa: E731
elif not chats:
    read = corpus.input_documents if input else corpus.stdlib_documents
    documents = lambda split: (  # noqa: E731
        t for s, t in corpus.split_documents(read(paths), val_fraction) if s == split)
if chats:  # conversations: all read and checked before anything is written
    conversations = {split: [] for split in splits}
    if dataset == "pystdlib-chat":
        pairs = corpus.stdlib_chats(corpus.stdlib_modules())
    elif input:
        pairs = corpus.split_documents((c for p in paths for c in chat.read_conversations(p)),
                                       val_fraction)
    else:
        pairs = ((split, c) for split in splits for c in documents(split))
    for split, messages in pairs:  # a bad row: errors.Error, one line naming its file and line
        conversations[split].append(messages)
    documents = conversations.get

# 2. the tokenizer: trained on a random sample of the train documents, or reused -------------------
start = time.time()
if chats:
    if not conversations["train"]:
        sys.exit(f"error: no conversations in {input or dataset}")
else:
    sample, n_docs = corpus.sample_documents(documents("train"), tokenizer_sample_bytes, seed)
    if n_docs == 0:
        sys.exit(f"error: no text in {input or dataset}: no documents, or only empty ones")
if tokenizer:
    model = corpus.load_tokenizer(tokenizer)
else:
    model = corpus.train_tokenizer(corpus.sample_lines(sample, tokenizer_sample_bytes), vocab_size,
                                   num_threads)
sample = None  # frees its memory
sp, sha256 = spm.SentencePieceProcessor(model_proto=model), hashlib.sha256(model).hexdigest()
print(f"tokenizer: {sp.get_piece_size()} pieces, {'from ' + tokenizer if tokenizer else 'trained'} "
      f"({time.time() - start:.1f} s)", flush=True)

# 3. the tokens: each split streamed through the tokenizer into its token file ---------------------
stats = {split: dict(name=split, docs=0, bytes=0, loss_tokens=0, seconds=0.0) for split in splits}
if chats:  # rendered in full first: a conversation the tokenizer cannot render leaves no files
    try:
        chunks = {split: list(corpus.tokenize_chats(documents(split), sp, stats[split]))
                  for split in splits}
    except Error as e:  # chat.render_conversation: the tokenizer cannot mark the replies
        sys.exit(f"error: {tokenizer}: {e}")
else:
    chunks = {split: corpus.tokenize(itertools.islice(documents(split), val_docs or None)
                                     if split == "val" else documents(split),
                                     sp, stats[split], num_threads)
              for split in splits}
os.makedirs(out_dir, exist_ok=True)
meta = dict(dataset=dataset, kind="chat" if chats else "text", vocab_size=sp.get_piece_size(),
            tokenizer_sha256=sha256, splits={}, settings=settings)
for split in splits:
    n_tokens = write_tokens(os.path.join(out_dir, f"{split}.bin"), chunks[split],
                            sp.get_piece_size(), None, sha256, chats)
    st = stats[split]
    if chats:
        corpus.status(f"{split}: {st['docs']:,} conversations -> {n_tokens:,} tokens, "
                      f"{st['loss_tokens']:,} of them replies' ({st['bytes'] / 1e6:,.2f} MB of "
                      f"text) in {st['seconds']:.1f} s", done=True)
    else:
        corpus.status(f"{split}: {st['docs']:,} docs, {st['bytes'] / 1e6:,.1f} MB -> "
                      f"{n_tokens:,} tokens ({st['bytes'] / max(n_tokens, 1):.2f} bytes/token) in "
                      f"{st['seconds']:.1f} s, "
                      f"{st['bytes'] / 1e6 / max(st['seconds'], 1e-9):.1f} MB/s", done=True)
    meta["splits"][split] = dict(docs=st["docs"], tokens=n_tokens, bytes=st["bytes"],
                                 seconds=st["seconds"],
                                 **({"loss_tokens": st["loss_tokens"]} if chats else {}))
# after the tokens: their header names its sha256
write_atomic(os.path.join(out_dir, "tokenizer.model"), model)
write_atomic(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=2).encode())
total_bytes = sum(s["bytes"] for s in meta["splits"].values())
total_seconds = sum(s["seconds"] for s in meta["splits"].values())
print(f"wrote {out_dir}/: {', '.join(f'{k}.bin' for k in splits)}, tokenizer.model, meta.json; "
      f"tokenized {total_bytes / 1e6:,.1f} MB at "
      f"{total_bytes / 1e6 / max(total_seconds, 1e-9):.1f} MB/s; "
      f"{time.time() - start:.0f} s in all", flush=True)
