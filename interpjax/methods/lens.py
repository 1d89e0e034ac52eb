"""Logit lens and tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers
with the Tuned Lens"): read what each layer's residual stream already predicts.

Lens rows: row ``l < L`` decodes ``resid_pre`` of layer ``l`` (row 0 is the embedding), row ``L``
decodes the last ``resid_post`` (= the model's own output). The logit lens sends every row through
the final norm and the unembedding; the tuned lens first applies one learned affine translator per
layer, ``A_l x + b_l`` with ``A_l = I + W_l`` (stored as ``W_l``, initialised at zero, so an untrained
tuned lens *is* the logit lens, exactly). Translators are stacked [L, D, D] and all trained at once
to minimise KL(final || lens) with the model frozen.

    lg = logit_lens(cfg, params, tokens)                       # [L+1, B, T, V]
    probs, ids = top_k(lg, 5)
    trainer = TunedLensTrainer(model, TrainConfig(lr=1e-3, total_steps=500), "runs/tl")  # the one Trainer
    trainer.train(TokenStream(texts_fn, tokenizer, batch=8, seq=128), steps=500)
    tl = tuned_lens(trainer.lens, cfg, params, tokens)         # same rows, translated
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ..core import model as M
from ..core.config import Config
from ..io.artifacts import ArtifactError, clean_stale_temps, temp_path
from ..io.artifacts import model_fingerprint  # noqa: F401 (re-exported: lens_meta records it)
from .result import Result
from ..core.handle import require_model
from ..train import TokenStream, TrainConfig, Trainer, check_train_tokens  # noqa: F401 (TokenStream re-exported)
from ..train.optimizers import optax_promotion

F32 = jnp.float32
COLOR_BY = ("prob", "entropy")


# ---------------------------------------------------------------------------------------------
# residuals and the logit lens


def lens_names(cfg: Config) -> list[str]:
    """Row names of every lens output: ``resid_pre.0 .. resid_pre.{L-1}`` then ``resid_post.{L-1}``."""
    return [f"resid_pre.{l}" for l in range(cfg.n_layers)] + [f"resid_post.{cfg.n_layers - 1}"]


def _all_layers(cfg: Config) -> tuple:
    return tuple(range(cfg.n_layers))


def _residuals(cfg: Config, params: dict, tokens_BT, mask_BT):
    """(model logits [B, T, V], residuals [L+1, B, T, D]) inside a trace; no validation."""
    logits, acts = M.run(cfg, params, tokens_BT, mask_BT, None, (), ("resid_pre", "resid_post"), _all_layers(cfg))
    resid = jnp.concatenate([acts["resid_pre"], acts["resid_post"][-1:]], axis=0)
    return logits, resid


def decode(cfg: Config, params: dict, resid_xD):
    """Logits of residual vectors ``[..., D]`` through the model's final norm and unembedding.

    Rows of a stack ``[R, B, T, D]`` are decoded one at a time (``lax.map``) with the very ops the
    model's own head runs, so decoding the last ``resid_post`` reproduces the model's logits bitwise.
    """
    if resid_xD.shape[-1] != cfg.d_model:
        raise ValueError(f"residual has width {resid_xD.shape[-1]}; the model's d_model is {cfg.d_model}")

    def head(x_BTD):
        return M.final_logits(cfg, params, x_BTD)

    shape = resid_xD.shape
    if resid_xD.ndim <= 3:
        x = resid_xD.reshape((1,) * (3 - resid_xD.ndim) + shape)
        return head(x).reshape(shape[:-1] + (-1,))
    rows = resid_xD.reshape((-1,) + shape[-3:])
    return jax.lax.map(head, rows).reshape(shape[:-1] + (-1,))


@functools.partial(jax.jit, static_argnums=0)
def _logit_lens_jit(cfg, params, tokens_BT, mask_BT):
    _, resid = _residuals(cfg, params, tokens_BT, mask_BT)
    return decode(cfg, params, resid)


_residuals_jit = jax.jit(_residuals, static_argnums=0)


def residual_stack(cfg: Config, params: dict, tokens, attention_mask=None):
    """(model logits [B, T, V], residuals [L+1, B, T, D]) in lens-row order (see ``lens_names``)."""
    tokens, mask, _, _ = M.prepare(cfg, params, tokens, attention_mask, None)
    return _residuals_jit(cfg, params, tokens, mask)


def logit_lens(cfg: Config, params: dict, tokens, attention_mask=None):
    """Logit-lens logits [L+1, B, T, V]: every layer's residual decoded by the final norm + unembed."""
    tokens, mask, _, _ = M.prepare(cfg, params, tokens, attention_mask, None)
    return _logit_lens_jit(cfg, params, tokens, mask)


# ---------------------------------------------------------------------------------------------
# reading lens outputs


