"""The price-bracket task of Wu et al. 2023 ("say yes only if it costs between X and Y"), rebuilt as a
synthetic language: prompts, the small decoder trained on them, and the competing causal models.

Amounts are discretised to ``levels`` single tokens (level k reads "k/10 dollars": 0.0 .. 9.9 for
100 levels). A prompt is

    BOS between X and Y cost Z dollars answer  ->  Yes | No        (Yes iff X <= Z <= Y, X < Y)

so every prompt has the same 9 positions; the model is trained (loss on the answer token only)
with ``interpjax.train.Trainer``.
"""

from __future__ import annotations

import numpy as np

from interpjax import Config
from interpjax.methods.das import CausalModel

WORDS = ("BOS", "between", "and", "cost", "dollars", "answer", "No", "Yes")
POSITION_NAMES = ("BOS", "between", "X", "and", "Y", "cost", "Z", "dollars", "answer")


def vocab(levels: int) -> dict:
    """Token ids of the words (amounts are ids 0..levels-1)."""
    return {w: levels + i for i, w in enumerate(WORDS)}


def sample_inputs(rng: np.random.Generator, n: int, levels: int) -> dict:
    """n random (x < y, z) triples; z falls inside [x, y] half of the time (balanced labels)."""
    x = rng.integers(0, levels - 1, n)
    y = np.array([rng.integers(a + 1, levels) for a in x])
    inside = rng.random(n) < 0.5
    z_in = np.array([rng.integers(a, b + 1) for a, b in zip(x, y)])
    # outside: uniformly below x or above y (re-drawn when that side is empty)
    # (a bracket covering every level has no outside: those stay inside)
    full = (x == 0) & (y == levels - 1)
    z_out = rng.integers(0, levels, n)
    bad = (z_out >= x) & (z_out <= y) & ~full
    while bad.any():
        z_out[bad] = rng.integers(0, levels, bad.sum())
        bad = (z_out >= x) & (z_out <= y) & ~full
    z = np.where(inside | full, z_in, z_out)
    return {"x": x.astype(np.int32), "y": y.astype(np.int32), "z": z.astype(np.int32)}


def label(inputs: dict) -> np.ndarray:
    return (inputs["x"] <= inputs["z"]) & (inputs["z"] <= inputs["y"])


def prompts(inputs: dict, levels: int) -> np.ndarray:
    """Prompt token ids [N, 9] (without the answer)."""
    v = vocab(levels)
    n = len(inputs["x"])
    col = lambda w: np.full(n, v[w], np.int32)
    return np.stack([col("BOS"), col("between"), inputs["x"], col("and"), inputs["y"], col("cost"), inputs["z"],
                     col("dollars"), col("answer")], 1).astype(np.int32)


def answer_tokens(levels: int) -> np.ndarray:
    """[No, Yes] token ids: class c of a boolean label is answer_tokens[c]."""
    v = vocab(levels)
    return np.array([v["No"], v["Yes"]], np.int32)


def training_batch(rng: np.random.Generator, n: int, levels: int) -> dict:
    """Full sequences (prompt + answer) and a loss mask on the answer token only."""
    inp = sample_inputs(rng, n, levels)
    ans = answer_tokens(levels)[label(inp).astype(int)]
    tokens = np.concatenate([prompts(inp, levels), ans[:, None]], 1)
    mask = np.zeros(tokens.shape, np.float32)
    mask[:, -1] = 1.0
    return {"tokens": tokens, "loss_mask": mask}


def model_config(levels: int, d_model: int = 64, n_layers: int = 4) -> Config:
    """A small pre-norm decoder with learned positions."""
    return Config(vocab_size=levels + len(WORDS), d_model=d_model, n_layers=n_layers, n_heads=4,
                  d_head=d_model // 4, d_mlp=4 * d_model, n_ctx=len(POSITION_NAMES) + 1, positions="learned",
                  norm="layernorm", activation="gelu", mlp_bias=True, o_bias=True, qkv_bias=True,
                  tie_embeddings=False)


# ---------------------------------------------------------------------------------------------
# the competing causal models (Wu et al. 2023, Fig. 2), as Python functions of the inputs


def _left_vars(i):
    return {"left": i["x"] <= i["z"]}


def _left_out(i, v):
    return v["left"] & (i["z"] <= i["y"])


def _lr_vars(i):
    return {"left": i["x"] <= i["z"], "right": i["z"] <= i["y"]}


def _lr_out(i, v):
    return v["left"] & v["right"]


def _mid_vars(i):
    return {"dist": np.abs(2 * i["z"] - (i["x"] + i["y"]))}  # 2 |z - (x+y)/2|, kept integral


def _mid_out(i, v):
    return v["dist"] <= i["y"] - i["x"]


def _bracket_vars(i):
    return {"bracket": np.stack([i["x"], i["y"]], -1)}


def _bracket_out(i, v):
    return (v["bracket"][..., 0] <= i["z"]) & (i["z"] <= v["bracket"][..., 1])


CAUSAL_MODELS = {
    "left_boundary": CausalModel("left_boundary", _left_vars, _left_out, ("left",)),
    "left_right_boundary": CausalModel("left_right_boundary", _lr_vars, _lr_out, ("left", "right")),
    "midpoint_distance": CausalModel("midpoint_distance", _mid_vars, _mid_out, ("dist",)),
    "bracket_identity": CausalModel("bracket_identity", _bracket_vars, _bracket_out, ("bracket",)),
}
