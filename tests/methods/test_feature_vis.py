"""M16 feature visualisation on a tiny random model: the soft optimiser finds the closed-form
maximiser of a linear objective on the rows (under a norm penalty and under a hard norm ball), GCG
finds the best token, the diversity term spreads a batch, readings agree with ``run_with_cache``,
bad inputs raise before compute, and results round-trip through save / load."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interpjax.core import model as M
from interpjax.core.handle import Model
from interpjax.methods import feature_vis as FV
from interpjax.testing import tiny_config
from interpjax.train.lm import init_params


@pytest.fixture(scope="module")
def toy():
    cfg = tiny_config(vocab_size=97, n_layers=2)
    return Model(cfg=cfg, params=init_params(cfg, jax.random.PRNGKey(0)))


def _direction(toy, seed=0):
    """A fixed direction on the rows: at (resid_pre, layer 0) the site *is* the embedding rows
    (embed_scale 1, no embedding norm, rotary positions), so w · site is linear in the rows."""
    w = np.random.default_rng(seed).normal(size=toy.cfg.d_model).astype(np.float32)
    return w / np.linalg.norm(w)


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_resid_pre_of_layer_zero_is_the_rows(toy):
    rows = np.random.default_rng(0).normal(size=(2, 3, toy.cfg.d_model)).astype(np.float32)
    site = FV.site_from_rows(toy.cfg, toy.params, jnp.asarray(rows), "resid_pre", 0)
    np.testing.assert_allclose(np.asarray(site), rows, rtol=1e-6, atol=1e-6)


def test_soft_optimiser_finds_the_closed_form_maximiser_under_a_norm_penalty(toy):
    """maximise w·r - lam |r|^2 / ref^2  ->  r* = w ref^2 / (2 lam)."""
    w = _direction(toy) * 3.0
    ref = FV.token_norm(toy)
    lam = float(np.linalg.norm(w)) * ref / 4.0  # |r*| = 2 ref
    obj = FV.directions(toy, "resid_pre", 0, w)
    res = FV.optimize_soft(toy, obj, n_tokens=1, steps=600, lr=0.01, norm_weight=lam, seed=0)
    r = res.rows[0, 0, 0]
    want = w * ref ** 2 / (2 * lam)
    assert _cos(r, want) > 0.999
    np.testing.assert_allclose(np.linalg.norm(r), np.linalg.norm(want), rtol=0.02)
    np.testing.assert_allclose(res.activation[0, 0], w @ r, rtol=1e-4)
    assert res.activation[0, 0] > res.start_activation[0, 0]
    assert res.history.shape == (600, 1) and res.rows.shape == (1, 1, 1, toy.cfg.d_model)


def test_soft_optimiser_finds_the_direction_itself_on_a_norm_ball(toy):
    """maximise w·r subject to |r| <= c ref  ->  r* = c ref w / |w|; two units at once, three seeds."""
    w2 = np.stack([_direction(toy, 1), _direction(toy, 2)])
    ref = FV.token_norm(toy)
    obj = FV.directions(toy, "resid_pre", 0, w2, names=["a", "b"])
    for seed in range(3):
        res = FV.optimize_soft(toy, obj, n_tokens=1, steps=300, lr=0.05, max_norm=1.5, seed=seed)
        for u in range(2):
            r = res.rows[u, 0, 0]
            assert _cos(r, w2[u]) > 0.999
            np.testing.assert_allclose(np.linalg.norm(r), 1.5 * ref, rtol=1e-4)
        np.testing.assert_allclose(res.activation[:, 0], 1.5 * ref, rtol=1e-3)
    assert res.names == ("a", "b")


def test_diversity_term_spreads_a_batch_that_would_otherwise_collapse(toy):
    """K = 4 inputs of one row on the ball |r| <= ref, objective w·r / ref (maximum 1). Without the
    term all four go to w (cosine 1). With weight 0.5 on the mean pairwise cosine the optimum is
    known: r_k = ref (x w + sqrt(1 - x^2) u_k) with the u_k a simplex (mean cosine -1/3) orthogonal
    to w, where -x + 0.5 (x^2 - (1 - x^2) / 3) is least: x = 3/4, pairwise cosine 0.417."""
    w = _direction(toy, 3) / FV.token_norm(toy)
    obj = FV.directions(toy, "resid_pre", 0, w)
    kw = dict(n_tokens=1, batch=4, steps=400, lr=0.02, max_norm=1.0, seed=0)
    same = FV.optimize_soft(toy, obj, **kw)
    spread = FV.optimize_soft(toy, obj, diversity_weight=0.5, **kw)
    assert same.pairwise_cos[0] > 0.99 and same.activation.min() > 0.99
    np.testing.assert_allclose(spread.activation.mean(), 0.75, atol=0.03)  # the mean is what the loss fixes
    np.testing.assert_allclose(spread.pairwise_cos[0], 0.75 ** 2 - (1 - 0.75 ** 2) / 3, atol=0.03)
    np.testing.assert_allclose(FV.pairwise_cosine(jnp.asarray(same.rows.reshape(1, 4, -1))), same.pairwise_cos,
                               rtol=1e-5)


def test_nearest_token_penalty_pulls_rows_onto_tokens(toy):
    obj = FV.directions(toy, "resid_pre", 0, _direction(toy, 4))
    free = FV.optimize_soft(toy, obj, n_tokens=1, steps=200, lr=0.05, max_norm=2.0, seed=0)
    near = FV.optimize_soft(toy, obj, n_tokens=1, steps=200, lr=0.05, max_norm=2.0, nearest_weight=50.0, seed=0)
    _, d_free = FV.nearest_tokens(toy, free.rows)
    _, d_near = FV.nearest_tokens(toy, near.rows)
    assert d_near.max() < 0.25 * d_free.min()


def test_gcg_finds_the_best_token_of_a_linear_objective(toy):
    """At (resid_pre, 0) the last position's value is w · E[last token]: the best token is known."""
    w2 = np.stack([_direction(toy, 5), _direction(toy, 6)])
    obj = FV.directions(toy, "resid_pre", 0, w2)
    E = np.asarray(toy.params["embed"]["tok"])
    allowed = np.ones(toy.cfg.vocab_size, bool)
    allowed[:5] = False
    res = FV.optimize_tokens(toy, obj, n_tokens=2, prefix=[7], steps=25, topk=8, n_candidates=32, allowed=allowed)
    best = np.where(allowed[None], w2 @ E.T, -np.inf).argmax(-1)
    np.testing.assert_array_equal(res.tokens[:, -1], best)
    np.testing.assert_allclose(res.activation, (w2 * E[best]).sum(-1), rtol=1e-5)
    assert (np.diff(res.history, axis=0) >= 0).all() and allowed[res.tokens].all()
    assert res.history.shape == (25, 2)