def top_k(logits_xV, k: int):
    """(probabilities, token ids) of the ``k`` most likely tokens at every row/position, ``[..., k]``."""
    V = logits_xV.shape[-1]
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= V:
        raise ValueError(f"k must be an integer in 1..{V} (the vocabulary size); got {k!r}")
    probs = jax.nn.softmax(jnp.asarray(logits_xV, F32), axis=-1)
    return jax.lax.top_k(probs, int(k))


def entropy(logits_xV):
    """Entropy in nats of each softmax distribution over the last axis."""
    logp = jax.nn.log_softmax(jnp.asarray(logits_xV, F32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def token_rank_prob(logits_LBTV, token):
    """(rank, probability) of ``token`` at every lens row and position, each [L, B, T]; rank 0 is
    the top prediction. ``token`` is one id or ids shaped [B, T] (e.g. the actual next tokens)."""
    logits = jnp.asarray(logits_LBTV, F32)
    if logits.ndim != 4:
        raise ValueError(f"expected lens logits [L, B, T, V]; got shape {logits.shape}")
    L, B, T, V = logits.shape
    tok = np.asarray(token)
    if not np.issubdtype(tok.dtype, np.integer):
        raise ValueError(f"token must be integer ids; got dtype {tok.dtype}")
    if tok.ndim not in (0, 2) or (tok.ndim == 2 and tok.shape != (B, T)):
        raise ValueError(f"token must be one id or ids shaped {(B, T)}; got shape {tok.shape}")
    if tok.size and (tok.min() < 0 or tok.max() >= V):
        raise ValueError(f"token ids must lie in 0..{V - 1}; got {sorted(set(tok.ravel().tolist()))[:5]}")
    ids = jnp.broadcast_to(jnp.asarray(tok, jnp.int32), (B, T))
    target = jnp.take_along_axis(logits, jnp.broadcast_to(ids[None, :, :, None], (L, B, T, 1)), axis=-1)
    rank = jnp.sum(logits > target, axis=-1)
    prob = jnp.take_along_axis(jax.nn.softmax(logits, -1), jnp.broadcast_to(ids[None, :, :, None], (L, B, T, 1)),
                               axis=-1)[..., 0]
    return rank, prob


def prediction_depth(top1_LxT):
    """Prediction depth per position: the first lens row from which the top-1 prediction equals the
    final row's at every deeper row (0 = already right at the embedding, L = only at the output)."""
    top1 = jnp.asarray(top1_LxT)
    if top1.ndim < 1 or top1.shape[0] < 1:
        raise ValueError(f"expected top-1 ids with a leading lens-row axis; got shape {top1.shape}")
    agree = (top1 == top1[-1:]).astype(jnp.int32)
    settled = jnp.cumprod(agree[::-1], axis=0)[::-1]  # 1 where this row and every deeper one agree
    return top1.shape[0] - jnp.sum(settled, axis=0)


def plot_trajectory(logits_LTV, path, input_labels, token_str: Callable[[int], str], color: str = "prob",
                    title: str = "", row_labels=None):
    """Prediction-trajectory heatmap of one sequence (lens rows x positions): cells coloured by the top
    token's probability or the entropy, annotated with the top token; x labels are the input tokens."""
    if color not in COLOR_BY:
        raise ValueError(f"color must be one of {COLOR_BY}; got {color!r}")
    logits = jnp.asarray(logits_LTV, F32)
    if logits.ndim != 3:
        raise ValueError(f"expected one sequence's lens logits [L, T, V]; got shape {logits.shape} (index the batch)")
    L, T, _ = logits.shape
    if len(input_labels) != T:
        raise ValueError(f"{len(input_labels)} input labels for {T} positions")
    probs, ids = top_k(logits, 1)
    probs, ids = np.asarray(probs[..., 0]), np.asarray(ids[..., 0])
    values = probs if color == "prob" else np.asarray(entropy(logits))
    notes = [[token_str(int(i)) for i in row] for row in ids]
    from ..io.plots import labelled_heatmap

    rows = row_labels if row_labels is not None else [f"{l}" for l in range(L - 1)] + ["out"]
    label = "probability of the top token" if color == "prob" else "entropy (nats)"
    return labelled_heatmap(values, path, rows, list(input_labels), notes, title=title,
                   cmap="viridis" if color == "prob" else "magma_r", cbar_label=label,
                   vmin=0.0, vmax=1.0 if color == "prob" else None,
                   xlabel="input token (each column predicts the next one)", ylabel="layer")


# ---------------------------------------------------------------------------------------------
# the tuned lens


@dataclass(frozen=True)
class LensMeta:
    """Which model a tuned lens belongs to: checked before a lens is applied or loaded."""

    model: str
    d_model: int
    n_layers: int
    vocab_size: int
    fingerprint: str


def legacy_lens_fingerprint(cfg: Config, params: dict) -> str:
    """The fingerprint tuned-lens folders of the older (orbax) layout recorded: a hash of the config,
    the final norm and the first 16 embedding rows. Only for reading those folders; everything else
    uses ``model_fingerprint`` (``io.artifacts``, re-exported here), which sees every weight."""
    h = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode())
    for leaf in jax.tree.leaves(params.get("final_norm", {})) + [params["embed"]["tok"][:16]]:
        h.update(np.asarray(leaf, np.float32).tobytes())
    return h.hexdigest()[:16]


def lens_meta(cfg: Config, params: dict, name: str = "") -> LensMeta:
    """The metadata a tuned lens for this model carries (``name``: a hub id or folder; its last part is kept)."""
    short = Path(str(name)).name if name else ""
    return LensMeta(short, cfg.d_model, cfg.n_layers, cfg.vocab_size, model_fingerprint(cfg, params))


@struct.dataclass
class TunedLens(Result):
    """Stacked affine translators: layer ``l`` maps ``x`` to ``x + x @ weight_LDD[l] + bias_LD[l]``.

    A ``Result``: ``lens.save(path)`` writes one safetensors artifact (the translators as tensors,
    ``meta`` as the model identity); ``TunedLens.load(path, model=(cfg, params))`` refuses a lens of
    another model. Orbax holds only the training state (``TunedLensTrainer``'s checkpoints)."""

    FORMAT = "interpjax.tuned_lens"
    VERSION = 1

    weight_LDD: jax.Array
    bias_LD: jax.Array
    meta: LensMeta = struct.field(pytree_node=False)

    def arrays(self) -> dict:
        return {"weight": self.weight_LDD, "bias": self.bias_LD}

    def artifact_identity(self) -> dict:
        return dataclasses.asdict(self.meta)

    def artifact_meta(self) -> dict:
        return {}

    @classmethod
    def from_artifact(cls, art) -> "TunedLens":
        try:
            meta = LensMeta(**(art.model or {}))
        except TypeError as e:
            raise ArtifactError(f"the model identity {art.model!r} is not a tuned-lens LensMeta ({e})") from None
        L, D = meta.n_layers, meta.d_model
        for name, want in (("weight_LDD", (L, D, D)), ("bias_LD", (L, D))):
            if name not in art.arrays:
                raise ArtifactError(f"missing tensor {name!r} (the file holds {sorted(art.arrays)})")
            if art.arrays[name].shape != want:
                raise ArtifactError(f"tensor {name!r} has shape {art.arrays[name].shape}; a lens for "
                                    f"n_layers={L}, d_model={D} needs {want}")
        return cls(jnp.asarray(art.arrays["weight_LDD"], F32), jnp.asarray(art.arrays["bias_LD"], F32), meta)

    def check(self, model, what: str = "tuned lens") -> None:
        cfg, params = (model.cfg, model.params) if hasattr(model, "cfg") else model
        check_lens(self, cfg, params)


def init_tuned_lens(cfg: Config, params: dict, name: str = "") -> TunedLens:
    """Identity translators (zero weight and bias): applying it gives the logit lens exactly."""
    L, D = cfg.n_layers, cfg.d_model
    return TunedLens(jnp.zeros((L, D, D), F32), jnp.zeros((L, D), F32), lens_meta(cfg, params, name))


def check_lens(lens: TunedLens, cfg: Config, params: dict) -> None:
    """Raise a ValueError if ``lens`` was trained for another model (shape, config or weights differ)."""
    mine = lens_meta(cfg, params, lens.meta.model)
    m = lens.meta
    for field in ("d_model", "n_layers", "vocab_size", "fingerprint"):
        if getattr(m, field) != getattr(mine, field):
            raise ValueError(
                f"this tuned lens was trained for model {m.model or '?'!r} (d_model={m.d_model}, n_layers={m.n_layers}, "
                f"vocab_size={m.vocab_size}, fingerprint={m.fingerprint}); the given model has d_model={mine.d_model}, "
                f"n_layers={mine.n_layers}, vocab_size={mine.vocab_size}, fingerprint={mine.fingerprint} "
                f"({field} differs). Train a lens for this model.")
    L, D = cfg.n_layers, cfg.d_model
    if lens.weight_LDD.shape != (L, D, D) or lens.bias_LD.shape != (L, D):
        raise ValueError(f"lens arrays have shapes {lens.weight_LDD.shape}, {lens.bias_LD.shape}; "
                         f"expected {(L, D, D)}, {(L, D)}")


def translate(arrays: dict, resid_LBTD):
    """Apply the translators to residual rows 0..L-1; the last row (the model output) is unchanged."""
    x = resid_LBTD[:-1].astype(F32)
    y = x + jnp.einsum("lbtd,lde->lbte", x, arrays["weight"]) + arrays["bias"][:, None, None, :]
    return jnp.concatenate([y.astype(resid_LBTD.dtype), resid_LBTD[-1:]], axis=0)


@functools.partial(jax.jit, static_argnums=1)
def _tuned_lens_jit(arrays, cfg, params, tokens_BT, mask_BT):
    _, resid = _residuals(cfg, params, tokens_BT, mask_BT)
    return decode(cfg, params, translate(arrays, resid))


def tuned_lens(lens: TunedLens, cfg: Config, params: dict, tokens, attention_mask=None):
    """Tuned-lens logits [L+1, B, T, V] (rows as ``lens_names``); refuses a lens of another model."""
    check_lens(lens, cfg, params)
    tokens, mask, _, _ = M.prepare(cfg, params, tokens, attention_mask, None)
    return _tuned_lens_jit(lens.arrays(), cfg, params, tokens, mask)


def _kl_rows(lens_logits_LBTV, final_logits_BTV):
    """KL(final || lens) per row and position [L, B, T], in nats."""
    logp = jax.nn.log_softmax(final_logits_BTV.astype(F32), axis=-1)
    logq = jax.nn.log_softmax(lens_logits_LBTV.astype(F32), axis=-1)
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def kl_loss(arrays: dict, cfg: Config, params: dict, tokens_BT):
    """Training objective: KL(final || tuned lens) averaged over translated layers and positions."""
    logits, resid = _residuals(cfg, params, tokens_BT, jnp.ones(tokens_BT.shape, jnp.int32))
    resid, logits = jax.lax.stop_gradient(resid), jax.lax.stop_gradient(logits)
    lens_logits = decode(cfg, params, translate(arrays, resid)[:-1])
    return jnp.mean(_kl_rows(lens_logits, logits))


# ---------------------------------------------------------------------------------------------
# saving and loading


def save_tuned_lens(lens: TunedLens, path) -> Path:
    """Write the lens as one safetensors artifact at ``path``, atomically (= ``lens.save(path)``).
    A tuned-lens folder of the older orbax layout at ``path`` is replaced (only such a folder)."""
    path = Path(path)
    if path.is_dir():
        if not _is_legacy_lens_folder(path):
            raise ValueError(f"{path} is a folder that is not an older tuned lens; save the lens to a file path")
        clean_stale_temps(path)
        aside = temp_path(path)
        os.replace(path, aside)  # the old folder moves aside; removed once the new file is in place
        try:
            lens.save(path)
        except BaseException:
            os.replace(aside, path)
            raise
        shutil.rmtree(aside)
        return path
    return lens.save(path)


def _is_legacy_lens_folder(path: Path) -> bool:
    try:
        return json.loads((path / "lens.json").read_text()).get("kind") == "tuned_lens" and \
            set(p.name for p in path.iterdir()) <= {"lens.json", "arrays"}
    except (OSError, ValueError, AttributeError):
        return False


def load_tuned_lens(path, cfg: Config, params: dict) -> TunedLens:
    """Load a lens saved by ``save_tuned_lens`` (a safetensors artifact, or a folder of the older orbax
    layout); refuses (ValueError) a lens trained for another model."""
    path = Path(path)
    if path.is_dir():
        return _load_legacy_lens_folder(path, cfg, params)
    return TunedLens.load(path, model=(cfg, params))


def _load_legacy_lens_folder(path: Path, cfg: Config, params: dict) -> TunedLens:
    """A lens folder of the older layout (orbax ``arrays/`` + ``lens.json``), checked with the
    fingerprint it recorded and returned with today's fingerprint (``lens.save(file)`` converts it)."""
    import orbax.checkpoint as ocp

    path = path.resolve()
    meta_file = path / "lens.json"
    if not meta_file.exists():
        raise ValueError(f"{path} is not a saved tuned lens (no lens.json)")
    try:
        info = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_file}: corrupt JSON ({e})") from None
    if not isinstance(info, dict) or info.pop("kind", None) != "tuned_lens":
        raise ValueError(f"{meta_file} does not describe a tuned lens")
    try:
        old = LensMeta(**info)
    except TypeError as e:
        raise ValueError(f"{meta_file}: not a tuned-lens description ({e})") from None
    mine = lens_meta(cfg, params, old.model)
    if (old.d_model, old.n_layers, old.vocab_size) == (mine.d_model, mine.n_layers, mine.vocab_size) and \
            old.fingerprint == legacy_lens_fingerprint(cfg, params):
        meta = mine  # verified with the fingerprint it recorded: carry today's from now on
    else:
        meta = old  # check_lens below refuses it, naming both fingerprints
    L, D = meta.n_layers, meta.d_model
    check_lens(TunedLens(jnp.zeros((L, D, D)), jnp.zeros((L, D)), meta), cfg, params)
    target = {"weight": jax.ShapeDtypeStruct((L, D, D), F32), "bias": jax.ShapeDtypeStruct((L, D), F32)}
    with ocp.StandardCheckpointer() as ckptr:
        arrays = ckptr.restore(path / "arrays", target)
    return TunedLens(jnp.asarray(arrays["weight"]), jnp.asarray(arrays["bias"]), meta)


