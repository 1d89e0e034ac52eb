"""Dissecting factual recall (Geva et al.): attention knockout over layer windows, sublayer
knockouts and the attribute rate of a position's residual projected to the vocabulary.

Every window start is one variant of a single ``jax.vmap``-ed, jit-compiled program: the
knockout is an ``AttentionKnockout`` value whose ``layer`` is a traced array ``start + [0..k)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..core import model as M
from ..core.config import Config
from ..core.interventions import Ablate, AttentionKnockout

EDGE_KINDS = ("subject", "non_subject", "last")
SUBLAYERS = {"attn": "attn_out", "mlp": "mlp_out"}


def _as_mask(tokens, attention_mask):
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, seq], got shape {tokens.shape}")
    mask = np.ones_like(tokens, np.int32) if attention_mask is None else np.asarray(attention_mask, np.int32)
    if mask.shape != tokens.shape:
        raise ValueError(f"attention_mask has shape {mask.shape}; expected {tokens.shape}")
    return tokens.astype(np.int32), mask


def key_positions(kind: str, subject_mask_BT, attention_mask_BT) -> np.ndarray:
    """Key positions [B, P] whose edges from the last position are blocked.

    ``subject``: the subject's tokens; ``non_subject``: every real token that is neither a subject
    token nor the last; ``last``: the last position itself. Rows with fewer positions repeat their
    first one (a set, so repeats change nothing)."""
    if kind not in EDGE_KINDS:
        raise ValueError(f"unknown knockout kind {kind!r}; valid kinds: {EDGE_KINDS}")
    subj = np.asarray(subject_mask_BT, bool)
    real = np.asarray(attention_mask_BT, bool)
    if subj.shape != real.shape:
        raise ValueError(f"subject mask has shape {subj.shape}; expected {real.shape} like the tokens")
    B, T = subj.shape
    last = np.zeros_like(subj)
    last[:, -1] = True
    if kind == "subject":
        chosen = subj & real
    elif kind == "non_subject":
        chosen = real & ~subj & ~last
    else:
        chosen = last
    rows = [np.flatnonzero(c) for c in chosen]
    empty = [b for b, r in enumerate(rows) if r.size == 0]
    if empty:
        raise ValueError(f"rows {empty} have no {kind!r} positions to knock out")
    P = max(r.size for r in rows)
    return np.stack([np.concatenate([r, np.full(P - r.size, r[0])]) for r in rows]).astype(np.int32)


def window_layers(start, window: int, n_layers: int):
    """The layers ``start .. start+window-1`` clipped to the model (a traced-friendly array)."""
    return jnp.clip(start + jnp.arange(window), 0, n_layers - 1)


def _target_prob(logits_BV, target_B):
    """Probability of each row's target token."""
    probs = jax.nn.softmax(logits_BV.astype(jnp.float32), -1)
    return jnp.take_along_axis(probs, target_B[:, None], 1)[:, 0]


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _knockout_probs(cfg, params, tokens, mask, keys_BP, window, n_starts, target_B):
    def prob(iv):
        return _target_prob(M.run(cfg, params, tokens, mask, None, (iv,) if iv is not None else (), (), ())[0][:, -1],
                            target_B)

    def one(start):
        return prob(AttentionKnockout(layer=window_layers(start, window, cfg.n_layers),
                                      query_positions=jnp.array([-1]), key_positions=keys_BP))

    return prob(None), jax.vmap(one)(jnp.arange(n_starts))


def _check_window(cfg: Config, window: int):
    if not 1 <= window <= cfg.n_layers:
        raise ValueError(f"window={window} must be in 1..n_layers={cfg.n_layers}")


def _targets(cfg, params, tokens, mask, target):
    if target is None:
        logits = M.forward(cfg, params, tokens, mask)[:, -1]
        return np.asarray(jnp.argmax(logits, -1), np.int32)
    target = np.asarray(target, np.int32)
    if target.shape != (tokens.shape[0],):
        raise ValueError(f"target must hold one token id per prompt, shape ({tokens.shape[0]},); got {target.shape}")
    if target.min() < 0 or target.max() >= cfg.vocab_size:
        raise ValueError(f"target ids must lie in 0..{cfg.vocab_size - 1}")
    return target


def attention_knockout(cfg: Config, params: dict, tokens, subject_mask, attention_mask=None, *,
                       kind: str = "subject", window: int = 1, target=None) -> dict:
    """Block the last position's attention to ``kind`` positions in every window of ``window``
    layers (one compiled vmapped sweep over window starts).

    Returns ``prob`` [B] (the target's probability unedited; target = the model's own top-1 unless
    given), ``prob_knocked`` [starts, B] and ``relative_change`` [starts]: mean over prompts of
    (p_knocked - p) / p, the quantity Geva et al. plot (negative = the edges mattered)."""
    tokens, mask = _as_mask(tokens, attention_mask)
    _check_window(cfg, window)
    if (mask[:, -1] == 0).any():
        raise ValueError("the last position must be a real token in every row (use left padding)")
    keys = key_positions(kind, subject_mask, mask)
    target = _targets(cfg, params, tokens, mask, target)
    n_starts = cfg.n_layers - window + 1
    p, pk = _knockout_probs(cfg, params, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(keys), window,
                            n_starts, jnp.asarray(target))
    p, pk = np.asarray(p), np.asarray(pk)
    return {"starts": np.arange(n_starts), "window": window, "kind": kind, "target": target, "prob": p,
            "prob_knocked": pk, "relative_change": ((pk - p) / p).mean(-1)}


