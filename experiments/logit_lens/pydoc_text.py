"""Held-out real English text for the lens experiments: the Python reference manual's topic pages
shipped with the standard library (``pydoc_data.topics.topics``, ~79 topics, ~65K words; PSF
License), split by topic with a fixed seed and packed into token blocks.

Every block is ``[start token] + (T - 1)`` consecutive tokens of one split's text (topics in
sorted order, each tokenized on its own and concatenated); the remainder is dropped.
"""

from __future__ import annotations

import numpy as np

# the document-start token each model was trained with (its tokenizer's bos otherwise)
START_TOKEN = {"smollm2-135m-instruct": "<|endoftext|>", "gemma-3-270m": "<bos>"}
SPLITS = ("train", "heldout")


def topic_split(seed: int = 0, heldout_frac: float = 0.3) -> dict[str, list[str]]:
    """Topic names of the training and held-out splits (a seeded permutation of the sorted topics)."""
    from pydoc_data.topics import topics

    if not 0.0 < heldout_frac < 1.0:
        raise ValueError(f"heldout_frac must be in (0, 1), got {heldout_frac!r}")
    names = sorted(topics)
    perm = np.random.default_rng(seed).permutation(len(names))
    n_held = int(round(heldout_frac * len(names)))
    return {"heldout": sorted(names[i] for i in perm[:n_held]), "train": sorted(names[i] for i in perm[n_held:])}


def start_id(model) -> int:
    """Id of the document-start token the model was trained with."""
    tok = model.tokenizer
    text = START_TOKEN.get(model.name) or tok.bos_token
    if text is None:
        raise ValueError(f"model {model.name!r} has no known start token and its tokenizer no bos token")
    return int(tok.convert_tokens_to_ids(text))


def token_blocks(model, names: list[str], T: int) -> np.ndarray:
    """int32 blocks [N, T] of the topics ``names``: each a start token and T - 1 text tokens."""
    from pydoc_data.topics import topics

    if not isinstance(T, int) or T < 2:
        raise ValueError(f"block length T must be an integer >= 2, got {T!r}")
    unknown = [n for n in names if n not in topics]
    if unknown:
        raise ValueError(f"unknown pydoc topics {unknown[:5]}")
    ids: list[int] = []
    for n in names:
        ids += model.tokenizer(topics[n], add_special_tokens=False)["input_ids"]
    n_blocks = len(ids) // (T - 1)
    body = np.asarray(ids[: n_blocks * (T - 1)], np.int32).reshape(n_blocks, T - 1)
    return np.concatenate([np.full((n_blocks, 1), start_id(model), np.int32), body], axis=1)


def pick(blocks: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` blocks drawn without replacement (seeded), in their original order."""
    if not 1 <= n <= len(blocks):
        raise ValueError(f"asked for {n} blocks; the split has {len(blocks)}")
    idx = np.sort(np.random.default_rng(seed).choice(len(blocks), size=n, replace=False))
    return blocks[idx]


def split_words() -> dict[str, int]:
    """Word count of each split (for the README)."""
    from pydoc_data.topics import topics

    sp = topic_split()
    return {s: sum(len(topics[n].split()) for n in sp[s]) for s in SPLITS}


# table formatting shared by the two lens experiments' reports


def _g(x: float) -> str:
    return f"{x:.3g}" if x < 1e4 else f"{x:.2e}"


def fmt_ppl(s: dict) -> str:
    """A perplexity summary ``{"value", "lo", "hi"}`` as ``v [lo, hi]`` (3 significant digits, e-notation past 1e4)."""
    return f"{_g(s['value'])} [{_g(s['lo'])}, {_g(s['hi'])}]"


def row_name(l: int, L: int) -> str:
    """A lens row's label: row 0 is the embedding, row L the model's output."""
    return "0 (embedding)" if l == 0 else ("output" if l == L else str(l))
