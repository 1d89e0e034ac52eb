"""Integrated gradients over neurons (completeness, agreement with a finite-difference path) and
knowledge neurons (filtering, suppress/amplify interventions), on tiny random models."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from interpjax import Scale, forward
from interpjax.core import model as M
from interpjax.methods import attribution as attr_mod
from interpjax.methods import skill_neurons as sn
from interpjax.methods.attribution import (IGResult, answer_probs, integrated_gradients, knowledge_neurons,
                                           matched_random_neurons, neuron_effect, neuron_factors, path_points,
                                           scale_neurons, scaled_answer_probs)


TOKENS = np.array([[5, 17, 33, 2, 40, 9], [7, 7, 1, 3, 99, 50]], np.int32)


@pytest.fixture(scope="module")
def llama(tiny_model):
    model, _ = tiny_model("llama")
    answers = np.asarray(model(TOKENS))[:, -1].argmax(-1)
    return model, answers


@pytest.mark.slow
def test_ig_completeness_all_layers(llama):
    """sum_j IG_j = f(a) - f(0) per prompt and layer within 1% (trapezoid, 64 steps); the end points
    are the clean run and the run with that layer's neurons zeroed at the last position."""
    model, answers = llama
    res = integrated_gradients(model, TOKENS, answers, steps=64, rule="trapezoid", batch_size=13)
    assert res.attributions.shape == (2, model.cfg.n_layers, model.cfg.d_mlp)
    gap = res.completeness_gap()
    assert gap.max() < 0.01, gap
    full = answer_probs(model, TOKENS, answers)
    np.testing.assert_allclose(res.full, full, rtol=1e-5)
    for li, layer in enumerate(res.layers):
        zero = Scale("mlp_post", layer=layer, factor=0.0, positions=jnp.array([-1]))
        np.testing.assert_allclose(res.baseline[:, li], answer_probs(model, TOKENS, answers, interventions=zero),
                                   rtol=1e-5)
    assert np.abs(res.attributions).max() > 0


@pytest.mark.slow
def test_ig_single_layer_riemann_matches_manual_sum(llama):
    """One layer, right Riemann sum of 8 steps: equals the sum of per-alpha gradients computed one
    at a time (no vmap), and its total approaches f(a) - f(0) only to first order."""
    import jax

    model, answers = llama
    res = integrated_gradients(model, TOKENS[:1], answers[:1], layers=[1], steps=8)
    F = model.cfg.d_mlp

    def f(s):
        iv = Scale("mlp_post", layer=1, factor=s, positions=jnp.array([-1]))
        logits = forward(model.cfg, model.params, TOKENS[:1], interventions=iv)[0, -1]
        return jax.nn.softmax(logits)[answers[0]]

    manual = sum(np.asarray(jax.grad(f)(jnp.full((F,), k / 8, jnp.float32))) for k in range(1, 9)) / 8
    np.testing.assert_allclose(res.attributions[0, 0], manual, rtol=1e-4, atol=1e-7)


def test_path_points_and_errors(llama):
    a, w = path_points(4, "trapezoid")
    np.testing.assert_allclose(a, [0, 0.25, 0.5, 0.75, 1.0])
    assert abs(w.sum() - 1) < 1e-6
    a, w = path_points(5, "riemann")
    np.testing.assert_allclose(a, [0.2, 0.4, 0.6, 0.8, 1.0])
    model, answers = llama
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match="steps"):
            integrated_gradients(model, TOKENS, answers, steps=steps)
    with pytest.raises(ValueError, match="rule"):
        path_points(4, "simpson")
    with pytest.raises(ValueError, match="valid"):
        integrated_gradients(model, TOKENS, answers, site="pattern")
    with pytest.raises(ValueError, match="layers"):
        integrated_gradients(model, TOKENS, answers, layers=[7])
    with pytest.raises(ValueError, match="one token id per prompt"):
        integrated_gradients(model, TOKENS, answers[:1])
    with pytest.raises(ValueError, match="metric"):
        integrated_gradients(model, TOKENS, answers, metric="rank")
    with pytest.raises(ValueError, match="positions"):
        integrated_gradients(model, TOKENS, answers, positions=6)
    with pytest.raises(ValueError, match="positions has shape"):
        integrated_gradients(model, TOKENS, answers, positions=[1, 2, 3])
    with pytest.raises(TypeError, match="takes a Model first"):
        integrated_gradients(model.cfg, TOKENS, answers)


