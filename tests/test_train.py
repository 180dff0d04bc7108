"""train.py and generate.py as a user runs them: end to end, exact resume, Ctrl-C, NaN, and every
bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from model import load_model
import mlx.core as mx
from mlx.utils import tree_flatten

from conftest import ON_CPU, WORDS, cpu_only, losses, workspace

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--dim=32", "--n_layers=2", "--n_heads=4", "--n_kv_heads=2", "--max_seq_len=32",
        "--batch_size=4", "--eval_iters=2", "--log_interval=1", "--warmup_iters=2",
        "--learning_rate=3e-3", "--dtype=float32"]  # float32: numbers compare on any backend


def run(script, *args, cwd, ok=True):
    r = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True,
                       text=True, timeout=300)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def error_line(r):
    assert r.returncode != 0
    lines = [line for line in r.stderr.strip().splitlines()
             if not line.startswith("Overriding: ")]  # generate.py's
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr  # one line, no traceback
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_data):
    return workspace(tmp_path_factory, tiny_data)


def test_prepare_train_generate_end_to_end(work):
    r = run("train.py", "--dataset=tiny", "--out_dir=e2e", "--max_iters=30", "--eval_interval=15",
            *TINY, cwd=work)
    assert "eval 30" in r.stdout and "saved e2e/" in r.stdout
    out = work / "e2e"
    assert {"config.json", "model.safetensors", "optimizer.safetensors", "tokenizer.model",
            "log.jsonl"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_key_value_heads"] == 2 and \
        config["vocab_size"] == 300
    assert config["train_state"]["iter"] == 30 and config["train_settings"]["max_iters"] == 30
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_keys = {"iter", "loss", "lr", "tokens_per_sec", "mfu", "peak_mem_gb"}
    assert all(train_keys <= r.keys() for r in records if "loss" in r)
    evals = [r for r in records if "val_loss" in r]
    assert [r["iter"] for r in evals] == [15, 30] and all(r["val_bpb"] > 0 for r in evals)
    first, last = records[0]["loss"], losses(out)[30]
    assert last < first - 1.0  # it learns
    # the picture of the run: both eval curves, a point per eval
    svg = ET.parse(out / "loss.svg").getroot()
    curves = {e.get("class"): len(e.get("points").split())
              for e in svg.iter("{http://www.w3.org/2000/svg}polyline") if e.get("class")}
    assert curves == {"train-loss": 30, "eval-train": 2, "eval-val": 2}

    r = run("generate.py", "--out_dir=e2e", "--prompt=the cat", "--temperature=0",
            "--max_new_tokens=20", "--num_samples=1", cwd=work)
    assert r.stdout.startswith("the cat") and len(r.stdout) > len("the cat") + 10
    assert "tokens/s" in r.stderr
    again = run("generate.py", "--out_dir=e2e", "--prompt=the cat", "--temperature=0",
                "--max_new_tokens=20", "--num_samples=1", cwd=work)
    assert again.stdout == r.stdout  # greedy is deterministic
    # keeping only the most likely token, by top-k or by a tiny nucleus, is greedy decoding at any
    # temperature
    for narrow in ("--top_k=1", "--top_p=1e-6"):
        r = run("generate.py", "--out_dir=e2e", "--prompt=the cat", "--temperature=1.5", narrow,
                "--max_new_tokens=20", "--num_samples=1", "--seed=7", cwd=work)
        assert r.stdout == again.stdout
    r = run("generate.py", "--out_dir=e2e", "--prompt=the cat", "--temperature=0",
            "--repetition_penalty=5", "--max_new_tokens=20", "--num_samples=1", cwd=work)
    assert r.stdout != again.stdout  # penalising what was said changes the greedy path
    long_prompt = " ".join(WORDS * 5)  # far longer than the 32-token context
    r = run("generate.py", "--out_dir=e2e", f"--prompt={long_prompt}", "--max_new_tokens=40",
            "--top_k=5", "--num_samples=1", cwd=work)
    assert "more than the model's context" in r.stderr


def test_resume_continues_exactly_where_an_uninterrupted_run_would_be(work):
    # the same schedule in all three runs: by default it would decay over max_iters, which differs
    common = ["--dataset=tiny", "--eval_interval=4", "--lr_decay_iters=8", *TINY]
    run("train.py", "--out_dir=straight", "--max_iters=8", *common, cwd=work)
    run("train.py", "--out_dir=stopped", "--max_iters=4", *common, cwd=work)
    r = run("train.py", "--out_dir=stopped", "--max_iters=8", "--init_from=resume", *common,
            cwd=work)
    assert "iterations 4 -> 8" in r.stdout
    assert "max_iters 4 -> 8" in r.stdout  # it says which settings differ from the checkpoint's
    straight, resumed = losses(work / "straight"), losses(work / "stopped")
    assert list(resumed) == list(range(1, 9))
    assert [resumed[i] for i in range(5, 9)] == [straight[i] for i in range(5, 9)]
    a = (work / "straight" / "model.safetensors").read_bytes()
    b = (work / "stopped" / "model.safetensors").read_bytes()
    assert a == b


def test_a_loaded_models_shape_is_what_the_settings_record(work):
    # Fine-tuned and resumed with the default shape flags (dim 256, ...): the checkpoint's shape
    # trains, and config.json and the resume's note say so, not the flags'.
    shape = TINY[:4]
    run("train.py", "--dataset=tiny", "--out_dir=shaped", "--max_iters=1", *shape, cwd=work)
    run("train.py", "--dataset=tiny", "--out_dir=reshaped", "--init_from=shaped", "--max_iters=1",
        cwd=work)
    r = run("train.py", "--dataset=tiny", "--out_dir=reshaped", "--init_from=resume",
            "--max_iters=2", cwd=work)
    assert "max_iters 1 -> 2" in r.stdout and "dim" not in r.stdout.split("note:")[1].split("\n")[0]
    saved = json.loads((work / "reshaped" / "config.json").read_text())["train_settings"]
    assert (saved["dim"], saved["n_layers"], saved["n_heads"], saved["n_kv_heads"]) == (32, 2, 4, 2)


def test_gradient_accumulation_gives_the_losses_of_the_bigger_batch(work):
    run("train.py", "--dataset=tiny", "--out_dir=big", "--max_iters=3", "--eval_interval=3", *TINY,
        "--batch_size=8", cwd=work)
    r = run("train.py", "--dataset=tiny", "--out_dir=accum", "--max_iters=3", "--eval_interval=3",
            *TINY, "--batch_size=4", "--gradient_accumulation_steps=2", "--workers=1", cwd=work)
    assert "4 x 2 accumulation x 1 processes x 32 tokens = 256 tokens/iter" in r.stdout
    big, accum = losses(work / "big"), losses(work / "accum")
    assert list(accum) == [1, 2, 3]
    assert accum == pytest.approx(big, rel=1e-5)


@cpu_only
def test_worker_processes_give_the_losses_and_gradients_of_one_process(work):
    common = ["--dataset=tiny", "--max_iters=3", "--eval_interval=3", *TINY,
              "--gradient_accumulation_steps=2"]
    run("train.py", "--out_dir=one_worker", "--workers=1", *common, cwd=work)
    r = run("train.py", "--out_dir=four_workers", "--workers=4", *common, cwd=work)
    assert "4 workers" in r.stdout and "1 x 2 accumulation x 4 processes" in r.stdout
    assert r.stdout.count("Overriding: dataset = 'tiny'") == 1 and r.stderr == ""  # once
    records = [[json.loads(line) for line in (work / d / "log.jsonl").read_text().splitlines()]
               for d in ("one_worker", "four_workers")]
    for key in ("loss", "grad_norm", "val_loss"):
        one, four = ([r[key] for r in run_records if key in r] for run_records in records)
        assert len(four) == (1 if key == "val_loss" else 3) and \
            four == pytest.approx(one, rel=1e-5), key


def resumes(work, out_dir):
    """Resume work/out_dir for two more iterations; returns the iteration its checkpoint held."""
    saved = json.loads((work / out_dir / "config.json").read_text())["train_state"]["iter"]
    r = run("train.py", "--dataset=tiny", f"--out_dir={out_dir}", f"--max_iters={saved + 2}",
            "--eval_interval=100000", "--init_from=resume", *TINY, cwd=work)
    assert f"iterations {saved} -> {saved + 2}" in r.stdout
    return saved


def children(pid):
    """The processes that process pid started (Linux's /proc; none elsewhere)."""
    return [int(c) for f in Path(f"/proc/{pid}/task").glob("*/children")
            for c in f.read_text().split()]


@cpu_only
def test_a_worker_that_dies_stops_the_run_and_the_last_checkpoint_resumes(work):
    p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--dataset=tiny",
                          "--out_dir=worker_died", "--max_iters=100000", "--eval_interval=2",
                          "--workers=2", *TINY],
                         cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("iter 3/"):
            break
    rank1 = [c for c in children(p.pid)
             if b"MLX_RANK=1\0" in Path(f"/proc/{c}/environ").read_bytes()]
    assert len(rank1) == 1
    os.kill(rank1[0], signal.SIGKILL)  # as the out-of-memory killer would
    out, err = p.communicate(timeout=120)  # rank 0 does not wait for it forever
    assert p.returncode != 0 and "worker process 1 of 2 ended with status 137" in err, err
    assert resumes(work, "worker_died") >= 2


