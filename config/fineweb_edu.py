# FineWeb-Edu at the origin's shape: build-nanogpt's GPT-2 small as a LLaMA (dim 768, 12 layers, 12
# heads, 1,024 context): 110.1M parameters with the 32,768-piece vocabulary and tied embeddings
# (135.3M untied; 85.0M without the embedding), trained as build-nanogpt trains: 2^19 = 524,288
# tokens a step (16 x 1,024 x 32 micro-steps), 19,073 steps = 10B tokens, AdamW 6e-4 with 715
# warmup steps and a cosine decay to 6e-5.
#     python prepare.py --dataset=fineweb-edu --shards=170   # ~17 GB of parquet, ~10B tokens
#     python train.py config/fineweb_edu.py
# ~60M tokens a shard is an estimate (250M characters at ~4.2 bytes a token); prepare prints the
# real count: take enough shards for max_iters x 524,288 tokens.
# What to expect on a Mac, an ESTIMATE (not run anywhere): 7.7e8 FLOPs a token (6 x parameters +
# attention, model.flops_per_token) x 524,288 = 4.1e14 a step, ~81 s at an effective 5 TFLOP/s (an
# M-series Pro GPU at a third of its bfloat16 peak, docs/benchmarks.md's assumption): 10B tokens
# take ~18 days on a Pro, ~9 on a Max, plus 4-16% for grad_checkpoint (measured on the CPU
# presets). Memory, by docs/benchmarks.md's formula: ~15 GB in float32 (M1/M2), ~9 GB in
# bfloat16 (M3 and later); --grad_checkpoint=False is faster where ~40 / ~22 GB fit.
# --max_minutes=1440 trains what fits in a day (~1,000 steps on a Pro, 0.5B tokens).
dataset = "fineweb-edu"
out_dir = "out-fineweb-edu"
dim = 768
n_layers = 12
n_heads = 12
max_seq_len = 1024
batch_size = 16
gradient_accumulation_steps = 32
grad_checkpoint = True
max_iters = 19073
lr_schedule = "cosine"
learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 715
weight_decay = 0.1
eval_interval = 250
eval_iters = 20
