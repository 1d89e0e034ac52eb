"""The compiled programs of a sweep: the base run, and one chunk of variants (vmapped over the
variants, running only the layers and positions they change, reading a lazy ``Readout``).

``chunk_jit`` is cached on ``Static`` (config, mode, shapes, grid structure, the metric's
fingerprint, mesh): one trace per distinct chunk shape; ``TRACES`` counts them for the tests.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..core import interventions as ivmod
from ..core import model as M
from ..core.readout import Readout

__all__ = ["Static", "TRACES", "base_jit", "base_program", "chunk_jit", "chunk_program", "fill", "on_rows"]


@dataclasses.dataclass(frozen=True)
class Static:
    """Everything the compiled chunk program depends on besides array shapes (its jit cache key)."""

    cfg: Any
    mode: str  # "segment" / "packed" (minimal recompute) or "plain" (full forward per variant)
    L: int | None  # first layer to run; None: a traced argument (one program for every start layer)
    s: int  # first position to recompute
    B: int
    T: int
    treedef: Any
    slots: tuple  # per template leaf: ("ref", axes) | ("arr", None) | ("const", value)
    metric: Callable  # a store.MetricKey (equal for equal fingerprints) or a plain function
    mesh: Any
    has_pos: bool
    micro: int = 0  # variants (packed rows) per micro-batch step on each device; 0: all at once
    k: int = 1  # "packed": variants (segments) per packed row
    P: int = 0  # "packed": positions per packed row
    S0: int = 0  # "packed": base-run key positions the packed rows may attend


def fill(st: Static, ref_vals, shared):
    """One variant's interventions from its gathered grid fields and the shared ones."""
    it_r, it_s = iter(ref_vals), iter(shared)
    leaves = [next(it_r) if k == "ref" else next(it_s) if k == "arr" else v for k, v in st.slots]
    return tuple(jax.tree.unflatten(st.treedef, leaves))


def on_rows(iv, s, T: int, off=0, rpos=None):
    """The same intervention acting on a buffer of rows holding this variant's positions s..T-1
    (its ``window``, from the intervention protocol).

    Without ``rpos`` the buffer is exactly that suffix (``s`` static). With ``rpos`` (the absolute
    position of every row of a packed buffer) the suffix sits at rows off..off+T-s-1 and ``s``,
    ``off`` may be traced; rows of other variants are left to the caller to mask out. Edits of
    ``final``/``logits`` stay on the full sequence: the readout applies them."""
    packed = rpos is not None
    if (not packed and s == 0) or iv.site in ("final", "logits"):
        return iv
    if packed:
        win = ivmod.Window(total=T, start=s, n_rows=rpos.shape[0], length=T - s, off=off, rows=rpos)
    else:
        win = ivmod.Window(total=T, start=s, n_rows=T - s)
    return iv.window(win)


def _base_readout(st, params, base_x, base_ivs, tokens):
    """The ``out.base`` view (built lazily) of the base run's final residual ``base_x``."""
    cfg, T = st.cfg, st.T
    return lambda: Readout(cfg, params, T, lambda pos: M.final_norm(cfg, params, jnp.take(base_x, pos, axis=1)),
                           lambda: M.final_norm(cfg, params, base_x), base_ivs, tokens=tokens)


def _segment_readouts(st, params, base, ivs, x_new, base_ivs, tokens):
    cfg, s, T = st.cfg, st.s, st.T
    base_x = base["resid_in"][-1]

    def rows(pos):
        if isinstance(pos, np.ndarray):
            parts = [base_x[:, p] if p < s else x_new[:, p - s] for p in pos.tolist()]
            r = jnp.stack(parts, axis=1)
        else:
            r = jnp.take(jnp.concatenate([base_x[:, :s], x_new], axis=1), pos, axis=1)
        return M.final_norm(cfg, params, r)

    def full():
        return M.final_norm(cfg, params, jnp.concatenate([base_x[:, :s], x_new], axis=1))

    return Readout(cfg, params, T, rows, full, ivs, _base_readout(st, params, base_x, base_ivs, tokens),
                   tokens=tokens)


def _packed_readouts(st, params, base, ivs, x_rows, s, off, base_ivs, tokens):
    """The readout of one segment (positions s..T-1 at rows off..) of a packed buffer ``x_rows``."""
    cfg, T, P = st.cfg, st.T, st.P
    base_x = base["resid_in"][-1]

    def at(pos):
        pos = jnp.asarray(pos)
        new = jnp.take(x_rows, jnp.clip(off + pos - s, 0, P - 1), axis=1)
        return jnp.where((pos >= s)[None, :, None], new, jnp.take(base_x, pos, axis=1))

    return Readout(cfg, params, T, lambda pos: M.final_norm(cfg, params, at(pos)),
                   lambda: M.final_norm(cfg, params, at(jnp.arange(T))), ivs,
                   _base_readout(st, params, base_x, base_ivs, tokens), tokens=tokens)


