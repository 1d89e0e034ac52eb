"""experiments/sae_bank (T3) on SmolLM2-135M-Instruct, in process: a trained TopK bank explains more
held-out variance and recovers more of the mean-ablated loss than the same bank at initialisation
(a random-direction dictionary), and the same check fails when the trained members are replaced by
that control. The experiment's own numbers agree with the library's ``bank_metrics`` and
``downstream_loss``."""

from __future__ import annotations

import numpy as np
import pytest

from interpjax.evidence import readme_blocks_match, readme_problems

from conftest import REPO, load_experiment, needs_real_lm

HERE = REPO / "experiments" / "sae_bank"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def run():
    return load_experiment("sae_bank")


@pytest.fixture(scope="module")
def quick(run, real_model, tmp_path_factory):
    """One quick run (a 2-member TopK bank of width 256 on ~2K tokens), shared by the tests below."""
    out = tmp_path_factory.mktemp("sae_bank")
    return run.main(["--quick", "--out", str(out)], model=real_model(MODEL))


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_trained_bank_beats_its_untrained_control(run, quick):
    members = quick["members"]
    assert quick["effect_holds"] and run.effect_holds(members)
    assert [(m["d_sae"], m["k"]) for m in members] == [(256, 8), (256, 32)]
    for m in members:
        assert m["trained"]["l0"] <= m["k"] + 1e-6          # TopK: at most k active features
        assert m["trained"]["fve"]["lo"] > m["init"]["fve"]["value"]
    assert (quick.out / "members.md").is_file() and quick.out.parent != HERE / "results"


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_the_effect_check_fails_when_the_bank_is_its_untrained_control(run, quick):
    """Replace every trained member by the same member at initialisation: the predicate must fail."""
    swapped = [dict(m, trained=m["init"]) for m in quick["members"]]
    assert not run.effect_holds(swapped)


def test_ratio_ci_and_purity_on_known_inputs(run):
    num, den = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0])
    r = run.ratio_ci(num, den, n_boot=200)
    assert r["value"] == pytest.approx(0.5) and r["lo"] == pytest.approx(0.5) and r["hi"] == pytest.approx(0.5)
    assert run.ratio_ci(num, den, n_boot=200, one_minus=True)["value"] == pytest.approx(0.5)
    st = {"top_vals_FK": np.array([[3.0, 2.0], [1.0, 0.0]]), "top_idx_FK": np.array([[0, 1], [2, 3]])}
    assert run.token_purity(st, np.array([7, 7, 5, 6]), top=2).tolist() == [1.0]  # feature 1 has a zero: skipped


def test_recovered_is_one_for_a_perfect_splice_and_zero_for_the_ablation(run):
    clean, abl = np.array([2.0, 2.5, 3.0]), np.array([6.0, 7.0, 8.0])
    assert run.recovered(abl, clean, clean, n_boot=200)["value"] == pytest.approx(1.0)
    assert run.recovered(abl, clean, abl, n_boot=200)["value"] == pytest.approx(0.0)


def test_bad_sizes_are_refused_before_compute(run):
    with pytest.raises(SystemExit, match="--steps"):
        run.main(["--quick", "--steps", "-1"], model=object())


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_numbers_agree_with_the_library_metrics(run, real_model):
    """member_stats / reconstruction / block_ce against bank_metrics / downstream_loss on a tiny bank."""
    from interpjax.methods import sae_bank as SB

    model = real_model(MODEL)
    sz = dict(run.SIZES["quick"], n_train=8, n_eval=4)
    data = run.make_data(model, sz)
    bank = SB.init_bank(SB.grid((64,), (4, 16)), data["train_ND"], kind="topk")
    lib = SB.bank_metrics(bank, data["eval_ND"])
    for g in range(bank.size):
        st = run.member_stats(bank.member(g), data["eval_ND"], top=3)
        ours = run.reconstruction(st, data, n_boot=200)
        assert ours["fve"]["value"] == pytest.approx(lib["fve"][g], abs=1e-4)
        assert ours["l0"] == pytest.approx(lib["l0"][g], abs=1e-6)
        assert ours["dead_frac"] == pytest.approx(lib["dead_frac"][g], abs=1e-9)
    blocks = data["held_blocks"][:2]
    ds = SB.downstream_loss(model, blocks, bank, run.SITE, sz["layer"])
    ce = run.block_ce(model, blocks, run.splice(bank.member(1), sz["layer"]), batch=2)
    assert ce.mean() == pytest.approx(ds["spliced"][1], rel=1e-4)


def test_readme_meets_the_standard():
    assert readme_problems(HERE / "README.md") == []
    assert readme_blocks_match(HERE / "README.md", HERE / "results" / "full") == []
