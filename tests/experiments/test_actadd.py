"""experiments/actadd in-process on SmolLM2: the quick run shows the topic vector's selectivity
against its controls, the same predicate fails when the topic vector is replaced by a random one,
and the README matches results/full."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import load_experiment, needs_real_lm

from interpjax import evidence

EXP = Path(__file__).resolve().parents[2] / "experiments" / "actadd"
LM = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def actadd():
    return load_experiment("actadd")


@needs_real_lm(LM)
@pytest.mark.slow
def test_quick_run_is_selective_and_writes_only_quick(actadd, real_model, monkeypatch, tmp_path):
    import interpjax

    model = real_model(LM)
    monkeypatch.setattr(interpjax, "load", lambda name: model)  # the session's model, not a reload
    res = actadd.main(["--quick", "--out", str(tmp_path)])
    assert actadd.effect_holds(res)
    assert res["prefix_check"] < 1e-3  # layer 0, coefficient 1 is the prompt prefix exactly
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quick"]
    assert {p.name for p in (tmp_path / "quick").iterdir()} >= {"results.json", "sweep.md", "heldout.md",
                                                              "generation.md", "perplexity.png"}


@needs_real_lm(LM)
@pytest.mark.slow
def test_random_vector_in_place_of_the_topic_vector_fails_the_predicate(actadd, real_model, monkeypatch):
    real_build = actadd.build_vectors

    def random_as_topic(model, layers, **kw):
        v = real_build(model, layers, **kw)
        rng = np.random.default_rng(1)
        g = rng.standard_normal(v["wedding"].shape).astype(np.float32)
        g *= np.linalg.norm(v["wedding"], axis=-1, keepdims=True) / np.linalg.norm(g, axis=-1, keepdims=True)
        return {**v, "wedding": g}  # the method's core (the ActAdd difference) replaced by its control

    monkeypatch.setattr(actadd, "build_vectors", random_as_topic)
    model = real_model(LM)
    _, ppl = actadd.perplexity_part(model, actadd.ON_TOPIC[:12], actadd.OFF_TOPIC[:12], [0], [1.0])
    assert not actadd.effect_holds({"heldout": ppl["heldout"]})


def test_topic_test_and_readme():
    texts = load_experiment("actadd", "texts")
    import re

    hit = lambda t: re.search(texts.TOPIC_PATTERN, t.lower()) is not None  # noqa: E731
    assert hit("The Bride wore white") and hit("they got married") and hit("his groom's speech")
    assert not hit("dog grooming is fun") and not hit("a vowel sound") and not hit("ships in port")
    assert len(texts.ON_TOPIC) >= 40 and len(texts.OFF_TOPIC) >= 40
    assert not any(hit(s) for s in texts.OFF_TOPIC + texts.NEUTRAL_PROMPTS)
    readme = EXP / "README.md"
    assert evidence.readme_problems(readme) == []
    assert evidence.readme_blocks_match(readme, EXP / "results" / "full") == []
