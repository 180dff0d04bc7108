"""The model's defining properties, on tiny configs: causality, KV cache = full forward, GQA, RoPE,
learning."""
import json

import pytest

from model import Model, ModelArgs, cross_entropy, load_model  # before mlx.core, as in the scripts
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten

from errors import Error

TINY = dict(dim=32, n_layers=2, n_heads=4, vocab_size=61, max_seq_len=32)


def tiny(**kw):
    mx.random.seed(0)
    model = Model(ModelArgs(**{**TINY, **kw}))
    mx.eval(model.parameters())
    return model


def tokens(shape, seed=0):
    return mx.random.randint(0, TINY["vocab_size"], shape, key=mx.random.key(seed))


@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": 2}, {"n_kv_heads": 1, "tie_embeddings": False}])
def test_changing_a_later_token_never_changes_earlier_logits(kw):
    model = tiny(**kw)
    x = tokens((2, 20))
    for t in (0, 7, 19):
        y = mx.array(x)
        y[:, t] = (x[:, t] + 1) % TINY["vocab_size"]
        a, b = model(x), model(y)
        assert mx.array_equal(a[:, :t], b[:, :t])
        assert not mx.allclose(a[:, t:], b[:, t:])  # and the token itself does matter from t on


@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": 2}, {"n_kv_heads": 1, "tie_embeddings": False}])
def test_kv_cache_gives_the_full_forward_logits(kw):
    model = tiny(**kw)
    x = tokens((2, 24), seed=1)
    full = model(x)
    cache = model.make_cache(batch_size=2)
    # a prompt, a second chunk after cached tokens (the causal mask must align), then one token at a
    # time
    parts = [model(x[:, :9], cache), model(x[:, 9:15], cache)]
    parts += [model(x[:, t:t + 1], cache) for t in range(15, 24)]
    assert cache[0].offset == 24
    assert mx.allclose(mx.concatenate(parts, axis=1), full, atol=1e-5)


def test_grouped_query_attention_shapes():
    args = ModelArgs(**{**TINY, "n_kv_heads": 2})
    model = Model(args)
    attn = model.model.layers[0].self_attn
    head_dim = args.dim // args.n_heads
    assert attn.q_proj.weight.shape == (args.n_heads * head_dim, args.dim)
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (2 * head_dim, args.dim)
    cache = model.make_cache(batch_size=3)
    assert model(tokens((3, 5)), cache).shape == (3, 5, args.vocab_size)
    assert cache[0].keys.shape == (3, 2, args.max_seq_len, head_dim)
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelArgs(**{**TINY, "n_kv_heads": 3})
    for bad, message in [({"dim": 0}, "dim=0 must be at least 1"),
                         ({"n_layers": 0}, "n_layers=0 must be"),
                         ({"n_kv_heads": -2}, "n_kv_heads=-2 must be"),
                         ({"hidden_dim": -1}, "hidden_dim=-1 must be at least 0"),
                         ({"dim": 8, "n_heads": 8}, r"dim / n_heads \(8 / 8\) must be even")]:
        with pytest.raises(ValueError, match=message):
            ModelArgs(**{**TINY, **bad})


def test_rope_score_depends_only_on_relative_position():
    rope = nn.RoPE(16, traditional=False)
    q, k = mx.random.normal((1, 1, 1, 16)), mx.random.normal((1, 1, 1, 16))
    def score(m, n):
        return (rope(q, offset=m) * rope(k, offset=n)).sum().item()
    assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-4)
    assert score(5, 2) == pytest.approx(score(3, 0), rel=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)


def test_hidden_dim_follows_llama_rule_and_params_are_named_like_hugging_face():
    args = ModelArgs(dim=256, multiple_of=32)
    assert args.hidden_dim == 704  # 2/3 * 4 * 256 = 682.7, rounded up to a multiple of 32
    names = {k for k, _ in tree_flatten(tiny(tie_embeddings=False).parameters())}
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
            "model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.gate_proj.weight",
            "model.layers.1.post_attention_layernorm.weight"} <= names
    assert "lm_head.weight" not in {k for k, _ in tree_flatten(tiny().parameters())}


def test_a_tiny_model_overfits_one_batch():
    model = tiny()
    x = tokens((4, 17), seed=2)
    opt = optim.AdamW(learning_rate=1e-2)
    def loss_fn(m):
        return nn.losses.cross_entropy(m(x[:, :-1]), x[:, 1:], reduction="mean")
    grad_fn = nn.value_and_grad(model, loss_fn)
    first = None
    for _ in range(150):
        loss, grads = grad_fn(model)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state, loss)
        first = first if first is not None else loss.item()
    assert first > 3.5 and loss.item() < 0.1


