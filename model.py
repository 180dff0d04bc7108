"""
The LLaMA-2 architecture in MLX: RMSNorm, rotary embeddings, SwiGLU, grouped-query attention and a
KV cache.

Parameter names follow the Hugging Face / mlx-lm llama layout (model.layers.N.self_attn.q_proj,
...) and ModelArgs is saved as a Hugging Face style config.json, so a checkpoint folder is already
in the form that mlx-lm and transformers read. Every script imports it before mlx.core (it imports
cpu.py first).
"""
import glob
import math
import os
from dataclasses import dataclass, fields

import cpu  # first: on Linux it loads OpenBLAS, which must happen before mlx.core is imported
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map_with_path, tree_unflatten

import files
from errors import Error

# MLX's fused kernels. On the CPU, where MLX runs them unfused on one thread, cpu.py's versions of
# the same functions are faster; they give the same values and gradients (tests/test_cpu.py).
attention = cpu.attention if cpu.ON_CPU else mx.fast.scaled_dot_product_attention
silu = cpu.silu if cpu.ON_CPU else nn.silu
# (..., vocab) -> each token's loss, in float32 whatever the logits' dtype; on a GPU fused, so the
# logits and their gradient get no float32 copy
cross_entropy = cpu.cross_entropy if cpu.ON_CPU else mx.fast.cross_entropy


def dropout(x, p, key):
    # nn.Dropout draws its masks from MLX's global random state, which a checkpoint does not hold;
    # a key given with each step (train.py's) keeps the masks reproducible. No gradient flows into
    # a key: the mx.checkpoint of grad_checkpoint would otherwise ask the random bits for one.
    if not p:
        return x
    keep = mx.random.bernoulli(1 - p, x.shape, key=None if key is None else mx.stop_gradient(key))
    return mx.where(keep, x / (1 - p), 0)


@dataclass
class ModelArgs:
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 0  # 0: n_heads (plain multi-head attention); fewer: grouped-query attention
    vocab_size: int = 4096
    hidden_dim: int = 0  # 0 means LLaMA's rule: 2/3 of 4*dim, rounded up to multiple_of
    multiple_of: int = 32
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 128
    tie_embeddings: bool = True

    def __post_init__(self):
        self.n_kv_heads = self.n_kv_heads or self.n_heads
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
                     "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.hidden_dim < 0:
            raise ValueError(f"hidden_dim={self.hidden_dim} must be at least 0 (0: LLaMA's rule)")
        if not self.hidden_dim:
            hidden = int(2 * 4 * self.dim / 3)
            self.hidden_dim = self.multiple_of * math.ceil(hidden / self.multiple_of)
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"dim ({self.dim}) must divide by n_heads ({self.n_heads}), "
                             f"and n_heads by n_kv_heads ({self.n_kv_heads})")
        if self.dim // self.n_heads % 2:  # RoPE turns pairs of a head's dimensions
            raise ValueError(f"dim / n_heads ({self.dim} / {self.n_heads}) must be even")

    # config.json uses the keys of Hugging Face's LlamaConfig, which mlx-lm's llama loader also
    # reads.
    def to_config(self):
        return {
            "model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "hidden_size": self.dim, "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads, "num_key_value_heads": self.n_kv_heads,
            "intermediate_size": self.hidden_dim, "vocab_size": self.vocab_size,
            "rms_norm_eps": self.norm_eps, "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_seq_len, "tie_word_embeddings": self.tie_embeddings,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
        }

    @classmethod
    def from_config(cls, config):
        # transformers 5 keeps rope_theta in rope_parameters, not at the top level
        rope = config.get("rope_parameters") or {}
        return cls(dim=config["hidden_size"], n_layers=config["num_hidden_layers"],
                   n_heads=config["num_attention_heads"],
                   n_kv_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
                   hidden_dim=config["intermediate_size"], vocab_size=config["vocab_size"],
                   norm_eps=config.get("rms_norm_eps", 1e-5),
                   rope_theta=config.get("rope_theta", rope.get("rope_theta", 10000.0)),
                   max_seq_len=config.get("max_position_embeddings", 2048),
                   tie_embeddings=config.get("tie_word_embeddings", False))


MODEL_ARGS = [f.name for f in fields(ModelArgs)]


