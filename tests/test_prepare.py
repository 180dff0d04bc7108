"""prepare.py (and corpus.py, pystdlib.py, named_datasets.py, files.py): token files, tokenizer,
document split, inputs and their errors.

Offline and fast: tiny corpora, and prepare.py run in this process (runpy) unless a test needs its
command line."""
import hashlib
import importlib
import io
import json
import os
import random
import re
import runpy
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import sentencepiece as spm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import chat  # noqa: E402
import corpus  # noqa: E402
import files  # noqa: E402
import named_datasets  # noqa: E402
import pystdlib  # noqa: E402
from errors import Error  # noqa: E402

WORDS = ("the a to of and in is it you that he was for on are with as I his they be at one have "
         "this from or had by word but what some we can out other were all there when up use your "
         "how said an each she which do their def return self if else elif for while import class "
         "None True False print len range").split()
TRICKY = ("def f(x):\n\tif x:\n        return  x   # two  spaces\n\n\n"
          "  café ünïcode 日本語 😀 🦙\r\nend \n")


def make_docs(n, seed=0, lines=(3, 12)):
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        body = []
        for _ in range(rng.randint(*lines)):
            indent = " " * rng.choice((0, 0, 4, 8)) + "\t" * rng.choice((0, 0, 0, 1))
            body.append(indent + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 10))))
        docs.append(f"doc {i}\n" + "\n".join(body) + "\n")
    return docs


def write_corpus(folder, docs, ext=".txt"):
    os.makedirs(folder, exist_ok=True)
    for i, doc in enumerate(docs):
        with open(os.path.join(folder, f"{i:04d}{ext}"), "w", encoding="utf-8") as f:
            f.write(doc)
    return folder


def prepare(*args):
    """python prepare.py ARGS, in this process: the same script, without a new interpreter's
    start-up."""
    argv = sys.argv
    sys.argv = [os.path.join(ROOT, "prepare.py"), *args]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        sys.argv = argv


def run(tmp_path, *args):
    """prepare.py on the settings; returns the output folder."""
    prepare(f"--data_dir={tmp_path / 'data'}", "--vocab_size=400", *args)
    name = next(a.split("=", 1)[1] for a in args if a.startswith("--dataset="))
    return tmp_path / "data" / name


def one_line(e):
    """What a user sees of an error that ends a script: sys.exit's text, or a module's Error."""
    return str(e.code) if isinstance(e, SystemExit) else f"error: {e}"


