"""
Train a small LLaMA on the token files that prepare.py wrote.

Reads data/<dataset>/{train,val}.bin and tokenizer.model; writes the checkpoint folder out_dir/
(config.json, model.safetensors, optimizer.safetensors, tokenizer.model, and tokenizer.json & co.
for transformers and mlx-lm), out_dir/log.jsonl and out_dir/loss.svg.

    python train.py                               # the built-in default, minutes on 2 CPU cores
    python train.py config/tinyshakespeare.py --dim=128
    python train.py --init_from=resume            # continue out_dir exactly where it stopped
    python train.py --max_minutes=10              # as many iterations as fit in 10 minutes
    mlx.launch -n 2 -- python train.py ...        # data parallel over processes or machines
"""
import io
import math
import os
import signal
import sys
import time

import numpy as np

# first: model.py loads cpu.py, which must come before mlx.core
from model import Model, ModelArgs, MODEL_ARGS, cross_entropy, load_model
import chat as chat_format
import cpu
import files
from device import auto_dtype, measure_peak_flops
import plot
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map, tree_unflatten
import sentencepiece as spm

from configurator import check, configure
from sampling import generate, stream_text

started = time.perf_counter()  # max_minutes counts from here: this process's start, after imports

# -----------------------------------------------------------------------------
# I/O
out_dir = "out"  # checkpoint folder, also holds log.jsonl
dataset = "pystdlib"  # reads data_dir/dataset/{train,val}.bin, made by prepare.py
data_dir = "data"  # where prepare.py wrote the datasets
init_from = "scratch"  # "scratch", "resume" (continue out_dir), or a checkpoint folder (any llama)
eval_interval = 100  # evaluate and save a checkpoint every this many iterations
eval_iters = 10  # batches per split in each evaluation
log_interval = 10  # print (and log) the loss every this many iterations
sample_prompt = ""  # each eval prints (and logs) a sample after this ("" starts a document)
sample_tokens = 60  # how long that sample is; 0 prints none
# model (vocab_size comes from the data; ignored when init_from loads a checkpoint)
dim = 256  # the width of the residual stream
n_layers = 4  # transformer blocks
n_heads = 8  # attention heads (query heads, with n_kv_heads)
n_kv_heads = 0  # 0 means n_heads; a divisor of n_heads gives grouped-query attention
hidden_dim = 0  # 0 means LLaMA's 8/3 * dim rule
max_seq_len = 128  # the context in tokens: attention costs grow with its square
tie_embeddings = True  # the output layer is the embedding, transposed
rope_theta = 10000.0  # RoPE's base: longer contexts want a larger one
norm_eps = 1e-5  # RMSNorm's epsilon
# optimizer: AdamW (or Muon for the blocks' matrices), linear warmup, wsd (or cosine) to min_lr
batch_size = 16  # windows per micro-step, shared by the worker processes (mlx.launch: each's)
gradient_accumulation_steps = 1  # micro-steps per iteration: a bigger batch, same memory
max_iters = 500  # iterations in all (an iteration: one optimizer step)
max_minutes = 0.0  # >0: a wall-clock budget, which decides max_iters (iterations_that_fit)
optimizer = "adamw"  # or "muon": Muon for the blocks' matrices, AdamW for the rest
learning_rate = 2e-3  # AdamW's peak
muon_learning_rate = 0.01  # Muon's peak, on learning_rate's schedule
min_lr = 2e-4  # the schedule's floor; Muon's is min_lr / learning_rate of its peak
lr_schedule = "wsd"  # warmup, constant, then linear to min_lr over cooldown_frac; or "cosine"
cooldown_frac = 0.2  # wsd: the fraction of lr_decay_iters that decays
warmup_iters = 50  # the rate rises linearly over these
lr_decay_iters = 0  # 0 means max_iters
weight_decay = 0.1  # AdamW's, matrices only: norms' gains are not decayed
beta1 = 0.9  # AdamW's momentum
beta2 = 0.95  # AdamW's second-moment decay
grad_clip = 1.0  # clip the global gradient norm to this; 0 disables
dropout = 0.0  # in training only: on the embedding's output and each residual branch
# system
seed = 1337  # the initial weights, every batch's windows, dropout's masks
dtype = "auto"  # the pass's: float32, bfloat16, or auto (bfloat16 if native); weights stay float32
compile = True  # mx.compile the training step
grad_checkpoint = False  # recompute each block in the backward pass: less memory, more compute
workers = 0  # CPU processes sharing each batch; 0: one per core (dividing batch_size)
peak_flops = 0.0  # the machine's matmul peak for MFU; 0 measures it at start
# -----------------------------------------------------------------------------
group = mx.distributed.init()  # a group of one unless started by mlx.launch or as workers
rank, world = group.rank(), group.size()
master = rank == 0  # only rank 0 prints, logs and writes files
overridden = io.StringIO()  # "Overriding:" lines, printed by the process that trains
settings = configure(globals(), echo=overridden)
workers = workers or cpu.default_workers(batch_size, world)
check(globals(), [(name, globals()[name] >= 1, "at least 1") for name in (
    "batch_size", "gradient_accumulation_steps", "max_iters", "eval_interval", "eval_iters",
    "log_interval")] + [(name, globals()[name] >= 0, "at least 0") for name in (
    "sample_tokens", "learning_rate", "min_lr", "grad_clip")] + [
    ("max_seq_len", max_seq_len >= 2, "at least 2"), ("out_dir", out_dir != "", "a folder"),
    ("optimizer", optimizer in ("adamw", "muon"), "one of adamw, muon"),
    ("lr_schedule", lr_schedule in ("cosine", "wsd"), "one of cosine, wsd"),
    ("cooldown_frac", 0 <= cooldown_frac <= 1, "between 0 and 1"),
    ("dropout", 0 <= dropout < 1, "at least 0 and below 1"),
    ("max_minutes", max_minutes >= 0, "at least 0 (0 turns the budget off)"),
    ("dtype", dtype in ("auto", "float32", "bfloat16"), "one of auto, float32, bfloat16"),
    ("learning_rate", optimizer != "muon" or learning_rate > 0,
     "above 0: Muon's rate follows its schedule, scaled"),
    ("workers", workers >= 1 and batch_size % workers == 0 and (cpu.ON_CPU or workers == 1),
     f"a divisor of --batch_size={batch_size}, and 1 on a GPU")])
