"""experiments/knockout (M12) on SmolLM2-135M-Instruct, in process: blocking the last position's
edges to the subject in the chosen window hurts recall more than blocking random non-subject
edges, and the same check fails once the subject set is replaced by that random set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import interpjax
from interpjax import AttentionKnockout
from interpjax.evidence import readme_blocks_match, readme_problems
from interpjax.methods.knockout import edge_knockout

from conftest import load_experiment, needs_real_lm

HERE = Path(__file__).resolve().parents[2] / "experiments" / "knockout"
MODEL = "smollm2-135m-instruct"


def _run_module():
    return load_experiment("knockout")


@pytest.fixture(scope="module")
def run():
    return _run_module()


@pytest.fixture(scope="module")
def quick(run, real_model, tmp_path_factory):
    """One quick run (a fifth of the facts), shared by the tests below."""
    out = tmp_path_factory.mktemp("knockout")
    return run.main(["--quick", "--out", str(out)], model=real_model(MODEL)), out


def test_edge_knockout_with_left_padding_equals_full_runs(tiny_model):
    """The last-position rerun over cached keys/values equals full edited forwards, padded rows included."""
    model = tiny_model("llama")[0]
    cfg = model.cfg
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (3, 7)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[1, :2] = 0
    sets = {"a": np.zeros(tokens.shape, bool), "b": np.zeros(tokens.shape, bool)}
    sets["a"][:, 3:5] = True
    sets["b"][:, 5] = True
    sets["b"][0, 2] = True
    res = edge_knockout(model, tokens, sets, attention_mask=mask, window=2, starts=[0, 1])
    for name, r in res.items():
        for i, s in enumerate(r.starts):
            keys = np.stack([np.flatnonzero(row)[[0, -1]] for row in sets[name]])
            iv = AttentionKnockout(layer=np.arange(s, s + 2), query_positions=np.array([-1]), key_positions=keys)
            logits = np.asarray(interpjax.forward(cfg, model.params, tokens, mask, interventions=iv))[:, -1]
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            np.testing.assert_allclose(r.prob_knocked[i], p[np.arange(3), r.answers], rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="marks padding"):
        edge_knockout(model, tokens, {"a": mask == 0}, attention_mask=mask)
    with pytest.raises(ValueError, match="out of range"):
        edge_knockout(model, tokens, sets, attention_mask=mask, window=2, starts=[cfg.n_layers])


@needs_real_lm(MODEL)
@pytest.mark.slow
def test_quick_subject_edges_matter_more_than_random_edges(quick, run):
    result, _ = quick
    assert result["n_correct"] >= 16
    assert run.effect_holds(result)


@needs_real_lm(MODEL)
@pytest.mark.slow
def test_effect_fails_when_subject_set_is_the_random_control(quick, run, real_model, monkeypatch):
    """Replace the subject positions by the equal-count random non-subject draw: the predicate fails."""
    model = real_model(MODEL)
    enc, _, answers, _ = run.recalled(model, run.load_facts(every=run.SIZES["quick"]["every"]))
    original = run.knockout_masks

    def random_as_subject(enc, n_random, seed=0):
        masks = original(enc, n_random, seed)
        masks["subject"] = masks["random0"]
        return masks

    monkeypatch.setattr(run, "knockout_masks", random_as_subject)
    size = run.SIZES["quick"]
    control = run.knockout_analysis(model, enc, answers, window=size["window"], n_random=size["n_random"],
                                    n_boot=size["n_boot"], stride=size["stride"])
    assert not run.effect_holds(control)
    assert quick[0]["heldout"]["subject"]["value"] < control["heldout"]["subject"]["value"]


@needs_real_lm(MODEL)
@pytest.mark.slow
def test_quick_writes_only_under_quick(quick):
    _, out = quick
    assert sorted(p.name for p in out.iterdir()) == ["quick"]
    for f in ("results.json", "heldout.md", "by_window.md", "attribute_rate.md", "knockout.png"):
        assert (out / "quick" / f).stat().st_size > 0, f


def test_readme_meets_the_standard_and_matches_full_results():
    assert readme_problems(HERE / "README.md") == []
    assert readme_blocks_match(HERE / "README.md", HERE / "results" / "full") == []
