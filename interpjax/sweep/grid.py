"""Grids of interventions: named axes (outer products and zips) and the interventions they fill.

A grid is a pytree of intervention values whose numeric fields carry leading grid axes. It is
stored compactly: each varying field is a ``Ref`` holding its data with leading axes only for the
grid axes it varies along (a layer x coeff grid stores 12 + 16 numbers, not 192 copies of the
vector); everything else is shared by every variant.

    space = product(zip(layer=np.arange(12), value=cache_LBTD), position=np.arange(32))
    grid = space.build(lambda a: Patch("resid_pre", layer=a.layer, value=a.value, positions=a.position))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import numpy as np

from ..core import interventions as ivmod

__all__ = ["Axis", "Grid", "Ref", "Space", "axis", "from_stacked", "product", "zip"]

_zip = zip  # the builtin, before this module's ``zip`` shadows it


@dataclass(frozen=True, eq=False)
class Ref:
    """A varying field: ``data`` has one leading axis per grid axis in ``axes`` (sorted)."""

    data: Any
    axes: tuple[int, ...]

    @property
    def name(self):
        return f"field varying along grid axes {self.axes}"


@dataclass(frozen=True, eq=False)
class Axis:
    """One grid axis: a name, its tick labels and the named fields it carries (leading dim = size)."""

    name: str
    size: int
    ticks: tuple
    fields: dict = field(default_factory=dict)


def _ticks_of(values, n):
    a = np.asarray(values) if not hasattr(values, "shape") else values
    if getattr(a, "ndim", 0) == 1 and np.issubdtype(np.asarray(a).dtype, np.number):
        return tuple(np.asarray(a).tolist())
    return tuple(range(n))


def _as_data(name, values):
    if isinstance(values, range):
        values = np.arange(values.start, values.stop, values.step)
    if isinstance(values, (list, tuple)):
        values = np.asarray(values)
    if not hasattr(values, "shape") or len(values.shape) == 0:
        raise ValueError(f"axis field {name!r} must be an array with a leading grid axis, got {type(values).__name__}")
    return values


def axis(name: str, values, ticks=None) -> "Space":
    """A one-field grid axis: ``values`` [n, ...] gives variant i the field ``values[i]``."""
    return zip(**{name: values}, name=name, ticks=ticks)


def zip(*, name: str | None = None, ticks=None, **fields) -> "Space":
    """One axis whose fields advance together (like Python's zip); all must have the same length."""
    if not fields:
        raise ValueError("zip needs at least one field, e.g. zip(layer=np.arange(12), value=cache_LBTD)")
    data = {k: _as_data(k, v) for k, v in fields.items()}
    sizes = {k: int(v.shape[0]) for k, v in data.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"zipped fields have different lengths {sizes}; zip needs equal lengths "
                         f"(use product for an outer product)")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError(f"axis {name or next(iter(fields))!r} is empty")
    name = name or next(iter(fields))
    ticks = tuple(ticks) if ticks is not None else _ticks_of(next(iter(data.values())), n)
    if len(ticks) != n:
        raise ValueError(f"axis {name!r} has {n} entries but {len(ticks)} tick labels")
    return Space((Axis(name, n, ticks, data),))


def product(*spaces, **named) -> "Space":
    """Outer product of axes: positional ``Space``s (from ``axis``/``zip``/``product``) then
    ``name=values`` one-field axes, in order. The result's shape is their sizes."""
    if not spaces and not named:
        raise ValueError("product() got no axes: give at least one, e.g. product(layer=np.arange(n)) "
                         "(a grid without axes has nothing to sweep)")
    axes = []
    for s in spaces:
        if not isinstance(s, Space):
            raise ValueError(f"product takes Spaces (from axis/zip/product) or name=values, got {type(s).__name__}")
        axes.extend(s.axes)
    for k, v in named.items():
        axes.extend(axis(k, v).axes)
    names = [a.name for a in axes]
    fields_all = [f for a in axes for f in a.fields]
    for what, items in (("axis names", names), ("field names", fields_all)):
        dup = sorted({x for x in items if items.count(x) > 1})
        if dup:
            raise ValueError(f"product has duplicate {what} {dup}")
    return Space(tuple(axes))


class _Fields:
    """What ``Space.build``'s function receives: ``a.<field>`` is that field's per-variant value."""

    def __init__(self, axes):
        self._refs = {}
        for i, ax in enumerate(axes):
            for k, v in ax.fields.items():
                self._refs[k] = Ref(v, (i,))

    def __getattr__(self, k):
        if k.startswith("_"):
            raise AttributeError(k)
        if k not in self._refs:
            raise AttributeError(f"no grid field {k!r}; fields: {sorted(self._refs)}")
        return self._refs[k]


@dataclass(frozen=True)
class Space:
    """Named grid axes, not yet turned into interventions; ``build`` does that."""

    axes: tuple

    @property
    def shape(self):
        return tuple(a.size for a in self.axes)

    def build(self, fn: Callable) -> "Grid":
        """``fn(a)`` returns an intervention (or a sequence); put ``a.<field>`` where a field varies.
        Fields are passed through as they are (no arithmetic on them: precompute the values)."""
        ivs = ivmod.compose(fn(_Fields(self.axes)))
        return Grid(ivs, self.axes)


def is_ref(x):
    return isinstance(x, Ref)


@dataclass(frozen=True, eq=False)
class Grid:
    """Interventions (a tuple) whose ``Ref`` fields vary over ``axes``; shape = axis sizes."""

    template: tuple
    axes: tuple

    def __post_init__(self):
        if not self.axes:
            raise ValueError("a grid needs at least one axis, got axes=() (e.g. from_stacked(..., names=()))")
        for path, leaf in jax.tree_util.tree_flatten_with_path(self.template, is_leaf=is_ref)[0]:
            if is_ref(leaf):
                want = tuple(self.axes[i].size for i in leaf.axes)
                got = tuple(leaf.data.shape[: len(leaf.axes)])
                if got != want:
                    raise ValueError(f"grid field {jax.tree_util.keystr(path)} has leading shape {got}; "
                                     f"expected {want} for axes {[self.axes[i].name for i in leaf.axes]}")

    @property
    def shape(self) -> tuple:
        return tuple(a.size for a in self.axes)

    @property
    def names(self) -> tuple:
        return tuple(a.name for a in self.axes)

    @property
    def ticks(self) -> tuple:
        return tuple(a.ticks for a in self.axes)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def refs(self) -> list:
        return [l for l in jax.tree.leaves(self.template, is_leaf=is_ref) if is_ref(l)]

    def unravel(self, flat_idx):
        """Flat variant indices -> one index array per axis (row-major)."""
        return np.unravel_index(np.asarray(flat_idx), self.shape)

    def variant(self, i) -> tuple:
        """The concrete interventions of variant ``i`` (a flat index or a tuple of axis indices)."""
        idx = tuple(int(j) for j in (np.unravel_index(int(i), self.shape) if np.ndim(i) == 0 else i))
        return jax.tree.map(lambda l: l.data[tuple(idx[a] for a in l.axes)] if is_ref(l) else l,
                            self.template, is_leaf=is_ref)

    def stacked(self) -> tuple:
        """The interventions with every varying field broadcast to leading grid axes ``shape``
        (fields that do not vary keep their shape). Materialises memory: for inspection."""
        nd = len(self.shape)

        def expand(l):
            if not is_ref(l):
                return l
            d = np.asarray(l.data)
            shape = [1] * nd
            for a in l.axes:
                shape[a] = self.axes[a].size
            d = d.reshape(tuple(shape) + d.shape[len(l.axes):])
            return np.broadcast_to(d, self.shape + d.shape[nd:])

        return jax.tree.map(expand, self.template, is_leaf=is_ref)


def from_stacked(interventions, names, ticks=None) -> Grid:
    """A grid from interventions whose array fields all carry ``len(names)`` leading grid axes,
    each of size 1 (shared along that axis) or the axis size. Python scalars are shared; any other
    field without the leading axes, or whose axes do not broadcast, is a ValueError."""
    ivs = ivmod.compose(interventions)
    names = tuple(names)
    nd = len(names)
    leaves = jax.tree_util.tree_flatten_with_path(ivs)[0]
    sizes = [set() for _ in range(nd)]
    for path, leaf in leaves:
        if isinstance(leaf, (int, float, bool)) or leaf is None:
            continue
        shp = tuple(np.shape(leaf))
        if len(shp) < nd:
            raise ValueError(f"field {jax.tree_util.keystr(path)} has shape {shp}: it lacks the {nd} leading grid "
                             f"axes {names} (give shared fields size-1 leading axes)")
        for i in range(nd):
            sizes[i].add(shp[i])
    shape = []
    for i, s in enumerate(sizes):
        big = s - {1}
        if len(big) > 1:
            bad = [(jax.tree_util.keystr(p), tuple(np.shape(l))[:nd]) for p, l in leaves
                   if not isinstance(l, (int, float, bool)) and l is not None]
            raise ValueError(f"grid fields do not broadcast along axis {names[i]!r}: sizes {sorted(big)}; "
                             f"leading shapes: {bad}")
        shape.append(big.pop() if big else 1)
    if ticks is None:
        ticks = [tuple(range(n)) for n in shape]
    axes = tuple(Axis(n, size, tuple(t)) for n, size, t in _zip(names, shape, ticks))
    for a in axes:
        if len(a.ticks) != a.size:
            raise ValueError(f"axis {a.name!r} has {a.size} entries but {len(a.ticks)} tick labels")

    def to_ref(leaf):
        if isinstance(leaf, (int, float, bool)) or leaf is None:
            return leaf
        shp = tuple(np.shape(leaf))
        vary = tuple(i for i in range(nd) if shp[i] != 1)
        sel = tuple(slice(None) if i in vary else 0 for i in range(nd))
        data = leaf[sel]
        return Ref(data, vary) if vary else data

    return Grid(jax.tree.map(to_ref, ivs), axes)
