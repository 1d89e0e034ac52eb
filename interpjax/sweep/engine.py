"""``sweep``: evaluate a metric for every variant of a grid, compiled once per chunk shape.

The engine is split by concern: ``plan`` (validation, the memory model, packing, micro-batching;
all before compute), ``program`` (the compiled base run and chunk), ``store`` (fingerprints and
the resumable folder of finished chunks) and ``devices`` (the mesh). This module ties them
together: validate once, plan, run the base program, then dispatch the chunks -- the next chunk is
dispatched before the previous one's results are fetched, stored and reported, so the host work
overlaps the device's.

Plan (all before compute): validate the grid against the model; find, per variant, the first
layer and position its interventions touch; group variants by (start layer, start position
bucket); chunk each group to the memory budget. Run: one base run (the tokens with the shared
interventions) records the residual entering every layer and every layer's keys/values; each chunk
then vmaps its variants over only the layers and positions they change, attending to the base
run's cached keys/values of the earlier positions; the metric reads a lazy ``Readout`` that
unembeds only the rows and columns it asks for. Chunks are sharded over a device mesh and, with
``checkpoint_dir``, saved atomically with orbax so a killed sweep resumes without recomputing.
"""

from __future__ import annotations

import json
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..core import model as M
from ..core.readout import Readout
from . import program
from .devices import default_mesh, gather, param_shardings, put
from .grid import Grid, is_ref
from .plan import (Plan, any_start_layer, check_micro_rows, chunked, default_memory_budget, make_plan, plan_sweep,
                   row_layout, unpack_model, validate_grid)
from .store import MetricKey, Store, digest, grid_digest

__all__ = ["Plan", "default_memory_budget", "param_shardings", "plan_sweep", "sweep", "unpack_model"]


def _metric_check(cfg, params, tokens, mask, pos, grid, base_ivs, metric, metric_shape):
    """Trace the metric on variant 0 (no compute) and check what it returns."""
    holder = {}

    def wrapped(out):
        holder["ro"] = out
        res = metric(out)
        bad = [l for l in jax.tree.leaves(res) if not hasattr(l, "shape") and not isinstance(l, (int, float))]
        if bad or not jax.tree.leaves(res):
            raise ValueError(f"the metric must return an array (or a pytree of arrays), got {res!r}")
        return res

    ivs = tuple(base_ivs) + tuple(grid.variant(0))

    def one(params):
        _, rec = M.run(cfg, params, tokens, mask, pos, ivs, ("final",), ())
        f = rec["final"]
        ro = Readout(cfg, params, tokens.shape[1], lambda p: jnp.take(f, p, axis=1), lambda: f,
                     tuple(iv for iv in ivs if iv.site != "final"), lambda: ro, tokens=tokens)
        return wrapped(ro)

    try:
        out = jax.eval_shape(one, params)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - report metric bugs before any compute
        raise ValueError(f"the metric failed on the first variant: {type(e).__name__}: {e}") from e
    leaves = jax.tree.leaves(out)
    if not leaves or any(not hasattr(l, "shape") for l in leaves):
        raise ValueError(f"the metric must return an array (or a pytree of arrays), got {out}")
    if metric_shape is not None:
        shapes = [tuple(l.shape) for l in leaves]
        if len(leaves) != 1 or shapes[0] != tuple(metric_shape):
            raise ValueError(f"the metric returned shape(s) {shapes}; expected one array of shape {tuple(metric_shape)} "
                             f"per variant (pass metric_shape=None to allow any fixed shape)")
    return out, holder["ro"].requested


