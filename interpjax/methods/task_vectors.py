"""ICL task vectors (Hendel et al.) and function vectors (Merullo et al.).

A task vector is the residual at layer L of the last position of in-context prompts (averaged over
prompts); patching it into a zero-shot run at the same layer and position should make the model
apply the task. A function vector is an MLP output o_L taken from a source prompt and *added* at
the same layer into other prompts. Both evaluations over layers are one vmapped, jitted program.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..core import inputs
from ..core import model as M
from ..core.handle import require_model
from ..core.interventions import Add, Patch
from ..core.sites import check_site
from ..io.artifacts import model_identity
from ..io.plots import save_drawing
from .result import Result

# layer sites with one d_model-wide vector per position: where a task / function vector lives
RESIDUAL_WIDTH_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
EDITS = ("patch", "add", "truncate")


@dataclass(frozen=True)
class LayerAccuracy(Result):
    """Accuracy per layer of one edit: ``accuracy[i]`` is the fraction of prompts whose top-1 next
    token is the answer when the edit is made at ``layers[i]``. ``edit``: "patch" (a task vector
    replaces ``site``), "add" (a function vector is added to ``site``) or "truncate" (the residual
    after ``layers[i]`` is decoded directly, i.e. the last L-1-layers[i] layers dropped)."""

    FORMAT: ClassVar[str] = "interpjax.layer_accuracy"

    edit: str
    site: str
    layers: np.ndarray
    accuracy: np.ndarray
    model: dict | None = None

    def draw(self, ax):
        ax.plot(self.layers, self.accuracy, marker="o", label=f"{self.edit} {self.site}")
        ax.set(xlabel="layer", ylabel="accuracy", ylim=(-0.02, 1.02), title=f"{self.edit} accuracy by layer")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        return ax

    def plot(self, path) -> Path:
        return save_drawing(self.draw, path)


# ---------------------------------------------------------------------------------------------
# inputs


def _prompts(model, tokens, attention_mask):
    """Checked (tokens, mask); the last position must be a real token in every row."""
    require_model(model)
    tokens = np.asarray(inputs.check_tokens(model.cfg, tokens))
    mask = np.asarray(inputs.check_mask(attention_mask, tokens.shape))
    if (mask[:, -1] == 0).any():
        bad = np.flatnonzero(mask[:, -1] == 0).tolist()
        raise ValueError(f"rows {bad[:5]} end in padding: the last position must be a real token (left-pad prompts)")
    return tokens, mask


def _answers(model, answers, B):
    return inputs.check_token_ids(model.cfg, answers, (B,), name="answers")


def _residual_site(site):
    check_site(site)
    if site not in RESIDUAL_WIDTH_SITES:
        raise ValueError(f"site {site!r} is not a residual-width layer site; use one of {', '.join(RESIDUAL_WIDTH_SITES)}")


# ---------------------------------------------------------------------------------------------
# vectors


def last_position_states(model, tokens, *, attention_mask=None, site="resid_pre") -> np.ndarray:
    """Activations at ``site`` of every layer at the last position: [L, B, D]."""
    _residual_site(site)
    tokens, mask = _prompts(model, tokens, attention_mask)
    _, cache = M.run_with_cache(model.cfg, model.params, tokens, sites=(site,), attention_mask=mask)
    return np.asarray(cache[site][:, :, -1])


def task_vectors(model, tokens, *, attention_mask=None, site="resid_pre") -> np.ndarray:
    """The task vector of every layer [L, D]: the last-position ``site`` averaged over ICL prompts."""
    return last_position_states(model, tokens, attention_mask=attention_mask, site=site).mean(1)


def function_vectors(model, tokens, *, attention_mask=None) -> np.ndarray:
    """The MLP outputs o_i of every layer at the source prompts' last position, averaged: [L, D]."""
    return last_position_states(model, tokens, attention_mask=attention_mask, site="mlp_out").mean(1)


