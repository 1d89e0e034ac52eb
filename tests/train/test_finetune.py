"""Fine-tuning a loaded Model on prompt -> answer pairs (interpjax.train.finetune): answer-only loss
masks, both optimizers learn, a layer / leaf subset leaves the rest bit-identical, the caller's model
survives, resume is exact, bad inputs are refused before compute, and the answer metrics."""

from __future__ import annotations

import string

import jax
import numpy as np
import pytest

from interpjax.train import (TrainConfig, answer_logprob, document_token_id, encode_pairs, exact_match, finetune,
                             greedy_answers, optimizer_state_bytes, pair_batches, select_params, token_f1)

ALPHABET = string.ascii_lowercase + string.digits + " :?.\n"


class CharTokenizer:
    """One id per character (ids 3..); 0 pad, 1 bos, 2 eos; ``special`` adds whole-string tokens."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __init__(self, special: dict | None = None):
        self.special = dict(special or {})

    def __call__(self, text, add_special_tokens=False):
        if text in self.special:
            return {"input_ids": [self.special[text]]}
        ids = [3 + ALPHABET.index(c) for c in text]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}

    def decode(self, ids):
        return "".join(ALPHABET[i - 3] for i in ids if 3 <= i < 3 + len(ALPHABET))


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model("llama")[0].replace(tokenizer=CharTokenizer())


def pairs(n=12, seed=0):
    """Prompts 'q<k>:' with a fixed random two-letter answer each (to be memorised)."""
    rng = np.random.default_rng(seed)
    prompts = [f"q{k}:" for k in range(n)]
    answers = [" " + "".join(rng.choice(list("abcdefgh"), 2)) for _ in range(n)]
    return prompts, answers


def host(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def test_encode_pairs_masks_exactly_the_answer_tokens():
    tok = CharTokenizer()
    d = encode_pairs(tok, ["ab:", "c:"], [" x", " y"])
    c = lambda s: [3 + ALPHABET.index(ch) for ch in s]  # noqa: E731
    assert d["tokens"].dtype == np.int32 and d["loss_mask"].dtype == np.float32
    np.testing.assert_array_equal(d["tokens"], [[1] + c("ab:") + c(" x") + [2],
                                                [1] + c("c:") + c(" y") + [2, 0]])
    np.testing.assert_array_equal(d["loss_mask"], [[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 0]])
    d = encode_pairs(tok, ["ab:"], [" x"], bos=False, eos=False, max_len=8)
    np.testing.assert_array_equal(d["tokens"], [c("ab:") + c(" x") + [0, 0, 0]])
    np.testing.assert_array_equal(d["loss_mask"], [[0, 0, 0, 1, 1, 0, 0, 0]])


def test_the_document_token_is_endoftext_where_the_vocabulary_has_it():
    assert document_token_id(CharTokenizer()) == 1  # bos_token_id otherwise
    tok = CharTokenizer({"<|endoftext|>": 0})
    assert document_token_id(tok) == 0
    assert encode_pairs(tok, ["a"], ["b"], eos=False)["tokens"][0, 0] == 0


@pytest.mark.parametrize("optimizer,lr", [("adafactor", 1e-2), ("adamw", 3e-3)])
def test_finetune_reduces_the_answer_loss(model, optimizer, lr):
    prompts, answers = pairs()
    data = encode_pairs(model.tokenizer, prompts, answers)
    before = answer_logprob(model, prompts, answers, batch_size=8)
    tc = TrainConfig(optimizer=optimizer, lr=lr, weight_decay=0.0, total_steps=60)
    tuned, hist = finetune(model, data, tc, steps=60, batch_size=6)
    after = answer_logprob(tuned, prompts, answers, batch_size=8)
    assert [h["step"] for h in hist] == list(range(1, 61)) and {"loss", "acc", "grad_norm"} <= set(hist[0])
    assert np.mean([h["loss"] for h in hist[-10:]]) < 0.5 * hist[0]["loss"]
    assert after.mean() > before.mean() + 2.0, (before.mean(), after.mean())
    assert tuned.cfg == model.cfg and tuned.tokenizer is model.tokenizer


def test_a_subset_finetune_freezes_every_other_array(model):
    prompts, answers = pairs()
    data = encode_pairs(model.tokenizer, prompts, answers)
    tc = TrainConfig(optimizer="adamw", lr=3e-3, weight_decay=0.0)
    old = host(model.params)
    tuned, _ = finetune(model, data, tc, steps=5, batch_size=4, trainable=[-1])  # the last of 3 layers
    new = host(tuned.params)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(old), jax.tree.leaves(new)):
        key = jax.tree_util.keystr(path)
        if key.startswith("['layers']"):
            np.testing.assert_array_equal(a[:2], b[:2], err_msg=key)
            assert not np.array_equal(a[2], b[2]), key
        else:
            np.testing.assert_array_equal(a, b, err_msg=key)
    tuned, _ = finetune(model, data, tc, steps=5, batch_size=4, trainable=lambda p: "['mlp']" in p)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(old), jax.tree.leaves(host(tuned.params))):
        key = jax.tree_util.keystr(path)
        assert np.array_equal(a, b) != ("['mlp']" in key), key
    # optimizer state covers only the subset
    sub, _ = select_params(model.params, [2]).split(model.params)
    full, _ = select_params(model.params, "all").split(model.params)
    assert optimizer_state_bytes(tc, sub) < optimizer_state_bytes(tc, full) / 3


def test_the_callers_model_is_unchanged_and_alive(model):
    prompts, answers = pairs()
    old = host(model.params)
    tc = TrainConfig(optimizer="adafactor", lr=1e-2, weight_decay=0.0)
    tuned, _ = finetune(model, encode_pairs(model.tokenizer, prompts, answers), tc, steps=3, batch_size=4)
    for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(host(model.params))):  # reading them: not donated
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(host(tuned.params))))


def test_batches_are_seeded_epochs_and_resume_is_exact(model, tmp_path):
    rows = pair_batches(10, 4, seed=3)
    seen = np.concatenate([rows(s) for s in range(5)])  # two epochs of 10
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    np.testing.assert_array_equal(rows(2), pair_batches(10, 4, seed=3)(2))
    assert not np.array_equal(seen, np.concatenate([pair_batches(10, 4, seed=4)(s) for s in range(5)]))
    prompts, answers = pairs()
    data = encode_pairs(model.tokenizer, prompts, answers)
    tc = TrainConfig(optimizer="adamw", lr=3e-3, weight_decay=0.0, ckpt_every=3)
    straight, _ = finetune(model, data, tc, steps=6, batch_size=4, trainable=[0])
    finetune(model, data, tc, steps=3, batch_size=4, trainable=[0], workdir=tmp_path / "run")
    resumed, hist = finetune(model, data, tc, steps=6, batch_size=4, trainable=[0], workdir=tmp_path / "run")
    assert [h["step"] for h in hist] == [4, 5, 6]
    for a, b in zip(jax.tree.leaves(host(straight.params)), jax.tree.leaves(host(resumed.params))):
        np.testing.assert_array_equal(a, b)


def test_greedy_answers_read_back_a_memorised_answer(model):
    prompts, answers = ["q1:", "q2:"], [" abc", " hh"]
    tc = TrainConfig(optimizer="adamw", lr=1e-2, weight_decay=0.0)
    tuned, _ = finetune(model, encode_pairs(model.tokenizer, prompts, answers), tc, steps=40, batch_size=2)
    assert greedy_answers(tuned, prompts, max_new_tokens=6, batch_size=4) == answers
    assert greedy_answers(model, prompts, max_new_tokens=6) != answers


def test_answer_metrics():
    np.testing.assert_array_equal(exact_match(["Paris.", " the Paris", "Lyon"], ["Paris", "Paris", "Paris"]),
                                  [1.0, 1.0, 0.0])
    np.testing.assert_allclose(token_f1(["New York City", "York", "", "x"], ["New York", "New York", "", "y"]),
                               [0.8, 2 / 3, 1.0, 0.0])
    with pytest.raises(ValueError, match="2 predictions but 1"):
        exact_match(["a", "b"], ["a"])


@pytest.mark.parametrize("call,match", [
    (lambda m, d, tc: encode_pairs(m.tokenizer, ["a", "b"], ["c"]), "2 prompts but 1 answers"),
    (lambda m, d, tc: encode_pairs(m.tokenizer, ["a"], [""]), "tokenizes to nothing"),
    (lambda m, d, tc: encode_pairs(m.tokenizer, ["abcdef"], [" x"], max_len=5), "longer than max_len=5"),
    (lambda m, d, tc: encode_pairs(m.tokenizer, "a", "b"), "list of strings"),
    (lambda m, d, tc: finetune(m, d, tc, steps=1, batch_size=2, trainable="some"), "trainable='some'"),
    (lambda m, d, tc: finetune(m, d, tc, steps=1, batch_size=2, trainable=[3]), r"in \[-3, 3\)"),
    (lambda m, d, tc: finetune(m, d, tc, steps=1, batch_size=2, trainable=[0, -3]), "repeat"),
    (lambda m, d, tc: finetune(m, d, tc, steps=1, batch_size=2, trainable=lambda p: False), "selects no leaf"),
    (lambda m, d, tc: finetune(m, d, tc, steps=1, batch_size=0), "batch_size must be"),
    (lambda m, d, tc: finetune(m, {"tokens": d["tokens"]}, tc, steps=1, batch_size=2), "encode_pairs returns"),
    (lambda m, d, tc: finetune(m, {**d, "loss_mask": 0 * d["loss_mask"]}, tc, steps=1, batch_size=2),
     "no loss-masked token"),
    (lambda m, d, tc: finetune(m.params, d, tc, steps=1, batch_size=2), "takes a Model"),
])
def test_bad_inputs_are_refused(model, call, match):
    data = encode_pairs(model.tokenizer, *pairs(4))
    with pytest.raises((ValueError, TypeError), match=match):
        call(model, data, TrainConfig(optimizer="adamw", weight_decay=0.0))


def test_data_parallel_finetune_over_4_devices_matches_one(tmp_path):
    """finetune(data_parallel=True) on 4 simulated host devices: the same per-step losses and
    final params as one device (a subset fine-tune, so the frozen Partial is replicated too). SGD,
    so the update is linear in the gradient: Adam's normalisation would blow the all-reduce's
    rounding up to ~lr on near-zero gradients."""
    import json
    import os
    import subprocess
    import sys

    code = """