if world == 1 and workers > 1:  # on the CPU: this script again, a process per share (cpu.py)
    sys.exit(cpu.run_workers(workers))
print(overridden.getvalue() if master else "", end="")
share = batch_size // workers  # this process's windows per micro-step
compute_dtype = auto_dtype() if dtype == "auto" else getattr(mx, dtype)
tokens_per_iter = share * gradient_accumulation_steps * world * max_seq_len
settings.update(workers=workers, tokens_per_iter=tokens_per_iter,  # as run, for resumes, compare.py
                dtype=str(compute_dtype).split(".")[-1])
mx.random.seed(seed)

# the model: new, resumed from out_dir, or loaded from any llama checkpoint folder ----------------
resume = init_from == "resume"
folder = files.RunFolder(out_dir, resume) if master else None  # locked: one run writes out_dir
if world > 1:
    mx.distributed.all_sum(mx.array(0.0), group=group).item()  # read out_dir once rank 0 is done
source = None if init_from == "scratch" else out_dir if resume else init_from
data_path = os.path.join(data_dir, dataset)
tokenizer_path = os.path.join(source or data_path, "tokenizer.model")  # the tokens must be its
start_iter, best_val_loss, budget_open = 0, float("inf"), max_minutes > 0
if source:
    model, config = load_model(source)
    model.set_dtype(mx.float32)  # the master weights, whatever the folder stores
