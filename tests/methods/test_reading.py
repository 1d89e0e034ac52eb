"""Representation reading: planted directions recovered per layer, scores and accuracy, LAT scans
(self-contained HTML, heatmap PNG), concept separation, artifacts, and the RepE experiment."""

from __future__ import annotations

import json

import numpy as np
import pytest

import interpjax
from interpjax.core import model as M
from interpjax.methods import reading as rd

from conftest import STORIES, needs_stories


def test_fit_recovers_planted_directions_only_where_planted():
    rng = np.random.default_rng(0)
    L, N, D = 4, 60, 48
    u = rng.normal(size=(L, D))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    signal = np.array([0.0, 0.0, 1.0, 2.0])  # layers 0, 1 carry no concept
    base = rng.normal(size=(L, N, D)) * np.where(np.arange(D) < 3, 2.0, 0.3)
    noise = lambda: 0.1 * rng.normal(size=(L, N, D))  # noqa: E731
    pos = base + signal[:, None, None] * u[:, None] + noise()
    neg = base - signal[:, None, None] * u[:, None] + noise()
    for method in rd.METHODS:
        rv = rd.fit(pos[:, :40], neg[:, :40], list(range(L)), method=method)
        cos = np.abs(np.einsum("ld,ld->l", rv.directions_LD, u))
        assert (cos[2:] > 0.99).all() and (cos[:2] < 0.6).all()
        assert (np.einsum("ld,ld->l", rv.directions_LD, u)[2:] > 0).all()  # sign-calibrated
        acc = rd.pair_accuracy(rv, pos[:, 40:], neg[:, 40:])
        assert (acc[2:] == 1.0).all() and (acc[:2] < 0.9).all()
    scores = rv.scores(pos[:, 40:])
    assert scores.shape == (L, 20) and (scores[2:] > 0).all()


def test_concept_separation_sees_clusters_and_not_noise():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 16)) * 3
    clustered = {f"c{i}": np.stack([rng.normal(size=(10, 16)) * 0.5 + centres[i],
                                    rng.normal(size=(10, 16))]) for i in range(3)}  # layer 0 clustered, layer 1 noise
    sep = rd.concept_separation(clustered)
    assert sep[0] == 1.0 and sep[1] < 0.7
    with pytest.raises(ValueError, match="at least two concepts"):
        rd.concept_separation({"a": clustered["c0"]})


def test_layers_must_be_integers_not_rounded(tiny_model, monkeypatch, tmp_path):
    """reading_vectors cast layers with int(): [1.5] / True read layer 1; ReadingVectors.steering(True)
    and render_html(layers=[1.5]) matched layer 1 by equality. Each is now a ValueError naming the
    value and the valid layers, before any compute."""

    def refuse(*a, **k):
        raise AssertionError("compute started before the input was refused")

    monkeypatch.setattr(M, "run_jit", refuse)
    m, _ = tiny_model("llama")  # 3 layers
    valid = "; valid layers are 0..2"
    for layers, msg in (([1.5], r"layers must be integers; got \[1\.5\] \(float\)" + valid),
                        (True, r"layer must be integers; got \[True\] \(bool\)" + valid),
                        ([0, 0], r"layers \[0, 0\] contain duplicates"),
                        ([], "layers is empty" + valid), ([3], r"layers \[3\] out of range: valid layers are 0..2")):
        with pytest.raises(ValueError, match=msg):
            rd.reading_vectors(m, ["a"], ["b"], layers=layers)
    rng = np.random.default_rng(0)
    rv = rd.fit(rng.normal(size=(3, 6, 8)), rng.normal(size=(3, 6, 8)), [0, 1, 2])
    assert rv.steering(1).layer == 1 and rv.steering(np.int64(2)).layer == 2
    for bad in (True, 1.0, 7):
        with pytest.raises(ValueError, match=rf"layer {bad!r} has no reading vector; layers \(ints\): \[0, 1, 2\]"):
            rv.steering(bad)
    with pytest.raises(ValueError, match=r"layers must be ints \(the model layers of the activations\), "
                                         r"got \[0, 1\.5, 2\]"):
        rd.fit(rng.normal(size=(3, 6, 8)), rng.normal(size=(3, 6, 8)), [0, 1.5, 2])
    s = rd.TokenScan(["a", "b"], np.zeros((2, 3), np.float32), (0, 1, 2))
    with pytest.raises(ValueError, match=r"layers \[1\.5\] were not scanned; scanned layers: \[0, 1, 2\]"):
        rd.render_html(s, tmp_path / "s.html", layers=[1.5])
    assert not (tmp_path / "s.html").exists()
    assert rd.render_html(s, tmp_path / "s.html", layers=np.array([1])).exists()


