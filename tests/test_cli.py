"""The README's main job: `interpjax demo` on the real checkpoint runs end to end and steers; every
user error is one line on stderr with exit status 2 and no traceback, found before any work."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import STORIES, needs_real_lm, needs_stories


def _demo_output(out):
    """The demo's answers and patching numbers, parsed from its stdout."""
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    plain = next(l for l in lines if l.startswith("[plain]"))[len("[plain]"):].strip()
    steered = next(l for l in lines if l.startswith("[steered]"))[len("[steered]"):].strip()
    gap = re.search(r"logit difference clean ([-+][\d.]+), corrupted ([-+][\d.]+)", out.stdout)
    best = re.search(r"best: resid_pre layer (\d+) position (\d+) .* gives ([-+][\d.]+), recovering (-?\d+)%",
                     out.stdout)
    assert gap and best, out.stdout
    return plain, steered, (float(gap[1]), float(gap[2])), (int(best[1]), int(best[2]), float(best[3]), int(best[4]))


def _demo_env(model=None):
    env = {k: v for k, v in os.environ.items() if k != "INTERPJAX_MODEL"}
    return env if model is None else {**env, "INTERPJAX_MODEL": str(model)}


@pytest.mark.slow
@needs_real_lm("smollm2-135m-instruct")
def test_demo_on_smollm2_by_default(tmp_path):
    """The README's main job: no --model (and no $INTERPJAX_MODEL) is SmolLM2-135M-Instruct; the sea
    vector moves the chat answer to the sea, and patching recovers the Paris - Rome gap."""
    png = tmp_path / "heat.png"
    out = subprocess.run([sys.executable, "-m", "interpjax.cli", "demo", "--out", str(png)], capture_output=True,
                         text=True, timeout=600, env=_demo_env(), cwd=tmp_path)
    plain, steered, (clean, corrupted), (layer, pos, value, pct) = _demo_output(out)
    assert "loaded smollm2-135m-instruct: llama, 30 layers" in out.stdout
    assert "through the chat template" in out.stdout
    assert len(plain.split()) >= 10 and plain != steered
    sea = re.compile(r"\b(sea|ocean|waves?)\b", re.I)
    assert sea.search(steered) and not sea.search(plain), (plain, steered)
    assert clean > 0 > corrupted  # the model knows both facts
    assert value - corrupted > 0.5 * (clean - corrupted) and pct > 50
    assert 0 <= layer < 30 and 0 <= pos < 10
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@needs_stories
def test_demo_runs_on_another_model_from_the_environment(tmp_path):
    """$INTERPJAX_MODEL (and --model) still pick any other checkpoint; the demo's texts are flags."""
    png = tmp_path / "stories.png"
    girl, boy = "Once upon a time, there was a little girl named", "Once upon a time, there was a little boy named"
    out = subprocess.run([sys.executable, "-m", "interpjax.cli", "demo", "--prompt", girl, "--positive", " dog",
                          "--negative", " girl", "--layer", "3", "--coeff", "0.5", "--new-tokens", "30",
                          "--clean", girl, "--corrupt", boy, "--clean-answer", " Lily", "--corrupt-answer", " Tim", "--out", str(png)],
                         capture_output=True, text=True, timeout=300, env=_demo_env(STORIES))
    plain, steered, (clean, corrupted), (layer, pos, value, pct) = _demo_output(out)
    assert "(as plain text, 14 tokens)" in out.stdout  # no chat template: the prompt as it is
    assert plain.startswith("Lily. She loved to play")
    assert "Lily" not in steered  # the ' dog' - ' girl' vector changes who the story is about
    assert clean > 0 > corrupted and value - corrupted > 0.5 * (clean - corrupted)
    assert "70 variants (5 layers x 14 positions)" in out.stdout and png.stat().st_size > 0


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


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "interpjax.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _assert_user_error(out, pattern):
    """Exit status 2, no traceback, and one 'interpjax...' line on stderr matching ``pattern``."""
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = [l for l in out.stderr.splitlines() if l.startswith("interpjax")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), out.stderr[-2000:]
    assert "loaded " not in out.stdout  # refused before the model was loaded (or while loading it)


def _main(capsys, *args):
    """Run ``main`` in-process; (exit status, stdout, stderr) as a CompletedProcess."""
    from interpjax.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, e.value.code, out.out, out.err)


