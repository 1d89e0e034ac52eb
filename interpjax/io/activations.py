"""Activation datasets: run a model over many texts, keep chosen sites at chosen positions, on disk.

``collect`` runs the model batch by batch and writes one safetensors file per chunk of examples
plus a ``manifest.json`` (both written atomically), so a dataset larger than memory is never held
whole and a killed collection resumes where it stopped. The manifest records everything that
defines the collection (model config, ``io.artifacts.model_fingerprint`` of the weights, sites,
layers, position rule, dtype, a hash of the tokens and resolved positions, metadata); collecting into a folder that holds
a different collection is refused rather than mixed. ``ActivationDataset`` reads it back chunk by
chunk from memory-mapped files.

Each stored row is one (example, position) pair; ``example_ids`` and ``token_positions`` (index
into the example's own real tokens, 0 = first) say which.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .artifacts import model_fingerprint
from .loading import read_safetensors, write_safetensors
from ..core import inputs, model as M
from ..core.sites import ATTN_SITES, LAYER_SITES, SITES, feature_shape

FORMAT = "interpjax.activations/1"
MANIFEST = "manifest.json"
DTYPES = ("float32", "float16", "bfloat16")
RULES = ("last", "all")
# Attention sites have a key axis whose length depends on the padded batch: not storable per row.
COLLECTABLE_SITES = tuple(s for s in SITES if s not in ATTN_SITES)


def _np_dtype(name: str):
    import ml_dtypes

    return {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[name]


def _write_json(obj, path: Path) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# input normalisation


def _as_token_lists(model, data) -> tuple[list[np.ndarray], str]:
    """The examples as a list of 1-D arrays of real tokens in the caller's own dtype (``_check_tokens``
    checks and casts them), and the input kind: texts, 1-D token sequences, a [N, T] int array, a
    (tokens, attention_mask) pair, or a list of such pairs."""
    if isinstance(data, str):
        raise ValueError("pass a list of texts, not one string")
    if isinstance(data, tuple) and len(data) == 2 and all(np.ndim(a) == 2 for a in data):
        tokens = np.asarray(data[0])
        mask = np.asarray(inputs.check_mask(data[1], tokens.shape))  # 0 / 1 only
        kind = "tokens+mask"
    elif hasattr(data, "ndim") and np.ndim(data) == 2:
        tokens = np.asarray(data)
        mask, kind = np.ones(tokens.shape, np.int32), "tokens"
    else:
        data = list(data)
        if not data:
            raise ValueError("no examples to collect")
        if all(isinstance(t, str) for t in data):
            if getattr(model, "tokenizer", None) is None:
                raise ValueError(f"model {getattr(model, 'name', '')!r} has no tokenizer; pass token ids instead")
            out = []
            for i in range(0, len(data), 1024):  # pad per slice, not to the longest text overall
                ids, mask = model.to_tokens(data[i:i + 1024])  # validates the texts
                out += [ids[r][mask[r] > 0] for r in range(ids.shape[0])]
            return out, "texts"
        elif all(isinstance(t, tuple) and len(t) == 2 and all(np.ndim(a) == 2 for a in t) for t in data):
            seqs = []
            for batch in data:  # a list of (tokens [B, T], attention_mask [B, T]) batches
                seqs += _as_token_lists(model, batch)[0]
            return seqs, "token batches"
        elif all(np.ndim(t) == 1 for t in data):
            out = [np.asarray(t) for t in data]
            empty = [i for i, s in enumerate(out) if s.size == 0]
            if empty:
                raise ValueError(f"examples {empty[:5]} have no tokens")
            return out, "token lists"
        else:
            raise ValueError("data must be a list of texts, a list of 1-D token sequences, a [N, T] int array, "
                             "a (tokens [N, T], attention_mask [N, T]) tuple, or a list of such tuples")
    if tokens.shape[0] == 0:
        raise ValueError("no examples to collect")
    out = [tokens[r][mask[r] > 0] for r in range(tokens.shape[0])]
    empty = [i for i, s in enumerate(out) if s.size == 0]
    if empty:
        raise ValueError(f"examples {empty[:5]} have no real tokens (attention mask all zero)")
    return out, kind


def _check_tokens(cfg, seqs) -> list[np.ndarray]:
    """Each example's real tokens checked by ``core.inputs.check_tokens`` in the caller's dtype
    (integer ids inside the vocabulary, at most n_ctx of them) before the int32 cast; the error
    names the example."""
    out = []
    for i, s in enumerate(seqs):
        try:
            out.append(inputs.check_tokens(cfg, s[None])[0])
        except ValueError as e:
            raise ValueError(f"example {i}: {e}") from None
    return out


def _pad_batch(seqs, n_rows: int, n_ctx: int, pad_to: int = 8):
    """Left-pad ``seqs`` into [n_rows, T] (T rounded up to a multiple of ``pad_to`` so few shapes
    compile); rows beyond len(seqs) repeat the last example and are discarded later."""
    T = min(n_ctx, -(-max(len(s) for s in seqs) // pad_to) * pad_to)
    tokens = np.zeros((n_rows, T), np.int32)
    mask = np.zeros((n_rows, T), np.int32)
    for r in range(n_rows):
        s = seqs[min(r, len(seqs) - 1)]
        tokens[r, T - len(s):] = s
        mask[r, T - len(s):] = 1
    return tokens, mask


# ---------------------------------------------------------------------------------------------
# positions


def _positions_for_batch(rule, seqs, first: int, tokens, mask):
    """(rows, padded positions, own-token positions) of every stored row of one batch, example-major.

    ``rule``: "last" | "all" | callable(tokens [B, T], mask [B, T]) -> [B] or [B, P] padded indices |
    int array [N] / [N, P] of positions in each example's own tokens (negatives from its end)."""
    B, T = len(seqs), tokens.shape[1]
    tokens, mask = tokens[:B], mask[:B]
    lengths = np.array([len(s) for s in seqs])
    offset = T - lengths  # left padding of each row
    if isinstance(rule, str):
        if rule == "last":
            own = [np.array([n - 1]) for n in lengths]
        else:
            own = [np.arange(n) for n in lengths]
    elif callable(rule):
        got = np.asarray(rule(tokens.copy(), mask.copy()))
        if not np.issubdtype(got.dtype, np.integer) or got.ndim not in (1, 2) or got.shape[0] != B:
            raise ValueError(f"the positions callable must return int indices [B] or [B, P] for a batch of B={B}; "
                             f"got {got.dtype} {got.shape}")
        got = inputs.check_positions(got.reshape(B, -1), T, name="indices from the positions callable")
        got = np.where(got < 0, got + T, got)
        rows_idx = np.repeat(np.arange(B)[:, None], got.shape[1], 1)
        if (mask[rows_idx, got] == 0).any():
            bad = int(np.argwhere(mask[rows_idx, got] == 0)[0, 0]) + first
            raise ValueError(f"the positions callable picked a padding position for example {bad}")
        own = [got[r] - offset[r] for r in range(B)]
    else:
        sel = rule[first:first + B]
        own = []
        for r in range(B):
            try:
                p = inputs.check_positions(np.asarray(sel[r]).reshape(-1), int(lengths[r]))
            except ValueError as e:
                raise ValueError(f"example {first + r}: {e}") from None
            own.append(np.where(p < 0, p + lengths[r], p))
    rows = np.concatenate([np.full(len(p), r) for r, p in enumerate(own)]).astype(np.int32)
    own_pos = np.concatenate(own).astype(np.int32)
    return rows, own_pos + offset[rows], own_pos


