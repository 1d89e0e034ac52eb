"""Skill neurons (Wang et al. 2022): neurons whose activation at a chosen position predicts the
task label on its own, and the accuracy drop when they are perturbed compared with random ones.

Predictivity of neuron i for class c (one-vs-rest) is a score that a constant neuron cannot push
above 0.5 whatever the class balance: the AUROC of the activation for "class c vs the rest"
(``metric="auroc"``, the default), or the balanced accuracy of thresholding the activation at its
training-set mean, the paper's baseline (``metric="balanced_accuracy"``; on a balanced task it is
the paper's accuracy, but on a skewed one the majority sets the threshold); either way the direction
is free, so the score is max(m, 1 - m). (Plain accuracy, max(acc, 1 - acc), rewards a neuron that
never fires with the share of the larger side: 0.99 for a class holding 1% of the examples.) A
neuron's skill score is its best class (for a binary task, the one score). ``heldout_score`` reads
the same neurons on new data with the class, direction and threshold fixed on the training split.
Works for decoders and encoders alike: activations come from any layer site via ``run_with_cache``.

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


METRICS = ("auroc", "balanced_accuracy")


@dataclass(frozen=True)
class Predictivity(Result):
    """Per-neuron predictivity (leading axes of the activations, e.g. layers, are kept): ``score``
    [..., F], ``per_class`` [..., C, F] (max(m, 1 - m) of the one-vs-rest ``metric``),
    ``baseline`` [..., F] (mean activation, the threshold of balanced accuracy) and ``above``
    [..., C, F] (True when a higher activation predicts class c)."""

    FORMAT: ClassVar[str] = "interpjax.skill_neurons.predictivity"

    score: np.ndarray
    per_class: np.ndarray
    baseline: np.ndarray
    above: np.ndarray
    metric: str = "auroc"


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
        return {"metric": self.predictivity.metric}

    @classmethod
    def from_artifact(cls, art):
        names = [f.name for f in dataclasses.fields(Predictivity) if f.name != "metric"]
        pred = {k: art.arrays.get(f"predictivity.{k}") for k in names}
        missing = [k for k in ("neurons", "scores") if k not in art.arrays] + [k for k, v in pred.items() if v is None]
        if missing:
            raise ArtifactError(f"missing tensors {missing} of SkillNeurons (tensors: {sorted(art.arrays)})")
        metric = art.meta.get("metric", "auroc")
        return cls(art.arrays["neurons"], art.arrays["scores"], Predictivity(**pred, metric=metric))

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


def _check_acts_labels(acts_NF, labels_N, n_classes):
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
    return acts, labels, C


def _one_vs_rest(acts, labels, C, metric, baseline):
    """[..., C, F] one-vs-rest score m (0.5 = no information; > 0.5: higher activation -> class c).
    A class with no example (or no other) scores 0.5."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {list(METRICS)}")
    onehot = (labels[:, None] == np.arange(C)[None]).astype(np.float64)  # [N, C]
    n_pos = onehot.sum(0)[:, None]  # [C, 1]
    n_neg = labels.size - n_pos
    ok = (n_pos > 0) & (n_neg > 0)
    pos, neg = np.maximum(n_pos, 1), np.maximum(n_neg, 1)
    if metric == "auroc":  # Mann-Whitney: P(act_c > act_rest) + P(tie) / 2, from average ranks
        from scipy.stats import rankdata

        ranks = rankdata(acts, axis=-2)  # [..., N, F]
        m = (np.einsum("...nf,nc->...cf", ranks, onehot) - n_pos * (n_pos + 1) / 2) / (pos * neg)
    else:  # balanced accuracy of "above the baseline means class c"
        high = (acts > baseline[..., None, :]).astype(np.float64)
        tpr = np.einsum("...nf,nc->...cf", high, onehot) / pos
        tnr = np.einsum("...nf,nc->...cf", 1 - high, 1 - onehot) / neg
        m = (tpr + tnr) / 2
    return np.where(ok, m, 0.5)


def _best_class(per_class):
    """Each neuron's class: for a binary task class 1 (one-vs-rest of class 0 is the same split)."""
    C = per_class.shape[-2]
    return np.ones(per_class.shape[:-2] + per_class.shape[-1:], int) if C == 2 else per_class.argmax(-2)


def predictivity(acts_NF, labels_N, n_classes: int | None = None, *, metric: str = "auroc") -> Predictivity:
    """Per-neuron predictivity of ``labels_N`` (class ids) from activations ``[..., N, F]``:
    one-vs-rest AUROC or balanced accuracy, max(m, 1 - m), best class per neuron."""
    acts, labels, C = _check_acts_labels(acts_NF, labels_N, n_classes)
    baseline = acts.mean(-2)
    m = _one_vs_rest(acts, labels, C, metric, baseline)
    per_class = np.maximum(m, 1 - m)
    best = _best_class(per_class)
    score = np.take_along_axis(per_class, best[..., None, :], -2)[..., 0, :]
    return Predictivity(score, per_class, baseline, m >= 0.5, metric)


