"""
Check that llama.cpp runs a checkpoint as we do: export it to GGUF, load that in llama.cpp (through
the llama-cpp-python package, which builds llama.cpp from source: ~18 minutes on 2 cores, so it is
not in requirements-dev.txt and this is not a pytest test), then compare tokenization, the logits of
a prompt, and greedy decoding (temperature 0) against model.py.

Reads out_dir/ (a checkpoint folder); writes only a temporary GGUF file (or uses gguf_path if
given). Exits 1 if anything differs.

    CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36
    python tools/llama_cpp_check.py --out_dir=out --prompt="def fibonacci(n):" --max_new_tokens=30
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import load_model  # first: model.py loads cpu.py, before mlx.core
import mlx.core as mx
import numpy as np
import sentencepiece as spm

import hf_tokenizer
from configurator import configure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# -----------------------------------------------------------------------------
out_dir = "out"  # the checkpoint folder
gguf_path = ""  # an existing GGUF file of it; empty exports a fresh one to a temporary folder
dtype = "float32"  # of the exported GGUF: float32 or float16 (then logits agree less closely)
prompt = "def fibonacci(n):\n    "
max_new_tokens = 30
# -----------------------------------------------------------------------------
configure(globals())
try:
    import llama_cpp
except ImportError:
    sys.exit("error: needs llama-cpp-python, which builds llama.cpp: pip install llama-cpp-python")

tmp = tempfile.TemporaryDirectory()
if not gguf_path:
    gguf_path = os.path.join(tmp.name, "model.gguf")
    subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), f"--out_dir={out_dir}",
                    f"--gguf_path={gguf_path}", f"--dtype={dtype}", "--hf_files=False"], check=True)
model, _ = load_model(out_dir)
sp = spm.SentencePieceProcessor(model_file=os.path.join(out_dir, "tokenizer.model"))
# keys and values cached in float32 (llama.cpp's default is float16), so the logits can agree to
# float32 rounding
llm = llama_cpp.Llama(model_path=gguf_path, n_ctx=model.args.max_seq_len, logits_all=True,
                      n_threads=2, seed=0, type_k=llama_cpp.GGML_TYPE_F32,
                      type_v=llama_cpp.GGML_TYPE_F32, verbose=False)
dummy_prefix = hf_tokenizer.adds_dummy_prefix(sp)
failures = []

# 1. tokenizer: llama.cpp's SentencePiece implementation against SentencePiece's
texts = [prompt, "def f(x):\n    return x + 1\n", "  two  spaces,\ttab\n\n\nnewlines ", " leading",
         "émoji 😀, 中文 and ünïcödé", "1234567890"]
for text in texts:
    ours, theirs = [sp.bos_id()] + sp.encode(text), llm.tokenize(text.encode("utf-8"), add_bos=True)
    # llama-cpp-python drops the space after <s>, which is right for a tokenizer that adds one
    # (Llama's dummy prefix) and wrong for prepare.py's, so for that one detokenize without the <s>
    back = llm.detokenize(theirs if dummy_prefix else theirs[1:]).decode("utf-8", errors="replace")
    ok = ours == theirs and back == text
    print(f"tokenize {text!r}: "
          f"{'same' if ok else f'DIFFERENT: ours {ours}, llama.cpp {theirs}, {back!r}'}")
    if not ok:
        failures.append(f"tokenization of {text!r}")

# 2. logits of the prompt, every position
ids = [sp.bos_id()] + sp.encode(prompt)
llm.reset()
llm.eval(ids)
theirs = np.array(llm.scores[:len(ids)])
ours = np.array(model(mx.array([ids]))[0])
diff, scale = np.abs(theirs - ours).max(), np.abs(ours).max()
tolerance = (1e-5 if dtype == "float32" else 3e-2) * max(1.0, scale)
print(f"logits of {len(ids)} prompt tokens: max |difference| {diff:.2e} "
      f"(largest logit {scale:.2f}, tolerance {tolerance:.1e})")
if diff > tolerance:
    failures.append("logits")

# 3. greedy decoding: llama.cpp with its KV cache, ours with the full forward pass each step
# within the model's context
max_new_tokens = min(max_new_tokens, model.args.max_seq_len - len(ids))
ours = list(ids)
for _ in range(max_new_tokens):
    ours.append(model(mx.array([ours]))[0, -1].argmax().item())
llm.reset()
theirs = list(ids)
llm.eval(ids)
for _ in range(max_new_tokens):
    theirs.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
    llm.eval([theirs[-1]])
same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours)) - len(ids)
print(f"greedy, {max_new_tokens} new tokens: {same} agree; ours {ours[len(ids):]}")
print(f"  llama.cpp {theirs[len(ids):]}")
print(f"  text: {sp.decode(ours[len(ids):])!r}")
if same < max_new_tokens:
    failures.append(f"greedy decoding (from new token {same})")

print(f"llama.cpp {'DIFFERS in ' + ', '.join(failures) if failures else 'agrees'} "
      f"({gguf_path}, {dtype})")
sys.exit(1 if failures else 0)
