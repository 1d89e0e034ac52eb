"""Feature visualisation by input optimisation (M16): Olah et al. 2017 optimise images to maximise a
unit; here the input is a language model's sequence of embedding rows.

An ``Objective`` names U units read at one site: an MLP neuron (a one-hot row), a direction (a probe
or steering vector) or an output logit, each read at the last position. ``optimize_soft`` runs
Adam on free soft rows (after fixed prefix tokens) to maximise each unit, with three optional terms:
an L2 penalty on the rows' norm relative to a typical token row, a penalty on the distance to the
nearest token row, and a diversity penalty on the pairwise cosine similarity of a batch of K inputs
optimised jointly. ``nearest_tokens`` projects soft rows to tokens; ``optimize_tokens`` is the
discrete search (greedy coordinate gradient on the one-hot tokens, the objective version of
``input_search.optimize_prompt``); ``unit_activations`` reads the units on real text (dataset maxima).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..core import inputs
from ..core import model as M
from ..core.handle import require_model
from ..core.sites import LAYER_SITES, feature_shape
from ..io.artifacts import model_identity
from ..train.optimizers import optax_promotion
from .input_search import swap_candidates
from .result import Result

F32 = jnp.float32
OBJECTIVE_SITES = tuple(s for s in LAYER_SITES if s in ("resid_pre", "resid_mid", "resid_post", "attn_out",
                                                         "mlp_pre", "mlp_post", "mlp_out")) + ("logits",)


# ---------------------------------------------------------------------------------------------
# objectives


@dataclass(frozen=True)
class Objective:
    """U units at one site: unit u is ``vectors_UF[u] · activation[(site, layer)]`` at the last
    position (``layer`` None for ``site="logits"``). ``names`` label the units in reports."""

    site: str
    layer: int | None
    vectors_UF: np.ndarray
    names: tuple

    @property
    def n_units(self) -> int:
        return int(self.vectors_UF.shape[0])


def _check_site_layer(cfg, site: str, layer) -> int | None:
    if site not in OBJECTIVE_SITES:
        raise ValueError(f"site {site!r} cannot carry a feature-vis objective; valid sites: {', '.join(OBJECTIVE_SITES)}")
    if site == "logits":
        if layer is not None:
            raise ValueError(f"site 'logits' takes no layer; got layer={layer!r}")
        return None
    if layer is None:
        raise ValueError(f"site {site!r} needs a layer in 0..{cfg.n_layers - 1}; got None")
    return inputs.check_layers(cfg, [layer], name="layer")[0]


def neurons(model, site: str, layer: int, indices) -> Objective:
    """One unit per neuron ``indices`` of a 1-D site (``mlp_post``, ``mlp_pre``, a residual site)."""
    cfg = require_model(model, "feature_vis.neurons").cfg
    layer = _check_site_layer(cfg, site, layer)
    (F,) = feature_shape(cfg, site)
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be a non-empty 1-D list of integers; got {indices!r}")
    bad = idx[(idx < 0) | (idx >= F)]
    if bad.size:
        raise ValueError(f"neuron indices {bad[:5].tolist()} out of range: {site} has {F} features (0..{F - 1})")
    vec = np.zeros((idx.size, F), np.float32)
    vec[np.arange(idx.size), idx] = 1.0
    return Objective(site, layer, vec, tuple(f"{site}[{layer}]#{int(i)}" for i in idx))


def directions(model, site: str, layer, vectors_UF, names=None) -> Objective:
    """One unit per row of ``vectors_UF`` [U, F] (probe weights, steering vectors) at ``site``."""
    cfg = require_model(model, "feature_vis.directions").cfg
    layer = _check_site_layer(cfg, site, layer)
    (F,) = feature_shape(cfg, site)
    v = np.asarray(vectors_UF, np.float32)
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2 or v.shape[1] != F or v.shape[0] == 0:
        raise ValueError(f"vectors_UF must be [U, {F}] for {site}; got shape {np.shape(vectors_UF)}")
    if not np.isfinite(v).all() or (np.linalg.norm(v, axis=1) == 0).any():
        raise ValueError("vectors_UF must be finite and non-zero in every row")
    names = tuple(names) if names is not None else tuple(f"{site}[{layer}] dir{u}" for u in range(len(v)))
    if len(names) != len(v):
        raise ValueError(f"{len(names)} names for {len(v)} directions")
    return Objective(site, layer, v, names)


def logits(model, token_ids) -> Objective:
    """One unit per output logit ``token_ids`` (the raw logit at the last position)."""
    cfg = require_model(model, "feature_vis.logits").cfg
    ids = np.asarray(token_ids).ravel()
    ids = inputs.check_token_ids(cfg, ids, ids.shape, name="token_ids")
    vec = np.zeros((ids.size, cfg.vocab_size), np.float32)
    vec[np.arange(ids.size), ids] = 1.0
    return Objective("logits", None, vec, tuple(f"logit#{int(i)}" for i in ids))


# ---------------------------------------------------------------------------------------------
# reading a site from embedding rows


def site_from_rows(cfg, params, rows_BTD, site: str, layer):
    """Activation [B, T, F] at (``site``, ``layer``) of the model fed embedding rows [B, T, D];
    layers above ``layer`` are not run. Differentiable in the rows."""
    if site == "logits":
        return M.forward_rows(cfg, params, rows_BTD)
    B, T, _ = rows_BTD.shape
    mask = jnp.ones((B, T), jnp.int32)
    pos = M.positions_from_mask(mask)
    idx = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    ctx = M.make_ctx(cfg, idx, mask, idx, mask, rope_pos_BT=pos)
    x = M.embed_rows(cfg, params, rows_BTD.astype(M.compute_dtype(params)), pos)
    _, rec, _ = M.run_layers(cfg, params, x, ctx, (), (site,), (layer,), stop=layer + 1)
    return rec[site][0]


def _unit_values(cfg, params, rows_BTD, site, layer, vectors_BF, position: int = -1):
    """Each row's unit value [B] at ``position`` (unit b is ``vectors_BF[b]``)."""
    acts_BF = site_from_rows(cfg, params, rows_BTD, site, layer)[:, position].astype(F32)
    return jnp.sum(acts_BF * vectors_BF, -1)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _acts_on_tokens(cfg, params, tokens_BT, site, layer, vectors_UF):
    rows = jnp.take(params["embed"]["tok"], tokens_BT, axis=0)
    acts_BTF = site_from_rows(cfg, params, rows, site, layer).astype(F32)
    return jnp.einsum("btf,uf->ubt", acts_BTF, vectors_UF)


