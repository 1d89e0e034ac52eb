"""Helpers shared by the per-family converters: strict config checking and weight plumbing."""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

# Keys every HF config carries (PretrainedConfig) or that never change the forward pass.
GENERIC_KEYS = frozenset(
    {
        "_name_or_path", "architectures", "chunk_size_feed_forward", "dtype", "torch_dtype", "id2label",
        "label2id", "is_encoder_decoder", "model_type", "output_attentions", "output_hidden_states",
        "problem_type", "return_dict", "transformers_version", "bos_token_id", "eos_token_id",
        "pad_token_id", "sep_token_id", "decoder_start_token_id", "use_cache", "initializer_range",
        "is_decoder", "tokenizer_class", "prefix", "task_specific_params", "finetuning_task",
        "tie_encoder_decoder", "add_cross_attention", "cross_attention_hidden_size", "pruned_heads",
        "torchscript", "use_return_dict", "num_labels", "_attn_implementation_autoset",
        "_commit_hash", "classifier_dropout", "gradient_checkpointing", "max_length", "keys_to_ignore_at_inference",
    }
)
# Provenance and tokenizer metadata that some writers add (transformers' GGUF conversion writes the
# first two into config.json): accepted and ignored, since they never change the computation.
METADATA_KEYS = frozenset({"_model_name_or_path", "unk_token_id"})


def check_fields(family: str, hf: Mapping, handled: set, must_equal: Mapping | None = None) -> None:
    """Refuse any HF config field this converter does not understand, naming it.

    ``handled`` are fields the converter maps or that do not affect inference (dropouts);
    ``must_equal`` maps fields to the only value(s) the converter supports.
    """
    must_equal = dict(must_equal or {})
    for key, value in hf.items():
        if key in GENERIC_KEYS or key in METADATA_KEYS or key in handled:
            continue
        if key in must_equal:
            allowed = must_equal[key]
            allowed = allowed if isinstance(allowed, tuple) else (allowed,)
            if value not in allowed:
                raise ValueError(f"{family}: config field {key}={value!r} is not supported (supported: {allowed})")
            continue
        raise ValueError(
            f"{family}: config field {key!r} (= {value!r}) is not handled by the converter; refusing to run a "
            f"model that may differ from the checkpoint"
        )
    if hf.get("add_cross_attention"):
        raise ValueError(f"{family}: config field add_cross_attention=True is not supported")


ACT_NAMES = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_fast",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
    "quick_gelu": "quick_gelu",
}


def activation(family: str, name: str) -> str:
    if name not in ACT_NAMES:
        raise ValueError(f"{family}: activation {name!r} is not supported; supported: {sorted(ACT_NAMES)}")
    return ACT_NAMES[name]


def rope_fields(family: str, hf: Mapping) -> dict:
    """Map HF rope settings (``rope_parameters`` or legacy ``rope_scaling``/``rope_theta``) to Config fields."""
    rp = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling")
    if legacy:
        rp.update(legacy)
    base = rp.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = rp.get("rope_type", rp.get("type", "default"))
    out = {"rotary_base": float(base)}
    if kind == "default":
        out["rope_scaling"] = "none"
    elif kind == "linear":
        out.update(rope_scaling="linear", rope_factor=float(rp["factor"]))
    elif kind == "llama3":
        out.update(
            rope_scaling="llama3",
            rope_factor=float(rp["factor"]),
            rope_low_freq_factor=float(rp["low_freq_factor"]),
            rope_high_freq_factor=float(rp["high_freq_factor"]),
            rope_original_ctx=int(rp["original_max_position_embeddings"]),
        )
    else:
        raise ValueError(f"{family}: rope type {kind!r} is not supported; supported: default, linear, llama3")
    extra = set(rp) - {"rope_theta", "rope_type", "type", "factor", "low_freq_factor", "high_freq_factor",
                       "original_max_position_embeddings", "partial_rotary_factor"}
    if extra:
        raise ValueError(f"{family}: rope parameters {sorted(extra)} are not supported")
    return out


