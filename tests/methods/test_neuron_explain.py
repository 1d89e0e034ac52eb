"""interpjax.methods.neuron_explain (M15): scoring, sampling, normalisation, the token-lookup
baseline, the batched LM simulator against single-excerpt calls (a tiny model with a word-level
test tokenizer), revision plumbing and the HTML view in headless Chromium."""

from __future__ import annotations

import dataclasses
import json
import re
import zlib

import numpy as np
import pytest

from browser import assert_rendered, render
from conftest import REPO
from interpjax.methods import neuron_explain as NE


class WordTokenizer:
    """A test tokenizer: digits are single tokens 0..9, every other word / space / mark hashes to
    one id in 10..V-1 (no chat template, so prompts are plain text)."""

    def __init__(self, vocab_size: int):
        self.V = vocab_size
        self.vocab: dict = {}

    def _id(self, piece: str) -> int:
        if piece.isdigit() and len(piece) == 1:
            return int(piece)
        i = 10 + zlib.crc32(piece.encode()) % (self.V - 10)
        self.vocab[i] = piece
        return i

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self._id(p) for p in re.findall(r"\d|[^\W\d]+|\s|[^\w\s]", text)]}

    def decode(self, ids):
        return "".join(str(i) if i < 10 else self.vocab.get(i, "?") for i in ids)


@pytest.fixture(scope="module")
def tiny(tiny_model):
    model, _ = tiny_model("llama")
    # rotary positions work at any length; the tiny checkpoint only declares 64
    return model.replace(cfg=dataclasses.replace(model.cfg, n_ctx=2048)), WordTokenizer(model.cfg.vocab_size)


def _rec(tokens, acts, scale=1.0):
    return NE.NeuronRecord(tuple(tokens), np.asarray(acts, np.float32), scale)


def test_true_activations_score_exactly_one_and_a_constant_simulation_is_nan_counted_as_zero():
    rng = np.random.default_rng(0)
    true = [rng.normal(size=n).astype(np.float32) for n in (5, 9, 3)]
    assert NE.score(true, true) == pytest.approx(1.0, abs=1e-12)
    assert NE.score([2 * t + 1 for t in true], true) == pytest.approx(1.0, abs=1e-9)  # scale-free
    const = [np.full(len(t), 3.0) for t in true]
    assert np.isnan(NE.score(const, true)) and np.isnan(NE.score(true, const))
    assert NE.mean_score([np.nan, 0.5, 1.0]) == pytest.approx(0.5)  # nan counts as 0
    with pytest.raises(ValueError, match="differ in length"):
        NE.score([np.zeros(3)], [np.zeros(4)])


def test_sampling_keeps_sets_disjoint_and_takes_the_true_top_excerpts():
    rng = np.random.default_rng(1)
    m = rng.normal(size=200)
    s = NE.sample_excerpts(m, n_explain=5, n_top_score=5, n_random_score=5, n_random_revise=10, seed=3)
    sets = [set(s[k].tolist()) for k in ("explain", "top", "random", "revise")]
    assert [len(x) for x in sets] == [5, 5, 5, 10]
    assert sum(map(len, sets)) == len(set().union(*sets))  # no index in two sets
    top10 = set(np.argsort(-m)[:10].tolist())
    assert sets[0] | sets[1] == top10
    assert min(m[list(top10)]) > max(m[list(sets[2] | sets[3])])
    s2 = NE.sample_excerpts(m, seed=4)
    assert set(s2["explain"]) | set(s2["top"]) == top10 and set(s2["explain"]) != sets[0]  # split is seeded
    with pytest.raises(ValueError, match="cannot give"):
        NE.sample_excerpts(np.zeros(10))
    with pytest.raises(ValueError, match="set sizes"):
        NE.sample_excerpts(m, n_explain=0)


def test_normalisation_to_0_10():
    out = NE.normalize([-3.0, 0.0, 0.24, 0.26, 1.0, 2.0, 5.0], scale=2.0)
    assert out.tolist() == [0, 0, 1, 1, 5, 10, 10]
    assert out.dtype == np.int32
    with pytest.raises(ValueError, match="scale"):
        NE.normalize([1.0], scale=0.0)
    r = _rec(["a", "b", "c"], [0.0, 1.0, 2.0], scale=2.0)
    assert r.normalized().tolist() == [0, 5, 10]
    nt = r.next_token()
    assert nt.tokens == ("b", "c") and nt.activations.tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="one activation per token"):
        _rec(["a"], [1.0, 2.0])


