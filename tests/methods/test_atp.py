"""Attribution patching (AtP, AtP*) against exact activation patching on a tiny random Llama:
an exact identity where the metric is linear in the patched site, the same labels as the exact
sweeps, rank agreement that a shuffled estimate fails, the AtP* corrections against independent
computations of what they are documented to be, exact verification, and errors before compute."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import interpjax.sweep as sw
from interpjax import Add
from interpjax.core import model as M
from interpjax.methods import atp as A

TOL = 1e-5
EXACT = dict(progress=False, shortcuts=False)  # one full-recompute program per sweep (fewer compiles)


def logit_diff(out):
    return (out.logits(-1, 0) - out.logits(-1, 1)).mean()


@pytest.fixture(scope="module")
def llama(tiny_model):
    """(cfg, params) of the tiny random Llama, and a clean / corrupted pair differing at 2 positions."""
    model, _ = tiny_model("llama")
    rng = np.random.default_rng(0)
    clean = rng.integers(0, model.cfg.vocab_size, (2, 8)).astype(np.int32)
    corrupt = clean.copy()
    corrupt[:, 2] = rng.integers(0, model.cfg.vocab_size, 2)
    corrupt[:, 5] = rng.integers(0, model.cfg.vocab_size, 2)
    return (model.cfg, model.params), clean, corrupt


@pytest.fixture(scope="module")
def resid(llama):
    """AtP and exact patching of resid_pre over every layer x position (shared by several tests)."""
    m, clean, corrupt = llama
    return (A.atp(m, clean, corrupt, logit_diff, "resid_pre"),
            sw.patching(m, clean, corrupt, logit_diff, site="resid_pre", **EXACT))


def test_linear_site_is_exact_patching(llama):
    """Without a final norm the logit difference is linear in the last layer's resid_post, so AtP
    there IS exact patching (at nonlinear sites it is not: see the next test)."""
    (cfg, params), clean, corrupt = llama
    lin = (cfg.replace(final_norm=False), params)
    last = cfg.n_layers - 1
    est = A.atp(lin, clean, corrupt, logit_diff, "resid_post", layers=[last], positions=[2, 5, 7])
    exact = sw.patching(lin, clean, corrupt, logit_diff, site="resid_post", layers=[last], positions=[2, 5, 7],
                        **EXACT)
    assert est.axes == exact.axes and est.ticks == exact.ticks
    np.testing.assert_allclose(est.values, exact.values, atol=TOL)
    assert np.abs(exact.values - est.baseline).max() > 0.05  # the patches do move the metric


def test_labels_match_the_exact_sweeps_and_ranks_agree(llama, resid):
    """Same type, axes, ticks and shape as sweep.patching / head_patching; Spearman with the exact
    grid above a threshold that the same estimate shuffled over the cells fails."""
    m, clean, corrupt = llama
    est, exact = resid
    assert isinstance(est, sw.Labelled)
    assert (est.axes, est.ticks, est.shape) == (exact.axes, exact.ticks, exact.shape)
    np.testing.assert_allclose(est.baseline, est.values[:, :2], atol=TOL)  # positions 0, 1 never differ
    shuffled = np.random.default_rng(0).permutation(est.values.ravel())
    assert np.abs(est.values - exact.values).max() > 1e-2  # an approximation at nonlinear sites
    assert A.spearman(est.values, exact.values) > 0.6
    assert A.spearman(shuffled, exact.values) < 0.3
    est_z = A.atp(m, clean, corrupt, logit_diff, "z")
    exact_z = sw.head_patching(m, clean, corrupt, logit_diff, site="z", **EXACT)
    assert (est_z.axes, est_z.ticks, est_z.shape) == (exact_z.axes, exact_z.ticks, exact_z.shape) == \
        (("layer", "head"), exact_z.ticks, (m[0].n_layers, m[0].n_heads))
    shuffled = np.random.default_rng(0).permutation(est_z.values.ravel())
    assert A.spearman(est_z.values, exact_z.values) > 0.8
    assert A.spearman(shuffled, exact_z.values) < 0.3
    assert est_z.title.split(" estimate of ")[1] == exact_z.title


def test_verify_remeasures_exactly(llama, resid):
    """verify's exact values are sweep.patching's at the chosen cells; the first top_k cells are
    the largest |estimated effects|; its statistics follow their definitions."""
    m, clean, corrupt = llama
    est, exact = resid
    v = A.verify(m, clean, corrupt, logit_diff, est, 4, n_random=5, seed=3, shortcuts=False)
    assert v.cells.shape == (9, 2) and v.axes == ("layer", "position")
    li, pi = v.cells[:, 0], v.cells[:, 1]
    np.testing.assert_allclose(v.exact, exact.values[li, pi], atol=TOL)
    np.testing.assert_array_equal(v.estimate, est.values[li, pi])
    top = np.sort(np.abs(est.effects).ravel())[::-1][:4]
    np.testing.assert_array_equal(np.abs(est.effects[li[:4], pi[:4]]), top)
    assert len({(a, b) for a, b in v.cells.tolist()}) == 9  # random cells are other cells
    assert v.spearman == A.spearman(v.estimate, v.exact)
    exact_top = set(np.argsort(-np.abs(v.exact - v.baseline), kind="stable")[:4].tolist())
    assert v.recall == len(exact_top & {0, 1, 2, 3}) / 4
    miss = np.abs(v.estimate - v.exact)[v.worst]
    assert np.all(np.diff(miss) <= 0) and v.worst_misses(1)[0]["miss"] == miss[0]
    again = A.verify(m, clean, corrupt, logit_diff, est, 4, n_random=5, seed=3, shortcuts=False)
    np.testing.assert_array_equal(again.cells, v.cells)


@pytest.mark.slow
def test_graddrop_follows_its_definition(llama, resid):
    """GradDrop = sign(AtP) * sum_l |AtP with layer l's attn_out / mlp_out gradient stopped| / (L - 1).
    The no-drop row is plain AtP; dropping a layer below resid_pre[l] leaves that cell's estimate
    unchanged (its gradient never passes there), dropping layer l itself (its own branches) changes it."""
    m, clean, corrupt = llama
    plain, _ = resid
    L = m[0].n_layers
    gd = A.atp(m, clean, corrupt, logit_diff, "resid_pre", correction="graddrop")
    assert gd.correction == ("graddrop",) and (gd.axes, gd.ticks) == (plain.axes, plain.ticks)
    rows = gd.per_drop
    assert rows.shape == (L + 1,) + plain.shape
    np.testing.assert_allclose(rows[0], plain.effects, atol=TOL)
    np.testing.assert_allclose(gd.effects, np.sign(rows[0]) * np.abs(rows[1:]).sum(0) / (L - 1), atol=TOL)
    for layer in range(L):
        for dropped in range(layer):  # the gradient at resid_pre[layer] never passes through earlier layers
            np.testing.assert_allclose(rows[1 + dropped, layer], rows[0, layer], atol=TOL)
        assert np.abs(rows[1 + layer, layer] - rows[0, layer]).max() > 1e-4
    assert np.abs(gd.values - plain.values).max() > 1e-3


@pytest.mark.slow
def test_attention_fix_is_exact_softmax_minus_linearised(llama, resid):
    """AtP* 'attention' at resid_pre adds g_pattern . (exact - linearised) change of the patched
    layer's pattern; checked at one cell against a reference built from public forwards: the
    pattern with the clean minus corrupted difference Added at the cell (= the patch), its jvp in
    the Add's coefficient, and the metric's gradient w.r.t. an Add at that pattern."""
    m, clean, corrupt = llama
    cfg, params = m
    plain, _ = resid
    layer, pos = 1, 5
    fixed = A.atp(m, clean, corrupt, logit_diff, "resid_pre", layers=[layer], positions=[0, pos],
                  correction="attention")
    _, cc = M.run_with_cache(cfg, params, clean, sites=["resid_pre"], layers=(layer,))
    _, ck = M.run_with_cache(cfg, params, corrupt, sites=["resid_pre"], layers=(layer,))
    diff = cc["resid_pre"][0] - ck["resid_pre"][0]

    def pattern_with(coeff):
        iv = Add("resid_pre", layer=layer, vector=diff, coeff=coeff, positions=jnp.array([pos]))
        return M.run(cfg, params, jnp.asarray(corrupt), jnp.ones(corrupt.shape, jnp.int32), None, (iv,),
                     ("pattern",), (layer,))[1]["pattern"][0]

    def metric_of(v_BNTS):
        iv = Add("pattern", layer=layer, vector=v_BNTS, coeff=1.0)
        lg = M.run(cfg, params, jnp.asarray(corrupt), jnp.ones(corrupt.shape, jnp.int32), None, (iv,), (), ())[0]
        return (lg[:, -1, 0] - lg[:, -1, 1]).mean()

    @jax.jit
    def reference():
        base, lin = jax.jvp(pattern_with, (jnp.float32(0.0),), (jnp.float32(1.0),))
        exact = pattern_with(jnp.float32(1.0)) - base  # Add of the whole difference = the Patch
        g = jax.grad(metric_of)(jnp.zeros_like(base))
        return jnp.sum(g * (exact - lin))

    want = float(reference())
    assert abs(want) > 1e-4  # the softmax is not linear here: the fix is not a no-op
    np.testing.assert_allclose(fixed.effects[0, 1] - plain.effects[layer, pos], want, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(fixed.values[0, 0], plain.values[layer, 0], atol=TOL)  # position 0 never differs


def test_attention_fix_equals_exact_patching_for_a_single_key_change(llama):
    """AtP* with the attention fix IS exact patching when the patch changes one key and nothing
    else that matters: a 1-layer model, no MLP (down-projection zeroed), no final norm; the clean
    and corrupted tokens at position p have embeddings of one norm living in dims 0..15, which the
    value projection ignores, so the values (and their linearisation through the norm) do not move
    and the metric is linear in the last query's pattern. Plain AtP is not exact there."""
    (cfg, params), _, _ = llama
    D = cfg.d_model
    half = D // 2
    one = jax.tree.map(lambda a: a[:1], params["layers"])
    one["mlp"]["down"] = jnp.zeros_like(one["mlp"]["down"])
    one["attn"]["v"] = one["attn"]["v"].at[:, :half].set(0.0)
    one["attn"]["k"] = 4.0 * one["attn"]["k"]  # sharper attention: a strongly nonlinear softmax
    rng = np.random.default_rng(3)
    a, b = 5, 7
    e_a, e_b = rng.normal(size=half), rng.normal(size=half)
    e_b *= np.linalg.norm(e_a) / np.linalg.norm(e_b)
    tok = np.asarray(params["embed"]["tok"]).copy()
    tok[a], tok[b] = 0.0, 0.0
    tok[a, :half], tok[b, :half] = e_a, e_b
    p1 = dict(params, layers=one, embed={"tok": jnp.asarray(tok, params["embed"]["tok"].dtype)})
    m1 = (cfg.replace(n_layers=1, final_norm=False), p1)
    clean = rng.choice([t for t in range(cfg.vocab_size) if t not in (a, b)], (2, 8)).astype(np.int32)
    corrupt = clean.copy()
    p = 3
    clean[:, p], corrupt[:, p] = a, b
    exact = sw.patching(m1, clean, corrupt, logit_diff, site="resid_pre", layers=[0], positions=[p], **EXACT)
    fixed = A.atp(m1, clean, corrupt, logit_diff, "resid_pre", layers=[0], positions=[p], correction="attention")
    plain = A.atp(m1, clean, corrupt, logit_diff, "resid_pre", layers=[0], positions=[p])
    effect = float(exact.values[0, 0] - fixed.baseline)
    assert abs(effect) > 1e-2  # the key change moves the metric
    np.testing.assert_allclose(fixed.values, exact.values, atol=TOL, rtol=1e-5)
    assert abs(float(plain.values[0, 0] - exact.values[0, 0])) > 1e-3  # the softmax is not linear here


