"""Skill neurons (Wang et al. 2022): neurons whose activation at a chosen position predicts the
task label on its own, and the accuracy drop when they are perturbed compared with random ones.

Predictivity of neuron i for class c: threshold the activation at its training-set mean (the
baseline) and read "above" as c (or, if better, "below" as c); the accuracy of that one-neuron
classifier, one-vs-rest, is max(acc, 1 - acc). A neuron's skill score is its best predictivity over
classes (for a binary task, the one score). Works for decoders and encoders alike: activations
come from any layer site at any position via ``run_with_cache``.

``labels`` here are class ids 0..C-1 of a classification task (not token ids: those are ``answers``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..core import inputs
from ..core import model as M
from ..core.handle import require_model
from ..core.interventions import Add
from ..core.sites import ATTN_SITES, LAYER_SITES, check_site, feature_shape
from ..io.artifacts import ArtifactError
from ..io.plots import save_drawing
from .attribution import check_neurons
from .result import Result


@dataclass(frozen=True)
class Predictivity(Result):
    """Per-neuron predictivity (leading axes of the activations, e.g. layers, are kept): ``score``
    [..., F], ``per_class`` [..., C, F], ``baseline`` [..., F] (mean activation) and ``above``
    [..., C, F] (True when "activation above baseline" predicts class c)."""

    FORMAT: ClassVar[str] = "interpjax.skill_neurons.predictivity"

    score: np.ndarray
    per_class: np.ndarray
    baseline: np.ndarray
    above: np.ndarray


@dataclass(frozen=True)
class SkillNeurons(Result):
    """The ``k`` most predictive neurons: ``neurons`` [k, 2] (layer, index) sorted by ``scores``
    [k], descending, and the full ``predictivity`` of every neuron ([L, F] scores)."""

    FORMAT: ClassVar[str] = "interpjax.skill_neurons"

    neurons: np.ndarray
    scores: np.ndarray
    predictivity: Predictivity

    def artifact_tensors(self) -> dict:
        pred = {f"predictivity.{k}": v for k, v in self.predictivity.artifact_tensors().items()}
        return {"neurons": self.neurons, "scores": self.scores, **pred}

    def artifact_meta(self) -> dict:
        return {}

    @classmethod
    def from_artifact(cls, art):
        pred = {f.name: art.arrays.get(f"predictivity.{f.name}") for f in dataclasses.fields(Predictivity)}
        missing = [k for k in ("neurons", "scores") if k not in art.arrays] + [k for k, v in pred.items() if v is None]
        if missing:
            raise ArtifactError(f"missing tensors {missing} of SkillNeurons (tensors: {sorted(art.arrays)})")
        return cls(art.arrays["neurons"], art.arrays["scores"], Predictivity(**pred))

    def draw(self, ax):
        """Every neuron's skill score, one row per layer (the chosen ones marked)."""
        score = np.atleast_2d(self.predictivity.score)
        im = ax.imshow(score, aspect="auto", origin="lower", cmap="viridis", vmin=0.5, vmax=1.0,
                       interpolation="nearest")
        ax.scatter(self.neurons[:, 1], self.neurons[:, 0], s=8, c="red", marker="x", label="top-k")
        ax.set(xlabel="neuron", ylabel="layer", title="skill-neuron predictivity")
        ax.figure.colorbar(im, ax=ax, label="predictivity")
        return ax

    def plot(self, path) -> Path:
        return save_drawing(self.draw, path, figsize=(8.0, 3.0))


def predictivity(acts_NF, labels_N, n_classes: int | None = None) -> Predictivity:
    """Per-neuron predictivity of ``labels_N`` (class ids) from activations ``[..., N, F]``."""
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
    if n_classes is not None and (isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer))):
        raise ValueError(f"n_classes must be an integer (or None: from the labels), got {n_classes!r}")
    C = int(labels.max()) + 1 if n_classes is None else int(n_classes)
    if C < 2 or labels.min() < 0 or labels.max() >= C:
        raise ValueError(f"labels must lie in 0..{C - 1} with at least 2 classes; got {sorted(set(labels.tolist()))[:10]}")
    baseline = acts.mean(-2)
    high = (acts > baseline[..., None, :]).astype(np.float64)  # [..., N, F]
    onehot = (labels[:, None] == np.arange(C)[None]).astype(np.float64)  # [N, C]
    acc = (np.einsum("...nf,nc->...cf", high, onehot) + np.einsum("...nf,nc->...cf", 1 - high, 1 - onehot)) / N
    per_class = np.maximum(acc, 1 - acc)
    classes = per_class[..., 1:, :] if C == 2 else per_class  # binary: one-vs-rest of class 1
    return Predictivity(classes.max(-2), per_class, baseline, acc >= 0.5)


