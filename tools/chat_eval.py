"""
How well does a checkpoint answer? For each held-out conversation of a chat token file (prepare.py
--dataset=pystdlib-chat writes one), its first question is put to the model greedily, as generate.py
--chat would: prints the share of replies that end with EOS within max_new_tokens, the share that
are exactly the held-out reply, and the first few exchanges. Not a test: a minute or so a folder.

    python tools/chat_eval.py --out_dir=out-chat
    python tools/chat_eval.py --out_dir=out --limit=100     # the base, before fine-tuning
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import load_model  # first: model.py loads cpu.py, which must come before mlx.core
import cpu
import files

from configurator import configure
from sampling import generate

# -----------------------------------------------------------------------------
out_dir = "out-chat"  # the checkpoint folder to ask
data = "data/pystdlib-chat/val.bin"  # the held-out conversations (a chat token file)
limit = 300  # how many conversations, from the first; 0: all
max_new_tokens = 100
show = 3  # how many exchanges to print
# -----------------------------------------------------------------------------
configure(globals())
model, _ = load_model(out_dir)
sp = files.read_tokenizer(out_dir)
tokens, info = files.read_tokens(data, os.path.join(out_dir, "tokenizer.model"))
if info["mask"] is None:
    sys.exit(f"error: {data} holds text, not conversations; prepare a chat set first")
cpu.set_blas_threads(1)  # decoding is matrix-vector work, as in generate.py
starts = [*(int(i) for i in (info["mask"] & files.START).nonzero()[0]), len(tokens)]
pairs = list(zip(starts, starts[1:]))[:limit or None]
ended, exact, t0 = 0, 0, time.time()
for k, (a, b) in enumerate(pairs):
    ids, mask = tokens[a:b].tolist(), info["mask"][a:b]
    first_reply = next(i for i in range(len(ids)) if mask[i] & files.LOSS)
    prompt = ids[:first_reply]  # BOS, [INST] the question [/INST]
    reply_end = next(i for i in range(first_reply, len(ids)) if ids[i] == sp.eos_id())
    out = list(generate(model, prompt, max_new_tokens, sp.eos_id(), temperature=0))
    ended += len(out) < max_new_tokens  # it stopped at EOS
    exact += out == ids[first_reply:reply_end]
    if k < show:
        print(f"Q: {sp.decode(prompt)}\nA: {sp.decode(out).strip()}\n"
              f"held-out A: {sp.decode(ids[first_reply:reply_end]).strip()}\n")
n = len(pairs)
print(f"{out_dir}: {ended}/{n} replies ({ended / n:.0%}) end with EOS within {max_new_tokens} "
      f"tokens; {exact}/{n} ({exact / n:.0%}) are the held-out reply exactly; "
      f"{time.time() - t0:.0f} s")
