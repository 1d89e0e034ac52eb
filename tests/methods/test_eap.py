"""Edge attribution (EAP, EAP-IG), circuits, faithfulness and path patching on a tiny random Llama:
the graph run against the model's own forward, the faithfulness extremes, an exact linear identity
for edges into the logits, EAP-IG at one step = EAP, path patching against a direct-effect Add and
an ordinary head Patch, and errors before compute."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from interpjax import Add, Patch
from interpjax.core import model as M
from interpjax.methods import eap as E

TOL = 1e-5


def logit_diff(out):
    return (out.logits(-1, 0) - out.logits(-1, 1)).mean()


def ref_metric(cfg, params, tokens, ivs=()):
    lg = M.forward(cfg, params, tokens, None, list(ivs) or None)
    return float((lg[:, -1, 0] - lg[:, -1, 1]).mean())


@pytest.fixture(scope="module")
def normed(tiny_model):
    """(cfg, params) of the tiny random Llama, and a clean / corrupted pair differing at 2 positions."""
    model, _ = tiny_model("llama")
    rng = np.random.default_rng(0)
    clean = rng.integers(0, model.cfg.vocab_size, (2, 6)).astype(np.int32)
    corrupt = clean.copy()
    corrupt[:, 1] = rng.integers(0, model.cfg.vocab_size, 2)
    corrupt[:, 4] = rng.integers(0, model.cfg.vocab_size, 2)
    return (model.cfg, model.params), clean, corrupt


@pytest.fixture(scope="module")
def llama(normed):
    """The same model with the final norm switched off (the logits node's input then enters the
    metric linearly); every test uses it, so that each compiled program is built once (each costs
    seconds to compile here). The final norm is the core's ``final_norm``, applied unchanged."""
    (cfg, params), clean, corrupt = normed
    return (cfg.replace(final_norm=False), params), clean, corrupt


@pytest.fixture(scope="module")
def scores(llama):
    m, clean, corrupt = llama
    return E.eap(m, clean, corrupt, logit_diff)


def test_node_layout_and_order(llama, scores):
    (cfg, _), _, _ = llama
    ups, downs = E.upstream_nodes(cfg), E.downstream_nodes(cfg)
    assert len(ups) == 1 + cfg.n_layers * (cfg.n_heads + 1)
    assert len(downs) == cfg.n_layers * (cfg.n_heads + 2 * cfg.kv_heads + 1) + 1
    assert scores.scores.shape == (len(ups), len(downs)) and scores.upstream == ups and scores.downstream == downs
    assert np.isnan(scores.score("L1.H0", "L0.MLP.in")) and np.isnan(scores.score("L0.MLP", "L0.H2.q"))
    assert np.isnan(scores.score("L0.H0", "L0.K1.v"))  # a head never feeds its own layer's attention
    assert np.isfinite(scores.score("L0.H0", "L0.MLP.in"))  # sequential block: heads precede the MLP
    np.testing.assert_array_equal(np.isnan(scores.scores), ~E.precedes(cfg))


def test_graph_run_is_the_model_and_faithfulness_extremes(llama, scores):
    """All edges kept: the clean forward; none kept: the corrupted forward (both against the core
    run); the EAP program's clean / corrupted metrics are the core's too."""
    m, clean, corrupt = llama
    cfg, params = m
    want_clean, want_corrupt = ref_metric(cfg, params, clean), ref_metric(cfg, params, corrupt)
    assert abs(want_clean - want_corrupt) > 0.05
    np.testing.assert_allclose([scores.metric_clean, scores.metric_corrupt], [want_clean, want_corrupt], atol=TOL)
    full = np.ones(scores.scores.shape, bool)
    f_all = E.faithfulness(m, clean, corrupt, logit_diff, full)
    f_none = E.faithfulness(m, clean, corrupt, logit_diff, ~full)
    np.testing.assert_allclose(f_all.metric_circuit, want_clean, atol=TOL)
    np.testing.assert_allclose(f_none.metric_circuit, want_corrupt, atol=TOL)
    np.testing.assert_allclose([f_all.normalised, f_none.normalised], [1.0, 0.0], atol=1e-4)


def test_edges_into_linear_logits_are_exact(llama):
    """Without the final norm the logit difference is linear in the logits node's input, so the
    EAP score of u -> logits IS the exact effect of corrupting that one edge."""
    lin, clean, corrupt = llama
    assert not lin[0].final_norm
    s = E.eap(lin, clean, corrupt, logit_diff)
    moved = 0.0
    for u in ("embed", "L0.H1", "L1.MLP", "L2.H3"):
        keep = np.ones(s.scores.shape, bool)
        keep[s.upstream.index(u), -1] = False
        f = E.faithfulness(lin, clean, corrupt, logit_diff, keep)
        np.testing.assert_allclose(f.metric_circuit - s.metric_clean, s.score(u, "logits"), atol=TOL)
        moved = max(moved, abs(s.score(u, "logits")))
    assert moved > 1e-2