def error_of(args, tmp_path):
    """The one-line message prepare.py exits with."""
    with pytest.raises((SystemExit, Error)) as e:  # the script's own, or a module's
        prepare(f"--data_dir={tmp_path / 'data'}", *args)
    message = one_line(e.value)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def documents_of(out, split):
    """Decode a token file back into its documents, checking each is wrapped in BOS ... EOS."""
    tokens, info = files.read_tokens(str(out / f"{split}.bin"), str(out / "tokenizer.model"))
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    tokens = tokens.tolist()
    starts = [i for i, t in enumerate(tokens) if t == sp.bos_id()]
    assert starts and starts[0] == 0 and tokens[-1] == sp.eos_id()
    docs = []
    for a, b in zip(starts, starts[1:] + [len(tokens)]):
        assert tokens[b - 1] == sp.eos_id() and sp.eos_id() not in tokens[a + 1:b - 1]
        docs.append(sp.decode(tokens[a + 1:b - 1]))
    assert info["n_bytes"] == sum(len(d.encode()) for d in docs)
    return docs


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 400-piece tokenizer trained on the tiny corpus, and its path."""
    model = corpus.train_tokenizer((line for doc in make_docs(200) for line in doc.split("\n")),
                                   400)
    path = tmp_path_factory.mktemp("tok") / "tiny.model"
    path.write_bytes(model)
    return model, str(path)


# ----------------------------------------------------------------------------- token files

@pytest.mark.parametrize("vocab_size, itemsize", [(500, 2), (65536, 2), (70000, 4)])
def test_token_file_round_trip(tmp_path, vocab_size, itemsize):
    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, vocab_size, n) for n in (5, 0, 1000, 37)]
    sha = hashlib.sha256(b"tokenizer").hexdigest()
    path = str(tmp_path / "x.bin")
    assert files.write_tokens(path, chunks, vocab_size, 12345, sha) == 1042
    tokens, info = files.read_tokens(path)
    assert np.array_equal(tokens, np.concatenate(chunks))
    assert info == dict(vocab_size=vocab_size, n_tokens=1042, n_bytes=12345, tokenizer_sha256=sha,
                        itemsize=itemsize, kind="text", n_loss_tokens=1042, mask=None)
    assert os.path.getsize(path) == files.HEADER_SIZE + 1042 * itemsize
    assert np.array_equal(np.memmap(path, tokens.dtype, mode="r", offset=files.HEADER_SIZE,
                                    shape=(1042,)), tokens)
    assert os.listdir(tmp_path) == ["x.bin"]


def test_token_file_streamed_byte_counts_and_empty(tmp_path):
    sha = "ab" * 32
    n = files.write_tokens(str(tmp_path / "a.bin"), ((np.arange(3), 10), (np.arange(2), 7)), 10,
                           None, sha)
    tokens, info = files.read_tokens(str(tmp_path / "a.bin"))
    assert n == 5 and info["n_bytes"] == 17 and tokens.tolist() == [0, 1, 2, 0, 1]
    files.write_tokens(str(tmp_path / "e.bin"), [], 10, 0, sha)
    tokens, info = files.read_tokens(str(tmp_path / "e.bin"))
    assert len(tokens) == 0 and info["n_tokens"] == 0


def test_token_file_crash_leaves_nothing(tmp_path):
    def chunks():
        yield np.arange(10)
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        files.write_tokens(str(tmp_path / "x.bin"), chunks(), 100, 0, "00" * 32)
    # an id the vocabulary does not have is a bug upstream, not a token
    with pytest.raises(ValueError):
        files.write_tokens(str(tmp_path / "x.bin"), [np.array([5, 100])], 100, 0, "00" * 32)
    assert os.listdir(tmp_path) == []


def test_chat_token_file_round_trip_and_old_files_still_read(tmp_path):
    rng, sha = np.random.default_rng(0), "cd" * 32
    chunks = [(rng.integers(0, 300, n), rng.integers(0, 4, n), n * 3) for n in (7, 0, 500)]
    path = str(tmp_path / "chat.bin")
    assert files.write_tokens(path, chunks, 300, None, sha, chat=True) == 507
    tokens, info = files.read_tokens(path)
    flags = np.concatenate([f for _, f, _ in chunks])
    assert np.array_equal(tokens, np.concatenate([t for t, _, _ in chunks]))
    assert np.array_equal(info["mask"], flags) and not info["mask"].flags.writeable
    assert (info["kind"], info["n_loss_tokens"], info["n_bytes"]) == (
        "chat", np.count_nonzero(flags & files.LOSS), 1521)
    assert os.path.getsize(path) == files.HEADER_SIZE + 507 * 3  # uint16 tokens, a flag byte each
    with pytest.raises(ValueError, match="2 flags for 3 tokens"):
        files.write_tokens(path, [(np.arange(3), [1, 0], 3)], 300, None, sha, chat=True)
    assert files.read_tokens(path)[1]["n_tokens"] == 507  # the good file stays
    files.write_tokens(str(tmp_path / "e.bin"), [], 300, None, sha, chat=True)
    tokens, info = files.read_tokens(str(tmp_path / "e.bin"))
    assert len(tokens) == len(info["mask"]) == 0 and info["kind"] == "chat"
    # a file of before there were kinds: the header's first 72 bytes, zeros after them
    old = (struct.pack("<8sIIQQQ32s", b"MLLAMATK", 1, 2, 300, 4, 17, bytes.fromhex(sha))
           .ljust(files.HEADER_SIZE, b"\0") + np.array([1, 5, 6, 2], "<u2").tobytes())
    (tmp_path / "old.bin").write_bytes(old)
    tokens, info = files.read_tokens(str(tmp_path / "old.bin"))
    assert tokens.tolist() == [1, 5, 6, 2] and info == dict(
        vocab_size=300, n_tokens=4, n_bytes=17, tokenizer_sha256=sha, itemsize=2, kind="text",
        n_loss_tokens=4, mask=None)


def read_error(path, tokenizer_path=None):
    with pytest.raises(Error) as e:
        files.read_tokens(str(path), tokenizer_path and str(tokenizer_path))
    message = one_line(e.value)
    assert message.startswith("error: ") and "\n" not in message and "prepare.py" in message
    return message


def test_read_tokens_refuses_bad_files(tmp_path):
    tok = tmp_path / "tokenizer.model"
    tok.write_bytes(b"model one")
    good = tmp_path / "train.bin"
    files.write_tokens(str(good), [np.arange(100)], 256, 400, files.sha256_file(str(tok)))
    assert files.read_tokens(str(good), str(tok))[1]["n_tokens"] == 100
    data = good.read_bytes()

    assert ("not found" in read_error(tmp_path / "val.bin")
            and f"--dataset={tmp_path.name}" in read_error(tmp_path / "val.bin"))
    (tmp_path / "foreign.bin").write_bytes(b"\x93NUMPY" + bytes(300))
    assert "not a token file" in read_error(tmp_path / "foreign.bin")
    (tmp_path / "short.bin").write_bytes(data[:20])
    assert "not a token file" in read_error(tmp_path / "short.bin")
    (tmp_path / "cut.bin").write_bytes(data[:-2])
    assert "truncated" in read_error(tmp_path / "cut.bin")
    (tmp_path / "v2.bin").write_bytes(data[:8] + (2).to_bytes(4, "little") + data[12:])
    assert "version 2" in read_error(tmp_path / "v2.bin")
    (tmp_path / "kind.bin").write_bytes(data[:72] + (7).to_bytes(4, "little") + data[76:])
    assert "kind 7" in read_error(tmp_path / "kind.bin")
    chat_header = data[:72] + (1).to_bytes(4, "little") + data[76:]
    (tmp_path / "noflags.bin").write_bytes(chat_header)  # a chat file without its flags
    assert "truncated" in read_error(tmp_path / "noflags.bin")
    tok.write_bytes(b"model two")
    assert "different tokenizer" in read_error(good, tok)
    assert "not found" in read_error(good, tmp_path / "missing.model")


# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer_is_lossless(tiny_model):
    sp = spm.SentencePieceProcessor(model_proto=tiny_model[0])
    assert ((sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id(), sp.get_piece_size())
            == (0, 1, 2, -1, 400))
    for text in [TRICKY, " leading space", "   ", "\n\n", "\t\ttabs\t", "trailing  ", "x" * 10000,
                 ""]:
        assert sp.decode(sp.encode(text)) == text


def test_tokenize_cuts_documents_exactly(tiny_model):
    """Long documents are encoded in pieces cut after newlines: same tokens as encoding each
    whole."""
    sp = spm.SentencePieceProcessor(model_proto=tiny_model[0])
    assert corpus.segment_chars(sp) == 2048
    docs = make_docs(30, seed=1, lines=(50, 400)) + [TRICKY * 300]
    stats = dict(name="test", docs=0, bytes=0, seconds=0.0)
    chunks = list(corpus.tokenize(iter(docs), sp, stats, chunk_chars=20_000))
    assert len(chunks) > 3 and stats["docs"] == len(docs)
    assert sum(n for _, n in chunks) == stats["bytes"] == sum(len(d.encode()) for d in docs)
    expected = [t for ids in sp.encode(docs) for t in [1, *ids, 2]]
    assert np.concatenate([c for c, _ in chunks]).tolist() == expected


def test_reused_tokenizer_with_dummy_prefix_encodes_whole_documents(tmp_path):
    # a Llama-like model: dummy prefix on, so cutting would add spaces
    model = spm.SentencePieceTrainer
    path = tmp_path / "llama_like"
    model.train(sentence_iterator=iter(make_docs(100)), model_prefix=str(path), vocab_size=300,
                model_type="bpe", byte_fallback=True, add_dummy_prefix=True,
                normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(path) + ".model")
    assert corpus.segment_chars(sp) is None
    docs = make_docs(5, lines=(300, 300))
    stats = dict(name="test", docs=0, bytes=0, seconds=0.0)
    tokens = np.concatenate([c for c, _ in corpus.tokenize(docs, sp, stats)]).tolist()
    assert tokens == [t for ids in sp.encode(docs) for t in [1, *ids, 2]]


# ----------------------------------------------------------------------------- documents and splits

def test_split_documents_is_even_deterministic_and_never_leaves_val_empty():
    docs = [f"doc {i}" for i in range(100)]
    splits = list(corpus.split_documents(iter(docs), 0.05))
    assert [t for _, t in splits] == docs
    assert ([t for s, t in splits if s == "val"]
            == ["doc 19", "doc 39", "doc 59", "doc 79", "doc 99"])
    assert splits == list(corpus.split_documents(iter(docs), 0.05))
    assert (list(corpus.split_documents(iter(["a", "b", "c"]), 0.05))
            == [("train", "a"), ("train", "b"), ("val", "c")])
    assert (list(corpus.split_documents(iter(["a", " \n", "", "b"]), 0.05))
            == [("train", "a"), ("val", "b")])
    assert (list(corpus.split_documents(iter(["0123456789"]), 0.2))
            == [("train", "01234567"), ("val", "89")])
    assert list(corpus.split_documents(iter([]), 0.2)) == []


def test_prepare_input_folder_end_to_end(tmp_path):
    docs = make_docs(60) + [TRICKY]
    corpus_dir = write_corpus(tmp_path / "corpus_dir", docs[:40])
    write_corpus(tmp_path / "corpus_dir" / "sub", docs[40:], ext=".md")
    (tmp_path / "corpus_dir" / "ignored.py").write_text("not text for sure")
    out = run(tmp_path, f"--input={corpus_dir}", "--dataset=tiny", "--val_fraction=0.1")
    train, val = documents_of(out, "train"), documents_of(out, "val")
    docs = [d.replace("\r\n", "\n") for d in docs]  # files are read with universal newlines
    assert sorted(train + val) == sorted(docs)  # every document whole in exactly one split
    assert len(val) == 6 and not set(train) & set(val)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["vocab_size"] == 400 and meta["splits"]["val"]["docs"] == 6
    assert meta["tokenizer_sha256"] == files.sha256_file(str(out / "tokenizer.model"))
    assert (meta["splits"]["train"]["tokens"]
            == files.read_tokens(str(out / "train.bin"))[1]["n_tokens"])
    assert meta["settings"]["input"] == str(corpus_dir)
    assert sorted(os.listdir(out)) == ["meta.json", "tokenizer.model", "train.bin", "val.bin"]
    first = (out / "train.bin").read_bytes()
    run(tmp_path, f"--input={corpus_dir}", "--dataset=tiny", "--val_fraction=0.1")
    assert (out / "train.bin").read_bytes() == first  # deterministic


def test_input_glob_and_jsonl(tmp_path):
    docs = make_docs(30)
    write_corpus(tmp_path / "a", docs[:10], ext=".md")
    write_corpus(tmp_path / "a", docs[10:12], ext=".txt")
    with open(tmp_path / "rows.jsonl", "w") as f:
        for doc in docs[12:]:
            f.write(json.dumps({"text": doc, "id": 1}) + "\n\n")
    assert list(corpus.input_documents([str(tmp_path / "rows.jsonl")])) == docs[12:]
    assert (list(corpus.input_documents(corpus.input_files(str(tmp_path / "a" / "*.md"))))
            == docs[:10])
    out = run(tmp_path, f"--input={tmp_path}/**/*.*", "--dataset=mixed")
    assert sorted(documents_of(out, "train") + documents_of(out, "val")) == sorted(docs)


def test_reuse_tokenizer(tmp_path, tiny_model):
    corpus_dir = write_corpus(tmp_path / "c", make_docs(20, seed=5))
    out = run(tmp_path, f"--input={corpus_dir}", "--dataset=reuse", f"--tokenizer={tiny_model[1]}",
              "--vocab_size=999")
    assert (out / "tokenizer.model").read_bytes() == tiny_model[0]
    assert json.loads((out / "meta.json").read_text())["vocab_size"] == 400
    assert (sorted(documents_of(out, "train") + documents_of(out, "val"))
            == sorted(make_docs(20, seed=5)))


def test_command_line_end_to_end(tmp_path):
    corpus_dir = write_corpus(tmp_path / "c", make_docs(30))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), f"--input={corpus_dir}",
                        "--dataset=cli", f"--data_dir={tmp_path}", "--vocab_size=300"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "MB/s" in r.stdout and "train: 29 docs" in r.stderr
    tokens, info = files.read_tokens(str(tmp_path / "cli" / "val.bin"),
                                     str(tmp_path / "cli" / "tokenizer.model"))
    assert info["vocab_size"] == 300 and tokens[0] == 1 and tokens[-1] == 2


def test_stdlib_corpus_is_the_library_without_its_tests():
    paths = pystdlib.stdlib_files()
    names = [os.path.relpath(f, pystdlib.sysconfig.get_paths()["stdlib"]) for f in paths]
    assert len(paths) > 300 and paths == sorted(paths)
    assert {"os.py", "json/__init__.py", "asyncio/tasks.py"} <= set(names)
    for name in names:
        parts = name.split(os.sep)
        assert not {"test", "tests", "idle_test", "site-packages", "__pycache__"} & set(parts), name
        assert (not parts[-1].startswith("test_") and name.endswith(".py")
                and name != "pydoc_data/topics.py")
    docs = pystdlib.stdlib_documents(paths)
    assert "import" in next(docs)
    from pydoc_data.topics import topics
    assert sum(1 for _ in docs) == len(paths) - 1 + len(topics)


# ----------------------------------------------------------------------------- bad input

def test_too_small_a_vocabulary_names_the_smallest_that_works(tmp_path):
    corpus_dir = write_corpus(tmp_path / "c", make_docs(40) + [TRICKY])
    message = error_of([f"--input={corpus_dir}", "--dataset=v", "--vocab_size=1"], tmp_path)
    smallest = int(message.split("use --vocab_size=")[1].split()[0])
    # 256 bytes and 3 specials at least
    assert "--vocab_size=1 is too small" in message and smallest > 259
    assert "too small" in error_of([f"--input={corpus_dir}", "--dataset=v",
                                    f"--vocab_size={smallest - 1}"], tmp_path)
    out = run(tmp_path, f"--input={corpus_dir}", "--dataset=v", f"--vocab_size={smallest}")
    assert json.loads((out / "meta.json").read_text())["vocab_size"] == smallest


def test_leftovers_of_a_killed_run_are_cleaned_up(tmp_path):
    corpus_dir = write_corpus(tmp_path / "c", make_docs(20))
    out = tmp_path / "data" / "left"
    out.mkdir(parents=True)
    (out / "train.bin.tmp").write_bytes(b"half a token file")
    run(tmp_path, f"--input={corpus_dir}", "--dataset=left")
    assert sorted(os.listdir(out)) == ["meta.json", "tokenizer.model", "train.bin", "val.bin"]


def test_bad_input_exits_with_one_clear_line_and_writes_nothing(tmp_path, tiny_model):
    corpus_dir = str(write_corpus(tmp_path / "c", make_docs(40)))
    empty = write_corpus(tmp_path / "empty", ["", "  \n\n"])
    (tmp_path / "junk.model").write_bytes(b"not a model")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"title": "no text"}\n')
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    cases = {
        "no such file": [f"--input={tmp_path}/missing", "--dataset=x"],
        "no .txt, .md or .jsonl": [f"--input={tmp_path / 'data'}", "--dataset=x"],
        "no text in": [f"--input={empty}", "--dataset=x"],
        "--tokenizer=": [f"--input={corpus_dir}", "--dataset=x",
                         f"--tokenizer={tmp_path}/missing.model"],
        "not a SentencePiece model": [f"--input={corpus_dir}", "--dataset=x",
                                      f"--tokenizer={tmp_path}/junk.model"],
        "too small": [f"--input={corpus_dir}", "--dataset=x", "--vocab_size=100"],
        "too small for this corpus": [f"--input={corpus_dir}", "--dataset=x", "--vocab_size=-3"],
        "too large": [f"--input={corpus_dir}", "--dataset=x", "--vocab_size=100000"],
        "needs --dataset=NAME": [f"--input={corpus_dir}"],
        "unknown --dataset=nope": ["--dataset=nope"],
        "bad.jsonl:2": [f"--input={tmp_path}/bad.jsonl", "--dataset=x"],
        "not UTF-8": [f"--input={tmp_path}/latin1.txt", "--dataset=x"],
        "between 0 and 1": [f"--input={corpus_dir}", "--dataset=x", "--val_fraction=1.5"],
        "--url does not apply": ["--url=http://example.com/x"],
        "--train_url does not apply to tinyshakespeare": ["--dataset=tinyshakespeare",
                                                          "--train_url=http://x/y"],
    }
    (tmp_path / "data").mkdir()
    for expected, args in cases.items():
        assert expected in error_of(args, tmp_path), args
    assert os.listdir(tmp_path / "data") == []


# --------------------------------------------------------------------- downloads and named datasets

def known(data):
    return len(data), hashlib.sha256(data).hexdigest()


def test_download_caches_resumes_and_checks(server, tmp_path):
    data = os.urandom(300_000)
    server.files["/f.bin"] = data
    path = str(tmp_path / "raw" / "f.bin")
    assert named_datasets.download(server.url + "/f.bin", path, *known(data)) == path
    assert open(path, "rb").read() == data and os.listdir(tmp_path / "raw") == ["f.bin"]
    named_datasets.download(server.url + "/f.bin", path, *known(data))
    assert len(server.requests) == 1  # cached: the second run asks nothing

    server.requests.clear()
    server.cut["/f.bin"] = 100_000  # cut, then resumed with a Range request in the same run
    path = str(tmp_path / "raw" / "g.bin")
    named_datasets.download(server.url + "/f.bin", path, None, None)
    assert open(path, "rb").read() == data
    assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=100000-")]

    server.requests.clear()  # a .part left by an earlier, killed run is resumed too
    path = str(tmp_path / "raw" / "h.bin")
    open(path + ".part", "wb").write(data[:123])
    named_datasets.download(server.url + "/f.bin", path, *known(data))
    assert open(path, "rb").read() == data and server.requests == [("/f.bin", "bytes=123-")]

    server.ranges = False  # a server without Range support: start over
    path = str(tmp_path / "raw" / "i.bin")
    open(path + ".part", "wb").write(b"junk")
    named_datasets.download(server.url + "/f.bin", path, None, None)
    assert open(path, "rb").read() == data


def download_error(*args):
    with pytest.raises(Error) as e:
        named_datasets.download(*args)
    message = one_line(e.value)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_download_errors_name_the_url_and_the_fix(server, tmp_path):
    data = b"the real file\n" * 1000
    server.files["/f.txt"] = b"a mirror serving something else\n" * 10
    path = str(tmp_path / "f.txt")
    message = download_error(server.url + "/f.txt", path, *known(data), "url")
    assert ("not the expected file (320 bytes; expected 14,000 bytes, sha256" in message
            and "--url=URL" in message)
    server.files["/f.txt"] = data[:-1] + b"X"
    assert "sha256" in download_error(server.url + "/f.txt", path, *known(data), "url")
    assert os.listdir(tmp_path) == []  # the bad file is gone, not kept as if valid

    message = download_error(server.url + "/nope.txt", path, None, None, "train_url")
    assert "HTTP 404" in message and server.url + "/nope.txt" in message
    assert "--train_url=URL" in message and "--input=" in message
    server.httpd.shutdown()
    server.httpd.server_close()
    message = download_error(server.url + "/f.txt", path, None, None, "url")
    assert "could not download" in message and "--url=URL" in message
    assert os.listdir(tmp_path) == []


def test_wikitext_articles_start_only_at_titles():
    lines = [" \n", " = Valkyria Chronicles III = \n", " \n",
             " Senjō no Valkyria 3 is a game . \n", " = = Gameplay = = \n",
             " = = = Sub section = = = \n", " = 5 + 3 \n", " =2 = \n",
             " Arsenal 3 = 1 Chelsea = \n", " = A = = \n", " \n", " = E = mc2 = \n", " \n",
             " Text . \n", " = X = \n", " = Last = \n"]
    articles = list(named_datasets.wikitext_articles(lines))
    assert [a.splitlines()[0] for a in articles] == [" = Valkyria Chronicles III = ",
                                                     " = E = mc2 = ", " = X = ", " = Last = "]
    # only the blank line in front of the first title is dropped
    assert "".join(articles) == "".join(lines[1:])


def test_split_stories_across_reads():
    stories = [f"Once upon a time {i}.\nThe end." for i in range(50)]
    text = "\n<|endoftext|>\n".join(stories) + "\n<|endoftext|>\n\n"
    assert list(named_datasets.split_stories(io.StringIO(text), block=7)) == stories
    assert list(named_datasets.split_stories(io.StringIO(text))) == stories


def test_tokenizer_learns_from_a_sample_of_a_larger_corpus(tmp_path, monkeypatch):
    seen = []
    train = corpus.train_tokenizer
    monkeypatch.setattr(corpus, "train_tokenizer",
                        lambda lines, v, n: train(seen.extend(lines) or seen, v, n))
    docs = make_docs(2000, lines=(5, 40))
    corpus_dir = write_corpus(tmp_path / "c", docs)
    out = run(tmp_path, f"--input={corpus_dir}", "--dataset=big", "--tokenizer_sample_bytes=60000")
    assert sum(len(line) + 1 for line in seen) <= 60000 < sum(len(d) for d in docs) / 10
    assert sorted(documents_of(out, "train") + documents_of(out, "val")) == sorted(docs)


def test_tinyshakespeare_from_a_mirror(server, tmp_path, monkeypatch):
    text = "".join(f"CITIZEN {i}:\nSpeak, speak. Before we proceed any further, hear me {i}.\n\n"
                   for i in range(400))
    server.files["/input.txt"] = text.encode()
    monkeypatch.setitem(named_datasets.DATASETS["tinyshakespeare"]["files"], "url",
                        ("input.txt", "unused", *known(text.encode())))
    args = ["--dataset=tinyshakespeare", f"--url={server.url}/input.txt", "--vocab_size=300"]
    out = run(tmp_path, *args)
    cut = int(len(text) * 0.9)
    assert documents_of(out, "train") == [text[:cut]] and documents_of(out, "val") == [text[cut:]]
    assert (out / "raw" / "input.txt").read_text() == text
    run(tmp_path, *args)
    assert len(server.requests) == 1


def test_tinystories_from_a_mirror(server, tmp_path):
    stories = {split: [f"{split} story {i}: Tom saw a dog. The dog was big.\nThey played."
                       for i in range(n)]
               for split, n in (("train", 120), ("valid", 10))}
    for split, items in stories.items():
        server.files[f"/TinyStoriesV2-GPT4-{split}.txt"] = "\n<|endoftext|>\n".join(items).encode()
    out = run(tmp_path, "--dataset=tinystories", "--vocab_size=300",
              f"--train_url={server.url}/TinyStoriesV2-GPT4-train.txt",
              f"--val_url={server.url}/TinyStoriesV2-GPT4-valid.txt")
    assert (documents_of(out, "train") == stories["train"]
            and documents_of(out, "val") == stories["valid"])
    assert sorted(os.listdir(out / "raw")) == ["TinyStoriesV2-GPT4-train.txt",
                                               "TinyStoriesV2-GPT4-valid.txt"]


def test_wikitext103_from_a_mirror(server, tmp_path, monkeypatch):
    def article(title, n):
        return (f" \n = {title} = \n \n {title} is a thing . \n \n = = History = = \n \n It was "
                f"{n} @-@ {n} . \n")
    splits = {"train": [article(f"Train {i}", i) for i in range(40)],
              "valid": [article("Valid", 1)],
              "test": [article("Test", 2), article("Test two", 3)]}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for split, articles in splits.items():
            z.writestr(f"wikitext-103-raw/wiki.{split}.raw", "".join(articles))
    data = buffer.getvalue()
    server.files["/wikitext-103-raw-v1.zip"] = data
    monkeypatch.setitem(named_datasets.DATASETS["wikitext103"]["files"], "url",
                        ("wikitext-103-raw-v1.zip", "unused", *known(data)))
    out = run(tmp_path, "--dataset=wikitext103", "--vocab_size=300",
              f"--url={server.url}/wikitext-103-raw-v1.zip")
    for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        articles = splits[name]  # each article runs from its title to the next title
        expected = [a[2:] + " \n" for a in articles[:-1]] + [articles[-1][2:]]
        assert documents_of(out, split) == expected
    assert json.loads((out / "meta.json").read_text())["splits"]["test"]["docs"] == 2


# ----------------------------------------------------------------------------- conversations

def conversation(i):
    """A small conversation; every third has a system prompt, every fourth two exchanges."""
    messages = [{"role": "system", "content": f"You are bot {i}."}] * (i % 3 == 0) + [
        {"role": "user", "content": f"What is {WORDS[i % len(WORDS)]} {i}?"},
        {"role": "assistant", "content": f"It is {WORDS[(i * 7) % len(WORDS)]}, a word  😀"}]
    return messages + [{"role": "user", "content": "And then?"},
                       {"role": "assistant", "content": f"Then {i}."}] * (i % 4 == 0)


def write_chats(path, rows):
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    return path


def chats_of(out, split):
    """A chat token file as [(ids, mask)] a conversation, cut at its START flags."""
    tokens, info = files.read_tokens(str(out / f"{split}.bin"), str(out / "tokenizer.model"))
    assert info["kind"] == "chat"
    flags, tokens = np.array(info["mask"]), tokens.tolist()
    starts = np.flatnonzero(flags & files.START).tolist()
    assert (starts[:1] == [0] and flags.max() <= 3
            and info["n_loss_tokens"] == np.count_nonzero(flags & files.LOSS))
    return [(tokens[a:b], (flags[a:b] & files.LOSS).tolist())
            for a, b in zip(starts, starts[1:] + [len(tokens)])]


@pytest.fixture
def base(tmp_path, tiny_model):
    """The default run's tokenizer, where a chat set looks for it: data/pystdlib/tokenizer.model."""
    (tmp_path / "data" / "pystdlib").mkdir(parents=True)
    (tmp_path / "data" / "pystdlib" / "tokenizer.model").write_bytes(tiny_model[0])
    return spm.SentencePieceProcessor(model_proto=tiny_model[0])