def test_one_program_per_shape(llama, resid):
    """A repeated call, or one with a fresh function object of identical code, compiles nothing new."""
    m, clean, corrupt = llama
    before = A._atp_program._cache_size()
    again = A.atp(m, clean, corrupt, logit_diff, "resid_pre")
    fresh = types.FunctionType(logit_diff.__code__, logit_diff.__globals__)
    assert fresh is not logit_diff
    A.atp(m, clean, corrupt, fresh, "resid_pre")
    assert A._atp_program._cache_size() == before
    np.testing.assert_array_equal(again.values, resid[0].values)


def test_spearman_with_ties():
    assert A.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert A.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4]: Pearson of those with [1, 2, 3, 4]
    r = np.array([1, 2.5, 2.5, 4]) - 2.5
    s = np.array([1, 2, 3, 4]) - 2.5
    want = (r * s).sum() / np.sqrt((r * r).sum() * (s * s).sum())
    assert A.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(want)
    assert np.isnan(A.spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="one length"):
        A.spearman([1, 2], [1, 2, 3])


def test_bad_inputs_raise_named_errors(llama, resid):
    m, clean, corrupt = llama
    est, _ = resid
    cases = [
        (dict(site="q"), r"atp site 'q' not supported; valid sites: \('resid_pre'"),
        (dict(correction="qk"), r"unknown correction 'qk'; valid corrections: \('attention', 'graddrop'\)"),
        (dict(correction=("graddrop", "graddrop")), "twice"),
        (dict(site="z", correction="attention"), r"correction 'attention' applies at sites \('resid_pre',\)"),
        (dict(heads=[0]), "has no head axis"),
        (dict(site="z", heads=[4]), r"heads \[4\] invalid: valid heads are 0..3"),
        (dict(layers=[7]), "out of range"),
        (dict(by=("layer",), positions=[1]), "patches every position at once"),
        (dict(by=("head",)), "valid:"),
        (dict(positions=[9]), "out of range"),
    ]
    for kw, match in cases:
        kw = {"site": "resid_pre", **kw}
        with pytest.raises(ValueError, match=match):
            A.atp(m, clean, corrupt, logit_diff, kw.pop("site"), **kw)
    with pytest.raises(ValueError, match="same shape"):
        A.atp(m, clean, corrupt[:, :5], logit_diff)
    with pytest.raises(ValueError, match="one scalar"):
        A.atp(m, clean, corrupt, lambda out: out.logits(-1, 0))
    for top_k, n_random, match in ((0, 0, r"top_k=0 out of range: valid values are integers 1..24"),
                                   (25, 0, r"top_k=25 out of range"),
                                   (2.0, 0, r"top_k=2.0 out of range"),
                                   (20, 5, r"n_random=5 out of range: valid values are integers 0..4")):
        with pytest.raises(ValueError, match=match):
            A.verify(m, clean, corrupt, logit_diff, est, top_k, n_random=n_random)
    with pytest.raises(ValueError, match="AtPEstimate"):
        A.verify(m, clean, corrupt, logit_diff, sw.Labelled(np.zeros(2), ("layer",), ((0, 1),)), 1)
