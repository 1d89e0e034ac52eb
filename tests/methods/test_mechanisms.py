"""Attention knockout / attribute rate (Geva et al.), task vectors (Hendel et al.) and function
vectors (Merullo et al.): each vmapped API equals the loop of single edited runs it replaces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import interpjax
from interpjax import AttentionKnockout, Ablate, Add, Patch
from interpjax.core import model as M
from interpjax.methods import skill_neurons as sn
from interpjax.methods import task_vectors as tv
from interpjax.methods.knockout import (AttributeRateResult, KnockoutResult, attention_knockout, attribute_rate,
                                        key_positions, sublayer_knockout)
from interpjax.worlds import facts, icl

from conftest import load_experiment


@pytest.fixture
def llama(tiny_model):
    return tiny_model("llama")[0]


def _toks(cfg, B=3, T=7, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (B, T)).astype(np.int32)


def _probs(model, tokens, ivs, target):
    p = np.asarray(jnp.exp(jnp.asarray(model(tokens, interventions=ivs))[:, -1].astype(jnp.float32)))
    p = p / p.sum(-1, keepdims=True)
    return p[np.arange(len(target)), target]


def test_attention_knockout_sweep_equals_loop_of_single_runs(llama):
    cfg = llama.cfg
    tokens = _toks(cfg)
    subj = np.zeros(tokens.shape, bool)
    subj[:, 2:4] = True
    subj[1, 1] = True  # rows may differ
    for kind in ("subject", "non_subject", "last"):
        r = attention_knockout(llama, tokens, subj, kind=kind, window=2)
        assert isinstance(r, KnockoutResult) and (r.edit, r.kind, r.window) == ("attention", kind, 2)
        keys = key_positions(kind, subj, np.ones_like(tokens))
        for s in r.starts:
            layers = np.clip(s + np.arange(2), 0, cfg.n_layers - 1)
            iv = AttentionKnockout(layer=layers, query_positions=np.array([-1]), key_positions=keys)
            np.testing.assert_allclose(r.prob_knocked[s], _probs(llama, tokens, iv, r.answers), rtol=1e-4,
                                       atol=1e-7)
        np.testing.assert_allclose(r.prob, _probs(llama, tokens, None, r.answers), rtol=1e-5)
        np.testing.assert_allclose(r.relative_change, ((r.prob_knocked - r.prob) / r.prob).mean(-1), rtol=1e-12)


def test_knocking_out_edges_to_all_other_positions_leaves_only_self_attention(llama):
    """Blocking last -> every earlier real token at every layer equals running the last token
    alone at its position (it can only see itself)."""
    cfg = llama.cfg
    tokens = _toks(cfg, B=2, T=6)
    others = np.ones(tokens.shape, bool)
    others[:, -1] = False
    target = np.array([5, 7])
    r = attention_knockout(llama, tokens, others, kind="subject", window=cfg.n_layers, answers=target)
    alone = interpjax.forward(cfg, llama.params, tokens[:, -1:], position_ids=np.full((2, 1), tokens.shape[1] - 1))
    p = np.asarray(jnp.exp(alone[:, -1] - jnp.max(alone[:, -1], -1, keepdims=True)))
    p = p / p.sum(-1, keepdims=True)
    np.testing.assert_allclose(r.prob_knocked[0], p[np.arange(2), target], rtol=1e-4)


def test_sublayer_knockout_equals_loop(llama):
    cfg = llama.cfg
    tokens = _toks(cfg)
    pos = np.array([[2], [3], [4]])
    r = sublayer_knockout(llama, tokens, pos, sublayer="mlp", window=1)
    assert (r.edit, r.kind) == ("sublayer", "mlp")
    for s in r.starts:
        iv = Ablate(site="mlp_out", layer=np.array([s]), kind="zero", positions=pos)
        np.testing.assert_allclose(r.prob_knocked[s], _probs(llama, tokens, iv, r.answers), rtol=1e-4, atol=1e-7)


def test_attribute_rate_equals_manual_logit_lens(llama):
    cfg = llama.cfg
    tokens = _toks(cfg)
    pos = np.array([1, 2, -1])
    _, cache = llama.run_with_cache(tokens, sites=["resid_post"])
    want_sets = []
    manual = np.zeros(cfg.n_layers)
    for b in range(3):
        x = cache["resid_post"][:, b, pos[b]]  # [L, D]
        top = np.argsort(-np.asarray(M.final_logits(cfg, llama.params, x[:, None]))[:, 0], -1)[:, :5]
        attrs = set(top[0, :3].tolist()) | {0}
        want_sets.append(attrs)
        manual += [len(set(t.tolist()) & attrs) / 5 for t in top]
    got = attribute_rate(llama, tokens, pos, want_sets, k=5)
    assert isinstance(got, AttributeRateResult) and got.k == 5 and got.positions.tolist() == [1, 2, 6]
    np.testing.assert_allclose(got.rate, manual / 3, atol=1e-9)
    assert got.rate[0] >= 0.6 - 1e-9  # layer 0's own top-3 are in its set


def test_task_vector_patch_and_function_vector_add_equal_manual_edits(llama):
    cfg = llama.cfg
    src = _toks(cfg, B=4, T=9, seed=1)
    zs = _toks(cfg, B=3, T=4, seed=2)
    vecs = tv.task_vectors(llama, src)
    np.testing.assert_allclose(vecs[1], np.asarray(llama.run_with_cache(src, sites=["resid_pre"])[1]["resid_pre"][1, :, -1]).mean(0),
                               rtol=1e-6)
    fvs = tv.function_vectors(llama, src)
    for layer in range(cfg.n_layers):
        top = np.asarray(llama(zs, interventions=Patch("resid_pre", layer=layer, value=jnp.asarray(vecs[layer]),
                                                       positions=np.array([-1]))))[:, -1].argmax(-1)
        acc = tv.patch_accuracy(llama, zs, top, vecs[layer:layer + 1], layers=[layer])
        assert acc.accuracy.tolist() == [1.0] and acc.layers.tolist() == [layer] and acc.edit == "patch"
        top = np.asarray(llama(zs, interventions=Add("mlp_out", layer=layer, vector=jnp.asarray(fvs[layer]),
                                                     positions=np.array([-1]))))[:, -1].argmax(-1)
        assert tv.add_accuracy(llama, zs, top, fvs[layer:layer + 1], layers=[layer]).accuracy.tolist() == [1.0]


def test_truncation_with_no_layers_dropped_is_the_model(llama):
    cfg = llama.cfg
    tokens = _toks(cfg, B=6)
    top = np.asarray(llama(tokens))[:, -1].argmax(-1)
    acc = tv.truncated_accuracy(llama, tokens, top)
    assert acc.accuracy[0] == 1.0 and acc.accuracy.shape == (cfg.n_layers,)
    assert acc.layers.tolist() == list(range(cfg.n_layers))[::-1]  # entry k decodes after layer L-1-k
    assert tv.accuracy(llama, tokens, top) == 1.0


def test_bad_inputs_are_refused(llama):
    cfg = llama.cfg
    tokens = _toks(cfg)
    subj = np.zeros(tokens.shape, bool)
    subj[:, 1] = True
    with pytest.raises(ValueError, match="valid kinds"):
        attention_knockout(llama, tokens, subj, kind="object")
    with pytest.raises(ValueError, match="window"):
        attention_knockout(llama, tokens, subj, window=cfg.n_layers + 1)
    with pytest.raises(ValueError, match="no 'subject' positions"):
        attention_knockout(llama, tokens, np.zeros(tokens.shape, bool))
    with pytest.raises(ValueError, match="answers.*vocabulary.*101"):
        attention_knockout(llama, tokens, subj, answers=[1, 2, cfg.vocab_size])
    padded = np.ones(tokens.shape, np.int32)
    padded[1, -1] = 0
    with pytest.raises(ValueError, match="rows \\[1\\] end in padding"):
        attention_knockout(llama, tokens, subj, attention_mask=padded)
    with pytest.raises(ValueError, match="valid: \\('attn', 'mlp'\\)"):
        sublayer_knockout(llama, tokens, [1], sublayer="ffn")
    with pytest.raises(ValueError, match="positions \\[7\\] out of range"):
        sublayer_knockout(llama, tokens, [7])
    with pytest.raises(ValueError, match="one token id per prompt"):
        tv.accuracy(llama, tokens, [1, 2])
    with pytest.raises(ValueError, match="residual-width"):
        tv.task_vectors(llama, tokens, site="pattern")
    with pytest.raises(ValueError, match="vectors must be"):
        tv.patch_accuracy(llama, tokens, [1, 2, 3], np.zeros((1, cfg.d_model)))
    with pytest.raises(ValueError, match="layers \\[9\\] out of range"):
        tv.patch_accuracy(llama, tokens, [1, 2, 3], np.zeros((1, cfg.d_model)), layers=[9])
    with pytest.raises(ValueError, match="non-empty attribute"):
        attribute_rate(llama, tokens, [1, 1, 1], [{1}, set(), {2}])
    with pytest.raises(ValueError, match="positions has shape \\(2,\\); expected \\(3,\\)"):
        attribute_rate(llama, tokens, [1, 1], [{1}, {2}, {3}])
    # the handle comes first and attention_mask is keyword-only
    with pytest.raises(TypeError, match="takes a Model first, got Config"):
        attention_knockout(cfg, tokens, subj)
    with pytest.raises(TypeError, match="takes a Model first, got tuple"):
        tv.task_vectors((cfg, llama.params), tokens)
    with pytest.raises(TypeError, match="positional"):
        tv.task_vectors(llama, tokens, np.ones_like(tokens))


def _same(a, b):
    """Field-by-field equality of two results (arrays exactly, dtype included)."""
    import dataclasses

    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(x):
            _same(x, y)
        elif isinstance(x, np.ndarray):
            assert x.dtype == np.asarray(y).dtype and x.shape == np.shape(y), f.name
            np.testing.assert_array_equal(x, y)
        else:
            assert x == y, f.name


def test_results_save_load_to_dict_and_plot(llama, tiny_model, tmp_path):
    """Every result round-trips through .save/.load exactly, is refused for another model's
    weights, has a JSON .to_dict() and draws a picture."""
    import json

    cfg = llama.cfg
    tokens = _toks(cfg)
    subj = np.zeros(tokens.shape, bool)
    subj[:, 2:4] = True
    top = np.asarray(llama(tokens))[:, -1].argmax(-1)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 30)
    results = [attention_knockout(llama, tokens, subj, window=2),
               sublayer_knockout(llama, tokens, [2], sublayer="attn"),
               attribute_rate(llama, tokens, [1, 2, -1], [{1}, {2}, {3}], k=4),
               tv.patch_accuracy(llama, tokens, top, tv.task_vectors(llama, tokens)),
               tv.truncated_accuracy(llama, tokens, top),
               sn.find(rng.normal(size=(2, 30, 8)), labels, k=3)]
    other = llama.replace(params=jax.tree.map(lambda a: a * 1.5, llama.params))
    for i, r in enumerate(results):
        path = r.save(tmp_path / f"r{i}.safetensors")
        _same(r, type(r).load(path, model=llama if r.model is not None else None) if hasattr(r, "model")
              else type(r).load(path))
        json.dumps(r.to_dict())
        assert r.plot(tmp_path / f"r{i}.png").stat().st_size > 0
        if getattr(r, "model", None) is not None:
            with pytest.raises(ValueError, match="another model"):
                type(r).load(path, model=other)
    with pytest.raises(ValueError, match="format"):
        KnockoutResult.load(tmp_path / "r2.safetensors")  # an attribute-rate file is not a knockout


def test_fact_and_icl_worlds_layout():
    world = facts.make_world(n_subjects=10, n_relations=2, n_parts=5, seed=0)
    rng = np.random.default_rng(0)
    tokens, subj, answers = facts.prompts(world, np.arange(10), np.zeros(10, int), rng)
    assert tokens.shape == (10, 7) and (tokens[:, 0] == facts.BOS).all() and (tokens[:, -2] == facts.IS).all()
    assert (tokens[subj] >= world.part_base).all() and (tokens[subj] < world.filler_base).all()
    assert np.isin(answers, world.attribute_tokens(0)).all() and answers.max() < world.vocab_size
    seq, loss_mask = facts.training_batch(world, 4, rng)
    assert seq.shape == (4, 8) and loss_mask[:, -1].all() and loss_mask[:, :-1].sum() == 0
    tasks = icl.make_tasks(8, 1)
    tok, ans, q = icl.icl_prompts(tasks[1], 2, 5, rng)
    assert tok.shape == (5, 11) and (tok[:, -1] == icl.ARROW).all()
    assert (ans == icl.ITEM_BASE + (q + 1) % 8).all()
    demo_x, demo_y = tok[:, 1::4][:, :2] - icl.ITEM_BASE, tok[:, 3::4] - icl.ITEM_BASE
    assert (demo_y == (demo_x + 1) % 8).all() and (demo_x != q[:, None]).all()
    seq, mask = icl.training_batch(tasks, 3, 2, rng)
    assert (seq[mask == 1] >= icl.ITEM_BASE).all() and mask.sum() == 3 * 3


def test_predictivity_finds_a_planted_skill_neuron():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    acts = rng.normal(size=(2, 400, 20))
    acts[1, :, 7] = (labels == 2) * 2.0 + 0.3 * rng.normal(size=400)  # fires for class 2 only
    acts[0, :, 3] = -1.0 * (labels == 0) + 0.15 * rng.normal(size=400)  # silent for class 0
    for metric in sn.METRICS:
        found = sn.find(acts, labels, k=2, metric=metric)
        assert {tuple(n) for n in found.neurons.tolist()} == {(1, 7), (0, 3)} and found.scores.min() > 0.95
        pred = sn.predictivity(acts, labels, metric=metric)
        assert pred.metric == metric and pred.above[1, 2, 7] and not pred.above[0, 0, 3]
        assert np.median(pred.score) < 0.6  # ordinary neurons: near chance, 0.5
        np.testing.assert_array_equal(found.predictivity.score, pred.score)
        # on fresh data the planted neurons keep their score; ordinary ones fall to chance
        labels2 = rng.integers(0, 3, 400)
        acts2 = rng.normal(size=(2, 400, 20))
        acts2[1, :, 7] = (labels2 == 2) * 2.0 + 0.3 * rng.normal(size=400)
        acts2[0, :, 3] = -1.0 * (labels2 == 0) + 0.15 * rng.normal(size=400)
        held = sn.heldout_score(pred, acts2, labels2)
        assert held.shape == (2, 20) and held[1, 7] > 0.95 and held[0, 3] > 0.95
        assert abs(np.median(held) - 0.5) < 0.05
    with pytest.raises(ValueError, match="labels must be"):
        sn.predictivity(acts, labels[:10])
    with pytest.raises(ValueError, match="at least 2 classes"):
        sn.predictivity(acts, np.zeros(400, int))
    with pytest.raises(ValueError, match="unknown metric"):
        sn.predictivity(acts, labels, metric="accuracy")
    with pytest.raises(ValueError, match="do not match"):
        sn.heldout_score(pred, acts[:, :, :5], labels)


def _plain_accuracy_predictivity(acts_NF, labels_N):
    """The definition before issue 16: accuracy of "above the mean means class c", max(acc, 1 - acc)."""
    high = acts_NF > acts_NF.mean(-2, keepdims=True)
    onehot = labels_N[:, None] == np.arange(labels_N.max() + 1)[None]
    acc = (np.einsum("nf,nc->cf", high, onehot) + np.einsum("nf,nc->cf", ~high, ~onehot)) / len(labels_N)
    return np.maximum(acc, 1 - acc).max(0)


def test_predictivity_ignores_the_base_rate_of_a_rare_class():
    """A class holding 1% of the examples: a dead neuron and a sparse neuron firing at random
    score ~0.99 under plain accuracy (the share of "not c"), but 0.5 under AUROC and balanced
    accuracy, which rank the neuron that really fires for the rare class first. (Balanced accuracy
    keeps the paper's mean threshold, which the majority sets, so it scores that neuron lower.)"""
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.zeros(10, int), rng.integers(1, 3, 990)])
    acts = rng.normal(size=(1000, 6))
    acts[:, 0] = 0.0  # dead
    acts[:, 1] = 5.0 * (rng.random(1000) < 0.01)  # sparse, fires regardless of the label
    acts[:, 2] = 3.0 * (labels == 0) + 0.3 * rng.normal(size=1000)  # fires for the rare class
    old = _plain_accuracy_predictivity(acts, labels)
    assert old[0] > 0.98 and old[1] > 0.97 and old[2] > 0.99  # useless neurons look like skill neurons
    for metric in sn.METRICS:
        score = sn.predictivity(acts, labels, metric=metric).score
        assert abs(score[0] - 0.5) < 1e-12 and score[1] < 0.6, (metric, score)
        assert score[2] > (0.95 if metric == "auroc" else 0.7) and score[2] == score.max(), (metric, score)
        assert sn.find(acts[None], labels, k=1, metric=metric).neurons.tolist() == [[0, 2]]


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_skill_neuron_noise_touches_only_the_chosen_neurons(tiny_model, name):
    model = tiny_model(name)[0]
    cfg = model.cfg
    tokens = _toks(cfg, B=2, T=6)
    acts = sn.neuron_activations(model, tokens, np.array([0, -1]))
    _, cache = model.run_with_cache(tokens, sites=["mlp_post"])
    np.testing.assert_allclose(acts[:, 1], np.asarray(cache["mlp_post"])[:, 1, -1], rtol=1e-6)
    neurons = np.array([[0, 1], [0, 4], [cfg.n_layers - 1, 2]])
    std = np.ones((cfg.n_layers, cfg.d_mlp))
    key = jnp.zeros(2, jnp.uint32)
    zero = sn.noise_interventions(model, neurons, std, key, 2, 6, scale=0.0)
    np.testing.assert_array_equal(np.asarray(model(tokens, interventions=zero)), np.asarray(model(tokens)))
    ivs = sn.noise_interventions(model, neurons, std, key, 2, 6)
    _, noisy = model.run_with_cache(tokens, sites=["mlp_post"], layers=[0], interventions=ivs)
    diff = np.abs(np.asarray(noisy["mlp_post"])[0] - np.asarray(cache["mlp_post"])[0]).max((0, 1))
    assert set(np.flatnonzero(diff > 0).tolist()) == {1, 4}
    every = sn.noise_interventions(model, neurons, std, key, 2, 6, all_layers=True)
    assert [iv.layer for iv in every] == list(range(cfg.n_layers))
    touched = {int(layer) for layer in neurons[:, 0]}
    for iv in every:
        used = np.flatnonzero(np.abs(np.asarray(iv.vector)).reshape(-1, cfg.d_mlp).max(0) > 0).tolist()
        assert set(used) == set(neurons[neurons[:, 0] == iv.layer, 1].tolist()) or iv.layer not in touched and not used
    rand = sn.random_neurons(model, 5, exclude=neurons)
    assert not {tuple(r) for r in rand.tolist()} & {tuple(n) for n in neurons.tolist()}
    size = np.random.default_rng(1).lognormal(size=(cfg.n_layers, cfg.d_mlp))
    matched = sn.size_matched_neurons(size, neurons, seed=3, window=3)
    assert (matched[:, 0] == neurons[:, 0]).all() and len({tuple(m) for m in matched.tolist()}) == len(neurons)
    assert not {tuple(m) for m in matched.tolist()} & {tuple(n) for n in neurons.tolist()}
    rank = size.argsort(1).argsort(1)
    assert (np.abs(rank[matched[:, 0], matched[:, 1]] - rank[neurons[:, 0], neurons[:, 1]]) <= 3).all()
    np.testing.assert_array_equal(rand, sn.random_neurons(model, 5, site="mlp_post", seed=0, exclude=neurons))
    with pytest.raises(ValueError, match="neurons must be"):
        sn.noise_interventions(model, [[0, cfg.d_mlp]], std, key, 2, 6)


def _experiment(name):
    return load_experiment(name)
