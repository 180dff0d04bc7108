"""
Text to tokens, the machinery of prepare.py: the corpora (the built-in one, the named datasets and
their downloads, the user's own files), their split into train and val, and SentencePiece training
and encoding; and conversations (pystdlib-chat, dolly-chat, the user's .jsonl) to tokens with the
flags that say where the loss is (chat.py has the format).

Tokenizer: SentencePiece BPE, Llama conventions (unk 0, BOS 1, EOS 2, no pad, byte fallback), so
any text encodes and decode(encode(text)) == text, whitespace included (except U+2581 '▁', which
SentencePiece reserves for space). Each document becomes [BOS] tokens [EOS].
"""
import collections
import contextlib
import glob
import heapq
import http.client
import importlib
import inspect
import io
import itertools
import json
import math
import os
import pkgutil
import random
import re
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import warnings
import zipfile

import numpy as np
import sentencepiece as spm

import chat
from errors import Error
from files import LOSS, START, sha256_file

# ----------------------------------------------------------------------------- documents

STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def stdlib_files():
    """The standard library's modules, sorted: no test suites, installed packages or build
    configuration."""
    files = []
    for dirpath, dirnames, filenames in os.walk(sysconfig.get_paths()["stdlib"]):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_SKIP and not d.startswith("config-")]
        files += [os.path.join(dirpath, f) for f in filenames
                  if f.endswith(".py") and not f.startswith("test_")]
    # pydoc_data/topics.py is the help topics as one Python dict; they come as documents of their
    # own below
    return sorted(f for f in files if not f.endswith(os.path.join("pydoc_data", "topics.py")))


def stdlib_documents(files):
    from pydoc_data.topics import topics
    for path in files:
        # the built-in corpus must never fail to load
        with open(path, encoding="utf-8", errors="replace") as f:
            yield f.read()
    for key in sorted(topics):
        yield topics[key]


def input_files(pattern):
    if os.path.isdir(pattern):  # a folder: only what is text for sure
        files = [p for p in glob.glob(os.path.join(pattern, "**", "*"), recursive=True)
                 if p.endswith((".txt", ".md", ".jsonl")) and os.path.isfile(p)]
        if not files:
            raise Error(f"--input={pattern}: no .txt, .md or .jsonl files in that folder")
    elif os.path.isfile(pattern):
        files = [pattern]
    else:
        files = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        if not files:
            raise Error(f"--input={pattern}: no such file or folder, and no file matches it "
                        "as a glob")
    return sorted(files)


def input_documents(files):
    for path in files:
        try:
            # universal newlines: Windows line ends become \n
            with open(path, encoding="utf-8") as f:
                if not path.endswith(".jsonl"):
                    yield f.read()
                    continue
                for i, line in enumerate(f, 1):
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                            raise Error(f"{path}:{i}: a .jsonl row must be an object with a "
                                        "\"text\" string")
                        yield row["text"]
        except UnicodeDecodeError:
            raise Error(f"{path} is not UTF-8 text; convert it (e.g. iconv -t utf-8) or leave "
                        "it out of --input")
        except json.JSONDecodeError as e:
            raise Error(f"{path}:{i}: not JSON ({e.msg}); "
                        ".jsonl wants one JSON object per line")


def split_documents(texts, val_fraction):
    """Yield (split, text): document i (from 1) goes to val when floor(i * val_fraction) grows.

    That spreads val evenly through the corpus and, if the corpus has two documents or more, val
    gets at least one (the last, when the fraction rounds to none). A lone document cannot be split
    that way, so its last val_fraction of text becomes val instead, as nanoGPT does with
    Shakespeare. Conversations (lists of messages) split the same way, a lone one to train.
    """
    held, n, n_val = None, 0, 0
    for text in texts:
        if isinstance(text, str) and not text.strip():
            continue
        if held:
            yield held
        n += 1
        to_val = math.floor(n * val_fraction) > n_val
        n_val += to_val
        held = ("val" if to_val else "train", text)
    if (n == 1 and isinstance(held[1], str)
            and 0 < (cut := int(len(held[1]) * (1 - val_fraction))) < len(held[1])):
        yield "train", held[1][:cut]
        yield "val", held[1][cut:]
    elif held:
        yield ("val", held[1]) if n_val == 0 and n > 1 else held


