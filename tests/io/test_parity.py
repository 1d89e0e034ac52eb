"""Parity with transformers for every family: logits and every layer's hidden states, fp32 <= 1e-4."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interpjax
from interpjax.testing import TINY

TOL = 1e-4
FAMILIES = sorted(TINY)


def tokens(B=2, T=12, seed=0, vocab=101):
    return np.random.default_rng(seed).integers(0, vocab, (B, T))


def hf_run(hf, toks, mask=None, pos=None):
    kw = {}
    if mask is not None:
        kw["attention_mask"] = torch.tensor(mask)
    if pos is not None:
        kw["position_ids"] = torch.tensor(pos)
    with torch.no_grad():
        out = hf(torch.tensor(toks), output_hidden_states=True, **kw)
    return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_and_hidden_states_match(tiny_model, name):
    model, hf = tiny_model(name)
    toks = tokens()
    ref_logits, ref_hidden = hf_run(hf, toks)
    logits, cache = model.run_with_cache(toks, sites=["resid_pre", "final"])
    assert np.abs(np.asarray(logits) - ref_logits).max() <= TOL
    assert len(ref_hidden) == model.cfg.n_layers + 1
    for layer in range(model.cfg.n_layers):
        assert np.abs(np.asarray(cache["resid_pre", layer]) - ref_hidden[layer]).max() <= TOL, layer
    assert np.abs(np.asarray(cache["final"]) - ref_hidden[-1]).max() <= TOL


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_matches_transformers_and_unpadded(tiny_model, name, side):
    model, hf = tiny_model(name)
    toks = tokens(B=3, T=10, seed=1)
    lengths = [10, 7, 4]
    mask = np.zeros_like(toks)
    for r, n in enumerate(lengths):
        if side == "left":
            mask[r, 10 - n:] = 1
        else:
            mask[r, :n] = 1
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    ref_logits, _ = hf_run(hf, toks, mask, pos)
    logits = np.asarray(model(toks, attention_mask=mask))
    real = mask.astype(bool)
    assert np.abs(logits[real] - ref_logits[real]).max() <= TOL
    # each padded row equals the same tokens run alone without padding
    for r, n in enumerate(lengths):
        sl = slice(10 - n, 10) if side == "left" else slice(0, n)
        alone = np.asarray(model(toks[r:r + 1, sl]))
        assert np.abs(logits[r, sl] - alone[0]).max() <= TOL


@pytest.mark.parametrize("name", FAMILIES)
def test_round_trip_to_hf_state_dict(tiny_model, name, tmp_path):
    """interpjax params -> HF-named safetensors -> transformers gives the same logits."""
    from transformers import AutoModelForCausalLM

    model, hf = tiny_model(name)
    interpjax.save_pretrained(model.cfg, model.params, tmp_path, hf.config)
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    toks = tokens(seed=3)
    with torch.no_grad():
        ref = again(torch.tensor(toks)).logits.numpy()
    assert np.abs(np.asarray(model(toks)) - ref).max() <= TOL


def test_save_pretrained_round_trip(tiny_model, tmp_path):
    model, hf = tiny_model("llama")
    interpjax.save_pretrained(model.cfg, model.params, tmp_path, hf.config)
    again = interpjax.load(tmp_path)
    toks = tokens(seed=4)
    assert np.array_equal(np.asarray(model(toks)), np.asarray(again(toks)))


@pytest.mark.parametrize("name", ["gpt2", "llama", "gpt_neox"])
def test_bf16_close_to_fp32(tiny_checkpoint, name):
    folder, hf = tiny_checkpoint(name)
    m32 = interpjax.load(folder)
    m16 = interpjax.load(folder, dtype="bfloat16")
    assert m16.params["embed"]["tok"].dtype == np.dtype("bfloat16")
    toks = tokens(seed=5)
    a = np.asarray(m32(toks))
    b = np.asarray(m16(toks)).astype(np.float32)
    assert np.isfinite(b).all()
    # bf16 keeps ~3 significant digits; the logits here have scale ~4
    assert np.abs(a - b).max() <= 0.1 * np.abs(a).max()


def test_scan_layer_index_is_traced():
    """Compile once for any layer: a jitted function of the layer index does not retrace."""
    import jax
    import jax.numpy as jnp

    from interpjax.testing import tiny_config

    cfg = tiny_config()
    from interpjax.io.convert import expected_shapes

    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.1, s), jnp.float32), expected_shapes(cfg),
                          is_leaf=lambda x: isinstance(x, tuple))
    traces = []

    @jax.jit
    def f(layer):
        traces.append(1)
        iv = interpjax.Add("resid_pre", layer=layer, vector=jnp.ones(cfg.d_model), coeff=1.0)
        return interpjax.core.model.run(cfg, params, jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32), None,
                                    (iv,), (), ())[0]

    outs = [f(jnp.int32(l)) for l in range(cfg.n_layers)]
    assert len(traces) == 1
    assert not np.allclose(outs[0], outs[1])


def test_hub_id_resolves_offline_from_hf_cache(tiny_checkpoint, tmp_path, monkeypatch):
    """A hub id found in the Hugging Face cache loads with no network (HF_HUB_OFFLINE=1)."""
    folder, _ = tiny_checkpoint("gpt2")
    cache = tmp_path / "hub"
    snap = cache / "models--someone--tiny-gpt2" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (cache / "models--someone--tiny-gpt2" / "refs").mkdir()
    (cache / "models--someone--tiny-gpt2" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    model = interpjax.load("someone/tiny-gpt2")
    t = tokens(seed=6)
    assert np.array_equal(np.asarray(model(t)), np.asarray(interpjax.load(folder)(t)))
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a hub id"):
        interpjax.load("someone/not-cached")


@pytest.mark.parametrize("name, cfg", [
    ("gpt2-xl", dict(vocab_size=50257, d_model=1600, n_layers=48, n_heads=25, d_head=64, d_mlp=6400, n_ctx=1024,
                     positions="learned", qkv_bias=True, o_bias=True, mlp_bias=True, tie_embeddings=True)),
    ("llama-7b", dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_head=128, d_mlp=11008, n_ctx=4096,
                      positions="rotary", rotary_dim=128, norm="rmsnorm", norm_bias=False, mlp="gated",
                      activation="silu")),
])
def test_full_size_configs_trace_abstractly(name, cfg):
    """Full-size shapes trace end to end with jax.eval_shape, allocating nothing."""
    import jax

    from interpjax.io.convert import expected_shapes

    cfg = interpjax.Config(**cfg)
    params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, np.float32), expected_shapes(cfg),
                          is_leaf=lambda x: isinstance(x, tuple))
    toks = jax.ShapeDtypeStruct((2, 16), np.int32)
    mask = jax.ShapeDtypeStruct((2, 16), np.int32)
    out = jax.eval_shape(lambda p, t, m: interpjax.core.model.run(cfg, p, t, m, None, (), ("resid_pre",), (0, 5))[0],
                         params, toks, mask)
    assert out.shape == (2, 16, cfg.vocab_size)
