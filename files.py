"""
The files one stage writes and another reads, written so that a crash at any instant leaves the last
good state.

Token files (prepare.py writes them, train.py reads them): a 128-byte little-endian header, then the
tokens as uint16 (uint32 if vocab_size > 65536), readable with np.memmap(path, dtype, offset=128).
    magic b"MLLAMATK" | version u32 | itemsize u32 | vocab_size u64 | n_tokens u64 |
    n_bytes u64 | sha256 (32 B)
n_bytes is the UTF-8 size of the text the tokens stand for (BOS/EOS count 0), so bits per byte =
loss / ln 2 * n_tokens / n_bytes; sha256 is the tokenizer.model's. read_tokens() is the one reader.

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

MAGIC = b"MLLAMATK"
VERSION = 1
# magic, version, itemsize, vocab_size, n_tokens, n_bytes, tokenizer sha256
HEADER = struct.Struct("<8sIIQQQ32s")
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


def write_tokens(path, chunks, vocab_size, n_bytes, tokenizer_sha256):
    """Stream 1-D integer arrays into token file `path`; returns the token count.

    n_bytes is the text size the tokens stand for; pass None when it is only known while streaming,
    and let `chunks` yield (tokens, n_bytes) pairs instead. Tokens go to a temporary file whose
    header stays zero until the end, and it is renamed into place only when complete, so a crash
    never leaves a file that looks valid.
    """
    dtype = token_dtype(2 if vocab_size <= 1 << 16 else 4)
    n_tokens, total_bytes = 0, 0
    with replaced_atomically(path) as tmp, open(tmp, "wb") as f:
        f.write(bytes(HEADER_SIZE))
        for chunk in chunks:
            if n_bytes is None:
                chunk, chunk_bytes = chunk
                total_bytes += chunk_bytes
            chunk = np.asarray(chunk)
            if chunk.size and (chunk.min() < 0 or chunk.max() >= vocab_size):
                raise ValueError(f"token ids must be in [0, {vocab_size}), "
                                 f"got {chunk.min()}..{chunk.max()}")
            f.write(chunk.astype(dtype).tobytes())
            n_tokens += chunk.size
        n_bytes = total_bytes if n_bytes is None else n_bytes
        f.seek(0)
        f.write(HEADER.pack(MAGIC, VERSION, dtype.itemsize, vocab_size, n_tokens, n_bytes,
                            bytes.fromhex(tokenizer_sha256)))
    return n_tokens


def read_tokens(path, tokenizer_path=None):
    """Map a token file read-only: returns (tokens, info) with info's vocab_size, n_tokens,
    n_bytes, tokenizer_sha256.

    Checks the header, the file size and, given tokenizer_path, that the tokens were made with that
    tokenizer; anything wrong ends the program with a one-line error that says how to fix it.
    """
    name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    fix = f"run `python prepare.py --dataset={name}` (plus the same --input if it is your own text)"
    if not os.path.isfile(path):
        sys.exit(f"error: token file {path} not found; {fix} first")
    with open(path, "rb") as f:
        head = f.read(HEADER_SIZE)
    if len(head) < HEADER_SIZE or not head.startswith(MAGIC):
        sys.exit(f"error: {path} is not a token file (no {MAGIC.decode()} header); "
                 f"{fix} to make one")
    _, version, itemsize, vocab, n_tokens, n_bytes, sha = HEADER.unpack_from(head)
    if version != VERSION or itemsize not in (2, 4):
        sys.exit(f"error: {path} is token-file version {version} (itemsize {itemsize}), "
                 f"this code reads version {VERSION}; {fix} again")
    size, expected = os.path.getsize(path), HEADER_SIZE + n_tokens * itemsize
    if size != expected:
        sys.exit(f"error: {path} is truncated or damaged ({size} bytes, its header promises "
                 f"{expected}); {fix} again")
    info = dict(vocab_size=vocab, n_tokens=n_tokens, n_bytes=n_bytes, tokenizer_sha256=sha.hex(),
                itemsize=itemsize)
    if tokenizer_path is not None:
        if not os.path.isfile(tokenizer_path):
            sys.exit(f"error: tokenizer {tokenizer_path} not found; {fix}")
        if (actual := sha256_file(tokenizer_path)) != info["tokenizer_sha256"]:
            sys.exit(f"error: {path} was made with a different tokenizer than {tokenizer_path} "
                     f"(sha256 {info['tokenizer_sha256'][:12]}... vs {actual[:12]}...); "
                     f"{fix} so they match")
    dtype = token_dtype(itemsize)
    if n_tokens == 0:  # mmap refuses an empty range
        return np.zeros(0, dtype), info
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
        ends, however it ends. A new run refuses a folder that holds a checkpoint; a resumed one
        first finishes a save that a crash cut short, or deletes what there was of it."""
        os.makedirs(path, exist_ok=True)
        self.path, self.saved_iter, self.log_file, self.hf_files = path, 0, None, None
        self.lock = open(os.path.join(path, LOCK), "a+")
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.lock.seek(0)
            sys.exit(f"error: {path}/ is in use by another train.py "
                     f"(process {self.lock.read().strip()}); "
                     f"wait for it to end, or train into another --out_dir")
        if resume:
            finish_checkpoint(path)
        elif (os.path.exists(os.path.join(path, "config.json"))
              or os.path.isdir(os.path.join(path, SAVING))):
            sys.exit(f"error: {path}/ already holds a checkpoint, which a new run would replace; "
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

    def save(self, it, config, weights, optimizer_state, tokenizer_path):
        """Iteration it's checkpoint: config.json (the model's config, plus train_settings and
        train_state), weights and optimizer state as safetensors whose metadata names the
        iteration, the tokenizer.model, and the tokenizer files that transformers and mlx-lm read
        beside it."""
        import mlx.core as mx  # here only: prepare.py uses this module without MLX

        def safetensors(arrays):
            def write(path):
                # through Python's file, which reports a full disk as such
                with open(path, "wb") as f:
                    mx.save_safetensors(f, arrays, metadata={"iter": str(it)})
            return write
        if self.hf_files is None:
            try:
                self.hf_files = hf_tokenizer_files(tokenizer_path,
                                                   config["max_position_embeddings"])
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
        sys.exit(f"error: {what} could not be written: {disk_full_hint(e, self.path)}; {kept}")


def read_resume(path, config, optimizer):
    """What --init_from=resume needs beside the weights: (train_state, train_settings, the
    optimizer's state as {name: array}), or a one-line exit that says what is missing and what to
    do."""
    import mlx.core as mx
    weights_only = f"start from the weights alone with --init_from={path} --out_dir=<a new folder>"
    if "train_state" not in config:
        sys.exit(f"error: {path} is not a checkpoint of train.py (no training state to resume); "
                 f"{weights_only}")
    for name in (OPTIMIZER, "tokenizer.model"):
        if not os.path.isfile(os.path.join(path, name)):
            sys.exit(f"error: {path}/{name} is missing, and resuming needs it; "
                     f"copy it back from where it went, or {weights_only}")
    state, saved = config["train_state"], config["train_settings"]
    if saved.get("optimizer", "adamw") != optimizer:
        sys.exit(f"error: {path}/{OPTIMIZER} holds {saved.get('optimizer', 'adamw')}'s state, not "
                 f"{optimizer}'s; resume with --optimizer={saved.get('optimizer', 'adamw')}, or "
                 f"{weights_only}")
    arrays, meta = mx.load(os.path.join(path, OPTIMIZER), return_metadata=True)
    if meta.get("iter") != str(state["iter"]):
        sys.exit(f"error: {path}/{OPTIMIZER} is from iteration {meta.get('iter')}, "
                 f"config.json from {state['iter']}: files of two checkpoints were mixed by hand; "
                 f"put back the matching pair")
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


# -------------------------------------------------------------------- the tokenizer for other tools

def check_normalization(sp, tool):
    # SentencePiece may rewrite text before splitting it (NFKC, collapsing spaces); the tokenizers
    # written here only add the dummy-prefix space and escape spaces as "▁", which is
    # SentencePiece's "identity" rule with remove_extra_whitespaces=False, the rule prepare.py
    # trains with (code needs its spaces and symbols as they are).
    probe = "a  b\tﬁ① "
    if sp.normalize(probe).lstrip("▁") != probe.replace(" ", "▁"):
        raise ValueError(f"this tokenizer.model normalizes text "
                         f"(normalize({probe!r}) = {sp.normalize(probe)!r}), "
                         f"which {tool} would not reproduce; "
                         f"train it with normalization_rule_name='identity' and "
                         f"remove_extra_whitespaces=False")


# whether SentencePiece puts a space in front of every text, as Llama 2's tokenizer does
def adds_dummy_prefix(sp):
    return sp.normalize("a").startswith("▁")


def hf_tokenizer_json(sp):
    """A SentencePiece BPE model as a Hugging Face `tokenizers` tokenizer.json: the pipeline of
    Llama 2's own tokenizer.json (transformers' LlamaConverter, legacy mode): "▁" in front if
    SentencePiece adds a dummy prefix, spaces to "▁", BPE with byte fallback, <s> first."""
    n = sp.vocab_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    normal = {p for p, i in vocab.items()
              if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))}
    # SentencePiece's BPE merges the adjacent pair whose union is the highest-scoring piece, and its
    # pieces are stored best score first, so a merge's rank is the id of the piece it makes; pairs
    # that make the same piece are ordered by the ids of their parts (as transformers'
    # generate_merges does).
    merges = []
    for piece, i in vocab.items():
        if piece in normal and len(piece) > 1:
            pairs = [(piece[:k], piece[k:]) for k in range(1, len(piece))
                     if piece[:k] in normal and piece[k:] in normal]
            merges += sorted(pairs, key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
    specials = [i for i in range(n) if sp.is_control(i) or sp.is_unknown(i)]
    bos = sp.id_to_piece(sp.bos_id())
    prefix = adds_dummy_prefix(sp)
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    decoders = ([{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                 {"type": "ByteFallback"}, {"type": "Fuse"}]
                + ([{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if prefix else []))
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": sp.id_to_piece(i), "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False, "special": True}
                         for i in specials],
        "normalizer": {"type": "Sequence",
                       "normalizers": ([{"type": "Prepend", "prepend": "▁"}] if prefix else [])
                       + [replace]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [sp.bos_id()], "tokens": [bos]}},
        },
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": None, "unk_token": sp.id_to_piece(sp.unk_id()),
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                  "byte_fallback": True, "ignore_merges": False, "vocab": vocab,
                  "merges": [list(m) for m in merges]},
    }