import sys, json, jax, numpy as np
sys.path.insert(0, sys.argv[2])
from test_finetune import CharTokenizer, pairs
from interpjax.core.handle import Model
from interpjax.testing import tiny_config
from interpjax.train import TrainConfig, encode_pairs, finetune, init_params
cfg = tiny_config(vocab_size=48, d_model=32, n_layers=2, n_ctx=16)
m = Model(cfg, init_params(cfg, jax.random.PRNGKey(0)), CharTokenizer(), "tiny")
data = encode_pairs(m.tokenizer, *pairs())
tuned, hist = finetune(m, data, TrainConfig(optimizer="sgd", lr=0.1, weight_decay=0.0), steps=4, batch_size=8,
                       trainable=[1], data_parallel=len(jax.devices()) > 1)
np.save(sys.argv[1], np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tuned.params)]))
print(json.dumps({"n": len(jax.devices()), "loss": [h["loss"] for h in hist]}))
"""
    script = tmp_path / "dp.py"
    script.write_text(code)
    here = os.path.dirname(__file__)
    out = {}
    for n in (4, 1):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        r = subprocess.run([sys.executable, str(script), str(tmp_path / f"p{n}.npy"), here], env=env,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
        out[n] = json.loads(r.stdout.splitlines()[-1])
    assert out[4]["n"] == 4 and out[1]["n"] == 1
    np.testing.assert_allclose(out[4]["loss"], out[1]["loss"], rtol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "p4.npy"), np.load(tmp_path / "p1.npy"), rtol=1e-4, atol=1e-6)
