"""Every HTML view the library writes, opened in headless Chromium (tests/browser.py): a
screenshot that is not blank, no script errors, the content in the rendered DOM. Plus the
checker itself: it catches a blank page and a script error."""

from __future__ import annotations

import numpy as np
import pytest

from browser import assert_rendered, render
from conftest import REPO
from interpjax.methods import reading as rd


def _scan():
    rng = np.random.default_rng(0)
    tokens = ["<bos>", "Lily", " was", " very", " happy", " & ", " <b>smiled</b>", "."]
    return rd.TokenScan(tokens=tokens, scores_TL=rng.normal(size=(len(tokens), 4)).astype(np.float32),
                        layers=(0, 1, 2, 3), label="happy vs sad")


def test_lat_scan_page_renders_in_chromium(tmp_path):
    page = rd.render_html(_scan(), tmp_path / "scan.html", layers=[1, 2])
    r = render(page, tmp_path / "browser")
    assert_rendered(r, must_contain=["LAT scan: happy vs sad", "Lily", "&lt;b&gt;smiled&lt;/b&gt;", "L3"])
    assert r["dom"].count('class="t"') == 8


def test_a_long_lat_scan_text_wraps_inside_the_window(tmp_path):
    """The coloured text line wraps at spaces (it once used &nbsp; and ran off the page)."""
    s = _scan()
    words = [" word"] * 300
    s = rd.TokenScan(tokens=words, scores_TL=np.zeros((300, 2), np.float32), layers=(0, 1), label="long")
    r = render(rd.render_html(s, tmp_path / "long.html"), tmp_path / "browser", size=(800, 600))
    assert_rendered(r, must_contain=["LAT scan: long"])
    page_width, window_width = r["widths"]
    assert page_width <= window_width, r["widths"]


@pytest.mark.parametrize("name", ["scan_emotion.html", "scan_honesty.html"])
def test_committed_repe_scans_render_in_chromium(tmp_path, name):
    page = REPO / "experiments" / "repe" / "results" / "full" / name
    assert_rendered(render(page, tmp_path / "browser"), must_contain=["LAT scan", "L29"])


def test_the_checker_catches_a_blank_page_and_a_script_error(tmp_path):
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><head></head><body></body></html>")
    with pytest.raises(AssertionError, match="blank"):
        assert_rendered(render(blank, tmp_path / "b1"))
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><head></head><body><h1>Title</h1>"
                      "<script>notDefinedAnywhere();</script></body></html>")
    with pytest.raises(AssertionError, match="script errors.*notDefinedAnywhere"):
        assert_rendered(render(broken, tmp_path / "b2"))
    logged = tmp_path / "logged.html"
    logged.write_text("<!DOCTYPE html><html><head></head><body><h1>Title</h1>"
                      "<script>console.error('bad state')</script></body></html>")
    with pytest.raises(AssertionError, match="bad state"):
        assert_rendered(render(logged, tmp_path / "b3"))
