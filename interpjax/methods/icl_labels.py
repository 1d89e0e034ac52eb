"""In-context learning with flipped and semantically-unrelated labels (Wei et al. 2023, "Larger
language models do in-context learning differently").

A prompt shows k demonstrations ``<input>: text / <output>: label word`` and ends with a query; the
model's answer is the label word whose first token gets the highest next-token logit at the last
position. Flipping a share p of the demo labels asks whether the model reads the labels it is shown
or keeps its prior; replacing the label words by unrelated ones (SUL, "foo"/"bar") removes the prior.
Accuracy is always against the query's true label.

    task = LabelTask("sentiment", items, labels=("negative", "positive"), input_name="Review",
                     output_name="Sentiment")
    demos = sample_demos(task, queries, k=8, seed=0)              # balanced, never the query itself
    p = icl_prompts(task, queries, demos, flip=1.0, seed=0)       # texts, gold, shown labels, flipped
    tokens, mask = encode_prompts(model.tokenizer, p["texts"])   # right-padded
    logits_BC = label_logits(model, tokens, label_token_ids(model.tokenizer, task.words()),
                             attention_mask=mask)                 # one jitted program per shape

Everything but ``label_logits`` is numpy; the prompts of one condition are scored in one call.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..core import inputs
from ..core import model as M
from ..core.handle import require_model

FLIP_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
SUL_WORDS = ("foo", "bar", "baz", "qux")  # semantically unrelated label words, by class index


# ---------------------------------------------------------------------------------------------
# the task


@dataclass(frozen=True)
class LabelTask:
    """A classification task: ``items`` are (text, label) pairs with each label one of ``labels``;
    ``words`` maps a label to the word shown in prompts (default: the label itself). The prompt
    reads ``{input_name}: {text}\\n{output_name}: {word}`` per demonstration."""

    name: str
    items: tuple
    labels: tuple
    input_name: str = "Input"
    output_name: str = "Label"
    label_words: dict = field(default_factory=dict)

    def __post_init__(self):
        labels = tuple(self.labels)
        if len(labels) < 2 or len(set(labels)) != len(labels) or not all(isinstance(x, str) and x for x in labels):
            raise ValueError(f"labels must be >= 2 distinct non-empty strings, got {labels!r}")
        object.__setattr__(self, "labels", labels)
        items = tuple((str(t), y) for t, y in self.items)
        bad = sorted({y for _, y in items if y not in labels}, key=str)
        if bad:
            raise ValueError(f"task {self.name!r}: unknown label(s) {bad[:5]}; valid labels: {list(labels)}")
        if len({t for t, _ in items}) != len(items):
            raise ValueError(f"task {self.name!r}: item texts must be distinct")
        object.__setattr__(self, "items", items)
        extra = sorted(set(self.label_words) - set(labels))
        if extra:
            raise ValueError(f"label_words names unknown label(s) {extra}; valid labels: {list(labels)}")
        words = self.words()
        if len(set(words)) != len(words):
            raise ValueError(f"label words must be distinct, got {words}")

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def words(self) -> tuple:
        """The word shown for each class, in class order."""
        return tuple(self.label_words.get(y, y) for y in self.labels)

    def label_ids(self) -> np.ndarray:
        """Class index of every item, int64 [N]."""
        return np.array([self.labels.index(y) for _, y in self.items], np.int64)

    def with_words(self, words: Sequence[str]) -> "LabelTask":
        """The same task with other label words (one per class), e.g. the SUL variant."""
        words = tuple(words)
        if len(words) != self.n_classes:
            raise ValueError(f"need one word per class ({self.n_classes}: {list(self.labels)}), got {list(words)}")
        return LabelTask(self.name, self.items, self.labels, self.input_name, self.output_name,
                         dict(zip(self.labels, words)))


def sul_task(task: LabelTask, words: Sequence[str] | None = None) -> LabelTask:
    """The semantically-unrelated-label variant: class i shown (and scored) as ``words[i]``
    (default ``SUL_WORDS``: "foo", "bar", ...)."""
    if words is None:
        if task.n_classes > len(SUL_WORDS):
            raise ValueError(f"{task.n_classes} classes but only {len(SUL_WORDS)} default SUL words; pass words")
        words = SUL_WORDS[:task.n_classes]
    return task.with_words(words)


# ---------------------------------------------------------------------------------------------
# demonstrations and flips


def n_flips(flip: float, k: int, n_classes: int) -> int:
    """How many of ``k`` demo labels a flip fraction asks for: round(flip * k), which must be exact
    and split evenly over the classes (the shown labels then stay balanced)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < n_classes or k % n_classes:
        raise ValueError(f"k={k!r} demos must be a positive multiple of the {n_classes} classes")
    if isinstance(flip, bool) or not isinstance(flip, (int, float, np.floating)) or not 0.0 <= flip <= 1.0:
        raise ValueError(f"flip={flip!r} must be a fraction in [0, 1], e.g. one of {list(FLIP_FRACTIONS)}")
    n = int(round(flip * k))
    valid = [f"{j / k:g}" for j in range(0, k + 1, n_classes)]
    if abs(n - flip * k) > 1e-9 or n % n_classes:
        raise ValueError(f"flip={flip!r} is not achievable exactly with k={k} demos and {n_classes} classes "
                         f"(flips must be a multiple of {n_classes}); valid fractions: {', '.join(valid)}")
    return n


