"""Interventions as values: frozen pytree dataclasses applied at named sites inside the forward.

The site (and the kind, where there is one) are static; layer, positions, heads, vectors and
coefficients are arrays, so ``jax.vmap`` over them is a sweep and ``jax.grad`` flows through them.
An intervention is active where ``layer_index == layer`` (``layer`` may be a scalar or a 1-D array
of layers) and, within the activation, at the chosen positions / heads (``None`` = all).

Broadcasting rule (explicit, documented, never silent): a vector/value/factor's shape must equal
a trailing part of the site's activation shape -- e.g. ``[D]``, ``[T, D]`` or ``[B, T, D]`` for a
residual site, ``[H]``, ``[N, H]`` ... for a per-head site. Anything else is a ``ValueError``.
Values must be real and finite (a complex or non-finite vector is refused, never cast or spread).

Positions may be ``[P]`` (the same positions in every row) or ``[B, P]`` (per row); negative
positions count from the end. Heads are ``[Hs]`` indices on the site's head axis.

The protocol: what an intervention class defines
------------------------------------------------
Every intervention is a ``flax.struct.dataclass`` subclass of ``Intervention``. The forward, the
generator (``interpjax.generate``) and the sweep engine (``interpjax.sweep``) only ever ask it
through this protocol, so a new kind is one class in one file:

* attributes ``site`` (a static field), ``layer`` (None at ``embed``/``final``/``logits``),
  ``positions`` and ``heads`` (fields or properties; None = all), which ``apply_at`` uses to mask
  where the edit lands (positions index the site's position axis: query positions at
  attention-score sites);
* ``edit(self, x, layer_index) -> x'``: the edited activation, same shape (computed everywhere;
  ``apply_at`` keeps it only at the active layer, positions and heads);
* ``check(self, cfg, batch, seq, dtype)``: raise ``ValueError`` for values that do not fit this
  model and input (shapes, dtypes, kinds, zero directions, ...). ``validate`` runs the common
  checks first (site, layer, positions, heads, the ranges of ``INDEX_FIELDS``, real and finite
  ``VALUE_FIELDS``), then this. Helpers: ``check_suffix``, ``check_dtype``, ``check_indices``,
  ``check_real_finite``;
* class attributes (override what differs from the defaults):
  - ``INDEX_FIELDS``: ``((field, kind), ...)`` integer index fields and what they index
    (``"layer"``, ``"position"``, ``"head"``, ``"neuron"``); range-checked for every variant of a
    sweep grid, not only the first;
  - ``VALUE_FIELDS``: numeric fields that must be real and finite;
  - ``POSITION_FIELDS``: fields holding positions on the site's position axis, which
    ``window`` re-indexes;
  - ``SEQ_FIELDS``: ``((field, lead, drop), ...)`` array fields whose trailing shape is the
    site's (after ``lead`` leading axes, without its last ``drop`` feature axes), so that they may
    carry the sequence axis, which ``window`` cuts to the window's columns;
  - ``shiftable`` (or ``can_shift()``): its edit of a window of positions equals the full edit
    restricted to them once ``window`` has moved it there. The sweep engine starts such variants at
    their first edited position; ``False`` (e.g. ``Custom``, whose function sees the activation)
    always runs from position 0;
  - ``packable`` (or ``can_pack()``): it may act on the sweep's packed rows (several variants'
    windows laid out in one buffer). Attention-score and ``embed`` sites never can;
* ``window(self, win) -> Intervention``: the same intervention acting on a buffer described by a
  ``Window`` (generation's prefill and decode steps, the sweep's position suffixes and packed
  rows). The default moves ``POSITION_FIELDS`` and cuts ``SEQ_FIELDS``; override it for anything
  else.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .sites import ATTN_SITES, HEAD_SITES, check_site, is_layer_site, n_heads_at, site_shape

Array = Any
ABLATE_KINDS = ("zero", "mean", "resample")
PROJECT_MODES = ("remove", "set")
MASK_VALUE = float(np.finfo(np.float32).min)


def _static(**kw):
    return struct.field(pytree_node=False, **kw)


# ---------------------------------------------------------------------------------------------
# windows: where a buffer of rows sits in the full sequence


@dataclasses.dataclass(frozen=True)
class Window:
    """A buffer of ``n_rows`` rows seen from a ``total``-position sequence: rows ``off .. off +
    length - 1`` hold positions ``start .. start + length - 1`` (``length`` defaults to ``n_rows``).
    ``rows`` [n_rows], when given, is the absolute position of every row (the sweep's packed rows,
    where other variants' rows sit around this one's); without it the buffer is the contiguous run
    ``start .. start + n_rows - 1``. ``start``, ``off`` and ``length`` may be traced."""

    total: int
    start: Any
    n_rows: int
    length: Any = None
    off: Any = 0
    rows: Any = None

    def positions(self, p):
        """Absolute positions (negative = from the end) -> rows of this buffer; positions outside
        the window map to ``n_rows``, which matches no row."""
        p = jnp.asarray(p).astype(jnp.int32)
        r = jnp.where(p < 0, p + self.total, p) - self.start
        length = self.n_rows if self.length is None else self.length
        return jnp.where((r >= 0) & (r < length), r + self.off, self.n_rows)

    def take(self, a, axis: int):
        """The buffer's rows of ``a`` along its sequence axis ``axis``."""
        a = jnp.asarray(a)
        if self.rows is not None:
            return jnp.take(a, self.rows, axis=axis)
        if isinstance(self.start, (int, np.integer)):
            return jax.lax.slice_in_dim(a, int(self.start), int(self.start) + self.n_rows, axis=axis)
        return jax.lax.dynamic_slice_in_dim(a, self.start, self.n_rows, axis)


