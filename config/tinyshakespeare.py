# Shakespeare, nanoGPT's classic (1.1 MB, a 1024-piece vocabulary), in 10 minutes on 2 CPU cores:
#     python prepare.py --dataset=tinyshakespeare
#     python train.py config/tinyshakespeare.py
# ~420k train tokens, which the budget goes through ~15 times on 2 cores of an AVX-512 CPU: the
# model overfits, so dropout 0.2, a strong weight decay (AdamW's, 1.0) and a long cooldown pay.
# Expect ~2.06 bits per byte on the whole val split; where the budget fits far fewer epochs (~6, an
# AVX2-only CPU), try --dropout=0.1 --weight_decay=0.1. A 2-minute look: --max_minutes=2. The
# levers: docs/quality.md.
dataset = "tinyshakespeare"
out_dir = "out-shakespeare"
dim = 192
n_layers = 4
n_heads = 6
max_seq_len = 128
batch_size = 16
max_minutes = 9.5  # prepare takes seconds: the whole recipe stays within 10 minutes
lr_schedule = "wsd"
cooldown_frac = 0.6  # the last 60% decays: at the peak rate, val is noise
dropout = 0.2
weight_decay = 1.0
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 50
eval_interval = 250
