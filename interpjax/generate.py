"""KV-cache generation with interventions active, compiled once per shape.

``generate`` prefills the (left-padded) prompts in one pass, then decodes one token per step inside
a ``lax.while_loop`` over a fixed key/value buffer [L, B, T0 + N, K, H]; the whole thing is one
jitted program per (shapes, greedy or sampled, intervention structure), never one per token:
new prompts, coefficients, stop tokens or sampling numbers reuse it.

How interventions map onto generation (the rule, documented and tested):

* Every intervention is written against the **full output sequence** [B, T0 + N] -- the array
  ``generate`` returns. ``positions`` are column indices of that array (negative ones count from
  its end), and an array with a sequence axis (``Add.vector`` [T0 + N, D], ``Patch.value``
  [B, T0 + N, D], ...) is indexed by the same columns. Running ``forward`` on the returned tokens
  with the same interventions therefore reproduces the logits the decoder saw.
* An intervention without ``positions`` applies at every position: the prompt and each generated
  token.
* The prefill and each decode step see every intervention through its ``window`` (the
  intervention protocol of ``interpjax.core.interventions``): positions shifted onto the segment's
  columns, sequence-shaped fields cut to them. A new intervention class works here unchanged;
  ``Custom`` (whose function sees the activation) receives each segment as it is.
* Attention-score sites (``attn_scores``, ``pattern``, ``AttentionKnockout``) have a key axis that
  the cache lays out differently; they are refused here (use ``forward`` on the full sequence).
* ``per_row=True``: every numeric leaf of the interventions carries a leading row axis [B] (build
  them with ``stack_rows``); row b decodes with its own slice. Each model step is a ``vmap`` over
  rows of the one-row step (the decode loop itself is shared), so one batched call equals B
  separate single-row calls token for token.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .core import inputs
from .core import interventions as ivmod
from .core import model as M
from .core.config import Config
from .core.sites import ATTN_SITES

class Generation(NamedTuple):
    """``tokens`` [B, T0 + N] (prompt, then generated tokens, ``pad_token_id`` after a stop token);
    ``mask`` [B, T0 + N] (1 on real prompt tokens and on generated tokens up to the stop token);
    ``n_new`` [B] generated tokens per row (the stop token included)."""

    tokens: np.ndarray
    mask: np.ndarray
    n_new: np.ndarray


# ---------------------------------------------------------------------------------------------
# interventions written against the full sequence -> the slice a segment of it needs


def _segment(ivs: tuple, start, T: int, total: int) -> tuple:
    """The interventions as one segment of ``T`` columns starting at column ``start`` (may be
    traced) of a ``total``-column sequence sees them: each one's ``window`` (the intervention
    protocol) shifts its positions into the segment and cuts its sequence-indexed arrays."""
    win = ivmod.Window(total=total, start=start, n_rows=T)
    return tuple(iv.window(win) for iv in ivs)


# ---------------------------------------------------------------------------------------------
# sampling


def _choose(logits_BV, keys_B, step, sampling):
    """Next token per row. ``sampling`` is None for argmax, else (temperature, top_k, top_p) arrays:
    a sample from the temperature-scaled distribution restricted to the ``top_k`` most likely tokens
    (0 = all) and then to the smallest set whose probability reaches ``top_p`` (transformers' order)."""
    logits = logits_BV.astype(jnp.float32)
    if sampling is None:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    temperature, top_k, top_p = sampling
    logits = logits / temperature
    desc = jnp.sort(logits, axis=-1)[:, ::-1]
    kth = jax.lax.dynamic_index_in_dim(desc, jnp.maximum(top_k, 1) - 1, axis=-1)  # [B, 1]
    logits = jnp.where((top_k > 0) & (logits < kth), -jnp.inf, logits)
    desc = jnp.where((top_k > 0) & (desc < kth), -jnp.inf, desc)
    probs = jax.nn.softmax(desc, axis=-1)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p  # probability mass ranked above < top_p
    smallest_kept = jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where((top_p < 1.0) & (logits < smallest_kept), -jnp.inf, logits)
    keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys_B)
    return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# the decoder


def _head(cfg: Config, params: dict, x_BTD, ivs: tuple):
    final = ivmod.apply_at(ivs, "final", M.final_norm(cfg, params, x_BTD))
    return ivmod.apply_at(ivs, "logits", M.unembed(cfg, params, final))


