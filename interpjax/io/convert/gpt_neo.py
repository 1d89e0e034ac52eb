"""GPT-Neo (e.g. the TinyStories models): learned positions, alternating global/local attention,
unscaled attention logits, bias-free q/k/v."""

from __future__ import annotations

from ...core.config import Config
from .common import Weights, activation, check_fields, merge_heads_out, split_heads_out

MODEL_TYPES = ("gpt_neo",)
PREFIXES = ("transformer.", "")
HANDLED = {"activation_function", "attention_dropout", "attention_layers", "attention_types", "embed_dropout",
           "hidden_size", "intermediate_size", "layer_norm_epsilon", "max_position_embeddings", "num_heads",
           "num_layers", "resid_dropout", "tie_word_embeddings", "vocab_size", "window_size"}


def config_from_hf(hf: dict) -> Config:
    check_fields("gpt_neo", hf, HANDLED)
    D, N, L = hf["hidden_size"], hf["num_heads"], hf["num_layers"]
    kinds = list(hf.get("attention_layers") or [])
    if len(kinds) != L:
        raise ValueError(f"gpt_neo: attention_layers has {len(kinds)} entries for num_layers={L}")
    bad = sorted(set(kinds) - {"global", "local"})
    if bad:
        raise ValueError(f"gpt_neo: attention layer types {bad} are not supported; supported: global, local")
    return Config(
        vocab_size=hf["vocab_size"], d_model=D, n_layers=L, n_heads=N, d_head=D // N,
        d_mlp=hf.get("intermediate_size") or 4 * D, n_ctx=hf["max_position_embeddings"], norm="layernorm",
        norm_eps=hf["layer_norm_epsilon"], positions="learned", mlp="standard",
        activation=activation("gpt_neo", hf["activation_function"]), qkv_bias=False, o_bias=True, mlp_bias=True,
        attn_scale=1.0, window=tuple(hf["window_size"] if k == "local" else 0 for k in kinds),
        tie_embeddings=hf.get("tie_word_embeddings", True), family="gpt_neo",
    )


def params_from_hf(w: Weights, cfg: Config) -> dict:
    L, D, N, H = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head
    heads = lambda n: w.stack(f"h.{{}}.attn.attention.{n}.weight", L, lambda a: split_heads_out(a, N, H))
    p = {
        "embed": {"tok": w("wte.weight"), "pos": w("wpe.weight")},
        "layers": {
            "ln1": {"scale": w.stack("h.{}.ln_1.weight", L), "bias": w.stack("h.{}.ln_1.bias", L)},
            "ln2": {"scale": w.stack("h.{}.ln_2.weight", L), "bias": w.stack("h.{}.ln_2.bias", L)},
            "attn": {"q": heads("q_proj"), "k": heads("k_proj"), "v": heads("v_proj"),
                     "o": w.stack("h.{}.attn.attention.out_proj.weight", L).transpose(0, 2, 1).reshape(L, N, H, D),
                     "o_bias": w.stack("h.{}.attn.attention.out_proj.bias", L)},
            "mlp": {
                "up": w.stack("h.{}.mlp.c_fc.weight", L).transpose(0, 2, 1), "up_bias": w.stack("h.{}.mlp.c_fc.bias", L),
                "down": w.stack("h.{}.mlp.c_proj.weight", L).transpose(0, 2, 1),
                "down_bias": w.stack("h.{}.mlp.c_proj.bias", L),
            },
        },
        "final_norm": {"scale": w("ln_f.weight"), "bias": w("ln_f.bias")},
    }
    if not cfg.tie_embeddings:
        p["unembed"] = {"w": w("lm_head.weight").T}
    return p


def params_to_hf(p: dict, cfg: Config) -> dict:
    D = cfg.d_model
    a, m, pre = p["layers"]["attn"], p["layers"]["mlp"], "transformer."
    out = {pre + "wte.weight": p["embed"]["tok"], pre + "wpe.weight": p["embed"]["pos"],
           pre + "ln_f.weight": p["final_norm"]["scale"], pre + "ln_f.bias": p["final_norm"]["bias"]}
    for i in range(cfg.n_layers):
        h = f"{pre}h.{i}."
        for ours in ("ln1", "ln2"):
            n = "ln_1" if ours == "ln1" else "ln_2"
            out[h + n + ".weight"], out[h + n + ".bias"] = p["layers"][ours]["scale"][i], p["layers"][ours]["bias"][i]
        for n, ours in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")):
            out[h + f"attn.attention.{n}.weight"] = merge_heads_out(a[ours][i])
        out[h + "attn.attention.out_proj.weight"] = a["o"][i].reshape(D, D).T
        out[h + "attn.attention.out_proj.bias"] = a["o_bias"][i]
        out[h + "mlp.c_fc.weight"], out[h + "mlp.c_fc.bias"] = m["up"][i].T, m["up_bias"][i]
        out[h + "mlp.c_proj.weight"], out[h + "mlp.c_proj.bias"] = m["down"][i].T, m["down_bias"][i]
    out["lm_head.weight"] = p["embed"]["tok"] if cfg.tie_embeddings else p["unembed"]["w"].T
    return out
