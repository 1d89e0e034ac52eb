"""The co-occurrence world (M13): deterministic, its counts equal what was asked (recounted from
the emitted words), the intervention deletes exactly what it names, bad arguments are refused."""

from __future__ import annotations

import re

import numpy as np
import pytest

from interpjax.worlds import cooccurrence as co


def _world(seed=0, **kw):
    return co.make_world(**{**dict(n_subjects=12, n_relations=3, n_objects=10, seed=seed), **kw})


def _recount(world, corpus):
    """POC/SOC counts from the decoded words alone (no metadata): a sentence counts for (r, o) when
    it holds a word of a pattern of r and object o, for (s, o) when it holds subject s and object o."""
    S, R, O = world.n_subjects, world.n_relations, world.n_objects
    poc, soc = np.zeros((R, O), np.int64), np.zeros((S, O), np.int64)
    for row in corpus.tokens_NT:
        words = world.vocab.decode(row)
        objs = [int(w[1:]) for w in words if re.fullmatch(r"o\d+", w)]
        subs = [int(w[1:]) for w in words if re.fullmatch(r"s\d+", w)]
        rels = {int(re.match(r"r(\d+)p", w).group(1)) for w in words if re.fullmatch(r"r\d+p\d+w\d+", w)}
        for o in objs:
            for r in rels:
                poc[r, o] += 1
            for s in subs:
                soc[s, o] += 1
    return poc, soc


def test_deterministic_and_seeded():
    w1, w2 = _world(3), _world(3)
    c1, c2 = co.make_corpus(w1, seed=5), co.make_corpus(w2, seed=5)
    assert np.array_equal(w1.gold, w2.gold) and np.array_equal(w1.soc_object, w2.soc_object)
    assert np.array_equal(c1.tokens_NT, c2.tokens_NT)
    assert not np.array_equal(c1.tokens_NT, co.make_corpus(w1, seed=6).tokens_NT)
    assert not np.array_equal(w1.gold, _world(4).gold)


def test_world_constraints():
    w = _world(1)
    assert w.known.any(1).all() and (~w.known).any(1).all()  # every subject: a stated and a held-out fact
    for s in range(w.n_subjects):
        assert len(set(w.gold[s])) == w.n_relations
        assert w.soc_object[s] not in set(w.gold[s]) | set(w.poc_object)
        assert not set(w.gold[s]) & set(w.poc_object)


def test_counts_equal_what_was_asked():
    w = _world(2)
    rng = np.random.default_rng(0)
    poc_extra = rng.integers(0, 3, (w.n_relations, w.n_objects))
    soc_extra = rng.integers(0, 3, (w.n_subjects, w.n_objects))
    c = co.make_corpus(w, fact_repeats=3, poc_extra=poc_extra, soc_extra=soc_extra, seed=1)
    poc, soc = _recount(w, c)
    tables = co.cooccurrence(w, c)
    assert np.array_equal(poc, tables["poc"]) and np.array_equal(soc, tables["soc"])
    # facts: each known fact 3 times per pattern; the distractors exactly as asked on top
    fact_soc = np.zeros_like(soc)
    fact_poc = np.zeros_like(poc)
    for s, r in zip(*np.nonzero(w.known)):
        fact_soc[s, w.gold[s, r]] += 3 * w.vocab.n_patterns
        fact_poc[r, w.gold[s, r]] += 3 * w.vocab.n_patterns
    assert np.array_equal(soc - fact_soc, soc_extra)
    assert np.array_equal(poc - fact_poc, poc_extra)
    assert len(c) == 3 * w.vocab.n_patterns * w.known.sum() + poc_extra.sum() + soc_extra.sum()


def test_integer_counts_plant_one_object():
    w = _world(0)
    c = co.make_corpus(w, fact_repeats=1, poc_extra=7, soc_extra=5, seed=0)
    poc, soc = _recount(w, c)
    assert np.array_equal(soc.argmax(1), w.soc_object) and (soc.max(1) == 5).all()
    assert np.array_equal(poc.argmax(1), w.poc_object) and (poc[np.arange(w.n_relations), w.poc_object] == 7).all()
    # sentence forms: facts and SOC sentences start with a subject, POC ones with a generic word
    for row, kind in zip(c.tokens_NT, c.kind):
        words = w.vocab.decode(row)
        assert words[0] == "<bos>" and words[-1] == "<eos>" and len(words) == 6
        assert words[1].startswith("g" if kind == co.POC else "s")


