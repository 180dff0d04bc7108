"""
Text in, tokens out: trains (or reuses) a SentencePiece tokenizer and writes the token files
train.py reads: data/<dataset>/ train.bin, val.bin (+ test.bin for wikitext103), tokenizer.model,
meta.json. Stages: load documents -> train a tokenizer on a random sample -> tokenize (streamed) ->
write tokens; machinery: corpus.py, pystdlib.py, named_datasets.py; formats: files.py, chat.py.

    python prepare.py                                          # built-in corpus, no network: ~10 s
    python prepare.py --dataset=tinyshakespeare                # a named dataset, downloaded once
    python prepare.py --input='notes/**/*.md' --dataset=notes  # your own text
    python prepare.py --dataset=pystdlib-chat                  # conversations, to fine-tune on
    python prepare.py --dataset=fineweb-edu --shards=1         # web text: 1 of 1,822 shards

Corpora (--dataset=NAME)
  pystdlib         (default) the standard library's source, a module a document (~12 MB, no tests),
                   and the pydoc help topics: code and English, always on disk
  tinyshakespeare  char-rnn's 1.1 MB of Shakespeare; val is its last 10%, as in nanoGPT
  tinystories      TinyStoriesV2-GPT4 (2.2 GB), a story a document, its own train/valid files
  wikitext103      WikiText-103 raw (540 MB), an article a document, its own train/valid/test
  fineweb-edu      FineWeb-Edu as nanochat shards it: 1,823 parquet files of ~100 MB, the last
                   val; --shards=N trains on the first N. Needs pyarrow.
  pystdlib-chat    conversations: ~12,000 questions on the standard library answered from its own
                   docstrings and signatures, built here in seconds; every 20th module is val
  dolly-chat       conversations: databricks-dolly-15k, 15k human-written instructions and replies
  --input=...      a file, folder or glob: .txt/.md files and .jsonl rows {"text": ...} are a
                   document each; .jsonl rows {"messages": [...]} are conversations
Conversations fine-tune a base: the loss is on the replies, and the tokenizer is the base's. Without
a split of their own, every 1/val_fraction-th document is val (a lone one: its last val_fraction).
Downloads are cached in data/<dataset>/raw/, resumed when cut, and checked by SHA-256 or size.
"""
import glob
import hashlib
import json
import os
import sys
import time

import sentencepiece as spm

import chat
import corpus
from configurator import configure
from files import write_atomic, write_tokens
from named_datasets import DATASETS, VOCAB_SIZES, check_settings, download_files
from pystdlib import stdlib_documents, stdlib_files

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
vocab_size = 0  # size of the tokenizer trained here; 0: named_datasets.VOCAB_SIZES[dataset] or 4096
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
mirrors = {"url": url, "train_url": train_url, "val_url": val_url}
check_settings(dataset, input, data_dir, mirrors, val_fraction, val_docs, shards)
vocab_size, out_dir = vocab_size or VOCAB_SIZES.get(dataset, 4096), os.path.join(data_dir, dataset)
for leftover in glob.glob(os.path.join(out_dir, "*.tmp")):  # of a run killed while writing
    os.remove(leftover)

# 1. the documents (or conversations) --------------------------------------------------------------
spec = DATASETS.get(dataset, {})
splits = spec.get("splits", ("train", "val"))
paths = (corpus.input_files(input) if input  # listed once: outputs may match a glob
         else stdlib_files() if dataset == "pystdlib" else [])
chats = "conversations" in spec or any(chat.is_chat_file(p) for p in paths)
if chats and not tokenizer:  # a chat set fine-tunes a base, so its tokens must be the base's
    tokenizer = corpus.base_tokenizer(data_dir, input or dataset)
raw = download_files(spec, os.path.join(out_dir, "raw"), mirrors, shards)  # once, if any
if chats:  # all read and checked (a bad row: one line naming it) before anything is written
    pairs = (spec["conversations"](raw) if spec else corpus.split_documents(
        (messages for p in paths for messages in chat.read_conversations(p)), val_fraction))
    documents = corpus.by_split(pairs, splits).get
    if not documents("train"):
        sys.exit(f"error: no conversations in {input or dataset}")
elif spec:  # a named dataset's own split, read lazily, again for each split
    documents = lambda split: spec["read"](raw, split)  # noqa: E731
else:  # the built-in corpus or the user's text, read lazily, again for each split
    read = corpus.input_documents if input else stdlib_documents
    documents = lambda split: (  # noqa: E731
        t for s, t in corpus.split_documents(read(paths), val_fraction) if s == split)

# 2. the tokenizer: trained on a random sample of the train documents, or reused -------------------
start = time.time()
if not chats:  # conversations take the base's
    sample, n_docs = corpus.sample_documents(documents("train"), tokenizer_sample_bytes, seed)
    if n_docs == 0:
        sys.exit(f"error: no text in {input or dataset}: no documents, or only empty ones")
model = corpus.load_tokenizer(tokenizer) if tokenizer else corpus.train_tokenizer(
    corpus.sample_lines(sample, tokenizer_sample_bytes), vocab_size, num_threads)
sample = None  # frees its memory
sp, sha256 = spm.SentencePieceProcessor(model_proto=model), hashlib.sha256(model).hexdigest()
print(f"tokenizer: {sp.get_piece_size()} pieces, {'from ' + tokenizer if tokenizer else 'trained'} "
      f"({time.time() - start:.1f} s)", flush=True)

# 3. the tokens: each split streamed through the tokenizer into its token file ---------------------
stats = {split: dict(name=split, docs=0, bytes=0, loss_tokens=0, seconds=0.0) for split in splits}
if chats:  # rendered in full first: a conversation the tokenizer cannot render leaves no files
    chunks = {split: list(corpus.tokenize_chats(documents(split), sp, stats[split], tokenizer))
              for split in splits}
else:  # --val_docs: val's first documents only
    chunks = {split: corpus.tokenize(documents(split), sp, stats[split], num_threads,
                                     max_docs=val_docs if split == "val" else 0)
              for split in splits}
os.makedirs(out_dir, exist_ok=True)
meta = dict(dataset=dataset, kind="chat" if chats else "text", vocab_size=sp.get_piece_size(),
            tokenizer_sha256=sha256, splits={}, settings=settings)
for split in splits:
    n_tokens = write_tokens(os.path.join(out_dir, f"{split}.bin"), chunks[split],
                            sp.get_piece_size(), None, sha256, chats)
    meta["splits"][split] = corpus.split_written(stats[split], n_tokens, chats)
# after the tokens: their header names its sha256
write_atomic(os.path.join(out_dir, "tokenizer.model"), model)
write_atomic(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=2).encode())
n_bytes, seconds = (sum(s[k] for s in meta["splits"].values()) for k in ("bytes", "seconds"))
print(f"wrote {out_dir}/: {', '.join(f'{k}.bin' for k in splits)}, tokenizer.model, meta.json; "
      f"tokenized {n_bytes / 1e6:,.1f} MB at {n_bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s; "
      f"{time.time() - start:.0f} s in all", flush=True)
