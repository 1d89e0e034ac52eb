"""KV-cache generation: parity with transformers' generate (every tiny family + the real checkpoint),
left padding, stop tokens, sampling, per-row interventions, the position mapping, compile-once."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import interpjax
from interpjax import Add, AttentionKnockout
from interpjax.generate import _generate, generate, greedy, stack_rows
from interpjax.testing import TINY

from conftest import STORIES, needs_stories


def _prompts(vocab: int):
    """Two left-padded prompts of lengths 7 and 4."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, vocab, size=(2, 7)).astype(np.int32)
    mask = np.ones((2, 7), np.int32)
    mask[1, :3] = 0
    tokens[1, :3] = 0
    return tokens, mask


def _hf_generate(hf, tokens, mask, n, **kw):
    with torch.no_grad():
        return hf.generate(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask),
                           max_new_tokens=n, do_sample=False, **kw).numpy()


@pytest.mark.parametrize("name", sorted(TINY))
def test_greedy_matches_transformers_with_padding_and_stop(tiny_model, name):
    model, hf = tiny_model(name)
    tokens, mask = _prompts(model.cfg.vocab_size)
    free = _hf_generate(hf, tokens, mask, 10, eos_token_id=None, pad_token_id=0)
    stop = int(free[0, 7 + 3])  # a token row 0 emits as its 4th new token: the stop test is real
    ref = _hf_generate(hf, tokens, mask, 10, eos_token_id=stop, pad_token_id=5)
    out = generate(model.cfg, model.params, tokens, 10, attention_mask=mask, stop_tokens=[stop], pad_token_id=5)
    if ref.shape[1] < out.tokens.shape[1]:  # transformers stops early when every row has finished
        ref = np.concatenate([ref, np.full((2, out.tokens.shape[1] - ref.shape[1]), 5)], 1)
    assert out.tokens.tolist() == ref.tolist()
    first_stop = 7 + list(out.tokens[0, 7:]).index(stop)
    assert (out.tokens[0, first_stop + 1:] == 5).all() and out.mask[0, first_stop + 1:].sum() == 0
    assert out.n_new[0] == first_stop - 7 + 1


def test_padding_does_not_change_a_row(tiny_model):
    model, _ = tiny_model("llama")
    tokens, mask = _prompts(model.cfg.vocab_size)
    batched = greedy(model.cfg, model.params, tokens, 12, attention_mask=mask)
    alone = greedy(model.cfg, model.params, tokens[1:, 3:], 12)
    assert batched[1, 3:].tolist() == alone[0].tolist()


def test_interventions_map_to_columns_of_the_output(tiny_model):
    """Generation with an intervention equals forward on the returned sequence with the same one:
    positions (and sequence-shaped vectors) index columns of the output, generated ones included."""
    model, _ = tiny_model("gpt_neox")
    cfg = model.cfg
    tokens, mask = _prompts(cfg.vocab_size)
    n, total = 9, 7 + 9
    rng = np.random.default_rng(1)
    vec_TD = jnp.asarray(rng.normal(size=(total, cfg.d_model)).astype(np.float32))
    ivs = (Add("resid_pre", layer=1, vector=vec_TD, coeff=3.0, positions=jnp.array([2, 6, 9, -2])),
           Add("mlp_out", layer=jnp.array([0, 2]), vector=vec_TD[0] * 2.0))
    out = generate(cfg, model.params, tokens, n, ivs, attention_mask=mask)
    plain = greedy(cfg, model.params, tokens, n, attention_mask=mask)
    assert out.tokens.tolist() != plain.tolist()  # the intervention matters
    logits = np.asarray(model(out.tokens, attention_mask=out.mask, interventions=ivs))
    assert (logits[:, 6:-1].argmax(-1) == out.tokens[:, 7:]).all()


def test_zero_coefficient_steer_is_plain_generation(tiny_model):
    model, _ = tiny_model("qwen2")
    tokens, mask = _prompts(model.cfg.vocab_size)
    v = jnp.ones(model.cfg.d_model)
    plain = greedy(model.cfg, model.params, tokens, 10, attention_mask=mask)
    zero = greedy(model.cfg, model.params, tokens, 10, Add("resid_pre", layer=1, vector=v, coeff=0.0),
                  attention_mask=mask)
    rows = stack_rows([Add("resid_pre", layer=1, vector=v, coeff=0.0)] * 2)
    zero_rows = greedy(model.cfg, model.params, tokens, 10, rows, attention_mask=mask, per_row=True)
    assert zero.tolist() == plain.tolist() == zero_rows.tolist()