def sample_demos(task: LabelTask, queries: Sequence[int], k: int, seed: int) -> np.ndarray:
    """Demo item indices [Q, k] per query: k / C items of every class, drawn without replacement
    from the items other than the query, in a random order (seeded)."""
    y = task.label_ids()
    C = task.n_classes
    n_flips(0.0, k, C)
    queries = _check_queries(task, queries)
    rng = np.random.default_rng(seed)
    per = k // C
    out = np.empty((len(queries), k), np.int64)
    for r, q in enumerate(queries):
        rows = []
        for c in range(C):
            pool = np.flatnonzero((y == c) & (np.arange(len(y)) != q))
            if len(pool) < per:
                raise ValueError(f"class {task.labels[c]!r} has {len(pool)} items besides the query; k={k} needs {per}")
            rows.append(rng.choice(pool, per, replace=False))
        out[r] = rng.permutation(np.concatenate(rows))
    return out


def choose_flips(demo_labels_QK, flip: float, n_classes: int, seed: int) -> np.ndarray:
    """Which demos get a wrong label, bool [Q, k]: exactly round(flip * k) per prompt, the same
    number in every class, chosen at random (seeded)."""
    demo_labels_QK = np.asarray(demo_labels_QK)
    Q, k = demo_labels_QK.shape
    n = n_flips(flip, k, n_classes)
    rng = np.random.default_rng(seed)
    out = np.zeros((Q, k), bool)
    for r in range(Q):
        for c in range(n_classes):
            where = np.flatnonzero(demo_labels_QK[r] == c)
            if len(where) < n // n_classes:
                raise ValueError(f"prompt {r}: class {c} has {len(where)} demos; {n // n_classes} flips asked")
            out[r, rng.choice(where, n // n_classes, replace=False)] = True
    return out


def flip_labels(labels_QK, flipped_QK, n_classes: int) -> np.ndarray:
    """The labels shown: flipped demos get the next class (c -> c + 1 mod C; for two classes the
    other label), so every class keeps its share of the shown labels."""
    labels_QK = np.asarray(labels_QK)
    return np.where(np.asarray(flipped_QK), (labels_QK + 1) % n_classes, labels_QK)


def _check_queries(task: LabelTask, queries) -> np.ndarray:
    q = np.asarray(queries)
    if q.ndim != 1 or q.size == 0 or not np.issubdtype(q.dtype, np.integer):
        raise ValueError(f"queries must be a non-empty 1-D array of item indices, got {q!r}")
    if q.min() < 0 or q.max() >= len(task.items):
        raise ValueError(f"query indices must be in 0..{len(task.items) - 1}, got {q.min()}..{q.max()}")
    return q.astype(np.int64)


def format_prompt(task: LabelTask, demos: Sequence[tuple[str, str]], query: str) -> str:
    """Plain-text k-shot prompt: demos as (text, shown word), blank lines between, the query last."""
    head = "".join(f"{task.input_name}: {t}\n{task.output_name}: {w}\n\n" for t, w in demos)
    return f"{head}{task.input_name}: {query}\n{task.output_name}:"


def icl_prompts(task: LabelTask, queries: Sequence[int], demos_QK, flip: float = 0.0, seed: int = 0) -> dict:
    """The prompts of one condition: ``texts`` [Q], ``gold`` (the query's TRUE class) [Q],
    ``shown`` (the class shown per demo) [Q, k], ``flipped`` bool [Q, k]. The same ``demos_QK``
    across flip fractions gives paired conditions that differ only in the labels shown."""
    queries = _check_queries(task, queries)
    demos_QK = np.asarray(demos_QK, np.int64)
    if demos_QK.ndim != 2 or demos_QK.shape[0] != len(queries):
        raise ValueError(f"demos must be [queries={len(queries)}, k], got {demos_QK.shape}")
    if (demos_QK == queries[:, None]).any():
        raise ValueError("a query appears among its own demos")
    y = task.label_ids()
    true_QK = y[demos_QK]
    flipped = choose_flips(true_QK, flip, task.n_classes, seed)
    shown = flip_labels(true_QK, flipped, task.n_classes)
    words = task.words()
    texts = [format_prompt(task, [(task.items[d][0], words[s]) for d, s in zip(drow, srow)], task.items[q][0])
             for q, drow, srow in zip(queries, demos_QK, shown)]
    return {"texts": texts, "gold": y[queries], "shown": shown, "flipped": flipped & (shown != true_QK),
            "queries": queries, "demos": demos_QK}


# ---------------------------------------------------------------------------------------------
# tokens


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def label_token_ids(tokenizer, words: Sequence[str], *, require_single: bool = False) -> np.ndarray:
    """The first token of `` word`` (the label as it follows ``output_name:``) per class, int32 [C].
    Raises when two words share a first token (they could not be told apart) or, with
    ``require_single``, when a word is more than one token."""
    firsts, multi = [], []
    for w in words:
        ids = _ids(tokenizer, " " + w)
        if not ids:
            raise ValueError(f"label word {w!r} tokenizes to nothing")
        firsts.append(int(ids[0]))
        if len(ids) > 1:
            multi.append((w, ids))
    if len(set(firsts)) != len(firsts):
        raise ValueError(f"label words {list(words)} share a first token ({firsts}); choose words that differ there")
    if require_single and multi:
        raise ValueError(f"label words must be single tokens; these are not: {multi}")
    return np.array(firsts, np.int32)


def encode_prompts(tokenizer, texts: Sequence[str], *, bos: bool = True, length: int | None = None):
    """Right-padded token ids and mask, int32 [N, T] each (T = the longest prompt, or ``length``):
    the document token first (``bos``), no silent truncation."""
    from ..train.finetune import pad_token_id, document_token_id

    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty list of strings")
    doc = document_token_id(tokenizer) if bos else None
    rows = [([doc] if doc is not None else []) + _ids(tokenizer, t) for t in texts]
    T = max(len(r) for r in rows)
    if length is not None:
        if length < T:
            raise ValueError(f"length={length} is shorter than the longest prompt ({T} tokens)")
        T = int(length)
    tokens = np.full((len(rows), T), pad_token_id(tokenizer), np.int32)
    mask = np.zeros((len(rows), T), np.int32)
    for i, r in enumerate(rows):
        if not r:
            raise ValueError(f"prompt {i} tokenizes to nothing")
        tokens[i, :len(r)], mask[i, :len(r)] = r, 1
    return tokens, mask


# ---------------------------------------------------------------------------------------------
# scoring


@functools.partial(jax.jit, static_argnums=(0,))
def _chunk_label_logits(cfg, params, tokens_NbT, last_Nb, cand_C):
    """Per chunk of b rows: logits of the candidate tokens at each row's last real position; only
    that position is unembedded (Gemma's 262k-word head on every position would dominate)."""

    def one(args):
        tokens_bT, last_b = args
        b, T = tokens_bT.shape
        idx = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None], (b, T))
        ones = jnp.ones((b, T), jnp.int32)  # right padding: causal attention never sees it
        ctx = M.make_ctx(cfg, idx, ones, idx, ones, rope_pos_BT=idx)
        x = M.embed(cfg, params, tokens_bT, idx)
        x, _, _ = M.run_layers(cfg, params, x, ctx, (), (), ())
        x_b1D = jnp.take_along_axis(x, last_b[:, None, None], axis=1)
        logits_bV = M.final_logits(cfg, params, x_b1D)[:, 0].astype(jnp.float32)
        return jnp.take(logits_bV, cand_C, axis=1)

    return jax.lax.map(one, (tokens_NbT, last_Nb))