def test_ctrl_c_saves_a_checkpoint_that_resumes(work):
    p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--dataset=tiny",
                          "--out_dir=interrupted", "--max_iters=100000", "--eval_interval=100000",
                          *TINY],
                         cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        assert not line.startswith("Overriding: workers")  # its workers echo only what was typed
        if line.startswith("iter 3/"):
            p.send_signal(signal.SIGINT)
            break
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "resume with python train.py --out_dir=interrupted --init_from=resume" in out
    assert "Traceback" not in err
    assert resumes(work, "interrupted") >= 3


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(work):
    run("train.py", "--dataset=tiny", "--out_dir=diverge", "--max_iters=2", "--eval_interval=2",
        *TINY, cwd=work)
    r = run("train.py", "--dataset=tiny", "--out_dir=diverge", "--max_iters=50",
            "--eval_interval=1", "--init_from=resume", *TINY, "--learning_rate=1e30",
            "--grad_clip=0", "--warmup_iters=0", cwd=work, ok=False)
    message = error_line(r)
    assert "the loss became nan" in message and "keeps the last good checkpoint" in message
    bad_iter = int(message.split("at iteration ")[1].split(";")[0])
    saved = json.loads((work / "diverge" / "config.json").read_text())["train_state"]["iter"]
    assert 2 <= saved < bad_iter
    model, _ = load_model(str(work / "diverge"))
    assert all(mx.isfinite(p).all().item() for _, p in tree_flatten(model.parameters()))


