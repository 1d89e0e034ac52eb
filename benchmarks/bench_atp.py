#!/usr/bin/env python
"""Attribution patching against the exact W2 sweep, side by side in one run (../shared/bench/WORKLOADS.md:
GPT-2-small-shaped random model, B=8 x T=32, resid_pre patching over 12 layers x 32 positions, metric
logit[A] - logit[B] at the last position, mean over prompts):

    python benchmarks/bench_atp.py [--quick] [--repeats 3] [--top-share 0.05] [--json OUT]

Timed after compilation (median of ``--repeats``), each in forward-equivalents (one plain jitted
forward of the clean batch, logits included, is 1):

- ``forward``: the unit;
- ``atp``: ``interpjax.atp`` of every cell (one clean + one corrupted forward + one backward);
- ``exact``: ``sweep.patching`` of every cell (the minimal-recompute sweep W2 times);
- ``verify``: ``interpjax.atp.verify`` of the top ``--top-share`` cells by |estimate| (no random
  cells), exactly, in one sweep over explicit cells.

Goals (the circuits issue): atp <= 3 forward-equivalents; atp + verify <= 10% of the exact sweep.
Reported beside them: Spearman of |AtP| vs |exact| over all cells, the recall of the exact top cells
among the estimated ones, and verify's values against the exact sweep's (they must agree).
The weights are the shared benchmark file (``bench_peers.py --make-weights``, made on first use).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (matmul_peak, machine_info, load_interpjax_model)
import bench_common as bcm  # noqa: E402

VERIFY_TOL = 1e-4  # max |verify - exact| / max |exact| over the verified cells


def ensure_weights(cache: Path, bench_config) -> None:
    """Build the shared GPT-2-small-shaped weights with this interpreter when they are missing."""
    if not (cache / bcm.WEIGHTS_DIRNAME / "model.safetensors").is_file():
        cmd = [sys.executable, str(Path(__file__).resolve().parent / "bench_peers.py"), "--make-weights",
               "--cache", str(cache)] + (["--bench-config", str(bench_config)] if bench_config else [])
        subprocess.run(cmd, check=True)


def measure(cfg, params, bc, quick: bool, repeats: int, top_share: float) -> dict:
    """Time forward, atp, exact and verify on the W2 grid; compare the estimate with the exact grid."""
    import jax
    import jax.numpy as jnp

    import interpjax
    from interpjax import sweep as sw
    from interpjax.methods import atp as A

    inp = bcm.workload_inputs(bc)
    clean, corrupted = np.asarray(inp["clean"]), np.asarray(inp["corrupted"])
    layers, _, positions = bench.sweep_grid(bc, quick)
    model = (cfg, params)
    ta, tb = bc.TOKEN_A, bc.TOKEN_B

    def metric(out):
        lg = out.logits(-1, (ta, tb))
        return jnp.mean(lg[:, 0] - lg[:, 1])

    fwd = jax.jit(lambda p, t: interpjax.forward(cfg, p, t))
    toks = jnp.asarray(clean)

    def timed(run):
        """(median wall seconds, last result) by the shared protocol: one warm call, then ``repeats``."""
        r = bcm.time_protocol(run, repeats=repeats, sync=jax.block_until_ready)
        return r["median_s"], r["result"]

    t_fwd, _ = timed(lambda: fwd(params, toks))
    t_atp, est = timed(lambda: A.atp(model, clean, corrupted, metric, site="resid_pre", layers=layers,
                                     positions=positions))
    t_exact, exact = timed(lambda: sw.patching(model, clean, corrupted, metric, site="resid_pre", layers=layers,
                                               positions=positions, progress=False))
    x_LP = np.asarray(exact.values)                      # exact patched metric per cell
    e_LP = np.asarray(est.effects)                       # estimated effect per cell
    xe_LP = x_LP - float(est.baseline)                   # exact effect (baseline: the corrupted run)
    n_cells = e_LP.size
    top_k = max(1, int(round(top_share * n_cells)))
    t_verify, v = timed(lambda: A.verify(model, clean, corrupted, metric, est, top_k=top_k, n_random=0))
    top_exact = set(np.argsort(-np.abs(xe_LP).ravel())[:top_k].tolist())
    top_est = set(np.argsort(-np.abs(e_LP).ravel())[:top_k].tolist())
    li, pi = list(v.axes).index("layer"), list(v.axes).index("position")
    rows = [(layers.tolist().index(int(c[li])), positions.tolist().index(int(c[pi]))) for c in v.cells]
    v_err = max(abs(float(val) - float(x_LP[i, j])) for (i, j), val in zip(rows, np.asarray(v.exact)))
    scale = float(np.abs(x_LP).max())
    return {
        "grid": {"layers": len(layers), "positions": len(positions), "cells": n_cells, "B": clean.shape[0],
                 "T": clean.shape[1]},
        "seconds": {"forward": t_fwd, "atp": t_atp, "exact": t_exact, "verify": t_verify},
        "forward_equivalents": {"atp": t_atp / t_fwd, "exact": t_exact / t_fwd, "verify": t_verify / t_fwd,
                                "atp_plus_verify": (t_atp + t_verify) / t_fwd},
        "atp_plus_verify_over_exact": (t_atp + t_verify) / t_exact,
        "top_k": top_k,
        "spearman_abs": A.spearman(np.abs(e_LP), np.abs(xe_LP)),
        "spearman": A.spearman(e_LP, xe_LP),
        "top_recall": len(top_exact & top_est) / top_k,
        "verify_max_rel_err": v_err / scale if scale > 0 else v_err,
        "verify_spearman": float(v.spearman),
    }


def report(r: dict) -> None:
    s, f = r["seconds"], r["forward_equivalents"]
    g = r["grid"]
    print(f"AtP on W2: {g['layers']} layers x {g['positions']} positions = {g['cells']} cells, B{g['B']} x T{g['T']}")
    print(f"  forward          {s['forward'] * 1e3:9.1f} ms   1.00 forward-equivalents")
    print(f"  atp              {s['atp'] * 1e3:9.1f} ms   {f['atp']:.2f}   (goal <= 3)")
    print(f"  exact sweep      {s['exact'] * 1e3:9.1f} ms   {f['exact']:.2f}")
    print(f"  verify top {r['top_k']:<4d}  {s['verify'] * 1e3:9.1f} ms   {f['verify']:.2f}")
    print(f"  (atp + verify) / exact = {r['atp_plus_verify_over_exact']:.3f}   (goal <= 0.10)")
    print(f"  Spearman |AtP| vs |exact| {r['spearman_abs']:.3f} (signed {r['spearman']:.3f}); "
          f"top-{r['top_k']} recall {r['top_recall']:.2f}; verify vs exact max rel err {r['verify_max_rel_err']:.1e}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the 2 x 2 corner of the grid, 1 timed run (smoke test)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--top-share", type=float, default=0.05, help="share of cells verify re-measures (default 0.05)")
    p.add_argument("--cache", type=Path, default=bcm.default_cache_dir())
    p.add_argument("--bench-config", type=Path, default=None)
    p.add_argument("--json", metavar="OUT", help="write the results here (atomically)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats={args.repeats} must be >= 1")
    if not 0 < args.top_share <= 1:
        raise SystemExit(f"--top-share={args.top_share} must be in (0, 1]")
    if args.quick:
        args.repeats = 1
    bc = bcm.load_bench_config(args.bench_config)
    ensure_weights(args.cache, args.bench_config)
    info = bench.machine_info()
    bench.print_machine(info)
    load0 = bcm.load_average()
    cfg, params = bench.load_interpjax_model(args)
    res = measure(cfg, params, bc, args.quick, args.repeats, args.top_share)
    report(res)
    ok = res["verify_max_rel_err"] <= VERIFY_TOL
    print(f"verify agrees with the exact sweep (<= {VERIFY_TOL:g}): {ok}")
    res.update(machine=info, load_average_start=load0, load_average_end=bcm.load_average(), quick=args.quick,
               repeats=args.repeats, verify_tol=VERIFY_TOL, argv=sys.argv if argv is None else argv)
    if args.json:
        bcm.write_json_atomic(args.json, res)
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
