"""BERT-family encoders (BertModel, BertForMaskedLM): bidirectional attention, post-LayerNorm,
learned absolute + token-type embeddings with an embedding LayerNorm, no final norm.

``BertModel`` checkpoints run with ``head="none"`` (the output is the last hidden state; the pooler
is not part of it and is not ported); ``BertForMaskedLM`` with ``head="bert_mlm"`` (dense, act,
LayerNorm, then the decoder tied to the token embedding, plus a vocabulary bias).
"""

from __future__ import annotations

import numpy as np

from ...core.config import Config
from .common import Weights, activation, check_fields, merge_heads_out, split_heads_out

MODEL_TYPES = ("bert",)
PREFIXES = ("bert.", "")
HANDLED = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
           "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
           "type_vocab_size", "layer_norm_eps", "tie_word_embeddings", "gradient_checkpointing"}
MUST = {"position_embedding_type": "absolute"}
# architectures -> head; anything else is refused rather than silently dropping its head.
HEADS = {"BertModel": "none", "BertForMaskedLM": "bert_mlm"}


def head_of(hf: dict) -> str:
    """The Config.head for a BERT checkpoint, from its ``architectures`` (none listed: BertModel)."""
    archs = hf.get("architectures") or ["BertModel"]
    heads = {HEADS.get(a) for a in archs}
    if None in heads or len(heads) != 1:
        raise ValueError(f"bert: architectures {archs} not supported; supported: {sorted(HEADS)}")
    return heads.pop()


def config_from_hf(hf: dict) -> Config:
    check_fields("bert", hf, HANDLED, MUST)
    if hf.get("is_decoder"):
        raise ValueError("bert: is_decoder=True (causal BERT) is not supported; only bidirectional encoders")
    D, N = hf["hidden_size"], hf["num_attention_heads"]
    if D % N:
        raise ValueError(f"bert: hidden_size={D} is not a multiple of num_attention_heads={N}")
    head = head_of(hf)
    tied = bool(hf.get("tie_word_embeddings", True))
    return Config(
        vocab_size=hf["vocab_size"], d_model=D, n_layers=hf["num_hidden_layers"], n_heads=N, d_head=D // N,
        d_mlp=hf["intermediate_size"], n_ctx=hf["max_position_embeddings"], norm="layernorm",
        norm_eps=hf["layer_norm_eps"], positions="learned", mlp="standard",
        activation=activation("bert", hf["hidden_act"]), qkv_bias=True, o_bias=True, mlp_bias=True,
        causal=False, post_norm=True, type_vocab_size=hf["type_vocab_size"], embed_norm=True, final_norm=False,
        head=head, tie_embeddings=tied if head == "bert_mlm" else False, unembed_bias=head == "bert_mlm",
        family="bert",
    )


