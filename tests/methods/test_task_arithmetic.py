"""Task arithmetic on param pytrees: exact apply, the algebra, norm-matched random vectors, the
one-program lambda sweep against a loop, and the refusals."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interpjax.core.handle import Model
from interpjax.methods import task_arithmetic as ta
from interpjax.testing import tiny_config
from interpjax.train import init_params, lm_loss


@pytest.fixture(scope="module")
def tiny():
    """A tiny from-scratch Model, a 'fine-tuned' copy (base + small noise) and a second one."""
    cfg = tiny_config()
    base = Model(cfg=cfg, params=init_params(cfg, jax.random.key(0)))

    def nudged(seed, scale):
        leaves, treedef = jax.tree.flatten(base.params)
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        return base.replace(params=jax.tree.unflatten(treedef, [
            x + scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]))

    return base, nudged(1, 0.01), nudged(2, 0.01)


def _np(tree):
    return [np.array(x) for x in jax.tree.leaves(tree)]


def _equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(_np(a), _np(b)))


def _adversarial(seed, n=200_000):
    """float32 values spread over 80 binades with random signs: where base + (ft - base) != ft."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * np.exp2(rng.integers(-40, 40, n))).astype(np.float32)


def test_apply_at_one_is_ft_bit_for_bit_and_at_zero_the_base(tiny):
    b, f = _adversarial(0), _adversarial(1)
    naive = (jnp.asarray(b) + (jnp.asarray(f) - jnp.asarray(b)))
    assert not np.array_equal(np.asarray(naive), f)  # the plain sum is not exact on these values ...
    tv = ta.task_vector({"w": f}, {"w": b})
    assert np.array_equal(np.asarray(ta.apply({"w": b}, tv, 1.0)["w"]), f)  # ... the compensated one is
    assert np.array_equal(np.asarray(ta.apply({"w": b}, tv, 0.0)["w"]), b)
    assert np.array_equal(np.asarray(tv.delta["w"]) , np.asarray(jnp.asarray(f) - jnp.asarray(b)))
    base, ft, _ = tiny
    tau = ta.task_vector(ft, base)
    out = ta.apply(base, tau, 1.0)
    assert isinstance(out, Model) and out.cfg == base.cfg and _equal(out.params, ft.params)
    assert _equal(ta.apply(base, tau, 0.0).params, base.params)
    # without the residual the result at 1 is within an ulp, not promised exact
    approx = ta.apply(base.params, tau.drop_residual(), 1.0)
    for x, y in zip(_np(approx), _np(ft.params)):
        np.testing.assert_allclose(x, y, rtol=2e-7, atol=1e-9)


def test_nothing_of_the_callers_is_changed(tiny):
    base, ft, _ = tiny
    before = (_np(base.params), _np(ft.params))
    tau = ta.task_vector(ft, base)
    ta.apply(base, -tau * 2.0, 0.5)
    ta.lambda_sweep(base, tau, [0.0, 1.0], lambda p: jnp.sum(p["embed"]["tok"]))
    ta.random_like(tau, 3)
    for a, b in zip(before[0] + before[1], _np(base.params) + _np(ft.params)):
        assert np.array_equal(a, b)


