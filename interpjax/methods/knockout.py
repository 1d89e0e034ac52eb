"""Dissecting factual recall (Geva et al.): attention knockout over layer windows, sublayer
knockouts and the attribute rate of a position's residual projected to the vocabulary.

Every window start (and, in ``edge_knockout``, every edge set) is one variant of a single
``jax.vmap``-ed, jit-compiled program: the knockout is an ``AttentionKnockout`` value whose
``layer`` is a traced array ``start + [0..k)``. Blocking edges *from the last position* leaves every
earlier position unchanged (causal attention), so the sweep runs the prompt once, keeps each layer's
keys and values, and reruns only the last position per variant -- exact, and T times cheaper.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..core import inputs
from ..core import model as M
from ..core.handle import require_model
from ..core.interventions import Ablate, AttentionKnockout, Window
from ..io.artifacts import model_identity
from ..io.plots import save_drawing
from .result import Result

EDGE_KINDS = ("subject", "non_subject", "last")
SUBLAYERS = {"attn": "attn_out", "mlp": "mlp_out"}


# ---------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class KnockoutResult(Result):
    """One knockout sweep over window starts. ``edit`` is "attention" (``kind``: which edges from
    the last position were blocked) or "sublayer" (``kind``: "attn" or "mlp", zeroed). ``prob`` [B]
    is each answer's probability unedited, ``prob_knocked`` [starts, B] with the window starting at
    ``starts[i]`` knocked out, ``relative_change`` [starts] the mean of (p_knocked - p) / p."""

    FORMAT: ClassVar[str] = "interpjax.knockout"

    edit: str
    kind: str
    window: int
    starts: np.ndarray
    answers: np.ndarray
    prob: np.ndarray
    prob_knocked: np.ndarray
    relative_change: np.ndarray
    model: dict | None = None

    def draw(self, ax):
        """Relative change of the answer probability by window start, onto matplotlib axes."""
        label = f"last -> {self.kind}" if self.edit == "attention" else f"zero {self.kind}"
        ax.plot(self.starts, self.relative_change, marker="o", label=label)
        ax.set(xlabel="window start layer", ylabel="relative change in p(answer)",
               title=f"{self.edit} knockout (window {self.window})")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        return ax

    def plot(self, path) -> Path:
        return save_drawing(self.draw, path)


@dataclass(frozen=True)
class AttributeRateResult(Result):
    """``rate`` [L]: the share of the top-``k`` vocabulary projection of the residual after each
    layer, at each prompt's ``positions``, that lies in that prompt's attribute set (mean over
    prompts; ``per_prompt`` [L, B] keeps each prompt's share, for intervals over prompts)."""

    FORMAT: ClassVar[str] = "interpjax.attribute_rate"

    rate: np.ndarray
    k: int
    positions: np.ndarray
    per_prompt: np.ndarray  # [L, B]: each prompt's share (``rate`` is its mean over prompts)
    model: dict | None = None

    def draw(self, ax):
        ax.plot(np.arange(len(self.rate)), self.rate, marker="o")
        ax.set(xlabel="layer", ylabel=f"attribute rate (top-{self.k})", title="attribute rate")
        ax.grid(alpha=0.3)
        return ax

    def plot(self, path) -> Path:
        return save_drawing(self.draw, path)


# ---------------------------------------------------------------------------------------------
# inputs


def _prompts(model, tokens, attention_mask, answers=None):
    """Checked (tokens, mask, answers or None); the last position must be real in every row."""
    tokens = np.asarray(inputs.check_tokens(model.cfg, tokens))
    mask = np.asarray(inputs.check_mask(attention_mask, tokens.shape))
    if (mask[:, -1] == 0).any():
        bad = np.flatnonzero(mask[:, -1] == 0).tolist()
        raise ValueError(f"rows {bad[:5]} end in padding: the last position must be a real token (use left padding)")
    if answers is not None:
        answers = inputs.check_token_ids(model.cfg, answers, (tokens.shape[0],), name="answers")
    return tokens, mask, answers


def _check_window(cfg, window: int):
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or not 1 <= window <= cfg.n_layers:
        raise ValueError(f"window={window!r} must be an integer in 1..n_layers={cfg.n_layers}")
    return int(window)


def key_positions(kind: str, subject_mask_BT, attention_mask_BT) -> np.ndarray:
    """Key positions [B, P] whose edges from the last position are blocked.

    ``subject``: the subject's tokens; ``non_subject``: every real token that is neither a subject
    token nor the last; ``last``: the last position itself. Rows with fewer positions repeat their
    first one (a set, so repeats change nothing)."""
    if kind not in EDGE_KINDS:
        raise ValueError(f"unknown knockout kind {kind!r}; valid kinds: {EDGE_KINDS}")
    subj = np.asarray(subject_mask_BT)
    real = np.asarray(attention_mask_BT)
    if subj.shape != real.shape:
        raise ValueError(f"subject mask has shape {subj.shape}; expected {real.shape} like the tokens")
    if subj.dtype != np.bool_ and not np.isin(subj, (0, 1)).all():
        raise ValueError(f"subject mask must be boolean (or 0/1); got values {sorted(set(subj.ravel().tolist()))[:5]}")
    subj, real = subj.astype(bool), real.astype(bool)
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


def _answer_prob(logits_BV, answers_B):
    """Probability of each row's answer token."""
    probs = jax.nn.softmax(logits_BV.astype(jnp.float32), -1)
    return jnp.take_along_axis(probs, answers_B[:, None], 1)[:, 0]


def _own_answers(model, tokens, mask, answers):
    """The given answers, or the model's own top-1 next token at the last position."""
    if answers is not None:
        return answers
    logits = M.forward(model.cfg, model.params, tokens, mask)[:, -1]
    return np.asarray(jnp.argmax(logits, -1), np.int32)


# ---------------------------------------------------------------------------------------------
# knockouts


def _positions_from_masks(masks_KBT) -> np.ndarray:
    """Key positions [K, B, P] of boolean masks [K, B, T]; short rows repeat their first position."""
    rows = [[np.flatnonzero(m) for m in mask_BT] for mask_BT in masks_KBT]
    P = max(r.size for set_rows in rows for r in set_rows)
    return np.stack([np.stack([np.concatenate([r, np.full(P - r.size, r[0])]) for r in set_rows])
                     for set_rows in rows]).astype(np.int32)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _knockout_probs(cfg, params, tokens, mask, keys_KBP, window, starts_S, answers_B):
    """p(answer) unedited [B] and with the last position's edges to each key set blocked in each
    window [K, S, B]. One clean pass gives every layer's keys/values; each variant reruns only the
    last position over them (the earlier positions never see the last one)."""
    B, T = tokens.shape
    pos_BT = M.positions_from_mask(mask)
    idx_BT = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    ctx = M.make_ctx(cfg, idx_BT, mask, idx_BT, mask, rope_pos_BT=pos_BT)
    x0_BTD = M.embed(cfg, params, tokens, pos_BT)
    x_BTD, _, (k_LBTKH, v_LBTKH) = M.run_layers(cfg, params, x0_BTD, ctx, (), (), (), return_kv=True)
    clean_B = _answer_prob(M.final_logits(cfg, params, x_BTD[:, -1:])[:, 0], answers_B)
    past = (k_LBTKH[:, :, :-1], v_LBTKH[:, :, :-1])
    ctx_last = M.make_ctx(cfg, idx_BT[:, -1:], mask[:, -1:], idx_BT, mask, rope_pos_BT=pos_BT[:, -1:])
    last_row = Window(total=T, start=T - 1, n_rows=1)

    def one(keys_BP, start):
        iv = AttentionKnockout(layer=window_layers(start, window, cfg.n_layers), query_positions=jnp.array([-1]),
                               key_positions=keys_BP).window(last_row)
        y_B1D, _, _ = M.run_layers(cfg, params, x0_BTD[:, -1:], ctx_last, (iv,), (), (), past_kv=past)
        return _answer_prob(M.final_logits(cfg, params, y_B1D)[:, 0], answers_B)

    per_start = jax.vmap(one, in_axes=(None, 0))
    return clean_B, jax.vmap(per_start, in_axes=(0, None))(keys_KBP, starts_S)


def _check_starts(cfg, window: int, starts):
    n_starts = cfg.n_layers - window + 1
    if starts is None:
        return np.arange(n_starts, dtype=np.int32)
    starts = np.asarray(starts)
    if starts.ndim != 1 or starts.size == 0 or not np.issubdtype(starts.dtype, np.integer):
        raise ValueError(f"starts must be a non-empty 1-D array of integers, got {starts!r}")
    bad = starts[(starts < 0) | (starts >= n_starts)]
    if bad.size:
        raise ValueError(f"window starts {bad.tolist()[:5]} out of range: a {window}-layer window starts in 0..{n_starts - 1}")
    return starts.astype(np.int32)


def edge_knockout(model, tokens, key_masks, *, attention_mask=None, window: int = 1, answers=None,
                  starts=None) -> dict:
    """Block the last position's attention to each named key set in every window of ``window``
    layers, all sets and window starts in one compiled vmapped sweep.

    ``key_masks``: ``{name: [B, T] boolean}``, the key positions of each set (real tokens; every row
    needs one). ``starts``: window start layers (default every start). ``answers`` [B]: the token ids
    whose probability is measured (default: the model's own top-1). Returns ``{name: KnockoutResult}``."""
    cfg = require_model(model, "edge_knockout").cfg
    window = _check_window(cfg, window)
    tokens, mask, answers = _prompts(model, tokens, attention_mask, answers)
    if not isinstance(key_masks, dict) or not key_masks:
        raise ValueError("key_masks must be a non-empty dict {name: [B, T] boolean mask}")
    masks = []
    for name, m in key_masks.items():
        m = np.asarray(m)
        if m.shape != tokens.shape:
            raise ValueError(f"key mask {name!r} has shape {m.shape}; expected {tokens.shape} like the tokens")
        if m.dtype != np.bool_ and not np.isin(m, (0, 1)).all():
            raise ValueError(f"key mask {name!r} must be boolean (or 0/1)")
        m = m.astype(bool)
        if (m & (mask == 0)).any():
            raise ValueError(f"key mask {name!r} marks padding positions (rows {np.flatnonzero((m & (mask == 0)).any(1))[:5].tolist()})")
        empty = np.flatnonzero(~m.any(1))
        if empty.size:
            raise ValueError(f"rows {empty[:5].tolist()} of key mask {name!r} have no positions to knock out")
        masks.append(m)
    starts = _check_starts(cfg, window, starts)
    answers = _own_answers(model, tokens, mask, answers)
    p, pk = _knockout_probs(cfg, model.params, jnp.asarray(tokens), jnp.asarray(mask),
                            jnp.asarray(_positions_from_masks(np.stack(masks))), window, jnp.asarray(starts),
                            jnp.asarray(answers))
    p, pk = np.asarray(p), np.asarray(pk)
    ident = model_identity(model)
    return {name: KnockoutResult("attention", name, window, starts, answers, p, pk[i], ((pk[i] - p) / p).mean(-1),
                                 ident) for i, name in enumerate(key_masks)}


def attention_knockout(model, tokens, subject_mask, *, attention_mask=None, kind: str = "subject",
                       window: int = 1, answers=None) -> KnockoutResult:
    """Block the last position's attention to ``kind`` positions in every window of ``window``
    layers (one compiled vmapped sweep over window starts). ``answers`` [B] are the token ids whose
    probability is measured (default: the model's own top-1); the result's ``relative_change`` is
    the quantity Geva et al. plot (negative = the edges mattered)."""
    cfg = require_model(model, "attention_knockout").cfg
    window = _check_window(cfg, window)
    tokens, mask, answers = _prompts(model, tokens, attention_mask, answers)
    keys_BP = key_positions(kind, subject_mask, mask)
    chosen = np.zeros(tokens.shape, bool)
    np.put_along_axis(chosen, keys_BP, True, axis=1)
    return edge_knockout(model, tokens, {kind: chosen}, attention_mask=mask, window=window, answers=answers)[kind]


@functools.partial(jax.jit, static_argnums=(0, 4, 6, 7))
def _sublayer_probs(cfg, params, tokens, mask, site, positions_BP, window, n_starts, answers_B):
    def one(start):
        iv = Ablate(site=site, layer=window_layers(start, window, cfg.n_layers), kind="zero", positions=positions_BP)
        return _answer_prob(M.run(cfg, params, tokens, mask, None, (iv,), (), ())[0][:, -1], answers_B)

    return jax.vmap(one)(jnp.arange(n_starts))


def sublayer_knockout(model, tokens, positions, *, attention_mask=None, sublayer: str = "mlp", window: int = 1,
                      answers=None) -> KnockoutResult:
    """Zero the ``sublayer`` ("attn" or "mlp") output at ``positions`` ([P], or [B, P] per prompt)
    for every window of ``window`` layers; the same result as ``attention_knockout``."""
    if sublayer not in SUBLAYERS:
        raise ValueError(f"unknown sublayer {sublayer!r}; valid: {tuple(SUBLAYERS)}")
    cfg = require_model(model, "sublayer_knockout").cfg
    window = _check_window(cfg, window)
    tokens, mask, answers = _prompts(model, tokens, attention_mask, answers)
    B, T = tokens.shape
    positions = np.asarray(positions)
    if positions.ndim not in (1, 2) or (positions.ndim == 2 and positions.shape[0] != B):
        raise ValueError(f"positions must be [P] or [B={B}, P]; got shape {positions.shape}")
    positions = inputs.check_positions(positions, T)
    answers = _own_answers(model, tokens, mask, answers)
    p = np.asarray(_answer_prob(M.forward(cfg, model.params, tokens, mask)[:, -1], jnp.asarray(answers)))
    n_starts = cfg.n_layers - window + 1
    pk = np.asarray(_sublayer_probs(cfg, model.params, jnp.asarray(tokens), jnp.asarray(mask), SUBLAYERS[sublayer],
                                    jnp.asarray(positions), window, n_starts, jnp.asarray(answers)))
    return KnockoutResult("sublayer", sublayer, window, np.arange(n_starts), answers, p, pk, ((pk - p) / p).mean(-1),
                          model_identity(model))


# ---------------------------------------------------------------------------------------------
# attribute rate


@functools.partial(jax.jit, static_argnums=(0, 5))
def _topk_per_layer(cfg, params, tokens, mask, pos_B, k):
    _, acts = M.run(cfg, params, tokens, mask, None, (), ("resid_post",), tuple(range(cfg.n_layers)))
    x = acts["resid_post"]  # [L, B, T, D]
    x = jnp.take_along_axis(x, pos_B[None, :, None, None], axis=2)[:, :, 0]  # [L, B, D]
    logits = M.final_logits(cfg, params, x[:, :, None])[:, :, 0]
    return jax.lax.top_k(logits, k)[1]  # [L, B, k]


def attribute_rate(model, tokens, positions, attribute_sets, *, attention_mask=None,
                   k: int = 50) -> AttributeRateResult:
    """Attribute rate per layer: the fraction of the top-``k`` tokens of the residual (after each
    layer) at ``positions`` [B] (one per prompt, e.g. the subject's last token), read through the
    final norm and unembedding, that belong to that prompt's set of attribute token ids."""
    cfg = require_model(model, "attribute_rate").cfg
    tokens = np.asarray(inputs.check_tokens(cfg, tokens))
    mask = np.asarray(inputs.check_mask(attention_mask, tokens.shape))
    B, T = tokens.shape
    pos = inputs.check_positions(positions, T, shape=(B,))
    pos = np.where(pos < 0, pos + T, pos)
    if len(attribute_sets) != B:
        raise ValueError(f"need one attribute set per prompt ({B}); got {len(attribute_sets)}")
    if any(len(s) == 0 for s in attribute_sets):
        raise ValueError("every prompt needs a non-empty attribute token set")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= cfg.vocab_size:
        raise ValueError(f"k={k!r} must be an integer in 1..vocab_size={cfg.vocab_size}")
    top = np.asarray(_topk_per_layer(cfg, model.params, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(pos),
                                     int(k)))
    per_LB = np.stack([np.isin(top[:, b], np.asarray(list(attrs))).mean(-1) for b, attrs in enumerate(attribute_sets)],
                      axis=1)
    return AttributeRateResult(per_LB.mean(-1), int(k), pos.astype(np.int32), per_LB, model_identity(model))
