"""Fine-tuning on conversations and chatting, as a user runs them: the loss on the replies' tokens
only, exact resume, and generate.py --chat's multi-turn loop with the KV cache carried over."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from model import cross_entropy, load_model  # before mlx.core, as in the scripts
import chat
import files
import mlx.core as mx
import sentencepiece as spm

from conftest import WORDS, losses, workspace
from sampling import generate

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--dim=32", "--n_layers=2", "--n_heads=4", "--n_kv_heads=2", "--max_seq_len=64",
        "--batch_size=4", "--eval_iters=2", "--log_interval=1", "--warmup_iters=0",
        "--dtype=float32"]
FINE_TUNE = ["--init_from=base", "--dataset=tinychat", *TINY, "--eval_interval=2",
             "--sample_tokens=0"]


def run(script, *args, cwd, stdin=None):
    r = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True,
                       text=True, input=stdin, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_data):
    """A tiny base trained on data/tiny, and data/tinychat: 60 short conversations in its
    tokenizer."""
    work = workspace(tmp_path_factory, tiny_data, "chat")
    run("train.py", "--dataset=tiny", "--out_dir=base", "--max_iters=10", "--eval_interval=10",
        "--sample_tokens=0", *TINY, cwd=work)
    with open(work / "chats.jsonl", "w") as f:
        for i in range(60):
            a, b = WORDS[i % len(WORDS)], WORDS[(3 * i + 1) % len(WORDS)]
            messages = [{"role": "user", "content": f"{a} {b}?"},
                        {"role": "assistant", "content": f"{b} {a} sat"}]
            if i % 3 == 0:  # some with a second exchange
                messages += [{"role": "user", "content": a},
                             {"role": "assistant", "content": f"{a} ran"}]
            f.write(json.dumps({"messages": messages}) + "\n")
    run("prepare.py", "--input=chats.jsonl", "--dataset=tinychat",
        "--tokenizer=data/tiny/tokenizer.model", "--val_fraction=0.2", cwd=work)
    return work


def records(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_the_val_loss_is_the_mean_over_the_replies_tokens(work):
    # Learning rate 0: the final whole-val loss is the base's, which the test computes by hand:
    # each val conversation alone through the model, -log p of each reply token and closing EOS.
    run("train.py", *FINE_TUNE, "--out_dir=still", "--max_iters=1", "--learning_rate=0",
        "--min_lr=0", cwd=work)
    final = next(r for r in records(work / "still") if "val_loss_full" in r)
    tokens, info = files.read_tokens(str(work / "data/tinychat/val.bin"))
    mask = info["mask"]
    starts = [i for i in range(len(tokens)) if mask[i] & files.START] + [len(tokens)]
    model, _ = load_model(str(work / "base"))
    nats, n = 0.0, 0
    for a, b in zip(starts, starts[1:]):
        ids = mx.array(tokens[a:b].astype("int32"))
        on_reply = mx.array((mask[a + 1:b] & files.LOSS).astype("float32"))
        nats += (cross_entropy(model(ids[None, :-1])[0], ids[1:]) * on_reply).sum().item()
        n += int(on_reply.sum().item())
    assert final["val_tokens_full"] == n == info["n_loss_tokens"] > 0
    assert final["val_loss_full"] == pytest.approx(nats / n, rel=1e-5)
    assert info["n_loss_tokens"] < 0.7 * len(tokens)  # the prompts' tokens are most of it


def test_the_evals_losses_do_not_depend_on_gradient_accumulation(work):
    # Learning rate 0, so both runs eval the base; an eval's windows are one micro-step's, and
    # their weights must average 1 over those windows, not over the whole batch of the step.
    evals = []
    for steps in (1, 2):
        run("train.py", *FINE_TUNE, f"--out_dir=accum{steps}", "--max_iters=1",
            "--eval_interval=1", "--learning_rate=0", "--min_lr=0",
            f"--gradient_accumulation_steps={steps}", cwd=work)
        evals.append(next(r for r in records(work / f"accum{steps}") if "val_loss" in r))
    for split in ("train_loss", "val_loss"):
        assert evals[0][split] == pytest.approx(evals[1][split], rel=1e-5)


def test_a_fine_tune_learns_the_replies_and_resumes_exactly(work):
    run("train.py", *FINE_TUNE, "--out_dir=straight", "--max_iters=6", cwd=work)
    run("train.py", *FINE_TUNE, "--out_dir=stopped", "--max_iters=3", cwd=work)
    r = run("train.py", *FINE_TUNE, "--out_dir=stopped", "--max_iters=6", "--init_from=resume",
            cwd=work)
    assert "(reply tokens)" in r.stdout and "reply tokens): val loss" in r.stdout
    straight, resumed = losses(work / "straight"), losses(work / "stopped")
    assert [resumed[i] for i in range(4, 7)] == pytest.approx([straight[i] for i in range(4, 7)],
                                                              rel=1e-6)
    assert straight[6] < straight[1]
    config = json.loads((work / "straight" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == chat.CHAT_TEMPLATE  # mlx_lm.chat and transformers read it


def test_the_chat_loop_answers_each_turn_over_a_pipe(work):
    r = run("generate.py", "--out_dir=base", "--chat=True", "--temperature=0",
            "--max_new_tokens=8", stdin="the cat?\nand the dog?\n\nnever read\n", cwd=work)
    assert r.stdout.count("\n") == 2  # two answers, a line each; the empty line ends it
    # the context (64 tokens) fills after a few turns: the oldest exchanges go, said once
    r = run("generate.py", "--out_dir=base", "--chat=True", "--temperature=0",
            "--max_new_tokens=8", stdin="the cat sat on a mat?\n" * 8, cwd=work)
    assert r.stdout.count("\n") == 8 and r.stderr.count("oldest exchanges go") == 1


def test_turn_two_on_the_carried_cache_equals_the_whole_conversation_afresh(work):
    model, _ = load_model(str(work / "base"))
    sp = spm.SentencePieceProcessor(model_file=str(work / "base" / "tokenizer.model"))
    first = chat.turn_ids(sp, "cat?")
    cache = model.make_cache()
    reply = list(generate(model, first, 6, sp.eos_id(), cache, temperature=0))
    assert cache[0].offset == len(first) + len(reply) == len(first) + 6  # no queued step in it
    second = [sp.eos_id()] + chat.turn_ids(sp, "dog?")
    carried = model(mx.array([second]), cache)[0, -1]
    afresh = model(mx.array([first + reply + second]))[0, -1]
    assert mx.allclose(carried, afresh, atol=1e-5)
