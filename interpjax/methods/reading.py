"""Representation reading (RepE / LAT): reading vectors per layer from paired contrast texts,
held-out accuracy per layer, token x layer scans rendered as a self-contained coloured HTML page
and a heatmap PNG, and a PCA view of several concepts' activations across layers.

A score is the standardised projection ``((h - center_L) . u_L) / scale_L`` of an activation ``h``
at layer L onto the unit reading direction ``u_L``; ``center_L`` is the mean training activation
and ``scale_L`` the spread of the training projections, so 0 is "neither" and +/-1 is typical.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..io.artifacts import IDENTITY_KEYS, ArtifactError, atomic_write_text, check_model, model_identity
from .result import Result
from .steering import (SteeringVector, activations_at, check_contrast, check_site_layer, identity_of, legacy_v1,
                       mean_diff_direction, pca_direction)

FORMAT = "interpjax.reading"
VERSION = 2  # 1: the pre-artifact layout ("interpjax.reading/1", tensors directions / center / scale)
METHODS = ("pca", "mean_diff")


@dataclass(frozen=True)
class ReadingVectors(Result):
    """Unit reading directions [L, D] at ``site`` for ``layers``, with the centring and scale that
    turn projections into scores. A ``Result``: ``.save(path)``, ``ReadingVectors.load(path, model=)``."""

    FORMAT = FORMAT
    VERSION = VERSION

    directions_LD: np.ndarray
    center_LD: np.ndarray
    scale_L: np.ndarray
    layers: tuple
    site: str
    method: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if any(isinstance(l, (bool, np.bool_)) or not isinstance(l, (int, np.integer)) for l in self.layers):
            raise ValueError(f"layers must be ints, got {list(self.layers)!r}")

    def scores(self, acts_LND) -> np.ndarray:
        """Scores [L, N] of activations [L, N, D] (one row per layer of ``self.layers``)."""
        acts = np.asarray(acts_LND, np.float32)
        if acts.ndim != 3 or acts.shape[0] != len(self.layers) or acts.shape[2] != self.directions_LD.shape[1]:
            raise ValueError(f"activations must be [L={len(self.layers)}, N, D={self.directions_LD.shape[1]}], "
                             f"got {acts.shape}")
        proj = np.einsum("lnd,ld->ln", acts - self.center_LD[:, None], self.directions_LD)
        return proj / self.scale_L[:, None]

    def steering(self, layer: int) -> SteeringVector:
        """The reading direction at ``layer`` as a steering vector, scaled so that coeff 1 is the mean
        positive-vs-negative gap along it."""
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer not in self.layers:
            raise ValueError(f"layer {layer!r} has no reading vector; layers (ints): {list(self.layers)}")
        i = self.layers.index(layer)
        gap = float(self.meta.get("mean_gap", [1.0] * len(self.layers))[i])
        meta = {k: v for k, v in self.meta.items() if k not in ("mean_gap", "train_pair_accuracy", "explained_variance")}
        return SteeringVector(self.directions_LD[i] * gap, self.site, int(layer), self.method,
                              {**meta, "label": self.meta.get("label", self.method)})

    # -- the artifact: arrays as tensors; layers, site, method and meta (less the model identity) as JSON

    def artifact_identity(self) -> dict | None:
        return identity_of(self.meta)

    def with_identity(self, identity: dict) -> "ReadingVectors":
        return replace(self, meta={**self.meta, **identity})

    def artifact_meta(self) -> dict:
        return {"layers": [int(l) for l in self.layers], "site": self.site, "method": self.method,
                "meta": {k: v for k, v in self.meta.items() if k not in IDENTITY_KEYS}}

    @classmethod
    def from_artifact(cls, art) -> "ReadingVectors":
        layers = art.meta.get("layers")
        if layers is not None and (not isinstance(layers, list)
                                   or any(isinstance(l, bool) or not isinstance(l, int) for l in layers)):
            raise ArtifactError(f"metadata field 'layers' must be a list of integers, got {layers!r}")
        rv = super().from_artifact(art)
        meta = {**(art.model or {}), **{k: v for k, v in rv.meta.items() if k not in IDENTITY_KEYS}}
        f32 = lambda a: np.array(a, np.float32)  # noqa: E731
        rv = replace(rv, directions_LD=f32(rv.directions_LD), center_LD=f32(rv.center_LD), scale_L=f32(rv.scale_L),
                     layers=tuple(int(l) for l in rv.layers), meta=meta)
        L, D = len(rv.layers), meta.get("d_model", rv.directions_LD.shape[-1])
        for name, a, want in (("directions_LD", rv.directions_LD, (L, D)), ("center_LD", rv.center_LD, (L, D)),
                              ("scale_L", rv.scale_L, (L,))):
            if a.shape != want:
                raise ArtifactError(f"tensor {name!r} has shape {a.shape}; {len(rv.layers)} layers of a "
                                    f"d_model={D} model need {want}")
        return rv

    @classmethod
    def legacy_artifact(cls, header_meta: dict):
        return legacy_v1(header_meta, "interpjax.reading/1", ("layers", "site", "method"),
                         {"directions": "directions_LD", "center": "center_LD", "scale": "scale_L"})

    def check(self, model, what: str = "reading vectors") -> None:
        """Refuse these vectors for ``model``: another model (fingerprint, widths), or sites, layers
        or a width that do not fit it."""
        check_model(self.artifact_identity(), model, what)
        check_site_layer(model, self.site, self.layers)
        if self.directions_LD.shape[-1] != model.cfg.d_model:
            raise ValueError(f"{what} have width {self.directions_LD.shape[-1]}; the model's d_model is "
                             f"{model.cfg.d_model}")


def fit(pos_LND, neg_LND, layers, site: str = "resid_post", method: str = "pca", seed: int = 0,
        meta: dict | None = None) -> ReadingVectors:
    """Reading vectors from paired activations [L, N, D] (pure numerics: works on any arrays)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}; valid: {METHODS}")
    layers = tuple(np.atleast_1d(np.asarray(layers, dtype=object)))
    if any(isinstance(l, (bool, np.bool_)) or not isinstance(l, (int, np.integer)) for l in layers):
        raise ValueError(f"layers must be ints (the model layers of the activations), got {list(layers)}")
    pos, neg = np.asarray(pos_LND, np.float32), np.asarray(neg_LND, np.float32)
    if pos.ndim != 3 or pos.shape != neg.shape or pos.shape[0] != len(layers):
        raise ValueError(f"paired activations must both be [L={len(layers)}, N, D]; got {pos.shape} and {neg.shape}")
    dirs, centers, scales, gaps, accs, evr = [], [], [], [], [], []
    for l in range(len(layers)):
        if method == "pca":
            u, info = pca_direction(pos[l], neg[l], seed)
            evr.append(info["explained_variance"])
        else:
            d = mean_diff_direction(pos[l], neg[l])
            u = d / max(float(np.linalg.norm(d)), 1e-12)
        both = np.concatenate([pos[l], neg[l]])
        center = both.mean(0)
        proj = (both - center) @ u
        gap = (pos[l] - neg[l]) @ u
        dirs.append(u)
        centers.append(center)
        scales.append(max(float(proj.std()), 1e-12))
        gaps.append(float(gap.mean()))
        accs.append(float((gap > 0).mean()))
    info = {"mean_gap": gaps, "train_pair_accuracy": accs, **({"explained_variance": evr} if evr else {})}
    return ReadingVectors(np.stack(dirs).astype(np.float32), np.stack(centers).astype(np.float32),
                          np.asarray(scales, np.float32), tuple(int(l) for l in layers), site, method,
                          {**(meta or {}), **info})


