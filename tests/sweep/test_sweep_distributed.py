"""Sharded sweeps: 8 simulated CPU devices (and a 4 x 2 variants x model mesh) give the numbers of
one device; two processes joined by jax.distributed run one sharded sweep that agrees with the
single-process result. Each runs in subprocesses because device flags must precede jax's import."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).parent / "sweep_worker.py"
REPO = Path(__file__).resolve().parents[2]


def _env(**extra):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_eight_simulated_devices_equal_one(tmp_path):
    out = tmp_path / "dev.npz"
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    r = subprocess.run([sys.executable, str(WORKER), "devices", str(out)], env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = np.load(out)
    assert np.abs(res["one"]).max() > 1e-2
    np.testing.assert_allclose(res["eight"], res["one"], atol=1e-6)
    np.testing.assert_allclose(res["eight_micro"], res["one_long"], atol=1e-5)  # micro-batched, other matmul shapes
    np.testing.assert_allclose(res["eight_buckets"], res["one"], atol=1e-5)  # position buckets, not packed rows
    np.testing.assert_allclose(res["plain_eight"], res["one"], atol=1e-5)
    np.testing.assert_allclose(res["model_axis"], res["one"], atol=1e-5)  # params split over 'model'
    assert int(res["n_split"]) > 0


@pytest.mark.slow
def test_two_processes_with_jax_distributed_agree_with_one(tmp_path):
    out = tmp_path / "dist.npy"
    port = _free_port()
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen([sys.executable, str(WORKER), "dist", str(rank), "2", str(port), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=900)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(l[-3000:] for l in logs)
    sys.path.insert(0, str(Path(__file__).parent))
    import interpjax.sweep as sw
    from sweep_worker import logit_diff, make_model, patch_grid, tokens

    cfg, params = make_model("rotary")
    clean, corrupt = tokens(cfg, seed=1), tokens(cfg, seed=2)
    single = sw.sweep((cfg, params), corrupt, patch_grid(cfg, params, clean), logit_diff, progress=False,
                      position_buckets=2)
    for rank in range(2):
        got = np.load(tmp_path / f"dist.{rank}.npy")
        np.testing.assert_allclose(got, single, atol=1e-6)
