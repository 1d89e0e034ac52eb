"""Experiments run end to end in quick mode and show (the beginning of) their effect."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_grokking_quick(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "experiments/grokking/run.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "quick" / "results.json").read_text())
    assert res["memorised_step"] is not None  # train accuracy reaches 1
    assert res["final"]["acc"] >= 0.99 and res["final"]["eval_acc"] < 0.9  # memorised, not generalised yet
    assert res["ungrok"]["end_test_acc"] < res["ungrok"]["start_test_acc"]
    assert (tmp_path / "quick" / "curves.png").stat().st_size > 0
