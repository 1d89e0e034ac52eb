"""Integrated-gradients attribution over the neurons of any site, and knowledge neurons (Dai et al.
2022, "Knowledge Neurons in Pretrained Transformers").

The attribution of neuron j at (site, layer, position) for a prompt's answer is

    IG_j = a_j * integral_0^1 d f(alpha * a) / d x_j  d alpha  =  integral_0^1 d f / d s_j |_(s = alpha 1) d alpha

where ``s`` is a per-neuron ``Scale`` factor on the activation ``a`` and ``f`` the answer's
probability: the gradient flows *through the intervention*. The path is sampled at m steps
(right Riemann sum alpha = k/m as in the paper, or the trapezoid rule) and the steps are one
``vmap`` (optionally chunked with ``lax.map(batch_size=...)``), as are the layers and prompts.
Completeness: ``sum_j IG_j = f(a) - f(0)`` up to the quadrature error.

Knowledge neurons of a fact: per prompt keep neurons with attribution > ``threshold`` x the prompt's
max, then keep those shared by at least ``share`` of the fact's paraphrase prompts. Their causal
role is tested by suppressing (x0) or amplifying (x2) them vs the same number of random neurons.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..core import inputs
from ..core import interventions as ivmod
from ..core import model as M
from ..core.handle import require_model
from ..core.interventions import Custom, Scale
from ..core.sites import LAYER_SITES, feature_shape
from ..io.artifacts import model_identity
from ..io.plots import save_drawing
from .result import Result

F32 = jnp.float32
METRICS = ("prob", "logprob", "logit")
RULES = ("riemann", "trapezoid")


def path_points(steps: int, rule: str = "riemann"):
    """(alphas, weights) of the quadrature of int_0^1 g(alpha) d alpha with ``steps`` intervals."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if rule == "riemann":
        return np.arange(1, steps + 1, dtype=np.float32) / steps, np.full(steps, 1.0 / steps, np.float32)
    if rule == "trapezoid":
        w = np.full(steps + 1, 1.0 / steps, np.float32)
        w[[0, -1]] /= 2
        return np.arange(steps + 1, dtype=np.float32) / steps, w
    raise ValueError(f"unknown rule {rule!r}; valid rules: {RULES}")


def answer_metric(logits_V, answer, metric: str = "prob"):
    """The scalar IG explains: the answer token's probability, log-probability or logit."""
    lg = logits_V.astype(F32)
    if metric == "logit":
        return lg[answer]
    logp = jax.nn.log_softmax(lg)[answer]
    return jnp.exp(logp) if metric == "prob" else logp


@dataclass(frozen=True)
class IGResult(Result):
    """``attributions`` [B, L, F] per prompt, layer and neuron; ``full`` [B] the metric of the
    clean run; ``baseline`` [B, L] with that layer's neurons zeroed (the path's start); the neurons
    are those of ``site`` at ``positions`` [B] (one per prompt), for ``layers``."""

    FORMAT: ClassVar[str] = "interpjax.integrated_gradients"

    attributions: np.ndarray
    full: np.ndarray
    baseline: np.ndarray
    layers: tuple
    site: str
    positions: np.ndarray
    steps: int
    rule: str
    metric: str
    model: dict | None = None

    def completeness_gap(self) -> np.ndarray:
        """[B, L] relative gap |sum_j IG_j - (f(a) - f(0))| / |f(a) - f(0)|."""
        diff = self.full[:, None] - self.baseline
        return np.abs(self.attributions.sum(-1) - diff) / np.maximum(np.abs(diff), 1e-12)

    def draw(self, ax):
        """Mean attribution over prompts, one row per layer."""
        mean_LF = self.attributions.mean(0)
        lim = float(np.abs(mean_LF).max()) or 1.0
        im = ax.imshow(mean_LF, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim,
                       interpolation="nearest")
        ax.set(xlabel="neuron", ylabel="layer", yticks=range(len(self.layers)), yticklabels=list(self.layers),
               title=f"integrated gradients of p(answer) at {self.site}")
        ax.figure.colorbar(im, ax=ax, label=f"attribution ({self.metric})")
        return ax

    def plot(self, path) -> Path:
        return save_drawing(self.draw, path, figsize=(8.0, 3.0))


def _check_prompts(model, tokens, attention_mask, answers):
    require_model(model)
    tokens = np.asarray(inputs.check_tokens(model.cfg, tokens))
    mask = np.asarray(inputs.check_mask(attention_mask, tokens.shape))
    answers = inputs.check_token_ids(model.cfg, answers, (tokens.shape[0],), name="answers")
    return tokens, mask, answers