def top_tokens(model, vector, k: int = 10):
    """The ``k`` vocabulary ids a [D] vector promotes most, read through the final norm and
    unembedding: (ids [k], logits [k])."""
    cfg = require_model(model, "top_tokens").cfg
    v = jnp.asarray(vector, M.compute_dtype(model.params))
    if v.shape != (cfg.d_model,):
        raise ValueError(f"vector must be [d_model={cfg.d_model}], got {v.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= cfg.vocab_size:
        raise ValueError(f"k={k!r} must be an integer in 1..vocab_size={cfg.vocab_size}")
    logits = M.final_logits(cfg, model.params, v[None, None])[0, 0]
    vals, ids = jax.lax.top_k(logits, int(k))
    return np.asarray(ids), np.asarray(vals)


# ---------------------------------------------------------------------------------------------
# accuracies


def accuracy(model, tokens, answers, *, attention_mask=None) -> float:
    """Fraction of prompts whose top-1 next token at the last position is the answer."""
    tokens, mask = _prompts(model, tokens, attention_mask)
    answers = _answers(model, answers, tokens.shape[0])
    logits = M.forward(model.cfg, model.params, tokens, mask)[:, -1]
    return float((np.asarray(jnp.argmax(logits, -1)) == answers).mean())


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _edited_top1(cfg, params, tokens, mask, site, edit, layers_L, vectors_LD):
    def one(layer, vec):
        if edit == "patch":
            iv = Patch(site=site, layer=layer, value=vec, positions=jnp.array([-1]))
        else:
            iv = Add(site=site, layer=layer, vector=vec, positions=jnp.array([-1]))
        return jnp.argmax(M.run(cfg, params, tokens, mask, None, (iv,), (), ())[0][:, -1], -1)

    return jax.vmap(one)(layers_L, vectors_LD)


def edited_predictions(model, tokens, vectors, *, attention_mask=None, site="resid_pre", edit="patch",
                       layers=None):
    """Top-1 next token of every prompt with ``vectors[i]`` patched into (``edit="patch"``) or added
    to (``edit="add"``) ``site`` at layer ``layers[i]``, last position: ids [len(layers), B]. The
    per-prompt form of ``patch_accuracy`` / ``add_accuracy`` (for bootstrap intervals over prompts)."""
    cfg = require_model(model, "edited_predictions").cfg
    if edit not in ("patch", "add"):
        raise ValueError(f"edit={edit!r}: use 'patch' or 'add'")
    _residual_site(site)
    tokens, mask = _prompts(model, tokens, attention_mask)
    layers = np.asarray(inputs.check_layers(cfg, layers, unique=False, allow_empty=False), np.int32)
    vectors = np.asarray(vectors)
    if vectors.shape != (len(layers), cfg.d_model):
        raise ValueError(f"vectors must be [layers={len(layers)}, d_model={cfg.d_model}], got {vectors.shape}")
    vectors = vectors.astype(M.compute_dtype(model.params))
    return np.asarray(_edited_top1(cfg, model.params, jnp.asarray(tokens), jnp.asarray(mask), site, edit,
                                   jnp.asarray(layers), jnp.asarray(vectors)))


def _per_layer_accuracy(model, tokens, answers, vectors, attention_mask, site, edit, layers) -> LayerAccuracy:
    cfg = require_model(model, f"{edit}_accuracy").cfg
    _residual_site(site)
    tokens, mask = _prompts(model, tokens, attention_mask)
    answers = _answers(model, answers, tokens.shape[0])
    layers = np.asarray(inputs.check_layers(cfg, layers, unique=False, allow_empty=False), np.int32)
    top = edited_predictions(model, tokens, vectors, attention_mask=mask, site=site, edit=edit, layers=layers)
    return LayerAccuracy(edit, site, layers, (top == answers[None]).mean(1), model_identity(model))


def patch_accuracy(model, tokens, answers, vectors, *, attention_mask=None, site="resid_pre",
                   layers=None) -> LayerAccuracy:
    """Accuracy of zero-shot prompts when ``vectors[i]`` ([L, D]) replaces ``site`` at layer
    ``layers[i]`` (default: every layer) at the last position (the task-vector evaluation)."""
    return _per_layer_accuracy(model, tokens, answers, vectors, attention_mask, site, "patch", layers)


def add_accuracy(model, tokens, answers, vectors, *, attention_mask=None, site="mlp_out",
                 layers=None) -> LayerAccuracy:
    """Accuracy when ``vectors[i]`` is added to ``site`` at layer ``layers[i]`` at the last position
    (the function-vector evaluation: an MLP output o_i transplanted between prompts)."""
    return _per_layer_accuracy(model, tokens, answers, vectors, attention_mask, site, "add", layers)


def truncated_accuracy(model, tokens, answers, *, attention_mask=None) -> LayerAccuracy:
    """Accuracy of the model with its last k = 0..L-1 layers dropped (entry k): the residual after
    layer L-1-k decoded through the final norm and unembedding (k = 0 is the full model)."""
    cfg = model.cfg
    tokens, mask = _prompts(model, tokens, attention_mask)
    answers = _answers(model, answers, tokens.shape[0])
    _, cache = M.run_with_cache(cfg, model.params, tokens, sites=("resid_post",), attention_mask=mask)
    x = cache["resid_post"][:, :, -1:]  # [L, B, 1, D]
    top = np.asarray(jnp.argmax(M.final_logits(cfg, model.params, x)[:, :, 0], -1))  # [L, B]
    return LayerAccuracy("truncate", "resid_post", np.arange(cfg.n_layers)[::-1].astype(np.int32),
                         (top[::-1] == answers[None]).mean(1), model_identity(model))
