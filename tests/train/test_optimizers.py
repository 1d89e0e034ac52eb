"""The optimizer registry: every entry trains, unknown names are refused with the valid ones,
registration, and optimizer-state sizes (Adafactor vs AdamW) computed without allocating."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from interpjax import Config
from interpjax.io.convert import expected_shapes
from interpjax.testing import tiny_config
from interpjax.train import (OPTIMIZERS, TrainConfig, Trainer, make_optimizer, optimizer_state_bytes,
                             register_optimizer, tree_bytes)

CFG = tiny_config(vocab_size=16, d_model=32, n_layers=2, n_ctx=16)

# SmolLM2-135M's shapes: 30 layers, d 576, 9 heads / 3 kv, head 64, MLP 1536, vocab 49152, tied
SMOL = Config(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_head=64, d_mlp=1536, n_ctx=8192,
              norm="rmsnorm", norm_bias=False, positions="rotary", rotary_dim=64, mlp="gated", activation="silu",
              tie_embeddings=True)


def abstract_params(cfg):
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), expected_shapes(cfg),
                        is_leaf=lambda x: isinstance(x, tuple))


def quadratic(w, batch, key):
    del key
    err = batch["x"] @ w["a"] - batch["y"]
    return jnp.mean(err ** 2), {}


def quad_batch(step):
    rng = np.random.default_rng(step)
    x = rng.normal(size=(16, 8)).astype(np.float32)
    return {"x": x, "y": x @ np.arange(8, dtype=np.float32)}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_registered_optimizer_trains(name):
    tc = TrainConfig(optimizer=name, lr=0.05, weight_decay=0.0, total_steps=60, log_every=1)
    trainer = Trainer(quadratic, tc, None, trainable={"a": jnp.ones(8)})  # Adafactor scales steps by |params|
    first = trainer.train(quad_batch, 1, progress=False)["loss"]
    last = trainer.train(quad_batch, 60, progress=False)["loss"]
    assert last < 0.5 * first, (name, first, last)


def test_unknown_optimizer_is_refused_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"'adamm' is not registered; valid: \['adafactor', 'adam', 'adamw', 'sgd'"):
        TrainConfig(optimizer="adamm")
    with pytest.raises(ValueError, match="'adam' has no weight decay; got TrainConfig.weight_decay=0.01"):
        make_optimizer(TrainConfig(optimizer="adam"))


def test_register_optimizer_and_refuse_a_duplicate():
    register_optimizer("test_lion", lambda tc, lr: optax.lion(lr, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay))
    try:
        tc = TrainConfig(optimizer="test_lion", lr=0.01, weight_decay=0.0, log_every=1)
        trainer = Trainer(quadratic, tc, None, trainable={"a": jnp.zeros(8)})
        first = trainer.train(quad_batch, 1, progress=False)["loss"]
        assert trainer.train(quad_batch, 40, progress=False)["loss"] < first
        with pytest.raises(ValueError, match="'test_lion' is already registered"):
            register_optimizer("test_lion", lambda tc, lr: optax.sgd(lr))
    finally:
        OPTIMIZERS.pop("test_lion")


def test_adamw_matches_a_plain_optax_loop_bitwise():
    """The one Trainer adds nothing to the optimizer's arithmetic: the same updates as optax by hand."""
    tc = TrainConfig(lr=0.05, weight_decay=0.1, total_steps=5, clip_norm=1.0, schedule="cosine", warmup_steps=2)
    trainer = Trainer(quadratic, tc, None, trainable={"a": jnp.zeros(8)})
    trainer.train(quad_batch, 5, progress=False)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
        optax.join_schedules([optax.linear_schedule(0.0, 0.05, 2), optax.cosine_decay_schedule(0.05, 3)], [2]),
        b1=0.9, b2=0.98, weight_decay=0.1))
    w = {"a": jnp.zeros(8)}
    state = opt.init(w)

    @jax.jit
    def step(w, state, batch):
        g = jax.grad(lambda w: quadratic(w, batch, None)[0])(w)
        with jax.numpy_dtype_promotion("standard"):  # optax by hand: its bias correction mixes float and int32
            u, state = opt.update(g, state, w)
        return optax.apply_updates(w, u), state

    for s in range(5):
        w, state = step(w, state, quad_batch(s))
    np.testing.assert_array_equal(np.asarray(trainer.trainable["a"]), np.asarray(w["a"]))


def test_optimizer_state_bytes_adafactor_vs_adamw():
    """AdamW keeps two moments (2x the params); Adafactor factors the second moment of matrices
    whose two largest axes are >= 128 and keeps no first moment. Computed with eval_shape."""
    tiny = abstract_params(CFG)
    smol = abstract_params(SMOL)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(smol))  # nothing allocated
    p_tiny, p_smol = tree_bytes(tiny), tree_bytes(smol)
    assert p_smol == 538_060_032  # 134.5 M float32 params (tied embeddings)
    adamw = TrainConfig(optimizer="adamw")
    ada = TrainConfig(optimizer="adafactor")
    # AdamW: mu and nu of every param plus step counters
    assert 0 <= optimizer_state_bytes(adamw, tiny) - 2 * p_tiny < 64
    assert 0 <= optimizer_state_bytes(adamw, smol) - 2 * p_smol < 64
    # tiny: no axis reaches 128, nothing is factored: one second moment per param
    assert abs(optimizer_state_bytes(ada, tiny) - p_tiny) < 0.01 * p_tiny
    # SmolLM2: embedding and MLP factored; the [L, D, heads, 64] attention weights are not (64 < 128)
    attn = 4 * 30 * (2 * 576 * 9 * 64 + 2 * 576 * 3 * 64)
    got = optimizer_state_bytes(ada, smol)
    assert attn < got < attn + 0.005 * p_smol, (got, attn)
    assert got < 0.1 * optimizer_state_bytes(adamw, smol)  # 107 MB vs 1076 MB