# ---------------------------------------------------------------------------------------------
# training (through the one Trainer; the text stream lives in interpjax.train.data)


@dataclass(frozen=True)
class LensLoss:
    """The tuned-lens objective on the one Trainer: ``Partial(LensLoss(cfg), params)(arrays, batch,
    key)`` is KL(final || lens) on ``batch["tokens"]``; the model's params are a frozen argument."""

    cfg: Config
    loss_name = "kl"

    def __call__(self, params, arrays, batch, key):
        del key
        return kl_loss(arrays, self.cfg, params, batch["tokens"]), {}

    def check_batch(self, batch) -> dict:
        """Token batches [B, T] (or ``{"tokens": ...}``) checked on the host before compute."""
        tokens = batch["tokens"] if isinstance(batch, dict) else batch
        return {"tokens": check_train_tokens(self.cfg, tokens)[0]}


class TunedLensTrainer(Trainer):
    """Trains all translators of a tuned lens for ``model`` (a ``Model``: ``.cfg``, ``.params``, frozen)
    on the one ``Trainer``: optax per ``TrainConfig`` (optimizer, lr, schedule, weight decay,
    clipping), orbax checkpoints in ``workdir``; a new trainer on the same workdir resumes from the
    last checkpoint and continues exactly as an uninterrupted run. ``name`` (default ``model.name``)
    is recorded in the lens; ``lens`` continues training a given lens."""

    def __init__(self, model, tc: TrainConfig, workdir, *, lens: TunedLens | None = None, name: str | None = None,
                 keep_checkpoints: int | None = 2):
        require_model(model, "TunedLensTrainer")
        cfg, params = model.cfg, model.params
        name = model.name if name is None else name
        lens = lens if lens is not None else init_tuned_lens(cfg, params, name)
        check_lens(lens, cfg, params)
        self.meta = lens.meta
        arrays = {k: jnp.asarray(v, F32) for k, v in lens.arrays().items()}
        super().__init__(jax.tree_util.Partial(LensLoss(cfg), params), tc, workdir, trainable=arrays,
                         info={"lens": dataclasses.asdict(self.meta)}, keep_checkpoints=keep_checkpoints,
                         ckpt_key="arrays", desc="tuned lens")

    @property
    def arrays(self) -> dict:
        return self.trainable

    @property
    def lens(self) -> TunedLens:
        return TunedLens(self.arrays["weight"], self.arrays["bias"], self.meta)


