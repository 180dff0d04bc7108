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


def sample(logits, context, temperature=0.8, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
           repetition_context=20):
    """The next token id (a scalar mx.array) from `logits` (vocab,); `context` is the list of token
    ids so far.

    temperature 0 is greedy. top_k keeps the k most likely tokens (0 keeps all); top_p the smallest
    set whose probability reaches p (1 keeps all); min_p the tokens at least min_p times as likely
    as the most likely one (0 keeps all). repetition_penalty > 1 makes the last repetition_context
    tokens of the context (0: all of it) less likely. Random draws come from MLX's global
    generator: mx.random.seed makes a sample repeatable.
    """
    if repetition_penalty != 1.0 and context:
        # CTRL's rule, as mlx-lm applies it: only recent tokens, so a long prompt does not rule out
        # its whole vocabulary (every "the", every space) for the rest of the sample.
        recent = context[-repetition_context:] if repetition_context else context
        seen = mx.array(sorted(set(recent)))
        picked = logits[seen]
        picked = mx.where(picked > 0, picked / repetition_penalty, picked * repetition_penalty)
        # a new array: the caller's logits stay as they are
        logits = mx.put_along_axis(logits, seen, picked, axis=0)
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


def generate(model, tokens, max_tokens=None, stop=None, **sampling):
    """Yield up to max_tokens (None: no end) new token ids after `tokens`, ending before the token
    `stop` (EOS, say); `sampling` goes to sample().

    The prompt is one forward pass into the KV cache, then each token one step. When the context is
    full it restarts from its last half: the cache holds positions 0..max_seq_len-1 with RoPE baked
    in, so sliding it by one token would mean recomputing the whole window for every new token.
    """
    max_seq_len = model.args.max_seq_len
    context = list(tokens)  # any iterable of ids, as before max_tokens and stop came in
    end = len(context) + (max_tokens if max_tokens is not None else math.inf)
    while True:
        window = context[-max(1, max_seq_len // 2):] if len(context) >= max_seq_len else context
        cache = model.make_cache()
        logits = model(mx.array([window]), cache)[0, -1]
        while cache[0].offset < max_seq_len:
            if len(context) >= end:
                return
            token = sample(logits, context, **sampling)
            logits = model(token.reshape(1, 1), cache)[0, -1]
            mx.async_eval(logits)  # compute the next step while Python hands this token out
            context.append(token.item())
            if context[-1] == stop:
                return
            yield context[-1]


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
