"""Edge attribution patching (EAP, Syed et al. 2023; EAP-IG, Hanna et al. 2024), circuits, their
faithfulness, and path patching, on the graph of upstream outputs and downstream inputs.

The residual stream is a sum of upstream outputs, so an edge u -> d is u's output entering d's input.

* Upstream nodes: ``embed``; every head's output ``L{l}.H{n}`` (its ``z @ W_O`` slice, the output
  bias is a constant of the residual, not a node); every MLP output ``L{l}.MLP``.
* Downstream nodes: the query input of every head ``L{l}.H{n}.q``, the key and value inputs of
  every kv head ``L{l}.K{k}.k`` / ``L{l}.K{k}.v`` (grouped-query models share them among the
  query heads of a group), every MLP input ``L{l}.MLP.in``, and ``logits`` (the last residual,
  before the final norm).

The core block computes q, k and v from one normed input and has no hook before the projections,
so this module runs the graph itself (a ``lax.scan`` over layers, in one compiled program): each
downstream node reads its own copy of the residual, to which a per-node perturbation is added;
the layer's attention is the core's ``model.attention`` with its q / k / v taps replaced by the
projections of those per-node inputs, and its MLP is the core's ``model.mlp``. With zero
perturbations and every edge kept the run is the model's own forward (tested against it). Models
with post-norm blocks (BERT) or sandwich norms (Gemma 2/3) are refused: there the residual is not
a sum of the nodes' outputs.

Scores. ``eap`` returns ``scores[U, D] = sum_{batch, position, feature} (u_corrupt - u_clean) .
dM/d(input of d)``: the linear estimate of the metric change when that one edge carries the
corrupted value in the clean run (the sign convention of the brief: clean run, corrupted edge;
note ``atp`` patches the other way). The gradient is taken at the clean run (EAP: one clean
forward, one corrupted forward, one backward) or averaged over ``steps`` points of the straight
line from the corrupted to the clean input embeddings, alpha = k / steps, k = 1..steps (EAP-IG;
steps=1 is EAP). Entries where u does not precede d are NaN.

Faithfulness. In the circuit run every edge outside the circuit carries its corrupted value:
input(d) = residual - sum_{u -> d not kept} (u_current - u_corrupt). All kept: the clean run;
none kept: the corrupted run. Path patching is the same run with the edges senders x receivers
corrupted and everything else kept.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..core import model as M
from ..sweep.plan import unpack_model
from ..sweep.store import MetricKey
from .atp import check_pair, check_scalar_metric, metric_readout

F32 = jnp.float32

__all__ = ["EdgeScores", "Circuit", "Faithfulness", "FaithfulnessCurve", "PathPatch", "upstream_nodes",
           "downstream_nodes", "precedes", "eap", "circuit", "faithfulness", "faithfulness_curve", "path_patch"]


# ---------------------------------------------------------------------------------------------
# the graph


def _check_cfg(cfg) -> None:
    if cfg.post_norm:
        raise ValueError("edge attribution needs a pre-norm model (the residual a sum of node outputs); "
                         "post-norm blocks (post_norm=True) are not supported")
    if cfg.sandwich_norm:
        raise ValueError("edge attribution needs head outputs that add to the residual; sandwich-norm models "
                         "(sandwich_norm=True) normalise the attention output and are not supported")


def upstream_nodes(cfg) -> tuple:
    """Upstream node names in forward order: embed, then per layer its heads and its MLP."""
    names = ["embed"]
    for l in range(cfg.n_layers):
        names += [f"L{l}.H{n}" for n in range(cfg.n_heads)] + [f"L{l}.MLP"]
    return tuple(names)


def downstream_nodes(cfg) -> tuple:
    """Downstream node names in forward order: per layer q inputs, k inputs, v inputs, MLP input; logits."""
    names = []
    for l in range(cfg.n_layers):
        names += [f"L{l}.H{n}.q" for n in range(cfg.n_heads)]
        names += [f"L{l}.K{k}.k" for k in range(cfg.kv_heads)] + [f"L{l}.K{k}.v" for k in range(cfg.kv_heads)]
        names += [f"L{l}.MLP.in"]
    return tuple(names + ["logits"])


def _d_per_layer(cfg) -> int:
    return cfg.n_heads + 2 * cfg.kv_heads + 1


def _u_before_attn(cfg, l: int) -> int:
    """Number of upstream nodes available to layer l's attention inputs."""
    return 1 + l * (cfg.n_heads + 1)


