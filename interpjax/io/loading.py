"""Load Hugging Face checkpoints (local folder or hub id) into JAX params without torch.

Weights come from safetensors (single file or sharded index), read with a small memory-mapped
reader that checks every tensor lies inside the file (a truncated download is a clear error).
Pickled ``.bin`` checkpoints are refused unless ``allow_pickle=True``, and then read with torch's
weights-only loader.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from . import convert
from ..core.config import Config

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Memory-map a .safetensors file into {name: numpy array}; raises on truncation/corruption."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path.name}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise ValueError(f"{path.name}: truncated safetensors file (header says {n} bytes, file has {size})")
        try:
            header = json.loads(f.read(n))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path.name}: corrupt safetensors header ({e})") from None
    data_len = size - 8 - n
    header.pop("__metadata__", None)
    need = max((info["data_offsets"][1] for info in header.values()), default=0)
    if need > data_len:
        raise ValueError(f"{path.name}: truncated safetensors file: tensors need {need} data bytes, file has {data_len}")
    buf = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n, shape=(data_len,)) if data_len else np.zeros(0, np.uint8)
    out = {}
    for name, info in header.items():
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{path.name}: tensor {name} has unsupported dtype {info['dtype']}")
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
    p = Path(os.path.expanduser(str(name_or_path)))
    if p.is_dir():
        return p
    if p.exists():
        raise ValueError(f"{name_or_path}: expected a checkpoint folder, got a file")
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


def weight_files(folder: Path, allow_pickle: bool = False):
    """(getter, names) over the folder's weights: safetensors first, pickle only on request."""
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.exists():
        wmap = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(wmap.values()))
        missing = [s for s in shards if not (folder / s).exists()]
        if missing:
            raise FileNotFoundError(f"sharded checkpoint is missing shard files {missing} listed in {index.name}")
        tensors = {}
        for s in shards:
            tensors.update(read_safetensors(folder / s))
        absent = sorted(set(wmap) - set(tensors))
        if absent:
            raise ValueError(f"shards lack tensors listed in the index, e.g. {absent[:3]}")
        return tensors.__getitem__, set(tensors)
    if single.exists():
        tensors = read_safetensors(single)
        return tensors.__getitem__, set(tensors)
    others = sorted(folder.glob("*.safetensors"))
    if others:
        tensors = {}
        for f in others:
            tensors.update(read_safetensors(f))
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


def load_params(name_or_path, dtype="float32", allow_pickle: bool = False, revision: str | None = None):
    """(Config, params, folder) for a checkpoint, without the tokenizer."""
    from transformers import AutoConfig

    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} not supported; choose one of {list(DTYPES)}")
        dtype = DTYPES[dtype]
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in DTYPES.values()]:
        raise ValueError(f"dtype {dtype} not supported; choose one of {list(DTYPES)}")
    folder = resolve(name_or_path, revision)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no config.json in {folder}")
    hf_config = AutoConfig.from_pretrained(str(folder))
    cfg = convert.config_from_hf(hf_config)
    get, names = weight_files(folder, allow_pickle)
    params = convert.params_from_hf(cfg, get, names, dtype)
    return cfg, params, folder


def load_tokenizer(folder):
    """The checkpoint's tokenizer via AutoTokenizer, or None if the folder has none."""
    folder = Path(folder)
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
