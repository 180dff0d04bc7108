"""
Text to tokens, the machinery of prepare.py: documents from the user's files, their split into
train and val, and SentencePiece training and encoding; and conversations (pystdlib-chat,
dolly-chat, the user's .jsonl) to tokens with the flags that say where the loss is (chat.py has the
format). The built-in corpora are in pystdlib.py, the named datasets and downloads in
named_datasets.py.

Tokenizer: SentencePiece BPE, Llama conventions (unk 0, BOS 1, EOS 2, no pad, byte fallback), so
any text encodes and decode(encode(text)) == text, whitespace included (except U+2581 '▁', which
SentencePiece reserves for space). Each document becomes [BOS] tokens [EOS].
"""
import glob
import heapq
import io
import itertools
import json
import math
import os
import random
import re
import sys
import time

import numpy as np
import sentencepiece as spm

import chat
from errors import Error
from files import LOSS, START

# ----------------------------------------------------------------------------- documents

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