@pytest.mark.slow
def test_ig_per_prompt_positions_equal_single_prompt_runs(llama, tmp_path):
    """``positions`` [B] attributes each prompt's own position: equal to running each prompt alone
    at its position; the result saves, loads (refused for other weights) and plots."""
    import jax

    model, answers = llama
    both = integrated_gradients(model, TOKENS, answers, layers=[0, 2], positions=[2, -1], steps=4)
    assert both.positions.tolist() == [2, -1] and both.layers == (0, 2)
    for b, pos in enumerate((2, -1)):
        one = integrated_gradients(model, TOKENS[b:b + 1], answers[b:b + 1], layers=[0, 2], positions=pos, steps=4)
        np.testing.assert_allclose(both.attributions[b], one.attributions[0], rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(both.full[b], one.full[0], rtol=1e-6)
    back = IGResult.load(both.save(tmp_path / "ig.safetensors"), model=model)
    np.testing.assert_array_equal(back.attributions, both.attributions)
    assert (back.layers, back.site, back.steps, back.rule, back.metric) == ((0, 2), "mlp_post", 4, "riemann", "prob")
    np.testing.assert_array_equal(back.completeness_gap(), both.completeness_gap())
    with pytest.raises(ValueError, match="another model"):
        IGResult.load(tmp_path / "ig.safetensors", model=model.replace(params=jax.tree.map(lambda a: -a, model.params)))
    assert both.plot(tmp_path / "ig.png").stat().st_size > 0


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if the model would run: bad input must be refused before compute."""

    def refuse(*a, **k):
        raise AssertionError("compute started before the input was refused")

    monkeypatch.setattr(M, "run_jit", refuse)
    monkeypatch.setattr(attr_mod, "_ig_jit", refuse)


def test_inputs_that_would_be_wrapped_or_rounded_are_refused_before_compute(llama, no_compute):
    """core.inputs checks (the old ad-hoc ones cast first): int64 token ids >= 2**32 wrapped into
    valid ids, mask value 2 counted as a real token, layers 1.7 / True read layer 1."""
    model, answers = llama
    wrapped = TOKENS.astype(np.int64)
    wrapped[0, 2] = 2**32 + 3  # int32 would make it token 3
    with pytest.raises(ValueError, match=r"token ids \[4294967299\] outside the vocabulary 0..100"):
        integrated_gradients(model, wrapped, answers)
    with pytest.raises(ValueError, match=r"token ids \[4294967299\] outside the vocabulary 0..100"):
        answer_probs(model, wrapped, answers)
    mask = np.ones(TOKENS.shape, np.int64)
    mask[1, 0] = 2
    with pytest.raises(ValueError, match=r"attention_mask must hold only 0 \(padding\) and 1 \(real token\); "
                                         r"got values \[2\]"):
        integrated_gradients(model, TOKENS, answers, attention_mask=mask)
    for layers, msg in (([1.7], r"layers must be integers; got \[1\.7\] \(float\)"),
                        (True, r"layers must be integers; got \[True\] \(bool\)"),
                        ([], "layers is empty"), ([1, 1], r"layers \[1, 1\] contain duplicates")):
        with pytest.raises(ValueError, match=msg):
            integrated_gradients(model, TOKENS, answers, layers=layers)
    with pytest.raises(ValueError, match=r"answers must lie in the vocabulary 0..100; got \[4294967297\]"):
        integrated_gradients(model, TOKENS, np.array([1, 2**32 + 1], np.int64))
    with pytest.raises(ValueError, match=r"answers must be integer token ids, got dtype float64"):
        answer_probs(model, TOKENS, answers.astype(np.float64))


def test_neuron_rows_are_integers_checked_before_the_cast(llama):
    """(layer, neuron) rows were cast to int64 first: [[1.7, 3]] became (1, 3). Now refused, naming
    the value, in attribution and in skill_neurons (one check_neurons)."""
    import jax

    model, _ = llama
    F = model.cfg.d_mlp
    assert attr_mod.check_neurons(model.cfg, [2, 5], F).tolist() == [[2, 5]]
    assert attr_mod.check_neurons(model.cfg, [], F).shape == (0, 2)
    with pytest.raises(ValueError, match=r"neurons must be integer \(layer, neuron\) rows, got dtype float64 "
                                         r"\(\[\[1\.7, 3\.0\]\]\)"):
        neuron_factors(model, [[1.7, 3]], 0.0)
    with pytest.raises(ValueError, match=r"neurons layers \[3\] out of range: valid layers are 0..2"):
        neuron_factors(model, [[3, 1]], 0.0)
    with pytest.raises(ValueError, match=rf"neurons must be \(layer in 0..2, neuron in 0..{F - 1}\) rows; "
                                         rf"got neuron indices \[-1, {F}\]"):
        neuron_factors(model, [[0, -1], [1, F]], 0.0)
    with pytest.raises(ValueError, match=r"must be \(layer, neuron\) rows \[K, 2\], got shape \(4,\)"):
        neuron_factors(model, [0, 1, 2, 3], 0.0)
    with pytest.raises(ValueError, match=r"exclude must be integer \(layer, neuron\) rows, got dtype float64"):
        matched_random_neurons(model, [[0, 1]], np.random.default_rng(0), exclude=[[0.5, 2]])
    with pytest.raises(ValueError, match=r"neurons must be integer \(layer, neuron\) rows"):
        sn.noise_interventions(model, [[0.5, 3]], np.ones((3, F)), jax.random.key(0), 2, 6)
    with pytest.raises(ValueError, match=r"exclude must be integer \(layer, neuron\) rows"):
        sn.random_neurons(model, 2, exclude=[[0, 2.5]])


def test_knowledge_neuron_filter():
    """Threshold 0.2 x max per prompt, then kept only if shared by >= half the prompts."""
    a = np.zeros((3, 2, 5))
    a[:, 0, 1] = [1.0, 1.0, 1.0]  # top everywhere
    a[:, 1, 3] = [0.5, 0.3, 0.1]  # above 0.2 x max in 2 of 3 prompts
    a[:, 1, 4] = [0.3, 0.0, 0.0]  # in 1 of 3 prompts
    a[:, 0, 2] = [0.19, 0.19, 0.19]  # just below the threshold everywhere
    kn = knowledge_neurons(a, threshold=0.2, share=0.5)
    assert kn.tolist() == [[0, 1], [1, 3]]
    assert knowledge_neurons(a, threshold=0.2, share=1.0).tolist() == [[0, 1]]
    assert knowledge_neurons(a, threshold=0.2, share=0.3, layers=[4, 6]).tolist() == [[4, 1], [6, 3], [6, 4]]
    with pytest.raises(ValueError, match="threshold"):
        knowledge_neurons(a, threshold=0.0)
    with pytest.raises(ValueError, match="prompts, layers, neurons"):
        knowledge_neurons(a[0])


def test_scale_neurons_matches_per_layer_scale(llama):
    """The one-intervention neuron scaling equals composing a Scale per layer; x1 is a no-op."""
    model, answers = llama
    neurons = np.array([[0, 3], [0, 10], [2, 7]])
    iv = scale_neurons(model, neurons, 2.0)
    manual = [Scale("mlp_post", layer=0, factor=2.0, neurons=jnp.array([3, 10]), positions=jnp.array([-1])),
              Scale("mlp_post", layer=2, factor=2.0, neurons=jnp.array([7]), positions=jnp.array([-1]))]
    np.testing.assert_allclose(np.asarray(model(TOKENS, interventions=iv)), np.asarray(model(TOKENS, interventions=manual)),
                               atol=1e-6)
    np.testing.assert_array_equal(np.asarray(model(TOKENS, interventions=scale_neurons(model, neurons, 1.0))),
                                  np.asarray(model(TOKENS)))
    every = scale_neurons(model, neurons, 0.0, positions=None)
    manual0 = [Scale("mlp_post", layer=0, factor=0.0, neurons=jnp.array([3, 10])),
               Scale("mlp_post", layer=2, factor=0.0, neurons=jnp.array([7]))]
    np.testing.assert_allclose(np.asarray(model(TOKENS, interventions=every)),
                               np.asarray(model(TOKENS, interventions=manual0)), atol=1e-6)
    eff = neuron_effect(model, TOKENS, answers, neurons, 0.0)
    assert eff.shape == (2,) and np.all(eff >= -1)
    with pytest.raises(ValueError, match="neurons must be"):
        neuron_factors(model, [[0, model.cfg.d_mlp]], 0.0)
    with pytest.raises(ValueError, match="one int position or None"):
        scale_neurons(model, neurons, 0.0, positions=[1, 2])


def test_random_neurons_matched_per_layer(llama):
    model, _ = llama
    F = model.cfg.d_mlp
    rng = np.random.default_rng(0)
    kn = np.array([[0, 1], [0, 2], [2, 5]])
    r = matched_random_neurons(model, kn, rng)
    assert sorted(r[:, 0].tolist()) == [0, 0, 2] and r[:, 1].max() < F
    assert not {tuple(x) for x in r.tolist()} & {tuple(x) for x in kn.tolist()}
    with pytest.raises(ValueError, match="cannot draw"):
        matched_random_neurons(model, np.array([[0, i] for i in range(F // 2 + 1)]), rng,
                               exclude=np.array([[0, i] for i in range(F // 2, F)]))


@pytest.mark.slow
def test_last_position_paths_equal_full_sequence_runs(llama, monkeypatch):
    """IG at the last position and ``scaled_answer_probs`` reuse the clean prefix (one-token runs):
    equal to the full-sequence runs they replace, with left padding."""
    model, answers = llama
    mask = np.ones(TOKENS.shape, np.int32)
    mask[0, :2] = 0
    fast = integrated_gradients(model, TOKENS, answers, attention_mask=mask, layers=[0, 2], steps=3, rule="trapezoid")
    monkeypatch.setattr(attr_mod, "_last_position_only", lambda *a: False)
    slow = integrated_gradients(model, TOKENS, answers, attention_mask=mask, layers=[0, 2], steps=3, rule="trapezoid")
    monkeypatch.undo()
    np.testing.assert_allclose(fast.attributions, slow.attributions, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(fast.baseline, slow.baseline, rtol=1e-5)
    sets = [np.array([[0, 3], [1, 5]]), np.array([[2, 7]])]
    factors = np.stack([neuron_factors(model, sets[0], 0.0), neuron_factors(model, sets[1], 2.0)])
    got = scaled_answer_probs(model, TOKENS, answers, factors, attention_mask=mask, prompts_CP=np.array([[1, 0], [0, 0]]))
    for c, (nset, f) in enumerate(zip(sets, (0.0, 2.0))):
        want = answer_probs(model, TOKENS, answers, attention_mask=mask, interventions=scale_neurons(model, nset, f))
        np.testing.assert_allclose(got[c], want[[1, 0] if c == 0 else [0, 0]], rtol=1e-5)
    with pytest.raises(ValueError, match="factors_CLF must be"):
        scaled_answer_probs(model, TOKENS, answers, factors[:, :1])
