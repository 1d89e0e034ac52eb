"""Training utilities: loss decreases, exact resume after an interruption, accumulation and remat
equivalences (resume after a real SIGKILL: ``tests/test_faults.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interpjax.testing import tiny_config
from interpjax.train import TrainConfig, Trainer, init_params, lm_loss, make_optimizer, make_train_step

CFG = tiny_config(vocab_size=16, d_model=32, n_layers=2, n_ctx=16)


def batch_fn(step, B=4, T=12):
    """A learnable stream: each row counts upward mod 16 from a random start."""
    rng = np.random.default_rng(step)
    start = rng.integers(0, 16, (B, 1))
    return {"tokens": (start + np.arange(T)) % 16}


def test_train_step_decreases_loss_on_fixed_batch():
    tc = TrainConfig(lr=3e-3, weight_decay=0.0)
    opt = make_optimizer(tc)
    step = make_train_step(CFG, tc, opt)
    params = init_params(CFG, jax.random.PRNGKey(0))
    state = opt.init(params)
    toks = jnp.asarray(batch_fn(0)["tokens"])
    mask = jnp.ones(toks.shape)
    first = None
    for _ in range(30):
        params, state, m = step(params, state, toks, mask)
        first = float(m["loss"]) if first is None else first
    assert float(m["loss"]) < 0.5 * first


def test_resume_after_kill_continues_exactly(tmp_path):
    tc = TrainConfig(lr=3e-3, log_every=1, ckpt_every=5)
    straight = Trainer(CFG, tc, tmp_path / "a")
    straight.train(batch_fn, 12, progress=False)
    # interrupted: stop at step 7 (last checkpoint at 5), "kill", resume with a fresh Trainer
    part = Trainer(CFG, tc, tmp_path / "b")
    part.train(batch_fn, 7, progress=False)
    del part
    resumed = Trainer(CFG, tc, tmp_path / "b")
    assert resumed.step == 7  # train() checkpoints at its last step
    resumed.train(batch_fn, 12, progress=False)
    a = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == list(range(1, 13))
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-6)
    with pytest.raises(ValueError, match="different model or TrainConfig"):
        Trainer(CFG, TrainConfig(lr=1e-2), tmp_path / "b")


def test_grad_accumulation_equals_big_batch():
    big = TrainConfig(lr=1e-2, weight_decay=0.1, clip_norm=None)
    acc = TrainConfig(lr=1e-2, weight_decay=0.1, clip_norm=None, grad_accum=2)
    toks = jnp.asarray(batch_fn(3, B=4)["tokens"])
    mask = jnp.ones(toks.shape)
    p0 = init_params(CFG, jax.random.PRNGKey(1))
    o1 = make_optimizer(big)
    p1, _, _ = make_train_step(CFG, big, o1)(p0, o1.init(p0), toks, mask)
    p0 = init_params(CFG, jax.random.PRNGKey(1))
    o2 = make_optimizer(acc)
    s2 = make_train_step(CFG, acc, o2)
    p2, st, _ = s2(p0, o2.init(p0), toks[:2], mask[:2])
    p2, st, _ = s2(p2, st, toks[2:], mask[2:])
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_remat_gives_same_gradients():
    params = init_params(CFG, jax.random.PRNGKey(2))
    toks = jnp.asarray(batch_fn(4)["tokens"])
    g1 = jax.grad(lambda p: lm_loss(CFG, p, toks)[0])(params)
    g2 = jax.grad(lambda p: lm_loss(CFG, p, toks, remat=True)[0])(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_data_parallel_over_8_devices_matches_one(tmp_path):
    code = """
import sys, json, numpy as np, jax
sys.path.insert(0, sys.argv[2])
from test_train import CFG, batch_fn
from interpjax.train import TrainConfig, Trainer
t = Trainer(CFG, TrainConfig(lr=3e-3, log_every=1, ckpt_every=100), sys.argv[1])
b = lambda s: batch_fn(s, B=8)
t.train(b, 4, progress=False)
print(json.dumps({"n": len(jax.devices())}))
"""
    script = tmp_path / "dp.py"
    script.write_text(code)
    here = os.path.dirname(__file__)
    env8 = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    r8 = subprocess.run([sys.executable, str(script), str(tmp_path / "d8"), here], env=env8, capture_output=True, text=True)
    r1 = subprocess.run([sys.executable, str(script), str(tmp_path / "d1"), here], capture_output=True, text=True)
    assert r8.returncode == 0 and r1.returncode == 0, r8.stderr + r1.stderr
    assert json.loads(r8.stdout.splitlines()[-1])["n"] == 8
    l8 = [json.loads(l)["loss"] for l in (tmp_path / "d8" / "metrics.jsonl").read_text().splitlines()]
    l1 = [json.loads(l)["loss"] for l in (tmp_path / "d1" / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(l8, l1, rtol=1e-5)


def test_keep_all_checkpoints_and_restore(tmp_path):
    """keep_checkpoints=None keeps every checkpoint; restore(step) gives exactly that step's params."""
    tc = TrainConfig(lr=3e-3, log_every=1, ckpt_every=100)
    t = Trainer(CFG, tc, tmp_path / "k", keep_checkpoints=None)
    snaps = {}
    for stop in (2, 4, 6):
        t.train(batch_fn, stop, progress=False)  # train() checkpoints at its last step
        snaps[stop] = jax.tree.map(np.asarray, t.params)
    assert t.all_steps() == [2, 4, 6]
    for step, ref in snaps.items():
        got = t.restore(step)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
            np.testing.assert_array_equal(np.asarray(a), b)
    with pytest.raises(ValueError, match="no checkpoint at step 3"):
        t.restore(3)
    with pytest.raises(ValueError, match="keep_checkpoints"):
        Trainer(CFG, tc, tmp_path / "bad", keep_checkpoints=0)