class KVCache:
    """Keys and values of the tokens seen so far, preallocated to max_seq_len so decoding never
    copies."""

    def __init__(self, args, batch_size=1, dtype=mx.float32):
        shape = (batch_size, args.n_kv_heads, args.max_seq_len, args.dim // args.n_heads)
        self.keys, self.values = mx.zeros(shape, dtype), mx.zeros(shape, dtype)
        self.offset = 0

    def update(self, k, v):  # k, v: (B, n_kv_heads, L, head_dim)
        end = self.offset + k.shape[2]
        self.keys[:, :, self.offset:end] = k
        self.values[:, :, self.offset:end] = v
        self.offset = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class Attention(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.n_heads, self.n_kv_heads = args.n_heads, args.n_kv_heads
        head_dim = args.dim // args.n_heads
        self.scale = head_dim ** -0.5
        self.q_proj = nn.Linear(args.dim, args.n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(args.n_heads * head_dim, args.dim, bias=False)
        # traditional=False rotates the two halves of each head, the Hugging Face layout, so weights
        # load elsewhere.
        self.rope = nn.RoPE(head_dim, traditional=False, base=args.rope_theta)

    def project(self, x, offset=0):
        B, L, _ = x.shape
        # q: (B, n_heads, L, hd); k, v: (B, n_kv_heads, L, hd)
        q = self.q_proj(x).reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        return self.rope(q, offset=offset), self.rope(k, offset=offset), v

    def __call__(self, x, cache=None):
        B, L, _ = x.shape
        q, k, v = self.project(x, cache.offset if cache is not None else 0)
        if cache is not None:
            k, v = cache.update(k, v)
        # causal: query i sees keys up to it
        out = attention(q, k, v, scale=self.scale, mask="causal" if L > 1 else None)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))

    def weights(self, x):  # -> (B, n_heads, L, L): how much each query takes from each key
        q, k, _ = self.project(x)
        k = mx.repeat(k, self.n_heads // self.n_kv_heads, axis=1)  # each query head's kv head
        seen = mx.tril(mx.ones((x.shape[1], x.shape[1]), mx.bool_))
        scores = ((q * self.scale) @ k.swapaxes(-1, -2)).astype(mx.float32)  # rows sum to 1
        return mx.softmax(mx.where(seen, scores, -mx.inf), axis=-1)


class MLP(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.gate_proj = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.up_proj = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.down_proj = nn.Linear(args.hidden_dim, args.dim, bias=False)

    def __call__(self, x):
        return self.down_proj(silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class TransformerBlock(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.self_attn = Attention(args)
        self.mlp = MLP(args)
        self.input_layernorm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.dim, eps=args.norm_eps)

    # p, keys: dropout on the two residual branches
    def __call__(self, x, cache=None, p=0.0, keys=(None, None)):
        h = x + dropout(self.self_attn(self.input_layernorm(x), cache), p, keys[0])
        return h + dropout(self.mlp(self.post_attention_layernorm(h)), p, keys[1])


class LlamaModel(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = [TransformerBlock(args) for _ in range(args.n_layers)]
        self.norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        # Set by Model.set_training: dropout (training mode only; not in ModelArgs, LLaMA's
        # inference has none) and grad_checkpoint. The "_" keeps the masks' key out of
        # parameters() (so out of the optimizer and model.safetensors), while mx.compile still
        # takes it in with the model's state.
        self.dropout, self.grad_checkpoint = 0.0, False
        self._dropout_key = None  # None: MLX's global random state, as nn.Dropout

    def __call__(self, tokens, cache=None):
        p = self.dropout if self.training else 0.0
        # a key for the embedding's output and each block's two branches
        n = 1 + 2 * len(self.layers)
        keys = (mx.random.split(self._dropout_key, n) if p and self._dropout_key is not None
                else [None] * n)
        # the blocks compute in their weights' dtype: under mixed precision (Model.pass_weights)
        # the embedding alone stays float32
        h = dropout(self.embed_tokens(tokens).astype(self.norm.weight.dtype), p, keys[0])
        for i, layer in enumerate(self.layers):
            block = nn.utils.checkpoint(layer) if self.grad_checkpoint and cache is None else layer
            h = block(h, cache[i] if cache is not None else None, p, keys[1 + 2 * i:3 + 2 * i])
        return self.norm(h)


class Model(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.args = args
        self.model = LlamaModel(args)
        if not args.tie_embeddings:
            self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self):
        # GPT-2 / llama2.c init: N(0, 0.02), and the projections that write into the residual
        # stream scaled down by sqrt(2 * n_layers) so the stream's variance does not grow with
        # depth.
        residual_std = 0.02 / math.sqrt(2 * self.args.n_layers)
        def init(path, p):
            if path.endswith("norm.weight"):
                return p
            std = residual_std if path.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            return mx.random.normal(p.shape, scale=std, dtype=p.dtype)
        self.update(tree_unflatten([(k, init(k, v)) for k, v in tree_flatten(self.parameters())]))

    def __call__(self, tokens, cache=None):  # tokens: (B, L) -> logits (B, L, vocab_size)
        h = self.model(tokens, cache)
        if self.args.tie_embeddings:  # cast where it multiplies: the pass's dtype, not float32's
            return h @ self.model.embed_tokens.weight.astype(h.dtype).T
        return self.lm_head(h)

    def pass_weights(self, dtype):
        """The weights a mixed-precision pass runs on: `dtype` copies of the float32 master
        weights (whose gradients come back in float32), except the embedding's. Its lookup's
        gradient is a scatter-add that in bfloat16 rounds each addition, so a token used 1,000
        times got 256 times a row's gradient; in float32 it adds up (docs/precision.md)."""
        return tree_map_with_path(
            lambda path, w: w if path == "model.embed_tokens.weight" else w.astype(dtype),
            self.parameters())

    def attention_weights(self, tokens):  # (1, L) -> (n_layers, n_heads, L, L), for a picture
        h, maps = self.model.embed_tokens(tokens).astype(self.model.norm.weight.dtype), []
        for layer in self.model.layers:
            maps.append(layer.self_attn.weights(layer.input_layernorm(h))[0])
            h = layer(h)
        return mx.stack(maps)

    def set_training(self, dropout=0.0, grad_checkpoint=False):
        """Dropout on the embedding's output and each residual branch (in training mode only), and
        grad_checkpoint: keep only each block's input, recomputing the rest in the backward pass."""
        self.model.dropout, self.model.grad_checkpoint = dropout, grad_checkpoint
        return self

    def set_dropout_key(self, key):
        """The key that the next pass draws its dropout masks from: a resumed run draws them
        again."""
        self.model._dropout_key = key

    def make_cache(self, batch_size=1):
        dtype = self.model.embed_tokens.weight.dtype
        return [KVCache(self.args, batch_size, dtype) for _ in range(self.args.n_layers)]

    def num_params(self, embedding=True):
        n = sum(p.size for _, p in tree_flatten(self.parameters()))
        return n if embedding else n - self.model.embed_tokens.weight.size

    def flops_per_token(self, seq_len):
        # 6 flops per matmul weight per token (2 forward, 4 backward), the output layer included
        # even when tied, plus attention's QK^T and AV: 6 * 2 * n_layers * dim * seq_len (PaLM
        # appendix B; nanoGPT's estimate_mfu).
        a = self.args
        matmul_weights = (self.num_params(embedding=False)
                          + a.vocab_size * a.dim * (1 if a.tie_embeddings else 0))
        return 6 * matmul_weights + 12 * a.n_layers * a.dim * seq_len

    def sanitize(self, weights):
        """Foreign checkpoints' extras out, as in mlx-lm: RoPE's inverse frequencies (older
        transformers saved them), and a tied model's copy of lm_head."""
        weights = {k: v for k, v in weights.items() if "rotary_emb" not in k}
        if self.args.tie_embeddings:
            weights.pop("lm_head.weight", None)
        return weights


def load_model(path):
    """A checkpoint folder, ours or a Hugging Face llama one (config.json + model*.safetensors)
    -> (Model, config)."""
    config = files.read_config(path)
    config_path = os.path.join(path, "config.json")
    rope_scaling = (config.get("rope_scaling")
                    or (config.get("rope_parameters") or {}).get("rope_type", "default"))
    if config.get("model_type") != "llama" or rope_scaling != "default":
        raise Error(f"{config_path} is not a plain llama model "
                    f"(model_type={config.get('model_type')!r}, rope scaling {rope_scaling!r}); "
                    f"only LLaMA-2 style checkpoints load here")
    try:
        args = ModelArgs.from_config(config)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise Error(f"{config_path} does not describe a model ({e.__class__.__name__}: {e}); "
                    f"restore it from a copy of the folder")
    if config.get("head_dim", args.dim // args.n_heads) != args.dim // args.n_heads:
        raise Error(f"{config_path} has head_dim {config['head_dim']}, not hidden_size / "
                    f"num_attention_heads; only LLaMA-2 style checkpoints load here")
    model = Model(args)
    weights = {}
    # model.safetensors, or Hugging Face's shards
    shards = sorted(glob.glob(os.path.join(path, "model*.safetensors")))
    if not shards:
        raise Error(f"{path!r} has config.json but no model.safetensors; "
                    f"copy the weights back into it")
    for file in shards:
        try:
            weights.update(mx.load(file))
        except (RuntimeError, ValueError) as e:
            raise Error(f"{file} cannot be read ({e}); it is damaged: "
                        f"restore it from a copy of the folder")
    try:  # in the stored dtype: a bfloat16 7B model stays 13 GB (train.py casts to float32)
        model.load_weights(list(model.sanitize(weights).items()))
    except ValueError as e:
        raise Error(f"the weights in {path!r} do not fit its config.json: {e}")
    mx.eval(model.parameters())
    return model, config