def _segment_step(cfg: Config, params: dict, tok_BT, pid_BT, ctx, ivs: tuple, past_kv, start, total: int):
    """One segment of the sequence (the prefill, or one decode step): the logits at its last column
    [B, V] and its post-rotary keys/values [L, B, T, K, H], with ``ivs`` seen through the segment's
    window (columns ``start .. start + T - 1`` of ``total``)."""
    T = tok_BT.shape[1]
    seg = _segment(ivs, start, T, total)
    x = ivmod.apply_at(seg, "embed", M.embed(cfg, params, tok_BT, pid_BT))
    x, _, kv = M.run_layers(cfg, params, x, ctx, seg, (), (), past_kv=past_kv, return_kv=True)
    return _head(cfg, params, x[:, -1:], _segment(ivs, start + T - 1, 1, total))[:, 0], kv


def _rowwise(step):
    """``step`` run once per row, each row with its own slice of the interventions (their numeric
    leaves carry a leading [B] axis): a ``vmap`` over rows of the one-row step. Only the model
    step is mapped -- the loop counter, cache columns and stop test stay shared scalars, so the
    cache update stays an in-place slice update rather than a per-row scatter."""

    def one(tok_T, pid_T, ctx_row, ivs_row, past_row, start, total):
        past = None if past_row is None else jax.tree.map(lambda a: a[:, None], past_row)
        logits, kv = step(tok_T[None], pid_T[None], jax.tree.map(lambda a: a[None], ctx_row), ivs_row, past,
                          start, total)
        return logits[0], jax.tree.map(lambda a: a[:, 0], kv)

    def run(tok_BT, pid_BT, ctx, ivs, past_kv, start, total):
        return jax.vmap(functools.partial(one, start=start, total=total), in_axes=(0, 0, 0, 0, 1),
                        out_axes=(0, 1))(tok_BT, pid_BT, ctx, ivs, past_kv)

    return run


def _decode(cfg: Config, params: dict, tokens_BT, mask_BT, ivs: tuple, keys_B, stop_S, pad_id, sampling,
            n_new: int, per_row: bool = False):
    """Prefill the left-padded prompts, then decode ``n_new`` tokens in a while loop over a fixed
    KV buffer; returns (tokens [B, T0 + n_new], mask [B, T0 + n_new]). ``per_row``: every row runs
    the model with its own slice of ``ivs`` (see ``_rowwise``); the loop itself is shared."""
    B, T0 = tokens_BT.shape
    total = T0 + n_new
    dtype = M.compute_dtype(params)
    pos_BT = M.positions_from_mask(mask_BT)
    slots_BT = jnp.broadcast_to(jnp.arange(T0)[None], (B, T0))
    step = functools.partial(_segment_step, cfg, params)
    if per_row:
        step = _rowwise(step)

    # prefill: the whole prompt in one pass, keeping every layer's post-rotary keys and values
    ctx = M.make_ctx(cfg, slots_BT, mask_BT, slots_BT, mask_BT, rope_pos_BT=pos_BT)
    logits_BV, (k_LBTKH, v_LBTKH) = step(tokens_BT, pos_BT, ctx, ivs, None, 0, total)
    buf_shape = (cfg.n_layers, B, total, cfg.kv_heads, cfg.d_head)
    k_buf = jnp.zeros(buf_shape, dtype).at[:, :, :T0].set(k_LBTKH.astype(dtype))
    v_buf = jnp.zeros(buf_shape, dtype).at[:, :, :T0].set(v_LBTKH.astype(dtype))

    tok_B = _choose(logits_BV, keys_B, 0, sampling)
    out_BT = jnp.full((B, total), pad_id, jnp.int32).at[:, :T0].set(tokens_BT.astype(jnp.int32)).at[:, T0].set(tok_B)
    out_mask = jnp.concatenate([mask_BT.astype(jnp.int32), jnp.zeros((B, n_new), jnp.int32)], 1).at[:, T0].set(1)
    finished_B = jnp.isin(tok_B, stop_S)
    valid_BS = jnp.concatenate([mask_BT.astype(bool), jnp.ones((B, n_new), bool)], 1)
    last_pos_B = pos_BT[:, -1]
    key_slots_S = jnp.arange(total)

    def cond(state):
        i, _, _, _, _, finished = state
        return (i < n_new) & ~jnp.all(finished)

    def body(state):
        i, out, out_mask, k_buf, v_buf, finished = state
        c = T0 + i - 1  # column of the token fed in this step
        tok = jax.lax.dynamic_index_in_dim(out, c, axis=1)  # [B, 1]
        pid = (last_pos_B + i)[:, None]
        q_slot = jnp.full((B, 1), c)
        k_slot = jnp.concatenate([jnp.broadcast_to(key_slots_S[None], (B, total)), q_slot], 1)
        k_valid = jnp.concatenate([valid_BS & (key_slots_S < c)[None], jnp.ones((B, 1), bool)], 1)
        ctx = M.make_ctx(cfg, q_slot, jnp.ones((B, 1), bool), k_slot, k_valid, rope_pos_BT=pid)
        logits_BV, (k_new, v_new) = step(tok, pid, ctx, ivs, (k_buf, v_buf), c, total)
        k_buf = jax.lax.dynamic_update_slice_in_dim(k_buf, k_new.astype(dtype), c, axis=2)
        v_buf = jax.lax.dynamic_update_slice_in_dim(v_buf, v_new.astype(dtype), c, axis=2)
        nxt = _choose(logits_BV, keys_B, i, sampling)
        nxt = jnp.where(finished, pad_id, nxt)
        out = jax.lax.dynamic_update_index_in_dim(out, nxt, c + 1, axis=1)
        out_mask = jax.lax.dynamic_update_index_in_dim(out_mask, (~finished).astype(jnp.int32), c + 1, axis=1)
        return i + 1, out, out_mask, k_buf, v_buf, finished | jnp.isin(nxt, stop_S)

    state = (jnp.int32(1), out_BT, out_mask, k_buf, v_buf, finished_B)
    _, out_BT, out_mask, _, _, _ = jax.lax.while_loop(cond, body, state)
    return out_BT, out_mask


