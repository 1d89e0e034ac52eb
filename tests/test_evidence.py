"""interpjax.evidence: bootstrap intervals cover, bad input is refused, results and README blocks stay in step."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from interpjax import evidence as ev


def test_bootstrap_interval_covers_the_true_mean_at_about_its_level():
    rng = np.random.default_rng(0)
    hits = 0
    for i in range(200):
        x = rng.normal(1.0, 2.0, size=60)
        s = ev.bootstrap_ci(x, n_boot=500, seed=i)
        assert s["lo"] <= s["value"] <= s["hi"] and s["n"] == 60
        hits += s["lo"] <= 1.0 <= s["hi"]
    assert 0.88 <= hits / 200 <= 0.99  # nominal 0.95; percentile bootstrap runs slightly narrow at n=60


def test_bootstrap_with_a_custom_statistic_and_the_paired_difference():
    x = np.arange(11.0)
    med = ev.bootstrap_ci(x, stat=np.median, n_boot=300)
    assert med["value"] == 5.0 and med["lo"] <= 5.0 <= med["hi"]
    a = np.linspace(0, 1, 50)
    d = ev.paired_bootstrap_diff(a + 0.5, a)
    assert d["value"] == pytest.approx(0.5) and d["lo"] == pytest.approx(0.5) and d["p_le_0"] == 0.0
    noise = ev.paired_bootstrap_diff(np.random.default_rng(1).normal(size=50), np.zeros(50))
    assert noise["lo"] < 0 < noise["hi"]


def test_seed_summary_uses_student_t():
    s = ev.seed_summary([1.0, 2.0, 3.0])
    assert s["value"] == 2.0 and s["hi"] - 2.0 == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    one = ev.seed_summary([0.7])
    assert one["value"] == 0.7 and math.isnan(one["lo"])
    assert ev.fmt_ci(s) == "2.00 [-0.48, 4.48]" and ev.fmt_ci(one) == "0.70"


@pytest.mark.parametrize("bad, match", [([], "non-empty"), ([[1.0, 2.0]], "1-D"), ([1.0, float("nan")], "non-finite")])
def test_bad_samples_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        ev.bootstrap_ci(bad)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="level"):
        ev.bootstrap_ci([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match="n_boot"):
        ev.bootstrap_ci([1.0, 2.0], n_boot=10)
    with pytest.raises(ValueError, match="equal lengths"):
        ev.paired_bootstrap_diff([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="3 cells, the header has 2"):
        ev.markdown_table(["a", "b"], [[1, 2, 3]])


def test_record_writes_full_or_quick_with_provenance(tmp_path):
    exp = tmp_path / "myexp"
    exp.mkdir()
    rec = ev.Record(exp, quick=True, model="m", seeds=[0, 1, 2], argv=["run.py", "--quick"])
    rec["effect"] = {"value": np.float32(0.5), "arr": np.arange(3)}
    rec.table("table.md", ev.markdown_table(["x"], [[1]]))
    rec.save()
    assert not (exp / "results" / "full").exists()
    res = json.loads((exp / "results" / "quick" / "results.json").read_text())
    assert res["effect"] == {"value": 0.5, "arr": [0, 1, 2]}
    assert res["meta"]["seeds"] == [0, 1, 2] and res["meta"]["quick"] is True and res["meta"]["model"] == "m"
    assert res["meta"]["command"] == "python run.py --quick" and res["meta"]["wall_s"] >= 0 and res["meta"]["commit"]
    with pytest.raises(ValueError, match="ending in .md"):
        rec.table("../x.md", "")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    rec.figure("fig.png", fig)  # saved, then closed: recorded figures do not pile up in pyplot
    assert (exp / "results" / "quick" / "fig.png").stat().st_size > 0 and not plt.fignum_exists(fig.number)
    with pytest.raises(ValueError, match="does not exist"):
        ev.Record(tmp_path / "nope", quick=False, model=None, seeds=[0])


def test_readme_blocks_sync_and_detect_stale_copies(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "table.md").write_text("| a |\n|---|\n| 1.23 |\n")
    readme = tmp_path / "README.md"
    readme.write_text("# X (M12)\n\ntext\n<!-- results: table.md -->\nold typed numbers\n<!-- /results -->\n\n"
                      "Verdict: partly — 1.23 vs the paper's 2.0\n")
    assert ev.readme_blocks_match(readme, res) == [f"{readme}: block 'table.md' differs from {res / 'table.md'}"]
    assert ev.sync_readme(readme, res) == ["table.md"]
    assert "1.23" in readme.read_text() and "old typed" not in readme.read_text()
    assert ev.readme_blocks_match(readme, res) == [] and ev.readme_problems(readme) == []
    (res / "table.md").write_text("| a |\n|---|\n| 9.99 |\n")
    assert ev.readme_blocks_match(readme, res)  # the committed table changed: the README copy is stale
    readme.write_text("# X\n\n<!-- results: gone.md -->\n<!-- /results -->\nVerdict: maybe\n")
    probs = ev.readme_problems(readme)
    assert any("METHODS.md id" in p for p in probs) and any("last line" in p for p in probs)
    with pytest.raises(ValueError, match="gone.md"):
        ev.sync_readme(readme, res)