def _packed_one(st, params, base, base_ivs, shared, tokens, mask, posids, first):
    """The per-packed-row function of a "packed" chunk: ``one((vals, layout))`` runs the k variants
    whose suffixes share one row buffer of P positions and returns their metrics stacked [k, ...].

    ``layout`` = (start [k], off [k], seg [P], pos [P]): each segment's first position and first
    row, and every row's segment (k = padding) and absolute position. A row attends to the base
    run's keys before its segment's start and to the rows of its own segment up to itself."""
    cfg, T, B, k, P, S0 = st.cfg, st.T, st.B, st.k, st.P, st.S0
    x_first = jax.lax.dynamic_index_in_dim(base["resid_in"], first, 0, keepdims=False)
    past = (base["k"][:, :, :S0], base["v"][:, :, :S0]) if S0 else None

    def one(arg):
        vals, (start, off, seg, rpos) = arg
        per = [[v[j] for v in vals] for j in range(k)]
        rows_ivs = [tuple(on_rows(iv, start[j], T, off[j], rpos) for iv in base_ivs + fill(st, per[j], shared))
                    for j in range(k)]
        sites = {iv.site for iv in rows_ivs[0]}

        def apply(site, x, layer_index):
            if site not in sites:
                return x
            for j in range(k):
                on = (seg == j).reshape((1, P) + (1,) * (x.ndim - 2))
                x = jnp.where(on, ivmod.apply_at(rows_ivs[j], site, x, layer_index), x)
            return x

        kpos = jnp.concatenate([jnp.arange(S0, dtype=rpos.dtype), rpos])
        kval = jnp.concatenate([mask[:, :S0], jnp.take(mask, rpos, axis=1) * (seg < k).astype(mask.dtype)], axis=1)
        ctx = M.make_ctx(cfg, jnp.broadcast_to(rpos, (B, P)), None, jnp.broadcast_to(kpos, (B, S0 + P)), kval,
                         rope_pos_BT=jnp.take(posids, rpos, axis=1))
        row_start = jnp.take(start, jnp.minimum(seg, k - 1))
        same = jnp.concatenate([jnp.arange(S0)[None, :] < row_start[:, None], seg[:, None] == seg[None, :]], axis=1)
        ctx["allowed_BTS"] = ctx["allowed_BTS"] & same[None]
        x = jnp.take(x_first, rpos, axis=1)
        x = M.run_layers(cfg, params, x, ctx, (), (), (), past_kv=past, first=first, apply=apply)[0]

        def read(vals_j, s_j, off_j):
            ivs = base_ivs + fill(st, vals_j, shared)
            return st.metric(_packed_readouts(st, params, base, ivs, x, s_j, off_j, base_ivs, tokens))

        return jax.vmap(read)(vals, start, off)

    return one


def _map_variants(f, xs, micro: int, ndev: int, spec):
    """``vmap(f)`` over the leading (variant) axis of ``xs``, or, with ``micro``, a sequential loop
    of vmaps over ``micro`` variants per device at a time (smaller steps keep a CPU's working set
    in cache; each device's contiguous block of variants is split the same way)."""
    C = jax.tree.leaves(xs)[0].shape[0]
    c = C // ndev
    if not micro or micro >= c:
        return jax.vmap(f)(xs)
    steps = c // micro

    def to_steps(a):  # [C, ...] -> [steps, ndev * micro, ...], device blocks kept on axis 1
        a = a.reshape((ndev, steps, micro) + a.shape[1:])
        return jnp.swapaxes(a, 0, 1).reshape((steps, ndev * micro) + a.shape[3:])

    xs = jax.tree.map(to_steps, xs)
    if spec is not None:
        from jax.sharding import NamedSharding, PartitionSpec as P

        step_spec = NamedSharding(spec.mesh, P(None, "variants"))
        xs = jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, step_spec), xs)
    out = jax.lax.map(jax.vmap(f), xs)

    def from_steps(o):
        o = o.reshape((steps, ndev, micro) + o.shape[2:])
        return jnp.swapaxes(o, 0, 1).reshape((C,) + o.shape[3:])

    return jax.tree.map(from_steps, out)


