"""
Score a checkpoint folder on HellaSwag or LAMBADA, zero-shot, as the papers and
lm-evaluation-harness do; docs/evals.md says what each score is and which published numbers it
compares with.

Reads out_dir/{config.json,model*.safetensors,tokenizer.model} (ours, mlx-lm's, or a Hugging Face
llama folder with a tokenizer.model) and the task's data, downloaded once into data/evals/. Prints
one line of scores on stdout (progress on stderr) and appends them as one JSON line to
out_dir/evals.jsonl.

    python eval.py --out_dir=out --task=hellaswag
    python eval.py --task=lambada --limit=500 --details=lambada_details.jsonl
    python eval.py --task=hellaswag --data=my_choices.jsonl  # your own set, in HellaSwag's format
"""
import datetime
import json
import math
import os
import re
import sys
import time

from model import cross_entropy, load_model  # first: it loads cpu.py, which precedes mlx.core
import mlx.core as mx
import numpy as np

import corpus
import files
import named_datasets
from configurator import check, configure

# -----------------------------------------------------------------------------
out_dir = "out"  # the checkpoint folder to score; the scores are appended to its evals.jsonl
task = "hellaswag"  # hellaswag (its validation split) or lambada (OpenAI's LAMBADA test set)
data = ""  # score this local file, in the task's format, instead of the task's data (no download)
url = ""  # download the task's data from this mirror instead of its home (TASKS below)
data_dir = "data"  # the downloads go into data_dir/evals/
limit = 0  # score the first N examples only; 0 scores all
batch_size = 16  # sequences per forward pass; a HellaSwag example is 4 (one per ending)
details = ""  # a file for one JSON line per example: each choice's log-likelihood, length, picks
# -----------------------------------------------------------------------------
configure(globals(), echo=sys.stderr)
# task: (file in data_dir/evals/, home URL); size and sha256 unknown: Content-Length is checked on
# download, and the file's sha256 goes into each record
TASKS = {"hellaswag": ("hellaswag_val.jsonl", "https://raw.githubusercontent.com/rowanz/"
                       "hellaswag/master/data/hellaswag_val.jsonl"),
         "lambada": ("lambada_test.jsonl", "https://openaipublic.blob.core.windows.net/gpt-2/"
                     "data/lambada_test.jsonl")}
check(globals(), [("task", task in TASKS, f"one of {', '.join(TASKS)}"),
                  ("limit", limit >= 0, "at least 0 (0 scores every example)"),
                  ("batch_size", batch_size >= 1, "at least 1"),
                  ("details", not details or os.path.isdir(os.path.dirname(details) or "."),
                   "a file in a folder that exists")])


