"""
The CPU fast path: what makes training on MLX's CPU backend (Linux's mlx[cpu]) fast.

On a GPU none of this runs. model.py takes attention, SiLU and the loss from here in one place, and
train.py its worker processes, only when the default device is the CPU; every function here is
tested against the MLX function it stands in for, values and gradients (tests/test_cpu.py). Why
each exists (numbers in the README, "Speed"):

- OpenBLAS: the Linux mlx[cpu] wheel links the reference BLAS, ~40x slower for fp32 matmuls.
  Loading OpenBLAS with RTLD_GLOBAL before mlx.core makes MLX's cblas_sgemm calls resolve to it.
  This module must be imported before mlx.core for that; model.py imports it first. On x86-64 it
  is a DYNAMIC_ARCH build, which runs the best kernels of the CPU it is on (AVX-512 or AVX2).
- exp from multiplies and adds: MLX's CPU exp (and pow) call libm once per element, 3-8x slower
  than a polynomial that a compiled kernel vectorises, and the exps of softmax, SiLU and the loss
  were much of a step.
- Chunked attention: MLX's CPU attention is not fused; it computes every score and then masks half
  away.
- Worker processes: MLX runs each elementwise op of a CPU stream on one core; only matmuls use
  more.
- A buffer cache as big as a step: MLX's default of 32 MB page-faulted every step's activations.
"""
import ctypes
from functools import partial
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time


def _locate(dist, match):
    try:
        return next((str(f.locate()) for f in importlib.metadata.files(dist) or ()
                     if match(f.name)), None)
    except importlib.metadata.PackageNotFoundError:
        return None


# The OpenBLAS builds that pip installs (requirements.txt), the one to load first: ngsolve-openblas
# is DYNAMIC_ARCH, so it picks its kernels for the CPU it runs on, but has x86-64 wheels only;
# cmeel-openblas has aarch64 wheels too, each built for one CPU family.
OPENBLAS_BUILDS = [
    ("ngsolve-openblas", lambda name: name.startswith("libopenblas") and ".so" in name),
    ("cmeel-openblas", lambda name: name == "libopenblas.so.0")]