def unit_activations(model, objective: Objective, tokens, *, batch_size: int = 16) -> np.ndarray:
    """Every unit's value at every position of real ``tokens`` [B, T]: float32 [U, B, T] (no
    padding: pass equal-length blocks). The dataset maxima are its maxima over B and T."""
    model = require_model(model, "unit_activations")
    cfg, params = model.cfg, model.params
    tokens = np.asarray(inputs.check_tokens(cfg, tokens))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    vec = jnp.asarray(objective.vectors_UF)
    out = []
    for i in range(0, len(tokens), batch_size):
        chunk = tokens[i:i + batch_size]
        n = len(chunk)
        if n < batch_size:  # pad the last chunk so one program serves every chunk
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, 0)])
        out.append(np.asarray(_acts_on_tokens(cfg, params, jnp.asarray(chunk), objective.site, objective.layer,
                                              vec))[:, :n])
    return np.concatenate(out, axis=1)


# ---------------------------------------------------------------------------------------------
# the embedding table: typical norm, nearest tokens


def token_norm(model, allowed=None) -> float:
    """Median L2 norm of the (allowed) token-embedding rows: the scale the regularisers use."""
    E = np.asarray(require_model(model, "token_norm").params["embed"]["tok"], np.float32)
    mask = _allowed_mask(model.cfg.vocab_size, allowed)
    return float(np.median(np.linalg.norm(E[mask], axis=1)))


def _nearest(E_VD, e2_V, rows_RD, allowed_V):
    """(squared distance [R], token id [R]) of each row's nearest allowed token row."""
    d2 = jnp.sum(rows_RD * rows_RD, -1)[:, None] - 2.0 * rows_RD @ E_VD.T + e2_V[None]
    d2 = jnp.where(allowed_V[None], d2, jnp.inf)
    return jnp.maximum(jnp.min(d2, -1), 0.0), jnp.argmin(d2, -1)


@jax.jit
def _nearest_jit(E_VD, rows_RD, allowed_V):
    E = E_VD.astype(F32)
    return _nearest(E, jnp.sum(E * E, -1), rows_RD.astype(F32), allowed_V)


