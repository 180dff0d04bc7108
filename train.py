"""
Train a small LLaMA on the token files that prepare.py wrote.

Reads data/<dataset>/{train,val}.bin and tokenizer.model; writes the checkpoint folder out_dir/ (config.json,
model.safetensors, optimizer.safetensors, tokenizer.model, and tokenizer.json & co. for transformers and mlx-lm),
out_dir/log.jsonl and out_dir/loss.svg.

    python train.py                                   # the built-in default, ~3 minutes on 2 CPU cores
    python train.py config/tinyshakespeare.py --dim=128
    python train.py --init_from=resume                # continue out_dir exactly where it stopped
    python train.py --max_minutes=10                  # as many iterations as fit in 10 minutes
    mlx.launch -n 2 -- python train.py ...            # data parallel: 2 processes here, --hostfile for machines
"""
import itertools
import json
import math
import os
import re
import shutil
import signal
import sys
import time

import numpy as np

from model import MODEL_ARGS, Model, ModelArgs, cross_entropy, load_model, measure_peak_flops  # first: loads cpu.py
import cpu
import files
import plot
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map, tree_unflatten
import sentencepiece as spm

from configurator import configure
from sampling import generate, stream_text

started = time.perf_counter()  # max_minutes counts from here: the process's start, but for Python's imports

# -----------------------------------------------------------------------------
# I/O
out_dir = "out"  # checkpoint folder, also holds log.jsonl
dataset = "pystdlib"  # reads data_dir/dataset/{train,val}.bin, made by prepare.py
data_dir = "data"
init_from = "scratch"  # "scratch", "resume" (continue out_dir), or a checkpoint folder (ours or Hugging Face llama)
eval_interval = 100  # evaluate and save a checkpoint every this many iterations
eval_iters = 10  # batches per split in each evaluation
log_interval = 10
sample_prompt = ""  # at every eval, print (and log) a short sample that continues this; empty starts a document
sample_tokens = 60  # how long that sample is; 0 prints none
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
# optimizer: AdamW (or Muon for the blocks' matrices), linear warmup then wsd (or cosine) decay to min_lr
batch_size = 16
gradient_accumulation_steps = 1
max_iters = 500
max_minutes = 0.0  # a wall-clock budget: >0 replaces max_iters by what fits, timed over the first iterations
optimizer = "adamw"  # or "muon": Muon for the blocks' matrices, AdamW for the embedding, output head and norms
learning_rate = 2e-3  # AdamW's peak
muon_learning_rate = 0.02  # Muon's peak, on learning_rate's schedule (modded-nanogpt uses 0.02-0.05)
min_lr = 2e-4  # the schedule's floor; Muon's is min_lr / learning_rate of its peak
lr_schedule = "wsd"  # warmup, constant, then linear to min_lr over the last cooldown_frac; or "cosine"
cooldown_frac = 0.2  # wsd: the fraction of lr_decay_iters that decays
warmup_iters = 50
lr_decay_iters = 0  # 0 means max_iters
weight_decay = 0.1  # AdamW's, matrices only: norms' gains are not decayed; Muon keeps its own (MLX's 0.01)
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # clip the global gradient norm; 0 disables
dropout = 0.0  # in training only: on the embedding's output and each residual branch; not saved in config.json
# system
seed = 1337
dtype = "auto"  # of the forward and backward pass: "float32", "bfloat16", or "auto" (bfloat16 where the GPU has it
# natively, else float32); weights and optimizer state stay float32 either way
compile = True  # mx.compile the training step
grad_checkpoint = False  # recompute each block's activations in the backward pass: less memory, more compute
threads = 0  # CPU worker threads sharing each batch; 0: as many as cores (dividing batch_size), 1 on GPU/mlx.launch
peak_flops = 0.0  # the device's matmul peak for MFU; 0 measures it at start
# -----------------------------------------------------------------------------
group = mx.distributed.init()  # a group of one unless started by mlx.launch
settings = configure(globals(), echo=None if group.rank() == 0 else False)  # rank 0 alone prints

for name in ("batch_size", "gradient_accumulation_steps", "max_iters", "eval_interval", "eval_iters", "log_interval",
             "max_seq_len"):
    if globals()[name] < 1:
        sys.exit(f"error: --{name}={globals()[name]} must be at least 1")
