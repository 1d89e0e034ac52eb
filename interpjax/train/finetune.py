"""Fine-tune a loaded ``Model`` on prompt -> answer pairs (loss on the answers only), all of its
params or a subset, and evaluate answers before and after (log-probability, exact match, token F1).

    data = encode_pairs(model.tokenizer, prompts, answers, max_len=32)   # {"tokens", "loss_mask"}
    tuned, history = finetune(model, data, TrainConfig(optimizer="adafactor", lr=1e-3), steps=100,
                              batch_size=16, trainable=[20, 21, 22])       # layers 20-22 only
    preds = greedy_answers(tuned, test_prompts, max_new_tokens=8)
    exact_match(preds, test_answers), token_f1(preds, test_answers)      # one score per question

``finetune`` runs the one ``Trainer`` (interpjax.train.trainer) on a loss over the *selected*
arrays only: the rest of the model travels as a ``jax.tree_util.Partial`` argument (never a
compile-time constant, never donated), so the optimizer keeps state for the subset alone -- for
AdamW two fp32 moments per trained number, which for a full 135M model is twice the model's
size again, while three layers of it cost a tenth of that.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import string
from collections import Counter
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from ..core import model as M
from ..core.config import Config
from ..core.handle import Model, require_model
from .config import TrainConfig
from .lm import lm_loss

__all__ = ["Selection", "answer_logprob", "document_token_id", "encode_pairs", "exact_match", "finetune",
           "greedy_answers", "pad_token_id", "normalize_answer", "pair_batches", "select_params", "token_f1"]

DOCUMENT_TOKEN = "<|endoftext|>"  # the document separator of GPT-2-style vocabularies (SmolLM2, Qwen, GPT-2)


# ---------------------------------------------------------------------------------------------
# data


def _ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without any special tokens added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def document_token_id(tokenizer) -> int | None:
    """The token that starts a document: ``<|endoftext|>`` where the vocabulary has it as one token
    (SmolLM2, whose ``bos_token`` is the chat marker ``<|im_start|>``), else ``bos_token_id``
    (Gemma's ``<bos>``), else None."""
    try:
        doc = _ids(tokenizer, DOCUMENT_TOKEN)
    except (TypeError, ValueError, KeyError):
        doc = []
    if len(doc) == 1:
        return int(doc[0])
    bos = getattr(tokenizer, "bos_token_id", None)
    return None if bos is None else int(bos)


def pad_token_id(tokenizer) -> int:
    """The id that fills padded rows: the tokenizer's pad token, else its EOS, else 0."""
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = getattr(tokenizer, "eos_token_id", None) if pad is None else pad
    return 0 if pad is None else int(pad)


def _check_texts(prompts, answers):
    for name, xs in (("prompts", prompts), ("answers", answers)):
        if isinstance(xs, str) or not all(isinstance(x, str) for x in xs):
            raise TypeError(f"{name} must be a list of strings; got {type(xs).__name__}"
                            + ("" if isinstance(xs, str) else f" holding {sorted({type(x).__name__ for x in xs})}"))
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers: one answer per prompt")
    if not prompts:
        raise ValueError("no prompt/answer pairs given")


def _prompt_ids(tokenizer, prompts, bos: bool) -> list[list[int]]:
    doc = document_token_id(tokenizer) if bos else None
    out = [([doc] if doc is not None else []) + _ids(tokenizer, p) for p in prompts]
    empty = [p for p, i in zip(prompts, out) if not i]
    if empty:
        raise ValueError(f"prompts tokenize to nothing (and no document token is prepended): {empty[:3]}")
    return out


def encode_pairs(tokenizer, prompts: Sequence[str], answers: Sequence[str], *, bos: bool = True, eos: bool = True,
                 max_len: int | None = None) -> dict:
    """{"tokens": int32 [N, T], "loss_mask": float32 [N, T]}: the document token (``bos``, see
    ``document_token_id``), the prompt's ids, the answer's ids and the end token (``eos``), right-padded
    with the pad (else end) id to the longest row, or to ``max_len``. ``loss_mask`` is 1 exactly on the
    answer tokens (and the end token): the loss is on answers only. Prompt and answer are tokenized
    separately, so the boundary is the one greedy decoding after the prompt meets. A row longer than
    ``max_len``, an empty answer or a count mismatch is refused (nothing is truncated)."""
    if tokenizer is None:
        raise ValueError("encode_pairs needs a tokenizer (this model has none)")
    _check_texts(prompts, answers)
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer))
                                or max_len < 2):
        raise ValueError(f"max_len must be an integer >= 2 or None (the longest row); got {max_len!r}")
    end = getattr(tokenizer, "eos_token_id", None) if eos else None
    if eos and end is None:
        raise ValueError("eos=True but the tokenizer has no eos_token_id; pass eos=False")
    heads = _prompt_ids(tokenizer, prompts, bos)
    tails = []
    for a in answers:
        ids = _ids(tokenizer, a)
        if not ids:
            raise ValueError(f"answer {a!r} tokenizes to nothing: every pair needs a non-empty answer")
        tails.append(ids + ([int(end)] if eos else []))
    lengths = [len(h) + len(t) for h, t in zip(heads, tails)]
    T = max(lengths) if max_len is None else int(max_len)
    if max(lengths) > T:
        i = int(np.argmax(lengths))
        raise ValueError(f"pair {i} ({prompts[i]!r} -> {answers[i]!r}) is {lengths[i]} tokens, longer than "
                         f"max_len={T}; raise max_len (rows are never truncated)")
    tokens = np.full((len(heads), T), pad_token_id(tokenizer), np.int32)
    mask = np.zeros((len(heads), T), np.float32)
    for r, (h, t) in enumerate(zip(heads, tails)):
        tokens[r, :len(h) + len(t)] = h + t
        mask[r, len(h):len(h) + len(t)] = 1.0
    return {"tokens": tokens, "loss_mask": mask}