def neuron_sites(cfg) -> list[str]:
    """Layer sites with one feature axis: where a (layer, neuron) row names one activation."""
    return [s for s in LAYER_SITES if len(feature_shape(cfg, s)) == 1]


def _check_site_layers(cfg, site: str, layers):
    if site not in neuron_sites(cfg):
        raise ValueError(f"neuron attribution needs a layer site with one feature axis; got {site!r}, "
                         f"valid: {neuron_sites(cfg)}")
    return inputs.check_layers(cfg, layers, allow_empty=False)


def check_neurons(cfg, neurons, n_features: int, *, name: str = "neurons") -> np.ndarray:
    """(layer, neuron) rows [K, 2] (or one row [2]) of integers, checked before any cast: layers
    by ``core.inputs.check_layers``, neurons in 0..n_features-1. Returns int64 [K, 2]."""
    n = np.asarray(neurons)
    valid = f"valid rows are (layer in 0..{cfg.n_layers - 1}, neuron in 0..{n_features - 1})"
    if n.size == 0:
        return np.zeros((0, 2), np.int64)
    if n.shape[-1:] != (2,) or n.ndim not in (1, 2):
        raise ValueError(f"{name} must be (layer, neuron) rows [K, 2], got shape {n.shape}; {valid}")
    n = n.reshape(-1, 2)
    if n.dtype == np.bool_ or not np.issubdtype(n.dtype, np.integer):
        raise ValueError(f"{name} must be integer (layer, neuron) rows, got dtype {n.dtype.name} "
                         f"({n[:3].tolist()}); {valid}")
    inputs.check_layers(cfg, n[:, 0], name=f"{name} layers", unique=False)
    bad = n[:, 1][(n[:, 1] < 0) | (n[:, 1] >= n_features)]
    if bad.size:
        raise ValueError(f"{name} must be (layer in 0..{cfg.n_layers - 1}, neuron in 0..{n_features - 1}) rows; "
                         f"got neuron indices {sorted(set(bad.tolist()))[:5]}")
    return n.astype(np.int64)


def _positions_B(positions, B: int, T: int) -> np.ndarray:
    """One position per prompt: an int for every prompt, or [B] ints."""
    shape = () if np.ndim(positions) == 0 else (B,)
    pos = inputs.check_positions(positions, T, shape=shape)
    return np.broadcast_to(pos, (B,)).astype(np.int32)


def integrated_gradients(model, tokens, answers, *, attention_mask=None, site: str = "mlp_post", layers=None,
                         positions=-1, steps: int = 20, rule: str = "riemann", metric: str = "prob",
                         batch_size: int | None = None) -> IGResult:
    """IG of each prompt's ``answers`` metric at the last position w.r.t. every neuron of ``site``
    at ``positions`` (an int for every prompt, or [B]), one layer at a time (the other layers
    untouched), for ``layers`` (default all). ``batch_size`` chunks the path steps (None: all
    steps in one vmap)."""
    cfg = require_model(model, "integrated_gradients").cfg
    tokens, mask, answers = _check_prompts(model, tokens, attention_mask, answers)
    layers = _check_site_layers(cfg, site, layers)
    alphas, weights = path_points(steps, rule)
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {METRICS}")
    B, T = tokens.shape
    pos = _positions_B(positions, B, T)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
    F = feature_shape(cfg, site)[0]
    dtype = M.compute_dtype(model.params)
    probe = Scale(site, layer=layers[0], factor=jnp.ones(F, dtype), positions=jnp.asarray(pos[:, None]))
    ivmod.validate((probe,), cfg, B, T, dtype)
    chunk = int(batch_size or len(alphas))
    if _last_position_only(cfg, pos, T):
        attr, full, base = _ig_last_jit(cfg, model.params, jnp.asarray(tokens), jnp.asarray(mask),
                                        jnp.asarray(answers), jnp.asarray(layers), jnp.asarray(alphas),
                                        jnp.asarray(weights), site, metric, chunk)
    else:
        attr, full, base = _ig_jit(cfg, model.params, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(answers),
                                   jnp.asarray(pos), jnp.asarray(layers), jnp.asarray(alphas), jnp.asarray(weights),
                                   site, metric, chunk)
    return IGResult(np.asarray(attr), np.asarray(full), np.asarray(base), layers, site, pos, int(steps), rule, metric,
                    model_identity(model))


