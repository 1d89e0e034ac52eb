"""experiments/logit_lens and experiments/tuned_lens (M8, M19) on SmolLM2-135M-Instruct, in process,
on held-out pydoc topics: the tuned lens is closer to the model's output than the logit lens at a
middle layer, and the causal-basis directions move the model more than random directions; each
check fails once the method's core is replaced by its control (untrained translators, random
directions, another block's targets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from interpjax.evidence import readme_blocks_match, readme_problems
from interpjax.methods import lens as LZ

from conftest import load_experiment, needs_real_lm

EXP = Path(__file__).resolve().parents[2] / "experiments"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def logit_run():
    return load_experiment("logit_lens")


@pytest.fixture(scope="module")
def tuned_run():
    return load_experiment("tuned_lens")


@pytest.fixture(scope="module")
def logit_quick(logit_run, real_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("logit_lens")
    return logit_run.main(["--quick", "--out", str(out)], model=real_model(MODEL)), out


@pytest.fixture(scope="module")
def tuned_quick(tuned_run, real_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned_lens")
    res = tuned_run.main(["--quick", "--out", str(out), "--workdir", str(out / "work")], model=real_model(MODEL))
    return res, out


@needs_real_lm(MODEL)
@pytest.mark.slow
def test_logit_lens_quick_reads_the_text_and_writes_only_quick(logit_quick, logit_run):
    result, out = logit_quick
    L = result["n_layers"]
    assert result["per_layer"][L]["kl"]["value"] == 0.0  # the output row is the model itself
    assert logit_run.effect_holds(result)
    assert sorted(p.name for p in out.iterdir()) == ["quick"]
    for f in ("results.json", "per_layer.md", "depth.md", "trajectories.md", "logit_lens.png", "trajectory_0.png"):
        assert (out / "quick" / f).stat().st_size > 0, f


@needs_real_lm(MODEL)
@pytest.mark.slow
def test_logit_lens_effect_fails_when_targets_are_the_control(logit_quick, logit_run, real_model, monkeypatch):
    """Score the lens against the control's own kind of targets (another block's next tokens) in
    place of the text's: the predicate fails."""
    model = real_model(MODEL)
    size = logit_run.SIZES["quick"]
    blocks = logit_run.heldout_blocks(model, size["T"], size["n_eval"])
    one = logit_run.measure(model, blocks)  # control targets: the next block's tokens
    monkeypatch.setattr(logit_run, "control_targets", lambda b: np.roll(b[:, 1:], 2, axis=0))
    two = logit_run.measure(model, blocks)  # the block after that
    swapped = dict(one, nll=one["nll_control"], nll_control=two["nll_control"])
    control = {"n_layers": logit_quick[0]["n_layers"], "per_layer": logit_run.per_layer(swapped, size["n_boot"])}
    assert not logit_run.effect_holds(control)
    assert logit_run.effect_holds({"n_layers": control["n_layers"], "per_layer": logit_run.per_layer(one, size["n_boot"])})


@needs_real_lm(MODEL)
@pytest.mark.slow
def test_tuned_lens_quick_beats_logit_lens_and_cbe_beats_random(tuned_quick, tuned_run):
    result, out = tuned_quick
    assert tuned_run.tuned_effect_holds(result["compare"])
    assert tuned_run.cbe_effect_holds(result["cbe"])
    assert result["cbe"]["orthonormality_error"] < 1e-5
    rows = result["compare"]["per_layer"]
    assert rows[-1]["kl_tuned"]["value"] == rows[-1]["kl_logit"]["value"] == 0.0
    assert sorted(p.name for p in out.iterdir()) == ["quick", "work"]
    for f in ("results.json", "per_layer.md", "summary.md", "cbe.md", "cbe_summary.md", "tuned_lens.png"):
        assert (out / "quick" / f).stat().st_size > 0, f


