"""
Text in, tokens out: trains (or reuses) a SentencePiece tokenizer and writes the token files train.py reads.

    python prepare.py                                          # built-in corpus, no network: ~10 s
    python prepare.py --dataset=tinyshakespeare                # a named dataset, downloaded once
    python prepare.py --input='notes/**/*.md' --dataset=notes  # your own text

Reads the corpus; writes data/<dataset>/: tokenizer.model, train.bin, val.bin (+ test.bin for wikitext103),
meta.json. Stages: load documents -> train_tokenizer on a random sample -> tokenize (streamed) -> write_tokens.

Corpora
  pystdlib         (default) the Python standard library's own source, which ships with every Python: each module
                   is a document (~730 modules, ~12 MB on 3.11), test suites and site-packages left out, plus the
                   ~80 pydoc help topics (prose). Code and English, always on disk, same for everyone on one Python.
  tinyshakespeare  char-rnn's 1.1 MB of Shakespeare; one document, so val is its last 10%, as in nanoGPT.
  tinystories      TinyStoriesV2-GPT4 (2.2 GB), one story per document, the dataset's own train/valid files.
  wikitext103      WikiText-103 raw (540 MB), one article per document, the dataset's own train/valid/test split.
  --input=...      a file, folder or glob: .txt/.md files are one document each, .jsonl rows {"text": ...} are too.
Without a split of their own, documents (not bytes) are split, so no text is in both train and val: every
1/val_fraction-th document goes to val. A single document is split by text instead: its last val_fraction is val.
Downloads are cached in data/<dataset>/raw/, resumed when cut, and checked against a known SHA-256 or size.

Tokenizer: SentencePiece BPE, Llama conventions (unk 0, BOS 1, EOS 2, no pad, byte fallback), so any text encodes
and decode(encode(text)) == text, whitespace included (except U+2581 '▁', which SentencePiece reserves for space).
--tokenizer=path/to/tokenizer.model reuses one instead, e.g. Llama 2's. Each document becomes [BOS] tokens [EOS].

Token files (.bin): a 128-byte little-endian header, then the tokens as uint16 (uint32 if vocab_size > 65536).
    magic b"MLLAMATK" | version u32 | itemsize u32 | vocab_size u64 | n_tokens u64 | n_bytes u64 | sha256 (32 B)
n_bytes is the UTF-8 size of the text the tokens stand for (BOS/EOS count 0), so bits per byte =
loss / ln 2 * n_tokens / n_bytes; sha256 is the tokenizer.model's. read_tokens() is the only reader: use it.
"""
import glob
import http.client
import hashlib
import heapq
import io
import json
import math
import os
import random
import re
import struct
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile

import numpy as np
import sentencepiece as spm

from configurator import configure

# -----------------------------------------------------------------------------
dataset = "pystdlib"  # output folder data/<dataset>/ and corpus: pystdlib, tinyshakespeare, tinystories, wikitext103
input = ""  # your own text instead: a file, folder or glob of .txt/.md (a document each) or .jsonl ({"text": ...} rows)
tokenizer = ""  # reuse this SentencePiece .model (e.g. Llama 2's tokenizer.model) instead of training one
vocab_size = 4096  # size of the tokenizer trained here (ignored with --tokenizer)
tokenizer_sample_bytes = 20_000_000  # the tokenizer learns from a random sample of documents this big: bounds its time
val_fraction = 0.05  # share of documents held out for validation (named datasets bring their own split)
data_dir = "data"
seed = 1337  # picks the tokenizer's sample
num_threads = os.cpu_count() or 1  # for tokenizer training and encoding
url = ""  # download from this mirror instead (tinyshakespeare, wikitext103)
train_url = ""  # tinystories' train file from a mirror
val_url = ""  # tinystories' valid file from a mirror
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}

MAGIC = b"MLLAMATK"
VERSION = 1
HEADER = struct.Struct("<8sIIQQQ32s")  # magic, version, itemsize, vocab_size, n_tokens, n_bytes, tokenizer sha256
HEADER_SIZE = 128  # room to grow the header without moving the tokens