if resume:
    train_state, saved_settings, opt_state = files.read_resume(out_dir, config, optimizer)
    start_iter, best_val_loss = train_state["iter"], train_state["best_val_loss"]
    if budget_open and train_state.get("budget_resolved"):  # decided once: --max_minutes=0 frees it
        max_iters = settings["max_iters"] = saved_settings["max_iters"]
        budget_open = False
    changed = ", ".join(f"{k} {v!r} -> {settings[k]!r}" for k, v in saved_settings.items()
                        if k in settings and settings[k] != v and k != "init_from"
                        and (k not in MODEL_ARGS or k == "max_seq_len"))  # the shape is saved
    if master and changed:
        print(f"note: resuming with settings that differ from the checkpoint's: {changed}")
elif source and not os.path.isfile(tokenizer_path):
    sys.exit(f"error: {init_from!r} has no tokenizer.model; prepare its data with "
             f"python prepare.py --tokenizer=<that model's tokenizer.model>")

# the data: one reader, which checks the header and that the model's tokenizer made the tokens ----
train_data, train_info = files.read_tokens(os.path.join(data_path, "train.bin"), tokenizer_path)
val_data, val_info = files.read_tokens(os.path.join(data_path, "val.bin"), tokenizer_path)
chat = train_info["kind"] == "chat"  # conversations: the loss is on the replies' tokens only
for info in (train_info, val_info):  # chat windows start where a conversation does
    info["starts"] = np.flatnonzero(info["mask"] & files.START) if chat else None
    info["fits"] = chat and info["starts"][info["starts"] < info["n_tokens"] - max_seq_len]
if min(len(train_data), len(val_data)) <= max_seq_len + 1:  # a chat file starts a conversation
    sys.exit(f"error: {data_path} has {len(train_data)} train and {len(val_data)} val tokens, too "
             f"few for max_seq_len={max_seq_len}; lower --max_seq_len or give prepare.py more text")
if not source:
    try:
        model = Model(ModelArgs(**{k: settings[k] for k in MODEL_ARGS if k in settings},
                                vocab_size=train_info["vocab_size"]))
    except (ValueError, ZeroDivisionError) as e:
        sys.exit(f"error: {e}")
args = model.args
# the shape that trains (a checkpoint's, whatever the flags say), for config.json and compare.py
settings.update({k: getattr(args, k) for k in MODEL_ARGS if k in settings and k != "max_seq_len"})
if train_info["vocab_size"] > args.vocab_size:
    sys.exit(f"error: the data's vocabulary ({train_info['vocab_size']}) is larger than the "
             f"model's ({args.vocab_size}); prepare the data with the model's tokenizer")
check(globals(), [("max_seq_len", max_seq_len <= args.max_seq_len,
                   f"at most the model's context, {args.max_seq_len}")])
model.set_training(dropout, grad_checkpoint)
mx.eval(model.parameters())  # float32: the weights that the optimizer updates

# Each target's weight in the loss, mean 1 over the windows: 1 for text; for chat, on the replies'
# tokens only (ends: each window's first conversation only), so every share of a batch (micro-step,
# process) averages to the mean over the replies' tokens of the whole batch.
def loss_weights(info, starts, ends=None):  # -> (windows, T)
    if not chat:
        return np.ones((len(starts), max_seq_len), np.float32)
    targets = starts[:, None] + np.arange(1, max_seq_len + 1)
    w = (info["mask"][np.minimum(targets, len(info["mask"]) - 1)] & files.LOSS).astype(np.float32)
    w *= True if ends is None else targets < ends[:, None]
    return w * (w.size / max(w.sum(), 1))

def windows(data, starts, w):  # x, y: (B, T) tokens and their next ones, w: their weights
    xy = np.stack([np.pad(data[i:i + max_seq_len + 1], (0, max(0, i + max_seq_len + 1 - len(data))))
                   for i in starts]).astype(np.int32)  # the data's end: padding, weighed 0
    return mx.array(xy[:, :-1]), mx.array(xy[:, 1:]), mx.array(w)

