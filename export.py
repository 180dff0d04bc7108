"""
Export a checkpoint folder to the other LLaMA runtimes: a GGUF file for llama.cpp, and the tokenizer files that
Hugging Face transformers and mlx-lm read beside tokenizer.model.

Reads out_dir/{config.json, model.safetensors, tokenizer.model} (ours, or any plain Hugging Face llama folder);
writes out_dir/model.gguf (or gguf_path) and out_dir/{tokenizer.json, tokenizer_config.json, special_tokens_map.json,
generation_config.json}. train.py writes the tokenizer files with every checkpoint (write_hf_tokenizer_files), so
only llama.cpp needs this script; run it on older checkpoints to add them.

    python export.py --out_dir=out                    # out/model.gguf, float32
    python export.py --out_dir=out --dtype=float16 --gguf_path=mini.gguf
    llama-completion -m out/model.gguf -p "def fibonacci(n):" -n 100 --temp 0   # llama.cpp; older: llama-cli -no-cnv
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import sentencepiece as spm

from configurator import configure
from prepare import write_atomic

# -----------------------------------------------------------------------------
out_dir = "out"  # the checkpoint folder
gguf_path = ""  # where to write the GGUF file; empty means out_dir/model.gguf
dtype = "float32"  # "float32" or "float16" for the matrices; norms stay float32, as llama.cpp's converter does
hf_files = True  # also (re)write the Hugging Face tokenizer files in out_dir
# -----------------------------------------------------------------------------


def _write_json(path, obj):
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8"))


def _check_normalization(sp, tool):
    # SentencePiece may rewrite text before splitting it (NFKC, collapsing spaces); the tokenizers written here
    # only add the dummy-prefix space and escape spaces as "▁", which is SentencePiece's "identity" rule with
    # remove_extra_whitespaces=False, the rule prepare.py trains with (code needs its spaces and symbols as they are).
    probe = "a  b\tﬁ① "
    if sp.normalize(probe).lstrip("▁") != probe.replace(" ", "▁"):
        raise ValueError(f"this tokenizer.model normalizes text (normalize({probe!r}) = {sp.normalize(probe)!r}), "
                         f"which {tool} would not reproduce; train it with normalization_rule_name='identity' and "
                         f"remove_extra_whitespaces=False")


def hf_tokenizer_json(sp):
    """A SentencePiece BPE model as a Hugging Face `tokenizers` tokenizer.json: the pipeline of Llama 2's own
    tokenizer.json (transformers' LlamaConverter, legacy mode): "▁" in front if SentencePiece adds a dummy prefix,
    spaces to "▁", BPE with byte fallback, <s> first."""
    n = sp.vocab_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    normal = {p for p, i in vocab.items() if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))}
    # SentencePiece's BPE merges the adjacent pair whose union is the highest-scoring piece, and its pieces are
    # stored best score first, so a merge's rank is the id of the piece it makes; pairs that make the same piece
    # are ordered by the ids of their parts (as transformers' generate_merges does).
    merges = []
    for piece, i in vocab.items():
        if piece in normal and len(piece) > 1:
            pairs = [(piece[:k], piece[k:]) for k in range(1, len(piece))
                     if piece[:k] in normal and piece[k:] in normal]
            merges += sorted(pairs, key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
    specials = [i for i in range(n) if sp.is_control(i) or sp.is_unknown(i)]
    bos = sp.id_to_piece(sp.bos_id())
    prefix = sp.normalize("a").startswith("▁")  # add_dummy_prefix
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    decoders = [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
                {"type": "Fuse"}] + ([{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if prefix else [])
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": sp.id_to_piece(i), "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True} for i in specials],
        "normalizer": {"type": "Sequence", "normalizers": ([{"type": "Prepend", "prepend": "▁"}] if prefix else [])
                       + [replace]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [sp.bos_id()], "tokens": [bos]}},
        },
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": None, "unk_token": sp.id_to_piece(sp.unk_id()),
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                  "byte_fallback": True, "ignore_merges": False, "vocab": vocab, "merges": [list(m) for m in merges]},
    }


def write_hf_tokenizer_files(out_dir, tokenizer_model=None, model_max_length=None):
    """Write the files that transformers' AutoTokenizer and mlx-lm read beside tokenizer.model, from the
    SentencePiece model alone (no transformers needed): tokenizer.json, tokenizer_config.json,
    special_tokens_map.json and generation_config.json. Each is written under a temporary name, then renamed.
    Raises ValueError, writing nothing, for a tokenizer those files cannot reproduce."""
    sp = spm.SentencePieceProcessor(model_file=tokenizer_model or os.path.join(out_dir, "tokenizer.model"))
    _check_normalization(sp, "transformers")
    if sp.bos_id() < 0:
        raise ValueError("the tokenizer.model has no BOS token (<s>), which the model's text starts with")
    special = {"bos_token": sp.id_to_piece(sp.bos_id()), "unk_token": sp.id_to_piece(sp.unk_id())}
    if sp.eos_id() >= 0:
        special["eos_token"] = sp.id_to_piece(sp.eos_id())
    # PreTrainedTokenizerFast runs tokenizer.json exactly as written. transformers 5's LlamaTokenizer would rebuild
    # the pipeline around the vocabulary and prepend "▁" only when the text does not already start with a space,
    # so " x" would not encode as SentencePiece encodes it.
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special, "pad_token": None,
              "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
              "split_special_tokens": True,  # "<s>" typed in the text is text, as in SentencePiece
              "model_max_length": model_max_length or 1_000_000_000,
              "added_tokens_decoder": {str(i): {"content": sp.id_to_piece(i), "lstrip": False, "normalized": False,
                                                "rstrip": False, "single_word": False, "special": True}
                                       for i in range(sp.vocab_size()) if sp.is_control(i) or sp.is_unknown(i)}}
    generation = {"bos_token_id": sp.bos_id(), **({"eos_token_id": sp.eos_id()} if sp.eos_id() >= 0 else {})}
    _write_json(os.path.join(out_dir, "tokenizer.json"), hf_tokenizer_json(sp))
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), config)
    _write_json(os.path.join(out_dir, "special_tokens_map.json"), special)
    _write_json(os.path.join(out_dir, "generation_config.json"), generation)


def permute_for_gguf(w, n_heads):
    """q_proj / k_proj rows from the Hugging Face RoPE layout (each head rotates dimension i with i + head_dim/2)
    to llama.cpp's (it rotates 2i with 2i+1): within each head, interleave the two halves. This is what llama.cpp's
    convert_hf_to_gguf.py does for LLaMA (LlamaModel.permute); for k_proj, n_heads is the number of kv heads."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {  # our (Hugging Face) parameter names -> llama.cpp's, per layer and for the rest
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
}