def _metric_of_factor(cfg, params, site, metric, tokens_T, mask_T, answer, position, layer, factor_F):
    iv = Scale(site, layer=layer, factor=factor_F.astype(M.compute_dtype(params)), positions=position[None])
    logits = M.run(cfg, params, tokens_T[None], mask_T[None], None, (iv,), (), ())[0]
    return answer_metric(logits[0, -1], answer, metric)


def _ig_impl(cfg, params, tokens_BT, mask_BT, answers_B, positions_B, layers_L, alphas_S, weights_S, site, metric,
             chunk):
    F = feature_shape(cfg, site)[0]

    def one(tokens_T, mask_T, answer, position, layer):
        f = lambda s_F: _metric_of_factor(cfg, params, site, metric, tokens_T, mask_T, answer, position, layer, s_F)
        grad_at = lambda a: jax.grad(f)(jnp.full((F,), a, F32))
        grads_SF = jax.lax.map(grad_at, alphas_S, batch_size=chunk)
        ig_F = jnp.einsum("s,sf->f", weights_S, grads_SF)
        return ig_F, f(jnp.ones((F,), F32)), f(jnp.zeros((F,), F32))

    per_layer = jax.vmap(one, in_axes=(None, None, None, None, 0))
    ig, full, base = jax.vmap(per_layer, in_axes=(0, 0, 0, 0, None))(tokens_BT, mask_BT, answers_B, positions_B,
                                                                     layers_L)
    return ig, full[:, 0], base


_ig_jit = jax.jit(_ig_impl, static_argnums=(0, 9, 10, 11))


# ---------------------------------------------------------------------------------------------
# last-position edits of a causal model: only the last token needs recomputing


def _last_position_only(cfg, positions_B, T: int) -> bool:
    """True when every edit sits at the last position of a causal model: the earlier positions'
    keys and values are then untouched by it and can be computed once."""
    pos = np.asarray(positions_B)
    return bool(cfg.causal) and T > 1 and bool(np.all(np.where(pos < 0, pos + T, pos) == T - 1))


def _prefix_state(cfg, params, tokens_BT, mask_BT):
    """Clean keys/values of positions 0..T-2 at every layer ([L, B, T-1, K, H] each), the last
    token's embedding [B, 1, D] and the attention context of that one query over all T keys."""
    B, T = tokens_BT.shape
    pos_BT = M.positions_from_mask(mask_BT)
    idx_BT = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    ctx = M.make_ctx(cfg, idx_BT, mask_BT, idx_BT, mask_BT, rope_pos_BT=pos_BT)
    x_BTD = M.embed(cfg, params, tokens_BT, pos_BT)
    _, _, (k, v) = M.run_layers(cfg, params, x_BTD, ctx, (), (), (), return_kv=True)
    ctx_last = M.make_ctx(cfg, idx_BT[:, -1:], mask_BT[:, -1:], idx_BT, mask_BT, rope_pos_BT=pos_BT[:, -1:])
    return (k[:, :, :-1], v[:, :, :-1]), x_BTD[:, -1:], ctx_last


def _last_logits(cfg, params, x_1D, kv, ctx_b, ivs):
    """Logits [V] of one prompt's last token run through every layer with ``ivs`` (one-token
    frame), attending to its clean prefix ``kv`` ([L, S0, K, H] each)."""
    ctx1 = jax.tree.map(lambda a: a[None], ctx_b)
    past = (kv[0][:, None], kv[1][:, None])
    y, _, _ = M.run_layers(cfg, params, x_1D[None], ctx1, ivs, (), (), past_kv=past)
    return M.final_logits(cfg, params, y)[0, -1]


