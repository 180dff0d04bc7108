"""train.py over two processes with MLX's ring backend on 127.0.0.1: a pair trains like one process
with the same global batch, checkpoints move between a pair and a single process, and a failure on
one rank stops every rank.

Each process gets OPENBLAS_NUM_THREADS=1: two processes with OpenBLAS's default threads on 2 cores
slow each other 10-19x. Some tests start the ranks the way mlx.launch does (MLX_RANK and
MLX_HOSTFILE), but each in its own folder, as on two machines, so that one rank can see a file that
the other does not.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import mlx.core as mx  # after model.py, which conftest.py imports first

from conftest import losses, workspace

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = Path(sys.executable).with_name("mlx.launch")  # the venv's, or else the one on PATH
LAUNCH = LAUNCH if LAUNCH.is_file() else Path(shutil.which("mlx.launch") or LAUNCH)
TINY = ["--dataset=tiny", "--dim=32", "--n_layers=2", "--n_heads=4", "--n_kv_heads=2",
        "--max_seq_len=32", "--eval_iters=2", "--log_interval=1", "--warmup_iters=2",
        "--learning_rate=3e-3", "--peak_flops=1e12", "--dtype=float32",
        "--eval_interval=4", "--lr_decay_iters=8"]  # the same schedule however long a run is
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
TIMEOUT = 120  # seconds; a rank left waiting in a collective would hang forever without it

if not (mx.distributed.is_available() and LAUNCH.is_file()):
    pytest.skip("this MLX has no distributed backend or no mlx.launch", allow_module_level=True)


def free_ports():
    """A port P such that P and P + 1 are free: the ring gives rank r port P + r."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            pass
    pytest.skip("found no two consecutive free ports on 127.0.0.1")


def single(*args, cwd):
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY, "--batch_size=8", *args],
                       cwd=cwd, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    return r


def pair(*args, cwd):
    """Two processes under mlx.launch, each with half of single()'s batch: the same global batch."""
    r = subprocess.run([str(LAUNCH), "--backend", "ring", "-n", "2", "--starting-port",
                        str(free_ports()), "--env", "OPENBLAS_NUM_THREADS=1", "--", sys.executable,
                        str(ROOT / "train.py"), *TINY, "--batch_size=4", *args],
                       cwd=cwd, env=ENV, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=TIMEOUT)
    # mlx.launch exits 0 even when a rank fails; it warns instead
    assert "[WARN]" not in r.stderr, r.stderr
    return r


