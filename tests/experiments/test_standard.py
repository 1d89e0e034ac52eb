"""Every experiment folder against the mechanical points of experiments/README.md (the evidence standard)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from conftest import REPO
from interpjax import evidence as ev

EXP = REPO / "experiments"
FOLDERS = sorted(p.name for p in EXP.iterdir() if (p / "run.py").exists())


def _status_table() -> dict[str, str]:
    rows = re.findall(r"^\| (\w+) \| ([MT][\d, MT]+) \| (meets|pending)\b", (EXP / "README.md").read_text(), re.M)
    return {folder: status for folder, _, status in rows}


def test_the_standard_lists_every_experiment_once():
    assert sorted(_status_table()) == FOLDERS


@pytest.mark.parametrize("folder", FOLDERS)
def test_readme_names_its_method_and_ends_with_a_verdict(folder):
    assert ev.readme_problems(EXP / folder / "README.md") == []


@pytest.mark.parametrize("folder", FOLDERS)
def test_experiments_that_meet_the_standard_have_produced_results(folder):
    if _status_table()[folder] != "meets":
        pytest.skip(f"{folder} is listed as pending in experiments/README.md")
    full = EXP / folder / "results" / "full"
    meta = json.loads((full / "results.json").read_text())["meta"]
    assert meta["quick"] is False and len(meta["seeds"]) >= 1 and meta["wall_s"] > 0 and meta["commit"]
    assert ev.readme_blocks_match(EXP / folder / "README.md", full) == []


def test_quick_results_are_never_committed():
    tracked = subprocess.run(["git", "ls-files", "experiments"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert not [p for p in tracked if "/results/quick/" in p]
    assert "experiments/*/results/quick/" in (REPO / ".gitignore").read_text()