def test_bad_inputs_get_one_line_errors(work, tmp_path):
    r = run("train.py", "--dataset=nothing", cwd=work, ok=False)
    assert "not found; run `python prepare.py" in error_line(r)
    r = run("generate.py", "--out_dir=never_trained", cwd=work, ok=False)
    assert "no checkpoint in 'never_trained'" in error_line(r)
    r = run("train.py", "--dataset=tiny", "--max_seq_len=100000", *TINY[:4], cwd=work, ok=False)
    assert "too few for max_seq_len=100000" in error_line(r)
    r = run("train.py", "--dataset=tiny", "--max_iters=abc", cwd=work, ok=False)
    assert "--max_iters expects int, got 'abc'" in error_line(r)
    r = run("generate.py", "--out_dir=e2e", "--top_p=0", cwd=work, ok=False)
    assert "--top_p=0.0 must be above 0 and at most 1" in error_line(r)
    r = run("train.py", "--dataset=tiny", "--dim=30", "--n_heads=4", cwd=work, ok=False)
    assert "dim (30) must divide by n_heads (4)" in error_line(r)
    r = run("train.py", "--dataset=tiny", "--dim=8", "--n_heads=8", cwd=work, ok=False)
    assert "dim / n_heads (8 / 8) must be even" in error_line(r)  # a line, not a traceback
    r = run("train.py", "--dataset=tiny", "--out_dir=", cwd=work, ok=False)
    assert "--out_dir='' must be a folder" in error_line(r)
    r = run("train.py", "--dataset=tiny", "--eval_interval=0", cwd=work, ok=False)
    assert "--eval_interval=0 must be at least 1" in error_line(r)
    r = run("train.py", "--dataset=tiny", "--workers=3", *TINY, cwd=work, ok=False)
    assert "--workers=3 must be a divisor of --batch_size=4" in error_line(r)
    r = run("train.py", "--dataset=tiny", "--out_dir=e2e", "--init_from=resume", "--max_iters=30",
            *TINY, cwd=work, ok=False)
    assert "already at iteration 30; to train on, raise --max_iters" in error_line(r)
    (work / "weights_only").mkdir(exist_ok=True)
    for name in ("config.json", "model.safetensors", "tokenizer.model"):
        (work / "weights_only" / name).write_bytes((work / "e2e" / name).read_bytes())
    r = run("train.py", "--dataset=tiny", "--out_dir=weights_only", "--init_from=resume", *TINY,
            cwd=work, ok=False)
    assert "weights_only/optimizer.safetensors is missing, and resuming needs it" in error_line(r)
    config = json.loads((work / "weights_only" / "config.json").read_text())
    for key in ("train_settings", "train_state"):  # edited by hand; a Hugging Face folder, say
        del config[key]
        (work / "weights_only" / "config.json").write_text(json.dumps(config))
        r = run("train.py", "--dataset=tiny", "--out_dir=weights_only", "--init_from=resume",
                *TINY, cwd=work, ok=False)
        assert "is not a checkpoint of train.py" in error_line(r)

    # a token file that is cut short, or that is not a token file at all
    bad = work / "data" / "bad"
    bad.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.model", "val.bin"):
        (bad / name).write_bytes((work / "data" / "tiny" / name).read_bytes())
    (bad / "train.bin").write_bytes((work / "data" / "tiny" / "train.bin").read_bytes()[:-10])
    assert "truncated" in error_line(run("train.py", "--dataset=bad", cwd=work, ok=False))
    (bad / "train.bin").write_bytes(b"not tokens at all" * 100)
    assert "not a token file" in error_line(run("train.py", "--dataset=bad", cwd=work, ok=False))

    # data made with another tokenizer than the checkpoint's
    (work / "corpus2").mkdir(exist_ok=True)
    (work / "corpus2" / "a.txt").write_text("zebra quartz jigsaw " * 400)
    (work / "corpus2" / "b.txt").write_text("vortex plumb wizard " * 400)
    run("prepare.py", "--input=corpus2", "--dataset=other", "--vocab_size=290", cwd=work)
    run("train.py", "--dataset=tiny", "--out_dir=mismatch", "--max_iters=1", "--eval_interval=1",
        *TINY, cwd=work)
    r = run("train.py", "--dataset=other", "--out_dir=mismatch", "--init_from=resume",
            "--max_iters=2", *TINY, cwd=work, ok=False)
    assert "different tokenizer" in error_line(r)


