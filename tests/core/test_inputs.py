"""core.inputs: inputs that look valid but would be wrapped, truncated or reinterpreted are refused
before compute, naming the offending value and the valid range; valid inputs pass unchanged."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interpjax.core import inputs
from interpjax.core import model as M


@pytest.fixture(scope="module")
def llama(tiny_model):
    return tiny_model("llama")[0]  # vocab 101, 3 layers, n_ctx 64


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if the model would actually run."""

    def refuse(*a, **k):
        raise AssertionError("compute started before the input was refused")

    monkeypatch.setattr(M, "run_jit", refuse)


TOK = np.array([[1, 2, 3, 4]], np.int64)


@pytest.mark.parametrize("bad", [2**31 + 5, 2**32 + 3, -(2**32) + 3])
def test_int64_token_ids_do_not_wrap(llama, no_compute, bad):
    tokens = TOK.copy()
    tokens[0, 2] = bad  # int32 casting would turn these into the valid ids 5 or 3
    with pytest.raises(ValueError, match=rf"token ids \[{bad}\] outside the vocabulary 0..100"):
        llama(tokens)
    with pytest.raises(ValueError, match=rf"\[{bad}\]"):
        llama.run_with_cache(tokens, sites=["resid_pre"])


@pytest.mark.parametrize("value", [2, 0.5, -1, np.nan])
def test_mask_values_other_than_0_1_refused(llama, no_compute, value):
    mask = np.ones((1, 4), np.float32)
    mask[0, 1] = value
    with pytest.raises(ValueError, match=r"attention_mask must hold only 0 \(padding\) and 1 \(real token\); got values \["):
        llama(TOK, attention_mask=mask)
    with pytest.raises(ValueError, match="got values"):
        llama.run_with_cache(TOK, sites=["resid_pre"], attention_mask=mask)


def test_mask_complex_dtype_refused(llama, no_compute):
    with pytest.raises(ValueError, match="attention_mask must be 0/1 .* got dtype complex64"):
        llama(TOK, attention_mask=np.ones((1, 4), np.complex64))


def test_bool_int_and_float_masks_agree(llama):
    m = np.array([[0, 1, 1, 1]])
    ref = np.asarray(llama(TOK, attention_mask=m.astype(np.int32)))
    for dtype in (bool, np.float32, np.int64, np.uint8):
        assert np.array_equal(np.asarray(llama(TOK, attention_mask=m.astype(dtype))), ref)
    assert np.array_equal(np.asarray(llama(TOK, attention_mask=jnp.asarray(m, jnp.float32))), ref)


@pytest.mark.parametrize("layers", [[1.7], 1.7, True, [True], [0, False], np.array([1.0]), jnp.array([1.0]), ["1"]])
def test_non_integer_layers_refused(llama, no_compute, layers):
    with pytest.raises(ValueError, match=r"layers must be integers; got .*valid layers are 0..2"):
        llama.run_with_cache(TOK, sites=["resid_pre"], layers=layers)


def test_integer_layers_in_any_form(llama):
    _, ref = llama.run_with_cache(TOK, sites=["resid_pre"], layers=[1])
    for layers in (1, [1], (1,), np.array([1]), np.int64(1), jnp.array([1]), [np.int32(1)], range(1, 2)):
        _, c = llama.run_with_cache(TOK, sites=["resid_pre"], layers=layers)
        assert c.layers == (1,) and np.array_equal(np.asarray(c["resid_pre"]), np.asarray(ref["resid_pre"]))
    with pytest.raises(ValueError, match=r"layers \[0, 0\] contain duplicates"):
        llama.run_with_cache(TOK, sites=["resid_pre"], layers=[0, 0])
    with pytest.raises(ValueError, match=r"must be an int or a 1-D list of ints, got shape \(1, 1\)"):
        llama.run_with_cache(TOK, sites=["resid_pre"], layers=[[1]])


def test_valid_int64_tokens_match_int32(llama):
    assert np.array_equal(np.asarray(llama(TOK)), np.asarray(llama(TOK.astype(np.int32))))
    assert np.array_equal(np.asarray(llama(TOK.astype(np.uint16))), np.asarray(llama(TOK.astype(np.int32))))


def test_prepare_under_jit(llama):
    """Traced tokens and masks get shape/dtype checks only and still run."""
    cfg, params = llama.cfg, llama.params

    @jax.jit
    def f(t, m):
        t, m, _, _ = M.prepare(cfg, params, t, m, None)
        return M.run(cfg, params, t, m, None, (), (), ())[0]

    assert np.allclose(np.asarray(f(jnp.asarray(TOK, jnp.int32), jnp.ones((1, 4), jnp.int32))),
                       np.asarray(llama(TOK)), atol=1e-6)
    with pytest.raises(ValueError, match="integer ids"):
        jax.jit(lambda t: M.prepare(cfg, params, t, None, None)[0])(jnp.zeros((1, 4)))


def test_check_token_ids(llama):
    cfg = llama.cfg
    assert inputs.check_token_ids(cfg, [3, 100], (2,)).dtype == np.int32
    with pytest.raises(ValueError, match=r"answers must lie in the vocabulary 0..100; got \[2147483653\]"):
        inputs.check_token_ids(cfg, np.array([3, 2**31 + 5]), (2,))
    with pytest.raises(ValueError, match=r"one token id per prompt, shape \(2,\); got \(3,\)"):
        inputs.check_token_ids(cfg, [1, 2, 3], (2,))
    with pytest.raises(ValueError, match="target must be integer token ids, got dtype float64"):
        inputs.check_token_ids(cfg, [1.0, 2.7], (2,), name="target")


def test_check_positions():
    assert inputs.check_positions([0, -1, 5], 6).tolist() == [0, -1, 5]
    with pytest.raises(ValueError, match=r"positions \[6\] out of range for 6 tokens: valid positions are -6..5"):
        inputs.check_positions([0, 6], 6)
    with pytest.raises(ValueError, match="integer positions, got dtype float64"):
        inputs.check_positions([1.5], 6)
    with pytest.raises(ValueError, match="integer positions, got dtype bool"):
        inputs.check_positions([True], 6)
    with pytest.raises(ValueError, match=r"positions \[2147483653\] out of range"):
        inputs.check_positions(np.array([2**31 + 5]), 6)
    with pytest.raises(ValueError, match=r"has shape \(2,\); expected \(3,\)"):
        inputs.check_positions([0, 1], 6, shape=(3,))


def test_position_ids_and_types(llama, no_compute):
    with pytest.raises(ValueError, match=r"position_ids must lie in 0..63; got \[4294967296\]"):
        llama(TOK, position_ids=np.array([[0, 1, 2, 2**32]]))
    with pytest.raises(ValueError, match="position_ids must be integers, got dtype float32"):
        llama(TOK, position_ids=np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="no token-type embeddings"):
        llama(TOK, token_type_ids=np.zeros((1, 4), np.int32))