if max_seq_len < 2 or sample_tokens < 0:
    sys.exit(f"error: --max_seq_len={max_seq_len} must be at least 2, and --sample_tokens={sample_tokens} at least 0")
if optimizer not in ("adamw", "muon"):
    sys.exit(f"error: --optimizer={optimizer!r} is not one of adamw, muon")
if lr_schedule not in ("cosine", "wsd"):
    sys.exit(f"error: --lr_schedule={lr_schedule!r} is not one of cosine, wsd")
if not 0 <= cooldown_frac <= 1:
    sys.exit(f"error: --cooldown_frac={cooldown_frac} must be between 0 and 1")
if not 0 <= dropout < 1:
    sys.exit(f"error: --dropout={dropout} must be at least 0 and below 1")
if max_minutes < 0:
    sys.exit(f"error: --max_minutes={max_minutes} must be at least 0 (0 turns the budget off)")
if optimizer == "muon" and learning_rate <= 0:
    sys.exit(f"error: --learning_rate={learning_rate} must be above 0: Muon's rate follows its schedule, scaled")

rank, world = group.rank(), group.size()
master = rank == 0  # only rank 0 logs, evaluates to the console and writes files
tokens_per_iter = batch_size * gradient_accumulation_steps * world * max_seq_len
on_gpu = mx.default_device() == mx.gpu
# auto: bfloat16 where the device computes it natively (Apple GPUs from the M3 on, Metal's applegpu_g15 and later;
# CUDA GPUs from Ampere on), float32 elsewhere: M1 and M2 GPUs only emulate bfloat16, and the CPU has no bfloat16
# BLAS (README, "Precision").
gpu = mx.device_info() if on_gpu else {}
apple_gpu = re.match(r"applegpu_g(\d+)", str(gpu.get("architecture", "")))
native_bf16 = on_gpu and (int(apple_gpu[1]) >= 15 if apple_gpu else gpu.get("compute_capability_major", 8) >= 8)
compute_dtype = {"auto": mx.bfloat16 if native_bf16 else mx.float32, "float32": mx.float32,
                 "bfloat16": mx.bfloat16}.get(dtype)
if compute_dtype is None:
    sys.exit(f"error: dtype={dtype!r} is not one of auto, float32, bfloat16")
cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
if threads == 0:
    threads = 1 if on_gpu or world > 1 else max(n for n in range(1, cores + 1) if batch_size % n == 0)
settings["threads"] = threads  # as run, so a resume elsewhere says that it splits batches differently
settings["dtype"] = "bfloat16" if compute_dtype == mx.bfloat16 else "float32"  # and computes in another dtype
if threads < 1 or batch_size % threads:
    sys.exit(f"error: --threads={threads} must divide --batch_size={batch_size}")
if on_gpu and threads > 1:
    sys.exit(f"error: --threads={threads} is for the CPU; on a GPU use --threads=1")
mx.random.seed(seed)

# the model: new, resumed from out_dir, or loaded from any llama checkpoint folder ------------------------------
start_iter, best_val_loss = 0, float("inf")
budget_resolved = False  # whether max_iters is the count that max_minutes found: saved, so a resume never times it
if init_from == "scratch":
    model_tokenizer = None  # the data's tokenizer
    if os.path.exists(os.path.join(out_dir, "config.json")) or os.path.isdir(os.path.join(out_dir, files.SAVING)):
        sys.exit(f"error: {out_dir}/ already holds a checkpoint, which a new run would replace; continue it with "
                 f"--init_from=resume, or train into another --out_dir (or delete {out_dir}/ to start over)")
