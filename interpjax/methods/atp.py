"""Attribution patching (Nanda 2023) and AtP* (Kramar et al. 2024, "AtP*: An efficient and scalable
method for localizing LLM behaviour to components"), with exact verification of chosen cells.

Direction. ``sweep.patching`` / ``sweep.head_patching`` run the *corrupted* tokens with one cell of
``site`` replaced by the *clean* run's value and return the metric of that patched run. AtP estimates
every such cell at once by linearising the metric around the corrupted run:

    M(corrupted, cell <- clean) ~= M(corrupted) + sum_cell (a_clean - a_corrupted) . dM/da |corrupted

where the sum runs over the batch rows and feature axes the cell patches (and its positions / heads).
``atp`` returns these estimated metric values with the same axes, ticks and shape as the matching
exact sweep, so ``atp(...).values`` and ``sweep.patching(...).values`` compare cell by cell. The
gradient at every layer of ``site`` comes from one backward pass through a zero ``Custom`` addition
at that site (its gradient is dM/da; ``methods.attribution`` has no such all-layer gradient to
reuse: its IG scales one layer's neurons). The cost is one clean forward (recording ``site``), one
corrupted forward (recording it and the final residual) and one backward, in one compiled program
per (config, site, layers, metric fingerprint -- ``sweep.store.MetricKey``, so a fresh identical
lambda reuses it --, options, input shapes); the per-cell sums are then a few numpy reductions.

AtP* corrections (``correction``, a tuple of names from ``CORRECTIONS``):

* ``"attention"`` (saturation, the paper's query/key fix), for ``site="resid_pre"``: patching
  ``resid_pre[l]`` at position p changes layer l's query at p and key at p, and the softmax of
  layer l's pattern is not linear in them. The estimate keeps every linear term of AtP but replaces
  the linearised change of layer l's attention pattern by the exact one: with P(x) layer l's
  pattern as a function of its ``resid_pre`` (norm, projections, rotary, mask, softmax: the
  model's own attention code), x the corrupted ``resid_pre[l]`` and x' that with the cell's
  positions set to the clean values,

      corrected = AtP + sum dM/dpattern[l] . ((P(x') - P(x)) - J_P(x) (x' - x)).

  The gradient w.r.t. ``pattern[l]`` is read in the same backward pass. Later layers' patterns are
  still linearised (as in the paper, the fix applies to the attention that reads the patched
  node). For ``pattern`` itself AtP already multiplies the exact pattern change by the gradient
  (there is no softmax left to linearise), and ``z``, ``attn_out``, ``mlp_out``, ``resid_mid`` and
  ``resid_post`` do not feed a softmax of their own layer, so the correction is refused there.
  Cost: per layer, one extra attention call (and one jvp) per patched position.

* ``"graddrop"`` (cancellation): for each model layer l the backward pass is repeated with the
  gradient through layer l's residual contributions (its ``attn_out`` and ``mlp_out``) stopped,
  giving per-drop estimates AtP_l(cell); following the paper the magnitude is
  ``sum_l |AtP_l(cell)| / (n_layers - 1)``. A cell's own branch is dropped when l is its layer
  (attn_out / mlp_out cells then get 0 from that drop; the zero Custom sits before the drop), and
  drops of layers below a cell's layer leave its gradient unchanged (the backward pass reaches the
  cell from later layers only). The paper uses this magnitude to rank
  cells; to stay in metric units ``atp`` returns ``M(corrupted) + sign(AtP) * magnitude``, the sign
  taken from the estimate without GradDrop (with the attention fix when both are asked for). Cost:
  n_layers + 1 corrupted forwards and backwards (one vmapped program). With both corrections each
  per-drop estimate carries its own attention fix.

``verify`` re-measures chosen cells exactly (the top-k of |estimated effect| plus a random sample of
the others) in one ``sweep`` over explicit cells, and reports rank agreement, top-k recall and the
worst misses.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .. import sweep as SW
from ..core import inputs
from ..core import model as M
from ..core.interventions import Custom, Patch
from ..core.readout import Readout
from ..sweep.engine import unpack_model
from ..sweep.standard import HEAD_PATCH_SITES, RESID_SITES, check_heads, token_labels
from ..sweep.store import MetricKey
from .result import Result

F32 = jnp.float32
ATP_SITES = RESID_SITES + HEAD_PATCH_SITES
CORRECTIONS = ("attention", "graddrop")
ATTENTION_FIX_SITES = ("resid_pre",)
RESID_BY = (("layer", "position"), ("layer",))
HEAD_BY = (("layer", "head"), ("layer", "head", "position"), ("head", "position"))

__all__ = ["ATP_SITES", "CORRECTIONS", "AtPEstimate", "Verification", "atp", "spearman", "verify"]


@dataclass(frozen=True)
class AtPEstimate(SW.Labelled):
    """A ``Labelled`` (values, axes, ticks, title exactly as the matching exact sweep) that also
    records what was estimated: ``site``, ``baseline`` (the exact metric of the corrupted run),
    the ``layers`` / ``positions`` (absolute) / ``heads`` behind the axes and the corrections.
    With GradDrop, ``per_drop`` [n_layers + 1, *shape] holds the estimated effects without a drop
    (row 0) and with layer l's gradient dropped (row l + 1), before they are combined."""

    site: str = "resid_pre"
    baseline: float = 0.0
    layers: tuple = ()
    positions: tuple = ()
    heads: tuple = ()
    correction: tuple = ()
    per_drop: np.ndarray | None = None

    @property
    def effects(self) -> np.ndarray:
        """Estimated change of the metric per cell: ``values - baseline``."""
        return np.asarray(self.values) - np.float32(self.baseline)


