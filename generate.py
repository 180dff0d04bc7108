"""
Sample text from a checkpoint folder written by train.py (or any llama folder with a
tokenizer.model): reads out_dir/{config.json,model.safetensors,tokenizer.model} and prints the
samples as they are produced, or with --interactive=True a sample for each line of stdin, or with
--chat=True (a model fine-tuned on conversations: config/chat.py) the reply to each.

    python generate.py --prompt="def fibonacci(n):" --max_new_tokens=200 --temperature=0.7
    python generate.py --prompt=FILE:prompt.txt --num_samples=3 --top_k=50
    printf 'the cat\nthe dog\n' | python generate.py --interactive=True --temperature=0
    python generate.py --out_dir=out-chat --chat=True --system="Answer in one sentence."
    python generate.py --attention=attn.svg --prompt="def fibonacci(n):"   # where each token looks
"""
import os
import sys
import time
from pathlib import Path

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
interactive = False  # prompts from stdin, a sample for each line, up to an empty line or the end
chat = False  # a conversation on stdin: a user turn a line, the reply after each (LLaMA-2's format)
system = ""  # with chat: the system prompt, folded into the first turn
num_samples = 2  # samples of the prompt (not with interactive)
max_new_tokens = 300
temperature = 0.8  # 0 means greedy: always the most likely token
top_k = 0  # keep only the k most likely tokens; 0 keeps all
top_p = 0.95  # keep the smallest set of tokens whose probability reaches p (nucleus); 1 keeps all
min_p = 0.0  # keep only the tokens at least min_p times as likely as the most likely; 0 keeps all
repetition_penalty = 1.0  # > 1 makes the recent context's tokens less likely (CTRL's rule); 1: off
repetition_context = 20  # how many recent tokens repetition_penalty looks at; 0: the whole context
seed = 1337
attention = ""  # draw each layer's and head's attention over the prompt into this SVG file, instead
# -----------------------------------------------------------------------------
configure(globals(), echo=sys.stderr)
if prompt.startswith("FILE:"):
    if not Path(prompt[5:]).is_file():
        sys.exit(f"error: prompt file {prompt[5:]!r} not found")
    prompt = Path(prompt[5:]).read_text(encoding="utf-8")
check(globals(), [("temperature", temperature >= 0, "at least 0"),
                  ("top_k", top_k >= 0, "at least 0"),
                  ("top_p", 0 < top_p <= 1, "above 0 and at most 1"),
                  ("min_p", 0 <= min_p < 1, "at least 0 and below 1"),
                  ("repetition_penalty", repetition_penalty > 0, "above 0"),
                  ("repetition_context", repetition_context >= 0, "at least 0"),
                  ("max_new_tokens", max_new_tokens > 0, "at least 1"),
                  ("attention", not attention or os.path.isdir(os.path.dirname(attention) or "."),
                   "a file in a folder that exists")])

model, config = load_model(out_dir)
sp = files.read_tokenizer(out_dir)
max_seq_len = model.args.max_seq_len
mx.random.seed(seed)
cpu.set_blas_threads(1)  # decoding is matrix-vector work: faster on one OpenBLAS thread than two
sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                repetition_penalty=repetition_penalty, repetition_context=repetition_context)


def encode(prompt, seen=max_seq_len // 2):  # seen: how many a long prompt keeps (sampling.py's)
    tokens = [sp.bos_id()] + sp.encode(prompt)
    if len(tokens) >= max_seq_len:
        print(f"note: the prompt has {len(tokens)} tokens, more than the model's context of "
              f"{max_seq_len}; the model sees its last {seen}", file=sys.stderr)
    return tokens


def write_sample(prompt, prompt_tokens, cache=None):
    """The prompt and a continuation on stdout as it comes, up to EOS or max_new_tokens, the speed
    on stderr; with the chat loop's cache, a reply (no speed, no leading space). Returns its ids."""
    t0, arrivals, new = time.perf_counter(), [], []

    def new_tokens():
        for token in generate(model, prompt_tokens, max_new_tokens, sp.eos_id(), cache, **sampling):
            arrivals.append(time.perf_counter())
            new.append(token)
            yield token
    print(prompt, end="")
    for i, text in enumerate(stream_text(sp, prompt_tokens, new_tokens())):
        print(text.lstrip() if i == 0 and cache is not None else text, end="", flush=True)
    print(flush=True)  # a program reading the answers through a pipe gets each one whole, now
    t1 = time.perf_counter()
    if arrivals and cache is None:
        rate = (len(arrivals) - 1) / max(t1 - arrivals[0], 1e-9)
        print(f"[{len(arrivals)} tokens in {t1 - t0:.2f} s: prompt {len(prompt_tokens)} tokens in "
              f"{arrivals[0] - t0:.3f} s, then {rate:.1f} tokens/s]", file=sys.stderr)
    return new


def read_prompt():
    """A line of stdin without its newline, "" at an empty line or the end; a terminal asks for it
    with "> " on stderr, which keeps stdout to the text, as with a pipe."""
    if sys.stdin.isatty():
        print("> ", end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line and sys.stdin.isatty():
        sys.stderr.write("\n")  # Ctrl-D leaves the cursor after "> "
    return line.rstrip("\r\n")


if attention:
    tokens = encode(prompt, max_seq_len)[-max_seq_len:]
    weights = model.attention_weights(mx.array([tokens]))
    pieces = [sp.id_to_piece(t).replace("\u2581", " ") for t in tokens]  # SentencePiece's space
    files.write_atomic(attention, plot.attention_svg(weights.tolist(), pieces,
                                                     f"{out_dir}: {prompt[:60]!r}").encode())
    print(f"wrote {attention}: {weights.shape[0]} layers x {weights.shape[1]} heads over "
          f"{len(tokens)} tokens", file=sys.stderr)
elif chat:  # one conversation; the KV cache carries over from turn to turn
    conversation = chat_format.Conversation(sp, system or None, model, max_new_tokens)
    for line, feed, cache in conversation.turns(iter(read_prompt, "")):
        conversation.exchanges.append((line, write_sample("", feed, cache)))
elif interactive:
    for line in iter(read_prompt, ""):  # up to an empty line or the end
        write_sample(line, encode(line))
else:
    prompt_tokens = encode(prompt)
    for i in range(num_samples):
        if i:
            print("-" * 60)
        write_sample(prompt, prompt_tokens)
