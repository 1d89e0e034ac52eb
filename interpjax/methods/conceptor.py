"""Concepts as sparse mixtures of vocabulary embeddings (Conceptor, Chefer et al. 2023, M7), ported
from a text-to-image model to a causal LM.

A concept word w (one token) is replaced, in prompts that contain it, by a learned row
``weights_C @ E[cand_C]``: a non-negative mixture of C candidate rows of the token-embedding table.
The weights minimise the KL divergence from the model's original next-token distributions (with w
in place) to those with the mixture in place, at every position from the word on, plus an L1 term
that makes the mixture sparse (weights are projected onto >= 0 after each Adam step, so unused
candidates sit at exactly 0). Several concepts are fitted together: every concept shares the prompt
templates, so the prompts stack into one [K, B, T] batch and one compiled step serves all K.

``encode`` builds the batch (left padded, the word's position per prompt), ``candidates`` picks C
tokens per concept (nearest rows by cosine plus the model's likeliest continuations), ``fit``
learns the weights, ``kl_to`` scores any slot row against the original distributions,
``random_mixture`` is the norm- and sparsity-matched control, ``edit`` rescales one coefficient.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..core import model as M
from ..core.handle import require_model
from ..train.optimizers import optax_promotion

INITS = ("uniform", "onehot")


@dataclass(frozen=True)
class ConceptBatch:
    """K concepts x B prompts of width T, left padded. ``slot_KB``: the concept word's position;
    ``kl_mask_KBT``: the positions whose prediction sees the word (the word's position onwards)."""

    tokens_KBT: np.ndarray  # int32, the original prompts (the word in its slot)
    mask_KBT: np.ndarray  # int32, 0 on left padding
    slot_KB: np.ndarray  # int32
    kl_mask_KBT: np.ndarray  # float32
    word_K: np.ndarray  # int32, the concept word's token id

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.tokens_KBT.shape)

    def take(self, idx_B) -> "ConceptBatch":
        """The same concepts on a subset of the prompts (the same indices for every concept)."""
        idx = np.asarray(idx_B, np.int64)
        B = self.tokens_KBT.shape[1]
        if idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= B:
            raise ValueError(f"prompt indices must be a non-empty 1-D array in 0..{B - 1}; got {idx_B!r}")
        return ConceptBatch(self.tokens_KBT[:, idx], self.mask_KBT[:, idx], self.slot_KB[:, idx],
                            self.kl_mask_KBT[:, idx], self.word_K)

    def concepts(self, idx_K) -> "ConceptBatch":
        idx = np.asarray(idx_K, np.int64)
        return ConceptBatch(self.tokens_KBT[idx], self.mask_KBT[idx], self.slot_KB[idx], self.kl_mask_KBT[idx],
                            self.word_K[idx])


def batch_from_ids(word_ids, prefixes, suffixes) -> ConceptBatch:
    """ConceptBatch of every word in every (prefix ids, suffix ids) frame: prompt b of concept k is
    ``prefixes[b] + [word_ids[k]] + suffixes[b]``, left padded to the longest frame."""
    word_K = np.asarray(word_ids, np.int32)
    if word_K.ndim != 1 or word_K.size == 0:
        raise ValueError(f"word_ids must be a non-empty list of token ids; got {word_ids!r}")
    if len(prefixes) != len(suffixes) or not prefixes:
        raise ValueError(f"need as many prefixes as suffixes (>= 1); got {len(prefixes)} and {len(suffixes)}")
    lens = [len(p) + 1 + len(s) for p, s in zip(prefixes, suffixes)]
    T, K, B = max(lens), word_K.size, len(prefixes)
    tokens = np.zeros((K, B, T), np.int32)
    mask = np.zeros((K, B, T), np.int32)
    slot = np.zeros((K, B), np.int32)
    klm = np.zeros((K, B, T), np.float32)
    for b, (p, s) in enumerate(zip(prefixes, suffixes)):
        start = T - lens[b]
        tokens[:, b, start:start + len(p)] = np.asarray(p, np.int32)
        tokens[:, b, start + len(p)] = word_K
        tokens[:, b, start + len(p) + 1:] = np.asarray(s, np.int32)
        mask[:, b, start:] = 1
        slot[:, b] = start + len(p)
        klm[:, b, start + len(p):] = 1.0
    return ConceptBatch(tokens, mask, slot, klm, word_K)