# ---------------------------------------------------------------------------------------------
# checks (all before compute)


def _check_correction(correction, site: str, n_layers: int) -> tuple:
    if correction is None:
        return ()
    names = (correction,) if isinstance(correction, str) else tuple(correction)
    bad = [c for c in names if c not in CORRECTIONS]
    if bad:
        raise ValueError(f"unknown correction {bad[0]!r}; valid corrections: {CORRECTIONS}")
    if len(set(names)) != len(names):
        raise ValueError(f"correction {names} names a correction twice")
    if "attention" in names and site not in ATTENTION_FIX_SITES:
        raise ValueError(f"correction 'attention' applies at sites {ATTENTION_FIX_SITES} (the softmax their layer "
                         f"reads), got site {site!r}")
    if "graddrop" in names and n_layers < 2:
        raise ValueError(f"correction 'graddrop' averages over n_layers - 1 drops and needs >= 2 layers, "
                         f"the model has {n_layers}")
    return tuple(c for c in CORRECTIONS if c in names)


def _check_by(site: str, by, layers) -> tuple:
    valid = RESID_BY if site in RESID_SITES else HEAD_BY
    by = valid[0] if by is None else tuple(by)
    if by not in valid:
        raise ValueError(f"by={by} for site {site!r}; valid: {valid}")
    if by == ("head", "position") and len(layers) != 1:
        raise ValueError(f"by=('head', 'position') estimates one layer: pass layers=<one layer>, got {list(layers)}")
    return by


def _check_heads(cfg, site: str, heads) -> np.ndarray:
    if site in RESID_SITES:
        if heads is not None:
            raise ValueError(f"heads={heads!r} given for site {site!r}, which has no head axis; "
                             f"head sites: {HEAD_PATCH_SITES}")
        return np.zeros(0, np.int32)
    return check_heads(cfg, heads)  # the exact sweeps' own check