def nearest_tokens(model, rows, *, allowed=None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest (Euclidean) allowed token of each soft row ``rows`` [..., D]: (ids [...], distances [...])."""
    model = require_model(model, "nearest_tokens")
    r = np.asarray(rows, np.float32)
    D = model.cfg.d_model
    if r.ndim < 1 or r.shape[-1] != D:
        raise ValueError(f"rows must end in d_model={D}; got shape {r.shape}")
    mask = _allowed_mask(model.cfg.vocab_size, allowed)
    d2, ids = _nearest_jit(model.params["embed"]["tok"], jnp.asarray(r.reshape(-1, D)), jnp.asarray(mask))
    return np.asarray(ids, np.int32).reshape(r.shape[:-1]), np.sqrt(np.asarray(d2)).reshape(r.shape[:-1])


def _allowed_mask(V: int, allowed) -> np.ndarray:
    if allowed is None:
        return np.ones(V, bool)
    a = np.asarray(allowed)
    if a.shape != (V,) or a.dtype != np.bool_:
        raise ValueError(f"allowed must be a bool mask of shape ({V},); got {a.dtype} {a.shape}")
    if not a.any():
        raise ValueError("allowed permits no token")
    return a


# ---------------------------------------------------------------------------------------------
# soft inputs


@dataclass(frozen=True)
class SoftResult(Result):
    """Soft inputs optimised for each unit: ``rows`` [U, K, N, D] (after the fixed ``prefix``
    tokens), ``activation`` / ``start_activation`` [U, K] (after / before optimising), ``history``
    [steps, U] (the mean over K of each unit's value per step), ``pairwise_cos`` [U] (mean cosine
    between the K flattened inputs of a unit; NaN for K = 1) and ``ref_norm``, the typical token norm."""

    FORMAT: ClassVar[str] = "interpjax.feature_vis_soft"

    site: str
    layer: int | None
    names: tuple
    prefix: np.ndarray
    rows: np.ndarray
    activation: np.ndarray
    start_activation: np.ndarray
    history: np.ndarray
    pairwise_cos: np.ndarray
    ref_norm: float
    settings: dict
    model: dict | None = None


def pairwise_cosine(x_UKM):
    """Mean cosine similarity over the K(K-1) ordered pairs of each unit's K flattened inputs [U]."""
    K = x_UKM.shape[1]
    u = x_UKM / jnp.maximum(jnp.linalg.norm(x_UKM, axis=-1, keepdims=True), 1e-12)
    c = jnp.einsum("ukm,ujm->ukj", u, u)
    off = 1.0 - jnp.eye(K, dtype=c.dtype)
    return jnp.sum(c * off, (1, 2)) / max(K * (K - 1), 1)


def _soft_terms(cfg, params, rows_UKND, prefix_P, vectors_UF, site, layer, ref, e2_V, allowed_V, w):
    """(unit values [U, K], norm term [U], nearest term [U], diversity term [U]) of soft rows."""
    U, K, N, D = rows_UKND.shape
    E = params["embed"]["tok"].astype(F32)
    pre = jnp.broadcast_to(jnp.take(E, prefix_P, axis=0)[None], (U * K, prefix_P.shape[0], D))
    rows = jnp.concatenate([pre, rows_UKND.reshape(U * K, N, D)], 1)
    vec_B = jnp.repeat(vectors_UF, K, axis=0)
    act_UK = _unit_values(cfg, params, rows, site, layer, vec_B).reshape(U, K)
    norm_t = jnp.mean(jnp.sum(rows_UKND * rows_UKND, -1) / (ref * ref), (1, 2))
    if w["nearest"]:
        d2, _ = _nearest(E, e2_V, rows_UKND.reshape(-1, D), allowed_V)
        near_t = jnp.mean(d2.reshape(U, K * N) / (ref * ref), -1)
    else:
        near_t = jnp.zeros((U,), F32)
    div_t = pairwise_cosine(rows_UKND.reshape(U, K, N * D)) if K > 1 else jnp.zeros((U,), F32)
    return act_UK, norm_t, near_t, div_t


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7, 8))
def _soft_run(cfg, params, init_UKND, prefix_P, vectors_UF, site, layer, steps: int, weights: tuple,
              lr, ref, max_norm, allowed_V):
    w = dict(weights)
    E = params["embed"]["tok"].astype(F32)

    def project(r):  # the hard norm constraint (rows never longer than max_norm), when set
        n = jnp.linalg.norm(r, axis=-1, keepdims=True)
        return jnp.where(max_norm > 0, r * jnp.minimum(1.0, max_norm / jnp.maximum(n, 1e-12)), r)

    e2_V = jnp.sum(E * E, -1)
    opt = optax_promotion(optax.adam(lr))  # optax under standard dtype promotion

    def loss_fn(z):  # rows are project(z): a stationary point at the constrained optimum, which
        r = project(z)  # Adam (sign-like steps) would miss if it projected after each step
        act, nt, ne, dv = _soft_terms(cfg, params, r, prefix_P, vectors_UF, site, layer, ref, e2_V, allowed_V, w)
        per_unit = -jnp.mean(act, 1) + w["norm"] * nt + w["nearest"] * ne + w["diversity"] * dv
        return jnp.sum(per_unit), jnp.mean(act, 1)

    def step(carry, _):
        r, st = carry
        (_, act_U), g = jax.value_and_grad(loss_fn, has_aux=True)(r)
        upd, st = opt.update(g, st, r)
        return (optax.apply_updates(r, upd), st), act_U

    r0 = project(init_UKND.astype(F32))
    (z, _), hist = jax.lax.scan(step, (r0, opt.init(r0)), None, length=steps)
    r = project(z)
    act0 = _soft_terms(cfg, params, r0, prefix_P, vectors_UF, site, layer, ref, e2_V, allowed_V, dict(w, nearest=0.0))[0]
    act = _soft_terms(cfg, params, r, prefix_P, vectors_UF, site, layer, ref, e2_V, allowed_V, dict(w, nearest=0.0))[0]
    cos = pairwise_cosine(r.reshape(r.shape[0], r.shape[1], -1))
    return r, act, act0, hist, cos


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}; got {v!r}")
    return int(v)