@needs_real_lm(MODEL)
@pytest.mark.slow
def test_tuned_effect_fails_with_untrained_translators(tuned_quick, tuned_run, real_model):
    """The untrained tuned lens (identity translators) in place of the trained one: the predicate fails."""
    model = real_model(MODEL)
    size = tuned_run.SIZES["quick"]
    held = LZ.init_tuned_lens(model.cfg, model.params, model.name)
    blocks = tuned_run.pick(tuned_run.token_blocks(model, tuned_run.topic_split()["heldout"], size["T"]), size["n_eval"], 0)
    metrics = tuned_run.eval_lenses(model, blocks, {"logit": held, "tuned/0": held, "shifted": held})
    control = tuned_run.compare(metrics, (0,), size["n_boot"])
    mid = control["n_translated"] // 2
    assert not tuned_run.tuned_effect_holds(control)
    assert tuned_quick[0]["compare"]["per_layer"][mid]["kl_tuned"]["value"] < control["per_layer"][mid]["kl_tuned"]["value"]


@needs_real_lm(MODEL)
@pytest.mark.slow
def test_cbe_effect_fails_with_random_directions_as_the_basis(tuned_quick, tuned_run, real_model, monkeypatch, tmp_path):
    """Random unit directions in place of the extracted basis: the predicate fails."""
    model = real_model(MODEL)
    size = tuned_run.SIZES["quick"]
    lens = LZ.load_tuned_lens(tuned_quick[1] / "quick" / "lens_seed0.safetensors", model.cfg, model.params)

    def random_basis(lens, model, layer, fit, size, seed):
        return LZ.CausalBasis(layer, tuned_run.random_directions(size["k"], model.cfg.d_model, seed + 7),
                              np.zeros(size["k"]), fit.mean(0).astype(np.float64))

    monkeypatch.setattr(tuned_run, "extract_basis", random_basis)
    sp = tuned_run.topic_split()
    fit = tuned_run.pick(tuned_run.token_blocks(model, sp["train"], size["T"]), size["n_fit"], 1)
    held = tuned_run.pick(tuned_run.token_blocks(model, sp["heldout"], size["T"]), size["n_cbe_eval"], 2)
    control = tuned_run.cbe_analysis(model, lens, fit, held, model.cfg.n_layers // 2, size)
    assert not tuned_run.cbe_effect_holds(control)


def test_tuned_lens_rerun_reuses_a_finished_model_only_at_the_same_sizes(tuned_run, monkeypatch, tmp_path):
    """A full run over two models keeps each finished model's numbers; a rerun with the same sizes
    reuses them, one with other sizes recomputes (the cache is never read for --quick)."""
    calls = []

    def fake_analyze(model, size, workdir, progress=False):
        calls.append(dict(size))
        return {"size": dict(size), "n": len(calls)}, {"lens": None}

    monkeypatch.setattr(tuned_run, "analyze", fake_analyze)
    model = type("M", (), {"name": "m", "cfg": type("C", (), {"vocab_size": 7})()})()
    size = tuned_run.SIZES["full"]
    first, lenses = tuned_run.analyze_cached(model, size, tmp_path, cache=True)
    assert lenses is not None and first["n"] == 1 and first["vocab"] == 7 and (tmp_path / "analysis.json").is_file()
    again, lenses = tuned_run.analyze_cached(model, size, tmp_path, cache=True)
    assert lenses is None and again == first and len(calls) == 1
    other, _ = tuned_run.analyze_cached(model, tuned_run.SIZES["reduced"], tmp_path, cache=True)
    assert other["n"] == 2
    fresh, _ = tuned_run.analyze_cached(model, tuned_run.SIZES["reduced"], tmp_path, cache=False)
    assert fresh["n"] == 3


@pytest.mark.parametrize("folder", ["logit_lens", "tuned_lens"])
def test_readme_meets_the_standard_and_matches_full_results(folder):
    assert readme_problems(EXP / folder / "README.md") == []
    assert readme_blocks_match(EXP / folder / "README.md", EXP / folder / "results" / "full") == []