def _check_positions(T: int, by, positions) -> np.ndarray:
    if "position" not in by:
        if positions is not None:
            raise ValueError(f"positions={positions!r} given but by={by} patches every position at once; "
                             f"use a by with 'position'")
        return np.zeros(0, np.int32)
    ps = np.arange(T) if positions is None else inputs.check_positions(np.atleast_1d(positions), T)
    return np.where(ps < 0, ps + T, ps).astype(np.int32)


def check_pair(cfg, clean, corrupted, attention_mask):
    """Clean / corrupted token arrays of one shape and their mask, checked (shared with ``eap``)."""
    clean_np, corrupt_np = np.asarray(clean), np.asarray(corrupted)
    if clean_np.shape != corrupt_np.shape:
        raise ValueError(f"clean tokens {clean_np.shape} and corrupted tokens {corrupt_np.shape} must have the same "
                         f"shape")
    clean_BT = jnp.asarray(inputs.check_tokens(cfg, clean_np))
    corrupt_BT = jnp.asarray(inputs.check_tokens(cfg, corrupt_np))
    mask_BT = jnp.asarray(inputs.check_mask(attention_mask, tuple(clean_BT.shape)))
    return clean_BT, corrupt_BT, mask_BT


# ---------------------------------------------------------------------------------------------
# the compiled program


def _add_slot(x, layer_index, p):
    """Custom body: add this layer's slot of ``p["delta"]`` (zeros: a no-op whose gradient is dM/dx)."""
    return x + p["delta"][p["slot"][layer_index]].astype(x.dtype)


def _drop_grad(x, layer_index, p):
    """Custom body: the same value, with the gradient stopped at layer ``p["drop"]`` (-1: none)."""
    return jnp.where(layer_index == p["drop"], jax.lax.stop_gradient(x), x)


def metric_readout(cfg, params, final_BTD, tokens_BT):
    """The ``Readout`` a sweep metric sees, on a full run's final residual; ``.base`` is the same
    run with no gradient (in a sweep the base run does not depend on the variant's edit)."""
    base_final = jax.lax.stop_gradient(final_BTD)
    T = final_BTD.shape[1]

    def view(f, base_fn):
        return Readout(cfg, params, T, lambda p: jnp.take(f, p, axis=1), lambda: f, (), base_fn, tokens=tokens_BT)

    base = view(base_final, None)
    return view(final_BTD, lambda: base)


def _pattern_at(cfg, params, x_BTD, layer, ctx):
    """Layer ``layer``'s attention pattern [B, N, T, S] from its ``resid_pre`` ``x_BTD``, through
    the model's own attention code."""
    p = jax.tree.map(lambda a: a[layer], params["layers"])
    h = x_BTD if cfg.post_norm else M.norm(cfg, p["ln1"], x_BTD)
    lctx = M.layer_ctx(ctx, jnp.asarray(cfg.windows, jnp.int32)[layer])
    seen = {}

    def tap(site, v):
        if site == "pattern":
            seen[site] = v
        return v

    M.attention(cfg, p["attn"], h, lctx, tap)
    return seen["pattern"]


def _attention_fix(cfg, params, mask_BT, layers, a_clean, a_corr, g_pat, positions_P, whole):
    """[D, L, P] (or [D, L, 1] when ``whole``): sum g_pattern . (exact - linearised) change of the
    patched layer's pattern, per drop d, layer slot and patched position."""
    B, T = mask_BT.shape
    idx = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    ctx = M.make_ctx(cfg, idx, mask_BT, idx, mask_BT, rope_pos_BT=M.positions_from_mask(mask_BT))
    layers_L = jnp.asarray(layers, jnp.int32)
    masks_PT = (jnp.ones((1, T), bool) if whole
                else jnp.arange(T, dtype=jnp.int32)[None] == positions_P[:, None])

    def per_layer(i):
        pat = lambda x: _pattern_at(cfg, params, x, layers_L[i], ctx)
        xc, xk = a_corr[i].astype(F32), a_clean[i].astype(F32)
        dtype = a_corr.dtype
        base = pat(xc.astype(dtype))

        def one(m_T):
            x_new = jnp.where(m_T[None, :, None], xk, xc)
            exact = pat(x_new.astype(dtype)) - base
            _, lin = jax.jvp(lambda x: pat(x.astype(dtype)), (xc,), (x_new - xc,))
            return jnp.einsum("dbnts,bnts->d", g_pat[:, i], exact - lin)

        return jax.vmap(one)(masks_PT)  # [P, D]

    fix_LPD = jax.lax.map(per_layer, jnp.arange(len(layers)))
    return jnp.transpose(fix_LPD, (2, 0, 1))