elif init_from == "resume":
    if master:  # a save that a crash cut short: completed if whole, else the last one stands
        files.finish_checkpoint(out_dir)
    if world > 1:
        mx.distributed.all_sum(mx.array(0.0), group=group).item()  # the others read out_dir once it is whole
    model, saved = load_model(out_dir)
    model_tokenizer = os.path.join(out_dir, "tokenizer.model")
    if "train_state" not in saved:
        sys.exit(f"error: {out_dir} is not a checkpoint of train.py (no training state to resume); start from its "
                 f"weights with --init_from={out_dir} --out_dir=<a new folder>")
    for name in ("optimizer.safetensors", "tokenizer.model"):
        if not os.path.isfile(os.path.join(out_dir, name)):
            sys.exit(f"error: {out_dir}/{name} is missing, and resuming needs it; copy it back from where it went, "
                     f"or start from the weights alone with --init_from={out_dir} --out_dir=<a new folder>")
    state = saved["train_state"]
    start_iter, best_val_loss = state["iter"], state["best_val_loss"]
    saved_optimizer = saved["train_settings"].get("optimizer", "adamw")
    if saved_optimizer != optimizer:
        sys.exit(f"error: {out_dir}/optimizer.safetensors holds {saved_optimizer}'s state, not {optimizer}'s; resume "
                 f"with --optimizer={saved_optimizer}, or start from the weights alone with --init_from={out_dir} "
                 f"--out_dir=<a new folder>")
    # A run that max_minutes has timed goes on to the count it found, unless --max_iters says otherwise.
    budget_resolved = state.get("budget_resolved", False)
    if budget_resolved and not any(arg.startswith("--max_iters=") for arg in sys.argv[1:]):
        max_iters = settings["max_iters"] = saved["train_settings"]["max_iters"]
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
tokenizer_path = model_tokenizer or os.path.join(data_path, "tokenizer.model")
train_data, train_info = files.read_tokens(os.path.join(data_path, "train.bin"), tokenizer_path)
val_data, val_info = files.read_tokens(os.path.join(data_path, "val.bin"), tokenizer_path)
bits_per_byte = lambda loss: loss / math.log(2) * val_info["n_tokens"] / val_info["n_bytes"]  # noqa: E731
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


def for_training(m):  # the main model and every worker's replica train alike
    m.model.grad_checkpoint, m.model.dropout = grad_checkpoint, dropout
    return m


for_training(model)
mx.eval(model.parameters())  # float32: the weights the optimizer updates, whatever dtype computes with them


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
    weights = model.parameters()
    if compute_dtype != mx.float32:
        # Mixed precision: the forward and backward pass run on bfloat16 copies of the float32 weights, and the
        # gradients come back in float32, so an update smaller than bfloat16's resolution still adds up.
        model.update(tree_map(lambda w: w.astype(compute_dtype), weights))
    logits = model(x)
    model.update(weights)
    return cross_entropy(logits.astype(mx.float32), y).mean()


def cooldown_start():  # wsd's first iteration below the peak
    return max(warmup_iters, (1 - cooldown_frac) * lr_decay_iters)


def get_lr(it):
    # 1) linear warmup for warmup_iters steps
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    # 2) past lr_decay_iters, min_lr
    if it > lr_decay_iters:
        return min_lr
    # 3) wsd: learning_rate until the cooldown, the last cooldown_frac of lr_decay_iters (warmup never overlaps it)
    if lr_schedule == "wsd" and it < cooldown_start():
        return learning_rate
    # 4) wsd's cooldown: linear decay down to min_lr
    if lr_schedule == "wsd":
        cooldown_ratio = (it - cooldown_start()) / max(1, lr_decay_iters - cooldown_start())
        return learning_rate - cooldown_ratio * (learning_rate - min_lr)
    # 5) cosine: from warmup to lr_decay_iters, cosine decay down to min_lr
    decay_ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * decay_ratio)) * (learning_rate - min_lr)


def adamw(wd):
    return optim.AdamW(learning_rate=learning_rate, betas=[beta1, beta2], weight_decay=wd)


matrix = lambda path, p: p.ndim >= 2  # noqa: E731
if optimizer == "muon":
    # Muon orthogonalises the update of each matrix inside the blocks; the embedding and the output head are not
    # hidden matrices, and the norms' gains are vectors, so AdamW keeps them (as Muon's authors do). Its weight
    # decay stays MLX's default: it is added to the gradient before orthogonalising, so AdamW's would not carry over.
    in_blocks = lambda path, p: path.startswith("model.layers.") and p.ndim == 2  # noqa: E731
    opt = optim.MultiOptimizer([optim.Muon(learning_rate=muon_learning_rate), adamw(weight_decay), adamw(0.0)],
                               [in_blocks, matrix])
else:
    opt = optim.MultiOptimizer([adamw(weight_decay), adamw(0.0)], [matrix])
