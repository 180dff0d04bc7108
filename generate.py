"""
Sample text from a checkpoint folder written by train.py (or any llama folder with a tokenizer.model).

Reads out_dir/{config.json,model.safetensors,tokenizer.model}; prints the samples as they are produced.

    python generate.py --prompt="def fibonacci(n):" --max_new_tokens=200 --temperature=0.7
    python generate.py --prompt=FILE:prompt.txt --num_samples=3 --top_k=50
"""
import os
import sys
import time

from model import load_model  # first: model.py loads cpu.py, which must come before mlx.core
import mlx.core as mx
import sentencepiece as spm

from configurator import configure

# -----------------------------------------------------------------------------
out_dir = "out"  # the checkpoint folder
prompt = ""  # the text to continue; FILE:path reads it from a file; empty starts a new document
num_samples = 2
max_new_tokens = 300
temperature = 0.8  # 0 means greedy: always the most likely token
top_k = 0  # keep only the k most likely tokens; 0 keeps all
top_p = 0.95  # keep the smallest set of tokens whose probability reaches p (nucleus sampling); 1 keeps all
repetition_penalty = 1.0  # > 1 makes tokens already in the context less likely (CTRL's rule); 1 is off
seed = 1337
# -----------------------------------------------------------------------------
configure(globals(), echo=sys.stderr)
if prompt.startswith("FILE:"):
    if not os.path.isfile(prompt[5:]):
        sys.exit(f"error: prompt file {prompt[5:]!r} not found")
    with open(prompt[5:], encoding="utf-8") as f:
        prompt = f.read()
for name, ok in (("temperature", temperature >= 0), ("top_k", top_k >= 0), ("top_p", 0 < top_p <= 1),
                 ("repetition_penalty", repetition_penalty > 0), ("max_new_tokens", max_new_tokens > 0)):
    if not ok:
        sys.exit(f"error: {name}={globals()[name]} is out of range (see python generate.py --help)")

model, config = load_model(out_dir)
tokenizer_path = os.path.join(out_dir, "tokenizer.model")
if not os.path.isfile(tokenizer_path):
    sys.exit(f"error: {out_dir!r} has no tokenizer.model; copy in the one the model was trained with")
sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
max_seq_len = model.args.max_seq_len
mx.random.seed(seed)


def sample(logits, context):  # logits: (vocab,) -> the next token id
    if repetition_penalty != 1.0:
        seen = mx.array(sorted(set(context)))
        picked = logits[seen]
        logits[seen] = mx.where(picked > 0, picked / repetition_penalty, picked * repetition_penalty)
    if temperature == 0:
        return mx.argmax(logits)
    logits = logits / temperature
    if top_k:
        kth = mx.sort(logits)[-min(top_k, logits.size)]
        logits = mx.where(logits < kth, -mx.inf, logits)
    if top_p < 1.0:
        order = mx.argsort(-logits)
        probs = mx.softmax(logits[order])
        drop = mx.cumsum(probs) - probs >= top_p  # tokens past the nucleus; the first one always stays
        logits[order] = mx.where(drop, -mx.inf, logits[order])
    return mx.random.categorical(logits)


def generate(tokens):
    """Yield new token ids, using the KV cache; when the context is full, restart it from its last half."""
    context = list(tokens)
    while True:
        window = context[-(max_seq_len // 2):] if len(context) >= max_seq_len else context
        cache = model.make_cache()
        logits = model(mx.array([window]), cache)[0, -1]
        while cache[0].offset < max_seq_len:
            token = sample(logits, context)
            logits = model(token.reshape(1, 1), cache)[0, -1]
            mx.async_eval(logits)  # compute the next step while Python hands this token out
            context.append(token.item())
            yield context[-1]


prompt_tokens = [sp.bos_id()] + sp.encode(prompt)
if len(prompt_tokens) >= max_seq_len:
    print(f"note: the prompt has {len(prompt_tokens)} tokens, more than the model's context of {max_seq_len}; "
          f"the model sees its last {max_seq_len // 2}", file=sys.stderr)
# The sample is decoded together with the prompt, then printed from where the prompt ends: a tokenizer that puts a
# space in front of a text (Llama 2's) would otherwise lose the space between them.
prompt_text = sp.decode(prompt_tokens[1:])


def continuation(new):
    return sp.decode(prompt_tokens[1:] + new)[len(prompt_text):]


for i in range(num_samples):
    new, shown, t0 = [], 0, time.perf_counter()
    sys.stdout.write(prompt)
    for token in generate(prompt_tokens):
        if token == sp.eos_id() or len(new) == max_new_tokens:
            break
        new.append(token)
        if len(new) == 1:
            t_first = time.perf_counter()
        # Decoding the whole sample each time keeps SentencePiece's spaces right; an incomplete UTF-8 character
        # (byte fallback) decodes as U+FFFD and waits for its remaining bytes.
        text = continuation(new)
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[shown:])
            sys.stdout.flush()
            shown = len(text)
    sys.stdout.write(continuation(new)[shown:] + "\n")
    elapsed = time.perf_counter() - t0
    if new:
        rate = (len(new) - 1) / max(time.perf_counter() - t_first, 1e-9)
        print(f"[{len(new)} tokens in {elapsed:.2f} s: prompt {len(prompt_tokens)} tokens in "
              f"{t_first - t0:.3f} s, then {rate:.1f} tokens/s]", file=sys.stderr)
    if i < num_samples - 1:
        print("-" * 60)