def n_feature_axes(site: str) -> int:
    """Per-position trailing axes of a site: 2 at q/k/v/z ([N, H]), else 1 (the key axis S at
    attention-score sites, whose position axis is the query axis)."""
    return 2 if site in ("q", "k", "v", "z") else 1


def seq_axis(site: str, a, lead: int = 0, drop: int = 0):
    """Axis of ``a`` (trailing shape like ``site``'s after ``lead`` axes, ``drop`` feature axes
    removed) that indexes positions, or None when ``a`` only spans features."""
    tail = n_feature_axes(site) - drop + 1
    nd = np.ndim(a)
    return nd - tail if a is not None and nd - lead >= tail else None


# ---------------------------------------------------------------------------------------------
# the protocol


class Intervention:
    """Base of every intervention (see the module docstring for what a subclass defines)."""

    positions = None  # defaults for classes that act at every position / head
    heads = None
    INDEX_FIELDS: tuple = (("layer", "layer"), ("positions", "position"), ("heads", "head"))
    VALUE_FIELDS: tuple = ()
    POSITION_FIELDS: tuple = ("positions",)
    SEQ_FIELDS: tuple = ()
    shiftable: bool = True
    packable: bool = True

    def edit(self, x, layer_index):
        raise NotImplementedError(f"{type(self).__name__} must define edit(x, layer_index)")

    def check(self, cfg, batch: int, seq: int, dtype) -> None:
        """Class-specific validation (after the common checks in ``validate``)."""

    def can_shift(self) -> bool:
        return bool(type(self).shiftable)

    def can_pack(self) -> bool:
        return self.can_shift() and bool(type(self).packable) and self.site not in ATTN_SITES + ("embed",)

    def window(self, win: Window) -> "Intervention":
        changes = {}
        for name in self.POSITION_FIELDS:
            p = getattr(self, name)
            if p is not None:
                changes[name] = win.positions(p)
        for name, lead, drop in self.SEQ_FIELDS:
            a = getattr(self, name)
            axis = seq_axis(self.site, a, lead, drop)
            if axis is not None:
                changes[name] = win.take(a, axis)
        return self.replace(**changes) if changes else self