def chunk_program(st: Static, params, base, base_ivs, shared, datas, idx, tokens, mask, pos, first, layout=None):
    """Metric values [C, ...] of one chunk of variants (flat axis indices ``idx``); every variant
    starts at layer ``st.L``, or at the traced layer ``first`` when ``st.L`` is None. A "packed"
    chunk holds C packed rows of k variants each (``idx`` [C, k], ``layout`` as in ``_packed_one``)
    and returns [C, k, ...]."""
    cfg, L, s, T, B = st.cfg, st.L, st.s, st.T, st.B
    n = cfg.n_layers
    spec = None
    if st.mesh is not None:
        from jax.sharding import NamedSharding, PartitionSpec as P
        spec = NamedSharding(st.mesh, P("variants"))
    ref_axes = [v for k, v in st.slots if k == "ref"]
    gathered = [d[tuple(idx[a] for a in axes)] for d, axes in zip(datas, ref_axes)]
    if spec is not None:
        gathered = [jax.lax.with_sharding_constraint(g, spec) for g in gathered]
    posids = M.positions_from_mask(mask) if pos is None else pos
    slot_BT = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    base_ivs = tuple(base_ivs)

    if st.mode == "packed":
        one = _packed_one(st, params, base, base_ivs, shared, tokens, mask, posids, first)
        gathered = (gathered, tuple(layout))
    elif st.mode == "plain":
        _, brec = M.run(cfg, params, tokens, mask, pos, base_ivs, ("final",), ())
        base_final = brec["final"]

        def one(vals):
            ivs = base_ivs + fill(st, vals, shared)
            _, rec = M.run(cfg, params, tokens, mask, pos, ivs, ("final",), ())
            final = rec["final"]
            no_final = tuple(iv for iv in ivs if iv.site != "final")
            base_ro = lambda: Readout(cfg, params, T, lambda p: jnp.take(base_final, p, axis=1), lambda: base_final,
                                      tuple(iv for iv in base_ivs if iv.site != "final"), tokens=tokens)
            ro = Readout(cfg, params, T, lambda p: jnp.take(final, p, axis=1), lambda: final, no_final, base_ro,
                         tokens=tokens)
            return st.metric(ro)
    else:
        dynamic = L is None
        start = 0 if dynamic else L
        ctx = None
        if start < n:
            ctx = M.make_ctx(cfg, slot_BT[:, s:], mask[:, s:], slot_BT, mask, rope_pos_BT=posids[:, s:])
        past = (base["k"][start:, :, :s], base["v"][start:, :, :s]) if (s > 0 and start < n) else None
        x_in = jax.lax.dynamic_index_in_dim(base["resid_in"], first, 0, keepdims=False) if dynamic else None

        def one(vals):
            ivs = base_ivs + fill(st, vals, shared)
            seg = tuple(on_rows(iv, s, T) for iv in ivs)
            if dynamic:  # no embed-site edits in the grid (see plan.any_start_layer): enter at layer `first`
                x = x_in[:, s:]
            elif L == 0:
                x = ivmod.apply_at(seg, "embed", base["embed"][:, s:])
            else:
                x = base["resid_in"][L][:, s:]
            if start < n:
                x = M.run_layers(cfg, params, x, ctx, seg, (), (), start=start, past_kv=past,
                                  first=first if dynamic else None)[0]
            return st.metric(_segment_readouts(st, params, base, ivs, x, base_ivs, tokens))

    out = _map_variants(one, gathered, st.micro, st.mesh.shape["variants"] if st.mesh is not None else 1, spec)
    if spec is not None:
        out = jax.tree.map(lambda o: jax.lax.with_sharding_constraint(o, spec), out)
    return out


TRACES = {"chunk": 0, "base": 0}


def _counted(st, *args):
    TRACES["chunk"] += 1  # runs once per trace (= per compilation of a new chunk shape)
    return chunk_program(st, *args)


chunk_jit = jax.jit(_counted, static_argnums=(0,))


def base_program(cfg, params, tokens, mask, pos, base_ivs):
    """The base run: raw embedding, residual entering every layer, every layer's keys/values."""
    TRACES["base"] += 1
    B, T = tokens.shape
    posids = M.positions_from_mask(mask) if pos is None else pos
    slot_BT = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    ctx = M.make_ctx(cfg, slot_BT, mask, slot_BT, mask, rope_pos_BT=posids)
    raw = M.embed(cfg, params, tokens, posids)
    x0 = ivmod.apply_at(tuple(base_ivs), "embed", raw)
    x, rec, kv = M.run_layers(cfg, params, x0, ctx, tuple(base_ivs), ("resid_post",), tuple(range(cfg.n_layers)),
                               return_kv=True)
    # resid_in[l]: the residual entering layer l (resid_in[n_layers]: leaving the last layer)
    return {"embed": raw, "resid_in": jnp.concatenate([x0[None], rec["resid_post"]]), "k": kv[0], "v": kv[1]}


base_jit = jax.jit(base_program, static_argnums=(0,))
