"""Sweeps: grids, sweep == loop of forwards, every minimal-recompute shortcut == full recompute
(<= 1e-5 fp32), lazy readout, one compilation per chunk shape, chunking to a memory budget,
standard sweeps and plots, errors before compute. Resume after a SIGKILL and the refusal of a
changed resume are in ``tests/test_faults.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import interpjax.sweep as sw
from interpjax import Ablate, Add, AttentionKnockout, Patch, Project, Scale, forward, run_with_cache
from interpjax.sweep import plan as PL
from interpjax.sweep import program as PG

sys.path.insert(0, str(Path(__file__).parent))
from sweep_worker import logit_diff, make_model, patch_grid, tokens  # noqa: E402

TOL = 1e-5
KINDS = ("rotary", "learned", "parallel")


@pytest.fixture(scope="module", params=KINDS)
def mp(request):
    return make_model(request.param)


@pytest.fixture(scope="module")
def rot():
    return make_model("rotary")


def vec(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def both(m, toks, grid, metric=logit_diff, **kw):
    """(shortcut result, plain full-recompute result)."""
    a = sw.sweep(m, toks, grid, metric, progress=False, **kw)
    b = sw.sweep(m, toks, grid, metric, progress=False, shortcuts=False, **kw)
    return a, b


def loop(m, toks, grid, mask=None, base=()):
    """Reference: one eager forward per variant, metric on full logits."""
    cfg, params = m
    out = np.zeros(grid.size, np.float32)
    for i in range(grid.size):
        lg = np.asarray(forward(cfg, params, toks, mask, tuple(base) + grid.variant(i)))
        out[i] = (lg[:, -1, 0] - lg[:, -1, 1]).mean()
    return out.reshape(grid.shape)


# ---------------------------------------------------------------------------------------------
# grids


def test_grid_product_zip_variant_and_stacked():
    v = np.arange(8.0, dtype=np.float32)
    space = sw.product(sw.zip(layer=np.array([0, 2]), value=np.stack([v, -v])), coeff=np.array([1.0, 2.0, 3.0]))
    assert space.shape == (2, 3)
    grid = space.build(lambda a: Add("resid_pre", layer=a.layer, vector=a.value, coeff=a.coeff))
    assert grid.shape == (2, 3) and grid.names == ("layer", "coeff") and grid.size == 6
    assert grid.ticks == ((0, 2), (1.0, 2.0, 3.0))
    (iv,) = grid.variant(4)  # (1, 1)
    assert int(iv.layer) == 2 and float(iv.coeff) == 2.0 and np.array_equal(iv.vector, -v)
    st = grid.stacked()[0]
    assert st.layer.shape == (2, 3) and st.coeff.shape == (2, 3) and st.vector.shape == (2, 3, 8)
    assert np.array_equal(st.layer[:, 0], [0, 2]) and np.array_equal(st.coeff[1], [1.0, 2.0, 3.0])
    # compact storage: the zipped field varies along axis 0 only
    refs = {r.axes: r.data.shape for r in grid.refs()}
    assert refs[(0,)] in ((2,), (2, 8)) and refs[(1,)] == (3,)
    # from_stacked round trip (shared fields given size-1 leading axes)
    g2 = sw.from_stacked(Add("resid_pre", layer=st.layer, vector=st.vector, coeff=st.coeff), ("layer", "coeff"))
    for i in range(6):
        a, b = grid.variant(i)[0], g2.variant(i)[0]
        assert int(a.layer) == int(b.layer) and float(a.coeff) == float(b.coeff)
        assert np.array_equal(a.vector, b.vector)
    g3 = sw.from_stacked(Add("resid_pre", layer=np.arange(3)[:, None], vector=v[None, None],
                             coeff=np.ones((1, 4), np.float32)), ("layer", "coeff"))
    assert g3.shape == (3, 4) and {r.axes for r in g3.refs()} == {(0,), (1,)}


def test_sweep_equals_loop_of_forwards_and_vmap(mp):
    cfg, params = mp
    toks = tokens(cfg)
    grid = sw.product(layer=np.arange(cfg.n_layers), coeff=np.linspace(-2, 2, 3).astype(np.float32)).build(
        lambda a: Add("resid_pre", layer=a.layer, vector=vec(cfg.d_model), coeff=a.coeff))
    got = sw.sweep(mp, toks, grid, logit_diff, progress=False)
    assert got.shape == (cfg.n_layers, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, loop(mp, toks, grid), atol=TOL)
    assert np.abs(got - got[:, :1]).max() > 1e-2  # the coefficient matters


# ---------------------------------------------------------------------------------------------
# every shortcut == full recompute


def test_layer_prefix_reuse_matches_full_recompute(mp):
    cfg, params = mp
    toks = tokens(cfg)
    grid = sw.product(layer=np.arange(cfg.n_layers), coeff=np.array([-3.0, 0.5, 4.0], np.float32)).build(
        lambda a: Add("resid_pre", layer=a.layer, vector=vec(cfg.d_model), coeff=a.coeff))
    (a, plan_a), b = sw.sweep(mp, toks, grid, logit_diff, progress=False, return_plan=True), None
    b = sw.sweep(mp, toks, grid, logit_diff, progress=False, shortcuts=False)
    np.testing.assert_allclose(a, b, atol=TOL)
    assert sorted(g[0] for g in plan_a.groups) == list(range(cfg.n_layers))  # one group per start layer
    n = cfg.n_layers
    assert plan_a.work_fraction(n, toks.shape[1]) == pytest.approx(sum(n - l for l in range(n)) / n ** 2)


def test_position_and_layer_reuse_patching_matches_full_recompute(mp):
    cfg, params = mp
    clean, corrupt = tokens(cfg, seed=1), tokens(cfg, seed=2)
    grid = patch_grid(cfg, params, clean, "resid_pre")
    a, b = both(mp, corrupt, grid, position_buckets=2)
    np.testing.assert_allclose(a, b, atol=TOL)
    np.testing.assert_allclose(a, loop(mp, corrupt, grid), atol=TOL)
    assert np.abs(a).max() > 1e-2


@pytest.mark.slow
def test_exact_minimal_work_with_one_bucket_per_position(rot):
    cfg, params = rot
    clean, corrupt = tokens(cfg, T=5, seed=1), tokens(cfg, T=5, seed=2)
    grid = patch_grid(cfg, params, clean, "resid_pre")
    a, plan = sw.sweep(rot, corrupt, grid, logit_diff, progress=False, return_plan=True, position_buckets=5)
    np.testing.assert_allclose(a, loop(rot, corrupt, grid), atol=TOL)
    T, n = clean.shape[1], cfg.n_layers
    exact = sum((n - l) * (T - p) for l in range(n) for p in range(T)) / (n * T * n * T)
    assert plan.work_fraction(n, T, padded=False) == pytest.approx(exact)


@pytest.mark.parametrize("site", ["attn_out", "mlp_out", "resid_mid"])
def test_patching_other_sites_matches_full_recompute(rot, site):
    cfg, params = rot
    clean, corrupt = tokens(cfg, seed=1), tokens(cfg, seed=2)
    a, b = both(rot, corrupt, patch_grid(cfg, params, clean, site), position_buckets=3)
    np.testing.assert_allclose(a, b, atol=TOL)
    assert np.abs(a - a[0, 0]).max() > 1e-3


def test_packed_rows_do_exactly_the_minimal_work_and_match_full_recompute(mp):
    """Suffixes of lengths T..1 pair up in rows of T + 1 positions: no padding at all, and the same
    numbers as the position buckets and as a full forward per variant."""
    cfg, params = mp
    clean, corrupt = tokens(cfg, seed=1), tokens(cfg, seed=2)
    grid = patch_grid(cfg, params, clean, "resid_pre")
    a, plan = sw.sweep(mp, corrupt, grid, logit_diff, progress=False, return_plan=True)
    T, n = clean.shape[1], cfg.n_layers
    assert {g[1] for g in plan.groups} == {-1} and set(plan.pack_dims.values()) == {(T + 1, T - 1)}
    exact = sum((n - l) * (T - p) for l in range(n) for p in range(T)) / (n * T * n * T)
    assert plan.work_fraction(n, T) == pytest.approx(exact)  # padded work == the minimum
    np.testing.assert_allclose(a, sw.sweep(mp, corrupt, grid, logit_diff, progress=False, shortcuts=False), atol=TOL)
    np.testing.assert_allclose(a, sw.sweep(mp, corrupt, grid, logit_diff, progress=False, packing=False), atol=TOL)


def test_packed_rows_with_many_segments_base_edits_and_two_edits_per_variant(rot):
    cfg, params = rot
    toks = tokens(cfg, seed=5)
    base = (Add("resid_pre", layer=1, vector=vec(32, 1), coeff=0.5, positions=jnp.array([2])),
            Scale("mlp_post", layer=0, factor=0.5))
    g = sw.product(layer=np.arange(3), position=np.array([0, 4, 5, 6, 7])).build(
        lambda a: (Add("resid_pre", layer=a.layer, vector=vec(32, 2), positions=a.position),
                   Scale("mlp_out", layer=2, factor=1.7, positions=jnp.array([-1]))))
    a, plan = sw.sweep(rot, toks, g, interventions=base, progress=False, return_plan=True, metric=logit_diff)
    assert max(v.shape[1] for v, _ in plan.packs.values()) >= 3  # short suffixes share a row
    b = sw.sweep(rot, toks, g, logit_diff, interventions=base, progress=False, shortcuts=False)
    np.testing.assert_allclose(a, b, atol=TOL)
    np.testing.assert_allclose(a, loop(rot, toks, g, base=base), atol=TOL)
    assert np.abs(a - a.reshape(-1)[0]).max() > 1e-3


def test_micro_batches_match_whole_chunks(rot):
    """CPU micro-batching (a sequential loop of vmaps) gives the numbers of one vmap over the chunk,
    for plain variants and for packed rows."""
    cfg, params = rot
    clean, corrupt = tokens(cfg, seed=1), tokens(cfg, seed=2)
    steer = sw.product(layer=np.arange(3), coeff=np.linspace(-2, 2, 12).astype(np.float32)).build(
        lambda a: Add("resid_pre", layer=a.layer, vector=vec(32, 3), coeff=a.coeff))
    for grid, toks in ((steer, clean), (patch_grid(cfg, params, clean), corrupt)):
        a, plan = sw.sweep(rot, toks, grid, logit_diff, progress=False, return_plan=True, micro_rows=2 * 8 * 2)
        assert min(plan.micro.values()) > 0
        b, whole = sw.sweep(rot, toks, grid, logit_diff, progress=False, return_plan=True, micro_rows=0)
        assert set(whole.micro.values()) == {0}
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_head_sites_knockout_ablation_project_and_per_row_positions(rot):
    cfg, params = rot
    clean, corrupt = tokens(cfg, seed=1), tokens(cfg, seed=2)
    T = clean.shape[1]
    _, cache = run_with_cache(cfg, params, clean, sites=["z", "pattern", "mlp_out"])
    z_grid = sw.product(sw.zip(layer=np.arange(3), value=cache["z"]), head=np.arange(4),
                        position=np.array([0, 3, -1])).build(
        lambda a: Patch("z", layer=a.layer, value=a.value, heads=a.head, positions=a.position))
    pat_grid = sw.product(sw.zip(layer=np.arange(3), value=cache["pattern"]), head=np.arange(4),
                          position=np.array([2, 6])).build(
        lambda a: Patch("pattern", layer=a.layer, value=a.value, heads=a.head, positions=a.position))
    ko_grid = sw.product(layer=np.arange(3), q=np.array([1, 5, 7])).build(
        lambda a: AttentionKnockout(layer=a.layer, query_positions=a.q, key_positions=jnp.array([0, 1])))
    src = cache["mlp_out"][:, :, :, :]  # [L, B, T, D] resample rows
    abl_grid = sw.zip(layer=np.arange(3), source=src).build(
        lambda a: Ablate("mlp_out", layer=a.layer, kind="resample", source=a.source, key=jax.random.PRNGKey(3),
                         positions=jnp.array([4, 6])))
    rows_grid = sw.product(layer=np.arange(3), pos=np.array([[[2], [5]], [[6], [3]]])).build(
        lambda a: Compose2(a))
    proj_grid = sw.product(layer=np.arange(3), position=np.arange(0, T, 3)).build(
        lambda a: Project("resid_mid", layer=a.layer, direction=vec(cfg.d_model, 5), positions=a.position))
    for grid in (z_grid, pat_grid, ko_grid, abl_grid, rows_grid, proj_grid):
        a, b = both(rot, corrupt, grid, position_buckets=2)
        np.testing.assert_allclose(a, b, atol=TOL)
        assert np.abs(a - a.reshape(-1)[0]).max() > 1e-4  # the variants differ


def Compose2(a):
    """Two edits per variant: a per-row-position steer and a Scale of the MLP at a later layer."""
    return (Add("resid_pre", layer=a.layer, vector=jnp.ones(32) * 0.7, positions=a.pos),
            Scale("mlp_post", layer=2, factor=1.5, positions=jnp.array([-1])))


@pytest.mark.slow
def test_base_interventions_final_logits_and_embed_sites(rot):
    cfg, params = rot
    toks = tokens(cfg)
    base = (Add("resid_pre", layer=1, vector=vec(32, 1), coeff=0.5, positions=jnp.array([2])),
            Scale("mlp_post", layer=0, factor=0.5))
    g = sw.product(layer=np.arange(3), position=np.arange(8)).build(
        lambda a: Add("resid_pre", layer=a.layer, vector=vec(32, 2), positions=a.position))
    a, b = both(rot, toks, g, interventions=base, position_buckets=3)
    np.testing.assert_allclose(a, b, atol=TOL)
    np.testing.assert_allclose(a, loop(rot, toks, g, base=base), atol=TOL)
    # edits at the global sites embed / final / logits
    emb = sw.axis("position", np.arange(8)).build(lambda a: Add("embed", vector=vec(32, 3), positions=a.position))
    fin = sw.axis("c", np.array([0.0, 1.0, 2.0], np.float32)).build(
        lambda a: Add("final", vector=vec(32, 4), coeff=a.c, positions=jnp.array([-1])))
    lg = sw.axis("c", np.array([0.0, 1.0], np.float32)).build(
        lambda a: Add("logits", vector=vec(97, 6), coeff=a.c))
    for grid in (emb, fin, lg):
        a, b = both(rot, toks, grid)
        np.testing.assert_allclose(a, b, atol=TOL)
        np.testing.assert_allclose(a, loop(rot, toks, grid), atol=TOL)


@pytest.mark.slow
def test_padding_and_metric_reading_base_and_log_probs(rot):
    cfg, params = rot
    toks = tokens(cfg, T=9)
    mask = np.ones_like(toks)
    mask[0, :3] = 0  # left padding in row 0
    grid = sw.product(layer=np.arange(3), position=np.arange(3, 9)).build(
        lambda a: Add("resid_pre", layer=a.layer, vector=vec(32, 7), positions=a.position))

    def kl_metric(out):  # KL(base || variant) at the last position over the full vocabulary
        p = out.base.log_probs(-1)
        q = out.log_probs(-1)
        return (jnp.exp(p) * (p - q)).sum(-1).mean()

    def metrics(out):  # four readouts at once: static/traced positions, full-vocab normaliser, base run
        return jnp.stack([logit_diff(out), kl_metric(out), out.probs([4, -1], [0, 5, 9]).mean(),
                          out.final(jnp.array(-2)).mean()])

    a, b = both(rot, toks, grid, metrics, attention_mask=mask, position_buckets=3, metric_shape=(4,))
    np.testing.assert_allclose(a, b, atol=TOL)
    assert a.shape == (3, 6, 4) and np.abs(a[..., 1]).max() > 1e-3
    np.testing.assert_allclose(both(rot, toks, grid, attention_mask=mask)[0],
                               loop(rot, toks, grid, mask=mask), atol=TOL)


# ---------------------------------------------------------------------------------------------
# compiled program: lazy readout and one compilation per chunk shape


def _all_shapes(jaxpr):
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            yield tuple(getattr(v.aval, "shape", ()))
        for sub in jax.core.jaxprs_in_params(eqn.params) if hasattr(jax.core, "jaxprs_in_params") else []:
            yield from _all_shapes(sub)
        for p in eqn.params.values():
            inner = getattr(p, "jaxpr", None)
            if inner is not None:
                yield from _all_shapes(getattr(inner, "jaxpr", inner))


def _chunk_jaxpr(m, toks, grid, metric):
    cfg, params = m
    st = PG.Static(cfg, "segment", None, 0, toks.shape[0], toks.shape[1], *_slots(grid), metric, None, False)
    base = PG.base_jit(cfg, params, jnp.asarray(toks), jnp.ones_like(toks), None, ())
    leaves = jax.tree.leaves(grid.template, is_leaf=lambda l: isinstance(l, sw.Ref))
    datas = [jnp.asarray(l.data) for l in leaves if isinstance(l, sw.Ref)]
    shared = [jnp.asarray(l) for l in leaves if not isinstance(l, (sw.Ref, int, float))]
    idx = tuple(jnp.zeros(4, jnp.int32) for _ in grid.shape)
    return jax.make_jaxpr(lambda *a: PG.chunk_program(st, *a))(
        params, base, (), shared, datas, idx, jnp.asarray(toks), jnp.ones_like(toks), None, jnp.int32(1))


def _slots(grid):
    leaves, treedef = jax.tree.flatten(grid.template, is_leaf=lambda l: isinstance(l, sw.Ref))
    slots = tuple(("ref", l.axes) if isinstance(l, sw.Ref) else ("const", l) if isinstance(l, (int, float))
                  else ("arr", None) for l in leaves)
    return treedef, slots


def test_only_requested_logits_are_computed(rot):
    cfg, params = rot
    toks = tokens(cfg)
    grid = sw.product(layer=np.array([1, 2]), coeff=np.array([1.0, 2.0], np.float32)).build(
        lambda a: Add("resid_pre", layer=a.layer, vector=vec(32), coeff=a.coeff))
    V = cfg.vocab_size
    lazy = [s for s in _all_shapes(_chunk_jaxpr(rot, toks, grid, logit_diff).jaxpr) if V in s]
    assert lazy == [], f"a vocabulary-sized intermediate was computed: {lazy}"
    full = [s for s in _all_shapes(_chunk_jaxpr(rot, toks, grid, lambda o: o.log_probs(-1, 0).mean()).jaxpr)
            if V in s]
    assert full and all(s[-1] == V and toks.shape[1] not in s[:-1] for s in full)  # one position only


def test_one_compilation_per_chunk_shape(rot):
    cfg, params = rot
    toks = tokens(cfg, seed=4)
    grid = sw.product(layer=np.arange(3), coeff=np.linspace(-1, 1, 7).astype(np.float32)).build(
        lambda a: Add("resid_pre", layer=a.layer, vector=vec(32, 9), coeff=a.coeff))
    before = PG.TRACES["chunk"]
    a, plan = sw.sweep(rot, toks, grid, logit_diff, chunk_size=3, progress=False, return_plan=True)
    groups = {(plan.groups[g][0], plan.groups[g][1], len(idx)) for g, idx, _ in plan.chunks}
    shapes = {(plan.groups[g][1], len(idx)) for g, idx, _ in plan.chunks}  # the start layer is an argument
    assert plan.n_chunks == 9 and len(groups) == 3 and len(shapes) == 1
    assert PG.TRACES["chunk"] - before == len(shapes)
    b = sw.sweep(rot, toks, grid, logit_diff, chunk_size=3, progress=False)  # cached: no new trace
    assert PG.TRACES["chunk"] - before == len(shapes)
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# memory


def test_chunking_to_memory_budget_gives_same_numbers(rot):
    cfg, params = rot
    toks = tokens(cfg)
    grid = sw.product(layer=np.arange(3), coeff=np.linspace(-2, 2, 40).astype(np.float32)).build(
        lambda a: Add("resid_pre", layer=a.layer, vector=vec(32), coeff=a.coeff))
    whole, p1 = sw.sweep(rot, toks, grid, logit_diff, progress=False, return_plan=True)
    assert p1.n_chunks == 3  # default budget: one chunk per start layer
    per = max(p1.per_variant_bytes.values())
    small, p2 = sw.sweep(rot, toks, grid, logit_diff, progress=False, return_plan=True, memory_budget=7 * per)
    assert p2.n_chunks > 3 and max(len(c[1]) for c in p2.chunks) <= 7
    np.testing.assert_allclose(small, whole, atol=1e-6)
    with pytest.raises(ValueError, match="too small for even one variant"):
        sw.sweep(rot, toks, grid, logit_diff, progress=False, memory_budget=per // 2)


def test_memory_estimate_bounds_compiled_program(rot):
    cfg, params = rot
    toks = tokens(cfg, B=4, T=16)
    grid = patch_grid(cfg, params, toks[:, :], "resid_pre")
    plan = sw.plan_sweep(rot, toks, grid, logit_diff, position_buckets=1, packing=False)
    C = 8
    st = PG.Static(cfg, "segment", None, 0, 4, 16, *_slots(grid), logit_diff, None, False)
    base = PG.base_jit(cfg, params, jnp.asarray(toks), jnp.ones_like(toks), None, ())
    leaves = jax.tree.leaves(grid.template, is_leaf=lambda l: isinstance(l, sw.Ref))
    datas = [jnp.asarray(l.data) for l in leaves if isinstance(l, sw.Ref)]
    idx = tuple(jnp.zeros(C, jnp.int32) for _ in grid.shape)
    compiled = jax.jit(lambda *a: PG.chunk_program(st, *a)).lower(
        params, base, (), [], datas, idx, jnp.asarray(toks), jnp.ones_like(toks), None, jnp.int32(0)).compile()
    mem = compiled.memory_analysis()
    if mem is None:
        pytest.skip("backend reports no memory analysis")
    assert mem.temp_size_in_bytes <= C * plan.per_variant_bytes[(0, 0)]
    # packed rows: the estimate per row bounds a compiled packed chunk too
    plan = sw.plan_sweep(rot, toks, grid, logit_diff, micro_rows=0)
    (i, (vidx, start)), = [(i, lay) for i, lay in plan.layouts.items() if plan.groups[plan.chunks[i][0]][0] == 0]
    P, S0 = plan.pack_dims[plan.chunks[i][0]]
    st = PG.Static(cfg, "packed", None, 0, 4, 16, *_slots(grid), logit_diff, None, False, 0, vidx.shape[1], P, S0)
    idx = tuple(jnp.asarray(a, jnp.int32) for a in np.unravel_index(vidx, grid.shape))
    layout = tuple(jnp.asarray(a) for a in PL.row_layout(start, 16, P))
    compiled = jax.jit(lambda *a: PG.chunk_program(st, *a)).lower(
        params, base, (), [], datas, idx, jnp.asarray(toks), jnp.ones_like(toks), None, jnp.int32(0),
        layout).compile()
    assert compiled.memory_analysis().temp_size_in_bytes <= len(vidx) * plan.per_variant_bytes[(0, -1)]


def test_100k_variants_in_chunks_on_a_small_model(rot):
    """The 100,000-variant sweep, honestly, on a tiny model: chunked to a small budget, every
    entry checked against a direct evaluation at a sample of variants."""
    cfg, params = rot
    toks = tokens(cfg, B=1, T=6)
    coeffs = np.linspace(-5, 5, 33334).astype(np.float32)
    grid = sw.product(layer=np.arange(3), coeff=coeffs).build(
        lambda a: Add("resid_pre", layer=a.layer, vector=vec(32, 11), coeff=a.coeff, positions=jnp.array([-1])))
    assert grid.size == 100_002
    seen = []
    vals, plan = sw.sweep(rot, toks, grid, logit_diff, progress=False, return_plan=True, memory_budget=8 << 20,
                          on_chunk=lambda i, v: seen.append(i))
    assert vals.shape == (3, 33334) and np.isfinite(vals).all()
    assert plan.n_chunks > 3 and len(seen) == plan.n_chunks
    assert max(len(c[1]) * plan.per_variant_bytes[(plan.groups[c[0]][0], plan.groups[c[0]][1])]
               for c in plan.chunks) <= 8 << 20
    rng = np.random.default_rng(0)
    for l, c in zip(rng.integers(0, 3, 6), rng.integers(0, 33334, 6)):
        lg = np.asarray(forward(cfg, params, toks, None, grid.variant((l, c))))
        assert abs(vals[l, c] - (lg[:, -1, 0] - lg[:, -1, 1]).mean()) <= TOL


# ---------------------------------------------------------------------------------------------
# errors before compute


def test_bad_input_raises_before_compute(rot):
    cfg, params = rot
    toks = tokens(cfg)
    v = vec(32)
    with pytest.raises(ValueError, match="do not broadcast"):
        sw.from_stacked(Add("resid_pre", layer=np.arange(3)[:, None], vector=v[None, None],
                            coeff=np.ones((2, 4), np.float32)), ("layer", "coeff"))
    with pytest.raises(ValueError, match="lacks the 2 leading grid axes"):
        sw.from_stacked(Add("resid_pre", layer=np.arange(3)[:, None], vector=v, coeff=np.ones((1, 4))),
                        ("layer", "coeff"))
    with pytest.raises(ValueError, match="different lengths"):
        sw.zip(layer=np.arange(3), value=np.zeros((4, 32)))
    good = sw.product(layer=np.arange(3), coeff=np.ones(2, np.float32)).build(
        lambda a: Add("resid_pre", layer=a.layer, vector=v, coeff=a.coeff))
    before = PG.TRACES["chunk"]
    bad_layer = sw.product(layer=np.array([0, 1, 3]), coeff=np.ones(2, np.float32)).build(
        lambda a: Add("resid_pre", layer=a.layer, vector=v, coeff=a.coeff))
    with pytest.raises(ValueError, match=r"layer.*out of range: valid layers are 0..2"):
        sw.sweep(rot, toks, bad_layer, logit_diff, progress=False)
    bad_pos = sw.axis("p", np.array([0, 8])).build(lambda a: Add("resid_pre", layer=0, vector=v, positions=a.p))
    with pytest.raises(ValueError, match=r"positions.*out of range: valid positions are -8..7"):
        sw.sweep(rot, toks, bad_pos, logit_diff, progress=False)
    bad_head = sw.axis("h", np.array([0, 4])).build(lambda a: Ablate("z", layer=0, heads=a.h))
    with pytest.raises(ValueError, match=r"heads.*out of range: valid heads are 0..3"):
        sw.sweep(rot, toks, bad_head, logit_diff, progress=False)
    bad_vec = sw.axis("l", np.arange(3)).build(lambda a: Add("resid_pre", layer=a.l, vector=jnp.ones(31)))
    with pytest.raises(ValueError, match="trailing part of the site shape"):
        sw.sweep(rot, toks, bad_vec, logit_diff, progress=False)
    with pytest.raises(ValueError, match=r"metric returned shape\(s\) \[\(2,\)\]; expected one array of shape \(\)"):
        sw.sweep(rot, toks, good, lambda out: out.logits(-1, 0), progress=False)
    with pytest.raises(ValueError, match="must return an array"):
        sw.sweep(rot, toks, good, lambda out: "nope", progress=False)
    with pytest.raises(ValueError, match="token_ids .* out of range"):
        sw.sweep(rot, toks, good, lambda out: out.logits(-1, 97).mean(), progress=False)
    with pytest.raises(ValueError, match="too small for even one variant"):
        sw.sweep(rot, toks, good, logit_diff, progress=False, memory_budget=1000)
    with pytest.raises(ValueError, match="'variants' axis"):
        sw.sweep(rot, toks, good, logit_diff, progress=False,
                 mesh=jax.sharding.Mesh(np.array(jax.devices()), ("data",)))
    assert PG.TRACES["chunk"] == before  # nothing was compiled or run
    vals = sw.sweep(rot, toks, good, lambda out: out.logits(-1, 0), progress=False, metric_shape=(2,))
    assert vals.shape == (3, 2, 2)


def test_axisless_grid_is_refused_before_the_base_run(rot):
    before = dict(PG.TRACES)
    with pytest.raises(ValueError, match=r"product\(\) got no axes"):
        sw.product().build(lambda a: Add("resid_pre", layer=0, vector=vec(32)))
    with pytest.raises(ValueError, match=r"a grid needs at least one axis, got axes=\(\)"):
        sw.from_stacked(Add("resid_pre", layer=0, vector=vec(32)), names=())
    with pytest.raises(ValueError, match=r"a grid needs at least one axis"):
        sw.Grid((Add("resid_pre", layer=0, vector=vec(32)),), ())
    assert PG.TRACES == before


def test_non_finite_or_complex_grid_fields_are_refused_before_compute(rot):
    cfg, params = rot
    toks = tokens(cfg)
    vs = np.ones((4, 32), np.float32)
    vs[2, 7] = np.inf  # a later variant than the one traced for shapes
    grid = sw.axis("v", vs).build(lambda a: Add("resid_pre", layer=1, vector=a.v, coeff=0.0))
    before = dict(PG.TRACES)
    with pytest.raises(ValueError, match=r"Add.vector \(grid axes \['v'\]\) has 1 non-finite entries "
                                         r"\(nan/inf; first inf at index \(2, 7\)\)"):
        sw.sweep(rot, toks, grid, logit_diff, progress=False)
    cgrid = sw.axis("c", np.array([1.0, 2.0 + 1.0j])).build(
        lambda a: Add("resid_pre", layer=1, vector=vec(32), coeff=a.c))
    with pytest.raises(ValueError, match=r"Add.coeff is complex \(dtype complex128\)"):
        sw.sweep(rot, toks, cgrid, logit_diff, progress=False)
    assert PG.TRACES == before


def test_fresh_identical_lambda_reuses_the_compiled_program(rot):
    """The compiled chunk is cached on the metric's fingerprint, not on the function object: a new
    lambda with the same code and closure traces nothing; another closure value traces anew."""
    cfg, params = rot
    toks = tokens(cfg, seed=6)
    grid = sw.product(layer=np.arange(3), coeff=np.linspace(-1, 1, 5).astype(np.float32)).build(
        lambda a: Add("resid_pre", layer=a.layer, vector=vec(32, 12), coeff=a.coeff))

    def scaled(c):
        return lambda out: c * logit_diff(out)

    first = sw.sweep(rot, toks, grid, scaled(1.0), progress=False)
    before = PG.TRACES["chunk"]
    for _ in range(2):
        again = sw.sweep(rot, toks, grid, scaled(1.0), progress=False)  # a fresh lambda each time
        np.testing.assert_array_equal(again, first)
    assert PG.TRACES["chunk"] == before
    double = sw.sweep(rot, toks, grid, scaled(2.0), progress=False)
    assert PG.TRACES["chunk"] > before  # a different closure value is a different program
    np.testing.assert_allclose(double, 2 * first, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# standard sweeps and plots


@pytest.mark.slow
def test_standard_sweeps_match_direct_grids_and_plot(rot, tmp_path):
    cfg, params = rot
    clean, corrupt = tokens(cfg, seed=1), tokens(cfg, seed=2)
    res = sw.patching(rot, clean, corrupt, logit_diff, site="resid_pre", progress=False)
    assert res.axes == ("layer", "position") and res.shape == (3, 8)
    assert res.ticks[1][0] == f"0:{clean[0, 0]}"
    np.testing.assert_allclose(res.values, loop(rot, corrupt, patch_grid(cfg, params, clean)), atol=TOL)
    # patching every position of resid_pre[0] with the clean value restores the clean metric exactly
    lg = np.asarray(forward(cfg, params, clean))
    clean_metric = (lg[:, -1, 0] - lg[:, -1, 1]).mean()
    whole = sw.patching(rot, clean, corrupt, logit_diff, by=("layer",), progress=False)
    assert whole.shape == (3,) and abs(whole.values[0] - clean_metric) <= TOL
    for site in ("attn_out", "mlp_out"):
        r = sw.patching(rot, clean, corrupt, logit_diff, site=site, position_buckets=2, progress=False)
        assert r.shape == (3, 8) and np.abs(r.values).max() > 0
    hz = sw.head_patching(rot, clean, corrupt, logit_diff, site="z", progress=False)
    assert hz.axes == ("layer", "head") and hz.shape == (3, 4)
    hp = sw.head_patching(rot, clean, corrupt, logit_diff, site="pattern", by=("head", "position"), layers=2,
                          progress=False)
    assert hp.axes == ("head", "position") and hp.shape == (4, 8)
    hzp = sw.head_patching(rot, clean, corrupt, logit_diff, by=("layer", "head", "position"), positions=[5, 6, 7],
                           progress=False)
    assert hzp.shape == (3, 4, 3)
    st = sw.steering(rot, clean, vec(32), np.linspace(-4, 4, 5), logit_diff, progress=False)
    assert st.axes == ("layer", "coeff") and st.shape == (3, 5)
    np.testing.assert_allclose(st.values[:, 2], np.full(3, clean_metric), atol=TOL)  # coeff 0 is a no-op
    za = sw.ablation(rot, clean, logit_diff, kind="zero", per="head", progress=False)
    ma = sw.ablation(rot, clean, logit_diff, kind="mean", per="layer", site="mlp_out", progress=False)
    ra = sw.ablation(rot, clean, logit_diff, kind="resample", per="layer", source_tokens=corrupt,
                     key=jax.random.PRNGKey(0), progress=False)
    assert za.shape == (3, 4) and ma.shape == (3,) and ra.shape == (3,)
    ref = np.asarray(forward(cfg, params, clean, None, Ablate("z", layer=1, heads=jnp.array([2]))))
    assert abs(za.values[1, 2] - (ref[:, -1, 0] - ref[:, -1, 1]).mean()) <= TOL
    for r in (res, hzp, st, ma):
        png = r.plot(tmp_path / f"{r.axes[-1]}{r.values.ndim}.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    assert (tmp_path / "a.json") == res.save_json(tmp_path / "a.json")
    with pytest.raises(ValueError, match="valid:"):
        sw.patching(rot, clean, corrupt, logit_diff, site="q")
    with pytest.raises(ValueError, match="same shape"):
        sw.patching(rot, clean, corrupt[:, :5], logit_diff)
    with pytest.raises(ValueError, match="ablation kind"):
        sw.ablation(rot, clean, logit_diff, kind="half")


def test_standard_sweeps_refuse_float_and_bool_layers_positions_heads(rot):
    """layers=[1.7] / True, positions=[2.5] and heads=[0.5] used to be cast to 1 / 1 / 2 / 0."""
    cfg, _ = rot
    clean, corrupt = tokens(cfg, seed=1), tokens(cfg, seed=2)
    for kw, match in ((dict(layers=[1.7]), r"layers must be integers; got \[1.7\]"),
                      (dict(layers=True), r"layers must be integers; got \[True\]"),
                      (dict(positions=[2.5]), r"positions must be integer positions, got dtype float64 \(\[2.5\]\)")):
        with pytest.raises(ValueError, match=match):
            sw.patching(rot, clean, corrupt, logit_diff, **kw)
    with pytest.raises(ValueError, match=r"heads must be integers; got \[0.5\]"):
        sw.head_patching(rot, clean, corrupt, logit_diff, heads=[0.5])
