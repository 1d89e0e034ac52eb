"""icl_labels: flipped-label prompts carry exactly the asked share of flips, queries never sit among
their demos, batched label scoring equals single forwards, and bad inputs raise."""

from __future__ import annotations

import re

import numpy as np
import pytest

from interpjax.core import model as M
from interpjax.methods import icl_labels as icl


class WordTokenizer:
    """Word-level stand-in for a real tokenizer: a word with its leading space, or a newline, is one
    token; ids are handed out in order of first sight and must fit a tiny model's vocabulary."""

    pad_token_id = 0
    eos_token_id = 1
    bos_token_id = 2

    def __init__(self, vocab_size: int = 101):
        self.vocab, self.vocab_size = {}, vocab_size

    def __call__(self, text, add_special_tokens=False):
        ids = []
        for piece in re.findall(r"\n| ?[^\s]+", text):
            if piece not in self.vocab:
                self.vocab[piece] = 3 + len(self.vocab)
                assert self.vocab[piece] < self.vocab_size, "toy vocabulary full"
            ids.append(self.vocab[piece])
        return {"input_ids": ids}


def toy_task(n_per_class: int = 6) -> icl.LabelTask:
    items = [(f"good thing {i}", "positive") for i in range(n_per_class)]
    items += [(f"bad thing {i}", "negative") for i in range(n_per_class)]
    return icl.LabelTask("toy", tuple(items), ("negative", "positive"), "Review", "Sentiment")


