"""What a sweep will cost, before running it: the analytic FLOPs of the minimal recompute and a
predicted time from a FLOP/s figure.

    from interpjax.sweep import cost
    est = cost.estimate(model.cfg, n_variants=30 * 16, batch=8, seq=64, kind="steering",
                        flops_per_s=3.5e11, overhead_s=0.5)
    est["flops"], est["seconds"]

The model is the one ``sweep`` runs (``shortcuts=True``): one base run through every layer, then
for each variant only the layers from its first edited layer on and only the positions from its
first edited position on (causal attention leaves earlier positions, and their keys and values,
unchanged), plus the metric's readout -- ``n_ids`` logits at ``readout_positions`` positions per
prompt. FLOPs count matmuls only, two per multiply-add; norms, softmax, activations and biases
are elementwise and left out. Per query position t of a layer, for B prompts:

    dense     2 (D N H + 2 D K H + N H D + m D F)      q, k, v, o projections; m = 3 gated MLP
                                                       (SwiGLU / GeGLU: gate, up, down), 2 standard
    attention 4 N H min(t + 1, w)                      scores and pattern @ v over the keys it sees
                                                       (w = the layer's window, infinite if global)

(D d_model, N heads, K kv heads -- grouped-query attention shares K < N key/value heads --, H head
dim, F MLP width). A readout of ``n_ids`` vocabulary columns costs 2 D n_ids per row.

Time model: ``seconds = flops / flops_per_s + overhead_s``. ``flops_per_s`` is what the sweep
achieves on the machine (a fraction of its matmul peak; ``benchmarks/bench_real.py scaling``
measures both) and ``overhead_s`` the fixed cost per sweep (planning, dispatch, the host side);
``fit`` recovers the two from measured (flops, seconds) pairs.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["KINDS", "estimate", "fit", "forward_flops", "layer_flops", "sweep_flops"]

KINDS = ("steering", "patching", "forward")


# ---------------------------------------------------------------------------------------------
# validation (every refusal names the value)


def _int(name: str, value, lo: int = 1, hi: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"{name} must be {rng}, got {value!r}")
    return int(value)


def _positive_real(name: str, value, allow_zero: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def _check_cfg(cfg):
    for a in ("d_model", "n_layers", "n_heads", "d_head", "d_mlp", "vocab_size", "n_ctx", "kv_heads", "mlp"):
        if not hasattr(cfg, a):
            raise ValueError(f"cfg must be an interpjax Config (it has no {a!r}), got {type(cfg).__name__}")
    return cfg


def _index_list(name: str, values, size: int, what: str) -> np.ndarray:
    a = np.atleast_1d(np.asarray(values))
    if a.size == 0:
        raise ValueError(f"{name} is empty; give at least one {what}")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got {a.tolist()[:8]} (dtype {a.dtype})")
    bad = [int(x) for x in a.reshape(-1) if not -size <= x < size]
    if bad:
        raise ValueError(f"{name} {bad[:8]} out of range: valid {what}s are 0..{size - 1} (negatives count from the end)")
    return np.where(a < 0, a + size, a).astype(np.int64).reshape(-1)


# ---------------------------------------------------------------------------------------------
# per-layer and per-forward counts


def _dense_per_row(cfg) -> int:
    D, N, K, H, F = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.d_mlp
    m = 3 if cfg.mlp == "gated" else 2
    return 2 * (D * N * H + 2 * D * K * H + N * H * D + m * D * F)


def _windows(cfg) -> tuple:
    w = tuple(getattr(cfg, "window", ()) or ())
    return w if w else (0,) * cfg.n_layers


def _row_table(cfg, seq: int) -> np.ndarray:
    """[n_layers, seq] int64: FLOPs of one prompt's query position t in layer l."""
    t = np.arange(seq, dtype=np.int64)
    rows = []
    for w in _windows(cfg):
        keys = t + 1 if not w else np.minimum(t + 1, int(w))
        rows.append(_dense_per_row(cfg) + 4 * cfg.n_heads * cfg.d_head * keys)
    return np.stack(rows)


