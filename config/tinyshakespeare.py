# Shakespeare, nanoGPT's classic (1.1 MB), in 10 minutes on 2 CPU cores. prepare.py gives it a 1024-piece
# vocabulary (1 MB is too little text for 4096):
#     python prepare.py --dataset=tinyshakespeare
#     python train.py config/tinyshakespeare.py
# ~420k train tokens. On 2 cores of a Zen 3 the budget is ~1,400 iterations (7 epochs), where dropout 0.1 and none
# end alike and 0.2 worse; where it reaches ~3,300 (16 epochs: a faster machine, a longer budget) the model
# overfits: --dropout=0.2 paid there. A 2-minute look: --max_minutes=2.
# Measured: README, "Quality per minute".
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
