"""Othello-GPT (M21) and program semantics (M24), in process on their quick settings.

Each quick run (a module-scoped fixture, one small model trained here) must show its effect against
its control, and the same check must fail when the method's core is replaced by that control:
Othello board probes on the trained model vs the untrained model (fails with a shuffled-label
probe), the probe edit vs a norm-matched random edit (fails with the random edit in its place);
for programs the positive-control probe vs its shuffled-label probe. The committed READMEs must
meet the evidence standard and match results/full."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from interpjax.evidence import readme_blocks_match, readme_problems

from conftest import REPO, load_experiment

OTHELLO = REPO / "experiments" / "othello"
PROGRAMS = REPO / "experiments" / "programs"


def _full_snapshot(folder):
    full = folder / "results" / "full"
    return sorted((p.name, p.stat().st_mtime_ns) for p in full.iterdir()) if full.is_dir() else []


@pytest.fixture(scope="module")
def othello():
    return load_experiment("othello")


@pytest.fixture(scope="module")
def programs():
    return load_experiment("programs")


@pytest.fixture(scope="module")
def othello_quick(othello, tmp_path_factory):
    """One quick Othello run (2 layers x 64, 300 steps, seed 0), shared by the tests below."""
    before = _full_snapshot(OTHELLO)
    out = tmp_path_factory.mktemp("othello")
    rec = othello.main(["--quick", "--out", str(out)])
    assert _full_snapshot(OTHELLO) == before  # --quick never touches results/full
    return rec


@pytest.fixture(scope="module")
def programs_quick(programs, tmp_path_factory):
    """One quick programs run (2 layers x 64, 200 steps, checkpoints 0 and 200, seed 0)."""
    before = _full_snapshot(PROGRAMS)
    out = tmp_path_factory.mktemp("programs")
    rec = programs.main(["--quick", "--out", str(out)])
    assert _full_snapshot(PROGRAMS) == before
    return rec


# ---------------------------------------------------------------------------------------------
# Othello-GPT


@pytest.mark.slow
def test_othello_board_probes_beat_the_untrained_model(othello, othello_quick):
    rec = othello_quick
    per_seed = rec["per_seed"]
    assert rec["probe_effect_holds"] and othello.probe_effect_holds(per_seed)
    r = per_seed["0"]
    # the trained model predicts legal moves far more often than a random-init one
    assert r["legal_rate"]["trained"]["lo"] > r["legal_rate"]["untrained"]["hi"] + 0.2
    # occupied squares: the colour (the world model) is what the trained model's probes read
    occ = r["probes"]["relative"]["mlp"]
    assert occ["trained"]["occupied"]["value"] < occ["shuffled"]["occupied"]["value"] - 0.05
    assert len(occ["trained"]["test_occupied_by_layer"]) == rec["settings"]["n_layers"]
    assert rec.out.parent != OTHELLO / "results"
    assert {"results.json", "probes.md", "legal.md", "edit.md", "training.png", "probes.png"} <= {
        p.name for p in rec.out.iterdir()}
    assert json.loads((rec.out / "results.json").read_text())["meta"]["quick"] is True


@pytest.mark.slow
def test_othello_probe_check_fails_for_a_shuffled_label_probe(othello, othello_quick):
    """Replace the trained model's probes by the shuffled-label control: the same predicate fails."""
    swapped = copy.deepcopy(othello_quick["per_seed"])
    for r in swapped.values():
        for kind in othello.KINDS:
            p = r["probes"]["relative"][kind]
            p["trained"] = p["shuffled"]
    assert not othello.probe_effect_holds(swapped)


@pytest.mark.slow
def test_othello_probe_edit_moves_predictions_to_the_edited_board(othello, othello_quick):
    per_seed = othello_quick["per_seed"]
    assert othello_quick["edit_effect_holds"] and othello.edit_effect_holds(per_seed)
    edit = per_seed["0"]["edit"]
    assert edit["n"] == 60 and edit["by_start_layer"][0]["probe_reads_edit"] >= 0.9
    head = edit["by_start_layer"][0]
    # newly legal moves gain log-probability under the probe edit, and lose it under the random edit
    assert head["probe"]["dlogp_gained"]["lo"] > 0 > head["random"]["dlogp_gained"]["value"]


@pytest.mark.slow
def test_othello_edit_check_fails_for_a_random_direction_edit(othello, othello_quick):
    """Replace the probe edit by the norm-matched random-direction edit: the same predicate fails."""
    swapped = copy.deepcopy(othello_quick["per_seed"])
    for r in swapped.values():
        r["edit"]["cases"]["probe"] = r["edit"]["cases"]["random"]
    assert not othello.edit_effect_holds(swapped)


