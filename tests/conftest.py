"""Shared fixtures: tiny random HF checkpoints of every family, saved once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The real checkpoints sit beside the repository (shared/models); INTERPJAX_MODELS overrides.
MODELS = Path(os.environ.get("INTERPJAX_MODELS", REPO.parent / "shared" / "models"))
STORIES = MODELS / "llama2c-stories260k"
needs_stories = pytest.mark.skipif(not (STORIES / "config.json").exists(),
                                   reason=f"real checkpoint llama2c-stories260k not found under {MODELS}")


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
