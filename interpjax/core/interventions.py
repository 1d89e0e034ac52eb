"""Interventions as values: frozen pytree dataclasses applied at named sites inside the forward.

The site (and the kind, where there is one) are static; layer, positions, heads, vectors and
coefficients are arrays, so ``jax.vmap`` over them is a sweep and ``jax.grad`` flows through them.
An intervention is active where ``layer_index == layer`` (``layer`` may be a scalar or a 1-D array
of layers) and, within the activation, at the chosen positions / heads (``None`` = all).

Broadcasting rule (explicit, documented, never silent): a vector/value/factor's shape must equal
a trailing part of the site's activation shape -- e.g. ``[D]``, ``[T, D]`` or ``[B, T, D]`` for a
residual site, ``[H]``, ``[N, H]`` ... for a per-head site. Anything else is a ``ValueError``.

Positions may be ``[P]`` (the same positions in every row) or ``[B, P]`` (per row); negative
positions count from the end. Heads are ``[Hs]`` indices on the site's head axis.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .sites import ATTN_SITES, HEAD_SITES, check_site, is_layer_site

Array = Any
ABLATE_KINDS = ("zero", "mean", "resample")
PROJECT_MODES = ("remove", "set")


def _static(**kw):
    return struct.field(pytree_node=False, **kw)


@struct.dataclass
class Add:
    """x += coeff * vector at the chosen positions/heads (a zero coefficient is an exact no-op)."""

    site: str = _static()
    layer: Array = None
    vector: Array = None
    coeff: Array = 1.0
    positions: Array = None
    heads: Array = None

    def edit(self, x, layer_index):
        return x + jnp.asarray(self.coeff, x.dtype) * _fit(self.vector, x).astype(x.dtype)


@struct.dataclass
class Patch:
    """Replace x with ``value`` (e.g. another run's cached activation) at positions/heads."""

    site: str = _static()
    layer: Array = None
    value: Array = None
    positions: Array = None
    heads: Array = None

    def edit(self, x, layer_index):
        return jnp.broadcast_to(_fit(self.value, x), x.shape).astype(x.dtype)


@struct.dataclass
class Ablate:
    """Zero-, mean- or resample-ablate. ``source`` is [M, ...trailing shape] for mean/resample;
    resampling draws one source row per batch row with ``key``."""

    site: str = _static()
    layer: Array = None
    kind: str = _static(default="zero")
    source: Array = None
    key: Array = None
    positions: Array = None
    heads: Array = None

    def edit(self, x, layer_index):
        if self.kind == "zero":
            return jnp.zeros_like(x)
        src = jnp.asarray(self.source)
        if self.kind == "mean":
            return jnp.broadcast_to(_fit(src.mean(0), x), x.shape).astype(x.dtype)
        idx = jax.random.randint(self.key, (x.shape[0],), 0, src.shape[0])
        rows = src[idx]  # [B, ...trailing]
        rows = rows.reshape((x.shape[0],) + (1,) * (x.ndim - rows.ndim) + rows.shape[1:])
        return jnp.broadcast_to(rows, x.shape).astype(x.dtype)


@struct.dataclass
class Scale:
    """x *= factor at positions/heads, optionally only at feature indices ``neurons`` (last axis)."""

    site: str = _static()
    layer: Array = None
    factor: Array = 1.0
    neurons: Array = None
    positions: Array = None
    heads: Array = None

    def edit(self, x, layer_index):
        f = jnp.asarray(self.factor, x.dtype)
        if f.ndim:
            f = _fit(f, x)
        if self.neurons is None:
            return x * f
        on = jnp.zeros(x.shape[-1], bool).at[jnp.atleast_1d(self.neurons)].set(True)
        return jnp.where(on, x * f, x)


@struct.dataclass
class Project:
    """Remove the component of x along ``direction`` (last axis), or set it to ``value``."""

    site: str = _static()
    layer: Array = None
    direction: Array = None
    mode: str = _static(default="remove")
    value: Array = 0.0
    positions: Array = None
    heads: Array = None

    def edit(self, x, layer_index):
        u = jnp.asarray(self.direction, jnp.float32)
        u = u / jnp.linalg.norm(u)
        xf = x.astype(jnp.float32)
        out = xf - (xf @ u)[..., None] * u
        if self.mode == "set":
            out = out + jnp.asarray(self.value, jnp.float32)[..., None] * u
        return out.astype(x.dtype)


@struct.dataclass
class AttentionKnockout:
    """Block attention edges from ``query_positions`` to ``key_positions`` (None = all) at the
    chosen layer(s) and heads, by masking the attention scores before the softmax."""

    layer: Array = None
    query_positions: Array = None
    key_positions: Array = None
    heads: Array = None
    site: str = _static(default="attn_scores")

    @property
    def positions(self):
        return self.query_positions

    def edit(self, x, layer_index):  # x: [B, N, T, S]
        S = x.shape[-1]
        if self.key_positions is None:
            return jnp.full_like(x, MASK_VALUE)
        km = _position_mask(self.key_positions, S)  # [S] or [B, S]
        km = km[:, None, None, :] if km.ndim == 2 else km
        return jnp.where(km, jnp.asarray(MASK_VALUE, x.dtype), x)


@struct.dataclass
class Custom:
    """Anything else: x -> fn(x, layer_index, params) where active. ``fn`` is static (hashable)."""

    site: str = _static()
    fn: Callable = _static()
    layer: Array = None
    params: Any = None

    positions = None
    heads = None

    def edit(self, x, layer_index):
        out = self.fn(x, layer_index, self.params)
        if out.shape != x.shape:
            raise ValueError(f"Custom fn at {self.site} returned shape {out.shape}, expected {x.shape}")
        return out.astype(x.dtype)


INTERVENTIONS = (Add, Patch, Ablate, Scale, Project, AttentionKnockout, Custom)
MASK_VALUE = float(np.finfo(np.float32).min)


def compose(*interventions) -> tuple:
    """Chain interventions: they apply in the given order (nested sequences are flattened)."""
    out = []
    for iv in interventions:
        if iv is None:
            continue
        if isinstance(iv, (tuple, list)):
            out.extend(compose(*iv))
        elif isinstance(iv, INTERVENTIONS):
            out.append(iv)
        else:
            raise TypeError(f"not an intervention: {type(iv).__name__}; valid: {[c.__name__ for c in INTERVENTIONS]}")
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# application inside the forward


def _fit(v, x):
    """Give ``v`` (shaped like a trailing part of x) leading singleton axes so it broadcasts."""
    v = jnp.asarray(v)
    return v.reshape((1,) * (x.ndim - v.ndim) + v.shape)


def _position_mask(positions, T):
    """[P] -> [T] bool, or [B, P] -> [B, T] bool; negative positions count from the end."""
    p = jnp.asarray(positions)
    p = jnp.where(p < 0, p + T, p)
    if p.ndim == 0:
        p = p[None]
    return jnp.any(jnp.arange(T) == p[..., None], axis=-2)


def _where_mask(iv, x):
    """Boolean mask (broadcastable to x) of the positions and heads an intervention touches."""
    attn = iv.site in ATTN_SITES
    pos_axis, head_axis = (2, 1) if attn else (1, 2)
    mask = jnp.ones((1,) * x.ndim, bool)
    if iv.positions is not None:
        pm = _position_mask(iv.positions, x.shape[pos_axis])
        shape = [1] * x.ndim
        shape[pos_axis] = x.shape[pos_axis]
        if pm.ndim == 2:
            shape[0] = pm.shape[0]
        mask = mask & pm.reshape(shape)
    if iv.heads is not None:
        hm = jnp.any(jnp.arange(x.shape[head_axis]) == jnp.atleast_1d(iv.heads)[:, None], axis=0)
        shape = [1] * x.ndim
        shape[head_axis] = x.shape[head_axis]
        mask = mask & hm.reshape(shape)
    return mask


def layer_active(layer, layer_index):
    """True where the traced layer index is one of ``layer`` (scalar or 1-D)."""
    if layer is None or layer_index is None:
        return jnp.asarray(True)
    return jnp.any(jnp.atleast_1d(jnp.asarray(layer)) == layer_index)


def apply_at(interventions, site: str, x, layer_index=None):
    """Apply, in order, every intervention addressed to ``site`` (at this layer) to ``x``."""
    for iv in interventions:
        if iv.site != site:
            continue
        on = layer_active(iv.layer, layer_index) & _where_mask(iv, x)
        x = jnp.where(on, iv.edit(x, layer_index), x)
    return x


# ---------------------------------------------------------------------------------------------
# validation: clear errors before any compute


def concrete(a):
    if a is None:
        return None
    try:
        return np.asarray(a)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError, TypeError):
        return None


