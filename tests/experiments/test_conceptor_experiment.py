"""experiments/conceptor (M7) on SmolLM2-135M-Instruct, in process: a fitted concept mixture
reproduces the concept on held-out prompts better (lower KL) than random mixtures with the same
weights on random candidates and the same norm; the same check fails when the fitted weights are
replaced by such a random mixture. Plus the prompt split and the README against results/full."""

from __future__ import annotations

import numpy as np
import pytest

from interpjax.evidence import readme_blocks_match, readme_problems

from conftest import REPO, load_experiment, needs_real_lm

HERE = REPO / "experiments" / "conceptor"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def run():
    return load_experiment("conceptor")


@pytest.fixture(scope="module")
def quick(run, real_model, tmp_path_factory):
    """One quick run (two concepts, 30 projected-Adam steps, seed 0), shared below."""
    out = tmp_path_factory.mktemp("conceptor")
    return run.main(["--quick", "--out", str(out)], model=real_model(MODEL))


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_the_fitted_mixture_beats_norm_and_sparsity_matched_random_mixtures(run, quick):
    p0 = quick["per_seed"][0]
    assert quick["effect_holds"] and run.effect_holds(p0["effect"])
    kl = p0["heldout_kl"]
    assert kl["learned"]["value"] < min(kl[f"random_{j}"]["value"] for j in range(run.N_RANDOM))
    assert kl["own word"]["value"] < 1e-5  # the word's own row is the model
    assert (p0["nnz"] < quick.cand.shape[1]).all()  # the L1 term leaves candidates at exactly 0
    assert quick.out.name == "quick" and quick.out.parent != HERE / "results"  # --quick never writes results/full
    assert (quick.out / "results.json").is_file() and (quick.out / "heldout_kl.md").is_file()


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_the_effect_check_fails_when_the_fit_is_replaced_by_a_random_mixture(run, quick):
    """The method's core replaced by its control: the fitted weights swapped for a random mixture
    (same weights on random candidates, same norm); evaluated on the same held-out prompts, the
    predicate must fail."""
    from interpjax.methods import conceptor as CT

    cand, w = CT.random_mixture(quick.model, quick.cand, quick.mix.weights_KC, seed=77)
    kls = run.heldout_kls(CT, quick.model, quick.held, quick.target, cand, w, quick.nearest, seed=0)
    assert not run.effect_holds(run.effect_summary(kls))


def test_prompt_split():
    run = load_experiment("conceptor")
    tr, ho = run.split_prompts(len(run.TEMPLATES), 8, 0)
    assert len(run.TEMPLATES) >= 20 and len(set(run.TEMPLATES)) == len(run.TEMPLATES)
    assert len(tr) == 8 and not set(tr) & set(ho) and len(tr) + len(ho) == len(run.TEMPLATES)
    assert not np.array_equal(tr, run.split_prompts(len(run.TEMPLATES), 8, 1)[0])
    with pytest.raises(ValueError, match="n_train must be"):
        run.split_prompts(5, 5, 0)
    assert all(" {w}" in t for t in run.TEMPLATES) and len(run.CONCEPTS) >= 6


def test_readme_matches_the_full_results():
    assert readme_problems(HERE / "README.md") == []
    assert readme_blocks_match(HERE / "README.md", HERE / "results" / "full") == []
