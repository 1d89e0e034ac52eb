"""The README's main job: `interpjax demo` on the real checkpoint runs end to end and steers."""

from __future__ import annotations

import subprocess
import sys

from conftest import STORIES, needs_stories


@needs_stories
def test_demo_runs_and_steers():
    out = subprocess.run([sys.executable, "-m", "interpjax.cli", "demo", "--model", str(STORIES)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    plain = next(l for l in lines if l.startswith("[plain]"))
    steered = next(l for l in lines if l.startswith("[steered]"))
    assert "named Lily. She loved to play" in plain
    assert "Lily" not in steered  # the ' dog' - ' girl' vector changes who the story is about
    assert "[patching]" in out.stdout and "layer  4" in out.stdout


@needs_stories
def test_sites_listing():
    out = subprocess.run([sys.executable, "-m", "interpjax.cli", "sites", "--model", str(STORIES), "--seq", "4"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "attn_scores (1, 8, 4, 4)" in " ".join(out.stdout.split())
