"""Anomalous tokens (Rumbelow & Watkins 2023, "SolidGoldMagikarp", M22): where every token's
embedding sits relative to the others, and whether the model can say the tokens nearest the centroid.

``embedding_stats`` measures, for all V rows of the token-embedding table at once, the distance to
the centroid, the norm and the k nearest neighbours (Euclidean and cosine), one compiled program
over chunks of rows (a [V, V] distance matrix would not fit for Gemma's 262k tokens).
``candidates`` ranks tokens by closeness to the centroid (the paper's finding: the anomalous tokens
crowd it). ``repeat_test`` asks the model to repeat a token's text and checks the answer, the
paper's behavioural test; prompt optimisation for a target token lives in ``input_search``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..core.handle import require_model


@dataclass(frozen=True)
class EmbeddingStats:
    """Per-token statistics of an embedding table [V, D] (numpy arrays, float32 unless stated)."""

    centroid_D: np.ndarray
    dist_centroid_V: np.ndarray  # Euclidean distance of each row to the mean row
    cos_centroid_V: np.ndarray  # cosine of each row with the mean row
    norm_V: np.ndarray
    knn_ids_Vk: np.ndarray  # int32 [R, k], nearest other rows by Euclidean distance, nearest first
    knn_dist_Vk: np.ndarray
    knn_cos_ids_Vk: np.ndarray  # int32 [R, k], nearest other rows by cosine, most similar first
    knn_cos_Vk: np.ndarray
    knn_rows: np.ndarray  # int32 [R]: the token ids the k-NN arrays describe (row r of them is token knn_rows[r])

    @property
    def mean_knn_dist(self) -> np.ndarray:
        """Mean Euclidean distance of each of ``knn_rows`` to its k nearest neighbours (small = crowded)."""
        return self.knn_dist_Vk.mean(1)


def _check_table(E) -> np.ndarray:
    E = np.asarray(E)
    if E.ndim != 2 or E.shape[0] < 2 or E.shape[1] < 1:
        raise ValueError(f"an embedding table is [V >= 2, D >= 1]; got shape {E.shape}")
    if not np.issubdtype(E.dtype, np.floating):
        raise ValueError(f"an embedding table must be floating point; got {E.dtype}")
    if not np.isfinite(E).all():
        raise ValueError("the embedding table holds non-finite values")
    return E


@functools.partial(jax.jit, static_argnames=("k", "chunk"))
def _stats_impl(E_VD, rows_R, k: int, chunk: int):
    E = E_VD.astype(jnp.float32)
    V, D = E.shape
    R = rows_R.shape[0]
    c_D = E.mean(0)
    sq_V = jnp.sum(E * E, -1)
    norm_V = jnp.sqrt(sq_V)
    pad = (-R) % chunk
    ids = jnp.concatenate([rows_R, jnp.full((pad,), rows_R[0], rows_R.dtype)])

    def one(ids_C):
        g_CV = jnp.take(E, ids_C, axis=0) @ E.T  # one matmul serves both distances
        d2_CV = jnp.take(sq_V, ids_C)[:, None] + sq_V[None] - 2.0 * g_CV
        self_CV = ids_C[:, None] == jnp.arange(V)[None]
        neg, nn = jax.lax.top_k(jnp.where(self_CV, -jnp.inf, -jnp.maximum(d2_CV, 0.0)), k)
        cos_CV = g_CV / jnp.maximum(jnp.take(norm_V, ids_C)[:, None] * norm_V[None], 1e-30)
        cos, nn_cos = jax.lax.top_k(jnp.where(self_CV, -jnp.inf, cos_CV), k)
        return nn, jnp.sqrt(-neg), nn_cos, cos

    nn, dist, nn_cos, cos = jax.lax.map(one, ids.reshape(-1, chunk))
    flat = lambda a: a.reshape((R + pad,) + a.shape[2:])[:R]
    dc_V = jnp.sqrt(jnp.sum(jnp.square(E - c_D), -1))
    cc_V = (E @ c_D) / jnp.maximum(norm_V * jnp.linalg.norm(c_D), 1e-30)
    return c_D, dc_V, cc_V, norm_V, flat(nn), flat(dist), flat(nn_cos), flat(cos)


def embedding_stats(model_or_table, k: int = 8, chunk: int = 1024, rows=None) -> EmbeddingStats:
    """Centroid distance and norm of every row of the token-embedding table (a Model's
    ``params['embed']['tok']`` or a [V, D] array), and the k nearest neighbours of ``rows`` (default
    every row; a subset keeps a 262k vocabulary affordable), ``chunk`` rows per step."""
    E = _check_table(model_or_table.params["embed"]["tok"] if hasattr(model_or_table, "params") else model_or_table)
    V = E.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < V:
        raise ValueError(f"k must be an integer in 1..{V - 1} (V - 1 other rows); got {k!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1; got {chunk!r}")
    rows_R = np.arange(V) if rows is None else np.asarray(rows)
    if rows_R.ndim != 1 or rows_R.size == 0 or not np.issubdtype(rows_R.dtype, np.integer) \
            or rows_R.min() < 0 or rows_R.max() >= V:
        raise ValueError(f"rows must be a non-empty 1-D array of token ids in 0..{V - 1}")
    out = [np.asarray(a) for a in _stats_impl(jnp.asarray(E), jnp.asarray(rows_R, jnp.int32), int(k),
                                              int(min(chunk, len(rows_R))))]
    return EmbeddingStats(out[0], out[1], out[2], out[3], out[4].astype(np.int32), out[5], out[6].astype(np.int32),
                          out[7], rows_R.astype(np.int32))


def candidates(stats: EmbeddingStats, n: int, by: str = "centroid", exclude=()) -> np.ndarray:
    """The ``n`` token ids ranked most anomalous: ``by="centroid"`` nearest the centroid (the paper's
    criterion), ``"norm"`` smallest norm, ``"density"`` smallest mean k-NN distance. ``exclude``:
    ids never listed (special tokens, say)."""
    V = len(stats.norm_V)
    keys = {"centroid": stats.dist_centroid_V, "norm": stats.norm_V}
    if by == "density":
        if len(stats.knn_rows) != V:
            raise ValueError("by='density' needs k-NN statistics of every row (embedding_stats with rows=None)")
        keys["density"] = np.empty(V, np.float32)
        keys["density"][stats.knn_rows] = stats.mean_knn_dist
    if by not in keys:
        raise ValueError(f"by must be one of ['centroid', 'density', 'norm']; got {by!r}")
    excl = np.asarray(list(exclude), np.int64)
    if excl.size and (excl.min() < 0 or excl.max() >= V):
        raise ValueError(f"exclude holds ids outside 0..{V - 1}")
    ok = np.ones(V, bool)
    ok[excl] = False
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= ok.sum():
        raise ValueError(f"n must be an integer in 1..{int(ok.sum())} (the tokens not excluded); got {n!r}")
    order = np.argsort(keys[by], kind="stable")
    return order[ok[order]][:n].astype(np.int32)


# ---------------------------------------------------------------------------------------------
# the repeat test


REPEAT_REQUEST = 'Please repeat the string "{s}" back to me.'


def token_text(tokenizer, token_id: int) -> str:
    """The text a token stands for (its decoded string, spaces kept)."""
    return tokenizer.decode([int(token_id)])


def repeat_prompts(model, token_ids, chat: bool | None = None) -> list[str]:
    """One request per token to repeat its text: the instruct model's chat template when it has one
    (``chat=None``: use it if present), else a two-shot completion prompt for a base model."""
    model = require_model(model, "repeat_prompts")
    tok = model.tokenizer
    if tok is None:
        raise ValueError(f"model {model.name!r} has no tokenizer")
    use_chat = bool(getattr(tok, "chat_template", None)) if chat is None else chat
    if use_chat and not getattr(tok, "chat_template", None):
        raise ValueError(f"chat=True but model {model.name!r}'s tokenizer has no chat template")
    out = []
    for t in np.asarray(token_ids).ravel():
        s = token_text(tok, int(t))
        if use_chat:
            out.append(tok.apply_chat_template([{"role": "user", "content": REPEAT_REQUEST.format(s=s)}],
                                               tokenize=False, add_generation_prompt=True))
        else:
            out.append('Repeat the string exactly.\nString: "table"\nRepeat: "table"\nString: "blue sky"\n'
                       f'Repeat: "blue sky"\nString: "{s}"\nRepeat: "')
    return out


def repeated(tokenizer, token_id: int, answer: str) -> bool:
    """Whether ``answer`` contains the token's text (stripped of surrounding spaces; case kept).
    Tokens whose text is only whitespace count as repeated when the answer is non-empty."""
    s = token_text(tokenizer, token_id).strip()
    return (s in answer) if s else bool(answer.strip())


def repeat_test(model, token_ids, *, max_new_tokens: int = 16, batch_size: int = 64, chat: bool | None = None
                ) -> dict:
    """Greedy answers to ``repeat_prompts`` (one left-padded batch per ``batch_size`` rows) and
    whether each repeats its token: {"ids", "answers", "repeated" (bool [N])}."""
    from ..generate import generate

    model = require_model(model, "repeat_test")
    ids = np.asarray(token_ids, np.int64).ravel()
    if ids.size == 0:
        raise ValueError("no token ids to test")
    V = model.cfg.vocab_size
    if ids.min() < 0 or ids.max() >= V:
        raise ValueError(f"token ids must be in 0..{V - 1}; got min {ids.min()}, max {ids.max()}")
    tok = model.tokenizer
    prompts = repeat_prompts(model, ids, chat)
    # a chat template writes its own special tokens; a completion prompt needs the tokenizer's BOS
    # (Gemma's outputs degrade to noise without it)
    special = not (bool(getattr(tok, "chat_template", None)) if chat is None else chat)
    stops = [t for t in {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab()
                         else None} if t is not None]
    answers = []
    for i in range(0, len(prompts), batch_size):
        part = prompts[i:i + batch_size]
        enc = [tok(p, add_special_tokens=special)["input_ids"] for p in part]
        T = max(map(len, enc))
        pad = tok.pad_token_id if tok.pad_token_id is not None else (stops[0] if stops else 0)
        tokens = np.full((batch_size, T), pad, np.int32)  # a fixed batch: one compiled program
        mask = np.zeros((batch_size, T), np.int32)
        mask[:, -1] = 1
        for r, e in enumerate(enc):
            tokens[r, T - len(e):] = e
            mask[r, T - len(e):] = 1
        g = generate(model.cfg, model.params, tokens, max_new_tokens, attention_mask=mask, stop_tokens=stops,
                     pad_token_id=pad)
        for r in range(len(part)):
            new = g.tokens[r, T:T + int(g.n_new[r])]
            answers.append(tok.decode([int(t) for t in new if t not in stops]))
    rep = np.array([repeated(tok, int(t), a) for t, a in zip(ids, answers)], bool)
    return {"ids": ids.astype(np.int32), "answers": answers, "repeated": rep}
