"""Which part of the clean computation each variant can reuse (the minimal-recompute plan).

A variant whose interventions first act at layer L reuses the base run's residual entering L; one
whose edits all sit at positions >= p (under causal attention) reuses the base run's keys and
values of positions < p and recomputes only positions p..T-1. Both are read off the grid's
concrete layer/position fields, per variant, before any compute; whether an intervention may
start late or share packed rows is its own answer (``can_shift``/``can_pack``, the intervention
protocol).
"""

from __future__ import annotations

import bisect

import numpy as np

from ..core.sites import LAYER_SITES
from .grid import Grid, is_ref


def _field_min(grid: Grid, leaf, reduce_from: int, normalise=None):
    """Per-variant minimum (flattened grid order) of an index field; ``normalise`` maps negatives."""
    if is_ref(leaf):
        d = np.asarray(leaf.data)
        k = len(leaf.axes)
        if normalise is not None:
            d = normalise(d)
        m = d.reshape(d.shape[:k] + (-1,)).min(-1) if d.ndim > k else d
        shape = [1] * len(grid.shape)
        for a in leaf.axes:
            shape[a] = grid.axes[a].size
        return np.broadcast_to(m.reshape(shape), grid.shape).reshape(-1)
    d = np.asarray(leaf)
    if normalise is not None:
        d = normalise(d)
    return np.full(grid.size, d.min() if d.size else 0)


def start_points(cfg, grid: Grid, base_ivs: tuple, T: int, positions_ok: bool):
    """(start_layer[n], start_pos[n]) per flat variant: the first layer and position any of its
    interventions touch (n_layers / T when none do)."""
    n = grid.size
    L = np.full(n, cfg.n_layers, np.int64)
    P = np.full(n, T, np.int64)
    positions_ok = positions_ok and getattr(cfg, "causal", True) and all(iv.can_shift() for iv in base_ivs)
    norm_pos = lambda d: np.where(d < 0, d + T, d)
    for iv in grid.template:
        if not iv.can_shift():  # the intervention protocol: may it start late?
            positions_ok = False
        if iv.site == "embed":
            L = np.minimum(L, 0)
        elif iv.site in LAYER_SITES:
            L = np.minimum(L, _field_min(grid, iv.layer, 0))
        pos = iv.positions
        if pos is None:
            P[:] = 0
        else:
            P = np.minimum(P, _field_min(grid, pos, 0, norm_pos))
    if not positions_ok:
        P[:] = 0
    return L, P


def bucket_lengths(lengths, weights, max_buckets: int):
    """Round each new-token count up to one of at most ``max_buckets`` values chosen to minimise
    sum(weight * rounded length) (dynamic programming over the distinct lengths)."""
    vals, inv = np.unique(lengths, return_inverse=True)
    if len(vals) <= max_buckets:
        return lengths.copy()
    w = np.bincount(inv, weights=weights, minlength=len(vals))
    if len(vals) > 256:  # quantile buckets (DP would be slow); always keep the maximum
        qs = np.unique(np.quantile(vals, np.linspace(0, 1, max_buckets + 1)[1:], method="higher"))
        return qs[np.searchsorted(qs, lengths)]
    M = len(vals)
    cw = np.concatenate([[0.0], np.cumsum(w)])
    INF = float("inf")
    # best[k][j]: min cost covering vals[:j] with k buckets, the last one ending at vals[j-1]
    best = np.full((max_buckets + 1, M + 1), INF)
    arg = np.zeros((max_buckets + 1, M + 1), np.int64)
    best[0, 0] = 0.0
    for k in range(1, max_buckets + 1):
        for j in range(1, M + 1):
            i = np.arange(j)
            c = best[k - 1, i] + (cw[j] - cw[i]) * vals[j - 1]
            b = int(np.argmin(c))
            best[k, j], arg[k, j] = c[b], b
    k = int(np.argmin(best[:, M]))
    edges, j = [], M
    while j > 0:
        edges.append(vals[j - 1])
        j = arg[k, j]
        k -= 1
    edges = np.array(sorted(edges))
    return edges[np.searchsorted(edges, lengths)]


def pack_segments(lengths, capacity: int, max_segments: int):
    """Best-fit-decreasing packing of suffix lengths into rows of ``capacity`` positions with at
    most ``max_segments`` per row (each length goes to the open row with the least room that
    holds it); returns a list of rows, each a list of indices into ``lengths``."""
    lengths = np.asarray(lengths)
    if lengths.size and (lengths.max() > capacity or lengths.min() < 1):
        raise ValueError(f"suffix lengths must lie in 1..{capacity}, got {lengths.min()}..{lengths.max()}")
    rows, by_room, rooms = [], {}, []  # by_room: room -> open rows with that room; rooms: sorted keys
    for i in np.argsort(-lengths, kind="stable").tolist():
        n = int(lengths[i])
        j = bisect.bisect_left(rooms, n)
        if j < len(rooms):
            room = rooms[j]
            r = by_room[room].pop()
            if not by_room[room]:
                del by_room[room]
                rooms.pop(j)
            rows[r].append(i)
        else:
            r, room = len(rows), capacity
            rows.append([i])
        left = room - n
        if left > 0 and len(rows[r]) < max_segments:
            if left not in by_room:
                by_room[left] = []
                bisect.insort(rooms, left)
            by_room[left].append(r)
    return rows