def test_token_lookup_recovers_a_planted_table_exactly_and_the_shuffled_table_does_not():
    rng = np.random.default_rng(2)
    planted = {" the": 0, " good": 10, " film": 3, " bad": 7, ",": 0, " plot": 5}
    vocab = list(planted)
    recs = []
    for _ in range(12):
        toks = [vocab[i] for i in rng.integers(0, len(vocab), 20)]
        recs.append(_rec(toks, [planted[t] / 10 * 4.0 for t in toks], scale=4.0))
    expl = NE.TokenLookupExplainer()(recs[:6])
    table = json.loads(expl)
    assert table == {t: float(v) for t, v in planted.items() if t in table} and len(table) == len(planted)
    sc, sims = NE.simulate_and_score(NE.lookup_simulator, expl, recs[6:])
    assert sc == pytest.approx(1.0, abs=1e-9)
    assert NE.lookup_simulator(expl, [[" unseen", " good"]])[0].tolist() == [0.0, 10.0]
    shuffled = NE.shuffle_table(expl, seed=0)
    assert sorted(json.loads(shuffled).values()) == sorted(table.values())
    assert NE.simulate_and_score(NE.lookup_simulator, shuffled, recs[6:])[0] < 0.9
    with pytest.raises(ValueError, match="JSON object"):
        NE.lookup_simulator("not json", [["a"]])


def test_batched_lm_simulator_equals_single_excerpt_calls(tiny):
    model, tok = tiny
    rng = np.random.default_rng(3)
    words = [" the", " film", " was", " good", " bad", ".", " plot", " 7"]
    excerpts = [[words[i] for i in rng.integers(0, len(words), n)] for n in (6, 11, 3, 9, 14)]
    batched = NE.LMSimulator(model, tokenizer=tok, batch_size=4, bucket=64)
    single = NE.LMSimulator(model, tokenizer=tok, batch_size=1, bucket=32)
    out = batched("good words", excerpts)
    assert [len(o) for o in out] == [len(e) for e in excerpts]
    for e, o in zip(excerpts, out):
        ref = single("good words", [e])[0]
        np.testing.assert_allclose(o, ref, atol=1e-5)
        assert ((o >= 0) & (o <= 9)).all()
    # the expected value moves with the explanation: the prompt reaches the read positions
    other = batched("something else entirely", excerpts[:1])[0]
    assert not np.allclose(other, out[0])
    with pytest.raises(ValueError, match="excerpts must have"):
        batched("x", [[]])


def test_lm_explainer_and_revision_return_text(tiny):
    model, tok = tiny
    ex = NE.LMExplainer(model, tokenizer=tok, max_new_tokens=4, batch_size=2, bucket=64)
    recs = [_rec([" a", " good", " film"], [0.0, 2.0, 0.5], scale=2.0), _rec([" so", " good"], [0.1, 1.8], scale=2.0)]
    e = ex(recs)
    assert isinstance(e, str) and "\n" not in e
    fp = [_rec([" bad", " plot"], [0.0, 0.0], scale=2.0)]
    assert isinstance(NE.revise(ex, e, fp, recs), str)
    with pytest.raises(TypeError, match="no revise"):
        NE.revise(NE.TokenLookupExplainer(), "x", fp)
    msgs = NE.revision_messages("film words", fp, recs)
    assert "film words" in msgs[-1]["content"] and " bad\t0" in msgs[-1]["content"]


def test_false_positives_are_quiet_excerpts_where_the_simulation_fires():
    recs = [_rec(["a", "b"], [0.0, 0.0]), _rec(["c", "d"], [0.0, 1.0]), _rec(["e", "f"], [0.0, 0.05]),
            _rec(["g", "h"], [0.0, 0.0])]
    sims = [np.array([0.0, 6.0]), np.array([9.0, 9.0]), np.array([1.0, 8.0]), np.array([2.0, 2.0])]
    # excerpt 1 fires truly (10), excerpt 3's simulation is flat: neither is a false positive
    assert NE.false_positives(sims, recs, k=3) == [2, 0]


def test_records_html_renders_in_chromium(tmp_path):
    recs = [_rec([" The", " <b>film</b>", " & ", " was", " great", "\n", " end"], [0.0, 3.0, 0.0, 0.5, 4.0, 0.0, 1.0],
                 scale=4.0)]
    long = [_rec([" word"] * 60, np.linspace(0, 1, 60), scale=1.0)]
    page = NE.records_html([{"name": "L0 / n24", "explanation": "the word <great>", "score": 0.42, "records": recs,
                             "simulated": [np.arange(7, dtype=np.float32)]},
                            {"name": "L4 / n51", "explanation": "long", "score": float("nan"), "records": long}],
                           tmp_path / "records.html")
    r = render(page, tmp_path / "browser", size=(700, 600))
    assert_rendered(r, must_contain=["Neuron explanations", "L0 / n24", "&lt;great&gt;", "&lt;b&gt;film&lt;/b&gt;",
                                     "score 0.42", "score n/a"])
    page_width, window_width = r["widths"]
    assert page_width <= window_width, r["widths"]


def test_committed_token_view_renders_in_chromium(tmp_path):
    page = REPO / "experiments" / "neuron_explanations" / "results" / "full" / "records.html"
    r = render(page, tmp_path / "browser", size=(900, 700))
    assert_rendered(r, must_contain=["M15 neuron explanations", "explanation:", "layer 0, neuron"])
    page_width, window_width = r["widths"]
    assert page_width <= window_width, r["widths"]
