"""experiments/knowledge_neurons in-process on SmolLM2-135M-Instruct: the effect against its
activation-matched control on a small setting, the same predicate failing when the IG-based
neuron selection is replaced by random neurons, and the results/README bookkeeping."""

from __future__ import annotations


import numpy as np
import pytest

from interpjax import evidence

from conftest import load_experiment, REPO, needs_real_lm

HERE = REPO / "experiments" / "knowledge_neurons"
# a small setting: 6 known facts, IG over the last 4 layers with 4 steps, 3 control seeds
SMALL = ["--quick", "--layers", "26-29", "--max-facts", "6", "--n-unrelated", "4"]


def _experiment():
    return load_experiment("knowledge_neurons")


@pytest.fixture(scope="module")
def kn():
    return _experiment()


@pytest.fixture(scope="module")
def quick_run(kn, real_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("kn_quick")
    return out, kn.main(SMALL + ["--out", str(out)], model=real_model("smollm2-135m-instruct"))


@needs_real_lm("smollm2-135m-instruct")
@pytest.mark.slow
def test_knowledge_neurons_beat_matched_random_on_heldout_paraphrases(kn, quick_run):
    _, res = quick_run
    assert kn.effect_holds(res), res["heldout"]["suppress"]
    assert res["n_facts"] >= 4


@needs_real_lm("smollm2-135m-instruct")
@pytest.mark.slow
def test_random_selection_fails_the_same_predicate(kn, real_model, tmp_path, monkeypatch):
    """IG kept, selection replaced by as many uniformly random neurons in the same layers."""
    select = kn.select_neurons

    def random_selection(attr_PLF, layers, threshold):
        found = select(attr_PLF, layers, threshold)
        rng = np.random.default_rng(len(found))
        out = found.copy()
        for layer in np.unique(found[:, 0]):
            rows = found[:, 0] == layer
            out[rows, 1] = rng.choice(attr_PLF.shape[-1], int(rows.sum()), replace=False)
        return out

    monkeypatch.setattr(kn, "select_neurons", random_selection)
    res = kn.main(SMALL + ["--out", str(tmp_path)], model=real_model("smollm2-135m-instruct"))
    assert not kn.effect_holds(res), res["heldout"]["suppress"]


@needs_real_lm("smollm2-135m-instruct")
@pytest.mark.slow
def test_quick_writes_only_under_results_quick(quick_run):
    out, res = quick_run
    assert [p.name for p in out.iterdir()] == ["quick"]
    assert res["out"] == out / "quick"
    for name in ("results.json", "effects.md", "control_seeds.md", "setup.md", "effects.png"):
        assert (out / "quick" / name).stat().st_size > 0, name


def test_readme_meets_the_standard():
    assert evidence.readme_problems(HERE / "README.md") == []
    assert evidence.readme_blocks_match(HERE / "README.md", HERE / "results" / "full") == []


def test_activation_matched_control_stays_in_layer_and_near_in_activation():
    from interpjax.methods.attribution import activation_matched_neurons

    scores = np.tile(np.arange(50, dtype=float), (3, 1))
    neurons = np.array([[0, 10], [2, 40], [2, 41]])
    got = activation_matched_neurons(neurons, scores, np.random.default_rng(0), pool=3)
    assert got[:, 0].tolist() == [0, 2, 2]
    assert not {tuple(r) for r in got.tolist()} & {tuple(r) for r in neurons.tolist()}
    assert np.all(np.abs(got[:, 1] - neurons[:, 1]) <= 3) and len({tuple(r) for r in got.tolist()}) == 3
    with pytest.raises(ValueError, match="pool"):
        activation_matched_neurons(neurons, scores, np.random.default_rng(0), pool=0)
