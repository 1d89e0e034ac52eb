"""The site vocabulary: the named activations every model family exposes, and their shapes.

Sites are addressed as ``(site, layer)``. Layer sites live inside the scanned block and take a
layer index; ``embed``, ``final`` and ``logits`` live outside the block and take none.

Shapes use B batch, T query positions, S key positions (= T), D d_model, N heads, K kv heads,
H head dim, F MLP width, V vocab.

Parallel-residual models (GPT-NeoX, GPT-J): both branches read ``resid_pre``; ``resid_mid`` is
still recorded as ``resid_pre + attn_out`` and ``resid_post = resid_mid + mlp_out``, so editing
``resid_mid`` changes ``resid_post`` but not the MLP's input.
"""

from __future__ import annotations

from .config import Config

LAYER_SITES = (
    "resid_pre",
    "q",
    "k",
    "v",
    "attn_scores",
    "pattern",
    "z",
    "attn_out",
    "resid_mid",
    "mlp_pre",
    "mlp_post",
    "mlp_out",
    "resid_post",
)
GLOBAL_SITES = ("embed", "final", "logits")
SITES = ("embed",) + LAYER_SITES + ("final", "logits")

# Sites with a head axis, and where it sits among the per-position feature axes.
HEAD_SITES = ("q", "k", "v", "z", "attn_scores", "pattern")
ATTN_SITES = ("attn_scores", "pattern")  # [B, N, T, S]: positions are query positions T

SITE_DOCS = {
    "embed": "token (+ learned position) embedding, times embed_scale (Gemma: sqrt(d)): the input of layer 0",
    "resid_pre": "residual stream entering the layer",
    "q": "queries after the projection (+bias) and q-norm (Gemma 3, Qwen3), before rotary",
    "k": "keys after the projection (+bias) and k-norm (Gemma 3, Qwen3), before rotary (K kv heads)",
    "v": "values after the projection (+bias) (K kv heads)",
    "attn_scores": "scaled (soft-capped, Gemma 2), masked attention logits before softmax",
    "pattern": "attention probabilities after softmax",
    "z": "per-head attention outputs (pattern @ v), before the output projection",
    "attn_out": ("attention branch output after the output projection (+bias) and, for sandwich-norm models "
                 "(Gemma 2/3), after the post-attention norm: what the branch adds to the residual"),
    "resid_mid": "resid_pre + attn_out (post-norm encoders: ln1(resid_pre + attn_out))",
    "mlp_pre": "MLP pre-activation (the gate's, for gated MLPs)",
    "mlp_post": "MLP hidden activation (act(gate) * up for gated MLPs)",
    "mlp_out": ("MLP output after the down projection (+bias) and, for sandwich-norm models (Gemma 2/3), after "
                "the post-feedforward norm: what the branch adds to the residual"),
    "resid_post": "residual stream leaving the layer (post-norm encoders: after ln2)",
    "final": "residual after the final norm (the last resid_post for models without one)",
    "logits": "unembedded (soft-capped, Gemma 2) logits (the final hidden states for encoders with head='none')",
}


def check_site(site: str) -> None:
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; valid sites: {', '.join(SITES)}")


def is_layer_site(site: str) -> bool:
    check_site(site)
    return site in LAYER_SITES


def feature_shape(cfg: Config, site: str) -> tuple[int, ...]:
    """Per-position trailing shape of a site (for attention sites: per query position [N, S])."""
    check_site(site)
    D, N, K, H, F, V = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.d_mlp, cfg.vocab_size
    return {
        "embed": (D,),
        "resid_pre": (D,),
        "q": (N, H),
        "k": (K, H),
        "v": (K, H),
        "z": (N, H),
        "attn_out": (D,),
        "resid_mid": (D,),
        "mlp_pre": (F,),
        "mlp_post": (F,),
        "mlp_out": (D,),
        "resid_post": (D,),
        "final": (D,),
        "logits": (D,) if cfg.head == "none" else (V,),
    }.get(site, ())


def site_shape(cfg: Config, site: str, batch: int, seq: int) -> tuple[int, ...]:
    """Full shape of one layer's activation at ``site`` for a [batch, seq] input."""
    check_site(site)
    if site in ATTN_SITES:
        return (batch, cfg.n_heads, seq, seq)
    return (batch, seq) + feature_shape(cfg, site)


def list_sites(cfg: Config, batch: int = 1, seq: int | None = None) -> list[dict]:
    """Every site with its layer range, shape and meaning, for a given config and input size."""
    seq = seq or cfg.n_ctx
    rows = []
    for site in SITES:
        rows.append(
            {
                "site": site,
                "layers": cfg.n_layers if site in LAYER_SITES else None,
                "shape": site_shape(cfg, site, batch, seq),
                "doc": SITE_DOCS[site],
            }
        )
    return rows


def n_heads_at(cfg: Config, site: str) -> int:
    """Number of heads on a site's head axis (kv heads for k and v)."""
    return cfg.kv_heads if site in ("k", "v") else cfg.n_heads
