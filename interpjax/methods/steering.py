"""Steering vectors (ActAdd, CAA mean difference, RepE PCA) as saved, reloadable artifacts.

A ``SteeringVector`` is a vector ([D], or [P, D] for ActAdd's per-position difference) at one
``(site, layer)`` plus the metadata that says where it came from (model, widths, method, prompts).
``vec.intervention(coeff, ...)`` turns it into an ``Add`` that works in ``forward`` and in
``generate``; ``a - b`` / ``2 * a`` combine concepts at the same site and layer, ``combine`` adds
several at different layers at once.

Vectors are ``Result``s: saved as one interpjax artifact (``io.artifacts``: safetensors + JSON
metadata, atomic), and loading one onto a model with other weights (another fingerprint), width or
depth is refused with the reason. Files of the older ``interpjax.steering/1`` format still load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import jax.numpy as jnp
import numpy as np

from ..core import inputs
from ..core.interventions import Add
from ..core.sites import LAYER_SITES
from ..io.artifacts import IDENTITY_KEYS, ArtifactError, check_model, model_identity
from .result import Result

FORMAT = "interpjax.steering"
VERSION = 2  # 1: the pre-artifact layout (``interpjax`` header key, format "interpjax.steering/1")
METHODS = ("actadd", "mean_diff", "pca", "combination")
TOKEN_RULES = ("last", "mean")
# layer sites with one feature axis per position: where a [D]-shaped vector can be read and added
VECTOR_SITES = tuple(s for s in LAYER_SITES if s not in ("q", "k", "v", "z", "attn_scores", "pattern"))


# ---------------------------------------------------------------------------------------------
# activations of texts


def check_site_layer(model, site: str, layer) -> tuple[int, ...]:
    """Refuse a site that cannot hold a [D] vector or layers that are not integer layers of
    ``model`` (``core.inputs.check_layers``: bools and floats are refused, not rounded); ``layer``
    is one int or a list of ints. Returns the layers as a tuple of ints."""
    if site not in VECTOR_SITES:
        raise ValueError(f"site {site!r} cannot hold a steering/reading vector; valid sites: {VECTOR_SITES}")
    if layer is None:
        raise ValueError(f"layer is None: name the layer(s); valid layers are 0..{model.cfg.n_layers - 1}")
    return inputs.check_layers(model.cfg, layer, name="layer" if np.ndim(layer) == 0 else "layers",
                               allow_empty=False)


def check_one_layer(model, site: str, layer) -> int:
    """One integer layer of ``model`` at a vector site (see ``check_site_layer``)."""
    if np.ndim(layer) != 0:
        raise ValueError(f"layer must be one int, got {layer!r}; valid layers are 0..{model.cfg.n_layers - 1}")
    return check_site_layer(model, site, layer)[0]


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


def activations_at(model, texts, site: str, layers, token: str = "last", batch_size: int = 32) -> np.ndarray:
    """Activations [L, N, D] of ``texts`` at ``site`` for ``layers``, in memory (``io.activations.collect``
    writes datasets to disk): the last real token's, or the mean over real tokens (``token='mean'``).
    Batches are left-padded, positions skip the padding. ``layers``: an int or a list of ints
    (None = every layer)."""
    if token not in TOKEN_RULES:
        raise ValueError(f"token={token!r}; valid: {TOKEN_RULES}")
    layers = list(check_site_layer(model, site, tuple(range(model.cfg.n_layers)) if layers is None else layers))
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


def identity_of(meta: dict) -> dict | None:
    """The model identity recorded in a vector's ``meta`` (None if it records none)."""
    ident = {k: meta[k] for k in IDENTITY_KEYS if k in meta}
    return ident or None


def same_model(a: dict, b: dict) -> bool:
    """Whether two vectors' metas name the same model: by fingerprint where both record one."""
    keys = ("fingerprint", "d_model", "n_layers") if "fingerprint" in a and "fingerprint" in b else \
        ("model", "d_model", "n_layers")
    return all(a.get(k) == b.get(k) for k in keys)


