"""cpu.py, the CPU fast path: OpenBLAS from pip alone, and each stand-in equal to the MLX function
it replaces."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import cpu  # before mlx.core, as in the scripts
from conftest import ON_CPU, cpu_only
import mlx.core as mx
import mlx.nn as nn

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(sys.platform != "linux" or not ON_CPU,
                    reason="OpenBLAS is loaded for Linux's CPU backend only")
def test_matmuls_run_on_openblas_with_the_fortran_runtime_that_pip_installed():
    # In a fresh process, as a script starts: the symbol MLX's matmul calls, as the dynamic linker
    # resolves it process-wide, must be OpenBLAS's, and the Fortran runtime OpenBLAS links must be
    # the copy of the one in the mlx[cpu] wheel, not a system libgfortran5 (CI's fresh machine has
    # none: this is what makes pip alone enough).
    probe = """
import ctypes, platform, sys
import cpu
import mlx.core as mx
assert cpu._openblas is not None, "OpenBLAS did not load"
config = cpu._openblas_config(cpu._openblas)
# x86-64 CPUs differ (AVX2 only, AVX-512): one build must run each one's best kernels
assert platform.machine() != "x86_64" or "DYNAMIC_ARCH" in config.split(), config
resolved = ctypes.cast(ctypes.CDLL(None).cblas_sgemm, ctypes.c_void_p).value
assert resolved == ctypes.cast(cpu._openblas.cblas_sgemm, ctypes.c_void_p).value, \
"cblas_sgemm is not OpenBLAS's"
a = mx.random.normal((64, 64))
assert mx.allclose(a @ mx.eye(64), a).item()
maps = [line.split(None, 5)[-1].strip() for line in open("/proc/self/maps") if "gfortran" in line]
assert not [m for m in maps if "mlx_cpu.libs" not in m and "(deleted)" not in m], maps
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok" and "warning" not in r.stderr, r.stderr


def test_an_openblas_built_for_instructions_this_cpu_lacks_is_refused_not_run():
    # cmeel-openblas 0.3.31's x86 wheel is built for AVX-512 only: on a Zen 3 its first matmul died
    # of SIGILL.
    avx2_cpu = "fpu sse sse2 avx fma avx2".split()
    assert cpu.missing_instruction("OpenBLAS 0.3.31 NO_AFFINITY SKYLAKEX MAX_THREADS=64",
                                   avx2_cpu) == "avx512f"
    assert cpu.missing_instruction("OpenBLAS 0.3.29 NO_AFFINITY ZEN MAX_THREADS=4",
                                   avx2_cpu) is None
    assert cpu.missing_instruction("OpenBLAS 0.3.29 NO_AFFINITY ZEN MAX_THREADS=4",
                                   ["sse2", "avx"]) == "avx2"
    assert cpu.missing_instruction("OpenBLAS 0.3.31 DYNAMIC_ARCH NO_AFFINITY Haswell",
                                   ["sse2"]) is None
    if cpu._openblas is not None:  # the one pip installed runs here, so the check passes it
        assert cpu.missing_instruction(cpu._openblas_config(cpu._openblas),
                                       cpu._cpu_flags()) is None


@pytest.mark.parametrize("L, S", [(200, 200), (130, 150), (65, 65), (7, 7), (3, 9)])
def test_cpu_attention_equals_mlx_causal_attention_and_its_gradients(L, S):
    q = mx.random.normal((2, 4, L, 16), key=mx.random.key(0))
    k, v = (mx.random.normal((2, 2, S, 16), key=mx.random.key(1)),
            mx.random.normal((2, 2, S, 16), key=mx.random.key(2)))
    w = mx.random.normal((2, 4, L, 16), key=mx.random.key(3))  # a random cotangent
    def plain(q, k, v):
        return (mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask="causal") * w).sum()

    def ours(q, k, v):
        return (cpu.attention(q, k, v, scale=0.25, mask="causal") * w).sum()
    with mx.stream(mx.cpu):
        for a, b in zip(mx.value_and_grad(ours, argnums=(0, 1, 2))(q, k, v)[1],
                        mx.value_and_grad(plain, argnums=(0, 1, 2))(q, k, v)[1]):
            assert mx.allclose(a, b, atol=1e-5)
        assert mx.allclose(cpu.attention(q, k, v, scale=0.25, mask="causal"),
                           mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask="causal"),
                           atol=1e-5)


def test_cpu_exp_is_within_3e_5_of_exp_with_its_gradient_and_0_past_float32s_normals():
    x = mx.concatenate([mx.linspace(-40, 40, 100_001), mx.array([-104.5, -1e30, -mx.inf])])
    _, grad = mx.value_and_grad(lambda x: cpu.exp(x).sum())(x)
    with mx.stream(mx.cpu):
        exact = mx.exp(x)
        assert (mx.abs(cpu.exp(x) / mx.maximum(exact, 1e-37) - 1)[:-3] <= 3e-5).all().item()
        assert (cpu.exp(x)[-3:] == 0).all().item() and mx.allclose(grad, cpu.exp(x)).item()
        # never a subnormal (below float32's 1.18e-38), which stalls an Intel CPU 6x: 0 instead
        tiny = cpu.exp(mx.linspace(-120, -80, 10_001))
        assert not ((tiny > 0) & (tiny < 1.1754944e-38)).any().item()
        assert (tiny[-1] / mx.exp(mx.array(-80.0)) - 1).abs().item() < 1e-3
        for dtype in (mx.bfloat16, mx.float16):  # computed in float32: as exact as the type allows
            low = x[:-3].astype(dtype)
            assert cpu.exp(low).dtype == dtype
            assert mx.allclose(cpu.exp(low), mx.exp(low), rtol=1e-2, atol=0).item()