@struct.dataclass
class Add(Intervention):
    """x += coeff * vector at the chosen positions/heads (a zero coefficient is an exact no-op)."""

    site: str = _static()
    layer: Array = None
    vector: Array = None
    coeff: Array = 1.0
    positions: Array = None
    heads: Array = None

    VALUE_FIELDS = ("vector", "coeff")
    SEQ_FIELDS = (("vector", 0, 0),)

    def edit(self, x, layer_index):
        return x + jnp.asarray(self.coeff, x.dtype) * _fit(self.vector, x).astype(x.dtype)

    def check(self, cfg, batch, seq, dtype):
        shape = site_shape(cfg, self.site, batch, seq)
        check_suffix(f"Add.vector at {self.site}", self.vector, shape)
        check_dtype("Add.vector", self.vector, dtype)
        if np.ndim(self.coeff) != 0:
            raise ValueError(f"Add.coeff must be a scalar, got shape {_shape(self.coeff)} (vmap over it for a sweep)")


@struct.dataclass
class Patch(Intervention):
    """Replace x with ``value`` (e.g. another run's cached activation) at positions/heads."""

    site: str = _static()
    layer: Array = None
    value: Array = None
    positions: Array = None
    heads: Array = None

    VALUE_FIELDS = ("value",)
    SEQ_FIELDS = (("value", 0, 0),)

    def edit(self, x, layer_index):
        return jnp.broadcast_to(_fit(self.value, x), x.shape).astype(x.dtype)

    def check(self, cfg, batch, seq, dtype):
        check_suffix(f"Patch.value at {self.site}", self.value, site_shape(cfg, self.site, batch, seq))
        check_dtype("Patch.value", self.value, dtype)


@struct.dataclass
class Ablate(Intervention):
    """Zero-, mean- or resample-ablate. ``source`` is [M, ...trailing shape] for mean/resample;
    resampling draws one source row per batch row with ``key``."""

    site: str = _static()
    layer: Array = None
    kind: str = _static(default="zero")
    source: Array = None
    key: Array = None
    positions: Array = None
    heads: Array = None

    VALUE_FIELDS = ("source",)
    SEQ_FIELDS = (("source", 1, 0),)

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

    def check(self, cfg, batch, seq, dtype):
        if self.kind not in ABLATE_KINDS:
            raise ValueError(f"Ablate.kind={self.kind!r}; valid kinds: {ABLATE_KINDS}")
        if self.kind == "zero":
            return
        if self.source is None:
            raise ValueError(f"Ablate(kind={self.kind!r}) needs source activations [M, ...]")
        src_shape = _shape(self.source)
        if len(src_shape) < 2:
            raise ValueError(f"Ablate.source must be [M, ...trailing site shape], got {src_shape}")
        if src_shape[0] == 0:
            raise ValueError(f"Ablate(kind={self.kind!r}).source has shape {src_shape}: M = 0 source activations; "
                             f"it needs at least one")
        check_suffix(f"Ablate.source[0] at {self.site}", np.empty(src_shape[1:], np.int8),
                     site_shape(cfg, self.site, batch, seq))
        check_dtype("Ablate.source", self.source, dtype)
        if self.kind == "resample" and self.key is None:
            raise ValueError("Ablate(kind='resample') needs a PRNG key")


@struct.dataclass
class Scale(Intervention):
    """x *= factor at positions/heads, optionally only at feature indices ``neurons`` (last axis)."""

    site: str = _static()
    layer: Array = None
    factor: Array = 1.0
    neurons: Array = None
    positions: Array = None
    heads: Array = None

    INDEX_FIELDS = Intervention.INDEX_FIELDS + (("neurons", "neuron"),)
    VALUE_FIELDS = ("factor",)
    SEQ_FIELDS = (("factor", 0, 0),)

    def edit(self, x, layer_index):
        f = jnp.asarray(self.factor, x.dtype)
        if f.ndim:
            f = _fit(f, x)
        if self.neurons is None:
            return x * f
        on = jnp.zeros(x.shape[-1], bool).at[jnp.atleast_1d(self.neurons)].set(True)
        return jnp.where(on, x * f, x)

    def check(self, cfg, batch, seq, dtype):
        if np.ndim(self.factor):
            check_suffix(f"Scale.factor at {self.site}", self.factor, site_shape(cfg, self.site, batch, seq))


