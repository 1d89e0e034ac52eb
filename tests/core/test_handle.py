"""The ``Model`` handle as a pytree: params are the one child, cfg / tokenizer / name static, so a
model passes through jit, grad, vmap and tree.map and gives exactly what the unbundled call gives."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import interpjax
from interpjax import Add, Model, forward

TOKENS = np.array([[5, 17, 33, 2, 40, 9], [7, 7, 1, 3, 99, 50]], np.int32)


@pytest.fixture(scope="module")
def llama(tiny_model):
    return tiny_model("llama")[0]


def test_params_are_the_only_children(llama):
    leaves, treedef = jax.tree.flatten(llama)
    assert len(leaves) == len(jax.tree.leaves(llama.params))
    assert all(a is b for a, b in zip(leaves, jax.tree.leaves(llama.params)))
    back = jax.tree.unflatten(treedef, leaves)
    assert isinstance(back, Model) and back.cfg is llama.cfg and back.tokenizer is llama.tokenizer
    assert back.name == llama.name
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(llama)[0]]
    assert all(p.startswith(".params[") for p in paths), paths[:3]


def test_static_data_is_hashable_and_compares_tokenizer_by_identity(llama):
    _, a = jax.tree.flatten(llama)
    _, b = jax.tree.flatten(llama.replace(params=jax.tree.map(lambda x: x + 0, llama.params)))
    assert a == b and hash(a) == hash(b)  # same cfg, tokenizer object and name: same compiled program
    _, c = jax.tree.flatten(llama.replace(tokenizer=object()))
    _, d = jax.tree.flatten(llama.replace(name="other"))
    assert a != c and a != d


def test_jit_of_a_model_argument_equals_the_eager_call(llama):
    got = jax.jit(lambda m, t: m(t))(llama, TOKENS)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(llama(TOKENS)))
    iv = Add("resid_pre", layer=1, vector=jnp.ones(llama.cfg.d_model), coeff=2.0)
    got = jax.jit(lambda m, t, iv: m(t, interventions=iv))(llama, TOKENS, iv)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(llama(TOKENS, interventions=iv)))


def test_tree_map_returns_a_model_that_runs(llama):
    doubled = jax.tree.map(lambda a: a * 2, llama)
    assert isinstance(doubled, Model) and doubled.cfg is llama.cfg and doubled.tokenizer is llama.tokenizer
    want = forward(llama.cfg, jax.tree.map(lambda a: a * 2, llama.params), TOKENS)
    np.testing.assert_array_equal(np.asarray(doubled(TOKENS)), np.asarray(want))


def test_vmap_over_tokens_and_over_stacked_params_equals_a_loop(llama):
    batches = np.stack([TOKENS, TOKENS[::-1], (TOKENS + 3) % llama.cfg.vocab_size])  # [3, B, T]
    got = jax.vmap(lambda m, t: m(t), in_axes=(None, 0))(llama, batches)
    for i, t in enumerate(batches):
        np.testing.assert_allclose(np.asarray(got[i]), np.asarray(llama(t)), rtol=1e-6, atol=1e-6)
    models = [llama, jax.tree.map(lambda a: a * 0.9, llama)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *models)
    got = jax.vmap(lambda m, t: m(t), in_axes=(0, None))(stacked, TOKENS)
    for i, m in enumerate(models):
        np.testing.assert_allclose(np.asarray(got[i]), np.asarray(m(TOKENS)), rtol=1e-6, atol=1e-6)


def test_grad_with_respect_to_the_model_is_the_grad_of_params(llama):
    loss = lambda p: forward(llama.cfg, p, TOKENS)[:, -1, 3].sum()
    g = jax.grad(lambda m: m(TOKENS)[:, -1, 3].sum())(llama)
    assert isinstance(g, Model) and g.cfg is llama.cfg
    want = jax.grad(loss)(llama.params)
    for a, b in zip(jax.tree.leaves(g.params), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_handle_methods_still_work(llama):
    np.testing.assert_array_equal(np.asarray(llama.apply(llama.params, TOKENS)), np.asarray(llama(TOKENS)))
    logits, cache = llama.run_with_cache(TOKENS, sites=["resid_pre"], layers=[0])
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(llama(TOKENS)))
    assert cache["resid_pre"].shape == (1, 2, 6, llama.cfg.d_model)
    out = llama.generate(TOKENS, 2)
    assert out.tokens.shape == (2, 8) and (out.tokens[:, :6] == TOKENS).all()
    assert "Model(name=" in repr(llama) and "n_layers=" in repr(llama) and "params" not in repr(llama)
    assert llama != llama.replace() and llama == llama  # identity equality (params are arrays)
    with pytest.raises(ValueError, match="no tokenizer"):
        Model(cfg=llama.cfg, params=llama.params).to_tokens("hi")


def test_curated_public_api_and_lazy_method_modules():
    for name in ("load", "Model", "forward", "run_with_cache", "Cache", "Config", "Add", "Patch", "Ablate", "Scale",
                 "Project", "AttentionKnockout", "Custom", "compose", "sweep", "generate"):
        assert hasattr(interpjax, name), name
    from interpjax.methods import knockout

    assert interpjax.knockout is knockout and interpjax.steering.__name__ == "interpjax.methods.steering"
    for name in interpjax.METHODS:
        assert getattr(interpjax, name).__name__ == f"interpjax.methods.{name}"
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        interpjax.nonsense