def reading_vectors(model, positive, negative, layers=None, site: str = "resid_post", method: str = "pca",
                    token: str = "last", seed: int = 0, label: str = "") -> ReadingVectors:
    """Reading vectors of a paired contrast set at every layer in ``layers`` (default all)."""
    positive, negative = check_contrast(positive, negative)
    layers = check_site_layer(model, site, tuple(range(model.cfg.n_layers)) if layers is None else layers)
    if method not in METHODS:
        raise ValueError(f"method={method!r}; valid: {METHODS}")
    pos = activations_at(model, positive, site, layers, token)
    neg = activations_at(model, negative, site, layers, token)
    meta = {**model_identity(model), "prompts": {"positive": positive, "negative": negative}, "token": token,
            "label": label or method}
    return fit(pos, neg, layers, site, method, seed, meta)


def pair_accuracy(rv: ReadingVectors, pos_LND, neg_LND) -> np.ndarray:
    """Per layer, the fraction of pairs whose positive scores above its negative: [L]."""
    return (rv.scores(pos_LND) > rv.scores(neg_LND)).mean(1)


def evaluate(rv: ReadingVectors, model, positive, negative) -> dict:
    """Held-out accuracy per layer on a paired contrast set: ``pair`` (positive above its negative)
    and ``single`` (each text alone classified by the sign of its score)."""
    positive, negative = check_contrast(positive, negative)
    rv.check(model)
    token = rv.meta.get("token", "last")
    pos = activations_at(model, positive, rv.site, rv.layers, token)
    neg = activations_at(model, negative, rv.site, rv.layers, token)
    sp, sn = rv.scores(pos), rv.scores(neg)
    return {"layers": list(rv.layers), "pair": (sp > sn).mean(1).tolist(),
            "single": (((sp > 0).mean(1) + (sn < 0).mean(1)) / 2).tolist()}


