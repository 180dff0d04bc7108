"""eval.py as a user runs it: HellaSwag's three scores and LAMBADA's two from log-likelihoods the
test computes itself (from logits the test sets, and from a tiny model's forward pass), the
ending's tokens with three kinds of SentencePiece tokenizer, the download from a local server, bad
data, and transformers' log-likelihoods on the same folder."""
import hashlib
import io
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from model import Model, ModelArgs, load_model  # before mlx.core, as in the scripts
import mlx.core as mx
from mlx.utils import tree_flatten

import corpus
from hf_tokenizer import hf_tokenizer_files

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the cat sat on a mat while dogs ran far away from home and every bird sang loud songs "
         "a man is sitting roof he tree put water it how to plant dig hole in").split()

# HellaSwag rows and the text lm-evaluation-harness scores for each: "activity_label: ctx_a
# Ctx_b", "[title]" made a full stop, other [markers] out, double spaces made one, endings
# stripped before their markers go (so a marker in front leaves a space)
HELLASWAG = [
    ({"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
      "ctx_b": "he", "label": 3,
      "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                  "sat.", "starts pulling up roofing on a roof."]},
     "Roof shingle removal: A man is sitting on a roof. He",
     ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "sat.",
      "starts pulling up roofing on a roof."]),
    ({"activity_label": "Home and Garden", "ctx_b": "", "label": "1",
      "ctx_a": "[header] How to plant a tree [title] Dig a hole.",
      "endings": ["[step] Put the tree in.  Water it.", "  dig a hole in the home.  ",
                  "water", "How to plant [title] a tree"]},
     "Home and Garden: How to plant a tree. Dig a hole.",
     [" Put the tree in. Water it.", "dig a hole in the home.", "water",
      "How to plant. a tree"]),
    ({"activity_label": "Pets", "ctx_a": "every bird sang loud songs while", "ctx_b": "the cat",
      "label": 0, "endings": ["sat on a mat", "ran far away from home and every bird sang",
                              "sat", "dig"]},
     "Pets: every bird sang loud songs while The cat",
     ["sat on a mat", "ran far away from home and every bird sang", "sat", "dig"]),
]
# LAMBADA texts: context, space, last word; a double space, a word tokenizers may merge with the
# one before it (the cat sat), and one longer than the model's context of 32 tokens
LAMBADA = ["the dog saw that the cat sat", "dogs ran far  away", "a man is sitting on the roof",
           " ".join(WORDS[i % 17] for i in range(40)) + " home", "every bird sang loud songs"]


# ----------------------------------------------------------------------------- helpers

def train_tokenizer(kind):
    """A tokenizer.model's bytes: ours (prepare.py's: no dummy prefix, whitespace-only pieces),
    Llama's kind (a space added in front), or one whose pieces span words ("▁cat▁sat")."""
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) + " the cat sat on the mat"
             for _ in range(300)]
    if kind == "ours":
        return corpus.train_tokenizer(lines, 400, num_threads=1)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=400,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=kind == "llama", split_by_whitespace=kind != "spanning",
        num_threads=1, minloglevel=2)
    return model.getvalue()


@pytest.fixture(scope="module")
def tokenizers():
    return {kind: train_tokenizer(kind) for kind in ("ours", "llama", "spanning")}


def write_checkpoint(folder, tokenizer, params=None, **shape):
    """A checkpoint folder: config.json, model.safetensors (a seeded random model, or `params`
    {name: array} on a model of that shape) and tokenizer.model."""
    folder.mkdir(parents=True, exist_ok=True)
    sp = spm.SentencePieceProcessor(model_proto=tokenizer)
    args = ModelArgs(**{"dim": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 32, **shape,
                        "vocab_size": sp.get_piece_size()})
    mx.random.seed(0)
    weights = dict(tree_flatten(Model(args).parameters()))
    weights.update(params(weights) if params else {})
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    (folder / "config.json").write_text(json.dumps(args.to_config()))
    (folder / "tokenizer.model").write_bytes(tokenizer)
    return folder