@functools.partial(jax.jit, static_argnames=("cfg", "n_new", "per_row"))
def _generate(cfg: Config, params: dict, tokens_BT, mask_BT, ivs: tuple, seed, stop_S, pad_id, sampling, *,
              n_new: int, per_row: bool):
    B = tokens_BT.shape[0]
    keys_B = jax.vmap(lambda b: jax.random.fold_in(jax.random.PRNGKey(seed), b))(jnp.arange(B))
    return _decode(cfg, params, tokens_BT, mask_BT, ivs, keys_B, stop_S, pad_id, sampling, n_new, per_row)


# ---------------------------------------------------------------------------------------------
# public API


def stack_rows(rows) -> tuple:
    """Per-row interventions for ``generate(..., per_row=True)``: ``rows[b]`` (an intervention or a
    sequence of them, all with the same structure) becomes row b's slice of one stacked value."""
    rows = [ivmod.compose(r) for r in rows]
    if not rows:
        raise ValueError("stack_rows needs at least one row")
    structure = jax.tree.structure(rows[0])
    for b, r in enumerate(rows):
        if jax.tree.structure(r) != structure:
            raise ValueError(f"row {b} differs in structure from row 0 (kinds, sites, which fields are set must "
                             f"match): {jax.tree.structure(r)} vs {structure}")
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *rows)


def _row(ivs: tuple, b: int) -> tuple:
    return jax.tree.map(lambda a: a[b], ivs)


def _check_generation_ivs(cfg: Config, params: dict, ivs: tuple, B: int, total: int, per_row: bool) -> None:
    for iv in ivs:
        if iv.site in ATTN_SITES:
            raise ValueError(f"{type(iv).__name__} at {iv.site!r}: attention-score sites are not supported during "
                             f"KV-cache generation (their key axis is laid out per step); supported sites: every "
                             f"site except {ATTN_SITES}. Apply it with forward() on the full sequence instead.")
    dtype = M.compute_dtype(params)
    if not per_row:
        ivmod.validate(ivs, cfg, B, total, dtype)
        return
    for path, leaf in jax.tree_util.tree_flatten_with_path(ivs)[0]:
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] != B:
            raise ValueError(f"per_row=True: intervention leaf {jax.tree_util.keystr(path)} has shape {np.shape(leaf)}; "
                             f"every numeric leaf needs a leading row axis of size B={B} (build with stack_rows)")
    for b in range(B):
        ivmod.validate(_row(ivs, b), cfg, 1, total, dtype)