def word_id(tokenizer, word: str) -> int:
    """The single token id of ``word`` (leading space included); a clear error when it splits."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"concept word {word!r} is {len(ids)} tokens {ids}; a concept must be one token")
    return int(ids[0])


def encode(tokenizer, words, templates) -> ConceptBatch:
    """ConceptBatch of each single-token ``word`` (e.g. " tiger") in each template holding one
    ``" {w}"`` (e.g. "The {w} was"): prefix tokens (with the tokenizer's special tokens), the word's
    token, then the suffix tokens, so the word is exactly one known token in every prompt."""
    ids = [word_id(tokenizer, w) for w in words]
    prefixes, suffixes = [], []
    for t in templates:
        if t.count("{w}") != 1 or " {w}" not in t:
            raise ValueError(f"template {t!r} must hold '{{w}}' once, after a space (the word carries the space)")
        pre, suf = t.split(" {w}")
        prefixes.append(list(tokenizer(pre)["input_ids"]))
        suffixes.append(list(tokenizer(suf, add_special_tokens=False)["input_ids"]) if suf else [])
    return batch_from_ids(ids, prefixes, suffixes)


def variant_ids(tokenizer, word: str, vocab_size: int) -> np.ndarray:
    """Token ids whose text equals ``word`` up to case and surrounding spaces (" Tiger", "tiger",
    "TIGER" for " tiger"): excluded from a concept's candidates, else the fit finds the word itself."""
    texts = _vocab_texts(tokenizer, vocab_size)
    key = word.strip().lower()
    return np.asarray([i for i, t in enumerate(texts) if t.strip().lower() == key], np.int32)


_TEXTS: dict = {}


def _vocab_texts(tokenizer, V: int) -> list[str]:
    k = (id(tokenizer), V)
    if k not in _TEXTS:
        _TEXTS[k] = (tokenizer.batch_decode([[i] for i in range(V)]), tokenizer)  # the tokenizer kept alive with its id
    return _TEXTS[k][0]


# ---------------------------------------------------------------------------------------------
# the model fed a slot row


def _slot_rows(E, tokens_NT, slot_N, row_ND):
    rows = jnp.take(E, tokens_NT, axis=0)
    at_NT = jnp.arange(tokens_NT.shape[1])[None] == slot_N[:, None]
    return jnp.where(at_NT[..., None], row_ND[:, None, :].astype(rows.dtype), rows)


def _logprobs(cfg, params, tokens_NT, mask_NT, slot_N, row_ND):
    """log p [N, T, V] (float32) of the prompts with ``row_ND`` at each prompt's slot."""
    rows = _slot_rows(params["embed"]["tok"], tokens_NT, slot_N, row_ND)
    return jax.nn.log_softmax(M.forward_rows(cfg, params, rows, mask_NT).astype(jnp.float32), -1)


def _kl_N(target_NTV, logq_NTV, klm_NT):
    """Mean over the KL positions of KL(p_target || q), per prompt."""
    kl_NT = jnp.sum(jnp.exp(target_NTV) * (target_NTV - logq_NTV), -1)
    return jnp.sum(kl_NT * klm_NT, 1) / jnp.maximum(jnp.sum(klm_NT, 1), 1.0)


def _flat(batch: ConceptBatch):
    K, B, T = batch.shape
    return (jnp.asarray(batch.tokens_KBT.reshape(K * B, T)), jnp.asarray(batch.mask_KBT.reshape(K * B, T)),
            jnp.asarray(batch.slot_KB.reshape(K * B)), jnp.asarray(batch.kl_mask_KBT.reshape(K * B, T)))


def _per_prompt(row_KD, B: int):
    return jnp.repeat(jnp.asarray(row_KD), B, axis=0)


@functools.partial(jax.jit, static_argnums=0)
def _logprobs_jit(cfg, params, tokens, mask, slot, row_ND):
    return _logprobs(cfg, params, tokens, mask, slot, row_ND)


@functools.partial(jax.jit, static_argnums=0)
def _kl_jit(cfg, params, tokens, mask, slot, klm, target, row_ND):
    return _kl_N(target, _logprobs(cfg, params, tokens, mask, slot, row_ND), klm)


def _check_rows(row_KD, K: int, D: int):
    r = np.asarray(row_KD)
    if r.shape != (K, D):
        raise ValueError(f"slot rows must be [K={K}, D={D}]; got shape {r.shape}")


def logprobs_with(model, batch: ConceptBatch, row_KD=None) -> np.ndarray:
    """log p [K, B, T, V] of the batch with concept k's slot holding ``row_KD[k]`` (default: the
    word's own row, i.e. the original prompts)."""
    model = require_model(model, "conceptor.logprobs_with")
    K, B, T = batch.shape
    E = model.params["embed"]["tok"]
    row_KD = jnp.take(E, jnp.asarray(batch.word_K), axis=0) if row_KD is None else row_KD
    _check_rows(row_KD, K, E.shape[1])
    tokens, mask, slot, _ = _flat(batch)
    lp = _logprobs_jit(model.cfg, model.params, tokens, mask, slot, _per_prompt(row_KD, B))
    return np.asarray(lp).reshape(K, B, T, -1)


def kl_to(model, batch: ConceptBatch, target_KBTV, row_KD) -> np.ndarray:
    """Per prompt [K, B]: mean over the word's position onwards of KL(target || model with
    ``row_KD[k]`` in concept k's slot); ``target_KBTV`` are log-probabilities (``logprobs_with``)."""
    model = require_model(model, "conceptor.kl_to")
    K, B, T = batch.shape
    _check_rows(row_KD, K, model.cfg.d_model)
    tgt = np.asarray(target_KBTV)
    if tgt.shape[:3] != (K, B, T):
        raise ValueError(f"target log-probs must be [K={K}, B={B}, T={T}, V]; got shape {tgt.shape}")
    tokens, mask, slot, klm = _flat(batch)
    kl = _kl_jit(model.cfg, model.params, tokens, mask, slot, klm, jnp.asarray(tgt.reshape(K * B, T, -1)),
                 _per_prompt(row_KD, B))
    return np.asarray(kl).reshape(K, B)


# ---------------------------------------------------------------------------------------------
# candidates, mixtures, controls


def mixture_rows(model, cand_KC, weights_KC) -> np.ndarray:
    """The slot rows [K, D] of mixtures: ``weights_KC[k] @ E[cand_KC[k]]`` (float32)."""
    model = require_model(model, "conceptor.mixture_rows")
    E = np.asarray(model.params["embed"]["tok"], np.float32)
    cand, w = np.asarray(cand_KC), np.asarray(weights_KC, np.float32)
    if cand.shape != w.shape or cand.ndim != 2:
        raise ValueError(f"candidates and weights must both be [K, C]; got {cand.shape} and {w.shape}")
    return np.einsum("kc,kcd->kd", w, E[cand])


def candidates(model, batch: ConceptBatch, *, n_cos: int = 384, n_pred: int = 128, exclude=None,
               target_KBTV=None) -> np.ndarray:
    """int32 [K, C = n_cos + n_pred] candidate tokens per concept: the ``n_cos`` rows nearest the
    word's row by cosine, then the ``n_pred`` likeliest tokens of the original next-token
    distributions at the KL positions (mean over the batch's prompts) not already chosen.
    ``exclude[k]``: ids never chosen for concept k (its word's variants)."""
    model = require_model(model, "conceptor.candidates")
    E = np.asarray(model.params["embed"]["tok"], np.float32)
    V = E.shape[0]
    K = batch.shape[0]
    for name, v in (("n_cos", n_cos), ("n_pred", n_pred)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0; got {v!r}")
    if n_cos + n_pred < 1 or n_cos + n_pred >= V:
        raise ValueError(f"n_cos + n_pred must be in 1..{V - 1}; got {n_cos + n_pred}")
    exclude = [np.zeros(0, np.int32)] * K if exclude is None else [np.asarray(e, np.int64) for e in exclude]
    if len(exclude) != K or any(e.size and (e.min() < 0 or e.max() >= V) for e in exclude):
        raise ValueError(f"exclude must hold one array of token ids in 0..{V - 1} per concept ({K})")
    if n_pred:
        tgt = logprobs_with(model, batch) if target_KBTV is None else np.asarray(target_KBTV)
        w = batch.kl_mask_KBT[..., None]
        mean_p_KV = (np.exp(tgt) * w).sum((1, 2)) / w.sum((1, 2))
    U = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-30)
    out = np.zeros((K, n_cos + n_pred), np.int32)
    for k in range(K):
        banned = np.zeros(V, bool)
        banned[exclude[k]] = True
        cos_V = U @ U[batch.word_K[k]]
        cos_V[banned] = -np.inf
        near = np.argsort(-cos_V, kind="stable")[:n_cos]
        banned[near] = True
        pred = np.zeros(0, np.int64)
        if n_pred:
            p_V = np.where(banned, -np.inf, mean_p_KV[k])
            pred = np.argsort(-p_V, kind="stable")[:n_pred]
        out[k] = np.concatenate([near, pred])
    return out


def nearest_tokens(model, word_ids, exclude=None) -> np.ndarray:
    """int32 [K]: per word, the other token whose embedding row has the highest cosine with the
    word's (``exclude[k]``: ids not allowed, e.g. the word's variants; the word itself never is)."""
    model = require_model(model, "conceptor.nearest_tokens")
    E = np.asarray(model.params["embed"]["tok"], np.float32)
    U = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-30)
    out = []
    for k, w in enumerate(np.asarray(word_ids)):
        cos_V = U @ U[w]
        cos_V[w] = -np.inf
        if exclude is not None:
            cos_V[np.asarray(exclude[k], np.int64)] = -np.inf
        out.append(int(np.argmax(cos_V)))
    return np.asarray(out, np.int32)


