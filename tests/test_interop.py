"""Checkpoints run elsewhere, and others' run here: mlx-lm and transformers load a checkpoint folder
unchanged and compute our logits, their tokenizers agree with SentencePiece, the GGUF file holds
llama.cpp's layout, and a Hugging Face llama folder trains with train.py. Needs
requirements-dev.txt; each test skips without its package."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from model import Model, ModelArgs, load_model  # before mlx.core, as in the scripts
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

import errors
from hf_tokenizer import hf_tokenizer_files

ROOT = Path(__file__).resolve().parent.parent
# Text that SentencePiece keeps as is and other tokenizers might not: runs of spaces, tabs,
# newlines, a leading space, characters the vocabulary lacks (byte fallback), the "▁"
# SentencePiece reserves, special-token spellings.
TEXTS = ["def f(x):\n    return x + 1\n", "  two  spaces,\ttab\n\n\nnewlines ", " leading",
         "trailing   ", "émoji 😀, 中文 and ünïcödé", "a▁b",
         "<s> is not </s> nor <unk>", "", " ", "\n", "1234567890"]
# tied embeddings with grouped-query attention and settings off their defaults (a loader that drops
# rope_theta or rms_norm_eps shows), and untied embeddings with plain multi-head attention
CONFIGS = {
    "tied-gqa": ["--n_heads=4", "--n_kv_heads=2", "--tie_embeddings=True", "--rope_theta=50000.0",
                 "--norm_eps=1e-6"],
    "untied-mha": ["--n_heads=4", "--n_kv_heads=0", "--tie_embeddings=False"],
}


def write_hf_tokenizer_files(folder):
    for name, blob in hf_tokenizer_files(str(folder / "tokenizer.model")).items():
        (folder / name).write_bytes(blob)


def write_gguf(ckpt, path, dtype="float32"):
    run("export.py", f"--out_dir={ckpt}", f"--gguf_path={path}", f"--dtype={dtype}",
        "--hf_files=False")


def run(*args, check=True):
    r = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed:\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    json_pkg = Path(sysconfig.get_paths()["stdlib"]) / "json"
    path.write_text("".join(p.read_text(encoding="utf-8") for p in sorted(json_pkg.glob("*.py"))),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data_dir(corpus):
    data = corpus.parent / "data"
    run("prepare.py", f"--input={corpus}", "--dataset=tiny", f"--data_dir={data}",
        "--vocab_size=400", "--num_threads=1")
    return data


@pytest.fixture(scope="module", params=list(CONFIGS))
def ckpt(request, data_dir):
    """A checkpoint folder as train.py writes it: a few steps of a tiny model."""
    out = data_dir.parent / request.param
    run("train.py", "--dataset=tiny", f"--data_dir={data_dir}", f"--out_dir={out}", "--dim=64",
        "--n_layers=2", "--max_seq_len=32", "--batch_size=4", "--max_iters=3", "--eval_interval=3",
        "--eval_iters=1", "--learning_rate=1e-2", "--warmup_iters=0", "--compile=False",
        "--peak_flops=1.0", *CONFIGS[request.param])
    return out


@pytest.fixture(scope="module")
def llama_style_tokenizer(corpus):
    """A tokenizer made the way Llama 2's was (SentencePiece itself, a space added in front of the
    text), unlike prepare.py's: the files written for transformers must follow either."""
    prefix = corpus.parent / "llama_style"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), model_type="bpe", vocab_size=384, unk_id=0,
        bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True, num_threads=1,
        minloglevel=2)
    return prefix.with_suffix(".model")


def prompt_ids(ckpt):
    sp = spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
    return [sp.bos_id()] + sp.encode("def loads(s):\n    return  json.decode(s) 😀")


def our_logits(ckpt, ids):
    model, _ = load_model(str(ckpt))
    return np.array(model(mx.array([ids])))


