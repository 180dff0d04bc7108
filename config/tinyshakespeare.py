# Shakespeare, nanoGPT's classic (1.1 MB). Prepare with a small vocabulary, since 1 MB is too little text for 4096:
#     python prepare.py --dataset=tinyshakespeare --vocab_size=1024
#     python train.py config/tinyshakespeare.py
# ~330k train tokens; 600 iterations see each about 4 times, and without dropout (LLaMA's default; --dropout=0.1
# adds some) val loss turns up after that: keep max_iters near here or add data. Numbers: README, "Presets".
dataset = "tinyshakespeare"
out_dir = "out-shakespeare"
dim = 192
n_layers = 4
n_heads = 6
max_seq_len = 128
batch_size = 16
max_iters = 600
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 50
eval_interval = 100