_CONTRACT = {"z": "dlbtnh,lbtnh->dltn", "pattern": "dlbnts,lbnts->dltn"}


@functools.partial(jax.jit, static_argnames=("cfg", "site", "layers", "metric", "whole", "attention"))
def _atp_program(params, clean_BT, corrupt_BT, mask_BT, positions_P, drops_D, *, cfg, site, layers, metric, whole,
                 attention):
    """(baseline metric, products [D, L, T(, N)] of (a_clean - a_corr) . dM/da summed over batch and
    features, attention fix [D, L, P] or None) for every drop of ``drops_D`` (-1 = no drop)."""
    L = len(layers)
    layers_L = jnp.asarray(layers, jnp.int32)
    all_L = jnp.arange(cfg.n_layers, dtype=jnp.int32)
    slot = np.zeros(cfg.n_layers, np.int32)
    slot[list(layers)] = np.arange(L, dtype=np.int32)
    slot = jnp.asarray(slot)
    _, rec_clean = M.run(cfg, params, clean_BT, mask_BT, None, (), (site,), layers)
    a_clean = rec_clean[site]
    zeros = {site: jnp.zeros(a_clean.shape, M.site_dtype(params, site))}
    if attention:
        B, T = clean_BT.shape
        zeros["pattern"] = jnp.zeros((L, B, cfg.n_heads, T, T), F32)

    def value(deltas, drop):
        ivs = [Custom(s, _add_slot, layer=layers_L, params={"delta": d, "slot": slot}) for s, d in deltas.items()]
        if drops_D.shape[0] > 1:  # GradDrop: stop the gradient through one layer's branches
            ivs += [Custom(s, _drop_grad, layer=all_L, params={"drop": drop}) for s in ("attn_out", "mlp_out")]
        _, rec = M.run(cfg, params, corrupt_BT, mask_BT, None, tuple(ivs), (site, "final"), layers)
        out = metric(metric_readout(cfg, params, rec["final"], corrupt_BT))
        return jnp.asarray(out).astype(F32), rec[site]

    def grads(drop):
        (val, a_corr), g = jax.value_and_grad(value, has_aux=True)(zeros, drop)
        return val, a_corr, g

    if drops_D.shape[0] == 1:  # plain AtP: one backward, no vmap
        vals, a_corrs, g = jax.tree.map(lambda x: x[None], grads(drops_D[0]))
    else:
        vals, a_corrs, g = jax.vmap(grads)(drops_D)
    a_corr = a_corrs[0]
    diff = (a_clean - a_corr).astype(F32)
    spec = _CONTRACT.get(site, "dlbtf,lbtf->dlt")
    prod = jnp.einsum(spec, g[site].astype(F32), diff)
    fix = None
    if attention:
        fix = _attention_fix(cfg, params, mask_BT, layers, a_clean, a_corr, g["pattern"], positions_P, whole)
    return vals[0], prod, fix


# ---------------------------------------------------------------------------------------------
# cells


def _cells(prod, by, ps, hs):
    """Reduce per-position products [D, L, T] (or per-head [D, L, T, N]) to the cells of ``by``:
    [D, *grid shape]."""
    if by == ("layer", "position"):
        return prod[:, :, ps]
    if by == ("layer",):
        return prod.sum(2)
    if by == ("layer", "head"):
        return prod.sum(2)[:, :, hs]
    sel = np.transpose(prod[:, :, ps][:, :, :, hs], (0, 1, 3, 2))  # [D, L, H, P]
    return sel if by == ("layer", "head", "position") else sel[:, 0]