def test_per_row_interventions_equal_single_row_runs(tiny_model):
    model, _ = tiny_model("llama")
    cfg = model.cfg
    base, base_mask = _prompts(cfg.vocab_size)
    rng = np.random.default_rng(2)
    v = jnp.asarray(rng.normal(size=cfg.d_model).astype(np.float32))
    w = jnp.asarray(rng.normal(size=cfg.d_mlp).astype(np.float32))
    coeffs, layers = [0.0, 2.0, -3.0, 5.0], [0, 1, 2, 1]
    positions = [[1, 8], [3, 4], [6, 10], [0, 2]]
    rows = [[Add("resid_pre", layer=l, vector=v, coeff=c), Add("mlp_post", layer=0, vector=w * c, positions=jnp.array(p))]
            for c, l, p in zip(coeffs, layers, positions)]
    tokens, mask = np.repeat(base, 2, 0), np.repeat(base_mask, 2, 0)
    batched = generate(cfg, model.params, tokens, 10, stack_rows(rows), attention_mask=mask, per_row=True).tokens
    for b in range(4):
        alone = greedy(cfg, model.params, tokens[b:b + 1], 10, rows[b], attention_mask=mask[b:b + 1])
        assert batched[b].tolist() == alone[0].tolist()
    assert len({tuple(r) for r in batched.tolist()}) == 4  # the rows really differ


def test_sampling_controls(tiny_model):
    model, _ = tiny_model("gpt2")
    cfg = model.cfg
    tokens, mask = _prompts(cfg.vocab_size)
    args = dict(attention_mask=mask)
    plain = greedy(cfg, model.params, tokens, 12, **args)
    assert generate(cfg, model.params, tokens, 12, temperature=1.0, top_k=1, seed=9, **args).tokens.tolist() == plain.tolist()
    assert generate(cfg, model.params, tokens, 12, temperature=1.0, top_p=1e-6, seed=9, **args).tokens.tolist() == plain.tolist()
    a = generate(cfg, model.params, tokens, 12, temperature=1.0, seed=1, **args).tokens
    b = generate(cfg, model.params, tokens, 12, temperature=1.0, seed=1, **args).tokens
    c = generate(cfg, model.params, tokens, 12, temperature=1.0, seed=2, **args).tokens
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    k3 = generate(cfg, model.params, tokens, 12, temperature=2.0, top_k=3, seed=4, **args).tokens
    logits = np.asarray(model(k3, attention_mask=np.concatenate([mask, np.ones((2, 12), np.int32)], 1)))
    top3 = np.argsort(-logits[:, 6:-1], axis=-1)[..., :3]
    assert (top3 == k3[:, 7:, None]).any(-1).all()


def test_compiled_once_per_shape(tiny_model):
    model, _ = tiny_model("llama_mha")
    cfg = model.cfg
    tokens, mask = _prompts(cfg.vocab_size)
    v = jnp.ones(cfg.d_model)
    greedy(cfg, model.params, tokens, 6, Add("resid_pre", layer=0, vector=v, coeff=1.0), attention_mask=mask)
    before = _generate._cache_size()
    for c, l in [(2.0, 1), (-1.0, 0)]:  # new numbers, new prompt tokens, other stop tokens: no recompile
        greedy(cfg, model.params, (tokens + 1) * mask, 6, Add("resid_pre", layer=l, vector=v * c, coeff=c),
               attention_mask=mask, stop_tokens=[l + 3])
    assert _generate._cache_size() == before
    for t, k, p in [(0.7, 0, 1.0), (1.3, 5, 0.9)]:  # sampling: one more program, whatever the numbers
        generate(cfg, model.params, tokens, 6, Add("resid_pre", layer=0, vector=v, coeff=1.0), attention_mask=mask,
                 temperature=t, top_k=k, top_p=p)
    assert _generate._cache_size() == before + 1