def by_split(pairs, splits):
    """{split: [document]} of (split, document) pairs, read in one pass."""
    documents = {split: [] for split in splits}
    for split, document in pairs:
        documents[split].append(document)
    return documents


# ----------------------------------------------------------------------------- tokenizer

def sample_documents(texts, max_bytes, seed):
    """A uniform random sample of documents of at most max_bytes (at least one document); returns
    (sample, n_docs).

    Every document draws a random key and the smallest keys that fit are kept, in one pass with
    bounded memory, so the sample covers the whole corpus rather than its first files.
    """
    rng, heap, total, seen, n = random.Random(seed), [], 0, 0, 0
    for n, text in enumerate(texts, 1):
        size = len(text.encode("utf-8"))
        heapq.heappush(heap, (-rng.random(), n, size, text))
        total, seen = total + size, seen + size
        while total > max_bytes and len(heap) > 1:
            total -= heapq.heappop(heap)[2]
        status(f"sampling text for the tokenizer: {n:,} docs, {seen / 1e6:,.1f} MB read")
    status(f"sampling text for the tokenizer: {n:,} docs, {seen / 1e6:,.1f} MB read", done=True)
    return [text for *_, text in sorted(heap, key=lambda e: e[1])], n


def sample_lines(sample, max_bytes):
    """The sample as the lines SentencePiece learns from: no piece can then contain a newline (see
    tokenize)."""
    for text in sample:
        for line in text.split("\n"):
            if (max_bytes := max_bytes - len(line) - 1) < 0:
                return
            yield line


def train_tokenizer(lines, vocab_size, num_threads=os.cpu_count() or 1):
    """Train SentencePiece BPE on an iterable of lines; returns the model file's bytes."""
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, model_type="bpe",
            # below its 3 special pieces it fails before naming the smallest
            vocab_size=max(vocab_size, 3),
            # Llama's ids, so its tokenizer.model can stand in
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            byte_fallback=True,  # an unseen character becomes its UTF-8 bytes, never <unk>
            # lossless: keep text as is (no NFKC, no squeezed spaces, no space added in front), and
            # let runs of spaces be pieces of their own, which is what indentation is made of
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, allow_whitespace_only_pieces=True,
            # as Llama: a number is its digits, no vocabulary spent on particular numbers
            split_digits=True,
            max_sentence_length=1 << 16,  # long lines (a WikiText paragraph) are skipped by default
            num_threads=num_threads, minloglevel=2)
    except RuntimeError as e:
        msg = str(e)
        if m := re.search(r"smaller than required_chars\. \d+ vs (\d+)", msg):
            raise Error(f"--vocab_size={vocab_size} is too small for this corpus: its "
                        f"characters, the 256 byte pieces and the special tokens need {m[1]}; "
                        f"use --vocab_size={m[1]} or more")
        if m := re.search(r"value <= (\d+)", msg):
            raise Error(f"--vocab_size={vocab_size} is too large for this corpus: its "
                        f"tokenizer sample yields at most {m[1]} pieces; lower --vocab_size, or "
                        "add text / raise --tokenizer_sample_bytes")
        raise Error(f"SentencePiece could not train a tokenizer: {msg.splitlines()[0]}")
    return model.getvalue()


def load_tokenizer(path):
    """Read a given SentencePiece model and check it can be used here; returns its bytes."""
    if not os.path.isfile(path):
        raise Error(f"--tokenizer={path}: no such file")
    with open(path, "rb") as f:
        model = f.read()
    try:
        sp = spm.SentencePieceProcessor(model_proto=model)
    except RuntimeError:
        raise Error(f"--tokenizer={path} is not a SentencePiece model (a tokenizer.model file)")
    if sp.bos_id() < 0 or sp.eos_id() < 0:
        raise Error(f"--tokenizer={path} has no BOS or EOS token, which mark where documents "
                    "start and end")
    return model


