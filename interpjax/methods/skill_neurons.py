"""Skill neurons (Wang et al. 2022): neurons whose activation at a chosen position predicts the
task label on its own, and the accuracy drop when they are perturbed compared with random ones.

Predictivity of neuron i for class c: threshold the activation at its training-set mean (the
baseline) and read "above" as c (or, if better, "below" as c); the accuracy of that one-neuron
classifier, one-vs-rest, is max(acc, 1 - acc). A neuron's skill score is its best predictivity over
classes (for a binary task, the one score). Works for decoders and encoders alike: activations
come from any layer site at any position via ``run_with_cache``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..core import model as M
from ..core.config import Config
from ..core.interventions import Add
from ..core.sites import LAYER_SITES, check_site, feature_shape


def predictivity(acts_NF, labels_N, n_classes: int | None = None) -> dict:
    """Per-neuron predictivity of ``labels_N`` from activations ``[..., N, F]`` (leading axes, e.g.
    layers, are kept): ``score`` [..., F], ``per_class`` [..., C, F], ``baseline`` [..., F] (mean
    activation) and ``above`` [..., C, F] (True when "activation above baseline" predicts class c)."""
    acts = np.asarray(acts_NF, np.float64)
    labels = np.asarray(labels_N)
    if acts.ndim < 2:
        raise ValueError(f"activations must be [..., N, F], got shape {acts.shape}")
    N = acts.shape[-2]
    if labels.shape != (N,):
        raise ValueError(f"labels must be [N={N}] like the activations, got shape {labels.shape}")
    if not np.isfinite(acts).all():
        raise ValueError("activations contain NaN or inf")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    C = int(labels.max()) + 1 if n_classes is None else n_classes
    if C < 2 or labels.min() < 0 or labels.max() >= C:
        raise ValueError(f"labels must lie in 0..{C - 1} with at least 2 classes; got {sorted(set(labels.tolist()))[:10]}")
    baseline = acts.mean(-2)
    high = (acts > baseline[..., None, :]).astype(np.float64)  # [..., N, F]
    onehot = (labels[:, None] == np.arange(C)[None]).astype(np.float64)  # [N, C]
    acc = (np.einsum("...nf,nc->...cf", high, onehot) + np.einsum("...nf,nc->...cf", 1 - high, 1 - onehot)) / N
    per_class = np.maximum(acc, 1 - acc)
    classes = per_class[..., 1:, :] if C == 2 else per_class  # binary: one-vs-rest of class 1
    return {"score": classes.max(-2), "per_class": per_class, "baseline": baseline, "above": acc >= 0.5}


def _site(site):
    check_site(site)
    if site not in LAYER_SITES or site in ("attn_scores", "pattern"):
        raise ValueError(f"skill neurons live on per-position layer sites; got {site!r} (e.g. mlp_post, resid_post)")


def activations_at(cfg: Config, params: dict, tokens, positions_B, attention_mask=None, *, site="mlp_post",
                   token_type_ids=None) -> np.ndarray:
    """``site`` activations of every layer at one position per example: [L, N, F] (heads flattened)."""
    _site(site)
    tokens = np.asarray(tokens, np.int32)
    pos = np.asarray(positions_B, np.int32)
    if pos.shape != (tokens.shape[0],):
        raise ValueError(f"positions_B must hold one position per example, shape ({tokens.shape[0]},); got {pos.shape}")
    T = tokens.shape[1]
    if pos.min() < -T or pos.max() >= T:
        raise ValueError(f"positions {pos.tolist()[:5]}... out of range for {T} tokens")
    kw = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
    _, cache = M.run_with_cache(cfg, params, tokens, sites=(site,), attention_mask=attention_mask, **kw)
    x = np.asarray(cache[site])  # [L, B, T, ...]
    x = x[:, np.arange(len(pos)), pos % T]
    return x.reshape(x.shape[0], x.shape[1], -1)


def find(acts_LNF, labels_N, k: int, n_classes: int | None = None) -> dict:
    """The ``k`` most predictive neurons over all layers: ``neurons`` [k, 2] (layer, index) sorted by
    score, ``scores`` [k], and the full ``predictivity`` result."""
    pred = predictivity(acts_LNF, labels_N, n_classes)
    score = pred["score"]  # [L, F]
    if not 1 <= k <= score.size:
        raise ValueError(f"k={k} must be in 1..{score.size} (layers x neurons)")
    order = np.argsort(-score, axis=None, kind="stable")[:k]
    layers, idx = np.unravel_index(order, score.shape)
    return {"neurons": np.stack([layers, idx], 1), "scores": score[layers, idx], "predictivity": pred}


def random_neurons(cfg: Config, site: str, k: int, seed: int = 0, exclude=None) -> np.ndarray:
    """``k`` random (layer, neuron) pairs at ``site`` (avoiding ``exclude``), the control group."""
    F = int(np.prod(feature_shape(cfg, site)))
    total = cfg.n_layers * F
    banned = set() if exclude is None else {int(l) * F + int(i) for l, i in np.asarray(exclude)}
    if k > total - len(banned):
        raise ValueError(f"cannot draw {k} random neurons from {total - len(banned)} available")
    pool = np.setdiff1d(np.arange(total), np.fromiter(banned, int, len(banned)))
    flat = np.random.default_rng(seed).choice(pool, k, replace=False)
    return np.stack([flat // F, flat % F], 1)


def noise_interventions(cfg: Config, neurons_K2, std_LF, key, batch: int, seq: int, *, site="mlp_post",
                        scale: float = 1.0, dtype=jnp.float32) -> tuple:
    """One ``Add`` per touched layer adding Gaussian noise (std = ``scale`` x the neuron's own
    activation std ``std_LF``) to the chosen neurons at every position of every example."""
    _site(site)
    neurons = np.asarray(neurons_K2, np.int64).reshape(-1, 2)
    fshape = feature_shape(cfg, site)
    F = int(np.prod(fshape))
    std = np.asarray(std_LF)
    if std.shape != (cfg.n_layers, F):
        raise ValueError(f"std_LF must be [n_layers={cfg.n_layers}, {F}], got {std.shape}")
    ivs = []
    for layer in np.unique(neurons[:, 0]):
        idx = neurons[neurons[:, 0] == layer, 1]
        sel = np.zeros(F)
        sel[idx] = std[layer, idx] * scale
        key, sub = jax.random.split(key)
        noise = jax.random.normal(sub, (batch, seq, F)) * jnp.asarray(sel)
        ivs.append(Add(site=site, layer=int(layer), vector=noise.reshape((batch, seq) + fshape).astype(dtype)))
    return tuple(ivs)