def preprocess(text):
    """lm-evaluation-harness's HellaSwag clean-up (tasks/hellaswag/utils.py): WikiHow's
    "[title]" becomes a full stop, other [markers] go, double spaces become one."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag(row, where):
    """(context, endings, label), the text as lm-evaluation-harness builds it."""
    endings, label = row.get("endings"), row.get("label")
    if not (isinstance(endings, list) and len(endings) == 4
            and all(isinstance(e, str) for e in endings)):
        sys.exit(f'error: {where}: a HellaSwag row needs "endings", a list of 4 strings')
    if isinstance(label, str) and label.isdigit():  # Hugging Face's copy has "3", the original 3
        label = int(label)
    if type(label) is not int or not 0 <= label < len(endings):
        sys.exit(f'error: {where}: "label" must be 0, 1, 2 or 3 (the right ending), '
                 f'not {row.get("label")!r}')
    if not all(isinstance(row.get(k), str) for k in ("activity_label", "ctx_a", "ctx_b")):
        sys.exit(f'error: {where}: a HellaSwag row needs the strings "activity_label", "ctx_a" '
                 'and "ctx_b"')
    context = preprocess(f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}")
    return context, [preprocess(e) for e in endings], label


def lambada(row, where):
    """(context, [last word], 0): the text split at its last space, as lm-evaluation-harness's
    lambada_openai splits it."""
    text = row.get("text")
    context, _, word = text.rpartition(" ") if isinstance(text, str) else ("", "", "")
    if not context.strip() or not word:
        sys.exit(f'error: {where}: a LAMBADA row needs "text" with words, a space, then the last '
                 'word')
    return context, [word], 0


def read_examples(path, parse):
    """[(line number, context, choices, label)] of the first `limit` rows, or a one-line exit
    naming the file and line of the first bad one."""
    examples = []
    try:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if limit and len(examples) == limit:
                    break
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    cut = "" if f.read().strip() else (
                        "; it is the last line: the file was cut short"
                        + ("" if data else ", delete it and run again to download it again"))
                    sys.exit(f"error: {path}:{i}: not JSON ({e.msg}){cut}")
                if not isinstance(row, dict):
                    sys.exit(f"error: {path}:{i}: a row must be a JSON object")
                examples.append((i, *parse(row, f"{path}:{i}")))
    except UnicodeDecodeError:
        sys.exit(f"error: {path} is not UTF-8 text")
    if not examples:
        sys.exit(f"error: {path} has no examples")
    return examples


model, config = load_model(out_dir)  # first: a wrong --out_dir should not wait for a download
sp = files.read_tokenizer(out_dir)
max_seq_len = model.args.max_seq_len
if data:
    if not os.path.isfile(data):
        sys.exit(f"error: --data={data}: no such file")
    path = data
else:
    path = os.path.join(data_dir, "evals", TASKS[task][0])
    named_datasets.download(url or TASKS[task][1], path, local="--data=FILE")
examples = read_examples(path, hellaswag if task == "hellaswag" else lambada)


def sequence(context, continuation):
    """[BOS] + context + continuation tokenized whole, and where the continuation's tokens start:
    after those the whole shares with the context tokenized alone. Tokenizing the two apart would
    add a dummy-prefix space (Llama's tokenizer), and a piece may span the boundary; it is then
    the continuation's, so its tokens always cover all of its text."""
    whole, alone = sp.encode(context + continuation), sp.encode(context)
    shared = next((i for i, (a, b) in enumerate(zip(whole, alone)) if a != b),
                  min(len(whole), len(alone)))
    return [sp.bos_id(), *whole], 1 + min(shared, len(whole) - 1)  # at least one token scored


# each choice of each example is one sequence: (example, choice, tokens, first continuation token)
requests = [(e, c, *sequence(context, " " + choice))
            for e, (_, context, choices, _) in enumerate(examples)
            for c, choice in enumerate(choices)]
ll = [[0.0] * len(ex[2]) for ex in examples]  # log-likelihood of each choice
n_tokens = [[0] * len(ex[2]) for ex in examples]
greedy = [[False] * len(ex[2]) for ex in examples]  # argmax reproduces each of its tokens
n_cut, start = 0, time.time()
for b in range(0, len(requests), batch_size):
    batch = requests[b:b + batch_size]
    # too long for the model: the last max_seq_len tokens are its input (lm-evaluation-harness's
    # rule), so the context loses its start
    rows = [tokens[-(max_seq_len + 1):] for _, _, tokens, _ in batch]
    n_cut += sum(len(r) < len(t) for r, (_, _, t, _) in zip(rows, batch))
    x = np.zeros((len(rows), max(len(r) for r in rows) - 1), np.int32)  # padded at the end: the
    y = np.zeros_like(x)  # causal mask keeps padding out of the real positions
    for i, r in enumerate(rows):
        x[i, :len(r) - 1], y[i, :len(r) - 1] = r[:-1], r[1:]
    logits, y = model(mx.array(x)), mx.array(y)
    logprobs = -cross_entropy(logits, y)  # float32 whatever the model's dtype
    logprobs, hits = np.array(logprobs, np.float64), np.array(logits.argmax(axis=-1) == y)
    for i, (e, c, tokens, first) in enumerate(batch):
        # position j predicts token j + 1; the padding past len(rows[i]) - 1 is never read
        lo, hi = max(first - (len(tokens) - len(rows[i])), 1) - 1, len(rows[i]) - 1
        ll[e][c], n_tokens[e][c] = float(logprobs[i, lo:hi].sum()), hi - lo
        greedy[e][c] = bool(hits[i, lo:hi].all())
    e, c = batch[-1][:2]
    done = e + (c == len(examples[e][2]) - 1)  # examples whose every choice is scored
    rate = done / max(time.time() - start, 1e-9)
    corpus.status(f"{task}: {done:,}/{len(examples):,} examples, {rate:.1f}/s, "
                  f"{(len(examples) - done) / max(rate, 1e-9):.0f} s left",
                  done=b + batch_size >= len(requests))
seconds = time.time() - start
if n_cut:
    print(f"note: {n_cut:,} sequences were longer than the model's context of {max_seq_len} "
          f"tokens; the model saw the last {max_seq_len} of each", file=sys.stderr)

chars = [[max(len(choice), 1) for choice in ex[2]] for ex in examples]  # without the space
if task == "hellaswag":
    # the same log-likelihoods, three normalisations: none, per character (lm-evaluation-
    # harness's acc_norm), per token (build-nanogpt's)
    picks = [{"acc": int(np.argmax(ll[e])),
              "acc_norm": int(np.argmax(np.array(ll[e]) / chars[e])),
              "acc_token_mean": int(np.argmax(np.array(ll[e]) / n_tokens[e]))}
             for e in range(len(examples))]
    scores = {k: sum(p[k] == ex[3] for p, ex in zip(picks, examples)) / len(examples)
              for k in ("acc", "acc_norm", "acc_token_mean")}
else:
    # ppl as lm-evaluation-harness's lambada_openai: per word; ppl_token: per token of the words
    scores = {"acc": sum(g[0] for g in greedy) / len(examples),
              "ppl": math.exp(-sum(v[0] for v in ll) / len(examples)),
              "ppl_token": math.exp(-sum(v[0] for v in ll) / sum(n[0] for n in n_tokens))}

if details:
    with open(details, "w", encoding="utf-8") as f:
        for e, (line, *_, label) in enumerate(examples):
            choices = [{"ll": ll[e][c], "chars": chars[e][c], "tokens": n_tokens[e][c]}
                       for c in range(len(ll[e]))]
            result = ({"label": label, "picks": picks[e]} if task == "hellaswag"
                      else {"greedy": greedy[e][0]})
            f.write(json.dumps({"line": line, **result, "choices": choices}) + "\n")

shown = ", ".join(f"{k} {v:.4f}" if k.startswith("acc") else f"{k} {v:.2f}"
                  for k, v in scores.items())
print(f"{task}: {shown} ({len(examples):,} examples of {path}, {seconds:.1f} s)", flush=True)
record = {"task": task, "scores": scores, "n": len(examples), "seconds": round(seconds, 2),
          "data": path, "data_sha256": files.sha256_file(path),
          "iter": (config.get("train_state") or {}).get("iter"),
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
# one os.write of one whole line, in append mode, then fsync: runs side by side add lines, and a
# crash never leaves half of one
fd = os.open(os.path.join(out_dir, "evals.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
try:
    os.write(fd, (json.dumps(record) + "\n").encode())
    os.fsync(fd)
finally:
    os.close(fd)
