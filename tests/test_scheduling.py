"""The suite's xdist scheduling: each test module (and the Gemma group) runs whole on one worker, so
its module fixtures are built once. Checked on a generated suite run with two real workers."""

from __future__ import annotations

import subprocess
import sys

from conftest import HEAVY_UNITS, REPO, unit_rank, xdist_unit

MODULE = '''
import os, pytest

@pytest.fixture(scope="module")
def built():
    with open(os.path.join(os.path.dirname(__file__), "log.txt"), "a") as f:
        f.write("setup {name} " + os.environ.get("PYTEST_XDIST_WORKER", "-") + "\\n")
    return 1

@pytest.mark.parametrize("i", range(4))
def test_uses_it(built, i):
    with open(os.path.join(os.path.dirname(__file__), "log.txt"), "a") as f:
        f.write("run {name} " + os.environ["PYTEST_XDIST_WORKER"] + "\\n")
'''


def test_units_are_modules_and_the_gemma_modules_share_one():
    assert xdist_unit("tests/io/test_activations.py::test_x[a@b]") == "tests/io/test_activations.py"
    assert xdist_unit("tests/io/test_real_model.py::test_y") == xdist_unit("tests/io/test_gguf.py::test_z") == "gemma"
    # the measured costly units go out first, in order of cost; every other unit after them
    assert unit_rank("gemma") == 0 < unit_rank("tests/experiments/test_lens_experiments.py")
    assert unit_rank("tests/core/test_model.py") == len(HEAVY_UNITS)
    assert len(set(HEAVY_UNITS)) == len(HEAVY_UNITS) and all((REPO / u).is_file() for u in HEAVY_UNITS if u != "gemma")


def test_two_workers_build_each_module_fixture_once(tmp_path):
    (tmp_path / "conftest.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('suite_conftest', {str(REPO / 'tests' / 'conftest.py')!r})\n"
        "suite = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(suite)\n"
        "pytest_xdist_make_scheduler = suite.pytest_xdist_make_scheduler  # the suite's scheduler\n")
    names = [f"m{i}" for i in range(4)]
    for n in names:
        (tmp_path / f"test_{n}.py").write_text(MODULE.format(name=n))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = (tmp_path / "log.txt").read_text().split()
    events = list(zip(lines[::3], lines[1::3], lines[2::3]))
    for n in names:
        setups = [w for kind, m, w in events if kind == "setup" and m == n]
        runs = {w for kind, m, w in events if kind == "run" and m == n}
        assert len(setups) == 1 and runs == set(setups), (n, events)
    assert {w for _, _, w in events} == {"gw0", "gw1"}  # both workers were used