def unigram(logits):
    """params for write_checkpoint: every block's weights zero and every embedding a row of ones,
    so the last hidden state is all ones at every position and the logits are `logits` there,
    whatever came before (the norms' eps is tiny: ones stay ones; dim 8 and integer logits:
    lm_head's sums are exact)."""
    def params(weights):
        out = {k: mx.ones_like(v) if k.endswith("norm.weight") else mx.zeros_like(v)
               for k, v in weights.items()}
        out["model.embed_tokens.weight"] = mx.ones_like(weights["model.embed_tokens.weight"])
        out["lm_head.weight"] = mx.array(np.repeat(np.array(logits, np.float32)[:, None] / 8, 8, 1))
        return out
    return dict(params=params, dim=8, n_heads=2, n_layers=1, tie_embeddings=False,
                norm_eps=1e-12)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run(*args, cwd, ok=True):
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), *map(str, args)], cwd=cwd,
                       capture_output=True, text=True, timeout=120)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def evaluate(ckpt, task, data, *args):
    """eval.py on a local file; returns (its record, its details, its stdout)."""
    details = ckpt.parent / f"{task}_details.jsonl"
    r = run(f"--out_dir={ckpt}", f"--task={task}", f"--data={data}", f"--details={details}",
            *args, cwd=ckpt.parent)
    records = [json.loads(line) for line in (ckpt / "evals.jsonl").read_text().splitlines()]
    return records[-1], [json.loads(line) for line in details.read_text().splitlines()], r


