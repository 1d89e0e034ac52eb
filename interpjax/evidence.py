"""Evidence for experiments: bootstrap intervals, seeded summaries, and results recorded with provenance.

An experiment's ``run.py`` opens a :class:`Record` (``results/full/`` or, with ``--quick``,
``results/quick/``), stores every number its README states, and saves the JSON, the markdown
table and figures atomically together with the command, model, seeds, commit and wall time.
README blocks between ``<!-- results: FILE -->`` and ``<!-- /results -->`` are copies of a
results file, refreshed by :func:`sync_readme` and checked by :func:`readme_blocks_match`, so a
README number is never typed by hand. The standard itself is ``experiments/README.md``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .io.artifacts import atomic_write_text
from .io.plots import save_figure

VERDICTS = ("reproduced", "partly", "not reproduced")
BLOCK_RE = re.compile(r"<!-- results: (?P<file>[^ ]+) -->\n(?P<body>.*?)<!-- /results -->", re.S)
VERDICT_RE = re.compile(r"^Verdict: (reproduced|partly|not reproduced) — .+", re.M)
# M1-M25: ../shared/METHODS.md; T1-T3: the circuit and feature toolbox (experiments/README.md lists them)
METHOD_ID_RE = re.compile(r"\b(M([1-9]|1[0-9]|2[0-5])|T[1-3])\b")


# ---------------------------------------------------------------------------------------------
# statistics


def _as_1d(name: str, values) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds non-finite values ({int((~np.isfinite(a)).sum())} of {a.size})")
    return a


def _check_level(level: float) -> None:
    if not (isinstance(level, (int, float)) and 0.0 < level < 1.0):
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def bootstrap_ci(values, stat: Callable[[np.ndarray], float] = np.mean, *, n_boot: int = 2000,
                 level: float = 0.95, seed: int = 0) -> dict:
    """Percentile bootstrap over items: ``{"value", "lo", "hi", "n"}`` for ``stat(values)``."""
    a = _as_1d("values", values)
    _check_level(level)
    if not (isinstance(n_boot, int) and n_boot >= 100):
        raise ValueError(f"n_boot must be an integer >= 100, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    idx_RN = rng.integers(0, a.size, size=(n_boot, a.size))
    boots = np.array([stat(a[i]) for i in idx_RN]) if stat is not np.mean else a[idx_RN].mean(axis=1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return {"value": float(stat(a)), "lo": float(lo), "hi": float(hi), "n": int(a.size)}


def paired_bootstrap_diff(a, b, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Bootstrap interval of ``mean(a - b)`` over paired items (method vs its control on the same items)."""
    a, b = _as_1d("a", a), _as_1d("b", b)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, got {a.size} and {b.size}")
    out = bootstrap_ci(a - b, n_boot=n_boot, level=level, seed=seed)
    out["p_le_0"] = float(np.mean(_boot_means(a - b, n_boot, seed) <= 0.0))
    return out


def _boot_means(d: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)


_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def seed_summary(values, level: float = 0.95) -> dict:
    """Mean over seeds with a Student-t interval (95% only): ``{"value", "lo", "hi", "n", "values"}``."""
    a = _as_1d("values", values)
    if level != 0.95:
        raise ValueError(f"seed_summary gives 95% intervals only, got level={level!r}")
    m = float(a.mean())
    if a.size == 1:
        return {"value": m, "lo": math.nan, "hi": math.nan, "n": 1, "values": a.tolist()}
    t = _T975.get(a.size - 1, 1.96 + 2.4 / (a.size - 1))
    half = t * float(a.std(ddof=1)) / math.sqrt(a.size)
    return {"value": m, "lo": m - half, "hi": m + half, "n": int(a.size), "values": a.tolist()}