def test_algebra(tiny):
    base, ft_a, ft_b = tiny
    a, b = ta.task_vector(ft_a, base), ta.task_vector(ft_b, base)
    da, db = _np(a.delta), _np(b.delta)
    assert all(np.array_equal(x, y + z) for x, y, z in zip(_np((a + b).delta), da, db))
    assert all(np.array_equal(x, -y) for x, y in zip(_np((-a).delta), da))
    assert all(np.array_equal(x, y - z) for x, y, z in zip(_np((a - b).delta), da, db))
    assert all(np.array_equal(x, np.float32(2.5) * y) for x, y in zip(_np((2.5 * a).delta), da))
    assert _equal((a * 2.5).delta, (2.5 * a).delta)
    c = ta.random_like(a, 0)
    assert _equal(ta.analogy(a, b, c).delta, (a - b + c).delta)
    assert _equal(ta.combine([a, b]).delta, (a + b).delta)
    assert _equal(ta.combine([a, b], [0.5, -2.0]).delta, (0.5 * a + (-2.0) * b).delta)
    # negation and scale commute with apply
    for x, y in zip(_np(ta.apply(base.params, -a, 0.7)), _np(ta.apply(base.params, a, -0.7))):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-8)
    # apply(apply(base, a), b) is apply(base, a + b)
    for x, y in zip(_np(ta.apply(ta.apply(base.params, a), b)), _np(ta.apply(base.params, a + b))):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    # a task vector is a pytree: jax.tree.map and jit see delta and residual
    assert len(jax.tree.leaves(a)) == 2 * len(jax.tree.leaves(base.params))
    assert len(jax.tree.leaves(c)) == len(jax.tree.leaves(base.params))  # random: no residual
    doubled = jax.jit(lambda t: t * 2.0)(a)
    assert isinstance(doubled, ta.TaskVector) and _equal(doubled.delta, (2.0 * a).delta)


def test_norms_and_norm_matched_random_vectors(tiny):
    base, ft, _ = tiny
    tau = ta.task_vector(ft, base)
    leaves = _np(tau.delta)
    want = np.sqrt(sum(float((x.astype(np.float64) ** 2).sum()) for x in leaves))
    np.testing.assert_allclose(float(tau.norm()), want, rtol=1e-5)
    r = ta.random_like(tau, 0)
    for x, y in zip(jax.tree.leaves(r.leaf_norms()), jax.tree.leaves(tau.leaf_norms())):
        np.testing.assert_allclose(float(x), float(y), rtol=1e-5)
    np.testing.assert_allclose(float(r.norm()), want, rtol=1e-5)
    g = ta.random_like(tau, 0, match="global")
    np.testing.assert_allclose(float(g.norm()), want, rtol=1e-5)
    gl = np.array([float(x) for x in jax.tree.leaves(g.leaf_norms())])
    tl = np.array([float(x) for x in jax.tree.leaves(tau.leaf_norms())])
    assert not np.allclose(gl, tl, rtol=0.05)  # only the global norm is matched
    # seeded, different per seed, and a direction unrelated to tau
    assert _equal(ta.random_like(tau, 0).delta, r.delta) and not _equal(ta.random_like(tau, 1).delta, r.delta)
    flat = lambda t: np.concatenate([x.ravel() for x in _np(t.delta)])  # noqa: E731
    cos = flat(r) @ flat(tau) / (np.linalg.norm(flat(r)) * np.linalg.norm(flat(tau)))
    assert abs(cos) < 0.05
    # a zero leaf stays zero under per-leaf matching
    z = ta.TaskVector({"a": jnp.zeros(5, jnp.float32), "b": jnp.ones(4, jnp.float32)})
    rz = ta.random_like(z, 0)
    assert np.array_equal(np.asarray(rz.delta["a"]), np.zeros(5, np.float32))
    np.testing.assert_allclose(float(rz.norm()), 2.0, rtol=1e-6)


def _loss_metric(tokens):
    cfg = tiny_config()
    return lambda params: lm_loss(cfg, params, tokens)[0]