opt.init(model.trainable_parameters())
if init_from == "resume":
    opt_state, opt_meta = mx.load(os.path.join(out_dir, "optimizer.safetensors"), return_metadata=True)
    if master and opt_meta.get("iter") != str(start_iter):  # the other ranks take rank 0's state below
        sys.exit(f"error: {out_dir}/optimizer.safetensors is from iteration {opt_meta.get('iter')}, config.json "
                 f"from {start_iter}: files of two checkpoints were mixed by hand; put back the matching pair")
    opt.state = tree_unflatten(list(opt_state.items()))
if world > 1:
    # Every process starts from rank 0's weights, optimizer state and iteration (as PyTorch's DDP does), so a stale
    # out_dir on another machine cannot make the copies drift apart unnoticed. A sum with zeros is exact.
    from_master = lambda a: mx.distributed.all_sum(a if master else mx.zeros_like(a), group=group)  # noqa: E731
    model.update(tree_map(from_master, model.parameters()))
    opt.state = tree_map(from_master, opt.state)
    # and rank 0's count of iterations too: a resumed max_minutes run has it from rank 0's checkpoint
    start_iter, max_iters, resolved = from_master(mx.array([start_iter, max_iters, budget_resolved])).tolist()
    budget_resolved = bool(resolved)
    mx.eval(model.parameters(), opt.state)
# max_minutes: the run times its first budget_at iterations (the first of them compiles, so it is left out) and an
# eval, then sets max_iters to what fits. Until then it has no end, and the schedule holds at its peak. With wsd,
# each eval before the cooldown sets it again: the peak does not depend on max_iters, so a pace that the first
# minutes misjudged is corrected without changing a rate already used.
budget_pending = max_minutes > 0 and not budget_resolved
retiming = False  # whether an eval times max_minutes again: set by the first timing
budget_at = max(warmup_iters, start_iter + 20)
if budget_pending:
    max_iters = 10 ** 9
lr_decay_iters = settings["lr_decay_iters"] or max_iters
if start_iter >= max_iters:
    sys.exit(f"error: {out_dir} is already at iteration {start_iter}; to train on, raise --max_iters (and "
             f"--lr_decay_iters, or the learning rate schedule restarts its decay)")

# the step: gradients of one micro-batch, then the update. The peak is measured before worker threads split the
# cores between them.
flops_per_iter = model.flops_per_token(max_seq_len) * tokens_per_iter  # the group's, like tokens_per_iter
peak = mx.distributed.all_sum(mx.array(peak_flops or measure_peak_flops(compute_dtype)), group=group).item()
state = [model.state, opt.state]
# outputs=state too: value_and_grad leaves traced copies of the parameters in the model, and compile must hand back
# the real arrays in their place.
compiled = (lambda f: mx.compile(f, inputs=state, outputs=state)) if compile else (lambda f: f)
replicas = []  # the worker threads' models, in the order of their shares of the batch (cpu.Workers makes them so)
if threads > 1:  # on the CPU: each batch split over worker threads, each with its own stream (cpu.py)
    def replica():
        replicas.append(for_training(Model(args)))
        return replicas[-1]
    workers = cpu.Workers(model, replica, loss_fn, threads, compile, cores)
    forward_backward, forward = workers.forward_backward, workers.forward
else:
    loss_and_grad = nn.value_and_grad(model, loss_fn)
    forward_backward = compiled(lambda x, y: loss_and_grad(model, x, y))
    forward = lambda x, y: loss_fn(model, x, y)  # noqa: E731


@compiled
def update(grads):
    if grad_clip > 0:
        grads, grad_norm = optim.clip_grad_norm(grads, grad_clip)
    else:
        grad_norm = mx.sqrt(sum((g * g).sum() for _, g in tree_flatten(grads)))
    opt.update(model, grads)
    return grad_norm


def set_dropout_keys(it, micro):
    # The masks of a micro-step are a pure function of (seed, iteration, micro-batch, process, worker share), like
    # its windows: a resumed run draws the ones an unbroken run would, and no thread touches another's random state.
    for share, m in enumerate(replicas or [model]):
        entropy = np.random.default_rng([seed, it, micro * world + rank, share]).integers(1 << 63)
        m.model._dropout_key = mx.random.key(int(entropy))


