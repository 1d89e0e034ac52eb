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

import jax
import jax.numpy as jnp
import numpy as np

from ..core import interventions as ivmod
from ..core import model as M
from ..core.config import Config
from ..core.interventions import Custom, Scale
from ..core.sites import LAYER_SITES, feature_shape

F32 = jnp.float32
METRICS = ("prob", "logprob", "logit")
RULES = ("riemann", "trapezoid")


def path_points(steps: int, rule: str = "riemann"):
    """(alphas, weights) of the quadrature of int_0^1 g(alpha) d alpha with ``steps`` intervals."""
    if not isinstance(steps, (int, np.integer)) or steps < 1:
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


@dataclass
class IGResult:
    """``attributions`` [B, L, F] per prompt, layer and neuron; ``full`` [B] the metric of the
    clean run; ``baseline`` [B, L] with that layer's neurons zeroed (the path's start)."""

    attributions: np.ndarray
    full: np.ndarray
    baseline: np.ndarray
    layers: tuple
    site: str
    steps: int
    rule: str

    def completeness_gap(self) -> np.ndarray:
        """[B, L] relative gap |sum_j IG_j - (f(a) - f(0))| / |f(a) - f(0)|."""
        diff = self.full[:, None] - self.baseline
        return np.abs(self.attributions.sum(-1) - diff) / np.maximum(np.abs(diff), 1e-12)