def random_mixture(model, cand_KC, weights_KC, seed: int = 0):
    """The control of a learned mixture: per concept, the same nonzero weights (shuffled) on as many
    tokens drawn at random from the same candidates, rescaled so that the mixture row has the
    learned row's norm. Returns (cand_KC, weights_KC) of the same shapes."""
    rng = np.random.default_rng(seed)
    cand, w = np.asarray(cand_KC), np.asarray(weights_KC, np.float32)
    if cand.shape != w.shape or cand.ndim != 2:
        raise ValueError(f"candidates and weights must both be [K, C]; got {cand.shape} and {w.shape}")
    out = np.zeros_like(w)
    for k in range(w.shape[0]):
        nz = np.flatnonzero(w[k] > 0)
        if nz.size == 0:
            raise ValueError(f"concept {k} has no nonzero weight to match")
        pos = rng.choice(w.shape[1], nz.size, replace=False)
        out[k, pos] = rng.permutation(w[k, nz])
    learned, rand = mixture_rows(model, cand, w), mixture_rows(model, cand, out)
    scale = np.linalg.norm(learned, axis=1) / np.maximum(np.linalg.norm(rand, axis=1), 1e-30)
    return cand.copy(), (out * scale[:, None]).astype(np.float32)


def edit(weights_KC, k: int, c: int, *, scale: float | None = None, add: float | None = None) -> np.ndarray:
    """A copy of the weights with coefficient (concept ``k``, candidate position ``c``) multiplied
    by ``scale`` or increased by ``add`` (one of the two), clipped at 0."""
    w = np.array(weights_KC, np.float32)
    if (scale is None) == (add is None):
        raise ValueError("edit needs exactly one of scale= or add=")
    if not (0 <= k < w.shape[0] and 0 <= c < w.shape[1]):
        raise ValueError(f"coefficient ({k}, {c}) is outside the weights' shape {w.shape}")
    w[k, c] = w[k, c] * scale if scale is not None else w[k, c] + add
    w[k, c] = max(w[k, c], 0.0)
    return w