# An iteration's windows are a pure function of (seed, it): resuming needs no data-loader state,
# and the global batch is the same windows however micro-steps and processes cut it. An eval
# takes one micro-step's (micro_steps=1), whatever gradient_accumulation_steps is.
def get_batch(data, info, it, micro, micro_steps=gradient_accumulation_steps):
    rng, n = np.random.default_rng([seed, it]), micro_steps * world * share
    starts = rng.choice(info["fits"], n) if chat else rng.integers(0, len(data) - max_seq_len,
                                                                      size=n)
    mine = slice((micro * world + rank) * share, (micro * world + rank + 1) * share)
    return windows(data, starts[mine], loss_weights(info, starts)[mine])

def loss_fn(model, x, y, w):
    weights = model.parameters()
    if compute_dtype != mx.float32:
        # Mixed precision: the pass runs on bfloat16 copies of the float32 weights (but the
        # embedding's), and gradients come back in float32, so an update below bfloat16's
        # resolution still adds up.
        model.update(model.pass_weights(compute_dtype))
    logits = model(x)
    model.update(weights)
    return (cross_entropy(logits, y) * w).mean()  # float32

def bits_per_byte(loss):  # nats per token -> bits per byte of the text the val tokens stand for
    return loss / math.log(2) * val_info["n_loss_tokens"] / val_info["n_bytes"]

# the optimizer: AdamW, or Muon for the matrices inside the blocks --------------------------------
def adamw(wd):
    return optim.AdamW(learning_rate=learning_rate, betas=[beta1, beta2], weight_decay=wd)

if optimizer == "muon":
    # Muon orthogonalises the update of each matrix in the blocks (the rest is AdamW's, as Muon's
    # authors do; worker processes share the matrices out). No weight decay: MLX's adds it to the
    # gradient, and orthogonalised it would outweigh q's and k's small gradients (docs/quality.md).
    muon = (cpu.WorkersMuon if workers > 1 else optim.Muon)(muon_learning_rate, weight_decay=0.0)
    opt = optim.MultiOptimizer([muon, adamw(weight_decay), adamw(0.0)],
                               [lambda path, p: path.startswith("model.layers.") and p.ndim == 2,
                                lambda _, p: p.ndim >= 2])
else:  # weight decay on the matrices, none on the norms' gains
    opt = optim.MultiOptimizer([adamw(weight_decay), adamw(0.0)], [lambda _, p: p.ndim >= 2])
opt.init(model.trainable_parameters())
if resume:
    opt.state = tree_unflatten(list(opt_state.items()))

def from_master(a):  # rank 0's copy of an array, on every rank: a sum with zeros is exact
    return mx.distributed.all_sum(a if master else mx.zeros_like(a), group=group)

if world > 1:  # every process starts from rank 0's weights, optimizer state and count, as DDP does
    model.update(tree_map(from_master, model.parameters()))
    opt.state = tree_map(from_master, opt.state)
    start_iter, max_iters, budget_open = from_master(
        mx.array([start_iter, max_iters, budget_open])).tolist()
    mx.eval(model.parameters(), opt.state)
if budget_open:
    max_iters = math.inf  # until iterations_that_fit decides; the schedule holds its peak till then
if start_iter >= max_iters:
    budget = " with --max_minutes=0 (the budget's count holds else)" * (max_minutes > 0)
    sys.exit(f"error: {out_dir} is already at iteration {start_iter}; to train on, raise "
             f"--max_iters{budget} (and --lr_decay_iters, or the schedule restarts its decay)")

