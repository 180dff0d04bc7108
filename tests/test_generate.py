"""sampling.py's decoding rules, and generate.py's interactive mode and new settings as a user
runs them."""
import os
import pty
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import mlx.core as mx
import sentencepiece as spm

from conftest import workspace
from model import load_model
from sampling import generate as generate_tokens, sample, stream_text

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--dim=32", "--n_layers=2", "--n_heads=4", "--n_kv_heads=2", "--max_seq_len=32",
        "--batch_size=4", "--eval_iters=2", "--log_interval=10", "--warmup_iters=2",
        "--learning_rate=3e-3", "--dtype=float32"]


def run(script, *args, cwd, stdin=None, ok=True):
    r = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True,
                       text=True, input=stdin, timeout=300)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def answers(r):
    return r.stderr.count("tokens/s]")  # generate.py's speed line, one per sample


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_data):
    work = workspace(tmp_path_factory, tiny_data, "generate")
    run("train.py", "--dataset=tiny", "--out_dir=out", "--max_iters=30", "--eval_interval=30",
        *TINY, cwd=work)
    return work


def generate(work, *args, stdin=None):
    return run("generate.py", "--max_new_tokens=20", *args, cwd=work, stdin=stdin)


# ----------------------------------------------------------------------------- sample()

def test_repetition_penalty_makes_the_recent_tokens_less_likely():
    logits = mx.array([0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 1.5])  # token 5 is the most likely, 6 the next
    greedy = dict(temperature=0, repetition_penalty=4.0)
    assert sample(logits, mx.array([0, 0, 1]), **greedy).item() == 5  # 5 is not recent
    assert sample(logits, mx.array([0, 5, 5]), **greedy).item() == 6  # it is: 2.0 / 4 < 1.5
    assert sample(logits, mx.array([5]), **{**greedy, "repetition_penalty": 1.0}).item() == 5
    # the caller's logits are left as they were
    assert logits.tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 1.5]


def test_min_p_keeps_the_tokens_at_least_min_p_times_as_likely_as_the_top_one_at_any_temperature():
    logits = mx.log(mx.array([0.5, 0.3, 0.15, 0.05]))  # relative to the top: 1, 0.6, 0.3, 0.1
    mx.random.seed(0)
    # measured before temperature, so a hot one does not let the tail in
    for temperature in (1.0, 50.0):
        drawn = {sample(logits, None, temperature=temperature, top_p=1.0, min_p=0.5).item()
                 for _ in range(200)}
        assert drawn == {0, 1}
    drawn = {sample(logits, None, temperature=1.0, min_p=0.2).item() for _ in range(200)}
    assert drawn == {0, 1, 2}
    drawn = {sample(logits, None, temperature=1.0, min_p=0.0).item() for _ in range(400)}
    assert drawn == {0, 1, 2, 3}


def test_top_p_keeps_the_same_tokens_for_bfloat16_logits():
    # Two tokens hold 0.7 of the mass and 31,998 share the rest, as a big vocabulary spreads a
    # tail: a bfloat16 sum drops that tail, which made the top token look likelier than top_p.
    probs = mx.concatenate([mx.array([0.4, 0.3]), mx.full(31_998, 0.3 / 31_998)])
    for dtype in (mx.float32, mx.bfloat16):
        logits = mx.log(probs).astype(dtype)
        mx.random.seed(0)
        drawn = {sample(logits, None, temperature=1.0, top_p=0.5).item() for _ in range(200)}
        assert drawn == {0, 1}, dtype


def test_sample_is_repeatable_given_the_seed():
    logits, context = mx.zeros(10), mx.array([1, 2, 3])
    settings = dict(temperature=1.0, top_k=8, top_p=0.9, min_p=0.01, repetition_penalty=1.3)
    runs = []
    for _ in range(2):
        mx.random.seed(42)
        runs.append([sample(logits, context, **settings).item() for _ in range(30)])
    assert runs[0] == runs[1] and len(set(runs[0])) > 1  # the same draws, and they are draws