def test_bfloat16_trains_on_float32_master_weights(work):
    # dtype=bfloat16 (what dtype=auto picks on a GPU): the forward and backward pass in bfloat16,
    # the weights and AdamW's moments in float32. So its losses track a float32 run's, and an update
    # far below bfloat16's resolution (1e-6 against weights of ~0.02, whose bfloat16 step is ~1e-4)
    # is not rounded away.
    common = ["--dataset=tiny", "--max_iters=5", "--eval_interval=5", *TINY, "--workers=1",
              "--peak_flops=1e12"]
    run("train.py", "--out_dir=fp32", *common, cwd=work)
    run("train.py", "--out_dir=bf16", *common, "--dtype=bfloat16", cwd=work)
    fp32, bf16 = losses(work / "fp32"), losses(work / "bf16")
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=0.02)
    tensors = {name: mx.load(str(work / "bf16" / name))
               for name in ("model.safetensors", "optimizer.safetensors")}
    assert all(v.dtype == mx.float32 for t in tensors.values() for k, v in t.items()
               if not k.endswith(".step"))

    tiny_step = ["--warmup_iters=0", "--max_iters=2", "--eval_interval=2", "--dtype=bfloat16",
                 "--peak_flops=1e12"]
    for name, lr in (("still", "0.0"), ("tiny_update", "1e-6")):
        run("train.py", "--dataset=tiny", f"--out_dir={name}", *TINY, *tiny_step,
            f"--learning_rate={lr}", f"--min_lr={lr}", cwd=work)
    still, moved = (mx.load(str(work / name / "model.safetensors"))
                    for name in ("still", "tiny_update"))
    changed = [k for k in still if not mx.array_equal(still[k], moved[k]).item()]
    assert len(changed) == len(still)  # every tensor moved, by about 1e-6 a step
    w = "model.layers.0.self_attn.q_proj.weight"
    assert 0 < mx.abs(moved[w] - still[w]).max().item() < 1e-5

    # a folder stored in bfloat16 (load_model keeps its dtype) trains on float32 master weights
    shutil.copytree(work / "fp32", work / "stored_bf16")
    weights = mx.load(str(work / "fp32" / "model.safetensors"))
    mx.save_safetensors(str(work / "stored_bf16" / "model.safetensors"),
                        {k: v.astype(mx.bfloat16) for k, v in weights.items()})
    run("train.py", "--dataset=tiny", "--init_from=stored_bf16", "--out_dir=from_bf16", *TINY,
        *tiny_step, cwd=work)
    saved = mx.load(str(work / "from_bf16" / "model.safetensors"))
    assert {v.dtype for v in saved.values()} == {mx.float32}