# learning rate schedule: warmup, then wsd (constant, then a linear cooldown) or cosine decay
def get_lr(it):
    decay_end = lr_decay_iters or max_iters
    cooldown_start = max(warmup_iters, (1 - cooldown_frac) * decay_end)  # wsd's first below peak
    # 1) linear warmup for warmup_iters steps
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    # 2) past decay_end, min_lr
    if it > decay_end:
        return min_lr
    # 3) wsd: learning_rate until the cooldown, the last cooldown_frac of decay_end
    if lr_schedule == "wsd" and it < cooldown_start:
        return learning_rate
    # 4) wsd's cooldown: linear decay down to min_lr
    if lr_schedule == "wsd":
        ratio = (it - cooldown_start) / max(1, decay_end - cooldown_start)
        return learning_rate - ratio * (learning_rate - min_lr)
    # 5) cosine: from warmup to decay_end, cosine decay down to min_lr
    ratio = (it - warmup_iters) / max(1, decay_end - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)

# max_minutes: max_iters, decided once, when the schedule first needs it (wsd: where its cooldown
# would start; cosine: after warmup), at this process's pace so far, evals included; 0 before.
# wsd's cooldown then starts now, so no rate already used changes. Rank 0's clock decides for all.
def iterations_that_fit(done):
    fit = done + (done - start_iter) * (max_minutes * 60 / (time.perf_counter() - started) - 1)
    at_peak = 1 - cooldown_frac if lr_schedule == "wsd" else 0.0  # the share of the run at peak
    count = 0
    if done - start_iter >= 20 and done >= max(warmup_iters, at_peak * fit):
        count = math.ceil(max(fit, done / at_peak if at_peak else 0))
    return int(from_master(mx.array(count)).item()) if world > 1 else count

# the step: the gradients of this process's share of a batch, then the update -------------------
flops_per_iter = model.flops_per_token(max_seq_len) * tokens_per_iter  # the group's, like tokens
# each process's share: the workers' of a machine (measured at once, a core each) add up to it
peak = peak_flops / workers if peak_flops else measure_peak_flops(compute_dtype)
peak = mx.distributed.all_sum(mx.array(peak), group=group).item()
loss_and_grad = nn.value_and_grad(model, loss_fn)
step = lambda *batch: loss_and_grad(model, *batch)  # noqa: E731 (x, y, w) -> (loss, gradients)

def all_mean(x):  # mean over the processes of a scalar; a no-op alone
    return mx.distributed.all_sum(x, group=group) / world if world > 1 else x

def gradients(it):  # -> the loss and the gradients of iteration it's global batch
    loss, grads = mx.array(0.0), None
    for micro in range(gradient_accumulation_steps):
        # A micro-step's dropout masks are a pure function of (seed, iteration, micro-batch,
        # process), like its windows: a resume draws them again.
        if dropout:
            ids = [seed, it, micro * world + rank]
            model.set_dropout_key(mx.random.key(int(np.random.default_rng(ids).integers(1 << 63))))
        micro_loss, micro_grads = step(*get_batch(train_data, train_info, it, micro))
        grads = micro_grads if grads is None else tree_map(mx.add, grads, micro_grads)
        loss = loss + micro_loss
        if gradient_accumulation_steps > 1:
            mx.eval(grads, loss)  # keep the lazy graph to one micro-step
    if gradient_accumulation_steps > 1:
        grads = tree_map(lambda g: g / gradient_accumulation_steps, grads)
        loss = loss / gradient_accumulation_steps
    if world > 1:
        grads = nn.average_gradients(grads, group=group)
    return all_mean(loss), grads

def update(grads):
    grads, grad_norm = optim.clip_grad_norm(grads, grad_clip or math.inf)  # 0: the norm alone
    opt.update(model, grads)
    return grad_norm

state = [model.state, opt.state]
if compile:  # outputs=state too: compile must hand back real arrays for the traced ones of grads
    update = mx.compile(update, inputs=state, outputs=state)
    step = mx.compile(step, inputs=state, outputs=state)