def test_probes_are_the_facts():
    w = _world(0)
    p = co.probes(w, "held_out")
    assert len(p["gold"]) == (~w.known).sum() * w.vocab.n_patterns
    assert not w.known[p["subject"], p["relation"]].any()
    assert np.array_equal(p["gold"], w.gold[p["subject"], p["relation"]])
    words = w.vocab.decode(p["tokens_NT"][0])
    assert words[:2] == ["<bos>", f"s{p['subject'][0]}"] and words[2].startswith(f"r{p['relation'][0]}p")
    assert len(co.probes(w, "all")["gold"]) == w.n_subjects * w.n_relations * w.vocab.n_patterns


def test_intervention_removes_exactly_that():
    w = _world(4)
    c = co.make_corpus(w, fact_repeats=2, poc_extra=4, soc_extra=3, seed=0)
    chosen = np.array([1, 5, 7])
    c2 = co.remove_objects(w, c, chosen)
    hit = np.isin(c.subject, chosen) & (c.kind == co.SOC) & (c.obj == w.soc_object[c.subject])
    assert hit.sum() == 3 * len(chosen)
    # the hit sentences lose exactly their object token; every other sentence is unchanged
    assert np.array_equal(c2.tokens_NT[~hit], c.tokens_NT[~hit])
    for a, b in zip(c.tokens_NT[hit], c2.tokens_NT[hit]):
        wa, wb = w.vocab.decode(a), w.vocab.decode(b)
        assert [x for x in wa if not re.fullmatch(r"o\d+", x)] == wb and len(wb) == len(wa) - 1
    t, t2 = co.cooccurrence(w, c)["soc"], co.cooccurrence(w, c2)["soc"]
    d = t - t2
    assert (d[chosen, w.soc_object[chosen]] == 3).all() and d.sum() == 3 * len(chosen)
    assert np.array_equal(co.cooccurrence(w, c)["poc"], co.cooccurrence(w, c2)["poc"])
    assert np.array_equal(_recount(w, c2)[1], t2)
    # facts of a chosen subject are never touched, even when the object named is its gold
    gold_o = w.gold[1, np.nonzero(w.known[1])[0][0]]
    c3 = co.remove_objects(w, c, [1], [gold_o])
    assert np.array_equal(c3.tokens_NT, c.tokens_NT)
    c4 = co.remove_objects(w, c, [1], [gold_o], kinds=("fact",))
    assert (c4.obj < 0).sum() == 2 * w.vocab.n_patterns and (c.obj < 0).sum() == 0  # the input is not mutated


def test_bad_arguments_refused():
    with pytest.raises(ValueError, match="known_frac"):
        co.make_world(known_frac=1.0)
    with pytest.raises(ValueError, match="n_objects"):
        co.make_world(n_objects=4, n_relations=4)
    with pytest.raises(ValueError, match="n_subjects"):
        co.make_world(n_subjects=0)
    w = _world(0)
    with pytest.raises(ValueError, match="poc_extra"):
        co.make_corpus(w, poc_extra=-1)
    with pytest.raises(ValueError, match="soc_extra"):
        co.make_corpus(w, soc_extra=np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="fact_repeats"):
        co.make_corpus(w, fact_repeats=0)
    c = co.make_corpus(w)
    with pytest.raises(ValueError, match="subjects"):
        co.remove_objects(w, c, [w.n_subjects])
    with pytest.raises(ValueError, match="distinct"):
        co.remove_objects(w, c, [1, 1])
    with pytest.raises(ValueError, match="objects"):
        co.remove_objects(w, c, [1, 2], [0])
    with pytest.raises(ValueError, match="kinds"):
        co.remove_objects(w, c, [1], kinds=("nope",))
    with pytest.raises(ValueError, match="which"):
        co.probes(w, "train")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        w.vocab.encode(["s0", "zebra"])