def our_greedy(ckpt, ids, n):
    model, _ = load_model(str(ckpt))
    ids = list(ids)
    for _ in range(n):
        ids.append(model(mx.array([ids]))[0, -1].argmax().item())
    return ids


def assert_close(theirs, ours):
    # float32 through two layers: rounding differs by ~1e-7 of the logits' scale; a wrong
    # rope_theta, norm eps or head layout by 1e-3 or more (position 0 alone can still agree: RoPE
    # does not turn it)
    diff, scale = np.abs(theirs - ours).max(), max(1.0, np.abs(ours).max())
    assert diff <= 1e-5 * scale, f"logits differ by up to {diff:.2e} (largest logit {scale:.2f})"


def assert_tokenizer_agrees(tok, sp):
    for text in TEXTS:
        ids = sp.encode(text)
        assert tok.encode(text, add_special_tokens=False) == ids, text
        # <s> first, as train.py's documents start
        assert tok.encode(text) == [sp.bos_id()] + ids, text
        assert tok.decode(ids) == sp.decode(ids) == text.replace("▁", " "), text


# --------------------------------------------------------------------- out: mlx-lm and transformers

def test_checkpoint_has_the_files_other_tools_read(ckpt):
    for name in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        assert (ckpt / name).is_file(), f"train.py did not write {name}"


def test_mlx_lm_loads_checkpoint_and_computes_our_logits(ckpt):
    mlx_lm = pytest.importorskip("mlx_lm")
    from mlx_lm.tokenizer_utils import SPMStreamingDetokenizer
    model, tok = mlx_lm.load(str(ckpt))
    ids = prompt_ids(ckpt)
    assert_close(np.array(model(mx.array([ids]))), our_logits(ckpt, ids))

    sp = spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
    assert_tokenizer_agrees(tok, sp)
    # the fast one, picked from tokenizer.json
    assert isinstance(tok.detokenizer, SPMStreamingDetokenizer)
    # greedy by default
    text = mlx_lm.generate(model, tok, prompt=ids, max_tokens=12, verbose=False)
    new = our_greedy(ckpt, ids, 12)[len(ids):]
    assert text == sp.decode(new[:new.index(sp.eos_id())] if sp.eos_id() in new else new)


def test_transformers_loads_checkpoint_and_computes_our_logits(ckpt):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    ids = prompt_ids(ckpt)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits.numpy()
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                             pad_token_id=0)
    assert_close(logits, our_logits(ckpt, ids))
    ours = our_greedy(ckpt, ids, 12)
    # from generation_config.json; generate() stops after it
    eos = model.generation_config.eos_token_id
    assert out[0].tolist() == (ours[:ours.index(eos, len(ids)) + 1] if eos in ours[len(ids):]
                               else ours)

    tok = transformers.AutoTokenizer.from_pretrained(ckpt)
    assert_tokenizer_agrees(tok,
                            spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model")))


def test_hf_tokenizer_files_follow_a_llama_style_tokenizer(llama_style_tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    shutil.copy(llama_style_tokenizer, tmp_path / "tokenizer.model")
    write_hf_tokenizer_files(tmp_path)
    sp = spm.SentencePieceProcessor(model_file=str(llama_style_tokenizer))
    assert sp.encode("x", out_type=str)[0].startswith("▁")  # it does add a space in front
    assert_tokenizer_agrees(transformers.AutoTokenizer.from_pretrained(tmp_path), sp)


def test_hf_tokenizer_files_refuse_a_normalizing_tokenizer(corpus, tmp_path):
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "tokenizer"),
                                   vocab_size=384, model_type="bpe", byte_fallback=True,
                                   num_threads=1, minloglevel=2)
    with pytest.raises(errors.Error,
                       match="this tokenizer.model normalizes text .* normalization_rule_name"):
        write_hf_tokenizer_files(tmp_path)
    assert not (tmp_path / "tokenizer.json").exists()


# -------------------------------------------------------------------------- out: GGUF for llama.cpp