def test_each_eval_logs_a_sample_that_is_the_same_in_every_run(work):
    common = ["--dataset=tiny", "--max_iters=4", "--eval_interval=2", *TINY,
              "--sample_prompt=the cat", "--sample_tokens=12"]
    outs = [run("train.py", f"--out_dir=sample{i}", *common, cwd=work).stdout for i in range(2)]
    samples = [[json.loads(line)["sample"]
                for line in (work / f"sample{i}" / "log.jsonl").read_text().splitlines()
                if "sample" in line] for i in range(2)]
    assert len(samples[0]) == 2 and samples[0] == samples[1] and \
        all(s.startswith("the cat") for s in samples[0])
    # the model changed between the evals, and so did what it writes
    assert samples[0][0] != samples[0][1]
    assert f"sample 2: {samples[0][0]}" in outs[0] and f"sample 4: {samples[1][1]}" in outs[1]
    common_2 = [a for a in common if a != "--max_iters=4"]
    run("train.py", "--out_dir=sample_resumed", "--max_iters=2", "--lr_decay_iters=4", *common_2,
        cwd=work)
    r = run("train.py", "--out_dir=sample_resumed", "--max_iters=4", "--init_from=resume",
            *common_2, cwd=work)
    # a resumed run writes what the unbroken one did
    assert f"sample 4: {samples[0][1]}" in r.stdout
    r = run("train.py", "--out_dir=nosample", *common, "--sample_tokens=0", cwd=work)
    assert "sample 2:" not in r.stdout


def test_grad_checkpoint_gives_the_same_losses_and_gradients(work):
    common = ["--dataset=tiny", "--max_iters=3", "--eval_interval=3", *TINY]
    run("train.py", "--out_dir=plain", *common, cwd=work)
    run("train.py", "--out_dir=checkpointed", *common, "--grad_checkpoint=True", cwd=work)
    records = [[json.loads(line) for line in (work / d / "log.jsonl").read_text().splitlines()]
               for d in ("plain", "checkpointed")]
    for key in ("loss", "grad_norm", "val_loss"):
        plain, checkpointed = ([r[key] for r in rs if key in r] for rs in records)
        assert checkpointed == pytest.approx(plain, rel=1e-5), key