def test_lambda_sweep_is_one_program_equal_to_a_loop(tiny):
    base, ft, _ = tiny
    tau = ta.task_vector(ft, base)
    tokens = jax.random.randint(jax.random.key(5), (3, 12), 0, base.cfg.vocab_size, jnp.int32)
    metric = _loss_metric(tokens)
    lams = [-2.0, -1.0, 0.0, 0.5, 1.0]
    loop = np.array([float(jax.jit(metric)(ta.apply(base.params, tau, lam))) for lam in lams], np.float32)
    assert np.ptp(loop) > 1e-3  # lam really moves the metric
    n0 = ta._sweep._cache_size()
    for chunk in (None, 2, 1):
        got = ta.lambda_sweep(base, tau, lams, metric, chunk=chunk)
        assert got.shape == (5,) and got.dtype == np.float32
        np.testing.assert_allclose(got, loop, rtol=1e-6)
    assert ta._sweep._cache_size() - n0 == 3  # one program per chunk layout ...
    ta.lambda_sweep(base, tau, [3.0, 1.0, 2.0, 0.0, 1.5], metric, chunk=2)
    assert ta._sweep._cache_size() - n0 == 3  # ... reused for new lams of the same layout
    # a per-item metric comes back [K, N]
    per_row = lambda p: jax.vmap(lambda t: lm_loss(base.cfg, p, t[None])[0])(tokens)  # noqa: E731
    rows = ta.lambda_sweep(base.params, tau, lams[:3], per_row, chunk=2)
    assert rows.shape == (3, 3)
    np.testing.assert_allclose(rows.mean(1), loop[:3], rtol=1e-5)


def test_refusals_name_the_value(tiny):
    base, ft, _ = tiny
    p = base.params
    tau = ta.task_vector(ft, base)
    missing = {k: v for k, v in p.items() if k != "embed"}
    with pytest.raises(ValueError, match="embed"):
        ta.task_vector(missing, p)
    reshaped = dict(p, embed={"tok": p["embed"]["tok"][:-1]})
    with pytest.raises(ValueError, match=r"\['embed'\]\['tok'\].*shape"):
        ta.task_vector(reshaped, p)
    halved = dict(p, embed={"tok": p["embed"]["tok"].astype(jnp.bfloat16)})
    with pytest.raises(ValueError, match=r"\['embed'\]\['tok'\].*dtype"):
        ta.task_vector(halved, p)
    with pytest.raises(ValueError, match="floating-point"):
        ta.task_vector({"i": jnp.ones(3, jnp.int32)}, {"i": jnp.zeros(3, jnp.int32)})
    other = Model(cfg=tiny_config(n_layers=3), params=init_params(tiny_config(n_layers=3), jax.random.key(0)))
    with pytest.raises(ValueError, match="different configs"):
        ta.task_vector(other, base)
    with pytest.raises(ValueError, match="shape"):
        ta.apply(other, tau)
    with pytest.raises(TypeError, match="TaskVector"):
        ta.apply(base, p)
    with pytest.raises(TypeError, match="Model or a param pytree"):
        ta.task_vector([1.0], p)
    with pytest.raises(TypeError, match="by a number only"):
        tau * tau
    with pytest.raises(ValueError, match="finite"):
        ta.apply(base, tau, float("nan"))
    with pytest.raises(TypeError, match="real number"):
        ta.apply(base, tau, True)
    with pytest.raises(ValueError, match="weights"):
        ta.combine([tau, tau], [1.0])
    with pytest.raises(ValueError, match="at least one"):
        ta.combine([])
    with pytest.raises(ValueError, match="match='per_leaf'.*leaf"):
        ta.random_like(tau, 0, match="per_leaf")
    with pytest.raises(ValueError, match="seed"):
        ta.random_like(tau, -1)
    metric = lambda q: jnp.sum(q["embed"]["tok"])  # noqa: E731
    with pytest.raises(ValueError, match="non-empty 1-D"):
        ta.lambda_sweep(base, tau, [], metric)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        ta.lambda_sweep(base, tau, [[0.0, 1.0]], metric)
    with pytest.raises(ValueError, match="chunk"):
        ta.lambda_sweep(base, tau, [0.0, 1.0], metric, chunk=0)
    n0 = ta._sweep._cache_size()
    with pytest.raises(ValueError, match="one float array"):
        ta.lambda_sweep(base, tau, [0.0, 1.0], lambda q: (q["embed"]["tok"][0, 0], q["embed"]["tok"][0, 1]))
    with pytest.raises(ValueError, match="one float array"):
        ta.lambda_sweep(base, tau, [0.0, 1.0], lambda q: jnp.argmax(q["embed"]["tok"][0]))
    assert ta._sweep._cache_size() == n0  # refused before compiling
