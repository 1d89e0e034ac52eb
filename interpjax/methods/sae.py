"""Sparse autoencoders (SAEs) and transcoders as values: encode/decode, SAELens and Gemma Scope
folders, a splice intervention that edits features while keeping the reconstruction error, and a
one-backward feature attribution.

Encoding (``pre = (x - b_dec if apply_b_dec_to_input else x) @ W_enc + b_enc``):

* ``relu``:      f = relu(pre)
* ``topk``:      keep the k largest ``pre`` of each token, then relu them (so at most k nonzeros;
                 exactly k when at least k are positive); the rest are 0
* ``jumprelu``:  f = relu(pre) where pre > threshold, else 0 (Gemma Scope / SAELens; equal to
                 ``pre * (pre > threshold)`` for the usual non-negative thresholds)
* ``batchtopk``: at training time (``encode_batch``) keep the ``k * N`` largest relu(pre) over a
                 batch of N tokens; at inference (``encode``), as in the BatchTopK paper (Bussmann
                 et al. 2024) and SAELens, a threshold: exactly the JumpReLU rule with ``threshold``
                 (which ``encode`` requires; training is expected to set it)

Decoding is ``f @ W_dec + b_dec``. A transcoder reads one site (``site_in``) and writes another
(``site_out``); its ``W_dec`` / ``b_dec`` may have another width ``d_out``.

``encode`` and ``decode`` are pure functions of the dataclass's arrays (the structure checks only
read shapes), so a bank of SAEs stacked on a leading axis works under ``jax.vmap``. Build SAEs
with ``SAE.create`` / ``SAE.random`` / ``load_sae``, which validate; a bare ``SAE(...)`` is
validated the first time it encodes or is spliced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ..core import inputs
from ..core import model as M
from ..core import interventions as ivmod
from ..core.interventions import Intervention, check_dtype, check_real_finite, check_suffix
from ..core.sites import ATTN_SITES, check_site, is_layer_site, site_shape

KINDS = ("relu", "topk", "batchtopk", "jumprelu")
SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
GEMMA_SCOPE_FILE = "params.npz"
LAYOUTS = (f"SAELens (a folder with {SAELENS_CFG} + {SAELENS_WEIGHTS})",
           f"Gemma Scope ({GEMMA_SCOPE_FILE}, or a folder holding it)")
WEIGHT_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")
_ARCH_TO_KIND = {"standard": "relu", "topk": "topk", "batchtopk": "batchtopk", "jumprelu": "jumprelu",
                 "transcoder": "relu", "jumprelu_transcoder": "jumprelu"}
_HOOK_SITES = {"hook_resid_pre": "resid_pre", "hook_resid_mid": "resid_mid", "hook_resid_post": "resid_post",
               "hook_attn_out": "attn_out", "hook_mlp_out": "mlp_out", "mlp.hook_pre": "mlp_pre",
               "mlp.hook_post": "mlp_post"}


def _static(**kw):
    return struct.field(pytree_node=False, **kw)


def _shape(a) -> tuple:
    return tuple(a.shape) if hasattr(a, "shape") else tuple(np.shape(a))


# ---------------------------------------------------------------------------------------------
# the SAE value


@struct.dataclass
class SAE:
    """A sparse autoencoder (or transcoder): ``W_enc`` [D, F], ``b_enc`` [F], ``W_dec`` [F, D_out],
    ``b_dec`` [D_out] (D_out = D except for transcoders), ``threshold`` [F] for jumprelu/batchtopk.
    Static: ``kind`` (one of ``KINDS``), ``k``, ``apply_b_dec_to_input``, the sites it reads
    (``site_in``) and writes (``site_out``; None = the site it reads), its ``layer`` and the
    SAELens hook names it was trained on (metadata)."""

    W_enc: Any
    b_enc: Any
    W_dec: Any
    b_dec: Any
    threshold: Any = None
    kind: str = _static(default="relu")
    k: int | None = _static(default=None)
    apply_b_dec_to_input: bool = _static(default=False)
    site_in: str | None = _static(default=None)
    site_out: str | None = _static(default=None)
    layer: int | None = _static(default=None)
    hook_name: str | None = _static(default=None)
    hook_layer: int | None = _static(default=None)
    hook_name_out: str | None = _static(default=None)

    # -- sizes -------------------------------------------------------------------------------

    @property
    def d_in(self) -> int:
        """Input width D."""
        return int(_shape(self.W_enc)[-2])

    @property
    def d_sae(self) -> int:
        """Number of features F."""
        return int(_shape(self.W_enc)[-1])

    @property
    def d_out(self) -> int:
        """Output width (D, or the written site's width for a transcoder)."""
        return int(_shape(self.W_dec)[-1])

    @property
    def is_transcoder(self) -> bool:
        """True when it writes another site (``site_out``) than the one it reads."""
        return self.site_out is not None and self.site_out != self.site_in

    @property
    def dtype(self):
        return jnp.dtype(self.W_enc.dtype)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def create(cls, W_enc, b_enc, W_dec, b_dec, threshold=None, *, kind: str = "relu", k: int | None = None,
               **static) -> "SAE":
        """A validated SAE from its four arrays (+ threshold); ``static`` sets the metadata fields."""
        sae = cls(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, threshold=threshold, kind=kind, k=k, **static)
        sae.check()
        check_real_finite_sae(sae)
        return sae

    @classmethod
    def random(cls, key, d_model: int, d_sae: int, *, kind: str = "relu", k: int | None = None,
               threshold=None, d_out: int | None = None, dtype=jnp.float32, **static) -> "SAE":
        """Random init as commonly done: decoder rows of unit norm, encoder = decoder transpose,
        zero biases; jumprelu thresholds default to 0 (batchtopk's stay unset until training)."""
        for name, n in (("d_model", d_model), ("d_sae", d_sae), ("d_out", d_out)):
            if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
                raise ValueError(f"{name} must be a positive integer, got {n!r}")
        d_out = d_model if d_out is None else int(d_out)
        W_dec = jax.random.normal(key, (d_sae, d_out), jnp.float32)
        W_dec = W_dec / jnp.linalg.norm(W_dec, axis=-1, keepdims=True)
        W_enc = W_dec.T if d_out == d_model else jax.random.normal(jax.random.fold_in(key, 1), (d_model, d_sae),
                                                                   jnp.float32) / np.sqrt(d_model)
        if threshold is None and kind == "jumprelu":
            threshold = jnp.zeros((d_sae,), dtype)
        elif threshold is not None:
            threshold = jnp.asarray(threshold, dtype)
        return cls.create(W_enc.astype(dtype), jnp.zeros((d_sae,), dtype), W_dec.astype(dtype),
                          jnp.zeros((d_out,), dtype), threshold, kind=kind, k=k, **static)

    # -- validation (shapes only: works on tracers and under vmap) ---------------------------

    def check(self) -> None:
        """Raise ValueError for an unknown kind, a bad k, mismatched shapes or a missing threshold."""
        if self.kind not in KINDS:
            raise ValueError(f"SAE.kind={self.kind!r}; valid kinds: {KINDS}")
        shapes = {n: _shape(getattr(self, n)) for n in WEIGHT_KEYS}
        if len(shapes["W_enc"]) != 2 or len(shapes["W_dec"]) != 2:
            raise ValueError(f"SAE.W_enc must be [D, F] and W_dec [F, D_out]; got {shapes['W_enc']} and "
                             f"{shapes['W_dec']} (stacked banks: vmap encode/decode over the leading axis)")
        D, F = shapes["W_enc"]
        want = {"W_enc": (D, F), "b_enc": (F,), "W_dec": (F, shapes["W_dec"][1]), "b_dec": (shapes["W_dec"][1],)}
        bad = {n: s for n, s in shapes.items() if s != want[n]}
        if bad:
            raise ValueError(f"SAE array shapes do not fit together: got {shapes}; with W_enc [D={D}, F={F}] "
                             f"expected b_enc {want['b_enc']}, W_dec (F={F}, D_out) and b_dec (D_out,)")
        if self.site_in is not None:
            check_site(self.site_in)
        if self.site_out is not None:
            check_site(self.site_out)
        if not self.is_transcoder and self.d_out != D:
            raise ValueError(f"SAE W_dec writes width {self.d_out} but W_enc reads {D}; only a transcoder "
                             f"(site_out set to another site than site_in) may change width")
        if self.apply_b_dec_to_input and self.d_out != D:
            raise ValueError(f"apply_b_dec_to_input=True needs b_dec of the input width {D}, got {self.d_out}")
        self._check_k(F)
        self._check_threshold(F)
        dtypes = {n: jnp.dtype(getattr(self, n).dtype).name for n in WEIGHT_KEYS if hasattr(getattr(self, n), "dtype")}
        if len(set(dtypes.values())) > 1:
            raise ValueError(f"SAE arrays must share one dtype, got {dtypes}")

    def _check_k(self, F: int) -> None:
        needs_k = self.kind in ("topk", "batchtopk")
        if not needs_k:
            if self.k is not None:
                raise ValueError(f"SAE(kind={self.kind!r}) takes no k (got k={self.k!r}); k is for topk/batchtopk")
            return
        if self.k is None:
            raise ValueError(f"SAE(kind={self.kind!r}) needs k, an integer in 1..{F}")
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or not 1 <= self.k <= F:
            raise ValueError(f"SAE.k={self.k!r} out of range: valid k are integers 1..{F} (F = d_sae)")

    def _check_threshold(self, F: int) -> None:
        if self.kind == "jumprelu" and self.threshold is None:
            raise ValueError("SAE(kind='jumprelu') needs a threshold [F]")
        if self.threshold is not None:
            if self.kind not in ("jumprelu", "batchtopk"):
                raise ValueError(f"SAE(kind={self.kind!r}) takes no threshold; thresholds are for jumprelu/batchtopk")
            if _shape(self.threshold) != (F,):
                raise ValueError(f"SAE.threshold has shape {_shape(self.threshold)}; expected ({F},)")

    # -- the maps ----------------------------------------------------------------------------

    def pre_acts(self, x_D):
        """Encoder pre-activations [..., F] of inputs [..., D]."""
        self.check()
        if _shape(x_D)[-1:] != (self.d_in,):
            raise ValueError(f"SAE input has shape {_shape(x_D)}; its last axis must be d_in={self.d_in}")
        if self.apply_b_dec_to_input:
            x_D = x_D - self.b_dec
        return x_D @ self.W_enc + self.b_enc

    def encode(self, x_D):
        """Feature activations f [..., F] of x [..., D] (inference rule of ``kind``; see the module doc)."""
        pre_F = self.pre_acts(x_D)
        if self.kind == "relu":
            return jax.nn.relu(pre_F)
        if self.kind == "topk":
            return _topk_last(pre_F, int(self.k))
        if self.threshold is None:
            raise ValueError("SAE(kind='batchtopk') encodes with a threshold at inference and has none; use "
                             "encode_batch (training-time batch top-k) or set threshold [F]")
        return jnp.where(pre_F > self.threshold, jax.nn.relu(pre_F), jnp.zeros_like(pre_F))

    def encode_batch(self, x_ND):
        """Training-time BatchTopK: keep the k * N largest relu(pre) over all N tokens of x [..., D]."""
        if self.kind != "batchtopk":
            raise ValueError(f"encode_batch is the batchtopk training rule; this SAE has kind={self.kind!r}")
        pre = jax.nn.relu(self.pre_acts(x_ND))
        flat = pre.reshape(-1)
        n_tokens = flat.shape[0] // self.d_sae
        vals, idx = jax.lax.top_k(flat, int(self.k) * n_tokens)
        return jnp.zeros_like(flat).at[idx].set(vals).reshape(pre.shape)

    def decode(self, f_F):
        """Reconstruction x_hat [..., D_out] = f @ W_dec + b_dec of feature activations [..., F]."""
        self.check()
        if _shape(f_F)[-1:] != (self.d_sae,):
            raise ValueError(f"SAE.decode input has shape {_shape(f_F)}; its last axis must be d_sae={self.d_sae}")
        return f_F @ self.W_dec + self.b_dec

    def reconstruct(self, x_D):
        """decode(encode(x))."""
        return self.decode(self.encode(x_D))

    __call__ = reconstruct


def _topk_last(pre_F, k: int):
    """Keep the k largest entries of the last axis (relu'd), zero the rest."""
    flat = pre_F.reshape(-1, pre_F.shape[-1])
    vals, idx = jax.lax.top_k(flat, k)
    rows = jnp.arange(flat.shape[0])[:, None]
    return jnp.zeros_like(flat).at[rows, idx].set(jax.nn.relu(vals)).reshape(pre_F.shape)


def check_real_finite_sae(sae: SAE) -> None:
    """Refuse SAE arrays holding nan/inf or complex values (concrete arrays only)."""
    for name in WEIGHT_KEYS + ("threshold",):
        check_real_finite(f"SAE.{name}", getattr(sae, name))


# ---------------------------------------------------------------------------------------------
# hook names -> sites


def hook_site(hook_name: str | None) -> tuple[str | None, int | None]:
    """(site, layer) of a TransformerLens hook name such as ``blocks.5.hook_resid_pre``; (None,
    None) for names without an exact counterpart among our sites (e.g. ``ln2.hook_normalized``)."""
    if not hook_name:
        return None, None
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", hook_name)
    if m is None or m.group(2) not in _HOOK_SITES:
        return None, None
    return _HOOK_SITES[m.group(2)], int(m.group(1))


def _tl_hook_name(site: str | None, layer: int | None) -> str | None:
    inverse = {v: k for k, v in _HOOK_SITES.items()}
    if site is None or layer is None or site not in inverse:
        return None
    return f"blocks.{layer}.{inverse[site]}"


# ---------------------------------------------------------------------------------------------
# loading and saving


def load_sae(path, dtype=jnp.float32) -> SAE:
    """Load an SAE from a SAELens folder or a Gemma Scope ``params.npz`` (no network), in ``dtype``."""
    p = Path(path)
    if p.is_dir() and (p / SAELENS_CFG).is_file() and (p / SAELENS_WEIGHTS).is_file():
        return _load_saelens(p, dtype)
    npz = p / GEMMA_SCOPE_FILE if p.is_dir() else p
    if npz.is_file() and npz.suffix == ".npz":
        return _load_gemma_scope(npz, dtype)
    raise ValueError(f"{str(path)!r} holds no SAE layout this loader knows; accepted layouts: {'; '.join(LAYOUTS)}")


def _cast(a, dtype):
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"SAE weights must be floating point, got dtype {a.dtype}")
    return jnp.asarray(a.astype(np.float32) if a.dtype.itemsize < 4 else a).astype(dtype)