@pytest.mark.parametrize("k", [4, 8])
def test_flipped_prompts_have_exactly_the_requested_share_of_flips(k):
    task = toy_task(10)
    y = task.label_ids()
    queries = np.arange(len(task.items))
    demos = icl.sample_demos(task, queries, k, seed=3)
    for flip in (f for f in icl.FLIP_FRACTIONS if (f * k) % 2 == 0):
        p = icl.icl_prompts(task, queries, demos, flip, seed=5)
        true = y[demos]
        assert (p["flipped"].sum(1) == round(flip * k)).all()
        for c in (0, 1):  # as many flips in each class, so the shown labels stay balanced
            assert ((p["flipped"] & (true == c)).sum(1) == round(flip * k) // 2).all()
            assert ((p["shown"] == c).sum(1) == k // 2).all()
        assert ((p["shown"] != true) == p["flipped"]).all()
        np.testing.assert_array_equal(p["gold"], y[queries])  # the query's gold is its TRUE label
        for text, drow, srow in zip(p["texts"], demos, p["shown"]):
            shown_words = re.findall(r"Sentiment: (\w+)\n", text)
            assert shown_words == [task.labels[s] for s in srow]
            assert text.endswith("Sentiment:")
    # different seeds flip different demos, the same seed the same ones
    a = icl.icl_prompts(task, queries, demos, 0.5, seed=0)["flipped"]
    assert (a == icl.icl_prompts(task, queries, demos, 0.5, seed=0)["flipped"]).all()
    assert (a != icl.icl_prompts(task, queries, demos, 0.5, seed=1)["flipped"]).any()


def test_the_query_never_appears_among_its_demos():
    task = toy_task(5)
    y = task.label_ids()
    queries = np.arange(len(task.items))
    demos = icl.sample_demos(task, queries, 8, seed=0)  # 4 per class out of 5: the query's own class is tight
    assert demos.shape == (len(queries), 8)
    assert not (demos == queries[:, None]).any()
    assert all(len(set(row)) == 8 for row in demos)
    assert ((y[demos] == 1).sum(1) == 4).all()
    p = icl.icl_prompts(task, queries, demos, 1.0, seed=0)
    for q, text in zip(queries, p["texts"]):
        assert text.count(task.items[q][0]) == 1 and text.rsplit("\n", 1)[0].endswith(task.items[q][0])
    with pytest.raises(ValueError, match="appears among its own demos"):
        icl.icl_prompts(task, queries[:1], np.array([[0, 1, 6, 7]]), 0.0)
    with pytest.raises(ValueError, match="has 4 items besides the query"):
        icl.sample_demos(task, queries, 10, seed=0)


def test_sul_variant_shows_and_scores_the_unrelated_words():
    task = toy_task()
    sul = icl.sul_task(task)
    assert sul.words() == ("foo", "bar") and sul.labels == task.labels
    p = icl.icl_prompts(sul, [0], icl.sample_demos(sul, [0], 4, 0), 0.0)
    assert "positive" not in p["texts"][0] and "negative" not in p["texts"][0]
    assert set(re.findall(r"Sentiment: (\w+)\n", p["texts"][0])) == {"foo", "bar"}
    tok = WordTokenizer()
    ids = icl.label_token_ids(tok, sul.words())
    assert ids.tolist() == [tok(" foo")["input_ids"][0], tok(" bar")["input_ids"][0]]


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_batched_scoring_equals_a_loop_of_single_forwards(tiny_model, family):
    model, _ = tiny_model(family)
    model = model.replace(tokenizer=WordTokenizer(model.cfg.vocab_size))
    task = toy_task(4)
    queries = np.array([0, 5, 2, 7, 1, 6, 3])
    demos = icl.sample_demos(task, queries, 2, seed=0)
    p = icl.icl_prompts(task, queries, demos, 1.0, seed=0)
    texts = [t if i % 2 else t.replace("thing", "nice small thing") for i, t in enumerate(p["texts"])]  # ragged
    tokens, mask = icl.encode_prompts(model.tokenizer, texts)
    assert (mask[:, 0] == 1).all() and (mask[:, -1] == 0).any()  # right-padded, lengths differ
    cand = icl.label_token_ids(model.tokenizer, task.words())
    got = icl.label_logits(model, tokens, cand, attention_mask=mask, batch_size=3)  # 3 chunks, the last padded
    assert got.shape == (len(texts), 2)
    for row, m, g in zip(tokens, mask, got):
        ref = np.asarray(M.forward(model.cfg, model.params, row[: m.sum()][None]))[0, -1, cand]
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5)
    one = icl.label_logits(model, tokens, cand, attention_mask=mask, batch_size=len(texts))
    np.testing.assert_allclose(one, got, rtol=1e-5, atol=1e-5)
    out = icl.score_condition(model, task, queries, demos, 1.0, seed=0)
    assert out["correct"].shape == (len(queries),) and set(np.unique(out["correct"])) <= {0.0, 1.0}
    np.testing.assert_array_equal(out["correct"] + out["follows"], np.ones(len(queries)))  # two classes


def test_bad_inputs_raise_naming_the_value_and_the_choices(tiny_model):
    task = toy_task()
    q = np.array([0, 1])
    demos = icl.sample_demos(task, q, 8, seed=0)
    with pytest.raises(ValueError, match=r"flip=0.3 is not achievable exactly with k=8.*valid fractions: 0, 0.25, 0.5"):
        icl.icl_prompts(task, q, demos, 0.3)
    with pytest.raises(ValueError, match=r"flip=0.25 is not achievable exactly with k=4.*valid fractions: 0, 0.5, 1"):
        icl.icl_prompts(task, q, icl.sample_demos(task, q, 4, seed=0), 0.25)  # one flip cannot split over 2 classes
    with pytest.raises(ValueError, match=r"flip=1.5 must be a fraction in \[0, 1\]"):
        icl.n_flips(1.5, 8, 2)
    with pytest.raises(ValueError, match="k=7 demos must be a positive multiple of the 2 classes"):
        icl.sample_demos(task, q, 7, seed=0)
    with pytest.raises(ValueError, match=r"unknown label\(s\) \['neutral'\]; valid labels: \['negative', 'positive'\]"):
        icl.LabelTask("bad", (("x", "positive"), ("y", "neutral")), ("negative", "positive"))
    with pytest.raises(ValueError, match="query indices must be in 0..11"):
        icl.sample_demos(task, [12], 4, seed=0)
    with pytest.raises(ValueError, match="share a first token"):
        icl.label_token_ids(WordTokenizer(), ["good", "good"])
    with pytest.raises(ValueError, match="must be single tokens"):
        icl.label_token_ids(lambda t, add_special_tokens=False: {"input_ids": [5, 6] if "a" in t else [7]},
                            ["ab", "c"], require_single=True)
    model, _ = tiny_model("llama")
    tok = WordTokenizer()
    tokens, mask = icl.encode_prompts(tok, ["Review: a b\nSentiment:", "Review: a\nSentiment:"])
    with pytest.raises(ValueError, match="shorter than the longest prompt"):
        icl.encode_prompts(tok, ["Review: a b\nSentiment:"], length=2)
    with pytest.raises(ValueError, match=r"rows \[1\] are not right-padded"):
        icl.label_logits(model, tokens[:, ::-1].copy(), [3, 4], attention_mask=mask[:, ::-1].copy())
    with pytest.raises(ValueError, match="candidates"):
        icl.label_logits(model, tokens, [3, 4000], attention_mask=mask)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        icl.label_logits(model, tokens, [3, 4], attention_mask=mask, batch_size=0)