def all_mean(x):  # mean over the processes of a scalar; a no-op alone
    return mx.distributed.all_sum(x, group=group) / world if world > 1 else x


def evaluate():
    # Always the same windows (iteration numbers past any run's end), so successive evals differ only because
    # the model did; each process takes its share and the mean is over all of them.
    out = {}
    for name, data in (("train", train_data), ("val", val_data)):
        losses = []
        for k in range(eval_iters):
            losses.append(forward(*get_batch(data, (1 << 40) + k, 0)))
            mx.eval(losses[-1])  # one batch's activations in memory at a time
        out[name] = all_mean(mx.stack(losses).mean()).item()
    return out


def evaluate_whole_val():
    # Every val token once (windows side by side, each predicting its tokens from the ones before it in the
    # window), so the number a run ends with does not depend on which random windows the evals drew.
    windows = (len(val_data) - 1) // max_seq_len
    total, count = mx.array(0.0), 0
    for start in range(rank * batch_size, windows, batch_size * world):  # each process a share of the batches
        n = min(batch_size, windows - start)
        xy = np.stack([val_data[i * max_seq_len:(i + 1) * max_seq_len + 1] for i in range(start, start + n)])
        x, y = mx.array(xy[:, :-1].astype(np.int32)), mx.array(xy[:, 1:].astype(np.int32))
        loss = forward(x, y) if n == batch_size else loss_fn(model, x, y)  # the workers split whole batches
        total, count = total + loss * n, count + n
        mx.eval(total)
    if world > 1:
        total, count = mx.distributed.all_sum(total, group=group), mx.distributed.all_sum(mx.array(count), group=group)
    return (total / count).item(), windows * max_seq_len


# the checkpoint: written as one set (files.py), so a crash at any moment leaves the last one whole -------------
try:  # tokenizer.json and friends, so transformers and mlx-lm load the folder as it is
    hf_files = files.hf_tokenizer_files(tokenizer_path, args.max_seq_len)
except (ValueError, RuntimeError) as e:  # a tokenizer they cannot read or reproduce; ours is still whole
    hf_files = {}
    if master:
        print(f"note: no Hugging Face tokenizer files in {out_dir}/: {e}", file=sys.stderr)


def save_checkpoint(it):
    # config.json names the iteration, and so do the safetensors files' metadata.
    config = {**args.to_config(), "train_settings": settings,
              "train_state": {"iter": it, "best_val_loss": best_val_loss, "seed": seed,
                              "budget_resolved": budget_resolved}}
    meta = {"iter": str(it)}
    weights = dict(tree_flatten(model.parameters()))  # float32, whatever dtype computed with them
    opt_state = dict(tree_flatten(opt.state))

    def safetensors(arrays):
        def write(path):
            with open(path, "wb") as f:  # through Python's file, which reports a full disk as such
                mx.save_safetensors(f, arrays, metadata=meta)
        return write

    def data(blob):
        def write(path):
            with open(path, "wb") as f:
                f.write(blob)
        return write

    writers = {"model.safetensors": safetensors(weights), "optimizer.safetensors": safetensors(opt_state),
               "config.json": data(json.dumps(config, indent=2).encode()),
               "tokenizer.model": lambda path: shutil.copyfile(tokenizer_path, path),
               **{name: data(blob) for name, blob in hf_files.items()}}
    try:
        files.save_checkpoint(out_dir, writers)
    except OSError as e:
        write_failed(e, f"the checkpoint of iteration {it}")


def write_failed(e, what):  # a full disk, say: one line, and what out_dir still holds
    if os.path.exists(os.path.join(out_dir, files.SAVING, files.COMPLETE)):
        kept = f"{out_dir}/ holds iteration {saved_iter} and the whole of a newer one, which a resume finishes"
    elif saved_iter:
        kept = f"{out_dir}/ keeps iteration {saved_iter}; then resume with python train.py --init_from=resume"
    else:
        kept = "no checkpoint was saved yet"
    sys.exit(f"error: {what} could not be written: {files.disk_full_hint(e, out_dir)}; {kept}")


sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
sample_prompt_tokens = [sp.bos_id()] + sp.encode(sample_prompt)