def test_prepare_conversations_end_to_end(tmp_path, base):
    conversations = [conversation(i) for i in range(30)]
    path = write_chats(tmp_path / "chats.jsonl", [{"messages": m, "id": i}
                                                  for i, m in enumerate(conversations)] + [""])
    out = run(tmp_path, f"--input={path}", "--dataset=mychat", "--val_fraction=0.1")
    assert sorted(os.listdir(out)) == ["meta.json", "tokenizer.model", "train.bin", "val.bin"]
    assert (out / "tokenizer.model").read_bytes() == (
        tmp_path / "data" / "pystdlib" / "tokenizer.model").read_bytes()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "chat" and meta["splits"]["val"]["docs"] == 3
    for split in ("train", "val"):
        expected = [m for s, m in corpus.split_documents(conversations, 0.1) if s == split]
        rendered = [chat.render_conversation(base, m) for m in expected]
        assert chats_of(out, split) == [(ids, mask) for ids, mask in rendered]
        info = files.read_tokens(str(out / f"{split}.bin"))[1]
        assert info["n_bytes"] == sum(map(chat.reply_bytes, expected)) == (
            meta["splits"][split]["bytes"])
        assert info["n_loss_tokens"] == meta["splits"][split]["loss_tokens"] == sum(
            sum(mask) for _, mask in rendered)


