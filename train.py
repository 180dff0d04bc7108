"""
Train a small LLaMA on the token files that prepare.py wrote.

Reads data/<dataset>/{train,val}.bin and tokenizer.model; writes the checkpoint folder out_dir/ (config.json,
model.safetensors, optimizer.safetensors, tokenizer.model, and tokenizer.json & co. for transformers and mlx-lm)
and out_dir/log.jsonl.

    python train.py                                   # the built-in default, ~5 minutes on 2 CPU cores
    python train.py config/tinyshakespeare.py --dim=128
    python train.py --init_from=resume                # continue out_dir exactly where it stopped
    mlx.launch -n 2 -- python train.py ...            # data parallel: 2 processes here, --hostfile for machines
"""
import json
import math
import os
import queue
import shutil
import signal
import sys
import threading
import time

import numpy as np

# model before mlx.core: it loads the fast BLAS on Linux
from model import MODEL_ARGS, Model, ModelArgs, cross_entropy, load_model, measure_peak_flops, set_blas_threads
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from configurator import configure
from export import write_hf_tokenizer_files
from prepare import read_tokens

# -----------------------------------------------------------------------------
# I/O
out_dir = "out"  # checkpoint folder, also holds log.jsonl
dataset = "pystdlib"  # reads data_dir/dataset/{train,val}.bin, made by prepare.py
data_dir = "data"
init_from = "scratch"  # "scratch", "resume" (continue out_dir), or a checkpoint folder (ours or Hugging Face llama)
eval_interval = 100  # evaluate and save a checkpoint every this many iterations
eval_iters = 10  # batches per split in each evaluation
log_interval = 10
# model (vocab_size comes from the data; ignored when init_from loads a checkpoint)
dim = 256
n_layers = 4
n_heads = 8
n_kv_heads = 0  # 0 means n_heads; a divisor of n_heads gives grouped-query attention
hidden_dim = 0  # 0 means LLaMA's 8/3 * dim rule
max_seq_len = 128
tie_embeddings = True
rope_theta = 10000.0
norm_eps = 1e-5
# optimizer: AdamW, linear warmup then cosine decay to min_lr
batch_size = 16
gradient_accumulation_steps = 1
max_iters = 500
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 50
lr_decay_iters = 0  # 0 means max_iters
weight_decay = 0.1  # matrices only: norms' gains are not decayed
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # clip the global gradient norm; 0 disables
# system
seed = 1337
dtype = "auto"  # "float32", "bfloat16", or "auto": float32 on the CPU, bfloat16 on a GPU
compile = True  # mx.compile the training step
threads = 0  # CPU worker threads sharing each batch; 0: as many as cores (dividing batch_size), 1 on GPU/mlx.launch
peak_flops = 0.0  # the device's matmul peak for MFU; 0 measures it at start
# -----------------------------------------------------------------------------
settings = configure(globals())

for name in ("batch_size", "gradient_accumulation_steps", "max_iters", "eval_interval", "eval_iters", "log_interval",
             "max_seq_len"):
    if globals()[name] < 1:
        sys.exit(f"error: --{name}={globals()[name]} must be at least 1")

group = mx.distributed.init()  # a group of one unless started by mlx.launch
rank, world = group.rank(), group.size()
master = rank == 0  # only rank 0 logs, evaluates to the console and writes files
lr_decay_iters = lr_decay_iters or max_iters
tokens_per_iter = batch_size * gradient_accumulation_steps * world * max_seq_len
on_gpu = mx.default_device() == mx.gpu
compute_dtype = {"auto": mx.bfloat16 if on_gpu else mx.float32, "float32": mx.float32,
                 "bfloat16": mx.bfloat16}.get(dtype)
if compute_dtype is None:
    sys.exit(f"error: dtype={dtype!r} is not one of auto, float32, bfloat16")
cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
if threads == 0:
    threads = 1 if on_gpu or world > 1 else max(n for n in range(1, cores + 1) if batch_size % n == 0)