def sweep(model, tokens, grid: Grid, metric: Callable, *, attention_mask=None, interventions=None,
          metric_shape=(), shortcuts: bool = True, packing: bool = True, position_buckets: int = 4,
          chunk_size: int | None = None, memory_budget: int | None = None, micro_rows: int | None = None,
          mesh=None, checkpoint_dir=None, progress: bool = True,
          on_chunk: Callable | None = None, return_plan: bool = False):
    """``metric(out)`` for every variant of ``grid`` on ``tokens``; returns numpy values shaped
    ``grid.shape + metric_shape`` (a pytree of them if the metric returns one).

    ``metric`` receives a ``Readout`` (``out.logits(positions, token_ids)``, ``out.log_probs``,
    ``out.final``, ``out.base``) and runs inside the compiled program; compiled programs are cached
    on its fingerprint (code, closure, defaults, the globals it reaches), so a fresh but identical
    lambda compiles nothing new. ``interventions`` are applied in every variant (and the base run)
    before the grid's. ``shortcuts`` reuses the base run below each variant's first edited layer
    and before its first edited position (False: a full forward per variant); ``packing`` lays the
    suffixes of variants that start at different positions together in rows instead of rounding
    them up to ``position_buckets`` lengths. Chunks fit ``memory_budget`` bytes (default: from free
    device memory) and are sharded over ``mesh`` (default: all devices, axis 'variants'; add a
    'model' axis to split params); on CPU each chunk runs in micro-batches of about ``micro_rows``
    rows (default: sized to the cache; 0 = off). ``checkpoint_dir`` makes the sweep resumable
    (refused if the model, tokens, grid, metric -- including what it reaches -- or options
    changed). ``on_chunk(i, values)`` is called after each newly computed chunk.
    """
    cfg, params = unpack_model(model)
    tokens_BT, mask, pos, base_ivs = M.prepare(cfg, params, tokens, attention_mask, interventions)
    B, T = tokens_BT.shape
    validate_grid(cfg, params, grid, base_ivs, B, T)
    check_micro_rows(micro_rows)
    out_struct, requested = _metric_check(cfg, params, tokens_BT, mask, pos, grid, base_ivs, metric, metric_shape)
    mesh = mesh or default_mesh()
    if "variants" not in mesh.axis_names:
        raise ValueError(f"mesh axes {mesh.axis_names} need a 'variants' axis (and optionally 'model')")
    plan = make_plan(cfg, params, B, T, grid, base_ivs, shortcuts=shortcuts, packing=packing,
                     position_buckets=position_buckets, chunk_size=chunk_size, memory_budget=memory_budget,
                     micro_rows=micro_rows, mesh=mesh, readout_floats=requested)
    store = None
    if checkpoint_dir is not None:
        fp = {
            "model": digest(json.dumps(cfg.to_dict(), sort_keys=True, default=str), params),
            "tokens": digest(tokens_BT, mask, pos),
            "interventions": digest(str(jax.tree.structure(base_ivs)), jax.tree.leaves(base_ivs)),
            "grid": grid_digest(grid),
            "metric": digest(metric, metric_shape),
            "options": digest(shortcuts, position_buckets if shortcuts else 0, packing if shortcuts else 0),
        }
        store = Store(checkpoint_dir, fp, plan.chunk_sizes)
        if set(store.sizes) != set(plan.chunk_sizes):
            raise ValueError(f"{checkpoint_dir} was planned with different variant groups; use a new directory")
        if store.sizes != plan.chunk_sizes:
            for (L, s), c in store.sizes.items():
                if c % mesh.shape["variants"]:
                    raise ValueError(f"{checkpoint_dir} was chunked by {c}, not a multiple of this mesh's "
                                     f"{mesh.shape['variants']} devices; resume on the same number of devices")
            plan = chunked(plan, store.sizes)
    values = _execute(cfg, params, tokens_BT, mask, pos, base_ivs, grid, MetricKey(metric), plan, mesh, store,
                      progress, on_chunk, out_struct)
    return (values, plan) if return_plan else values