def test_the_run_ends_with_the_loss_over_the_whole_val_split(work):
    run("train.py", "--dataset=tiny", "--out_dir=full_val", "--max_iters=3", "--eval_interval=3",
        *TINY, cwd=work)
    final = [json.loads(line) for line in (work / "full_val" / "log.jsonl").read_text().splitlines()
             if "val_loss_full" in line]
    assert len(final) == 1
    # the same number, computed here the plain way: every window of max_seq_len tokens, side by side
    import numpy as np
    import files
    from model import cross_entropy
    model, _ = load_model(str(work / "full_val"))
    val, info = files.read_tokens(str(work / "data" / "tiny" / "val.bin"))
    T = 32
    xy = np.stack([val[i * T:(i + 1) * T + 1] for i in range((len(val) - 1) // T)]).astype(np.int32)
    loss = cross_entropy(model(mx.array(xy[:, :-1])), mx.array(xy[:, 1:])).mean().item()
    assert final[0]["val_loss_full"] == pytest.approx(loss, rel=1e-5)
    assert final[0]["val_tokens_full"] == xy.size - len(xy)
    bpb = final[0]["val_loss_full"] / np.log(2) * info["n_tokens"] / info["n_bytes"]
    assert final[0]["val_bpb_full"] == pytest.approx(bpb, rel=1e-9)


def records_of(out_dir):
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


def test_muon_resumes_exactly_and_splits_batches_like_one_process(work):
    common = ["--dataset=tiny", "--eval_interval=4", "--lr_decay_iters=8", *TINY]
    run("train.py", "--out_dir=muon_straight", "--max_iters=8", "--optimizer=muon", *common,
        cwd=work)
    run("train.py", "--out_dir=adamw_ref", "--max_iters=8", *common, cwd=work)
    run("train.py", "--out_dir=muon_stopped", "--max_iters=4", "--optimizer=muon", *common,
        cwd=work)
    r = run("train.py", "--out_dir=muon_stopped", "--max_iters=8", "--optimizer=muon",
            "--init_from=resume", *common, cwd=work)
    assert "iterations 4 -> 8" in r.stdout
    straight, resumed, adamw = (losses(work / d)
                                for d in ("muon_straight", "muon_stopped", "adamw_ref"))
    assert [resumed[i] for i in range(5, 9)] == [straight[i] for i in range(5, 9)]
    assert (work / "muon_straight" / "model.safetensors").read_bytes() == \
        (work / "muon_stopped" / "model.safetensors").read_bytes()
    a, b = (mx.load(str(work / d / "optimizer.safetensors"))
            for d in ("muon_straight", "muon_stopped"))
    assert a.keys() == b.keys() and \
        all(mx.array_equal(a[k], b[k]).item() for k in a)  # Muon's momentum too
    # the same first batch
    assert straight[1] == adamw[1] and all(straight[i] != adamw[i] for i in range(2, 9))
    # Muon holds one momentum per matrix of the blocks, AdamW two moments for the rest
    state = mx.load(str(work / "muon_straight" / "optimizer.safetensors"))
    assert "states.0.model.layers.0.mlp.down_proj.weight.v" in state
    assert "states.1.model.embed_tokens.weight.m" in state and \
        "states.2.model.norm.weight.v" in state
    assert not [k for k in state if k.startswith("states.0.") and ("embed" in k or "norm" in k)]
    # Muon's momentum after one step is the (clipped) gradient's alone, 0.05 g, where AdamW's first
    # moment is 0.1 g of the same batch: no weight decay is folded into the gradient that Muon
    # orthogonalises (MLX's default, 0.01 W, steered q's and k's updates almost wholly).
    for optimizer in ("muon", "adamw"):
        run("train.py", f"--out_dir={optimizer}_one_step", "--max_iters=1", "--eval_interval=1",
            f"--optimizer={optimizer}", *TINY, "--dataset=tiny", cwd=work)
    muon, adamw = (mx.load(str(work / f"{o}_one_step" / "optimizer.safetensors"))
                   for o in ("muon", "adamw"))
    matrices = [k[len("states.0."):-2] for k in muon if k.startswith("states.0.") and
                k.endswith(".v")]
    assert len(matrices) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 blocks
    for name in matrices:
        assert mx.allclose(muon[f"states.0.{name}.v"], 0.5 * adamw[f"states.0.{name}.m"],
                           rtol=1e-4, atol=1e-9).item(), name

    split = ["--dataset=tiny", "--max_iters=3", "--eval_interval=3", "--optimizer=muon", *TINY]
    run("train.py", "--out_dir=muon_big", "--workers=1", *split, "--batch_size=8", cwd=work)
    run("train.py", "--out_dir=muon_accum", "--workers=1", *split,
        "--gradient_accumulation_steps=2", cwd=work)
    if ON_CPU:  # worker processes are the CPU's
        run("train.py", "--out_dir=muon_workers", "--workers=2", *split,
            "--gradient_accumulation_steps=2", cwd=work)
    runs = [records_of(work / d) for d in ("muon_big", "muon_accum", "muon_workers")
            if (work / d).exists()]
    for key in ("loss", "grad_norm", "val_loss"):
        values = [[r[key] for r in rs if key in r] for rs in runs]
        # an eval's batches are batch_size windows: the big run's are other windows
        if key != "val_loss":
            assert values[1] == pytest.approx(values[0], rel=1e-5), key
        for workers in values[2:]:
            assert len(workers) == (1 if key == "val_loss" else 3) and \
                workers == pytest.approx(values[1], rel=1e-5)


def test_wsd_holds_the_peak_then_decays_linearly_to_min_lr_in_the_cooldown(work):
    common = ["--dataset=tiny", "--max_iters=24", "--lr_decay_iters=20", "--eval_interval=24",
              *TINY, "--min_lr=3e-4", "--sample_tokens=0"]
    run("train.py", "--out_dir=wsd", "--lr_schedule=wsd", "--cooldown_frac=0.25", *common, cwd=work)
    run("train.py", "--out_dir=cosine", "--lr_schedule=cosine", *common, cwd=work)
    # the record of iteration i holds the learning rate of its step, i - 1
    wsd, cosine = ({r["iter"] - 1: r["lr"] for r in records_of(work / d) if "lr" in r}
                   for d in ("wsd", "cosine"))
    peak, low = 3e-3, 3e-4
    assert [wsd[0], wsd[1]] == pytest.approx([peak / 3, 2 * peak / 3])  # warmup_iters=2, as before
    # constant until the last quarter of lr_decay_iters=20
    assert all(wsd[i] == peak for i in range(2, 16))
    # linear, reaching min_lr at 20
    cooldown = [peak - (peak - low) * (i - 15) / 5 for i in range(15, 21)]
    assert [wsd[i] for i in range(15, 21)] == pytest.approx(cooldown)
    assert all(wsd[i] == low for i in range(21, 24))  # past lr_decay_iters, min_lr
    assert cosine[2] == peak and cosine[8] < peak and cosine[16] < wsd[16]


def test_dropout_trains_on_masks_that_a_resume_draws_again_and_evaluates_without_them(work):
    # learning rate 0: the weights never move, so every eval sees the same model. Dropout changes
    # each training loss, and neither the evals, nor the whole-val pass, nor the samples
    still = ["--dataset=tiny", "--max_iters=2", "--eval_interval=1", *TINY, "--learning_rate=0.0",
             "--min_lr=0.0", "--sample_prompt=the cat", "--sample_tokens=8"]
    run("train.py", "--out_dir=no_dropout", *still, cwd=work)
    run("train.py", "--out_dir=dropout_still", *still, "--dropout=0.5", cwd=work)
    plain, dropped = records_of(work / "no_dropout"), records_of(work / "dropout_still")
    assert all(a["loss"] != b["loss"] for a, b in zip(plain, dropped) if "loss" in a)
    for key in ("train_loss", "val_loss", "val_loss_full", "sample"):
        a, b = ([r[key] for r in rs if key in r] for rs in (plain, dropped))
        assert a and a == b, key

    common = ["--dataset=tiny", "--eval_interval=4", "--lr_decay_iters=8", *TINY, "--dropout=0.1"]
    run("train.py", "--out_dir=dropout_straight", "--max_iters=8", *common, cwd=work)
    run("train.py", "--out_dir=dropout_stopped", "--max_iters=4", *common, cwd=work)
    run("train.py", "--out_dir=dropout_stopped", "--max_iters=8", "--init_from=resume",
        *common, cwd=work)
    straight, resumed = losses(work / "dropout_straight"), losses(work / "dropout_stopped")
    assert [resumed[i] for i in range(5, 9)] == [straight[i] for i in range(5, 9)]
    assert (work / "dropout_straight" / "model.safetensors").read_bytes() == \
        (work / "dropout_stopped" / "model.safetensors").read_bytes()
    # grad_checkpoint recomputes each block in the backward pass, with the same masks
    run("train.py", "--out_dir=dropout_checkpointed", "--max_iters=8", *common,
        "--grad_checkpoint=True", cwd=work)
    assert losses(work / "dropout_checkpointed") == pytest.approx(straight, rel=1e-5)
    config = json.loads((work / "dropout_straight" / "config.json").read_text())
    # LLaMA's inference has no dropout
    assert "dropout" not in {k for k in config if k != "train_settings"}


def test_max_minutes_decides_max_iters_once_at_the_cooldown_and_a_resume_keeps_it(work):
    budget = ["--dataset=tiny", *TINY, "--max_minutes=0.05", "--eval_interval=50",
              "--peak_flops=1e12", "--sample_tokens=0"]
    start = time.perf_counter()
    r = run("train.py", "--out_dir=budget", *budget, "--max_iters=5", cwd=work)
    elapsed = time.perf_counter() - start
    records = records_of(work / "budget")
    fits = [rec for rec in records if "max_iters" in rec]
    assert len(fits) == 1  # decided once
    n, decided_at = fits[0]["max_iters"], fits[0]["iter"]
    assert decided_at >= 20 and decided_at <= 0.8 * n < decided_at + 1  # where the cooldown starts
    assert f"max_minutes=0.05: {n:,} iterations fit; training until then" in r.stdout
    assert n > 25 and list(losses(work / "budget")) == list(range(1, n + 1))  # --max_iters gave way

    def wsd(it):  # the rates of a run that knew its count from the start (warmup 2, peak 3e-3)
        cooldown = 0.8 * n
        return 3e-3 * (it + 1) / 3 if it < 2 else 3e-3 if it < cooldown else \
            3e-3 - (it - cooldown) / (n - cooldown) * (3e-3 - 2e-4)
    assert [rec["lr"] for rec in records if "lr" in rec] == \
        pytest.approx([wsd(it) for it in range(n)], rel=1e-6)
    config = json.loads((work / "budget" / "config.json").read_text())
    assert config["train_settings"]["max_iters"] == n and config["train_state"]["iter"] == n
    assert 0.5 * 3 < elapsed < 3 + 1.5  # it ended by itself, near the 3 s budget (and the imports)

    def interrupted(out_dir, at, *args):  # Ctrl-C once `at` is printed -> the iteration saved
        p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), f"--out_dir={out_dir}",
                              *budget, *args], cwd=work, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        for line in p.stdout:
            if at in line:
                p.send_signal(signal.SIGINT)
                break
        out, err = p.communicate(timeout=120)
        assert p.returncode == 130, err
        return json.loads((work / out_dir / "config.json").read_text())["train_state"]["iter"], line

    saved, line = interrupted("budget_stopped", "iterations fit")
    n = int(line.split(": ")[1].split(" ")[0].replace(",", ""))
    assert 20 < saved < n
    shutil.copytree(work / "budget_stopped", work / "budget_recount")
    r = run("train.py", "--out_dir=budget_stopped", *budget, "--init_from=resume", cwd=work)
    assert f"iterations {saved} -> {n}" in r.stdout and "iterations fit" not in r.stdout
    assert list(losses(work / "budget_stopped")) == list(range(1, n + 1))
    r = run("train.py", "--out_dir=budget_stopped", *budget, "--init_from=resume",
            f"--max_iters={n + 10}", cwd=work, ok=False)  # the budget's count holds: say so
    assert f"already at iteration {n}; to train on, raise --max_iters with --max_minutes=0" in \
        error_line(r)
    r = run("train.py", "--out_dir=budget_recount", *budget, "--init_from=resume",
            "--max_minutes=0", f"--max_iters={saved + 2}", cwd=work)
    assert f"iterations {saved} -> {saved + 2}" in r.stdout  # with the budget off, max_iters rules
    # stopped before the count was decided: the resumed run decides it, from its own pace
    saved, _ = interrupted("budget_early", "iter 5/inf")
    r = run("train.py", "--out_dir=budget_early", *budget, "--init_from=resume", cwd=work)
    n = json.loads((work / "budget_early" / "config.json").read_text())["train_state"]["iter"]
    assert f"iterations {saved} -> inf" in r.stdout and "iterations fit" in r.stdout
    assert list(losses(work / "budget_early")) == list(range(1, n + 1)) and n > saved + 20


def test_one_run_per_out_dir_and_sigterm_saves_like_ctrl_c(work):
    p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--dataset=tiny",
                          "--out_dir=busy", "--max_iters=100000", "--eval_interval=100000", *TINY],
                         cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("iter 3/"):
            break
    for args in ([], ["--init_from=resume"]):  # a new run, or a resume, of the folder in use
        r = run("train.py", "--dataset=tiny", "--out_dir=busy", *args, *TINY, cwd=work, ok=False)
        message = error_line(r)  # the process that holds it: this one, or its rank 0 worker
        holder = int(message.split("train.py (process ")[1].split(")")[0])
        assert "busy/ is in use by another train.py" in message and \
            holder in (p.pid, *children(p.pid))
    p.send_signal(signal.SIGTERM)  # a shutdown, `timeout`, a scheduler's time limit
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "resume with python train.py --out_dir=busy --init_from=resume" in out
    assert "Traceback" not in err
    assert resumes(work, "busy") >= 3  # the lock is free