# ----------------------------------------------------------------------------- token files

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_tokens(path, chunks, vocab_size, n_bytes, tokenizer_sha256):
    """Stream 1-D integer arrays into token file `path`; returns the token count.

    n_bytes is the text size the tokens stand for; pass None when it is only known while streaming, and let
    `chunks` yield (tokens, n_bytes) pairs instead. Tokens go to a temporary file whose header stays zero until
    the end, and it is renamed into place only when complete, so a crash never leaves a file that looks valid.
    """
    dtype = np.dtype("<u2" if vocab_size <= 1 << 16 else "<u4")
    tmp, n_tokens, total_bytes = path + ".tmp", 0, 0
    try:
        with open(tmp, "wb") as f:
            f.write(bytes(HEADER_SIZE))
            for chunk in chunks:
                if n_bytes is None:
                    chunk, chunk_bytes = chunk
                    total_bytes += chunk_bytes
                chunk = np.asarray(chunk)
                if chunk.size and (chunk.min() < 0 or chunk.max() >= vocab_size):
                    raise ValueError(f"token ids must be in [0, {vocab_size}), got {chunk.min()}..{chunk.max()}")
                f.write(chunk.astype(dtype).tobytes())
                n_tokens += chunk.size
            n_bytes = total_bytes if n_bytes is None else n_bytes
            f.seek(0)
            f.write(HEADER.pack(MAGIC, VERSION, dtype.itemsize, vocab_size, n_tokens, n_bytes,
                                bytes.fromhex(tokenizer_sha256)))
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C and sys.exit too: never leave the temporary file behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return n_tokens


def read_tokens(path, tokenizer_path=None):
    """Map a token file read-only: returns (tokens, info) with info's vocab_size, n_tokens, n_bytes, tokenizer_sha256.

    Checks the header, the file size and, given tokenizer_path, that the tokens were made with that tokenizer;
    anything wrong ends the program with a one-line error that says how to fix it.
    """
    name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    fix = f"run `python prepare.py --dataset={name}` (plus the same --input if it is your own text)"
    if not os.path.isfile(path):
        sys.exit(f"error: token file {path} not found; {fix} first")
    with open(path, "rb") as f:
        head = f.read(HEADER_SIZE)
    if len(head) < HEADER_SIZE or not head.startswith(MAGIC):
        sys.exit(f"error: {path} is not a token file (no {MAGIC.decode()} header); {fix} to make one")
    _, version, itemsize, vocab, n_tokens, n_bytes, sha = HEADER.unpack_from(head)
    if version != VERSION or itemsize not in (2, 4):
        sys.exit(f"error: {path} is token-file version {version} (itemsize {itemsize}), this code reads version "
                 f"{VERSION}; {fix} again")
    size, expected = os.path.getsize(path), HEADER_SIZE + n_tokens * itemsize
    if size != expected:
        sys.exit(f"error: {path} is truncated or damaged ({size} bytes, its header promises {expected}); {fix} again")
    info = dict(vocab_size=vocab, n_tokens=n_tokens, n_bytes=n_bytes, tokenizer_sha256=sha.hex(), itemsize=itemsize)
    if tokenizer_path is not None:
        if not os.path.isfile(tokenizer_path):
            sys.exit(f"error: tokenizer {tokenizer_path} not found; {fix}")
        if (actual := sha256_file(tokenizer_path)) != info["tokenizer_sha256"]:
            sys.exit(f"error: {path} was made with a different tokenizer than {tokenizer_path} (sha256 "
                     f"{info['tokenizer_sha256'][:12]}... vs {actual[:12]}...); {fix} so they match")
    dtype = np.dtype("<u2" if itemsize == 2 else "<u4")
    if n_tokens == 0:  # mmap refuses an empty range
        return np.zeros(0, dtype), info
    return np.memmap(path, dtype, mode="r", offset=HEADER_SIZE, shape=(n_tokens,)), info


