"""
How data-parallel training scales on this machine: train.py in one process and in two (ring backend
on 127.0.0.1) with the same global batch, and how long one all-reduce of the gradients
(nn.average_gradients) takes.

Reads data_dir/dataset (made by prepare.py); writes only temporary folders. Not a test: it takes a
few minutes. Every process gets OPENBLAS_NUM_THREADS=1 (two processes with OpenBLAS's own threads
fight over the cores); for comparison one process also runs with OpenBLAS's default threads. The
pair runs twice: under mlx.launch, and started directly with the two variables mlx.launch sets
(MLX_RANK, MLX_HOSTFILE), because mlx.launch 0.32.4's output-forwarding threads keep about one core
busy, which on a 2-core machine is half of it.

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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import Model, ModelArgs  # first: model.py loads cpu.py, before mlx.core
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

from configurator import configure
from files import read_tokens

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# -----------------------------------------------------------------------------
dataset = "pystdlib"
data_dir = "data"
dim = 256  # the model: train.py's defaults
n_layers = 4
n_heads = 8
max_seq_len = 128
batch_size = 16  # the global batch: one process takes all of it, each of two processes half
# per run; tokens/s is the median over the log intervals after the first (which compiles)
max_iters = 30
log_interval = 5
allreduce_iters = 20
port = 32323  # the ring's first port (rank r listens on port + r)
role = "driver"  # "allreduce": one rank of the all-reduce timing, which the driver starts
# -----------------------------------------------------------------------------
configure(globals())
LAUNCH = os.path.join(os.path.dirname(sys.executable), "mlx.launch")
ONE_THREAD = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
DEFAULT_THREADS = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
MODEL = [f"--dim={dim}", f"--n_layers={n_layers}", f"--n_heads={n_heads}",
         f"--max_seq_len={max_seq_len}", f"--dataset={dataset}",
         f"--data_dir={os.path.abspath(data_dir)}", "--workers=1"]  # train.py's own: none


def time_allreduce():
    group = mx.distributed.init()
    vocab = read_tokens(os.path.join(data_dir, dataset, "train.bin"))[1]["vocab_size"]
    model = Model(ModelArgs(dim=dim, n_layers=n_layers, n_heads=n_heads, vocab_size=vocab,
                            max_seq_len=max_seq_len))
    grads = tree_map(lambda p: mx.ones_like(p) * (group.rank() + 1), model.trainable_parameters())
    mx.eval(grads)
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
        print(json.dumps({"bytes": sum(g.nbytes for _, g in tree_flatten(grads)),
                          "world": group.size(), **times}))


def run(args, processes, launcher, env, tmp):
    """Run a script (args[0]) in `processes` processes; returns rank 0's stdout."""
    if processes == 1:
        r = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)
        failed = r.returncode
    elif launcher == "mlx.launch":
        r = subprocess.run([LAUNCH, "--backend", "ring", "-n", str(processes), "--starting-port",
                            str(port), "--env", "OPENBLAS_NUM_THREADS=1", "--", sys.executable,
                            *args],
                           env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        failed = "[WARN]" in r.stderr  # mlx.launch exits 0 even when a rank fails
    else:  # what mlx.launch does for each local rank, without the output forwarding
        hostfile = os.path.join(tmp, "hosts.json")
        with open(hostfile, "w") as f:
            json.dump([[f"127.0.0.1:{port + i}"] for i in range(processes)], f)
        procs = [subprocess.Popen([sys.executable, *args], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**env, "MLX_RANK": str(i), "MLX_HOSTFILE": hostfile})
                 for i in range(processes)]
        outputs = [p.communicate() for p in procs]
        r = subprocess.CompletedProcess(args, 0, outputs[0][0], "".join(err for _, err in outputs))
        failed = any(p.returncode for p in procs)
    if failed:
        sys.exit(f"error: {' '.join(args)} in {processes} processes failed:\n{r.stderr}")
    return r.stdout


def tokens_per_sec(processes, launcher, env, tmp):
    out_dir = tempfile.mkdtemp(dir=tmp)
    run([os.path.join(ROOT, "train.py"), *MODEL, f"--out_dir={out_dir}",
         f"--batch_size={batch_size // processes}", f"--max_iters={max_iters}",
         f"--log_interval={log_interval}", "--eval_interval=1000000", "--eval_iters=1"],
        processes, launcher, env, tmp)
    records = [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))]
    return statistics.median(r["tokens_per_sec"] for r in records
                             if "tokens_per_sec" in r and r["iter"] > log_interval)


if role == "allreduce":
    time_allreduce()
    sys.exit(0)

print(f"load average before starting: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores "
      f"(other work skews this); global batch {batch_size} x {max_seq_len} tokens, "
      f"{max_iters} iterations per run")
with tempfile.TemporaryDirectory() as tmp:
    tps = {}
    for name, processes, launcher, env in (
            ("1 process, 1 OpenBLAS thread", 1, "", ONE_THREAD),
            ("1 process, default OpenBLAS threads", 1, "", DEFAULT_THREADS),
            ("2 processes, mlx.launch", 2, "mlx.launch", ONE_THREAD),
            ("2 processes, started directly", 2, "direct", ONE_THREAD)):
        tps[name] = tokens_per_sec(processes, launcher, env, tmp)
        print(f"{name:38s} {tps[name]:8,.0f} tok/s  {tps[name] / next(iter(tps.values())):.2f}x",
              flush=True)

    out = run([os.path.abspath(__file__), *MODEL, f"--allreduce_iters={allreduce_iters}",
               "--role=allreduce"], 2, "direct", ONE_THREAD, tmp)
    ar = json.loads(out.strip().splitlines()[-1])
    # A ring all-reduce sends and receives 2 (N - 1) / N of the buffer on each link: the buffer
    # itself for N = 2.
    wire = 2 * (ar["world"] - 1) / ar["world"] * ar["bytes"]
    step = batch_size * max_seq_len / tps["2 processes, started directly"]
    print(f"all-reduce of the gradients ({ar['bytes'] / 1e6:.1f} MB float32, 2 processes over "
          f"loopback): {ar['gradients'] * 1e3:.1f} ms "
          f"({wire / ar['gradients'] / 1e9:.2f} GB/s each way), "
          f"{ar['gradients'] / step:.1%} of a {step * 1e3:.0f} ms step")
    print(f"all-reduce of one scalar (latency): {ar['scalar'] * 1e6:.0f} us")
    for link, gbit in (("1 Gb Ethernet", 1), ("10 Gb Ethernet", 10),
                       ("TCP over Thunderbolt at 20 Gb/s", 20)):
        print(f"  estimate over {link}: {wire * 8 / (gbit * 1e9) * 1e3:.0f} ms per step for the "
              f"gradients (bytes on the wire / link rate)")