def gguf_tensors(params, args):
    """{our name: float32 array} -> [(llama.cpp name, array)] in llama.cpp's layout."""
    out = []
    for name, w in params.items():
        base = name.removesuffix(".weight")
        if base.startswith("model.layers."):
            i, rest = base[len("model.layers."):].split(".", 1)
            new = f"blk.{i}.{GGUF_NAMES[rest]}.weight"
        else:
            new = GGUF_NAMES[base] + ".weight"
        if base.endswith("q_proj"):
            w = permute_for_gguf(w, args.n_heads)
        elif base.endswith("k_proj"):
            w = permute_for_gguf(w, args.n_kv_heads)
        out.append((new, w))
    return out


def gguf_vocab(sp, vocab_size):
    """tokens, scores and token types for tokenizer.ggml.*, padded to the model's vocab_size as llama.cpp's
    converter does (a model's embedding may have more rows than its tokenizer has pieces)."""
    import gguf
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores, types = [-1000.0] * vocab_size, [gguf.TokenType.UNUSED] * vocab_size
    for i in range(min(sp.vocab_size(), vocab_size)):
        tokens[i], scores[i] = sp.id_to_piece(i).encode("utf-8"), sp.get_score(i)
        types[i] = (gguf.TokenType.UNKNOWN if sp.is_unknown(i) else gguf.TokenType.CONTROL if sp.is_control(i)
                    else gguf.TokenType.UNUSED if sp.is_unused(i) else gguf.TokenType.BYTE if sp.is_byte(i)
                    else gguf.TokenType.NORMAL)
    return tokens, scores, types


def write_gguf(ckpt_dir, path, dtype="float32"):
    """Write the checkpoint in ckpt_dir as one GGUF file (weights, hyperparameters, tokenizer) at path."""
    try:
        import gguf
    except ImportError:
        sys.exit("error: writing GGUF needs the gguf package (llama.cpp's reader/writer): pip install gguf")
    from model import load_model  # before mlx.core: it loads the fast BLAS on Linux
    from mlx.utils import tree_flatten
    np_dtype = {"float32": np.float32, "float16": np.float16}.get(dtype)
    if np_dtype is None:
        sys.exit(f"error: dtype={dtype!r} is not one of float32, float16")
    tokenizer_path = os.path.join(ckpt_dir, "tokenizer.model")
    if not os.path.isfile(os.path.join(ckpt_dir, "config.json")):
        sys.exit(f"error: no checkpoint in {ckpt_dir!r} (config.json missing); train one first: python train.py")
    if not os.path.isfile(tokenizer_path):
        sys.exit(f"error: {ckpt_dir!r} has no tokenizer.model, which the GGUF file must include")
    model, config = load_model(ckpt_dir)
    args = model.args
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    try:
        _check_normalization(sp, "llama.cpp")
    except ValueError as e:
        sys.exit(f"error: {e}")
    if sp.vocab_size() > args.vocab_size:
        sys.exit(f"error: tokenizer.model has {sp.vocab_size()} pieces, the model only {args.vocab_size}")
    params = {k: np.array(v, dtype=np.float32) for k, v in tree_flatten(model.parameters())}

    w = gguf.GGUFWriter(None, "llama")
    add_gguf_metadata(w, args, sp, os.path.basename(os.path.abspath(ckpt_dir)), np_dtype)
    for name, t in gguf_tensors(params, args):
        w.add_tensor(name, t if t.ndim == 1 else t.astype(np_dtype))
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), ".tmp." + os.path.basename(path))
    try:
        w.write_header_to_file(Path(tmp))
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)  # a crash never leaves a half-written file under the real name
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return config


def add_gguf_metadata(w, args, sp, name, np_dtype):
    """The hyperparameters and the tokenizer, under the keys llama.cpp's LLaMA loader reads."""
    import gguf
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if np_dtype == np.float32 else gguf.LlamaFileType.MOSTLY_F16)
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
    tokens, scores, types = gguf_vocab(sp, args.vocab_size)
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
    w.add_add_space_prefix(sp.normalize("a").startswith("▁"))


if __name__ == "__main__":
    configure(globals())
    path = gguf_path or os.path.join(out_dir, "model.gguf")
    write_gguf(out_dir, path, dtype)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB, {dtype})")
    if hf_files:
        try:
            write_hf_tokenizer_files(out_dir)
        except ValueError as e:
            sys.exit(f"error: {e}")
        print(f"wrote {out_dir}/tokenizer.json, tokenizer_config.json, special_tokens_map.json, "
              f"generation_config.json")
