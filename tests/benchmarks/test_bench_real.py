"""``benchmarks/bench_real.py``: the quick mode of every subcommand, driven through ``main(argv,
loader=)`` with the session's tiny random Llama (interpjax and transformers), so the drivers are
exercised in seconds; each runs the two libraries side by side and their arrays agree. The real
models' own agreement is tested in ``tests/io/test_real_model.py``. Timings are written but never
asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_real  # noqa: E402

NAME = "tiny-llama"


def _run(tiny_model, tmp_path, *argv):
    out = tmp_path / f"{argv[0]}.json"
    rc = bench_real.main([*argv, "--quick", "--model", NAME, "--json", str(out)],
                         loader=lambda name: tiny_model("llama"))
    res = json.loads(out.read_text())
    assert rc == 0, res.get("agreement")
    assert res["machine"]["cpu_model"] and res["matmul_peak"]["used_flops"] > 0
    return res


def test_every_quick_subcommand_agrees_with_transformers(tiny_model, tmp_path):
    w1 = _run(tiny_model, tmp_path, "w1")
    assert w1["grid"] == [2, 2] and w1["agreement"]["rel_err"] <= bench_real.SWEEP_TOL
    assert np.isfinite(np.asarray(w1["values"]["interpjax"])).all()
    assert w1["interpjax"]["useful_flops"] == w1["useful"]["flops"] > 0

    w2 = _run(tiny_model, tmp_path, "w2")
    assert w2["grid"] == [2, 2] and w2["agreement"]["rel_err"] <= bench_real.SWEEP_TOL

    w5 = _run(tiny_model, tmp_path, "w5")
    assert w5["agreement"]["rows_identical_share"] >= bench_real.W5_MIN_SHARE
    assert np.asarray(w5["tokens"]["interpjax"]).shape == (4, 8 + 4)

    fw = _run(tiny_model, tmp_path, "forward")
    assert set(fw["shapes"]) == {"B1_T16", "B1_T32"}
    assert all(e["agreement"]["rel"] <= bench_real.LOGIT_TOL for e in fw["shapes"].values())

    sc = _run(tiny_model, tmp_path, "scaling")
    assert {p["series"] for p in sc["points"]} == {"variants", "depth", "seq"}
    assert sc["fit"]["flops_per_s"] > 0 and Path(sc["png"]).is_file()