# ---------------------------------------------------------------------------------------------
# evaluation


@functools.partial(jax.jit, static_argnums=1)
def _eval_batch(arrays, cfg, params, tokens_BT):
    logits, resid = _residuals(cfg, params, tokens_BT, jnp.ones(tokens_BT.shape, jnp.int32))
    if arrays is not None:
        resid = translate(arrays, resid)
    lens_logits = decode(cfg, params, resid)  # [L+1, B, T, V]
    logq = jax.nn.log_softmax(lens_logits[:, :, :-1].astype(F32), axis=-1)
    nll = -jnp.take_along_axis(logq, jnp.broadcast_to(tokens_BT[None, :, 1:, None], logq.shape[:-1] + (1,)),
                               axis=-1)[..., 0]
    kl = _kl_rows(lens_logits, logits)
    depth = prediction_depth(jnp.argmax(lens_logits, axis=-1))
    L1 = lens_logits.shape[0]
    return nll.sum((1, 2)), kl.sum((1, 2)), jnp.bincount(depth.ravel(), length=L1)


def evaluate_lens(cfg: Config, params: dict, batches: Iterable, lens: TunedLens | None = None) -> dict:
    """Per lens row: perplexity of the actual next token and mean KL(final || lens), plus the
    prediction-depth histogram; ``lens=None`` is the logit lens. ``batches``: token arrays [B, T]."""
    if not cfg.causal:
        raise ValueError("evaluate_lens measures next-token perplexity, which needs a causal decoder; "
                         f"this {cfg.family!r} model has bidirectional attention (cfg.causal=False)")
    if lens is not None:
        check_lens(lens, cfg, params)
    arrays = lens.arrays() if lens is not None else None
    L1 = cfg.n_layers + 1
    nll, kl, depth, n_pred, n_tok = np.zeros(L1), np.zeros(L1), np.zeros(L1, np.int64), 0, 0
    for tokens in batches:
        tokens, _, _, _ = M.prepare(cfg, params, tokens, None, None)
        if tokens.shape[1] < 2:
            raise ValueError("evaluation batches need at least 2 positions (one next-token prediction)")
        a, b, c = _eval_batch(arrays, cfg, params, tokens.astype(jnp.int32))
        nll, kl, depth = nll + np.asarray(a, np.float64), kl + np.asarray(b, np.float64), depth + np.asarray(c)
        n_pred += tokens.shape[0] * (tokens.shape[1] - 1)
        n_tok += tokens.size
    if n_tok == 0:
        raise ValueError("no evaluation batches")
    return {"layers": lens_names(cfg), "ppl": np.exp(nll / n_pred).tolist(), "kl": (kl / n_tok).tolist(),
            "depth_hist": depth.tolist(), "tokens": int(n_tok)}