def _check_prompts(cfg: Config, tokens, attention_mask, answers):
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, seq], got shape {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    mask = np.ones(tokens.shape, np.int32) if attention_mask is None else np.asarray(attention_mask, np.int32)
    if mask.shape != tokens.shape:
        raise ValueError(f"attention_mask has shape {mask.shape}; expected {tokens.shape} like tokens")
    answers = np.atleast_1d(np.asarray(answers))
    if answers.shape != (tokens.shape[0],):
        raise ValueError(f"answers must be one token id per prompt: shape ({tokens.shape[0]},), got {answers.shape}")
    if answers.min() < 0 or answers.max() >= cfg.vocab_size:
        raise ValueError(f"answer ids must lie in 0..{cfg.vocab_size - 1}")
    return tokens.astype(np.int32), mask, answers.astype(np.int32)


def _check_site_layers(cfg: Config, site: str, layers):
    if site not in LAYER_SITES or len(feature_shape(cfg, site)) != 1:
        valid = [s for s in LAYER_SITES if len(feature_shape(cfg, s)) == 1]
        raise ValueError(f"neuron attribution needs a layer site with one feature axis; got {site!r}, valid: {valid}")
    layers = tuple(range(cfg.n_layers)) if layers is None else tuple(int(l) for l in np.atleast_1d(layers))
    bad = [l for l in layers if not 0 <= l < cfg.n_layers]
    if bad or not layers:
        raise ValueError(f"layers {bad or '()'} invalid: valid layers are 0..{cfg.n_layers - 1}")
    return layers


def integrated_gradients(cfg: Config, params: dict, tokens, answers, *, attention_mask=None, site: str = "mlp_post",
                         layers=None, position: int = -1, steps: int = 20, rule: str = "riemann",
                         metric: str = "prob", batch_size: int | None = None) -> IGResult:
    """IG of each prompt's ``answers`` metric at the last position w.r.t. every neuron of ``site``
    at ``position``, one layer at a time (the other layers untouched), for ``layers`` (default all).
    ``batch_size`` chunks the path steps (None: all steps in one vmap)."""
    tokens, mask, answers = _check_prompts(cfg, tokens, attention_mask, answers)
    layers = _check_site_layers(cfg, site, layers)
    alphas, weights = path_points(steps, rule)
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {METRICS}")
    T = tokens.shape[1]
    if not -T <= position < T:
        raise ValueError(f"position {position} out of range: valid positions are {-T}..{T - 1}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    F = feature_shape(cfg, site)[0]
    probe = Scale(site, layer=layers[0], factor=jnp.ones(F, M.compute_dtype(params)), positions=jnp.array([position]))
    ivmod.validate((probe,), cfg, 1, T, M.compute_dtype(params))
    attr, full, base = _ig_jit(cfg, params, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(answers),
                               jnp.asarray(layers), jnp.asarray(alphas), jnp.asarray(weights), site, int(position),
                               metric, batch_size or len(alphas))
    return IGResult(np.asarray(attr), np.asarray(full), np.asarray(base), layers, site, int(steps), rule)


def _metric_of_factor(cfg, params, site, position, metric, tokens_T, mask_T, answer, layer, factor_F):
    iv = Scale(site, layer=layer, factor=factor_F.astype(M.compute_dtype(params)), positions=jnp.array([position]))
    logits = M.run(cfg, params, tokens_T[None], mask_T[None], None, (iv,), (), ())[0]
    return answer_metric(logits[0, -1], answer, metric)


def _ig_impl(cfg, params, tokens_BT, mask_BT, answers_B, layers_L, alphas_S, weights_S, site, position, metric, chunk):
    F = feature_shape(cfg, site)[0]

    def one(tokens_T, mask_T, answer, layer):
        f = lambda s_F: _metric_of_factor(cfg, params, site, position, metric, tokens_T, mask_T, answer, layer, s_F)
        grad_at = lambda a: jax.grad(f)(jnp.full((F,), a, F32))
        grads_SF = jax.lax.map(grad_at, alphas_S, batch_size=chunk)
        ig_F = jnp.einsum("s,sf->f", weights_S, grads_SF)
        return ig_F, f(jnp.ones((F,), F32)), f(jnp.zeros((F,), F32))

    per_layer = jax.vmap(one, in_axes=(None, None, None, 0))
    ig, full, base = jax.vmap(per_layer, in_axes=(0, 0, 0, None))(tokens_BT, mask_BT, answers_B, layers_L)
    return ig, full[:, 0], base


_ig_jit = jax.jit(_ig_impl, static_argnums=(0, 8, 9, 10, 11))


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


def neuron_factors(cfg: Config, neurons_K2, factor: float, site: str = "mlp_post") -> np.ndarray:
    """[L, F] multipliers: ``factor`` at the (layer, neuron) rows, 1 elsewhere."""
    F = feature_shape(cfg, site)[0]
    n = np.asarray(neurons_K2, np.int64).reshape(-1, 2)
    if n.size and (n[:, 0].min() < 0 or n[:, 0].max() >= cfg.n_layers or n[:, 1].min() < 0 or n[:, 1].max() >= F):
        raise ValueError(f"neurons must be (layer in 0..{cfg.n_layers - 1}, neuron in 0..{F - 1}) rows")
    out = np.ones((cfg.n_layers, F), np.float32)
    out[n[:, 0], n[:, 1]] = factor
    return out


def scale_neurons(cfg: Config, neurons_K2, factor: float, *, site: str = "mlp_post", position: int | None = -1) -> Custom:
    """One intervention multiplying the given (layer, neuron) rows by ``factor`` (0 suppresses, 2
    amplifies) at ``position`` (None: every position), across all layers at once."""
    _check_site_layers(cfg, site, None)
    return Custom(site, _scale_rows, layer=jnp.arange(cfg.n_layers),
                  params={"factor_LF": jnp.asarray(neuron_factors(cfg, neurons_K2, factor, site)),
                          "position": jnp.asarray(0 if position is None else position, jnp.int32),
                          "all_positions": jnp.asarray(position is None)})


def random_neurons(rng: np.random.Generator, neurons_K2, n_neurons: int, exclude=None) -> np.ndarray:
    """As many random neurons per layer as ``neurons_K2`` has (a matched control), avoiding ``exclude``."""
    n = np.asarray(neurons_K2, np.int64).reshape(-1, 2)
    ex = n if exclude is None else np.asarray(exclude, np.int64).reshape(-1, 2)
    out = []
    for layer in np.unique(n[:, 0]):
        count = int((n[:, 0] == layer).sum())
        pool = np.setdiff1d(np.arange(n_neurons), ex[ex[:, 0] == layer, 1])
        if count > len(pool):
            raise ValueError(f"layer {layer}: cannot draw {count} random neurons from {len(pool)} left")
        out.extend((int(layer), int(j)) for j in rng.choice(pool, count, replace=False))
    return np.asarray(out, np.int32).reshape(-1, 2)


def answer_probs(cfg: Config, params: dict, tokens, answers, attention_mask=None, interventions=None) -> np.ndarray:
    """[B] probability of each prompt's answer token at the last position."""
    tokens, mask, answers = _check_prompts(cfg, tokens, attention_mask, answers)
    logits = M.forward(cfg, params, tokens, mask, interventions)[:, -1].astype(F32)
    return np.asarray(jnp.take_along_axis(jax.nn.softmax(logits, -1), jnp.asarray(answers)[:, None], 1)[:, 0])


def neuron_effect(cfg: Config, params: dict, tokens, answers, neurons_K2, factor: float, *, attention_mask=None,
                  site: str = "mlp_post", position: int | None = -1) -> np.ndarray:
    """[B] relative change of the answer probability, (p_edited - p) / p, when the neurons are
    multiplied by ``factor``."""
    before = answer_probs(cfg, params, tokens, answers, attention_mask)
    iv = scale_neurons(cfg, neurons_K2, factor, site=site, position=position)
    after = answer_probs(cfg, params, tokens, answers, attention_mask, iv)
    return (after - before) / np.maximum(before, 1e-12)
