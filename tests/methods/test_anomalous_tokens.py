"""M22 tools: embedding statistics against a NumPy reference, candidate ranking, the repeat test's
plumbing, forward from embedding rows, and GCG prompt search raising a target token's probability."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from interpjax.core import model as M
from interpjax.methods import anomalous_tokens as AT
from interpjax.methods import input_search as IS

from conftest import STORIES, needs_stories


def _reference(E, k):
    c = E.mean(0)
    d2 = ((E[:, None] - E[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    nn = np.argsort(d2, 1, kind="stable")[:, :k]
    u = E / np.linalg.norm(E, axis=1, keepdims=True)
    cos = u @ u.T
    np.fill_diagonal(cos, -np.inf)
    nn_cos = np.argsort(-cos, 1, kind="stable")[:, :k]
    return c, np.linalg.norm(E - c, axis=1), nn, np.sqrt(np.take_along_axis(d2, nn, 1)), nn_cos, \
        np.take_along_axis(cos, nn_cos, 1), u @ (c / np.linalg.norm(c))


def test_embedding_stats_match_numpy_over_uneven_chunks():
    E = np.random.default_rng(0).normal(size=(301, 12)).astype(np.float32) + 0.3
    s = AT.embedding_stats(E, k=5, chunk=64)  # 301 rows: the last chunk is padded
    c, dc, nn, dist, nn_cos, cos, cc = _reference(E.astype(np.float64), 5)
    np.testing.assert_allclose(s.centroid_D, c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.dist_centroid_V, dc, rtol=1e-5)
    np.testing.assert_allclose(s.norm_V, np.linalg.norm(E, axis=1), rtol=1e-6)
    np.testing.assert_allclose(s.cos_centroid_V, cc, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(s.knn_ids_Vk, nn)
    np.testing.assert_allclose(s.knn_dist_Vk, dist, rtol=1e-4)
    np.testing.assert_array_equal(s.knn_cos_ids_Vk, nn_cos)
    np.testing.assert_allclose(s.knn_cos_Vk, cos, rtol=1e-5, atol=1e-6)
    assert s.knn_ids_Vk.dtype == np.int32 and (s.knn_ids_Vk != np.arange(301)[:, None]).all()
    sub = AT.embedding_stats(E, k=5, chunk=4, rows=np.array([300, 3, 150]))  # a subset of rows, padded chunk
    np.testing.assert_array_equal(sub.knn_ids_Vk, s.knn_ids_Vk[[300, 3, 150]])
    np.testing.assert_array_equal(sub.knn_rows, [300, 3, 150])
    np.testing.assert_array_equal(sub.dist_centroid_V, s.dist_centroid_V)


def test_candidates_rank_the_planted_rows_first_and_respect_exclude():
    rng = np.random.default_rng(1)
    E = rng.normal(size=(200, 8)).astype(np.float32) * 3
    E[[7, 42, 99]] = E.mean(0) + rng.normal(size=(3, 8)).astype(np.float32) * 1e-3  # planted at the centroid
    s = AT.embedding_stats(E, k=3)
    assert set(AT.candidates(s, 3).tolist()) == {7, 42, 99}
    assert 42 not in AT.candidates(s, 3, exclude=[42]).tolist()
    assert len(AT.candidates(s, 10, by="norm")) == 10 and len(AT.candidates(s, 10, by="density")) == 10


@pytest.mark.parametrize("call, match", [
    (lambda: AT.embedding_stats(np.zeros((1, 4), np.float32)), "V >= 2"),
    (lambda: AT.embedding_stats(np.zeros((5, 4), np.int32)), "floating"),
    (lambda: AT.embedding_stats(np.full((5, 4), np.nan, np.float32)), "non-finite"),
    (lambda: AT.embedding_stats(np.zeros((5, 4), np.float32), k=5), "k must be"),
    (lambda: AT.candidates(AT.embedding_stats(np.eye(5, dtype=np.float32), k=2), 3, by="size"), "by must be one of"),
    (lambda: AT.candidates(AT.embedding_stats(np.eye(5, dtype=np.float32), k=2), 6), "n must be"),
    (lambda: AT.candidates(AT.embedding_stats(np.eye(5, dtype=np.float32), k=2), 2, exclude=[9]), "outside"),
    (lambda: AT.embedding_stats(np.eye(5, dtype=np.float32), k=2, rows=[7]), "rows must be"),
    (lambda: AT.candidates(AT.embedding_stats(np.eye(5, dtype=np.float32), k=2, rows=[1]), 2, by="density"),
     "every row"),
])
def test_bad_arguments_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_forward_from_rows_equals_forward_from_tokens(tiny_model):
    model, _ = tiny_model("llama")
    tokens = np.random.default_rng(0).integers(0, model.cfg.vocab_size, (2, 7)).astype(np.int32)
    ref = np.asarray(M.forward(model.cfg, model.params, tokens))
    E = model.params["embed"]["tok"]
    rows = jnp.take(E, tokens, axis=0)
    # the same computation in a separately compiled program: equal to float32 rounding
    np.testing.assert_allclose(np.asarray(M.forward_rows(model.cfg, model.params, rows)), ref, rtol=1e-6, atol=1e-6)
    onehot = np.eye(model.cfg.vocab_size, dtype=np.float32)[tokens]
    np.testing.assert_allclose(np.asarray(M.forward_rows(model.cfg, model.params, jnp.asarray(onehot) @ E)), ref,
                               rtol=1e-6, atol=1e-6)


def _target_lp(model, tokens, target):
    logits = np.asarray(M.forward(model.cfg, model.params, tokens[None])[0, -1], np.float64)
    m = logits.max()
    return float(logits[target] - m - np.log(np.exp(logits - m).sum()))


def test_gcg_raises_the_target_and_reports_its_true_logprob(tiny_model):
    model, _ = tiny_model("llama")
    V = model.cfg.vocab_size
    target = 5
    r = IS.optimize_prompt(model, target, n_tokens=4, steps=12, topk=16, n_candidates=32, seed=0)
    h = np.asarray(r["history"])
    assert (np.diff(h) >= 0).all() and h[-1] > r["start_logprob"] + 0.5
    assert r["logprob"] == pytest.approx(_target_lp(model, r["tokens"], target), abs=1e-4)
    rand = [_target_lp(model, np.random.default_rng(i).integers(0, V, 4).astype(np.int32), target) for i in range(32)]
    assert r["logprob"] > max(rand)  # better than the best of 32 random prompts
    allowed = np.zeros(V, bool)
    allowed[:40] = True
    r2 = IS.optimize_prompt(model, target, n_tokens=3, steps=3, topk=8, n_candidates=8, allowed=allowed)
    assert (r2["tokens"] < 40).all()


def test_gcg_refuses_bad_settings(tiny_model):
    model, _ = tiny_model("llama")
    with pytest.raises(ValueError, match="target_id"):
        IS.optimize_prompt(model, model.cfg.vocab_size)
    with pytest.raises(ValueError, match="allowed must be a bool mask"):
        IS.optimize_prompt(model, 1, allowed=np.ones(3, bool))
    with pytest.raises(ValueError, match="fewer than topk"):
        IS.optimize_prompt(model, 1, allowed=np.eye(model.cfg.vocab_size, dtype=bool)[0], topk=4)
    with pytest.raises(ValueError, match="steps must be"):
        IS.optimize_prompt(model, 1, steps=0)


@needs_stories
def test_repeat_test_prompts_answers_and_scoring():
    import interpjax

    model = interpjax.load(str(STORIES))
    tok = model.tokenizer
    ids = [tok(" the", add_special_tokens=False)["input_ids"][-1], tok(" cat", add_special_tokens=False)["input_ids"][-1]]
    prompts = AT.repeat_prompts(model, ids, chat=False)
    assert all(AT.token_text(tok, i) in p for i, p in zip(ids, prompts))
    r = AT.repeat_test(model, ids, max_new_tokens=6, batch_size=4, chat=False)
    assert len(r["answers"]) == 2 and r["repeated"].dtype == bool
    assert r["repeated"].tolist() == [AT.repeated(tok, i, a) for i, a in zip(ids, r["answers"])]
    assert AT.repeated(tok, ids[1], 'cat"') and not AT.repeated(tok, ids[1], "dog")
    with pytest.raises(ValueError, match="no chat template"):
        AT.repeat_prompts(model, ids, chat=True)
    with pytest.raises(ValueError, match="token ids must be in"):
        AT.repeat_test(model, [model.cfg.vocab_size])


@needs_stories
def test_completion_repeat_prompts_start_with_the_tokenizers_bos(monkeypatch):
    """A base model's two-shot prompt is encoded with its BOS (Gemma copies nothing without it)."""
    import interpjax
    import interpjax.generate as G

    model = interpjax.load(str(STORIES))
    tok = model.tokenizer
    assert tok.bos_token_id is not None
    seen = {}
    real = G.generate

    def spy(cfg, params, tokens, *a, attention_mask=None, **k):
        seen["tokens"], seen["mask"] = np.asarray(tokens), np.asarray(attention_mask)
        return real(cfg, params, tokens, *a, attention_mask=attention_mask, **k)

    monkeypatch.setattr(G, "generate", spy)
    ids = [tok(" cat", add_special_tokens=False)["input_ids"][-1]]
    AT.repeat_test(model, ids, max_new_tokens=2, batch_size=2, chat=False)
    first = seen["tokens"][0][seen["mask"][0].astype(bool)][0]
    assert first == tok.bos_token_id
