"""experiments/task_vectors (M2, M8) in-process on SmolLM2-135M-Instruct: the task-vector effect
against its other-task control, the same assertion failing with random vectors, and the README."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import load_experiment, needs_real_lm

from interpjax import evidence

HERE = Path(__file__).resolve().parents[2] / "experiments" / "task_vectors"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tvrun():
    return load_experiment("task_vectors")


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_quick_task_vectors_beat_control_and_write_only_quick(tvrun, real_model, monkeypatch, tmp_path):
    import interpjax

    model = real_model(MODEL)
    monkeypatch.setattr(interpjax, "load", lambda name: model)  # the session's model, not a second load
    r = tvrun.main(["--quick", "--out", str(tmp_path)])
    assert tvrun.effect_holds(r)
    m = r["task_vectors"]["mean"]
    assert m["task_vector"]["value"] > m["other_task"]["value"] + 0.3  # measured 0.8 vs 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quick"]
    for f in ("results.json", "task_vectors.md", "by_layer.md", "by_layer.png", "tsne.png"):
        assert (tmp_path / "quick" / f).stat().st_size > 0, f
    assert '"quick": true' in (tmp_path / "quick" / "results.json").read_text()


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_random_task_vectors_fail_the_same_assertion(tvrun, real_model, monkeypatch):
    """The method's core (the mean last-position residual of ICL prompts) replaced by norm-matched
    random vectors: the effect must vanish."""
    real = tvrun.last_states
    rng = np.random.default_rng(0)

    def random_resid(model, tokens, mask):
        states = real(model, tokens, mask)
        x = states["resid_pre"]
        noise = rng.normal(size=x.shape).astype(np.float32)
        states["resid_pre"] = noise * np.linalg.norm(x, axis=-1, keepdims=True) / np.linalg.norm(noise, axis=-1,
                                                                                                  keepdims=True)
        return states

    monkeypatch.setattr(tvrun, "last_states", random_resid)
    r = tvrun.run(real_model(MODEL), tvrun.QUICK, prefix=tvrun.PREFIX[MODEL], out=None)
    assert not tvrun.effect_holds(r)


def test_effect_holds_reads_both_intervals(tvrun):
    good = {"lo": 0.1}
    bad = {"lo": 0.0}
    assert tvrun.effect_holds({"task_vectors": {"tv_minus_other_task": good, "tv_minus_baseline": good}})
    assert not tvrun.effect_holds({"task_vectors": {"tv_minus_other_task": bad, "tv_minus_baseline": good}})
    assert not tvrun.effect_holds({"task_vectors": {"tv_minus_other_task": good, "tv_minus_baseline": bad}})


def test_splits_are_disjoint(tvrun):
    from interpjax.worlds import word_tasks

    task = word_tasks.make_tasks(["antonym"])[0]
    dev, test, src = tvrun.split_queries(task, tvrun.FULL, np.random.default_rng(0))
    assert len(dev) == tvrun.FULL["n_dev"] and len(test) == tvrun.FULL["n_test"]
    assert not set(dev) & set(test) and not set(src) & set(test)
    with pytest.raises(ValueError, match="distinct queries"):
        tvrun.split_queries(task, dict(tvrun.FULL, n_test=100), np.random.default_rng(0))


def test_readme_meets_the_standard():
    readme = HERE / "README.md"
    assert evidence.readme_problems(readme) == []
    assert evidence.readme_blocks_match(readme, HERE / "results" / "full") == []
