"""Llama 1/2/3, Mistral and Qwen2: RMSNorm, SwiGLU, rotate-half RoPE (llama3/linear scaling),
grouped-query attention; Mistral adds a sliding window, Qwen2 q/k/v biases and per-layer windows."""

from __future__ import annotations

from ...core.config import Config
from .common import Weights, activation, check_fields, merge_heads_out, rope_fields, split_heads_out

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
    L, N, K, H = cfg.n_layers, cfg.n_heads, cfg.kv_heads, cfg.d_head
    proj = lambda n, h: w.stack(f"layers.{{}}.self_attn.{n}.weight", L, lambda a: split_heads_out(a, h, H))
    attn = {"q": proj("q_proj", N), "k": proj("k_proj", K), "v": proj("v_proj", K),
            "o": w.stack("layers.{}.self_attn.o_proj.weight", L, lambda a: a.T.reshape(N, H, -1))}
    if cfg.qkv_bias:
        for n, h in (("q", N), ("k", K), ("v", K)):
            attn[n + "_bias"] = w.stack(f"layers.{{}}.self_attn.{n}_proj.bias", L, lambda a: a.reshape(h, H))
    if cfg.o_bias:
        attn["o_bias"] = w.stack("layers.{}.self_attn.o_proj.bias", L)
    mlp = {n: w.stack(f"layers.{{}}.mlp.{n}_proj.weight", L, lambda a: a.T) for n in ("gate", "up", "down")}
    if cfg.mlp_bias:
        mlp.update({n + "_bias": w.stack(f"layers.{{}}.mlp.{n}_proj.bias", L) for n in ("gate", "up", "down")})
    p = {
        "embed": {"tok": w("embed_tokens.weight")},
        "layers": {"ln1": {"scale": w.stack("layers.{}.input_layernorm.weight", L)},
                   "ln2": {"scale": w.stack("layers.{}.post_attention_layernorm.weight", L)},
                   "attn": attn, "mlp": mlp},
        "final_norm": {"scale": w("norm.weight")},
    }
    if not cfg.tie_embeddings:
        p["unembed"] = {"w": w("lm_head.weight").T}
    return p


def params_to_hf(p: dict, cfg: Config) -> dict:
    a, m, pre = p["layers"]["attn"], p["layers"]["mlp"], "model."
    out = {pre + "embed_tokens.weight": p["embed"]["tok"], pre + "norm.weight": p["final_norm"]["scale"]}
    for i in range(cfg.n_layers):
        h = f"{pre}layers.{i}."
        out[h + "input_layernorm.weight"] = p["layers"]["ln1"]["scale"][i]
        out[h + "post_attention_layernorm.weight"] = p["layers"]["ln2"]["scale"][i]
        for n in ("q", "k", "v"):
            out[h + f"self_attn.{n}_proj.weight"] = merge_heads_out(a[n][i])
            if cfg.qkv_bias:
                out[h + f"self_attn.{n}_proj.bias"] = a[n + "_bias"][i].reshape(-1)
        out[h + "self_attn.o_proj.weight"] = a["o"][i].reshape(-1, cfg.d_model).T
        if cfg.o_bias:
            out[h + "self_attn.o_proj.bias"] = a["o_bias"][i]
        for n in ("gate", "up", "down"):
            out[h + f"mlp.{n}_proj.weight"] = m[n][i].T
            if cfg.mlp_bias:
                out[h + f"mlp.{n}_proj.bias"] = m[n + "_bias"][i]
    out["lm_head.weight"] = p["embed"]["tok"] if cfg.tie_embeddings else p["unembed"]["w"].T
    return out
