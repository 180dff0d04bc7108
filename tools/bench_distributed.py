"""
How data-parallel training scales on this machine: train.py in one process and in two (mlx.launch, ring backend on
127.0.0.1) with the same global batch, and the time one gradient all-reduce (nn.average_gradients) takes.

Reads data_dir/dataset (made by prepare.py); writes only temporary folders. Not a test: it takes a few minutes.
Every process gets OPENBLAS_NUM_THREADS=1 (two processes with OpenBLAS's own threads fight over the cores), and
for comparison one process also runs with OpenBLAS's default threads.

    python tools/bench_distributed.py
    python tools/bench_distributed.py --dim=128 --max_iters=40 --batch_size=8
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from model import Model, ModelArgs  # noqa: E402  before mlx.core: it loads the fast BLAS on Linux
import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten, tree_map  # noqa: E402

from configurator import configure  # noqa: E402
from prepare import read_tokens  # noqa: E402

# -----------------------------------------------------------------------------
dataset = "pystdlib"
data_dir = "data"
dim = 256  # the model: train.py's defaults
n_layers = 4
n_heads = 8
max_seq_len = 128
batch_size = 16  # the global batch: one process takes all of it, each of two processes half
max_iters = 30  # per run; tokens/s is the median over the log intervals after the first (which compiles)
log_interval = 5
allreduce_iters = 20
port = 32323  # the ring's first port (rank r listens on port + r)
role = "driver"  # "allreduce": one rank of the all-reduce timing (the driver starts those under mlx.launch)
# -----------------------------------------------------------------------------
configure(globals())
LAUNCH = os.path.join(os.path.dirname(sys.executable), "mlx.launch")
ONE_THREAD = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}


def time_allreduce():
    group = mx.distributed.init()
    vocab = read_tokens(os.path.join(data_dir, dataset, "train.bin"))[1]["vocab_size"]
    model = Model(ModelArgs(dim=dim, n_layers=n_layers, n_heads=n_heads, vocab_size=vocab, max_seq_len=max_seq_len))
    grads = tree_map(lambda p: mx.ones_like(p) * (group.rank() + 1), model.trainable_parameters())
    mx.eval(grads)
    size = sum(g.nbytes for _, g in tree_flatten(grads))
    times = {}
    for name, fn in (("gradients", lambda: nn.average_gradients(grads, group=group)),
                     ("scalar", lambda: mx.distributed.all_sum(mx.array(1.0), group=group))):
        mx.eval(fn())  # warm up
        t = []
        for _ in range(allreduce_iters):
            start = time.perf_counter()
            mx.eval(fn())
            t.append(time.perf_counter() - start)
        times[name] = statistics.median(t)
    if group.rank() == 0:
        print(json.dumps({"bytes": size, "world": group.size(), **times}))


def train(out_dir, processes, env):
    args = [os.path.join(ROOT, "train.py"), f"--dataset={dataset}", f"--data_dir={os.path.abspath(data_dir)}",
            f"--out_dir={out_dir}", f"--dim={dim}", f"--n_layers={n_layers}", f"--n_heads={n_heads}",
            f"--max_seq_len={max_seq_len}", f"--batch_size={batch_size // processes}", f"--max_iters={max_iters}",
            f"--log_interval={log_interval}", "--eval_interval=1000000", "--eval_iters=1"]
    if processes > 1:
        cmd = [LAUNCH, "--backend", "ring", "-n", str(processes), "--starting-port", str(port),
               "--env", "OPENBLAS_NUM_THREADS=1", "--", sys.executable, *args]
    else:
        cmd = [sys.executable, *args]
    r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode or "[WARN]" in r.stderr:  # mlx.launch exits 0 even when a rank fails
        sys.exit(f"error: {' '.join(cmd)} failed:\n{r.stderr}")
    records = [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))]
    return statistics.median(r["tokens_per_sec"] for r in records if "tokens_per_sec" in r and r["iter"] > log_interval)


if role == "allreduce":
    time_allreduce()
    sys.exit(0)

print(f"load average before starting: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (other work skews this)")
with tempfile.TemporaryDirectory() as tmp:
    runs = [("1 process, 1 OpenBLAS thread", 1, ONE_THREAD),
            ("1 process, default OpenBLAS threads", 1, {k: v for k, v in os.environ.items()
                                                        if k != "OPENBLAS_NUM_THREADS"}),
            ("2 processes (mlx.launch), 1 thread each", 2, ONE_THREAD)]
    tps = {}
    for name, processes, env in runs:
        tps[name] = train(os.path.join(tmp, str(len(tps))), processes, env)
        print(f"{name:42s} {tps[name]:10,.0f} tok/s (global batch {batch_size} x {max_seq_len} tokens)", flush=True)
    base = tps[runs[0][0]]
    print(f"scaling, 2 processes vs 1 (1 thread each): {tps[runs[2][0]] / base:.2f}x")

    r = subprocess.run([LAUNCH, "--backend", "ring", "-n", "2", "--starting-port", str(port),
                        "--env", "OPENBLAS_NUM_THREADS=1", "--", sys.executable, os.path.abspath(__file__),
                        f"--dataset={dataset}", f"--data_dir={os.path.abspath(data_dir)}", f"--dim={dim}",
                        f"--n_layers={n_layers}", f"--n_heads={n_heads}", f"--max_seq_len={max_seq_len}",
                        f"--allreduce_iters={allreduce_iters}", "--role=allreduce"],
                       env=ONE_THREAD, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if "[WARN]" in r.stderr:
        sys.exit(f"error: the all-reduce timing failed:\n{r.stderr}")
    ar = json.loads(r.stdout.strip().splitlines()[-1])
    # A ring all-reduce sends and receives 2 (N - 1) / N of the buffer on each link: the buffer itself for N = 2.
    wire = 2 * (ar["world"] - 1) / ar["world"] * ar["bytes"]
    step = batch_size * max_seq_len / tps[runs[2][0]]
    print(f"all-reduce of the gradients ({ar['bytes'] / 1e6:.1f} MB float32, 2 processes over loopback): "
          f"{ar['gradients'] * 1e3:.2f} ms, {wire / ar['gradients'] / 1e9:.2f} GB/s per link; "
          f"{ar['gradients'] / step:.1%} of a {step * 1e3:.0f} ms step")
    print(f"all-reduce of one scalar (latency): {ar['scalar'] * 1e6:.0f} us")
    for link, gbit in (("1 Gb Ethernet", 1), ("10 Gb Ethernet", 10), ("Thunderbolt bridge, TCP ~20 Gb/s", 20)):
        print(f"  estimate over {link}: {wire * 8 / (gbit * 1e9) * 1e3:.0f} ms per step for the gradients "
              f"(wire bytes / nominal rate)")