class Weights:
    """Name -> numpy array lookup that tolerates a missing model prefix and names what is missing."""

    def __init__(self, get: Callable[[str], np.ndarray], names, prefixes=("",)):
        self._get = get
        self.names = set(names)
        self.prefixes = prefixes
        self.used = set()

    def has(self, name: str) -> bool:
        return any(p + name in self.names for p in self.prefixes)

    def __call__(self, name: str) -> np.ndarray:
        for p in self.prefixes:
            if p + name in self.names:
                self.used.add(p + name)
                return np.asarray(self._get(p + name))
        raise ValueError(
            f"checkpoint is missing weight {name!r} (tried prefixes {list(self.prefixes)}); "
            f"it has {len(self.names)} tensors, e.g. {sorted(self.names)[:4]}"
        )

    def stack(self, template: str, n: int, fn=lambda a: a) -> np.ndarray:
        """Stack ``fn(weight)`` of layers 0..n-1 along a new leading layer axis, filling one
        preallocated (64-byte aligned) array layer by layer so only one layer's copy is extra."""
        first = np.asarray(fn(self(template.format(0))))
        out = aligned_empty((n,) + first.shape, first.dtype)
        out[0] = first
        del first
        for i in range(1, n):
            layer = np.asarray(fn(self(template.format(i))))
            if layer.shape != out.shape[1:]:
                raise ValueError(f"{template.format(i)}: shape {layer.shape} differs from layer 0's {out.shape[1:]}")
            out[i] = layer
        return out


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised array whose data is 64-byte aligned (so JAX's CPU backend can adopt it
    without a copy)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def split_heads_out(w_OD: np.ndarray, n: int, h: int) -> np.ndarray:
    """torch Linear weight [n*h, D] -> [D, n, h]."""
    return w_OD.reshape(n, h, -1).transpose(2, 0, 1)


def merge_heads_out(w_DNH: np.ndarray) -> np.ndarray:
    """[D, n, h] -> torch Linear weight [n*h, D]."""
    D = w_DNH.shape[0]
    return w_DNH.reshape(D, -1).T


# ---------------------------------------------------------------------------------------------
# Llama-style checkpoints (llama, mistral, qwen2/3, gemma 2/3, phi3): model.embed_tokens,
# model.layers.{i}.self_attn.{q,k,v,o}_proj, model.norm, lm_head.


def separate_attention_from_hf(w, cfg) -> dict:
    """q/k/v/o projections (and their biases, when the config has them) stacked over layers."""
    L, N, K, H = cfg.n_layers, cfg.n_heads, cfg.kv_heads, cfg.d_head
    proj = lambda n, h: w.stack(f"layers.{{}}.self_attn.{n}_proj.weight", L, lambda a: split_heads_out(a, h, H))
    attn = {"q": proj("q", N), "k": proj("k", K), "v": proj("v", K),
            "o": w.stack("layers.{}.self_attn.o_proj.weight", L, lambda a: a.T.reshape(N, H, -1))}
    if cfg.qkv_bias:
        for n, h in (("q", N), ("k", K), ("v", K)):
            attn[n + "_bias"] = w.stack(f"layers.{{}}.self_attn.{n}_proj.bias", L, lambda a: a.reshape(h, H))
    if cfg.o_bias:
        attn["o_bias"] = w.stack("layers.{}.self_attn.o_proj.bias", L)
    return attn


def separate_attention_to_hf(out: dict, prefix: str, a: dict, i: int, cfg) -> None:
    """Write layer ``i``'s q/k/v/o projections (and biases) under ``prefix`` (``model.layers.{i}.``)."""
    for n in ("q", "k", "v"):
        out[prefix + f"self_attn.{n}_proj.weight"] = merge_heads_out(a[n][i])
        if cfg.qkv_bias:
            out[prefix + f"self_attn.{n}_proj.bias"] = a[n + "_bias"][i].reshape(-1)
    out[prefix + "self_attn.o_proj.weight"] = a["o"][i].reshape(-1, cfg.d_model).T
    if cfg.o_bias:
        out[prefix + "self_attn.o_proj.bias"] = a["o_bias"][i]


def gated_mlp_from_hf(w, cfg) -> dict:
    """gate/up/down projections (and biases, when the config has them) stacked over layers."""
    L = cfg.n_layers
    mlp = {n: w.stack(f"layers.{{}}.mlp.{n}_proj.weight", L, lambda a: a.T) for n in ("gate", "up", "down")}
    if cfg.mlp_bias:
        mlp.update({n + "_bias": w.stack(f"layers.{{}}.mlp.{n}_proj.bias", L) for n in ("gate", "up", "down")})
    return mlp


def gated_mlp_to_hf(out: dict, prefix: str, m: dict, i: int, cfg) -> None:
    for n in ("gate", "up", "down"):
        out[prefix + f"mlp.{n}_proj.weight"] = m[n][i].T
        if cfg.mlp_bias:
            out[prefix + f"mlp.{n}_proj.bias"] = m[n + "_bias"][i]


def decoder_from_hf(w, cfg, layers: dict) -> dict:
    """The canonical params: token embedding, ``layers``, final norm and (untied) unembedding."""
    p = {"embed": {"tok": w("embed_tokens.weight")}, "layers": layers, "final_norm": {"scale": w("norm.weight")}}
    if not cfg.tie_embeddings:
        p["unembed"] = {"w": w("lm_head.weight").T}
    return p


def decoder_to_hf(p: dict, cfg) -> dict:
    """HF tensors of the embedding, final norm and lm_head (the tied copy when embeddings are tied)."""
    return {"model.embed_tokens.weight": p["embed"]["tok"], "model.norm.weight": p["final_norm"]["scale"],
            "lm_head.weight": p["embed"]["tok"] if cfg.tie_embeddings else p["unembed"]["w"].T}
