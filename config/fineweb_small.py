# FineWeb-Edu in minutes on 2 CPU cores: the default run's shape (dim 256, 4 layers, 8 heads, 128
# context) on one shard of educational web text, for a first look at the data and the recipe.
#     python prepare.py --dataset=fineweb-edu --shards=1 --val_docs=512
#     python train.py config/fineweb_small.py
# The 32,768-piece vocabulary (prepare's default for fineweb-edu) is most of this model: 11.6M
# parameters, 8.4M of them the embedding, and 2.6x the default run's FLOPs a token. An ESTIMATE
# (not run on the real shards): ~2,500 tok/s on 2 cores of an AVX-512 EPYC (the default run's
# 6,740 at the same MFU), so 5 minutes train ~0.75M tokens, about 1% of the shard; --val_docs=512
# (~0.6M tokens) keeps train.py's final whole-val pass to a minute or two, where a whole val shard
# (~60M) would take hours.
dataset = "fineweb-edu"
out_dir = "out-fineweb-small"
dim = 256
n_layers = 4
n_heads = 8
max_seq_len = 128
batch_size = 16
max_minutes = 5.0
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 50
eval_interval = 100
