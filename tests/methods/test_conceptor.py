"""M7 (Conceptor) tools on a tiny random model: a mixture initialised at the word's own one-hot is
the model exactly, the batch layout, a planted mixture is recovered better than its controls, the
random-mixture control matches sparsity and norm, edits, candidates and bad arguments."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interpjax.core import model as M
from interpjax.methods import conceptor as CT

PREFIXES = [[3, 4], [7], [10, 11, 12], [2, 9], [20, 21], [5], [30, 31, 32], [40, 8]]
SUFFIXES = [[13, 14], [15, 16, 17], [18], [19, 22], [], [23, 24], [25], [26, 27]]


def _batch(words):
    return CT.batch_from_ids(words, PREFIXES, SUFFIXES)


def test_batch_layout_is_left_padded_with_the_word_in_its_slot():
    b = _batch([5, 9])
    K, B, T = b.shape
    assert (K, B, T) == (2, 8, 5)
    for k, w in enumerate([5, 9]):
        for i, (p, s) in enumerate(zip(PREFIXES, SUFFIXES)):
            real = b.tokens_KBT[k, i][b.mask_KBT[k, i] == 1].tolist()
            assert real == p + [w] + s and b.mask_KBT[k, i, -1] == 1  # left padding: real tokens end at T-1
            assert b.tokens_KBT[k, i, b.slot_KB[k, i]] == w
            assert b.kl_mask_KBT[k, i].sum() == 1 + len(s) and b.kl_mask_KBT[k, i, b.slot_KB[k, i]] == 1
    sub = b.take([1, 3])
    assert sub.shape == (2, 2, 5) and np.array_equal(sub.tokens_KBT, b.tokens_KBT[:, [1, 3]])


def test_a_mixture_initialised_at_the_words_one_hot_reproduces_the_model_exactly(tiny_model):
    model, _ = tiny_model("llama")
    b = _batch([5, 9])
    K, B, T = b.shape
    E = np.asarray(model.params["embed"]["tok"])
    cand = np.array([[1, 5, 7, 11], [9, 2, 3, 4]], np.int32)  # each word among its candidates
    onehot = (cand == b.word_K[:, None]).astype(np.float32)
    rows = CT.mixture_rows(model, cand, onehot)
    assert np.array_equal(rows, E[b.word_K])  # bit for bit the word's own row
    target = CT.logprobs_with(model, b)
    assert np.array_equal(CT.logprobs_with(model, b, rows), target)  # the same outputs, bit for bit
    assert np.abs(CT.kl_to(model, b, target, rows)).max() < 1e-6  # (a separately compiled program)
    # the original log-probs are those of forward on the token ids (left padding honoured)
    flat = b.tokens_KBT.reshape(K * B, T)
    mask = b.mask_KBT.reshape(K * B, T)
    ref = jax.nn.log_softmax(M.forward(model.cfg, model.params, flat, attention_mask=mask).astype(jnp.float32), -1)
    real = mask.astype(bool)
    np.testing.assert_allclose(target.reshape(K * B, T, -1)[real], np.asarray(ref)[real], rtol=1e-5, atol=1e-5)
    # fit started at the one-hot (no L1) starts at KL 0: its first recorded training KL
    mix = CT.fit(model, b, cand, steps=1, l1=0.0, init="onehot")
    assert np.abs(mix.kl_history[0]).max() < 1e-6 and mix.loss_history[0] < 1e-5


def _planted(model, word, parts, coefs):
    """The model with ``word``'s embedding row replaced by a mixture of other rows."""
    E = np.array(model.params["embed"]["tok"])
    E[word] = sum(c * E[p] for p, c in zip(parts, coefs))
    params = dict(model.params)
    params["embed"] = {**model.params["embed"], "tok": jnp.asarray(E)}
    return dataclasses.replace(model, params=params)


def test_fit_recovers_a_planted_mixture_better_than_its_controls(tiny_model):
    base, _ = tiny_model("llama")
    word, parts, coefs = 5, [17, 33], [0.7, 0.6]
    model = _planted(base, word, parts, coefs)
    b = _batch([word])
    train, held = b.take([0, 1, 2, 3, 4]), b.take([5, 6, 7])
    cand = CT.candidates(model, train, n_cos=24, n_pred=8, exclude=[[word]])
    assert word not in cand[0] and set(parts) <= set(cand[0].tolist()) and len(set(cand[0].tolist())) == 32
    mix = CT.fit(model, train, cand, steps=150, lr=0.05, l1=1e-3, seed=0)
    assert (mix.weights_KC >= 0).all() and mix.kl_history[-1, 0] < 0.2 * mix.kl_history[0, 0]
    assert {t for t, _ in mix.top(0, 2)} == set(parts)  # the planted constituents carry the largest weights
    target = CT.logprobs_with(model, held)
    learned = CT.kl_to(model, held, target, CT.mixture_rows(model, mix.cand_KC, mix.weights_KC)).mean()
    E = np.asarray(model.params["embed"]["tok"])
    nearest = CT.kl_to(model, held, target, E[CT.nearest_tokens(model, [word])]).mean()
    rand = [CT.kl_to(model, held, target, CT.mixture_rows(model, *CT.random_mixture(model, cand, mix.weights_KC, s))).mean()
            for s in range(5)]
    assert learned < 0.5 * min(rand) and learned < 0.5 * nearest


