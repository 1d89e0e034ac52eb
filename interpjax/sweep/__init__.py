"""Sweeps: grids of interventions evaluated by one compiled program per chunk shape, with minimal
recompute, chunking to a memory budget, sharding over devices and hosts, and resume.

    import interpjax.sweep as sw
    grid = sw.product(layer=np.arange(12), coeff=np.linspace(-8, 8, 16)).build(
        lambda a: Add("resid_pre", layer=a.layer, vector=v, coeff=a.coeff))
    diff = sw.sweep(model, tokens, grid, lambda out: (out.logits(-1, 0) - out.logits(-1, 1)).mean())  # [12, 16]

Modules: ``grid`` (axes and grids), ``plan`` (validation, memory model, packing, micro-batching),
``program`` (the compiled base run and chunk), ``store`` (fingerprints, resume), ``devices``
(mesh, shardings), ``engine`` (``sweep``: ties them together), ``standard`` (ready-made sweeps),
``plot`` (labelled results).
"""

from .devices import param_shardings
from .engine import sweep
from .plan import Plan, default_memory_budget, plan_sweep
from .grid import Axis, Grid, Ref, Space, axis, from_stacked, product, zip
from .plot import Labelled, heatmap
from ..core.readout import Readout
from .standard import ablation, head_patching, patching, steering, token_labels

__all__ = ["Axis", "Grid", "Labelled", "ablation", "head_patching", "heatmap", "patching", "steering", "token_labels", "Plan", "Readout", "Ref", "Space", "axis", "default_memory_budget", "from_stacked",
           "param_shardings", "plan_sweep", "product", "sweep", "zip"]
