"""experiments/neuron_explanations (M15) on SmolLM2-135M-Instruct, in process, on the quick records:
the token-lookup explanation of each neuron beats the same table with its values dealt to other
tokens (paired bootstrap over 256 neurons); the check fails when the lookup explanation itself is
that shuffled table. The LM explainer and simulator run on two layer-0 neurons. Plus the per-neuron
sets and the README against results/full."""

from __future__ import annotations

import numpy as np
import pytest

from interpjax.evidence import readme_blocks_match, readme_problems
from interpjax.methods import neuron_explain as NE

from conftest import REPO, load_experiment, needs_real_lm

HERE = REPO / "experiments" / "neuron_explanations"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def run():
    return load_experiment("neuron_explanations")


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
    """The quick records (41k tokens, layers 0 and 4), collected once into a temporary folder."""
    return tmp_path_factory.mktemp("neuron_records") / "quick"


@pytest.fixture(scope="module")
def quick(run, real_model, tmp_path_factory, records_dir):
    out = tmp_path_factory.mktemp("neuron_explanations")
    return run.main(["--quick", "--out", str(out), "--records", str(records_dir)], model=real_model(MODEL))


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_token_lookup_beats_its_shuffled_table_and_the_lm_stages_run(run, quick):
    assert quick["effect_holds"] and run.effect_holds(quick.numbers)
    assert quick["lookup_all"]["value"] > quick["shuffled_all"]["value"] + 0.1
    assert quick["n_neurons"]["lookup"] == 2 * 32 and quick["n_neurons"]["lm"] == 2
    ex = quick["explanations"]
    assert len(ex) == 2 and all(isinstance(e, str) for e in ex.values())
    assert np.isfinite(quick["lm"]["value"]) and -1 <= quick["lm"]["value"] <= 1
    assert quick.out.name == "quick" and quick.out.parent != HERE / "results"  # --quick never writes results/full
    assert (quick.out / "results.json").is_file() and (quick.out / "records.html").is_file()


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_the_effect_check_fails_when_the_lookup_table_is_shuffled(run, quick, real_model, tmp_path, monkeypatch,
                                                                    records_dir):
    """The method's core replaced by its control: every lookup explanation is itself a shuffled
    table; lookup and control are then the same kind of thing and the predicate must fail."""
    monkeypatch.setattr(run, "lookup_explanation",
                        lambda recs: NE.shuffle_table(NE.TokenLookupExplainer()(recs), seed=12345))
    fake = run.main(["--quick", "--lm-neurons", "0", "--out", str(tmp_path), "--records", str(records_dir)],
                    model=real_model(MODEL))
    assert not fake["effect_holds"] and not run.effect_holds(fake.numbers)


def test_neuron_sets_are_disjoint_and_scaled_by_the_top_excerpts(run):
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(60, 64)).astype(np.float32)
    acts[7, 5] = 9.0
    strings = [tuple(f"t{i}_{j}" for j in range(64)) for i in range(60)]
    s = run.neuron_sets(acts, strings, seed=1)
    ids = {k: [r.meta["excerpt"] for r in v] for k, v in s.items()}
    allids = sum(ids.values(), [])
    assert len(allids) == len(set(allids)) == 25
    assert 7 in ids["explain"] + ids["top"]
    assert all(r.scale == 9.0 for v in s.values() for r in v)
    with pytest.raises(ValueError, match="--n-per-layer"):
        run.parse_args(["--n-per-layer", "1"])


def test_readme_matches_the_full_results():
    assert readme_problems(HERE / "README.md") == []
    assert readme_blocks_match(HERE / "README.md", HERE / "results" / "full") == []
