"""Searching the input space: discrete prompts that make the model do something (M22's "optimise a
prompt to maximise a target token", and the discrete variant of feature visualisation, M16).

``optimize_prompt`` is greedy coordinate gradient search (GCG, Zou et al. 2023, the discrete form of
the SolidGoldMagikarp search): the gradient of the objective with respect to a one-hot encoding of
the free tokens proposes the ``topk`` most promising replacements per position, ``n_candidates``
random single-token swaps drawn from them are scored exactly in one batched forward, and the best
one is kept. Each step is one compiled program (gradient + candidate scoring), reused every step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..core import model as M
from ..core.handle import require_model


def _target_logprob(cfg, params, rows_BTD, target):
    """log p(target) at the last position of each row."""
    logits = M.forward_rows(cfg, params, rows_BTD)[:, -1].astype(jnp.float32)
    return jax.nn.log_softmax(logits, -1)[:, target]


def swap_candidates(g_UNV, free_UN, allowed_V, key, topk: int, n_cand: int):
    """GCG's candidate prompts [U, C, N]: each copies the current tokens ``free_UN`` with one
    position swapped for one of the ``topk`` allowed tokens of largest gradient ``g_UNV`` at that
    position (position and pick drawn from ``key``). Shared by every GCG objective (traceable)."""
    U, N, _ = g_UNV.shape
    g_UNV = jnp.where(allowed_V[None, None], g_UNV, -jnp.inf)
    _, top_UNK = jax.lax.top_k(g_UNV, topk)  # replacements whose first-order gain is largest
    kp, kk = jax.random.split(key)
    pos_UC = jax.random.randint(kp, (U, n_cand), 0, N)
    pick_UC = jax.random.randint(kk, (U, n_cand), 0, topk)
    new_UC = jnp.take_along_axis(top_UNK[jnp.arange(U)[:, None], pos_UC], pick_UC[..., None], -1)[..., 0]
    return jnp.where(jnp.arange(N)[None, None] == pos_UC[..., None], new_UC[..., None], free_UN[:, None])


@functools.partial(jax.jit, static_argnums=(0, 6, 7))
def _gcg_step(cfg, params, prefix_P, free_N, target, key, topk: int, n_cand: int, allowed_V):
    """One GCG step: (best candidate free tokens [N], its log p, the current log p)."""
    E = params["embed"]["tok"]
    V = E.shape[0]
    pre_rows = jnp.take(E, prefix_P, axis=0)

    def objective(onehot_NV):
        rows = jnp.concatenate([pre_rows, onehot_NV.astype(E.dtype) @ E], 0)[None]
        return _target_logprob(cfg, params, rows, target)[0]

    onehot = jax.nn.one_hot(free_N, V, dtype=jnp.float32)
    cur, g_NV = jax.value_and_grad(objective)(onehot)
    cand_CN = swap_candidates(g_NV[None], free_N[None], allowed_V, key, topk, n_cand)[0]
    toks_CT = jnp.concatenate([jnp.broadcast_to(prefix_P[None], (n_cand, prefix_P.shape[0])), cand_CN], 1)
    lp_C = _target_logprob(cfg, params, jnp.take(E, toks_CT, axis=0), target)
    best = jnp.argmax(lp_C)
    return cand_CN[best], lp_C[best], cur


def optimize_prompt(model, target_id: int, *, n_tokens: int = 8, steps: int = 40, topk: int = 64,
                    n_candidates: int = 64, prefix: str | None = None, allowed=None, seed: int = 0,
                    init=None) -> dict:
    """Free tokens (after the fixed ``prefix`` text, tokenized with the model's special tokens) that
    maximise log p(``target_id``) at the last position. ``allowed``: bool [V] mask of tokens the
    search may use (default every token). Returns {"tokens" [n_tokens], "text", "logprob", "history"
    (best log p after each step), "start_logprob"}; a step keeps its best candidate only if it is
    better than the current prompt, so the history never decreases."""
    model = require_model(model, "optimize_prompt")
    cfg, params = model.cfg, model.params
    V = cfg.vocab_size
    if isinstance(target_id, bool) or not isinstance(target_id, (int, np.integer)) or not 0 <= target_id < V:
        raise ValueError(f"target_id must be a token id in 0..{V - 1}; got {target_id!r}")
    for name, v, lo in (("n_tokens", n_tokens, 1), ("steps", steps, 1), ("topk", topk, 1), ("n_candidates", n_candidates, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}; got {v!r}")
    allowed_V = np.ones(V, bool) if allowed is None else np.asarray(allowed)
    if allowed_V.shape != (V,) or allowed_V.dtype != np.bool_:
        raise ValueError(f"allowed must be a bool mask of shape ({V},); got {allowed_V.dtype} {allowed_V.shape}")
    if allowed_V.sum() < topk:
        raise ValueError(f"allowed permits {int(allowed_V.sum())} tokens, fewer than topk={topk}")
    if prefix:
        if model.tokenizer is None:
            raise ValueError(f"model {model.name!r} has no tokenizer for the prefix text")
        prefix_P = np.asarray(model.tokenizer(prefix)["input_ids"], np.int32)
    else:
        prefix_P = np.zeros((0,), np.int32)
    if len(prefix_P) + n_tokens > cfg.n_ctx:
        raise ValueError(f"prefix ({len(prefix_P)}) + n_tokens ({n_tokens}) exceeds n_ctx={cfg.n_ctx}")
    rng = np.random.default_rng(seed)
    if init is None:
        free = rng.choice(np.flatnonzero(allowed_V), n_tokens).astype(np.int32)
    else:
        free = np.asarray(init, np.int32)
        if free.shape != (n_tokens,) or not allowed_V[free].all():
            raise ValueError(f"init must be {n_tokens} allowed token ids")
    key = jax.random.PRNGKey(seed)
    history, start = [], None
    best_lp = -np.inf
    for s in range(steps):
        cand, lp, cur = _gcg_step(cfg, params, jnp.asarray(prefix_P), jnp.asarray(free), jnp.int32(target_id),
                                  jax.random.fold_in(key, s), int(topk), int(n_candidates), jnp.asarray(allowed_V))
        cur, lp = float(cur), float(lp)
        if start is None:
            start, best_lp = cur, cur
        if lp > best_lp:
            free, best_lp = np.asarray(cand, np.int32), lp
        history.append(best_lp)
    text = model.tokenizer.decode([int(t) for t in free]) if model.tokenizer is not None else None
    return {"tokens": free, "text": text, "logprob": best_lp, "history": history, "start_logprob": start,
            "prefix_tokens": prefix_P}
