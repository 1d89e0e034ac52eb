"""The one place user inputs are checked: token ids, attention masks, layer lists, positions and
answer (target token) ids.

Every check runs on the caller's values *before* any cast or compute, so nothing is wrapped
(int64 ids >= 2**31), truncated (float ids, float layers) or reinterpreted (mask values other than
0/1) on the way in. Each raises a ``ValueError`` naming the offending values and the valid range.
Traced values (inside ``jit``/``vmap``) are checked for shape and dtype only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .config import Config

__all__ = ["concrete", "check_tokens", "check_mask", "check_layers", "check_positions", "check_token_ids",
           "check_position_ids", "check_token_types"]


def concrete(a):
    """``a`` as a numpy array when its values are known here, None when it is traced (or None)."""
    if a is None or isinstance(a, jax.core.Tracer):
        return None
    try:
        return np.asarray(a)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError, TypeError):
        return None


def _is_jax(a) -> bool:
    return isinstance(a, (jax.Array, jax.core.Tracer))


def _dtype_of(a):
    return a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype


def _is_int_dtype(dtype) -> bool:
    """Integer, not bool (numpy counts neither bool nor floats as integers)."""
    return np.issubdtype(np.dtype(dtype), np.integer)


def _is_int_scalar(v) -> bool:
    """A concrete integer (Python, numpy or 0-d array), not a bool."""
    if isinstance(v, (bool, np.bool_)) or isinstance(v, jax.core.Tracer):
        return False
    if isinstance(v, (int, np.integer)):
        return True
    return hasattr(v, "dtype") and np.ndim(v) == 0 and _is_int_dtype(v.dtype)


def _some(values: np.ndarray, n: int = 5) -> list:
    """Up to ``n`` distinct offending values, sorted, as plain Python numbers."""
    return sorted(set(np.asarray(values).ravel().tolist()))[:n]


def _as_int32(name: str, a, host: np.ndarray | None):
    """Cast already range-checked ids to int32, keeping jax arrays on device and numpy on host."""
    if _is_jax(a):
        return a if a.dtype == jnp.int32 else a.astype(jnp.int32)
    return host.astype(np.int32, copy=False)


def _check_range(name: str, host: np.ndarray, lo: int, hi: int, what: str) -> None:
    """Every value in ``lo..hi`` (inclusive), compared in the caller's own dtype."""
    if host.size == 0:
        return
    bad = host[(host < lo) | (host > hi)]
    if bad.size:
        raise ValueError(f"{name} must lie in {what}{lo}..{hi}; got {_some(bad)}")


def check_tokens(cfg: Config, tokens, *, name: str = "tokens"):
    """Token ids [B, T] of integer dtype inside the vocabulary and the context; returns int32 ids
    (a jax array stays a jax array, anything else becomes a numpy array)."""
    host = concrete(tokens)
    dtype = _dtype_of(tokens) if host is None else host.dtype
    if not _is_int_dtype(dtype):
        raise ValueError(f"{name} must be integer ids, got dtype {np.dtype(dtype).name}")
    shape = tuple(np.shape(tokens)) if host is None else host.shape
    if len(shape) == 1:
        raise ValueError(f"{name} must be [batch, seq]; got shape {shape} (use {name}[None] for one sequence)")
    if len(shape) != 2:
        raise ValueError(f"{name} must be [batch, seq]; got shape {shape}")
    if shape[1] > cfg.n_ctx:
        raise ValueError(f"sequence length {shape[1]} exceeds the model context n_ctx={cfg.n_ctx}")
    if shape[1] == 0:
        raise ValueError(f"empty sequence: {name} has 0 positions")
    if host is not None and host.size:
        bad = host[(host < 0) | (host >= cfg.vocab_size)]
        if bad.size:
            raise ValueError(f"token ids {_some(bad)} outside the vocabulary 0..{cfg.vocab_size - 1}")
    return _as_int32(name, tokens, host)


def check_mask(attention_mask, shape, *, name: str = "attention_mask"):
    """An attention mask of ``shape`` holding only 0 (padding) and 1 (real token); bool, integer
    or float dtype. Returns int32 ones when None (jax when the mask is jax or None, else numpy)."""
    shape = tuple(shape)
    if attention_mask is None:
        return jnp.ones(shape, jnp.int32)
    host = concrete(attention_mask)
    mshape = tuple(np.shape(attention_mask)) if host is None else host.shape
    if mshape != shape:
        raise ValueError(f"{name} has shape {mshape}; expected {shape} like tokens")
    dtype = np.dtype(_dtype_of(attention_mask) if host is None else host.dtype)
    if not (dtype == np.bool_ or _is_int_dtype(dtype) or np.issubdtype(dtype, np.floating)):
        raise ValueError(f"{name} must be 0/1 (bool, integer or float), got dtype {dtype.name}")
    if host is not None and host.size:
        bad = host[(host != 0) & (host != 1)]
        if bad.size:
            raise ValueError(f"{name} must hold only 0 (padding) and 1 (real token); got values {_some(bad)}")
    if _is_jax(attention_mask):
        return attention_mask if attention_mask.dtype == jnp.int32 else attention_mask.astype(jnp.int32)
    return host.astype(np.int32, copy=False)


