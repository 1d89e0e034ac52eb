"""interpjax: read and edit what Hugging Face language models compute, as pure JAX functions.

    model = interpjax.load("gpt2")                       # or a local checkpoint folder
    logits, cache = model.run_with_cache(tokens, sites=["resid_pre"])
    steered = model(tokens, interventions=Add("resid_pre", layer=6, vector=v, coeff=4.0))

The curated API: loading (``load``, ``Model``), running (``forward``, ``run_with_cache``,
``Cache``), the interventions and ``compose``, the ``sweep`` and ``generate`` modules, and every
method module as an attribute (``interpjax.steering``, ``interpjax.knockout``, ...), imported on
first use so ``import interpjax`` stays light. The method contract is in ``methods/README.md``.
"""

import importlib

from . import generate, sweep, testing
from .core.config import Config
from .core.handle import Model, load
from .core.interventions import Ablate, Add, AttentionKnockout, Custom, Patch, Project, Scale, compose
from .core.model import Cache, forward, run_with_cache
from .core.sites import LAYER_SITES, SITES, list_sites, site_shape
from .io.loading import load_params, load_tokenizer, save_pretrained

# method modules (interpjax/methods/<name>.py), loaded lazily as interpjax.<name>
METHODS = ("anomalous_tokens", "atp", "attribution", "conceptor", "das", "eap", "feature_vis", "icl_labels",
           "input_search", "kb_crawl", "knockout", "lens", "neuron_explain", "probes", "reading", "sae", "sae_bank",
           "skill_neurons", "steering", "task_arithmetic", "task_vectors")
_LAZY = {name: f".methods.{name}" for name in METHODS} | {"activations": ".io.activations"}


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'interpjax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Ablate", "Add", "AttentionKnockout", "Cache", "Config", "Custom", "LAYER_SITES", "METHODS", "Model", "Patch",
    "Project", "SITES", "Scale", "compose", "forward", "generate", "list_sites", "load", "load_params",
    "load_tokenizer", "run_with_cache", "save_pretrained", "site_shape", "sweep", "testing", *_LAZY,
]
__version__ = "0.1.0"
