"""SAE banks: one compiled program trains G members exactly as G separate trainings would; the
metrics and the downstream loss mean what they say."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from interpjax.methods import sae_bank as SB
from interpjax.methods.sae import SAE


def sparse_data(n=2048, d=16, n_true=32, active=3, seed=0):
    """Activations that are sparse sums of ``n_true`` fixed unit directions (``active`` per row;
    ``seed`` draws the rows, the directions are always the same)."""
    dic = np.random.default_rng(12345).normal(size=(n_true, d))
    rng = np.random.default_rng(seed)
    dic /= np.linalg.norm(dic, axis=1, keepdims=True)
    codes = np.zeros((n, n_true))
    for i in range(n):
        codes[i, rng.choice(n_true, active, replace=False)] = rng.uniform(0.5, 2.0, active)
    return (codes @ dic).astype(np.float32)


@pytest.fixture(scope="module")
def acts():
    return sparse_data()


def test_bank_of_16_equals_16_members_trained_alone(acts):
    """The first 10 steps of a bank of 16 (2 widths x 2 k x 4 seeds) equal 16 separate trainings
    with the same seeds within 1e-5: stacking changes nothing but the program count."""
    members = SB.grid(widths=(24, 48), ks=(2, 4), seeds=(0, 1, 2, 3))
    assert len(members) == 16
    bank = SB.init_bank(members, acts, kind="topk")
    trained, _ = SB.train_bank(bank, acts, steps=10, batch=256, lr=1e-2, seed=3)
    moved = 0.0
    for g, m in enumerate(members):
        alone, _ = SB.train_bank(SB.init_bank([m], acts, kind="topk"), acts, steps=10, batch=256, lr=1e-2, seed=3)
        w = m.d_sae
        np.testing.assert_allclose(np.asarray(trained.W_dec[g, :w]), np.asarray(alone.W_dec[0, :w]), atol=1e-5)
        np.testing.assert_allclose(np.asarray(trained.W_enc[g, :, :w]), np.asarray(alone.W_enc[0, :, :w]), atol=1e-5)
        np.testing.assert_allclose(np.asarray(trained.b_enc[g, :w]), np.asarray(alone.b_enc[0, :w]), atol=1e-5)
        np.testing.assert_allclose(np.asarray(trained.b_dec[g]), np.asarray(alone.b_dec[0]), atol=1e-5)
        moved = max(moved, float(np.abs(np.asarray(trained.W_dec[g]) - np.asarray(bank.W_dec[g])).max()))
    assert moved > 1e-3  # the 10 steps trained something


def test_training_explains_variance_and_topk_keeps_k(acts):
    held = sparse_data(n=512, seed=1)
    bank = SB.init_bank(SB.grid(widths=(64,), ks=(3, 6)), acts, kind="topk")
    before = SB.bank_metrics(bank, held)
    trained, last = SB.train_bank(bank, acts, steps=300, batch=512, lr=1e-2)
    after = SB.bank_metrics(trained, held)
    assert np.all(after["fve"] > 0.8) and np.all(after["fve"] > before["fve"] + 0.3), (before, after)
    assert np.all(after["l0"] <= np.array([3, 6]) + 1e-9) and np.all(after["l0"] > np.array([2.5, 5.0]))
    assert np.asarray(last["nmse"]).shape == (2,)
    # member() is a plain SAE computing the same map
    sae = trained.member(1)
    assert isinstance(sae, SAE) and sae.d_sae == 64 and sae.k == 6
    f = np.asarray(SB._encode("topk", trained.k_max, {k: v[1] for k, v in trained.weights.items()}, trained.width[1],
                              trained.k[1], jnp.asarray(held)))
    np.testing.assert_allclose(np.asarray(sae.encode(jnp.asarray(held))), f, atol=1e-5)


def test_relu_bank_l1_trades_sparsity_for_reconstruction_and_padding_stays_zero(acts):
    members = SB.grid(widths=(20, 40), l1s=(1e-3, 3e-2))
    bank = SB.init_bank(members, acts, kind="relu")
    trained, _ = SB.train_bank(bank, acts, steps=200, batch=512, lr=1e-2)
    m = SB.bank_metrics(trained, acts[:512])
    by = {(mem.d_sae, mem.l1): i for i, mem in enumerate(members)}
    for w in (20, 40):
        lo, hi = by[(w, 1e-3)], by[(w, 3e-2)]
        assert m["l0"][hi] < m["l0"][lo] and m["fve"][hi] < m["fve"][lo], m
    narrow = by[(20, 1e-3)]
    assert not np.any(np.asarray(trained.W_dec[narrow, 20:])) and not np.any(np.asarray(trained.W_enc[narrow, :, 20:]))
    assert 0.0 <= m["dead_frac"].min() and m["dead_frac"].max() <= 1.0


def test_downstream_loss_of_a_perfect_sae_recovers_everything(tiny_model):
    model = tiny_model("llama")[0]
    cfg = model.cfg
    D = cfg.d_model
    eye = np.eye(D, dtype=np.float32)
    # relu(x) - relu(-x) = x: encoder [I, -I], decoder [I; -I] reconstructs exactly
    bank = SB.SAEBank(W_enc=jnp.asarray(np.concatenate([eye, -eye], 1))[None], b_enc=jnp.zeros((1, 2 * D)),
                      W_dec=jnp.asarray(np.concatenate([eye, -eye], 0))[None], b_dec=jnp.zeros((1, D)),
                      width=jnp.asarray([2 * D], jnp.int32), k=jnp.asarray([0], jnp.int32),
                      l1=jnp.asarray([0.0], jnp.float32), kind="relu", k_max=0, members=(SB.Member(2 * D),))
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 9)).astype(np.int32)
    out = SB.downstream_loss(model, tokens, bank, "resid_pre", 1)
    assert abs(out["zero_ablated"] - out["clean"]) > 1e-3  # the ablation matters (a random model: either sign)
    np.testing.assert_allclose(out["spliced"], [out["clean"]], rtol=1e-5)
    np.testing.assert_allclose(out["recovered"], [1.0], atol=1e-4)
    half = SB.downstream_loss(model, tokens, bank.replace(W_dec=bank.W_dec * 0.5), "resid_pre", 1)  # x / 2
    assert abs(half["spliced"][0] - out["clean"]) > 1e-4 and abs(half["recovered"][0] - 1.0) > 1e-3
    np.testing.assert_allclose(half["recovered"], (half["zero_ablated"] - half["spliced"])
                               / (half["zero_ablated"] - half["clean"]), rtol=1e-9)


def test_bad_banks_are_refused_by_name(acts):
    with pytest.raises(ValueError, match="valid kinds"):
        SB.init_bank(SB.grid(widths=(8,)), acts, kind="jumprelu")
    with pytest.raises(ValueError, match="k in 1..d_sae=8"):
        SB.init_bank(SB.grid(widths=(8,), ks=(9,)), acts, kind="topk")
    with pytest.raises(ValueError, match="k is for topk"):
        SB.init_bank(SB.grid(widths=(8,), ks=(2,)), acts, kind="relu")
    with pytest.raises(ValueError, match="at least one member"):
        SB.init_bank((), acts)
    bank = SB.init_bank(SB.grid(widths=(8,), ks=(2,)), acts)
    with pytest.raises(ValueError, match="d_in is 16"):
        SB.train_bank(bank, acts[:, :8], steps=1)
    with pytest.raises(ValueError, match="batch must be"):
        SB.train_bank(bank, acts, steps=1, batch=len(acts) + 1)
    with pytest.raises(ValueError, match="weight_decay"):
        SB.bank_train_config(weight_decay=0.1)
    with pytest.raises(ValueError, match="member index"):
        bank.member(1)