def _load_gemma_scope(npz: Path, dtype) -> SAE:
    with np.load(npz, allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}
    want = set(WEIGHT_KEYS + ("threshold",))
    if set(arrays) != want:
        raise ValueError(f"Gemma Scope file {npz.name} must hold exactly {sorted(want)}; "
                         f"missing {sorted(want - set(arrays))}, unknown {sorted(set(arrays) - want)}")
    return SAE.create(*(_cast(arrays[n], dtype) for n in WEIGHT_KEYS), _cast(arrays["threshold"], dtype),
                      kind="jumprelu", apply_b_dec_to_input=False)


def _refuse(field: str, value, why: str):
    raise ValueError(f"SAELens cfg field {field}={value!r} is not supported: {why}")


def _saelens_kind(cfg: dict) -> tuple[str, int | None]:
    """(kind, k) of a SAELens cfg, pre-6 (activation_fn[_str] + activation_fn_kwargs) or 6.x (architecture)."""
    act = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    kwargs = dict(cfg.get("activation_fn_kwargs") or {})
    arch = cfg.get("architecture")
    if arch is None:  # pre-6 layouts default to standard unless topk
        arch = "topk" if act == "topk" else "standard"
    if arch not in _ARCH_TO_KIND:
        _refuse("architecture", arch, f"supported architectures are {sorted(_ARCH_TO_KIND)}")
    kind = _ARCH_TO_KIND[arch]
    if act is not None and act != ("topk" if kind == "topk" else "relu"):
        _refuse("activation_fn", act, f"architecture {arch!r} is implemented with "
                                      f"{'topk' if kind == 'topk' else 'relu'} only")
    extra = set(kwargs) - {"k"}
    if extra or (kwargs and kind not in ("topk", "batchtopk")):
        _refuse("activation_fn_kwargs", kwargs, "only k (for topk) is understood")
    k = cfg.get("k", kwargs.get("k"))
    if kind in ("topk", "batchtopk"):
        if k is None:
            _refuse("k", None, f"architecture {arch!r} needs k")
        if float(k) != int(k):
            _refuse("k", k, "k must be a whole number")
        k = int(k)
    else:
        k = None
    return kind, k