def _u_before_mlp(cfg, l: int) -> int:
    """Number of upstream nodes available to layer l's MLP input (parallel blocks: not its own heads)."""
    return _u_before_attn(cfg, l) + (0 if cfg.parallel_residual else cfg.n_heads)


def precedes(cfg) -> np.ndarray:
    """[U, D] bool: True where upstream node u is computed before downstream node d reads the residual."""
    U, Dn, P = len(upstream_nodes(cfg)), len(downstream_nodes(cfg)), _d_per_layer(cfg)
    out = np.zeros((U, Dn), bool)
    for l in range(cfg.n_layers):
        out[: _u_before_attn(cfg, l), l * P: l * P + P - 1] = True
        out[: _u_before_mlp(cfg, l), l * P + P - 1] = True
    out[:, -1] = True
    return out


def _project(cfg, pa, h_NBTD, which: str):
    """q (or k, v) [B, T, heads, H] where head n is projected from its own normed input h_NBTD[n]."""
    q = jnp.einsum("nbtd,dnh->btnh", h_NBTD, pa[which])
    if cfg.qkv_bias:
        q = q + pa[f"{which}_bias"]
    if cfg.qk_norm and which in ("q", "k"):
        q = M.norm(cfg, pa[f"{which}_norm"], q)
    return q


def _attention_heads(cfg, pa, x_in_PBTD, lctx):
    """Per-head outputs [N, B, T, D] of one layer whose q / k / v inputs are x_in_PBTD[:N], [N:N+K], [N+K:]."""
    N, K = cfg.n_heads, cfg.kv_heads
    h = M.norm(cfg, pa["ln1"], x_in_PBTD)
    qkv = {"q": _project(cfg, pa["attn"], h[:N], "q"), "k": _project(cfg, pa["attn"], h[N:N + K], "k"),
           "v": _project(cfg, pa["attn"], h[N + K:N + 2 * K], "v")}
    seen = {}

    def tap(site, v):
        if site in qkv:  # the core's attention, with its q / k / v replaced by the per-node projections
            return qkv[site].astype(v.dtype)
        seen[site] = v
        return v

    M.attention(cfg, pa["attn"], h[0], lctx, tap)
    return jnp.einsum("btnh,nhd->nbtd", seen["z"], pa["attn"]["o"])


