"""Othello-GPT and program-semantics experiments run end to end in quick mode and show their effect."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO


def _run(name, tmp_path):
    out = subprocess.run([sys.executable, str(REPO / f"experiments/{name}/run.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((tmp_path / "quick" / "results.json").read_text())


@pytest.mark.slow
def test_othello_quick(tmp_path):
    res = _run("othello", tmp_path)
    # the trained model predicts legal moves far more often than a random-init one
    assert res["legal_move_rate"] > res["untrained_legal_move_rate"] + 0.2
    for kind in ("relative", "absolute"):
        trained, untrained = res["probes"]["trained"][kind], res["probes"]["untrained"][kind]
        # board-state probes on the trained model beat the same probes on the untrained model
        assert min(trained["linear_error"]) < min(untrained["linear_error"]) - 0.02
        assert min(trained["mlp_error"]) < min(untrained["mlp_error"]) - 0.02
        assert min(trained["linear_error"]) < trained["majority_error"]
    edit = res["intervention"]
    assert edit["n"] == 60 and len(edit["by_start_layer"]) == res["model"]["n_layers"]
    # the edit makes the probe read the intended (edited) square state, and moves the model's
    # predictions towards the edited board: newly legal moves gain, newly illegal moves lose
    # probability -- unlike an edit of the same size along a random direction
    assert all(r["probe_reads_edit"] >= 0.9 for r in edit["by_start_layer"])
    first = edit["by_start_layer"][0]
    assert first["dlogp_gained"] > 0 > first["dlogp_lost"]
    assert first["frac_gained_up"] > first["random_direction"]["frac_gained_up"] + 0.1
    for png in ("training.png", "probes.png"):
        assert (tmp_path / "quick" / png).stat().st_size > 0


@pytest.mark.slow
def test_programs_quick(tmp_path):
    res = _run("programs", tmp_path)
    assert [e["step"] for e in res["evals"]] == [0, 200]
    assert res["checkpoints"] == [0, 200]  # every evaluated checkpoint is kept on disk
    first = res["evals"][0]
    assert first["gen_acc"] == 0.0  # an untrained model writes no valid program
    for e in res["evals"]:
        assert 0.0 <= e["gen_acc"] <= 1.0
        for name in ("facing", "facing_next", "facing_next2"):
            p = e["probe"][name]
            assert len(p["acc_by_layer"]) == res["model"]["n_layers"] and p["n_test"] > 100
            assert np.isclose(p["best"], max(p["acc_by_layer"]), atol=1e-4)
    # training lowers the program loss
    assert res["loss_curve"][-1]["loss"] < res["loss_curve"][0]["loss"]
    assert (tmp_path / "quick" / "curves.png").stat().st_size > 0
