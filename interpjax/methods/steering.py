"""Steering vectors (ActAdd, CAA mean difference, RepE PCA) as saved, reloadable artifacts.

A ``SteeringVector`` is a vector ([D], or [P, D] for ActAdd's per-position difference) at one
``(site, layer)`` plus the metadata that says where it came from (model, widths, method, prompts).
``vec.intervention(coeff, ...)`` turns it into an ``Add`` that works in ``forward`` and in
``generate``; ``a - b`` / ``2 * a`` combine concepts at the same site and layer, ``combine`` adds
several at different layers at once.

Artifacts are one safetensors file (the arrays) whose header metadata holds the JSON description;
files are written atomically, and loading one onto a model of another name, width or depth is
refused with the reason.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ..core.interventions import Add
from ..core.sites import LAYER_SITES

FORMAT = "interpjax.steering/1"
METHODS = ("actadd", "mean_diff", "pca", "combination")
TOKEN_RULES = ("last", "mean")
# layer sites with one feature axis per position: where a [D]-shaped vector can be read and added
VECTOR_SITES = tuple(s for s in LAYER_SITES if s not in ("q", "k", "v", "z", "attn_scores", "pattern"))


# ---------------------------------------------------------------------------------------------
# artifacts: arrays + JSON metadata in one safetensors file, written atomically


def model_identity(model) -> dict:
    """What a saved artifact records about the model it was made on (checked on load)."""
    cfg = model.cfg
    return {"model": Path(str(model.name)).name or str(model.name), "family": cfg.family, "d_model": cfg.d_model,
            "n_layers": cfg.n_layers, "vocab_size": cfg.vocab_size}


def check_model(meta: dict, model, what: str = "artifact") -> None:
    """Refuse an artifact made on another model (name, family, width, depth or vocabulary differ)."""
    have = model_identity(model)
    diff = [f"{k}: saved {meta.get(k)!r}, model has {have[k]!r}" for k in have if meta.get(k) != have[k]]
    if diff:
        raise ValueError(f"{what} was made for another model ({'; '.join(diff)}); rebuild it on this model")


def save_artifact(path, arrays: dict, meta: dict) -> Path:
    """Write ``arrays`` and JSON-serialisable ``meta`` to one safetensors file, atomically."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in arrays.items()}, str(tmp),
              metadata={"interpjax": json.dumps(meta)})
    os.replace(tmp, path)
    return path