def _scalar_kind(x) -> str:
    """'int', 'float' or 'other' (bools, complex numbers, arrays and strings are 'other')."""
    if isinstance(x, (bool, np.bool_, str, bytes)) or np.ndim(x) != 0:
        return "other"
    dt = np.asarray(x).dtype
    return "int" if np.issubdtype(dt, np.integer) else "float" if np.issubdtype(dt, np.floating) else "other"


def _check_sampling(cfg: Config, temperature, top_k, top_p) -> None:
    """The sampling numbers, refused (never rounded or cast) unless they are what they claim."""
    if _scalar_kind(temperature) == "other" or not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite real number >= 0 (0 = greedy), got {temperature!r}")
    if _scalar_kind(top_k) != "int":
        raise ValueError(f"top_k must be an integer in 0..{cfg.vocab_size} (0 = off), got {top_k!r}")
    if not 0 <= int(top_k) <= cfg.vocab_size:
        raise ValueError(f"top_k must be in 0..{cfg.vocab_size} (0 = off), got {top_k}")
    if _scalar_kind(top_p) == "other" or not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p!r}")


def generate(cfg: Config, params: dict, prompt_BT, max_new_tokens: int, interventions=None, *, attention_mask=None,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0, stop_tokens=(),
             pad_token_id: int | None = None, per_row: bool = False) -> Generation:
    """Continue left-padded prompts [B, T0] by up to ``max_new_tokens`` tokens with ``interventions``
    active on the prompt and on every generated token (positions index the returned sequence).

    ``temperature == 0`` is greedy; otherwise sampling with ``top_k`` (0 = off), ``top_p`` (1 = off)
    and ``seed``. A row stops after emitting one of ``stop_tokens``; later columns hold
    ``pad_token_id`` (default: the first stop token, else 0). ``per_row=True`` takes interventions
    whose numeric leaves have a leading [B] row axis (see ``stack_rows``).
    """
    if np.ndim(prompt_BT) != 2:
        raise ValueError(f"prompt must be [batch, seq] token ids; got shape {np.shape(prompt_BT)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    B, T0 = np.shape(prompt_BT)
    total = T0 + int(max_new_tokens)
    if total > cfg.n_ctx:
        raise ValueError(f"prompt ({T0}) + max_new_tokens ({max_new_tokens}) exceeds n_ctx={cfg.n_ctx}")
    _check_sampling(cfg, temperature, top_k, top_p)
    tokens, mask, _, _ = M.prepare(cfg, params, prompt_BT, attention_mask, None)  # validated once, here
    if attention_mask is not None:  # all ones otherwise: trivially left padding
        m = np.asarray(attention_mask)
        if not (m[:, -1] == 1).all() or (np.diff(m, axis=1) < 0).any():
            raise ValueError("attention_mask must be left padding (0s then 1s, last column real in every row): "
                             "generation continues from the last column")
    stops = np.atleast_1d(np.asarray(() if stop_tokens is None else stop_tokens))  # checked before any cast
    stop_ids = tuple(int(t) for t in inputs.check_token_ids(cfg, stops, stops.shape, name="stop_tokens")) \
        if stops.size else ()
    if pad_token_id is None:
        pad_token_id = stop_ids[0] if stop_ids else 0
    pad_token_id = int(inputs.check_token_ids(cfg, np.asarray([pad_token_id]), (1,), name="pad_token_id")[0])
    ivs = ivmod.compose(interventions) if interventions is not None else ()
    _check_generation_ivs(cfg, params, ivs, B, total, per_row)
    sampling = None if temperature == 0 else (jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
    stop_S = jnp.asarray(stop_ids if stop_ids else (-1,), jnp.int32)  # -1 matches no token
    out, out_mask = _generate(cfg, params, tokens, mask, ivs, jnp.uint32(seed), stop_S, jnp.int32(pad_token_id),
                              sampling, n_new=int(max_new_tokens), per_row=bool(per_row))
    out, out_mask = np.asarray(out), np.asarray(out_mask)
    return Generation(tokens=out, mask=out_mask, n_new=out_mask[:, T0:].sum(1))


def greedy(cfg: Config, params: dict, prompt_BT, max_new_tokens: int, interventions=None, **kw) -> np.ndarray:
    """Greedy continuation tokens [B, T0 + max_new_tokens] (``generate`` with temperature 0)."""
    return generate(cfg, params, prompt_BT, max_new_tokens, interventions, **kw).tokens
