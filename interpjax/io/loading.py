"""Load Hugging Face checkpoints (local folder or hub id) into JAX params without torch.

Weights come from safetensors (single file or sharded index), read with a small memory-mapped
reader that checks every tensor lies inside the file (a truncated download is a clear error).
Pickled ``.bin`` checkpoints are refused unless ``allow_pickle=True``, and then read with torch's
weights-only loader.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path, PurePosixPath

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from . import convert, gguf
from ..core.config import Config

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors_header(path, with_metadata: bool = False) -> tuple:
    """(tensor entries, data start, data length) of a .safetensors file, every entry checked: a
    ValueError naming the file (and the tensor) for a truncated file, a header that is not a UTF-8
    JSON object, or an entry whose dtype, shape or data offsets are missing or disagree. With
    ``with_metadata`` the ``__metadata__`` dict (checked to be string -> string) comes fourth."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise ValueError(f"{path}: truncated safetensors file (header says {n} bytes, file has {size})")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt safetensors header, not UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header: a {type(header).__name__}, not an object "
                         f"(expected a JSON object of tensors)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError(f"{path}: corrupt safetensors metadata: expected a JSON object of strings")
    data_len = size - 8 - n
    for name, info in header.items():
        _check_entry(path, name, info, data_len)
    return (header, 8 + n, data_len, meta) if with_metadata else (header, 8 + n, data_len)


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_entry(path: Path, name: str, info, data_len: int) -> None:
    """One header entry: a known dtype, a shape of counts, offsets inside the data spanning exactly
    the bytes the shape needs."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise ValueError(f"{where}: header entry must be an object with dtype, shape and data_offsets, "
                         f"got {type(info).__name__}")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
    if missing:
        raise ValueError(f"{where}: header entry lacks {missing} (it has {sorted(info)})")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
        raise ValueError(f"{where}: unsupported dtype {dtype!r}; supported: {sorted(_ST_DTYPES)}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise ValueError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise ValueError(f"{where}: data_offsets {offsets!r} are not [start, end] with 0 <= start <= end")
    start, end = offsets
    need = int(np.prod(shape, dtype=np.int64)) * np.dtype(_ST_DTYPES[dtype]).itemsize
    if end - start != need:
        raise ValueError(f"{where}: data_offsets [{start}, {end}] span {end - start} bytes but shape "
                         f"{tuple(shape)} of {dtype} needs {need}")
    if end > data_len:
        raise ValueError(f"{path}: truncated safetensors file: tensor {name!r} needs data bytes up to {end}, "
                         f"file has {data_len}")


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Memory-map a .safetensors file into {name: read-only numpy view}; pages are read only when
    touched. Raises a ValueError naming the file and tensor on truncation or corruption."""
    path = Path(path)
    header, data_start, data_len = read_safetensors_header(path)
    if not data_len:
        buf = np.zeros(0, np.uint8)
    else:
        buf = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(data_len,))
    out = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        out[name] = buf[start:end].view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def write_safetensors(tensors: dict, path) -> None:
    """Write {name: array} as safetensors (atomically: temp file then rename)."""
    from safetensors.numpy import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: np.ascontiguousarray(np.asarray(v)) for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def resolve(name_or_path: str, revision: str | None = None) -> Path:
    """A local folder, or a hub id resolved through the Hugging Face cache (offline when cached)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"expected a checkpoint folder or hub id (a str or path), got {type(name_or_path).__name__}")
    if not str(name_or_path).strip():
        raise ValueError(f"empty checkpoint path {str(name_or_path)!r}: pass a checkpoint folder (use '.' for the "
                         "current directory) or a hub id")
    if str(name_or_path).lower() in gguf.NAMED:  # named defaults: GGUF files from pip packages
        return gguf.named_file(str(name_or_path))
    p = Path(os.path.expanduser(str(name_or_path)))
    if p.is_dir():
        return p
    if p.is_file() and p.suffix == ".gguf":
        return p
    if p.exists():
        raise ValueError(f"{name_or_path}: expected a checkpoint folder or a .gguf file, got another file")
    if str(name_or_path).startswith((".", "/", "~")):
        raise FileNotFoundError(f"no checkpoint folder at {name_or_path}")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.bin", "*.tiktoken"]
    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=patterns,
                                      local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=patterns))
    except Exception as e:
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a local folder nor a hub id available in the Hugging Face cache "
            f"or online ({type(e).__name__}: {e})"
        ) from None


def model_label(name_or_path: str) -> str:
    """How results record a model: a local folder's own name (never its path) or the hub id with
    "/" as "--" (safe as a folder name)."""
    path = Path(name_or_path)
    if path.exists():
        return path.resolve().name
    return str(name_or_path).strip("/").replace("/", "--")


def read_index(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a sharded-checkpoint index, checked: valid JSON, a map of tensor name
    to shard file, and every shard a relative path inside the checkpoint folder."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{index}: corrupt checkpoint index, not UTF-8 JSON ({e})") from None
    wmap = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wmap, dict) or not wmap:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{index}: checkpoint index needs a non-empty 'weight_map' of tensor name -> shard "
                         f"file; found {found}")
    for name, shard in wmap.items():
        if not isinstance(shard, str) or not shard:
            raise ValueError(f"{index}: weight_map[{name!r}] = {shard!r} is not a shard file name")
        parts = PurePosixPath(shard.replace("\\", "/")).parts
        if PurePosixPath(shard).is_absolute() or Path(shard).is_absolute() or ".." in parts:
            raise ValueError(f"{index}: weight_map[{name!r}] = {shard!r} points outside the checkpoint folder; "
                             "shard files must be relative paths inside it")
    return wmap


def check_layer_shapes(tensors: dict, files: dict) -> None:
    """Every layer's copy of a weight (names that differ only in the layer number) has one shape;
    a ValueError naming both tensors and their files otherwise (before any stacking)."""
    first: dict[str, tuple] = {}
    for name in sorted(tensors, key=_layer_sort_key):
        m = _LAYER_NUMBER.search(name)
        if m is None:
            continue
        template = name[: m.start(1)] + "{}" + name[m.end(1):]
        shape = tuple(tensors[name].shape)
        if template not in first:
            first[template] = (name, shape)
        elif first[template][1] != shape:
            name0, shape0 = first[template]
            raise ValueError(f"{files[name]}: tensor {name!r} has shape {shape} but {name0!r} (in "
                             f"{files[name0].name}) has {shape0}; every layer's copy of a weight must have one shape")


_LAYER_NUMBER = re.compile(r"\.(\d+)\.")


def _layer_sort_key(name: str):
    m = _LAYER_NUMBER.search(name)
    return (name, 0) if m is None else (name[: m.start(1)] + name[m.end(1):], int(m.group(1)))


def weight_files(folder: Path, allow_pickle: bool = False):
    """(getter, names) over the folder's weights: safetensors first, pickle only on request."""
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.exists():
        wmap = read_index(index)
        shards = sorted(set(wmap.values()))
        missing = [s for s in shards if not (folder / s).exists()]
        if missing:
            raise FileNotFoundError(f"sharded checkpoint is missing shard files {missing} listed in {index.name}")
        per_shard = {s: read_safetensors(folder / s) for s in shards}
        absent = sorted(n for n, s in wmap.items() if n not in per_shard[s])
        if absent:
            raise ValueError(f"{index}: shards lack tensors the index places in them, e.g. "
                             f"{[(n, wmap[n]) for n in absent[:3]]}")
        tensors, files = {}, {}
        for s, table in per_shard.items():  # every tensor from the shard the index names (others as found)
            for n, a in table.items():
                if wmap.get(n, s) == s:
                    tensors[n], files[n] = a, folder / s
        check_layer_shapes(tensors, files)
        return tensors.__getitem__, set(tensors)
    if single.exists():
        tensors = read_safetensors(single)
        check_layer_shapes(tensors, dict.fromkeys(tensors, single))
        return tensors.__getitem__, set(tensors)
    others = sorted(folder.glob("*.safetensors"))
    if others:
        tensors, files = {}, {}
        for f in others:
            table = read_safetensors(f)
            tensors.update(table)
            files.update(dict.fromkeys(table, f))
        check_layer_shapes(tensors, files)
        return tensors.__getitem__, set(tensors)
    pickles = sorted(folder.glob("pytorch_model*.bin"))
    if pickles:
        if not allow_pickle:
            raise ValueError(
                f"{folder.name} holds only pickled weights ({pickles[0].name}); pickles can run code when loaded. "
                f"Pass allow_pickle=True to read them with torch's weights-only loader, or convert to safetensors."
            )
        import torch

        tensors = {}
        for f in pickles:
            sd = torch.load(f, map_location="cpu", weights_only=True)
            tensors.update({k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in sd.items()})
        return tensors.__getitem__, set(tensors)
    raise FileNotFoundError(f"no weights (model.safetensors, *.safetensors or pytorch_model*.bin) in {folder}")