def fmt_ci(s: dict, digits: int = 2) -> str:
    """``0.53 [0.48, 0.58]`` from a summary dict (``value``, ``lo``, ``hi``)."""
    v, lo, hi = s["value"], s.get("lo", math.nan), s.get("hi", math.nan)
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub markdown table; every row must have one cell per header column."""
    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"row {list(r)!r} has {len(r)} cells, the header has {len(header)}")
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# recording results


def git_commit(repo: Path | None = None) -> str:
    """``<sha>`` or ``<sha>+dirty`` of the checkout holding this file; ``unknown`` outside git."""
    cwd = str(repo or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if hasattr(x, "__array__"):
        return _jsonable(np.asarray(x))
    return x


class Record:
    """Results of one experiment run, written under ``<experiment>/results/{full,quick}/``.

    ``rec["key"] = value`` stores a number (or nested structure); ``rec.table(name, md)`` a markdown
    table; ``rec.figure(name, fig)`` a matplotlib figure. ``rec.save()`` writes ``results.json``
    (numbers + ``meta``: command, model, seeds, commit, wall time, date, quick) and the tables,
    each atomically. Quick runs never touch ``results/full/``.
    """

    def __init__(self, experiment_dir, *, quick: bool, model: str | None, seeds: Sequence[int],
                 argv: Sequence[str] | None = None, out: Path | None = None):
        self.dir = Path(experiment_dir)
        if not self.dir.is_dir():
            raise ValueError(f"experiment folder {str(self.dir)!r} does not exist")
        self.quick = bool(quick)
        base = Path(out) if out is not None else self.dir / "results"
        self.out = base / ("quick" if self.quick else "full")
        self.out.mkdir(parents=True, exist_ok=True)
        self.numbers: dict = {}
        self.tables: dict[str, str] = {}
        self.meta = {"experiment": self.dir.name, "command": " ".join(["python"] + list(argv if argv is not None else sys.argv)),
                     "model": model, "seeds": [int(s) for s in seeds], "quick": self.quick,
                     "commit": git_commit(self.dir), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        self._t0 = time.time()

    def __setitem__(self, key: str, value) -> None:
        self.numbers[key] = value

    def __getitem__(self, key: str):
        return self.numbers[key]

    def table(self, name: str, markdown: str) -> Path:
        if not name.endswith(".md") or "/" in name:
            raise ValueError(f"table name must be a file name ending in .md, got {name!r}")
        self.tables[name] = markdown
        return atomic_write_text(self.out / name, markdown)

    def figure(self, name: str, fig) -> Path:
        """Save ``fig`` atomically and close it: a recorded figure is finished, and an open one
        would stay in pyplot's registry for the rest of the process."""
        if "/" in name or not name.endswith((".png", ".svg", ".pdf")):
            raise ValueError(f"figure name must be a file name ending in .png, .svg or .pdf, got {name!r}")
        path = save_figure(fig, self.out / name)
        import matplotlib.pyplot as plt

        plt.close(fig)
        return path

    def save(self) -> Path:
        self.meta["wall_s"] = round(time.time() - self._t0, 1)
        payload = {"meta": self.meta, **_jsonable(self.numbers)}
        return atomic_write_text(self.out / "results.json", json.dumps(payload, indent=1, allow_nan=False) + "\n")


def sync_readme(readme, results_dir) -> list[str]:
    """Replace every ``<!-- results: FILE -->`` block of a README with ``results_dir/FILE``; returns the files used."""
    readme, results_dir = Path(readme), Path(results_dir)
    text = readme.read_text()
    used: list[str] = []

    def repl(m):
        f = results_dir / m["file"]
        if not f.is_file():
            raise ValueError(f"{readme}: block names {m['file']!r}, which is not in {results_dir}")
        used.append(m["file"])
        body = f.read_text()
        return f"<!-- results: {m['file']} -->\n{body}{'' if body.endswith(chr(10)) else chr(10)}<!-- /results -->"

    new = BLOCK_RE.sub(repl, text)
    if new != text:
        atomic_write_text(readme, new)
    return used


def readme_blocks_match(readme, results_dir) -> list[str]:
    """Problems with a README's results blocks (missing file, stale copy); empty when all match."""
    readme, results_dir = Path(readme), Path(results_dir)
    problems = []
    blocks = list(BLOCK_RE.finditer(readme.read_text()))
    if not blocks:
        problems.append(f"{readme}: no <!-- results: FILE --> block")
    for m in blocks:
        f = results_dir / m["file"]
        if not f.is_file():
            problems.append(f"{readme}: block names {m['file']!r}, missing from {results_dir}")
        elif f.read_text().strip() != m["body"].strip():
            problems.append(f"{readme}: block {m['file']!r} differs from {f}")
    return problems


def readme_problems(readme) -> list[str]:
    """What the evidence standard asks of every experiment README: a METHODS.md id and a final verdict line."""
    readme = Path(readme)
    text = readme.read_text()
    problems = []
    if not METHOD_ID_RE.search(text.split("\n", 3)[0] + "\n" + text[:2000]):
        problems.append(f"{readme}: names no METHODS.md id (M1-M25) or toolbox id (T1-T3) near the top")
    last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
    if not VERDICT_RE.match(last):
        problems.append(f"{readme}: last line is not 'Verdict: reproduced | partly | not reproduced — ...': {last[:80]!r}")
    return problems