# evals, samples and checkpoints ------------------------------------------------------------------
def mean_loss(batches):  # over this process's batches, then over every process's
    total, count = mx.array(0.0), mx.array(0)
    for x, y, w in batches:
        loss = loss_fn(model, x, y, w)
        total, count = total + loss * len(x), count + len(x)
        mx.eval(total, count)  # one batch's activations in memory at a time
    return (all_mean(total) / all_mean(count)).item()

sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
sample_prompt_tokens = chat_format.turn_ids(sp, sample_prompt) if chat else \
    [sp.bos_id()] + sp.encode(sample_prompt)  # chat: the prompt is a user turn

def sample_text(it):  # what the model writes now, decoded as generate.py does; the same every run
    mx.random.seed(seed + it)
    tokens = generate(model, sample_prompt_tokens, sample_tokens, stop=sp.eos_id())
    return sample_prompt + "".join(stream_text(sp, sample_prompt_tokens, tokens))

def check_finite(loss, done):
    if not math.isfinite(loss):
        sys.exit(f"error: the loss became {loss} at iteration {done}; {out_dir}/ keeps the last "
                 f"good checkpoint. Lower --learning_rate or raise --warmup_iters")

# At each eval: the loss on both splits (the same windows every time, iterations past any run's
# end), a sample, a checkpoint and loss.svg.
def eval_and_save(done):
    global best_val_loss
    model.train(False)  # dropout only in training: evals and samples see the whole model
    train, val = (mean_loss(get_batch(data, info, (1 << 40) + k, 0, 1) for k in range(eval_iters))
                  for data, info in ((train_data, train_info), (val_data, val_info)))
    check_finite(val, done)  # the update may have broken the model: never save that
    best_val_loss = min(best_val_loss, val)
    if master:
        ppl, bpb = math.exp(val), bits_per_byte(val)
        folder.log({"iter": done, "train_loss": train, "val_loss": val, "val_ppl": ppl,
                    "val_bpb": bpb}, f"eval {done}{' (reply tokens)' * chat}: train loss "
                   f"{train:.4f}, val loss {val:.4f}, val ppl {ppl:.2f}, val {bpb:.3f} bits/byte")
        if sample_tokens:
            text = sample_text(done)
            folder.log({"iter": done, "sample": text}, f"sample {done}: {text}")
        folder.save(done, {**args.to_config(), "train_settings": settings, "train_state": {
            "iter": done, "best_val_loss": best_val_loss, "seed": seed,
            "budget_resolved": max_minutes > 0 and not budget_open}},
            dict(tree_flatten(model.parameters())), dict(tree_flatten(opt.state)), tokenizer_path,
            chat_format.CHAT_TEMPLATE if chat else None)
        print(f"saved {out_dir}/ (iteration {done})")
        folder.write("loss.svg", plot.loss_svg(folder.records(), tokens_per_iter, dataset).encode())
    model.train(True)

stop_signal = 0  # Ctrl-C, or SIGTERM (a shutdown, `timeout`): finish the step, save and exit

def on_signal(signum, frame):  # a second signal ends the run at once
    global stop_signal
    stop_signal = signum
    signal.signal(signum, signal.SIG_DFL)

def interrupted(signum):  # after a save: exit 130 (SIGINT) or 143 (SIGTERM)
    if master:
        print(f"interrupted: {out_dir}/ holds iteration {it}; " + (
            "the final pass over val did not run" if it >= max_iters else "resume with python "
            f"train.py --out_dir={out_dir} --init_from=resume (and the same settings)"))
    sys.exit(128 + signum)

signal.signal(signal.SIGINT, on_signal)
signal.signal(signal.SIGTERM, on_signal)
if master:
    folder.open_log(start_iter, resume)
    print(f"model: {model.num_params() / 1e6:.2f}M parameters, {args.n_layers} layers, dim "
          f"{args.dim}, {args.n_heads} heads ({args.n_kv_heads} kv), vocab {args.vocab_size}, "
          f"{compute_dtype}, {mx.default_device()}" + f", {workers} workers" * (workers > 1))
    print(f"data: {data_path}: {len(train_data):,} train, {len(val_data):,} val tokens")
    print(f"global batch: {share} x {gradient_accumulation_steps} accumulation x {world} "
          f"processes x {max_seq_len} tokens = {tokens_per_iter:,} tokens/iter; iterations "
          f"{start_iter} -> {max_iters}")

