"""
Sample text from a checkpoint folder written by train.py (or any llama folder with a
tokenizer.model).

Reads out_dir/{config.json,model.safetensors,tokenizer.model}; prints the samples as they are
produced. With --interactive=True it reads prompts from stdin instead, one a line, and prints one
sample for each, until an empty line or the end of the input (Ctrl-D). With --chat=True (a model
fine-tuned on conversations: train.py config/chat.py) each line is a user turn of one conversation,
and the model's reply follows it.

    python generate.py --prompt="def fibonacci(n):" --max_new_tokens=200 --temperature=0.7
    python generate.py --prompt=FILE:prompt.txt --num_samples=3 --top_k=50
    printf 'the cat\nthe dog\n' | python generate.py --interactive=True --temperature=0
    python generate.py --out_dir=out-chat --chat=True --system="Answer in one sentence."
    python generate.py --attention=attn.svg --prompt="def fibonacci(n):"   # where each token looks
"""
import os
import sys
import time

from model import load_model  # first: model.py loads cpu.py, which must come before mlx.core
import chat as chat_format
import cpu
import files
import plot
import mlx.core as mx

from configurator import check, configure
from sampling import generate, stream_text

# -----------------------------------------------------------------------------
out_dir = "out"  # the checkpoint folder
prompt = ""  # the text to continue; FILE:path reads it from a file; empty starts a new document
# read the prompts from stdin, one a line, one sample each; an empty line or end of input stops
interactive = False
# a conversation on stdin: a user turn a line, the model's reply after each, LLaMA-2's chat format
chat = False
system = ""  # with chat: the system prompt, folded into the first turn
num_samples = 2  # samples of the prompt (not with interactive)
max_new_tokens = 300
temperature = 0.8  # 0 means greedy: always the most likely token
top_k = 0  # keep only the k most likely tokens; 0 keeps all
# keep the smallest set of tokens whose probability reaches p (nucleus sampling); 1 keeps all
top_p = 0.95
# keep only the tokens at least min_p times as likely as the most likely one; 0 keeps all
min_p = 0.0
# > 1 makes the tokens of the recent context less likely (CTRL's rule); 1 is off
repetition_penalty = 1.0
# how many of the last tokens repetition_penalty looks at; 0 means the whole context
repetition_context = 20
seed = 1337
# draw each layer's and head's attention over the prompt's tokens into this SVG file, instead
attention = ""
# -----------------------------------------------------------------------------
configure(globals(), echo=sys.stderr)
if prompt.startswith("FILE:"):
    if not os.path.isfile(prompt[5:]):
        sys.exit(f"error: prompt file {prompt[5:]!r} not found")
    with open(prompt[5:], encoding="utf-8") as f:
        prompt = f.read()
check(globals(), [("temperature", temperature >= 0, "at least 0"),
                  ("top_k", top_k >= 0, "at least 0"),
                  ("top_p", 0 < top_p <= 1, "above 0 and at most 1"),
                  ("min_p", 0 <= min_p < 1, "at least 0 and below 1"),
                  ("repetition_penalty", repetition_penalty > 0, "above 0"),
                  ("repetition_context", repetition_context >= 0, "at least 0"),
                  ("max_new_tokens", max_new_tokens > 0, "at least 1")])

model, config = load_model(out_dir)
sp = files.read_tokenizer(out_dir)
max_seq_len = model.args.max_seq_len
mx.random.seed(seed)
cpu.set_blas_threads(1)  # decoding is matrix-vector work: faster on one OpenBLAS thread than two
sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                repetition_penalty=repetition_penalty, repetition_context=repetition_context)


def encode(prompt):
    tokens = [sp.bos_id()] + sp.encode(prompt)
    if len(tokens) >= max_seq_len:
        print(f"note: the prompt has {len(tokens)} tokens, more than the model's context of "
              f"{max_seq_len}; the model sees its last {max_seq_len // 2}", file=sys.stderr)
    return tokens