def _shape(a):
    return tuple(np.shape(a)) if not hasattr(a, "shape") else tuple(a.shape)


def _check_suffix(name, arr, full_shape, min_axes=1):
    shp = _shape(arr)
    ok = min_axes <= len(shp) <= len(full_shape) and tuple(full_shape[len(full_shape) - len(shp):]) == shp
    if not ok:
        valid = [tuple(full_shape[i:]) for i in range(len(full_shape) - min_axes, -1, -1)]
        raise ValueError(f"{name} has shape {shp}; it must match a trailing part of the site shape: one of {valid}")


def _check_dtype(name, arr, dtype):
    if arr is None or isinstance(arr, (int, float)):
        return
    a_dtype = getattr(arr, "dtype", None)
    if a_dtype is None or not jnp.issubdtype(a_dtype, jnp.floating):
        return
    if getattr(arr, "weak_type", False):
        return
    if jnp.dtype(a_dtype) != jnp.dtype(dtype):
        raise ValueError(f"{name} has dtype {jnp.dtype(a_dtype).name} but the model computes in "
                         f"{jnp.dtype(dtype).name}; cast it with .astype(jnp.{jnp.dtype(dtype).name})")


def check_indices(name, arr, size, what):
    """Integer indices within range; positions may be negative (counted from the end)."""
    a = concrete(arr)
    if a is None or a.size == 0:
        return
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be integer indices, got dtype {a.dtype}")
    lo = -size if what == "position" else 0
    if a.min() < lo or a.max() >= size:
        raise ValueError(f"{name} {a.tolist()} out of range: valid {what}s are {lo}..{size - 1}")


