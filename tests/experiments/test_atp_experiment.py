"""experiments/atp (T1) on SmolLM2-135M-Instruct, in process: AtP's estimates of resid_pre patching
rank the exact effects far better than the same estimates shuffled, and the same check fails when
the estimate is replaced by its shuffled control."""

from __future__ import annotations

import numpy as np
import pytest

from interpjax.evidence import readme_blocks_match, readme_problems

from conftest import REPO, load_experiment, needs_real_lm

HERE = REPO / "experiments" / "atp"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def run():
    return load_experiment("atp")


@pytest.fixture(scope="module")
def quick(run, real_model, tmp_path_factory):
    """One quick run on resid_pre only (4 pairs, every 3rd layer), shared by the tests below."""
    out = tmp_path_factory.mktemp("atp")
    return run.main(["--quick", "--sites", "resid_pre", "--out", str(out)], model=real_model(MODEL))


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_atp_ranks_exact_patching_effects_against_a_shuffled_control(run, quick):
    per_set = quick["per_set"]
    assert quick["effect_holds"] and run.effect_holds(per_set)
    r = per_set[0]["resid_pre/AtP"]
    assert r["method"]["spearman_abs"] > 0.4 and r["cells"] == 10 * 6
    assert (quick.out / "agreement.md").is_file() and quick.out.parent != HERE / "results"


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_the_effect_check_fails_when_the_estimate_is_its_shuffled_control(run, quick):
    """Replace AtP's estimate by the control (its cells shuffled): the same predicate must fail."""
    swapped = [{k: (dict(v, method=v["shuffled"]) if k == "resid_pre/AtP" else v) for k, v in r.items()}
               for r in quick["per_set"]]
    assert not run.effect_holds(swapped)


def test_compare_scores_a_perfect_and_a_shuffled_estimate(run):
    rng = np.random.default_rng(0)
    exact = rng.normal(size=(6, 10))
    got, ctrl = run.compare(exact.copy(), exact, 3, np.random.default_rng(1))
    assert got["spearman_abs"] == pytest.approx(1.0) and got["recall"] == 1.0
    assert abs(ctrl["spearman_abs"]) < 0.5


def test_readme_meets_the_standard():
    assert readme_problems(HERE / "README.md") == []
    assert readme_blocks_match(HERE / "README.md", HERE / "results" / "full") == []