@pytest.mark.parametrize("args, pattern", [
    (["demo", "--model", "x", "--new-tokens", "0"], r"argument --new-tokens: 0 is out of range: valid values are 1 or more"),
    (["demo", "--model", "x", "--new-tokens", "many"], r"argument --new-tokens: expected an integer, got 'many'"),
    (["sites", "--model", "x", "--seq", "-3"], r"argument --seq: -3 is out of range: valid values are 1 or more"),
    (["steer", "--model", "x", "--vector", "{tmp}/nope.safetensors", "--prompt", "hi"], r"--vector .*nope.safetensors: no such file"),
    (["read", "--model", "x", "--pairs", "{tmp}/nope.tsv", "--text", "hi"], r"--pairs .*nope.tsv: no such file"),
    (["steer", "--model", "x", "--positive", "a", "--negative", "b", "--prompt", "hi", "--save", "{tmp}/no/v.safetensors"],
     r"--save .*no/v.safetensors: folder .*no does not exist"),
    (["read", "--model", "x", "--positive", "a", "--negative", "b", "--text", "hi", "--out", "{tmp}"], r"--out .*: is a folder"),
    (["read", "--model", "x", "--positive", "a", "--negative", "b", "--text", "hi", "--png", "{tmp}/no/s.png"],
     r"--png .*no/s.png: folder .*no does not exist"),
    (["read", "--model", "x", "--positive", "a", "--negative", "b", "--text", "hi", "--layers", "1,x"],
     r"--layers '1,x': expected comma-separated layer numbers"),
    (["sites", "--model", ""], r"pass --model PATH_OR_HUB_ID"),
    (["demo", "--model", "{tmp}/missing"], r"cannot load model .*missing.*: no checkpoint folder at"),
    (["sites", "--model", "{tmp}/missing"], r"cannot load model .*missing.*: no checkpoint folder at"),
    (["nosuchcommand"], r"interpjax: argument cmd: invalid choice: 'nosuchcommand'"),
    (["demo", "--out", "{tmp}/no/p.png"], r"--out .*no/p.png: folder .*no does not exist"),  # default model
    (["demo", "--positive", "I swam in the sea"], r"pass both --positive and --negative \(paired contrast texts\)"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, capsys, args, pattern):
    """In-process (fast): any exception but SystemExit(2) escaping ``main`` would be a traceback."""
    _assert_user_error(_main(capsys, *[a.format(tmp=tmp_path) for a in args]), pattern)


def test_user_errors_in_a_subprocess(tmp_path):
    """The same as a user sees it: the real entry point, stderr and exit status."""
    _assert_user_error(_cli("demo", "--model", "x", "--new-tokens", "0"), r"--new-tokens: 0 is out of range")
    _assert_user_error(_cli("steer", "--model", "x", "--positive", "a", "--negative", "b", "--prompt", "hi", "--save",
                            tmp_path / "no" / "v.safetensors"), r"--save .*: folder .* does not exist")


def test_corrupt_model_folder_is_one_line(tiny_checkpoint, tmp_path, capsys):
    _cli = lambda *a: _main(capsys, *a)  # noqa: E731
    folder, _ = tiny_checkpoint("llama")
    trunc = tmp_path / "trunc"
    shutil.copytree(folder, trunc)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) - 100])
    for cmd in ("demo", "sites"):
        _assert_user_error(_cli(cmd, "--model", trunc), r"cannot load model .*trunc.*model.safetensors: truncated safetensors")
    bad_config = tmp_path / "badcfg"
    shutil.copytree(folder, bad_config)
    (bad_config / "config.json").write_text("{not json")
    _assert_user_error(_cli("sites", "--model", bad_config), r"cannot load model .*badcfg")


@needs_stories
@pytest.mark.parametrize("args, pattern", [
    (["demo", "--new-tokens", "600"], r"--new-tokens 600: the prompt \(\d+ tokens\) plus 600 new tokens exceeds the "
                                      r"model context n_ctx=512; valid: 1..\d+"),
    (["steer", "--positive", "a", "--negative", "b", "--prompt", "hi", "--new-tokens", "600"], r"--new-tokens 600: .*n_ctx=512"),
    (["sites", "--seq", "600"], r"--seq 600 exceeds the model context n_ctx=512; valid: 1..512"),
    (["demo", "--layer", "7"], r"--layer 7 out of range: valid layers are 0..4"),
    (["demo", "--corrupt", "The Colosseum is in"], r"--clean tokenizes to 24 tokens and --corrupt to \d+: patching "
                                                   r"needs prompts of equal token length"),
    (["demo", "--clean", "a cat", "--corrupt", "a dog", "--clean-answer", " Paris", "--corrupt-answer", " Pisa"],
     r"--clean-answer ' Paris' and --corrupt-answer ' Pisa' start with the same token"),
    (["demo", "--chat"], r"--chat: the tokenizer of .* has no chat template; pass --no-chat"),
])
def test_model_dependent_user_errors(args, pattern):
    out = _cli(args[0], "--model", STORIES, *args[1:])
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(pattern, lines[0]), out.stderr[-2000:]
    assert "[plain]" not in out.stdout  # refused before generating
