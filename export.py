"""
Export a checkpoint folder to the other LLaMA runtimes: a GGUF file for llama.cpp, and the
tokenizer files that Hugging Face transformers and mlx-lm read beside tokenizer.model.

Reads out_dir/{config.json, model.safetensors, tokenizer.model} (ours, or any plain Hugging Face
llama folder); writes out_dir/model.gguf (or gguf_path) and out_dir/{tokenizer.json,
tokenizer_config.json, special_tokens_map.json, generation_config.json}. train.py writes the
tokenizer files with every checkpoint (hf_tokenizer.py), so only llama.cpp needs this script; run
it on older checkpoints to add them.

    python export.py --out_dir=out                    # out/model.gguf, float32
    python export.py --out_dir=out --dtype=float16 --gguf_path=mini.gguf
    llama-completion -m out/model.gguf -p "def fibonacci(n):" -n 100 --temp 0
                                                      # llama.cpp; older: llama-cli -no-cnv
"""
import os
import sys
from pathlib import Path

import numpy as np

from model import load_model  # first: model.py loads cpu.py, which must come before mlx.core
import files
import hf_tokenizer
import mlx.core as mx
from mlx.utils import tree_flatten

from configurator import configure

# -----------------------------------------------------------------------------
out_dir = "out"  # the checkpoint folder
gguf_path = ""  # where to write the GGUF file; empty means out_dir/model.gguf
# "float32" or "float16" for the matrices; norms stay float32, as llama.cpp's converter does
dtype = "float32"
hf_files = True  # also (re)write the Hugging Face tokenizer files in out_dir
# -----------------------------------------------------------------------------
configure(globals())
try:
    import gguf
except ImportError:
    sys.exit("error: writing GGUF needs the gguf package (llama.cpp's reader/writer): "
             "pip install gguf")
np_dtype = {"float32": np.float32, "float16": np.float16}.get(dtype)
if np_dtype is None:
    sys.exit(f"error: dtype={dtype!r} is not one of float32, float16")
path = gguf_path or os.path.join(out_dir, "model.gguf")
tokenizer_path = os.path.join(out_dir, "tokenizer.model")
model, config = load_model(out_dir)
args = model.args
if not os.path.isfile(tokenizer_path):
    sys.exit(f"error: {out_dir!r} has no tokenizer.model, which the GGUF file must include")
sp = files.read_tokenizer(out_dir)
hf_tokenizer.check_normalization(sp, "llama.cpp")
if sp.vocab_size() > args.vocab_size:
    sys.exit(f"error: tokenizer.model has {sp.vocab_size()} pieces, the model only "
             f"{args.vocab_size}")


def permute_for_gguf(w, n_heads):
    """q_proj / k_proj rows from the Hugging Face RoPE layout (each head rotates dimension i with
    i + head_dim/2) to llama.cpp's (it rotates 2i with 2i+1): within each head, interleave the two
    halves. This is what llama.cpp's convert_hf_to_gguf.py does for LLaMA (LlamaModel.permute); for
    k_proj, n_heads is the number of kv heads."""
    return (w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2)
            .reshape(w.shape))


GGUF_NAMES = {  # our (Hugging Face) parameter names -> llama.cpp's, per layer and for the rest
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
}

# the hyperparameters, under the keys llama.cpp's LLaMA loader reads -------------------------------
w = gguf.GGUFWriter(None, "llama")
w.add_name(os.path.basename(os.path.abspath(out_dir)))
w.add_file_type(gguf.LlamaFileType.ALL_F32 if np_dtype == np.float32
                else gguf.LlamaFileType.MOSTLY_F16)
w.add_context_length(args.max_seq_len)
w.add_embedding_length(args.dim)
w.add_block_count(args.n_layers)
w.add_feed_forward_length(args.hidden_dim)
w.add_head_count(args.n_heads)
w.add_head_count_kv(args.n_kv_heads)
w.add_layer_norm_rms_eps(args.norm_eps)
w.add_rope_freq_base(args.rope_theta)
w.add_rope_dimension_count(args.dim // args.n_heads)
w.add_vocab_size(args.vocab_size)

# the tokenizer: tokens, scores and types, padded to the model's vocab_size as llama.cpp's converter
# does (a model's embedding may have more rows than its tokenizer has pieces) ----------------------
tokens = [f"[PAD{i}]".encode() for i in range(args.vocab_size)]
scores, types = [-1000.0] * args.vocab_size, [gguf.TokenType.UNUSED] * args.vocab_size
for i in range(sp.vocab_size()):
    tokens[i], scores[i] = sp.id_to_piece(i).encode("utf-8"), sp.get_score(i)
    types[i] = (gguf.TokenType.UNKNOWN if sp.is_unknown(i)
                else gguf.TokenType.CONTROL if sp.is_control(i)
                else gguf.TokenType.UNUSED if sp.is_unused(i)
                else gguf.TokenType.BYTE if sp.is_byte(i)
                else gguf.TokenType.NORMAL)
w.add_tokenizer_model("llama")  # SentencePiece BPE: llama.cpp's SPM tokenizer
w.add_tokenizer_pre("default")
w.add_token_list(tokens)
w.add_token_scores(scores)
w.add_token_types(types)
w.add_bos_token_id(sp.bos_id())
if sp.eos_id() >= 0:
    w.add_eos_token_id(sp.eos_id())
w.add_unk_token_id(sp.unk_id())
w.add_add_bos_token(True)
w.add_add_eos_token(False)
w.add_add_space_prefix(hf_tokenizer.adds_dummy_prefix(sp))

# the weights, under llama.cpp's names and in its RoPE layout --------------------------------------
for name, t in tree_flatten(model.parameters()):
    t = np.array(t.astype(mx.float32))  # numpy has no bfloat16, which a folder may store
    base = name.removesuffix(".weight")
    if base.startswith("model.layers."):
        i, rest = base[len("model.layers."):].split(".", 1)
        gguf_name = f"blk.{i}.{GGUF_NAMES[rest]}.weight"
    else:
        gguf_name = GGUF_NAMES[base] + ".weight"
    if base.endswith("q_proj"):
        t = permute_for_gguf(t, args.n_heads)
    elif base.endswith("k_proj"):
        t = permute_for_gguf(t, args.n_kv_heads)
    w.add_tensor(gguf_name, t if t.ndim == 1 else t.astype(np_dtype))

try:
    # a crash never leaves a half-written file under the real name
    with files.replaced_atomically(path) as tmp:
        w.write_header_to_file(Path(tmp))
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
except OSError as e:
    sys.exit(f"error: {path} could not be written: {files.disk_full_hint(e, path)}")
print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB, {dtype})")

if hf_files:
    try:
        for name, blob in hf_tokenizer.hf_tokenizer_files(tokenizer_path, args.max_seq_len).items():
            files.write_atomic(os.path.join(out_dir, name), blob)
    except OSError as e:
        sys.exit(f"error: the tokenizer files could not be written: "
                 f"{files.disk_full_hint(e, out_dir)}")
    print(f"wrote {out_dir}/tokenizer.json, tokenizer_config.json, special_tokens_map.json, "
          "generation_config.json")