def label_logits(model, tokens, candidates, *, attention_mask=None, batch_size: int = 16) -> np.ndarray:
    """Next-token logits of the ``candidates`` token ids [C] at each row's last real token, float32
    [B, C]. Rows are right-padded (``attention_mask`` 1 = real token; a row's real tokens must come
    first); all rows go through one jitted program in chunks of ``batch_size``."""
    model = require_model(model, "label_logits")
    cfg = model.cfg
    tokens = np.asarray(inputs.check_tokens(cfg, tokens))
    B, T = tokens.shape
    mask = np.asarray(inputs.check_mask(attention_mask, (B, T)))
    lengths = mask.sum(1)
    if (lengths == 0).any():
        raise ValueError(f"rows {np.flatnonzero(lengths == 0)[:5].tolist()} have no real token")
    if (mask != (np.arange(T)[None] < lengths[:, None])).any():
        bad = np.flatnonzero((mask != (np.arange(T)[None] < lengths[:, None])).any(1))
        raise ValueError(f"rows {bad[:5].tolist()} are not right-padded (real tokens first, then padding)")
    cand = np.asarray(candidates)
    if cand.ndim != 1 or cand.size == 0:
        raise ValueError(f"candidates must be a non-empty 1-D array of token ids, got shape {cand.shape}")
    cand = inputs.check_token_ids(cfg, cand, cand.shape, name="candidates")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    b = min(int(batch_size), B)
    n = -(-B // b)
    pad = n * b - B  # the last chunk is filled with copies of the last row
    tok = np.concatenate([tokens, np.repeat(tokens[-1:], pad, 0)]).reshape(n, b, T)
    last = np.concatenate([lengths - 1, np.repeat(lengths[-1:] - 1, pad)]).astype(np.int32).reshape(n, b)
    out = _chunk_label_logits(cfg, model.params, jnp.asarray(tok), jnp.asarray(last), jnp.asarray(cand, jnp.int32))
    return np.asarray(out).reshape(n * b, -1)[:B]


def predictions(logits_BC) -> np.ndarray:
    """The predicted class per row (argmax over the label words)."""
    return np.asarray(logits_BC).argmax(-1)


def correct(logits_BC, gold_B) -> np.ndarray:
    """1.0 where the predicted class is the true one, float64 [B]."""
    gold_B = np.asarray(gold_B)
    if gold_B.shape != (np.asarray(logits_BC).shape[0],):
        raise ValueError(f"gold must be [{np.asarray(logits_BC).shape[0]}], got {gold_B.shape}")
    return (predictions(logits_BC) == gold_B).astype(np.float64)


def score_condition(model, task: LabelTask, queries, demos_QK, flip: float = 0.0, seed: int = 0, *,
                    length: int | None = None, batch_size: int = 16) -> dict:
    """One condition end to end: prompts (``icl_prompts``), tokens, label logits over ``task``'s
    words. Returns the prompt dict plus ``logits`` [Q, C], ``correct`` [Q] (against the true label)
    and ``follows`` [Q] (the prediction equals the label a flipped mapping would give the query)."""
    model = require_model(model, "score_condition")
    if model.tokenizer is None:
        raise ValueError("score_condition needs a model with a tokenizer")
    p = icl_prompts(task, queries, demos_QK, flip, seed)
    tokens, mask = encode_prompts(model.tokenizer, p["texts"], length=length)
    cand = label_token_ids(model.tokenizer, task.words())
    logits = label_logits(model, tokens, cand, attention_mask=mask, batch_size=batch_size)
    pred = predictions(logits)
    p.update(logits=logits, correct=(pred == p["gold"]).astype(np.float64),
             follows=(pred == (p["gold"] + 1) % task.n_classes).astype(np.float64), n_tokens=int(mask.sum(1).max()))
    return p
