"""
The named datasets (DATASETS, prepare.py --dataset=NAME): their files, downloaded once, resumed
and checked, and the readers that make them documents or conversations; each one's default
vocabulary size, and the check of prepare.py's settings against them.
"""
import http.client
import io
import os
import re
import time
import urllib.error
import urllib.request
import zipfile

import chat
from corpus import split_documents, status
from errors import Error
from files import sha256_file
from pystdlib import stdlib_chats, stdlib_modules


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
    # built here from the standard library's docstrings (pystdlib.stdlib_chats): no files
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