def _execute(cfg, params, tokens, mask, pos, base_ivs, grid, metric, plan, mesh, store, progress, on_chunk,
             out_struct):
    from jax.sharding import NamedSharding, PartitionSpec as P
    from tqdm.auto import tqdm

    rep = NamedSharding(mesh, P())
    var = NamedSharding(mesh, P("variants"))
    out_leaves, out_def = jax.tree.flatten(out_struct)
    results = [np.zeros((grid.size,) + tuple(l.shape), l.dtype) for l in out_leaves]
    done = store.done() if store is not None else set()
    for i in sorted(done):
        g, idx, nv = plan.chunks[i]
        for r, v in zip(results, store.load(i)):
            r[idx[:nv]] = v
    todo = [i for i in range(plan.n_chunks) if i not in done]
    if not todo:
        return _shape_results(results, out_def, grid)

    p_sh = param_shardings(params, mesh)
    params_d = jax.tree.map(lambda a, s: put(a, s), params, p_sh)
    tok_d, mask_d = put(tokens, rep), put(mask, rep)
    pos_d = None if pos is None else put(pos, rep)
    base_ivs_d = jax.tree.map(lambda a: put(jnp.asarray(a), rep) if hasattr(a, "shape") else a, base_ivs)
    leaves, treedef = jax.tree.flatten(grid.template, is_leaf=is_ref)
    slots, shared, datas = [], [], []
    for l in leaves:
        if is_ref(l):
            slots.append(("ref", l.axes))
            datas.append(put(jnp.asarray(l.data), rep))  # canonical dtypes, once per sweep
        elif isinstance(l, (bool, int, float)):
            slots.append(("const", l))
        else:
            slots.append(("arr", None))
            shared.append(put(jnp.asarray(l), rep))
    base = {}
    if plan.mode == "segment":
        base = program.base_jit(cfg, params_d, tok_d, mask_d, pos_d, base_ivs_d)
    B, T = tokens.shape
    bar = tqdm(total=grid.size, initial=sum(plan.chunks[i][2] for i in done), unit="variant", desc="sweep",
               disable=not progress or jax.process_index() != 0, smoothing=0.1)
    dynamic_first = plan.mode == "segment" and any_start_layer(grid)

    def dispatch(i):
        """Start chunk i on the devices (asynchronously); returns what ``finish`` needs."""
        g, idx, nv = plan.chunks[i]
        L, s, _ = plan.groups[g]
        micro = plan.micro.get((L, s), 0)
        layout, lay = None, plan.layouts.get(i)
        if lay is not None:
            (P_, S0), (vidx, start) = plan.pack_dims[g], lay
            st = program.Static(cfg, "packed", None, 0, B, T, treedef, tuple(slots), metric, mesh, pos is not None,
                                micro, vidx.shape[1], P_, S0)
            layout = tuple(put(a, var) for a in row_layout(start, T, P_))
        else:
            vidx = idx
            st = program.Static(cfg, plan.mode, None if dynamic_first else L, s, B, T, treedef, tuple(slots), metric,
                                mesh, pos is not None, micro)
        ax_idx = tuple(put(np.asarray(a, np.int32), var) for a in np.unravel_index(vidx, grid.shape))
        first = put(np.asarray(L, np.int32), rep)
        out = program.chunk_jit(st, params_d, base, base_ivs_d, shared, datas, ax_idx, tok_d, mask_d, pos_d, first,
                                layout)
        return i, out, lay, idx, nv

    def finish(i, out, lay, idx, nv):
        """Fetch chunk i's values (waiting for the device), store and report them."""
        if lay is not None:
            keep = (lay[1] < T).reshape(-1)
            vals = [v.reshape((-1,) + v.shape[2:])[keep] for v in gather(jax.tree.leaves(out))]
        else:
            vals = [v[:nv] for v in gather(jax.tree.leaves(out))]
        for r, v in zip(results, vals):
            r[idx[:nv]] = v
        if store is not None:
            store.save(i, vals)
        if on_chunk is not None:
            on_chunk(i, jax.tree.unflatten(out_def, vals))
        bar.update(nv)

    pending = None
    for i in todo:
        started = dispatch(i)  # queued behind the previous chunk on the devices
        if pending is not None:
            finish(*pending)
        pending = started
    finish(*pending)
    bar.close()
    return _shape_results(results, out_def, grid)


def _shape_results(results, out_def, grid):
    shaped = [r.reshape(grid.shape + r.shape[1:]) for r in results]
    return jax.tree.unflatten(out_def, shaped)