def load_artifact(path, fmt: str) -> tuple[dict, dict]:
    """(arrays, meta) of a file written by ``save_artifact`` in format ``fmt``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no artifact file at {path}")
    try:
        with safe_open(str(path), "np") as f:
            meta = json.loads((f.metadata() or {}).get("interpjax", "{}"))
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types on corrupt files
        raise ValueError(f"{path}: not a readable interpjax artifact ({e})") from None
    if meta.get("format") != fmt:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {fmt!r}")
    return arrays, meta


# ---------------------------------------------------------------------------------------------
# activations of texts


def check_site_layer(model, site: str, layer) -> None:
    if site not in VECTOR_SITES:
        raise ValueError(f"site {site!r} cannot hold a steering/reading vector; valid sites: {VECTOR_SITES}")
    layers = np.atleast_1d(np.asarray(layer))
    bad = [int(l) for l in layers if not 0 <= int(l) < model.cfg.n_layers]
    if bad:
        raise ValueError(f"layer {bad[0] if np.ndim(layer) == 0 else bad} out of range: valid layers are "
                         f"0..{model.cfg.n_layers - 1}")


def check_contrast(positive, negative) -> tuple[list[str], list[str]]:
    """Paired contrast sets: two non-empty lists of texts of equal length."""
    for name, texts in (("positive", positive), ("negative", negative)):
        if isinstance(texts, str):
            raise ValueError(f"{name} must be a list of texts, not one string")
        if not texts:
            raise ValueError(f"the {name} contrast set is empty")
        if not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(f"the {name} contrast set holds empty or non-text entries")
    if len(positive) != len(negative):
        raise ValueError(f"contrast sets are paired: {len(positive)} positive vs {len(negative)} negative texts")
    return list(positive), list(negative)


def collect(model, texts, site: str, layers, token: str = "last", batch_size: int = 32) -> np.ndarray:
    """Activations [L, N, D] of ``texts`` at ``site`` for ``layers``: the last real token's, or the
    mean over real tokens (``token='mean'``). Batches are left-padded, positions skip the padding."""
    if token not in TOKEN_RULES:
        raise ValueError(f"token={token!r}; valid: {TOKEN_RULES}")
    layers = [int(l) for l in np.atleast_1d(layers)]
    check_site_layer(model, site, layers)
    out = []
    for i in range(0, len(texts), batch_size):
        chunk = list(texts[i:i + batch_size])
        tokens, mask = _bucket(*model.to_tokens(chunk), model.cfg.n_ctx)
        _, cache = model.run_with_cache(tokens, sites=[site], layers=layers, attention_mask=mask)
        acts = np.asarray(cache[site], np.float32)[:, :len(chunk)]  # [L, B, T, D]
        mask = mask[:len(chunk)]
        if token == "last":
            out.append(acts[:, :, -1])
        else:
            m = mask[None, :, :, None].astype(np.float32)
            out.append((acts * m).sum(2) / m.sum(2))
    return np.concatenate(out, axis=1)


def _bucket(tokens, mask, n_ctx: int):
    """Left-pad to a multiple of 16 positions and repeat row 0 up to a power-of-two batch, so that
    sets of different sizes and lengths reuse a handful of compiled programs (extra rows dropped)."""
    B, T = tokens.shape
    T2 = min(max(T, -(-T // 16) * 16), max(n_ctx, T))
    B2 = 1 << (B - 1).bit_length()
    tokens = np.concatenate([np.zeros((B, T2 - T), tokens.dtype) + tokens[:, :1], tokens], 1)
    mask = np.concatenate([np.zeros((B, T2 - T), mask.dtype), mask], 1)
    rows = np.r_[np.arange(B), np.zeros(B2 - B, int)]
    return tokens[rows], mask[rows]


# ---------------------------------------------------------------------------------------------
# directions from paired activations (pure numerics, used by steering and reading)


def mean_diff_direction(pos_ND, neg_ND) -> np.ndarray:
    """Mean of the paired differences (CAA): [D]."""
    pos_ND, neg_ND = _paired(pos_ND, neg_ND)
    return (pos_ND - neg_ND).mean(0)


def pca_direction(pos_ND, neg_ND, seed: int = 0) -> tuple[np.ndarray, dict]:
    """RepE reading direction: first principal component of the paired differences, each pair in a
    random order (so the mean difference does not dominate), sign-calibrated so that positives
    project higher than their negatives for most pairs. Returns (unit [D], info)."""
    pos_ND, neg_ND = _paired(pos_ND, neg_ND)
    diffs = (pos_ND - neg_ND).astype(np.float64)
    flips = np.where(np.random.default_rng(seed).random(len(diffs)) < 0.5, -1.0, 1.0)
    x = diffs * flips[:, None]
    x = x - x.mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    u = vt[0]
    gap = diffs @ u
    if (gap > 0).mean() < 0.5 or ((gap > 0).mean() == 0.5 and gap.mean() < 0):
        u, gap = -u, -gap
    var = s**2
    info = {"explained_variance": float(var[0] / var.sum()) if var.sum() > 0 else 0.0,
            "train_pair_accuracy": float((gap > 0).mean()), "mean_gap": float(gap.mean())}
    return u.astype(np.float32), info


def _paired(pos_ND, neg_ND):
    pos_ND, neg_ND = np.asarray(pos_ND, np.float32), np.asarray(neg_ND, np.float32)
    if pos_ND.ndim != 2 or pos_ND.shape != neg_ND.shape:
        raise ValueError(f"paired activations must both be [N, D] of one shape; got {pos_ND.shape} and {neg_ND.shape}")
    if len(pos_ND) == 0:
        raise ValueError("no pairs")
    return pos_ND, neg_ND


# ---------------------------------------------------------------------------------------------
# the artifact


@dataclass(frozen=True)
class SteeringVector:
    """A steering vector at ``(site, layer)``: ``vector`` is [D], or [P, D] per position (ActAdd)."""

    vector: np.ndarray
    site: str
    layer: int
    method: str
    meta: dict = field(default_factory=dict)  # model identity, prompts, method details

    @property
    def per_position(self) -> bool:
        return np.ndim(self.vector) == 2

    def intervention(self, coeff=1.0, *, seq_len: int | None = None, start=0, positions=None,
                     dtype=jnp.float32) -> Add:
        """The ``Add`` of ``coeff * vector`` at this site and layer.

        [D] vectors apply at ``positions`` (default: every position). [P, D] vectors (ActAdd) are
        laid over a sequence of ``seq_len`` columns from column ``start`` (front-aligned: 0, or per
        row [B] starts such as the first real token of left-padded rows), or at ``positions`` [P].
        In ``generate``, ``seq_len`` is the full output length (prompt + new tokens). ``dtype``: the
        model's compute dtype.
        """
        vec = jnp.asarray(self.vector, dtype)
        if not self.per_position:
            return Add(self.site, layer=self.layer, vector=vec, coeff=coeff,
                       positions=None if positions is None else jnp.asarray(positions))
        P, D = self.vector.shape
        if seq_len is None:
            raise ValueError(f"this [P={P}, D] vector is laid over the sequence: pass seq_len")
        if positions is not None:
            pos = np.asarray(positions)
            if pos.shape != (P,):
                raise ValueError(f"positions must be [{P}] (one per vector row), got shape {pos.shape}")
            if pos.min() < 0 or pos.max() >= seq_len:
                raise ValueError(f"positions {pos.tolist()} out of range 0..{seq_len - 1}")
            full = np.zeros((seq_len, D), np.float32)
            full[pos] = self.vector
            return Add(self.site, layer=self.layer, vector=jnp.asarray(full, dtype), coeff=coeff, positions=jnp.asarray(pos))
        starts = np.atleast_1d(np.asarray(start))
        if starts.min() < 0 or starts.max() + P > seq_len:
            raise ValueError(f"a {P}-row vector from start {starts.tolist()} does not fit in seq_len={seq_len}")
        full = np.zeros((len(starts), seq_len, D), np.float32)
        pos = starts[:, None] + np.arange(P)[None]
        for b, p in enumerate(pos):
            full[b, p] = self.vector
        if np.ndim(start) == 0:
            return Add(self.site, layer=self.layer, vector=jnp.asarray(full[0], dtype), coeff=coeff, positions=jnp.asarray(pos[0]))
        return Add(self.site, layer=self.layer, vector=jnp.asarray(full, dtype), coeff=coeff, positions=jnp.asarray(pos))

    # combining concepts at the same site and layer: +a -b, scaled
    def _combine(self, other: "SteeringVector", sign: float) -> "SteeringVector":
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if (self.site, self.layer) != (other.site, other.layer):
            raise ValueError(f"cannot add vectors at {self.site}[{self.layer}] and {other.site}[{other.layer}]; "
                             f"use steering.combine([...]) to steer at several sites/layers at once")
        if {k: self.meta.get(k) for k in ("model", "d_model", "n_layers")} != \
                {k: other.meta.get(k) for k in ("model", "d_model", "n_layers")}:
            raise ValueError("cannot combine vectors made on different models")
        a, b = np.asarray(self.vector), np.asarray(other.vector)
        if a.ndim != b.ndim:
            raise ValueError(f"cannot combine a {a.shape} vector with a {b.shape} vector (per-position vs single)")
        if a.ndim == 2 and a.shape[0] != b.shape[0]:  # ActAdd: the shorter is zero beyond its end
            P = max(a.shape[0], b.shape[0])
            a, b = (np.concatenate([v, np.zeros((P - len(v), v.shape[1]), v.dtype)]) for v in (a, b))
        terms = self.meta.get("terms", [[1.0, self.meta.get("label", self.method)]]) + \
            [[sign * t[0], t[1]] for t in other.meta.get("terms", [[1.0, other.meta.get("label", other.method)]])]
        meta = {**self.meta, "terms": terms, "parts": [self.describe(), other.describe()]}
        return SteeringVector(a + sign * b, self.site, self.layer, "combination", meta)

    def __add__(self, other):
        return self._combine(other, 1.0)

    def __sub__(self, other):
        return self._combine(other, -1.0)

    def __mul__(self, k: float) -> "SteeringVector":
        terms = [[float(k) * t[0], t[1]] for t in self.meta.get("terms", [[1.0, self.meta.get("label", self.method)]])]
        return replace(self, vector=np.asarray(self.vector) * float(k), meta={**self.meta, "terms": terms})

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0

    def describe(self) -> dict:
        return {"site": self.site, "layer": self.layer, "method": self.method, "shape": list(np.shape(self.vector)),
                **{k: v for k, v in self.meta.items() if k != "parts"}}

    def save(self, path) -> Path:
        """Write the vector and its metadata to one safetensors file, atomically."""
        meta = {"format": FORMAT, "site": self.site, "layer": int(self.layer), "method": self.method, **self.meta}
        return save_artifact(path, {"vector": self.vector}, meta)

    @classmethod
    def load(cls, path, model=None) -> "SteeringVector":
        """Read a saved vector; with ``model``, refuse it unless it was made on that model."""
        arrays, meta = load_artifact(path, FORMAT)
        if model is not None:
            check_model(meta, model, f"steering vector {Path(path).name}")
            check_site_layer(model, meta["site"], meta["layer"])
        site, layer, method = meta.pop("site"), meta.pop("layer"), meta.pop("method")
        meta.pop("format")
        return cls(np.array(arrays["vector"]), site, int(layer), method, meta)


def combine(terms, seq_len: int | None = None, start=0) -> tuple:
    """Several vectors at once (different sites/layers allowed): [(coeff, vector), ...] -> the
    tuple of ``Add`` interventions, applied in order."""
    terms = list(terms)
    if not terms:
        raise ValueError("combine needs at least one (coeff, vector) term")
    models = {v.meta.get("model") for _, v in terms}
    if len(models) > 1:
        raise ValueError(f"cannot combine vectors made on different models: {sorted(map(str, models))}")
    return tuple(v.intervention(c, seq_len=seq_len, start=start) for c, v in terms)


# ---------------------------------------------------------------------------------------------
# builders


def _content_ids(model, text: str) -> list[int]:
    return list(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def pad_token(model) -> int:
    """ActAdd's padding token: a lone space if the tokenizer has one, else pad, else eos, else 0."""
    tok = model.tokenizer
    space = _content_ids(model, " ")
    if len(space) == 1:
        return int(space[0])
    for t in (tok.pad_token_id, tok.eos_token_id):
        if t is not None:
            return int(t)
    return 0


