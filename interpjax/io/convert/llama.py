"""Llama 1/2/3, Mistral and Qwen2: RMSNorm, SwiGLU, rotate-half RoPE (llama3/linear scaling),
grouped-query attention; Mistral adds a sliding window, Qwen2 q/k/v biases and per-layer windows."""

from __future__ import annotations

from ...core.config import Config
from .common import (Weights, activation, check_fields, decoder_from_hf, decoder_to_hf, gated_mlp_from_hf, gated_mlp_to_hf,
                     rope_fields, separate_attention_from_hf, separate_attention_to_hf)

MODEL_TYPES = ("llama", "mistral", "qwen2")
PREFIXES = ("model.", "")
HANDLED = {"attention_dropout", "hidden_act", "hidden_size", "intermediate_size", "max_position_embeddings",
           "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "rms_norm_eps", "rope_parameters",
           "rope_scaling", "rope_theta", "tie_word_embeddings", "vocab_size", "head_dim", "pretraining_tp",
           "attention_bias", "mlp_bias", "sliding_window", "use_sliding_window", "max_window_layers", "layer_types"}


def _windows(family: str, hf: dict, L: int) -> tuple:
    if family == "llama":
        return ()
    if family == "mistral":
        w = hf.get("sliding_window")
        return (int(w),) * L if w else ()
    types = list(hf.get("layer_types") or ["full_attention"] * L)
    bad = sorted(set(types) - {"full_attention", "sliding_attention"})
    if bad or len(types) != L:
        raise ValueError(f"{family}: layer_types {types} not supported (full_attention/sliding_attention, one per layer)")
    if "sliding_attention" not in types:
        return ()
    return tuple(int(hf["sliding_window"]) if t == "sliding_attention" else 0 for t in types)


def config_from_hf(hf: dict) -> Config:
    family = hf.get("model_type", "llama")
    must = {"pretraining_tp": 1} if family == "llama" else {}
    check_fields(family, hf, HANDLED - set(must), must)
    D, N, L = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
    H = hf.get("head_dim") or D // N
    qkv_bias = True if family == "qwen2" else bool(hf.get("attention_bias", False))
    o_bias = False if family == "qwen2" else bool(hf.get("attention_bias", False))
    rp = dict(hf.get("rope_parameters") or {})
    frac = rp.get("partial_rotary_factor", 1.0)
    return Config(
        vocab_size=hf["vocab_size"], d_model=D, n_layers=L, n_heads=N, d_head=H, d_mlp=hf["intermediate_size"],
        n_ctx=hf["max_position_embeddings"], n_kv_heads=hf.get("num_key_value_heads") or N, norm="rmsnorm",
        norm_eps=hf["rms_norm_eps"], positions="rotary", rotary_dim=int(H * frac), rotary_style="half",
        **rope_fields(family, hf), mlp="gated", activation=activation(family, hf["hidden_act"]),
        qkv_bias=qkv_bias, o_bias=o_bias, mlp_bias=bool(hf.get("mlp_bias", False)), norm_bias=False,
        window=_windows(family, hf, L), tie_embeddings=bool(hf.get("tie_word_embeddings", False)), family=family,
    )


def params_from_hf(w: Weights, cfg: Config) -> dict:
    L = cfg.n_layers
    ln = lambda name: {"scale": w.stack(f"layers.{{}}.{name}.weight", L)}
    return decoder_from_hf(w, cfg, {"ln1": ln("input_layernorm"), "ln2": ln("post_attention_layernorm"),
                                    "attn": separate_attention_from_hf(w, cfg), "mlp": gated_mlp_from_hf(w, cfg)})


def params_to_hf(p: dict, cfg: Config) -> dict:
    a, m = p["layers"]["attn"], p["layers"]["mlp"]
    out = decoder_to_hf(p, cfg)
    for i in range(cfg.n_layers):
        h = f"model.layers.{i}."
        out[h + "input_layernorm.weight"] = p["layers"]["ln1"]["scale"][i]
        out[h + "post_attention_layernorm.weight"] = p["layers"]["ln2"]["scale"][i]
        separate_attention_to_hf(out, h, a, i, cfg)
        gated_mlp_to_hf(out, h, m, i, cfg)
    return out
