"""
The files one stage writes and another reads, written so that a crash at any instant leaves the last
good state.

Token files (prepare.py writes them, train.py reads them): a 128-byte little-endian header, then the
tokens as uint16 (uint32 if vocab_size > 65536), readable with np.memmap(path, dtype, offset=128).
    magic b"MLLAMATK" | version u32 | itemsize u32 | vocab_size u64 | n_tokens u64 |
    n_bytes u64 | sha256 (32 B) | kind u32 | n_loss_tokens u64 | zeros to 128 B
kind 0 is text (documents; what every file had before there were kinds, its bytes being zero),
1 is chat (conversations): after the tokens comes one uint8 of flags a token, LOSS (1) where the
loss is on the token (a reply's, or the EOS that ends it) and START (2) on the BOS that starts a
conversation; n_loss_tokens counts the LOSS ones. n_bytes is the UTF-8 size of the text the loss
tokens stand for (BOS/EOS count 0; in a text file every token is one), so bits per byte =
loss / ln 2 * n_loss_tokens / n_bytes; sha256 is the tokenizer.model's. read_tokens() is the one
reader.

Checkpoint folders (train.py writes them; generate.py, export.py, mlx-lm and transformers read
them): plain files at the top of the folder. A new checkpoint is written whole into
out_dir/.saving/, flushed to disk, marked complete, and only then moved into place;
finish_checkpoint() completes a marked set after a crash and deletes an unmarked one. train.py
holds its folder through RunFolder (locked, so one run writes it; its saves; log.jsonl) and resumes
through read_resume().
"""
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import struct
import sys

import numpy as np
import sentencepiece as spm

import hf_tokenizer
from errors import Error


MAGIC = b"MLLAMATK"
VERSION = 1
# magic, version, itemsize, vocab_size, n_tokens, n_bytes, tokenizer sha256, kind, n_loss_tokens
HEADER = struct.Struct("<8sIIQQQ32sIQ")
KINDS = ("text", "chat")  # a token file's kind, by its number in the header
LOSS, START = 1, 2  # a chat file's flag bits: the loss is on this token; it starts a conversation
HEADER_SIZE = 128  # room to grow the header without moving the tokens
SAVING = ".saving"  # where a checkpoint is written before it is moved into place
COMPLETE = ".complete"  # in .saving/: every file of the set is on disk
OPTIMIZER = "optimizer.safetensors"  # what train.py needs beside the weights to resume
LOCK = ".lock"  # locked by the one train.py that writes the folder, holding its process id


# ----------------------------------------------------------------------------- writing safely

def fsync_fd(fd):
    # macOS's fsync leaves the data in the drive's cache, where a power loss still takes it;
    # F_FULLFSYNC does not.
    if sys.platform == "darwin":
        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    else:
        os.fsync(fd)


def fsync(path):
    """Push a file, or a folder's list of names, to the disk: a rename is only as durable as what
    it renames."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fsync_fd(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replaced_atomically(path):
    """Yield a temporary path to write; when the block ends, push it to the disk and rename it to
    path. A crash never leaves a half-written file at path, and an exception (Ctrl-C, sys.exit too)
    leaves no temporary file."""
    tmp = path + ".tmp"
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync(os.path.dirname(os.path.abspath(path)))


def write_atomic(path, data):
    """Write bytes through a temporary file, fsync and a rename: a crash never leaves a half-written
    file at path."""
    with replaced_atomically(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def disk_full_hint(e, path):
    """A sentence for a failed write: the disk is full (and which), or what the system said."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk holding {os.path.abspath(path)} is full; free some space there"
    return f"{e.strerror or e} ({getattr(e, 'filename', None) or path})"


# ----------------------------------------------------------------------------- token files

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def token_dtype(itemsize):
    return np.dtype("<u2" if itemsize == 2 else "<u4")