def sample_text(it):  # what the model writes now, decoded as generate.py does; the same text in every run
    mx.random.seed(seed + it)
    tokens = itertools.takewhile(lambda t: t != sp.eos_id(), generate(model, sample_prompt_tokens))
    return sample_prompt + "".join(stream_text(sp, sample_prompt_tokens, itertools.islice(tokens, sample_tokens)))


def iterations_that_fit(done, per_iter, per_eval, per_batch):
    """max_iters for max_minutes: the steps at the pace timed so far, an eval every eval_interval and one at the end
    (each as long as the one just timed), and the whole-val pass (its batches at that eval's pace)."""
    final_pass = per_batch * math.ceil((len(val_data) - 1) // max_seq_len / (batch_size * world))
    left = max_minutes * 60 - (time.perf_counter() - started) - final_pass

    def seconds(k):  # the rest of the run if it trains k more iterations
        evals = (done + k) // eval_interval - done // eval_interval + ((done + k) % eval_interval > 0)
        return k * per_iter + evals * per_eval
    k = max(0, int(left / (per_iter + per_eval / eval_interval)))
    while k > 1 and seconds(k) > left:
        k -= 1
    return done + max(1, k)  # one more at least: the run then ends with an eval, saving the count it found


def log(record, line):
    print(line, flush=True)
    try:
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
    except OSError as e:
        write_failed(e, log_path)


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


def stopping():
    # Ctrl-C reaches each process at a different point of its step; they stop together at the first iteration where
    # any of them has seen it, or one would evaluate while another trains, and hang.
    return bool(all_mean(mx.array(float(len(stop)))).item()) if world > 1 else bool(stop)


def log_records(path, until=None):
    """log.jsonl's records (up to iteration `until`), less a last line that a kill cut short, and the byte offset
    where the kept ones end."""
    records, end = [], 0
    with open(path, "rb") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                break
            if until is not None and record["iter"] > until:
                break
            records.append(record)
            end += len(line)
    return records, end


saved_iter = start_iter
if master:
    os.makedirs(out_dir, exist_ok=True)
    log_path = os.path.join(out_dir, "log.jsonl")
    if init_from == "resume" and os.path.exists(log_path):  # forget what was logged after the checkpoint
        os.truncate(log_path, log_records(log_path, until=start_iter)[1])  # in place: a full disk cannot stop it
    log_file = open(log_path, "a" if init_from == "resume" else "w")
    print(f"model: {model.num_params() / 1e6:.2f}M parameters, {args.n_layers} layers, dim {args.dim}, "
          f"{args.n_heads} heads ({args.n_kv_heads} kv), vocab {args.vocab_size}, {compute_dtype}, "
          f"{mx.default_device()}" + (f", {threads} threads" if threads > 1 else ""))
    print(f"data: {data_path}: {len(train_data):,} train, {len(val_data):,} val tokens")
    end = f"what fits in max_minutes={max_minutes:g}, timed by iteration {budget_at}" if budget_pending else max_iters
    print(f"global batch: {batch_size} x {gradient_accumulation_steps} accumulation x {world} processes x "
          f"{max_seq_len} tokens = {tokens_per_iter:,} tokens/iter; iterations {start_iter} -> {end}")

t_last, it_last = time.perf_counter(), start_iter
train_seconds, timed_iters = 0.0, 0  # the steps of this process after its first, for max_minutes
it = start_iter
while it < max_iters:  # max_minutes may move max_iters
    t_step = time.perf_counter()
    lr = get_lr(it)
    opt.learning_rate = lr  # every sub-optimizer's; then Muon's, the same schedule from its own peak
    if optimizer == "muon":
        opt.optimizers[0].learning_rate = muon_learning_rate * lr / learning_rate
    loss, grads = mx.array(0.0), None
    for micro in range(gradient_accumulation_steps):
        if dropout:
            set_dropout_keys(it, micro)
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
    loss = all_mean(loss)
    mx.eval(state, loss, grad_norm)
    loss, done, stop_now = loss.item(), it + 1, stopping()
    check_finite(loss, done)
    if it > start_iter:  # the first step compiles
        train_seconds, timed_iters = train_seconds + time.perf_counter() - t_step, timed_iters + 1
    if master and (done % log_interval == 0 or done == max_iters):
        now = time.perf_counter()
        dt = (now - t_last) / (done - it_last)  # the first interval includes compiling the step
        t_last, it_last = now, done
        tps = tokens_per_iter / dt
        mfu = flops_per_iter / dt / peak
        mem = mx.get_peak_memory() / 1e9
        total, eta = ("?", "?") if budget_pending else (max_iters, f"{(max_iters - done) * dt / 60:.1f}")
        log({"iter": done, "loss": loss, "lr": lr, "grad_norm": grad_norm.item(), "tokens_per_sec": tps,
             "mfu": mfu, "peak_mem_gb": mem},
            f"iter {done}/{total}: loss {loss:.4f}, lr {lr:.2e}, {dt * 1000:.0f} ms/iter, {tps:,.0f} tok/s, "
            f"mfu {mfu:.1%}, peak mem {mem:.2f} GB, {eta} min left")
    if done % eval_interval == 0 or done == max_iters or stop_now or (budget_pending and done == budget_at):
        t_eval = time.perf_counter()
        for m in [model, *replicas]:
            m.eval()  # dropout off: evals, samples and the whole-val pass see the whole model
        losses = evaluate()
        eval_batch_seconds = (time.perf_counter() - t_eval) / (2 * eval_iters)
        check_finite(losses["val"], done)  # the update may have broken the model: never save that
        best_val_loss = min(best_val_loss, losses["val"])
        if master:
            bpb = bits_per_byte(losses["val"])
            log({"iter": done, "train_loss": losses["train"], "val_loss": losses["val"],
                 "val_ppl": math.exp(losses["val"]), "val_bpb": bpb},
                f"eval {done}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                f"val ppl {math.exp(losses['val']):.2f}, val {bpb:.3f} bits/byte")
            if sample_tokens:
                text = sample_text(done)
                log({"iter": done, "sample": text}, f"sample {done}: {text}")
            save_checkpoint(done)
            saved_iter = done
            print(f"saved {out_dir}/ (iteration {done})")
            try:  # the run so far, for a browser tab; nothing to stop training for
                files.write_atomic(os.path.join(out_dir, "loss.svg"),
                                   plot.loss_svg(log_records(log_path)[0], tokens_per_iter, dataset).encode())
            except OSError as e:
                print(f"note: no loss.svg: {files.disk_full_hint(e, out_dir)}", file=sys.stderr)
        if budget_pending and done == budget_at or retiming and done < cooldown_start():
            per_iter, per_eval = train_seconds / timed_iters, time.perf_counter() - t_eval
            fit = iterations_that_fit(done, per_iter, per_eval, eval_batch_seconds)
            if world > 1:
                fit = from_master(mx.array(fit)).item()  # rank 0's clock decides for all
            if retiming:
                fit = max(fit, math.ceil(done / (1 - cooldown_frac)))  # not so few that the cooldown began already
            if master and fit != max_iters:
                log({"iter": done, "max_iters": fit, "sec_per_iter": per_iter, "sec_per_eval": per_eval},
                    f"max_minutes={max_minutes:g}: {fit:,} iterations fit; training until then")
            max_iters = settings["max_iters"] = fit  # saved from now on; a resumed run keeps it
            lr_decay_iters = settings["lr_decay_iters"] or max_iters
            budget_pending, budget_resolved = False, True
            retiming = lr_schedule == "wsd" and not settings["lr_decay_iters"] and cooldown_frac < 1
        if done == max_iters:
            val_full, n_full = evaluate_whole_val()
            if master:
                bpb = bits_per_byte(val_full)
                log({"iter": done, "val_loss_full": val_full, "val_bpb_full": bpb, "val_tokens_full": n_full},
                    f"final: the whole val split ({n_full:,} tokens): val loss {val_full:.4f}, {bpb:.3f} bits/byte")
        for m in [model, *replicas]:
            m.train()
        t_last, it_last = time.perf_counter(), done  # evaluation time is not training time
    if stop_now:
        if master:
            print(f"interrupted: resume with python train.py --init_from=resume (plus the same settings)")
        all_mean(mx.array(0.0)).item()  # wait for rank 0's save: mlx.launch kills all once one exits non-zero
        sys.exit(130)
    it = done
