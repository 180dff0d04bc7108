"""
Where a training step's time goes, ours against nanoGPT's PyTorch, part by part, at nanoGPT's GPT
shape: the whole step, then each part alone (forward and backward, compiled as train.py compiles,
best of `repeat`; "the rest" is what the parts leave of the forward and backward: embedding, RoPE,
residual adds, reshapes), and what each part adds to the difference. Default: per core, one thread
each and a worker's share of nanoGPT's batch of 16, as train.py runs a worker process a core;
`--threads=2 --batch_size=16` runs ours in one process, its elementwise ops on one core.

Each side runs in its own process (MLX with OpenBLAS, PyTorch with its MKL), one after the other:
run nothing else meanwhile. Needs torch (requirements-dev.txt) and nanoGPT's model.py
(`nanogpt_dir`: a clone of github.com/karpathy/nanoGPT). Not a test; numbers go to
docs/benchmarks.md.

    python tools/profile_vs_torch.py --nanogpt_dir=../nanoGPT
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import check, configure

# -----------------------------------------------------------------------------
nanogpt_dir = "../shared/peers/nanogpt"  # a folder with nanoGPT's model.py
dim = 256  # nanoGPT's GPT shape in its speed comparisons (docs/benchmarks.md)
n_layers = 6
n_heads = 8
max_seq_len = 256
vocab_size = 4096
batch_size = 8
threads = 1  # PyTorch's threads; OpenBLAS's threads for ours (elementwise ops run on one)
repeat = 7
side = "both"  # "mlx" or "torch": one side's timings as JSON (what "both" runs in two processes)
# -----------------------------------------------------------------------------
configure(globals())
check(globals(), [("side", side in ("both", "mlx", "torch"), "both, mlx or torch"),
                  ("nanogpt_dir", os.path.isfile(os.path.join(nanogpt_dir, "model.py")),
                   "a folder with nanoGPT's model.py (git clone github.com/karpathy/nanoGPT)")])
B, T, D, H, V = batch_size, max_seq_len, dim, n_heads, vocab_size


def timed(fn, sync=lambda out: None):
    """Best wall time of fn() in ms over `repeat` runs after one warm-up."""
    sync(fn())
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        sync(fn())
        best = min(best, time.perf_counter() - t)
    return best * 1000


def linear_shapes(per_layer):  # (in, out) of every matmul with a weight, the output layer last
    return n_layers * per_layer + [(D, V)]


def torch_side():
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, os.path.abspath(nanogpt_dir))
    from model import GPT, GPTConfig  # nanoGPT's
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=T, vocab_size=V, n_layer=n_layers, n_head=H, n_embd=D,
                          dropout=0.0, bias=False))
    opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cpu")
    x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))

    def forward_backward():
        model(x, y)[1].backward()

    def step():
        forward_backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    r = {"step": timed(step), "forward and backward": timed(forward_backward)}
    r["optimizer"] = timed(opt.step)
    q, k, v = (torch.randn(B, H, T, D // H, requires_grad=True) for _ in range(3))
    r["attention, softmax(q k) v"] = n_layers * timed(
        lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward())
    u = torch.randn(B, T, 4 * D, requires_grad=True)
    r["MLP activation"] = n_layers * timed(lambda: F.gelu(u).sum().backward())
    h = torch.randn(B, T, D, requires_grad=True)
    r["norms"] = (2 * n_layers + 1) * timed(
        lambda: model.transformer.ln_f(h).sum().backward())
    logits = torch.randn(B * T, V, requires_grad=True)
    r["loss"] = timed(lambda: F.cross_entropy(logits, y.view(-1)).backward())
    mats = [(torch.randn(B * T, i), torch.randn(o, i), torch.randn(B * T, o))
            for i, o in linear_shapes([(D, 3 * D), (D, D), (D, 4 * D), (4 * D, D)])]

    @torch.no_grad()
    def matmuls():  # a linear layer's three: forward, input gradient, weight gradient
        for a, w, dy in mats:
            a @ w.T, dy @ w, dy.T @ a
    r["matmuls with weights"] = timed(matmuls)
    return r


def mlx_side():
    from model import Model, ModelArgs, cross_entropy  # first: model.py loads cpu.py
    import cpu
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    cpu.set_blas_threads(threads)
    mx.random.seed(0)
    model = Model(ModelArgs(dim=D, n_layers=n_layers, n_heads=H, vocab_size=V, max_seq_len=T))
    opt = optim.AdamW(6e-4)
    state = [model.state, opt.state]
    x, y = mx.random.randint(0, V, (B, T)), mx.random.randint(0, V, (B, T))
    mx.eval(model.parameters(), x, y)  # or each compiled graph below would draw them again
    loss_and_grad = nn.value_and_grad(model, lambda m, x, y: cross_entropy(m(x), y).mean())
    # compiled, as train.py's step is
    forward_backward = mx.compile(lambda: loss_and_grad(model, x, y),
                                  inputs=model.state, outputs=model.state)
    update = mx.compile(lambda g: opt.update(model, g), inputs=state, outputs=state)

    def step():
        update(forward_backward()[1])
        return state
    r = {"step": timed(step, mx.eval), "forward and backward": timed(forward_backward, mx.eval)}
    grads = forward_backward()[1]
    r["optimizer"] = timed(lambda: (update(grads), state)[1], mx.eval)
    layer = model.model.layers[0]
    q, k, v = (mx.random.normal((B, H, T, D // H)) for _ in range(3))
    mx.eval(q, k, v)
    scale = (D // H) ** -0.5
    attend = mx.compile(mx.grad(lambda q, k, v: cpu.attention(q, k, v, scale, "causal").sum(),
                                argnums=(0, 1, 2)))
    r["attention, softmax(q k) v"] = n_layers * timed(lambda: attend(q, k, v), mx.eval)
    u, w = (mx.random.normal((B, T, model.args.hidden_dim)) for _ in range(2))
    mx.eval(u, w)
    swiglu = mx.compile(mx.grad(lambda u, w: (cpu.silu(u) * w).sum(), argnums=(0, 1)))
    r["MLP activation"] = n_layers * timed(lambda: swiglu(u, w), mx.eval)
    h = mx.random.normal((B, T, D))
    mx.eval(h)
    norm = mx.compile(mx.grad(lambda h: layer.input_layernorm(h).sum()))
    r["norms"] = (2 * n_layers + 1) * timed(lambda: norm(h), mx.eval)
    logits = mx.random.normal((B * T, V))
    mx.eval(logits)
    loss = mx.compile(mx.grad(lambda lg: cross_entropy(lg, y.reshape(-1)).mean()))
    r["loss"] = timed(lambda: loss(logits), mx.eval)
    hidden = model.args.hidden_dim
    mats = [(mx.random.normal((B * T, i)), mx.random.normal((o, i)), mx.random.normal((B * T, o)))
            for i, o in linear_shapes([(D, D)] * 4 + [(D, hidden)] * 2 + [(hidden, D)])]
    mx.eval(mats)
    r["matmuls with weights"] = timed(
        lambda: [m for a, w, dy in mats for m in (a @ w.T, dy @ w, dy.T @ a)], mx.eval)
    return r


if side != "both":
    print(json.dumps(torch_side() if side == "torch" else mlx_side()))
    sys.exit()
sides = {}
for name in ("torch", "mlx"):
    side_argv = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], f"--side={name}"]
    run = subprocess.run(side_argv, capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"error: the {name} side failed:\n{run.stderr.strip()[-2000:]}")
    times = json.loads(run.stdout.strip().splitlines()[-1])
    times["the rest"] = times["forward and backward"] - sum(
        t for part, t in times.items() if part not in ("step", "forward and backward", "optimizer"))
    sides[name] = times
theirs, ours = sides["torch"], sides["mlx"]
gap = ours["step"] - theirs["step"]
print(f"one step at dim {D}, {n_layers} layers, {H} heads, batch {B} x {T}, vocab {V}, "
      f"{threads} thread(s); best of {repeat}, ms")
print(f"{'':28s} {'nanoGPT':>9s} {'ours':>9s} {'ours - nanoGPT':>15s} {'of the gap':>11s}")
for part in theirs:
    d = ours[part] - theirs[part]
    share = f"{d / gap:11.0%}" if part != "step" and gap > 0 else ""
    print(f"{part:28s} {theirs[part]:9.1f} {ours[part]:9.1f} {d:+15.1f} {share}")
print(f"tokens/s: nanoGPT {B * T / theirs['step'] * 1000:,.0f}, "
      f"ours {B * T / ours['step'] * 1000:,.0f} ({theirs['step'] / ours['step']:.2f}x)")
