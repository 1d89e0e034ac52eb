"""interpjax.sweep.cost: the FLOP count of the minimal recompute against a hand count on a tiny
config, agreement with the benchmark's W1/W2 formulas, the time model and its fit, and bad input."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from interpjax import Config
from interpjax.sweep import cost

# a tiny Llama-like config: GQA (4 heads, 2 kv heads), gated MLP, layer 1 windowed (w = 2)
TINY = Config(vocab_size=11, d_model=8, n_layers=3, n_heads=4, d_head=2, d_mlp=5, n_ctx=16, n_kv_heads=2,
              norm="rmsnorm", norm_bias=False, positions="rotary", rotary_dim=2, mlp="gated", activation="silu",
              window=(0, 2, 0))


def _hand_row(t, layer):
    """FLOPs of one prompt's query position t in TINY's layer ``layer``, written out by hand."""
    q = 8 * 4 * 2          # D x N x H
    kv = 2 * (8 * 2 * 2)   # k and v: D x K x H each
    o = 4 * 2 * 8          # N x H x D
    mlp = 3 * 8 * 5        # gate, up, down: D x F each
    keys = min(t + 1, 2) if layer == 1 else t + 1
    return 2 * (q + kv + o + mlp) + 4 * (4 * 2) * keys


def test_flops_match_a_hand_count_on_a_tiny_config():
    B, T = 2, 4
    assert _hand_row(0, 0) == 2 * (64 + 64 + 64 + 120) + 32  # 656
    # one layer, positions 1..3
    assert cost.layer_flops(TINY, 1, [1, 2, 3], batch=B) == B * sum(_hand_row(t, 1) for t in (1, 2, 3))
    # a plain forward with logits of the whole vocabulary at every position
    full = B * sum(_hand_row(t, l) for l in range(3) for t in range(T))
    assert cost.forward_flops(TINY, B, T) == full + 2 * B * T * 8 * 11
    # steering: variants at layers 0 and 2 (x 3 coefficients), all positions, 2 logits at the last position
    est = cost.estimate(TINY, 6, B, T, kind="steering", layers=[0, 2])
    from_0, from_2 = full, B * sum(_hand_row(t, 2) for t in range(T))
    readout = 6 * 2 * B * 8 * 2
    assert est["base_flops"] == full
    assert est["variant_block_flops"] == 3 * from_0 + 3 * from_2
    assert est["flops"] == full + 3 * from_0 + 3 * from_2 + readout
    assert est["naive_flops"] == 6 * full + readout
    assert est["seconds"] is None
    # patching: layers {1, 2} x positions {0, 3}, two base runs
    est = cost.estimate(TINY, 4, B, T, kind="patching", layers=[1, 2], positions=[0, -1])
    cell = lambda l, p: B * sum(_hand_row(t, m) for m in range(l, 3) for t in range(p, T))
    assert est["flops"] == 2 * full + cell(1, 0) + cell(1, 3) + cell(2, 0) + cell(2, 3) + 4 * 2 * B * 8 * 2
    # explicit start points; start layer n_layers (a final/logits edit) runs no layer
    got = cost.sweep_flops(TINY, B, T, [3, 2], [0, 1], n_ids=None, base_runs=0)
    assert got["variant_block_flops"] == B * sum(_hand_row(t, 2) for t in (1, 2, 3))
    assert got["readout_flops"] == 2 * B * 8 * 11 * 2


def test_time_model_and_fit():
    est = cost.estimate(TINY, 3, 1, 4, kind="forward", flops_per_s=1e6, overhead_s=0.5)
    assert est["seconds"] == pytest.approx(est["flops"] / 1e6 + 0.5)
    f = np.array([1e9, 1e10, 1e11])
    fitted = cost.fit(f, f / 2e9 + 0.25)
    assert fitted["flops_per_s"] == pytest.approx(2e9, rel=1e-9)
    assert fitted["overhead_s"] == pytest.approx(0.25, rel=1e-6)


def test_matches_the_benchmark_formulas_on_gpt2_small():
    """cost.estimate reproduces bench_common.useful_flops (W1, W2) for the GPT-2-small workloads."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_common as bcm

    bc = SimpleNamespace(D_MODEL=768, D_MLP=3072, N_LAYERS=12, B=8, T=32, COEFS=list(range(16)), D_VOCAB=50257)
    cfg = Config(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024)
    assert cost.estimate(cfg, 12 * 16, 8, 32, kind="steering")["flops"] == bcm.useful_flops(bc, "W1")
    assert cost.estimate(cfg, 12 * 32, 8, 32, kind="patching")["flops"] == bcm.useful_flops(bc, "W2")
    assert cost.forward_flops(cfg, 8, 128) == bcm.useful_flops(bc, "W0", seq=128)


@pytest.mark.parametrize("kw, match", [
    (dict(n_variants=0), "n_variants must be >= 1, got 0"),
    (dict(n_variants=2.5), "n_variants must be an integer, got 2.5"),
    (dict(n_variants=True), "n_variants must be an integer, got True"),
    (dict(batch=-1), "batch must be >= 1, got -1"),
    (dict(seq=17), r"seq must be in 1..16, got 17"),
    (dict(kind="ablation"), "kind='ablation' is not one of"),
    (dict(n_variants=7), "n_variants=7 is not a multiple of the 3 layers"),
    (dict(layers=[3]), r"layers \[3\] out of range: valid layers are 0..2"),
    (dict(layers=[0.5]), r"layers must be integers, got \[0.5\]"),
    (dict(layers=[]), "layers is empty"),
    (dict(flops_per_s=0), "flops_per_s must be a finite number > 0, got 0"),
    (dict(flops_per_s=float("nan")), "flops_per_s must be a finite number > 0, got nan"),
    (dict(overhead_s=-1.0), "overhead_s must be a finite number >= 0, got -1.0"),
    (dict(n_ids=12), "n_ids must be in 1..11, got 12"),
    (dict(kind="patching", n_variants=6, positions=[4]), r"positions \[4\] out of range"),
    (dict(kind="patching", n_variants=5), "n_variants=5 is not a multiple of the 3 layers x 4 positions"),
])
def test_bad_input_is_a_value_error_naming_the_value(kw, match):
    args = dict(n_variants=6, batch=1, seq=4)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        cost.estimate(TINY, args.pop("n_variants"), args.pop("batch"), args.pop("seq"), **args)


def test_bad_config_and_fit_input():
    with pytest.raises(ValueError, match="cfg must be an interpjax Config"):
        cost.estimate(object(), 1, 1, 1)
    with pytest.raises(ValueError, match="start_positions has 1 entries for 2 start_layers"):
        cost.sweep_flops(TINY, 1, 4, [0, 1], [0])
    with pytest.raises(ValueError, match="at least two"):
        cost.fit([1.0], [1.0])