def test_bad_conversation_rows_name_file_and_line_and_write_nothing(tmp_path, base):
    good = [{"messages": conversation(i)} for i in range(3)]
    cases = {"no assistant turn": {"messages": [{"role": "user", "content": "hi"}]},
             "unknown role 'bot'": {"messages": [{"role": "user", "content": "hi"},
                                                 {"role": "bot", "content": "yo"}]},
             "content is not a string": {"messages": [{"role": "user", "content": "hi"},
                                                      {"role": "assistant", "content": 3}]},
             "not JSON": '{"messages": [\n',
             "not a JSON object": "[1, 2]\n",
             'a row must be {"messages"': {"text": "a document among conversations"}}
    for expected, row in cases.items():
        path = write_chats(tmp_path / "chats.jsonl", good[:2] + [row] + good[2:])
        message = error_of([f"--input={path}", "--dataset=bad", "--val_fraction=0.5"], tmp_path)
        assert message.startswith(f"error: {path}, line 3: ") and expected in message, message
    # as the user sees it: one line, and no data/bad/ (the bad row is in val: train came first)
    path = write_chats(tmp_path / "chats.jsonl", good + [cases["unknown role 'bot'"]])
    r = subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), "--input=chats.jsonl",
                        "--dataset=bad", "--val_fraction=0.5"], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 1 and r.stderr == ("error: chats.jsonl, line 4: message 2 has the "
                                              "unknown role 'bot' (system, user or assistant)\n")
    assert os.listdir(tmp_path / "data") == ["pystdlib"]