def _combine(cells_D, n_layers: int, graddrop: bool):
    """The estimate from per-drop cells: the plain one, or sign(plain) * sum_l |drop_l| / (L - 1)."""
    plain = cells_D[0]
    if not graddrop:
        return plain
    return np.sign(plain) * np.abs(cells_D[1:]).sum(0) / np.float32(n_layers - 1)


def _ticks(model, by, layers, ps, hs, clean_row):
    labels = token_labels(model, clean_row)
    out = []
    for name in by:
        if name == "layer":
            out.append(tuple(int(l) for l in layers))
        elif name == "head":
            out.append(tuple(int(h) for h in hs))
        else:
            out.append(tuple(labels[int(p)] for p in ps))
    return tuple(out)


def _title(site, by, layers, correction):
    what = "AtP" + ("*" if correction else "")
    extra = f" [{', '.join(correction)}]" if correction else ""
    if site in RESID_SITES:
        return f"{what}{extra} estimate of patching {site} (clean -> corrupted)"
    tail = "" if "layer" in by else f", layer {int(layers[0])}"
    return f"{what}{extra} estimate of patching {site} per head (clean -> corrupted){tail}"


def check_scalar_metric(cfg, params, tokens_BT, mask_BT, metric, who: str = "atp", run: str = "corrupted"):
    """Trace the metric on one run (no compute): it must be callable and return one scalar
    (shared with ``eap``; ``who`` / ``run`` name the caller and the run in the errors)."""
    if not callable(metric):
        raise ValueError(f"metric must be a callable taking a Readout, got {type(metric).__name__}")
    def one(params):
        _, rec = M.run(cfg, params, tokens_BT, mask_BT, None, (), ("final",), ())
        return metric(metric_readout(cfg, params, rec["final"], tokens_BT))

    try:
        out = jax.eval_shape(one, params)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - report metric bugs before any compute
        raise ValueError(f"the metric failed on the {run} run: {type(e).__name__}: {e}") from e
    leaves = jax.tree.leaves(out)
    if len(leaves) != 1 or tuple(getattr(leaves[0], "shape", (None,))) != ():
        raise ValueError(f"{who} needs a metric returning one scalar per run, got {out}")


def atp(model, clean, corrupted, metric, site: str = "resid_pre", layers=None, positions=None, heads=None,
        correction=None, *, by=None, attention_mask=None) -> AtPEstimate:
    """AtP estimate of every cell of ``sweep.patching`` (residual sites) or ``sweep.head_patching``
    (``z`` / ``pattern``) for the same arguments, from one clean forward, one corrupted forward and
    one backward; ``correction`` adds AtP* fixes (see the module docstring). ``by`` defaults to the
    exact sweep's default; ``attention_mask`` applies to both runs."""
    cfg, params = unpack_model(model)
    if site not in ATP_SITES:
        raise ValueError(f"atp site {site!r} not supported; valid sites: {ATP_SITES}")
    correction = _check_correction(correction, site, cfg.n_layers)
    ls = inputs.check_layers(cfg, layers, allow_empty=False)
    by = _check_by(site, by, ls)
    hs = _check_heads(cfg, site, heads)
    clean_BT, corrupt_BT, mask_BT = check_pair(cfg, clean, corrupted, attention_mask)
    ps = _check_positions(int(clean_BT.shape[1]), by, positions)
    if not callable(metric):
        raise ValueError(f"metric must be a callable taking a Readout, got {type(metric).__name__}")
    check_scalar_metric(cfg, params, corrupt_BT, mask_BT, metric)
    graddrop = "graddrop" in correction
    drops = np.arange(-1, cfg.n_layers if graddrop else 0, dtype=np.int32)
    base, prod, fix = _atp_program(params, clean_BT, corrupt_BT, mask_BT, jnp.asarray(ps), jnp.asarray(drops),
                                   cfg=cfg, site=site, layers=ls, metric=MetricKey(metric), whole=by == ("layer",),
                                   attention="attention" in correction)
    cells = _cells(np.asarray(prod, np.float32), by, ps, hs)
    if fix is not None:
        fix = np.asarray(fix, np.float32)
        cells = cells + (fix[:, :, 0] if by == ("layer",) else fix)
    est = _combine(cells, cfg.n_layers, graddrop)
    baseline = float(np.asarray(base))
    values = (np.float32(baseline) + est).astype(np.float32)
    return AtPEstimate(values, by, _ticks(model, by, ls, ps, hs, np.asarray(clean_BT)[0]),
                       _title(site, by, ls, correction), site=site, baseline=baseline, layers=tuple(ls),
                       positions=tuple(int(p) for p in ps), heads=tuple(int(h) for h in hs), correction=correction,
                       per_drop=cells.astype(np.float32) if graddrop else None)


