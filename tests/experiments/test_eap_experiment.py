"""experiments/eap (T2) on SmolLM2-135M-Instruct, in process: the EAP-IG circuit chosen on selection
pairs is more faithful on held-out pairs than random circuits of the same size, and the same check
fails when the EAP-IG scores are replaced by their control (a shuffled ranking / random edge sets)."""

from __future__ import annotations

import numpy as np
import pytest

from interpjax.evidence import readme_blocks_match, readme_problems
from interpjax.methods import eap as E

from conftest import REPO, load_experiment, needs_real_lm

HERE = REPO / "experiments" / "eap"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def run():
    return load_experiment("eap")


@pytest.fixture(scope="module")
def quick(run, real_model, tmp_path_factory):
    """One quick run (one split of 4 selection + 4 held-out pairs, 5 sizes), shared by the tests below."""
    out = tmp_path_factory.mktemp("eap")
    return run.main(["--quick", "--out", str(out)], model=real_model(MODEL))


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_eap_ig_circuit_beats_random_circuits_on_heldout_pairs(run, quick):
    c, sizes = quick["curves_per_pair"], quick["sizes"]
    assert quick["effect_holds"] and run.effect_holds(c["EAP-IG"], c["random"], sizes)
    assert quick["tail_check_max_abs"] < 1e-3  # the answer tail leaves the metric of the bare prompts unchanged
    np.testing.assert_allclose(c["EAP-IG"][:, -1], 1.0, atol=1e-3)  # every edge kept: the clean run
    assert np.all(quick["metric_clean_per_pair"] > quick["metric_corrupt_per_pair"])
    assert (quick.out / "curve.md").is_file() and quick.out.parent != HERE / "results"


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_the_effect_check_fails_when_the_scores_are_their_control(run, quick, real_model):
    """Replace EAP-IG by its control: one random draw against the others (the quick run's numbers),
    and the EAP-IG scores shuffled among the valid edges, re-measured on the same held-out pairs."""
    sizes, rand_PRS = quick["sizes"], quick["random_per_pair_draw"]
    assert not run.effect_holds(rand_PRS[:, 0], rand_PRS[:, 1:].mean(1), sizes)
    art = quick.artifacts
    shuffled = run.shuffled_scores(art["scores"][0]["EAP-IG"], seed=1)
    cur = run.heldout_curves(real_model(MODEL), art["splits"][0]["heldout"], shuffled, sizes,
                             quick["config"]["n_random"], seed=0)
    assert not run.effect_holds(cur["method"], cur["random"].mean(1), sizes)


def _fake_scores(rng):
    s = rng.normal(size=(5, 7)).astype(np.float32)
    s[rng.random(s.shape) < 0.3] = np.nan
    return E.EdgeScores(s, tuple(f"u{i}" for i in range(5)), tuple(f"d{i}" for i in range(7)), "EAP-IG", 5, 2.0, -1.0)


def test_size_grid_shuffle_and_threshold_helpers(run):
    sizes = run.size_grid(70_000, 13)
    assert sizes[0] == 10 and sizes[-1] == 70_000 and np.all(np.diff(sizes) > 0) and len(sizes) == 13
    with pytest.raises(ValueError, match="n_sizes=1 invalid"):
        run.size_grid(100, 1)
    sc = _fake_scores(np.random.default_rng(0))
    sh = run.shuffled_scores(sc, seed=0)
    np.testing.assert_array_equal(np.isnan(sh.scores), np.isnan(sc.scores))
    np.testing.assert_allclose(np.sort(sh.scores[~np.isnan(sh.scores)]), np.sort(sc.scores[~np.isnan(sc.scores)]))
    curve = np.array([[0.1, 0.5, 0.95, 1.0], [0.0, 0.7, 0.7, 1.0]])
    sz = np.array([10, 100, 1000, 5000])
    assert run.smallest_size(curve, sz) == 1000 and run.smallest_size(curve, sz, level=0.5) == 100
    assert np.isnan(run.smallest_size(curve[:, :2], sz[:2]))


def test_effect_holds_needs_a_margin_over_random(run):
    rng = np.random.default_rng(0)
    sizes = np.arange(5)
    rand = rng.normal(0.0, 0.05, size=(6, 5))
    assert run.effect_holds(rand + 0.5, rand, sizes)
    assert not run.effect_holds(rand + 0.1, rand, sizes)
    assert not run.effect_holds(rand, rand, sizes)


def test_readme_meets_the_standard():
    assert readme_problems(HERE / "README.md") == []
    assert readme_blocks_match(HERE / "README.md", HERE / "results" / "full") == []