def _graph_run(cfg, params, embed_BTD, mask_BT, tokens_BT, metric, keep_UD, corrupt_UBTD, pert_DBTD):
    """(metric, upstream outputs [U, B, T, D]) of the graph run: edges with keep 0 carry the
    corrupted upstream value, every downstream input gets its perturbation added. The layers are a
    ``lax.scan`` (one traced layer body); upstream outputs not yet computed sit as zeros in the
    carried buffer and are masked out of every sum by ``precedes``."""
    B, T, D = embed_BTD.shape
    N, P, L = cfg.n_heads, _d_per_layer(cfg), cfg.n_layers
    U = len(upstream_nodes(cfg))
    idx = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    ctx = M.make_ctx(cfg, idx, mask_BT, idx, mask_BT, rope_pos_BT=M.positions_from_mask(mask_BT))
    drop_UD = (1.0 - keep_UD.astype(F32)) * jnp.asarray(precedes(cfg), F32)
    dt = embed_BTD.dtype
    outs0 = jnp.zeros((U, B, T, D), dt).at[0].set(embed_BTD)

    def adjust(drop_Ud, outs):
        return jnp.einsum("ud,ubtf->dbtf", drop_Ud.astype(dt), outs - corrupt_UBTD.astype(dt))

    def body(carry, xs):
        x, outs = carry
        p, l, window = xs
        o, u0 = l * P, 1 + l * (N + 1)
        drop_l = jax.lax.dynamic_slice_in_dim(drop_UD, o, P, axis=1)
        pert_l = jax.lax.dynamic_slice_in_dim(pert_DBTD, o, P, axis=0).astype(dt)
        x_in = x[None] + pert_l[: P - 1] - adjust(drop_l[:, : P - 1], outs)
        heads_NBTD = _attention_heads(cfg, {"ln1": p["ln1"], "attn": p["attn"]}, x_in, M.layer_ctx(ctx, window))
        attn_BTD = heads_NBTD.sum(0) + (p["attn"]["o_bias"] if cfg.o_bias else jnp.zeros((), dt))
        outs = jax.lax.dynamic_update_slice_in_dim(outs, heads_NBTD, u0, axis=0)
        base = x if cfg.parallel_residual else x + attn_BTD  # parallel: own heads masked by precedes
        m_in = base + pert_l[P - 1] - adjust(drop_l[:, P - 1:], outs)[0]
        ln = p["ln1"] if (cfg.parallel_residual and cfg.shared_norm) else p["ln2"]
        mlp_BTD = M.mlp(cfg, p["mlp"], M.norm(cfg, ln, m_in), lambda site, v: v)
        outs = jax.lax.dynamic_update_slice_in_dim(outs, mlp_BTD[None], u0 + N, axis=0)
        return (x + attn_BTD + mlp_BTD, outs), None

    xs = (params["layers"], jnp.arange(L, dtype=jnp.int32), jnp.asarray(cfg.windows, jnp.int32))
    (x, outs), _ = jax.lax.scan(body, (embed_BTD, outs0), xs)
    last = x + pert_DBTD[-1].astype(dt) - adjust(drop_UD[:, -1:], outs)[0]
    final = M.final_norm(cfg, params, last)
    value = jnp.asarray(metric(metric_readout(cfg, params, final, tokens_BT))).astype(F32)
    return value, outs


def _plain(cfg, params, embed_BTD, mask_BT, tokens_BT, metric):
    """(metric, upstream outputs) of the unedited graph run."""
    U, Dn = len(upstream_nodes(cfg)), len(downstream_nodes(cfg))
    B, T, D = embed_BTD.shape
    return _graph_run(cfg, params, embed_BTD, mask_BT, tokens_BT, metric, jnp.ones((U, Dn), F32),
                      jnp.zeros((U, B, T, D), embed_BTD.dtype), jnp.zeros((Dn, B, T, D), F32))


def _embeds(cfg, params, clean_BT, corrupt_BT, mask_BT):
    pos = M.positions_from_mask(mask_BT)
    return M.embed(cfg, params, clean_BT, pos), M.embed(cfg, params, corrupt_BT, pos)


def _plain_pair(cfg, params, e_clean, e_corr, mask_BT, clean_BT, corrupt_BT, metric):
    """((m_clean, m_corrupt), (u_clean, u_corrupt)) of the two unedited runs, one traced program body."""
    run = lambda e, t: _plain(cfg, params, e, mask_BT, t, metric)
    m_2, u_2 = jax.vmap(run)(jnp.stack([e_clean, e_corr]), jnp.stack([clean_BT, corrupt_BT]))
    return (m_2[0], m_2[1]), (u_2[0], u_2[1])


@functools.partial(jax.jit, static_argnames=("cfg", "metric"))
def _eap_program(params, clean_BT, corrupt_BT, mask_BT, steps, *, cfg, metric):
    """(scores [U, D], m_clean, m_corrupt) with the gradient averaged over ``steps`` (traced: one
    program for every step count) interpolation points alpha = k / steps, k = 1..steps."""
    e_clean, e_corr = _embeds(cfg, params, clean_BT, corrupt_BT, mask_BT)
    (m_clean, m_corr), (u_clean, u_corr) = _plain_pair(cfg, params, e_clean, e_corr, mask_BT, clean_BT,
                                                       corrupt_BT, metric)
    U, Dn = u_clean.shape[0], len(downstream_nodes(cfg))
    B, T, D = e_clean.shape
    n = steps.astype(F32)

    def add_grad(k, g_sum):
        alpha = (k + 1).astype(F32) / n
        emb = e_corr + alpha.astype(e_clean.dtype) * (e_clean - e_corr)
        f = lambda pert: _graph_run(cfg, params, emb, mask_BT, clean_BT, metric, jnp.ones((U, Dn), F32),
                                    jnp.zeros((U, B, T, D), emb.dtype), pert)[0]
        return g_sum + jax.grad(f)(jnp.zeros((Dn, B, T, D), F32))

    g = jax.lax.fori_loop(jnp.int32(0), steps, add_grad, jnp.zeros((Dn, B, T, D), F32)) / n
    scores = jnp.einsum("ubtf,dbtf->ud", (u_corr - u_clean).astype(F32), g)
    return scores, m_clean, m_corr