def base_tokenizer(data_dir, name):
    """The path of the base's tokenizer, which conversations take: data/pystdlib/tokenizer.model."""
    base = os.path.join(data_dir, "pystdlib", "tokenizer.model")
    if not os.path.isfile(base):
        raise Error(f"{name} holds conversations, to fine-tune a base model on, so it takes the "
                    f"base's tokenizer, and {base} (the default run's) is not there; run "
                    "`python prepare.py` first, or pass --tokenizer=PATH")
    return base


def segment_chars(sp):
    """How long a piece of a document may be encoded alone, or None if documents must be encoded
    whole.

    Cutting bounds memory however long a document is, keeps all threads busy, and is a little
    faster per byte. A document cut after a newline encodes exactly as when whole if no piece spans
    a newline and nothing is added in front of a text (a dummy prefix, as Llama's tokenizer adds).
    Ours are trained so; others are probed.
    """
    probe = ["def f(x):\n", "    return x  \n", "\n", "\tb c\n", "a"]
    exact = sp.encode("".join(probe)) == [t for part in probe for t in sp.encode(part)]
    newline_pieces = any("\n" in sp.id_to_piece(i) for i in range(sp.get_piece_size())
                         if not sp.is_byte(i))
    return 2048 if exact and not newline_pieces else None


# ----------------------------------------------------------------------------- tokenize

def tokenize(texts, sp, stats, num_threads=os.cpu_count() or 1, chunk_chars=1 << 22, max_docs=0):
    """Yield (tokens, n_bytes) chunks of [BOS] + tokens + [EOS] per text, encoding ~chunk_chars of
    text per call; max_docs > 0: of the first this many texts only, no more read.

    Long texts are cut into pieces (see segment_chars), so memory stays bounded by the chunk and the
    longest text; stats gets docs, bytes and seconds as they go.
    """
    bos, eos, size = sp.bos_id(), sp.eos_id(), segment_chars(sp)
    pending, n_chars, start = [], 0, time.time()  # (text piece, starts a document, ends one)

    def encode():
        out, n_bytes = [], 0
        for (piece, first, last), ids in zip(pending, sp.encode([p for p, _, _ in pending],
                                                                num_threads=num_threads)):
            out += [bos, *ids] if first else ids
            if last:
                out.append(eos)
                stats["docs"] += 1
            n_bytes += len(piece.encode("utf-8"))
        stats["bytes"] += n_bytes
        stats["seconds"] = time.time() - start
        mb = stats["bytes"] / 1e6
        status(f"{stats['name']}: {stats['docs']:,} docs, {mb:,.1f} MB, "
               f"{mb / stats['seconds']:.1f} MB/s")
        return np.array(out, dtype=np.uint32), n_bytes

    for text in itertools.islice(texts, max_docs or None):
        for i, (piece, last) in enumerate(cut_after_newlines(text, size or len(text))):
            pending.append((piece, i == 0, last))
            n_chars += len(piece)
            if n_chars >= chunk_chars:
                yield encode()
                pending, n_chars = [], 0
    if pending:
        yield encode()


def cut_after_newlines(text, size):
    """(piece, is_last) for pieces of text of about `size` characters, each ending with a newline
    but the last."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        yield text[start:end], end == len(text)
        start = end


def tokenize_chats(conversations, sp, stats, tokenizer):
    """Yield (tokens, flags, n_bytes) a conversation: chat.render_conversation's ids, LOSS where
    its mask is 1 and START on its first BOS, and the size of its replies' text; stats gets docs,
    bytes, loss_tokens and seconds as they go. An Error names `tokenizer`, sp's file."""
    start = time.time()
    for messages in conversations:
        try:
            ids, mask = chat.render_conversation(sp, messages)
        except Error as e:
            raise Error(f"{tokenizer}: {e}") from None
        flags = np.array(mask, np.uint8) * LOSS
        flags[0] |= START
        n_bytes = chat.reply_bytes(messages)
        stats["docs"] += 1
        stats["bytes"] += n_bytes
        stats["loss_tokens"] += sum(mask)
        stats["seconds"] = time.time() - start
        status(f"{stats['name']}: {stats['docs']:,} conversations")
        yield np.array(ids, np.uint32), flags, n_bytes