def _site(site):
    check_site(site)
    if site not in LAYER_SITES or site in ATTN_SITES:
        valid = [s for s in LAYER_SITES if s not in ATTN_SITES]
        raise ValueError(f"skill neurons live on per-position layer sites; got {site!r}, valid: {valid}")


def neuron_activations(model, tokens, positions, *, attention_mask=None, site="mlp_post",
                   token_type_ids=None) -> np.ndarray:
    """``site`` activations of every layer at one position per example (``positions`` [B]):
    [L, B, F] (heads flattened into F)."""
    _site(site)
    require_model(model, "neuron_activations")
    tokens = np.asarray(inputs.check_tokens(model.cfg, tokens))
    B, T = tokens.shape
    pos = inputs.check_positions(positions, T, shape=(B,))
    kw = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
    _, cache = M.run_with_cache(model.cfg, model.params, tokens, sites=(site,), attention_mask=attention_mask, **kw)
    x = np.asarray(cache[site])  # [L, B, T, ...]
    x = x[:, np.arange(B), pos % T]
    return x.reshape(x.shape[0], x.shape[1], -1)


def find(acts_LNF, labels_N, k: int, n_classes: int | None = None) -> SkillNeurons:
    """The ``k`` most predictive neurons over all layers of ``acts_LNF`` [L, N, F]."""
    pred = predictivity(acts_LNF, labels_N, n_classes)
    score = pred.score  # [L, F]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= score.size:
        raise ValueError(f"k={k!r} must be an integer in 1..{score.size} (layers x neurons)")
    order = np.argsort(-score, axis=None, kind="stable")[:k]
    layers, idx = np.unravel_index(order, score.shape)
    return SkillNeurons(np.stack([layers, idx], 1), score[layers, idx], pred)


def random_neurons(model, k: int, *, site: str = "mlp_post", seed: int = 0, exclude=None) -> np.ndarray:
    """``k`` random (layer, neuron) pairs over every layer of ``site`` (avoiding ``exclude``): the
    control group. (For a per-layer matched draw see ``attribution.matched_random_neurons``.)"""
    _site(site)
    cfg = require_model(model, "random_neurons").cfg
    F = int(np.prod(feature_shape(cfg, site)))
    total = cfg.n_layers * F
    ex = np.zeros((0, 2), np.int64) if exclude is None else check_neurons(cfg, exclude, F, name="exclude")
    banned = {int(l) * F + int(i) for l, i in ex}
    if k > total - len(banned):
        raise ValueError(f"cannot draw {k} random neurons from {total - len(banned)} available")
    pool = np.setdiff1d(np.arange(total), np.fromiter(banned, int, len(banned)))
    flat = np.random.default_rng(seed).choice(pool, k, replace=False)
    return np.stack([flat // F, flat % F], 1)


def noise_interventions(model, neurons, std_LF, key, batch: int, seq: int, *, site="mlp_post",
                        scale: float = 1.0, dtype=None) -> tuple:
    """One ``Add`` per touched layer adding Gaussian noise (std = ``scale`` x the neuron's own
    activation std ``std_LF``) to the chosen (layer, neuron) rows at every position of every
    example of a [batch, seq] input; ``dtype`` defaults to the model's compute dtype."""
    _site(site)
    cfg = require_model(model, "noise_interventions").cfg
    dtype = M.compute_dtype(model.params) if dtype is None else dtype
    fshape = feature_shape(cfg, site)
    F = int(np.prod(fshape))
    neurons = check_neurons(cfg, neurons, F)
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
