"""The README's main job: `interpjax demo` on the real checkpoint runs end to end and steers."""

from __future__ import annotations

import re
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


@needs_stories
def test_steer_prints_side_by_side_and_saves(tmp_path):
    vec = tmp_path / "dog.safetensors"
    out = subprocess.run([sys.executable, "-m", "interpjax.cli", "steer", "--model", str(STORIES), "--positive", " dog",
                          "--negative", " girl", "--layer", "3", "--coeff", "8", "--new-tokens", "30", "--prompt",
                          "Once upon a time, there was a little girl named", "--save", str(vec)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    header = next(l for l in out.stdout.splitlines() if l.startswith("unsteered"))
    assert "| steered (coeff 8.0)" in header
    rows = [l.split(" | ") for l in out.stdout.splitlines() if " | " in l][2:]
    left, right = " ".join(r[0].strip() for r in rows), " ".join(r[1].strip() for r in rows)
    assert "Lily. She loved to play outside in the park" in left and left != right
    from interpjax.methods.steering import SteeringVector

    v = SteeringVector.load(vec)
    assert (v.method, v.layer, v.meta["prompts"]) == ("actadd", 3, {"positive": [" dog"], "negative": [" girl"]})


@needs_stories
def test_read_writes_html_and_refuses_bad_input(tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("Lily got a new puppy. She felt\tLily lost her puppy. She felt\n"
                     "Tom won the race. He felt\tTom lost the race. He felt\n")
    page, png, rv = tmp_path / "scan.html", tmp_path / "scan.png", tmp_path / "rv.safetensors"
    out = subprocess.run([sys.executable, "-m", "interpjax.cli", "read", "--model", str(STORIES), "--pairs", str(pairs),
                          "--text", "Lily lost her toy and cried.", "--out", str(page), "--png", str(png), "--save", str(rv)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "<!DOCTYPE html>" in page.read_text() and png.stat().st_size > 0 and rv.stat().st_size > 0
    bad = tmp_path / "bad.html"
    for extra, msg in [(["--positive", "a"], "the negative contrast set is empty"),
                       (["--vector", str(rv), "--layers", "9"], r"--layers \[9\] not in the scanned layers")]:
        out = subprocess.run([sys.executable, "-m", "interpjax.cli", "read", "--model", str(STORIES), "--text", "hi",
                              "--out", str(bad)] + extra, capture_output=True, text=True, timeout=300)
        assert out.returncode != 0 and re.search(msg, out.stderr), out.stderr
    assert not bad.exists()  # nothing written half-way
