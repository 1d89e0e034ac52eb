"""The one artifact format: arrays in a safetensors file whose header holds JSON metadata (format
name and version, the identity and fingerprint of the model it was made on, the artifact's own
fields), written atomically; plus the one model fingerprint and the atomic-write helpers every
saver shares (artifacts, training logs, run metadata).

Temporaries are named ``.NAME.<pid>-<token>.tmp`` beside the target, so a save killed half-way
(even by SIGKILL) leaves only a file that the next save or load of the same target removes once
its process is gone; the target itself is only ever replaced by a complete file (``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import struct
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

META_KEY = "interpjax.artifact"  # the safetensors header metadata entry holding the JSON description
IDENTITY_KEYS = ("model", "family", "d_model", "n_layers", "vocab_size", "fingerprint")
CHECKED_KEYS = ("family", "d_model", "n_layers", "vocab_size", "fingerprint")  # "model" (a name) is informative
_DTYPES = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
           np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.int64): "I64", np.dtype(np.int32): "I32",
           np.dtype(np.int16): "I16", np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8",
           np.dtype(np.bool_): "BOOL"}


class ArtifactError(ValueError):
    """A saved artifact lacks an entry or holds a bad one (raised without the path; loaders add it)."""


# ---------------------------------------------------------------------------------------------
# atomic writes and disposable temporaries


def temp_path(path) -> Path:
    """A fresh temporary sibling of ``path``: ``.NAME.<pid>-<token>.tmp`` (disposable once pid is gone)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_temps(path) -> list[Path]:
    """Remove temporaries of ``path`` left by saves whose process has died; returns what was removed.
    Also removes the pid-less ``.NAME.tmp`` of earlier interpjax versions."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    prefix = f".{path.name}."
    for p in path.parent.iterdir():
        name = p.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        tag = name[len(prefix):-len(".tmp")]
        if tag:
            pid = tag.split("-", 1)[0]
            if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
                continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
        except FileNotFoundError:  # another process cleaned it first
            pass
    return removed


def atomic_write(path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temporary sibling, fsync it, then rename it onto ``path`` atomically.
    On an exception the temporary is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` through a temporary sibling and an atomic rename."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling and an atomic rename."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


# ---------------------------------------------------------------------------------------------
# safetensors with metadata (written here so bfloat16 and streaming writes work)


def _as_saveable(name: str, a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype not in _DTYPES:
        raise ValueError(f"tensor {name!r} has dtype {a.dtype}; savable dtypes: {sorted(str(d) for d in _DTYPES)}")
    return np.asarray(a, order="C")  # (np.ascontiguousarray would make a 0-d array 1-d)


def write_safetensors_file(f, tensors: dict, metadata: dict[str, str]) -> None:
    """Write safetensors to the open binary file ``f``, tensors in name order, streaming each array."""
    header, offset = {}, 0
    for name in sorted(tensors):
        a = tensors[name]
        header[name] = {"dtype": _DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # 8-byte aligned data, as safetensors writes it
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for name in sorted(tensors):
        f.write(memoryview(tensors[name].reshape(-1).view(np.uint8)))


def read_header(path) -> tuple[dict, dict]:
    """(tensor entries, metadata) of a safetensors file; a ValueError naming the file if corrupt."""
    from .loading import read_safetensors_header

    header, _, _, meta = read_safetensors_header(path, with_metadata=True)
    return header, meta


def read_tensors(path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as an owned numpy array; a ValueError naming the file and
    the tensor if one is malformed."""
    from .loading import read_safetensors

    try:
        header, _ = read_header(path)
        return {k: np.array(v).reshape(tuple(header[k]["shape"])) for k, v in read_safetensors(path).items()}
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if str(path) in msg else f"{path}: {msg}") from None
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{path}: malformed tensor entry in the safetensors header "
                         f"({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------------------
# the model fingerprint


def _fmix32(h):
    """MurmurHash3's 32-bit finaliser: a bijective mixer of uint32 words."""
    h = h ^ (h >> jnp.uint32(16))
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> jnp.uint32(13))
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> jnp.uint32(16))


def _words(x):
    """The bits of every element of ``x`` as uint32 (64-bit elements folded into one word)."""
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        x = jnp.stack([jnp.real(x), jnp.imag(x)], -1)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = x.dtype.itemsize
    if size == 8:
        w = jax.lax.bitcast_convert_type(x, jnp.uint32)  # [..., 2]
        return w[..., 0] ^ _fmix32(w[..., 1] + jnp.uint32(0x9E3779B9))
    utype = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
    return jax.lax.bitcast_convert_type(x, utype).astype(jnp.uint32)