def check_layers(cfg: Config, layers, *, name: str = "layers", unique: bool = True,
                 allow_empty: bool = True) -> tuple[int, ...]:
    """Layer indices (an int or a list/array of ints; None = every layer) as a tuple of ints in
    0..n_layers-1. Bools, floats and traced values are refused rather than rounded."""
    if layers is None:
        return tuple(range(cfg.n_layers))
    valid = f"valid layers are 0..{cfg.n_layers - 1}"
    if isinstance(layers, jax.core.Tracer):
        raise ValueError(f"{name} must be concrete integers (they choose what is compiled), got a traced value")
    if np.ndim(layers) > 1:
        raise ValueError(f"{name} must be an int or a 1-D list of ints, got shape {np.shape(layers)}")
    items = [layers] if np.ndim(layers) == 0 else list(np.asarray(layers).ravel()) if hasattr(layers, "dtype") \
        else list(layers)
    wrong = [l for l in items if not _is_int_scalar(l)]
    if wrong:
        raise ValueError(f"{name} must be integers; got {wrong[:5]} ({type(wrong[0]).__name__}); {valid}")
    out = tuple(int(l) for l in items)
    bad = [l for l in out if not 0 <= l < cfg.n_layers]
    if bad:
        raise ValueError(f"{name} {bad} out of range: {valid}")
    if unique and len(set(out)) != len(out):
        raise ValueError(f"{name} {list(out)} contain duplicates")
    if not out and not allow_empty:
        raise ValueError(f"{name} is empty; {valid}")
    return out


def check_positions(positions, seq: int, *, name: str = "positions", shape=None) -> np.ndarray:
    """Integer positions in -seq..seq-1 (negative counts from the end), of ``shape`` when given;
    returns int32 numpy positions as given (not wrapped)."""
    host = concrete(positions)
    if host is None:
        raise ValueError(f"{name} must be concrete integers here, got {type(positions).__name__}")
    if not _is_int_dtype(host.dtype):
        raise ValueError(f"{name} must be integer positions, got dtype {host.dtype.name} ({_some(host)})")
    if shape is not None and host.shape != tuple(shape):
        raise ValueError(f"{name} has shape {host.shape}; expected {tuple(shape)}")
    if host.size == 0:
        raise ValueError(f"{name} is empty; valid positions are {-seq}..{seq - 1}")
    bad = host[(host < -seq) | (host >= seq)]
    if bad.size:
        raise ValueError(f"{name} {_some(bad)} out of range for {seq} tokens: valid positions are {-seq}..{seq - 1}")
    return host.astype(np.int32)


def check_token_ids(cfg: Config, ids, shape, *, name: str = "answers") -> np.ndarray:
    """Token ids of ``shape`` (answers, targets) inside the vocabulary, checked before the int32 cast."""
    host = concrete(ids)
    if host is None:
        raise ValueError(f"{name} must be concrete token ids here, got {type(ids).__name__}")
    if host.ndim == 0 and tuple(shape) == (1,):
        host = host[None]
    if host.shape != tuple(shape):
        raise ValueError(f"{name} must hold one token id per prompt, shape {tuple(shape)}; got {host.shape}")
    if not _is_int_dtype(host.dtype):
        raise ValueError(f"{name} must be integer token ids, got dtype {host.dtype.name}")
    _check_range(name, host, 0, cfg.vocab_size - 1, "the vocabulary ")
    return host.astype(np.int32)


def _check_id_array(name: str, ids, shape, hi: int):
    """Integer ids [B, T] in 0..hi, shaped like the tokens (checked when concrete); int32 jax array."""
    host = concrete(ids)
    got = tuple(np.shape(ids)) if host is None else host.shape
    if got != tuple(shape):
        raise ValueError(f"{name} has shape {got}; expected {tuple(shape)} like tokens")
    if host is not None:
        if not _is_int_dtype(host.dtype):
            raise ValueError(f"{name} must be integers, got dtype {host.dtype.name}")
        _check_range(name, host, 0, hi, "")
    return jnp.asarray(ids if host is None else host.astype(np.int32), jnp.int32)


def check_position_ids(cfg: Config, position_ids, shape):
    """Explicit position ids [B, T] in 0..n_ctx-1 (None stays None); int32 jax array."""
    if position_ids is None:
        return None
    return _check_id_array("position_ids", position_ids, shape, cfg.n_ctx - 1)


def check_token_types(cfg: Config, token_type_ids, shape):
    """Token-type (BERT segment) ids [B, T] in 0..type_vocab_size-1 (None stays None); int32 jax array."""
    if token_type_ids is None:
        return None
    if not cfg.type_vocab_size:
        raise ValueError("token_type_ids given but this model has no token-type embeddings (type_vocab_size=0)")
    return _check_id_array("token_type_ids", token_type_ids, shape, cfg.type_vocab_size - 1)