def params_from_hf(w: Weights, cfg: Config) -> dict:
    L, D, N, H = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head
    lyr = "encoder.layer.{}."

    def heads_in(name):  # torch Linear [N*H, D] -> [L, D, N, H]
        return w.stack(lyr + name, L, lambda a: split_heads_out(a, N, H))

    ln = lambda name: {"scale": w.stack(lyr + name + ".weight", L), "bias": w.stack(lyr + name + ".bias", L)}
    p = {
        "embed": {
            "tok": w("embeddings.word_embeddings.weight"),
            "pos": w("embeddings.position_embeddings.weight"),
            "type": w("embeddings.token_type_embeddings.weight"),
            "norm": {"scale": w("embeddings.LayerNorm.weight"), "bias": w("embeddings.LayerNorm.bias")},
        },
        "layers": {
            "ln1": ln("attention.output.LayerNorm"),
            "ln2": ln("output.LayerNorm"),
            "attn": {
                "q": heads_in("attention.self.query.weight"),
                "k": heads_in("attention.self.key.weight"),
                "v": heads_in("attention.self.value.weight"),
                "q_bias": w.stack(lyr + "attention.self.query.bias", L).reshape(L, N, H),
                "k_bias": w.stack(lyr + "attention.self.key.bias", L).reshape(L, N, H),
                "v_bias": w.stack(lyr + "attention.self.value.bias", L).reshape(L, N, H),
                "o": w.stack(lyr + "attention.output.dense.weight", L, lambda a: a.T.reshape(N, H, D)),
                "o_bias": w.stack(lyr + "attention.output.dense.bias", L),
            },
            "mlp": {
                "up": w.stack(lyr + "intermediate.dense.weight", L, np.transpose),
                "up_bias": w.stack(lyr + "intermediate.dense.bias", L),
                "down": w.stack(lyr + "output.dense.weight", L, np.transpose),
                "down_bias": w.stack(lyr + "output.dense.bias", L),
            },
        },
    }
    if cfg.head == "bert_mlm":
        t = "cls.predictions.transform."
        p["head"] = {"w": w(t + "dense.weight").T, "b": w(t + "dense.bias"),
                     "norm": {"scale": w(t + "LayerNorm.weight"), "bias": w(t + "LayerNorm.bias")}}
        # transformers ties decoder.bias to cls.predictions.bias only with tied embeddings; untied, the
        # decoder's own bias is the one its forward adds.
        names = ("cls.predictions.bias", "cls.predictions.decoder.bias")
        names = names if cfg.tie_embeddings else names[::-1]
        bias = names[0] if w.has(names[0]) else names[1]
        p["unembed"] = {"b": w(bias)}
        if not cfg.tie_embeddings:
            p["unembed"]["w"] = w("cls.predictions.decoder.weight").T
    return p


def params_to_hf(p: dict, cfg: Config) -> dict:
    """params -> HF state dict: ``bert.``-prefixed for BertForMaskedLM, bare names for BertModel."""
    pre = "bert." if cfg.head == "bert_mlm" else ""
    e, a, m = p["embed"], p["layers"]["attn"], p["layers"]["mlp"]
    out = {pre + "embeddings.word_embeddings.weight": e["tok"], pre + "embeddings.position_embeddings.weight": e["pos"],
           pre + "embeddings.token_type_embeddings.weight": e["type"],
           pre + "embeddings.LayerNorm.weight": e["norm"]["scale"], pre + "embeddings.LayerNorm.bias": e["norm"]["bias"]}
    for i in range(cfg.n_layers):
        h = f"{pre}encoder.layer.{i}."
        for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value")):
            out[h + f"attention.self.{theirs}.weight"] = merge_heads_out(a[ours][i])
            out[h + f"attention.self.{theirs}.bias"] = a[ours + "_bias"][i].reshape(-1)
        out[h + "attention.output.dense.weight"] = a["o"][i].reshape(-1, cfg.d_model).T
        out[h + "attention.output.dense.bias"] = a["o_bias"][i]
        out[h + "intermediate.dense.weight"], out[h + "intermediate.dense.bias"] = m["up"][i].T, m["up_bias"][i]
        out[h + "output.dense.weight"], out[h + "output.dense.bias"] = m["down"][i].T, m["down_bias"][i]
        for ours, theirs in (("ln1", "attention.output.LayerNorm"), ("ln2", "output.LayerNorm")):
            out[h + theirs + ".weight"] = p["layers"][ours]["scale"][i]
            out[h + theirs + ".bias"] = p["layers"][ours]["bias"][i]
    if cfg.head == "bert_mlm":
        t = "cls.predictions."
        out[t + "transform.dense.weight"], out[t + "transform.dense.bias"] = p["head"]["w"].T, p["head"]["b"]
        out[t + "transform.LayerNorm.weight"] = p["head"]["norm"]["scale"]
        out[t + "transform.LayerNorm.bias"] = p["head"]["norm"]["bias"]
        out[t + "bias"] = out[t + "decoder.bias"] = p["unembed"]["b"]
        out[t + "decoder.weight"] = e["tok"] if cfg.tie_embeddings else p["unembed"]["w"].T
    return out
