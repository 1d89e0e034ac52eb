"""Small shared plotting helpers (matplotlib; the backend is the caller's): ``labelled_heatmap`` of a
plain array with token labels (a sweep result's own plot is ``sweep.heatmap``), figures written atomically so a killed run never leaves a half-written PNG."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def save_figure(fig, path) -> Path:
    """Save ``fig`` to ``path`` atomically (temp file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def save_drawing(draw, path, figsize=(6.0, 3.6)) -> Path:
    """One figure with one axes drawn by ``draw(ax)``, saved to ``path`` atomically (what a method
    result's ``.plot(path)`` does with its ``.draw(ax)``)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    try:
        draw(ax)
        fig.tight_layout()
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def labelled_heatmap(values_RC, path, row_labels, col_labels, annotations_RC=None, title: str = "", cmap: str = "viridis",
            cbar_label: str = "", vmin: float | None = None, vmax: float | None = None, xlabel: str = "",
            ylabel: str = "") -> Path:
    """Heatmap of ``values_RC`` (row 0 drawn at the bottom) with row/column labels and optional
    per-cell text; saved as an image at ``path``. Label counts must match the array's shape."""
    import matplotlib.pyplot as plt  # the caller's backend (matplotlib picks Agg when headless)

    values = np.asarray(values_RC, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must be a 2-D [rows, cols] array; got shape {values.shape}")
    R, C = values.shape
    if len(row_labels) != R or len(col_labels) != C:
        raise ValueError(f"{len(row_labels)} row labels and {len(col_labels)} column labels for a {R}x{C} heatmap")
    if annotations_RC is not None and np.shape(annotations_RC)[:2] != (R, C):
        raise ValueError(f"annotations have shape {np.shape(annotations_RC)[:2]}; expected {(R, C)}")
    fig, ax = plt.subplots(figsize=(max(4.0, 0.62 * C + 2.2), max(2.5, 0.45 * R + 1.4)))
    im = ax.imshow(values, origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(C), [str(c) for c in col_labels], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(R), [str(r) for r in row_labels], fontsize=8)
    if annotations_RC is not None:
        rgba = im.cmap(im.norm(values))  # text colour by the cell's luminance, for any colormap
        light = rgba[..., :3] @ np.array([0.299, 0.587, 0.114]) > 0.5
        for r in range(R):
            for c in range(C):
                ax.text(c, r, str(annotations_RC[r][c]), ha="center", va="center", fontsize=6.5,
                        color="black" if light[r, c] else "white")
    fig.colorbar(im, ax=ax, label=cbar_label, fraction=0.03, pad=0.02)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)