def start_ranks(*args, cwds):
    """What mlx.launch does for each rank (MLX_RANK, MLX_HOSTFILE), but rank r runs in cwds[r]."""
    port = free_ports()
    hostfile = Path(cwds[0]) / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{port + r}"] for r in range(len(cwds))]))
    procs = [subprocess.Popen([sys.executable, str(ROOT / "train.py"), *TINY, "--batch_size=4",
                               *args], cwd=cwd,
                              env={**ENV, "MLX_RANK": str(r), "MLX_HOSTFILE": str(hostfile)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r, cwd in enumerate(cwds)]
    # bounds a test that reads their output
    watchdog = threading.Timer(TIMEOUT, lambda: [p.kill() for p in procs])
    watchdog.daemon = True
    watchdog.start()
    return procs


def finish(procs):
    """Every rank's (returncode, stdout, stderr); fails, rather than hangs, if one does not end."""
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            out, err = p.communicate()
        if p.returncode == -signal.SIGKILL:
            pytest.fail(f"a rank still ran after {TIMEOUT} s, waiting in a collective that never "
                        f"ends: {err}")
        results.append((p.returncode, out, err))
    return results


def records(out_dir):
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


def evals(out_dir):
    return {r["iter"]: (r["train_loss"], r["val_loss"]) for r in records(out_dir)
            if "val_loss" in r}


def machine(work, name):
    """A folder with its own copy of the prepared data, like a second Mac."""
    folder = work / name
    shutil.copytree(work / "data", folder / "data")
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_data):
    """The tiny prepared corpus and one uninterrupted single-process run of 8 iterations
    (straight/)."""
    work = workspace(tmp_path_factory, tiny_data)
    single("--out_dir=straight", "--max_iters=8", cwd=work)
    return work


def test_a_pair_trains_like_one_process_and_its_checkpoint_resumes_alone(work):
    r = pair("--out_dir=pair", "--max_iters=4", cwd=work)
    assert "4 x 1 accumulation x 2 processes x 32 tokens = 256 tokens/iter" in r.stdout
    assert r.stdout.count("saved pair/") == 1  # rank 0 alone prints and saves
    straight, paired = losses(work / "straight"), losses(work / "pair")
    assert list(paired) == [1, 2, 3, 4]
    assert paired == pytest.approx({i: straight[i] for i in range(1, 5)}, rel=1e-5)
    # the mean over ranks
    assert evals(work / "pair")[4] == pytest.approx(evals(work / "straight")[4], rel=1e-5)

    single("--out_dir=pair", "--max_iters=8", "--init_from=resume", cwd=work)
    resumed = losses(work / "pair")
    assert list(resumed) == list(range(1, 9))
    assert [resumed[i] for i in range(5, 9)] == pytest.approx([straight[i] for i in range(5, 9)],
                                                              rel=1e-5)


def test_a_single_process_checkpoint_resumes_in_a_pair_even_where_rank_1_has_a_stale_one(work):
    # Rank 1's machine holds an older checkpoint of its own (iteration 8 of another run): every
    # rank must start from rank 0's weights and iteration, or the two copies of the model would
    # drift apart.
    single("--out_dir=out", "--max_iters=4", cwd=work)
    other = machine(work, "other_mac")
    shutil.copytree(work / "straight", other / "out")
    results = finish(start_ranks("--out_dir=out", "--max_iters=8", "--init_from=resume",
                                 cwds=[work, other]))
    assert [rc for rc, _, _ in results] == [0, 0], results
    assert "iterations 4 -> 8" in results[0][1] and results[1][1] == ""  # rank 1 prints nothing
    straight, resumed = losses(work / "straight"), losses(work / "out")
    assert list(resumed) == list(range(1, 9))
    assert [resumed[i] for i in range(5, 9)] == pytest.approx([straight[i] for i in range(5, 9)],
                                                              rel=1e-5)
    assert evals(work / "out")[8] == pytest.approx(evals(work / "straight")[8], rel=1e-5)
    # untouched
    assert json.loads((other / "out" / "config.json").read_text())["train_state"]["iter"] == 8


def test_a_failure_on_one_rank_stops_every_rank_with_the_reason(work):
    other = machine(work, "damaged_mac")
    train_bin = other / "data" / "tiny" / "train.bin"
    train_bin.write_bytes(train_bin.read_bytes()[:-10])  # only rank 1 sees this
    (rc0, _, err0), (rc1, _, err1) = finish(start_ranks("--out_dir=failed", "--max_iters=50",
                                                        cwds=[work, other]))
    assert rc1 != 0 and "truncated" in err1.strip().splitlines()[-1]
    # rank 0 was waiting for it in a collective
    assert rc0 != 0 and "connection to a peer was lost" in err0


def test_ctrl_c_on_one_rank_stops_every_rank_at_the_same_iteration(work):
    other = machine(work, "second_mac")
    procs = start_ranks("--out_dir=interrupted", "--max_iters=100000", "--eval_interval=100000",
                        cwds=[work, other])
    for line in procs[0].stdout:
        if line.startswith("iter 3/"):
            # rank 1 alone: a pair that disagreed would hang in a collective
            procs[1].send_signal(signal.SIGINT)
            break
    (rc0, out0, err0), (rc1, _, err1) = finish(procs)
    assert (rc0, rc1) == (130, 130), err0 + err1
    assert "--out_dir=interrupted --init_from=resume" in out0 and "Traceback" not in err0 + err1
    assert (json.loads((work / "interrupted" / "config.json").read_text())["train_state"]["iter"]
            >= 3)
    assert not (other / "interrupted").exists()  # only rank 0 writes files


def test_a_diverging_pair_stops_every_rank_with_the_reason(work):
    other = machine(work, "third_mac")
    results = finish(start_ranks("--out_dir=diverge", "--max_iters=50", "--learning_rate=1e30",
                                 "--grad_clip=0", "--warmup_iters=0", cwds=[work, other]))
    messages = [err.strip().splitlines()[-1] for _, _, err in results]
    assert [rc for rc, _, _ in results] == [1, 1]
    # the same iteration on both
    assert "the loss became nan" in messages[0] and messages[1] == messages[0]
