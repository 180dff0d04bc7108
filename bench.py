"""
How fast is this machine at each stage? Prints a table and writes bench.json. Not a test: it takes
a few minutes and wants the whole machine (on Linux, run nothing else meanwhile: OpenBLAS threads
collapse under contention).

    python bench.py                      # everything
    python bench.py --only=train,generate

Measures: the matmul peak through MLX in the dtype that train.py's dtype=auto picks (the
denominator of every MFU here); train.py's own tokens/s, MFU and peak memory for the default
settings, each config/ preset and the nanoGPT-shaped model; the time split of one training step
(forward, backward, optimizer; attention, MLP, loss); generation tokens/s for prefill and for
decoding with and without the KV cache; prepare.py's tokenizing throughput on the built-in corpus.
"""
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

# first: model.py loads cpu.py
from model import Model, ModelArgs, cross_entropy
import cpu
from device import auto_dtype, cpu_model, measure_peak_flops
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

import corpus
import files
import named_datasets
from configurator import check, configure, read_preset

# -----------------------------------------------------------------------------
only = "peak,train,split,generate,prepare"  # which measurements to run, comma separated
train_iters = 12  # timed iterations per training run (after the first, which compiles)
out = "bench.json"
# -----------------------------------------------------------------------------
configure(globals())
check(globals(), [("only", set(only.split(",")) <= {*"peak train split generate prepare".split()},
                   "some of peak,train,split,generate,prepare")])
here = os.path.dirname(os.path.abspath(__file__))
results = {"device": f"{mx.default_device()}: {mx.device_info()['device_name']}",
           "mlx": mx.__version__, "cpu": cpu_model(), "dtype": str(auto_dtype()).split(".")[-1],
           "blas": cpu.blas(), "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")}


def timed(fn, repeat=5):
    """Best wall time of fn() over `repeat` runs after one warm-up; fn returns what to mx.eval."""
    mx.eval(fn())
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        mx.eval(fn())
        best = min(best, time.perf_counter() - t)
    return best


def synthetic_data(folder, vocab_size, n_tokens=2_000_000):
    # Random tokens train as fast as real ones; train.py only checks that the tokenizer beside
    # them is the one their header names, so a small real one stands in for any vocabulary size.
    os.makedirs(folder, exist_ok=True)
    words = [f"w{i} {i * i} {'x' * (i % 7)}" for i in range(2000)]
    model = corpus.train_tokenizer(words, 280)
    files.write_atomic(os.path.join(folder, "tokenizer.model"), model)
    tokens = np.random.default_rng(0).integers(3, vocab_size, n_tokens)
    for split, part in (("train", tokens), ("val", tokens[:50_000])):  # val: a short one
        files.write_tokens(os.path.join(folder, f"{split}.bin"), [part], vocab_size, 3 * len(part),
                           hashlib.sha256(model).hexdigest())