@pytest.fixture(scope="module")
def stories_rv():
    m = interpjax.load(STORIES)
    pos = ["Lily got a new puppy. She felt", "Tom won the race. He felt", "Sara got a big cake. She felt",
           "Ben found his ball. He felt"]
    neg = ["Lily lost her puppy. She felt", "Tom lost the race. He felt", "Sara dropped her cake. She felt",
           "Ben lost his ball. He felt"]
    return m, rd.reading_vectors(m, pos, neg, label="happy - sad"), pos, neg


@needs_stories
def test_scan_html_and_heatmap(stories_rv, tmp_path):
    m, rv, pos, neg = stories_rv
    assert rv.layers == tuple(range(5)) and rv.directions_LD.shape == (5, 64)
    assert np.allclose(np.linalg.norm(rv.directions_LD, axis=1), 1.0, atol=1e-5)
    res = rd.evaluate(rv, m, pos, neg)
    assert len(res["pair"]) == 5 and all(0 <= a <= 1 for a in res["pair"] + res["single"])
    text = "Lily lost her toy <b> & cried."
    s = rd.scan(m, text, rv)
    tokens, _ = m.to_tokens(text)
    assert s.scores_TL.shape == (tokens.shape[1], 5) and len(s.tokens) == tokens.shape[1]
    _, cache = m.run_with_cache(tokens, sites=["resid_post"], layers=[3])
    h = np.asarray(cache["resid_post", 3])[0]
    expect = (h - rv.center_LD[3]) @ rv.directions_LD[3] / rv.scale_L[3]
    assert np.allclose(s.scores_TL[:, 3], expect, atol=1e-4)
    page = rd.render_html(s, tmp_path / "scan.html").read_text()
    body = page.split("<body>")[1]
    assert page.startswith("<!DOCTYPE html>") and "&lt;" in body and "&amp;" in body and "<b>" not in body
    assert "http" not in page and "<script" not in page and "src=" not in page  # self-contained
    assert page.count('class="t"') == tokens.shape[1]
    assert rd.heatmap_png(s, tmp_path / "scan.png").stat().st_size > 1000
    with pytest.raises(ValueError, match=r"layers \[7\] were not scanned"):
        rd.render_html(s, tmp_path / "bad.html", layers=[7])
    assert not (tmp_path / "bad.html").exists()


@needs_stories
def test_reading_artifacts_round_trip_and_refusal(stories_rv, tmp_path, tiny_model):
    m, rv, pos, neg = stories_rv
    path = rv.save(tmp_path / "rv.safetensors")
    back = rd.ReadingVectors.load(path, model=m)
    assert np.array_equal(back.directions_LD, rv.directions_LD) and back.layers == rv.layers
    assert back.meta["prompts"] == {"positive": pos, "negative": neg} and back.meta["model"] == "llama2c-stories260k"
    tiny, _ = tiny_model("llama")
    with pytest.raises(ValueError, match="made for another model"):
        rd.ReadingVectors.load(path, model=tiny)
    from interpjax.methods.steering import SteeringVector

    with pytest.raises(ValueError, match="format 'interpjax.reading', expected 'interpjax.steering'"):
        SteeringVector.load(path)
    # a file of the pre-artifact layout (tensors directions / center / scale, flat JSON) still loads
    from safetensors.numpy import save_file

    old_meta = {k: v for k, v in rv.meta.items() if k != "fingerprint"}
    save_file({"directions": rv.directions_LD, "center": rv.center_LD, "scale": rv.scale_L}, str(tmp_path / "old.st"),
              metadata={"interpjax": json.dumps({"format": "interpjax.reading/1", "layers": list(rv.layers),
                                                 "site": rv.site, "method": rv.method, **old_meta})})
    with pytest.warns(UserWarning, match="records no weight fingerprint"):
        old = rd.ReadingVectors.load(tmp_path / "old.st", model=m)
    assert np.array_equal(old.directions_LD, rv.directions_LD) and np.array_equal(old.scale_L, rv.scale_L)
    assert old.layers == rv.layers and old.meta == rv.meta and (old.site, old.method) == (rv.site, rv.method)
    with pytest.raises(ValueError, match=r"old.st: tensor 'directions_LD' has shape \(5, 63\)"):
        save_file({"directions": rv.directions_LD[:, :63], "center": rv.center_LD, "scale": rv.scale_L},
                  str(tmp_path / "old.st"), metadata={"interpjax": json.dumps(
                      {"format": "interpjax.reading/1", "layers": list(rv.layers), "site": rv.site,
                       "method": rv.method, **old_meta})})
        rd.ReadingVectors.load(tmp_path / "old.st")
    assert rd.TokenScan(["a", "b"], np.zeros((2, 5), np.float32), rv.layers).plot(tmp_path / "s.png").stat().st_size
    sv = rv.steering(3)
    assert sv.site == "resid_post" and sv.layer == 3
    assert np.allclose(sv.vector / np.linalg.norm(sv.vector), rv.directions_LD[3] * np.sign(rv.meta["mean_gap"][3]))
    with pytest.raises(ValueError, match="contrast sets are paired"):
        rd.reading_vectors(m, pos, neg[:2])
