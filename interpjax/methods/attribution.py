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
    attr, full, base = _ig_jit(cfg, model.params, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(answers),
                               jnp.asarray(pos), jnp.asarray(layers), jnp.asarray(alphas), jnp.asarray(weights), site,
                               metric, int(batch_size or len(alphas)))
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
