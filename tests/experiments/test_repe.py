"""experiments/repe (M1) on SmolLM2-135M-Instruct, in process: at the dev-chosen layer each reader
reads happiness vs sadness on held-out scenarios above its own control -- mean-diff above its
label-shuffled fit, PCA above sign-agnostic random directions; the same check fails when the
readers are replaced by their controls. Plus the stimulus generator, the splits and the README."""

from __future__ import annotations

import re

import numpy as np
import pytest

from interpjax.evidence import readme_blocks_match, readme_problems

from conftest import REPO, load_experiment, needs_real_lm

HERE = REPO / "experiments" / "repe"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def run():
    return load_experiment("repe")


@pytest.fixture(scope="module")
def stim():
    return load_experiment("repe", "stimuli")


@pytest.fixture(scope="module")
def quick(run, real_model, tmp_path_factory):
    """One quick reading run on the emotion pairs (100 pairs, one split), shared by the tests below."""
    out = tmp_path_factory.mktemp("repe")
    return run.main(["--quick", "--concepts", "emotion", "--no-control", "--out", str(out)], model=real_model(MODEL))


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_each_reader_beats_its_control_on_held_out_scenarios(run, quick):
    s = quick["summary"]["emotion"]
    assert quick["effect_holds"]["emotion"] and run.effect_holds(s) and quick["effect_required"] == ["emotion"]
    md, pca = s["mean_diff"], s["pca"]
    assert md["pair"]["value"] > md["shuffled"]["value"] + run.MARGIN and min(md["minus_shuffled_lo"]) > 0
    assert pca["pair"]["value"] > pca["random"]["value"] + run.MARGIN and min(pca["minus_random_lo"]) > 0


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_quick_run_writes_only_quick_results_and_a_self_contained_scan(run, quick):
    s = quick["summary"]["emotion"]
    assert s["pca"]["pair"]["value"] > s["pca"]["random"]["value"] + run.MARGIN  # beats the random direction
    assert quick.out.name == "quick" and quick.out.parent != HERE / "results"  # --quick never writes results/full
    for name in ("results.json", "headline.md", "scan_emotion.html", "scan_emotion.png", "accuracy_by_layer.png"):
        assert (quick.out / name).stat().st_size > 0
    html = (quick.out / "scan_emotion.html").read_text()
    assert "<script" not in html and "http" not in html  # self-contained


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_the_effect_check_fails_when_the_readers_are_replaced_by_their_controls(run, quick):
    a, splits = quick.arrays["emotion"], quick.splits["emotion"]
    for core, reader, control in (("shuffled", "mean_diff", "shuffled"), ("random", "pca", "random")):
        # labels shuffled before fitting / random directions in place of the fitted ones
        _, summary = run.evaluate_concept(a["pos"], a["neg"], splits, quick.layers, quick.meta["seeds"], core=core)
        assert not run.effect_holds(summary), core
        assert not run.reader_beats_control(summary[reader], control), core


def test_stimuli_are_many_paired_and_never_name_the_emotion(stim):
    emo, hon = stim.emotion_pairs(), stim.honesty_pairs()
    assert len(emo) >= 200 and len(hon) >= 200
    assert len({p["pos"] for p in emo}) == len(emo) and all(p["pos"] != p["neg"] for p in emo + hon)
    for happy, sad in stim.EVENTS:
        for t in (stim.fill(happy, "Anna", "she"), stim.fill(sad, "David", "he")):
            assert not set(re.findall(r"[a-z]+", t.lower())) & set(stim.NAMED_EMOTIONS), t
    assert {p["kind"] for p in hon} == {"capital", "continent", "currency", "arithmetic"}
    assert "The capital of France is Paris." in {p["true"] for p in hon}


def test_splits_share_no_group_and_false_facts_stay_in_their_block(stim):
    hon = stim.honesty_pairs()
    for seed in (0, 1, 2):
        sp = stim.split_groups(hon, seed)
        groups = {k: {hon[i]["group"] for i in v} for k, v in sp.items()}
        assert not (groups["train"] & groups["dev"] or groups["train"] & groups["test"] or groups["dev"] & groups["test"])
        assert sum(len(v) for v in sp.values()) == len(hon)
    capitals = {}
    for p in hon:
        if p["kind"] == "capital":
            capitals.setdefault(p["group"], set()).add(p["true"].rsplit(" is ", 1)[1])
    for p in hon:
        if p["kind"] == "capital":
            assert p["false"].rsplit(" is ", 1)[1] in capitals[p["group"]]  # borrowed from its own block
    with pytest.raises(ValueError, match="three positive shares"):
        stim.split_groups(hon, 0, (0.5, 0.5))


def test_effect_predicate(run):
    ci = lambda v: {"value": v}  # noqa: E731
    reader = lambda pair, sh, rnd, lo_sh=(0.1, 0.05), lo_r=(0.1, 0.05): {  # noqa: E731
        "pair": ci(pair), "shuffled": ci(sh), "random": ci(rnd), "minus_shuffled_lo": list(lo_sh),
        "minus_random_lo": list(lo_r)}
    good = {"pca": reader(0.9, 0.85, 0.7), "mean_diff": reader(0.9, 0.6, 0.7)}
    assert run.effect_holds(good)  # PCA's shuffled control may read the concept: PCA needs no labels
    assert not run.effect_holds({**good, "pca": reader(0.9, 0.6, 0.85)})
    assert not run.effect_holds({**good, "mean_diff": reader(0.9, 0.85, 0.7)})
    assert not run.effect_holds({**good, "pca": reader(0.9, 0.6, 0.7, lo_r=(0.1, -0.01))})
    assert not run.effect_holds({**good, "mean_diff": reader(0.9, 0.6, 0.7, lo_sh=(0.0, 0.2))})
    with pytest.raises(ValueError, match="missing \\['mean_diff'\\]"):
        run.effect_holds({"pca": good["pca"]})
    assert np.isclose(run.band_start(0, 30), 0) and run.band_start(29, 30) == 27 and run.band_start(10, 30) == 9


def test_bad_arguments(run):
    with pytest.raises(ValueError, match="--batch-size must be >= 1"):
        run.parse_args(["--batch-size", "0"])
    with pytest.raises(ValueError, match="concept='x'"):
        run.build_pairs("x", True)


def test_readme_meets_the_standard():
    assert readme_problems(HERE / "README.md") == []
    assert readme_blocks_match(HERE / "README.md", HERE / "results" / "full") == []