def _check_weight(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {v!r}")
    return float(v)


def _prefix_ids(cfg, prefix) -> np.ndarray:
    if prefix is None or np.size(prefix) == 0:
        return np.zeros((0,), np.int32)
    p = np.asarray(prefix)
    if p.ndim != 1:
        raise ValueError(f"prefix must be a 1-D list of token ids; got shape {p.shape}")
    return inputs.check_token_ids(cfg, p, p.shape, name="prefix")


def random_token_rows(model, shape, *, allowed=None, seed: int = 0) -> np.ndarray:
    """Rows [*shape, D] of uniformly drawn allowed tokens (seeded): the optimiser's default start."""
    E = np.asarray(model.params["embed"]["tok"], np.float32)
    pool = np.flatnonzero(_allowed_mask(model.cfg.vocab_size, allowed))
    return E[np.random.default_rng(seed).choice(pool, tuple(shape))]


def optimize_soft(model, objective: Objective, *, n_tokens: int = 4, prefix=None, batch: int = 1,
                  steps: int = 100, lr: float = 0.05, norm_weight: float = 0.0, nearest_weight: float = 0.0,
                  diversity_weight: float = 0.0, max_norm: float | None = None, allowed=None, seed: int = 0,
                  init=None) -> SoftResult:
    """Optimise ``batch`` soft inputs of ``n_tokens`` free rows (after the ``prefix`` token ids) per
    unit with Adam for ``steps`` steps, maximising the unit's value at the last position minus

    - ``norm_weight`` * mean(|row|^2) / ref^2 (ref = ``token_norm``: the median token row norm),
    - ``nearest_weight`` * mean(min over allowed tokens |row - E_v|^2) / ref^2,
    - ``diversity_weight`` * mean pairwise cosine of the unit's ``batch`` flattened inputs;

    ``max_norm`` (in units of ref): the rows are free parameters mapped onto that ball (radial clip).
    ``lr`` is in units of ref. ``init`` [U, K, N, D]: the start (default: random allowed tokens' rows)."""
    model = require_model(model, "optimize_soft")
    cfg, params = model.cfg, model.params
    if not isinstance(objective, Objective):
        raise ValueError(f"objective must be a feature_vis.Objective (neurons, directions or logits); got "
                         f"{type(objective).__name__}")
    n_tokens, batch, steps = _check_int("n_tokens", n_tokens, 1), _check_int("batch", batch, 1), _check_int("steps", steps, 1)
    weights = tuple((k, _check_weight(f"{k}_weight", v)) for k, v in
                    (("norm", norm_weight), ("nearest", nearest_weight), ("diversity", diversity_weight)))
    lr = _check_weight("lr", lr)
    if max_norm is not None and _check_weight("max_norm", max_norm) == 0:
        raise ValueError("max_norm must be > 0 (or None for no hard constraint)")
    prefix_P = _prefix_ids(cfg, prefix)
    if len(prefix_P) + n_tokens > cfg.n_ctx:
        raise ValueError(f"prefix ({len(prefix_P)}) + n_tokens ({n_tokens}) exceeds n_ctx={cfg.n_ctx}")
    mask = _allowed_mask(cfg.vocab_size, allowed)
    U, D = objective.n_units, cfg.d_model
    shape = (U, batch, n_tokens)
    if init is None:
        init = random_token_rows(model, shape, allowed=mask, seed=seed)
    init = np.asarray(init, np.float32)
    if init.shape != shape + (D,) or not np.isfinite(init).all():
        raise ValueError(f"init must be finite rows of shape {shape + (D,)}; got {init.shape}")
    ref = token_norm(model, mask)
    r, act, act0, hist, cos = _soft_run(cfg, params, jnp.asarray(init), jnp.asarray(prefix_P),
                                        jnp.asarray(objective.vectors_UF), objective.site, objective.layer, steps,
                                        weights, jnp.float32(lr * ref), jnp.float32(ref),
                                        jnp.float32(0.0 if max_norm is None else max_norm * ref), jnp.asarray(mask))
    settings = dict(n_tokens=n_tokens, batch=batch, steps=steps, lr=lr, max_norm=max_norm, seed=int(seed),
                    **{f"{k}_weight": v for k, v in weights})
    pc = np.asarray(cos) if batch > 1 else np.full(U, np.nan, np.float32)
    return SoftResult(objective.site, objective.layer, objective.names, prefix_P, np.asarray(r), np.asarray(act),
                      np.asarray(act0), np.asarray(hist), pc, ref, settings, model_identity(model))


def soft_activation(model, objective: Objective, rows_UKND, *, prefix=None) -> np.ndarray:
    """Each unit's value [U, K] on given rows [U, K, N, D] after the ``prefix`` token ids (e.g.
    the projected or randomised versions of a ``SoftResult``'s rows)."""
    model = require_model(model, "soft_activation")
    cfg, params = model.cfg, model.params
    r = np.asarray(rows_UKND, np.float32)
    if r.ndim != 4 or r.shape[0] != objective.n_units or r.shape[-1] != cfg.d_model:
        raise ValueError(f"rows must be [U={objective.n_units}, K, N, D={cfg.d_model}]; got {r.shape}")
    return np.asarray(_soft_eval(cfg, params, jnp.asarray(r), jnp.asarray(_prefix_ids(cfg, prefix)),
                                 jnp.asarray(objective.vectors_UF), objective.site, objective.layer))


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _soft_eval(cfg, params, rows_UKND, prefix_P, vectors_UF, site, layer):
    U, K, N, D = rows_UKND.shape
    pre = jnp.broadcast_to(jnp.take(params["embed"]["tok"].astype(F32), prefix_P, axis=0)[None],
                           (U * K, prefix_P.shape[0], D))
    rows = jnp.concatenate([pre, rows_UKND.reshape(U * K, N, D)], 1)
    return _unit_values(cfg, params, rows, site, layer, jnp.repeat(vectors_UF, K, axis=0)).reshape(U, K)


# ---------------------------------------------------------------------------------------------
# discrete inputs: greedy coordinate gradient on the one-hot tokens


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 8, 9))
def _gcg_step(cfg, params, prefix_P, free_UN, vectors_UF, site, layer, key, topk: int, n_cand: int, allowed_V):
    """One GCG step for every unit at once: (best candidate [U, N], its value [U], the current value [U])."""
    E = params["embed"]["tok"]
    V = E.shape[0]
    U, N = free_UN.shape
    P = prefix_P.shape[0]
    pre = jnp.take(E, prefix_P, axis=0)

    def value(onehot_UNV):
        rows = jnp.concatenate([jnp.broadcast_to(pre[None], (U, P, E.shape[1])),
                                jnp.einsum("unv,vd->und", onehot_UNV.astype(E.dtype), E)], 1)
        return _unit_values(cfg, params, rows, site, layer, vectors_UF)

    onehot = jax.nn.one_hot(free_UN, V, dtype=F32)
    cur, pull = jax.vjp(value, onehot)
    (g_UNV,) = pull(jnp.ones_like(cur))
    cand_UCN = swap_candidates(g_UNV, free_UN, allowed_V, key, topk, n_cand)
    toks = jnp.concatenate([jnp.broadcast_to(prefix_P[None, None], (U, n_cand, P)), cand_UCN], -1)
    rows = jnp.take(E, toks.reshape(U * n_cand, P + N), axis=0)
    val_UC = _unit_values(cfg, params, rows, site, layer, jnp.repeat(vectors_UF, n_cand, axis=0)).reshape(U, n_cand)
    best = jnp.argmax(val_UC, -1)
    return cand_UCN[jnp.arange(U), best], val_UC[jnp.arange(U), best], cur