def load_params(name_or_path, dtype="float32", allow_pickle: bool = False, revision: str | None = None,
                allow_nonfinite: bool = False):
    """(Config, params, folder) for a checkpoint, without the tokenizer. Weights holding NaN or inf
    are refused (naming them) unless ``allow_nonfinite=True``."""
    from transformers import AutoConfig

    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} not supported; choose one of {list(DTYPES)}")
        dtype = DTYPES[dtype]
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in DTYPES.values()]:
        raise ValueError(f"dtype {dtype} not supported; choose one of {list(DTYPES)}")
    folder = resolve(name_or_path, revision)
    gguf_file = gguf.find_gguf(folder)
    if gguf_file is not None:  # llama.cpp's format, dequantized to dtype
        cfg, params = gguf.load_gguf(gguf_file, dtype, allow_nonfinite)  # checks finiteness while reading
        return cfg, params, gguf_file
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no config.json in {folder}")
    hf_config = AutoConfig.from_pretrained(str(folder))
    cfg = convert.config_from_hf(hf_config)
    get, names = weight_files(folder, allow_pickle)
    params = convert.params_from_hf(cfg, get, names, dtype)
    if not allow_nonfinite:
        check_finite(params, folder)
    return cfg, params, folder


def check_finite(params: dict, where) -> None:
    """Refuse weights holding NaN or inf (every output through them would be NaN), naming each such
    weight and, for stacked per-layer weights, the layers. One device reduction per weight."""
    import jax

    leaves = jax.tree_util.tree_leaves_with_path(params)
    floats = [(p, a) for p, a in leaves if jnp.issubdtype(a.dtype, jnp.floating)]
    if not floats:
        return
    counts = np.asarray(jnp.stack([jnp.sum(~jnp.isfinite(a)) for _, a in floats]))
    if not counts.any():
        return
    bad = []
    for (path, a), n in zip(floats, counts):
        if not n:
            continue
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if path and getattr(path[0], "key", None) == "layers":
            per_layer = np.asarray(jnp.sum(~jnp.isfinite(a.reshape(a.shape[0], -1)), axis=1))
            name += f" (layers {np.flatnonzero(per_layer).tolist()})"
        bad.append(f"{name}: {int(n)} values")
    raise ValueError(f"{where}: weights hold NaN or inf: {'; '.join(bad[:5])}; every output through them would be "
                     "NaN. Pass allow_nonfinite=True to load the checkpoint anyway")


def load_tokenizer(folder):
    """The checkpoint's tokenizer via AutoTokenizer, or None if the folder has none."""
    folder = Path(folder)
    gguf_file = gguf.find_gguf(folder)
    if gguf_file is not None:
        return gguf.tokenizer(gguf_file)
    if not any((folder / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def save_pretrained(cfg: Config, params: dict, folder, hf_config=None) -> None:
    """Write params as an HF checkpoint (config.json + model.safetensors) for round trips."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = convert.params_to_hf(cfg, params)
    if cfg.tie_embeddings:
        sd = {k: v for k, v in sd.items() if not k.endswith(("lm_head.weight", "embed_out.weight"))}
    write_safetensors(sd, folder / "model.safetensors")
    if hf_config is not None:
        hf_config.save_pretrained(str(folder))