def _check_saelens_fields(cfg: dict, meta: dict) -> None:
    """Refuse the SAELens options that change computation and are not implemented here."""
    norm = cfg.get("normalize_activations", "none")
    if norm not in (None, False, "none"):
        _refuse("normalize_activations", norm, "only 'none' is implemented (fold the scaling into the weights)")
    hook = meta.get("hook_name") or ""
    reshape = cfg.get("reshape_activations", "hook_z" if "hook_z" in hook else "none")
    if reshape != "none":
        _refuse("reshape_activations", reshape, "only 'none' is implemented (hook_z SAEs act on [N, H] sites)")
    for field in ("finetuning_scaling_factor", "rescale_acts_by_decoder_norm"):
        if cfg.get(field):
            _refuse(field, cfg[field], "this scaling is not implemented")
    for field in ("hook_head_index", "hook_head_index_out"):
        if meta.get(field) is not None:
            _refuse(field, meta[field], "SAEs on one attention head's slice are not implemented")


def _load_saelens(folder: Path, dtype) -> SAE:
    from safetensors.numpy import load_file

    cfg = json.loads((folder / SAELENS_CFG).read_text())
    if not isinstance(cfg, dict):
        raise ValueError(f"{SAELENS_CFG} must hold a JSON object, got {type(cfg).__name__}")
    meta = {**{k: v for k, v in cfg.items() if k != "metadata"}, **dict(cfg.get("metadata") or {})}
    meta.setdefault("hook_name", cfg.get("hook_point"))
    kind, k = _saelens_kind(cfg)
    _check_saelens_fields(cfg, meta)
    if meta.get("interpjax_kind") == "batchtopk" and kind == "jumprelu":
        kind, k = "batchtopk", int(meta["interpjax_k"])
    w = load_file(str(folder / SAELENS_WEIGHTS))
    threshold = _saelens_threshold(w, kind)
    unknown = sorted(set(w) - set(WEIGHT_KEYS))
    if unknown:
        raise ValueError(f"{SAELENS_WEIGHTS} holds tensors {unknown} this loader does not implement; "
                         f"known: {list(WEIGHT_KEYS) + ['threshold', 'topk_threshold', 'scaling_factor (all ones)']}")
    missing = [n for n in WEIGHT_KEYS if n not in w]
    if missing:
        raise ValueError(f"{SAELENS_WEIGHTS} lacks tensors {missing}")
    for field, axis_of in (("d_in", ("W_enc", 0)), ("d_sae", ("W_enc", 1)), ("d_out", ("W_dec", 1))):
        if field in cfg and int(cfg[field]) != w[axis_of[0]].shape[axis_of[1]]:
            raise ValueError(f"SAELens cfg {field}={cfg[field]} but {axis_of[0]} has shape {w[axis_of[0]].shape}")
    transcoder = cfg.get("architecture") in ("transcoder", "jumprelu_transcoder")
    site_in, layer = hook_site(meta.get("hook_name"))
    site_out = hook_site(meta.get("hook_name_out"))[0] if transcoder else None
    hook_layer = meta.get("hook_layer", meta.get("hook_point_layer"))
    apply = bool(cfg.get("apply_b_dec_to_input", True))
    if transcoder and apply:
        _refuse("apply_b_dec_to_input", True, "transcoders do not subtract b_dec from their input")
    return SAE.create(*(_cast(w[n], dtype) for n in WEIGHT_KEYS),
                      None if threshold is None else _cast(threshold, dtype), kind=kind, k=k,
                      apply_b_dec_to_input=apply, site_in=site_in, site_out=site_out, layer=layer,
                      hook_name=meta.get("hook_name"), hook_layer=None if hook_layer is None else int(hook_layer),
                      hook_name_out=meta.get("hook_name_out"))