@dataclass(frozen=True)
class TokenResult(Result):
    """Token inputs found by GCG for each unit: ``tokens`` [U, N] (after ``prefix``), ``activation``
    and ``start_activation`` [U], ``history`` [steps, U] (best value so far, never decreasing)."""

    FORMAT: ClassVar[str] = "interpjax.feature_vis_tokens"

    site: str
    layer: int | None
    names: tuple
    prefix: np.ndarray
    tokens: np.ndarray
    activation: np.ndarray
    start_activation: np.ndarray
    history: np.ndarray
    settings: dict
    model: dict | None = None


def optimize_tokens(model, objective: Objective, *, n_tokens: int = 4, prefix=None, steps: int = 30,
                    topk: int = 64, n_candidates: int = 64, allowed=None, seed: int = 0, init=None) -> TokenResult:
    """Discrete feature visualisation: ``n_tokens`` allowed tokens after ``prefix`` that maximise each
    unit, by greedy coordinate gradient (gradient on the one-hot proposes ``topk`` swaps per
    position, ``n_candidates`` random single swaps are scored exactly, the best is kept if it
    improves). All units are searched together in one compiled step. ``init`` [U, n_tokens] token ids."""
    model = require_model(model, "optimize_tokens")
    cfg, params = model.cfg, model.params
    if not isinstance(objective, Objective):
        raise ValueError(f"objective must be a feature_vis.Objective; got {type(objective).__name__}")
    n_tokens, steps = _check_int("n_tokens", n_tokens, 1), _check_int("steps", steps, 1)
    topk, n_candidates = _check_int("topk", topk, 1), _check_int("n_candidates", n_candidates, 1)
    mask = _allowed_mask(cfg.vocab_size, allowed)
    if mask.sum() < topk:
        raise ValueError(f"allowed permits {int(mask.sum())} tokens, fewer than topk={topk}")
    prefix_P = _prefix_ids(cfg, prefix)
    if len(prefix_P) + n_tokens > cfg.n_ctx:
        raise ValueError(f"prefix ({len(prefix_P)}) + n_tokens ({n_tokens}) exceeds n_ctx={cfg.n_ctx}")
    U = objective.n_units
    if init is None:
        free = np.random.default_rng(seed).choice(np.flatnonzero(mask), (U, n_tokens)).astype(np.int32)
    else:
        free = np.asarray(init)
        if free.shape != (U, n_tokens) or not np.issubdtype(free.dtype, np.integer) or \
                not ((free >= 0) & (free < cfg.vocab_size)).all() or not mask[free].all():
            raise ValueError(f"init must be allowed token ids of shape ({U}, {n_tokens}); got {free.shape}")
        free = free.astype(np.int32)
    key = jax.random.PRNGKey(seed)
    vec = jnp.asarray(objective.vectors_UF)
    best = start = None
    hist = []
    for s in range(steps):
        cand, val, cur = _gcg_step(cfg, params, jnp.asarray(prefix_P), jnp.asarray(free), vec, objective.site,
                                   objective.layer, jax.random.fold_in(key, s), topk, n_candidates, jnp.asarray(mask))
        cand, val, cur = np.asarray(cand), np.asarray(val), np.asarray(cur)
        if start is None:
            start, best = cur.copy(), cur.copy()
        better = val > best
        free = np.where(better[:, None], cand, free).astype(np.int32)
        best = np.where(better, val, best)
        hist.append(best.copy())
    settings = dict(n_tokens=n_tokens, steps=steps, topk=topk, n_candidates=n_candidates, seed=int(seed))
    return TokenResult(objective.site, objective.layer, objective.names, prefix_P, free, best.astype(np.float32),
                       start.astype(np.float32), np.stack(hist).astype(np.float32), settings, model_identity(model))