@struct.dataclass
class Project(Intervention):
    """Remove the component of x along ``direction`` (last axis), or set it to ``value`` (a scalar
    or an array shaped like a trailing part of the site shape without its last axis)."""

    site: str = _static()
    layer: Array = None
    direction: Array = None
    mode: str = _static(default="remove")
    value: Array = 0.0
    positions: Array = None
    heads: Array = None

    VALUE_FIELDS = ("direction", "value")
    SEQ_FIELDS = (("value", 0, 1),)

    def edit(self, x, layer_index):
        u = jnp.asarray(self.direction, jnp.float32)
        u = u / jnp.linalg.norm(u)
        xf = x.astype(jnp.float32)
        out = xf - (xf @ u)[..., None] * u
        if self.mode == "set":
            out = out + jnp.asarray(self.value, jnp.float32)[..., None] * u
        return out.astype(x.dtype)

    def check(self, cfg, batch, seq, dtype):
        if self.mode not in PROJECT_MODES:
            raise ValueError(f"Project.mode={self.mode!r}; valid modes: {PROJECT_MODES}")
        shape = site_shape(cfg, self.site, batch, seq)
        if _shape(self.direction) != (shape[-1],):
            raise ValueError(f"Project.direction has shape {_shape(self.direction)}; expected ({shape[-1]},)")
        check_nonzero("Project.direction", self.direction)
        if np.ndim(self.value):
            check_suffix(f"Project.value at {self.site}", self.value, shape[:-1])


@struct.dataclass
class AttentionKnockout(Intervention):
    """Block attention edges from ``query_positions`` to ``key_positions`` (None = all) at the
    chosen layer(s) and heads, by masking the attention scores before the softmax."""

    layer: Array = None
    query_positions: Array = None
    key_positions: Array = None
    heads: Array = None
    site: str = _static(default="attn_scores")

    INDEX_FIELDS = (("layer", "layer"), ("query_positions", "position"), ("key_positions", "position"),
                    ("heads", "head"))
    POSITION_FIELDS = ("query_positions",)
    packable = False

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

    def check(self, cfg, batch, seq, dtype):
        if self.site != "attn_scores":
            raise ValueError(f"AttentionKnockout acts on 'attn_scores', got site={self.site!r}")


@struct.dataclass
class Custom(Intervention):
    """Anything else: x -> fn(x, layer_index, params) where active. ``fn`` is static (hashable).
    It sees the activation it is given (during generation: one segment at a time), so sweeps never
    start it late or pack it."""

    site: str = _static()
    fn: Callable = _static()
    layer: Array = None
    params: Any = None

    INDEX_FIELDS = (("layer", "layer"),)
    POSITION_FIELDS = ()
    shiftable = False
    packable = False

    def edit(self, x, layer_index):
        out = self.fn(x, layer_index, self.params)
        if out.shape != x.shape:
            raise ValueError(f"Custom fn at {self.site} returned shape {out.shape}, expected {x.shape}")
        return out.astype(x.dtype)

    def check(self, cfg, batch, seq, dtype):
        if not callable(self.fn):
            raise ValueError(f"Custom.fn must be callable, got {type(self.fn).__name__}")

    def window(self, win):
        return self


INTERVENTIONS = (Add, Patch, Ablate, Scale, Project, AttentionKnockout, Custom)  # the built-in kinds


def compose(*interventions) -> tuple:
    """Chain interventions: they apply in the given order (nested sequences are flattened)."""
    out = []
    for iv in interventions:
        if iv is None:
            continue
        if isinstance(iv, (tuple, list)):
            out.extend(compose(*iv))
        elif isinstance(iv, Intervention):
            out.append(iv)
        else:
            raise TypeError(f"not an intervention: {type(iv).__name__}; valid: {[c.__name__ for c in INTERVENTIONS]} "
                            f"or any subclass of interpjax.core.interventions.Intervention")
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


def check_suffix(name, arr, full_shape, min_axes=1):
    """``arr``'s shape must be a trailing part of ``full_shape`` with at least ``min_axes`` axes."""
    shp = _shape(arr)
    ok = min_axes <= len(shp) <= len(full_shape) and tuple(full_shape[len(full_shape) - len(shp):]) == shp
    if not ok:
        valid = [tuple(full_shape[i:]) for i in range(len(full_shape) - min_axes, -1, -1)]
        raise ValueError(f"{name} has shape {shp}; it must match a trailing part of the site shape: one of {valid}")