def read_gguf(path):
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(path)
    meta = {name: field.contents() for name, field in reader.fields.items()
            if not name.startswith("GGUF.")}
    return meta, {t.name: t for t in reader.tensors}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gguf_holds_the_checkpoint_in_llama_cpp_layout(ckpt, dtype, tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "model.gguf"
    write_gguf(ckpt, path, dtype)
    meta, tensors = read_gguf(path)
    model, config = load_model(str(ckpt))
    a = model.args
    assert {k: v for k, v in meta.items() if k.startswith("llama.")} == pytest.approx({
        "llama.context_length": a.max_seq_len, "llama.embedding_length": a.dim,
        "llama.block_count": a.n_layers, "llama.feed_forward_length": a.hidden_dim,
        "llama.attention.head_count": a.n_heads, "llama.attention.head_count_kv": a.n_kv_heads,
        "llama.attention.layer_norm_rms_epsilon": a.norm_eps, "llama.rope.freq_base": a.rope_theta,
        "llama.rope.dimension_count": a.dim // a.n_heads, "llama.vocab_size": a.vocab_size})
    assert meta["general.architecture"] == "llama"
    assert meta["general.file_type"] == (0 if dtype == "float32" else 1)

    sp = spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
    n = sp.vocab_size()
    assert meta["tokenizer.ggml.model"] == "llama"
    assert meta["tokenizer.ggml.tokens"] == [sp.id_to_piece(i) for i in range(n)]
    assert meta["tokenizer.ggml.scores"] == pytest.approx([sp.get_score(i) for i in range(n)])
    types = meta["tokenizer.ggml.token_type"]
    assert ([i for i, t in enumerate(types) if t == gguf.TokenType.BYTE]
            == [i for i in range(n) if sp.is_byte(i)])
    assert types[:3] == [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    assert (meta["tokenizer.ggml.unknown_token_id"], meta["tokenizer.ggml.bos_token_id"],
            meta["tokenizer.ggml.eos_token_id"]) == (0, 1, 2)
    # prepare.py's tokenizer adds no space in front
    assert meta["tokenizer.ggml.add_space_prefix"] is False

    # every parameter is there under llama.cpp's name, with q and k permuted: undo that and compare
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, a.n_layers)
    params = dict(tree_flatten(model.parameters()))
    assert len(tensors) == len(params) and ("output.weight" in tensors) == (not a.tie_embeddings)
    for name, w in params.items():
        t = tensors[names.get_name(name, try_suffixes=(".weight",))]
        w = np.array(w)
        data = np.array(t.data)
        # GGUF lists dims innermost first
        assert data.shape == w.shape and list(t.shape) == list(reversed(w.shape))
        assert data.dtype == (np.float32 if dtype == "float32" or w.ndim == 1 else np.float16), name
        heads = a.n_heads if "q_proj" in name else a.n_kv_heads if "k_proj" in name else 0
        if heads:
            hd = w.shape[0] // heads
            data = data.reshape(heads, hd // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
        np.testing.assert_array_equal(data, w.astype(data.dtype), err_msg=name)


def test_gguf_weights_with_interleaved_rope_compute_our_logits(ckpt, tmp_path):
    # llama.cpp's LLaMA rotates dimension pairs (2i, 2i+1) of each head, MLX's traditional RoPE;
    # with the permuted q/k weights from the GGUF file that model must compute exactly what ours
    # does with the Hugging Face halves.
    pytest.importorskip("gguf")
    path = tmp_path / "model.gguf"
    write_gguf(ckpt, path)
    _, tensors = read_gguf(path)
    model, _ = load_model(str(ckpt))
    a = model.args
    interleaved = Model(a)
    gguf_name = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                 "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                 "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
                 "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    weights = []
    for name, t in tensors.items():
        if name.startswith("blk."):
            _, i, kind, _ = name.split(".")
            name = f"model.layers.{i}.{gguf_name[kind]}.weight"
        else:
            name = {"token_embd.weight": "model.embed_tokens.weight",
                    "output_norm.weight": "model.norm.weight",
                    "output.weight": "lm_head.weight"}[name]
        weights.append((name, mx.array(np.array(t.data))))
    interleaved.load_weights(weights)
    for layer in interleaved.model.layers:
        layer.self_attn.rope = nn.RoPE(a.dim // a.n_heads, traditional=True, base=a.rope_theta)
    ids = prompt_ids(ckpt)
    ours = our_logits(ckpt, ids)
    permuted = np.array(interleaved(mx.array([ids])))
    assert_close(permuted, ours)
    # the check has teeth: the same model without the permutation computes something else, by far
    # more than the rounding between the two right ones (a tiny model's q and k barely matter, so no
    # absolute bound would do)
    interleaved.load_weights(list(tree_flatten(model.parameters())))
    unpermuted = np.array(interleaved(mx.array([ids])))
    assert np.abs(unpermuted - ours).max() > 100 * max(np.abs(permuted - ours).max(), 1e-7)


def test_export_script(ckpt, tmp_path):
    pytest.importorskip("gguf")
    r = run("export.py", f"--out_dir={ckpt}", f"--gguf_path={tmp_path / 'm.gguf'}",
            "--dtype=float16")
    assert "wrote" in r.stdout and (tmp_path / "m.gguf").is_file()
    assert os.listdir(tmp_path) == ["m.gguf"]  # no temporary file left beside it
    r = run("export.py", f"--out_dir={tmp_path / 'nothing'}", check=False)
    assert r.returncode != 0 and r.stderr.strip().startswith("error: no checkpoint in")
    assert len(r.stderr.strip().splitlines()) == 1
    r = run("export.py", f"--out_dir={ckpt}", "--dtype=int4", f"--gguf_path={tmp_path / 'x.gguf'}",
            check=False)
    assert r.returncode != 0 and "dtype='int4' is not one of float32, float16" in r.stderr


# ------------------------------------------------------------------ in: a Hugging Face llama folder

def test_hf_llama_folder_loads_and_trains_here(llama_style_tokenizer, corpus, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    sp = spm.SentencePieceProcessor(model_file=str(llama_style_tokenizer))
    config = transformers.LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=160, vocab_size=sp.vocab_size(), max_position_embeddings=64,
        rms_norm_eps=1e-6, rope_theta=50000.0, tie_word_embeddings=False, bos_token_id=1,
        eos_token_id=2)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).float().eval()
    folder = tmp_path / "hf"
    hf.save_pretrained(folder)
    shutil.copy(llama_style_tokenizer, folder / "tokenizer.model")

    ids = [sp.bos_id()] + sp.encode("def loads(s):\n    return  json.decode(s)")
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits.numpy()
    # iteration 0 of train.py --init_from=folder is this model
    assert_close(our_logits(folder, ids), theirs)

    data, out = tmp_path / "data", tmp_path / "out"
    run("prepare.py", f"--input={corpus}", f"--tokenizer={folder / 'tokenizer.model'}",
        "--dataset=hf", f"--data_dir={data}", "--num_threads=1")
    r = run("train.py", f"--init_from={folder}", "--dataset=hf", f"--data_dir={data}",
            f"--out_dir={out}", "--max_seq_len=32", "--batch_size=4", "--max_iters=2",
            "--eval_interval=2", "--eval_iters=1", "--compile=False", "--peak_flops=1.0")
    assert "saved" in r.stdout
    trained = json.loads((out / "config.json").read_text())
    assert trained["train_state"]["iter"] == 2
    assert ModelArgs.from_config(trained) == ModelArgs.from_config({**config.to_dict(),
                                                                    "rope_theta": 50000.0})
    # and back: what train.py wrote loads in transformers again, tokenizer included
    back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        assert_close(back(torch.tensor([ids])).logits.numpy(), our_logits(out, ids))
    assert_tokenizer_agrees(transformers.AutoTokenizer.from_pretrained(out), sp)
