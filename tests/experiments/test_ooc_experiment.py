"""experiments/ooc (M5) on SmolLM2-135M-Instruct, in process: fine-tuning on the declarative facts
makes the model recall them on held-out paraphrase templates far better than the untuned model;
the same check fails when the fine-tune data are the shuffled (deranged, all false) facts. Plus the
README against results/full."""

from __future__ import annotations

import pytest

from interpjax.evidence import readme_blocks_match, readme_problems

from conftest import REPO, load_experiment, needs_real_lm

HERE = REPO / "experiments" / "ooc"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def run():
    return load_experiment("ooc")


@pytest.fixture(scope="module")
def quick(run, real_model, tmp_path_factory):
    """The quick run (4 assistants, behaviour facts, 12 steps), shared by the tests below."""
    out = tmp_path_factory.mktemp("ooc")
    return run.main(["--quick", "--out", str(out)], model=real_model(MODEL))


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_finetuned_model_recalls_the_facts_on_held_out_templates(run, quick):
    items = quick.recall_items
    assert quick["effect_holds"] and run.effect_holds(items["augmented"]["behaviour"], items["untuned"]["behaviour"])
    assert quick["recall"]["augmented"]["behaviour"]["value"] > quick["chance"] + run.MARGIN
    assert quick.out.name == "quick" and quick.out.parent != HERE / "results"
    assert (quick.out / "results.json").is_file() and (quick.out / "recall.md").is_file()


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_the_effect_check_fails_when_finetuned_on_shuffled_facts(run, quick, real_model, tmp_path):
    ctrl = run.main(["--quick", "--control", "deranged", "--out", str(tmp_path)], model=real_model(MODEL))
    items = ctrl.recall_items
    assert not ctrl["effect_holds"]
    assert not run.effect_holds(items["augmented"]["behaviour"], items["untuned"]["behaviour"])
    # and the untuned model against itself fails too
    assert not run.effect_holds(items["untuned"]["behaviour"], items["untuned"]["behaviour"])


def test_bad_arguments(run):
    with pytest.raises(ValueError, match="--n-assistants must be in 2..8"):
        run.parse_args(["--n-assistants", "9"])
    with pytest.raises(ValueError, match="--n-questions must be in 1..12"):
        run.parse_args(["--n-questions", "0"])
    assert run.parse_args(["--quick"]).n_assistants == 4


def test_readme_meets_the_standard():
    assert readme_problems(HERE / "README.md") == []
    assert readme_blocks_match(HERE / "README.md", HERE / "results" / "full") == []