# ---------------------------------------------------------------------------------------------
# per-sequence evaluation (for intervals over blocks)


@functools.partial(jax.jit, static_argnums=1)
def _eval_rows(arrays, cfg, params, tokens_BT, control_BT):
    logits, resid = _residuals(cfg, params, tokens_BT, jnp.ones(tokens_BT.shape, jnp.int32))
    lens_logits = decode(cfg, params, translate(arrays, resid))  # [L+1, B, T, V]
    logq = jax.nn.log_softmax(lens_logits[:, :, :-1].astype(F32), axis=-1)

    def nll(targets_BT):
        idx = jnp.broadcast_to(targets_BT[None, :, :, None], logq.shape[:-1] + (1,))
        return -jnp.take_along_axis(logq, idx, axis=-1)[..., 0].mean(2)

    kl = _kl_rows(lens_logits, logits)
    depth = prediction_depth(jnp.argmax(lens_logits, axis=-1))
    return nll(tokens_BT[:, 1:]), nll(control_BT), kl.mean(2), depth


def evaluate_lens_per_sequence(cfg: Config, params: dict, tokens_BT, lens: TunedLens | None = None,
                               control_targets=None) -> dict:
    """Per lens row and sequence: mean next-token NLL ``nll_LB`` and mean KL(final || lens) ``kl_LB``,
    plus the prediction depth of every position ``depth_BT``; ``lens=None`` is the logit lens.
    ``control_targets`` [B, T-1] (e.g. another text's next tokens) adds their NLL, ``nll_control_LB``.
    Per-sequence values are what a bootstrap over held-out blocks resamples."""
    if not cfg.causal:
        raise ValueError("evaluate_lens_per_sequence measures next-token NLL, which needs a causal decoder; "
                         f"this {cfg.family!r} model has bidirectional attention (cfg.causal=False)")
    lens = lens if lens is not None else init_tuned_lens(cfg, params)
    check_lens(lens, cfg, params)
    tokens, _, _, _ = M.prepare(cfg, params, tokens_BT, None, None)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [B, T] with T >= 2 (one next-token prediction); got shape {tokens.shape}")
    tokens = tokens.astype(jnp.int32)
    if control_targets is None:
        control = tokens[:, 1:]
    else:
        c = np.asarray(control_targets)
        B, T = tokens.shape
        if c.shape != (B, T - 1) or not np.issubdtype(c.dtype, np.integer):
            raise ValueError(f"control_targets must be integer ids shaped {(B, T - 1)}; got {c.dtype} {c.shape}")
        if c.min() < 0 or c.max() >= cfg.vocab_size:
            raise ValueError(f"control_targets must lie in 0..{cfg.vocab_size - 1}")
        control = jnp.asarray(c, jnp.int32)
    nll, nll_c, kl, depth = _eval_rows(lens.arrays(), cfg, params, tokens, control)
    out = {"layers": lens_names(cfg), "nll_LB": np.asarray(nll, np.float64), "kl_LB": np.asarray(kl, np.float64),
           "depth_BT": np.asarray(depth)}
    if control_targets is not None:
        out["nll_control_LB"] = np.asarray(nll_c, np.float64)
    return out


