"""GPT-NeoX / Pythia: partial rotary (rotate-half), fused per-head qkv, parallel residual by default."""

from __future__ import annotations

import numpy as np

from ...core.config import Config
from .common import Weights, activation, check_fields, rope_fields

MODEL_TYPES = ("gpt_neox",)
PREFIXES = ("gpt_neox.", "")
HANDLED = {"attention_bias", "attention_dropout", "hidden_act", "hidden_dropout", "hidden_size",
           "intermediate_size", "layer_norm_eps", "max_position_embeddings", "num_attention_heads",
           "num_hidden_layers", "rope_parameters", "rope_scaling", "rotary_pct", "rotary_emb_base",
           "tie_word_embeddings", "use_parallel_residual", "vocab_size", "attention_probs_dropout_prob"}


def config_from_hf(hf: dict) -> Config:
    check_fields("gpt_neox", hf, HANDLED)
    D, N = hf["hidden_size"], hf["num_attention_heads"]
    H = D // N
    rp = dict(hf.get("rope_parameters") or {})
    frac = rp.get("partial_rotary_factor", hf.get("rotary_pct", 0.25))
    bias = hf.get("attention_bias", True)
    return Config(
        vocab_size=hf["vocab_size"], d_model=D, n_layers=hf["num_hidden_layers"], n_heads=N, d_head=H,
        d_mlp=hf["intermediate_size"], n_ctx=hf["max_position_embeddings"], norm="layernorm",
        norm_eps=hf["layer_norm_eps"], positions="rotary", rotary_dim=int(H * frac), rotary_style="half",
        **rope_fields("gpt_neox", hf), parallel_residual=hf.get("use_parallel_residual", True), mlp="standard",
        activation=activation("gpt_neox", hf["hidden_act"]), qkv_bias=bias, o_bias=bias, mlp_bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", False), family="gpt_neox",
    )


def params_from_hf(w: Weights, cfg: Config) -> dict:
    L, D, N, H = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head
    qkv = w.stack("layers.{}.attention.query_key_value.weight", L).reshape(L, N, 3, H, D)
    attn = {
        "q": qkv[:, :, 0].transpose(0, 3, 1, 2), "k": qkv[:, :, 1].transpose(0, 3, 1, 2),
        "v": qkv[:, :, 2].transpose(0, 3, 1, 2),
        "o": w.stack("layers.{}.attention.dense.weight", L).transpose(0, 2, 1).reshape(L, N, H, D),
    }
    if cfg.qkv_bias:
        b = w.stack("layers.{}.attention.query_key_value.bias", L).reshape(L, N, 3, H)
        attn.update(q_bias=b[:, :, 0], k_bias=b[:, :, 1], v_bias=b[:, :, 2])
    if cfg.o_bias:
        attn["o_bias"] = w.stack("layers.{}.attention.dense.bias", L)
    ln = lambda n: {"scale": w.stack(f"layers.{{}}.{n}.weight", L), "bias": w.stack(f"layers.{{}}.{n}.bias", L)}
    p = {
        "embed": {"tok": w("embed_in.weight")},
        "layers": {
            "ln1": ln("input_layernorm"), "ln2": ln("post_attention_layernorm"), "attn": attn,
            "mlp": {
                "up": w.stack("layers.{}.mlp.dense_h_to_4h.weight", L).transpose(0, 2, 1),
                "up_bias": w.stack("layers.{}.mlp.dense_h_to_4h.bias", L),
                "down": w.stack("layers.{}.mlp.dense_4h_to_h.weight", L).transpose(0, 2, 1),
                "down_bias": w.stack("layers.{}.mlp.dense_4h_to_h.bias", L),
            },
        },
        "final_norm": {"scale": w("final_layer_norm.weight"), "bias": w("final_layer_norm.bias")},
    }
    if not cfg.tie_embeddings:
        p["unembed"] = {"w": w("embed_out.weight" if w.has("embed_out.weight") else "lm_head.weight").T}
    return p


def params_to_hf(p: dict, cfg: Config) -> dict:
    L, D = cfg.n_layers, cfg.d_model
    a, m, pre = p["layers"]["attn"], p["layers"]["mlp"], "gpt_neox."
    out = {pre + "embed_in.weight": p["embed"]["tok"], pre + "final_layer_norm.weight": p["final_norm"]["scale"],
           pre + "final_layer_norm.bias": p["final_norm"]["bias"]}
    for i in range(L):
        h = f"{pre}layers.{i}."
        for ours, theirs in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
            out[h + theirs + ".weight"] = p["layers"][ours]["scale"][i]
            out[h + theirs + ".bias"] = p["layers"][ours]["bias"][i]
        qkv = np.stack([a["q"][i], a["k"][i], a["v"][i]], 0)  # [3, D, N, H]
        out[h + "attention.query_key_value.weight"] = qkv.transpose(2, 0, 3, 1).reshape(3 * D, D)
        if cfg.qkv_bias:
            out[h + "attention.query_key_value.bias"] = np.stack(
                [a["q_bias"][i], a["k_bias"][i], a["v_bias"][i]], 1).reshape(3 * D)
        out[h + "attention.dense.weight"] = a["o"][i].reshape(D, D).T
        if cfg.o_bias:
            out[h + "attention.dense.bias"] = a["o_bias"][i]
        out[h + "mlp.dense_h_to_4h.weight"], out[h + "mlp.dense_h_to_4h.bias"] = m["up"][i].T, m["up_bias"][i]
        out[h + "mlp.dense_4h_to_h.weight"], out[h + "mlp.dense_4h_to_h.bias"] = m["down"][i].T, m["down_bias"][i]
    out["embed_out.weight"] = p["embed"]["tok"] if cfg.tie_embeddings else p["unembed"]["w"].T
    return out
