# Shakespeare, nanoGPT's classic (1.1 MB, a 1024-piece vocabulary), in 10 minutes on 2 CPU cores:
#     python prepare.py --dataset=tinyshakespeare
#     python train.py config/tinyshakespeare.py
# ~420k train tokens: the budget trains ~6-8 epochs on 2 cores, where dropout 0.1 is about right;
# a faster machine or a longer budget fits more epochs, and then --dropout=0.2 pays. A 2-minute
# look: --max_minutes=2. What to expect, and the levers measured: docs/quality.md.
dataset = "tinyshakespeare"
out_dir = "out-shakespeare"
dim = 192
n_layers = 4
n_heads = 6
max_seq_len = 128
batch_size = 16
max_minutes = 9.5  # prepare takes seconds: the whole recipe stays within 10 minutes
lr_schedule = "wsd"
dropout = 0.1
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 50
eval_interval = 250
