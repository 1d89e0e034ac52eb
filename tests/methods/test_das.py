"""Boundless DAS: causal-model counterfactuals, the interchange intervention's invariants, an
orthogonal rotation after training, and recovery of a variable planted in a hand-built model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interpjax import Config, Model, Patch, forward
from interpjax.methods.das import CausalModel, boundary_masks, counterfactual_labels, hard_masks, init_das, interchange_intervention, orthogonality_error, rotation, sample_interchange, train_das_grid
from interpjax.train import init_params

G = 8  # noise variants per (u, w) value pair
D = 16


def planted_model(seed: int = 0):
    """A 2-layer decoder whose layers write nothing (zero output projections), so the last
    position's residual is its token embedding Q [u, w, 1, noise]: a random rotation of two planted
    booleans. The head answers Yes iff u AND w (logit gap u + w - 1.5 before a positive rescaling)."""
    cfg = Config(vocab_size=4 * G + 2, d_model=D, n_layers=2, n_heads=2, d_head=8, d_mlp=16, n_ctx=8,
                 positions="none", norm="rmsnorm", norm_bias=False, mlp="standard", activation="relu",
                 tie_embeddings=False)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    params = init_params(cfg, jax.random.PRNGKey(seed))
    params["layers"]["attn"]["o"] = jnp.zeros_like(params["layers"]["attn"]["o"])
    params["layers"]["mlp"]["down"] = jnp.zeros_like(params["layers"]["mlp"]["down"])
    emb = np.zeros((cfg.vocab_size, D), np.float32)
    for tok in range(4 * G):
        u, w = (tok // G) % 2, tok // (2 * G)
        emb[tok] = q @ np.concatenate([[u, w, 1.0], 0.5 * rng.normal(size=D - 3)])
    unembed = np.zeros((D, cfg.vocab_size), np.float32)
    unembed[:, -1] = 4.0 * q @ np.concatenate([[1.0, 1.0, -1.5], np.zeros(D - 3)])  # Yes; No (id -2) stays 0
    params["embed"]["tok"] = jnp.asarray(emb)
    params["unembed"]["w"] = jnp.asarray(unembed)
    return cfg, params, q


def sample(rng, n):
    return {"u": rng.integers(0, 2, n), "w": rng.integers(0, 2, n), "g": rng.integers(0, G, n),
            "filler": rng.integers(0, 4 * G, n)}


def tokens_of(inp):
    return np.stack([inp["filler"], inp["g"] + G * inp["u"] + 2 * G * inp["w"]], 1).astype(np.int32)


CM_U = CausalModel("u_and_w", lambda i: {"u": i["u"], "w": i["w"]}, lambda i, v: v["u"] & v["w"], ("u",))
LABELS = np.array([4 * G, 4 * G + 1])  # class 0 -> No, class 1 -> Yes


def interchange_data(cm, n, seed):
    base, sources, labels = sample_interchange(cm, sample, n, np.random.default_rng(seed))
    return tokens_of(base), np.stack([tokens_of(s) for s in sources]), labels


def test_planted_model_solves_its_task():
    cfg, params, _ = planted_model()
    inp = sample(np.random.default_rng(1), 256)
    logits = np.asarray(forward(cfg, params, tokens_of(inp)))[:, -1]
    pred = logits[:, LABELS].argmax(-1)
    np.testing.assert_array_equal(pred, inp["u"] & inp["w"])


@pytest.mark.slow
def test_das_recovers_planted_variable_and_stays_orthogonal():
    """IIA > 0.95 at the planted site (last position) vs chance at the filler position, and the
    trained rotation is orthogonal to 1e-5."""
    cfg, params, _ = planted_model()
    train = interchange_data(CM_U, 1024, 0)
    held = interchange_data(CM_U, 512, 1)
    grid = train_das_grid(Model(cfg, params), *train, LABELS, site="resid_post", layers=[1], positions=[0, 1],
                          steps=250, batch_size=64, lr=2e-2, temperature=(2.0, 0.05), eval_data=held)
    assert grid.iia.shape == (1, 2)
    assert grid.iia[0, 1] > 0.95, grid.iia
    assert grid.iia[0, 0] < 0.7, grid.iia  # the filler position carries neither u nor w
    assert grid.loss[-1, 0, 1] < grid.loss[0, 0, 1]
    for pi in range(2):
        assert orthogonality_error(grid.cell(0, pi)) < 1e-5
    assert 1 <= grid.widths[0, 1, 0] < D  # a proper subspace, not the whole residual


def test_counterfactual_labels_and_balanced_sampling():
    base = {"u": np.array([1, 1, 0, 0]), "w": np.array([1, 0, 1, 1])}
    src = {"u": np.array([0, 1, 1, 0]), "w": np.array([0, 0, 0, 0])}
    np.testing.assert_array_equal(counterfactual_labels(CM_U, base, [src]), [0, 0, 1, 0])
    with pytest.raises(ValueError, match="needs 1 source"):
        counterfactual_labels(CM_U, base, [src, src])
    b, s, y = sample_interchange(CM_U, sample, 200, np.random.default_rng(0), changed_frac=0.5)
    own = b["u"] & b["w"]
    assert len(y) == 200 and (y != own).sum() == 100
    np.testing.assert_array_equal(y, s[0]["u"] & b["w"])
    with pytest.raises(ValueError, match="no variables"):
        counterfactual_labels(CausalModel("bad", lambda i: {}, lambda i, v: i["u"], ("u",)), base, [src])


def test_interchange_invariants():
    """Zero mask: the base run is unchanged; full mask: equals patching the source activation."""
    cfg, params, _ = planted_model()
    rng = np.random.default_rng(3)
    base, src = tokens_of(sample(rng, 6)), tokens_of(sample(rng, 6))
    from interpjax import run_with_cache

    _, cache = run_with_cache(cfg, params, src, sites=["resid_post"], layers=[0])
    src_BD = cache["resid_post", 0][:, 1]
    das = init_das(jax.random.PRNGKey(0), D, 1)
    das["skew"] = das["skew"] * 300.0  # a far-from-identity rotation
    r = rotation(das)
    assert orthogonality_error(das) < 1e-5
    clean = np.asarray(forward(cfg, params, base))
    none = interchange_intervention("resid_post", 0, 1, r, jnp.zeros((1, D)), src_BD[None])
    np.testing.assert_allclose(np.asarray(forward(cfg, params, base, interventions=none)), clean, atol=1e-5)
    full = interchange_intervention("resid_post", 0, -1, r, jnp.ones((1, D)), src_BD[None])
    patched = Patch("resid_post", layer=0, value=jnp.repeat(src_BD[:, None, :], 2, axis=1), positions=jnp.array([1]))
    np.testing.assert_allclose(np.asarray(forward(cfg, params, base, interventions=full)),
                               np.asarray(forward(cfg, params, base, interventions=patched)), atol=1e-4)


def test_boundary_masks_anneal_to_hard_interval():
    das = init_das(jax.random.PRNGKey(0), 12, 2, init_width=0.5)
    hard = np.asarray(hard_masks(das, 12))
    assert hard.shape == (2, 12)
    assert hard[0, 6:].sum() == 0 and hard[1, :6].sum() == 0  # each variable stays in its own block
    assert hard[0].sum() == 3 and hard[1].sum() == 3  # (0.11, 3) of each 6-wide block
    np.testing.assert_allclose(np.asarray(boundary_masks(das, 12, 1e-3)), hard, atol=1e-6)
    soft = np.asarray(boundary_masks(das, 12, 5.0))
    assert 0 < soft.min() and soft.max() < 1


def test_grid_input_errors():
    cfg, params, _ = planted_model()
    base, srcs, labels = interchange_data(CM_U, 16, 0)
    kw = dict(layers=[0], positions=[1], steps=1)
    with pytest.raises(ValueError, match="valid"):
        train_das_grid(Model(cfg, params), base, srcs, labels, LABELS, site="pattern", **kw)
    with pytest.raises(ValueError, match="layers"):
        train_das_grid(Model(cfg, params), base, srcs, labels, LABELS, layers=[5], positions=[1], steps=1)
    with pytest.raises(ValueError, match="positions"):
        train_das_grid(Model(cfg, params), base, srcs, labels, LABELS, layers=[0], positions=[2], steps=1)
    with pytest.raises(ValueError, match="source tokens"):
        train_das_grid(Model(cfg, params), base, srcs[0], labels, LABELS, **kw)
    with pytest.raises(ValueError, match="labels must lie"):
        train_das_grid(Model(cfg, params), base, srcs, labels + 2, LABELS, **kw)
    with pytest.raises(ValueError, match="steps"):
        train_das_grid(Model(cfg, params), base, srcs, labels, LABELS, layers=[0], positions=[1], steps=0)
    # nothing truncated or wrapped: float positions, float tokens, class tokens outside the vocabulary
    with pytest.raises(ValueError, match=r"positions must be integer positions, got dtype float64 \(\[1.7\]\)"):
        train_das_grid(Model(cfg, params), base, srcs, labels, LABELS, layers=[0], positions=[1.7], steps=1)
    with pytest.raises(ValueError, match="got dtype float64"):
        train_das_grid(Model(cfg, params), base.astype(np.float64), srcs, labels, LABELS, **kw)
    with pytest.raises(ValueError, match=rf"class_tokens \[{4 * G}, {4 * G + 2}\] outside the vocabulary"):
        train_das_grid(Model(cfg, params), base, srcs, labels, np.array([4 * G, 4 * G + 2]), **kw)
    for lr in (np.nan, np.inf, -0.1):
        with pytest.raises(ValueError, match=f"TrainConfig.lr must be a finite number >= 0.0; got {lr!r}"):
            train_das_grid(Model(cfg, params), base, srcs, labels, LABELS, lr=lr, **kw)
    with pytest.raises(TypeError, match=r"train_das_grid takes a Model first, got Config.*interpjax.Model\(cfg=cfg, params=params\)"):
        train_das_grid(cfg, base, srcs, labels, LABELS, **kw)
    with pytest.raises(TypeError, match="positional"):  # the old (cfg, params, ...) call
        train_das_grid(cfg, params, base, srcs, labels, LABELS, **kw)


def test_das_trains_through_the_one_trainer():
    """A short grid run on the one Trainer: the per-step losses come back [steps, layers, positions]
    (kept on device until the end), finite, and every cell's rotation stays orthogonal."""
    cfg, params, _ = planted_model()
    train = interchange_data(CM_U, 64, 0)
    grid = train_das_grid(Model(cfg, params), *train, LABELS, site="resid_post", layers=[0, 1], positions=[0, 1],
                          steps=6, batch_size=16, lr=2e-2)
    assert grid.loss.shape == (6, 2, 2) and np.isfinite(grid.loss).all()
    assert grid.iia.shape == grid.train_iia.shape == (2, 2) and grid.widths.shape == (2, 2, 1)
    assert max(orthogonality_error(grid.cell(l, p)) for l in range(2) for p in range(2)) < 1e-5