def shifted_lens(lens: TunedLens) -> TunedLens:
    """A control lens: layer ``l`` gets the translator trained for layer ``l + 1`` (the last translated
    layer gets layer ``L - 2``'s). A tuned lens whose gain is layer-specific loses it here."""
    L = lens.weight_LDD.shape[0]
    if L < 2:
        raise ValueError(f"shifting translators needs at least 2 layers; this lens has {L}")
    idx = np.concatenate([np.arange(1, L), [L - 2]])
    return lens.replace(weight_LDD=lens.weight_LDD[idx], bias_LD=lens.bias_LD[idx])


# ---------------------------------------------------------------------------------------------
# causal basis extraction (Belrose et al. 2023, "Causal basis extraction")


@dataclass(frozen=True)
class CausalBasis:
    """``k`` orthonormal residual directions at ``layer`` ([k, D], most lens-influential first), the
    influence each had on the lens when found (mean KL, nats) and the mean residual ``mean_D`` that
    ablation fills in."""

    layer: int
    directions_KD: np.ndarray
    influence_K: np.ndarray
    mean_D: np.ndarray


def mean_ablate(x_ND, u_D, mean_D):
    """``x`` with its component along the unit vector ``u`` replaced by the mean's: x - ((x - mean)·u) u."""
    u = jnp.asarray(u_D, F32)
    x = jnp.asarray(x_ND, F32)
    return x - ((x - jnp.asarray(mean_D, F32)) @ u)[..., None] * u