def write_atomic(path, data):
    """Write bytes through a temporary file and a rename: a crash never leaves a half-written file at path."""
    try:
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
    finally:
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")


# ----------------------------------------------------------------------------- documents

STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def stdlib_files():
    """The standard library's modules, sorted: no test suites, installed packages or build configuration."""
    files = []
    for dirpath, dirnames, filenames in os.walk(sysconfig.get_paths()["stdlib"]):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_SKIP and not d.startswith("config-")]
        files += [os.path.join(dirpath, f) for f in filenames if f.endswith(".py") and not f.startswith("test_")]
    # pydoc_data/topics.py is the help topics as one Python dict; they come as documents of their own below
    return sorted(f for f in files if not f.endswith(os.path.join("pydoc_data", "topics.py")))


def stdlib_documents(files):
    from pydoc_data.topics import topics
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:  # the built-in corpus must never fail to load
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
            sys.exit(f"error: --input={pattern}: no such file or folder, and no file matches it as a glob")
    return sorted(files)


def input_documents(files):
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:  # universal newlines: Windows line ends become \n
                if not path.endswith(".jsonl"):
                    yield f.read()
                    continue
                for i, line in enumerate(f, 1):
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                            sys.exit(f"error: {path}:{i}: a .jsonl row must be an object with a \"text\" string")
                        yield row["text"]
        except UnicodeDecodeError:
            sys.exit(f"error: {path} is not UTF-8 text; convert it (e.g. iconv -t utf-8) or leave it out of --input")
        except json.JSONDecodeError as e:
            sys.exit(f"error: {path}:{i}: not JSON ({e.msg}); .jsonl wants one JSON object per line")


def split_documents(texts, val_fraction):
    """Yield (split, text): document i (from 1) goes to val when floor(i * val_fraction) grows.

    That spreads val evenly through the corpus and, if the corpus has two documents or more, val gets at least
    one (the last, when the fraction rounds to none). A lone document cannot be split that way, so its last
    val_fraction of text becomes val instead, as nanoGPT does with Shakespeare.
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
    """A uniform random sample of documents of at most max_bytes (at least one document); returns (sample, n_docs).

    Every document draws a random key and the smallest keys that fit are kept, in one pass with bounded
    memory, so the sample covers the whole corpus rather than its first files.
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
    """The sample as the lines SentencePiece learns from: no piece can then contain a newline (see tokenize)."""
    for text in sample:
        for line in text.split("\n"):
            if (max_bytes := max_bytes - len(line) - 1) < 0:
                return
            yield line


def train_tokenizer(lines, vocab_size):
    """Train SentencePiece BPE on an iterable of lines; returns the model file's bytes."""
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=vocab_size,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,  # Llama's ids, so its tokenizer.model can stand in
            byte_fallback=True,  # an unseen character becomes its UTF-8 bytes, never <unk>
            # lossless: keep text as is (no NFKC, no squeezed spaces, no space added in front), and let runs of
            # spaces be pieces of their own, which is what indentation is made of
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,  # as Llama: a number is its digits, no vocabulary spent on particular numbers
            max_sentence_length=1 << 16,  # long lines (a WikiText paragraph) are skipped by default
            num_threads=num_threads, minloglevel=2)
    except RuntimeError as e:
        msg = str(e)
        if m := re.search(r"smaller than required_chars\. \d+ vs (\d+)", msg):
            sys.exit(f"error: --vocab_size={vocab_size} is too small for this corpus: its characters and the 256 byte "
                     f"pieces need at least {m[1]}; raise --vocab_size")
        if m := re.search(r"value <= (\d+)", msg):
            sys.exit(f"error: --vocab_size={vocab_size} is too large for this corpus: its tokenizer sample yields at "
                     f"most {m[1]} pieces; lower --vocab_size, or add text / raise --tokenizer_sample_bytes")
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
        sys.exit(f"error: --tokenizer={path} has no BOS or EOS token, which mark where documents start and end")
    return model