def _suffix_table(cfg, seq: int) -> np.ndarray:
    """[n_layers + 1, seq + 1] int64: C[l, p] = FLOPs of one prompt through layers l.. at positions p..
    (C[n_layers, :] = C[:, seq] = 0)."""
    rows = _row_table(cfg, seq)
    by_pos = np.zeros((cfg.n_layers, seq + 1), np.int64)
    by_pos[:, :seq] = np.cumsum(rows[:, ::-1], axis=1)[:, ::-1]
    out = np.zeros((cfg.n_layers + 1, seq + 1), np.int64)
    out[: cfg.n_layers] = np.cumsum(by_pos[::-1], axis=0)[::-1]
    return out


def layer_flops(cfg, layer: int, query_positions, batch: int = 1) -> float:
    """One layer for ``batch`` prompts, recomputing only ``query_positions`` (each attends to the
    keys 0..t, cut to the layer's window)."""
    _check_cfg(cfg)
    layer = _int("layer", layer, 0, cfg.n_layers - 1)
    batch = _int("batch", batch)
    qp = _index_list("query_positions", query_positions, cfg.n_ctx, "position")
    w = _windows(cfg)[layer]
    keys = qp + 1 if not w else np.minimum(qp + 1, int(w))
    return float(batch * int(np.sum(_dense_per_row(cfg) + 4 * cfg.n_heads * cfg.d_head * keys)))


def _readout(cfg, rows: int, n_ids) -> float:
    cols = cfg.vocab_size if n_ids is None else n_ids
    return float(2 * rows * cfg.d_model * cols)


def forward_flops(cfg, batch: int, seq: int, *, n_ids=None, readout_positions=None) -> float:
    """A plain forward of [batch, seq]: every layer at every position, then the unembedding of
    ``n_ids`` vocabulary columns (None: the whole vocabulary) at ``readout_positions`` positions
    per prompt (None: all ``seq``)."""
    _check_cfg(cfg)
    batch, seq = _int("batch", batch), _int("seq", seq, 1, cfg.n_ctx)
    n_ids = None if n_ids is None else _int("n_ids", n_ids, 1, cfg.vocab_size)
    rp = seq if readout_positions is None else _int("readout_positions", readout_positions, 0, seq)
    return float(batch * int(_suffix_table(cfg, seq)[0, 0])) + _readout(cfg, batch * rp, n_ids)


def sweep_flops(cfg, batch: int, seq: int, start_layers, start_positions=None, *, n_ids=2, readout_positions: int = 1,
                base_runs: int = 1) -> dict:
    """FLOPs of a sweep whose variant i recomputes layers ``start_layers[i]``.. at positions
    ``start_positions[i]``.. (default 0: all), after ``base_runs`` full forwards without logits
    (the clean run; patching also caches the clean activations: 2). A start layer of n_layers
    (an edit of ``final``/``logits``) runs no layer, only the readout."""
    _check_cfg(cfg)
    batch, seq = _int("batch", batch), _int("seq", seq, 1, cfg.n_ctx)
    n = cfg.n_layers
    ls = _index_list("start_layers", start_layers, n + 1, "start layer")
    ps = np.zeros_like(ls) if start_positions is None else _index_list("start_positions", start_positions, seq,
                                                                       "position")
    if ps.shape != ls.shape:
        raise ValueError(f"start_positions has {ps.size} entries for {ls.size} start_layers; give one per variant")
    n_ids = None if n_ids is None else _int("n_ids", n_ids, 1, cfg.vocab_size)
    rp = _int("readout_positions", readout_positions, 0, seq)
    base_runs = _int("base_runs", base_runs, 0)
    table = _suffix_table(cfg, seq)
    full = batch * int(table[0, 0])
    blocks = batch * int(np.sum(table[ls, ps]))
    readout = _readout(cfg, ls.size * batch * rp, n_ids)
    total = base_runs * full + blocks + readout
    return {"flops": float(total), "base_flops": float(base_runs * full), "variant_block_flops": float(blocks),
            "readout_flops": readout, "naive_flops": float(ls.size * full) + readout,
            "work_fraction": blocks / (ls.size * full), "n_variants": int(ls.size)}


# ---------------------------------------------------------------------------------------------
# the user-facing estimate