def write_tokens(path, chunks, vocab_size, n_bytes, tokenizer_sha256, chat=False):
    """Stream 1-D integer arrays into token file `path`; returns the token count.

    n_bytes is the text size the tokens stand for; pass None when it is only known while streaming,
    and let `chunks` yield (tokens, n_bytes) pairs instead. A chat file's chunks are (tokens,
    flags, n_bytes) triples, flags a uint8 a token (LOSS, START); chat sets are small, so the flags
    wait in memory until they follow the tokens. Tokens go to a temporary file whose header stays
    zero until the end, and it is renamed into place only when complete, so a crash never leaves a
    file that looks valid.
    """
    dtype = token_dtype(2 if vocab_size <= 1 << 16 else 4)
    n_tokens, total_bytes, flags = 0, 0, []
    with replaced_atomically(path) as tmp, open(tmp, "wb") as f:
        f.write(bytes(HEADER_SIZE))
        for chunk in chunks:
            chunk_bytes = 0
            if chat:
                chunk, chunk_flags, chunk_bytes = chunk
                flags.append(np.asarray(chunk_flags, np.uint8))
                if flags[-1].shape != np.shape(chunk):
                    raise ValueError(f"{flags[-1].size} flags for {np.size(chunk)} tokens")
            elif n_bytes is None:
                chunk, chunk_bytes = chunk
            total_bytes += chunk_bytes
            chunk = np.asarray(chunk)
            if chunk.size and (chunk.min() < 0 or chunk.max() >= vocab_size):
                raise ValueError(f"token ids must be in [0, {vocab_size}), "
                                 f"got {chunk.min()}..{chunk.max()}")
            f.write(chunk.astype(dtype).tobytes())
            n_tokens += chunk.size
        for part in flags:
            f.write(part.tobytes())
        n_loss = sum(int(np.count_nonzero(part & LOSS)) for part in flags)
        n_bytes = total_bytes if chat or n_bytes is None else n_bytes
        f.seek(0)
        f.write(HEADER.pack(MAGIC, VERSION, dtype.itemsize, vocab_size, n_tokens, n_bytes,
                            bytes.fromhex(tokenizer_sha256), int(chat), n_loss))
    return n_tokens


def read_tokens(path, tokenizer_path=None):
    """Map a token file read-only: returns (tokens, info) with info's vocab_size, n_tokens,
    n_bytes, tokenizer_sha256, itemsize, kind ("text" or "chat"), n_loss_tokens (a text file's:
    n_tokens) and mask (a chat file's flags a token, read-only; None for text).

    Checks the header, the file size and, given tokenizer_path, that the tokens were made with that
    tokenizer; anything wrong ends the program with a one-line error that says how to fix it.
    """
    name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    fix = f"run `python prepare.py --dataset={name}` (plus the same --input if it is your own text)"
    if not os.path.isfile(path):
        raise Error(f"token file {path} not found; {fix} first")
    with open(path, "rb") as f:
        head = f.read(HEADER_SIZE)
    if len(head) < HEADER_SIZE or not head.startswith(MAGIC):
        raise Error(f"{path} is not a token file (no {MAGIC.decode()} header); "
                    f"{fix} to make one")
    _, version, itemsize, vocab, n_tokens, n_bytes, sha, kind, n_loss = HEADER.unpack_from(head)
    if version != VERSION or itemsize not in (2, 4) or kind >= len(KINDS):
        raise Error(f"{path} is token-file version {version} (itemsize {itemsize}, kind "
                    f"{kind}), this code reads version {VERSION} of kinds 0-{len(KINDS) - 1}; "
                    f"{fix} again")
    chat = KINDS[kind] == "chat"
    size, expected = os.path.getsize(path), HEADER_SIZE + n_tokens * (itemsize + chat)
    if size != expected:
        raise Error(f"{path} is truncated or damaged ({size} bytes, its header promises "
                    f"{expected}); {fix} again")
    info = dict(vocab_size=vocab, n_tokens=n_tokens, n_bytes=n_bytes, tokenizer_sha256=sha.hex(),
                itemsize=itemsize, kind=KINDS[kind], n_loss_tokens=n_loss if chat else n_tokens,
                mask=None)
    if tokenizer_path is not None:
        if not os.path.isfile(tokenizer_path):
            raise Error(f"tokenizer {tokenizer_path} not found; {fix}")
        if (actual := sha256_file(tokenizer_path)) != info["tokenizer_sha256"]:
            raise Error(f"{path} was made with a different tokenizer than {tokenizer_path} "
                        f"(sha256 {info['tokenizer_sha256'][:12]}... vs {actual[:12]}...); "
                        f"{fix} so they match")
    dtype = token_dtype(itemsize)
    if n_tokens == 0:  # mmap refuses an empty range
        info["mask"] = np.zeros(0, np.uint8) if chat else None
        return np.zeros(0, dtype), info
    if chat:
        info["mask"] = np.memmap(path, np.uint8, mode="r", offset=HEADER_SIZE + n_tokens * itemsize,
                                 shape=(n_tokens,))
    return np.memmap(path, dtype, mode="r", offset=HEADER_SIZE, shape=(n_tokens,)), info


# ----------------------------------------------------------------------------- checkpoint folders