def test_config_round_trips_and_checkpoint_folder_loads(tmp_path):
    model = tiny(n_kv_heads=2, tie_embeddings=False)
    config = model.args.to_config()
    assert ModelArgs.from_config(config) == model.args
    (tmp_path / "config.json").write_text(json.dumps(config))
    mx.save_safetensors(str(tmp_path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    loaded, _ = load_model(str(tmp_path))
    x = tokens((1, 8))
    assert mx.array_equal(loaded(x), model(x))


def test_load_model_errors_name_the_problem(tmp_path):
    with pytest.raises(Error, match="no checkpoint in .*train one first"):
        load_model(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text(json.dumps(tiny().args.to_config()))
    mx.save_safetensors(str(tmp_path / "model.safetensors"), {"model.norm.weight": mx.ones((32,))})
    with pytest.raises(Error, match="do not fit its config.json"):
        load_model(str(tmp_path))


def test_flops_per_token_counts_every_matmul_weight_six_times():
    model = tiny()
    a = model.args
    matmul_weights = (a.n_layers * (4 * a.dim * a.dim + 3 * a.dim * a.hidden_dim)
                      + a.vocab_size * a.dim)
    attention = 12 * a.n_layers * a.dim * a.max_seq_len
    assert model.flops_per_token(a.max_seq_len) == pytest.approx(6 * matmul_weights + attention,
                                                                 rel=0.01)


@pytest.mark.parametrize("tie", [False, True])
def test_mixed_precision_gives_the_embedding_float32s_gradient(tie):
    # train.py's bfloat16 pass (Model.pass_weights, as its loss_fn uses it) on a batch that uses
    # one token a thousand times: the embedding's gradient must add up as in float32, within
    # bfloat16's rounding of the result. A bfloat16 scatter-add stalls at 256 uses (1/4 of it).
    model = tiny(tie_embeddings=tie)
    # token 7 a thousand times, each use with the same target, so that their gradients agree
    x = mx.concatenate([tokens((4, 8)), mx.full((4, 250), 7)], axis=1)
    y = mx.concatenate([tokens((4, 8), seed=1), mx.full((4, 250), 3)], axis=1)

    def grads(dtype):
        def loss_fn(model, x, y):
            weights = model.parameters()
            model.update(model.pass_weights(dtype))
            logits = model(x)
            model.update(weights)
            return cross_entropy(logits, y).mean()
        return dict(tree_flatten(nn.value_and_grad(model, loss_fn)(model, x, y)[1]))

    mixed, exact = grads(mx.bfloat16), grads(mx.float32)
    assert all(g.dtype == mx.float32 for g in mixed.values())
    row, ref = (g["model.embed_tokens.weight"][7] for g in (mixed, exact))
    assert mx.linalg.norm(row).item() == pytest.approx(mx.linalg.norm(ref).item(), rel=0.03)
    assert (row * ref).sum().item() / (mx.linalg.norm(row) * mx.linalg.norm(ref)).item() > 0.99
    # the other weights ran in bfloat16: their gradients differ from float32's, a little
    q = "model.layers.0.self_attn.q_proj.weight"
    assert 0 < (mx.linalg.norm(mixed[q] - exact[q]) / mx.linalg.norm(exact[q])).item() < 0.1


def test_a_folder_loads_in_the_dtype_it_stores(tmp_path):
    # a bfloat16 7B folder must not double to float32 in memory (train.py casts for itself)
    model = tiny()
    model.set_dtype(mx.bfloat16)
    (tmp_path / "config.json").write_text(json.dumps(model.args.to_config()))
    mx.save_safetensors(str(tmp_path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    loaded, _ = load_model(str(tmp_path))
    assert {p.dtype for _, p in tree_flatten(loaded.parameters())} == {mx.bfloat16}
    assert loaded.make_cache()[0].keys.dtype == mx.bfloat16
    x = tokens((1, 8))
    assert loaded(x).dtype == mx.bfloat16 and mx.array_equal(loaded(x), model(x))


def test_attention_weights_are_what_attention_takes_from_each_earlier_token():
    model = tiny(n_kv_heads=2)
    x = tokens((1, 12))
    weights = model.attention_weights(x)  # (layers, heads, L, L)
    assert weights.shape == (2, 4, 12, 12)
    assert mx.allclose(weights.sum(-1), mx.ones((2, 4, 12)), atol=1e-5)
    assert mx.all(mx.triu(weights, k=1) == 0)  # nothing from later tokens
    wide = tiny(max_seq_len=512)  # and a bfloat16 model's long rows too
    wide.set_dtype(mx.bfloat16)
    sums = wide.attention_weights(tokens((1, 512))).sum(-1)
    assert mx.allclose(sums, mx.ones_like(sums), atol=1e-2)
    # the first block's attention output is these weights times its values
    block, h = model.model.layers[0], model.model.embed_tokens(x)
    attn, normed = block.self_attn, block.input_layernorm(h)
    _, _, v = attn.project(normed)
    mixed = weights[0][None] @ mx.repeat(v, 2, axis=1)  # (1, heads, L, hd)
    out = attn.o_proj(mixed.transpose(0, 2, 1, 3).reshape(1, 12, -1))
    assert mx.allclose(out, attn(normed), atol=1e-5)