settings["threads"] = threads  # as run, so a resume elsewhere says that it splits batches differently
if threads < 1 or batch_size % threads:
    sys.exit(f"error: --threads={threads} must divide --batch_size={batch_size}")
if on_gpu and threads > 1:
    sys.exit(f"error: --threads={threads} is for the CPU; on a GPU use --threads=1")
mx.random.seed(seed)

# the model: new, resumed from out_dir, or loaded from any llama checkpoint folder ------------------------------
start_iter, best_val_loss = 0, float("inf")
if init_from == "scratch":
    model_tokenizer = None  # the data's tokenizer
elif init_from == "resume":
    model, saved = load_model(out_dir)
    model_tokenizer = os.path.join(out_dir, "tokenizer.model")
    if "train_state" not in saved or not os.path.isfile(os.path.join(out_dir, "optimizer.safetensors")):
        sys.exit(f"error: {out_dir} is not a checkpoint of train.py (no training state to resume); start from its "
                 f"weights with --init_from={out_dir} --out_dir=<a new folder>")
    state = saved["train_state"]
    start_iter, best_val_loss = state["iter"], state["best_val_loss"]
    changed = {k: (v, settings[k]) for k, v in saved["train_settings"].items()
               if k in settings and settings[k] != v and k != "init_from"}
    if master and changed:
        print("note: resuming with settings that differ from the checkpoint's: "
              + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
else:
    model, _ = load_model(init_from)
    model_tokenizer = os.path.join(init_from, "tokenizer.model")
    if not os.path.isfile(model_tokenizer):
        sys.exit(f"error: {init_from!r} has no tokenizer.model; prepare its data with "
                 f"python prepare.py --tokenizer=<that model's tokenizer.model>")

# the data: one reader, which checks the header and that the tokens come from the model's tokenizer -------------
data_path = os.path.join(data_dir, dataset)
data_tokenizer = os.path.join(data_path, "tokenizer.model")
train_data, train_info = read_tokens(os.path.join(data_path, "train.bin"), model_tokenizer or data_tokenizer)
val_data, val_info = read_tokens(os.path.join(data_path, "val.bin"), model_tokenizer or data_tokenizer)
for name, data in (("train", train_data), ("val", val_data)):
    if len(data) <= max_seq_len + 1:
        sys.exit(f"error: the {name} split of {data_path} has {len(data)} tokens, too few for max_seq_len="
                 f"{max_seq_len}; lower --max_seq_len or give prepare.py more text")

if init_from == "scratch":
    try:
        shape = {k: settings[k] for k in MODEL_ARGS if k in settings}
        args = ModelArgs(**shape, vocab_size=train_info["vocab_size"])
    except (ValueError, ZeroDivisionError) as e:
        sys.exit(f"error: {e}")
    model = Model(args)
args = model.args
if train_info["vocab_size"] > args.vocab_size:
    sys.exit(f"error: the data's vocabulary ({train_info['vocab_size']}) is larger than the model's "
             f"({args.vocab_size}); prepare the data with the model's tokenizer")
if max_seq_len > args.max_seq_len:
    sys.exit(f"error: max_seq_len={max_seq_len} exceeds the model's context ({args.max_seq_len})")
model.set_dtype(compute_dtype)
mx.eval(model.parameters())


def get_batch(data, it, micro):
    # An iteration's windows are a pure function of (seed, it): resuming needs no data-loader state, and the
    # global batch is the same set of windows however it is cut into micro-steps and processes.
    rng = np.random.default_rng([seed, it])
    starts = rng.integers(0, len(data) - max_seq_len - 1, size=batch_size * gradient_accumulation_steps * world)
    part = micro * world + rank
    starts = starts[part * batch_size:(part + 1) * batch_size]
    xy = np.stack([data[i:i + max_seq_len + 1] for i in starts]).astype(np.int32)  # (B, T + 1)
    return mx.array(xy[:, :-1]), mx.array(xy[:, 1:])


def loss_fn(model, x, y):
    return cross_entropy(model(x).astype(mx.float32), y)


def get_lr(step):  # step: updates done so far, an mx.array inside the optimizer
    warmup = learning_rate * (step + 1) / (warmup_iters + 1)
    progress = mx.clip((step - warmup_iters) / max(1, lr_decay_iters - warmup_iters), 0.0, 1.0)
    cosine = min_lr + 0.5 * (1.0 + mx.cos(math.pi * progress)) * (learning_rate - min_lr)
    return mx.where(step < warmup_iters, warmup, cosine)


def adamw(wd):
    return optim.AdamW(learning_rate=get_lr, betas=[beta1, beta2], weight_decay=wd)


optimizer = optim.MultiOptimizer([adamw(weight_decay), adamw(0.0)], [lambda path, p: p.ndim >= 2])
optimizer.init(model.trainable_parameters())
if init_from == "resume":
    opt_state = mx.load(os.path.join(out_dir, "optimizer.safetensors"), return_metadata=True)
    if opt_state[1].get("iter") != str(start_iter):
        sys.exit(f"error: {out_dir}/optimizer.safetensors is from iteration {opt_state[1].get('iter')}, "
                 f"config.json from {start_iter} (a crash while saving?); start again with --init_from=scratch")
    optimizer.state = tree_unflatten(list(opt_state[0].items()))
if world > 1:
    # Every process starts from rank 0's weights, optimizer state and iteration (as PyTorch's DDP does), so a stale
    # out_dir on another machine cannot make the copies drift apart unnoticed. A sum with zeros is exact.
    from_master = lambda a: mx.distributed.all_sum(a if master else mx.zeros_like(a), group=group)  # noqa: E731
    model.update(tree_map(from_master, model.parameters()))
    optimizer.state = tree_map(from_master, optimizer.state)
    start_iter = from_master(mx.array(start_iter)).item()
    mx.eval(model.parameters(), optimizer.state)
if start_iter >= max_iters:
    sys.exit(f"error: {out_dir} is already at iteration {start_iter}; to train on, raise --max_iters (and "
             f"--lr_decay_iters, or the learning rate schedule restarts its decay)")
state = [model.state, optimizer.state]


loss_and_grad = nn.value_and_grad(model, loss_fn)


def forward_backward(x, y):
    return loss_and_grad(model, x, y)


def update(grads):
    if grad_clip > 0:
        grads, grad_norm = optim.clip_grad_norm(grads, grad_clip)
    else:
        grad_norm = mx.sqrt(sum((g * g).sum() for _, g in tree_flatten(grads)))
    optimizer.update(model, grads)
    return grad_norm


if compile:
    # outputs=state on both: value_and_grad leaves traced copies of the parameters in the model, and compile
    # must hand back the real arrays in their place.
    forward_backward = mx.compile(forward_backward, inputs=state, outputs=state)
    update = mx.compile(update, inputs=state, outputs=state)


# MLX runs each elementwise op of a CPU stream on one core; only matmuls use more. So on the CPU each batch is split
# over `threads` worker threads, each with its own stream (MLX streams belong to the thread that made them) and its
# own copy of the model's structure holding the same weight arrays; OpenBLAS splits the cores between the workers.
def worker(share, replica, jobs, results):
    replica_grad = nn.value_and_grad(replica, loss_fn)
    step = lambda x, y: replica_grad(replica, x, y)  # noqa: E731
    if compile:
        step = mx.compile(step, inputs=replica.state, outputs=replica.state)
    with mx.stream(mx.new_stream(mx.cpu)):
        for want_grads, x, y in iter(jobs.get, None):
            try:
                replica.update(model.parameters())  # the main thread waits meanwhile: its weights are current
                x, y = x[share::threads], y[share::threads]  # sliced here: this thread cannot run the main one's ops
                out = step(x, y) if want_grads else loss_fn(replica, x, y)
                mx.eval(out)
                results.put(out)
            except BaseException as e:  # handed to the main thread, which raises it
                results.put(e)


def on_workers(want_grads, x, y):  # -> the batch's mean loss (and its gradients), from the workers' equal shares
    for jobs, _ in workers:
        jobs.put((want_grads, x, y))
    outs = [results.get() for _, results in workers]
    for out in outs:
        if isinstance(out, BaseException):
            raise out
    return tree_map(lambda *shares: sum(shares) / threads, *outs)


if threads > 1:
    workers = [(queue.Queue(), queue.Queue()) for _ in range(threads)]
    for share, (jobs, results) in enumerate(workers):
        replica = Model(args)  # made here, as MLX's random state is not for threads; its weights are replaced
        threading.Thread(target=worker, args=(share, replica, jobs, results), daemon=True).start()
    forward_backward = lambda x, y: on_workers(True, x, y)  # noqa: E731


def all_mean(x):  # mean over the processes of a scalar; a no-op alone
    return mx.distributed.all_sum(x, group=group) / world if world > 1 else x


def evaluate():
    # Always the same windows (iteration numbers past any run's end), so successive evals differ only because
    # the model did; each process takes its share and the mean is over all of them.
    out = {}
    for name, data in (("train", train_data), ("val", val_data)):
        losses = []
        for k in range(eval_iters):
            x, y = get_batch(data, (1 << 40) + k, 0)
            losses.append(on_workers(False, x, y) if threads > 1 else loss_fn(model, x, y))
            mx.eval(losses[-1])  # one batch's activations in memory at a time
        out[name] = all_mean(mx.stack(losses).mean()).item()
    return out


def save_checkpoint(it):
    # Every file is written under a temporary name first, then renamed; config.json goes last and names the
    # iteration that the safetensors files' metadata must match, so a crash mid-save is caught on resume.
    config = {**args.to_config(), "train_settings": settings,
              "train_state": {"iter": it, "best_val_loss": best_val_loss, "seed": seed}}
    meta = {"iter": str(it)}
    tmp = lambda name: os.path.join(out_dir, ".tmp." + name)  # noqa: E731
    weights = {k: v.astype(mx.float32) for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(tmp("model.safetensors"), weights, metadata=meta)
    mx.save_safetensors(tmp("optimizer.safetensors"), dict(tree_flatten(optimizer.state)), metadata=meta)
    with open(tmp("config.json"), "w") as f:
        json.dump(config, f, indent=2)
    shutil.copyfile(model_tokenizer or data_tokenizer, tmp("tokenizer.model"))
    try:  # tokenizer.json and friends, so transformers and mlx-lm load the folder as it is
        write_hf_tokenizer_files(out_dir, tmp("tokenizer.model"), args.max_seq_len)
    except (ValueError, RuntimeError) as e:  # a tokenizer they cannot read or reproduce; ours is still whole
        print(f"note: no Hugging Face tokenizer files in {out_dir}/: {e}", file=sys.stderr)
    for name in ("tokenizer.model", "optimizer.safetensors", "model.safetensors", "config.json"):
        os.replace(tmp(name), os.path.join(out_dir, name))


def log(record, line):
    print(line, flush=True)
    log_file.write(json.dumps(record) + "\n")
    log_file.flush()


def check_finite(loss, done):
    if not math.isfinite(loss):
        sys.exit(f"error: the loss became {loss} at iteration {done}; {out_dir}/ keeps the last good checkpoint. "
                 f"Lower --learning_rate or raise --warmup_iters")


# Ctrl-C finishes the current step, saves and exits; a second Ctrl-C stops at once.
stop = []
def on_sigint(*_):  # noqa: E302
    stop.append(True)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
signal.signal(signal.SIGINT, on_sigint)  # noqa: E305

flops_per_iter = model.flops_per_token(max_seq_len) * tokens_per_iter  # the group's, like tokens_per_iter
peak = mx.distributed.all_sum(mx.array(peak_flops or measure_peak_flops(compute_dtype)), group=group).item()
if threads > 1:
    set_blas_threads(max(1, cores // threads))  # after measuring the peak, which is the whole machine's
if master:
    os.makedirs(out_dir, exist_ok=True)
    log_file = open(os.path.join(out_dir, "log.jsonl"), "a" if init_from == "resume" else "w")
    print(f"model: {model.num_params() / 1e6:.2f}M parameters, {args.n_layers} layers, dim {args.dim}, "
          f"{args.n_heads} heads ({args.n_kv_heads} kv), vocab {args.vocab_size}, {compute_dtype}, "
          f"{mx.default_device()}" + (f", {threads} threads" if threads > 1 else ""))
    print(f"data: {data_path}: {len(train_data):,} train, {len(val_data):,} val tokens")
    print(f"global batch: {batch_size} x {gradient_accumulation_steps} accumulation x {world} processes x "
          f"{max_seq_len} tokens = {tokens_per_iter:,} tokens/iter; iterations {start_iter} -> {max_iters}")

t_last, it_last = time.perf_counter(), start_iter
for it in range(start_iter, max_iters):
    loss, grads = mx.array(0.0), None
    for micro in range(gradient_accumulation_steps):
        micro_loss, micro_grads = forward_backward(*get_batch(train_data, it, micro))
        grads = micro_grads if grads is None else tree_map(mx.add, grads, micro_grads)
        loss = loss + micro_loss
        if gradient_accumulation_steps > 1:
            mx.eval(grads, loss)  # keep the lazy graph to one micro-step
    if gradient_accumulation_steps > 1:
        grads = tree_map(lambda g: g / gradient_accumulation_steps, grads)
        loss = loss / gradient_accumulation_steps
    if world > 1:
        grads = nn.average_gradients(grads, group=group)
    grad_norm = update(grads)
    # Ctrl-C reaches each process at a different point of its step; they stop together at the first iteration where
    # any of them has seen it (told in the loss's all-reduce), or one would evaluate while another trains, and hang.
    loss, stopping = all_mean(mx.stack([loss, mx.array(float(len(stop)))]))
    mx.eval(state, loss, grad_norm, stopping)
    loss, stopping, done = loss.item(), stopping.item() > 0, it + 1
    check_finite(loss, done)
    if master and (done % log_interval == 0 or done == max_iters):
        now = time.perf_counter()
        dt = (now - t_last) / (done - it_last)  # the first interval includes compiling the step
        t_last, it_last = now, done
        lr = get_lr(mx.array(done - 1)).item()
        tps = tokens_per_iter / dt
        mfu = flops_per_iter / dt / peak
        mem = mx.get_peak_memory() / 1e9
        eta = (max_iters - done) * dt
        log({"iter": done, "loss": loss, "lr": lr, "grad_norm": grad_norm.item(), "tokens_per_sec": tps,
             "mfu": mfu, "peak_mem_gb": mem},
            f"iter {done}/{max_iters}: loss {loss:.4f}, lr {lr:.2e}, {dt * 1000:.0f} ms/iter, {tps:,.0f} tok/s, "
            f"mfu {mfu:.1%}, peak mem {mem:.2f} GB, {eta / 60:.1f} min left")
    if done % eval_interval == 0 or done == max_iters or stopping:
        losses = evaluate()
        check_finite(losses["val"], done)  # the update may have broken the model: never save that
        best_val_loss = min(best_val_loss, losses["val"])
        if master:
            bpb = losses["val"] / math.log(2) * val_info["n_tokens"] / val_info["n_bytes"]
            log({"iter": done, "train_loss": losses["train"], "val_loss": losses["val"],
                 "val_ppl": math.exp(losses["val"]), "val_bpb": bpb},
                f"eval {done}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                f"val ppl {math.exp(losses['val']):.2f}, val {bpb:.3f} bits/byte")
            save_checkpoint(done)
            print(f"saved {out_dir}/ (iteration {done})")
        t_last, it_last = time.perf_counter(), done  # evaluation time is not training time
    if stopping:
        if master:
            print(f"interrupted: resume with python train.py --init_from=resume (plus the same settings)")
        all_mean(mx.array(0.0)).item()  # wait for rank 0's save: mlx.launch kills all once one exits non-zero
        sys.exit(130)
