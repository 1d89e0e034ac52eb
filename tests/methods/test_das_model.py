"""Boundless DAS on a pretrained LM (experiments/das/run.py --model): the text prompt builder
(template, token-layout filter and its counts, answer tokens), its errors, and an end-to-end run
on the real stories260k checkpoint."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import load_experiment, STORIES, needs_stories
from interpjax.core.handle import Model

REPO = Path(__file__).resolve().parents[2]
DAS = REPO / "experiments" / "das"
sys.path.insert(0, str(DAS))
import price  # noqa: E402
import price_text as pt  # noqa: E402


def load_run():
    return load_experiment("das")


class FakeTokenizer:
    """A word-level tokenizer with character offsets whose split of amounts depends on the digits:
    a repeated digit pair ("55") is one token, so prompts have different token layouts. With
    ``space_token`` a space before a word is a token of its own (answers then share a first token);
    words in ``unk`` all map to one unknown id."""

    PATTERN = re.compile(r"(\d)\1|\d| ?[A-Za-z]+|\s|[^\sA-Za-z\d]")
    PATTERN_SPACE = re.compile(r"(\d)\1|\d|[A-Za-z]+|\s|[^\sA-Za-z\d]")
    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __init__(self, space_token: bool = False, unk=()):
        self.pattern = self.PATTERN_SPACE if space_token else self.PATTERN
        self.unk = set(unk)
        self.vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}

    def _id(self, piece):
        if piece.strip() in self.unk:
            return 3
        return self.vocab.setdefault(piece, len(self.vocab))

    def _one(self, text, add_special_tokens):
        spans = [(m.start(), m.end()) for m in self.pattern.finditer(text)]
        ids = [self._id(text[a:b]) for a, b in spans]
        if add_special_tokens:
            ids, spans = [self.bos_token_id] + ids, [(0, 0)] + spans
        return ids, spans

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
        single = isinstance(text, str)
        out = [self._one(t, add_special_tokens) for t in ([text] if single else text)]
        enc = {"input_ids": out[0][0] if single else [o[0] for o in out]}
        if return_offsets_mapping:
            enc["offset_mapping"] = out[0][1] if single else [o[1] for o in out]
        return enc

    def decode(self, ids):
        inv = {v: k for k, v in self.vocab.items()}
        return "".join(inv[i] for i in ids)


def fake_model(**kw):
    return Model(cfg=None, params=None, tokenizer=FakeTokenizer(**kw), name="fake")


def test_prompt_template_amounts_and_character_ends():
    text = pt.prompt_text(125, 480, 7)
    assert text == ("Please say yes only if it costs between 1.25 and 4.80 dollars, otherwise no.\n"
                    "Input: 0.07 dollars\nAnswer:")
    y_end, z_end = pt.amount_ends(125, 480, 7)
    assert text[:y_end + 1].endswith("and 4.80") and text[:z_end + 1].endswith("Input: 0.07")
    assert (pt.amount(0), pt.amount(999)) == ("0.00", "9.99")
    with pytest.raises(ValueError, match="out of range"):
        pt.amount(1000)


def test_layout_filter_keeps_only_the_most_common_layout_and_counts_the_rest():
    model = fake_model()
    ps = pt.build_prompts(model, np.random.default_rng(0), 400, 50)
    tok = model.tokenizer
    # an independent count of the layouts of every candidate prompt
    rng = np.random.default_rng(0)
    raw = price.sample_inputs(rng, 400, pt.LEVELS)
    assert ps.n_candidates == len({(a, b, c) for a, b, c in zip(raw["x"], raw["y"], raw["z"])})
    assert ps.n_kept + ps.n_dropped == ps.n_candidates and ps.n_dropped > 0 and ps.n_kept == ps.layout_counts[0][0]
    assert sum(c for c, _ in ps.layout_counts) == ps.n_candidates and len(ps.layout_counts) > 1
    assert ps.summary()["dropped"] == ps.n_dropped and ps.tokens.shape == (ps.n_kept, ps.positions["answer"] + 1)
    assert ps.shared_answer == []
    for r in range(ps.n_kept):
        x, y, z = (int(ps.inputs[k][r]) for k in "xyz")
        assert ps.inputs["row"][r] == r
        ids = tok(pt.prompt_text(x, y, z))["input_ids"]
        np.testing.assert_array_equal(ps.tokens[r], ids)  # no padding, nothing truncated
        assert tok.decode([ids[ps.positions["Y"]]]).endswith(pt.amount(y)[-1])
        assert tok.decode(ids[:ps.positions["Y"] + 1]).endswith(pt.amount(y))
        assert tok.decode(ids[:ps.positions["Z"] + 1]).endswith("Input: " + pt.amount(z))
    # answers: " No" and " Yes" are single, different tokens after the prompt
    np.testing.assert_array_equal(ps.label_tokens, [tok.vocab[" No"], tok.vocab[" Yes"]])


def test_answers_sharing_a_first_token_are_read_after_it():
    model = fake_model(space_token=True)
    ps = pt.build_prompts(model, np.random.default_rng(1), 100, 10)
    tok = model.tokenizer
    assert ps.shared_answer == [tok.vocab[" "]]
    np.testing.assert_array_equal(ps.label_tokens, [tok.vocab["No"], tok.vocab["Yes"]])
    assert ps.tokens[0, -1] == tok.vocab[" "] and ps.positions["answer"] == ps.tokens.shape[1] - 1


def test_clear_errors_same_answer_token_and_too_few_prompts():
    with pytest.raises(ValueError, match="same first token"):
        pt.build_prompts(fake_model(unk=("Yes", "No")), np.random.default_rng(0), 50, 10)
    with pytest.raises(ValueError, match="share the most common token layout.*lower --n-train"):
        pt.build_prompts(fake_model(), np.random.default_rng(0), 400, 390)
    with pytest.raises(ValueError, match="n_needed <= n_candidates"):
        pt.build_prompts(fake_model(), np.random.default_rng(0), 10, 20)
    with pytest.raises(ValueError, match="no tokenizer"):
        pt.build_prompts(Model(cfg=None, params=None, tokenizer=None), np.random.default_rng(0), 10, 5)
    run = load_run()
    with pytest.raises(ValueError, match="distinct layers in 0..4"):
        run.parse_layers("0,5", 5)
    assert run.parse_layers(None, 3) == [0, 1, 2] and run.parse_layers("2,0", 3) == [0, 2]


@needs_stories
@pytest.mark.slow
def test_run_model_quick_end_to_end(tmp_path, capsys):
    """In process (no second interpreter, no second compile of the library): --quick with fewer
    layers, pairs and steps than its defaults (the options are part of the test)."""
    run = load_run()
    cms = ["left_boundary", "left_right_boundary"]  # one and two intervened variables (the quick run of the
    # trained decoder covers all four causal models)
    rec = run.main(["--model", str(STORIES), "--quick", "--out", str(tmp_path), "--layers", "0,4", "--n-train", "32",
                    "--n-test", "32", "--das-steps", "5", "--causal-models", ",".join(cms)])
    stdout = capsys.readouterr().out
    folder = tmp_path / f"model-{STORIES.name}" / "quick"
    assert rec.out == folder
    res = json.loads((folder / "results.json").read_text())
    numbers = json.dumps({k: v for k, v in res.items() if k != "meta"})  # meta.command is the command as given
    assert str(STORIES.parent) not in numbers and str(tmp_path) not in numbers  # no machine path recorded
    assert res["meta"]["model"] == STORIES.name and res["meta"]["quick"] and (folder / "iia.png").stat().st_size > 0
    assert res["positions"] == ["Y", "Z", "answer"] and res["layers"] == [0, 4]
    p = res["prompts"]
    assert p["kept"] + p["dropped"] == p["candidates"] and p["kept"] >= 32 + 32
    assert p["train_prompts"] + p["test_prompts"] == p["kept"]
    assert res["answers"]["No"] != res["answers"]["Yes"]
    assert f"kept {p['kept']} of {p['candidates']}" in stdout
    acc = res["task"]["accuracy"]
    assert 0.0 <= acc["lo"] <= acc["value"] <= acc["hi"] <= 1.0 and res["task"]["n"] == p["test_prompts"]
    assert ("WARNING" in stdout) == (not res["task"]["above_chance"])
    idx = res["position_index"]
    assert idx["Y"] < idx["Z"] < idx["answer"] == p["layout"]["length"] - 1
    assert list(res["summary"]) == cms
    for name in cms:
        for cond in ("das", "whole", "random"):
            a = np.asarray(res["per_seed"][0][name]["iia"][cond])
            assert a.shape == (2, 3) and ((0 <= a) & (a <= 1)).all()
        assert 0.0 <= res["copy_source_answer"][name]["value"] <= 1.0
        assert set(res["summary"][name]) == {f"L{l}/{q}" for l in (0, 4) for q in ("Y", "Z", "answer")}
    assert res["max_abs_gap_to_library_iia"] <= 2 / 32
    for key in ("settings", "template", "no_op_iia", "best_cell_by_train_iia", "claims"):
        assert key in res