def train_run(name, args, vocab_size, iters):
    """train.py itself, a few iterations: its log.jsonl has tokens/s, MFU and peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        synthetic_data(os.path.join(tmp, "bench"), vocab_size)
        n = iters + 1
        cmd = [sys.executable, os.path.join(here, "train.py"), *args, f"--data_dir={tmp}",
               "--dataset=bench", f"--out_dir={tmp}/out", f"--max_iters={n}", "--log_interval=1",
               f"--eval_interval={n + 1}", "--sample_tokens=0", "--eval_iters=1", "--max_minutes=0",
               f"--peak_flops={results.get('peak_flops', 0.0)}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{name}: train.py failed: {r.stderr.strip()}", file=sys.stderr)
            return None
        logs = [json.loads(line) for line in open(f"{tmp}/out/log.jsonl") if '"loss"' in line]
        tps = float(np.median([r["tokens_per_sec"] for r in logs[1:]]))  # the first compiles
        mfu = float(np.median([r["mfu"] for r in logs[1:]]))
        params = r.stdout.split("model: ")[1].split("M parameters")[0]
        return {"name": name, "args": " ".join(args), "params_m": float(params),
                "tokens_per_sec": tps, "mfu": mfu, "peak_mem_gb": logs[-1]["peak_mem_gb"]}


def bench_train():
    runs = [("default", [], 4096, train_iters),
            ("default, 1 process", ["--workers=1"], 4096, train_iters),
            ("default, grad_checkpoint", ["--grad_checkpoint=True"], 4096, train_iters),
            ("nanoGPT-shaped", ["--dim=256", "--n_layers=6", "--n_heads=8", "--max_seq_len=256",
                                "--batch_size=16"], 4096, train_iters)]
    for preset in sorted(glob.glob(os.path.join(here, "config", "*.py"))):
        # the vocabulary prepare.py gives its dataset; big presets get fewer (slow) iterations
        settings = read_preset(preset)
        vocab = named_datasets.VOCAB_SIZES.get(settings["dataset"])
        if "init_from" in settings or vocab is None or vocab > 8192:
            continue  # a fine-tune (it needs its base), or a model for a GPU (fineweb_edu.py)
        runs.append((os.path.basename(preset), [preset], vocab, 3 if vocab > 1024 else train_iters))
        if vocab > 1024:  # the big presets are where memory runs out first
            runs.append((os.path.basename(preset) + ", grad_ckpt",
                         [preset, "--grad_checkpoint=True"], vocab, 3))
    results["train"] = [r for r in (train_run(*run) for run in runs) if r]


def bench_split(dim=256, n_layers=4, n_heads=8, seq=128, batch=16, vocab=4096):
    """Where one step of the default model goes: forward, backward, optimizer; and per component."""
    mx.random.seed(0)
    model = Model(ModelArgs(dim=dim, n_layers=n_layers, n_heads=n_heads, vocab_size=vocab,
                            max_seq_len=seq))
    opt = optim.AdamW(1e-3)
    x = mx.random.randint(0, vocab, (batch, seq))
    loss_fn = lambda m, x, y: cross_entropy(m(x), y).mean()  # noqa: E731
    grad_fn = nn.value_and_grad(model, loss_fn)
    _, grads = grad_fn(model, x, x)
    mx.eval(model.parameters(), grads)
    split = {"forward": timed(lambda: loss_fn(model, x, x)),
             "forward+backward": timed(lambda: grad_fn(model, x, x))}
    split["backward"] = split["forward+backward"] - split["forward"]
    split["optimizer"] = timed(lambda: opt.apply_gradients(grads, model.parameters()))
    layer = model.model.layers[0]
    h = mx.random.normal((batch, seq, dim))
    logits = mx.random.normal((batch, seq, vocab))
    per_layer = {
        "attention (all layers)": lambda: mx.grad(lambda h: layer.self_attn(h).sum())(h),
        "MLP (all layers)": lambda: mx.grad(lambda h: layer.mlp(h).sum())(h),
        "norms (all layers)": lambda: mx.grad(lambda h: layer.input_layernorm(h).sum())(h),
    }
    for name, fn in per_layer.items():
        split[name] = timed(fn) * n_layers * (2 if name.startswith("norms") else 1)
    split["output layer"] = timed(
        lambda: mx.grad(lambda h: model.model.embed_tokens.as_linear(h).sum())(h))
    split["loss (softmax over vocab)"] = timed(
        lambda: mx.grad(lambda lg: cross_entropy(lg, x).mean())(logits))
    results["split"] = {"shape": f"dim {dim}, {n_layers} layers, {n_heads} heads, "
                                 f"batch {batch} x {seq}, vocab {vocab}", "seconds": split}


def bench_memory():
    """train.py's own peak memory on the default settings, against what a step needs at least."""
    # Parameters, gradients and AdamW's two moments (4 copies), plus what backward must keep per
    # token, in floats: per layer the two norms' inputs and outputs (4 dim), q, k, v and the
    # attention output (4 dim, at most), the attention probabilities (n_heads x seq: the CPU path
    # materialises them), and the MLP's gate, up, their activation and product (4 hidden); then the
    # final norm (dim) and the logits and their softmax (2 vocab).
    default = next((r for r in results.get("train", []) if r["name"] == "default"), None)
    if default is None:
        return
    a, batch = ModelArgs(), 16  # train.py's defaults
    param_bytes = 4 * Model(a).num_params()
    per_token = (a.n_layers * (8 * a.dim + a.n_heads * a.max_seq_len + 4 * a.hidden_dim) + a.dim
                 + 2 * a.vocab_size)
    activations = 4 * per_token * batch * a.max_seq_len
    peak = default["peak_mem_gb"] * 1e9
    results["memory"] = {"params_grads_adam_mb": 4 * param_bytes / 1e6,
                         "activations_mb": activations / 1e6, "peak_mb": peak / 1e6,
                         "ratio": peak / (4 * param_bytes + activations)}