# ---------------------------------------------------------------------------------------------
# token x layer scans


@dataclass(frozen=True)
class TokenScan(Result):
    """Scores [T, L] of every token of a text at every layer of a reading vector set; ``.plot(path)``
    draws its token x layer heatmap."""

    FORMAT = "interpjax.token_scan"

    tokens: list
    scores_TL: np.ndarray
    layers: tuple
    label: str = ""

    def plot(self, path) -> Path:
        return heatmap_png(self, path)


def _token_strings(model, ids) -> list[str]:
    tok = model.tokenizer
    pieces = tok.convert_ids_to_tokens([int(i) for i in ids])
    return [str(p).replace("\u2581", " ").replace("\u0120", " ").replace("\u010a", "\\n") for p in pieces]


def scan(model, text: str, rv: ReadingVectors) -> TokenScan:
    """Score every token of ``text`` at every layer of ``rv`` (the LAT scan)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("scan needs a non-empty text")
    rv.check(model)
    tokens, _ = model.to_tokens(text)
    _, cache = model.run_with_cache(tokens, sites=[rv.site], layers=list(rv.layers))
    acts = np.asarray(cache[rv.site], np.float32)[:, 0]  # [L, T, D]
    scores = rv.scores(acts).T  # [T, L]
    return TokenScan(_token_strings(model, tokens[0]), scores, rv.layers, rv.meta.get("label", ""))


def _colour_limit(scores) -> float:
    """Colour scale: the 95th percentile of |score|, so one outlying token does not wash out the rest."""
    return max(float(np.percentile(np.abs(scores), 95)), 1e-6)


def _colour(score: float, lim: float) -> str:
    """Diverging colour: red for negative, white for 0, green for positive scores."""
    a = float(np.clip(score / lim, -1, 1))
    if a >= 0:
        r, g, b = int(255 * (1 - 0.7 * a)), int(255 * (1 - 0.25 * a)), int(255 * (1 - 0.7 * a))
    else:
        r, g, b = int(255 * (1 + 0.15 * a)), int(255 * (1 + 0.7 * a)), int(255 * (1 + 0.7 * a))
    return f"rgb({r},{g},{b})"


def render_html(s: TokenScan, path, layers=None, title: str = "") -> Path:
    """Write a self-contained HTML page (inline CSS, no scripts or remote files): the text coloured
    by the mean score over ``layers`` (default all), then the full token x layer table."""
    layers = list(s.layers) if layers is None else list(np.atleast_1d(np.asarray(layers, dtype=object)))
    bad = [l for l in layers if isinstance(l, (bool, np.bool_)) or not isinstance(l, (int, np.integer))
           or l not in s.layers]
    if bad:
        raise ValueError(f"layers {bad} were not scanned; scanned layers: {list(s.layers)}")
    cols = [s.layers.index(l) for l in layers]
    line = s.scores_TL[:, cols].mean(1)
    lim = _colour_limit(s.scores_TL)
    esc = lambda t: html.escape(t) or "&middot;"  # noqa: E731  (spaces kept by white-space: pre-wrap)
    spans = "".join(f'<span class="t" style="background:{_colour(v, lim)}" title="{v:+.2f}">{esc(t)}</span>'
                    for t, v in zip(s.tokens, line))
    head = "".join(f"<th>L{l}</th>" for l in s.layers)
    rows = "".join(f"<tr><td class='tok'>{esc(t)}</td>" + "".join(
        f"<td style='background:{_colour(v, lim)}'>{v:+.2f}</td>" for v in s.scores_TL[i]) + "</tr>"
        for i, t in enumerate(s.tokens))
    title = title or f"LAT scan: {s.label}"
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
.text {{ font-family: monospace; font-size: 15px; line-height: 2.1; }}
.t {{ padding: 2px 1px; border-radius: 3px; white-space: pre-wrap; }}
table {{ border-collapse: collapse; font-family: monospace; font-size: 12px; margin-top: 1.5em; }}
td, th {{ border: 1px solid #ddd; padding: 2px 6px; text-align: right; }}
td.tok {{ text-align: left; white-space: pre; }}
</style></head><body>
<h2>{html.escape(title)}</h2>
<p>Score = standardised projection onto the reading vector (green = positive side, red = negative side);
coloured line: mean over layers {layers}. Colour scale: &plusmn;{lim:.2f} (95th percentile of |score|; beyond it
the colour saturates).</p>
<div class="text">{spans}</div>
<table><tr><th>token</th>{head}</tr>{rows}</table>
</body></html>
"""
    return atomic_write_text(path, page)