@functools.partial(jax.jit, static_argnums=(0, 4, 6, 7))
def _sublayer_probs(cfg, params, tokens, mask, site, positions_BP, window, n_starts, target_B):
    def one(start):
        iv = Ablate(site=site, layer=window_layers(start, window, cfg.n_layers), kind="zero", positions=positions_BP)
        return _target_prob(M.run(cfg, params, tokens, mask, None, (iv,), (), ())[0][:, -1], target_B)

    return jax.vmap(one)(jnp.arange(n_starts))


def sublayer_knockout(cfg: Config, params: dict, tokens, positions, attention_mask=None, *, sublayer: str = "mlp",
                      window: int = 1, target=None) -> dict:
    """Zero the ``sublayer`` ("attn" or "mlp") output at ``positions`` ([P] or [B, P]) for every
    window of ``window`` layers; same outputs as ``attention_knockout``."""
    if sublayer not in SUBLAYERS:
        raise ValueError(f"unknown sublayer {sublayer!r}; valid: {tuple(SUBLAYERS)}")
    tokens, mask = _as_mask(tokens, attention_mask)
    _check_window(cfg, window)
    positions = np.asarray(positions, np.int32)
    T = tokens.shape[1]
    if positions.size == 0 or positions.min() < -T or positions.max() >= T:
        raise ValueError(f"positions {positions.tolist()} out of range for {T} tokens")
    target = _targets(cfg, params, tokens, mask, target)
    p = np.asarray(_target_prob(M.forward(cfg, params, tokens, mask)[:, -1], jnp.asarray(target)))
    n_starts = cfg.n_layers - window + 1
    pk = np.asarray(_sublayer_probs(cfg, params, jnp.asarray(tokens), jnp.asarray(mask), SUBLAYERS[sublayer],
                                    jnp.asarray(positions), window, n_starts, jnp.asarray(target)))
    return {"starts": np.arange(n_starts), "window": window, "sublayer": sublayer, "target": target, "prob": p,
            "prob_knocked": pk, "relative_change": ((pk - p) / p).mean(-1)}


@functools.partial(jax.jit, static_argnums=(0, 5))
def _topk_per_layer(cfg, params, tokens, mask, pos_B, k):
    _, acts = M.run(cfg, params, tokens, mask, None, (), ("resid_post",), tuple(range(cfg.n_layers)))
    x = acts["resid_post"]  # [L, B, T, D]
    x = jnp.take_along_axis(x, pos_B[None, :, None, None], axis=2)[:, :, 0]  # [L, B, D]
    logits = M.final_logits(cfg, params, x[:, :, None])[:, :, 0]
    return jax.lax.top_k(logits, k)[1]  # [L, B, k]


def attribute_rate(cfg: Config, params: dict, tokens, positions_B, attribute_sets, attention_mask=None, *,
                   k: int = 50) -> np.ndarray:
    """Attribute rate per layer [L]: the fraction of the top-``k`` tokens of the residual (after each
    layer) at ``positions_B`` (e.g. the subject's last token), read through the final norm and
    unembedding, that belong to that prompt's set of attribute token ids; averaged over prompts."""
    tokens, mask = _as_mask(tokens, attention_mask)
    B, T = tokens.shape
    pos = np.asarray(positions_B, np.int32)
    if pos.shape != (B,):
        raise ValueError(f"positions_B must hold one position per prompt, shape ({B},); got {pos.shape}")
    pos = np.where(pos < 0, pos + T, pos)
    if pos.min() < 0 or pos.max() >= T:
        raise ValueError(f"positions {positions_B} out of range for {T} tokens")
    if len(attribute_sets) != B:
        raise ValueError(f"need one attribute set per prompt ({B}); got {len(attribute_sets)}")
    if any(len(s) == 0 for s in attribute_sets):
        raise ValueError("every prompt needs a non-empty attribute token set")
    if not 1 <= k <= cfg.vocab_size:
        raise ValueError(f"k={k} must be in 1..vocab_size={cfg.vocab_size}")
    top = np.asarray(_topk_per_layer(cfg, params, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(pos), k))
    rate = np.zeros(cfg.n_layers)
    for b, attrs in enumerate(attribute_sets):
        rate += np.isin(top[:, b], np.asarray(list(attrs))).mean(-1)
    return rate / B