def _rule_name(positions) -> str:
    if isinstance(positions, str):
        return positions
    if callable(positions):
        return f"callable:{getattr(positions, '__qualname__', type(positions).__name__)}"
    return "array"


def _check_positions(positions, n: int):
    if isinstance(positions, str):
        if positions not in RULES:
            raise ValueError(f"unknown positions rule {positions!r}; choose 'last', 'all', a callable "
                             "(tokens, mask) -> indices, or an int array with one row per example")
        return positions
    if callable(positions):
        return positions
    arr = np.asarray(positions)
    if not np.issubdtype(arr.dtype, np.integer) or arr.ndim not in (1, 2) or arr.shape[0] != n:
        raise ValueError(f"positions as an array must be ints [N] or [N, P] with N={n} examples; "
                         f"got {arr.dtype} {arr.shape}")
    return arr


# ---------------------------------------------------------------------------------------------
# the plan: batches, rows and the collection's identity


def _validate_request(cfg, sites, layers, dtype, batch_size, chunk_examples):
    if isinstance(sites, str):
        sites = [sites]
    sites = list(sites)
    if not sites:
        raise ValueError(f"no sites requested; valid sites: {', '.join(COLLECTABLE_SITES)}")
    for s in sites:
        if s not in COLLECTABLE_SITES:
            why = " (attention sites have a key axis that depends on padding; collect 'z' or compute patterns " \
                  "directly)" if s in ATTN_SITES else ""
            raise ValueError(f"unknown or uncollectable site {s!r}{why}; valid sites: {', '.join(COLLECTABLE_SITES)}")
    if len(set(sites)) != len(sites):
        raise ValueError(f"sites {sites} contain duplicates")
    layers = list(inputs.check_layers(cfg, layers))  # None = all; integers only, in range, no duplicates
    if not layers and any(s in LAYER_SITES for s in sites):
        raise ValueError(f"layers is empty; pick layers from 0..{cfg.n_layers - 1} (or None for all)")
    if not any(s in LAYER_SITES for s in sites):
        layers = []
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} not supported; choose one of {DTYPES}")
    for name, v in (("batch_size", batch_size), ("chunk_examples", chunk_examples)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer; got {v!r}")
    return sites, layers


def _check_meta(meta, n: int) -> dict:
    out = {}
    for k, v in (meta or {}).items():
        a = np.asarray(v)
        if not isinstance(k, str) or not k or "/" in k:
            raise ValueError(f"meta keys must be non-empty strings without '/'; got {k!r}")
        if a.ndim == 0 or a.shape[0] != n:
            raise ValueError(f"meta[{k!r}] must have one entry per example ({n}); got shape {a.shape}")
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise ValueError(f"meta[{k!r}] must be numeric (store strings as integer ids); got dtype {a.dtype}")
        out[k] = a
    return out


def _plan(model, seqs, rule, batch_size, chunk_examples):
    """Chunks of example ranges, each a list of padded batches with their resolved rows."""
    chunks = []
    for c0 in range(0, len(seqs), chunk_examples):
        batches = []
        for b0 in range(c0, min(len(seqs), c0 + chunk_examples), batch_size):
            part = seqs[b0:min(b0 + batch_size, c0 + chunk_examples, len(seqs))]
            tokens, mask = _pad_batch(part, batch_size, model.cfg.n_ctx)
            rows, padded, own = _positions_for_batch(rule, part, b0, tokens, mask)
            batches.append(dict(first=b0, tokens=tokens, mask=mask, rows=rows, padded=padded, own=own))
        chunks.append(dict(first=c0, n=min(chunk_examples, len(seqs) - c0), batches=batches))
    return chunks


def _fingerprint(seqs, chunks, meta) -> str:
    h = hashlib.sha256()
    for s in seqs:
        h.update(np.int64(len(s)).tobytes() + s.astype(np.int32).tobytes())
    for c in chunks:
        for b in c["batches"]:
            h.update(b["rows"].tobytes() + b["own"].tobytes())
    for k in sorted(meta):
        h.update(k.encode() + str(meta[k].dtype).encode() + np.ascontiguousarray(meta[k]).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# collect


def collect(model, data, *, sites, layers=None, positions="last", out_dir, batch_size: int = 16,
            chunk_examples: int = 1024, dtype: str = "float32", meta: dict | None = None,
            units=None, progress: bool = False) -> "ActivationDataset":
    """Record ``sites`` at ``layers`` (None = all) and the chosen ``positions`` of every example into
    chunked safetensors files under ``out_dir``; resumes an interrupted identical collection.

    ``data``: a list of texts (tokenized with ``model.to_tokens``), a list of 1-D token sequences, a
    [N, T] int array, a (tokens, attention_mask) pair, or a list of such pairs (token batches). ``positions``: "last" (last real token),
    "all" (every real token), an int array [N] / [N, P] of indices into each example's own tokens
    (negatives from its end), or a callable (tokens [B, T], mask [B, T]) -> [B] / [B, P] indices
    into the left-padded batch it is given. ``meta``: {name: array [N, ...]} stored per row.
    ``units``: distinct indices into the last feature axis of every site (e.g. 32 of an MLP's
    neurons): only those are stored, so records over millions of tokens stay small. The model runs
    only as deep as the deepest requested layer (no unembedding unless ``logits`` is a site).
    """
    cfg = model.cfg
    sites, layers = _validate_request(cfg, sites, layers, dtype, batch_size, chunk_examples)
    seqs, kind = _as_token_lists(model, data)
    seqs = _check_tokens(cfg, seqs)
    rule = _check_positions(positions, len(seqs))
    meta = _check_meta(meta, len(seqs))
    units = _check_units(cfg, sites, units)
    chunks = _plan(model, seqs, rule, int(batch_size), int(chunk_examples))  # resolves every position first

    spec = {
        "format": FORMAT,
        "cfg": cfg.to_dict(),
        "model_fingerprint": model_fingerprint(model),  # the weights (and config): the one fingerprint
        "sites": sites,
        "layers": layers,
        "positions": _rule_name(positions),
        "dtype": dtype,
        "n_inputs": len(seqs),
        "batch_size": int(batch_size),
        "chunk_examples": int(chunk_examples),
        "feature_shapes": {s: _stored_shape(cfg, s, units) for s in sites},
        "units": None if units is None else units.tolist(),
        "meta_keys": {k: [str(v.dtype), list(v.shape[1:])] for k, v in meta.items()},
        "fingerprint": _fingerprint(seqs, chunks, meta),
    }
    spec = json.loads(json.dumps(spec))
    out = Path(out_dir)
    done = _open_out_dir(out, spec)
    manifest = dict(spec, model=getattr(model, "name", ""), input_kind=kind, chunks=done,
                    complete=len(done) == len(chunks))
    manifest["n_rows"] = sum(c["n_rows"] for c in done)
    _write_json(manifest, out / MANIFEST)

    np_dtype = _np_dtype(dtype)
    todo = range(len(done), len(chunks))
    if progress:
        from tqdm import tqdm

        todo = tqdm(todo, desc="chunks")
    for ci in todo:
        tensors = _run_chunk(model, chunks[ci], sites, layers, np_dtype, meta, units)
        name = f"chunk_{ci:05d}.safetensors"
        write_safetensors(tensors, out / name)
        n_rows = int(tensors["example_ids"].shape[0])
        manifest["chunks"].append({"file": name, "n_examples": chunks[ci]["n"], "n_rows": n_rows})
        manifest["n_rows"] += n_rows
        manifest["complete"] = len(manifest["chunks"]) == len(chunks)
        _write_json(manifest, out / MANIFEST)
    return ActivationDataset(out)


def _open_out_dir(out: Path, spec: dict) -> list:
    """The chunks already written by an identical collection in ``out`` ([] for a fresh folder);
    refuses a folder holding a different collection or unrelated files."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST
    if not path.exists():
        stray = [p.name for p in out.iterdir() if not p.name.endswith(".tmp")]
        if stray:
            raise ValueError(f"out_dir {out} is not empty and holds no activation manifest ({stray[:3]}); "
                             "choose an empty or new folder")
        return []
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); refusing to write into {out}") from None
    diff = sorted(k for k in spec if old.get(k) != spec[k])
    if diff:
        raise ValueError(f"out_dir {out} already holds a different activation collection (differs in: "
                         f"{', '.join(diff)}); use a new out_dir or delete the old one")
    for c in old["chunks"]:
        f = out / c["file"]
        if not f.exists():
            raise ValueError(f"{out}: chunk {c['file']} listed in the manifest is missing; the collection is "
                             "damaged, delete the folder and collect again")
        read_safetensors(f)  # raises on truncation
    return list(old["chunks"])


def _check_units(cfg, sites, units):
    """``units`` as a sorted-as-given int array of distinct indices valid for every site's last
    feature axis, or None (keep every unit)."""
    if units is None:
        return None
    arr = np.asarray(units)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"units must be a non-empty 1-D array of integer unit indices; got {arr.dtype} {arr.shape}")
    if len(np.unique(arr)) != arr.size:
        raise ValueError(f"units contain duplicates: {arr.tolist()[:10]}...")
    for s in sites:
        width = feature_shape(cfg, s)[-1]
        bad = arr[(arr < 0) | (arr >= width)]
        if bad.size:
            raise ValueError(f"units {bad.tolist()[:5]} are outside site {s!r}'s last axis 0..{width - 1}")
    return arr.astype(np.int64)


def _stored_shape(cfg, site, units) -> list:
    shape = list(feature_shape(cfg, site))
    if units is not None:
        shape[-1] = int(len(units))
    return shape


def _run_chunk(model, chunk, sites, layers, np_dtype, meta, units=None) -> dict:
    """Run every batch of one chunk and gather the chosen rows: {site: [L, R, ...] or [R, ...]}."""
    parts = {s: [] for s in sites}
    ids, own = [], []
    for b in chunk["batches"]:
        tokens, mask, pos, ivs = M.prepare(model.cfg, model.params, b["tokens"], b["mask"], None)
        cache = M.run_recorded_jit(model.cfg, model.params, tokens, mask, pos, ivs, tuple(sites), tuple(layers))
        rows, padded = jnp.asarray(b["rows"]), jnp.asarray(b["padded"])
        for s in sites:
            acts = cache[s]
            picked = acts[:, rows, padded] if s in LAYER_SITES else acts[rows, padded]
            if units is not None:
                picked = picked[..., jnp.asarray(units)]
            parts[s].append(np.asarray(jax.device_get(picked.astype(jnp.float32))).astype(np_dtype))
        ids.append(b["rows"].astype(np.int64) + b["first"])
        own.append(b["own"])
    tensors = {s: np.concatenate(v, axis=1 if s in LAYER_SITES else 0) for s, v in parts.items()}
    tensors["example_ids"] = np.concatenate(ids)
    tensors["token_positions"] = np.concatenate(own).astype(np.int32)
    for k, v in meta.items():
        tensors[f"meta.{k}"] = v[tensors["example_ids"]]
    return tensors


# ---------------------------------------------------------------------------------------------
# reading back


class ActivationDataset:
    """A collection written by ``collect``: ``load(site, layer)`` gathers it chunk by chunk from
    memory-mapped files; ``iter_chunks`` streams it without ever holding it whole."""

    def __init__(self, out_dir, allow_incomplete: bool = False):
        self.dir = Path(out_dir)
        path = self.dir / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"no activation manifest ({MANIFEST}) in {self.dir}")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown format {self.manifest.get('format')!r}; expected {FORMAT!r}")
        if not self.manifest["complete"] and not allow_incomplete:
            n_total = -(-self.manifest["n_inputs"] // self.manifest["chunk_examples"])
            raise ValueError(f"the collection in {self.dir} is incomplete ({len(self.manifest['chunks'])} of "
                             f"{n_total} chunks); run collect again with the same arguments to resume it, "
                             "or pass allow_incomplete=True to read the finished chunks")

    @property
    def n_examples(self) -> int:
        """Number of stored rows (one per example and chosen position)."""
        return int(sum(c["n_rows"] for c in self.manifest["chunks"]))

    @property
    def n_inputs(self) -> int:
        return int(self.manifest["n_inputs"])

    @property
    def sites(self) -> tuple:
        return tuple(self.manifest["sites"])

    @property
    def layers(self) -> tuple:
        return tuple(self.manifest["layers"])

    @property
    def meta_keys(self) -> tuple:
        return tuple(sorted(self.manifest["meta_keys"]))

    def _files(self):
        return [self.dir / c["file"] for c in self.manifest["chunks"]]

    def _check(self, site, layer):
        if site not in self.sites:
            raise ValueError(f"site {site!r} was not collected; collected sites: {', '.join(self.sites)}")
        if site in LAYER_SITES:
            if layer is not None and (isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer))
                                      or layer not in self.layers):
                raise ValueError(f"layer {layer!r} was not collected; collected layers: {list(self.layers)}")
            return None if layer is None else self.layers.index(int(layer))
        if layer is not None:
            raise ValueError(f"site {site!r} has no layer axis; pass layer=None")
        return None

    def iter_chunks(self, site: str, layer: int | None = None):
        """Yield each chunk's (memory-mapped, read-only) activations: [L, R_c, ...] or [R_c, ...]."""
        idx = self._check(site, layer)
        for f in self._files():
            a = read_safetensors(f)[site]
            yield a if idx is None else a[idx]

    def load(self, site: str, layer: int | None = None) -> np.ndarray:
        """All rows of ``site``: [L, N, ...] for a layer site (or [N, ...] for one ``layer``, a model
        layer number among ``layers``), [N, ...] for embed/final/logits."""
        idx = self._check(site, layer)
        feat = tuple(self.manifest["feature_shapes"][site])
        lead = (len(self.layers),) if site in LAYER_SITES and idx is None else ()
        out = np.empty(lead + (self.n_examples,) + feat, _np_dtype(self.manifest["dtype"]))
        r = 0
        for a in self.iter_chunks(site, layer):
            n = a.shape[len(lead)]
            out[(slice(None),) * len(lead) + (slice(r, r + n),)] = a
            r += n
        return out

    def _column(self, key):
        parts = [read_safetensors(f)[key] for f in self._files()]
        return np.concatenate(parts) if parts else np.zeros(0)

    @property
    def example_ids(self) -> np.ndarray:
        """Index of the input example each row came from [N]."""
        return self._column("example_ids")

    @property
    def token_positions(self) -> np.ndarray:
        """Position of each row within its example's own tokens (0 = first real token) [N]."""
        return self._column("token_positions")

    def meta(self, name: str) -> np.ndarray:
        """The per-example metadata ``name`` passed to ``collect``, repeated per row [N, ...]."""
        if name not in self.manifest["meta_keys"]:
            raise ValueError(f"no metadata {name!r}; stored: {list(self.meta_keys)}")
        return self._column(f"meta.{name}")

    def __repr__(self):
        return (f"ActivationDataset({str(self.dir)!r}, rows={self.n_examples}, sites={list(self.sites)}, "
                f"layers={list(self.layers)}, positions={self.manifest['positions']!r})")