def _ig_last_impl(cfg, params, tokens_BT, mask_BT, answers_B, layers_L, alphas_S, weights_S, site, metric, chunk):
    """``_ig_impl`` for edits at the last position of a causal model, on one-token runs over the
    cached prefix (the same numbers, about T times cheaper); prompts run one after another."""
    F = feature_shape(cfg, site)[0]
    dtype = M.compute_dtype(params)
    kv, x_B1D, ctx = _prefix_state(cfg, params, tokens_BT, mask_BT)

    def per_prompt(xs):
        x_1D, kv_b, ctx_b, answer = xs

        def f(layer, s_F):
            iv = Scale(site, layer=layer, factor=s_F.astype(dtype))
            return answer_metric(_last_logits(cfg, params, x_1D, kv_b, ctx_b, (iv,)), answer, metric)

        def one_layer(layer):
            grad_at = lambda a: jax.grad(f, argnums=1)(layer, jnp.full((F,), a, F32))
            grads_SF = jax.lax.map(grad_at, alphas_S, batch_size=chunk)
            return jnp.einsum("s,sf->f", weights_S, grads_SF), f(layer, jnp.ones((F,), F32)), f(layer, jnp.zeros((F,), F32))

        return jax.vmap(one_layer)(layers_L)

    kv_B = (jnp.moveaxis(kv[0], 1, 0), jnp.moveaxis(kv[1], 1, 0))
    ig, full, base = jax.lax.map(per_prompt, (x_B1D, kv_B, ctx, answers_B))
    return ig, full[:, 0], base


_ig_last_jit = jax.jit(_ig_last_impl, static_argnums=(0, 8, 9, 10))


# ---------------------------------------------------------------------------------------------
# knowledge neurons


def knowledge_neurons(attributions_PLF, threshold: float = 0.2, share: float = 0.5, layers=None) -> np.ndarray:
    """Knowledge neurons of one fact from the attributions of its P paraphrase prompts [P, L, F]:
    neurons above ``threshold`` x the prompt's max attribution in at least ``share`` of the prompts.
    Returns (layer, neuron) rows [K, 2] sorted by mean attribution, descending (``layers`` maps the
    L axis to model layers; default 0..L-1)."""
    a = np.asarray(attributions_PLF, np.float64)
    if a.ndim != 3 or a.shape[0] < 1:
        raise ValueError(f"attributions must be [prompts, layers, neurons], got shape {a.shape}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must lie in (0, 1], got {share}")
    layers = np.arange(a.shape[1]) if layers is None else np.asarray(layers)
    if layers.shape != (a.shape[1],):
        raise ValueError(f"layers must name the {a.shape[1]} layers of the attributions, got {layers.tolist()}")
    top = a.reshape(a.shape[0], -1).max(-1)  # [P]
    coarse = a > threshold * np.maximum(top, 0)[:, None, None]  # positive attributions only
    coarse &= a > 0
    kept = coarse.mean(0) >= share - 1e-9
    li, ni = np.nonzero(kept)
    order = np.argsort(-a.mean(0)[li, ni], kind="stable")
    return np.stack([layers[li[order]], ni[order]], 1).astype(np.int32).reshape(-1, 2)


def _scale_rows(x_BTF, layer_index, p):
    """Custom body: multiply the neurons of this layer by p["factor_LF"][layer] at p["position"]."""
    T = x_BTF.shape[1]
    pos = jnp.where(p["position"] < 0, p["position"] + T, p["position"])
    on_T = (jnp.arange(T) == pos) | p["all_positions"]
    scaled = x_BTF * p["factor_LF"][layer_index].astype(x_BTF.dtype)
    return jnp.where(on_T[None, :, None], scaled, x_BTF)


def neuron_factors(model, neurons, factor: float, *, site: str = "mlp_post") -> np.ndarray:
    """[L, F] multipliers: ``factor`` at the (layer, neuron) rows of ``neurons`` [K, 2], 1 elsewhere."""
    cfg = require_model(model, "neuron_factors").cfg
    _check_site_layers(cfg, site, None)
    F = feature_shape(cfg, site)[0]
    n = check_neurons(cfg, neurons, F)
    out = np.ones((cfg.n_layers, F), np.float32)
    out[n[:, 0], n[:, 1]] = factor
    return out


def scale_neurons(model, neurons, factor: float, *, site: str = "mlp_post", positions: int | None = -1) -> Custom:
    """One intervention multiplying the given (layer, neuron) rows by ``factor`` (0 suppresses, 2
    amplifies) at one position ``positions`` (an int; None: every position), across all layers at once."""
    cfg = require_model(model, "scale_neurons").cfg
    if positions is not None and (isinstance(positions, bool) or not isinstance(positions, (int, np.integer))):
        raise ValueError(f"positions must be one int position or None (every position), got {positions!r}")
    if positions is not None and not -cfg.n_ctx <= positions < cfg.n_ctx:
        raise ValueError(f"positions={positions} out of range for the model context n_ctx={cfg.n_ctx}")
    return Custom(site, _scale_rows, layer=jnp.arange(cfg.n_layers),
                  params={"factor_LF": jnp.asarray(neuron_factors(model, neurons, factor, site=site)),
                          "position": jnp.asarray(0 if positions is None else positions, jnp.int32),
                          "all_positions": jnp.asarray(positions is None)})