def hf_tokenizer_files(tokenizer_model, model_max_length=None):
    """{name: bytes} of the files that transformers' AutoTokenizer and mlx-lm read beside
    tokenizer.model, made from the SentencePiece model alone (no transformers needed):
    tokenizer.json, tokenizer_config.json, special_tokens_map.json and generation_config.json.
    Raises ValueError for a tokenizer they cannot reproduce."""
    sp = spm.SentencePieceProcessor(model_file=tokenizer_model)
    check_normalization(sp, "transformers")
    if sp.bos_id() < 0:
        raise ValueError("the tokenizer.model has no BOS token (<s>), "
                         "which the model's text starts with")
    special = {"bos_token": sp.id_to_piece(sp.bos_id()), "unk_token": sp.id_to_piece(sp.unk_id())}
    if sp.eos_id() >= 0:
        special["eos_token"] = sp.id_to_piece(sp.eos_id())
    # PreTrainedTokenizerFast runs tokenizer.json exactly as written. transformers 5's
    # LlamaTokenizer would rebuild the pipeline around the vocabulary and prepend "▁" only when
    # the text does not already start with a space, so " x" would not encode as SentencePiece
    # encodes it.
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special, "pad_token": None,
              "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
              "split_special_tokens": True,  # "<s>" typed in the text is text, as in SentencePiece
              "model_max_length": model_max_length or 1_000_000_000,
              "added_tokens_decoder": {str(i): {"content": sp.id_to_piece(i), "lstrip": False,
                                                "normalized": False, "rstrip": False,
                                                "single_word": False, "special": True}
                                       for i in range(sp.vocab_size())
                                       if sp.is_control(i) or sp.is_unknown(i)}}
    generation = {"bos_token_id": sp.bos_id(),
                  **({"eos_token_id": sp.eos_id()} if sp.eos_id() >= 0 else {})}
    files = {"tokenizer.json": hf_tokenizer_json(sp), "tokenizer_config.json": config,
             "special_tokens_map.json": special, "generation_config.json": generation}
    return {name: json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8")
            for name, obj in files.items()}


def read_config(path):
    """A checkpoint folder's config.json as a dict, or a one-line exit that says what is wrong and
    what to do."""
    config_path = os.path.join(path, "config.json")
    # the folder may hold files of two checkpoints
    if os.path.exists(os.path.join(path, SAVING, COMPLETE)):
        sys.exit(f"error: a save into {path!r} was cut short, and some of its files are not in "
                 f"place yet; python train.py --init_from=resume --out_dir={path} finishes it "
                 f"(or wait, if a run is saving)")
    if not os.path.isfile(config_path):
        sys.exit(f"error: no checkpoint in {path!r} (config.json missing); "
                 f"train one first: python train.py")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        sys.exit(f"error: {config_path} is not valid JSON ({e.__class__.__name__}: {e}); "
                 f"it was edited or damaged: restore it from a copy of the folder")
    if not isinstance(config, dict):
        sys.exit(f"error: {config_path} holds no JSON object; restore it from a copy of the folder")
    return config
