# WikiText-103 (540 MB of Wikipedia articles): a wider model, a longer context, a bigger vocabulary.
#     python prepare.py --dataset=wikitext103          # an 8192-piece vocabulary, its default
#     python train.py config/wikitext103.py
# ~120M train tokens; 20,000 iterations of 32 x 512 = 330M tokens, about 2.7 passes. A Mac job.
dataset = "wikitext103"
out_dir = "out-wikitext103"
dim = 384
n_layers = 8
n_heads = 6
n_kv_heads = 2
max_seq_len = 512
batch_size = 32
max_iters = 20000
learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 1000
eval_interval = 1000
eval_iters = 20