def matched_random_neurons(model, neurons, rng: np.random.Generator, *, site: str = "mlp_post",
                           exclude=None) -> np.ndarray:
    """As many random neurons of ``site`` in each layer as ``neurons`` [K, 2] has there (a control
    matched per layer), avoiding ``exclude`` (default: ``neurons`` themselves)."""
    cfg = require_model(model, "matched_random_neurons").cfg
    _check_site_layers(cfg, site, None)
    n_neurons = feature_shape(cfg, site)[0]
    n = check_neurons(cfg, neurons, n_neurons)
    ex = n if exclude is None else check_neurons(cfg, exclude, n_neurons, name="exclude")
    out = []
    for layer in np.unique(n[:, 0]):
        count = int((n[:, 0] == layer).sum())
        pool = np.setdiff1d(np.arange(n_neurons), ex[ex[:, 0] == layer, 1])
        if count > len(pool):
            raise ValueError(f"layer {layer}: cannot draw {count} random neurons from {len(pool)} left")
        out.extend((int(layer), int(j)) for j in rng.choice(pool, count, replace=False))
    return np.asarray(out, np.int32).reshape(-1, 2)


def answer_probs(model, tokens, answers, *, attention_mask=None, interventions=None) -> np.ndarray:
    """[B] probability of each prompt's answer token at the last position."""
    tokens, mask, answers = _check_prompts(model, tokens, attention_mask, answers)
    logits = M.forward(model.cfg, model.params, tokens, mask, interventions)[:, -1].astype(F32)
    return np.asarray(jnp.take_along_axis(jax.nn.softmax(logits, -1), jnp.asarray(answers)[:, None], 1)[:, 0])


def neuron_effect(model, tokens, answers, neurons, factor: float, *, attention_mask=None, site: str = "mlp_post",
                  positions: int | None = -1) -> np.ndarray:
    """[B] relative change of the answer probability, (p_edited - p) / p, when the neurons are
    multiplied by ``factor``."""
    before = answer_probs(model, tokens, answers, attention_mask=attention_mask)
    iv = scale_neurons(model, neurons, factor, site=site, positions=positions)
    after = answer_probs(model, tokens, answers, attention_mask=attention_mask, interventions=iv)
    return (after - before) / np.maximum(before, 1e-12)


def scaled_answer_probs(model, tokens, answers, factors_CLF, *, attention_mask=None, prompts_CP=None,
                        site: str = "mlp_post") -> np.ndarray:
    """[C, P] answer probabilities with the neurons of ``site`` multiplied by ``factors_CLF[c]``
    ([C, n_layers, F]; 1 leaves a neuron alone) at the last position, for the prompts
    ``prompts_CP[c]`` (row indices into ``tokens``; default every prompt for every c).

    Many edited runs at once, e.g. one fact's knowledge neurons and its random controls, each on
    that fact's prompts. On a causal model the clean keys/values of the positions before the last
    are computed once and every edited run is a one-token run over them."""
    cfg = require_model(model, "scaled_answer_probs").cfg
    tokens, mask, answers = _check_prompts(model, tokens, attention_mask, answers)
    _check_site_layers(cfg, site, None)
    B, T = tokens.shape
    F = feature_shape(cfg, site)[0]
    factors = np.asarray(factors_CLF)
    if factors.ndim != 3 or factors.shape[1:] != (cfg.n_layers, F):
        raise ValueError(f"factors_CLF must be [C, {cfg.n_layers}, {F}] (conditions, layers, neurons), "
                         f"got shape {factors.shape}")
    if not np.all(np.isfinite(factors)):
        raise ValueError("factors_CLF holds non-finite values")
    C = factors.shape[0]
    idx = np.broadcast_to(np.arange(B), (C, B)) if prompts_CP is None else np.asarray(prompts_CP)
    if idx.ndim != 2 or idx.shape[0] != C or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"prompts_CP must be integer row indices [C={C}, P], got {idx.dtype.name} {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= B):
        raise ValueError(f"prompts_CP must index the {B} prompts (0..{B - 1}), got {idx.min()}..{idx.max()}")
    dtype = M.compute_dtype(model.params)
    if not cfg.causal or T == 1:
        out = np.zeros(idx.shape, np.float32)
        for c in range(C):
            rows = idx[c]
            iv = Custom(site, _scale_rows, layer=jnp.arange(cfg.n_layers),
                        params={"factor_LF": jnp.asarray(factors[c], F32), "position": jnp.asarray(-1, jnp.int32),
                                "all_positions": jnp.asarray(False)})
            out[c] = answer_probs(model, tokens[rows], answers[rows], attention_mask=mask[rows], interventions=iv)
        return out
    return np.asarray(_scaled_last_jit(cfg, model.params, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(answers),
                                       jnp.asarray(factors, F32).astype(dtype), jnp.asarray(idx, jnp.int32), site))