def _load_openblas():
    """The OpenBLAS that pip installed, loaded with RTLD_GLOBAL (Linux only; macOS has Accelerate),
    or None with a warning.

    That OpenBLAS needs the Fortran runtime libgfortran.so.5, which a bare Linux lacks; the mlx[cpu]
    wheel ships one under a renamed file and soname (auditwheel's), which the loader does not match
    to that name. A copy whose soname says libgfortran.so.5 again, loaded first, stands in for it,
    so pip alone gives the fast path.
    """
    if sys.platform != "linux" or _locate("mlx-cpu", lambda name: True) is None:
        return None  # macOS has Accelerate; a CUDA build of MLX computes on the GPU
    if "mlx.core" in sys.modules:
        print("warning: mlx.core was imported before cpu.py, so OpenBLAS cannot replace its slow "
              "reference BLAS; import model (or cpu) first", file=sys.stderr)
        return None
    openblas = next(filter(None, (_locate(dist, match) for dist, match in OPENBLAS_BUILDS)), None)
    if openblas is None:
        print("warning: no OpenBLAS is installed, so matmuls will be ~40x slower; "
              "pip install -r requirements.txt", file=sys.stderr)
        return None
    gfortran = _locate("mlx-cpu", lambda name: name.startswith("libgfortran-") and ".so" in name)
    quadmath = _locate("mlx-cpu", lambda name: name.startswith("libquadmath-") and ".so" in name)
    if gfortran and quadmath:
        try:
            # what the renamed libgfortran itself links
            ctypes.CDLL(quadmath, mode=ctypes.RTLD_GLOBAL)
            with open(gfortran, "rb") as f:
                lib = f.read()
            soname = os.path.basename(gfortran).encode() + b"\0"
            # the loaded copy outlives its file
            with tempfile.NamedTemporaryFile(suffix=".so") as copy:
                copy.write(lib.replace(soname, b"libgfortran.so.5".ljust(len(soname), b"\0"), 1))
                copy.flush()
                ctypes.CDLL(copy.name, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass  # a system libgfortran5, if there is one, still serves below
    try:
        # loaded locally first: MLX cannot call it yet
        config = _openblas_config(ctypes.CDLL(openblas))
    except OSError as e:
        print(f"warning: OpenBLAS did not load ({e}); matmuls will be ~40x slower. "
              "Fix: apt-get install libgfortran5", file=sys.stderr)
        return None
    missing = missing_instruction(config, _cpu_flags())
    if missing:
        print(f"warning: this OpenBLAS ({config.split(' MAX')[0]}) needs {missing}, which this CPU "
              "lacks, so matmuls will be ~40x slower; pip install -r requirements.txt (its "
              "OpenBLAS picks the kernels of the CPU it runs on)", file=sys.stderr)
        return None
    # now global: MLX's cblas_sgemm calls resolve to it
    return ctypes.CDLL(openblas, mode=ctypes.RTLD_GLOBAL)


# An OpenBLAS built for one CPU family (not DYNAMIC_ARCH) runs its instructions unchecked: on a CPU
# without them the first matmul dies of SIGILL. cmeel-openblas 0.3.31's x86 wheel is built for
# AVX-512 (SKYLAKEX).
_NEEDS = {"SKYLAKEX": "avx512f", "COOPERLAKE": "avx512_bf16", "SAPPHIRERAPIDS": "amx_tile",
          "HASWELL": "avx2", "ZEN": "avx2"}


# openblas_get_config()'s words, /proc/cpuinfo's -> a flag or None
def missing_instruction(config, cpu_flags):
    words = config.split()
    if "DYNAMIC_ARCH" in words:
        return None  # it picks its kernels for the CPU it runs on
    return next((_NEEDS[w] for w in words if w in _NEEDS and _NEEDS[w] not in cpu_flags), None)


def _openblas_config(lib):
    lib.openblas_get_config.restype = ctypes.c_char_p
    return lib.openblas_get_config().decode()


def blas():
    """Which BLAS serves MLX's matmuls here, for bench.py to print: e.g. "OpenBLAS 0.3.33
    DYNAMIC_ARCH, SkylakeX kernels, 2 threads"; None on a GPU."""
    if not ON_CPU:
        return None
    if _openblas is None:
        return "Accelerate" if sys.platform == "darwin" else "the reference BLAS (slow)"
    _openblas.openblas_get_corename.restype = ctypes.c_char_p
    words = _openblas_config(_openblas).split()
    return (f"{' '.join(words[:2])}{' DYNAMIC_ARCH' * ('DYNAMIC_ARCH' in words)}, "
            f"{_openblas.openblas_get_corename().decode()} kernels, "
            f"{_openblas.openblas_get_num_threads()} threads")


def _cpu_flags():
    with open("/proc/cpuinfo") as f:
        return next((line.split(":")[1].split() for line in f if line.startswith("flags")), [])


_openblas = _load_openblas()  # first: this must run before mlx.core is imported
from mlx import core as mx, optimizers as optim  # noqa: E402

ON_CPU = mx.default_device() == mx.cpu
if ON_CPU:
    # MLX's CPU allocator keeps 32 MB of freed buffers for reuse; the rest of a step's hundreds of
    # MB went back to the OS, and came back a page fault at a time (docs/benchmarks.md)
    mx.set_cache_limit(mx.get_memory_limit() // 4)
# A worker of run_workers' dies with the process that started it (Linux), as a single process
# would: else a `kill -9` of train.py would leave its workers training on.
_parent = os.environ.pop("WORKERS_PARENT_PID", None)  # set by run_workers for its workers
if _parent and sys.platform == "linux":
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != int(_parent):  # it died before that
        os._exit(128 + signal.SIGKILL)
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
CHUNK = 64  # queries per block of attention


def default_workers(batch_size, processes):
    """train.py's workers=0: a worker process per core, as many as divide batch_size; in a worker
    that run_workers started, all the processes; one on a GPU, or where mlx.launch started them."""
    if _parent:
        return processes
    if not ON_CPU or processes > 1:
        return 1
    return max(n for n in range(1, CORES + 1) if batch_size % n == 0)


def set_blas_threads(n):
    """Threads per matmul where OpenBLAS is loaded (decoding runs faster on one)."""
    if _openblas is not None:
        _openblas.openblas_set_num_threads(n)


# e^x as (Taylor's degree-5 polynomial of x / 256) ** 256: multiplies and adds only, which a
# compiled kernel vectorises. Within 3e-5 of e^x, relatively, for |x| <= 40 (float32's rounding,
# times 256), 1e-3 down to -87; 0 below, where e^x leaves float32's normal range: a subnormal
# result, even one that rounds to 0, stalls an Intel CPU 6x (docs/benchmarks.md), and attention's
# masked scores are a fifth of its exps. Its gradient is its output, as exp's.
# Compiled here too: uncompiled callers (evals, generate.py) would run its 20 ops as 20 passes.
@mx.custom_function
@partial(mx.compile, shapeless=True)
def exp(x):
    # in float32 whatever x is: bfloat16's rounding, times 256, would be all of the value
    y = x.astype(mx.float32) * (1 / 256)
    e = 1 + y * (1 + y * (1 / 2 + y * (1 / 6 + y * (1 / 24 + y * (1 / 120)))))
    e = mx.where(y < -87 / 256, 0.0, e)
    for _ in range(8):
        e = e * e
    return e.astype(x.dtype)


@exp.vjp
def exp_vjp(x, cotangent, e):
    return cotangent * e


# x * sigmoid(x); the cap keeps e^-x finite, or its gradient would be 0 * inf = nan for x < -88
def silu(x):
    return x / (1 + exp(mx.minimum(-x, 80.0)))


# logits (..., vocab), targets (...) -> the loss of each token in float32, like mx.fast's
def cross_entropy(logits, targets):
    logits = logits.astype(mx.float32)  # a bfloat16 sum over the vocabulary would round each term
    # for range only: logsumexp does not depend on it
    m = mx.stop_gradient(logits.max(axis=-1, keepdims=True))
    logsumexp = mx.log(exp(logits - m).sum(axis=-1)) + m.squeeze(-1)
    return logsumexp - mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)


def _blocks(L, S):
    """(first query, queries, keys seen) of each block of CHUNK queries: query i sits at position
    S - L + i, after any cached tokens, and sees the keys up to it"""
    return [(i, min(CHUNK, L - i), S - L + min(i + CHUNK, L)) for i in range(0, L, CHUNK)]


# Causal softmax(q kᵀ) v a block of queries at a time, against only the keys they see, with its
# own backward pass (flash attention's): a block's scores s are written once, by the matmul that
# adds the mask, and e = e^(s - max) once; p = e / sum(e) is never written, and the backward pass
# makes the scores' gradient p (dO vᵀ - rowsum(dO O)) in one pass and sums each key's gradient a
# block at a time. MLX's autodiff of the same took 5 passes and a zero-padded copy of k and v's
# gradients per block: 1.3x as long (docs/benchmarks.md).
@mx.custom_function
def _causal(q, k, v):  # q: (B, n_kv_heads, group, L, hd), scaled; k, v: (B, n_kv_heads, 1, S, hd)
    out, es, sums = [], [], []
    for i, n, seen in _blocks(q.shape[-2], k.shape[-2]):
        future = mx.arange(seen - n, seen)[:, None] < mx.arange(seen)
        s = mx.addmm(mx.where(future, -mx.inf, 0.0).astype(q.dtype), q[..., i:i + n, :],
                     k[..., :seen, :].swapaxes(-1, -2))  # (B, n_kv_heads, group, n, seen)
        es.append(exp(s - s.max(axis=-1, keepdims=True)))
        sums.append(es[-1].sum(axis=-1, keepdims=True))
        out.append((es[-1] @ v[..., :seen, :]) / sums[-1])
    return (mx.concatenate(out, axis=-2), *es, *sums)


@_causal.vjp
def _causal_vjp(primals, cotangents, outputs):
    q, k, v = primals
    blocks = _blocks(q.shape[-2], k.shape[-2])
    out, es, sums = outputs[0], outputs[1:len(blocks) + 1], outputs[len(blocks) + 1:]
    dq, dk, dv = [], [], []
    for (i, n, seen), e, total in zip(blocks, es, sums):
        d_out = cotangents[0][..., i:i + n, :] / total
        ds = e * (d_out @ v[..., :seen, :].swapaxes(-1, -2)
                  - (d_out * out[..., i:i + n, :]).sum(axis=-1, keepdims=True))
        dq.append(ds @ k[..., :seen, :])
        dk.append((ds.swapaxes(-1, -2) @ q[..., i:i + n, :]).sum(axis=2, keepdims=True))
        dv.append((e.swapaxes(-1, -2) @ d_out).sum(axis=2, keepdims=True))
    return mx.concatenate(dq, axis=-2), _sum_by_key(dk, blocks), _sum_by_key(dv, blocks)


def _sum_by_key(grads, blocks):
    """grads[b]: (..., keys seen by block b, hd) -> their sum over the blocks, a key block at a
    time (each key block is seen by its own query block and those after it)"""
    ends = [seen for _, _, seen in blocks]
    out = []
    for b, (start, end) in enumerate(zip([0] + ends, ends)):
        total = grads[b][..., start:end, :]
        for g in grads[b + 1:]:
            total = total + g[..., start:end, :]
        out.append(total)
    return mx.concatenate(out, axis=-2)


def attention(q, k, v, scale, mask=None):
    """mx.fast.scaled_dot_product_attention, for mask None or "causal".
    q: (B, n_heads, L, hd); k, v: (B, n_kv_heads, S, hd), S >= L, any cached tokens first."""
    B, n_heads, L, hd = q.shape
    if mask is None:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale)
    # query heads grouped by their kv head
    q = (q * scale).reshape(B, k.shape[1], n_heads // k.shape[1], L, hd)
    return _causal(q, k[:, :, None], v[:, :, None])[0].reshape(B, n_heads, L, hd)


class WorkersMuon(optim.Muon):
    """Muon with its Newton-Schulz iterations shared out over run_workers' processes: in each
    update, the process of rank r orthogonalises the matrices r, r + n, ... and an all-reduce hands
    every process all of them (a sum with zeros: exact). Two workers, a core each: the update took
    258-263 ms with each computing all, 165-166 shared (docs/benchmarks.md)."""

    matrices = 0  # orthogonalised so far: every process counts them in the same order

    def _zeropower_via_newtonschulz5(self, X, steps):
        group, self.matrices = mx.distributed.init(), self.matrices + 1
        mine = self.matrices % group.size() == group.rank()
        return mx.distributed.all_sum(super()._zeropower_via_newtonschulz5(X, steps) if mine
                                      else mx.zeros_like(X), group=group)


def run_workers(n):
    """Run this script again as n processes that share each batch (train.py's workers), joined by
    MLX's ring backend on 127.0.0.1, CORES // n OpenBLAS threads each, and wait for them. Returns
    the status to exit with: a failed worker's, else 0.

    Processes, not threads in one process: MLX's ops on two threads' streams slow each other
    (1.1-1.6x a step), two processes' do not (docs/benchmarks.md). Signals to this process (Ctrl-C,
    SIGTERM) reach each worker once, and they stop together. When one fails, the others get 10 s
    to end, then are killed: they could be waiting for it in an all-reduce. Rank 0's stderr is
    relayed as it comes; the others' only where they failed, and only what rank 0 did not say.
    """
    servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(n)]  # a free port a rank
    hosts = [[f"127.0.0.1:{s.getsockname()[1]}"] for s in servers]
    for s in servers:
        s.close()
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "hosts.json"), "w") as f:
            json.dump(hosts, f)
        env = {**os.environ, "MLX_HOSTFILE": f.name, "OPENBLAS_NUM_THREADS": str(CORES // n or 1),
               "WORKERS_PARENT_PID": str(os.getpid())}
        errs = [os.path.join(tmp, f"{rank}.err") for rank in range(n)]
        procs = [subprocess.Popen([sys.executable, *sys.orig_argv[1:]],
                                  env={**env, "MLX_RANK": str(rank)}, stderr=open(errs[rank], "w"),
                                  start_new_session=True)  # so Ctrl-C reaches them only from here
                 for rank in range(n)]
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda signum, _: [p.send_signal(signum) for p in procs])
        status, deadline, relayed, killed = [None] * n, float("inf"), "", set()
        with open(errs[0]) as rank0_err:
            while None in status:
                time.sleep(0.1)
                for rank, p in enumerate(procs):
                    if status[rank] is None and p.poll() is not None:
                        status[rank] = p.returncode if p.returncode >= 0 else 128 - p.returncode
                        if status[rank]:
                            deadline = min(deadline, time.monotonic() + 10)
                if time.monotonic() > deadline:
                    killed |= {rank for rank in range(n) if status[rank] is None}
                    for p in procs:
                        p.kill()
                text = rank0_err.read()  # after the statuses: the last read follows every exit
                sys.stderr.write(text)
                sys.stderr.flush()
                relayed += text
        texts = [relayed]
        for path in errs[1:]:
            with open(path) as f:
                texts.append(f.read())
    # Why the run stopped: each failure but those that followed another (a worker killed here, or
    # one that lost its connection to a worker that had ended), in words that rank 0 did not say.
    causes = [rank for rank in range(n) if status[rank] and rank not in killed
              and "connection to a peer was lost" not in texts[rank]]  # MLX's ring says so
    shown = set(relayed.splitlines(keepends=True))
    for rank in [rank for rank in causes if rank]:
        lines = [line for line in texts[rank].splitlines(keepends=True) if line not in shown]
        if not texts[rank]:  # killed, say, by the out-of-memory killer
            lines = [f"error: worker process {rank} of {n} ended with status {status[rank]}\n"]
        sys.stderr.write("".join(lines))
        shown.update(lines)
    return status[causes[0]] if causes else max(status)