def test_edge_scores_of_a_node_sum_to_its_node_attribution(llama, scores):
    """A node's output enters every later input additively, so the sum of its edge scores over all
    its downstream nodes is the node's own attribution (Syed et al.): AtP of the node with the
    gradient at the clean run and corrupted minus clean -- ``atp`` with the two runs swapped."""
    from interpjax.methods import atp as A

    m, clean, corrupt = llama
    cfg = m[0]

    def row(u):
        return float(np.nansum(scores.scores[scores.upstream.index(u)]))

    z_LH = A.atp(m, corrupt, clean, logit_diff, site="z").effects
    mlp_L = A.atp(m, corrupt, clean, logit_diff, site="mlp_out", by=("layer",)).effects
    emb = A.atp(m, corrupt, clean, logit_diff, site="resid_pre", layers=[0], by=("layer",)).effects
    got = [row("embed")] + [row(f"L{l}.H{h}") for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    got += [row(f"L{l}.MLP") for l in range(cfg.n_layers)]
    want = [float(emb[0])] + [float(z_LH[l, h]) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    want += [float(mlp_L[l]) for l in range(cfg.n_layers)]
    np.testing.assert_allclose(got, want, atol=TOL, rtol=1e-4)
    assert max(abs(w) for w in want) > 1e-2


def test_eap_ig_one_step_is_eap_and_more_steps_differ(llama, scores):
    m, clean, corrupt = llama
    ig1 = E.eap(m, clean, corrupt, logit_diff, steps=1)
    np.testing.assert_allclose(ig1.scores, scores.scores, atol=1e-6)
    ig3 = E.eap(m, clean, corrupt, logit_diff, steps=3)
    assert ig3.method == "EAP-IG" and ig3.steps == 3 and scores.method == "EAP"
    assert np.nanmax(np.abs(ig3.scores - scores.scores)) > 1e-4
    assert E._eap_program._cache_size() == 1  # one program serves every step count


def test_path_patching_identities(llama, scores):
    """Head -> logits: the head's output difference added to the last residual (its direct effect);
    head -> every downstream node: ordinary patching of that head's z with the corrupted run's."""
    m, clean, corrupt = llama
    cfg, params = m
    layer, head = 1, 2
    _, cc = M.run_with_cache(cfg, params, clean, sites=["z"], layers=(layer,))
    _, ck = M.run_with_cache(cfg, params, corrupt, sites=["z"], layers=(layer,))
    o = params["layers"]["attn"]["o"][layer]
    diff = jnp.einsum("bth,hd->btd", ck["z"][0][:, :, head] - cc["z"][0][:, :, head], o[head])
    direct = ref_metric(cfg, params, clean, [Add("resid_post", layer=cfg.n_layers - 1, vector=diff, coeff=1.0)])
    pp = E.path_patch(m, clean, corrupt, logit_diff, f"L{layer}.H{head}", "logits")
    np.testing.assert_allclose(pp.metric, direct, atol=TOL)
    assert abs(pp.effect) > 1e-3
    patched = ref_metric(cfg, params, clean, [Patch("z", layer=layer, value=ck["z"][0], heads=jnp.array([head]))])
    every = E.path_patch(m, clean, corrupt, logit_diff, [f"L{layer}.H{head}"], scores.downstream)
    np.testing.assert_allclose(every.metric, patched, atol=TOL)
    assert abs(every.metric - pp.metric) > 1e-4  # indirect paths matter: the two identities differ


def test_circuit_selection_and_curve(llama, scores):
    m, clean, corrupt = llama
    c = E.circuit(scores, top_n=5)
    assert c.n_edges == 5
    kept = np.abs(scores.scores[c.edge_mask])
    rest = np.abs(scores.scores[~c.edge_mask & ~np.isnan(scores.scores)])
    assert kept.min() >= rest.max()
    t = E.circuit(scores, threshold=float(kept.min()))
    np.testing.assert_array_equal(t.edge_mask, c.edge_mask)
    assert set(c.upstream) == {scores.upstream[i] for i in np.flatnonzero(c.edge_mask.any(1))}
    n_valid = int((~np.isnan(scores.scores)).sum())
    curve = E.faithfulness_curve(m, clean, corrupt, logit_diff, scores, [0, 5, n_valid], n_random=2, seed=1)
    np.testing.assert_allclose(curve.normalised[[0, 2]], [0.0, 1.0], atol=1e-4)
    np.testing.assert_allclose(curve.random_normalised[:, [0, 2]], [[0.0, 1.0]] * 2, atol=1e-4)
    one = E.faithfulness(m, clean, corrupt, logit_diff, c)
    np.testing.assert_allclose(curve.metric[1], one.metric_circuit, atol=TOL)
    assert curve.random_metric.shape == (2, 3)


def test_bad_inputs_raise_named_errors(llama, scores):
    m, clean, corrupt = llama
    with pytest.raises(ValueError, match="exactly one of top_n and threshold"):
        E.circuit(scores)
    with pytest.raises(ValueError, match="exactly one of top_n and threshold"):
        E.circuit(scores, top_n=3, threshold=0.1)
    with pytest.raises(ValueError, match=r"top_n=-1 out of range: valid values are integers 0\.\."):
        E.circuit(scores, top_n=-1)
    with pytest.raises(ValueError, match="steps=0 invalid"):
        E.eap(m, clean, corrupt, logit_diff, steps=0)
    with pytest.raises(ValueError, match="same shape"):
        E.eap(m, clean, corrupt[:, :4], logit_diff)
    with pytest.raises(ValueError, match="one scalar"):
        E.eap(m, clean, corrupt, lambda out: out.logits(-1, 0))
    with pytest.raises(ValueError, match=r"edge_mask must be a bool array of shape \(16, 28\)"):
        E.faithfulness(m, clean, corrupt, logit_diff, np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="unknown upstream node 'L9.H0'; valid upstream nodes: embed"):
        E.path_patch(m, clean, corrupt, logit_diff, "L9.H0", "logits")
    with pytest.raises(ValueError, match="unknown downstream node 'L0.H0'"):
        E.path_patch(m, clean, corrupt, logit_diff, "embed", "L0.H0")
    with pytest.raises(ValueError, match="no sender .* precedes a receiver"):
        E.path_patch(m, clean, corrupt, logit_diff, "L2.H0", "L0.MLP.in")
    cfg, params = m
    with pytest.raises(ValueError, match="sandwich_norm=True"):
        E.eap((cfg.replace(sandwich_norm=True), params), clean, corrupt, logit_diff)