def split_written(stats, n_tokens, chats=False):
    """Say on stderr what a split's stats (see tokenize) came to; returns its meta.json entry."""
    mb, seconds = stats["bytes"] / 1e6, stats["seconds"]
    if chats:
        status(f"{stats['name']}: {stats['docs']:,} conversations -> {n_tokens:,} tokens, "
               f"{stats['loss_tokens']:,} of them replies' ({mb:,.2f} MB of text) in "
               f"{seconds:.1f} s", done=True)
    else:
        status(f"{stats['name']}: {stats['docs']:,} docs, {mb:,.1f} MB -> {n_tokens:,} tokens "
               f"({stats['bytes'] / max(n_tokens, 1):.2f} bytes/token) in {seconds:.1f} s, "
               f"{mb / max(seconds, 1e-9):.1f} MB/s", done=True)
    return dict(docs=stats["docs"], tokens=n_tokens, bytes=stats["bytes"], seconds=seconds,
                **({"loss_tokens": stats["loss_tokens"]} if chats else {}))


_last_status = time.time()  # the first line comes after a while: quick stages print none


def status(line, done=False):
    """Show progress on stderr: one line rewritten on a terminal, a line every 10 s in a log
    file."""
    global _last_status
    tty = sys.stderr.isatty()
    if done or time.time() - _last_status > (0.2 if tty else 10):
        _last_status = time.time()
        end = "\n" if done or not tty else ""
        print(("\r\033[K" if tty else "") + line, end=end, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- named datasets

def download(url, path, size=None, sha256=None, setting="url", local="--input=FILE --dataset=NAME"):
    """Fetch url to path, once. A cut transfer resumes from path.part with an HTTP Range request;
    the file is checked against the known size and SHA-256 (else against Content-Length), and only
    then renamed to path. `local`: how the script's user gives a local file instead."""
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    part, name = path + ".part", os.path.basename(path)
    fix = f"point --{setting}=URL at a mirror, or save a copy as {path} (or pass one as {local})"
    while True:
        have = os.path.getsize(part) if os.path.exists(part) else 0
        # finished before, but not renamed: let the checks below decide
        if size is not None and have >= size:
            break
        headers = {"User-Agent": "mini-llama-mlx-prepare/1",
                   **({"Range": f"bytes={have}-"} if have else {})}
        got, total, start = 0, size, time.time()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        timeout=60) as r:
                if have and r.status != 206:  # the server ignored Range: start over
                    have = 0
                if length := r.headers.get("Content-Length"):
                    total = have + int(length)
                with open(part, "ab" if have else "wb") as f:
                    while block := r.read(1 << 20):
                        f.write(block)
                        got += len(block)
                        rate = got / max(time.time() - start, 1e-3)
                        left = f", {(total - have - got) / rate:.0f} s left" if total else ""
                        status(f"{name}: {(have + got) / 1e6:,.1f}/{(total or 0) / 1e6:,.1f} MB, "
                               f"{rate / 1e6:.1f} MB/s{left}")
        except urllib.error.HTTPError as e:
            # nothing after our offset: the .part is complete, or is another file
            if e.code == 416 and have:
                if e.headers.get("Content-Range", "").endswith(f"/{have}"):
                    break
                os.remove(part)
                continue
            raise Error(f"could not download {url}: HTTP {e.code} {e.reason}; {fix}")
        except (urllib.error.URLError, OSError, http.client.HTTPException,
                ValueError) as e:  # ValueError: a bad URL
            if not got:
                raise Error(f"could not download {url}: {getattr(e, 'reason', e)}; {fix}")
        # a cut connection ends the read early, quietly or with an error: resume while it makes
        # progress
        if total is None or have + got >= total:
            status(f"{name}: {(have + got) / 1e6:,.1f} MB downloaded", done=True)
            break
        if not got:
            raise Error(f"download of {url} stopped at {have:,} of {total:,} bytes; run again "
                        f"to resume, or {fix}")
        status(f"{name}: connection lost at {(have + got) / 1e6:,.1f} MB, resuming", done=True)
    actual = os.path.getsize(part)
    if ((size is not None and actual != size)
            or (sha256 and (digest := sha256_file(part)) != sha256)):
        os.remove(part)  # a wrong file must not pass for the real one next time
        got = f"{actual:,} bytes" + (f", sha256 {digest[:16]}..."
                                     if sha256 and size in (None, actual) else "")
        want = ((f"{size:,} bytes" if size is not None else "")
                + (f", sha256 {sha256[:16]}..." if sha256 else ""))
        raise Error(f"{url} is not the expected file ({got}; expected {want.strip(', ')}) "
                    f"and was deleted; {fix}")
    os.replace(part, path)
    return path