def save_checkpoint(out_dir, writers):
    """Replace the checkpoint in out_dir by the files {name: bytes, or a function write(path)} as
    one set.

    Each file is written into out_dir/.saving/ and fsynced; then the set is marked complete and its
    files are renamed into out_dir. A crash before the mark leaves the old set in out_dir and an
    unmarked .saving/ (deleted next time); a crash after it leaves a marked set that
    finish_checkpoint() moves into place. A failed write raises, and the old checkpoint stays as it
    was.
    """
    finish_checkpoint(out_dir)
    saving = os.path.join(out_dir, SAVING)
    os.makedirs(saving)
    try:
        for name, write in writers.items():
            if isinstance(write, bytes):
                with open(os.path.join(saving, name), "wb") as f:
                    f.write(write)
            else:
                write(os.path.join(saving, name))
            fsync(os.path.join(saving, name))
        fsync(saving)
        with open(os.path.join(saving, COMPLETE), "wb"):
            pass
        fsync(saving)
    except BaseException:
        shutil.rmtree(saving, ignore_errors=True)
        raise
    finish_checkpoint(out_dir)


def finish_checkpoint(out_dir):
    """After a crash while saving: move a complete set from out_dir/.saving/ into place, or delete
    an incomplete one.

    Safe to repeat, and to be cut short at any point itself: the mark stays until every file has
    moved.
    """
    saving = os.path.join(out_dir, SAVING)
    if not os.path.isdir(saving):
        return
    if not os.path.exists(os.path.join(saving, COMPLETE)):
        shutil.rmtree(saving)
        return
    for name in sorted(os.listdir(saving)):
        if name != COMPLETE:
            os.replace(os.path.join(saving, name), os.path.join(out_dir, name))
    fsync(out_dir)
    os.remove(os.path.join(saving, COMPLETE))
    os.rmdir(saving)


# ----------------------------------------------------------------------------- train.py's folder

class RunFolder:
    """train.py's out_dir, as the process that writes it holds it: locked until that process ends,
    checkpoints saved as one set, log.jsonl appended a record a line. A write that fails (a full
    disk) ends the run with one line that says what the folder still holds."""

    def __init__(self, path, resume):
        """Lock the folder, or exit: one run writes it. The OS lets go of the lock when the process
        ends, however it ends. A save that a crash cut short is first finished, or what there was of
        it deleted; then a new run refuses a folder that holds a checkpoint."""
        os.makedirs(path, exist_ok=True)
        self.path, self.saved_iter, self.log_file, self.hf_files = path, 0, None, None
        self.lock = open(os.path.join(path, LOCK), "a+")
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.lock.seek(0)
            raise Error(f"{path}/ is in use by another train.py "
                        f"(process {self.lock.read().strip()}); "
                        f"wait for it to end, or train into another --out_dir")
        finish_checkpoint(path)  # a new run too: an incomplete first save is no checkpoint
        if not resume and os.path.exists(os.path.join(path, "config.json")):
            raise Error(f"{path}/ already holds a checkpoint, which a new run would replace; "
                        f"continue it with --init_from=resume, or train into another --out_dir "
                        f"(or delete {path}/ to start over)")
        self.lock.truncate(0)  # who holds it, for the message above
        self.lock.write(f"{os.getpid()}\n")
        self.lock.flush()

    def open_log(self, start_iter, resume):
        """log.jsonl from iteration start_iter on: a resumed run forgets what was logged after its
        checkpoint."""
        self.saved_iter, self.log_path = start_iter, os.path.join(self.path, "log.jsonl")
        if resume and os.path.exists(self.log_path):  # in place: a full disk cannot stop it
            os.truncate(self.log_path, log_records(self.log_path, until=start_iter)[1])
        self.log_file = open(self.log_path, "a" if resume else "w")

    def log(self, record, line):
        """Print line, and append record to log.jsonl."""
        print(line, flush=True)
        try:
            self.log_file.write(json.dumps(record) + "\n")
            self.log_file.flush()
        except OSError as e:
            self.failed(e, self.log_path)

    def records(self):
        return log_records(self.log_path)[0]

    def save(self, it, config, weights, optimizer_state, tokenizer_path, chat_template=None):
        """Iteration it's checkpoint: config.json (the model's config, plus train_settings and
        train_state), weights and optimizer state as safetensors whose metadata names the
        iteration, the tokenizer.model, and the tokenizer files that transformers and mlx-lm read
        beside it (with the chat template of a model fine-tuned on conversations)."""
        import mlx.core as mx  # here only: prepare.py uses this module without MLX

        def safetensors(arrays):
            def write(path):
                # through Python's file, which reports a full disk as such
                with open(path, "wb") as f:
                    mx.save_safetensors(f, arrays, metadata={"iter": str(it)})
            return write
        if self.hf_files is None:
            try:
                self.hf_files = hf_tokenizer.hf_tokenizer_files(
                    tokenizer_path, config["max_position_embeddings"], chat_template)
            except (ValueError, RuntimeError) as e:
                # a tokenizer they cannot read; ours is still whole
                self.hf_files = {}
                print(f"note: no Hugging Face tokenizer files in {self.path}/: {e}",
                      file=sys.stderr)
        writers = {"model.safetensors": safetensors(weights),
                   OPTIMIZER: safetensors(optimizer_state),
                   "config.json": json.dumps(config, indent=2).encode(),
                   "tokenizer.model": lambda path: shutil.copyfile(tokenizer_path, path),
                   **self.hf_files}
        try:
            save_checkpoint(self.path, writers)
        except OSError as e:
            self.failed(e, f"the checkpoint of iteration {it}")
        self.saved_iter = it

    def write(self, name, data):
        """A file beside the checkpoint, for people (loss.svg): a failure is a note, not the run's
        end."""
        try:
            write_atomic(os.path.join(self.path, name), data)
        except OSError as e:
            print(f"note: no {name}: {disk_full_hint(e, self.path)}", file=sys.stderr)

    def failed(self, e, what):
        if os.path.exists(os.path.join(self.path, SAVING, COMPLETE)):
            kept = (f"{self.path}/ holds iteration {self.saved_iter} and the whole of a newer one, "
                    f"which a resume finishes")
        elif self.saved_iter:
            kept = (f"{self.path}/ keeps iteration {self.saved_iter}; "
                    f"then resume with python train.py --init_from=resume")
        else:
            kept = "no checkpoint was saved yet"
        raise Error(f"{what} could not be written: {disk_full_hint(e, self.path)}; {kept}")