def check_dtype(name, arr, dtype):
    """A non-weak floating array must be in the model's compute dtype (no silent casts)."""
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


def _is_tracer(a):
    return isinstance(a, jax.core.Tracer)


def check_real_finite(name, arr):
    """Refuse complex values (they would lose their imaginary part) and nan/inf entries (they turn
    every output into nan, even times a zero coefficient). Traced values are not checked."""
    if arr is None or _is_tracer(arr) or isinstance(arr, (bool, int)):
        return
    if isinstance(arr, complex) or np.iscomplexobj(arr):
        raise ValueError(f"{name} is complex (dtype {np.asarray(arr).dtype if isinstance(arr, complex) else arr.dtype}); "
                         f"interventions take real values: pass its .real (or abs) explicitly")
    dt = np.dtype(type(arr)) if isinstance(arr, float) else getattr(arr, "dtype", None)
    if dt is None:
        arr = np.asarray(arr)
        dt = arr.dtype
    if not jnp.issubdtype(dt, jnp.floating):
        return
    if isinstance(arr, jax.Array):
        if not arr.is_fully_addressable:  # spread over processes: each checks its own part upstream
            return
        with jax.ensure_compile_time_eval():  # concrete even when validated inside an outer jit trace
            ok = bool(jnp.isfinite(arr).all())  # reduced on device: no host copy of the array
    else:
        ok = bool(np.isfinite(np.asarray(arr)).all())
    if not ok:
        a = np.asarray(arr, np.float32)
        bad = np.argwhere(~np.isfinite(a))
        first = tuple(int(i) for i in bad[0]) if a.ndim else ()
        raise ValueError(f"{name} has {len(bad)} non-finite entries (nan/inf; first {a[first]} at index {first}); "
                         f"interventions need finite values")


def check_nonzero(name, direction):
    """A direction that is normalised must not be zero (0 / 0 would make every output nan)."""
    d = None if _is_tracer(direction) else concrete(direction)
    if d is not None and d.size and not np.any(d):
        raise ValueError(f"{name} is the zero vector (shape {d.shape}); a direction must be nonzero")


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


def index_size(cfg, site: str, seq: int, what: str) -> int:
    """How many valid values an index field of kind ``what`` has at ``site``."""
    if what == "layer":
        return cfg.n_layers
    if what == "position":
        return seq
    if what == "head":
        return n_heads_at(cfg, site)
    if what == "neuron":
        return site_shape(cfg, site, 1, seq)[-1]
    raise ValueError(f"unknown index kind {what!r}; valid: layer, position, head, neuron")


def validate(interventions, cfg, batch: int, seq: int, dtype) -> None:
    """Raise ValueError for any intervention that does not fit this model and input: the common
    checks of the protocol, then each class's own ``check``."""
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise TypeError(f"not an intervention: {type(iv).__name__}")
        name = type(iv).__name__
        check_site(iv.site)
        if is_layer_site(iv.site):
            if iv.layer is None:
                raise ValueError(f"{name} at layer site {iv.site!r} needs a layer (0..{cfg.n_layers - 1})")
            if concrete(iv.layer) is not None and np.ndim(iv.layer) > 1:
                raise ValueError(f"{name}.layer must be a scalar or 1-D array of layers")
        elif iv.layer is not None:
            raise ValueError(f"site {iv.site!r} is outside the layer stack; pass layer=None")
        if iv.positions is not None:
            pshape = _shape(iv.positions)
            if len(pshape) > 2 or (len(pshape) == 2 and pshape[0] != batch):
                raise ValueError(f"{name}.positions has shape {pshape}; valid: [P] or [batch={batch}, P]")
        if iv.heads is not None and iv.site not in HEAD_SITES:
            raise ValueError(f"{name}.heads given for site {iv.site!r}, which has no head axis; "
                             f"sites with heads: {HEAD_SITES}")
        for field, what in iv.INDEX_FIELDS:
            value = getattr(iv, field)
            if value is not None:
                check_indices(f"{name}.{field}", value, index_size(cfg, iv.site, seq, what), what)
        for field in iv.VALUE_FIELDS:
            check_real_finite(f"{name}.{field}", getattr(iv, field))
        iv.check(cfg, batch, seq, dtype)
