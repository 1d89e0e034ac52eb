"""What a sweep metric sees: a lazy view of one variant's final activations.

Nothing is unembedded until the metric asks, and then only the rows (positions) and columns
(token ids) it names, so a logit difference at the last position costs two dot products per
prompt, never a ``[variants, batch, pos, vocab]`` tensor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import interventions as ivmod
from . import model as M


def _static_index(idx, size, what):
    """Normalise static indices (int or sequence) to a numpy array; None for traced ones."""
    if idx is None:
        return np.arange(size)
    if isinstance(idx, jax.core.Tracer):
        return None
    a = np.asarray(idx)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got dtype {a.dtype}")
    lo = -size if what == "positions" else 0
    if a.size and (a.min() < lo or a.max() >= size):
        raise ValueError(f"{what} {a.tolist()} out of range: valid {what} are {lo}..{size - 1}")
    return np.where(a < 0, a + size, a) if what == "positions" else a


class Readout:
    """One variant's output. ``logits(positions, token_ids)`` -> [B, P, I] (an int instead of a
    list drops that axis); ``log_probs``/``probs`` normalise over the full vocabulary at those
    positions only; ``final(positions)`` is the residual after the final norm; ``base`` is the
    same view of the run without the grid's interventions (computed once, shared by variants)."""

    def __init__(self, cfg, params, T, rows_fn, full_fn, ivs, base_fn=None, tokens=None):
        self._cfg, self._params, self._T = cfg, params, T
        self._rows_fn, self._full_fn = rows_fn, full_fn  # post-norm rows / full [B, T, D]
        self._final_ivs = tuple(iv for iv in ivs if iv.site == "final")
        self._logit_ivs = tuple(iv for iv in ivs if iv.site == "logits")
        self._base_fn = base_fn
        self.tokens = tokens
        self.requested = 0  # floats of logits requested per variant (for the memory estimate)

    # -- residual --------------------------------------------------------------------------
    def _final_rows(self, pos):
        if self._final_ivs or pos is None:
            full = self._full_fn()
            full = ivmod.apply_at(self._final_ivs, "final", full) if self._final_ivs else full
            return full if pos is None else jnp.take(full, pos, axis=1)
        return self._rows_fn(pos)

    def final(self, positions=None):
        """Residual after the final norm at ``positions`` (None = all): [B, P, D] or [B, D]."""
        pos, squeeze = self._positions(positions)
        rows = self._final_rows(pos)
        return rows[:, 0] if squeeze else rows

    def _positions(self, positions):
        if positions is None:
            return np.arange(self._T), False
        squeeze = np.ndim(positions) == 0
        pos = _static_index(np.atleast_1d(positions) if not isinstance(positions, jax.core.Tracer) else positions,
                            self._T, "positions")
        if pos is None:  # traced
            p = jnp.atleast_1d(positions)
            pos = jnp.where(p < 0, p + self._T, p)
        return pos, squeeze

    # -- logits ----------------------------------------------------------------------------
    def logits(self, positions=None, token_ids=None):
        """Logits at ``positions`` for ``token_ids`` (None = every position / the whole vocab)."""
        cfg = self._cfg
        if getattr(cfg, "head", "lm") == "none":
            raise ValueError("this model has no output head (head='none'): read out.final(...) instead")
        pos, psq = self._positions(positions)
        ids_sq = token_ids is not None and np.ndim(token_ids) == 0
        ids = None if token_ids is None else (
            jnp.atleast_1d(token_ids) if isinstance(token_ids, jax.core.Tracer)
            else _static_index(np.atleast_1d(token_ids), cfg.vocab_size, "token_ids"))
        if self._logit_ivs:  # an edit of the logits needs the full tensor first
            full = ivmod.apply_at(self._logit_ivs, "logits", M.unembed(cfg, self._params, self._final_rows(None)))
            out = jnp.take(full, pos, axis=1)
            out = out if ids is None else jnp.take(out, ids, axis=-1)
        else:
            rows = self._final_rows(pos)
            out = _unembed_columns(cfg, self._params, rows, ids)
        self.requested += int(np.prod(out.shape))
        if ids_sq:
            out = out[..., 0]
        return out[:, 0] if psq else out

    def log_probs(self, positions=None, token_ids=None):
        """log-softmax over the full vocabulary at ``positions``, then the ``token_ids`` columns."""
        full = jax.nn.log_softmax(self.logits(positions).astype(jnp.float32), axis=-1)
        if token_ids is None:
            return full
        ids = jnp.asarray(token_ids)
        return jnp.take(full, ids, axis=-1)

    def probs(self, positions=None, token_ids=None):
        """Softmax probabilities (full-vocabulary normaliser) at ``positions`` for ``token_ids``."""
        return jnp.exp(self.log_probs(positions, token_ids))

    @property
    def base(self) -> "Readout":
        """The same view of the run without the grid's interventions (the sweep's base run)."""
        if self._base_fn is None:
            raise ValueError("no base run available here")
        return self._base_fn()


def _unembed_columns(cfg, params, rows_BPD, ids):
    """Unembed only the ``ids`` columns (all when None) of post-norm rows."""
    if ids is None or getattr(cfg, "head", "lm") != "lm":
        out = M.unembed(cfg, params, rows_BPD)
        return out if ids is None else jnp.take(out, ids, axis=-1)
    if cfg.tie_embeddings:
        w_ID = jnp.take(params["embed"]["tok"], ids, axis=0)
        return M.cap_logits(cfg, jnp.einsum("bpd,id->bpi", rows_BPD, w_ID))  # soft-cap is per element
    w_DI = jnp.take(params["unembed"]["w"], ids, axis=1)
    out = jnp.einsum("bpd,di->bpi", rows_BPD, w_DI)
    if cfg.unembed_bias:
        out = out + jnp.take(params["unembed"]["b"], ids)
    return M.cap_logits(cfg, out)
