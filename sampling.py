"""
Decoding: how the next token is picked from the logits, the KV-cache loop that produces a sample,
and the text it prints as. Shared by generate.py and train.py's samples at eval, so both decode the
same way.

    tokens = generate(model, prompt_tokens, 100, stop=sp.eos_id(), temperature=0.7, top_k=50)
    for piece in stream_text(sp, prompt_tokens, tokens):
        print(piece, end="", flush=True)
"""
import math

import mlx.core as mx


def sample(logits, recent=None, temperature=0.8, top_k=0, top_p=1.0, min_p=0.0,
           repetition_penalty=1.0):
    """The next token id (a scalar mx.array, not yet computed) from `logits` (vocab,); `recent`
    (an mx.array of ids) is what repetition_penalty looks at.

    temperature 0 is greedy. top_k keeps the k most likely tokens (0 keeps all); top_p the smallest
    set whose probability reaches p (1 keeps all); min_p the tokens at least min_p times as likely
    as the most likely one (0 keeps all). repetition_penalty > 1 makes the `recent` tokens less
    likely. Random draws come from MLX's global generator: mx.random.seed makes a sample
    repeatable. Everything here runs on the device: nothing waits for Python.
    """
    if repetition_penalty != 1.0 and recent is not None and recent.size:
        # CTRL's rule, as mlx-lm applies it. A token seen twice is written twice, the same value.
        picked = logits[recent]
        picked = mx.where(picked > 0, picked / repetition_penalty, picked * repetition_penalty)
        # a new array: the caller's logits stay as they are
        logits = mx.put_along_axis(logits, recent, picked, axis=0)
    if temperature == 0:
        return mx.argmax(logits)
    if min_p > 0:
        # Measured before temperature, as mlx-lm and llama.cpp do: a high temperature then flattens
        # the tokens that are kept without letting the long tail in, which is what min_p is for.
        # p / p_max >= min_p, in logits:
        logits = mx.where(logits < logits.max() + math.log(min_p), -mx.inf, logits)
    logits = logits / temperature
    if top_k:
        kth = mx.sort(logits)[-min(top_k, logits.size)]
        logits = mx.where(logits < kth, -mx.inf, logits)
    if top_p < 1.0:
        order = mx.argsort(-logits)
        probs = mx.softmax(logits[order])
        # tokens past the nucleus; the first one always stays
        drop = mx.cumsum(probs) - probs >= top_p
        logits = mx.put_along_axis(logits, order, mx.where(drop, -mx.inf, logits[order]), axis=0)
    return mx.random.categorical(logits)


def generate(model, tokens, max_tokens=None, stop=None, cache=None, repetition_context=20,
             **sampling):
    """Yield up to max_tokens (None: no end) new token ids after `tokens`, ending before the token
    `stop` (EOS, say); repetition_penalty (in `sampling`, which goes to sample()) looks at the last
    repetition_context ids (0: all).

    The prompt is one forward pass into the KV cache, then each token one step, queued before the
    token before it is read (as mlx-lm's generate_step), so the device never waits for Python.
    When the context is full it restarts from its last half: the cache holds positions
    0..max_seq_len-1 with RoPE baked in, so sliding it by one token would mean recomputing the
    whole window for every new token. Given a `cache` (model.make_cache()) that already holds a
    conversation, `tokens` continue it, the sample ends where the cache is full, and on return the
    cache holds `tokens` and the ids yielded (not the stop token, nor the step queued after it).
    """
    max_seq_len = model.args.max_seq_len
    context = list(tokens)  # any iterable of ids
    end = len(context) + (max_tokens if max_tokens is not None else math.inf)
    penalize = sampling.get("repetition_penalty", 1.0) != 1.0
    fresh, before = cache is None, cache[0].offset if cache else 0

    def last(ids):  # what repetition_penalty looks at
        return ids[-repetition_context:] if repetition_context else ids

    try:
        while len(context) < end:
            window = context
            if fresh:  # a new cache: the context, or its last half once it is full
                window = context[-max(1, max_seq_len // 2):] if len(context) >= max_seq_len \
                    else context
                cache = model.make_cache()
            recent = mx.array(last(context)) if penalize else None
            token = sample(model(mx.array([window]), cache)[0, -1], recent, **sampling)
            while True:
                room = cache[0].offset + 1 < max_seq_len and len(context) + 1 < end
                if room:  # step n + 1, queued before token n is read
                    recent = last(mx.concatenate([recent, token[None]])) if penalize else None
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
    """Yield the text of `tokens`, the continuation of `prompt_tokens`, in pieces as soon as they
    are printable.

    The sample is decoded together with the prompt each time and cut where the prompt's text ends:
    a tokenizer that puts a space in front of a text (Llama 2's) would lose the space between them
    if the sample were decoded alone, and decoding the whole keeps SentencePiece's spaces right. A
    character split over byte-fallback tokens decodes as U+FFFD until its last byte arrives, so a
    trailing U+FFFD is held back until then.
    """
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