def test_othello_edit_cases_flip_one_square_and_change_the_legal_moves(othello):
    games = othello.O.generate_games(20, seed=3)
    labels = othello.board_labels(games)
    e = othello.pick_edits(games, labels, np.arange(20), 15, seed=0)
    rel = labels["relative"][e["game"], e["pos"], e["square"]]
    assert (rel == e["src"]).all() and (e["dst"] == 3 - e["src"]).all()
    assert (e["legal_orig"] != e["legal_edit"]).any(1).all()
    assert len({(g, t, s) for g, t, s in zip(e["game"], e["pos"], e["square"])}) == 15


def test_othello_per_game_error_pools_positions_of_a_game(othello):
    wrong = np.array([[[1, 0], [0, 0], [1, 1]]], bool)  # [L=1, M=3, S=2]
    mask = np.array([[1, 1], [1, 0], [1, 1]], bool)
    err = othello.per_game_error(wrong, mask, np.array([4, 4, 9]))
    np.testing.assert_allclose(err, [[1 / 3, 1.0]])


def test_othello_bad_arguments_fail_before_compute(othello):
    with pytest.raises(ValueError, match="--margin"):
        othello.main(["--quick", "--margin", "0"])
    with pytest.raises(ValueError, match="--seeds"):
        othello.main(["--quick", "--seeds", "1", "1"])
    with pytest.raises(ValueError, match="--probe-seeds"):
        othello.main(["--quick", "--probe-seeds", "-2"])
    with pytest.raises(ValueError, match="probe kind"):
        othello.fit_probe("cubic", None, None, {}, 0)


def test_othello_readme_meets_the_standard():
    assert readme_problems(OTHELLO / "README.md") == []
    assert readme_blocks_match(OTHELLO / "README.md", OTHELLO / "results" / "full") == []
    meta = json.loads((OTHELLO / "results" / "full" / "results.json").read_text())["meta"]
    assert meta["quick"] is False and len(meta["seeds"]) >= 3


# ---------------------------------------------------------------------------------------------
# programs


@pytest.mark.slow
def test_programs_positive_control_probe_beats_shuffled_labels(programs, programs_quick):
    rec = programs_quick
    per_seed = rec["per_seed"]
    # the current instruction is linearly readable at its token: the probe pipeline reads what is there
    assert rec["positive_control_holds"]["instruction"] and programs.positive_control_holds(per_seed, "instruction")
    r = per_seed["0"]
    assert [e["step"] for e in r["evals"]] == [0, 200] and r["checkpoints"] == [0, 200]
    assert r["evals"][0]["gen_acc"]["value"] == 0.0  # an untrained model writes no valid program
    assert r["loss_curve"][-1]["loss"] < r["loss_curve"][0]["loss"]
    for e in r["evals"]:
        for name in programs.TARGETS:
            p = e["probe"][name]
            assert len(p["model"]["test_acc_by_layer"]) == rec["settings"]["n_layers"] and p["n_test"] > 50
    assert {"results.json", "probes.md", "by_checkpoint.md", "curves.png"} <= {p.name for p in rec.out.iterdir()}
    assert rec.out.parent != PROGRAMS / "results"


@pytest.mark.slow
def test_programs_positive_control_fails_for_a_shuffled_label_probe(programs, programs_quick):
    """Replace the positive-control probe by its shuffled-label control: the same predicate fails."""
    swapped = copy.deepcopy(programs_quick["per_seed"])
    for r in swapped.values():
        p = r["evals"][-1]["probe"]["instruction"]
        p["model"] = p["shuffled"]
    assert not programs.positive_control_holds(swapped, "instruction")


def test_programs_labels_hold_the_initial_facing_and_the_instruction(programs):
    ds = programs.G.make_dataset(6, seed=1, **programs.TASK_KW)
    n_idx, t_idx, labels = programs.probe_labels(ds)
    assert (labels["facing_start"] == np.array([t.inputs[0].facing for t in ds.tasks])[n_idx]).all()
    names = [programs.G.INSTRUCTIONS[i] for i in labels["instruction"]]
    assert names == [op for t in ds.tasks for op in t.program]


def test_programs_bad_seeds_fail_before_compute(programs):
    with pytest.raises(ValueError, match="--seeds"):
        programs.main(["--quick", "--seeds", "-1"])


def test_programs_readme_meets_the_standard():
    assert readme_problems(PROGRAMS / "README.md") == []
    assert readme_blocks_match(PROGRAMS / "README.md", PROGRAMS / "results" / "full") == []
    meta = json.loads((PROGRAMS / "results" / "full" / "results.json").read_text())["meta"]
    assert meta["quick"] is False and len(meta["seeds"]) >= 3
