"""The KV segment primitive: running a suffix of positions (or of layers) against cached keys and
values gives the same numbers as the full forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import interpjax
from interpjax.core import model as M
from interpjax.io.convert import config_from_hf
from interpjax.testing import tiny_hf_config
from interpjax.train import init_params

FAMILIES = ["gpt2", "gpt_neox", "gptj", "llama", "mistral"]


def _setup(name, B=2, T=9, seed=0):
    cfg = config_from_hf(tiny_hf_config(name))
    params = init_params(cfg, jax.random.PRNGKey(seed))
    params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.PRNGKey(seed + 1), a.shape), params)
    toks = jax.random.randint(jax.random.PRNGKey(seed + 2), (B, T), 0, cfg.vocab_size)
    return cfg, params, toks


def _full(cfg, params, toks):
    B, T = toks.shape
    idx = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    ones = jnp.ones((B, T), jnp.int32)
    ctx = M.make_ctx(cfg, idx, ones, idx, ones)
    x0 = M.embed(cfg, params, toks, idx)
    x, rec, kv = M.run_layers(cfg, params, x0, ctx, (), ("resid_pre",), tuple(range(cfg.n_layers)), return_kv=True)
    return idx, ones, x, rec, kv


@pytest.mark.parametrize("name", FAMILIES)
def test_position_suffix_against_cached_prefix_equals_full(name):
    cfg, params, toks = _setup(name)
    ref = interpjax.forward(cfg, params, toks)
    idx, ones, _, _, (k, v) = _full(cfg, params, toks)
    p = 4  # recompute positions p.. only
    ctx = M.make_ctx(cfg, idx[:, p:], ones[:, p:], idx, ones)
    x0 = M.embed(cfg, params, toks[:, p:], idx[:, p:])
    x, _, _ = M.run_layers(cfg, params, x0, ctx, (), (), (), past_kv=(k[:, :, :p], v[:, :, :p]))
    np.testing.assert_allclose(M.final_logits(cfg, params, x), ref[:, p:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_start_at_layer_from_cached_residual_equals_full(name):
    cfg, params, toks = _setup(name)
    ref = interpjax.forward(cfg, params, toks)
    idx, ones, _, rec, _ = _full(cfg, params, toks)
    L = cfg.n_layers // 2
    ctx = M.make_ctx(cfg, idx, ones, idx, ones)
    x, _, _ = M.run_layers(cfg, params, rec["resid_pre"][L], ctx, (), (), (), start=L)
    np.testing.assert_allclose(M.final_logits(cfg, params, x), ref, atol=1e-5, rtol=1e-5)


def test_token_by_token_decode_with_kv_buffer_equals_full():
    cfg, params, toks = _setup("llama", B=2, T=7)
    ref = interpjax.forward(cfg, params, toks)
    B, T = toks.shape
    L, K, H = cfg.n_layers, cfg.kv_heads, cfg.d_head
    kbuf = jnp.zeros((L, B, T, K, H))
    vbuf = jnp.zeros((L, B, T, K, H))
    slots = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    for t in range(T):
        valid = (slots < t).astype(jnp.int32)  # keys already written
        q = jnp.full((B, 1), t)
        ctx = M.make_ctx(cfg, q, jnp.ones((B, 1), jnp.int32), jnp.concatenate([slots, q], 1),
                         jnp.concatenate([valid, jnp.ones((B, 1), jnp.int32)], 1))
        x, _, (k, v) = M.run_layers(cfg, params, M.embed(cfg, params, toks[:, t:t + 1], q), ctx, (), (), (),
                                     past_kv=(kbuf, vbuf), return_kv=True)
        kbuf = kbuf.at[:, :, t].set(k[:, :, 0])
        vbuf = vbuf.at[:, :, t].set(v[:, :, 0])
        np.testing.assert_allclose(M.final_logits(cfg, params, x)[:, 0], ref[:, t], atol=1e-5, rtol=1e-5)


def test_recording_a_layer_outside_the_range_is_refused():
    cfg, params, toks = _setup("gpt2")
    idx, ones, _, _, _ = _full(cfg, params, toks)
    ctx = M.make_ctx(cfg, idx, ones, idx, ones)
    x0 = M.embed(cfg, params, toks, idx)
    with pytest.raises(ValueError, match="only layers 1"):
        M.run_layers(cfg, params, x0, ctx, (), ("resid_pre",), (0,), start=1)
    with pytest.raises(ValueError, match="not inside"):
        M.run_layers(cfg, params, x0, ctx, (), (), (), start=1, stop=1)