def heatmap_png(s: TokenScan, path, title: str = "") -> Path:
    """Token x layer heatmap of a scan (layers as rows), written atomically."""
    from ..io.plots import labelled_heatmap

    lim = _colour_limit(s.scores_TL)
    return labelled_heatmap(s.scores_TL.T, path, [f"L{l}" for l in s.layers], [t.strip() or "·" for t in s.tokens],
                   title=title or f"LAT scan: {s.label}", cmap="RdYlGn", vmin=-lim, vmax=lim, cbar_label="score",
                   ylabel="layer")


# ---------------------------------------------------------------------------------------------
# several concepts across layers


def concept_separation(acts_by_concept: dict) -> np.ndarray:
    """Per layer, leave-one-out nearest-centroid accuracy of the concept labels: [L]. How cleanly
    the concepts form clusters at each layer (chance = 1 / number of concepts)."""
    names = list(acts_by_concept)
    if len(names) < 2:
        raise ValueError("need at least two concepts")
    arrays = [np.asarray(acts_by_concept[n], np.float32) for n in names]
    if any(a.ndim != 3 or a.shape[0] != arrays[0].shape[0] or a.shape[1] < 2 for a in arrays):
        raise ValueError("each concept needs activations [L, N >= 2, D] with the same L")
    L = arrays[0].shape[0]
    acc = np.zeros(L)
    for l in range(L):
        sums = [a[l].sum(0) for a in arrays]
        counts = [len(a[l]) for a in arrays]
        correct = total = 0
        for c, a in enumerate(arrays):
            for x in a[l]:
                cents = [(sums[k] - (x if k == c else 0)) / (counts[k] - (k == c)) for k in range(len(arrays))]
                correct += int(np.argmin([np.sum((x - m) ** 2) for m in cents]) == c)
                total += 1
        acc[l] = correct / total
    return acc