def actadd(model, positive: str, negative: str, layer: int, site: str = "resid_pre") -> SteeringVector:
    """ActAdd (Turner et al.): activations of ``positive`` minus ``negative`` at ``(site, layer)``
    per position, [P, D]; the shorter prompt is padded at its end with a space token as ActAdd does.
    Tokenized like prompts (the tokenizer's special tokens, e.g. BOS, included)."""
    if model.tokenizer is None:
        raise ValueError(f"model {model.name!r} has no tokenizer; ActAdd needs text prompts")
    check_site_layer(model, site, layer)
    for name, text in (("positive", positive), ("negative", negative)):
        if not isinstance(text, str) or not _content_ids(model, text):
            raise ValueError(f"the {name} prompt {text!r} tokenizes to nothing; use e.g. ' ' for a neutral side")
    ids = [list(np.asarray(model.to_tokens(t)[0][0])) for t in (positive, negative)]
    if ids[0] == ids[1]:
        raise ValueError(f"{positive!r} and {negative!r} tokenize identically: the vector would be zero")
    pad = pad_token(model)
    P = max(len(i) for i in ids)
    tokens = np.array([i + [pad] * (P - len(i)) for i in ids], np.int32)
    _, cache = model.run_with_cache(tokens, sites=[site], layers=[int(layer)])
    acts = np.asarray(cache[site, int(layer)], np.float32)  # [2, P, D]
    meta = {**model_identity(model), "prompts": {"positive": [positive], "negative": [negative]},
            "label": f"{positive!r}-{negative!r}", "pad_token": pad, "tokens": tokens.tolist()}
    return SteeringVector(acts[0] - acts[1], site, int(layer), "actadd", meta)


def from_contrast(model, positive, negative, layer: int, site: str = "resid_pre", method: str = "mean_diff",
                  token: str = "last", seed: int = 0, label: str = "") -> SteeringVector:
    """A [D] vector from paired contrast texts: ``mean_diff`` (CAA: mean of paired differences) or
    ``pca`` (RepE: sign-calibrated first principal component of the differences, scaled by the mean
    paired gap along it so that coeff 1 is one typical positive-vs-negative shift)."""
    if method not in ("mean_diff", "pca"):
        raise ValueError(f"method={method!r}; valid: ('mean_diff', 'pca')")
    positive, negative = check_contrast(positive, negative)
    check_site_layer(model, site, layer)
    pos = collect(model, positive, site, [layer], token)[0]
    neg = collect(model, negative, site, [layer], token)[0]
    info = {}
    if method == "mean_diff":
        vec = mean_diff_direction(pos, neg)
    else:
        unit, info = pca_direction(pos, neg, seed)
        vec = unit * info["mean_gap"]
    meta = {**model_identity(model), "prompts": {"positive": positive, "negative": negative}, "token": token,
            "label": label or method, **info}
    return SteeringVector(np.asarray(vec, np.float32), site, int(layer), method, meta)