def test_readings_agree_with_run_with_cache_and_the_forward(toy):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, toy.cfg.vocab_size, (5, 6)).astype(np.int32)
    obj = FV.neurons(toy, "mlp_post", 1, [3, 40])
    acts = FV.unit_activations(toy, obj, tokens, batch_size=2)  # uneven last chunk
    _, cache = M.run_with_cache(toy.cfg, toy.params, tokens, sites=("mlp_post",), layers=[1])
    ref = np.asarray(cache["mlp_post", 1])[..., [3, 40]].transpose(2, 0, 1)
    np.testing.assert_allclose(acts, ref, rtol=1e-5, atol=1e-6)
    # the soft evaluation on real tokens' rows reads the same value at the last position
    E = np.asarray(toy.params["embed"]["tok"])
    rows = np.broadcast_to(E[tokens[:, 1:]][None], (2,) + tokens[:, 1:].shape + (toy.cfg.d_model,))
    soft = FV.soft_activation(toy, obj, rows, prefix=None)  # prefix-free: rows are the whole input
    np.testing.assert_allclose(soft, FV.unit_activations(toy, obj, tokens[:, 1:])[:, :, -1], rtol=1e-5, atol=1e-6)
    lg = FV.logits(toy, [2, 9])
    logit = np.asarray(M.forward(toy.cfg, toy.params, tokens))[:, -1][:, [2, 9]].T
    np.testing.assert_allclose(FV.unit_activations(toy, lg, tokens)[:, :, -1], logit, rtol=1e-5, atol=1e-5)