t_last, it_last, it = time.perf_counter(), start_iter, start_iter
while it < max_iters:
    lr = get_lr(it)
    opt.learning_rate = lr  # every sub-optimizer's; then Muon's, the same schedule from its peak
    if optimizer == "muon":
        opt.optimizers[0].learning_rate = muon_learning_rate * lr / learning_rate
    loss, grads = gradients(it)
    grad_norm = update(grads)
    mx.eval(state, loss, grad_norm)
    del grads  # or the next iteration's pass would run with this one's gradients still held
    loss, done = loss.item(), it + 1
    check_finite(loss, done)
    # The processes stop together, at the first iteration where any has seen a signal; else one
    # would evaluate while another trains, and hang.
    stop_now = all_mean(mx.array(float(stop_signal))).item() > 0 if world > 1 else stop_signal > 0
    if budget_open and (fit := iterations_that_fit(done)):  # saved: a resume goes on to it
        max_iters, settings["max_iters"], budget_open = fit, fit, False
        if master:
            folder.log({"iter": done, "max_iters": fit},
                       f"max_minutes={max_minutes:g}: {fit:,} iterations fit; training until then")
    log_now = done % log_interval == 0 or done == max_iters
    mem = all_mean(mx.array(mx.get_peak_memory() / 1e9)).item() * world if log_now else 0  # summed
    if master and log_now:
        now = time.perf_counter()
        dt = (now - t_last) / (done - it_last)  # the first interval includes compiling the step
        t_last, it_last = now, done
        tps, mfu = tokens_per_iter / dt, flops_per_iter / dt / peak
        folder.log({"iter": done, "loss": loss, "lr": lr, "grad_norm": grad_norm.item(),
                    "tokens_per_sec": tps, "mfu": mfu, "peak_mem_gb": mem},
                   f"iter {done}/{max_iters}: loss {loss:.4f}, lr {lr:.2e}, {dt * 1000:.0f} "
                   f"ms/iter, {tps:,.0f} tok/s, mfu {mfu:.1%}, peak mem {mem:.2f} GB, "
                   f"{(max_iters - done) * dt / 60:.1f} min left")
    if done % eval_interval == 0 or done == max_iters or stop_now:
        eval_and_save(done)
        t_last, it_last = time.perf_counter(), done  # evaluation time is not training time
    it = done
    if stop_now:
        all_mean(mx.array(0.0)).item()  # wait for rank 0's save: mlx.launch ends all once one fails
        interrupted(stop_signal or signal.SIGINT)

# The end: the loss over every val token once (windows side by side, each predicting its tokens
# from those before it in the window), the number to compare runs by, whichever windows the evals
# drew. Chat: a window at each conversation, for its replies' tokens (those within max_seq_len).
model.train(False)
starts = val_info["starts"] if chat else np.arange((len(val_data) - 1) // max_seq_len) * max_seq_len
w = loss_weights(val_info, starts, np.append(starts[1:], len(val_data)))
loss = mean_loss(windows(val_data, starts[i:i + share], w[i:i + share])
                 for i in range(rank * share, len(starts), share * world)
                 if not stop_signal)  # saved: a signal now only cuts this pass short
if stop_signal:
    interrupted(stop_signal)
if master:
    n = int(np.count_nonzero(w))
    folder.log({"iter": it, "val_loss_full": loss, "val_bpb_full": bits_per_byte(loss),
                "val_tokens_full": n}, f"final: the whole val split ({n:,}{' reply' * chat} "
               f"tokens): val loss {loss:.4f}, {bits_per_byte(loss):.3f} bits/byte")