def heldout_score(pred: Predictivity, acts_NF, labels_N) -> np.ndarray:
    """[..., F] predictivity of every neuron on new data (a held-out split) with its class, its
    direction and (balanced accuracy) its threshold fixed by ``pred`` from the training split: a
    neuron that only fitted noise there scores about 0.5 here, and may score below it."""
    C = pred.per_class.shape[-2]
    acts, labels, _ = _check_acts_labels(acts_NF, labels_N, C)
    if acts.shape[:-2] + acts.shape[-1:] != pred.score.shape:
        raise ValueError(f"activations {acts.shape} do not match the predictivity's neurons {pred.score.shape} (+ N axis)")
    m = _one_vs_rest(acts, labels, C, pred.metric, np.asarray(pred.baseline, np.float64))
    oriented = np.where(pred.above, m, 1 - m)
    best = _best_class(pred.per_class)
    return np.take_along_axis(oriented, best[..., None, :], -2)[..., 0, :]


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


def find(acts_LNF, labels_N, k: int, n_classes: int | None = None, *, metric: str = "auroc") -> SkillNeurons:
    """The ``k`` most predictive neurons over all layers of ``acts_LNF`` [L, N, F]."""
    pred = predictivity(acts_LNF, labels_N, n_classes, metric=metric)
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


def size_matched_neurons(std_LF, neurons, *, seed: int = 0, window: int = 10, exclude=None) -> np.ndarray:
    """For each chosen (layer, neuron) of ``neurons`` [K, 2], a random other neuron of the same
    layer drawn among the ``window`` whose activation std (``std_LF`` [L, F]) is closest in rank:
    a control that gets noise of the same size in the same layers. Avoids ``exclude`` (default:
    ``neurons``) and draws each neuron at most once."""
    std = np.asarray(std_LF, np.float64)
    if std.ndim != 2 or not np.isfinite(std).all():
        raise ValueError(f"std_LF must be a finite [L, F] array, got shape {std.shape}")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    L, F = std.shape
    n = np.asarray(neurons)
    if n.ndim != 2 or n.shape[1] != 2 or not np.issubdtype(n.dtype, np.integer) or \
            (n.size and (n.min() < 0 or n[:, 0].max() >= L or n[:, 1].max() >= F)):
        raise ValueError(f"neurons must be integer (layer, index) pairs [K, 2] inside [{L}, {F}], got {n.tolist()[:4]}")
    ex = n if exclude is None else np.asarray(exclude).reshape(-1, 2)
    rng = np.random.default_rng(seed)
    taken = np.zeros((L, F), bool)
    taken[ex[:, 0], ex[:, 1]] = True
    rank = np.empty((L, F), int)
    rank[np.arange(L)[:, None], np.argsort(std, axis=1, kind="stable")] = np.arange(F)[None]
    out = np.empty_like(n)
    for i in rng.permutation(len(n)):
        layer, j = int(n[i, 0]), int(n[i, 1])
        free = np.flatnonzero(~taken[layer])
        if free.size == 0:
            raise ValueError(f"layer {layer}: no neuron left to match {len(n)} chosen ones")
        near = free[np.argsort(np.abs(rank[layer, free] - rank[layer, j]), kind="stable")[:window]]
        pick = int(rng.choice(near))
        taken[layer, pick] = True
        out[i] = (layer, pick)
    return out


def noise_interventions(model, neurons, std_LF, key, batch: int, seq: int, *, site="mlp_post",
                        scale: float = 1.0, dtype=None, all_layers: bool = False) -> tuple:
    """One ``Add`` per touched layer adding Gaussian noise (std = ``scale`` x the neuron's own
    activation std ``std_LF``) to the chosen (layer, neuron) rows at every position of every
    example of a [batch, seq] input; ``dtype`` defaults to the model's compute dtype. With
    ``all_layers`` every layer gets an ``Add`` (zero where untouched), so calls with different
    neuron sets share one compiled program."""
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
    for layer in (range(cfg.n_layers) if all_layers else np.unique(neurons[:, 0])):
        idx = neurons[neurons[:, 0] == layer, 1]
        sel = np.zeros(F, np.float32)
        sel[idx] = std[layer, idx] * scale
        key, sub = jax.random.split(key)
        noise = jax.random.normal(sub, (batch, seq, F), jnp.float32) * jnp.asarray(sel)
        ivs.append(Add(site=site, layer=int(layer), vector=noise.reshape((batch, seq) + fshape).astype(dtype)))
    return tuple(ivs)