def segment_chars(sp):
    """How long a piece of a document may be encoded alone, or None if documents must be encoded whole.

    Cutting bounds memory however long a document is, keeps all threads busy, and is a little faster per byte.
    A document cut after a newline encodes exactly as when whole if no piece spans a newline and nothing is
    added in front of a text (a dummy prefix, as Llama's tokenizer adds). Ours are trained so; others are probed.
    """
    probe = ["def f(x):\n", "    return x  \n", "\n", "\tb c\n", "a"]
    exact = sp.encode("".join(probe)) == [t for part in probe for t in sp.encode(part)]
    newline_pieces = any("\n" in sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not sp.is_byte(i))
    return 2048 if exact and not newline_pieces else None


# ----------------------------------------------------------------------------- tokenize

def tokenize(texts, sp, stats, chunk_chars=1 << 22):
    """Yield (tokens, n_bytes) chunks of [BOS] + tokens + [EOS] per text, encoding ~chunk_chars of text per call.

    Long texts are cut into pieces (see segment_chars), so memory stays bounded by the chunk and the longest
    text; stats gets docs, bytes and seconds as they go.
    """
    bos, eos, size = sp.bos_id(), sp.eos_id(), segment_chars(sp)
    pending, n_chars, start = [], 0, time.time()  # (text piece, starts a document, ends one)

    def encode():
        out, n_bytes = [], 0
        for (piece, first, last), ids in zip(pending, sp.encode([p for p, _, _ in pending], num_threads=num_threads)):
            out += [bos, *ids] if first else ids
            if last:
                out.append(eos)
                stats["docs"] += 1
            n_bytes += len(piece.encode("utf-8"))
        stats["bytes"] += n_bytes
        stats["seconds"] = time.time() - start
        mb = stats["bytes"] / 1e6
        status(f"{stats['name']}: {stats['docs']:,} docs, {mb:,.1f} MB, {mb / stats['seconds']:.1f} MB/s")
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
    """(piece, is_last) for pieces of text of about `size` characters, each ending with a newline but the last."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        yield text[start:end], end == len(text)
        start = end


_last_status = time.time()  # the first line comes after a while: quick stages print none


def status(line, done=False):
    """Show progress on stderr: one line rewritten on a terminal, a line every 10 s in a log file."""
    global _last_status
    tty = sys.stderr.isatty()
    if done or time.time() - _last_status > (0.2 if tty else 10):
        _last_status = time.time()
        end = "\n" if done or not tty else ""
        print(("\r\033[K" if tty else "") + line, end=end, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- named datasets

def download(url, path, size=None, sha256=None, setting="url"):
    """Fetch url to path, once. A cut transfer resumes from path.part with an HTTP Range request; the file is
    checked against the known size and SHA-256 (else against Content-Length), and only then renamed to path."""
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    part, name = path + ".part", os.path.basename(path)
    fix = f"point --{setting}=URL at a mirror, or save a copy as {path} (or pass one as --input=FILE --dataset=NAME)"
    while True:
        have = os.path.getsize(part) if os.path.exists(part) else 0
        if size is not None and have >= size:  # finished before, but not renamed: let the checks below decide
            break
        headers = {"User-Agent": "mini-llama-mlx-prepare/1", **({"Range": f"bytes={have}-"} if have else {})}
        got, total, start = 0, size, time.time()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as r:
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
            if e.code == 416 and have:  # nothing after our offset: the .part is complete, or is another file
                if e.headers.get("Content-Range", "").endswith(f"/{have}"):
                    break
                os.remove(part)
                continue
            sys.exit(f"error: could not download {url}: HTTP {e.code} {e.reason}; {fix}")
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:  # ValueError: a bad URL
            if not got:
                sys.exit(f"error: could not download {url}: {getattr(e, 'reason', e)}; {fix}")
        # a cut connection ends the read early, quietly or with an error: resume while it makes progress
        if total is None or have + got >= total:
            status(f"{name}: {(have + got) / 1e6:,.1f} MB downloaded", done=True)
            break
        if not got:
            sys.exit(f"error: download of {url} stopped at {have:,} of {total:,} bytes; run again to resume, or {fix}")
        status(f"{name}: connection lost at {(have + got) / 1e6:,.1f} MB, resuming", done=True)
    actual = os.path.getsize(part)
    if (size is not None and actual != size) or (sha256 and (digest := sha256_file(part)) != sha256):
        os.remove(part)  # a wrong file must not pass for the real one next time
        got = f"{actual:,} bytes" + (f", sha256 {digest[:16]}..." if sha256 and size in (None, actual) else "")
        want = (f"{size:,} bytes" if size is not None else "") + (f", sha256 {sha256[:16]}..." if sha256 else "")
        sys.exit(f"error: {url} is not the expected file ({got}; expected {want.strip(', ')}) and was deleted; {fix}")
    os.replace(part, path)
    return path


def tinyshakespeare(paths, split):
    with open(paths["url"], encoding="utf-8") as f:
        text = f.read()
    cut = int(len(text) * 0.9)  # nanoGPT's split, so losses compare with its numbers
    yield text[:cut] if split == "train" else text[cut:]


def tinystories(paths, split):
    with open(paths["train_url" if split == "train" else "val_url"], encoding="utf-8", errors="replace") as f:
        yield from split_stories(f)


def split_stories(f, separator="<|endoftext|>", block=1 << 20):
    """Stories between separators, read 1 MB at a time: the 2.2 GB file is never in memory at once."""
    rest = ""
    while text := f.read(block):
        *stories, rest = (rest + text).split(separator)
        yield from (story.strip() for story in stories if story.strip())
    if rest.strip():
        yield rest.strip()


# An article starts at its title line, ' = Title = ': one '=' on each side, with the spaces WikiText puts there.
# Section headings have two or more (' = = History = = '), and text lines that merely start with '=' (scores,
# equations) lack the closing ' = '. A title whose text contains ' = ' is still one title ('E = mc2' is fine).
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
    with zipfile.ZipFile(paths["url"]) as z:  # read in place: no need to unpack 540 MB next to the zip
        names = [n for n in z.namelist() if os.path.basename(n) == member]
        if not names:
            sys.exit(f"error: {paths['url']} has no {member}; is it wikitext-103-raw-v1.zip?")
        with z.open(names[0]) as f:
            yield from wikitext_articles(io.TextIOWrapper(f, encoding="utf-8", errors="replace"))


HF_TINYSTORIES = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
DATASETS = {  # name: files {setting: (name in raw/, default URL, size, sha256 when known)}, reader, splits
    "tinyshakespeare": dict(
        files={"url": ("input.txt",
                       "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                       1115394, "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")},
        read=tinyshakespeare, splits=("train", "val")),
    "tinystories": dict(
        files={setting: (name, HF_TINYSTORIES + name, None, None)  # size and hash unknown: Content-Length is checked
               for setting, name in (("train_url", "TinyStoriesV2-GPT4-train.txt"),
                                     ("val_url", "TinyStoriesV2-GPT4-valid.txt"))},
        read=tinystories, splits=("train", "val")),
    "wikitext103": dict(  # the original release, now hosted by its author (the Salesforce S3 copy is gone)
        files={"url": ("wikitext-103-raw-v1.zip", "https://wikitext.smerity.com/wikitext-103-raw-v1.zip",
                       191984949, "91c00ae287f0d699e18605c84afc9e45c192bc6b7797ff8837e5474655a33794")},
        read=wikitext, splits=("train", "val", "test")),
}


def corpus():
    """(splits, documents) for the settings; documents(split) reads that split's texts afresh, lazily."""
    if input or dataset == "pystdlib":
        files = input_files(input) if input else stdlib_files()  # listed once: the outputs may match a glob
        read = input_documents if input else stdlib_documents
        return ("train", "val"), lambda split: (t for s, t in split_documents(read(files), val_fraction) if s == split)
    spec, paths = DATASETS[dataset], {}
    for setting, (name, default_url, size, sha256) in spec["files"].items():
        path = os.path.join(data_dir, dataset, "raw", name)
        paths[setting] = download(globals()[setting] or default_url, path, size, sha256, setting)
    return spec["splits"], lambda split: spec["read"](paths, split)


