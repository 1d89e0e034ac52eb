"""Causal effects of data statistics (M13): on the quick run the model's held-out predictions follow
the subject's co-occurring object and deleting it (not the size-matched control) lowers that
share; the same predicate fails when the intervention is replaced by its control; the committed
README matches results/full."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, load_experiment
from interpjax import evidence

HERE = REPO / "experiments" / "data_stats"


def _experiment():
    return load_experiment("data_stats")


@pytest.mark.slow
def test_data_stats_quick(tmp_path):
    full = HERE / "results" / "full"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in full.iterdir()) if full.exists() else []
    g = _experiment()
    r = g.main(["--quick", "--out", str(tmp_path)])
    assert g.effect_holds(r)
    sh = r["shares"]
    # the model learned its stated facts, and the held-out SOC share is far above both chance rates
    assert sh["base/known_gold_acc"]["value"] > 0.9
    assert sh["base/all/soc"]["pooled"]["value"] > 3.0 / g.QUICK["n_objects"]
    assert sh["base/all/soc"]["pooled"]["value"] > sh["base/all/other_soc"]["pooled"]["hi"]
    # the control intervention works on the subjects it touches (B), not on A
    assert sh["control/B/soc"]["pooled"]["value"] < sh["base/B/soc"]["pooled"]["value"]
    seed = r["per_seed"]["0"]
    assert seed["removed_tokens"]["intervention"] == seed["removed_tokens"]["control"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["quick"]
    names = {p.name for p in (tmp_path / "quick").iterdir()}
    assert {"results.json", "explained.md", "causal.md", "per_seed.md", "shares.png"} <= names
    assert json.loads((tmp_path / "quick" / "results.json").read_text())["meta"]["quick"] is True
    after = sorted((p.name, p.stat().st_mtime_ns) for p in full.iterdir()) if full.exists() else []
    assert after == before


@pytest.mark.slow
def test_data_stats_fails_when_the_intervention_is_its_control(tmp_path, monkeypatch):
    """The companion: the intervention arm given the control's corpus -> no causal effect on A."""
    g = _experiment()
    monkeypatch.setattr(g, "intervention_corpus", g.control_corpus)
    r = g.main(["--quick", "--out", str(tmp_path)])
    assert r["effect"]["soc_vs_chance"]["lo"] > 0.0  # the correlational half still holds
    assert not g.effect_holds(r)


def test_data_stats_readme():
    readme = HERE / "README.md"
    assert evidence.readme_problems(readme) == []
    assert evidence.readme_blocks_match(readme, HERE / "results" / "full") == []
    res = json.loads((HERE / "results" / "full" / "results.json").read_text())
    assert res["meta"]["quick"] is False and len(res["meta"]["seeds"]) >= 3
    assert res["effect_holds"] is True or "not reproduced" in readme.read_text().strip().splitlines()[-1]