def _saelens_threshold(w: dict, kind: str):
    """Pop the threshold tensors: ``threshold`` [F], or a batchtopk ``topk_threshold`` scalar
    spread over F (SAELens' own conversion); refuse a non-trivial ``scaling_factor``."""
    if "scaling_factor" in w:
        s = w.pop("scaling_factor")
        if not np.all(s == 1):
            raise ValueError("sae_weights holds a scaling_factor that is not all ones; it is not implemented")
    threshold = w.pop("threshold", None)
    if "topk_threshold" in w:
        t = w.pop("topk_threshold")
        if kind != "batchtopk" or threshold is not None or np.size(t) != 1:
            raise ValueError(f"topk_threshold (shape {np.shape(t)}) is only understood as the one threshold of a "
                             f"batchtopk SAE")
        threshold = np.full(w["b_enc"].shape, np.asarray(t).reshape(()), np.asarray(t).dtype)
    if threshold is not None and kind not in ("jumprelu", "batchtopk"):
        raise ValueError(f"sae_weights holds a threshold but the cfg's kind is {kind!r}")
    return threshold


def _saelens_cfg(sae: SAE) -> dict:
    kind = sae.kind
    arch = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}[kind]
    if sae.is_transcoder:
        if kind not in ("relu", "jumprelu"):
            raise ValueError(f"SAELens has no {kind!r} transcoder; save relu or jumprelu transcoders")
        arch = "transcoder" if kind == "relu" else "jumprelu_transcoder"
    if kind == "batchtopk" and sae.threshold is None:
        raise ValueError("a batchtopk SAE without a threshold cannot be saved in SAELens' inference layout")
    meta = {"sae_lens_version": "6.0.0", "written_by": "interpjax",
            "hook_name": sae.hook_name or _tl_hook_name(sae.site_in, sae.layer),
            "hook_layer": sae.hook_layer if sae.hook_layer is not None else sae.layer}
    if sae.is_transcoder:
        meta["hook_name_out"] = sae.hook_name_out or _tl_hook_name(sae.site_out, sae.layer)
    if kind == "batchtopk":
        meta.update(interpjax_kind="batchtopk", interpjax_k=int(sae.k))
    cfg = {"architecture": arch, "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": sae.dtype.name, "device": "cpu",
           "apply_b_dec_to_input": bool(sae.apply_b_dec_to_input), "normalize_activations": "none",
           "reshape_activations": "none", "metadata": meta}
    if kind == "topk":
        cfg.update(k=int(sae.k), rescale_acts_by_decoder_norm=False)
    if sae.is_transcoder:
        cfg["d_out"] = sae.d_out
    return cfg


