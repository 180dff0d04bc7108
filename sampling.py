"""
Decoding, shared by generate.py and train.py's samples: the next token from the logits, the
KV-cache loop that makes a sample, and the text it prints as.

    tokens = generate(model, prompt_tokens, 100, stop=sp.eos_id(), temperature=0.7, top_k=50)
    for piece in stream_text(sp, prompt_tokens, tokens):
        print(piece, end="", flush=True)
"""
import math

import mlx.core as mx


def sample(logits, recent=None, temperature=0.8, top_k=0, top_p=1.0, min_p=0.0,
           repetition_penalty=1.0):
    """The next token id (a scalar mx.array, not yet computed) from `logits` (vocab,), all on the
    device. temperature 0 is greedy; top_k keeps the k likeliest tokens (0: all), top_p the fewest
    whose probability reaches p, min_p those at least min_p times as likely as the likeliest;
    repetition_penalty > 1 makes the `recent` ids (an mx.array) less likely. mx.random.seed makes
    a sample repeatable."""
    # a bfloat16 softmax over a big vocabulary loses its tail, and top_p with it
    logits = logits.astype(mx.float32)
    if repetition_penalty != 1.0 and recent is not None and recent.size:
        # CTRL's rule, as mlx-lm applies it, into a new array (a token seen twice: the same value)
        picked = logits[recent]
        picked = mx.where(picked > 0, picked / repetition_penalty, picked * repetition_penalty)
        logits = mx.put_along_axis(logits, recent, picked, axis=0)
    if temperature == 0:
        return mx.argmax(logits)
    if min_p > 0:
        # p / p_max >= min_p, before temperature (as mlx-lm and llama.cpp): a high temperature
        # then flattens the tokens kept without letting the long tail in
        logits = mx.where(logits < logits.max() + math.log(min_p), -mx.inf, logits)
    logits = logits / temperature
    if top_k:
        kth = mx.sort(logits)[-min(top_k, logits.size)]
        logits = mx.where(logits < kth, -mx.inf, logits)
    if top_p < 1.0:
        order = mx.argsort(-logits)
        probs = mx.softmax(logits[order])
        drop = mx.cumsum(probs) - probs >= top_p
        logits = mx.put_along_axis(logits, order, mx.where(drop, -mx.inf, logits[order]), axis=0)
    return mx.random.categorical(logits)


def generate(model, tokens, max_tokens=None, stop=None, cache=None, repetition_context=20,
             **sampling):
    """Yield up to max_tokens (None: no end) new ids after `tokens`, ending before `stop` (EOS);
    `sampling` goes to sample(). The prompt is one pass into the KV cache, then a step a token,
    queued before the one before it is read (as mlx-lm's generate_step). A full context restarts
    from its last half (RoPE has baked positions into the cache). Given a `cache` that holds a
    conversation, `tokens` continue it, the sample ends where it is full, and on return it holds
    `tokens` and the ids yielded (not `stop`, nor the step queued after it)."""
    max_seq_len = model.args.max_seq_len
    context = list(tokens)  # any iterable of ids
    end = len(context) + (max_tokens if max_tokens is not None else math.inf)
    penalize = sampling.get("repetition_penalty", 1.0) != 1.0
    fresh, before = cache is None, cache[0].offset if cache else 0
    last = slice(-repetition_context or None, None)  # the ids repetition_penalty sees (0: all)
    try:
        while len(context) < end:
            full = fresh and len(context) >= max_seq_len  # a new cache then takes the last half
            window = context[-max(1, max_seq_len // 2):] if full else context
            cache = model.make_cache() if fresh else cache
            recent = mx.array(context[last]) if penalize else None
            token = sample(model(mx.array([window]), cache)[0, -1], recent, **sampling)
            while True:
                room = cache[0].offset + 1 < max_seq_len and len(context) + 1 < end
                if room:  # step n + 1, queued before token n is read
                    recent = mx.concatenate([recent, token[None]])[last] if penalize else None
                    queued = sample(model(token.reshape(1, 1), cache)[0, -1], recent, **sampling)
                    mx.async_eval(queued)
                if token.item() == stop:
                    return
                context.append(token.item())
                yield context[-1]
                if not room:
                    break
                token = queued
            if not fresh:
                return
    finally:
        held = before + len(context)  # what the cache holds on return, if it was given
        if not fresh and cache[0].offset < held:
            model(mx.array([context[-1:]]), cache)  # the last id, which no step fed
        for layer in cache if not fresh else []:  # a queued step's entry is overwritten later
            layer.offset = held


def stream_text(sp, prompt_tokens, tokens):
    """Yield the text of `tokens` after `prompt_tokens` in pieces once printable: decoded with the
    prompt and cut where its text ends (Llama 2's tokenizer would drop a space between them), a
    trailing U+FFFD (a character split over byte-fallback tokens) held for its last byte."""
    prompt_tokens = list(prompt_tokens)
    start = len(sp.decode(prompt_tokens))  # BOS and EOS decode to nothing
    new, shown = [], 0
    for token in tokens:
        new.append(token)
        text = sp.decode(prompt_tokens + new)[start:]
        if len(text) > shown and not text.endswith("\ufffd"):
            yield text[shown:]
            shown = len(text)
    text = sp.decode(prompt_tokens + new)[start:]
    if len(text) > shown:
        yield text[shown:]  # whatever was held back, complete or not
