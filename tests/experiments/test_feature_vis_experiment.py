"""experiments/feature_vis (M16) on SmolLM2-135M-Instruct, in process: soft inputs optimised for
MLP neurons reach more than the held-out dataset maximum, and more than the optimiser's start and
norm-matched random rows; the same check fails when the optimisation is replaced by its start
(learning rate 0). Plus the helpers and the README against results/full."""

from __future__ import annotations

import numpy as np
import pytest

from interpjax.evidence import readme_blocks_match, readme_problems

from conftest import REPO, load_experiment, needs_real_lm

HERE = REPO / "experiments" / "feature_vis"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def run():
    return load_experiment("feature_vis")


@pytest.fixture(scope="module")
def quick(run, real_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("feature_vis")
    return run.main(["--quick", "--out", str(out)], model=real_model(MODEL)), out


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_optimised_soft_inputs_beat_the_dataset_max_and_the_controls(run, quick):
    rec, out = quick
    assert rec["effect_holds"] and run.effect_holds(rec["summary"])
    for u in rec["units"]:  # every unit, not only the mean
        assert min(u["soft"]) > 1.0 > max(u["start"])
        assert min(u["soft"]) > max(u["random_rows"])
        assert u["dataset_max"] > 0 and u["soft_nearest_tokens"]
    assert [p.name for p in out.iterdir()] == ["quick"]
    assert {"results.json", "summary.md", "effect.md", "units.md", "ratios.png"} <= {p.name for p in (out / "quick").iterdir()}


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_the_effect_check_fails_when_the_optimiser_does_not_move(run, real_model, tmp_path, monkeypatch):
    """The companion: the optimisation replaced by its control, the starting point (lr = 0)."""
    core = run.soft_inputs

    def frozen(model, obj, s, seed, prefix, allowed, **extra):
        return core(model, obj, dict(s, lr=0.0), seed, prefix, allowed, **extra)

    monkeypatch.setattr(run, "soft_inputs", frozen)
    monkeypatch.setitem(run.QUICK, "steps", 2)
    rec = run.main(["--quick", "--out", str(tmp_path)], model=real_model(MODEL))
    assert not run.effect_holds(rec["summary"])


def test_random_rows_keep_the_norms_and_scaling_needs_positive_maxima(run):
    rows = np.random.default_rng(0).normal(size=(2, 1, 3, 8)).astype(np.float32) * 4
    r = run.random_rows_like(rows, 0)
    np.testing.assert_allclose(np.linalg.norm(r, axis=-1), np.linalg.norm(rows, axis=-1), rtol=1e-5)
    assert abs(float((r * rows).sum() / (np.linalg.norm(r) * np.linalg.norm(rows)))) < 0.5
    from interpjax.methods import feature_vis as FV

    obj = FV.Objective("mlp_post", 0, np.eye(2, dtype=np.float32), ("a", "b"))
    np.testing.assert_allclose(run.scaled(obj, np.array([2.0, 4.0])).vectors_UF, np.diag([0.5, 0.25]))
    with pytest.raises(ValueError, match="positive dataset maximum"):
        run.scaled(obj, np.array([1.0, -0.5]))


def test_effect_check_needs_the_max_beaten_and_both_controls(run):
    ok = {"soft": {"value": 3.0, "lo": 2.0}, "soft_minus_start": {"lo": 1.0}, "soft_minus_random_rows": {"lo": 1.0},
          "start": {"value": 0.3}, "random_rows": {"value": 0.2}}
    assert run.effect_holds(ok)
    assert not run.effect_holds({**ok, "soft": {"value": 1.5, "lo": 0.9}})
    assert not run.effect_holds({**ok, "soft_minus_random_rows": {"lo": -0.1}})
    assert not run.effect_holds({**ok, "random_rows": {"value": 1.2}})


def test_readme_meets_the_standard():
    readme = HERE / "README.md"
    assert readme_problems(readme) == []
    assert readme_blocks_match(readme, HERE / "results" / "full") == []