# ---------------------------------------------------------------------------------------------
# fitting


@dataclass(frozen=True)
class ConceptMixture:
    """Learned mixtures: concept k's row is ``weights_KC[k] @ E[cand_KC[k]]``."""

    cand_KC: np.ndarray  # int32
    weights_KC: np.ndarray  # float32, >= 0
    loss_history: np.ndarray  # [steps] total loss (KL + L1) summed over concepts
    kl_history: np.ndarray  # [steps, K] mean training KL per concept

    def top(self, k: int, n: int = 10) -> list[tuple[int, float]]:
        """The ``n`` largest (token id, weight) of concept ``k``, nonzero weights only."""
        w = self.weights_KC[k]
        order = np.argsort(-w, kind="stable")[:n]
        return [(int(self.cand_KC[k, i]), float(w[i])) for i in order if w[i] > 0]

    @property
    def nnz_K(self) -> np.ndarray:
        return (self.weights_KC > 0).sum(1)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _fit_step(cfg, lr, params, w_KC, state, cand_KC, tokens, mask, slot, klm, target, l1):
    tx = optax_promotion(optax.adam(lr))
    K = w_KC.shape[0]
    E = params["embed"]["tok"]
    E_KCD = jnp.take(E, cand_KC, axis=0).astype(jnp.float32)
    B = tokens.shape[0] // K

    def loss_fn(w):
        row_KD = jnp.einsum("kc,kcd->kd", w, E_KCD, precision=jax.lax.Precision.HIGHEST)
        kl_N = _kl_N(target, _logprobs(cfg, params, tokens, mask, slot, jnp.repeat(row_KD, B, axis=0)), klm)
        kl_K = kl_N.reshape(K, B).mean(1)
        return jnp.sum(kl_K) + l1 * jnp.sum(w), kl_K

    (loss, kl_K), g = jax.value_and_grad(loss_fn, has_aux=True)(w_KC)
    upd, state = tx.update(g, state, w_KC)
    return jnp.maximum(w_KC + upd, 0.0), state, loss, kl_K


