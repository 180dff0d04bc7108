# TinyStories (2.2 GB of short stories by GPT-4): llama2.c's stories15M shape, which writes readable
# stories.
#     python prepare.py --dataset=tinystories          # a 4096-piece vocabulary, its default
#     python train.py config/tinystories.py
# ~470M train tokens; 20,000 iterations of 64 x 256 = 330M tokens, under one pass. A Mac (M-series,
# Metal, bfloat16) is the machine for this; on 2 CPU cores it takes days.
dataset = "tinystories"
out_dir = "out-tinystories"
dim = 288
n_layers = 6
n_heads = 6
max_seq_len = 256
batch_size = 64
max_iters = 20000
learning_rate = 5e-4
min_lr = 5e-5
warmup_iters = 1000
eval_interval = 1000
eval_iters = 20
