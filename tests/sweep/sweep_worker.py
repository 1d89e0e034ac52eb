"""Helpers for the sweep tests: tiny random models with O(1) weights, shared grids/metrics, and a
command-line worker run in subprocesses (resume after SIGKILL, simulated devices, 2 processes).
The 100k-variant benchmark of the docs is ``benchmarks/sweep_big.py``.

    python tests/sweep/sweep_worker.py resume DIR OUT.npy LOG [SLEEP]
    python tests/sweep/sweep_worker.py devices OUT.npz            (under XLA_FLAGS=...device_count=8)
    python tests/sweep/sweep_worker.py dist RANK NPROCS PORT OUT.npy
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

CONFIGS = {
    # rotary, RMSNorm, gated SiLU MLP, grouped KV heads
    "rotary": dict(vocab_size=97, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_head=8, d_mlp=48, n_ctx=64,
                   positions="rotary", rotary_dim=8, norm="rmsnorm", mlp="gated", activation="silu", norm_bias=False),
    # learned positions, LayerNorm, tied unembedding, a local-attention layer, biases
    "learned": dict(vocab_size=97, d_model=32, n_layers=3, n_heads=4, d_head=8, d_mlp=64, n_ctx=64,
                    positions="learned", norm="layernorm", mlp="standard", activation="gelu_tanh",
                    window=(0, 3, 0), tie_embeddings=True, qkv_bias=True, o_bias=True, mlp_bias=True),
    # parallel residual with partial rotary and untied unembedding with a bias
    "parallel": dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=64, n_ctx=64,
                     positions="rotary", rotary_dim=4, parallel_residual=True, unembed_bias=True),
}


def make_model(kind: str = "rotary", seed: int = 0, **overrides):
    """(cfg, params) of a tiny random model whose weights are O(1) so every edit matters."""
    import jax
    import jax.numpy as jnp

    from interpjax import Config
    from interpjax import train

    cfg = Config(**{**CONFIGS[kind], **overrides})
    shapes = jax.eval_shape(lambda: train.init_params(cfg, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(seed)
    out = []
    for path, a in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        name = jax.tree_util.keystr(path)
        noise = rng.standard_normal(a.shape).astype(np.float32)
        if "scale" in name:
            out.append(1.0 + 0.1 * noise)
        elif "bias" in name or name.endswith("['b']"):
            out.append(0.1 * noise)
        else:
            fan_in = a.shape[-2] if a.ndim >= 2 and "embed" not in name else a.shape[-1]
            out.append(noise / np.float32(np.sqrt(fan_in)))
    return cfg, jax.tree.unflatten(jax.tree.structure(shapes), [jnp.asarray(o) for o in out])


def tokens(cfg, B=2, T=8, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (B, T)).astype(np.int32)


def logit_diff(out):
    return (out.logits(-1, 0) - out.logits(-1, 1)).mean()


def patch_grid(cfg, params, clean, site="resid_pre"):
    """layer x position activation patching grid of ``site`` from the clean run."""
    import interpjax.sweep as sw
    from interpjax import Patch, run_with_cache

    _, cache = run_with_cache(cfg, params, clean, sites=[site])
    return sw.product(sw.zip(layer=np.arange(cfg.n_layers), value=cache[site]),
                      position=np.arange(clean.shape[1])).build(
        lambda a: Patch(site, layer=a.layer, value=a.value, positions=a.position))


def _resume(directory, out, log, sleep=0.0):
    import interpjax.sweep as sw

    cfg, params = make_model("rotary")
    clean, corrupt = tokens(cfg, seed=1), tokens(cfg, seed=2)
    grid = patch_grid(cfg, params, clean)

    def on_chunk(i, values):
        with open(log, "a") as f:
            f.write(f"{i}\n")
        time.sleep(sleep)

    vals = sw.sweep((cfg, params), corrupt, grid, logit_diff, chunk_size=2, position_buckets=2,
                    checkpoint_dir=directory, progress=False, on_chunk=on_chunk)
    np.save(out, vals)


def _devices(out):
    import jax
    from jax.sharding import Mesh

    import interpjax.sweep as sw

    assert len(jax.devices()) == 8, jax.devices()
    cfg, params = make_model("rotary")
    clean, corrupt = tokens(cfg, seed=1), tokens(cfg, seed=2)
    grid = patch_grid(cfg, params, clean)
    res = {}
    one = Mesh(np.array(jax.devices()[:1]), ("variants",))
    kw = dict(progress=False, position_buckets=2)
    res["one"] = sw.sweep((cfg, params), corrupt, grid, logit_diff, mesh=one, **kw)
    res["eight"], plan = sw.sweep((cfg, params), corrupt, grid, logit_diff, return_plan=True, **kw)
    assert plan.n_devices == 8 and all(c % 8 == 0 for c in plan.chunk_sizes.values()) and plan.layouts
    # micro-batched packed rows on every device: 16 rows of 33 positions per layer, 2 per device
    clean32, corrupt32 = tokens(cfg, T=32, seed=1), tokens(cfg, T=32, seed=2)
    grid32 = patch_grid(cfg, params, clean32)
    res["one_long"] = sw.sweep((cfg, params), corrupt32, grid32, logit_diff, mesh=one, micro_rows=0, **kw)
    res["eight_micro"], plan = sw.sweep((cfg, params), corrupt32, grid32, logit_diff, return_plan=True,
                                        micro_rows=2 * 33, **kw)
    assert plan.layouts and min(plan.micro.values()) > 0, plan.micro
    res["eight_buckets"] = sw.sweep((cfg, params), corrupt, grid, logit_diff, packing=False, **kw)
    two_d = Mesh(np.array(jax.devices()).reshape(4, 2), ("variants", "model"))
    res["model_axis"] = sw.sweep((cfg, params), corrupt, grid, logit_diff, mesh=two_d, **kw)
    sh = sw.param_shardings(params, two_d)
    res["n_split"] = np.array(sum("model" in str(s.spec) for s in jax.tree.leaves(sh)))
    res["plain_eight"] = sw.sweep((cfg, params), corrupt, grid, logit_diff, shortcuts=False, **kw)
    np.savez(out, **res)


def _dist(rank, nprocs, port, out):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=nprocs, process_id=rank)
    import interpjax.sweep as sw

    assert jax.process_count() == nprocs and len(jax.devices()) == nprocs * len(jax.local_devices())
    cfg, params = make_model("rotary")
    clean, corrupt = tokens(cfg, seed=1), tokens(cfg, seed=2)
    grid = patch_grid(cfg, params, clean)
    vals, plan = sw.sweep((cfg, params), corrupt, grid, logit_diff, progress=False, return_plan=True,
                          position_buckets=2)
    assert plan.n_devices == len(jax.devices())
    np.save(out.replace(".npy", f".{rank}.npy"), vals)
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "resume":
        _resume(args[0], args[1], args[2], float(args[3]) if len(args) > 3 else 0.0)
    elif mode == "devices":
        _devices(args[0])
    elif mode == "dist":
        _dist(int(args[0]), int(args[1]), int(args[2]), args[3])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
