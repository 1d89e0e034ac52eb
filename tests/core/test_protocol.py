"""The intervention protocol: a new intervention class, defined only here, works in ``forward``,
in KV-cache ``generate`` (== forward on the returned sequence) and in ``sweep`` (packed rows,
position buckets and the full recompute == a loop of forwards), without touching library files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

import interpjax.sweep as sw
from interpjax import forward, run_with_cache
from interpjax.core import interventions as ivmod
from interpjax.core.sites import site_shape
from interpjax.generate import generate, greedy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweep"))
from sweep_worker import logit_diff, make_model, tokens  # noqa: E402

TOL = 1e-5


@struct.dataclass
class Clamp(ivmod.Intervention):
    """Clamp the component of x along ``direction`` to [lo, hi]; ``lo``/``hi`` are scalars or
    per-position arrays shaped like a trailing part of the site shape without its last axis."""

    site: str = struct.field(pytree_node=False)
    layer: Any = None
    direction: Any = None
    lo: Any = -1.0
    hi: Any = 1.0
    positions: Any = None
    heads: Any = None

    VALUE_FIELDS = ("direction",)  # lo / hi may be infinite (a one-sided clamp)
    SEQ_FIELDS = (("lo", 0, 1), ("hi", 0, 1))

    def edit(self, x, layer_index):
        u = jnp.asarray(self.direction, jnp.float32)
        u = u / jnp.linalg.norm(u)
        xf = x.astype(jnp.float32)
        c = xf @ u
        lo, hi = jnp.asarray(self.lo, jnp.float32), jnp.asarray(self.hi, jnp.float32)
        return (xf + (jnp.clip(c, lo, hi) - c)[..., None] * u).astype(x.dtype)

    def check(self, cfg, batch, seq, dtype):
        shape = site_shape(cfg, self.site, batch, seq)
        if np.shape(self.direction) != (shape[-1],):
            raise ValueError(f"Clamp.direction has shape {np.shape(self.direction)}; expected ({shape[-1]},)")
        ivmod.check_nonzero("Clamp.direction", self.direction)
        for name in ("lo", "hi"):
            if np.ndim(getattr(self, name)):
                ivmod.check_suffix(f"Clamp.{name}", getattr(self, name), shape[:-1])


@struct.dataclass
class UnpackableClamp(Clamp):
    packable = False


def _clamped(x, u, lo, hi):
    u = u / np.linalg.norm(u)
    c = x @ u
    return x + (np.clip(c, lo, hi) - c)[..., None] * u


@pytest.fixture(scope="module")
def rot():
    return make_model("rotary")


def test_new_class_in_forward_matches_its_definition_and_is_validated(rot):
    cfg, params = rot
    t = tokens(cfg)
    u = np.random.default_rng(0).normal(size=cfg.d_model).astype(np.float32)
    iv = Clamp("resid_pre", layer=1, direction=jnp.asarray(u), lo=-0.2, hi=0.3, positions=jnp.array([3, -1]))
    _, clean = run_with_cache(cfg, params, t, sites=["resid_pre"], layers=[1])
    _, got = run_with_cache(cfg, params, t, sites=["resid_pre"], layers=[1], interventions=iv)
    x = np.asarray(clean["resid_pre", 1])
    want = x.copy()
    want[:, [3, 7]] = _clamped(x[:, [3, 7]], u, -0.2, 0.3)
    np.testing.assert_allclose(np.asarray(got["resid_pre", 1]), want, atol=1e-5)
    assert np.abs(want - x).max() > 1e-2  # the clamp did something
    # the protocol's common checks and the class's own check, before compute
    with pytest.raises(ValueError, match=r"Clamp.direction has shape \(31,\); expected \(32,\)"):
        forward(cfg, params, t, None, Clamp("resid_pre", layer=1, direction=jnp.ones(31)))
    with pytest.raises(ValueError, match="Clamp.direction is the zero vector"):
        forward(cfg, params, t, None, Clamp("resid_pre", layer=1, direction=jnp.zeros(32)))
    with pytest.raises(ValueError, match="Clamp.direction has 1 non-finite"):
        forward(cfg, params, t, None, Clamp("resid_pre", layer=1, direction=jnp.ones(32).at[4].set(jnp.inf)))
    with pytest.raises(ValueError, match=r"Clamp.positions \[9\] out of range: valid positions are -8..7"):
        forward(cfg, params, t, None, Clamp("resid_pre", layer=1, direction=jnp.ones(32), positions=jnp.array([9])))
    with pytest.raises(ValueError, match=r"Clamp.layer 3 out of range: valid layers are 0..2"):
        forward(cfg, params, t, None, Clamp("resid_pre", layer=3, direction=jnp.ones(32)))


def test_new_class_in_kv_cache_generation_equals_full_recompute(rot):
    cfg, params = rot
    prompt = tokens(cfg, B=2, T=6, seed=3)
    mask = np.ones_like(prompt)
    mask[1, :2] = 0
    n, total = 8, 6 + 8
    rng = np.random.default_rng(1)
    u = jnp.asarray(rng.normal(size=cfg.d_model).astype(np.float32))
    hi_T = jnp.asarray(np.linspace(-0.5, 0.5, total).astype(np.float32))  # per-column bound: cut per step
    ivs = (Clamp("resid_pre", layer=1, direction=u, lo=-0.6, hi=hi_T),
           Clamp("mlp_out", layer=2, direction=u[::-1], lo=0.5, hi=0.7, positions=jnp.array([2, 7, 9, -3])))
    out = generate(cfg, params, prompt, n, ivs, attention_mask=mask)
    plain = greedy(cfg, params, prompt, n, attention_mask=mask)
    assert out.tokens.tolist() != plain.tolist()  # the intervention matters
    logits = np.asarray(forward(cfg, params, out.tokens, out.mask, ivs))
    assert (logits[:, 5:-1].argmax(-1) == out.tokens[:, 6:]).all()


def _loop(m, toks, grid):
    cfg, params = m
    out = np.zeros(grid.size, np.float32)
    for i in range(grid.size):
        lg = np.asarray(forward(cfg, params, toks, None, grid.variant(i)))
        out[i] = (lg[:, -1, 0] - lg[:, -1, 1]).mean()
    return out.reshape(grid.shape)


def test_new_class_in_sweep_equals_loop_of_forwards(rot):
    cfg, params = rot
    toks = tokens(cfg, seed=2)
    T = toks.shape[1]
    u = jnp.asarray(np.random.default_rng(4).normal(size=cfg.d_model).astype(np.float32))
    hi_T = jnp.asarray(np.linspace(-0.3, 0.4, T).astype(np.float32))
    grid = sw.product(layer=np.arange(cfg.n_layers), position=np.arange(T)).build(
        lambda a: Clamp("resid_pre", layer=a.layer, direction=u, lo=-0.4, hi=hi_T, positions=a.position))
    packed, plan = sw.sweep(rot, toks, grid, logit_diff, progress=False, return_plan=True)
    assert plan.layouts and {g[1] for g in plan.groups} == {-1}  # packed rows: windows cut lo/hi per row
    ref = _loop(rot, toks, grid)
    np.testing.assert_allclose(packed, ref, atol=TOL)
    assert np.abs(packed - packed.reshape(-1)[0]).max() > 1e-3
    buckets = sw.sweep(rot, toks, grid, logit_diff, progress=False, packing=False, position_buckets=3)
    np.testing.assert_allclose(buckets, ref, atol=TOL)
    full = sw.sweep(rot, toks, grid, logit_diff, progress=False, shortcuts=False)
    np.testing.assert_allclose(full, ref, atol=TOL)
    # a class that says it cannot be packed is run in position buckets, with the same numbers
    nopack = sw.product(layer=np.arange(cfg.n_layers), position=np.arange(T)).build(
        lambda a: UnpackableClamp("resid_pre", layer=a.layer, direction=u, lo=-0.4, hi=hi_T, positions=a.position))
    vals, plan = sw.sweep(rot, toks, nopack, logit_diff, progress=False, return_plan=True)
    assert not plan.layouts and -1 not in {g[1] for g in plan.groups}
    np.testing.assert_allclose(vals, ref, atol=TOL)
