"""The accelerator benchmark's code path (``benchmarks/bench.py bigsteer``) on a tiny Llama-shaped model
on CPU: it runs, its sampled cells agree with direct forwards, and its FLOP count is the analytic
minimal recompute."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench  # noqa: E402


def test_bigsteer_tiny_runs_and_agrees(tmp_path):
    out = tmp_path / "r.json"
    assert bench.main(["bigsteer", "--shape", "tiny", "--dtype", "float32", "--coefs", "6", "--repeats", "1",
                       "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["grid"] == [4, 6] and res["finite"]
    assert res["max_rel_err_sampled"] <= 1e-4
    assert 0 < res["fraction_of_peak"]


def test_steering_flops_counts_the_minimal_recompute():
    from interpjax import Config

    cfg = Config(**bench.BIGSTEER_SHAPES["tiny"])
    D, F, n, B, T, C = cfg.d_model, cfg.d_mlp, cfg.n_layers, 2, 3, 5
    per_row = 2 * (4 * D * D + 3 * D * F)  # q, k, v, o (no GQA here) + gated MLP
    attn = 4 * D * (1 + 2 + 3)  # positions 0..2 attend to 1..3 keys
    layer = B * (T * per_row + attn)
    passes = n + C * (n + (n - 1) + (n - 2) + (n - 3))
    assert bench.steering_flops(cfg, B, T, C) == pytest.approx(passes * layer + 2 * C * n * B * D * 2)
    with pytest.raises(SystemExit, match="--coefs"):
        bench.main(["bigsteer", "--shape", "tiny", "--coefs", "0"])