def test_conversations_take_the_base_tokenizer_or_say_how_to_make_it(tmp_path, tiny_model):
    path = write_chats(tmp_path / "chats.jsonl", [{"messages": conversation(i)} for i in range(4)])
    message = error_of([f"--input={path}", "--dataset=c"], tmp_path)
    assert "data/pystdlib/tokenizer.model" in message and "python prepare.py" in message
    assert "--tokenizer=" in message
    out = run(tmp_path, f"--input={path}", "--dataset=c", f"--tokenizer={tiny_model[1]}")
    assert (out / "tokenizer.model").read_bytes() == tiny_model[0]
    # pieces that end in a space ("]▁"): a reply's first token would hold the prompt's end
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["[INST] What? [/INST] It is"] * 99),
                                   model_prefix=str(tmp_path / "suffix"), vocab_size=280,
                                   model_type="bpe", byte_fallback=True, minloglevel=2,
                                   treat_whitespace_as_suffix=True)
    message = error_of([f"--input={path}", "--dataset=s", f"--tokenizer={tmp_path}/suffix.model"],
                       tmp_path)
    assert f"{tmp_path}/suffix.model: this tokenizer makes a piece that spans" in message
    assert not (tmp_path / "data" / "s").exists()


def test_pystdlib_chat_asks_about_each_module_in_one_split():
    names = ["array", "builtins", "dis", "json", "json.decoder", "keyword", "opcode", "os.path",
             "textwrap"]
    modules = {name: importlib.import_module(name) for name in names}
    # val: every 2nd of them but builtins and os.path: dis, json.decoder, opcode
    chats = list(pystdlib.stdlib_chats(modules, val_every=2))
    text = {split: "\n".join(m["content"] for s, c in chats if s == split for m in c)
            for split in ("train", "val")}
    asked = {split: set(re.findall(r"`((?:%s)[\w.]*)" % "|".join(names).replace(".", r"\."),
                                    text[split]))
             for split in text}
    assert {"json.dumps", "os.path.join", "json", "array.array", "keyword.iskeyword"} <= (
        asked["train"])
    assert {"json.decoder.JSONDecoder", "dis.stack_effect", "json.decoder"} <= asked["val"]
    # no function in both, nor twice: json offers JSONDecoder, but json.decoder has it; opcode
    # offers dis's stack_effect; ArrayType is array.array's other name
    assert not asked["train"] & asked["val"]
    assert not {"json.JSONDecoder", "opcode.stack_effect", "array.ArrayType"} & (
        asked["train"] | asked["val"])
    pairs = {(q["content"], a["content"]) for s, c in chats if s == "train"
             for q, a in zip(c, c[1:]) if q["role"] == "user"}
    assert ("What does `json.dumps` do?", "Serialize ``obj`` to a JSON formatted ``str``.") in pairs
    assert ("What arguments does `os.path.join` take?", "`os.path.join(a, *p)`") in pairs
    assert ("What does `len` do?", "Return the number of items in a container.") in pairs
    assert ("Which module is `iskeyword` in?",
            "`iskeyword` is in the `keyword` module: `keyword.iskeyword`.") in pairs
    assert any(len(c) == 5 and c[0]["role"] == "system" for _, c in chats)  # system + two turns
    for _, c in chats:
        chat.check_conversation(c)
        assert all(len(m["content"]) <= 300 for m in c)


