"""Qwen3: the Llama layout (RMSNorm, SwiGLU, rotate-half RoPE, grouped-query attention, optional
per-layer sliding windows) plus RMSNorms on q and k over the head dim, and no q/k/v bias unless
``attention_bias``."""

from __future__ import annotations

from ...core.config import Config
from . import llama
from .common import Weights

MODEL_TYPES = ("qwen3",)
PREFIXES = llama.PREFIXES


def config_from_hf(hf: dict) -> Config:
    return llama.config_from_hf(hf).replace(qk_norm=True)


def params_from_hf(w: Weights, cfg: Config) -> dict:
    p = llama.params_from_hf(w, cfg)
    for n in ("q", "k"):
        p["layers"]["attn"][f"{n}_norm"] = {"scale": w.stack(f"layers.{{}}.self_attn.{n}_norm.weight", cfg.n_layers)}
    return p


def params_to_hf(p: dict, cfg: Config) -> dict:
    out = llama.params_to_hf(p, cfg)
    for i in range(cfg.n_layers):
        for n in ("q", "k"):
            out[f"model.layers.{i}.self_attn.{n}_norm.weight"] = p["layers"]["attn"][f"{n}_norm"]["scale"][i]
    return out
