# Teach the default run (out/) to answer: a full fine-tune on questions and answers about the Python
# standard library it was trained on, the loss on the replies only. Minutes on 2 CPU cores:
#     python prepare.py --dataset=pystdlib-chat
#     python train.py config/chat.py
#     python generate.py --out_dir=out-chat --chat=True
# The base's weights with a fresh optimizer and schedule; the shape and tokenizer are the base's.
init_from = "out"
dataset = "pystdlib-chat"
out_dir = "out-chat"
max_iters = 300
learning_rate = 5e-4  # a quarter of the base's peak: the base's knowledge is what it answers from
min_lr = 5e-5
warmup_iters = 20
eval_interval = 100
sample_prompt = "What does `json.dumps` do?"
sample_tokens = 60
