"""``benchmarks/bench_real.py``: the quick mode of every subcommand on the real SmolLM2 (the session's
``real_lm`` models, loaded once): each runs interpjax and transformers side by side and their arrays
agree. Timings are written but never asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_real_lm

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_real  # noqa: E402

SMOL = "smollm2-135m-instruct"


def _run(real_lm, tmp_path, *argv):
    out = tmp_path / f"{argv[0]}.json"
    rc = bench_real.main([*argv, "--quick", "--model", SMOL, "--json", str(out)], loader=real_lm)
    res = json.loads(out.read_text())
    assert rc == 0, res.get("agreement")
    assert res["machine"]["cpu_model"] and res["matmul_peak"]["used_flops"] > 0
    return res


@pytest.mark.slow
@needs_real_lm(SMOL)
def test_every_quick_subcommand_agrees_with_transformers(real_lm, tmp_path):
    w1 = _run(real_lm, tmp_path, "w1")
    assert w1["grid"] == [2, 2] and w1["agreement"]["rel_err"] <= bench_real.SWEEP_TOL
    assert np.isfinite(np.asarray(w1["values"]["interpjax"])).all()
    assert w1["interpjax"]["useful_flops"] == w1["useful"]["flops"] > 0

    w2 = _run(real_lm, tmp_path, "w2")
    assert w2["grid"] == [2, 2] and w2["agreement"]["rel_err"] <= bench_real.SWEEP_TOL

    w5 = _run(real_lm, tmp_path, "w5")
    assert w5["agreement"]["rows_identical_share"] >= bench_real.W5_MIN_SHARE
    assert np.asarray(w5["tokens"]["interpjax"]).shape == (4, 8 + 4)

    fw = _run(real_lm, tmp_path, "forward")
    assert set(fw["shapes"]) == {"B1_T16", "B1_T32"}
    assert all(e["agreement"]["rel"] <= bench_real.LOGIT_TOL for e in fw["shapes"].values())

    sc = _run(real_lm, tmp_path, "scaling")
    assert {p["series"] for p in sc["points"]} == {"variants", "depth", "seq"}
    assert sc["fit"]["flops_per_s"] > 0 and Path(sc["png"]).is_file()
