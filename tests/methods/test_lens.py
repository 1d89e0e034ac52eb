"""Logit lens and tuned lens: exact identities, training, resume, prediction depth, refusals, per-sequence
evaluation, causal basis extraction."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import STORIES

from interpjax import Model
from interpjax.methods import lens as LZ
from interpjax.train import TrainConfig


def _tokens(cfg, B=2, T=12, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (B, T)).astype(np.int32)


def _batch_fn(cfg, B=4, T=16):
    return lambda step: _tokens(cfg, B, T, seed=100 + step)


def _tc(steps, **kw):
    return TrainConfig(**{**dict(lr=1e-2, weight_decay=0.0, total_steps=steps, schedule="cosine", warmup_steps=1,
                                 clip_norm=1.0, log_every=1, ckpt_every=2), **kw})


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_logit_lens_last_row_is_the_model_output_exactly(tiny_model, name):
    m, _ = tiny_model(name)
    tokens = _tokens(m.cfg)
    mask = np.ones_like(tokens)
    mask[1, :4] = 0  # left padding in one row
    lg = LZ.logit_lens(m.cfg, m.params, tokens, mask)
    assert lg.shape == (m.cfg.n_layers + 1, 2, 12, m.cfg.vocab_size)
    np.testing.assert_array_equal(np.asarray(lg[-1]), np.asarray(m(tokens, mask)))
    # every row is the final norm + unembedding of that layer's residual stream
    _, cache = m.run_with_cache(tokens, sites=["resid_pre"], attention_mask=mask)
    for l in range(m.cfg.n_layers):
        np.testing.assert_allclose(lg[l], LZ.decode(m.cfg, m.params, cache["resid_pre", l]), atol=1e-5, rtol=1e-5)


def test_tuned_lens_identity_init_equals_logit_lens_exactly(tiny_model):
    m, _ = tiny_model("llama")
    tokens = _tokens(m.cfg)
    lens = LZ.init_tuned_lens(m.cfg, m.params, "tiny-llama")
    np.testing.assert_array_equal(np.asarray(LZ.tuned_lens(lens, m.cfg, m.params, tokens)),
                                  np.asarray(LZ.logit_lens(m.cfg, m.params, tokens)))


def test_translator_is_the_affine_map_per_layer(tiny_model):
    m, _ = tiny_model("llama")
    cfg, tokens = m.cfg, _tokens(m.cfg)
    L, D = cfg.n_layers, cfg.d_model
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    lens = LZ.init_tuned_lens(cfg, m.params).replace(weight_LDD=0.3 * jax.random.normal(k1, (L, D, D)),
                                                     bias_LD=jax.random.normal(k2, (L, D)))
    got = LZ.tuned_lens(lens, cfg, m.params, tokens)
    _, resid = LZ.residual_stack(cfg, m.params, tokens)
    for l in range(L):
        A = np.eye(D) + np.asarray(lens.weight_LDD[l], np.float64)
        x = np.asarray(resid[l], np.float64) @ A + np.asarray(lens.bias_LD[l], np.float64)
        np.testing.assert_allclose(got[l], LZ.decode(cfg, m.params, jnp.asarray(x, jnp.float32)), atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(got[-1]), np.asarray(m(tokens)))  # the output row is never translated


def test_top_k_rank_prob_and_entropy_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 2, 4, 11)).astype(np.float32)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    probs, ids = LZ.top_k(logits, 3)
    np.testing.assert_array_equal(np.asarray(ids), np.argsort(-logits, -1)[..., :3])
    np.testing.assert_allclose(probs, np.sort(p, -1)[..., ::-1][..., :3], rtol=1e-5)
    rank, prob = LZ.token_rank_prob(logits, 5)
    np.testing.assert_array_equal(np.asarray(rank), (logits > logits[..., 5:6]).sum(-1))
    np.testing.assert_allclose(prob, p[..., 5], rtol=1e-5)
    per_pos = rng.integers(0, 11, (2, 4))
    rank, _ = LZ.token_rank_prob(logits, per_pos)
    assert rank[1, 1, 2] == (logits[1, 1, 2] > logits[1, 1, 2, per_pos[1, 2]]).sum()
    np.testing.assert_allclose(LZ.entropy(logits), -(p * np.log(p)).sum(-1), rtol=1e-5)
    with pytest.raises(ValueError, match="k must be an integer in 1..11"):
        LZ.top_k(logits, 12)
    with pytest.raises(ValueError, match="token ids must lie in 0..10"):
        LZ.token_rank_prob(logits, 11)
    with pytest.raises(ValueError, match=r"ids shaped \(2, 4\)"):
        LZ.token_rank_prob(logits, np.zeros((2, 3), np.int32))


def test_prediction_depth_on_a_hand_built_trajectory():
    # columns are positions, rows lens layers 0..4 (row 4 = output)
    top1 = np.array([[7, 2, 7, 3, 7, 1],
                     [7, 7, 2, 3, 7, 1],
                     [7, 7, 7, 3, 2, 1],
                     [7, 7, 2, 3, 7, 1],
                     [7, 7, 7, 4, 7, 9]])
    np.testing.assert_array_equal(np.asarray(LZ.prediction_depth(top1)), [0, 1, 4, 4, 3, 4])
    # through the whole pipeline: one-hot lens logits reproduce the same depths
    logits = 10.0 * jax.nn.one_hot(top1, 10)[:, None]  # [L, B=1, T, V]
    np.testing.assert_array_equal(np.asarray(LZ.prediction_depth(jnp.argmax(logits, -1)))[0], [0, 1, 4, 4, 3, 4])


def test_training_lowers_kl_on_held_out_tokens(tiny_model, tmp_path):
    m, _ = tiny_model("llama")
    held = [_tokens(m.cfg, 4, 16, seed=9)]
    before = LZ.evaluate_lens(m.cfg, m.params, held, LZ.init_tuned_lens(m.cfg, m.params))
    trainer = LZ.TunedLensTrainer(m, _tc(15, ckpt_every=100, schedule="constant"), tmp_path, name="tiny")
    trainer.train(_batch_fn(m.cfg), 15, progress=False)
    after = LZ.evaluate_lens(m.cfg, m.params, held, trainer.lens)
    L = m.cfg.n_layers
    assert all(after["kl"][l] < 0.85 * before["kl"][l] for l in range(L)), (before["kl"], after["kl"])
    assert after["kl"][L] == before["kl"][L] == 0.0 and after["ppl"][L] == before["ppl"][L]
    log = [json.loads(x) for x in trainer.log_path.read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 16)) and log[-1]["kl"] < log[0]["kl"]
    # the model's params are untouched (frozen)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(m.params), jax.tree.leaves(tiny_model("llama")[0].params)))


def test_resume_after_interruption_equals_uninterrupted(tiny_model, tmp_path):
    m, _ = tiny_model("llama")
    batches = _batch_fn(m.cfg)
    ref = LZ.TunedLensTrainer(m, _tc(7), tmp_path / "ref")  # never interrupted
    ref.train(batches, 7, progress=False)

    def dies_at_5(step):
        if step == 5:
            raise KeyboardInterrupt
        return batches(step)

    first = LZ.TunedLensTrainer(m, _tc(7), tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        first.train(dies_at_5, 7, progress=False)
    resumed = LZ.TunedLensTrainer(m, _tc(7), tmp_path / "run")
    assert resumed.step == 4  # last checkpoint (every 2 steps); step 5's work is redone
    resumed.train(batches, 7, progress=False)
    for k in ("weight", "bias"):
        np.testing.assert_array_equal(np.asarray(resumed.arrays[k]), np.asarray(ref.arrays[k]))
    steps = [json.loads(x)["step"] for x in resumed.log_path.read_text().splitlines()]
    assert steps == list(range(1, 8))  # no duplicated or lost log lines
    with pytest.raises(ValueError, match=r"different model or TrainConfig \(train.lr: 0.01 -> 0.5"):
        LZ.TunedLensTrainer(m, _tc(7, lr=0.5), tmp_path / "run")


def test_token_stream_is_deterministic_and_bounded(tiny_model):
    from interpjax.io.loading import load_tokenizer

    tok = load_tokenizer(STORIES) if (STORIES / "tokenizer.json").exists() else None
    if tok is None:
        pytest.skip("needs the stories tokenizer")
    texts = [f"Story number {i}. The cat sat on the mat." for i in range(40)]
    s = LZ.TokenStream(lambda: iter(texts), tok, 2, 16)
    seq = [s(i) for i in range(4)]
    assert all(b.shape == (2, 16) and b.dtype == np.int32 for b in seq)
    fresh = LZ.TokenStream(lambda: iter(texts), tok, 2, 16)
    np.testing.assert_array_equal(fresh(3), seq[3])  # random access = sequential
    np.testing.assert_array_equal(s(1), seq[1])  # going back re-reads the stream
    assert seq[0][0, 0] == tok.bos_token_id and len(s._buf) < 2 * 16 + 40
    all_ids = np.concatenate([b.ravel() for b in seq])
    expected = [i for t in texts for i in tok(t)["input_ids"]][: all_ids.size]
    np.testing.assert_array_equal(all_ids, expected)  # packed end to end, nothing dropped
    with pytest.raises(ValueError, match="ran out after"):
        s(10_000)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        LZ.TokenStream(lambda: iter(texts), tok, 0, 16)


def test_lens_for_another_model_is_refused(tiny_model, tmp_path):
    llama, _ = tiny_model("llama")
    gpt2, _ = tiny_model("gpt2")
    lens = LZ.init_tuned_lens(llama.cfg, llama.params, "tiny-llama").replace(
        bias_LD=jnp.arange(llama.cfg.n_layers * llama.cfg.d_model, dtype=jnp.float32).reshape(llama.cfg.n_layers, -1))
    path = LZ.save_tuned_lens(lens, tmp_path / "lens")
    back = LZ.load_tuned_lens(path, llama.cfg, llama.params)
    np.testing.assert_array_equal(np.asarray(back.bias_LD), np.asarray(lens.bias_LD))
    assert back.meta == lens.meta and back.meta.model == "tiny-llama"
    tokens = _tokens(gpt2.cfg)
    with pytest.raises(ValueError, match="trained for model 'tiny-llama'"):
        LZ.tuned_lens(lens, gpt2.cfg, gpt2.params, tokens)
    with pytest.raises(ValueError, match="trained for model 'tiny-llama'"):
        LZ.load_tuned_lens(path, gpt2.cfg, gpt2.params)
    # same architecture, other weights: refused too (the fingerprint differs)
    other = jax.tree.map(lambda x: x, llama.params)
    other["embed"]["tok"] = other["embed"]["tok"] * 1.01
    with pytest.raises(ValueError, match="fingerprint differs"):
        LZ.tuned_lens(lens, llama.cfg, other, tokens)
    with pytest.raises(ValueError, match="fingerprint differs"):
        LZ.evaluate_lens(llama.cfg, other, [tokens], lens)
    with pytest.raises(ValueError, match="fingerprint differs"):
        LZ.TunedLensTrainer(Model(llama.cfg, other), _tc(2), tmp_path / "t", lens=lens)
    with pytest.raises(ValueError, match="not a saved tuned lens"):
        LZ.load_tuned_lens(tmp_path, llama.cfg, llama.params)


def test_bad_inputs_raise_before_compute(tiny_model, tmp_path):
    m, _ = tiny_model("llama")
    with pytest.raises(ValueError, match="d_model is"):
        LZ.decode(m.cfg, m.params, jnp.zeros((3, m.cfg.d_model + 1)))
    with pytest.raises(ValueError, match="color must be one of"):
        LZ.plot_trajectory(jnp.zeros((3, 2, 5)), tmp_path / "x.png", ["a", "b"], str, color="rank")
    with pytest.raises(ValueError, match="2 input labels for 4 positions"):
        LZ.plot_trajectory(jnp.zeros((3, 4, 5)), tmp_path / "x.png", ["a", "b"], str)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        LZ.logit_lens(m.cfg, m.params, np.full((1, 3), m.cfg.vocab_size, np.int32))
    import dataclasses

    with pytest.raises(ValueError, match="needs a causal decoder"):
        LZ.evaluate_lens(dataclasses.replace(m.cfg, causal=False), m.params, [_tokens(m.cfg)])
    trainer = LZ.TunedLensTrainer(m, _tc(2), tmp_path / "t")
    with pytest.raises(ValueError, match=f"sequence length {m.cfg.n_ctx + 1} exceeds the model context n_ctx={m.cfg.n_ctx}"):
        trainer.train(lambda s: np.zeros((1, m.cfg.n_ctx + 1), np.int32), 2, progress=False)
    with pytest.raises(ValueError, match=r"training tokens must be \[batch, seq\]; got shape \(4,\)"):
        trainer.train(lambda s: np.zeros((4,), np.int32), 2, progress=False)


def test_plot_trajectory_writes_png(tiny_model, tmp_path):
    m, _ = tiny_model("llama")
    tokens = _tokens(m.cfg, 1, 6)
    lg = LZ.logit_lens(m.cfg, m.params, tokens)[:, 0]
    for color in LZ.COLOR_BY:
        path = LZ.plot_trajectory(lg, tmp_path / f"t_{color}.png", [str(t) for t in tokens[0]], str, color=color)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no temp file left


def test_per_sequence_evaluation_matches_evaluate_lens(tiny_model):
    m, _ = tiny_model("llama")
    cfg = m.cfg
    tokens = _tokens(cfg, 3, 10, seed=4)
    L, D = cfg.n_layers, cfg.d_model
    lens = LZ.init_tuned_lens(cfg, m.params).replace(weight_LDD=0.05 * jax.random.normal(jax.random.PRNGKey(1), (L, D, D)))
    agg = LZ.evaluate_lens(cfg, m.params, [tokens], lens)
    per = LZ.evaluate_lens_per_sequence(cfg, m.params, tokens, lens)
    assert per["nll_LB"].shape == per["kl_LB"].shape == (L + 1, 3) and per["depth_BT"].shape == (3, 10)
    np.testing.assert_allclose(np.exp(per["nll_LB"].mean(1)), agg["ppl"], rtol=1e-5)
    np.testing.assert_allclose(per["kl_LB"].mean(1), agg["kl"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.bincount(per["depth_BT"].ravel(), minlength=L + 1), agg["depth_hist"])
    # control targets: the NLL of other ids, computed by hand from the lens logits
    ctrl = np.roll(tokens[:, 1:], 1, axis=0)
    got = LZ.evaluate_lens_per_sequence(cfg, m.params, tokens, lens, control_targets=ctrl)
    logp = np.asarray(jax.nn.log_softmax(LZ.tuned_lens(lens, cfg, m.params, tokens)[:, :, :-1], -1), np.float64)
    want = -np.take_along_axis(logp, ctrl[None, :, :, None], -1)[..., 0].mean(2)
    np.testing.assert_allclose(got["nll_control_LB"], want, rtol=1e-5)
    np.testing.assert_array_equal(got["nll_LB"], per["nll_LB"])
    # the default lens is the logit lens
    np.testing.assert_allclose(LZ.evaluate_lens_per_sequence(cfg, m.params, tokens)["kl_LB"].mean(1),
                               LZ.evaluate_lens(cfg, m.params, [tokens])["kl"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"control_targets must be integer ids shaped \(3, 9\)"):
        LZ.evaluate_lens_per_sequence(cfg, m.params, tokens, control_targets=ctrl[:, :-1])


def test_shifted_lens_moves_each_translator_to_its_neighbour(tiny_model):
    m, _ = tiny_model("llama")
    L, D = m.cfg.n_layers, m.cfg.d_model
    lens = LZ.init_tuned_lens(m.cfg, m.params).replace(
        bias_LD=jnp.arange(L, dtype=jnp.float32)[:, None] * jnp.ones((L, D), jnp.float32))
    got = LZ.shifted_lens(lens)
    assert np.asarray(got.bias_LD)[:, 0].tolist() == list(range(1, L)) + [L - 2]
    assert got.meta == lens.meta


def _orthogonal_setup(m, layer=1):
    """Residuals at ``layer`` of one short sequence, and a unit direction orthogonal to every one of them."""
    tokens = _tokens(m.cfg, 1, 8, seed=5)
    _, resid = LZ.residual_stack(m.cfg, m.params, tokens)
    x = np.asarray(resid[layer, 0], np.float64)  # [8, D], D = 32 > 8: a null space exists
    null = np.linalg.svd(x)[2][-1]
    return tokens, np.asarray(resid[layer, 0]), null / np.linalg.norm(null)


def test_causal_basis_is_orthonormal_and_beats_random_directions(tiny_model):
    m, _ = tiny_model("llama")
    cfg, layer = m.cfg, 1
    _, resid = LZ.residual_stack(cfg, m.params, _tokens(cfg, 4, 12, seed=6))
    x = np.asarray(resid[layer, :, 1:]).reshape(-1, cfg.d_model)
    lens = LZ.init_tuned_lens(cfg, m.params)
    basis = LZ.causal_basis(lens, cfg, m.params, layer, x, 4, steps=30, lr=0.05, seed=0)
    V = basis.directions_KD
    assert V.shape == (4, cfg.d_model) and basis.layer == layer
    np.testing.assert_allclose(V @ V.T, np.eye(4), atol=1e-5)
    np.testing.assert_allclose(basis.mean_D, x.mean(0), rtol=1e-5, atol=1e-6)
    rand = np.random.default_rng(0).normal(size=(8, cfg.d_model))
    infl = LZ.lens_influence(lens, cfg, m.params, layer, x, np.concatenate([V[:1], rand])).mean(1)
    np.testing.assert_allclose(infl[0], basis.influence_K[0], rtol=1e-4)
    assert infl[0] > infl[1:].max(), infl
    assert basis.influence_K[0] >= basis.influence_K[-1]  # greedy: the first direction is the most influential found
    # influence is the mean KL(lens || lens of the mean-ablated vectors), computed here by hand
    u = V[0]
    ablated = x - ((x - x.mean(0)) @ u)[:, None] * u
    p = jax.nn.log_softmax(LZ.decode(cfg, m.params, jnp.asarray(x)), -1)
    q = jax.nn.log_softmax(LZ.decode(cfg, m.params, jnp.asarray(ablated, jnp.float32)), -1)
    np.testing.assert_allclose(infl[0], float(jnp.mean(jnp.sum(jnp.exp(p) * (p - q), -1))), rtol=1e-3)


def test_mean_ablating_a_direction_orthogonal_to_every_activation_changes_nothing(tiny_model):
    m, _ = tiny_model("llama")
    cfg, layer = m.cfg, 1
    tokens, x, null = _orthogonal_setup(m, layer)
    lens = LZ.init_tuned_lens(cfg, m.params)
    mean = np.asarray(x, np.float64).mean(0)
    rand = np.random.default_rng(1).normal(size=cfg.d_model)
    infl = LZ.lens_influence(lens, cfg, m.params, layer, x, np.stack([null, rand]), mean)
    assert np.abs(infl[0]).max() < 1e-6 and infl[1].mean() > 1e-4, infl
    eff = LZ.model_ablation_effect(m, tokens, layer, np.stack([null, rand]), mean)
    assert eff.shape == (2, 1) and eff[0, 0] < 1e-6 and eff[1, 0] > 1e-4, eff


def test_model_ablation_effect_equals_a_manual_project_intervention(tiny_model):
    from interpjax import Patch

    m, _ = tiny_model("llama")
    cfg, layer = m.cfg, 2
    tokens = _tokens(cfg, 2, 9, seed=7)
    u = np.random.default_rng(2).normal(size=cfg.d_model)
    u /= np.linalg.norm(u)
    mean = np.random.default_rng(3).normal(size=cfg.d_model)
    pos = np.arange(1, 9)
    got = LZ.model_ablation_effect(m, tokens, layer, u[None] * 3.0, mean, positions=pos)  # any norm: made unit
    _, cache = m.run_with_cache(tokens, sites=["resid_pre"])
    x = np.asarray(cache["resid_pre", layer], np.float64)
    ablated = x - ((x - mean) @ u)[..., None] * u
    ablated[:, 0] = x[:, 0]
    iv = Patch(site="resid_pre", layer=layer, value=jnp.asarray(ablated, jnp.float32))
    lp = jax.nn.log_softmax(jnp.asarray(m(tokens), jnp.float32)[:, pos], -1)
    lq = jax.nn.log_softmax(jnp.asarray(m(tokens, interventions=iv), jnp.float32)[:, pos], -1)
    want = np.asarray(jnp.sum(jnp.exp(lp) * (lp - lq), -1).mean(-1))
    np.testing.assert_allclose(got[0], want, rtol=1e-3, atol=1e-6)


def test_spearman_matches_hand_ranks():
    assert LZ.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert LZ.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks [0, 1, 2, 3] vs [1, 0, 3, 2]: 1 - 6 * 4 / (4 * 15) = 0.6
    assert LZ.spearman([0.1, 0.2, 0.3, 0.4], [2.0, 1.0, 9.0, 5.0]) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="equal length >= 2"):
        LZ.spearman([1, 2], [1, 2, 3])


def test_causal_basis_bad_inputs_raise_before_compute(tiny_model):
    m, _ = tiny_model("llama")
    cfg = m.cfg
    lens = LZ.init_tuned_lens(cfg, m.params)
    x = np.zeros((4, cfg.d_model), np.float32)
    with pytest.raises(ValueError, match=f"layer must be an integer in 0..{cfg.n_layers - 1}"):
        LZ.causal_basis(lens, cfg, m.params, cfg.n_layers, x, 2)
    with pytest.raises(ValueError, match=f"k must be an integer in 1..{cfg.d_model}"):
        LZ.causal_basis(lens, cfg, m.params, 0, x, 0)
    with pytest.raises(ValueError, match=r"residuals must be \[N, 32\]"):
        LZ.causal_basis(lens, cfg, m.params, 0, x[:, :5], 2)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        LZ.causal_basis(lens, cfg, m.params, 0, x, 2, steps=0)
    with pytest.raises(ValueError, match="finite and non-zero"):
        LZ.lens_influence(lens, cfg, m.params, 0, x, np.zeros((1, cfg.d_model)))
    with pytest.raises(ValueError, match="positions must be a non-empty 1-D array"):
        LZ.model_ablation_effect(m, _tokens(cfg, 1, 5), 0, np.ones((1, cfg.d_model)), np.zeros(cfg.d_model),
                                 positions=np.array([5]))
    with pytest.raises(ValueError, match=r"mean_D must have shape \(32,\)"):
        LZ.model_ablation_effect(m, _tokens(cfg, 1, 5), 0, np.ones((1, cfg.d_model)), np.zeros(3))
