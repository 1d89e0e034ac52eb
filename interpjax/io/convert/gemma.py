"""Gemma 2 and Gemma 3 (text decoder): RMSNorm with "1 + w" weights, sandwich norms around
attention and MLP, embeddings times sqrt(d), GeGLU, grouped-query attention scaled by
``query_pre_attn_scalar``, alternating local (sliding-window) and global layers; Gemma 2 adds
attention/final logit soft-capping, Gemma 3 q/k norms and a separate rope base for local layers.

Param layout: ``ln1`` = input_layernorm, ``attn/post_norm`` = post_attention_layernorm, ``ln2`` =
pre_feedforward_layernorm, ``mlp/post_norm`` = post_feedforward_layernorm; norm scales hold HF's
raw ``w`` (the model multiplies by 1 + w, ``Config.norm_offset = 1``).
"""

from __future__ import annotations

from ...core.config import Config
from .common import (Weights, activation, check_fields, decoder_from_hf, decoder_to_hf, gated_mlp_from_hf, gated_mlp_to_hf,
                     rope_fields, separate_attention_from_hf, separate_attention_to_hf)

MODEL_TYPES = ("gemma2", "gemma3_text")
PREFIXES = ("model.", "")
HANDLED = {"attention_dropout", "hidden_activation", "hidden_act", "hidden_size", "intermediate_size",
           "max_position_embeddings", "num_attention_heads", "num_hidden_layers", "num_key_value_heads",
           "rms_norm_eps", "rope_parameters", "rope_scaling", "rope_theta", "rope_local_base_freq",
           "tie_word_embeddings", "vocab_size", "head_dim", "attention_bias", "query_pre_attn_scalar",
           "sliding_window", "layer_types", "final_logit_softcapping", "attn_logit_softcapping",
           "use_bidirectional_attention", "_sliding_window_pattern", "sliding_window_pattern", "cache_implementation"}
LAYER_TYPES = ("sliding_attention", "full_attention")


def _layer_types(family: str, hf: dict, L: int) -> list:
    types = hf.get("layer_types")
    if types is None:  # the HF defaults: Gemma 2 alternates, Gemma 3 is 5 local : 1 global
        every = 2 if family == "gemma2" else int(hf.get("_sliding_window_pattern") or hf.get("sliding_window_pattern") or 6)
        types = ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(L)]
    types = list(types)
    if len(types) != L or set(types) - set(LAYER_TYPES):
        raise ValueError(f"{family}: layer_types {types} not supported (one of {LAYER_TYPES} per layer, {L} layers)")
    return types


def _rope(family: str, hf: dict, has_local: bool) -> dict:
    """Global rope fields, plus ``rotary_base_local`` when local layers use their own base."""
    rp = dict(hf.get("rope_parameters") or {})
    per_type = set(rp) & set(LAYER_TYPES)
    if not per_type:  # one rope for every layer (Gemma 2, legacy configs)
        out = rope_fields(family, hf)
        local = hf.get("rope_local_base_freq")
        if local is not None and has_local and float(local) != out["rotary_base"]:
            out["rotary_base_local"] = float(local)
        return out
    if set(rp) - set(LAYER_TYPES):
        raise ValueError(f"{family}: rope_parameters mixes per-layer-type and plain keys: {sorted(rp)}")
    out = rope_fields(family, {"rope_parameters": rp.get("full_attention") or {}})
    local = dict(rp.get("sliding_attention") or {})
    if has_local:
        if local.get("rope_type", "default") != "default" or set(local) - {"rope_type", "rope_theta"}:
            raise ValueError(f"{family}: sliding_attention rope {local} not supported (only the default rope)")
        base = float(local.get("rope_theta", 10000.0))
        if base != out["rotary_base"] or out["rope_scaling"] != "none":
            out["rotary_base_local"] = base
    return out


def config_from_hf(hf: dict) -> Config:
    family = hf.get("model_type")
    must = {"use_bidirectional_attention": (False, None)}
    check_fields(family, hf, HANDLED - set(must), must)
    D, N, L = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
    H = hf.get("head_dim") or D // N
    types = _layer_types(family, hf, L)
    window = tuple(int(hf["sliding_window"]) if t == "sliding_attention" else 0 for t in types)
    if any(window) and not hf.get("sliding_window"):
        raise ValueError(f"{family}: sliding layers but sliding_window={hf.get('sliding_window')!r}")
    act = hf.get("hidden_activation") or hf.get("hidden_act")
    bias = bool(hf.get("attention_bias", False))
    return Config(
        vocab_size=hf["vocab_size"], d_model=D, n_layers=L, n_heads=N, d_head=H, d_mlp=hf["intermediate_size"],
        n_ctx=hf["max_position_embeddings"], n_kv_heads=hf.get("num_key_value_heads") or N, norm="rmsnorm",
        norm_eps=hf["rms_norm_eps"], positions="rotary", rotary_dim=H, rotary_style="half",
        **_rope(family, hf, any(window)), mlp="gated", activation=activation(family, act),
        qkv_bias=bias, o_bias=bias, norm_bias=False, attn_scale=float(hf.get("query_pre_attn_scalar") or H) ** -0.5,
        window=window if any(window) else (), tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        qk_norm=family == "gemma3_text", sandwich_norm=True, norm_offset=1.0, embed_scale=float(D) ** 0.5,
        attn_softcap=float(hf.get("attn_logit_softcapping") or 0.0),
        final_softcap=float(hf.get("final_logit_softcapping") or 0.0), family=family,
    )


def params_from_hf(w: Weights, cfg: Config) -> dict:
    L = cfg.n_layers
    ln = lambda name: {"scale": w.stack(f"layers.{{}}.{name}.weight", L)}
    attn = separate_attention_from_hf(w, cfg)
    attn["post_norm"] = ln("post_attention_layernorm")
    if cfg.qk_norm:
        attn["q_norm"], attn["k_norm"] = ln("self_attn.q_norm"), ln("self_attn.k_norm")
    mlp = gated_mlp_from_hf(w, cfg)
    mlp["post_norm"] = ln("post_feedforward_layernorm")
    return decoder_from_hf(w, cfg, {"ln1": ln("input_layernorm"), "ln2": ln("pre_feedforward_layernorm"),
                                    "attn": attn, "mlp": mlp})


def params_to_hf(p: dict, cfg: Config) -> dict:
    a, m = p["layers"]["attn"], p["layers"]["mlp"]
    out = decoder_to_hf(p, cfg)
    for i in range(cfg.n_layers):
        h = f"model.layers.{i}."
        out[h + "input_layernorm.weight"] = p["layers"]["ln1"]["scale"][i]
        out[h + "pre_feedforward_layernorm.weight"] = p["layers"]["ln2"]["scale"][i]
        out[h + "post_attention_layernorm.weight"] = a["post_norm"]["scale"][i]
        out[h + "post_feedforward_layernorm.weight"] = m["post_norm"]["scale"][i]
        separate_attention_to_hf(out, h, a, i, cfg)
        if cfg.qk_norm:
            out[h + "self_attn.q_norm.weight"] = a["q_norm"]["scale"][i]
            out[h + "self_attn.k_norm.weight"] = a["k_norm"]["scale"][i]
        gated_mlp_to_hf(out, h, m, i, cfg)
    return out
