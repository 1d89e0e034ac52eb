"""The one Trainer: pluggable losses and trainables, the cached compiled step, metrics kept on
device, and the reliability defects of issue 15 (the caller's model survives training; bad
batches and settings are refused before compute, naming the value)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from interpjax import Model, forward
from interpjax.testing import tiny_config
from interpjax.train import TrainConfig, Trainer, init_params, train_in_memory

CFG = tiny_config(vocab_size=16, d_model=32, n_layers=2, n_ctx=16)


def batch_fn(step, B=4, T=12):
    rng = np.random.default_rng(step)
    return {"tokens": (rng.integers(0, 16, (B, 1)) + np.arange(T)) % 16}


def regression(frozen, w, batch, key):
    """A loss with a frozen argument (the design matrix) and a key: least squares plus a noise term."""
    x = frozen["x"][batch["rows"]]
    err = x @ w["a"] + w["b"] - frozen["y"][batch["rows"]]
    return jnp.mean(err ** 2) + 0.0 * jax.random.normal(key, ()), {"max_err": jnp.max(jnp.abs(err))}


def frozen_data():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 5)).astype(np.float32))
    return {"x": x, "y": x @ jnp.arange(5.0) + 1.0}


def rows(step):
    return {"rows": np.random.default_rng(step).choice(64, 16, replace=False)}


def test_generic_loss_trains_any_pytree_and_keeps_frozen_arrays():
    frozen = frozen_data()
    tc = TrainConfig(lr=0.05, weight_decay=0.0, log_every=5, total_steps=200)
    trainer = Trainer(Partial(regression, frozen), tc, None, trainable={"a": jnp.zeros(5), "b": jnp.zeros(())})
    last = trainer.train(rows, 200, progress=False, history=True)
    assert set(last) == {"step", "loss", "max_err", "grad_norm", "param_norm"} and last["step"] == 200
    np.testing.assert_allclose(np.asarray(trainer.trainable["a"]), np.arange(5.0), atol=0.05)
    hist = trainer.stacked_history()
    assert hist["loss"].shape == (200,) and hist["loss"][-1] < 0.01 * hist["loss"][0]
    np.asarray(frozen["x"])  # frozen arrays are arguments, never donated: still alive
    with pytest.raises(ValueError, match="needs trainable="):
        Trainer(regression, tc)
    with pytest.raises(ValueError, match="floating-point"):
        Trainer(Partial(regression, frozen), tc, trainable={"a": jnp.zeros(5, jnp.int32)})


def test_compiled_step_is_cached_across_trainers():
    frozen = frozen_data()
    tc = TrainConfig(lr=0.05, weight_decay=0.0, log_every=1)
    a = Trainer(Partial(regression, frozen), tc, trainable={"a": jnp.zeros(5), "b": jnp.zeros(())})
    a.train(rows, 2, progress=False)
    size = a.step_fn._cache_size()
    b = Trainer(Partial(regression, frozen), tc, trainable={"a": jnp.ones(5), "b": jnp.zeros(())})
    b.train(rows, 3, progress=False)
    assert b.step_fn is a.step_fn and b.step_fn._cache_size() == size  # no new compile


def test_metrics_stay_on_device_between_logging_steps(monkeypatch):
    """Only logging steps copy metrics to the host (one explicit ``device_get`` each); the other
    steps' metrics stay device arrays. The transfer guard enforces "no implicit copy" on
    accelerators (on CPU a device array is host memory and the guard cannot fire)."""
    frozen = frozen_data()
    tc = TrainConfig(lr=0.05, weight_decay=0.0, log_every=4)
    trainer = Trainer(Partial(regression, frozen), tc, trainable={"a": jnp.zeros(5), "b": jnp.zeros(())})
    trainer.train(rows, 1, progress=False)  # compile outside the guard
    logged = []
    real = Trainer._log_row
    monkeypatch.setattr(Trainer, "_log_row", lambda self, m: logged.append(self.step) or real(self, m))
    with jax.transfer_guard_device_to_host("disallow"):
        last = trainer.train(rows, 10, progress=True, history=True)
    assert logged == [4, 8, 10] and last["step"] == 10
    assert len(trainer.history) == 9 and all(isinstance(v, jax.Array) for h in trainer.history for v in h.values())


def test_callers_params_survive_training(tmp_path):
    """Issue 15.1: the step donates its input; the caller's arrays must be copied first."""
    params = init_params(CFG, jax.random.PRNGKey(0))
    ref = jax.tree.map(np.asarray, params)
    model = Model(CFG, params)
    tokens = batch_fn(0)["tokens"]
    tc = TrainConfig(lr=3e-3, log_every=1, ckpt_every=100)
    t1 = Trainer(CFG, tc, tmp_path / "a", params=params)
    t1.train(batch_fn, 2, progress=False)
    t2 = Trainer(model, tc, tmp_path / "b")
    t2.train(batch_fn, 2, progress=False)
    out = train_in_memory(CFG, tc, lambda s: (batch_fn(s)["tokens"], np.ones((4, 12))), 2, params=params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), b)  # alive and unchanged
    np.asarray(model(tokens))  # the caller's model still runs
    for trained in (t1.params, t2.params, out):
        assert not np.array_equal(np.asarray(jax.tree.leaves(trained)[0]), jax.tree.leaves(ref)[0])
    np.testing.assert_array_equal(np.asarray(forward(CFG, t1.params, tokens)), np.asarray(forward(CFG, t2.params, tokens)))