def legacy_v1(header_meta: dict, old_format: str, fields: tuple, renames: dict | None = None):
    """Read the header of a file written before the artifact format (JSON under the ``interpjax``
    header key, ``fields`` flat beside the rest of meta) as (meta, identity, 1, renames) in today's
    layout; None if it is not such a file; another old format is refused."""
    raw = header_meta.get("interpjax")
    if raw is None:
        return None
    try:
        old = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"corrupt 'interpjax' metadata of an older file ({e})") from None
    if not isinstance(old, dict) or old.get("format") != old_format:
        raise ArtifactError(f"format {old.get('format') if isinstance(old, dict) else old!r}, expected {old_format!r} "
                            f"(an older interpjax file)")
    old.pop("format")
    meta = {k: old.pop(k) for k in fields if k in old}
    ident = identity_of(old)
    meta["meta"] = {k: v for k, v in old.items() if k not in IDENTITY_KEYS}
    return meta, ident, 1, dict(renames or {})


@dataclass(frozen=True)
class SteeringVector(Result):
    """A steering vector at ``(site, layer)``: ``vector`` is [D], or [P, D] per position (ActAdd)."""

    FORMAT = FORMAT
    VERSION = VERSION

    vector: np.ndarray
    site: str
    layer: int
    method: str
    meta: dict = field(default_factory=dict)  # model identity, prompts, method details

    def __post_init__(self):
        if isinstance(self.layer, (bool, np.bool_)) or not isinstance(self.layer, (int, np.integer)):
            raise ValueError(f"layer must be an int, got {self.layer!r}")

    # -- the artifact: the vector as a tensor; site, layer, method and meta (less the model identity) as JSON

    def artifact_identity(self) -> dict | None:
        return identity_of(self.meta)

    def with_identity(self, identity: dict) -> "SteeringVector":
        return replace(self, meta={**self.meta, **identity})

    def artifact_meta(self) -> dict:
        return {"site": self.site, "layer": int(self.layer), "method": self.method,
                "meta": {k: v for k, v in self.meta.items() if k not in IDENTITY_KEYS}}

    @classmethod
    def from_artifact(cls, art) -> "SteeringVector":
        if "vector" not in art.arrays:
            raise ArtifactError(f"missing tensor 'vector' (the file holds {sorted(art.arrays)})")
        m = art.meta
        for k in ("site", "layer", "method"):
            if m.get(k) is None:
                raise ArtifactError(f"missing metadata field {k!r}")
        if isinstance(m["layer"], bool) or not isinstance(m["layer"], int):
            raise ArtifactError(f"metadata field 'layer' must be an integer, got {m['layer']!r}")
        meta = {**(art.model or {}), **{k: v for k, v in m.get("meta", {}).items() if k not in IDENTITY_KEYS}}
        vec = np.array(art.arrays["vector"], np.float32)
        if vec.ndim not in (1, 2) or (meta.get("d_model") is not None and vec.shape[-1] != meta["d_model"]):
            raise ArtifactError(f"tensor 'vector' has shape {vec.shape}; the model it records has "
                                f"d_model={meta.get('d_model')} (expected [D] or [P, D])")
        return cls(vec, m["site"], int(m["layer"]), m["method"], meta)

    @classmethod
    def legacy_artifact(cls, header_meta: dict):
        return legacy_v1(header_meta, "interpjax.steering/1", ("site", "layer", "method"))

    def check(self, model, what: str = "steering vector") -> None:
        """Refuse this vector for ``model``: another model (fingerprint, widths), or a site, layer or
        width that does not fit it."""
        check_model(self.artifact_identity(), model, what)
        check_one_layer(model, self.site, self.layer)
        if np.shape(self.vector)[-1] != model.cfg.d_model:
            raise ValueError(f"{what} has width {np.shape(self.vector)[-1]}; the model's d_model is "
                             f"{model.cfg.d_model}")

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
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
            raise ValueError(f"seq_len must be an integer >= 1, got {seq_len!r}")
        if positions is not None:
            if np.shape(positions) != (P,):
                raise ValueError(f"positions must be [{P}] (one per vector row), got shape {np.shape(positions)}")
            pos = inputs.check_positions(positions, seq_len, shape=(P,))
            if pos.min() < 0:
                raise ValueError(f"positions {pos.tolist()} out of range 0..{seq_len - 1}")
            full = np.zeros((seq_len, D), np.float32)
            full[pos] = self.vector
            return Add(self.site, layer=self.layer, vector=jnp.asarray(full, dtype), coeff=coeff, positions=jnp.asarray(pos))
        starts = inputs.check_positions(np.atleast_1d(np.asarray(start)), seq_len, name="start")
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
        if not same_model(self.meta, other.meta):
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

    # save(path) and load(path, model=None) come from Result