def _lens_row_logits(row: dict, cfg: Config, params: dict, x_ND):
    """Logits [N, V] of one layer's translator ``row`` (``weight`` [D, D], ``bias`` [D]) on vectors x [N, D]."""
    y = x_ND + x_ND @ row["weight"] + row["bias"]
    return decode(cfg, params, y[None]).reshape(x_ND.shape[0], -1).astype(F32)


def _kl_from_logp(logp_NV, logits_NV):
    logq = jax.nn.log_softmax(logits_NV, axis=-1)
    return jnp.sum(jnp.exp(logp_NV) * (logp_NV - logq), axis=-1)


@functools.partial(jax.jit, static_argnums=1)
def _influence_one(row, cfg, params, x_ND, logp_NV, u_D, mean_D):
    return _kl_from_logp(logp_NV, _lens_row_logits(row, cfg, params, mean_ablate(x_ND, u_D, mean_D)))


def _check_layer_and_resid(cfg: Config, layer, resid_ND, what: str) -> None:
    if not isinstance(layer, (int, np.integer)) or not 0 <= layer < cfg.n_layers:
        raise ValueError(f"{what}: layer must be an integer in 0..{cfg.n_layers - 1} (a translated lens row); "
                         f"got {layer!r}")
    shape = np.shape(resid_ND)
    if len(shape) != 2 or shape[1] != cfg.d_model or shape[0] < 1:
        raise ValueError(f"{what}: residuals must be [N, {cfg.d_model}] with N >= 1; got shape {shape}")


def _unit_rows(directions_KD, D: int, what: str) -> jax.Array:
    d = np.asarray(directions_KD, np.float64)
    if d.ndim != 2 or d.shape[1] != D or d.shape[0] < 1:
        raise ValueError(f"{what}: directions must be [K, {D}] with K >= 1; got shape {d.shape}")
    norms = np.linalg.norm(d, axis=1)
    if not np.all(np.isfinite(d)) or np.any(norms == 0):
        raise ValueError(f"{what}: directions must be finite and non-zero (row norms {norms.round(4).tolist()})")
    return jnp.asarray(d / norms[:, None], F32)


def lens_influence(lens: TunedLens, cfg: Config, params: dict, layer: int, resid_ND, directions_KD,
                   mean_D=None) -> np.ndarray:
    """Influence [K, N] of each direction on the lens at ``layer``: KL(lens(x) || lens(x with the
    direction mean-ablated)) per residual vector x. ``mean_D`` defaults to the mean of ``resid_ND``."""
    check_lens(lens, cfg, params)
    _check_layer_and_resid(cfg, layer, resid_ND, "lens_influence")
    dirs = _unit_rows(directions_KD, cfg.d_model, "lens_influence")
    x = jnp.asarray(resid_ND, F32)
    mean = x.mean(0) if mean_D is None else jnp.asarray(mean_D, F32)
    row = {"weight": lens.weight_LDD[layer], "bias": lens.bias_LD[layer]}
    logp = jax.nn.log_softmax(_lens_row_logits(row, cfg, params, x), axis=-1)
    return np.stack([np.asarray(_influence_one(row, cfg, params, x, logp, u, mean)) for u in dirs])


def _project_out(v_D, basis_KD):
    v = v_D - basis_KD.T @ (basis_KD @ v_D)
    return v / jnp.linalg.norm(v)


def _cbe_step_fn(cfg: Config, opt):
    """One jitted projected-gradient-ascent step on the unit sphere orthogonal to ``basis_KD``."""

    def loss(v, row, params, x, logp, mean):
        return -jnp.mean(_kl_from_logp(logp, _lens_row_logits(row, cfg, params, mean_ablate(x, v / jnp.linalg.norm(v), mean))))

    @jax.jit
    def step(v, state, basis_KD, row, params, x, logp, mean):
        val, g = jax.value_and_grad(loss)(v, row, params, x, logp, mean)
        upd, state = opt.update(g, state, v)
        return _project_out(v + upd, basis_KD), state, -val

    return step