def pair_batches(n: int, batch_size: int, seed: int) -> Callable[[int], np.ndarray]:
    """``rows(step)``: the example indices of batch ``step``, a pure function of (seed, step) -- each
    epoch is a fresh seeded permutation of the ``n`` examples read in order, so a resumed run sees
    exactly the batches an uninterrupted one would."""

    @functools.lru_cache(maxsize=8)
    def perm(epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch]).permutation(n)

    def rows(step: int) -> np.ndarray:
        flat = np.arange(step * batch_size, (step + 1) * batch_size)
        return np.array([perm(int(i // n))[i % n] for i in flat], np.int64)

    return rows


# ---------------------------------------------------------------------------------------------
# which params train


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which arrays of a params tree are trained: ``paths`` (``jax.tree_util.keystr`` of the trained
    leaves) and ``layers`` (None: whole leaves; else only these rows of the stacked per-layer leaves
    under ``['layers']``). Static and hashable, so a loss holding it shares compiled steps.

    ``split(params) -> (trainable, frozen)``: ``trainable`` maps each trained path to its array (or
    its rows); ``frozen`` holds every other leaf (None where a leaf is trained whole).
    ``merge(trainable, frozen)`` rebuilds the full tree (frozen values bit-for-bit)."""

    treedef: jax.tree_util.PyTreeDef
    all_paths: tuple[str, ...]
    paths: tuple[str, ...]
    layers: tuple[int, ...] | None = None

    def mask(self) -> dict | list:
        """A tree of bools shaped like params: True where a leaf is (at least partly) trained."""
        return jax.tree.unflatten(self.treedef, [p in self.paths for p in self.all_paths])

    def _rows(self):
        return jnp.asarray(self.layers, jnp.int32)

    def split(self, params):
        leaves = self.treedef.flatten_up_to(params)
        train, frozen = {}, []
        for path, x in zip(self.all_paths, leaves):
            if path not in self.paths:
                frozen.append(x)
            elif self.layers is None:
                train[path] = x
                frozen.append(None)
            else:
                train[path] = jnp.asarray(x)[self._rows()]
                frozen.append(x)
        return train, tuple(frozen)

    def merge(self, trainable: dict, frozen: tuple):
        leaves = []
        for path, f in zip(self.all_paths, frozen):
            if path not in self.paths:
                leaves.append(f)
            elif self.layers is None:
                leaves.append(trainable[path])
            else:
                leaves.append(f.at[self._rows()].set(trainable[path].astype(f.dtype)))
        return jax.tree.unflatten(self.treedef, leaves)

    def describe(self) -> str:
        what = f"layers {list(self.layers)} of " if self.layers is not None else ""
        return f"{what}{len(self.paths)}/{len(self.all_paths)} leaves"



def select_params(params, trainable="all", n_layers: int | None = None) -> Selection:
    """The ``Selection`` of params to train: ``"all"``; a list of layer indices (those rows of every
    stacked per-layer leaf under ``['layers']``; embeddings, final norm and unembedding stay frozen;
    negative indices count from the end); or a predicate ``fn(path) -> bool`` on each leaf's
    ``jax.tree_util.keystr`` path (e.g. ``lambda p: "['mlp']" in p``). Refuses selections that train
    nothing, out-of-range or repeated layers, and anything else, naming the choices."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    if not flat:
        raise ValueError("params has no arrays to select from")
    all_paths = tuple(jax.tree_util.keystr(p) for p, _ in flat)
    if isinstance(trainable, str):
        if trainable != "all":
            raise ValueError(f"trainable={trainable!r}: use 'all', a list of layer indices or a predicate(path) -> bool")
        return Selection(treedef, all_paths, all_paths)
    if callable(trainable):
        paths = tuple(p for p in all_paths if trainable(p))
        if not paths:
            raise ValueError(f"the trainable predicate selects no leaf; paths are e.g. {list(all_paths[:4])}")
        return Selection(treedef, all_paths, paths)
    if isinstance(trainable, (list, tuple, range, np.ndarray)):
        layered = [(p, x) for p, (_, x) in zip(all_paths, flat) if p.startswith("['layers']")]
        if not layered:
            raise ValueError("trainable is a list of layers but params has no stacked ['layers'] leaves")
        L = int(np.shape(layered[0][1])[0]) if n_layers is None else int(n_layers)
        rows = list(trainable)
        bad = [r for r in rows if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not -L <= r < L]
        if not rows or bad:
            raise ValueError(f"trainable layers must be a non-empty list of integers in [-{L}, {L}); got {rows!r}")
        rows = [int(r) % L for r in rows]
        if len(set(rows)) != len(rows):
            raise ValueError(f"trainable layers repeat: {list(trainable)!r}")
        return Selection(treedef, all_paths, tuple(p for p, _ in layered), tuple(sorted(rows)))
    raise TypeError(f"trainable must be 'all', a list of layer indices or a predicate(path) -> bool; "
                    f"got {type(trainable).__name__}")


# ---------------------------------------------------------------------------------------------
# the loss and the loop


@dataclasses.dataclass(frozen=True)
class SubsetLMLoss:
    """``loss(frozen, trainable, batch, key)``: masked next-token cross-entropy of the model rebuilt
    from the trained arrays and the frozen ones (bound first as a ``Partial``). ``remat`` recomputes
    each layer in the backward pass (so the Trainer does not wrap the whole loss)."""

    cfg: Config
    selection: Selection
    remat: bool = False
    loss_name = "loss"

    def __call__(self, frozen, trainable, batch, key):
        del key
        params = self.selection.merge(trainable, frozen)
        loss, acc = lm_loss(self.cfg, params, batch["tokens"], batch["loss_mask"], self.remat)
        return loss, {"acc": acc}

    def check_batch(self, batch) -> dict:
        from .lm import LMLoss

        return LMLoss(self.cfg).check_batch(batch)


def _check_data(cfg: Config, data) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(data, dict) or "tokens" not in data or "loss_mask" not in data:
        raise ValueError("data must be the dict encode_pairs returns: {'tokens': [N, T], 'loss_mask': [N, T]}; got "
                         + (f"keys {sorted(data)}" if isinstance(data, dict) else type(data).__name__))
    from .data import check_train_tokens

    tokens, mask = check_train_tokens(cfg, data["tokens"], data["loss_mask"], min_len=2)
    if not (mask[:, 1:].sum(1) > 0).all():
        raise ValueError(f"rows {np.flatnonzero(mask[:, 1:].sum(1) == 0)[:5].tolist()} have no loss-masked token "
                         f"after position 0: nothing to learn from them")
    return tokens, mask


def finetune(model: Model, data: dict, tc: TrainConfig, *, steps: int, batch_size: int, seed: int = 0,
             trainable="all", workdir=None, progress: bool = False,
             data_parallel: bool = False) -> tuple[Model, list[dict]]:
    """Fine-tune ``model`` on ``data`` (``encode_pairs``) for ``steps`` optimizer micro-steps of
    ``batch_size`` rows; returns (a NEW Model with the same cfg/tokenizer and the tuned params, every
    step's metrics as ``[{"step", "loss", "acc", "grad_norm", "param_norm"}, ...]``).

    Batch ``step`` is ``pair_batches(N, batch_size, seed)(step)``: resume-exact. ``trainable``: see
    ``select_params``; only the selected arrays are trained and hold optimizer state (memory), the
    rest are passed as a Partial argument and come back bit-identical (shared, not copied, with the
    caller's model). The caller's params are never donated or changed. ``workdir``: checkpoints and
    ``metrics.jsonl`` there, resumed if present (history then covers the steps run by this call).
    ``TrainConfig.total_steps`` sets the schedule's length; ``tc.seed`` the loss key."""
    model = require_model(model, "finetune")
    if not isinstance(tc, TrainConfig):
        raise TypeError(f"tc must be a TrainConfig; got {type(tc).__name__}")
    for name, v in (("steps", steps), ("batch_size", batch_size), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if name != "batch_size" else 1):
            raise ValueError(f"{name} must be an integer >= {0 if name != 'batch_size' else 1}; got {v!r}")
    tokens, mask = _check_data(model.cfg, data)
    selection = select_params(model.params, trainable)
    train0, frozen = selection.split(model.params)
    rows = pair_batches(tokens.shape[0], int(batch_size), int(seed))

    def batch_fn(step):
        r = rows(step)
        return {"tokens": tokens[r], "loss_mask": mask[r]}

    from .trainer import Trainer

    loss = Partial(SubsetLMLoss(model.cfg, selection, tc.remat), frozen)
    info = {"model": model.cfg.to_dict(), "finetune": {"trainable": selection.describe(), "batch_size": int(batch_size),
                                                      "seed": int(seed), "n_examples": int(tokens.shape[0])}}
    trainer = Trainer(loss, tc, workdir, trainable=train0, info=info, data_parallel=data_parallel, desc="finetune")
    trainer.train(batch_fn, int(steps), progress=progress, history=True)
    hist = trainer.stacked_history()
    first = int(steps) - len(trainer.history)
    history = [{"step": first + i + 1, **{k: float(v[i]) for k, v in hist.items()}} for i in range(len(trainer.history))]
    params = selection.merge(trainer.trainable, frozen)
    return model.replace(params=params), history


# ---------------------------------------------------------------------------------------------
# evaluation


@functools.partial(jax.jit, static_argnums=0)
def _row_logprob(cfg: Config, params, tokens_BT, mask_BT):
    """Sum over positions of log p(token t | prefix) weighted by mask[t], per row."""
    B, T = tokens_BT.shape
    logits = M.run(cfg, params, tokens_BT, jnp.ones((B, T), jnp.int32), None, (), (), ())[0]
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(logp, tokens_BT[:, 1:, None], axis=-1)[..., 0]
    return (tok * mask_BT[:, 1:]).sum(1)


def _chunks(n: int, batch_size: int):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def _pad_rows(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` with its last row repeated up to ``n`` rows (one compiled shape for every chunk)."""
    return x if x.shape[0] == n else np.concatenate([x, np.repeat(x[-1:], n - x.shape[0], 0)])


def answer_logprob(model: Model, prompts: Sequence[str], answers: Sequence[str], *, bos: bool = True,
                   eos: bool = False, batch_size: int = 32) -> np.ndarray:
    """log p(answer | prompt) per pair, float64 [N]: the summed log-probabilities of the answer's
    tokens (and the end token if ``eos``) under teacher forcing, in jitted batches of ``batch_size``."""
    model = require_model(model, "answer_logprob")
    data = encode_pairs(model.tokenizer, prompts, answers, bos=bos, eos=eos)
    out = []
    for s, e in _chunks(len(prompts), batch_size):
        n = min(batch_size, len(prompts))
        tok, msk = (_pad_rows(data[k][s:e], n) for k in ("tokens", "loss_mask"))
        out.append(np.asarray(_row_logprob(model.cfg, model.params, jnp.asarray(tok), jnp.asarray(msk)))[:e - s])
    return np.concatenate(out).astype(np.float64)


def greedy_answers(model: Model, prompts: Sequence[str], *, max_new_tokens: int = 8, bos: bool = True,
                   batch_size: int = 32, stop: str = "\n") -> list[str]:
    """The greedy continuation of each prompt (``interpjax.generate``, stopping at the end token),
    decoded and cut at the first ``stop`` text (a base model goes on to the next question)."""
    from ..generate import generate

    model = require_model(model, "greedy_answers")
    if model.tokenizer is None:
        raise ValueError("greedy_answers needs a model with a tokenizer")
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    tok = model.tokenizer
    ids = _prompt_ids(tok, list(prompts), bos)
    T = max(len(i) for i in ids)
    pad = pad_token_id(tok)
    eos = getattr(tok, "eos_token_id", None)
    out = []
    for s, e in _chunks(len(ids), batch_size):
        n = min(batch_size, len(ids))
        rows = ids[s:e] + [ids[e - 1]] * (n - (e - s))
        tokens = np.full((n, T), pad, np.int32)
        amask = np.zeros((n, T), np.int32)
        for r, i in enumerate(rows):
            tokens[r, T - len(i):], amask[r, T - len(i):] = i, 1
        gen = generate(model.cfg, model.params, tokens, int(max_new_tokens), attention_mask=amask,
                       stop_tokens=() if eos is None else (int(eos),), pad_token_id=pad)
        for r in range(e - s):
            new = gen.tokens[r, T:T + int(gen.n_new[r])].tolist()
            new = new[:-1] if new and eos is not None and new[-1] == eos else new
            text = tok.decode(new)
            out.append(text.split(stop)[0] if stop else text)
    return out


def normalize_answer(text: str) -> list[str]:
    """SQuAD-style answer normalisation: lower case, punctuation and the articles a/an/the dropped,
    split on whitespace."""
    text = "".join(" " if c in string.punctuation else c for c in text.lower())
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def exact_match(preds: Sequence[str], golds: Sequence[str]) -> np.ndarray:
    """1.0 where the normalised prediction equals the normalised gold answer, per item (float64 [N])."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} gold answers")
    return np.array([float(normalize_answer(p) == normalize_answer(g)) for p, g in zip(preds, golds)])


def token_f1(preds: Sequence[str], golds: Sequence[str]) -> np.ndarray:
    """SQuAD token F1 of the normalised prediction against the gold answer, per item (float64 [N])."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} gold answers")
    out = []
    for p, g in zip(preds, golds):
        p, g = normalize_answer(p), normalize_answer(g)
        common = sum((Counter(p) & Counter(g)).values())
        if not p or not g:
            out.append(float(p == g))
        elif common == 0:
            out.append(0.0)
        else:
            prec, rec = common / len(p), common / len(g)
            out.append(2 * prec * rec / (prec + rec))
    return np.array(out)