def error_line(r):
    assert r.returncode != 0
    lines = [line for line in r.stderr.strip().splitlines() if not line.startswith("Overriding: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr  # one line, no traceback
    return lines[0]


def scored_tokens(sp, context, continuation):
    """[BOS] + the whole text's ids, and the index there of the first token that covers a
    character of the continuation, by SentencePiece's own offsets (not by eval.py's rule)."""
    out = sp.encode(context + continuation, out_type="offset_mapping")  # character offsets
    first = next(i for i, (_, end) in enumerate(out["offsets"]) if end > len(context))
    return [sp.bos_id(), *out["ids"]], 1 + first


def forward_log_likelihood(model, ids, first):
    """(sum of log p(token) over ids[first:], whether argmax gives each), one sequence at a time,
    the model's input its last max_seq_len tokens."""
    keep = ids[-(model.args.max_seq_len + 1):]
    first = max(first - (len(ids) - len(keep)), 1)
    logits = np.array(model(mx.array([keep[:-1]])).astype(mx.float32)[0], np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    positions = range(first - 1, len(keep) - 1)
    return (sum(logp[j, keep[j + 1]] for j in positions),
            all(logp[j].argmax() == keep[j + 1] for j in positions))


def hellaswag_expected(lls, ntoks, endings):
    """Each score's pick from the log-likelihoods: sum, per character, per token."""
    lls = np.array(lls)
    return {"acc": int(lls.argmax()),
            "acc_norm": int((lls / [len(e) for e in endings]).argmax()),
            "acc_token_mean": int((lls / ntoks).argmax())}


# ----------------------------------------------------------------------------- scores

def test_hellaswag_scores_follow_by_arithmetic_from_logits_the_test_sets(tokenizers, tmp_path):
    sp = spm.SentencePieceProcessor(model_proto=tokenizers["ours"])
    # the same logits at every position, so an ending's log-likelihood is a sum of table entries
    logits = np.random.default_rng(38).integers(-3, 4, sp.get_piece_size())
    ckpt = write_checkpoint(tmp_path / "unigram", tokenizers["ours"], **unigram(logits))
    lse = math.log(np.exp(logits.astype(np.float64)).sum())
    expected, rows = [], []
    for k, (row, context, endings) in enumerate(HELLASWAG * 2):
        firsts = [scored_tokens(sp, context, " " + e) for e in endings]
        ntoks = [len(ids) - first for ids, first in firsts]
        lls = [sum(logits[t] - lse for t in ids[first:]) for ids, first in firsts]
        picks = hellaswag_expected(lls, ntoks, endings)
        for score in picks:  # no ties: the arithmetic alone decides
            normed = np.array(lls) / ([len(e) for e in endings] if score == "acc_norm" else
                                      ntoks if score == "acc_token_mean" else 1)
            assert sorted(normed)[-1] - sorted(normed)[-2] > 1e-6
        label = (2, 2, 1, 3, 0, 1)[k]  # so that each score gets an accuracy of its own
        rows.append({**row, "label": label})
        expected.append((label, picks, lls, ntoks, endings))

    record, details, r = evaluate(ckpt, "hellaswag", write_jsonl(tmp_path / "hs.jsonl", rows),
                                  "--batch_size=3")
    for (label, picks, lls, ntoks, endings), d in zip(expected, details):
        assert d["label"] == label and d["picks"] == picks
        assert [c["tokens"] for c in d["choices"]] == ntoks
        assert [c["chars"] for c in d["choices"]] == [len(e) for e in endings]
        assert np.allclose([c["ll"] for c in d["choices"]], lls, rtol=0, atol=1e-4)
    want = {s: sum(p[s] == label for label, p, *_ in expected) / len(expected)
            for s in ("acc", "acc_norm", "acc_token_mean")}
    assert record["scores"] == pytest.approx(want) and record["n"] == len(rows)
    assert len(set(want.values())) == 3  # a score that took another's way would show
    assert r.stdout.strip() == (f"hellaswag: acc {want['acc']:.4f}, acc_norm "
                                f"{want['acc_norm']:.4f}, acc_token_mean "
                                f"{want['acc_token_mean']:.4f} ({len(rows)} examples of "
                                f"{tmp_path / 'hs.jsonl'}, {record['seconds']:.1f} s)")


def test_lambada_accuracy_and_perplexities_follow_by_arithmetic(tokenizers, tmp_path):
    sp = spm.SentencePieceProcessor(model_proto=tokenizers["ours"])
    # the most likely token everywhere is "▁sat", "at" the next: " sat" is right, " satat"
    # ("▁sat", "at") is half right, so wrong
    sat, at = sp.piece_to_id("▁sat"), sp.piece_to_id("at")
    assert sp.encode("a sat")[1:] == [sat] and sp.encode("a satat")[1:] == [sat, at]
    logits = np.zeros(sp.get_piece_size(), int)
    logits[sat], logits[at] = 3, 2
    ckpt = write_checkpoint(tmp_path / "unigram", tokenizers["ours"], **unigram(logits))
    texts = ["the dog saw that the cat sat", "every bird saw the satat", "dogs ran far  sat",
             "a man sat on the mat"]
    lse = math.log(np.exp(logits.astype(np.float64)).sum())
    lls, ntoks = [], []
    for text in texts:
        context, _, word = text.rpartition(" ")
        ids, first = scored_tokens(sp, context, " " + word)
        lls.append(sum(logits[t] - lse for t in ids[first:]))
        ntoks.append(len(ids) - first)
    record, details, _ = evaluate(ckpt, "lambada", write_jsonl(
        tmp_path / "lb.jsonl", [{"text": t} for t in texts]), "--batch_size=2")
    assert [d["greedy"] for d in details] == [True, False, True, False]
    assert record["scores"] == pytest.approx({
        "acc": 0.5, "ppl": math.exp(-sum(lls) / len(texts)),  # per word, as lm-eval-harness
        "ppl_token": math.exp(-sum(lls) / sum(ntoks))}, rel=1e-5)
    assert [d["choices"][0]["tokens"] for d in details] == ntoks
    assert [d["choices"][0]["chars"] for d in details] == [len(t.rpartition(" ")[2])
                                                          for t in texts]


@pytest.mark.parametrize("kind", ["ours", "llama", "spanning"])
def test_scores_are_the_forward_pass_log_likelihoods_of_the_tokens_that_cover_the_ending(
        tokenizers, tmp_path, kind):
    sp = spm.SentencePieceProcessor(model_proto=tokenizers[kind])
    if kind == "spanning":  # a piece across the boundary: it counts as the continuation's
        assert sp.encode("the cat sat", out_type=str)[-1] == "▁cat▁sat"
    if kind == "llama":  # tokenized alone, " sat" would gain a space in front
        assert sp.encode(" sat") != sp.encode("the sat")[len(sp.encode("the")):]
    ckpt = write_checkpoint(tmp_path / kind, tokenizers[kind])
    model, _ = load_model(str(ckpt))

    record, details, _ = evaluate(ckpt, "hellaswag", write_jsonl(
        tmp_path / "hs.jsonl", [row for row, *_ in HELLASWAG]), "--batch_size=3")
    for (row, context, endings), d in zip(HELLASWAG, details):
        firsts = [scored_tokens(sp, context, " " + e) for e in endings]
        lls = [forward_log_likelihood(model, *f)[0] for f in firsts]
        ntoks = [len(ids) - first for ids, first in firsts]
        assert [c["tokens"] for c in d["choices"]] == ntoks
        assert np.allclose([c["ll"] for c in d["choices"]], lls, rtol=1e-5, atol=1e-4)
        assert d["picks"] == hellaswag_expected(lls, ntoks, endings)

    record, details, r = evaluate(ckpt, "lambada", write_jsonl(
        tmp_path / "lb.jsonl", [{"text": t} for t in LAMBADA]), "--batch_size=2")
    for text, d in zip(LAMBADA, details):
        context, _, word = text.rpartition(" ")
        ids, first = scored_tokens(sp, context, " " + word)
        ll, greedy = forward_log_likelihood(model, ids, first)
        assert d["choices"][0]["tokens"] == len(ids) - first
        assert d["choices"][0]["ll"] == pytest.approx(ll, rel=1e-5, abs=1e-4)
        assert d["greedy"] == greedy
    assert "note: 1 sequences were longer than the model's context of 32 tokens" in r.stderr


# ----------------------------------------------------------------------------- data

def test_downloads_once_from_a_mirror_and_records_the_data_it_scored(server, tokenizers,
                                                                       tmp_path):
    ckpt = write_checkpoint(tmp_path / "out", tokenizers["ours"])
    hs = "".join(json.dumps(row) + "\n" for row, *_ in HELLASWAG).encode()
    lb = "".join(json.dumps({"text": t}) + "\n" for t in LAMBADA).encode()
    server.files.update({"/hs.jsonl": hs, "/lb.jsonl": lb})
    for task, name, blob, n in (("hellaswag", "hellaswag_val.jsonl", hs, 3),
                                ("lambada", "lambada_test.jsonl", lb, 5)):
        url = f"{server.url}/{'hs' if task == 'hellaswag' else 'lb'}.jsonl"
        run("--out_dir=out", f"--task={task}", f"--url={url}", cwd=tmp_path)
        assert (tmp_path / "data" / "evals" / name).read_bytes() == blob
        run("--out_dir=out", f"--task={task}", f"--url={url}", "--limit=2", cwd=tmp_path)
        paths = [p for p, _ in server.requests]
        assert paths.count(url[len(server.url):]) == 1  # cached: downloaded once
        records = [json.loads(line) for line in (ckpt / "evals.jsonl").read_text().splitlines()]
        for record, want in zip(records[-2:], (n, 2)):  # appended: the first run's line stays
            assert record["task"] == task and record["n"] == want
            assert record["data"] == f"data/evals/{name}"
            assert record["data_sha256"] == hashlib.sha256(blob).hexdigest()
            assert record["date"].startswith("20") and record["seconds"] >= 0
            assert set(record["scores"]) == ({"acc", "acc_norm", "acc_token_mean"}
                                             if task == "hellaswag" else {"acc", "ppl",
                                                                          "ppl_token"})
    message = error_line(run("--out_dir=out", "--task=hellaswag", "--data_dir=elsewhere",
                             f"--url={server.url}/nope.jsonl", cwd=tmp_path, ok=False))
    assert "HTTP 404" in message and "--data=FILE" in message and "--input" not in message


BAD = [
    ("hellaswag", ['{"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "label": 0}'],
     ':1: a HellaSwag row needs "endings", a list of 4 strings'),
    ("hellaswag", [json.dumps({**HELLASWAG[0][0], "endings": ["a", "b", "c"]})],
     ':1: a HellaSwag row needs "endings"'),
    ("hellaswag", [json.dumps(HELLASWAG[0][0]),
                   json.dumps({**HELLASWAG[0][0], "endings": ["a", "b", 3, "d"]})],
     ':2: a HellaSwag row needs "endings"'),
    ("hellaswag", [json.dumps(HELLASWAG[0][0]), json.dumps({**HELLASWAG[0][0], "label": 4})],
     ':2: "label" must be 0, 1, 2 or 3 (the right ending), not 4'),
    ("hellaswag", [json.dumps({**HELLASWAG[0][0], "label": None})], ':1: "label" must be'),
    ("hellaswag", [json.dumps({**HELLASWAG[0][0], "ctx_a": 5})], ':1: a HellaSwag row needs the'),
    ("hellaswag", [json.dumps(HELLASWAG[0][0]), json.dumps(HELLASWAG[1][0])[:40]],
     ":2: not JSON (Unterminated string starting at); it is the last line: the file was cut"),
    ("hellaswag", ["{", json.dumps(HELLASWAG[0][0])], ":1: not JSON (Expecting property name"),
    ("hellaswag", ["[1, 2]"], ":1: a row must be a JSON object"),
    ("lambada", ['{"text": "a b"}', '{"txt": "a b"}'], ':2: a LAMBADA row needs "text"'),
    ("lambada", ['{"text": "word"}'], ':1: a LAMBADA row needs "text" with words, a space'),
    ("lambada", ['{"text": "ends with a space "}'], ':1: a LAMBADA row needs "text"'),
    ("lambada", ["", " "], "has no examples"),
]


def test_bad_data_gets_one_line_naming_the_file_and_line(tokenizers, tmp_path):
    write_checkpoint(tmp_path / "out", tokenizers["ours"])
    for task, lines, message in BAD:
        (tmp_path / "bad.jsonl").write_text("\n".join(lines), encoding="utf-8")
        r = run("--out_dir=out", f"--task={task}", "--data=bad.jsonl", cwd=tmp_path, ok=False)
        line = error_line(r)
        assert line.startswith("error: bad.jsonl") and message in line, line
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "caf\xe9 au lait"}\n')
    assert "bad.jsonl is not UTF-8" in error_line(run("--task=lambada", "--data=bad.jsonl",
                                                      cwd=tmp_path, ok=False))
    assert "--data=nope.jsonl: no such file" in error_line(run("--data=nope.jsonl", cwd=tmp_path,
                                                               ok=False))
    assert "--task='piqa' must be one of hellaswag, lambada" in error_line(
        run("--task=piqa", cwd=tmp_path, ok=False))
    write_jsonl(tmp_path / "ok.jsonl", [{"text": "a b"}])
    assert "no checkpoint in 'nothing'" in error_line(
        run("--out_dir=nothing", "--task=lambada", "--data=ok.jsonl", cwd=tmp_path, ok=False))
    assert "no checkpoint in 'nothing'" in error_line(  # said before any download
        run("--out_dir=nothing", "--task=lambada", "--data_dir=nowhere", cwd=tmp_path, ok=False))
    # said before the scoring, which it used to lose
    assert "--details='nodir/d.jsonl' must be a file in a folder that exists" in error_line(
        run("--task=lambada", "--data=ok.jsonl", "--details=nodir/d.jsonl", cwd=tmp_path, ok=False))
    assert not (tmp_path / "out" / "evals.jsonl").exists()  # nothing scored, nothing recorded


# ----------------------------------------------------------------------------- interop

def test_log_likelihoods_equal_transformers_on_the_same_folder(tokenizers, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    # untied, grouped-query, and a context that holds every sequence (transformers cuts none)
    ckpt = write_checkpoint(tmp_path / "out", tokenizers["ours"], n_kv_heads=2, max_seq_len=128,
                            tie_embeddings=False)
    for name, blob in hf_tokenizer_files(str(ckpt / "tokenizer.model")).items():
        (ckpt / name).write_bytes(blob)
    _, details, _ = evaluate(ckpt, "hellaswag", write_jsonl(
        tmp_path / "hs.jsonl", [row for row, *_ in HELLASWAG]), "--batch_size=5")

    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(ckpt)
    for (_, context, endings), d in zip(HELLASWAG, details):
        for ending, choice in zip(endings, d["choices"]):
            whole, alone = tok(context + " " + ending)["input_ids"], tok(context)["input_ids"]
            first = next((i for i, (a, b) in enumerate(zip(whole, alone)) if a != b), len(alone))
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
            ll = sum(logp[j - 1, whole[j]].item() for j in range(first, len(whole)))
            assert choice["tokens"] == len(whole) - first
            assert choice["ll"] == pytest.approx(ll, rel=1e-5, abs=1e-4)
