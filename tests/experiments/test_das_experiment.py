"""experiments/das (M23) on the trained price-bracket decoder, in process: one quick run shared by
the tests. DAS's learned alignment beats its control at the answer cell, the same check fails when
DAS's correctness is replaced by the control's, the whole-state swap at the last layer's answer
position reproduces the copy-source-answer reference, and the README meets the standard."""

from __future__ import annotations

import json

import numpy as np
import pytest

from interpjax.evidence import readme_blocks_match, readme_problems

from conftest import REPO, load_experiment

HERE = REPO / "experiments" / "das"
CAUSAL = ("left_boundary", "left_right_boundary", "midpoint_distance", "bracket_identity")


@pytest.fixture(scope="module")
def run():
    return load_experiment("das")


@pytest.fixture(scope="module")
def quick(run, tmp_path_factory):
    """One quick run (one seed, 2-layer decoder, positions Z and answer), shared by the tests below."""
    out = tmp_path_factory.mktemp("das")
    return run.main(["--quick", "--out", str(out), "--workdir", str(out / "model")])


@pytest.mark.slow
def test_quick_run_records_every_causal_model_with_its_controls(quick):
    assert set(quick["summary"]) == set(CAUSAL)
    assert quick["model_test_accuracy"]["value"] > 0.8
    assert quick.out.parent != HERE / "results" and quick.out.name == "quick"
    for name in ("results.json", "iia.md", "best.md", "model.md", "iia.png"):
        assert (quick.out / name).stat().st_size > 0, name
    n_test = quick["settings"]["n_test"]
    # the per-pair re-evaluation of DAS reproduces the library's own hard-mask IIA
    assert quick["max_abs_gap_to_library_iia"] <= 2 / n_test
    for name in CAUSAL:
        for cell, st in quick["summary"][name].items():
            assert {"das", "whole", "random", "das_minus_whole", "claim"} <= set(st)
            assert st["das_minus_whole"]["lo"] <= st["das_minus_whole"]["value"] <= st["das_minus_whole"]["hi"]


@pytest.mark.slow
def test_whole_swap_at_the_last_answer_cell_hands_over_the_source_answer(quick):
    """Swapping the whole final residual of the last position gives the model's own answer on the
    source prompt (pair by pair), and so about the copy-source-answer reference."""
    for name in ("left_boundary", "midpoint_distance", "bracket_identity"):  # one source each
        r = quick.per_seed[0][name]
        assert np.mean(r["whole"][-1, -1] != r["source_answer"][0]) <= 0.01, name
        assert abs(r["whole"][-1, -1].mean() - r["copy_source_answer"]) < 0.15, name


@pytest.mark.slow
def test_das_beats_a_random_rotation_with_its_own_intervals(run, quick):
    assert quick["quick_effect"]["random"]
    assert run.quick_effect(quick.per_seed, "random", layers=quick["layers"], pos_names=quick["positions"])


@pytest.mark.slow
def test_the_effect_check_fails_when_das_is_replaced_by_its_control(run, quick):
    """Replace DAS's learned rotation by the control's random one (its per-pair correctness): the same
    predicate must fail."""
    swapped = [{n: dict(r, das=r["random"]) for n, r in s.items()} for s in quick.per_seed]
    assert not run.quick_effect(swapped, "random", layers=quick["layers"], pos_names=quick["positions"])


def test_claim_needs_the_interval_above_zero_and_every_seed(run):
    rng = np.random.default_rng(0)

    def seeds(p_das, p_whole, n=400):
        return [{"m": {"das": (rng.random((1, 1, n)) < a), "whole": (rng.random((1, 1, n)) < b),
                       "random": np.zeros((1, 1, n), bool)}} for a, b in zip(p_das, p_whole)]

    assert run.cell_stats(seeds([0.9, 0.9, 0.9], [0.6, 0.6, 0.6]), "m", 0, 0)["claim"]
    assert not run.cell_stats(seeds([0.7, 0.7, 0.7], [0.7, 0.7, 0.7]), "m", 0, 0)["claim"]
    # a large pooled gain carried by two seeds while the third loses is no claim
    assert not run.cell_stats(seeds([0.99, 0.99, 0.5], [0.5, 0.5, 0.6]), "m", 0, 0)["claim"]
    # nor is a DAS at chance (it learned to swap nothing) above a whole swap that hurts
    assert not run.cell_stats(seeds([0.5, 0.5, 0.5], [0.35, 0.35, 0.35]), "m", 0, 0)["claim"]


def test_bad_options_are_refused_before_compute(run, capsys):
    for argv, match in ((["--causal-models", "left,nope"], "choose from"), (["--seeds", "0,0"], "distinct"),
                        (["--seeds", "a"], "integers"), (["--das-steps", "0"], ">= 1")):
        with pytest.raises(SystemExit):
            run.main(["--quick"] + argv)
        assert match in capsys.readouterr().err


def test_tables_and_claims_are_derived_from_the_stored_numbers(run, tmp_path):
    """Re-deriving the committed full run's tables and claims from its results.json reproduces them."""
    full = HERE / "results" / "full"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "results.json").write_text((full / "results.json").read_text())
    run.main(["--retable", "--out", str(tmp_path)])
    for name in ("iia.md", "best.md"):
        assert (tmp_path / "full" / name).read_text() == (full / name).read_text(), name
    res = json.loads((tmp_path / "full" / "results.json").read_text())
    assert res["claims"] == json.loads((full / "results.json").read_text())["claims"]


def test_readme_meets_the_standard():
    assert readme_problems(HERE / "README.md") == []
    assert readme_blocks_match(HERE / "README.md", HERE / "results" / "full") == []