# ---------------------------------------------------------------------------------------------
# exact verification of chosen cells


def spearman(x, y) -> float:
    """Spearman rank correlation of two 1-D arrays, ties given their average rank; NaN when either
    is constant (its ranks have no spread) or has fewer than two entries."""
    a, b = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman needs arrays of one length, got {a.size} and {b.size}")
    if a.size < 2:
        return float("nan")
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def _average_ranks(a):
    order = np.argsort(a, kind="stable")
    s = a[order]
    ranks = np.empty(a.size, np.float64)
    i = 0
    while i < a.size:
        j = i
        while j + 1 < a.size and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


@dataclass(frozen=True)
class Verification(Result):
    """Exact re-measurement of chosen cells of an ``AtPEstimate``. ``cells`` [K, A] holds each
    measured cell's coordinates along ``axes`` (layer / head numbers, absolute positions);
    ``estimate`` and ``exact`` [K] are the estimated and exact metric values, ``baseline`` the
    corrupted run's metric; the first ``top_k`` rows are the top-k cells of |estimated effect|, the
    rest a random sample of the other cells. ``spearman``: rank correlation of estimate and exact
    over the measured cells (``spearman_abs``: of their |effects|). ``recall``: of the ``top_k``
    measured cells with the largest |exact effect|, the fraction that are among the top-k by
    |estimated effect| (the measured set stands in for the grid). ``worst`` [K]: row indices,
    largest |estimate - exact| first."""

    FORMAT: ClassVar[str] = "interpjax.atp_verification"

    site: str
    axes: tuple
    cells: np.ndarray
    estimate: np.ndarray
    exact: np.ndarray
    baseline: float
    top_k: int
    spearman: float
    spearman_abs: float
    recall: float
    worst: np.ndarray
    correction: tuple = ()

    def worst_misses(self, n: int = 5) -> list[dict]:
        """The ``n`` cells with the largest |estimate - exact|, as dicts (axes -> coordinate)."""
        out = []
        for i in self.worst[:n].tolist():
            cell = {a: int(c) for a, c in zip(self.axes, self.cells[i].tolist())}
            out.append({**cell, "estimate": float(self.estimate[i]), "exact": float(self.exact[i]),
                        "miss": float(abs(self.estimate[i] - self.exact[i]))})
        return out


def _check_int(name, v, lo, hi):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
        raise ValueError(f"{name}={v!r} out of range: valid values are integers {lo}..{hi}")
    return int(v)


def _pick_cells(effects, top_k, n_random, seed):
    flat = np.abs(effects.ravel())
    order = np.argsort(-flat, kind="stable")
    top, rest = order[:top_k], np.sort(order[top_k:])
    rand = np.random.default_rng(seed).choice(rest, size=n_random, replace=False) if n_random else rest[:0]
    return np.concatenate([top, rand]).astype(np.int64)