def estimate(cfg, n_variants: int, batch: int, seq: int, *, kind: str = "steering", layers=None, positions=None,
             n_ids=2, readout_positions: int = 1, flops_per_s=None, overhead_s=0.0) -> dict:
    """FLOPs and, given ``flops_per_s``, predicted seconds of a sweep of ``n_variants`` variants
    on ``batch`` prompts of ``seq`` tokens, before running it.

    ``kind``: "steering" -- variants spread evenly over ``layers`` (default all), each editing
    every position from its layer on (``n_variants`` a multiple of ``len(layers)``, e.g. layers x
    coefficients); "patching" -- variants spread evenly over ``layers`` x ``positions`` (default
    all of both), each recomputing from its layer and position on (a multiple of
    ``len(layers) * len(positions)``), after two base runs (clean and corrupted); "forward" -- the
    naive sweep: a full forward per variant. Every kind reads ``n_ids`` logits (None: the whole
    vocabulary) at ``readout_positions`` positions per prompt per variant.

    Returns {"flops", "base_flops", "variant_block_flops", "readout_flops", "naive_flops",
    "work_fraction", "n_variants", "kind", "flops_per_s", "overhead_s", "seconds"} (``seconds``
    is None without ``flops_per_s``). Bad input is a ValueError naming the value.
    """
    _check_cfg(cfg)
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {KINDS}")
    n_variants = _int("n_variants", n_variants)
    batch, seq = _int("batch", batch), _int("seq", seq, 1, cfg.n_ctx)
    rate = None if flops_per_s is None else _positive_real("flops_per_s", flops_per_s)
    overhead = _positive_real("overhead_s", overhead_s, allow_zero=True)
    ls = np.arange(cfg.n_layers) if layers is None else _index_list("layers", layers, cfg.n_layers, "layer")
    if kind == "forward":
        start_l = np.zeros(n_variants, np.int64)
        start_p, base_runs = None, 0
    elif kind == "steering":
        if n_variants % ls.size:
            raise ValueError(f"n_variants={n_variants} is not a multiple of the {ls.size} layers a steering sweep "
                             f"spreads its variants over (layers x coefficients)")
        start_l, start_p, base_runs = np.repeat(ls, n_variants // ls.size), None, 1
    else:
        ps = np.arange(seq) if positions is None else _index_list("positions", positions, seq, "position")
        cells = ls.size * ps.size
        if n_variants % cells:
            raise ValueError(f"n_variants={n_variants} is not a multiple of the {ls.size} layers x {ps.size} positions "
                             f"= {cells} cells a patching sweep spreads its variants over")
        L, P = np.meshgrid(ls, ps, indexing="ij")
        reps = n_variants // cells
        start_l, start_p, base_runs = np.repeat(L.reshape(-1), reps), np.repeat(P.reshape(-1), reps), 2
    out = sweep_flops(cfg, batch, seq, start_l, start_p, n_ids=n_ids, readout_positions=readout_positions,
                      base_runs=base_runs)
    out.update(kind=kind, flops_per_s=rate, overhead_s=overhead,
               seconds=None if rate is None else out["flops"] / rate + overhead)
    return out


def fit(flops, seconds) -> dict:
    """Least-squares ``seconds = flops / flops_per_s + overhead_s`` over measured sweeps; returns
    {"flops_per_s", "overhead_s", "max_rel_residual"} (overhead clipped at 0: then a fit through
    the origin)."""
    f, t = np.asarray(flops, np.float64).reshape(-1), np.asarray(seconds, np.float64).reshape(-1)
    if f.shape != t.shape or f.size < 2:
        raise ValueError(f"fit needs at least two (flops, seconds) pairs of equal length, got {f.size} and {t.size}")
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(t)) and np.all(f > 0) and np.all(t > 0)):
        raise ValueError("fit needs positive finite flops and seconds")
    # weight by 1/t so small and large sweeps count alike (relative residuals)
    A = np.stack([f, np.ones_like(f)], 1) / t[:, None]
    slope, icpt = np.linalg.lstsq(A, np.ones_like(t), rcond=None)[0]
    if icpt < 0 or slope <= 0:
        slope, icpt = float(np.sum(f / t) / np.sum((f / t) ** 2)), 0.0
    pred = f * slope + icpt
    return {"flops_per_s": float(1.0 / slope), "overhead_s": float(icpt),
            "max_rel_residual": float(np.max(np.abs(pred - t) / t))}
