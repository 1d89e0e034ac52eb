#!/usr/bin/env python
"""The 100k-variant sweep of docs/sweeps.md: steering on a random GPT-2-small-shaped model.

    python benchmarks/sweep_big.py [N_VARIANTS]

``resid_pre[L][:, -1] += c * v`` for layers 9..11 x N/3 coefficients on one 16-token prompt,
metric = the logit difference of tokens 0 and 1 at the last position, default memory budget;
prints the time, the rate, the chunk plan, the work fraction and the peak RSS.
"""

from __future__ import annotations

import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def logit_diff(out):
    return (out.logits(-1, 0) - out.logits(-1, 1)).mean()


def main(n_variants: int = 100_000) -> None:
    import jax
    import jax.numpy as jnp

    import interpjax.sweep as sw
    from interpjax import Add, Config, train

    cfg = Config(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024,
                 tie_embeddings=True)
    params = train.init_params(cfg, jax.random.PRNGKey(0))
    toks = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 16)).astype(np.int32)
    v = jnp.asarray(np.random.default_rng(2).standard_normal(768).astype(np.float32))
    layers = np.arange(9, 12)
    coeffs = np.linspace(-8, 8, -(-n_variants // len(layers))).astype(np.float32)
    grid = sw.product(layer=layers, coeff=coeffs).build(
        lambda a: Add("resid_pre", layer=a.layer, vector=v, coeff=a.coeff, positions=jnp.array([-1])))
    t0 = time.perf_counter()
    vals, plan = sw.sweep((cfg, params), toks, grid, logit_diff, return_plan=True)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{grid.size} variants in {dt:.1f}s ({grid.size / dt:.0f} variants/s), {plan.n_chunks} chunks of "
          f"<= {max(len(c[1]) for c in plan.chunks)}, budget {plan.budget / 2**30:.1f} GiB, "
          f"work fraction {plan.work_fraction(12, 16):.4f}, peak RSS {peak:.2f} GiB, finite {np.isfinite(vals).all()}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
