"""ICL task vectors (Hendel et al.) and function vectors (Merullo et al.).

A task vector is the residual at layer L of the last position of in-context prompts (averaged over
prompts); patching it into a zero-shot run at the same layer and position should make the model
apply the task. A function vector is an MLP output o_L taken from a source prompt and *added* at
the same layer into other prompts. Both evaluations over layers are one vmapped, jitted program.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..core import model as M
from ..core.config import Config
from ..core.interventions import Add, Patch
from ..core.sites import LAYER_SITES, check_site


def _tokens(tokens, attention_mask):
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, seq], got shape {tokens.shape}")
    mask = np.ones_like(tokens) if attention_mask is None else np.asarray(attention_mask, np.int32)
    if mask.shape != tokens.shape:
        raise ValueError(f"attention_mask has shape {mask.shape}; expected {tokens.shape}")
    if (mask[:, -1] == 0).any():
        raise ValueError("the last position must be a real token in every row (left-pad prompts)")
    return tokens, mask


def _answers(answers, B, cfg):
    answers = np.asarray(answers, np.int32)
    if answers.shape != (B,):
        raise ValueError(f"answers must hold one token id per prompt, shape ({B},); got {answers.shape}")
    if answers.min() < 0 or answers.max() >= cfg.vocab_size:
        raise ValueError(f"answer ids must lie in 0..{cfg.vocab_size - 1}")
    return answers


def _layer_site(site):
    check_site(site)
    if site not in LAYER_SITES or site in ("q", "k", "v", "z", "attn_scores", "pattern", "mlp_pre", "mlp_post"):
        raise ValueError(f"site {site!r} is not a residual-width layer site; use one of "
                         "resid_pre, resid_mid, resid_post, attn_out, mlp_out")


def last_position_states(cfg: Config, params: dict, tokens, attention_mask=None, *, site="resid_pre") -> np.ndarray:
    """Activations at ``site`` of every layer at the last position: [L, B, D]."""
    _layer_site(site)
    tokens, mask = _tokens(tokens, attention_mask)
    _, cache = M.run_with_cache(cfg, params, tokens, sites=(site,), attention_mask=mask)
    return np.asarray(cache[site][:, :, -1])


def task_vectors(cfg: Config, params: dict, icl_tokens, attention_mask=None, *, site="resid_pre") -> np.ndarray:
    """The task vector of every layer [L, D]: the last-position ``site`` averaged over ICL prompts."""
    return last_position_states(cfg, params, icl_tokens, attention_mask, site=site).mean(1)


def accuracy(cfg: Config, params: dict, tokens, answers, attention_mask=None) -> float:
    """Fraction of prompts whose top-1 next token at the last position is the answer."""
    tokens, mask = _tokens(tokens, attention_mask)
    answers = _answers(answers, tokens.shape[0], cfg)
    logits = M.forward(cfg, params, tokens, mask)[:, -1]
    return float((np.asarray(jnp.argmax(logits, -1)) == answers).mean())


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _edited_top1(cfg, params, tokens, mask, site, mode, layers_L, vectors_LD):
    def one(layer, vec):
        make = Patch if mode == "patch" else Add
        kw = {"value": vec} if mode == "patch" else {"vector": vec}
        iv = make(site=site, layer=layer, positions=jnp.array([-1]), **kw)
        return jnp.argmax(M.run(cfg, params, tokens, mask, None, (iv,), (), ())[0][:, -1], -1)

    return jax.vmap(one)(layers_L, vectors_LD)


def _per_layer_accuracy(cfg, params, tokens, answers, vectors, attention_mask, site, mode, layers):
    _layer_site(site)
    tokens, mask = _tokens(tokens, attention_mask)
    answers = _answers(answers, tokens.shape[0], cfg)
    layers = np.arange(cfg.n_layers) if layers is None else np.asarray(layers, np.int32)
    if layers.min() < 0 or layers.max() >= cfg.n_layers:
        raise ValueError(f"layers {layers.tolist()} out of range: valid layers are 0..{cfg.n_layers - 1}")
    vectors = np.asarray(vectors, np.asarray(params["embed"]["tok"]).dtype)
    if vectors.shape != (len(layers), cfg.d_model):
        raise ValueError(f"vectors must be [layers={len(layers)}, d_model={cfg.d_model}], got {vectors.shape}")
    top = np.asarray(_edited_top1(cfg, params, jnp.asarray(tokens), jnp.asarray(mask), site, mode,
                                  jnp.asarray(layers), jnp.asarray(vectors)))
    return (top == answers[None]).mean(1)


def patch_accuracy(cfg: Config, params: dict, tokens, answers, vectors_LD, attention_mask=None, *,
                   site="resid_pre", layers=None) -> np.ndarray:
    """Accuracy [L] of zero-shot prompts when ``vectors_LD[i]`` replaces ``site`` at layer
    ``layers[i]`` (default: every layer) at the last position (the task-vector evaluation)."""
    return _per_layer_accuracy(cfg, params, tokens, answers, vectors_LD, attention_mask, site, "patch", layers)


def add_accuracy(cfg: Config, params: dict, tokens, answers, vectors_LD, attention_mask=None, *,
                 site="mlp_out", layers=None) -> np.ndarray:
    """Accuracy [L] when ``vectors_LD[i]`` is added to ``site`` at layer ``layers[i]`` at the last
    position (the function-vector evaluation: an MLP output o_i transplanted between prompts)."""
    return _per_layer_accuracy(cfg, params, tokens, answers, vectors_LD, attention_mask, site, "add", layers)


def function_vectors(cfg: Config, params: dict, source_tokens, attention_mask=None) -> np.ndarray:
    """The MLP outputs o_i of every layer at the source prompts' last position, averaged: [L, D]."""
    return last_position_states(cfg, params, source_tokens, attention_mask, site="mlp_out").mean(1)


def truncated_accuracy(cfg: Config, params: dict, tokens, answers, attention_mask=None) -> np.ndarray:
    """Accuracy [L] of the model with its last k = 0..L-1 layers dropped: the residual after layer
    L-1-k decoded through the final norm and unembedding (k = 0 is the full model)."""
    tokens, mask = _tokens(tokens, attention_mask)
    answers = _answers(answers, tokens.shape[0], cfg)
    _, cache = M.run_with_cache(cfg, params, tokens, sites=("resid_post",), attention_mask=mask)
    x = cache["resid_post"][:, :, -1:]  # [L, B, 1, D]
    top = np.asarray(jnp.argmax(M.final_logits(cfg, params, x)[:, :, 0], -1))  # [L, B]
    return (top[::-1] == answers[None]).mean(1)


def top_tokens(cfg: Config, params: dict, vector_D, k: int = 10):
    """The ``k`` vocabulary ids a vector promotes most, read through the final norm and unembedding."""
    v = jnp.asarray(vector_D, jnp.asarray(params["embed"]["tok"]).dtype)
    if v.shape != (cfg.d_model,):
        raise ValueError(f"vector must be [d_model={cfg.d_model}], got {v.shape}")
    logits = M.final_logits(cfg, params, v[None, None])[0, 0]
    vals, ids = jax.lax.top_k(logits, k)
    return np.asarray(ids), np.asarray(vals)