def check_settings():
    names = ", ".join(["pystdlib", *DATASETS])
    if input and (dataset == "pystdlib" or dataset in DATASETS):
        sys.exit(f"error: --input needs --dataset=NAME, a name of your own for its folder {data_dir}/NAME "
                 f"(not one of {names})")
    if not input and dataset != "pystdlib" and dataset not in DATASETS:
        sys.exit(f"error: unknown --dataset={dataset}; pick one of {names}, or bring your own text with --input=")
    for setting in ("url", "train_url", "val_url"):
        if globals()[setting] and (input or setting not in DATASETS.get(dataset, {}).get("files", {})):
            sys.exit(f"error: --{setting} does not apply to {'--input' if input else dataset}")
    if not 0 < val_fraction < 1:
        sys.exit(f"error: --val_fraction={val_fraction} must be between 0 and 1")


# -----------------------------------------------------------------------------

def main(argv=None):
    settings = dict(DEFAULTS)
    configure(settings, argv)
    globals().update(settings)  # the stages read their settings as plain globals, nanoGPT style
    check_settings()
    splits, documents = corpus()

    start = time.time()
    sample, n_docs = sample_documents(documents("train"), tokenizer_sample_bytes, seed)
    if n_docs == 0:
        sys.exit(f"error: no text in {input or dataset}: no documents, or only empty ones")
    if tokenizer:
        model = load_tokenizer(tokenizer)
    else:
        model = train_tokenizer(sample_lines(sample, tokenizer_sample_bytes), vocab_size)
    del sample
    sp, sha256 = spm.SentencePieceProcessor(model_proto=model), hashlib.sha256(model).hexdigest()
    print(f"tokenizer: {sp.get_piece_size()} pieces, {'from ' + tokenizer if tokenizer else 'trained'} "
          f"({time.time() - start:.1f} s)", flush=True)

    out_dir = os.path.join(data_dir, dataset)
    os.makedirs(out_dir, exist_ok=True)
    meta = dict(dataset=dataset, vocab_size=sp.get_piece_size(), tokenizer_sha256=sha256, splits={}, settings=settings)
    for split in splits:
        stats = dict(name=split, docs=0, bytes=0, seconds=0.0)
        n_tokens = write_tokens(os.path.join(out_dir, f"{split}.bin"), tokenize(documents(split), sp, stats),
                                sp.get_piece_size(), None, sha256)
        status(f"{split}: {stats['docs']:,} docs, {stats['bytes'] / 1e6:,.1f} MB -> {n_tokens:,} tokens "
               f"({stats['bytes'] / max(n_tokens, 1):.2f} bytes/token) in {stats['seconds']:.1f} s, "
               f"{stats['bytes'] / 1e6 / max(stats['seconds'], 1e-9):.1f} MB/s", done=True)
        meta["splits"][split] = dict(docs=stats["docs"], tokens=n_tokens, bytes=stats["bytes"],
                                     seconds=stats["seconds"])
    write_atomic(os.path.join(out_dir, "tokenizer.model"), model)  # after the tokens: their header names its sha256
    write_atomic(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=2).encode())
    total_bytes = sum(s["bytes"] for s in meta["splits"].values())
    total_seconds = sum(s["seconds"] for s in meta["splits"].values())
    print(f"wrote {out_dir}/: {', '.join(f'{k}.bin' for k in splits)}, tokenizer.model, meta.json; tokenized "
          f"{total_bytes / 1e6:,.1f} MB at {total_bytes / 1e6 / max(total_seconds, 1e-9):.1f} MB/s; "
          f"{time.time() - start:.0f} s in all", flush=True)


if __name__ == "__main__":
    main()
