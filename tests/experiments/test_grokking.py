"""Grokking (M25): the quick run groks with weight decay and not without, the same predicate fails
when weight decay is replaced by 0, and the committed README matches results/full."""

from __future__ import annotations

import json

import pytest

from conftest import load_experiment, REPO
from interpjax import evidence

HERE = REPO / "experiments" / "grokking"


def _experiment():
    return load_experiment("grokking")


@pytest.mark.slow
def test_grokking_quick(tmp_path):
    full = sorted((p.name, p.stat().st_mtime_ns) for p in (HERE / "results" / "full").iterdir())
    g = _experiment()
    r = g.main(["--quick", "--out", str(tmp_path)])
    # with weight decay the seed memorises, then groks later; with weight decay 0 it does not
    assert g.effect_holds(r)
    wd, wd0 = r["per_seed"]["0"]["wd"], r["per_seed"]["0"]["wd0"]
    assert wd["test_acc_at_memorised"] < 0.9
    assert wd0["final_train_acc"] >= g.MEMORISED and wd0["grok_step"] is None
    # --quick writes only under <out>/quick and never touches results/full
    assert [p.name for p in tmp_path.iterdir()] == ["quick"]
    names = {p.name for p in (tmp_path / "quick").iterdir()}
    assert {"results.json", "metrics.jsonl", "grokking.md", "per_seed.md", "ungrok.md", "curves.png",
            "ungrok.png"} <= names
    rows = [json.loads(line) for line in (tmp_path / "quick" / "metrics.jsonl").read_text().splitlines()]
    assert {r["run"] for r in rows} == {"wd", "wd0", "ungrok_small", "ungrok_same"}
    assert {"train_loss", "train_acc", "test_loss", "test_acc", "param_norm"} <= set(rows[0])
    assert json.loads((tmp_path / "quick" / "results.json").read_text())["meta"]["quick"] is True
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (HERE / "results" / "full").iterdir()) == full


@pytest.mark.slow
def test_grokking_fails_without_weight_decay(tmp_path, monkeypatch):
    """The companion: weight decay (the method's core) replaced by 0 in both arms -> no grokking."""
    g = _experiment()
    real = g.optimiser
    monkeypatch.setattr(g, "optimiser", lambda lr, weight_decay, log_every: real(lr, 0.0, log_every))
    r = g.main(["--quick", "--out", str(tmp_path), "--ungrok-steps", "25"])
    assert r["per_seed"]["0"]["wd"]["grok_step"] is None
    assert not g.effect_holds(r)


def test_grokking_readme():
    readme = HERE / "README.md"
    assert evidence.readme_problems(readme) == []
    assert evidence.readme_blocks_match(readme, HERE / "results" / "full") == []
    res = json.loads((HERE / "results" / "full" / "results.json").read_text())
    assert res["meta"]["quick"] is False and len(res["meta"]["seeds"]) >= 3
    assert (HERE / "results" / "full" / "metrics.jsonl").stat().st_size < 2_000_000
