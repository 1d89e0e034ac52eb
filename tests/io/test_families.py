"""Gemma 2 / Gemma 3 / Qwen3: the new Config switches each matter on the tiny models (so the parity
tests in test_parity.py exercise them), are validated, and converters refuse what they do not
handle; config metadata that never changes the model is accepted; generation with sliding windows
shorter than the sequence equals transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interpjax
from interpjax.io import convert

TOL = 1e-4


def tokens(B=2, T=12, seed=0, vocab=101):
    return np.random.default_rng(seed).integers(0, vocab, (B, T))


@pytest.mark.parametrize("name, change", [
    ("gemma3", dict(qk_norm=False)),
    ("gemma3", dict(rotary_base_local=0.0)),
    ("gemma3", dict(window=(64, 64, 0, 64))),  # windows longer than the sequence: no local masking
    ("gemma3", dict(norm_offset=0.0)),
    ("gemma3", dict(embed_scale=1.0)),
    ("gemma3", dict(attn_scale=None)),
    ("gemma3", dict(sandwich_norm=False)),
    ("gemma2", dict(attn_softcap=0.0)),
    ("gemma2", dict(final_softcap=0.0)),
    ("qwen3", dict(qk_norm=False)),
])
def test_each_switch_changes_the_tiny_model(tiny_model, name, change):
    """Turning a switch off (params kept, extra ones ignored) moves the logits far beyond the parity
    tolerance: the tiny random models really exercise every switch their family uses."""
    model, _ = tiny_model(name)
    toks = tokens()
    base = np.asarray(model(toks))
    cfg = model.cfg.replace(**change)
    other = np.asarray(interpjax.core.model.run(cfg, model.params, toks, np.ones_like(toks), None, (), (), ())[0])
    assert np.abs(base - other).max() > 100 * TOL


def test_gemma_sites_sit_after_the_sandwich_norms(tiny_model):
    """attn_out / mlp_out are what each branch adds to the residual (after its post norm)."""
    model, _ = tiny_model("gemma3")
    _, c = model.run_with_cache(tokens(), sites=["resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"])
    for layer in range(model.cfg.n_layers):
        np.testing.assert_allclose(np.asarray(c["resid_mid", layer]),
                                   np.asarray(c["resid_pre", layer] + c["attn_out", layer]), atol=1e-5)
        np.testing.assert_allclose(np.asarray(c["resid_post", layer]),
                                   np.asarray(c["resid_mid", layer] + c["mlp_out", layer]), atol=1e-5)


@pytest.mark.parametrize("bad, match", [
    (dict(norm="layernorm", qk_norm=True), "qk_norm and norm_offset need norm='rmsnorm'"),
    (dict(norm="layernorm", norm_offset=1.0), "need norm='rmsnorm'"),
    (dict(attn_softcap=-1.0), "attn_softcap must be >= 0"),
    (dict(final_softcap=float("nan")), "final_softcap must be >= 0"),
    (dict(embed_scale=0.0), "embed_scale must be positive"),
    (dict(rotary_base_local=100.0), "no layer has a window"),
    (dict(rotary_base_local=100.0, positions="learned", window=(4, 0)), "needs positions='rotary'"),
    (dict(sandwich_norm=True, parallel_residual=True), "sandwich_norm cannot be combined"),
])
def test_config_refuses_invalid_switches(bad, match):
    from interpjax.testing import tiny_config

    with pytest.raises(ValueError, match=match):
        tiny_config(**bad)


def _hf_dict(name, **overrides):
    from interpjax.testing import tiny_hf_config

    return {**tiny_hf_config(name).to_dict(), **overrides}


@pytest.mark.parametrize("name, field, value, match", [
    ("gemma3", "use_bidirectional_attention", True, "use_bidirectional_attention=True is not supported"),
    ("gemma3", "layer_types", ["sliding_attention", "chunked_attention", "full_attention", "full_attention"],
     "layer_types"),
    ("gemma3", "rope_parameters", {"sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
                                   "full_attention": {"rope_type": "default", "rope_theta": 1e6}},
     "sliding_attention rope"),
    ("gemma2", "some_new_switch", 1, "'some_new_switch'"),
    ("qwen3", "rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}, "rope type 'yarn'"),
    # fields that change computation stay refused on llama (item 3)
    ("llama", "attn_logit_softcapping", 50.0, "'attn_logit_softcapping'"),
    ("llama", "quantization_config", {"quant_method": "gguf"}, "'quantization_config'"),
])
def test_converters_refuse_what_they_do_not_handle(name, field, value, match):
    with pytest.raises(ValueError, match=match):
        convert.config_from_hf(_hf_dict(name, **{field: value}))


def test_metadata_fields_are_accepted_and_ignored():
    """Fields written by transformers' GGUF conversion that never change the model (item 3)."""
    from interpjax.io.convert.common import METADATA_KEYS

    assert {"_model_name_or_path", "unk_token_id"} <= METADATA_KEYS
    for name in ("llama", "gemma3", "qwen3"):
        plain = convert.config_from_hf(_hf_dict(name))
        with_meta = convert.config_from_hf(_hf_dict(name, _model_name_or_path="Smollm2 135M", unk_token_id=0))
        assert with_meta == plain


def test_metadata_folder_loads(tiny_checkpoint, tmp_path):
    """A checkpoint folder whose config.json carries the metadata fields loads and runs the same."""
    import json
    import shutil

    folder, _ = tiny_checkpoint("llama")
    copy = tmp_path / "with_meta"
    shutil.copytree(folder, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg.update(_model_name_or_path="Smollm2 135M 8k", unk_token_id=0)
    (copy / "config.json").write_text(json.dumps(cfg))
    toks = tokens(seed=2)
    assert np.array_equal(np.asarray(interpjax.load(copy)(toks)), np.asarray(interpjax.load(folder)(toks)))


@pytest.mark.parametrize("name", ["gemma3", "gemma2"])
def test_greedy_generation_with_short_windows_matches_transformers(tiny_model, name):
    """KV-cache generation past the sliding window (4) equals transformers' greedy generate, with a
    left-padded batch."""
    from interpjax.generate import generate

    model, hf = tiny_model(name)
    toks = tokens(B=2, T=7, seed=7)
    mask = np.ones_like(toks)
    mask[1, :3] = 0
    toks[1, :3] = 0
    n_new = 12
    with torch.no_grad():
        ref = hf.generate(torch.tensor(toks), attention_mask=torch.tensor(mask), max_new_tokens=n_new,
                          do_sample=False, pad_token_id=0).numpy()
    ours = generate(model.cfg, model.params, toks, n_new, attention_mask=mask).tokens
    assert ours.tolist() == ref.tolist()
    assert len(set(ours[0, 7:].tolist())) > 1  # not a degenerate repeat of one token