def read_resume(path, config, optimizer):
    """What --init_from=resume needs beside the weights: (train_state, train_settings, the
    optimizer's state as {name: array}), or a one-line exit that says what is missing and what to
    do."""
    import mlx.core as mx
    weights_only = f"start from the weights alone with --init_from={path} --out_dir=<a new folder>"
    if "train_state" not in config or "train_settings" not in config:
        raise Error(f"{path} is not a checkpoint of train.py (no training state to resume); "
                    f"{weights_only}")
    for name in (OPTIMIZER, "tokenizer.model"):
        if not os.path.isfile(os.path.join(path, name)):
            raise Error(f"{path}/{name} is missing, and resuming needs it; "
                        f"copy it back from where it went, or {weights_only}")
    state, saved = config["train_state"], config["train_settings"]
    if saved.get("optimizer", "adamw") != optimizer:
        raise Error(f"{path}/{OPTIMIZER} holds {saved.get('optimizer', 'adamw')}'s state, not "
                    f"{optimizer}'s; resume with --optimizer={saved.get('optimizer', 'adamw')}, or "
                    f"{weights_only}")
    try:
        arrays, meta = mx.load(os.path.join(path, OPTIMIZER), return_metadata=True)
    except (RuntimeError, ValueError) as e:
        raise Error(f"{path}/{OPTIMIZER} cannot be read ({e}); it is damaged: copy it back "
                    f"from a backup, or {weights_only}")
    if meta.get("iter") != str(state["iter"]):
        raise Error(f"{path}/{OPTIMIZER} is from iteration {meta.get('iter')}, config.json "
                    f"from {state['iter']}: files of two checkpoints were mixed by hand; put back "
                    f"the matching pair")
    return state, saved, arrays


def log_records(path, until=None):
    """log.jsonl's records (up to iteration `until`), less a last line that a kill cut short, and
    the byte offset where the kept ones end."""
    records, end = [], 0
    with open(path, "rb") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                break
            if until is not None and record["iter"] > until:
                break
            records.append(record)
            end += len(line)
    return records, end


def read_tokenizer(path):
    """A checkpoint folder's tokenizer.model, loaded."""
    tokenizer_path = os.path.join(path, "tokenizer.model")
    if not os.path.isfile(tokenizer_path):
        raise Error(f"{path!r} has no tokenizer.model; copy in the one the model was trained with")
    try:
        return spm.SentencePieceProcessor(model_file=tokenizer_path)
    except RuntimeError as e:
        raise Error(f"{tokenizer_path} cannot be read ({e}); it is damaged: copy in the one the "
                    f"model was trained with") from None


def read_config(path):
    """A checkpoint folder's config.json as a dict, or a one-line exit that says what is wrong and
    what to do."""
    config_path = os.path.join(path, "config.json")
    # the folder may hold files of two checkpoints
    if os.path.exists(os.path.join(path, SAVING, COMPLETE)):
        raise Error(f"a save into {path!r} was cut short, and some of its files are not in "
                    f"place yet; python train.py --init_from=resume --out_dir={path} finishes it "
                    f"(or wait, if a run is saving)")
    if not os.path.isfile(config_path):
        raise Error(f"no checkpoint in {path!r} (config.json missing); "
                    f"train one first: python train.py")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise Error(f"{config_path} is not valid JSON ({e.__class__.__name__}: {e}); "
                    f"it was edited or damaged: restore it from a copy of the folder")
    if not isinstance(config, dict):
        raise Error(f"{config_path} holds no JSON object; restore it from a copy of the folder")
    return config
