"""Sparse autoencoders: each kind's encoding rule, validation, the splice intervention (exact no-ops,
ablation, clamping, steering = Add, pure reconstruction), SAELens / Gemma Scope layouts, and feature
attribution against finite differences and an exact identity, on a tiny random llama."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interpjax import Add
from interpjax.core import interventions as ivmod
from interpjax.core import model as M
from interpjax.core.interventions import Window
from interpjax.methods import sae as S
from interpjax.methods.sae import (SAE, FeatureAblate, FeatureAdd, FeatureClamp, FeatureSteer, SAESplice,
                                   feature_attribution, load_sae, save_sae)

TOKENS = np.array([[5, 17, 33, 2, 40, 9], [7, 7, 1, 3, 99, 50]], np.int32)
SITE, LAYER = "resid_pre", 1


@pytest.fixture(scope="module")
def llama(tiny_model):
    return tiny_model("llama")[0]


@pytest.fixture(scope="module")
def base(llama):
    """The clean run: logits and the layer-LAYER activations the tests splice into (one compile)."""
    logits, cache = llama.run_with_cache(TOKENS, sites=["resid_pre", "resid_mid", "mlp_out"], layers=[LAYER])
    return np.asarray(logits), {s: cache[s, LAYER] for s in cache.keys()}


def key(i=0):
    return jax.random.PRNGKey(i)


def run_at(model, ivs, site=SITE):
    """(logits, the activation at (site, LAYER)) of a run with ``ivs``."""
    logits, cache = model.run_with_cache(TOKENS, sites=[site], layers=[LAYER], interventions=ivs)
    return np.asarray(logits), np.asarray(cache[site, LAYER])


# ---------------------------------------------------------------------------------------------
# the SAE value


def test_each_kind_encodes_by_its_rule_and_decode_is_affine():
    x = jax.random.normal(key(1), (3, 5, 8))
    relu = SAE.random(key(), 8, 16)
    f = relu.encode(x)
    assert f.shape == (3, 5, 16) and relu.decode(f).shape == (3, 5, 8) and relu(x).shape == (3, 5, 8)
    pre = np.asarray(x @ relu.W_enc + relu.b_enc)
    np.testing.assert_array_equal(np.asarray(f), np.maximum(pre, 0))
    np.testing.assert_allclose(np.asarray(relu.decode(f)), np.asarray(f @ relu.W_dec + relu.b_dec), atol=1e-6)
    # decoder rows unit norm, encoder its transpose
    np.testing.assert_allclose(np.linalg.norm(np.asarray(relu.W_dec), axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(relu.W_enc), np.asarray(relu.W_dec).T)

    positive = SAE.random(key(), 8, 16, kind="topk", k=3).replace(b_enc=jnp.full((16,), 100.0))
    ft = np.asarray(positive.encode(x))
    assert ((ft != 0).sum(-1) == 3).all()  # exactly k when all pre-activations are positive
    top3 = np.sort(pre + 100.0, -1)[..., -3:]
    np.testing.assert_allclose(np.sort(ft, -1)[..., -3:], top3, rtol=1e-6)
    negative = positive.replace(b_enc=jnp.full((16,), -100.0))
    assert not np.asarray(negative.encode(x)).any()  # relu after top-k: no positive, no feature

    thr = jnp.linspace(0.0, 0.5, 16)
    jump = SAE.random(key(), 8, 16, kind="jumprelu", threshold=thr)
    fj = np.asarray(jump.encode(x))
    np.testing.assert_array_equal(fj, np.where(pre > np.asarray(thr), pre, 0.0))

    btk = SAE.random(key(), 8, 16, kind="batchtopk", k=2).replace(b_enc=jnp.full((16,), 100.0))
    fb = np.asarray(btk.encode_batch(x))
    assert (fb != 0).sum() == 2 * 15  # k * N over the whole batch, not k per token
    with pytest.raises(ValueError, match="encodes with a threshold at inference"):
        btk.encode(x)
    btk_t = btk.replace(threshold=jnp.full((16,), 100.5))
    np.testing.assert_array_equal(np.asarray(btk_t.encode(x)), np.where(pre + 100 > 100.5, pre + 100, 0.0))


def test_a_stacked_bank_vmaps_like_a_loop():
    saes = [SAE.random(key(i), 8, 16, kind="topk", k=4) for i in range(3)]
    bank = jax.tree.map(lambda *a: jnp.stack(a), *saes)
    x = jax.random.normal(key(9), (5, 8))
    out = jax.jit(jax.vmap(lambda s: s.reconstruct(x)))(bank)
    # equal to float32 rounding, not bit for bit: the batched program may use other matmul kernels
    # (on an AVX-512 Xeon 18 of 40 entries differ by <= 2.4e-7, i.e. 1-2 ulp; a wrong member or a
    # mixed-up bank axis would differ by O(1))
    for i, s in enumerate(saes):
        want = np.asarray(s.reconstruct(x))
        np.testing.assert_allclose(np.asarray(out[i]), want, rtol=0, atol=4 * np.finfo(np.float32).eps * np.abs(want).max())
        assert np.abs(want - np.asarray(saes[(i + 1) % 3].reconstruct(x))).max() > 0.1


def test_bad_saes_are_refused_with_named_errors():
    with pytest.raises(ValueError, match=r"kind='gated'.*valid kinds: \('relu', 'topk', 'batchtopk', 'jumprelu'\)"):
        SAE.random(key(), 8, 16, kind="gated")
    with pytest.raises(ValueError, match=r"needs k, an integer in 1..16"):
        SAE.random(key(), 8, 16, kind="topk")
    with pytest.raises(ValueError, match=r"k=17 out of range: valid k are integers 1..16"):
        SAE.random(key(), 8, 16, kind="topk", k=17)
    with pytest.raises(ValueError, match=r"k=0 out of range"):
        SAE.random(key(), 8, 16, kind="batchtopk", k=0)
    good = SAE.random(key(), 8, 16)
    with pytest.raises(ValueError, match=r"do not fit together.*b_enc \(16,\)"):
        SAE.create(good.W_enc, jnp.zeros(15), good.W_dec, good.b_dec)
    with pytest.raises(ValueError, match="do not fit together"):
        SAE.create(good.W_enc, good.b_enc, good.W_dec[:12], good.b_dec)
    with pytest.raises(ValueError, match="only a transcoder"):
        SAE.create(good.W_enc, good.b_enc, jnp.zeros((16, 9)), jnp.zeros(9))
    with pytest.raises(ValueError, match=r"kind='jumprelu'\) needs a threshold"):
        SAE.create(good.W_enc, good.b_enc, good.W_dec, good.b_dec, kind="jumprelu")
    with pytest.raises(ValueError, match=r"threshold has shape \(\); expected \(16,\)"):
        SAE.create(good.W_enc, good.b_enc, good.W_dec, good.b_dec, jnp.asarray(0.1), kind="jumprelu")
    with pytest.raises(ValueError, match="non-finite"):
        SAE.create(good.W_enc.at[0, 0].set(jnp.nan), good.b_enc, good.W_dec, good.b_dec)
    with pytest.raises(ValueError, match="last axis must be d_in=8"):
        good.encode(jnp.zeros((2, 9)))


# ---------------------------------------------------------------------------------------------
# splicing


def model_sae(model, kind="relu", **kw):
    return SAE.random(key(3), model.cfg.d_model, 64, kind=kind, **kw)


def test_a_splice_without_edit_or_with_an_idle_clamp_is_an_exact_no_op(llama, base):
    logits, acts = base
    saes = [model_sae(llama), model_sae(llama, "topk", k=5), model_sae(llama, "jumprelu", threshold=jnp.full(64, 0.1))]
    spliced = llama(TOKENS, interventions=[SAESplice(SITE, LAYER, sae) for sae in saes])  # one after another
    assert np.array_equal(np.asarray(spliced), logits)
    f = np.asarray(saes[1].encode(acts[SITE]))
    active = int(np.argmax(f[0, 2]))
    assert f[0, 2, active] > 0
    clamp = FeatureClamp(jnp.asarray([active]), jnp.asarray([f[0, 2, active]]))
    clamped = llama(TOKENS, interventions=SAESplice(SITE, LAYER, saes[1], clamp, positions=jnp.asarray([2])))
    assert np.array_equal(np.asarray(clamped[:1]), logits[:1])  # row 0: the clamp sets the current value


def test_ablating_an_active_feature_changes_logits_and_a_dead_one_does_not(llama, base):
    logits, acts = base
    sae = model_sae(llama)
    x = np.asarray(acts[SITE])
    f = np.asarray(sae.encode(x))
    active = int(np.argmax(f.reshape(-1, f.shape[-1]).max(0)))
    changed, got = run_at(llama, SAESplice(SITE, LAYER, sae, FeatureAblate(jnp.asarray([active]))))
    assert np.abs(changed - logits).max() > 1e-4
    np.testing.assert_allclose(got, x - f[..., active:active + 1] * np.asarray(sae.W_dec[active]), atol=1e-6)
    dead_sae = sae.replace(b_enc=sae.b_enc.at[7].set(-1e4))
    assert not np.asarray(dead_sae.encode(x))[..., 7].any()
    dead, _ = run_at(llama, SAESplice(SITE, LAYER, dead_sae, FeatureAblate(jnp.asarray([7]))))
    assert np.array_equal(dead, logits)


def test_steering_a_feature_equals_adding_its_decoder_row(llama, base):
    sae = model_sae(llama, "topk", k=4)
    i, c = 11, 2.5
    steer = llama(TOKENS, interventions=SAESplice(SITE, LAYER, sae, FeatureSteer(jnp.asarray([i]), c),
                                                  positions=jnp.asarray([1, -1])))
    add = llama(TOKENS, interventions=Add(SITE, LAYER, vector=sae.W_dec[i], coeff=c, positions=jnp.asarray([1, -1])))
    np.testing.assert_allclose(np.asarray(steer), np.asarray(add), atol=1e-6, rtol=0)
    assert np.abs(np.asarray(add) - base[0]).max() > 1e-3


def test_pure_reconstruction_of_a_perfect_sae_is_the_original(llama, base):
    D = llama.cfg.d_model
    eye = jnp.eye(D)
    perfect = SAE.create(jnp.concatenate([eye, -eye], 1), jnp.zeros(2 * D), jnp.concatenate([eye, -eye], 0),
                         jnp.zeros(D))  # relu(x) - relu(-x) = x
    pure = np.asarray(llama(TOKENS, interventions=SAESplice(SITE, LAYER, perfect, keep_error=False)))
    np.testing.assert_allclose(pure, base[0], atol=1e-6, rtol=0)
    lossy = model_sae(llama)  # same shapes and kind: the same compiled program
    assert lossy.d_sae == perfect.d_sae
    lossy_out = np.asarray(llama(TOKENS, interventions=SAESplice(SITE, LAYER, lossy, keep_error=False)))
    assert np.abs(lossy_out - base[0]).max() > 1e-3  # a lossy SAE's reconstruction does change the run


def test_a_transcoder_splice_reads_the_recorded_source(llama, base):
    logits, acts = base
    tc = SAE.random(key(4), llama.cfg.d_model, 48, site_in="resid_mid", site_out="mlp_out")
    x_in = acts["resid_mid"]
    f = np.asarray(tc.encode(x_in))
    i = int(np.argmax(f.reshape(-1, 48).max(0)))
    noop, _ = run_at(llama, SAESplice("mlp_out", LAYER, tc, source=x_in), "mlp_out")
    assert np.array_equal(noop, logits)
    _, got = run_at(llama, SAESplice("mlp_out", LAYER, tc, FeatureAblate(jnp.asarray([i])), source=x_in), "mlp_out")
    want = np.asarray(acts["mlp_out"]) - f[..., i:i + 1] * np.asarray(tc.W_dec[i])
    np.testing.assert_allclose(got, want, atol=1e-6)
    with pytest.raises(ValueError, match="needs source"):
        llama(TOKENS, interventions=SAESplice("mlp_out", LAYER, tc))
    with pytest.raises(ValueError, match="trained on site 'mlp_out'"):
        llama(TOKENS, interventions=SAESplice("resid_post", LAYER, tc, source=x_in))


def test_a_windowed_splice_edits_its_window_as_the_full_splice_does():
    """What makes it shiftable: on a window of rows (generation segments, the sweep's suffixes) the
    splice, per-position feature deltas included, edits those rows as the full splice does."""
    sae = SAE.random(key(), 8, 16, kind="topk", k=3)
    x = jax.random.normal(key(1), (2, 6, 8))
    delta = jax.random.normal(key(2), (2, 6, 16))
    iv = SAESplice("resid_pre", 0, sae, (FeatureAdd(delta), FeatureAblate(jnp.asarray([1, 2]))),
                   positions=jnp.asarray([3, -1]))
    assert iv.can_shift() and iv.can_pack()
    full = np.asarray(ivmod.apply_at((iv,), "resid_pre", x, 0))
    assert np.abs(full - np.asarray(x))[:, [3, 5]].min() > 0 and np.array_equal(full[:, :3], np.asarray(x[:, :3]))
    part = ivmod.apply_at((iv.window(Window(total=6, start=2, n_rows=4)),), "resid_pre", x[:, 2:], 0)
    # equal up to the rounding of matmuls of another row count (XLA may block them differently)
    np.testing.assert_allclose(np.asarray(part), full[:, 2:], atol=1e-6, rtol=0)


def test_bad_splices_are_refused_before_compute(llama):
    sae = model_sae(llama)
    with pytest.raises(ValueError, match=r"d_out=64 but site 'resid_pre' has width 32"):
        llama(TOKENS, interventions=SAESplice(SITE, LAYER, SAE.random(key(), 64, 16)))
    with pytest.raises(ValueError, match=r"FeatureAblate.features \[3, 64\] out of range: valid features are 0..63"):
        llama(TOKENS, interventions=SAESplice(SITE, LAYER, sae, FeatureAblate(jnp.asarray([3, 64]))))
    with pytest.raises(ValueError, match="must be integer indices"):
        llama(TOKENS, interventions=SAESplice(SITE, LAYER, sae, FeatureSteer(jnp.asarray([1.0]))))
    with pytest.raises(ValueError, match=r"FeatureClamp.values has shape \(3,\)"):
        llama(TOKENS, interventions=SAESplice(SITE, LAYER, sae, FeatureClamp(jnp.asarray([1, 2]), jnp.zeros(3))))
    with pytest.raises(ValueError, match="one feature axis"):
        llama(TOKENS, interventions=SAESplice("q", LAYER, sae))
    with pytest.raises(ValueError, match="dtype bfloat16 but the model computes in float32"):
        llama(TOKENS, interventions=SAESplice(SITE, LAYER, jax.tree.map(lambda a: a.astype(jnp.bfloat16), sae)))
    with pytest.raises(ValueError, match=r"layer.*out of range"):
        llama(TOKENS, interventions=SAESplice(SITE, 7, sae))


# ---------------------------------------------------------------------------------------------
# formats


def test_saelens_folders_round_trip_and_keep_their_hook(tmp_path):
    thr = jnp.linspace(0.0, 0.3, 16)
    saes = [SAE.random(key(1), 8, 16, site_in="resid_post", layer=3),
            SAE.random(key(2), 8, 16, kind="topk", k=3, apply_b_dec_to_input=True).replace(b_dec=jnp.arange(8.0)),
            SAE.random(key(3), 8, 16, kind="jumprelu", threshold=thr),
            SAE.random(key(4), 8, 16, kind="batchtopk", k=2, threshold=thr),
            SAE.random(key(5), 8, 16, d_out=6, site_in="resid_mid", site_out="mlp_out", layer=1)]
    x = jax.random.normal(key(7), (4, 8))
    for i, sae in enumerate(saes):
        out = save_sae(sae, tmp_path / f"sae{i}")
        back = load_sae(out)
        assert (back.kind, back.k, back.apply_b_dec_to_input, back.site_in, back.site_out, back.layer) == \
               (sae.kind, sae.k, sae.apply_b_dec_to_input, sae.site_in, sae.site_out, sae.layer)
        for n in S.WEIGHT_KEYS + ("threshold",):
            a, b = getattr(sae, n), getattr(back, n)
            assert (a is None) == (b is None) and (a is None or np.array_equal(np.asarray(a), np.asarray(b)))
        np.testing.assert_array_equal(np.asarray(back.reconstruct(x)), np.asarray(sae.reconstruct(x)))
    cfg0 = json.loads((tmp_path / "sae0" / "cfg.json").read_text())
    assert cfg0["metadata"]["hook_name"] == "blocks.3.hook_resid_post" and cfg0["architecture"] == "standard"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"sae{i}" for i in range(5)]  # no temp folders left
    with pytest.raises(ValueError, match="exists; pass overwrite=True"):
        save_sae(saes[0], tmp_path / "sae0")
    save_sae(saes[2], tmp_path / "sae0", overwrite=True)
    assert load_sae(tmp_path / "sae0").kind == "jumprelu"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"sae{i}" for i in range(5)]


def write_saelens(folder, cfg, tensors):
    from safetensors.numpy import save_file

    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: np.asarray(v, np.float32) for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    return folder


def tensors(D=8, F=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"W_enc": rng.normal(size=(D, F)), "b_enc": rng.normal(size=F), "W_dec": rng.normal(size=(F, D)),
            "b_dec": rng.normal(size=D)}


def test_a_pre_6_saelens_cfg_loads_with_its_semantics(tmp_path):
    old = {"d_in": 8, "d_sae": 16, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4},
           "hook_point": "blocks.2.hook_resid_pre", "hook_point_layer": 2, "dtype": "float32",
           "normalize_activations": False, "model_name": "gpt2"}
    w = tensors()
    sae = load_sae(write_saelens(tmp_path / "old", old, w))
    assert (sae.kind, sae.k, sae.apply_b_dec_to_input) == ("topk", 4, True)  # SAELens' pre-6 default
    assert (sae.site_in, sae.layer, sae.hook_name, sae.hook_layer) == ("resid_pre", 2, "blocks.2.hook_resid_pre", 2)
    x = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    kth = np.sort(pre, -1)[:, -4:-3]
    want = np.where(pre >= kth, np.maximum(pre, 0), 0.0)
    np.testing.assert_allclose(np.asarray(sae.encode(jnp.asarray(x))), want, rtol=1e-5, atol=1e-5)
    other = load_sae(write_saelens(tmp_path / "mystery", dict(old, hook_point="blocks.2.ln2.hook_normalized"), w))
    assert (other.site_in, other.layer, other.hook_name) == (None, None, "blocks.2.ln2.hook_normalized")


@pytest.mark.parametrize("change,message", [
    ({"architecture": "gated"}, r"architecture='gated' is not supported: supported architectures are"),
    ({"normalize_activations": "layer_norm"}, r"normalize_activations='layer_norm' is not supported"),
    ({"normalize_activations": True}, r"normalize_activations=True is not supported"),
    ({"hook_name": "blocks.0.attn.hook_z"}, r"reshape_activations='hook_z' is not supported"),
    ({"activation_fn": "tanh-relu"}, r"activation_fn='tanh-relu' is not supported"),
    ({"architecture": "topk"}, r"k=None is not supported: architecture 'topk' needs k"),
    ({"architecture": "topk", "k": 4, "rescale_acts_by_decoder_norm": True},
     r"rescale_acts_by_decoder_norm=True is not supported"),
    ({"finetuning_scaling_factor": True}, r"finetuning_scaling_factor=True is not supported"),
    ({"metadata": {"hook_name": "blocks.0.hook_resid_pre", "hook_head_index": 2}}, r"hook_head_index=2"),
])
def test_saelens_cfgs_with_unimplemented_options_are_refused_by_name(tmp_path, change, message):
    cfg = dict({"architecture": "standard", "d_in": 8, "d_sae": 16, "apply_b_dec_to_input": False,
                "metadata": {"sae_lens_version": "6.1.0"}}, **change)
    with pytest.raises(ValueError, match=message):
        load_sae(write_saelens(tmp_path / "bad", cfg, tensors()))


def test_saelens_weights_that_do_not_fit_are_refused(tmp_path):
    cfg = {"architecture": "jumprelu", "d_in": 8, "d_sae": 16, "apply_b_dec_to_input": False}
    with pytest.raises(ValueError, match=r"kind='jumprelu'\) needs a threshold"):
        load_sae(write_saelens(tmp_path / "a", cfg, tensors()))
    with pytest.raises(ValueError, match=r"tensors \['W_skip'\]"):
        load_sae(write_saelens(tmp_path / "b", dict(cfg, architecture="standard"),
                               dict(tensors(), W_skip=np.zeros((8, 8)))))
    with pytest.raises(ValueError, match=r"d_sae=32 but W_enc has shape \(8, 16\)"):
        load_sae(write_saelens(tmp_path / "c", dict(cfg, architecture="standard", d_sae=32), tensors()))
    with pytest.raises(ValueError, match="scaling_factor that is not all ones"):
        load_sae(write_saelens(tmp_path / "d", dict(cfg, architecture="standard"),
                               dict(tensors(), scaling_factor=np.full(16, 2.0))))
    t = dict(tensors(), topk_threshold=np.asarray(0.25))
    btk = load_sae(write_saelens(tmp_path / "e", dict(cfg, architecture="batchtopk", k=3), t))
    assert btk.kind == "batchtopk" and np.array_equal(np.asarray(btk.threshold), np.full(16, 0.25, np.float32))


def test_gemma_scope_npz_loads_as_jumprelu_and_unknown_layouts_name_both(tmp_path):
    rng = np.random.default_rng(0)
    w = dict(tensors(), threshold=np.abs(rng.normal(size=16)))
    np.savez(tmp_path / "params.npz", **{k: np.asarray(v, np.float32) for k, v in w.items()})
    sae = load_sae(tmp_path)
    assert sae.kind == "jumprelu" and not sae.apply_b_dec_to_input and sae.dtype == jnp.float32
    x = rng.normal(size=(5, 8)).astype(np.float32)
    pre = x @ w["W_enc"] + w["b_enc"]
    want = np.where(pre > w["threshold"], pre, 0.0) @ w["W_dec"] + w["b_dec"]
    np.testing.assert_allclose(np.asarray(sae.reconstruct(jnp.asarray(x))), want, rtol=1e-4, atol=1e-4)
    assert load_sae(tmp_path / "params.npz", dtype=jnp.bfloat16).dtype == jnp.bfloat16
    np.savez(tmp_path / "bad.npz", W_enc=np.zeros((8, 16), np.float32))
    with pytest.raises(ValueError, match=r"missing \['W_dec', 'b_dec', 'b_enc', 'threshold'\]"):
        load_sae(tmp_path / "bad.npz")
    (tmp_path / "pickled").mkdir()
    np.savez(tmp_path / "pickled" / "params.npz", **dict(w, W_enc=np.array([{"a": 1}], dtype=object)))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_sae(tmp_path / "pickled")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"accepted layouts: SAELens \(a folder with cfg.json \+ "
                                         r"sae_weights.safetensors\); Gemma Scope"):
        load_sae(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# feature attribution


def answer_logit(logits_BTV):
    return logits_BTV[0, -1, 42] - logits_BTV[1, -1, 42]


def test_feature_attribution_matches_finite_differences_and_sums_to_grad_times_reconstruction(llama, base):
    sae = model_sae(llama)
    attr = feature_attribution(llama, TOKENS, sae, SITE, LAYER, answer_logit)
    assert attr.shape == (2, 6, 64)
    f = np.asarray(sae.encode(base[1][SITE]))

    # the metric as a function of an Add vector [B, T, D] at the site: moving feature i of token
    # (b, t) by eps moves the spliced site by eps * W_dec[i] there (one program for values and grads)
    def via_add(v_BTD):
        return answer_logit(M.run(llama.cfg, llama.params, jnp.asarray(TOKENS), jnp.ones((2, 6), jnp.int32), None,
                                  (Add(SITE, LAYER, vector=v_BTD),), (), ())[0])

    value_grad = jax.jit(jax.value_and_grad(via_add))
    zero = np.zeros((2, 6, llama.cfg.d_model), np.float32)

    def metric_at(b, t, step_D):
        v = zero.copy()
        v[b, t] = step_D
        return float(value_grad(jnp.asarray(v))[0])

    eps = 1e-2
    checked = 0
    for b, t in ((0, 5), (1, 3), (1, 5)):
        i = int(np.argmax(f[b, t]))
        row = eps * np.asarray(sae.W_dec[i])
        fd = (metric_at(b, t, row) - metric_at(b, t, -row)) / (2 * eps) * f[b, t, i]
        np.testing.assert_allclose(attr[b, t, i], fd, rtol=2e-2, atol=1e-4)
        checked += abs(fd) > 1e-3
    assert checked >= 2  # the checks are not all of zero attributions

    # exact identity: sum_F attribution = grad_x . (decode(f) - b_dec), grad_x from the zero Add
    g = np.asarray(value_grad(jnp.asarray(zero))[1])
    recon = np.asarray(sae.decode(jnp.asarray(f))) - np.asarray(sae.b_dec)
    np.testing.assert_allclose(attr.sum(-1), (g * recon).sum(-1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feature_attribution((llama.cfg, llama.params), TOKENS, sae, SITE, LAYER, answer_logit),
                               attr, rtol=0, atol=0)


def test_feature_attribution_refuses_bad_input(llama):
    sae = model_sae(llama)
    with pytest.raises(ValueError, match="must return a scalar"):
        feature_attribution(llama, TOKENS, sae, SITE, LAYER, lambda lg: lg[:, -1, 0])
    with pytest.raises(ValueError, match="layer"):
        feature_attribution(llama, TOKENS, sae, SITE, 3, answer_logit)
    with pytest.raises(ValueError, match="unknown site"):
        feature_attribution(llama, TOKENS, sae, "resid", LAYER, answer_logit)
    with pytest.raises(TypeError, match="Model or a \\(cfg, params\\) pair"):
        feature_attribution(object(), TOKENS, sae, SITE, LAYER, answer_logit)