@functools.partial(jax.jit, static_argnames=("cfg", "metric"))
def _circuit_program(params, clean_BT, corrupt_BT, mask_BT, keeps_SUD, *, cfg, metric):
    """(m_clean, m_corrupt, metric [S] of the run keeping each edge set of ``keeps_SUD``)."""
    e_clean, e_corr = _embeds(cfg, params, clean_BT, corrupt_BT, mask_BT)
    (m_clean, m_corr), (_, u_corr) = _plain_pair(cfg, params, e_clean, e_corr, mask_BT, clean_BT, corrupt_BT,
                                                 metric)
    Dn = len(downstream_nodes(cfg))
    B, T, D = e_clean.shape
    pert = jnp.zeros((Dn, B, T, D), F32)
    one = lambda keep: _graph_run(cfg, params, e_clean, mask_BT, clean_BT, metric, keep, u_corr, pert)[0]
    return m_clean, m_corr, jax.vmap(one)(keeps_SUD.astype(F32))


# ---------------------------------------------------------------------------------------------
# checks


def _prepare(model, clean, corrupted, metric, attention_mask):
    cfg, params = unpack_model(model)
    _check_cfg(cfg)
    clean_BT, corrupt_BT, mask_BT = check_pair(cfg, clean, corrupted, attention_mask)
    check_scalar_metric(cfg, params, clean_BT, mask_BT, metric, who="edge attribution", run="clean")
    return cfg, params, clean_BT, corrupt_BT, mask_BT


def _check_mask(cfg, edge_mask) -> np.ndarray:
    if isinstance(edge_mask, Circuit):
        edge_mask = edge_mask.edge_mask
    m = np.asarray(edge_mask)
    want = (len(upstream_nodes(cfg)), len(downstream_nodes(cfg)))
    if m.dtype != np.bool_ or m.shape != want:
        raise ValueError(f"edge_mask must be a bool array of shape {want} (upstream x downstream), got "
                         f"{m.dtype} {m.shape}")
    return m


# ---------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class EdgeScores:
    """``scores`` [U, D] (NaN where u does not precede d), labelled by ``upstream`` / ``downstream``
    node names; ``method`` "EAP" or "EAP-IG", ``steps``; the clean and corrupted metrics."""

    scores: np.ndarray
    upstream: tuple
    downstream: tuple
    method: str
    steps: int
    metric_clean: float
    metric_corrupt: float

    def score(self, upstream: str, downstream: str) -> float:
        """The score of one edge, by node names."""
        return float(self.scores[_index(self.upstream, upstream, "upstream"),
                                 _index(self.downstream, downstream, "downstream")])

    def to_dict(self) -> dict:
        return {"scores": self.scores, "upstream": list(self.upstream), "downstream": list(self.downstream),
                "method": self.method, "steps": self.steps, "metric_clean": self.metric_clean,
                "metric_corrupt": self.metric_corrupt}


@dataclass(frozen=True)
class Circuit:
    """A boolean ``edge_mask`` [U, D] and the nodes its edges touch (``upstream`` / ``downstream`` names)."""

    edge_mask: np.ndarray
    upstream: tuple
    downstream: tuple

    @property
    def n_edges(self) -> int:
        return int(self.edge_mask.sum())


@dataclass(frozen=True)
class Faithfulness:
    """Metric of the circuit run, of the clean and corrupted runs, and (m_circuit - m_corrupt) /
    (m_clean - m_corrupt) (NaN when clean and corrupted metrics are equal)."""

    metric_circuit: float
    metric_clean: float
    metric_corrupt: float
    normalised: float


