"""
Text to tokens, the machinery of prepare.py: the corpora (the built-in one, the named datasets and
their downloads, the user's own files), their split into train and val, and SentencePiece training
and encoding.

Tokenizer: SentencePiece BPE, Llama conventions (unk 0, BOS 1, EOS 2, no pad, byte fallback), so
any text encodes and decode(encode(text)) == text, whitespace included (except U+2581 '▁', which
SentencePiece reserves for space). Each document becomes [BOS] tokens [EOS].
"""
import glob
import heapq
import http.client
import io
import json
import math
import os
import random
import re
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile

import numpy as np
import sentencepiece as spm

from files import sha256_file

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
            sys.exit(f"error: --input={pattern}: no .txt, .md or .jsonl files in that folder")
    elif os.path.isfile(pattern):
        files = [pattern]
    else:
        files = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        if not files:
            sys.exit(f"error: --input={pattern}: no such file or folder, and no file matches it "
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
                            sys.exit(f"error: {path}:{i}: a .jsonl row must be an object with a "
                                     "\"text\" string")
                        yield row["text"]
        except UnicodeDecodeError:
            sys.exit(f"error: {path} is not UTF-8 text; convert it (e.g. iconv -t utf-8) or leave "
                     "it out of --input")
        except json.JSONDecodeError as e:
            sys.exit(f"error: {path}:{i}: not JSON ({e.msg}); "
                     ".jsonl wants one JSON object per line")


def split_documents(texts, val_fraction):
    """Yield (split, text): document i (from 1) goes to val when floor(i * val_fraction) grows.

    That spreads val evenly through the corpus and, if the corpus has two documents or more, val
    gets at least one (the last, when the fraction rounds to none). A lone document cannot be split
    that way, so its last val_fraction of text becomes val instead, as nanoGPT does with
    Shakespeare.
    """
    held, n, n_val = None, 0, 0
    for text in texts:
        if not text.strip():
            continue
        if held:
            yield held
        n += 1
        to_val = math.floor(n * val_fraction) > n_val
        n_val += to_val
        held = ("val" if to_val else "train", text)
    if n == 1 and 0 < (cut := int(len(held[1]) * (1 - val_fraction))) < len(held[1]):
        yield "train", held[1][:cut]
        yield "val", held[1][cut:]
    elif held:
        yield ("val", held[1]) if n_val == 0 and n > 1 else held


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
            sys.exit(f"error: --vocab_size={vocab_size} is too small for this corpus: its "
                     f"characters, the 256 byte pieces and the special tokens need {m[1]}; "
                     f"use --vocab_size={m[1]} or more")
        if m := re.search(r"value <= (\d+)", msg):
            sys.exit(f"error: --vocab_size={vocab_size} is too large for this corpus: its "
                     f"tokenizer sample yields at most {m[1]} pieces; lower --vocab_size, or add "
                     "text / raise --tokenizer_sample_bytes")
        sys.exit(f"error: SentencePiece could not train a tokenizer: {msg.splitlines()[0]}")
    return model.getvalue()


def load_tokenizer(path):
    """Read a given SentencePiece model and check it can be used here; returns its bytes."""
    if not os.path.isfile(path):
        sys.exit(f"error: --tokenizer={path}: no such file")
    with open(path, "rb") as f:
        model = f.read()
    try:
        sp = spm.SentencePieceProcessor(model_proto=model)
    except RuntimeError:
        sys.exit(f"error: --tokenizer={path} is not a SentencePiece model (a tokenizer.model file)")
    if sp.bos_id() < 0 or sp.eos_id() < 0:
        sys.exit(f"error: --tokenizer={path} has no BOS or EOS token, which mark where documents "
                 "start and end")
    return model


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

def tokenize(texts, sp, stats, num_threads=os.cpu_count() or 1, chunk_chars=1 << 22):
    """Yield (tokens, n_bytes) chunks of [BOS] + tokens + [EOS] per text, encoding ~chunk_chars of
    text per call.

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

    for text in texts:
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

def download(url, path, size=None, sha256=None, setting="url"):
    """Fetch url to path, once. A cut transfer resumes from path.part with an HTTP Range request;
    the file is checked against the known size and SHA-256 (else against Content-Length), and only
    then renamed to path."""
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    part, name = path + ".part", os.path.basename(path)
    fix = (f"point --{setting}=URL at a mirror, or save a copy as {path} (or pass one as "
           "--input=FILE --dataset=NAME)")
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
            sys.exit(f"error: could not download {url}: HTTP {e.code} {e.reason}; {fix}")
        except (urllib.error.URLError, OSError, http.client.HTTPException,
                ValueError) as e:  # ValueError: a bad URL
            if not got:
                sys.exit(f"error: could not download {url}: {getattr(e, 'reason', e)}; {fix}")
        # a cut connection ends the read early, quietly or with an error: resume while it makes
        # progress
        if total is None or have + got >= total:
            status(f"{name}: {(have + got) / 1e6:,.1f} MB downloaded", done=True)
            break
        if not got:
            sys.exit(f"error: download of {url} stopped at {have:,} of {total:,} bytes; run again "
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
        sys.exit(f"error: {url} is not the expected file ({got}; expected {want.strip(', ')}) "
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
            sys.exit(f"error: {paths['url']} has no {member}; is it wikitext-103-raw-v1.zip?")
        with z.open(names[0]) as f:
            yield from wikitext_articles(io.TextIOWrapper(f, encoding="utf-8", errors="replace"))


HF_TINYSTORIES = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
# name: files {setting: (name in raw/, default URL, size, sha256 when known)}, reader, splits
DATASETS = {
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
}
VOCAB_SIZES = {"pystdlib": 4096, "tinyshakespeare": 1024, "tinystories": 4096,
               "wikitext103": 8192}  # prepare's default
