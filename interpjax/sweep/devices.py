"""Where a sweep runs: the device mesh, placing arrays on it (one process or many), the parameter
shardings of a 'model' axis, and gathering results back to every process."""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["default_mesh", "gather", "param_shardings", "put"]


def default_mesh():
    """Every device of every process on one 'variants' axis."""
    from jax.sharding import Mesh

    return Mesh(np.array(jax.devices()), ("variants",))


def put(x, sharding):
    """Place a host/device array with ``sharding`` (works across processes too)."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])


def param_shardings(params, mesh):
    """Replicated params, or, when ``mesh`` has a 'model' axis, each weight split along its
    largest axis divisible by that axis' size (never the stacked layer axis)."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    if "model" not in mesh.axis_names:
        return jax.tree.map(lambda _: NamedSharding(mesh, P()), params)
    m = mesh.shape["model"]

    def spec(path, a):
        skip = 1 if any(getattr(k, "key", None) == "layers" for k in path) else 0
        best = None
        for ax in range(skip, a.ndim):
            if a.shape[ax] % m == 0 and a.shape[ax] >= m and (best is None or a.shape[ax] > a.shape[best]):
                best = ax
        parts = [None] * a.ndim
        if best is not None:
            parts[best] = "model"
        return NamedSharding(mesh, P(*parts))

    return jax.tree_util.tree_map_with_path(spec, params)


def gather(out):
    """Device results -> numpy on every process (an all-gather across processes)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, out)
    from jax.experimental import multihost_utils

    return jax.tree.map(lambda o: np.asarray(multihost_utils.process_allgather(o, tiled=True)), out)