def test_cpu_silu_and_loss_equal_mlx_ones_with_gradients():
    x = 8 * mx.random.normal((3, 5, 50), key=mx.random.key(0))
    x = mx.concatenate([x[..., :-2], mx.full((3, 5, 2), 100.0) * mx.array([-1.0, 1.0])],
                       axis=-1)  # e^100 overflows
    y = mx.random.randint(0, 50, (3, 5), key=mx.random.key(1))
    w = mx.random.normal((3, 5, 50), key=mx.random.key(2))
    v = mx.random.normal((3, 5), key=mx.random.key(3))
    pairs = [(lambda x: (cpu.silu(x) * w).sum(), lambda x: (nn.silu(x) * w).sum()),
             (lambda x: (cpu.cross_entropy(x, y) * v).sum(),
              lambda x: (nn.losses.cross_entropy(x, y) * v).sum())]
    with mx.stream(mx.cpu):
        for ours, mlx in pairs:
            (a, da), (b, db) = mx.value_and_grad(ours)(x), mx.value_and_grad(mlx)(x)
            assert (mx.allclose(a, b, rtol=1e-5, atol=1e-5)
                    and mx.allclose(da, db, rtol=1e-4, atol=1e-6))
        # bfloat16 logits: the loss is summed and returned in float32, as mx.fast's fused one
        rounded = x.astype(mx.bfloat16)
        loss = cpu.cross_entropy(rounded, y)
        assert loss.dtype == mx.float32 and mx.allclose(
            loss, mx.fast.cross_entropy(rounded.astype(mx.float32), y), rtol=1e-6, atol=1e-6)


@cpu_only
def test_a_freed_buffer_bigger_than_mlxs_default_cache_is_kept_for_the_next_step():
    # MLX keeps 32 MB of freed buffers by default: each bigger activation of a step went back to
    # the OS, and the next step's was faulted in again a page at a time
    mx.clear_cache()
    a = mx.zeros((64 << 20) // 4)
    mx.eval(a)
    del a
    assert mx.get_cache_memory() >= 64 << 20


# A script that cpu.run_workers runs again as 2 worker processes; each does what argv[1] says.
WORKER = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
import cpu
import mlx.core as mx
if "MLX_RANK" not in os.environ:  # the script as started: it starts its workers
    sys.exit(cpu.run_workers(2))
group = mx.distributed.init()
rank, total = group.rank(), mx.distributed.all_sum(mx.array(group.rank() + 1), group=group).item()
blas = cpu._openblas.openblas_get_num_threads() if cpu._openblas else None
say = lambda text: print(text + "\\n", end="", flush=True)  # one write: the ranks share stdout
say(f"rank {{rank}} of {{group.size()}}: sum {{total}}, {{blas}} OpenBLAS threads")
if sys.argv[1] == "same":  # every worker fails with the same message
    sys.exit("error: the same on every rank")
if sys.argv[1] == "fail" and rank == 1:
    sys.exit("error: rank 1 alone failed")
if sys.argv[1] == "fail":  # waits for rank 1, which never comes
    mx.distributed.all_sum(mx.array(0), group=group).item()
if sys.argv[1] == "signal":
    got = []
    signal.signal(signal.SIGINT, lambda *_: got.append(1))
    say(f"rank {{rank}} waits")
    while not got:
        time.sleep(0.05)
    time.sleep(1)  # a second SIGINT would arrive meanwhile
    say(f"rank {{rank}} got {{len(got)}} SIGINT")
    sys.exit(130)
"""


@cpu_only
@pytest.mark.skipif(not mx.distributed.is_available(), reason="this MLX has no ring backend")
def test_worker_processes_join_a_ring_share_the_cores_and_fail_and_stop_together(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT)))

    def start(mode):  # in a process group of its own, as a terminal's foreground job
        return subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    p = start("ok")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    blas = max(1, cpu.CORES // 2) if cpu._openblas else None  # never more threads than cores
    assert sorted(out.splitlines()) == [f"rank {r} of 2: sum 3, {blas} OpenBLAS threads"
                                        for r in (0, 1)]
    p = start("same")
    out, err = p.communicate(timeout=60)
    assert (p.returncode, err) == (1, "error: the same on every rank\n")  # said once
    p = start("fail")  # rank 0 is stopped, and the status and reason are rank 1's
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1 and err.splitlines()[-1] == "error: rank 1 alone failed", err
    p = start("signal")  # Ctrl-C: a SIGINT to each process of the group; one reaches each worker
    waiting = [p.stdout.readline() for _ in range(4)]
    assert sum("waits" in line for line in waiting) == 2, waiting
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and sorted(out.splitlines()) == [
        "rank 0 got 1 SIGINT", "rank 1 got 1 SIGINT"], out + err
