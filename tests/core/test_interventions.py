"""Interventions as values: exact no-ops, semantics at every kind, composition, vmap == loop, grad."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import interpjax
from interpjax import Ablate, Add, AttentionKnockout, Custom, Patch, Project, Scale, compose
from interpjax.core.sites import LAYER_SITES, SITES


@pytest.fixture(scope="module")
def llama(tiny_model):
    return tiny_model("llama")[0]


@pytest.fixture(scope="module")
def gpt2(tiny_model):
    return tiny_model("gpt2")[0]


def toks(B=2, T=8, seed=0):
    return np.random.default_rng(seed).integers(0, 101, (B, T))


def vec(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_cache_shapes_match_site_listing(llama):
    t = toks()
    logits, cache = llama.run_with_cache(t)
    listed = {r["site"]: r["shape"] for r in llama.sites(batch=2, seq=8)}
    for site in SITES:
        shape = cache[site].shape
        if site in LAYER_SITES:
            assert shape == (llama.cfg.n_layers,) + listed[site], site
        else:
            assert shape == listed[site], site
    assert np.array_equal(np.asarray(cache["logits"]), np.asarray(logits))


def test_cache_layer_subset_equals_full_cache(llama):
    t = toks()
    _, full = llama.run_with_cache(t, sites=["resid_pre", "z", "pattern"])
    _, part = llama.run_with_cache(t, sites=["resid_pre", "z", "pattern"], layers=[2, 0])
    assert part["resid_pre"].shape[0] == 2 and part.layers == (2, 0)
    for site in ("resid_pre", "z", "pattern"):
        for layer in (2, 0):
            assert np.array_equal(np.asarray(part[site, layer]), np.asarray(full[site, layer]))
    with pytest.raises(KeyError, match="recorded layers"):
        part["resid_pre", 1]


@pytest.mark.parametrize("site", ["embed", "resid_pre", "q", "k", "v", "z", "attn_out", "resid_mid", "mlp_pre",
                                  "mlp_post", "mlp_out", "resid_post", "final"])
def test_zero_add_self_patch_identity_scale_are_exact_noops(llama, site):
    t = toks()
    base, cache = llama.run_with_cache(t, sites=[site])
    base = np.asarray(base)
    layer = None if site in ("embed", "final") else 1
    feat = cache[site].shape[-1]
    value = cache[site] if layer is None else cache[site, layer]
    for iv in (
        Add(site, layer=layer, vector=vec((feat,)), coeff=0.0),
        Patch(site, layer=layer, value=value),
        Patch(site, layer=layer, value=value, positions=jnp.array([3])),
        Scale(site, layer=layer, factor=1.0),
        compose(Add(site, layer=layer, vector=vec((feat,)), coeff=0.0), Scale(site, layer=layer, factor=1.0)),
    ):
        assert np.array_equal(np.asarray(llama(t, interventions=iv)), base), iv


def test_add_changes_only_later_positions_and_layers(llama):
    t = toks()
    base = np.asarray(llama(t))
    out = np.asarray(llama(t, interventions=Add("resid_pre", layer=1, vector=vec((32,)), coeff=3.0,
                                                 positions=jnp.array([4]))))
    assert np.array_equal(out[:, :4], base[:, :4])  # causal: earlier positions untouched
    assert np.abs(out[:, 4:] - base[:, 4:]).max() > 1e-3
    # adding at resid_pre[L] is adding at resid_post[L-1]
    a = np.asarray(llama(t, interventions=Add("resid_pre", layer=2, vector=vec((32,)), coeff=2.0)))
    b = np.asarray(llama(t, interventions=Add("resid_post", layer=1, vector=vec((32,)), coeff=2.0)))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_add_recorded_in_cache_and_per_row_vectors(llama):
    t = toks()
    _, clean = llama.run_with_cache(t, sites=["resid_pre"], layers=[1])
    v = vec((2, 8, 32))  # [B, T, D]
    _, cache = llama.run_with_cache(t, sites=["resid_pre"], layers=[1],
                                    interventions=Add("resid_pre", layer=1, vector=v, coeff=0.5))
    np.testing.assert_allclose(np.asarray(cache["resid_pre", 1]), np.asarray(clean["resid_pre", 1] + 0.5 * v), atol=1e-6)


def test_patch_clean_into_corrupt_restores_clean(llama):
    clean, corrupt = toks(seed=1), toks(seed=2)
    clean_logits, cache = llama.run_with_cache(clean, sites=["resid_pre"], layers=[0])
    # patching the full residual entering layer 0 reproduces the clean run exactly
    out = llama(corrupt, interventions=Patch("resid_pre", layer=0, value=cache["resid_pre", 0]))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(clean_logits))
    # per-head patching of z: all heads == full patch
    _, zc = llama.run_with_cache(clean, sites=["z"], layers=[2])
    heads = Patch("z", layer=2, value=zc["z", 2], heads=jnp.arange(4))
    full = Patch("z", layer=2, value=zc["z", 2])
    np.testing.assert_array_equal(np.asarray(llama(corrupt, interventions=heads)),
                                  np.asarray(llama(corrupt, interventions=full)))


def test_per_row_positions(llama):
    t = toks()
    v = vec((32,))
    out = np.asarray(llama(t, interventions=Add("resid_pre", layer=0, vector=v, coeff=2.0,
                                                 positions=jnp.array([[2], [5]]))))
    r0 = np.asarray(llama(t[:1], interventions=Add("resid_pre", layer=0, vector=v, coeff=2.0, positions=jnp.array([2]))))
    r1 = np.asarray(llama(t[1:], interventions=Add("resid_pre", layer=0, vector=v, coeff=2.0, positions=jnp.array([5]))))
    np.testing.assert_allclose(out, np.concatenate([r0, r1]), atol=1e-5)


def test_ablate_zero_mean_resample(llama):
    t = toks()
    _, cache = llama.run_with_cache(t, sites=["z", "mlp_out"], interventions=Ablate("z", layer=1, heads=jnp.array([2])))
    z = np.asarray(cache["z", 1])
    assert np.all(z[:, :, 2] == 0) and np.abs(z[:, :, 1]).max() > 0
    zero_scale = Scale("z", layer=1, factor=0.0, heads=jnp.array([2]))
    np.testing.assert_array_equal(np.asarray(llama(t, interventions=Ablate("z", layer=1, heads=jnp.array([2])))),
                                  np.asarray(llama(t, interventions=zero_scale)))
    src = vec((5, 32), seed=3)
    _, c2 = llama.run_with_cache(t, sites=["mlp_out"], layers=[0],
                                 interventions=Ablate("mlp_out", layer=0, kind="mean", source=src))
    np.testing.assert_allclose(np.asarray(c2["mlp_out", 0]), np.broadcast_to(np.asarray(src).mean(0), (2, 8, 32)),
                               atol=1e-6)
    src_rows = vec((5, 8, 32), seed=4)
    key = jax.random.PRNGKey(0)
    iv = Ablate("mlp_out", layer=0, kind="resample", source=src_rows, key=key)
    _, c3 = llama.run_with_cache(t, sites=["mlp_out"], layers=[0], interventions=iv)
    idx = np.asarray(jax.random.randint(key, (2,), 0, 5))
    np.testing.assert_array_equal(np.asarray(c3["mlp_out", 0]), np.asarray(src_rows)[idx])


def test_scale_neurons(llama):
    t = toks()
    _, clean = llama.run_with_cache(t, sites=["mlp_post"], layers=[1])
    iv = Scale("mlp_post", layer=1, factor=2.0, neurons=jnp.array([0, 5]))
    _, c = llama.run_with_cache(t, sites=["mlp_post"], layers=[1], interventions=iv)
    a, b = np.asarray(clean["mlp_post", 1]), np.asarray(c["mlp_post", 1])
    np.testing.assert_allclose(b[..., [0, 5]], 2 * a[..., [0, 5]], rtol=1e-6)
    np.testing.assert_array_equal(b[..., 1:5], a[..., 1:5])


def test_project_remove_and_set(llama):
    t = toks()
    u = vec((32,), seed=7)
    uh = np.asarray(u) / np.linalg.norm(np.asarray(u))
    _, c = llama.run_with_cache(t, sites=["resid_mid"], layers=[1],
                                interventions=Project("resid_mid", layer=1, direction=u))
    assert np.abs(np.asarray(c["resid_mid", 1]) @ uh).max() < 1e-4
    _, c = llama.run_with_cache(t, sites=["resid_mid"], layers=[1],
                                interventions=Project("resid_mid", layer=1, direction=u, mode="set", value=3.0))
    np.testing.assert_allclose(np.asarray(c["resid_mid", 1]) @ uh, 3.0, atol=1e-4)


def test_knockout_of_all_edges_to_a_key_equals_masking_it(llama, gpt2):
    for model in (llama, gpt2):
        t = toks(B=2, T=8)
        j = 3
        mask = np.ones_like(t)
        mask[:, j] = 0
        pos = np.tile(np.arange(8), (2, 1))
        masked = np.asarray(model(t, attention_mask=mask, position_ids=pos))
        ko = AttentionKnockout(layer=jnp.arange(model.cfg.n_layers), key_positions=jnp.array([j]))
        knocked = np.asarray(model(t, interventions=ko))
        keep = np.arange(8) != j
        np.testing.assert_allclose(knocked[:, keep], masked[:, keep], atol=1e-5)


def test_knockout_edges_from_query_only(llama):
    t = toks()
    ko = AttentionKnockout(layer=1, query_positions=jnp.array([7]), key_positions=jnp.array([0, 1, 2]))
    _, c = llama.run_with_cache(t, sites=["pattern"], layers=[1, 2], interventions=ko)
    p = np.asarray(c["pattern", 1])
    assert np.abs(p[:, :, 7, :3]).max() < 1e-30  # blocked edges carry no attention
    np.testing.assert_allclose(p[:, :, 7].sum(-1), 1.0, atol=1e-5)
    _, clean = llama.run_with_cache(t, sites=["pattern"], layers=[1])
    np.testing.assert_array_equal(p[:, :, :7], np.asarray(clean["pattern", 1])[:, :, :7])


def test_custom_and_compose_order(llama):
    t = toks()
    v = vec((32,))
    double = Custom("resid_pre", fn=lambda x, layer, p: x * p, layer=1, params=jnp.float32(2.0))
    np.testing.assert_array_equal(np.asarray(llama(t, interventions=double)),
                                  np.asarray(llama(t, interventions=Scale("resid_pre", layer=1, factor=2.0))))
    add = Add("resid_pre", layer=1, vector=v, coeff=1.0)
    scale = Scale("resid_pre", layer=1, factor=2.0)
    _, c_as = llama.run_with_cache(t, sites=["resid_pre"], layers=[1], interventions=compose(add, scale))
    _, c_sa = llama.run_with_cache(t, sites=["resid_pre"], layers=[1], interventions=[scale, add])
    _, clean = llama.run_with_cache(t, sites=["resid_pre"], layers=[1])
    x = np.asarray(clean["resid_pre", 1])
    np.testing.assert_allclose(np.asarray(c_as["resid_pre", 1]), 2 * (x + np.asarray(v)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(c_sa["resid_pre", 1]), 2 * x + np.asarray(v), atol=1e-5)


def test_multi_layer_intervention_equals_composition(llama):
    t = toks()
    v = vec((32,))
    both = Add("resid_pre", layer=jnp.array([0, 2]), vector=v, coeff=1.5)
    seq = compose(Add("resid_pre", layer=0, vector=v, coeff=1.5), Add("resid_pre", layer=2, vector=v, coeff=1.5))
    np.testing.assert_array_equal(np.asarray(llama(t, interventions=both)), np.asarray(llama(t, interventions=seq)))


def test_vmap_over_layer_coeff_position_head_equals_loop(llama):
    cfg, params = llama.cfg, llama.params
    t = jnp.asarray(toks())
    v = vec((32,))

    def metric(iv):
        return interpjax.forward(cfg, params, t, interventions=iv)[:, -1, :3]

    layers = jnp.arange(cfg.n_layers)
    coeffs = jnp.linspace(-2, 2, 3)
    L, C = jnp.meshgrid(layers, coeffs, indexing="ij")
    grid = Add("resid_pre", layer=L.ravel(), vector=v, coeff=C.ravel())
    swept = jax.vmap(metric, in_axes=(Add("resid_pre", layer=0, vector=None, coeff=0),))(grid)
    loop = np.stack([metric(Add("resid_pre", layer=int(l), vector=v, coeff=float(c)))
                     for l, c in zip(L.ravel(), C.ravel())])
    np.testing.assert_allclose(np.asarray(swept), loop, atol=1e-5)

    _, zc = llama.run_with_cache(toks(seed=9), sites=["z"], layers=[1])
    value = zc["z", 1]
    pos, head = jnp.meshgrid(jnp.arange(8), jnp.arange(4), indexing="ij")
    grid = Patch("z", layer=1, value=value, positions=pos.ravel(), heads=head.ravel())
    axes = Patch("z", layer=None, value=None, positions=0, heads=0)
    swept = jax.vmap(metric, in_axes=(axes,))(grid)
    loop = np.stack([metric(Patch("z", layer=1, value=value, positions=jnp.array([int(p)]), heads=jnp.array([int(h)])))
                     for p, h in zip(pos.ravel(), head.ravel())])
    np.testing.assert_allclose(np.asarray(swept), loop, atol=1e-5)


def test_grad_through_interventions(llama):
    cfg, params = llama.cfg, llama.params
    t = jnp.asarray(toks())
    v = vec((32,))

    def f(coeff, vector):
        iv = Add("resid_pre", layer=1, vector=vector, coeff=coeff)
        return interpjax.forward(cfg, params, t, interventions=iv)[:, -1, 0].sum()

    g_c, g_v = jax.grad(f, argnums=(0, 1))(jnp.float32(0.5), v)
    eps = 1e-2
    fd = (f(0.5 + eps, v) - f(0.5 - eps, v)) / (2 * eps)
    np.testing.assert_allclose(float(g_c), float(fd), rtol=1e-2, atol=1e-4)
    assert np.abs(np.asarray(g_v)).max() > 0
    # gradient w.r.t. a cached activation through a Patch (attribution-style)
    _, cache = llama.run_with_cache(t, sites=["mlp_post"], layers=[1])

    def g(act):
        return interpjax.forward(cfg, params, t, interventions=Patch("mlp_post", layer=1, value=act))[:, -1, 0].sum()

    grad = jax.grad(g)(cache["mlp_post", 1])
    assert grad.shape == cache["mlp_post", 1].shape and np.abs(np.asarray(grad)).max() > 0


# ---------------------------------------------------------------------------------------------
# inputs that would make every output nan, or silently drop part of a value: refused before compute


@pytest.fixture
def no_compute(monkeypatch):
    """Replaces the compiled forward with a recorder: a refusal must come before any call."""
    from interpjax.core import model as M

    calls = []
    monkeypatch.setattr(M, "run_jit", lambda *a, **k: calls.append(a))
    return calls


def test_project_with_a_zero_direction_is_refused_before_compute(llama, no_compute):
    with pytest.raises(ValueError, match=r"Project.direction is the zero vector \(shape \(32,\)\)"):
        llama(toks(), interventions=Project("resid_pre", layer=1, direction=jnp.zeros(32)))
    assert not no_compute


def test_mean_ablation_with_an_empty_source_is_refused_before_compute(llama, no_compute):
    with pytest.raises(ValueError, match=r"Ablate\(kind='mean'\).source has shape \(0, 32\): M = 0"):
        llama(toks(), interventions=Ablate("mlp_out", layer=0, kind="mean", source=jnp.zeros((0, 32))))
    with pytest.raises(ValueError, match=r"Ablate\(kind='resample'\).source has shape \(0, 8, 32\)"):
        llama(toks(), interventions=Ablate("mlp_out", layer=0, kind="resample", source=jnp.zeros((0, 8, 32)),
                                           key=jax.random.PRNGKey(0)))
    assert not no_compute


def test_non_finite_values_are_refused_even_with_a_zero_coefficient(llama, no_compute):
    inf_vec = jnp.zeros(32).at[5].set(jnp.inf)
    with pytest.raises(ValueError, match=r"Add.vector has 1 non-finite entries \(nan/inf; first inf at index \(5,\)\)"):
        llama(toks(), interventions=Add("resid_pre", layer=1, vector=inf_vec, coeff=0.0))
    with pytest.raises(ValueError, match=r"Add.coeff has 1 non-finite entries \(nan/inf; first nan"):
        llama(toks(), interventions=Add("resid_pre", layer=1, vector=jnp.ones(32), coeff=float("nan")))
    nan_value = np.ones(32, np.float32)
    nan_value[[3, 9]] = np.nan
    with pytest.raises(ValueError, match=r"Patch.value has 2 non-finite entries \(nan/inf; first nan at index \(3,\)\)"):
        llama(toks(), interventions=Patch("resid_pre", layer=1, value=nan_value))
    with pytest.raises(ValueError, match=r"Scale.factor has 1 non-finite entries \(nan/inf; first -inf"):
        llama(toks(), interventions=Scale("mlp_post", layer=0, factor=jnp.ones(48).at[0].set(-jnp.inf)))
    assert not no_compute


def test_complex_values_are_refused_not_truncated_to_their_real_part(llama, no_compute):
    with pytest.raises(ValueError, match=r"Add.vector is complex \(dtype complex64\)"):
        llama(toks(), interventions=Add("resid_pre", layer=1, vector=jnp.ones(32, jnp.complex64) * 1j))
    with pytest.raises(ValueError, match=r"Add.coeff is complex"):
        llama(toks(), interventions=Add("resid_pre", layer=1, vector=jnp.ones(32), coeff=2j))
    with pytest.raises(ValueError, match=r"Patch.value is complex \(dtype complex128\)"):
        llama(toks(), interventions=Patch("resid_pre", layer=1, value=np.ones(32, np.complex128)))
    assert not no_compute
