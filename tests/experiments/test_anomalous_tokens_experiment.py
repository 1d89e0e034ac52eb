"""experiments/anomalous_tokens (M22) on SmolLM2-135M-Instruct, in process: asked to repeat a
token's string, the instruct model repeats random tokens far more often than the tokens nearest
the embedding centroid; the same check fails when the candidates are replaced by random tokens.
Plus the README against results/full."""

from __future__ import annotations

import numpy as np
import pytest

from interpjax.evidence import readme_blocks_match, readme_problems

from conftest import REPO, load_experiment, needs_real_lm

HERE = REPO / "experiments" / "anomalous_tokens"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def run():
    return load_experiment("anomalous_tokens")


@pytest.fixture(scope="module")
def quick(run, real_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("anomalous")
    return run.main(["--quick", "--out", str(out)], model=real_model(MODEL)), out


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_centroid_candidates_are_repeated_less_than_random_tokens(run, quick):
    rec, out = quick
    r = rec["models"][MODEL]
    assert rec["effect_holds"][MODEL] and run.effect_holds(r)
    # the candidates do sit nearer the centroid than the random tokens, and come from the population
    g = r["geometry"]
    assert g["candidates"]["dist_centroid"]["hi"] < g["random"]["dist_centroid"]["lo"]
    ids = [c["id"] for c in r["candidates"]]
    assert len(set(ids)) == len(ids) == run.QUICK["n_candidates"]
    assert not set(ids) & {x["id"] for x in r["random_samples"]["0"]}
    # GCG never lowers the target's log-probability (the history is monotone by construction)
    for group in ("candidates", "random"):
        for x in r["gcg"][group]["runs"]:
            assert x["logprob"] >= x["start_logprob"]
    assert [p.name for p in out.iterdir()] == ["quick"]
    assert {"results.json", "repeat.md", f"{MODEL}_candidates.md", "gcg.md", "centroid.png"} <= {
        p.name for p in (out / "quick").iterdir()}


@pytest.mark.slow
@needs_real_lm(MODEL)
def test_the_effect_check_fails_when_candidates_are_random_tokens(run, real_model, tmp_path, monkeypatch):
    """The companion: the centroid ranking replaced by a random draw from the same population."""
    def random_selection(stats, ok_V, n):
        return np.sort(np.random.default_rng(7).choice(np.flatnonzero(ok_V), n, replace=False)).astype(np.int32)

    monkeypatch.setattr(run, "select_candidates", random_selection)
    monkeypatch.setitem(run.QUICK, "gcg_targets", 0)
    rec = run.main(["--quick", "--out", str(tmp_path)], model=real_model(MODEL))
    assert not run.effect_holds(rec["models"][MODEL])


def test_population_excludes_special_fragment_and_non_canonical_tokens(run):
    class Tok:
        all_special_ids = [0]
        vocab = {0: "<s>", 1: " cat", 2: "\ufffd", 3: "  ", 4: "ca", 5: "t"}

        def decode(self, ids):
            return "".join(self.vocab[i] for i in ids)

        def __call__(self, texts, add_special_tokens=False):
            enc = {"<s>": [0], " cat": [1], "\ufffd": [2], "  ": [3], "ca": [5, 5], "t": [5]}
            return {"input_ids": [enc[t] for t in texts]}

    assert run.population(Tok(), 6).tolist() == [False, True, False, False, False, True]


def test_random_tokens_avoid_the_candidates_and_are_seeded(run):
    ok = np.ones(50, bool)
    ok[:5] = False
    a = run.random_tokens(ok, 10, 0, avoid=[5, 6, 7])
    assert a.tolist() == run.random_tokens(ok, 10, 0, avoid=[5, 6, 7]).tolist()
    assert not set(a.tolist()) & {0, 1, 2, 3, 4, 5, 6, 7} and len(set(a.tolist())) == 10
    assert a.tolist() != run.random_tokens(ok, 10, 1, avoid=[5, 6, 7]).tolist()


def test_readme_meets_the_standard():
    readme = HERE / "README.md"
    assert readme_problems(readme) == []
    assert readme_blocks_match(readme, HERE / "results" / "full") == []
