"""Logit lens and tuned lens: exact identities, training, resume, prediction depth, refusals, experiments."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, STORIES, needs_stories

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


def _run_quick(name, out, *extra):
    res = subprocess.run([sys.executable, str(REPO / f"experiments/{name}/run.py"), "--quick", "--out", str(out), *extra],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((out / "quick" / "results.json").read_text())


@needs_stories
@pytest.mark.slow
def test_logit_lens_experiment_quick(tmp_path):
    res = _run_quick("logit_lens", tmp_path)
    corpus = res["per_layer"]["handwritten corpus"]
    assert corpus["kl"][-1] == 0.0 and corpus["ppl"][-1] < 10  # the model itself predicts this text well
    assert all(a > b for a, b in zip(corpus["kl"], corpus["kl"][1:]))  # KL falls layer by layer
    assert (tmp_path / "quick" / "trajectory_1_prob.png").stat().st_size > 10_000
    (traj,) = res["trajectories"]
    tracked = traj["tracked"][0]  # the opening quote after 'Tom said,'
    assert traj["prompt"].endswith("Tom said,") and tracked["token"] == '_"'
    assert tracked["rank"][-1] == 0 and tracked["rank"][0] > 0


@needs_stories
@pytest.mark.slow
def test_tuned_lens_experiment_quick_beats_logit_lens(tmp_path):
    res = _run_quick("tuned_lens", tmp_path, "--workdir", str(tmp_path / "work"), "--no-progress")
    assert res["tuned_beats_logit_every_intermediate_layer"] == {
        "corpus": {"ppl": True, "kl": True}, "templates": {"ppl": True, "kl": True}}
    for s in ("corpus", "templates"):
        assert res["eval"][f"tuned/{s}"]["ppl"][-1] == res["eval"][f"logit/{s}"]["ppl"][-1]
    for f in ("perplexity.png", "prediction_depth.png", "trajectory_tuned.png", "lens.safetensors"):
        assert (tmp_path / "quick" / f).stat().st_size > 0