def validate(interventions, cfg, batch: int, seq: int, dtype) -> None:
    """Raise ValueError for any intervention that does not fit this model and input."""
    from .sites import n_heads_at, site_shape

    for iv in interventions:
        name = type(iv).__name__
        check_site(iv.site)
        if isinstance(iv, Ablate) and iv.kind not in ABLATE_KINDS:
            raise ValueError(f"Ablate.kind={iv.kind!r}; valid kinds: {ABLATE_KINDS}")
        if isinstance(iv, Project) and iv.mode not in PROJECT_MODES:
            raise ValueError(f"Project.mode={iv.mode!r}; valid modes: {PROJECT_MODES}")
        if is_layer_site(iv.site):
            if iv.layer is None:
                raise ValueError(f"{name} at layer site {iv.site!r} needs a layer (0..{cfg.n_layers - 1})")
            check_indices(f"{name}.layer", iv.layer, cfg.n_layers, "layer")
            if concrete(iv.layer) is not None and np.ndim(iv.layer) > 1:
                raise ValueError(f"{name}.layer must be a scalar or 1-D array of layers")
        elif iv.layer is not None:
            raise ValueError(f"site {iv.site!r} is outside the layer stack; pass layer=None")
        shape = site_shape(cfg, iv.site, batch, seq)
        T = seq
        if iv.positions is not None:
            pshape = _shape(iv.positions)
            if len(pshape) > 2 or (len(pshape) == 2 and pshape[0] != batch):
                raise ValueError(f"{name}.positions has shape {pshape}; valid: [P] or [batch={batch}, P]")
            check_indices(f"{name}.positions", iv.positions, T, "position")
        if iv.heads is not None:
            if iv.site not in HEAD_SITES:
                raise ValueError(f"{name}.heads given for site {iv.site!r}, which has no head axis; "
                                 f"sites with heads: {HEAD_SITES}")
            check_indices(f"{name}.heads", iv.heads, n_heads_at(cfg, iv.site), "head")
        if isinstance(iv, Add):
            _check_suffix(f"Add.vector at {iv.site}", iv.vector, shape)
            _check_dtype("Add.vector", iv.vector, dtype)
            if np.ndim(iv.coeff) != 0:
                raise ValueError(f"Add.coeff must be a scalar, got shape {_shape(iv.coeff)} (vmap over it for a sweep)")
        elif isinstance(iv, Patch):
            _check_suffix(f"Patch.value at {iv.site}", iv.value, shape)
            _check_dtype("Patch.value", iv.value, dtype)
        elif isinstance(iv, Ablate) and iv.kind != "zero":
            if iv.source is None:
                raise ValueError(f"Ablate(kind={iv.kind!r}) needs source activations [M, ...]")
            src_shape = _shape(iv.source)
            if len(src_shape) < 2:
                raise ValueError(f"Ablate.source must be [M, ...trailing site shape], got {src_shape}")
            _check_suffix(f"Ablate.source[0] at {iv.site}", np.empty(src_shape[1:], np.int8), shape)
            _check_dtype("Ablate.source", iv.source, dtype)
            if iv.kind == "resample" and iv.key is None:
                raise ValueError("Ablate(kind='resample') needs a PRNG key")
        elif isinstance(iv, Scale):
            if np.ndim(iv.factor):
                _check_suffix(f"Scale.factor at {iv.site}", iv.factor, shape)
            if iv.neurons is not None:
                check_indices("Scale.neurons", iv.neurons, shape[-1], "neuron")
        elif isinstance(iv, Project):
            if _shape(iv.direction) != (shape[-1],):
                raise ValueError(f"Project.direction has shape {_shape(iv.direction)}; expected ({shape[-1]},)")
        elif isinstance(iv, AttentionKnockout):
            if iv.key_positions is not None:
                check_indices("AttentionKnockout.key_positions", iv.key_positions, T, "position")
