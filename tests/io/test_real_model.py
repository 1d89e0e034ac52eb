"""The real pretrained llama2.c stories260K checkpoint: logits parity and greedy continuation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interpjax
from interpjax.generate import greedy

from conftest import STORIES, needs_stories

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
