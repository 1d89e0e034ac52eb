"""Word ICL tasks for pretrained LMs and the task-vector experiment's ``--model`` path."""

from __future__ import annotations


import numpy as np
import pytest
from conftest import STORIES, load_experiment, needs_stories

from interpjax.worlds import word_tasks


def test_tasks_are_well_formed():
    tasks = word_tasks.make_tasks()
    assert [t.name for t in tasks] == list(word_tasks.TASK_NAMES)
    for t in tasks:
        assert len(t.pairs) >= 30 and t.kind in ("extractive", "abstractive")
        assert len({x for x, _ in t.pairs}) == len(t.pairs)  # one answer per input
    by = {t.name: t for t in tasks}
    assert by["copy"].kind == "extractive" and all(x == y for x, y in by["copy"].pairs)
    assert ("three", "four") in by["next_number"].pairs and ("twenty-nine", "thirty") in by["next_number"].pairs
    assert ("hot", "cold") in by["antonym"].pairs and ("go", "went") in by["past_tense"].pairs
    assert all(y == x.upper() != x for x, y in by["uppercase"].pairs)
    assert ("France", "Paris") in by["country_capital"].pairs


def test_bad_task_names_and_too_few_examples():
    with pytest.raises(ValueError, match="valid: antonym"):
        word_tasks.make_tasks(["antonyms"])
    with pytest.raises(ValueError, match="twice"):
        word_tasks.make_tasks(["copy", "copy"])
    tiny = word_tasks.WordTask("tiny", "abstractive", (("a", "b"), ("c", "d"), ("e", "f")))
    word_tasks.check_counts(tiny, 2, 3)  # 2 demos + 1 query from 3 pairs, 3 distinct queries
    with pytest.raises(ValueError, match="too few"):
        word_tasks.check_counts(tiny, 3, 1)
    with pytest.raises(ValueError, match="too few"):
        word_tasks.check_counts(tiny, 1, 4)
    with pytest.raises(ValueError, match="too few"):  # raised before any tokenization
        word_tasks.build_prompts(None, tiny, 5, 2, np.random.default_rng(0))


def test_prompt_text_template():
    assert word_tasks.prompt_text([("hot", "cold"), ("big", "small")], "fast") == "hot -> cold\nbig -> small\nfast ->"
    assert word_tasks.prompt_text([], "fast") == "fast ->"


@needs_stories
def test_build_prompts_left_padded_first_token_answers():
    import interpjax

    model = interpjax.load(STORIES)
    tok = model.tokenizer
    task = word_tasks.make_tasks(["antonym"])[0]
    with pytest.raises(ValueError, match="too few"):
        word_tasks.build_prompts(model, task, len(task.pairs), 2, np.random.default_rng(0))
    tokens, mask, answers, q = word_tasks.build_prompts(model, task, 3, 12, np.random.default_rng(0))
    assert tokens.shape == mask.shape and tokens.shape[0] == 12 and answers.shape == (12,)
    assert len(set(q.tolist())) == 12  # distinct queries
    assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()  # left-padded, lengths differ
    for row, m, a, qi in zip(tokens, mask, answers, q):
        assert (np.diff(m) >= 0).all()  # padding only on the left
        ids = row[m == 1].tolist()
        text = tok.decode(ids, skip_special_tokens=True)
        x, y = task.pairs[qi]
        assert text.endswith(f"{x} ->") and text.count("\n") == 3
        demos = [line.split(" -> ") for line in text.split("\n")[:-1]]
        assert all(tuple(d) in task.pairs and d[0] != x for d in demos)
        # the answer is the first token of " y" as it follows the prompt
        full = tok(text + " " + y, add_special_tokens=False)["input_ids"]
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        assert full[:len(prompt)] == prompt and a == full[len(prompt)]
        assert tok.decode(full[len(prompt):]).strip() == y
    zs, zmask, zans, zq = word_tasks.build_prompts(model, task, 0, 5, np.random.default_rng(1))
    for row, m, qi in zip(zs, zmask, zq):
        assert tok.decode(row[m == 1].tolist(), skip_special_tokens=True) == f"{task.pairs[qi][0]} ->"


class _PairTokenizer:
    """A toy tokenizer: fixed two-character chunks, so token boundaries can straddle prompt | answer."""

    def __init__(self):
        self.vocab = {}

    def __call__(self, text, add_special_tokens=False):
        chunks = [text[i:i + 2] for i in range(0, len(text), 2)]
        return {"input_ids": [self.vocab.setdefault(c, len(self.vocab)) for c in chunks]}

    def decode(self, ids):
        inv = {v: k for k, v in self.vocab.items()}
        return "".join(inv[i] for i in ids)


def test_answer_token_in_context_and_across_a_merged_boundary():
    tok = _PairTokenizer()
    # "hot ->" = "ho" "t " "->", then " c" "ol" "d": the prompt's tokens are a prefix
    assert tok.decode([word_tasks.answer_token(tok, "hot ->", "cold")]) == " c"
    # "ab ->" = "ab" " -" ">", but "ab -> cold" = ... "> " "co" "ld": falls back to " cold" alone
    assert tok.decode([word_tasks.answer_token(tok, "ab ->", "cold")]) == " c"
    # whitespace-only leading tokens of the answer alone are skipped
    assert tok.decode([word_tasks.answer_token(tok, "ab ->", " cold")]) == "co"


def test_model_label_never_records_a_path(tmp_path):
    run = load_experiment("task_vectors")
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert run.model_label(str(folder)) == "my-model" and run.model_label(str(folder) + "/") == "my-model"
    assert run.model_label("gpt2") == "gpt2"
    assert run.model_label("openai-community/gpt2") == "openai-community--gpt2"