BAD_BATCHES = [
    ({"tokens": np.zeros((2, 8), np.float32)}, "dtype float32"),
    ({"tokens": np.full((2, 8), 16)}, r"ids \[16\] outside the vocabulary 0..15"),
    ({"tokens": np.full((2, 8), 2**31 + 3, np.int64)}, r"ids \[2147483651\] outside the vocabulary"),
    ({"tokens": np.zeros((2, 17), np.int32)}, "sequence length 17 exceeds the model context n_ctx=16"),
    ({"tokens": np.zeros((2, 8), np.int32), "loss_mask": np.zeros((2, 7))}, r"loss_mask has shape \(2, 7\)"),
    ({"tokens": np.zeros((2, 8), np.int32), "loss_mask": np.full((2, 8), np.nan)}, r"finite and >= 0; got \[nan\]"),
    (np.zeros((2, 8), np.int32), "an LM training batch is a dict"),
]


@pytest.mark.parametrize("batch,match", BAD_BATCHES, ids=["float", "vocab", "int64-wrap", "n_ctx", "mask-shape",
                                                         "mask-nan", "not-a-dict"])
def test_bad_training_batches_are_refused_before_compute(batch, match, tmp_path):
    """Issue 15.3: float tokens, ids >= vocab (also int64 ids that would wrap in an int32 cast),
    sequences past the context: each a ValueError naming the value, before any step runs."""
    trainer = Trainer(CFG, TrainConfig(log_every=1), tmp_path)
    before = np.asarray(jax.tree.leaves(trainer.params)[0]).copy()
    with pytest.raises(ValueError, match=match):
        trainer.train(lambda s: batch, 1, progress=False)
    assert trainer.step == 0 and trainer.log_path.read_text() == ""
    np.testing.assert_array_equal(np.asarray(jax.tree.leaves(trainer.params)[0]), before)


def test_train_in_memory_refuses_float_tokens():
    tokens = np.zeros((2, 8), np.float64)
    with pytest.raises(ValueError, match="got dtype float64"):
        train_in_memory(CFG, TrainConfig(), lambda s: (tokens, np.ones((2, 8))), 1)


@pytest.mark.parametrize("lr", [math.nan, math.inf, -1e-3])
def test_bad_learning_rates_are_refused(lr):
    """Issue 15.4: a NaN, infinite or negative lr would train to NaN or ascend."""
    with pytest.raises(ValueError, match=f"TrainConfig.lr must be a finite number >= 0.0; got {lr!r}"):
        TrainConfig(lr=lr)


@pytest.mark.parametrize("field", ["log_every", "ckpt_every"])
def test_zero_log_or_checkpoint_interval_is_refused(field):
    """Issue 15.6: ``step % 0`` crashed after the first step; now refused when the config is built."""
    with pytest.raises(ValueError, match=f"TrainConfig.{field} must be >= 1; got 0"):
        TrainConfig(**{field: 0})


def test_other_bad_settings_are_refused():
    for kw, match in [(dict(schedule="cos"), r"'cos' is not one of \('constant', 'cosine', 'linear'\)"),
                      (dict(b2=1.0), "b2 must be a finite number >= 0.0 and < 1.0; got 1.0"),
                      (dict(clip_norm=0.0), "clip_norm must be a finite number > 0.0"),
                      (dict(grad_accum=0), "grad_accum must be >= 1; got 0"),
                      (dict(total_steps=0), "total_steps must be >= 1")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**kw)
    with pytest.raises(TypeError, match="log_every must be an integer; got 2.5"):
        TrainConfig(log_every=2.5)
    with pytest.raises(TypeError, match="lr must be a real number; got '1e-3'"):
        TrainConfig(lr="1e-3")
    with pytest.raises(TypeError, match="Trainer trains a Config"):
        Trainer("model", TrainConfig())
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        Trainer(CFG, TrainConfig()).train(batch_fn, 2.5, progress=False)