def tinyshakespeare(paths, split):
    with open(paths["url"], encoding="utf-8") as f:
        text = f.read()
    cut = int(len(text) * 0.9)  # nanoGPT's split, so losses compare with its numbers
    yield text[:cut] if split == "train" else text[cut:]


def tinystories(paths, split):
    with open(paths["train_url" if split == "train" else "val_url"], encoding="utf-8",
              errors="replace") as f:
        yield from split_stories(f)


def split_stories(f, separator="<|endoftext|>", block=1 << 20):
    """Stories between separators, read 1 MB at a time: the 2.2 GB file is never in memory at
    once."""
    rest = ""
    while text := f.read(block):
        *stories, rest = (rest + text).split(separator)
        yield from (story.strip() for story in stories if story.strip())
    if rest.strip():
        yield rest.strip()


# An article starts at its title line, ' = Title = ': one '=' on each side, with the spaces
# WikiText puts there. Section headings have two or more (' = = History = = '), and text lines
# that merely start with '=' (scores, equations) lack the closing ' = '. A title whose text
# contains ' = ' is still one title ('E = mc2' is fine).
WIKITEXT_TITLE = re.compile(r" = [^=](?:.*[^=])? = ")


def wikitext_articles(lines):
    article = []
    for line in lines:
        if WIKITEXT_TITLE.fullmatch(line.rstrip("\n")):
            if "".join(article).strip():
                yield "".join(article)
            article = []
        article.append(line)
    if "".join(article).strip():
        yield "".join(article)


def wikitext(paths, split):
    member = {"train": "wiki.train.raw", "val": "wiki.valid.raw", "test": "wiki.test.raw"}[split]
    # read in place: no need to unpack 540 MB next to the zip
    with zipfile.ZipFile(paths["url"]) as z:
        names = [n for n in z.namelist() if os.path.basename(n) == member]
        if not names:
            raise Error(f"{paths['url']} has no {member}; is it wikitext-103-raw-v1.zip?")
        with z.open(names[0]) as f:
            yield from wikitext_articles(io.TextIOWrapper(f, encoding="utf-8", errors="replace"))


def dolly_messages(row):
    """A databricks-dolly-15k row {instruction, context, response, category} as a conversation: the
    context, a passage the instruction is about (or empty), comes first in the user's turn."""
    instruction, context, response = (row.get(k, "") for k in ("instruction", "context",
                                                                "response"))
    if not all(isinstance(v, str) for v in (instruction, context, response)) or not instruction:
        raise Error("a dolly row has the strings instruction, context and response")
    user = f"{context.strip()}\n\n{instruction}" if context.strip() else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": response}]


def dolly(paths):
    # no split of its own: every 20th conversation is val
    return split_documents(chat.read_conversations(paths["url"], dolly_messages), 0.05)