def _leaf_checksum(x):
    """Two order-independent uint32 checksums of a leaf: wrapped sums over its elements of a hash of
    (bits, flat position) and of bits x an odd position weight. Integer sums are exact in any
    reduction order, so every device and every call gives the same words; changing or moving any
    element changes them."""
    w = _words(x)
    idx = jnp.zeros(w.shape, jnp.uint32)
    stride = 1
    for ax in range(w.ndim - 1, -1, -1):
        idx = idx + jax.lax.broadcasted_iota(jnp.uint32, w.shape, ax) * jnp.uint32(stride % 2**32)
        stride *= w.shape[ax]
    mixed = jnp.sum(_fmix32(w ^ _fmix32(idx ^ jnp.uint32(0x243F6A88))), dtype=jnp.uint32)
    # odd position weights: any one changed element changes this word exactly (odd numbers are
    # invertible mod 2^32), and so does almost any exchange of two elements
    linear = jnp.sum(w * (idx * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)
    return jnp.stack([mixed, linear])


@jax.jit
def _checksums(leaves):
    return jnp.stack([_leaf_checksum(x) for x in leaves]) if leaves else jnp.zeros((0, 2), jnp.uint32)


_CACHE: dict = {}  # (treedef, leaf ids) -> (weakrefs to the leaves, fingerprint); jax arrays are immutable


def _split(model_or_cfg, params):
    if params is not None:
        return model_or_cfg, params
    if isinstance(model_or_cfg, tuple) and len(model_or_cfg) == 2:
        return model_or_cfg
    if hasattr(model_or_cfg, "cfg") and hasattr(model_or_cfg, "params"):
        return model_or_cfg.cfg, model_or_cfg.params
    return None, model_or_cfg


def model_fingerprint(model_or_cfg, params=None) -> str:
    """16 hex digits identifying a model's weights (and config when known): ``model_fingerprint(model)``,
    ``model_fingerprint(cfg, params)``, ``model_fingerprint((cfg, params))`` or ``model_fingerprint(params)``.

    Computed on device: every leaf is reduced to two exact integer checksums of all its elements in
    one jitted program, so only two words per leaf reach the host. Equal for the same weights loaded
    twice, different for other weights (any changed element), other dtypes or another config.
    """
    cfg, params = _split(model_or_cfg, params)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    if not flat:
        raise ValueError("model_fingerprint: the params hold no arrays")
    leaves = [v for _, v in flat]
    cacheable = all(isinstance(v, jax.Array) for v in leaves)
    key = (treedef, tuple(id(v) for v in leaves), None if cfg is None else json.dumps(cfg.to_dict(), sort_keys=True,
                                                                                         default=str))
    hit = _CACHE.get(key) if cacheable else None
    if hit is not None and all(r() is v for r, v in zip(hit[0], leaves)):
        return hit[1]
    words = np.asarray(_checksums([jnp.asarray(v) for v in leaves]))
    h = hashlib.sha256()
    if cfg is not None:
        h.update(key[2].encode())
    for (p, v), w in zip(flat, words):
        h.update(f"{jax.tree_util.keystr(p)}|{tuple(np.shape(v))}|{jnp.asarray(v).dtype}|{int(w[0])},{int(w[1])};"
                 .encode())
    fp = h.hexdigest()[:16]
    if cacheable:
        if len(_CACHE) >= 16:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = ([weakref.ref(v) for v in leaves], fp)
    return fp


def model_identity(model_or_cfg, params=None, name: str | None = None) -> dict:
    """What an artifact records about the model it was made on: name (last path part, informative
    only), family, widths, depth, vocabulary and the weights' fingerprint."""
    cfg, params = _split(model_or_cfg, params)
    if cfg is None:
        raise ValueError("model_identity needs a Model or (cfg, params), not bare params")
    if name is None:
        name = str(getattr(model_or_cfg, "name", "") or "")
    return {"model": Path(name).name or name, "family": cfg.family, "d_model": cfg.d_model, "n_layers": cfg.n_layers,
            "vocab_size": cfg.vocab_size, "fingerprint": model_fingerprint(cfg, params)}


def as_identity(model) -> dict | None:
    """``model`` as an identity dict: None, an identity dict as is, or a Model / (cfg, params)."""
    if model is None or isinstance(model, dict):
        return model
    return model_identity(model)


def check_model(saved: dict | None, model, what: str = "artifact") -> None:
    """Refuse an artifact made on another model: family, width, depth, vocabulary or weights
    (fingerprint) differ; both fingerprints are named. A saved identity without a fingerprint (older
    files) is checked on the rest, with a warning."""
    if not saved:
        return
    have = as_identity(model)
    keys = [k for k in CHECKED_KEYS if k in saved]
    diff = [f"{k}: saved {saved.get(k)!r}, model has {have[k]!r}" for k in keys if saved.get(k) != have[k]]
    if diff:
        names = f"model: saved {saved.get('model')!r}, model has {have['model']!r}"
        same = saved.get("model") == have["model"] and diff[0].startswith("fingerprint") and len(diff) == 1
        hint = ": same name, other weights" if same else ""
        parts = ([] if saved.get("model") == have["model"] else [names]) + diff
        raise ValueError(f"{what} was made for another model{hint} ({'; '.join(parts)}); rebuild it on this model")
    if "fingerprint" not in saved:
        warnings.warn(f"{what} records no weight fingerprint (an older file): it was checked on family and widths "
                      f"only; load it with model= and save it again to record one", stacklevel=3)


# ---------------------------------------------------------------------------------------------
# save / load


@dataclass(frozen=True)
class Artifact:
    """What ``load_artifact`` returns: the tensors, the artifact's own metadata, its format name and
    version, and the identity of the model it was made on (None if it records none)."""

    arrays: dict
    meta: dict
    format: str
    version: int
    model: dict | None
    path: Path


def _json(meta: dict, what: str) -> str:
    try:
        return json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON-serialisable ({e}); convert it to numbers, strings, lists and dicts") \
            from None


def save_artifact(path, arrays: dict, meta: dict, *, format: str, version: int, model=None) -> Path:
    """Write ``arrays`` ({name: array}) and JSON-serialisable ``meta`` to the safetensors file ``path``,
    atomically, tagged with ``format`` / ``version`` and (``model``: a Model, (cfg, params) or an
    identity dict) the model's identity and fingerprint. Arrays keep their dtype."""
    if not isinstance(format, str) or not format:
        raise ValueError(f"format must be a non-empty string; got {format!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive integer; got {version!r}")
    if not isinstance(arrays, dict) or not all(isinstance(k, str) and k for k in arrays):
        raise ValueError(f"arrays must be a dict of non-empty string names to arrays; got keys "
                         f"{list(arrays) if isinstance(arrays, dict) else type(arrays).__name__}")
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be a dict; got {type(meta).__name__}")
    tensors = {k: _as_saveable(k, v) for k, v in arrays.items()}
    info = {"format": format, "version": version, "model": as_identity(model), "meta": meta}
    header = {META_KEY: _json(info, f"the metadata of {Path(path).name}")}

    def write(tmp: Path):
        with open(tmp, "wb") as f:
            write_safetensors_file(f, tensors, header)

    return atomic_write(path, write)


def _unreadable(path: Path, e: Exception) -> ValueError:
    msg = str(e)
    msg = msg[len(f"{path}: "):] if msg.startswith(f"{path}: ") else msg
    return ValueError(f"{path}: not a readable interpjax artifact ({msg})")


def load_artifact(path, *, format: str, model=None, version: int | None = None, tensors=(),
                  legacy: Callable[[dict], tuple] | None = None, what: str | None = None) -> Artifact:
    """Read a file written by ``save_artifact`` in ``format``; refuses another format, a version newer
    than ``version``, missing ``tensors`` and (with ``model``) an artifact made on another model.

    ``legacy(header_metadata) -> (meta, identity, version, renames) | None`` converts a file of an
    older interpjax format (recognised by its header metadata) into this one; ``renames`` maps old
    tensor names to new ones."""
    path = Path(path)
    clean_stale_temps(path)
    what = what or f"artifact {path.name}"
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an artifact file")
    if not path.is_file():
        raise FileNotFoundError(f"no artifact file at {path}")
    try:
        _, header_meta = read_header(path)
    except ValueError as e:
        raise _unreadable(path, e) from None
    renames = {}
    if META_KEY in header_meta:
        try:
            info = json.loads(header_meta[META_KEY])
            fmt, ver, ident, meta = info["format"], info["version"], info["model"], info["meta"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: corrupt {META_KEY!r} metadata ({type(e).__name__}: {e})") from None
    else:
        try:
            converted = legacy(header_meta) if legacy is not None else None
        except ArtifactError as e:
            raise ValueError(f"{path}: {e}") from None
        if converted is None:
            raise ValueError(f"{path}: not an interpjax artifact (no {META_KEY!r} entry in its header; found "
                             f"{sorted(header_meta)}); expected format {format!r}")
        meta, ident, ver, renames = converted
        fmt = format
    if fmt != format:
        raise ValueError(f"{path}: format {fmt!r}, expected {format!r}")
    if version is not None and (not isinstance(ver, int) or ver > version):
        raise ValueError(f"{path}: {format} version {ver!r} is newer than this interpjax reads (up to {version}); "
                         f"upgrade interpjax")
    try:
        arrays = read_tensors(path)
    except ValueError as e:
        raise _unreadable(path, e) from None
    arrays = {renames.get(k, k): v for k, v in arrays.items()}
    missing = [t for t in tensors if t not in arrays]
    if missing:
        raise ValueError(f"{path}: missing tensor {missing[0]!r} (the file holds {sorted(arrays)})")
    if model is not None:
        check_model(ident, model, what)
    return Artifact(arrays, meta, fmt, ver, ident, path)
