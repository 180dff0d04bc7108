"""
What the device computes in and how fast: train.py's dtype=auto, the matmul peak behind every MFU
that train.py and bench.py report, and the CPU's name for bench.py's table.
"""
import math
import os
import platform
import re
import sys
import time

import cpu  # noqa: F401 (first: on Linux it loads OpenBLAS, which must come before mlx.core)
import mlx.core as mx


def auto_dtype():
    """What train.py's dtype=auto computes in: bfloat16 where the GPU has it natively (Apple's from
    the M3 on, Metal's applegpu_g15 and later; CUDA's from Ampere on), else float32: M1 and M2 GPUs
    emulate bfloat16, and the CPU's BLAS has none (docs/precision.md)."""
    if mx.default_device() != mx.gpu:
        return mx.float32
    gpu = mx.device_info()
    apple = re.match(r"applegpu_g(\d+)", str(gpu.get("architecture", "")))
    native = int(apple[1]) >= 15 if apple else gpu.get("compute_capability_major", 8) >= 8
    return mx.bfloat16 if native else mx.float32


def measure_peak_flops(dtype=mx.float32):
    """The device's matmul throughput in `dtype`, in FLOP/s: the denominator of the MFU that
    train.py and bench.py report.

    The best of several short runs: a busy moment can only make a run slower, never faster. A GPU
    does a 4096-cubed matmul in a millisecond or less, near the cost of a launch and a sync, so
    there each timing chains ten of them in one evaluation.
    """
    n, chain = (4096, 10) if mx.default_device() == mx.gpu else (1024, 3)
    a = mx.random.normal((n, n)).astype(dtype)
    b = (mx.random.normal((n, n)) / math.sqrt(n)).astype(dtype)  # keeps a @ b @ b ... finite
    def run():
        x = a
        for _ in range(chain):
            x = x @ b
        mx.eval(x)
    run()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        run()
        best = min(best, (time.perf_counter() - t) / chain)
    return 2 * n ** 3 / best


def cpu_model():
    """The CPU, as /proc/cpuinfo names it (with its family and model, which tell AMD's Zen
    generations apart), or macOS's sysctl."""
    if sys.platform == "darwin":
        return os.popen("sysctl -n machdep.cpu.brand_string").read().strip()
    with open("/proc/cpuinfo") as f:  # the first CPU's lines, "key : value"
        info = dict(map(str.strip, line.split(":", 1)) for line in f.read().split("\n\n")[0]
                    .splitlines() if ":" in line)
    name = info.get("model name", platform.machine())
    return f"{name} (family {info.get('cpu family')}, model {info['model']})" if "model" in info \
        else name