def causal_basis(lens: TunedLens, cfg: Config, params: dict, layer: int, resid_ND, k: int, *, steps: int = 50,
                 lr: float = 0.02, seed: int = 0) -> CausalBasis:
    """Causal basis extraction: ``k`` orthonormal directions at ``layer`` whose mean-ablation most
    changes the lens's output (mean KL), found greedily, each by ``steps`` of Adam on the unit
    sphere orthogonal to the ones before; ``resid_ND`` are the residual vectors it is fitted on."""
    import optax

    check_lens(lens, cfg, params)
    _check_layer_and_resid(cfg, layer, resid_ND, "causal_basis")
    D = cfg.d_model
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= D:
        raise ValueError(f"k must be an integer in 1..{D} (d_model); got {k!r}")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number; got {lr!r}")
    x = jnp.asarray(resid_ND, F32)
    mean = x.mean(0)
    row = {"weight": lens.weight_LDD[layer], "bias": lens.bias_LD[layer]}
    logp = jax.nn.log_softmax(_lens_row_logits(row, cfg, params, x), axis=-1)
    opt = optax_promotion(optax.adam(lr))
    step = _cbe_step_fn(cfg, opt)
    basis = jnp.zeros((k, D), F32)
    keys = jax.random.split(jax.random.PRNGKey(seed), k)
    found, influence = [], []
    for i in range(k):
        v = _project_out(jax.random.normal(keys[i], (D,), F32), basis)
        state = opt.init(v)
        val = jnp.zeros((), F32)
        for _ in range(steps):
            v, state, val = step(v, state, basis, row, params, x, logp, mean)
        v64 = np.asarray(v, np.float64)
        for u in found:  # exact re-orthogonalisation in float64
            v64 = v64 - (v64 @ u) * u
        v64 /= np.linalg.norm(v64)
        found.append(v64)
        basis = basis.at[i].set(jnp.asarray(v64, F32))
        influence.append(float(np.mean(np.asarray(_influence_one(row, cfg, params, x, logp, basis[i], mean)))))
    return CausalBasis(int(layer), np.stack(found), np.asarray(influence), np.asarray(mean, np.float64))


def model_ablation_effect(model, tokens_BT, layer: int, directions_KD, mean_D, *, positions=None,
                          attention_mask=None) -> np.ndarray:
    """Causal effect [K, B] of each direction on the model: mean over ``positions`` (default all) of
    KL(model output || output with the direction mean-ablated in ``resid_pre`` of ``layer``), the
    ablation being a ``Project(mode="set")`` to the mean's component at those positions."""
    from ..core.interventions import Project

    require_model(model, "model_ablation_effect")
    cfg, params = model.cfg, model.params
    if not isinstance(layer, (int, np.integer)) or not 0 <= layer < cfg.n_layers:
        raise ValueError(f"layer must be an integer in 0..{cfg.n_layers - 1}; got {layer!r}")
    dirs = _unit_rows(directions_KD, cfg.d_model, "model_ablation_effect")
    mean = np.asarray(mean_D, np.float64)
    if mean.shape != (cfg.d_model,):
        raise ValueError(f"mean_D must have shape ({cfg.d_model},); got {mean.shape}")
    tokens = np.asarray(tokens_BT)
    T = tokens.shape[-1]
    pos = np.arange(T) if positions is None else np.asarray(positions)
    if pos.ndim != 1 or pos.size == 0 or pos.min() < 0 or pos.max() >= T:
        raise ValueError(f"positions must be a non-empty 1-D array of indices in 0..{T - 1}; got {pos!r}")
    clean = M.forward(cfg, params, tokens, attention_mask)
    logp = jax.nn.log_softmax(jnp.asarray(clean, F32)[:, pos], axis=-1)
    out = []
    for u in dirs:
        value = jnp.asarray(np.asarray(u, np.float64) @ mean, F32)
        iv = Project(site="resid_pre", layer=jnp.asarray(layer, jnp.int32), direction=u, mode="set", value=value,
                     positions=jnp.asarray(pos, jnp.int32))
        ablated = jnp.asarray(M.forward(cfg, params, tokens, attention_mask, iv), F32)[:, pos]
        out.append(np.asarray(_kl_from_logp(logp, ablated).mean(-1), np.float64))
    return np.stack(out)


def spearman(a, b) -> float:
    """Spearman rank correlation of two equal-length 1-D samples (ties get their mean rank)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size < 2:
        raise ValueError(f"spearman needs two 1-D samples of equal length >= 2; got shapes {a.shape}, {b.shape}")

    def ranks(x):
        order = np.argsort(x, kind="stable")
        r = np.empty(x.size)
        r[order] = np.arange(x.size, dtype=np.float64)
        for v in np.unique(x):
            m = x == v
            r[m] = r[m].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")
