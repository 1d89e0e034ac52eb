"""Open an HTML file in headless Chromium: a screenshot, the DOM after load, and the page's script
errors (uncaught exceptions and console.error, recorded by a hook put in a copy of the page).

Used by the tests of every HTML view the library writes. ``.ci/run`` installs Debian's chromium
and sets INTERPJAX_REQUIRE_BROWSER=1, so there a missing browser fails the tests instead of
skipping them."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

# the flags a closed network and a root user need: no sandbox, no GPU, no background connections
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]
ERROR_ATTR = "data-interpjax-errors"
WIDTH_ATTR = "data-interpjax-widths"  # [page scroll width, window width] after load
HOOK = ("<script>(function(){var e=[];function put(){document.documentElement.setAttribute('" + ERROR_ATTR +
        "',JSON.stringify(e));}window.addEventListener('error',function(ev){e.push(String(ev.message));put();});"
        "var ce=console.error;console.error=function(){e.push(Array.prototype.join.call(arguments,' '));put();"
        "return ce.apply(console,arguments);};put();window.addEventListener('load',function(){"
        "document.documentElement.setAttribute('" + WIDTH_ATTR + "',JSON.stringify([document.documentElement.scrollWidth,"
        "window.innerWidth]));});})();</script>")


def chromium() -> str:
    """The Chromium binary, or a skip (a failure where INTERPJAX_REQUIRE_BROWSER=1)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    msg = "headless Chromium not found (Debian: apt-get install chromium; .ci/run installs it)"
    if os.environ.get("INTERPJAX_REQUIRE_BROWSER") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def _with_hook(page: str) -> str:
    """The page with the error hook as the first thing parsed, before any of its own scripts."""
    m = re.search(r"<head[^>]*>", page, re.I)
    if m:
        return page[:m.end()] + HOOK + page[m.end():]
    m = re.search(r"<html[^>]*>", page, re.I)
    at = m.end() if m else 0
    return page[:at] + "<head>" + HOOK + "</head>" + page[at:]


def _run(binary: str, args: list[str], workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([binary, *FLAGS, f"--user-data-dir={workdir / 'profile'}", "--enable-logging=stderr",
                           "--v=0", *args], capture_output=True, text=True, timeout=120)


def render(html_path, workdir, size=(1200, 900)) -> dict:
    """{"png": screenshot path, "pixels": [H, W, C] float array, "dom": serialised DOM after load,
    "errors": script errors (hooked ones and uncaught ones from Chromium's console log)}."""
    binary = chromium()
    html_path, workdir = Path(html_path).resolve(), Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    hooked = workdir / f"hooked-{html_path.name}"  # the library's pages are self-contained: no relative links
    hooked.write_text(_with_hook(html_path.read_text(encoding="utf-8")), encoding="utf-8")
    url = hooked.as_uri()
    png = workdir / f"{html_path.stem}.png"
    shot = _run(binary, [f"--window-size={size[0]},{size[1]}", f"--screenshot={png}", url], workdir)
    dom = _run(binary, ["--dump-dom", url], workdir)
    if not png.is_file():
        raise AssertionError(f"Chromium wrote no screenshot of {html_path}: {shot.stderr[-2000:]}")
    import matplotlib.image

    errors = [ln for ln in (shot.stderr + dom.stderr).splitlines() if "CONSOLE" in ln and "Uncaught" in ln]
    m = re.search(ERROR_ATTR + r'="([^"]*)"', dom.stdout)
    if m is None:
        errors.append("the error hook did not run (scripts disabled or the page did not load)")
    else:
        errors += json.loads(html.unescape(m.group(1)))
    w = re.search(WIDTH_ATTR + r'="([^"]*)"', dom.stdout)
    widths = json.loads(html.unescape(w.group(1))) if w else None
    return {"png": png, "pixels": np.asarray(matplotlib.image.imread(png)), "dom": dom.stdout, "errors": errors,
            "widths": widths}


def assert_rendered(result: dict, must_contain=(), min_ink: float = 0.005) -> None:
    """The page rendered: no script errors, at least ``min_ink`` of the screenshot's pixels differ
    from the background (not blank), and the DOM holds each string of ``must_contain``."""
    assert result["errors"] == [], f"script errors: {result['errors']}"
    px = result["pixels"][..., :3]
    background = np.median(px.reshape(-1, 3), axis=0)
    ink = float(np.mean(np.abs(px - background).max(-1) > 0.1))
    assert ink >= min_ink, f"screenshot {result['png']} is blank: {ink:.4f} of pixels differ from the background"
    for s in must_contain:
        assert s in result["dom"], f"{s!r} not in the rendered DOM"