def _scaled_last_impl(cfg, params, tokens_BT, mask_BT, answers_B, factors_CLF, idx_CP, site):
    kv, x_B1D, ctx = _prefix_state(cfg, params, tokens_BT, mask_BT)
    kv_B = (jnp.moveaxis(kv[0], 1, 0), jnp.moveaxis(kv[1], 1, 0))
    layers = jnp.arange(cfg.n_layers)

    def one_condition(xs):
        factor_LF, rows_P = xs
        iv = Custom(site, _scale_one_token, layer=layers, params={"factor_LF": factor_LF})

        def one_prompt(b):
            kv_b = (kv_B[0][b], kv_B[1][b])
            ctx_b = jax.tree.map(lambda a: a[b], ctx)
            logits = _last_logits(cfg, params, x_B1D[b], kv_b, ctx_b, (iv,))
            return answer_metric(logits, answers_B[b], "prob")

        return jax.vmap(one_prompt)(rows_P)

    return jax.lax.map(one_condition, (factors_CLF, idx_CP))


def _scale_one_token(x_BTF, layer_index, p):
    """Custom body for one-token runs: multiply this layer's neurons by p["factor_LF"][layer]."""
    return x_BTF * p["factor_LF"][layer_index].astype(x_BTF.dtype)


_scaled_last_jit = jax.jit(_scaled_last_impl, static_argnums=(0, 7))


def activation_matched_neurons(neurons, scores_LF, rng: np.random.Generator, *, pool: int = 10,
                               exclude=None) -> np.ndarray:
    """A random control for ``neurons`` [K, 2] matched on a per-neuron score (e.g. mean |activation|
    on the prompts the neurons were found on): for each (layer, j), one other neuron of the same
    layer drawn uniformly from the ``pool`` neurons whose ``scores_LF[layer]`` are nearest to
    ``scores_LF[layer, j]``, never one of ``exclude`` (default: ``neurons``) or one drawn already.
    ``scores_LF`` has one row per model layer. Returns int32 [K, 2] in the order of ``neurons``."""
    s = np.asarray(scores_LF, np.float64)
    if s.ndim != 2 or not np.all(np.isfinite(s)):
        raise ValueError(f"scores_LF must be a finite [layers, neurons] array, got shape {s.shape}")
    L, F = s.shape
    n = np.asarray(neurons)
    if n.size == 0:
        return np.zeros((0, 2), np.int32)
    if n.ndim != 2 or n.shape[1] != 2 or not np.issubdtype(n.dtype, np.integer):
        raise ValueError(f"neurons must be integer (layer, neuron) rows [K, 2], got {n.dtype.name} {n.shape}")
    if n[:, 0].min() < 0 or n[:, 0].max() >= L or n[:, 1].min() < 0 or n[:, 1].max() >= F:
        raise ValueError(f"neurons must lie in layers 0..{L - 1} and neurons 0..{F - 1}")
    if isinstance(pool, bool) or not isinstance(pool, (int, np.integer)) or pool < 1:
        raise ValueError(f"pool must be an integer >= 1, got {pool!r}")
    ex = n if exclude is None else np.asarray(exclude).reshape(-1, 2)
    taken = np.zeros((L, F), bool)
    taken[ex[:, 0], ex[:, 1]] = True
    out = np.zeros_like(n, dtype=np.int32)
    for i, (layer, j) in enumerate(n.tolist()):
        free = np.nonzero(~taken[layer])[0]
        if free.size == 0:
            raise ValueError(f"layer {layer}: no neuron left to draw")
        near = free[np.argsort(np.abs(s[layer, free] - s[layer, j]), kind="stable")[:pool]]
        pick = int(rng.choice(near))
        taken[layer, pick] = True
        out[i] = (layer, pick)
    return out
