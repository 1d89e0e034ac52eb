"""``benchmarks/bench_sae_bank.py --quick``: the bank-vs-sequential timing runs on tiny random
activations, writes its JSON, and the bank's members equal their one-at-a-time runs. Timings are
written, never asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_sae_bank  # noqa: E402


@pytest.mark.slow
def test_quick_bank_vs_sequential_runs_and_agrees(tmp_path):
    out = tmp_path / "sae_bank.json"
    assert bench_sae_bank.main(["--quick", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["members"] == 4 and res["d_sae"] == 8 * res["d_model"] == 256
    assert res["agreement"]["max_rel_diff_weights"] <= 1e-4
    assert res["bank"]["timed_s"] > 0 and res["sequential"]["timed_s"] > 0 and res["speedup"] > 0
    assert res["flops_per_member_step"] == 12 * 64 * 32 * 256
    assert res["machine"]["cpu_model"] and res["load_average"]["start"] is not None


def test_bad_arguments_are_refused_before_compute():
    with pytest.raises(SystemExit, match="--members"):
        bench_sae_bank.main(["--quick", "--members", "0"])