def save_sae(sae: SAE, folder, *, overwrite: bool = False) -> Path:
    """Write ``sae`` as a SAELens folder (cfg.json + sae_weights.safetensors), atomically: a temp
    folder beside it is filled, then renamed into place. Refuses an existing folder unless ``overwrite``."""
    from safetensors.numpy import save_file

    sae.check()
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise ValueError(f"{str(folder)!r} exists; pass overwrite=True to replace it")
    cfg = _saelens_cfg(sae)
    arrays = {n: getattr(sae, n) for n in WEIGHT_KEYS + ("threshold",) if getattr(sae, n) is not None}
    tensors = {n: np.ascontiguousarray(_to_numpy(a)) for n, a in arrays.items()}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        save_file(tensors, str(tmp / SAELENS_WEIGHTS))
        (tmp / SAELENS_CFG).write_text(json.dumps(cfg, indent=2, sort_keys=True))
        _swap_into_place(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def _to_numpy(a) -> np.ndarray:
    a = np.asarray(a)
    return a.astype(np.float32) if a.dtype.kind == "V" or a.dtype.name == "bfloat16" else a


def _swap_into_place(tmp: Path, folder: Path) -> None:
    """Rename ``tmp`` to ``folder``; an existing folder is moved aside first and removed after."""
    if not folder.exists():
        os.replace(tmp, folder)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
    os.replace(folder, old / "x")
    os.replace(tmp, folder)
    shutil.rmtree(old)


# ---------------------------------------------------------------------------------------------
# feature edits: values that say how the feature activations change inside a splice


def _feature_mask(features, F: int):
    """[F] bool, True at the given feature indices."""
    return jnp.zeros((F,), bool).at[jnp.atleast_1d(jnp.asarray(features))].set(True)


def _check_features(name: str, features, F: int) -> None:
    if features is None:
        raise ValueError(f"{name}.features is required: integer feature indices in 0..{F - 1}")
    a = ivmod.concrete(features)
    if a is not None and (a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name}.features must be integer indices in 0..{F - 1}, got dtype {a.dtype}")
    if a is not None and a.ndim > 1:
        raise ValueError(f"{name}.features must be a scalar or [n] indices, got shape {a.shape}")
    ivmod.check_indices(f"{name}.features", features, F, "feature")


def _check_per_feature(name: str, values, features) -> None:
    """Values are a scalar or one per feature index ([n])."""
    n = int(np.size(features)) if np.ndim(features) else None
    shp = _shape(values)
    if shp != () and (n is None or shp != (n,)):
        raise ValueError(f"{name} has shape {shp}; it must be a scalar or one value per feature index "
                         f"({'()' if n is None else (n,)})")
    check_real_finite(name, values)


@struct.dataclass
class FeatureAblate:
    """Set the activations of ``features`` (indices 0..F-1) to zero."""

    features: Any = None

    def delta(self, f_F):
        """The change df [..., F] this edit makes to the feature activations f [..., F]."""
        return jnp.where(_feature_mask(self.features, f_F.shape[-1]), -f_F, jnp.zeros_like(f_F))

    def check(self, F, batch, seq):
        """Raise ValueError for indices outside 0..F-1 or values of the wrong shape."""
        _check_features("FeatureAblate", self.features, F)

    def window(self, win):
        return self


@struct.dataclass
class FeatureClamp:
    """Set the activations of ``features`` to ``values`` (a scalar or one per index)."""

    features: Any = None
    values: Any = 0.0

    def delta(self, f_F):
        """The change df [..., F] this edit makes to the feature activations f [..., F]."""
        F = f_F.shape[-1]
        idx = jnp.atleast_1d(jnp.asarray(self.features))
        target = jnp.zeros((F,), f_F.dtype).at[idx].set(jnp.broadcast_to(jnp.asarray(self.values, f_F.dtype),
                                                                         idx.shape))
        return jnp.where(_feature_mask(self.features, F), target - f_F, jnp.zeros_like(f_F))

    def check(self, F, batch, seq):
        """Raise ValueError for indices outside 0..F-1 or values of the wrong shape."""
        _check_features("FeatureClamp", self.features, F)
        _check_per_feature("FeatureClamp.values", self.values, self.features)

    def window(self, win):
        return self


@struct.dataclass
class FeatureSteer:
    """Add ``coeffs`` (a scalar or one per index) to the activations of ``features``: the
    splice then adds ``coeff * W_dec[i]`` to the site."""

    features: Any = None
    coeffs: Any = 1.0

    def delta(self, f_F):
        """The change df [..., F] this edit makes to the feature activations f [..., F]."""
        F = f_F.shape[-1]
        idx = jnp.atleast_1d(jnp.asarray(self.features))
        add = jnp.zeros((F,), f_F.dtype).at[idx].add(jnp.broadcast_to(jnp.asarray(self.coeffs, f_F.dtype), idx.shape))
        return jnp.broadcast_to(add, f_F.shape)

    def check(self, F, batch, seq):
        """Raise ValueError for indices outside 0..F-1 or values of the wrong shape."""
        _check_features("FeatureSteer", self.features, F)
        _check_per_feature("FeatureSteer.coeffs", self.coeffs, self.features)

    def window(self, win):
        return self


@struct.dataclass
class FeatureAdd:
    """Add ``delta`` (shaped like a trailing part of [B, T, F]) to the feature activations;
    a zero delta is the probe ``feature_attribution`` differentiates."""

    delta_F: Any = None

    def delta(self, f_F):
        """The change df [..., F] this edit makes to the feature activations f [..., F]."""
        d = jnp.asarray(self.delta_F, f_F.dtype)
        return jnp.broadcast_to(d.reshape((1,) * (f_F.ndim - d.ndim) + d.shape), f_F.shape)

    def check(self, F, batch, seq):
        """Raise ValueError for indices outside 0..F-1 or values of the wrong shape."""
        check_suffix("FeatureAdd.delta_F", self.delta_F, (batch, seq, F))
        check_real_finite("FeatureAdd.delta_F", self.delta_F)

    def window(self, win):
        d = self.delta_F
        return self if np.ndim(d) < 2 else self.replace(delta_F=win.take(d, np.ndim(d) - 2))


FEATURE_EDITS = (FeatureAblate, FeatureClamp, FeatureSteer, FeatureAdd)


def _edits(feature_edit) -> tuple:
    if feature_edit is None:
        return ()
    edits = tuple(feature_edit) if isinstance(feature_edit, (tuple, list)) else (feature_edit,)
    for e in edits:
        if not isinstance(e, FEATURE_EDITS):
            raise ValueError(f"not a feature edit: {type(e).__name__}; valid: {[c.__name__ for c in FEATURE_EDITS]}")
    return edits


def feature_delta(feature_edit, f_F):
    """Total change of the feature activations the edits make, applied in order."""
    df = jnp.zeros_like(f_F)
    for e in _edits(feature_edit):
        df = df + e.delta(f_F + df)
    return df


# ---------------------------------------------------------------------------------------------
# the splice intervention


@struct.dataclass
class SAESplice(Intervention):
    """Splice ``sae`` into ``site`` at ``layer``: with ``f = encode(x)`` and ``df`` the change
    ``feature_edit`` makes (FeatureAblate / FeatureClamp / FeatureSteer / FeatureAdd, or a tuple of
    them applied in order), x becomes ``x + df @ W_dec`` (= x + decode(f + df) - decode(f), the
    reconstruction error kept: no edit, or one that changes nothing, is an exact no-op) or, with
    ``keep_error=False``, the pure reconstruction ``decode(f + df)``.

    Transcoders: the protocol edits one site from its own activation, so a transcoder splice sits
    at ``sae.site_out`` and encodes ``source`` [B, T, D_in] (or [T, D_in]), the ``site_in``
    activation recorded from a run beforehand (an edit upstream of ``site_in`` in the same run is
    not seen by it)."""

    site: str = _static()
    layer: Any = None
    sae: SAE = None
    feature_edit: Any = None
    positions: Any = None
    source: Any = None
    keep_error: bool = _static(default=True)

    SEQ_FIELDS = (("source", 0, 0),)
    # An SAE maps each position on its own (encode, edit and decode never mix positions; the
    # batchtopk batch rule is training-only), so a window of positions is edited as in the full
    # run, up to the rounding of matmuls over another row count (shiftable), and rows of other
    # variants packed beside these ones cannot change its result (packable).
    shiftable = True
    packable = True

    def edit(self, x, layer_index):
        inp = x if self.source is None else _lead(self.source, x)
        f = self.sae.encode(inp.astype(self.sae.dtype))
        df = feature_delta(self.feature_edit, f)
        if self.keep_error:
            return x + (df @ self.sae.W_dec).astype(x.dtype)
        return jnp.broadcast_to(self.sae.decode(f + df), x.shape).astype(x.dtype)

    def window(self, win):
        out = super().window(win)
        edits = _edits(self.feature_edit)
        if not edits:
            return out
        moved = tuple(e.window(win) for e in edits)
        return out.replace(feature_edit=moved if isinstance(self.feature_edit, (tuple, list)) else moved[0])

    def check(self, cfg, batch, seq, dtype):
        if not isinstance(self.sae, SAE):
            raise ValueError(f"SAESplice.sae must be an SAE, got {type(self.sae).__name__}")
        sae = self.sae
        sae.check()
        check_real_finite_sae(sae)
        if self.site in ATTN_SITES or len(site_shape(cfg, self.site, batch, seq)) != 3:
            raise ValueError(f"SAESplice needs a site with one feature axis [B, T, W]; {self.site!r} has shape "
                             f"{site_shape(cfg, self.site, batch, seq)}")
        width = site_shape(cfg, self.site, batch, seq)[-1]
        if sae.d_out != width:
            raise ValueError(f"SAE writes width d_out={sae.d_out} but site {self.site!r} has width {width} "
                             f"(d_model={cfg.d_model})")
        writes = sae.site_out if sae.is_transcoder else sae.site_in
        if writes is not None and writes != self.site:
            raise ValueError(f"this SAE was trained on site {writes!r} (hook {sae.hook_name_out or sae.hook_name!r}) "
                             f"but the splice is at {self.site!r}")
        self._check_source(batch, seq, dtype)
        for name in WEIGHT_KEYS + ("threshold",):
            check_dtype(f"SAESplice.sae.{name}", getattr(sae, name), dtype)
        for e in _edits(self.feature_edit):
            e.check(sae.d_sae, batch, seq)
        if not isinstance(self.keep_error, bool):
            raise ValueError(f"SAESplice.keep_error must be True or False, got {self.keep_error!r}")

    def _check_source(self, batch, seq, dtype):
        sae = self.sae
        if sae.is_transcoder and self.source is None:
            raise ValueError(f"a transcoder splice at {self.site!r} needs source: the recorded "
                             f"{sae.site_in or 'input'} activations [B, T, {sae.d_in}]")
        if not sae.is_transcoder and self.source is not None:
            raise ValueError("SAESplice.source is for transcoders only; an SAE encodes the site's own activation")
        if self.source is not None:
            check_suffix("SAESplice.source", self.source, (batch, seq, sae.d_in), min_axes=2)
            check_dtype("SAESplice.source", self.source, dtype)
            check_real_finite("SAESplice.source", self.source)


def _lead(a, x):
    """``a`` [.., T, D_in] with leading singleton axes to broadcast against x [B, T, D]."""
    a = jnp.asarray(a)
    return a.reshape((1,) * (x.ndim - a.ndim) + a.shape)


# ---------------------------------------------------------------------------------------------
# feature attribution


def _unpack(model):
    if isinstance(model, tuple) and len(model) == 2:
        return model
    if hasattr(model, "cfg") and hasattr(model, "params"):
        return model.cfg, model.params
    raise TypeError(f"feature_attribution takes a Model or a (cfg, params) pair, got {type(model).__name__}")


def feature_attribution(model, tokens, sae: SAE, site: str, layer, metric: Callable, *, attention_mask=None):
    """Attribution [B, T, F] of the scalar ``metric(logits_BTV)`` to every feature activation of
    ``sae`` at ``(site, layer)``: d metric / d f times f (gradient x activation), from one forward
    and one backward through a zero ``FeatureAdd`` splice. Summed over F it equals
    ``grad_x . (decode(f) - b_dec)`` at every position."""
    cfg, params = _unpack(model)
    check_site(site)
    if is_layer_site(site):
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise ValueError(f"layer must be one integer layer in 0..{cfg.n_layers - 1}, got {layer!r}")
        inputs.check_layers(cfg, [int(layer)], allow_empty=False)
        layer = int(layer)
    elif layer is not None:
        raise ValueError(f"site {site!r} is outside the layer stack; pass layer=None")
    if not callable(metric):
        raise ValueError(f"metric must be a function of the logits [B, T, V], got {type(metric).__name__}")
    if not isinstance(sae, SAE):
        raise ValueError(f"sae must be an SAE, got {type(sae).__name__}")
    if sae.is_transcoder:
        raise ValueError("feature_attribution of transcoders is not implemented (it needs the recorded site_in); "
                         "splice it with SAESplice(source=...) and differentiate yourself")
    B, T = np.shape(tokens)[:2] if np.ndim(tokens) == 2 else (None, None)
    if B is None:
        raise ValueError(f"tokens must be [B, T] ids, got shape {np.shape(tokens)}")
    delta_BTF = jnp.zeros((B, T, sae.d_sae), sae.dtype)
    probe = SAESplice(site, layer=layer, sae=sae, feature_edit=FeatureAdd(delta_BTF))
    tokens, mask, pos, ivs = M.prepare(cfg, params, tokens, attention_mask, probe)
    _check_metric(metric, cfg, (B, T))
    attr, _ = _attribution_jit(cfg, params, tokens, mask, pos, sae, site, layer, delta_BTF, metric)
    return np.asarray(attr)


def _check_metric(metric, cfg, shape):
    V = cfg.vocab_size
    try:
        out = jax.eval_shape(metric, jax.ShapeDtypeStruct(tuple(shape) + (V,), jnp.float32))
    except Exception as e:  # noqa: BLE001 - report metric bugs before any compute
        raise ValueError(f"the metric failed on logits [B, T, V]: {type(e).__name__}: {e}") from e
    if not hasattr(out, "shape") or out.shape != ():
        raise ValueError(f"the metric must return a scalar, got {getattr(out, 'shape', out)}")


def _attribution_impl(cfg, params, tokens, mask, pos, sae, site, layer, delta_BTF, metric):
    layers = (layer,) if layer is not None else ()

    def scalar(delta):
        iv = SAESplice(site, layer=layer, sae=sae, feature_edit=FeatureAdd(delta))
        logits, rec = M.run(cfg, params, tokens, mask, pos, (iv,), (site,), layers)
        x = rec[site][0] if layer is not None else rec[site]
        return metric(logits).astype(jnp.float32), x

    (value, x_BTD), grad_BTF = jax.value_and_grad(scalar, has_aux=True)(delta_BTF)
    return grad_BTF * sae.encode(x_BTD), value


_attribution_jit = jax.jit(_attribution_impl, static_argnums=(0, 6, 7, 9))


__all__ = ["FEATURE_EDITS", "KINDS", "LAYOUTS", "FeatureAblate", "FeatureAdd", "FeatureClamp", "FeatureSteer", "SAE",
           "SAESplice", "feature_attribution", "feature_delta", "hook_site", "load_sae", "save_sae"]