def test_pystdlib_chat_end_to_end_and_deterministic(tmp_path, base):
    for seed, data_dir in (("1", "data"), ("2", "again")):  # sets iterate in another order
        r = subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"),
                            "--dataset=pystdlib-chat", f"--data_dir={data_dir}",
                            f"--tokenizer={tmp_path / 'data' / 'pystdlib' / 'tokenizer.model'}"],
                           capture_output=True, text=True, cwd=tmp_path,
                           env={**os.environ, "PYTHONHASHSEED": seed})
        assert r.returncode == 0, r.stderr
    out = tmp_path / "data" / "pystdlib-chat"
    for split in ("train", "val"):
        assert (out / f"{split}.bin").read_bytes() == (
            tmp_path / "again" / "pystdlib-chat" / f"{split}.bin").read_bytes()
    meta = json.loads((out / "meta.json").read_text())
    n = {split: meta["splits"][split]["docs"] for split in ("train", "val")}
    assert meta["kind"] == "chat" and 5000 <= n["train"] + n["val"] <= 20000 and n["val"] > 100
    assert [len(chats_of(out, split)) for split in n] == list(n.values())
    text = "".join(base.decode(files.read_tokens(str(out / f"{split}.bin"))[0].tolist())
                   for split in n)
    assert ("[INST] What does `json.dumps` do? [/INST] Serialize ``obj`` to a JSON formatted "
            "``str``. " in text)