def test_generation_errors(tiny_model):
    model, _ = tiny_model("llama")
    cfg, p = model.cfg, model.params
    tokens, mask = _prompts(cfg.vocab_size)
    with pytest.raises(ValueError, match="left padding"):
        generate(cfg, p, tokens, 4, attention_mask=mask[:, ::-1])
    with pytest.raises(ValueError, match="attention-score sites are not supported"):
        generate(cfg, p, tokens, 4, AttentionKnockout(layer=0), attention_mask=mask)
    with pytest.raises(ValueError, match=r"leading row axis of size B=2"):
        generate(cfg, p, tokens, 4, Add("resid_pre", layer=jnp.array([0, 1]), vector=jnp.ones((2, cfg.d_model))),
                 attention_mask=mask, per_row=True)
    with pytest.raises(ValueError, match="row 1 differs in structure"):
        stack_rows([Add("resid_pre", layer=0, vector=jnp.ones(cfg.d_model)),
                    Add("resid_pre", layer=0, vector=jnp.ones(cfg.d_model), positions=jnp.array([1]))])
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        generate(cfg, p, tokens, 4, temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="top_k must be in 0..101"):
        generate(cfg, p, tokens, 4, temperature=1.0, top_k=500)
    with pytest.raises(ValueError, match=r"stop_tokens must lie in the vocabulary 0..100; got \[101\]"):
        generate(cfg, p, tokens, 4, stop_tokens=[101])
    for stops, match in (([3.7], r"stop_tokens must be integer token ids, got dtype float64"),
                         (np.array([2**64 - 1], np.uint64), r"stop_tokens must lie in the vocabulary 0..100; got \[18446744073709551615\]")):
        with pytest.raises(ValueError, match=match):  # used to be truncated to 3 / wrapped to -1
            generate(cfg, p, tokens, 4, stop_tokens=stops)
    with pytest.raises(ValueError, match=r"pad_token_id must be integer token ids, got dtype float64"):
        generate(cfg, p, tokens, 4, stop_tokens=[3], pad_token_id=2.5)
    with pytest.raises(ValueError, match=r"positions \[20\] out of range"):  # validated at the full length 7 + 4
        generate(cfg, p, tokens, 4, Add("resid_pre", layer=0, vector=jnp.ones(cfg.d_model), positions=jnp.array([20])))
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1"):
        generate(cfg, p, tokens, 0)


@needs_stories
def test_real_checkpoint_batched_greedy_matches_transformers():
    from transformers import AutoModelForCausalLM

    model = interpjax.load(STORIES)
    hf = AutoModelForCausalLM.from_pretrained(str(STORIES)).eval()
    tokens, mask = model.to_tokens(["Once upon a time, there was a little girl named", "The cat sat on the",
                                    "Tom had a big red"])
    ref = _hf_generate(hf, tokens, mask, 40, pad_token_id=0, eos_token_id=None)
    out = greedy(model.cfg, model.params, tokens, 40, attention_mask=mask)
    assert out.tolist() == ref.tolist()
    assert "Lily. She loved to play outside in the park" in model.to_string(out[0])


@needs_stories
def test_model_generate_takes_texts():
    model = interpjax.load(STORIES)
    out = model.generate(["Once upon a time, there was a little girl named", "The cat"], 20, stop_tokens=[2])
    tokens, mask = model.to_tokens(["Once upon a time, there was a little girl named", "The cat"])
    assert out.tokens[:, :tokens.shape[1]].tolist() == tokens.tolist()
    assert out.tokens.tolist() == greedy(model.cfg, model.params, tokens, 20, attention_mask=mask, stop_tokens=[2]).tolist()


def test_sampling_numbers_are_refused_not_rounded_before_compute(tiny_model, monkeypatch):
    """top_k=2.7 must not become 2, and a nan temperature must not emit token 0: both are
    ValueErrors naming the value, raised before the decoder is called."""
    import interpjax.generate as G

    model, _ = tiny_model("llama")
    cfg, p = model.cfg, model.params
    tokens, mask = _prompts(cfg.vocab_size)
    calls = []
    monkeypatch.setattr(G, "_generate", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError, match=r"top_k must be an integer in 0..101 \(0 = off\), got 2.7"):
        generate(cfg, p, tokens, 4, attention_mask=mask, temperature=1.0, top_k=2.7)
    with pytest.raises(ValueError, match=r"top_k must be an integer .* got True"):
        generate(cfg, p, tokens, 4, attention_mask=mask, temperature=1.0, top_k=True)
    for bad in (float("nan"), float("inf"), -0.5):
        with pytest.raises(ValueError, match=rf"temperature must be a finite real number >= 0 .* got {bad}"):
            generate(cfg, p, tokens, 4, attention_mask=mask, temperature=bad)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\] \(1 = off\), got nan"):
        generate(cfg, p, tokens, 4, attention_mask=mask, temperature=1.0, top_p=float("nan"))
    assert not calls