@dataclass(frozen=True)
class FaithfulnessCurve:
    """Per circuit size (edges kept): the metric and normalised faithfulness of the top-|score|
    circuit, and of ``random`` [n_random, sizes] random edge sets of the same sizes (the control)."""

    sizes: np.ndarray
    metric: np.ndarray
    normalised: np.ndarray
    random_metric: np.ndarray
    random_normalised: np.ndarray
    metric_clean: float
    metric_corrupt: float


@dataclass(frozen=True)
class PathPatch:
    """Metric with the senders' outputs corrupted only along edges into the receivers, the clean
    metric, and ``effect`` = metric - metric_clean."""

    metric: float
    metric_clean: float
    effect: float
    senders: tuple
    receivers: tuple


def _index(names, name, what) -> int:
    if name not in names:
        raise ValueError(f"unknown {what} node {name!r}; valid {what} nodes: {', '.join(names)}")
    return names.index(name)


def _normalise(m, clean, corrupt):
    den = clean - corrupt
    return np.where(den != 0, (np.asarray(m, np.float64) - corrupt) / (den if den != 0 else 1.0), np.nan)


# ---------------------------------------------------------------------------------------------
# public API


def eap(model, clean, corrupted, metric, steps: int | None = None, *, attention_mask=None) -> EdgeScores:
    """Score every edge u -> d as (u_corrupt - u_clean) . dM/d(input of d): EAP (``steps=None``,
    the clean gradient) or EAP-IG (gradient averaged over ``steps`` embedding interpolations)."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1):
        raise ValueError(f"steps={steps!r} invalid: valid values are None (EAP) or integers >= 1 (EAP-IG)")
    cfg, params, clean_BT, corrupt_BT, mask_BT = _prepare(model, clean, corrupted, metric, attention_mask)
    n_steps = jnp.int32(1 if steps is None else int(steps))
    s, mc, mk = _eap_program(params, clean_BT, corrupt_BT, mask_BT, n_steps, cfg=cfg, metric=MetricKey(metric))
    scores = np.where(precedes(cfg), np.asarray(s, np.float32), np.float32(np.nan))
    return EdgeScores(scores, upstream_nodes(cfg), downstream_nodes(cfg), "EAP" if steps is None else "EAP-IG",
                      1 if steps is None else int(steps), float(mc), float(mk))


def _top_mask(scores: np.ndarray, n: int) -> np.ndarray:
    mag = np.where(np.isnan(scores), -np.inf, np.abs(scores)).ravel()
    order = np.argsort(-mag, kind="stable")[:n]
    out = np.zeros(mag.shape, bool)
    out[order] = True
    return out.reshape(scores.shape)


def circuit(scores: EdgeScores, top_n: int | None = None, threshold: float | None = None) -> Circuit:
    """The circuit of the ``top_n`` edges by |score|, or of every edge with |score| >= ``threshold``
    (exactly one of the two)."""
    if not isinstance(scores, EdgeScores):
        raise ValueError(f"scores must be the EdgeScores that eap returned, got {type(scores).__name__}")
    if (top_n is None) == (threshold is None):
        raise ValueError(f"give exactly one of top_n and threshold, got top_n={top_n!r}, threshold={threshold!r}")
    s = np.asarray(scores.scores)
    n_valid = int((~np.isnan(s)).sum())
    if top_n is not None:
        if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or not 0 <= top_n <= n_valid:
            raise ValueError(f"top_n={top_n!r} out of range: valid values are integers 0..{n_valid}")
        mask = _top_mask(s, int(top_n))
    else:
        if not np.isfinite(threshold) or threshold < 0:
            raise ValueError(f"threshold={threshold!r} invalid: valid values are finite numbers >= 0")
        mask = ~np.isnan(s) & (np.abs(np.nan_to_num(s)) >= threshold)
    ups = tuple(n for n, k in zip(scores.upstream, mask.any(1)) if k)
    downs = tuple(n for n, k in zip(scores.downstream, mask.any(0)) if k)
    return Circuit(mask, ups, downs)


def faithfulness(model, clean, corrupted, metric, edge_mask, *, attention_mask=None) -> Faithfulness:
    """Metric of the clean run where every edge outside ``edge_mask`` (bool [U, D] or a Circuit)
    carries its corrupted value, in one program, and its normalised faithfulness."""
    cfg, params, clean_BT, corrupt_BT, mask_BT = _prepare(model, clean, corrupted, metric, attention_mask)
    keep = _check_mask(cfg, edge_mask)
    mc, mk, ms = _circuit_program(params, clean_BT, corrupt_BT, mask_BT, jnp.asarray(keep[None]), cfg=cfg,
                                  metric=MetricKey(metric))
    mc, mk, m = float(mc), float(mk), float(np.asarray(ms)[0])
    return Faithfulness(m, mc, mk, float(_normalise(m, mc, mk)))


def faithfulness_curve(model, clean, corrupted, metric, scores: EdgeScores, sizes, n_random: int = 1, seed: int = 0,
                       *, attention_mask=None) -> FaithfulnessCurve:
    """Faithfulness of the top-|score| circuits of each size in ``sizes`` and of ``n_random``
    random edge sets of each size (the control), all in one vmapped program."""
    cfg, params, clean_BT, corrupt_BT, mask_BT = _prepare(model, clean, corrupted, metric, attention_mask)
    if not isinstance(scores, EdgeScores) or scores.scores.shape != precedes(cfg).shape:
        raise ValueError("scores must be the EdgeScores that eap returned for this model")
    valid = ~np.isnan(scores.scores)
    n_valid = int(valid.sum())
    sz = np.asarray(sizes)
    if sz.ndim != 1 or sz.size == 0 or not np.issubdtype(sz.dtype, np.integer) or sz.min() < 0 or sz.max() > n_valid:
        raise ValueError(f"sizes={sizes!r} invalid: valid sizes are a non-empty 1-D list of integers 0..{n_valid}")
    if isinstance(n_random, bool) or not isinstance(n_random, (int, np.integer)) or n_random < 0:
        raise ValueError(f"n_random={n_random!r} invalid: valid values are integers >= 0")
    rng = np.random.default_rng(seed)
    idx_valid = np.flatnonzero(valid.ravel())
    masks = [_top_mask(scores.scores, int(n)) for n in sz]
    for _ in range(n_random):
        for n in sz:
            m = np.zeros(valid.size, bool)
            m[rng.choice(idx_valid, size=int(n), replace=False)] = True
            masks.append(m.reshape(valid.shape))
    mc, mk, ms = _circuit_program(params, clean_BT, corrupt_BT, mask_BT, jnp.asarray(np.stack(masks)), cfg=cfg,
                                  metric=MetricKey(metric))
    mc, mk, ms = float(mc), float(mk), np.asarray(ms, np.float64)
    top, rand = ms[: sz.size], ms[sz.size:].reshape(n_random, sz.size)
    return FaithfulnessCurve(sz.astype(np.int64), top, _normalise(top, mc, mk), rand, _normalise(rand, mc, mk),
                             mc, mk)


def path_patch(model, clean, corrupted, metric, senders, receivers, *, attention_mask=None) -> PathPatch:
    """Metric of the clean run with the ``senders``' (upstream names) outputs taken from the corrupted
    run only along their edges into the ``receivers`` (downstream names); other paths stay clean."""
    cfg, _ = unpack_model(model)
    _check_cfg(cfg)
    ups, downs = upstream_nodes(cfg), downstream_nodes(cfg)
    senders = (senders,) if isinstance(senders, str) else tuple(senders)
    receivers = (receivers,) if isinstance(receivers, str) else tuple(receivers)
    if not senders or not receivers:
        raise ValueError(f"path_patch needs at least one sender and one receiver, got {senders} -> {receivers}")
    si = [_index(ups, s, "upstream") for s in senders]
    ri = [_index(downs, r, "downstream") for r in receivers]
    keep = np.ones((len(ups), len(downs)), bool)
    keep[np.ix_(si, ri)] = False
    if not (~keep & precedes(cfg)).any():
        raise ValueError(f"no sender in {senders} precedes a receiver in {receivers}: there is no path to patch")
    f = faithfulness(model, clean, corrupted, metric, keep, attention_mask=attention_mask)
    return PathPatch(f.metric_circuit, f.metric_clean, f.metric_circuit - f.metric_clean, senders, receivers)