def test_dolly_chat_from_a_mirror(server, tmp_path, base):
    rows = [{"instruction": f"Name a word like {WORDS[i % len(WORDS)]}.",
             "context": "" if i % 3 else f"A text about {i}.\n", "response": f"{WORDS[i]} {i}",
             "category": "open_qa"} for i in range(45)]
    server.files["/dolly.jsonl"] = "".join(json.dumps(r) + "\n" for r in rows).encode()
    args = ["--dataset=dolly-chat", f"--url={server.url}/dolly.jsonl"]
    out = run(tmp_path, *args)
    conversations = [named_datasets.dolly_messages(r) for r in rows]
    assert conversations[0][0]["content"] == "A text about 0.\n\nName a word like the."
    assert conversations[1][0]["content"] == "Name a word like a."
    for split, expected in (("train", [c for i, c in enumerate(conversations) if i % 20 != 19]),
                            ("val", [conversations[19], conversations[39]])):
        assert chats_of(out, split) == [chat.render_conversation(base, c) for c in expected]
    assert os.listdir(out / "raw") == ["databricks-dolly-15k.jsonl"]
    run(tmp_path, *args)
    assert len(server.requests) == 1  # cached
    server.files["/bad.jsonl"] = b'{"instruction": "x", "response": 5}\n'
    message = error_of(["--dataset=dolly-chat", f"--url={server.url}/bad.jsonl",
                        f"--data_dir={tmp_path / 'other'}",
                        f"--tokenizer={tmp_path / 'data' / 'pystdlib' / 'tokenizer.model'}"],
                       tmp_path)
    assert "databricks-dolly-15k.jsonl, line 1: a dolly row has" in message


# ----------------------------------------------------------------------------- fineweb-edu

def shard_texts(index, n_docs):
    """A shard's documents: short English-ish texts, each naming its shard and row."""
    rng = random.Random(index)
    return [f"shard {index} doc {i}: " + " ".join(rng.choice(WORDS[:40]) for _ in range(30))
            + "\nThe end.\n" for i in range(n_docs)]


