"""Phi-3: the Llama layout with a fused q/k/v projection (rows q, then k, then v) and a fused
gate/up projection (rows gate, then up), optional partial rotary and a sliding window on every
layer. The fused weights are split on load and fused again on export."""

from __future__ import annotations

import numpy as np

from ...core.config import Config
from .common import (Weights, activation, check_fields, decoder_from_hf, decoder_to_hf, merge_heads_out, rope_fields,
                     split_heads_out)

MODEL_TYPES = ("phi3",)
PREFIXES = ("model.", "")
HANDLED = {"attention_dropout", "hidden_act", "hidden_size", "intermediate_size", "max_position_embeddings",
           "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "rms_norm_eps", "rope_parameters",
           "rope_scaling", "rope_theta", "tie_word_embeddings", "vocab_size", "sliding_window", "resid_pdrop",
           "embd_pdrop", "original_max_position_embeddings", "partial_rotary_factor"}


def config_from_hf(hf: dict) -> Config:
    check_fields("phi3", hf, HANDLED)
    D, N, L = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
    H = D // N
    rp = dict(hf.get("rope_parameters") or {})
    frac = rp.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    w = hf.get("sliding_window")
    return Config(
        vocab_size=hf["vocab_size"], d_model=D, n_layers=L, n_heads=N, d_head=H, d_mlp=hf["intermediate_size"],
        n_ctx=hf["max_position_embeddings"], n_kv_heads=hf.get("num_key_value_heads") or N, norm="rmsnorm",
        norm_eps=hf["rms_norm_eps"], positions="rotary", rotary_dim=int(H * frac), rotary_style="half",
        **rope_fields("phi3", hf), mlp="gated", activation=activation("phi3", hf["hidden_act"]), norm_bias=False,
        window=(int(w),) * L if w else (), tie_embeddings=bool(hf.get("tie_word_embeddings", False)), family="phi3",
    )


def params_from_hf(w: Weights, cfg: Config) -> dict:
    L, N, K, H, F = cfg.n_layers, cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.d_mlp
    qkv = "layers.{}.self_attn.qkv_proj.weight"
    rows = {"q": (0, N * H, N), "k": (N * H, (N + K) * H, K), "v": ((N + K) * H, (N + 2 * K) * H, K)}
    attn = {n: w.stack(qkv, L, lambda a, r=r: split_heads_out(a[r[0]:r[1]], r[2], H)) for n, r in rows.items()}
    attn["o"] = w.stack("layers.{}.self_attn.o_proj.weight", L, lambda a: a.T.reshape(N, H, -1))
    gate_up = "layers.{}.mlp.gate_up_proj.weight"
    mlp = {"gate": w.stack(gate_up, L, lambda a: a[:F].T), "up": w.stack(gate_up, L, lambda a: a[F:].T),
           "down": w.stack("layers.{}.mlp.down_proj.weight", L, lambda a: a.T)}
    return decoder_from_hf(w, cfg, {"ln1": {"scale": w.stack("layers.{}.input_layernorm.weight", L)},
                                    "ln2": {"scale": w.stack("layers.{}.post_attention_layernorm.weight", L)},
                                    "attn": attn, "mlp": mlp})


def params_to_hf(p: dict, cfg: Config) -> dict:
    a, m = p["layers"]["attn"], p["layers"]["mlp"]
    out = decoder_to_hf(p, cfg)
    for i in range(cfg.n_layers):
        h = f"model.layers.{i}."
        out[h + "input_layernorm.weight"] = p["layers"]["ln1"]["scale"][i]
        out[h + "post_attention_layernorm.weight"] = p["layers"]["ln2"]["scale"][i]
        out[h + "self_attn.qkv_proj.weight"] = np.concatenate([merge_heads_out(a[n][i]) for n in ("q", "k", "v")])
        out[h + "self_attn.o_proj.weight"] = a["o"][i].reshape(-1, cfg.d_model).T
        out[h + "mlp.gate_up_proj.weight"] = np.concatenate([m["gate"][i].T, m["up"][i].T])
        out[h + "mlp.down_proj.weight"] = m["down"][i].T
    return out
