"""Planning a sweep, all before compute: validate the grid against the model, find each
variant's start layer and position, group them (packed rows or position buckets), and cut the
groups into chunks by the memory model (and micro-batches on CPU)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..core import interventions as ivmod
from ..core import model as M
from . import analysis
from .devices import default_mesh
from .grid import Grid, is_ref

__all__ = ["MAX_CHUNK_PER_DEVICE", "MICRO_BYTES", "PACK_MAX_SEGMENTS", "Plan", "any_start_layer", "check_micro_rows", "chunked",
           "default_memory_budget", "default_micro_rows", "make_plan", "plan_sweep", "row_layout", "unpack_model",
           "validate_grid"]

MAX_CHUNK_PER_DEVICE = 4096
PACK_MAX_SEGMENTS = 8  # variants per packed row at most (each adds a masked edit per edited site)
MICRO_BYTES = 16 << 20  # CPU: micro-batch so the widest activation (rows x d_mlp) stays about this size


def unpack_model(model):
    """(cfg, params) of a ``Model`` or of a (cfg, params) pair."""
    if isinstance(model, tuple) and len(model) == 2:
        return model
    if hasattr(model, "cfg") and hasattr(model, "params"):
        return model.cfg, model.params
    raise ValueError(f"model must be an interpjax Model or a (cfg, params) pair, got {type(model).__name__}")


def default_memory_budget(device=None) -> int:
    """Bytes a sweep may use: 80% of the accelerator's free memory, or half of the host's
    available memory on CPU."""
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        stats = None
    if stats and "bytes_limit" in stats:
        return int(0.8 * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(0.5 * avail)


# ---------------------------------------------------------------------------------------------
# validation


def validate_grid(cfg, params, grid: Grid, base_ivs, B, T):
    """Every error we can raise before compute: shapes/dtypes of one variant, index ranges and
    finite values of all (each intervention's protocol says which of its fields are which)."""
    if not isinstance(grid, Grid):
        raise ValueError(f"grid must be an interpjax.sweep Grid (from product/zip/axis(...).build or from_stacked), "
                         f"got {type(grid).__name__}")
    if not grid.axes:
        raise ValueError("grid has no axes (shape ()); give it at least one, e.g. sw.product(layer=np.arange(n))")
    if grid.size == 0:
        raise ValueError(f"grid of shape {grid.shape} has no variants")
    if not grid.template:
        raise ValueError("grid holds no interventions")
    ivmod.validate(tuple(base_ivs) + tuple(grid.variant(0)), cfg, B, T, M.compute_dtype(params))
    for iv in grid.template:
        name = type(iv).__name__

        def where(leaf):
            return f"(grid axes {[grid.axes[a].name for a in leaf.axes]})"

        for fld, what in iv.INDEX_FIELDS:
            leaf = getattr(iv, fld, None)
            if is_ref(leaf):
                ivmod.check_indices(f"{name}.{fld} {where(leaf)}", leaf.data, ivmod.index_size(cfg, iv.site, T, what),
                                    what)
        for fld in iv.VALUE_FIELDS:
            leaf = getattr(iv, fld, None)
            if is_ref(leaf):
                ivmod.check_real_finite(f"{name}.{fld} {where(leaf)}", leaf.data)


def any_start_layer(grid) -> bool:
    """Whether chunks of every start layer can share one program (layer passed as an argument):
    always, unless the grid edits the embedding (those variants need the raw embedding at layer 0)."""
    return all(iv.site != "embed" for iv in grid.template)


# ---------------------------------------------------------------------------------------------
# the plan


@dataclasses.dataclass
class Plan:
    """How a sweep will run, decided before any compute.

    ``groups``: (start layer L, start position s, variant indices) -- variants that reuse the base
    run below layer L and before position s. ``s == -1`` marks a packed group: its variants start
    at different positions, and their suffixes are laid out together in rows of ``pack_dims[g]``
    = (P positions, S0 base keys) by ``packs[g]`` = (variant [R, k], start [R, k]; start T = empty).
    ``chunks``: (group, variant indices, n valid) cut to the memory budget; a packed chunk's
    indices are its segments' variants, and ``layouts[i]`` = (variant [C, k], start [C, k]) its
    rows. ``micro[(L, s)]``: variants (packed rows) per device per micro-batch step, 0 = all at
    once. ``work_fraction``: block work done relative to every layer at every position for every
    variant (padding included)."""

    groups: list
    chunk_sizes: dict  # (L, s) -> chunk size (variants; packed rows when s == -1)
    chunks: list
    per_variant_bytes: dict  # (L, s) -> estimated bytes per variant (per packed row when s == -1)
    budget: int
    mode: str
    n_devices: int
    T: int = 0
    packs: dict = dataclasses.field(default_factory=dict)
    pack_dims: dict = dataclasses.field(default_factory=dict)
    micro_target: dict = dataclasses.field(default_factory=dict)  # (L, s) -> wanted micro-batch
    micro: dict = dataclasses.field(default_factory=dict)
    layouts: dict = dataclasses.field(default_factory=dict)

    @property
    def n_chunks(self):
        return len(self.chunks)

    def work(self, n_layers, T, padded=True):
        tot = 0
        for i, (g, idx, nv) in enumerate(self.chunks):
            L, s, _ = self.groups[g]
            if self.mode == "plain":
                L, s = 0, 0
            if i in self.layouts:
                var, start = self.layouts[i]
                rows = var.shape[0] * self.pack_dims[g][0] if padded else int((T - start).sum())
                tot += (n_layers - L) * rows
            else:
                tot += (n_layers - L) * (T - s) * (len(idx) if padded else nv)
        return tot

    def work_fraction(self, n_layers, T, padded=True):
        n = sum(len(g[2]) for g in self.groups)
        return self.work(n_layers, T, padded) / (n * n_layers * T)


# ---------------------------------------------------------------------------------------------
# the memory model and micro-batching


def variant_bytes(cfg, B, n_new, S, layers_run, itemsize, leaf_bytes, readout_floats):
    """Estimated peak bytes one variant adds inside a chunk (activations of one layer at a time,
    attention scores in float32, gathered intervention fields, the readout), x2 for XLA temps."""
    D, N, K, H, F = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.d_mlp
    act = B * n_new * (8 * D + 3 * N * H + 2 * K * H + 3 * F) * itemsize + 3 * B * N * n_new * S * 4
    kv = 2 * B * S * K * H * itemsize
    per_layer = act + kv if layers_run else 0
    return int(2 * per_layer + 3 * leaf_bytes + 4 * readout_floats + 2 * B * S * D * itemsize) + 1024


def default_micro_rows(cfg, itemsize: int, device=None) -> int:
    """Rows (prompts x positions) per micro-batch step: on CPU, enough that the widest activation
    stays about ``MICRO_BYTES`` (in cache: measured 1.3x faster than 4096-row steps on GPT-2
    small); 0 (no micro-batching) on accelerators, which want the biggest batch."""
    device = device or jax.local_devices()[0]
    if device.platform != "cpu":
        return 0
    return max(1, MICRO_BYTES // (max(cfg.d_mlp, 3 * cfg.d_model) * itemsize))


def _micro_for(c: int, target: int) -> int:
    """Micro-batch for ``c`` variants per device: the largest divisor of c up to ``target`` when it
    is at least half of it, else 0 (the whole chunk at once)."""
    if not target or c <= target:
        return 0
    for d in range(target, 0, -1):
        if c % d == 0:
            return d if 2 * d >= target else 0
    return 0


def _round_for_micro(c: int, target: int, fit: int) -> int:
    """Grow ``c`` variants per device (by under half a micro-batch of padding) to a multiple of a
    micro-batch between target/2 and target; unchanged if that would exceed ``fit``."""
    if not target or c <= target:
        return c
    best = min(range(max(1, -(-target // 2)), target + 1), key=lambda d: (-(-c // d) * d, -d))
    c2 = -(-c // best) * best
    return c2 if c2 <= fit else c


def _best_packing(lens, B: int, rows_target: int):
    """(row length P, rows) packing suffix ``lens`` with the least padded work: P from the longest
    suffix up to 8 more (lengths 1..n pair up exactly in rows of n + 1), counting the padding
    that rounds the rows to a micro-batch multiple."""
    best = None
    top = int(lens.max())
    for cap in range(top, top + 9):
        rows = analysis.pack_segments(lens, cap, PACK_MAX_SEGMENTS)
        target = max(1, rows_target // (B * cap)) if rows_target else 0
        cost = _round_for_micro(len(rows), target, len(rows) + target) * cap
        if best is None or cost < best[0]:
            best = (cost, cap, rows)
    return best[1], best[2]


def check_micro_rows(micro_rows):
    if micro_rows is not None and (isinstance(micro_rows, bool) or not isinstance(micro_rows, (int, np.integer))
                                   or micro_rows < 0):
        raise ValueError(f"micro_rows={micro_rows!r} must be None (automatic), 0 (off) or a positive number of rows")


# ---------------------------------------------------------------------------------------------
# planning


def plan_sweep(model, tokens, grid: Grid, metric: Callable | None = None, *, attention_mask=None, interventions=None,
               shortcuts: bool = True, packing: bool = True, position_buckets: int = 4, chunk_size: int | None = None,
               memory_budget: int | None = None, micro_rows: int | None = None, mesh=None) -> Plan:
    """The plan ``sweep`` would run (validates everything; computes nothing on the model)."""
    cfg, params = unpack_model(model)
    tokens_BT, mask, _, base_ivs = M.prepare(cfg, params, tokens, attention_mask, interventions)
    B, T = tokens_BT.shape
    validate_grid(cfg, params, grid, base_ivs, B, T)
    check_micro_rows(micro_rows)
    return make_plan(cfg, params, B, T, grid, base_ivs, shortcuts=shortcuts, packing=packing,
                     position_buckets=position_buckets, chunk_size=chunk_size, memory_budget=memory_budget,
                     micro_rows=micro_rows, mesh=mesh or default_mesh())


def make_plan(cfg, params, B: int, T: int, grid: Grid, base_ivs: tuple, *, shortcuts: bool, packing: bool,
              position_buckets: int, chunk_size, memory_budget, micro_rows, mesh, readout_floats: int = 0) -> Plan:
    """The plan of already validated inputs (``plan_sweep`` and ``sweep`` validate once, then call this)."""
    ndev = mesh.shape["variants"]
    n = cfg.n_layers
    mode = "segment" if shortcuts else "plain"
    groups, packs, pack_dims = [], {}, {}
    itemsize = jnp.dtype(M.compute_dtype(params)).itemsize
    rows_target = default_micro_rows(cfg, itemsize) if micro_rows is None else int(micro_rows)
    if shortcuts:
        Ls, Ps = analysis.start_points(cfg, grid, base_ivs, T, positions_ok=True)
        Pb = T - analysis.bucket_lengths(T - Ps, (n - Ls + 1).astype(float), max(1, position_buckets))
        can_pack = packing and all(iv.can_pack() for iv in tuple(base_ivs) + tuple(grid.template))
        for L in np.unique(Ls).tolist():
            sel = np.nonzero(Ls == L)[0]
            lens = T - Ps[sel]
            if can_pack and L < n and lens.min() >= 1 and len(np.unique(lens)) > 1:
                cap, rows = _best_packing(lens, B, rows_target)
                if len(rows) * cap < int((T - Pb[sel]).sum()):  # fewer rows than the position buckets
                    k = max(len(r) for r in rows)
                    var = np.full((len(rows), k), sel[rows[0][0]], np.int64)
                    start = np.full((len(rows), k), T, np.int64)
                    for r, row in enumerate(rows):
                        var[r, :len(row)], start[r, :len(row)] = sel[row], Ps[sel[row]]
                    packs[len(groups)] = (var, start)
                    pack_dims[len(groups)] = (cap, int(Ps[sel].max()))
                    groups.append((L, -1, var[start < T]))
                    continue
            for s in np.unique(Pb[sel]).tolist():
                groups.append((L, s, sel[Pb[sel] == s]))
    else:
        groups = [(0, 0, np.arange(grid.size))]
    leaf_bytes = sum(int(np.prod(np.shape(r.data)[len(r.axes):])) * np.dtype(r.data.dtype).itemsize
                     for r in grid.refs())
    budget = int(memory_budget) if memory_budget is not None else default_memory_budget()
    per_variant, sizes, targets = {}, {}, {}
    for g, (L, s, idx) in enumerate(groups):
        layers_run = n - L
        if g in packs:
            (P, S0), k = pack_dims[g], packs[g][0].shape[1]
            n_items, n_new = packs[g][0].shape[0], P
            pv = (variant_bytes(cfg, B, P, S0 + P, layers_run, itemsize, k * leaf_bytes, k * readout_floats)
                  + k * B * T * cfg.d_model * itemsize)
        else:
            n_items, n_new = len(idx), T - s
            if mode == "plain":
                n_new, layers_run = T, n
            pv = variant_bytes(cfg, B, n_new, T, layers_run, itemsize, leaf_bytes, readout_floats)
        per_variant[(L, s)] = pv
        fit = budget // pv
        if fit < 1:
            raise ValueError(f"memory budget {budget:,} bytes is too small for even one variant "
                             f"(needs about {pv:,} bytes per variant for {layers_run} layers x {n_new} positions "
                             f"x batch {B}); raise memory_budget")
        target = max(1, rows_target // (B * n_new)) if rows_target else 0
        targets[(L, s)] = target
        want = -(-n_items // ndev) * ndev
        if chunk_size is not None:
            if chunk_size < 1 or chunk_size % ndev:
                raise ValueError(f"chunk_size={chunk_size} must be a positive multiple of the {ndev} devices "
                                 f"on the mesh's 'variants' axis")
            if memory_budget is not None and chunk_size // ndev > fit:
                raise ValueError(f"chunk_size={chunk_size} needs about {pv * chunk_size // ndev:,} bytes per device, "
                                 f"over memory_budget={budget:,}")
            size = min(chunk_size, want)
        else:
            c = min(int(fit), MAX_CHUNK_PER_DEVICE, want // ndev)
            size = _round_for_micro(c, target, min(int(fit), MAX_CHUNK_PER_DEVICE)) * ndev
        sizes[(L, s)] = size
    plan = Plan(groups, sizes, [], per_variant, budget, mode, ndev, T, packs, pack_dims, targets)
    return chunked(plan, sizes)


def chunked(plan: Plan, sizes: dict) -> Plan:
    """``plan`` cut into chunks of ``sizes[(L, s)]`` (the last chunk of a group padded by repeating
    a variant, or with empty packed rows)."""
    chunks, layouts, micro = [], {}, {}
    for g, (L, s, idx) in enumerate(plan.groups):
        C = sizes[(L, s)]
        micro[(L, s)] = _micro_for(C // plan.n_devices, plan.micro_target.get((L, s), 0))
        if g in plan.packs:
            var, start = plan.packs[g]
            for a in range(0, len(var), C):
                v, st = var[a:a + C], start[a:a + C]
                if len(v) < C:
                    v = np.concatenate([v, np.full((C - len(v), v.shape[1]), v[0, 0])])
                    st = np.concatenate([st, np.full((C - len(st), st.shape[1]), plan.T)])
                layouts[len(chunks)] = (v, st)
                chunks.append((g, v[st < plan.T], int((st < plan.T).sum())))
            continue
        for a in range(0, len(idx), C):
            part = idx[a:a + C]
            padded = np.concatenate([part, np.full(C - len(part), part[-1])]) if len(part) < C else part
            chunks.append((g, padded, len(part)))
    return dataclasses.replace(plan, chunk_sizes=dict(sizes), chunks=chunks, layouts=layouts, micro=micro)


def row_layout(start, T: int, P: int):
    """(start, off, seg, pos) of packed rows from segment starts [C, k] (T = empty segment):
    segments laid out back to back; seg [C, P] is each row's segment (k for padding), pos its
    absolute position."""
    C, k = start.shape
    lens = T - start
    off = np.concatenate([np.zeros((C, 1), np.int64), np.cumsum(lens, axis=1)[:, :-1]], axis=1)
    r = np.arange(P)[None]
    seg = np.full((C, P), k, np.int64)
    pos = np.zeros((C, P), np.int64)
    for j in range(k):
        inside = (r >= off[:, j:j + 1]) & (r < off[:, j:j + 1] + lens[:, j:j + 1])
        seg = np.where(inside, j, seg)
        pos = np.where(inside, start[:, j:j + 1] + r - off[:, j:j + 1], pos)
    return tuple(np.asarray(a, np.int32) for a in (start, off, seg, pos))