def parquet_bytes(texts, row_group_size):
    """A parquet file written as nanochat writes its shards (zstd, no dictionary, no
    statistics), with small row groups."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buffer, row_group_size=row_group_size,
                   compression="zstd", use_dictionary=False, write_statistics=False)
    return buffer.getvalue()


@pytest.fixture
def fineweb(server, monkeypatch):
    """A 4-shard FineWeb-Edu on the local server (shard 3, the last, is val): shard 0 in 4 row
    groups, shard 1 in 2, shard 2 (never asked for with --shards=2) and shard 3 in 3; the
    row groups read, in order, are recorded in `reads`."""
    pq = pytest.importorskip("pyarrow.parquet")
    monkeypatch.setitem(named_datasets.DATASETS["fineweb-edu"], "shards", 4)
    shards = {0: shard_texts(0, 14), 1: shard_texts(1, 6), 2: shard_texts(2, 9),
              3: shard_texts(3, 8)}
    shards[0][5] = None  # a null row, as an empty one, is no document
    for index, texts in shards.items():
        server.files[f"/fw/shard_{index:05d}.parquet"] = parquet_bytes(texts, 4 if index == 0
                                                                       else 3)
    reads, read_row_group = [], pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, i, *args, **kwargs: (
        reads.append(i), read_row_group(self, i, *args, **kwargs))[1])
    for whole in ("read", "iter_batches"):  # a shard read whole would not be bounded
        monkeypatch.setattr(pq.ParquetFile, whole, None)
    monkeypatch.setattr(pq, "read_table", None)
    server.shards, server.reads = shards, reads
    return server


def test_fineweb_edu_from_a_mirror(fineweb, tmp_path):
    args = ["--dataset=fineweb-edu", "--shards=2", f"--url={fineweb.url}/fw/", "--vocab_size=300"]
    out = run(tmp_path, *args)
    train = [t for t in fineweb.shards[0] + fineweb.shards[1] if t]
    assert documents_of(out, "train") == train  # every row, in order, the null one left out
    assert documents_of(out, "val") == fineweb.shards[3]  # the last shard, not the next one
    # a row group at a time, each once per pass: the tokenizer's sample, then train, then val
    assert fineweb.reads == [0, 1, 2, 3, 0, 1] * 2 + [0, 1, 2]
    assert sorted(os.listdir(out / "raw")) == ["shard_00000.parquet", "shard_00001.parquet",
                                               "shard_00003.parquet"]
    assert [path for path, _ in fineweb.requests] == [
        "/fw/shard_00000.parquet", "/fw/shard_00001.parquet", "/fw/shard_00003.parquet"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["train"]["docs"] == len(train) and meta["settings"]["shards"] == 2

    fineweb.reads.clear()  # cached; --val_docs: the val shard's first documents, no more read
    run(tmp_path, *args, "--val_docs=2")
    assert len(fineweb.requests) == 3 and fineweb.reads[-1:] == [0]
    assert documents_of(out, "val") == fineweb.shards[3][:2]


def test_fineweb_edu_reads_a_row_group_at_a_time_in_bounded_memory(tmp_path):
    """However the reading is done, what is held while a document is handed on (Python's objects
    and Arrow's buffers) is a few row groups of a file 40 times that: reading it whole holds ~90."""
    pytest.importorskip("pyarrow")
    import tracemalloc
    texts = [f"{i} " + "".join(random.Random(i).choices("abcdefgh ", k=5000)) for i in range(400)]
    path = tmp_path / "shard.parquet"
    path.write_bytes(parquet_bytes(texts, 10))
    pa, peak, n = named_datasets.import_pyarrow(), 0, 0
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0] + pa.total_allocated_bytes()
        for n, text in enumerate(named_datasets.parquet_texts(pa, str(path)), 1):
            assert text == texts[n - 1]
            peak = max(peak, tracemalloc.get_traced_memory()[0] + pa.total_allocated_bytes() - base)
    finally:
        tracemalloc.stop()
    row_group = sum(len(t) for t in texts[:10])  # 50 kB of text, of 2 MB
    assert n == len(texts) and peak < 6 * row_group, (peak, row_group)


def test_fineweb_edu_errors_are_one_line(fineweb, tmp_path):
    def error(*args, shards=2):
        return error_of(["--dataset=fineweb-edu", f"--shards={shards}", f"--url={fineweb.url}/fw",
                         "--vocab_size=300", *args], tmp_path)

    raw = tmp_path / "data" / "fineweb-edu" / "raw"
    good = fineweb.files["/fw/shard_00003.parquet"]
    fineweb.files["/fw/shard_00003.parquet"] = good[:-100]  # cut short, at the source
    message = error()
    assert (f"{raw / 'shard_00003.parquet'} is not a parquet file that can be read (Parquet magic "
            "bytes not found in footer" in message and "was deleted; run again" in message)
    assert sorted(os.listdir(raw)) == ["shard_00000.parquet", "shard_00001.parquet"]
    assert not (tmp_path / "data" / "fineweb-edu" / "train.bin").exists()  # checked up front

    # damaged inside: found when its row group is read
    fineweb.files["/fw/shard_00003.parquet"] = good[:len(good) // 3] + bytes(64) + good[
        len(good) // 3 + 64:]
    assert "shard_00003.parquet is not a parquet file that can be read (" in error()
    fineweb.files["/fw/shard_00003.parquet"] = good

    del fineweb.files["/fw/shard_00001.parquet"]
    message = error(f"--data_dir={tmp_path / 'other'}")
    assert f"could not download {fineweb.url}/fw/shard_00001.parquet: HTTP 404" in message
    fineweb.files["/fw/shard_00001.parquet"] = parquet_bytes(["x"], 1)

    fineweb.files["/fw/shard_00000.parquet"] = parquet_bytes([1, 2], 1)
    message = error(f"--data_dir={tmp_path / 'ints'}")
    assert 'has no "text" column of strings (its columns: text)' in message

    assert "--shards=4 must be between 1 and 3: fineweb-edu has 4 shards, and the last is val" in (
        error(shards=4))
    assert "between 1 and 3" in error(shards=0)
    assert "--shards does not apply to tinystories" in error_of(
        ["--dataset=tinystories", "--shards=3"], tmp_path)
    assert "--val_docs=-1 must be at least 0" in error("--val_docs=-1")


def test_fineweb_edu_without_pyarrow_says_how_to_install_it(server, tmp_path):
    # `import pyarrow` fails as when it is not installed; nothing is downloaded before it is said
    hide = ("import runpy, sys; sys.modules['pyarrow'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", hide, os.path.join(ROOT, "prepare.py"),
                        "--dataset=fineweb-edu", f"--url={server.url}/fw",
                        f"--data_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert r.returncode == 1 and r.stderr == ("error: --dataset=fineweb-edu reads parquet files, "
                                              "which needs pyarrow: pip install pyarrow\n")
    assert server.requests == [] and os.listdir(tmp_path) == []