def combine(terms, seq_len: int | None = None, start=0) -> tuple:
    """Several vectors at once (different sites/layers allowed): [(coeff, vector), ...] -> the
    tuple of ``Add`` interventions, applied in order."""
    terms = list(terms)
    if not terms:
        raise ValueError("combine needs at least one (coeff, vector) term")
    first = terms[0][1].meta
    if not all(same_model(first, v.meta) for _, v in terms):
        models = {(v.meta.get("model"), v.meta.get("fingerprint")) for _, v in terms}
        raise ValueError(f"cannot combine vectors made on different models: {sorted(map(str, models))}")
    return tuple(v.intervention(c, seq_len=seq_len, start=start) for c, v in terms)


# ---------------------------------------------------------------------------------------------
# builders


def content_ids(model, text: str) -> list[int]:
    """Token ids of ``text`` without the tokenizer's special tokens."""
    return list(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def pad_token(model) -> int:
    """ActAdd's padding token: a lone space if the tokenizer has one, else pad, else eos, else 0."""
    tok = model.tokenizer
    space = content_ids(model, " ")
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
    layer = check_one_layer(model, site, layer)
    for name, text in (("positive", positive), ("negative", negative)):
        if not isinstance(text, str) or not content_ids(model, text):
            raise ValueError(f"the {name} prompt {text!r} tokenizes to nothing; use e.g. ' ' for a neutral side")
    ids = [list(np.asarray(model.to_tokens(t)[0][0])) for t in (positive, negative)]
    if ids[0] == ids[1]:
        raise ValueError(f"{positive!r} and {negative!r} tokenize identically: the vector would be zero")
    pad = pad_token(model)
    P = max(len(i) for i in ids)
    tokens = np.array([i + [pad] * (P - len(i)) for i in ids], np.int32)
    _, cache = model.run_with_cache(tokens, sites=[site], layers=[layer])
    acts = np.asarray(cache[site, layer], np.float32)  # [2, P, D]
    meta = {**model_identity(model), "prompts": {"positive": [positive], "negative": [negative]},
            "label": f"{positive!r}-{negative!r}", "pad_token": pad, "tokens": tokens.tolist()}
    return SteeringVector(acts[0] - acts[1], site, layer, "actadd", meta)


def from_contrast(model, positive, negative, layer: int, site: str = "resid_pre", method: str = "mean_diff",
                  token: str = "last", seed: int = 0, label: str = "") -> SteeringVector:
    """A [D] vector from paired contrast texts: ``mean_diff`` (CAA: mean of paired differences) or
    ``pca`` (RepE: sign-calibrated first principal component of the differences, scaled by the mean
    paired gap along it so that coeff 1 is one typical positive-vs-negative shift)."""
    if method not in ("mean_diff", "pca"):
        raise ValueError(f"method={method!r}; valid: ('mean_diff', 'pca')")
    positive, negative = check_contrast(positive, negative)
    layer = check_one_layer(model, site, layer)
    pos = activations_at(model, positive, site, [layer], token)[0]
    neg = activations_at(model, negative, site, [layer], token)[0]
    info = {}
    if method == "mean_diff":
        vec = mean_diff_direction(pos, neg)
    else:
        unit, info = pca_direction(pos, neg, seed)
        vec = unit * info["mean_gap"]
    meta = {**model_identity(model), "prompts": {"positive": positive, "negative": negative}, "token": token,
            "label": label or method, **info}
    return SteeringVector(np.asarray(vec, np.float32), site, layer, method, meta)