def test_random_mixture_matches_sparsity_and_norm(tiny_model):
    model, _ = tiny_model("llama")
    cand = np.array([np.arange(10, 30), np.arange(30, 50)], np.int32)
    w = np.zeros((2, 20), np.float32)
    w[0, [1, 4, 9]] = [0.5, 0.2, 0.1]
    w[1, [0, 19]] = [1.0, 0.3]
    rc, rw = CT.random_mixture(model, cand, w, seed=3)
    assert np.array_equal(rc, cand) and ((rw > 0).sum(1) == (w > 0).sum(1)).all() and (rw >= 0).all()
    n_l = np.linalg.norm(CT.mixture_rows(model, cand, w), axis=1)
    np.testing.assert_allclose(np.linalg.norm(CT.mixture_rows(model, rc, rw), axis=1), n_l, rtol=1e-5)
    rc2, rw2 = CT.random_mixture(model, cand, w, seed=4)
    assert not np.array_equal(rw, rw2)


def test_edit_and_top():
    w = np.array([[0.0, 0.5, 0.25]], np.float32)
    assert CT.edit(w, 0, 1, scale=3.0)[0, 1] == pytest.approx(1.5)
    assert CT.edit(w, 0, 0, add=0.2)[0, 0] == pytest.approx(0.2)
    assert CT.edit(w, 0, 2, add=-1.0)[0, 2] == 0.0  # never negative
    assert w[0, 1] == 0.5  # a copy
    mix = CT.ConceptMixture(np.array([[7, 8, 9]], np.int32), w, np.zeros(1, np.float32), np.zeros((1, 1), np.float32))
    assert mix.top(0, 5) == [(8, 0.5), (9, 0.25)] and mix.nnz_K.tolist() == [2]


class _Tok:
    """A word-level stand-in tokenizer: a fixed vocabulary, spaces kept on the word."""

    vocab = ["<s>", "The", " tiger", " was", " Tiger", "tiger", " TIGER", " tigers", " big", ".", " lion"]

    def __call__(self, text, add_special_tokens=True):
        ids, rest = ([0] if add_special_tokens else []), text
        while rest:
            best = max((v for v in self.vocab[1:] if rest.startswith(v)), key=len, default=None)
            if best is None:
                ids.append(0)
                rest = rest[1:]
            else:
                ids.append(self.vocab.index(best))
                rest = rest[len(best):]
        return {"input_ids": ids}

    def batch_decode(self, seqs):
        return ["".join(self.vocab[i] for i in s) for s in seqs]


def test_encode_and_word_variants():
    tok = _Tok()
    b = CT.encode(tok, [" tiger", " lion"], ["The {w} was", "The {w}."])
    assert b.word_K.tolist() == [2, 10]
    assert b.tokens_KBT[0, 0].tolist() == [0, 1, 2, 3] and b.tokens_KBT[1, 1].tolist() == [0, 1, 10, 9]
    assert CT.variant_ids(tok, " tiger", len(tok.vocab)).tolist() == [2, 4, 5, 6]  # not " tigers"
    with pytest.raises(ValueError, match="one token"):
        CT.word_id(tok, " bigtiger")
    with pytest.raises(ValueError, match="after a space"):
        CT.encode(tok, [" tiger"], ["{w} was"])


@pytest.mark.parametrize("call, match", [
    (lambda m, b: CT.fit(m, b, np.zeros((3, 4), np.int32)), "cand_KC must be"),
    (lambda m, b: CT.fit(m, b, np.ones((1, 4), np.int32), init="zeros"), "init must be one of"),
    (lambda m, b: CT.fit(m, b, np.ones((1, 4), np.int32), init="onehot"), "among its candidates"),
    (lambda m, b: CT.fit(m, b, np.ones((1, 4), np.int32), steps=-1), "steps must be"),
    (lambda m, b: CT.fit(m, b, np.ones((1, 4), np.int32), lr=0.0), "lr must be"),
    (lambda m, b: CT.candidates(m, b, n_cos=0, n_pred=0), "n_cos \\+ n_pred"),
    (lambda m, b: CT.candidates(m, b, n_cos=4, n_pred=0, exclude=[[10_000]]), "exclude must hold"),
    (lambda m, b: CT.kl_to(m, b, CT.logprobs_with(m, b), np.zeros((2, 3), np.float32)), "slot rows must be"),
    (lambda m, b: CT.random_mixture(m, np.ones((1, 3), np.int32), np.zeros((1, 3), np.float32)), "no nonzero"),
    (lambda m, b: CT.edit(np.ones((1, 3)), 0, 5, scale=2.0), "outside"),
    (lambda m, b: CT.edit(np.ones((1, 3)), 0, 1), "exactly one"),
    (lambda m, b: b.take([99]), "prompt indices"),
    (lambda m, b: CT.batch_from_ids([1], [[2]], []), "as many prefixes"),
])
def test_bad_arguments_are_refused(tiny_model, call, match):
    model, _ = tiny_model("llama")
    with pytest.raises(ValueError, match=match):
        call(model, _batch([5]))
