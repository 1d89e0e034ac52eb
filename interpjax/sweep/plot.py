"""Labelled sweep results (values + axis names + tick labels) and their heatmap plots (PNG)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Labelled", "heatmap"]


@dataclass(frozen=True)
class Labelled:
    """A result array with named axes and one tick label per entry of each axis."""

    values: np.ndarray
    axes: tuple
    ticks: tuple
    title: str = ""

    def __post_init__(self):
        if len(self.axes) != np.ndim(self.values) or len(self.ticks) != np.ndim(self.values):
            raise ValueError(f"{np.ndim(self.values)}-d values need as many axis names and tick lists; got "
                             f"{len(self.axes)} names, {len(self.ticks)} tick lists")
        for name, t, n in zip(self.axes, self.ticks, np.shape(self.values)):
            if len(t) != n:
                raise ValueError(f"axis {name!r} has {n} entries but {len(t)} tick labels")

    @property
    def shape(self):
        return np.shape(self.values)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.values, dtype=dtype)

    def to_dict(self) -> dict:
        """JSON-ready: values as nested lists, axes and ticks as strings/numbers."""
        return {"title": self.title, "axes": list(self.axes), "ticks": [[_jsonable(x) for x in t] for t in self.ticks],
                "values": np.asarray(self.values).tolist()}

    def save_json(self, path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict()))
        os.replace(tmp, path)
        return path

    def plot(self, path, **kw) -> Path:
        """Write a heatmap PNG (see ``heatmap``)."""
        return heatmap(self, path, **kw)


def _jsonable(x):
    return x.item() if hasattr(x, "item") else x


def _short(t, n=10):
    s = str(t)
    return s if len(s) <= n else s[: n - 1] + "…"


def heatmap(result: Labelled, path, title: str | None = None, cmap: str = "RdBu_r", centre: float | None = 0.0,
            max_ticks: int = 40) -> Path:
    """Heatmap of a 2-d result (rows = first axis); a 3-d result gets one panel per entry of its
    first axis; 1-d a line. Diverging colours centred on ``centre`` (None: plain range)."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend and figures are left alone

    v = np.asarray(result.values, np.float64)
    if v.ndim not in (1, 2, 3):
        raise ValueError(f"heatmap plots 1-, 2- or 3-d results, got shape {v.shape}")
    title = result.title if title is None else title
    panels = [(None, v)] if v.ndim < 3 else [(f"{result.axes[0]} {result.ticks[0][i]}", v[i]) for i in range(len(v))]
    rows_ax, cols_ax = (result.axes[-2:] if v.ndim >= 2 else (None, result.axes[0]))
    rows_t, cols_t = (result.ticks[-2:] if v.ndim >= 2 else (None, result.ticks[0]))
    n = len(panels)
    ncol = min(n, 4)
    nrow = -(-n // ncol)
    w = 1.2 + 0.32 * (len(cols_t) if v.ndim >= 2 else 12)
    h = 1.2 + 0.3 * (len(rows_t) if v.ndim >= 2 else 8)
    fig = Figure(figsize=(min(4 + w * ncol, 40), min(2 + h * nrow, 40)))
    axs = fig.subplots(nrow, ncol, squeeze=False)
    finite = v[np.isfinite(v)]
    lim = float(np.max(np.abs(finite - (centre or 0.0)))) if finite.size else 1.0
    lo, hi = ((centre - lim, centre + lim) if centre is not None else
              ((float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)))
    im = None
    for k, (name, panel) in enumerate(panels):
        ax = axs[k // ncol][k % ncol]
        if panel.ndim == 1:
            ax.plot(range(len(panel)), panel, marker="o")
            ax.set_xticks(range(len(cols_t))[:: max(1, len(cols_t) // max_ticks)])
            ax.set_xticklabels([_short(t) for t in cols_t][:: max(1, len(cols_t) // max_ticks)], rotation=90)
            ax.set_xlabel(cols_ax)
        else:
            im = ax.imshow(panel, cmap=cmap, vmin=lo, vmax=hi, aspect="auto", interpolation="nearest")
            for axis, ticks, setter, labeller, rot in ((1, cols_t, ax.set_xticks, ax.set_xticklabels, 90),
                                                        (0, rows_t, ax.set_yticks, ax.set_yticklabels, 0)):
                step = max(1, len(ticks) // max_ticks)
                setter(range(0, len(ticks), step))
                labeller([_short(t) for t in ticks][::step], rotation=rot, fontsize=7)
            ax.set_xlabel(cols_ax)
            ax.set_ylabel(rows_ax)
        if name:
            ax.set_title(name, fontsize=9)
    for k in range(n, nrow * ncol):
        axs[k // ncol][k % ncol].axis("off")
    if im is not None:
        fig.colorbar(im, ax=axs.ravel().tolist(), shrink=0.8)
    if title:
        fig.suptitle(title)
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path