def test_nearest_tokens_reads_back_token_rows_and_respects_allowed(toy):
    E = np.asarray(toy.params["embed"]["tok"])
    ids = np.array([[3, 50], [96, 0]])
    got, dist = FV.nearest_tokens(toy, E[ids] + 1e-5)
    np.testing.assert_array_equal(got, ids)
    assert dist.max() < 1e-3
    allowed = np.ones(toy.cfg.vocab_size, bool)
    allowed[3] = False
    got2, dist2 = FV.nearest_tokens(toy, E[3], allowed=allowed)
    assert got2 != 3 and dist2 > 1e-3


def test_optimisation_raises_a_neuron_of_the_nonlinear_model(toy):
    obj = FV.neurons(toy, "mlp_post", 1, [0, 1, 2])
    res = FV.optimize_soft(toy, obj, n_tokens=3, prefix=[1], steps=60, lr=0.05, norm_weight=0.01, seed=0)
    assert (res.activation > res.start_activation).all()
    np.testing.assert_allclose(FV.soft_activation(toy, obj, res.rows, prefix=[1]), res.activation, rtol=1e-4,
                               atol=1e-6)


def test_bad_inputs_raise_before_compute(toy):
    with pytest.raises(ValueError, match="valid sites"):
        FV.neurons(toy, "pattern", 0, [1])
    with pytest.raises(ValueError, match="out of range"):
        FV.neurons(toy, "mlp_post", 0, [64])
    with pytest.raises(ValueError, match="needs a layer"):
        FV.neurons(toy, "mlp_post", None, [1])
    with pytest.raises(ValueError, match="layer"):
        FV.neurons(toy, "mlp_post", 5, [1])
    with pytest.raises(ValueError, match="takes no layer"):
        FV.directions(toy, "logits", 0, np.ones(97))
    with pytest.raises(ValueError, match=r"\[U, 32\]"):
        FV.directions(toy, "resid_post", 0, np.ones(31))
    with pytest.raises(ValueError, match="non-zero"):
        FV.directions(toy, "resid_post", 0, np.zeros(32))
    with pytest.raises(ValueError, match="token_ids"):
        FV.logits(toy, [97])
    obj = FV.neurons(toy, "mlp_post", 0, [1])
    with pytest.raises(ValueError, match="norm_weight"):
        FV.optimize_soft(toy, obj, norm_weight=-1.0)
    with pytest.raises(ValueError, match="batch"):
        FV.optimize_soft(toy, obj, batch=0)
    with pytest.raises(ValueError, match="init must be"):
        FV.optimize_soft(toy, obj, n_tokens=2, init=np.zeros((1, 1, 3, 32)))
    with pytest.raises(ValueError, match="allowed must be"):
        FV.optimize_soft(toy, obj, allowed=np.ones(5, bool))
    with pytest.raises(ValueError, match="exceeds n_ctx"):
        FV.optimize_tokens(toy, obj, n_tokens=70)
    with pytest.raises(ValueError, match="prefix"):
        FV.optimize_tokens(toy, obj, prefix=[200])
    with pytest.raises(ValueError, match="Objective"):
        FV.optimize_soft(toy, "mlp_post")


def test_results_round_trip_and_refuse_another_model(toy, tmp_path):
    obj = FV.neurons(toy, "mlp_post", 1, [5])
    soft = FV.optimize_soft(toy, obj, n_tokens=2, steps=3, seed=0)
    toks = FV.optimize_tokens(toy, obj, n_tokens=2, steps=2, topk=4, n_candidates=4)
    for res, cls in ((soft, FV.SoftResult), (toks, FV.TokenResult)):
        back = cls.load(res.save(tmp_path / f"{cls.__name__}.safetensors"), model=toy)
        assert back.names == res.names and back.site == res.site and back.layer == res.layer
        np.testing.assert_array_equal(back.activation, res.activation)
    other = Model(cfg=toy.cfg, params=init_params(toy.cfg, jax.random.PRNGKey(1)))
    with pytest.raises(ValueError):
        FV.SoftResult.load(tmp_path / "SoftResult.safetensors", model=other)
