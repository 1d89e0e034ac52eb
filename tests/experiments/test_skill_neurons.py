"""experiments/skill_neurons (M18) in process on SmolLM2-135M-Instruct: the top AUROC neurons stay
predictive on held-out label words and noising them costs more accuracy than noising random
neurons of the same layers and size; with a random ranking in place of the method the same
predicate fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from interpjax.evidence import readme_blocks_match, readme_problems
from interpjax.methods import skill_neurons as sn

from conftest import load_experiment, needs_real_lm

HERE = Path(__file__).resolve().parents[2] / "experiments" / "skill_neurons"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def run():
    return load_experiment("skill_neurons")


@pytest.fixture(scope="module")
def quick(run, real_model, tmp_path_factory):
    """One quick run (SmolLM2, topic task, 3% of neurons noised, 3 seeds), shared below."""
    out = tmp_path_factory.mktemp("skill_neurons")
    return run.main(["--quick", "--out", str(out)], loaded={MODEL: real_model(MODEL)}), out


@needs_real_lm(MODEL)
@pytest.mark.slow
def test_quick_skill_neurons_beat_their_controls(quick, run):
    result, out = quick
    (r,) = result["settings"].values()
    assert r["clean_accuracy"]["value"] > 0.9
    assert run.effect_holds(result)
    # --quick writes only under quick/
    assert sorted(p.name for p in out.iterdir()) == ["quick"]
    for f in ("results.json", "summary.md", "predictivity.md", "perturbation.md", "perturbation.png"):
        assert (out / "quick" / f).stat().st_size > 0, f


@needs_real_lm(MODEL)
@pytest.mark.slow
def test_effect_fails_when_the_ranking_is_random(quick, run, real_model, monkeypatch):
    """Replace the AUROC ranking by a random order of all neurons: the predicate must fail."""
    result, _ = quick
    (c,) = result["collected"].values()

    def random_ranking(acts_LNF, labels_N, k):
        L, _, F = acts_LNF.shape
        flat = np.random.default_rng(0).permutation(L * F)[:k]
        pred = sn.predictivity(acts_LNF, labels_N)
        neurons = np.stack([flat // F, flat % F], 1)
        return sn.SkillNeurons(neurons, pred.score[neurons[:, 0], neurons[:, 1]], pred)

    monkeypatch.setattr(run, "rank_neurons", random_ranking)
    control = run.analyse(real_model(MODEL), c, fractions=result["config"]["fractions"], seeds=[0, 1, 2])
    assert not run.effect_holds({"settings": {"random ranking": control}})


def test_tasks_are_balanced_with_disjoint_label_words(run):
    for task, words in (("sentiment", run.POSITIVE + run.NEGATIVE), ("topic", run.SPORTS + run.SCIENCE)):
        data = run.make_task(task, 64, 32)
        used = {}
        for split, (texts, labels) in data.items():
            assert len(texts) == len(labels) and labels.mean() == 0.5
            used[split] = {w for w in words if any(w in t for t in texts)}
        assert not used["train"] & used["test"]
    with pytest.raises(ValueError, match="only"):
        run.make_task("topic", 400, 32)
    with pytest.raises(ValueError, match="unknown task"):
        run.make_task("grammar", 8, 8)


def test_readme_meets_the_standard_and_matches_full_results():
    assert readme_problems(HERE / "README.md") == []
    assert readme_blocks_match(HERE / "README.md", HERE / "results" / "full") == []