def test_the_levers_bad_values_get_one_line_errors(work):
    for arg, message in (("--optimizer=sgd", "--optimizer='sgd' must be one of adamw, muon"),
                         ("--lr_schedule=linear",
                          "--lr_schedule='linear' must be one of cosine, wsd"),
                         ("--cooldown_frac=1.5", "--cooldown_frac=1.5 must be between 0 and 1"),
                         ("--dropout=1", "--dropout=1.0 must be at least 0 and below 1"),
                         ("--max_minutes=-1", "--max_minutes=-1.0 must be at least 0"),
                         ("--learning_rate=-1", "--learning_rate=-1.0 must be at least 0"),
                         ("--min_lr=-1", "--min_lr=-1.0 must be at least 0"),
                         ("--grad_clip=-1", "--grad_clip=-1.0 must be at least 0"),
                         ("--learning_rate=0",
                          "--learning_rate=0.0 must be above 0: Muon's rate follows")):
        extra = ["--optimizer=muon"] if arg == "--learning_rate=0" else []
        assert message in error_line(run("train.py", "--dataset=tiny", arg, *extra, cwd=work,
                                         ok=False))
    run("train.py", "--dataset=tiny", "--out_dir=adamw_run", "--max_iters=1", "--eval_interval=1",
        *TINY, cwd=work)
    r = run("train.py", "--dataset=tiny", "--out_dir=adamw_run", "--init_from=resume",
            "--max_iters=2", "--optimizer=muon", *TINY, cwd=work, ok=False)
    assert "adamw_run/optimizer.safetensors holds adamw's state, not muon's; resume with " \
        "--optimizer=adamw" in error_line(r)