def bench_generate(dim=256, n_layers=4, n_heads=8, vocab=4096, context=256, new=128):
    mx.random.seed(0)
    cpu.set_blas_threads(1)  # as generate.py decodes
    model = Model(ModelArgs(dim=dim, n_layers=n_layers, n_heads=n_heads, vocab_size=vocab,
                            max_seq_len=context + new))
    mx.eval(model.parameters())
    prompt = mx.random.randint(0, vocab, (1, context))

    def prefill():
        cache = model.make_cache()
        return model(prompt, cache), cache
    t_prefill = timed(lambda: prefill()[0])

    def decode():  # the KV-cache path: one token in, one token out
        logits, cache = prefill()
        token = mx.argmax(logits[:, -1], axis=-1, keepdims=True)
        for _ in range(new):
            token = mx.argmax(model(token, cache)[:, -1], axis=-1, keepdims=True)
            mx.async_eval(token)
        return token
    t_decode = timed(decode, repeat=2) - t_prefill

    def recompute():  # no cache: the whole 256-token window again for every new token
        tokens = prompt
        for _ in range(16):
            token = mx.argmax(model(tokens[:, -context:])[:, -1], axis=-1, keepdims=True)
            mx.eval(token)
            tokens = mx.concatenate([tokens, token], axis=1)
        return tokens
    t_recompute = timed(recompute, repeat=2) / 16
    results["generate"] = {"shape": f"dim {dim}, {n_layers} layers, context {context}",
                           "prefill_tokens_per_sec": context / t_prefill,
                           "decode_tokens_per_sec": new / t_decode,
                           "no_cache_tokens_per_sec": 1 / t_recompute,
                           "cache_speedup": (new / t_decode) * t_recompute}


def bench_prepare():
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, os.path.join(here, "prepare.py"), f"--data_dir={tmp}"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"prepare.py failed: {r.stderr.strip()}", file=sys.stderr)
            return
        meta = json.load(open(os.path.join(tmp, "pystdlib", "meta.json")))
        mb = sum(s["bytes"] for s in meta["splits"].values()) / 1e6
        seconds = sum(s["seconds"] for s in meta["splits"].values())
        results["prepare"] = {"corpus_mb": mb, "tokenize_mb_per_sec": mb / seconds}


if "peak" in only:
    # in the dtype train.py's runs below compute in (dtype=auto)
    results["peak_flops"] = max(measure_peak_flops(auto_dtype()) for _ in range(5))
for name in ("train", "split", "generate", "prepare"):
    if name in only:
        globals()[f"bench_{name}"]()
bench_memory()
files.write_atomic(out, json.dumps(results, indent=2).encode())

print(f"\n{results['cpu']}, {results['device']}, mlx {results['mlx']}")
if results["blas"]:  # the CPU's
    coretype = results["openblas_coretype"]
    print(f"BLAS: {results['blas']}"
          + (f" (OPENBLAS_CORETYPE={coretype} chose the kernels)" if coretype else ""))
if "peak_flops" in results:
    print(f"{results['dtype']} matmul peak: {results['peak_flops'] / 1e9:.0f} GFLOP/s")
for r in results.get("train", []):
    print(f"train {r['name']:<24} {r['params_m']:6.2f}M params {r['tokens_per_sec']:8,.0f} tok/s  "
          f"MFU {r['mfu']:5.1%}  peak mem {r['peak_mem_gb']:.2f} GB")
if "split" in results:
    print(f"one training step, not compiled, no worker processes ({results['split']['shape']}):")
    for k, v in results["split"]["seconds"].items():
        print(f"  {k:<28} {v * 1000:8.1f} ms")
if "memory" in results:
    m = results["memory"]
    print(f"memory of a step: peak {m['peak_mb']:.0f} MB = {m['ratio']:.2f}x what it needs: "
          f"parameters, gradients and AdamW {m['params_grads_adam_mb']:.0f} MB + activations "
          f"{m['activations_mb']:.0f} MB")
if "generate" in results:
    g = results["generate"]
    print(f"generate ({g['shape']}): prefill {g['prefill_tokens_per_sec']:,.0f} tok/s, "
          f"decode with KV cache {g['decode_tokens_per_sec']:,.0f} tok/s, "
          f"without {g['no_cache_tokens_per_sec']:,.1f} tok/s ({g['cache_speedup']:.0f}x)")
if "prepare" in results:
    p = results["prepare"]
    print(f"prepare: {p['corpus_mb']:.1f} MB of text tokenized at "
          f"{p['tokenize_mb_per_sec']:.1f} MB/s")
print(f"wrote {out}")