def _cell_grid(cfg, params, est, clean_BT, mask_BT, coords):
    """Explicit-cell grid: variant k patches cell k with the clean run's value (as the exact sweep)."""
    site, by = est.site, tuple(est.axes)
    K = coords.shape[0]
    col = {a: coords[:, i] for i, a in enumerate(by)}
    layer_K = col["layer"] if "layer" in col else np.full(K, est.layers[0], np.int64)
    used = tuple(sorted(set(int(l) for l in layer_K)))
    _, cache = M.run_with_cache(cfg, params, np.asarray(clean_BT), sites=[site], layers=used,
                                attention_mask=np.asarray(mask_BT))
    slot = np.asarray([used.index(int(l)) for l in layer_K])
    fields = {"layer": layer_K.astype(np.int32), "value": jnp.take(cache[site], jnp.asarray(slot), axis=0)}
    if "position" in col:
        fields["position"] = col["position"].astype(np.int32)
    if "head" in col:
        fields["head"] = col["head"].astype(np.int32)
    space = SW.zip(name="cell", **fields)
    return space.build(lambda a: Patch(site, layer=a.layer, value=a.value,
                                       positions=a.position if "position" in col else None,
                                       heads=a.head if "head" in col else None))


def _coords(est, flat):
    """[K, A] coordinates (layer / head numbers, absolute positions) of flat cell indices."""
    idx = np.unravel_index(flat, np.shape(est.values))
    table = {"layer": np.asarray(est.layers), "position": np.asarray(est.positions), "head": np.asarray(est.heads)}
    return np.stack([table[a][i] for a, i in zip(est.axes, idx)], 1).astype(np.int64)


def verify(model, clean, corrupted, metric, estimate, top_k: int, n_random: int = 16, seed: int = 0, *,
           attention_mask=None, **sweep_kw) -> Verification:
    """Exactly patch the ``top_k`` cells of |estimated effect| and ``n_random`` other cells (drawn
    with ``seed``) in one ``sweep`` over explicit cells, and compare them with ``estimate``."""
    cfg, params = unpack_model(model)
    if not isinstance(estimate, AtPEstimate):
        raise ValueError(f"estimate must be the AtPEstimate that atp returned, got {type(estimate).__name__}")
    n = int(np.size(estimate.values))
    top_k = _check_int("top_k", top_k, 1, n)
    n_random = _check_int("n_random", n_random, 0, n - top_k)
    clean_BT, corrupt_BT, mask_BT = check_pair(cfg, clean, corrupted, attention_mask)
    if "position" in estimate.axes and max(estimate.positions) >= clean_BT.shape[1]:
        raise ValueError(f"estimate positions {list(estimate.positions)} do not fit {clean_BT.shape[1]} tokens")
    effects = estimate.effects
    flat = _pick_cells(effects, top_k, n_random, seed)
    coords = _coords(estimate, flat)
    grid = _cell_grid(cfg, params, estimate, clean_BT, mask_BT, coords)
    sweep_kw.setdefault("progress", False)
    exact = np.asarray(SW.sweep((cfg, params), np.asarray(corrupt_BT), grid, metric,
                                attention_mask=np.asarray(mask_BT), **sweep_kw), np.float32)
    est = np.asarray(estimate.values, np.float32).ravel()[flat]
    base = np.float32(estimate.baseline)
    exact_top = np.argsort(-np.abs(exact - base), kind="stable")[:top_k]
    recall = float(np.isin(exact_top, np.arange(top_k)).mean())
    worst = np.argsort(-np.abs(est - exact), kind="stable").astype(np.int64)
    return Verification(estimate.site, tuple(estimate.axes), coords, est, exact, float(estimate.baseline), top_k,
                        spearman(est, exact), spearman(np.abs(est - base), np.abs(exact - base)), recall, worst,
                        tuple(estimate.correction))