def reference_generate(model, tokens, max_tokens, stop, repetition_context, **sampling):
    """The plain loop that generate() pipelines: read each token before the next step is built."""
    M, context, new = model.args.max_seq_len, list(tokens), []
    while len(new) < max_tokens:
        cache = model.make_cache()
        window = context[-(M // 2):] if len(context) >= M else context
        logits = model(mx.array([window]), cache)[0, -1]
        while cache[0].offset < M and len(new) < max_tokens:
            recent = context[-repetition_context:] if repetition_context else context
            token = sample(logits, mx.array(recent), **sampling).item()
            if token == stop:
                return new
            context.append(token)
            new.append(token)
            logits = model(mx.array([[token]]), cache)[0, -1]
    return new


class Windows:
    """A model that records the windows it is given to encode into a fresh cache."""

    def __init__(self, model):
        self.model, self.args, self.windows = model, model.args, []

    def make_cache(self):
        return self.model.make_cache()

    def __call__(self, x, cache):
        if cache[0].offset == 0:
            self.windows.append(x.tolist())
        return self.model(x, cache)


@pytest.mark.parametrize("settings", [
    dict(temperature=0), dict(temperature=0, repetition_penalty=3.0, repetition_context=5),
    dict(temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.3),
    dict(temperature=0.8, min_p=0.05, repetition_penalty=1.2, repetition_context=0)])
def test_generate_queues_each_step_yet_gives_the_plain_loops_tokens(work, settings):
    model, _ = load_model(str(work / "out"))  # max_seq_len 32: 70 tokens restart the cache twice
    prompt, rc = [1, 5, 9, 12], settings.get("repetition_context", 20)
    sampling = {k: v for k, v in settings.items() if k != "repetition_context"}
    mx.random.seed(3)
    full = list(generate_tokens(model, prompt, 70, **settings))
    assert len(full) == 70
    for stop in (None, full[40]):  # to the end, and a stop mid-way
        mx.random.seed(3)
        ours, plain = Windows(model), Windows(model)
        tokens = list(generate_tokens(ours, prompt, 70, stop, **settings))
        mx.random.seed(3)
        assert tokens == reference_generate(plain, prompt, 70, stop, rc, **sampling)
        assert ours.windows == plain.windows  # the cache restarts where it did
    assert tokens == full[:full.index(full[40])]


# ----------------------------------------------------------------------------- stream_text()

def test_stream_text_holds_a_split_character_back_until_its_bytes_arrive(work):
    sp = spm.SentencePieceProcessor(model_file=str(work / "out" / "tokenizer.model"))
    prompt = [sp.bos_id()] + sp.encode("the cat")
    # the CJK characters are not in the vocabulary: 3 byte tokens each
    new = sp.encode(" sat 日本 on")
    assert len(new) > len(" sat 日本 on") and any(sp.is_byte(t) for t in new)
    pieces = list(stream_text(sp, prompt, new))
    assert "".join(pieces) == " sat 日本 on" and not any("\ufffd" in p for p in pieces)
    assert len(pieces) > 1  # it streams
    last_byte = max(i for i, t in enumerate(new) if sp.is_byte(t))
    # the sample ends inside 本: what was held back comes out
    cut = list(stream_text(sp, prompt, new[:last_byte]))
    assert "".join(cut).startswith(" sat 日\ufffd") and "\ufffd" not in "".join(cut[:-1])


# ----------------------------------------------------------------------------- generate.py

def test_interactive_answers_each_line_until_an_empty_line(work):
    greedy = ["--temperature=0", "--num_samples=1"]
    one = [generate(work, *greedy, f"--prompt={p}").stdout for p in ("the cat", "the dog")]
    r = generate(work, *greedy, "--interactive=True", stdin="the cat\nthe dog\n\nnever read\n")
    assert answers(r) == 2 and r.stdout == one[0] + one[1]  # each answered as without --interactive
    # no "> " prompt without a terminal
    assert "never read" not in r.stdout and "> " not in r.stdout + r.stderr
    # the input ends without a newline
    r = generate(work, *greedy, "--interactive=True", stdin="the cat\nthe dog")
    assert answers(r) == 2 and r.stdout == one[0] + one[1]
    r = generate(work, "--interactive=True", "--num_samples=3", stdin="the cat\n")
    assert answers(r) == 1 and "-" * 60 not in r.stdout  # one sample per prompt
    r = generate(work, "--interactive=True", stdin="")
    assert answers(r) == 0 and r.stdout == ""


def test_interactive_on_a_terminal_asks_with_a_prompt_and_ctrl_d_ends(work):
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([sys.executable, str(ROOT / "generate.py"), "--interactive=True",
                              "--temperature=0", "--max_new_tokens=10"], cwd=work, stdin=slave,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.write(master, b"the cat\n\x04")  # a line, then Ctrl-D at the start of the next
        out, err = p.communicate(timeout=120)
    finally:
        os.close(slave)
        os.close(master)
    assert p.returncode == 0, err
    assert out.startswith("the cat") and out.count("\n") >= 1 and "> " not in out
    assert err.count("> ") == 2 and err.count("tokens/s]") == 1  # asked twice, answered once


def test_min_p_near_one_is_greedy_and_a_tiny_one_changes_nothing(work):
    greedy = generate(work, "--temperature=0", "--num_samples=1").stdout
    hot = ["--temperature=1.5", "--top_p=1", "--num_samples=1", "--seed=7"]
    assert generate(work, *hot, "--min_p=0.9999").stdout == greedy
    off = generate(work, *hot).stdout
    assert off != greedy  # the check above means something
    assert generate(work, *hot, "--min_p=1e-12").stdout == off


def test_repetition_context_sets_how_far_back_the_penalty_looks(work):
    penalised = ["--prompt=the cat", "--temperature=0", "--repetition_penalty=5", "--num_samples=1"]
    last_token = generate(work, *penalised, "--repetition_context=1").stdout
    # 0: the whole context
    assert last_token != generate(work, *penalised, "--repetition_context=0").stdout


def test_ctrl_c_stops_a_sample_without_a_traceback(work):
    p = subprocess.Popen([sys.executable, str(ROOT / "generate.py"), "--max_new_tokens=1000000",
                          "--prompt=the cat"], cwd=work, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.read(20)  # it is writing
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGINT and "Traceback" not in err, err


def test_bad_sampling_settings_get_one_line_errors(work):
    for arg, message in (("--min_p=1", "--min_p=1.0 must be at least 0 and below 1"),
                         ("--min_p=-0.5", "--min_p=-0.5 must be at least 0 and below 1"),
                         ("--repetition_context=-1", "--repetition_context=-1 must be at least 0"),
                         ("--attention=nodir/a.svg",
                          "--attention='nodir/a.svg' must be a file in a folder that exists")):
        r = run("generate.py", arg, cwd=work, ok=False)
        lines = [line for line in r.stderr.strip().splitlines()
                 if not line.startswith("Overriding: ")]
        assert (r.returncode != 0
                and lines == [f"error: {message}"]), r.stderr


def test_attention_draws_each_layer_and_head_over_the_prompt(work):
    import xml.etree.ElementTree as ET
    r = run("generate.py", "--attention=attn.svg", "--prompt=the cat sat", cwd=work)
    assert "2 layers x 4 heads" in r.stderr and r.stdout == ""
    root = ET.parse(work / "attn.svg").getroot()
    heads = [g for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "head"]
    assert [(g.get("data-layer"), g.get("data-head")) for g in heads] == [
        (str(layer), str(head)) for layer in range(2) for head in range(4)]
    labels = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")
              if t.get("class") == "token"]
    assert labels[0] == "<s>" and "".join(labels[::2][1:]) == "the cat sat"
    # the first token sees only itself: its row holds one square of full weight
    first_row = [c for c in heads[0]
                 if c.get("y") == heads[0][0].get("y") and c.get("fill-opacity")]
    assert [c.get("fill-opacity") for c in first_row] == ["1.000"]
    # a prompt longer than the context: the picture shows its last max_seq_len tokens, as the note
    # says (sampling keeps the last half; the note says which)
    words = " ".join(["the cat sat on a mat"] * 40)
    r = run("generate.py", "--attention=long.svg", f"--prompt={words}", cwd=work)
    shown = [t for t in ET.parse(work / "long.svg").getroot().iter(
        "{http://www.w3.org/2000/svg}text") if t.get("class") == "token"]
    assert f"the model sees its last {len(shown) // 2}\n" in r.stderr
