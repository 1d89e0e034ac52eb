"""interpjax: read and edit what Hugging Face language models compute, as pure JAX functions.

    model = interpjax.load("gpt2")                       # or a local checkpoint folder
    logits, cache = model.run_with_cache(tokens, sites=["resid_pre"])
    steered = model(tokens, interventions=Add("resid_pre", layer=6, vector=v, coeff=4.0))
"""

from .io import activations
from .methods import attribution, das, knockout, lens, probes, reading, skill_neurons, steering, task_vectors
from . import generate, sweep, testing
from .core.config import Config
from .core.interventions import Ablate, Add, AttentionKnockout, Custom, Patch, Project, Scale, compose
from .io.loading import load_params, load_tokenizer, save_pretrained
from .core.model import Cache, forward, run_with_cache
from .core.handle import Model, load
from .core.sites import LAYER_SITES, SITES, list_sites, site_shape

__all__ = [
    "Ablate", "Add", "AttentionKnockout", "Cache", "Config", "Custom", "LAYER_SITES", "Model", "Patch", "Project",
    "SITES", "Scale", "activations", "attribution", "compose", "das", "forward", "generate", "knockout", "lens",
    "list_sites", "load", "load_params", "load_tokenizer", "probes", "reading", "run_with_cache", "save_pretrained",
    "site_shape", "skill_neurons", "steering", "sweep", "task_vectors", "testing",
]
__version__ = "0.1.0"