def concept_plot(acts_by_concept: dict, path, layers, title: str = "") -> Path:
    """PCA (2-D, per layer) of several concepts' activations [L, N, D], one panel per layer,
    coloured by concept; written atomically."""
    import matplotlib.pyplot as plt  # the caller's backend (matplotlib picks Agg when headless)

    from ..io.plots import save_figure

    names = list(acts_by_concept)
    sep = concept_separation(acts_by_concept)
    L = len(layers)
    fig, axes = plt.subplots(1, L, figsize=(3.0 * L, 3.2), squeeze=False)
    for i, ax in enumerate(axes[0]):
        xs = [np.asarray(acts_by_concept[n], np.float32)[i] for n in names]
        allx = np.concatenate(xs)
        mu = allx.mean(0)
        _, _, vt = np.linalg.svd(allx - mu, full_matrices=False)
        for n, x in zip(names, xs):
            p = (x - mu) @ vt[:2].T
            ax.scatter(p[:, 0], p[:, 1], s=12, label=n, alpha=0.8)
        ax.set_title(f"layer {layers[i]}  (NC acc {sep[i]:.2f})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title or "concept activations, PCA per layer", fontsize=10)
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------------
# controls and sign-aware scoring (what a held-out comparison of a reading vector needs)


def single_accuracy(rv: ReadingVectors, pos_LND, neg_LND) -> np.ndarray:
    """Per layer, the share of texts classified by the sign of their own score (positives above
    the training centre, negatives below), averaged over the two sides: [L]."""
    sp, sn = rv.scores(pos_LND), rv.scores(neg_LND)
    return ((sp > 0).mean(1) + (sn < 0).mean(1)) / 2


def sign_agnostic(acc) -> np.ndarray:
    """``max(acc, 1 - acc)``: the accuracy of a direction under the better of its two signs. A
    direction with an arbitrary sign (a control) scores 0.33 and 0.67 alike; this is their common
    value, an upper bound of what the control could reach if its sign were chosen on the test data."""
    a = np.asarray(acc, np.float64)
    return np.maximum(a, 1.0 - a)


def calibrate_signs(rv: ReadingVectors, pos_LND, neg_LND) -> ReadingVectors:
    """``rv`` with each layer's direction flipped where fewer than half of the given (training)
    pairs score their positive above their negative; meta ``mean_gap`` and ``train_pair_accuracy``
    follow the flip."""
    pos, neg = np.asarray(pos_LND, np.float32), np.asarray(neg_LND, np.float32)
    gap_LN = np.einsum("lnd,ld->ln", pos - neg, rv.directions_LD)
    acc = (gap_LN > 0).mean(1)
    flip_L = np.where((acc < 0.5) | ((acc == 0.5) & (gap_LN.mean(1) < 0)), -1.0, 1.0).astype(np.float32)
    gaps = gap_LN.mean(1) * flip_L
    accs = np.where(flip_L > 0, acc, 1.0 - acc)
    meta = {**rv.meta, "mean_gap": [float(g) for g in gaps], "train_pair_accuracy": [float(a) for a in accs]}
    return replace(rv, directions_LD=(rv.directions_LD * flip_L[:, None]).astype(np.float32), meta=meta)


def fit_shuffled(pos_LND, neg_LND, layers, site: str = "resid_post", method: str = "pca", seed: int = 0) -> ReadingVectors:
    """The label-shuffled control of ``fit``: the 2N texts are pooled and dealt at random into N
    pseudo-pairs whose two sides each hold half positives and half negatives (so a mean difference
    carries no concept component by construction), the same pipeline fits them, and the signs are then set on the real pairs
    (``calibrate_signs``), so the control differs from the method only in the pairing it learns from."""
    pos, neg = np.asarray(pos_LND, np.float32), np.asarray(neg_LND, np.float32)
    if pos.ndim != 3 or pos.shape != neg.shape:
        raise ValueError(f"paired activations must both be [L, N, D]; got {pos.shape} and {neg.shape}")
    N = pos.shape[1]
    if N < 2:
        raise ValueError(f"the shuffled control needs at least 2 pairs, got {N}")
    rng = np.random.default_rng(seed)
    K = N // 2  # each pseudo-side holds K positives and N - K negatives (or the reverse): balanced labels
    p_perm, n_perm = rng.permutation(N), rng.permutation(N)
    side_a = np.concatenate([pos[:, p_perm[:K]], neg[:, n_perm[:N - K]]], 1)
    side_b = np.concatenate([pos[:, p_perm[K:]], neg[:, n_perm[N - K:]]], 1)
    rv = fit(side_a[:, rng.permutation(N)], side_b[:, rng.permutation(N)], layers, site, method, seed,
             {"control": "shuffled_labels"})
    return calibrate_signs(rv, pos, neg)


def random_reading_vectors(pos_LND, neg_LND, layers, site: str = "resid_post", n: int = 1, seed: int = 0) -> list:
    """``n`` random-direction controls: uniformly random unit directions per layer with the same
    centring and scale rule as ``fit`` and signs set on the given (training) pairs."""
    pos, neg = np.asarray(pos_LND, np.float32), np.asarray(neg_LND, np.float32)
    if pos.ndim != 3 or pos.shape != neg.shape or pos.shape[0] != len(tuple(np.atleast_1d(layers))):
        raise ValueError(f"paired activations must both be [L={len(tuple(np.atleast_1d(layers)))}, N, D]; "
                         f"got {pos.shape} and {neg.shape}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    L, _, D = pos.shape
    both = np.concatenate([pos, neg], 1)
    center = both.mean(1)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        u = rng.normal(size=(L, D)).astype(np.float32)
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        scale = np.maximum(np.einsum("lnd,ld->ln", both - center[:, None], u).std(1), 1e-12).astype(np.float32)
        rv = ReadingVectors(u, center.astype(np.float32), scale, tuple(int(l) for l in np.atleast_1d(layers)), site,
                            "random", {"control": "random_direction"})
        out.append(calibrate_signs(rv, pos, neg))
    return out
