"""GPT-J: interleaved (rotate-every-two) partial rotary, one shared LayerNorm, parallel residual,
bias-free attention, lm_head with bias."""

from __future__ import annotations

from ...core.config import Config
from .common import Weights, activation, check_fields, merge_heads_out, split_heads_out

MODEL_TYPES = ("gptj",)
PREFIXES = ("transformer.", "")
HANDLED = {"activation_function", "attn_pdrop", "embd_pdrop", "resid_pdrop", "layer_norm_epsilon", "n_embd",
           "n_head", "n_inner", "n_layer", "n_positions", "rotary_dim", "tie_word_embeddings", "vocab_size"}


def config_from_hf(hf: dict) -> Config:
    check_fields("gptj", hf, HANDLED)
    D, N = hf["n_embd"], hf["n_head"]
    H = D // N
    return Config(
        vocab_size=hf["vocab_size"], d_model=D, n_layers=hf["n_layer"], n_heads=N, d_head=H,
        d_mlp=hf.get("n_inner") or 4 * D, n_ctx=hf["n_positions"], norm="layernorm",
        norm_eps=hf["layer_norm_epsilon"], positions="rotary", rotary_dim=hf.get("rotary_dim") or H,
        rotary_style="interleaved", parallel_residual=True, shared_norm=True, mlp="standard",
        activation=activation("gptj", hf["activation_function"]), qkv_bias=False, o_bias=False, mlp_bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), unembed_bias=not hf.get("tie_word_embeddings", False),
        family="gptj",
    )


def params_from_hf(w: Weights, cfg: Config) -> dict:
    L, D, N, H = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head
    heads = lambda n: w.stack(f"h.{{}}.attn.{n}.weight", L, lambda a: split_heads_out(a, N, H))
    p = {
        "embed": {"tok": w("wte.weight")},
        "layers": {
            "ln1": {"scale": w.stack("h.{}.ln_1.weight", L), "bias": w.stack("h.{}.ln_1.bias", L)},
            "attn": {"q": heads("q_proj"), "k": heads("k_proj"), "v": heads("v_proj"),
                     "o": w.stack("h.{}.attn.out_proj.weight", L).transpose(0, 2, 1).reshape(L, N, H, D)},
            "mlp": {
                "up": w.stack("h.{}.mlp.fc_in.weight", L).transpose(0, 2, 1), "up_bias": w.stack("h.{}.mlp.fc_in.bias", L),
                "down": w.stack("h.{}.mlp.fc_out.weight", L).transpose(0, 2, 1),
                "down_bias": w.stack("h.{}.mlp.fc_out.bias", L),
            },
        },
        "final_norm": {"scale": w("ln_f.weight"), "bias": w("ln_f.bias")},
    }
    if not cfg.tie_embeddings:
        p["unembed"] = {"w": w("lm_head.weight").T, "b": w("lm_head.bias")}
    return p


def params_to_hf(p: dict, cfg: Config) -> dict:
    D = cfg.d_model
    a, m, pre = p["layers"]["attn"], p["layers"]["mlp"], "transformer."
    out = {pre + "wte.weight": p["embed"]["tok"], pre + "ln_f.weight": p["final_norm"]["scale"],
           pre + "ln_f.bias": p["final_norm"]["bias"]}
    for i in range(cfg.n_layers):
        h = f"{pre}h.{i}."
        out[h + "ln_1.weight"], out[h + "ln_1.bias"] = p["layers"]["ln1"]["scale"][i], p["layers"]["ln1"]["bias"][i]
        for n, ours in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")):
            out[h + f"attn.{n}.weight"] = merge_heads_out(a[ours][i])
        out[h + "attn.out_proj.weight"] = a["o"][i].reshape(D, D).T
        out[h + "mlp.fc_in.weight"], out[h + "mlp.fc_in.bias"] = m["up"][i].T, m["up_bias"][i]
        out[h + "mlp.fc_out.weight"], out[h + "mlp.fc_out.bias"] = m["down"][i].T, m["down_bias"][i]
    if cfg.tie_embeddings:
        out["lm_head.weight"] = p["embed"]["tok"]
    else:
        out["lm_head.weight"], out["lm_head.bias"] = p["unembed"]["w"].T, p["unembed"]["b"]
    return out