def write_sample(prompt, prompt_tokens):
    """The prompt and a continuation on stdout as it is produced, up to EOS or max_new_tokens; the
    speed on stderr."""
    t0, arrivals = time.perf_counter(), []

    def new_tokens():
        for token in generate(model, prompt_tokens, max_new_tokens, sp.eos_id(), **sampling):
            arrivals.append(time.perf_counter())
            yield token

    sys.stdout.write(prompt)
    for text in stream_text(sp, prompt_tokens, new_tokens()):
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()  # a program reading the answers through a pipe gets each one whole, now
    elapsed = time.perf_counter() - t0
    if arrivals:
        t_first = arrivals[0]
        rate = (len(arrivals) - 1) / max(time.perf_counter() - t_first, 1e-9)
        print(f"[{len(arrivals)} tokens in {elapsed:.2f} s: prompt {len(prompt_tokens)} tokens in "
              f"{t_first - t0:.3f} s, then {rate:.1f} tokens/s]", file=sys.stderr)


def read_prompts():
    """stdin's lines up to an empty one or the end; a terminal asks for each with "> " on stderr,
    which keeps stdout to the text, as with a pipe."""
    while True:
        if sys.stdin.isatty():
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line and sys.stdin.isatty():
            sys.stderr.write("\n")  # Ctrl-D leaves the cursor after "> "
        line = line.rstrip("\r\n")
        if not line:
            return
        yield line


def conversation(exchanges, line):
    """The ids of the exchanges so far, (user, reply ids) each, and of the next user turn."""
    ids, first = [], system or None  # the system prompt goes into the first turn
    for user, reply in exchanges:
        ids += chat_format.turn_ids(sp, user, first) + reply + [sp.eos_id()]
        first = None
    return ids + chat_format.turn_ids(sp, line, first)


def chat_loop():
    """One conversation: each line of stdin a user turn, the reply streamed after it. The KV cache
    carries over from turn to turn; when the context fills, the oldest exchanges go."""
    cache, exchanges, warned = model.make_cache(), [], False
    room = min(max_new_tokens, max_seq_len // 2)  # what a reply may need at the least
    for line in read_prompts():
        turn = chat_format.turn_ids(sp, line, None if exchanges else system or None)
        if len(turn) + 1 >= max_seq_len:
            print(f"note: that turn alone is {len(turn)} tokens, the model's context "
                  f"{max_seq_len}; say it in fewer words", file=sys.stderr)
            continue
        feed = [sp.eos_id()] * bool(exchanges) + turn  # the EOS closes the last reply
        if cache[0].offset + len(feed) + room > max_seq_len:
            # what stays is encoded afresh: the cache's positions are baked in by RoPE
            while exchanges and len(conversation(exchanges, line)) + room > max_seq_len:
                exchanges.pop(0)
            feed, cache = conversation(exchanges, line), model.make_cache()
            if not warned:
                print(f"note: the conversation is longer than the model's context of "
                      f"{max_seq_len} tokens; its oldest exchanges go", file=sys.stderr)
            warned = True
        reply = []

        def tokens():  # the reply's ids as they come, and kept for the history
            for token in generate(model, feed, max_new_tokens, sp.eos_id(), cache, **sampling):
                reply.append(token)
                yield token
        for i, text in enumerate(stream_text(sp, feed, tokens())):
            sys.stdout.write(text.lstrip() if i == 0 else text)  # replies start with a space
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        exchanges.append((line, reply))


if attention:
    tokens = encode(prompt)[-max_seq_len:]
    weights = model.attention_weights(mx.array([tokens]))
    pieces = [sp.id_to_piece(t).replace("\u2581", " ") for t in tokens]  # SentencePiece's space
    files.write_atomic(attention, plot.attention_svg(weights.tolist(), pieces,
                                                     f"{out_dir}: {prompt[:60]!r}").encode())
    print(f"wrote {attention}: {weights.shape[0]} layers x {weights.shape[1]} heads over "
          f"{len(tokens)} tokens", file=sys.stderr)
elif chat:
    chat_loop()
elif interactive:
    for line in read_prompts():
        write_sample(line, encode(line))
else:
    prompt_tokens = encode(prompt)
    for i in range(num_samples):
        write_sample(prompt, prompt_tokens)
        if i < num_samples - 1:
            print("-" * 60)