def import_pyarrow():
    """pyarrow with its parquet reader, or one line that says how to get it: only fineweb-edu
    needs it, so it is not in requirements.txt."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise Error("--dataset=fineweb-edu reads parquet files, which needs pyarrow: "
                    "pip install pyarrow")
    return pyarrow


def check_parquet(pa, path):
    """Raise an Error unless path is a parquet file with a "text" column of strings."""
    try:
        schema = pa.parquet.read_schema(path)  # the footer only
    except (OSError, pa.ArrowException) as e:
        parquet_error(path, e)
    if schema.get_field_index("text") < 0 or str(schema.field("text").type) not in (
            "string", "large_string", "string_view"):
        raise Error(f"{path} has no \"text\" column of strings (its columns: "
                    f"{', '.join(schema.names)}); is it a shard of "
                    "karpathy/fineweb-edu-100b-shuffle? Delete it, or point --url=URL at a mirror "
                    "of that dataset")


def parquet_error(path, e):
    os.remove(path)  # as download() does: a broken file must not pass for the real one next time
    raise Error(f"{path} is not a parquet file that can be read ({str(e).splitlines()[0]}) "
                "and was deleted; run again to download it anew, or point --url=URL at a mirror")


def parquet_texts(pa, path):
    """The "text" column of a parquet file read a row group at a time (nanochat's shards: 1,024
    documents, a few MB each), so memory holds one row group however big the file."""
    check_parquet(pa, path)
    try:
        with pa.parquet.ParquetFile(path) as f:
            for i in range(f.num_row_groups):
                texts = f.read_row_group(i, columns=["text"]).column("text").to_pylist()
                yield from (text for text in texts if text)
    except (OSError, pa.ArrowException) as e:
        parquet_error(path, e)


def fineweb(paths, split):
    """FineWeb-Edu as nanochat reads it: the last shard is val, the shards before it train."""
    pa, shards = import_pyarrow(), paths["url"]
    if split == "train":  # every footer first: a broken val shard stops before train.bin is written
        for path in shards:
            check_parquet(pa, path)
    for path in shards[:-1] if split == "train" else shards[-1:]:
        yield from parquet_texts(pa, path)


HF_TINYSTORIES = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
# name: files {setting: (name in raw/, default URL, size, sha256 when known)}, splits (train and
# val if none), and read(paths, split) -> the split's documents, or, for conversations,
# conversations(paths) -> (split, messages) pairs, read once. (pystdlib is prepare.py's own.)
DATASETS = {
    # built here from the standard library's docstrings (stdlib_chats, below): no files
    "pystdlib-chat": dict(files={}, conversations=lambda paths: stdlib_chats(stdlib_modules())),
    "tinyshakespeare": dict(
        files={"url": ("input.txt",
                       "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                       "tinyshakespeare/input.txt", 1115394,
                       "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")},
        read=tinyshakespeare, splits=("train", "val")),
    "tinystories": dict(
        # size and hash unknown: Content-Length is checked
        files={setting: (name, HF_TINYSTORIES + name, None, None)
               for setting, name in (("train_url", "TinyStoriesV2-GPT4-train.txt"),
                                     ("val_url", "TinyStoriesV2-GPT4-valid.txt"))},
        read=tinystories, splits=("train", "val")),
    # the original release, now hosted by its author (the Salesforce S3 copy is gone)
    "wikitext103": dict(
        files={"url": ("wikitext-103-raw-v1.zip",
                       "https://wikitext.smerity.com/wikitext-103-raw-v1.zip", 191984949,
                       "91c00ae287f0d699e18605c84afc9e45c192bc6b7797ff8837e5474655a33794")},
        read=wikitext, splits=("train", "val", "test")),
    # Conversations, for fine-tuning a base. Dolly: 15k instructions and replies that
    # Databricks' staff wrote by hand (CC BY-SA 3.0), 13 MB: open and closed questions,
    # summaries, brainstorms, most replies a few sentences of plain English, which a small model
    # can learn the shape of. (Alpaca is machine-written and non-commercial; OpenAssistant's
    # trees and SmolTalk's size are more than a laptop's first fine-tune needs.) Size and hash
    # unknown: Content-Length is checked.
    "dolly-chat": dict(
        files={"url": ("databricks-dolly-15k.jsonl",
                       "https://huggingface.co/datasets/databricks/databricks-dolly-15k/resolve/"
                       "main/databricks-dolly-15k.jsonl", None, None)},
        conversations=dolly, splits=("train", "val")),
    # FineWeb-Edu (Hugging Face's educational web pages, sample-100BT) as nanochat distributes it,
    # shuffled into 1,823 parquet shards of ~250M characters (~100 MB, zstd) in row groups of 1,024
    # documents, one "text" column; nanochat pins the last shard as val. shards=N: the name is a
    # pattern and the URL its folder's, downloaded for the first --shards indices and the last.
    # Size and hash unknown: Content-Length is checked.
    "fineweb-edu": dict(
        files={"url": ("shard_{index:05d}.parquet",
                       "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/"
                       "main/", None, None)},
        read=fineweb, splits=("train", "val"), shards=1823),
}
VOCAB_SIZES = {"pystdlib": 4096, "tinyshakespeare": 1024, "tinystories": 4096,
               "wikitext103": 8192, "fineweb-edu": 32768}  # prepare's default


def check_settings(dataset, input, data_dir, mirrors, val_fraction, val_docs, shards):
    """Raise an Error unless prepare.py's settings name one corpus (pystdlib, one of DATASETS, or
    --input with a name of the user's own), only mirrors ({setting: URL}) and --shards that apply
    to it, and a val_fraction and val_docs that can be."""
    names = ", ".join(["pystdlib", *DATASETS])
    if input and (dataset == "pystdlib" or dataset in DATASETS):
        raise Error(f"--input needs --dataset=NAME, a name of your own for its folder "
                    f"{data_dir}/NAME (not one of {names})")
    if not input and dataset != "pystdlib" and dataset not in DATASETS:
        raise Error(f"unknown --dataset={dataset}; pick one of {names}, or bring your own text "
                    "with --input=")
    spec, where = ({}, "--input") if input else (DATASETS.get(dataset, {}), dataset)
    for setting, value in mirrors.items():
        if value and setting not in spec.get("files", {}):
            raise Error(f"--{setting} does not apply to {where}")
    if not 0 < val_fraction < 1:
        raise Error(f"--val_fraction={val_fraction} must be between 0 and 1")
    if val_docs < 0:
        raise Error(f"--val_docs={val_docs} must be at least 0 (0 keeps every val document)")
    n_shards = spec.get("shards")
    if shards != 1 and not n_shards:
        raise Error(f"--shards does not apply to {where}, only to fineweb-edu")
    if n_shards and not 1 <= shards < n_shards:
        raise Error(f"--shards={shards} must be between 1 and {n_shards - 1:,}: {dataset} has "
                    f"{n_shards:,} shards, and the last is val")


def download_files(spec, folder, mirrors, shards=1):
    """A named dataset's files (spec: its DATASETS entry), downloaded once into folder: {setting:
    path}, or for a sharded one {setting: [path]}, its first `shards` shards (train), then its last
    (val). mirrors: {setting: a mirror's URL of the file (of the shards' folder), or ""}."""
    if n_shards := spec.get("shards"):  # parquet: say what is missing before downloading 100 MB
        import_pyarrow()
    raw = {}
    for setting, (name, url, size, sha256) in spec.get("files", {}).items():
        url = mirrors[setting] or url
        if not n_shards:
            raw[setting] = download(url, os.path.join(folder, name), size, sha256, setting)
            continue
        names = [name.format(index=i) for i in [*range(shards), n_shards - 1]]
        raw[setting] = [download(url.rstrip("/") + "/" + shard, os.path.join(folder, shard), size,
                                 sha256, setting) for shard in names]
    return raw


# ----------------------------------------------------------------------------- pystdlib-chat

# not imported: they act when imported (a browser, a poem), open windows or change the terminal,
# are another module under their own name (os.path is posixpath; os holds posix's functions;
# setuptools stands in for distutils), or are deprecated but imported by another deprecated one
# (aifc, asynchat) before they could warn
STDLIB_CHAT_SKIP = STDLIB_SKIP | {"antigravity", "this", "idlelib", "tkinter", "turtle",
                                  "turtledemo", "readline", "rlcompleter", "encodings",
                                  "genericpath", "posixpath", "ntpath", "posix", "nt", "distutils",
                                  "asyncore", "chunk"}
SYSTEM = "You answer questions about the Python standard library, briefly."


def stdlib_modules():
    """{name: module}, sorted by name: the standard library's public modules and their public
    submodules that import quietly here (no error, warning or output: deprecated ones warn), with
    os.path (posixpath) under that name. Imported in order of name: what warns can depend on what
    was imported before."""
    names = [n for n in sys.stdlib_module_names if not n.startswith("_")] + ["os.path"]
    todo, found = sorted(names, reverse=True), {}
    while todo:
        name = todo.pop()
        if name.rsplit(".", 1)[-1] in STDLIB_CHAT_SKIP or name in found:
            continue
        out = io.StringIO()
        with (warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out),
              contextlib.redirect_stderr(out)):
            warnings.simplefilter("always")
            try:
                module = importlib.import_module(name)
            except Exception:  # ImportError, or e.g. ctypes.wintypes' ValueError off Windows
                continue
        if not caught and not out.getvalue():
            found[name] = module
            todo += sorted((f"{name}.{m.name}" for m in pkgutil.iter_modules(
                getattr(module, "__path__", [])) if not m.name.startswith(("_", "test"))),
                reverse=True)
    return dict(sorted(found.items()))


def stdlib_api(modules):
    """{module name: [(name, object)]}: each public function and class once, by its own name (not
    an alias: array.array, not array.ArrayType), under the first module that defined it or lists it
    in __all__ from a module not listed (os.getcwd from posix), then its methods if a class."""
    listed, seen, api = {m.__name__ for m in modules.values()}, set(), {}
    for name, module in modules.items():
        api[name], exports = [], getattr(module, "__all__", ())
        for attr in exports or vars(module):
            obj = getattr(module, attr, None)
            home, own = getattr(obj, "__module__", None), getattr(obj, "__name__", attr)
            if ((inspect.isclass(obj) or inspect.isroutine(obj)) and attr[0] != "_"
                    and id(obj) not in seen
                    and (own == attr or getattr(module, own, None) is not obj)
                    and (home == module.__name__ or attr in exports and home not in listed)):
                seen.add(id(obj))
                api[name].append((attr, obj))
                if inspect.isclass(obj):
                    api[name] += [(f"{attr}.{k}", v) for k, v in vars(obj).items()
                                  if k[0] != "_" and inspect.isroutine(v)]
    return api


def first_paragraph(doc, limit=300):
    """A docstring's first paragraph on one line, less a leading signature ("sleep(seconds)"),
    cut after its last full sentence within limit characters; None if there is none."""
    for para in inspect.cleandoc(doc).split("\n\n") if isinstance(doc, str) else []:
        para = " ".join(para.split())
        if para and not re.fullmatch(r"[\w.]+\(.*\)( -> .*)?", para):
            cut = para.rfind(". ", 0, limit)
            return para if len(para) <= limit else para[:cut + 1] if cut > 0 else None
    return None


def signature_text(obj, limit=120):
    try:
        text = str(inspect.signature(obj))
    except Exception:  # none (ValueError), or a C signature naming what is not there (curses)
        return None
    # a default shown as <...> may hold an address or this process's state (sys.stdout)
    return text if len(text) <= limit and "<" not in text else None


def stdlib_chats(modules, val_every=20):
    """Yield (split, messages): questions on the standard library, answered from its own docstrings
    and signatures. Every val_every-th module (by name) is val, with all the questions on it. One
    conversation in five has a system prompt; a module's every fourth conversation, where it can,
    asks what a function does and then what arguments "it" takes: two turns."""
    # builtins, os and os.path (what people ask about most) stay in train
    rest = [name for name in modules if name not in ("builtins", "os", "os.path")]
    api, val, n = stdlib_api(modules), set(rest[val_every - 1::val_every]), 0
    unique = collections.Counter(attr for objects in api.values() for attr, _ in objects)
    for name, module in modules.items():
        talks = [[(f"What does the `{name}` module do?", about)]
                 if (about := first_paragraph(module.__doc__)) else []]
        for attr, obj in api[name]:
            shown = attr if name == "builtins" else f"{name}.{attr}"
            does, args = first_paragraph(obj.__doc__), signature_text(obj)
            does = does and (f"What does `{shown}` do?", does)
            args = args and (f"What arguments does `{shown}` take?", f"`{shown}{args}`")
            if does and args and len(talks) % 4 == 0:
                talks.append([does, ("What arguments does it take?", args[1])])
            else:
                talks += [[qa] for qa in (does, args) if qa]
            if name != "builtins" and "." not in attr and unique[attr] == 1:
                talks.append([(f"Which module is `{attr}` in?",
                               f"`{attr}` is in the `{name}` module: `{shown}`.")])
        for talk in filter(None, talks):
            n += 1
            yield "val" if name in val else "train", (
                [{"role": "system", "content": SYSTEM}] * (n % 5 == 0)
                + [{"role": role, "content": text} for qa in talk
                   for role, text in zip(("user", "assistant"), qa)])