def fit(model, batch: ConceptBatch, cand_KC, *, steps: int = 100, lr: float = 0.02, l1: float = 0.01,
        init: str = "uniform", seed: int = 0, target_KBTV=None) -> ConceptMixture:
    """Non-negative weights over each concept's candidates minimising (mean KL over the batch's
    prompts) + ``l1`` * sum(weights), by projected Adam (``steps`` full-batch steps, one compiled
    program for all K concepts). ``init="uniform"``: weights 1/C times (1 + 0.1 noise of ``seed``);
    ``"onehot"``: all weight on the word itself (it must be a candidate; the start is the model)."""
    model = require_model(model, "conceptor.fit")
    K, B, T = batch.shape
    cand = np.asarray(cand_KC, np.int32)
    if cand.ndim != 2 or cand.shape[0] != K:
        raise ValueError(f"cand_KC must be [K={K}, C]; got shape {cand.shape}")
    for name, v in (("steps", steps),):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0; got {v!r}")
    if not (lr > 0) or not (l1 >= 0):
        raise ValueError(f"lr must be > 0 and l1 >= 0; got lr={lr!r}, l1={l1!r}")
    C = cand.shape[1]
    if init == "uniform":
        noise = np.random.default_rng(seed).uniform(-1.0, 1.0, (K, C))
        w = ((1.0 + 0.1 * noise) / C).astype(np.float32)
    elif init == "onehot":
        hit = cand == batch.word_K[:, None]
        if not hit.any(1).all():
            raise ValueError(f"init='onehot' needs each word among its candidates; missing for concepts "
                             f"{np.flatnonzero(~hit.any(1)).tolist()}")
        w = (hit & (np.cumsum(hit, 1) == 1)).astype(np.float32)
    else:
        raise ValueError(f"init must be one of {INITS}; got {init!r}")
    target = logprobs_with(model, batch) if target_KBTV is None else np.asarray(target_KBTV)
    tokens, mask, slot, klm = _flat(batch)
    target = jnp.asarray(target.reshape(K * B, T, -1))
    w = jnp.asarray(w)
    state = optax_promotion(optax.adam(float(lr))).init(w)
    losses, kls = [], []
    for _ in range(steps):
        w, state, loss, kl_K = _fit_step(model.cfg, float(lr), model.params, w, state, jnp.asarray(cand), tokens,
                                         mask, slot, klm, target, jnp.float32(l1))
        losses.append(float(loss))
        kls.append(np.asarray(kl_K))
    return ConceptMixture(cand, np.asarray(w, np.float32), np.asarray(losses, np.float32),
                          np.asarray(kls, np.float32).reshape(len(kls), K))
