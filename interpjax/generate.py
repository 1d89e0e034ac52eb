"""Greedy decoding with interventions active, compiled once per shape.

This is the simple reference decoder: each step re-runs the fixed-size buffer (causal attention
makes the not-yet-written positions irrelevant), so it needs no KV cache and is exact by
construction. It is what the parity tests and the demo use.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import model as M
from .config import Config


@functools.partial(jax.jit, static_argnums=(0, 3))
def _greedy(cfg: Config, params, prompt_BT, n_new: int, ivs):
    B, T0 = prompt_BT.shape
    buf = jnp.concatenate([prompt_BT, jnp.zeros((B, n_new), prompt_BT.dtype)], axis=1)
    mask = jnp.ones_like(buf)

    def step(i, buf):
        logits = M._run(cfg, params, buf, mask, None, ivs, (), ())[0]
        nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, T0 + i - 1, axis=1, keepdims=False), -1)
        return jax.lax.dynamic_update_index_in_dim(buf, nxt.astype(buf.dtype), T0 + i, axis=1)

    return jax.lax.fori_loop(0, n_new, step, buf)


def greedy(cfg: Config, params: dict, prompt_BT, max_new_tokens: int, interventions=None):
    """Greedy continuation [B, T0 + max_new_tokens] of unpadded prompts, interventions active
    on the prompt and on every generated position."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    prompt = np.asarray(prompt_BT)
    total = prompt.shape[-1] + max_new_tokens
    if total > cfg.n_ctx:
        raise ValueError(f"prompt ({prompt.shape[-1]}) + max_new_tokens ({max_new_tokens}) exceeds n_ctx={cfg.n_ctx}")
    full = np.zeros(prompt.shape[:-1] + (total,), prompt.dtype)
    ivs = M._prepare(cfg, params, full, None, interventions)[3]  # validate at the final length
    return np.asarray(_greedy(cfg, params, jnp.asarray(prompt, jnp.int32), max_new_tokens, ivs))
