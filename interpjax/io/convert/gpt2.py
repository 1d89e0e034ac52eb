"""GPT-2 / distilgpt2: learned positions, pre-LN, Conv1D weights ([in, out]), tanh-GELU."""

from __future__ import annotations

import numpy as np

from ...core.config import Config
from .common import Weights, activation, check_fields

MODEL_TYPES = ("gpt2",)
PREFIXES = ("transformer.", "")
HANDLED = {"activation_function", "attn_pdrop", "embd_pdrop", "resid_pdrop", "layer_norm_epsilon", "n_embd",
           "n_head", "n_inner", "n_layer", "n_positions", "n_ctx", "vocab_size", "tie_word_embeddings",
           "summary_activation", "summary_first_dropout", "summary_proj_to_labels", "summary_type",
           "summary_use_proj", "reorder_and_upcast_attn"}
MUST = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False}


def config_from_hf(hf: dict) -> Config:
    check_fields("gpt2", hf, HANDLED, MUST)
    D, N = hf["n_embd"], hf["n_head"]
    return Config(
        vocab_size=hf["vocab_size"], d_model=D, n_layers=hf["n_layer"], n_heads=N, d_head=D // N,
        d_mlp=hf.get("n_inner") or 4 * D, n_ctx=hf["n_positions"], norm="layernorm",
        norm_eps=hf["layer_norm_epsilon"], positions="learned", mlp="standard",
        activation=activation("gpt2", hf["activation_function"]), qkv_bias=True, o_bias=True, mlp_bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True), family="gpt2",
    )


def params_from_hf(w: Weights, cfg: Config) -> dict:
    L, D, N, H = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head
    c_attn = w.stack("h.{}.attn.c_attn.weight", L)  # [L, D, 3D]
    b_attn = w.stack("h.{}.attn.c_attn.bias", L)  # [L, 3D]
    qkv = c_attn.reshape(L, D, 3, N, H)
    bqkv = b_attn.reshape(L, 3, N, H)
    p = {
        "embed": {"tok": w("wte.weight"), "pos": w("wpe.weight")},
        "layers": {
            "ln1": {"scale": w.stack("h.{}.ln_1.weight", L), "bias": w.stack("h.{}.ln_1.bias", L)},
            "ln2": {"scale": w.stack("h.{}.ln_2.weight", L), "bias": w.stack("h.{}.ln_2.bias", L)},
            "attn": {
                "q": qkv[:, :, 0], "k": qkv[:, :, 1], "v": qkv[:, :, 2],
                "q_bias": bqkv[:, 0], "k_bias": bqkv[:, 1], "v_bias": bqkv[:, 2],
                "o": w.stack("h.{}.attn.c_proj.weight", L).reshape(L, N, H, D),
                "o_bias": w.stack("h.{}.attn.c_proj.bias", L),
            },
            "mlp": {
                "up": w.stack("h.{}.mlp.c_fc.weight", L), "up_bias": w.stack("h.{}.mlp.c_fc.bias", L),
                "down": w.stack("h.{}.mlp.c_proj.weight", L), "down_bias": w.stack("h.{}.mlp.c_proj.bias", L),
            },
        },
        "final_norm": {"scale": w("ln_f.weight"), "bias": w("ln_f.bias")},
    }
    if not cfg.tie_embeddings:
        p["unembed"] = {"w": w("lm_head.weight").T} if w.has("lm_head.weight") else {"w": np.asarray(w("wte.weight")).T}
    return p


def params_to_hf(p: dict, cfg: Config) -> dict:
    L, D = cfg.n_layers, cfg.d_model
    a, m = p["layers"]["attn"], p["layers"]["mlp"]
    out = {"transformer.wte.weight": p["embed"]["tok"], "transformer.wpe.weight": p["embed"]["pos"],
           "transformer.ln_f.weight": p["final_norm"]["scale"], "transformer.ln_f.bias": p["final_norm"]["bias"]}
    for i in range(L):
        h = f"transformer.h.{i}."
        out[h + "ln_1.weight"], out[h + "ln_1.bias"] = p["layers"]["ln1"]["scale"][i], p["layers"]["ln1"]["bias"][i]
        out[h + "ln_2.weight"], out[h + "ln_2.bias"] = p["layers"]["ln2"]["scale"][i], p["layers"]["ln2"]["bias"][i]
        out[h + "attn.c_attn.weight"] = np.stack([a["q"][i], a["k"][i], a["v"][i]], 1).reshape(D, 3 * D)
        out[h + "attn.c_attn.bias"] = np.stack([a["q_bias"][i], a["k_bias"][i], a["v_bias"][i]]).reshape(3 * D)
        out[h + "attn.c_proj.weight"] = a["o"][i].reshape(D, D)
        out[h + "attn.c_proj.bias"] = a["o_bias"][i]
        out[h + "mlp.c_fc.weight"], out[h + "mlp.c_fc.bias"] = m["up"][i], m["up_bias"][i]
        out[h + "mlp.c_proj.weight"], out[h + "mlp.c_proj.bias"] = m["down"][i], m["down_bias"][i]
    out["lm_head.weight"] = p["embed"]["tok"] if cfg.tie_embeddings else p["unembed"]["w"].T
    return out
