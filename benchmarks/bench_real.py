#!/usr/bin/env python
"""Benchmarks on the real models (SmolLM2-135M-Instruct, Gemma 3 270M), interpjax and transformers
side by side in one process, one subcommand each:

    python benchmarks/bench_real.py w1 [--quick] [--json OUT]        steering sweep, 30 layers x 16 coefs
    python benchmarks/bench_real.py w2 [--quick] [--json OUT]        resid_pre patching, 30 layers x 32 positions
    python benchmarks/bench_real.py w5 [--quick] [--json OUT]        steered generation, 64 rows x 32 tokens
    python benchmarks/bench_real.py forward [--model gemma-3-270m]   plain forward at T=512 (B=2) and T=2048 (B=1)
    python benchmarks/bench_real.py scaling [--quick] [--png OUT]    sweep time vs variants, depth, sequence length

Every subcommand loads the model twice -- interpjax (``interpjax.load(name)``) and transformers
(``from_pretrained(folder, gguf_file=...)`` of the same GGUF file, fp32) --, checks that the two
agree (the tolerance is printed and stored), and measures the fp32 matmul peak in the same run
(``bench.matmul_peak``, before and after; the best is used). "useful FLOP/s" is the analytic FLOP
count of the minimal recompute (``interpjax.sweep.cost``: grouped-query attention, gated MLPs and
sliding windows counted exactly) divided by the median wall time, as a fraction of that peak.
For transformers its *own* work (what its idiom computes) is counted too, so that the host's
limit ratio -- what interpjax would reach at 100% of the peak on its minimal work, against
transformers at the FLOP/s it achieves -- can be printed beside the measured ratio:
``limit = (transformers FLOPs / useful FLOPs) x peak / transformers' achieved FLOP/s``.

Inputs follow ../shared/bench's style: random token ids (numpy seeds below), and the steering
vector is the unit direction between the unembedding rows of two tokens (" sea" minus " land"),
whose logit difference at the last position (mean over prompts) is the metric.

``--quick`` runs every subcommand on tiny sizes (2 layers, a few coefficients / positions / rows,
short sequences, 1 timed run): the smoke test ``tests/benchmarks/test_bench_real.py`` calls it on
SmolLM2 with the session's already loaded models (``main(argv, loader=...)``).

JSON results (``--json``, default ``$INTERPJAX_BENCH_CACHE/real/<subcommand>[_quick].json``) are
written atomically and carry ``bench.machine_info()``, the load average and the peak.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (matmul_peak, machine_info, print_machine)
import bench_common as bcm  # noqa: E402

SMOL = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"
TOKEN_SEED, CORRUPT_SEED = 1234, 4321
SWEEP_TOL = 1e-3    # max|a - ref| / max|ref| of the sweep metrics (WORKLOADS.md's bar)
LOGIT_TOL = 1e-4    # max|Δlogit| / max|logit| of a plain forward
W5_MIN_SHARE = 0.5  # "most rows": share of rows whose 32 greedy tokens are identical


# ---------------------------------------------------------------------------------------------
# models and inputs


def load_pair(name: str):
    """(interpjax Model in fp32, transformers model reading the same GGUF file in fp32, eval mode)."""
    import torch
    from transformers import AutoModelForCausalLM

    import interpjax
    from interpjax.io.gguf import named_file

    path = named_file(name)
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return interpjax.load(name), hf.eval()


def set_threads() -> int:
    """torch gets one intra-op thread per available core (XLA sizes its pool to the cores itself)."""
    import torch

    n = bcm.available_cores()
    torch.set_num_threads(n)
    return n


def random_tokens(cfg, B: int, T: int, seed: int) -> np.ndarray:
    """int64 [B, T] token ids uniform over the vocabulary (seeded)."""
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, size=(B, T), dtype=np.int64)


def metric_ids(model) -> tuple:
    """Token ids (A, B) of " sea" and " land" (first sub-token), or (1, 2) without a tokenizer."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return 1, 2
    a = tok(" sea", add_special_tokens=False)["input_ids"][0]
    b = tok(" land", add_special_tokens=False)["input_ids"][0]
    return int(a), int(b)


def steering_vector(model, ids) -> np.ndarray:
    """float32 [D]: the unit direction E[A] - E[B] between the two tokens' unembedding rows."""
    p = model.params
    W_VD = np.asarray(p["embed"]["tok"] if model.cfg.tie_embeddings else np.asarray(p["unembed"]["w"]).T)
    d = W_VD[ids[0]].astype(np.float64) - W_VD[ids[1]].astype(np.float64)
    return (d / np.linalg.norm(d)).astype(np.float32)


def resid_scale(model, tokens_BT) -> float:
    """Median |resid_pre| at the middle layer on (up to 4 of) ``tokens_BT``: the unit of the
    steering coefficients, so that they steer visibly."""
    cfg = model.cfg
    _, cache = model.run_with_cache(np.asarray(tokens_BT)[:4], sites=["resid_pre"], layers=[cfg.n_layers // 2])
    return float(np.median(np.linalg.norm(np.asarray(cache["resid_pre"])[0], axis=-1)))


def max_abs_diff(a, b, rows: int = 256) -> float:
    """max|a - b| over the leading axes, a block of rows at a time (logits of 2048 x 262144 floats
    are 2 GiB; a full difference would need two more of those)."""
    a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return float(max(np.max(np.abs(a2[i:i + rows] - b2[i:i + rows])) for i in range(0, a2.shape[0], rows)))


def matmul_ceiling(cfg, rows: int, repeats: int = 5) -> dict:
    """FLOP/s that one layer's own dense matmuls reach in isolation on ``rows`` rows (jnp.dot, best
    of ``repeats``; q, k, v, o projections and the MLP's matrices, shapes from ``cfg``): the ceiling
    the model's shapes put on a sweep's useful FLOP/s, below the square-matrix peak."""
    import jax
    import jax.numpy as jnp

    D, NH, KH, F = cfg.d_model, cfg.n_heads * cfg.d_head, cfg.kv_heads * cfg.d_head, cfg.d_mlp
    shapes = [("q", D, NH), ("k", D, KH), ("v", D, KH), ("o", NH, D)]
    shapes += [("gate", D, F), ("up", D, F)] if cfg.mlp == "gated" else [("up", D, F)]
    shapes += [("down", F, D)]
    dot = jax.jit(jnp.dot)
    rng = np.random.default_rng(0)
    total_f, total_t, each = 0.0, 0.0, {}
    for name, k, n in shapes:
        a = jnp.asarray(rng.standard_normal((rows, k), dtype=np.float32))
        b = jnp.asarray(rng.standard_normal((k, n), dtype=np.float32))
        dot(a, b).block_until_ready()
        best = np.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            dot(a, b).block_until_ready()
            best = min(best, time.perf_counter() - t0)
        f = 2.0 * rows * k * n
        each[name] = {"shape": [rows, k, n], "flops_per_s": f / best}
        total_f, total_t = total_f + f, total_t + best
    return {"rows": rows, "flops_per_s": total_f / total_t, "per_matmul": each}


def peak_now(threads: int, quick: bool) -> dict:
    """bench.matmul_peak (jnp.dot and torch.mm on 1024..3072 squares); --quick: bench.dot_peak on
    256/512 squares only (a smoke run's stand-in, not a peak)."""
    if quick:
        import jax.numpy as jnp

        f = bench.dot_peak(jnp.float32, sizes=(256, 512), repeats=1)
        return {"jax": f, "torch": 0.0, "peak_flops": f, "quick_stand_in": True}
    return bench.matmul_peak(threads, repeats=5)


def begin(args, what: str) -> dict:
    """Machine facts, load average and the matmul peak at the start of a subcommand."""
    threads = set_threads()
    info = bench.machine_info()
    bench.print_machine(info)
    load0 = bcm.load_average()
    p0 = peak_now(threads, args.quick)
    print(f"{what}: load average {load0}; fp32 matmul peak now: jax {p0['jax'] / 1e9:.0f}, torch "
          f"{p0['torch'] / 1e9:.0f} GFLOP/s", flush=True)
    return {"machine": info, "threads": threads, "load_average_start": load0, "peak_start": p0}


def end(args, ctx: dict, res: dict) -> dict:
    """The end-of-run peak (best of start and end is the one divided by) and load average."""
    p1 = peak_now(ctx["threads"], args.quick)
    peak = max(ctx["peak_start"]["peak_flops"], p1["peak_flops"])
    res.update(machine=ctx["machine"], threads=ctx["threads"], quick=bool(args.quick), repeats=args.repeats,
               load_average={"start": ctx["load_average_start"], "end": bcm.load_average()},
               matmul_peak={"start": ctx["peak_start"], "end": p1, "used_flops": peak})
    return res


def timed(run, warm, repeats: int, sync):
    """bench_common's protocol (warm-up, then ``repeats`` timed runs); returns (timings, result)."""
    r = bcm.time_protocol(run, warm, repeats=repeats, sync=sync)
    out = r.pop("result")
    return r, out


def jax_sync(x):
    import jax

    return jax.block_until_ready(x)


def side(r: dict, flops: float, peak: float, work_flops: float | None = None) -> dict:
    """One library's row: timings + useful FLOP/s fraction (+ its own work's FLOP/s)."""
    out = {k: r[k] for k in ("warmup_s", "median_s", "min_s", "all_s", "cpu_s_median", "cpu_share",
                             "peak_rss_increase_bytes")}
    out["useful_flops"] = flops
    out["useful_frac_of_peak"] = flops / r["median_s"] / peak
    if work_flops is not None:
        out["work_flops"] = work_flops
        out["achieved_flops_per_s"] = work_flops / r["median_s"]
        out["achieved_frac_of_peak"] = work_flops / r["median_s"] / peak
    return out


def compare(res: dict, peak: float) -> None:
    """Ratio interpjax / transformers and the host's limit ratio, into ``res``."""
    ij, hf = res["interpjax"], res["transformers"]
    res["speedup"] = hf["median_s"] / ij["median_s"]
    if "work_flops" in hf:
        res["limit_ratio"] = (hf["work_flops"] / ij["useful_flops"]) * peak / hf["achieved_flops_per_s"]


def shape_ceiling(cfg, quick: bool) -> dict:
    """``matmul_ceiling`` at the rows of one CPU micro-batch step of the sweep engine."""
    from interpjax.sweep.plan import default_micro_rows

    rows = 256 if quick else default_micro_rows(cfg, 4) or 2048
    return matmul_ceiling(cfg, rows, repeats=1 if quick else 5)


def finish_ceiling(res: dict, peak: float) -> None:
    c = res["shape_ceiling"]
    c["frac_of_peak"] = c["flops_per_s"] / peak
    res["interpjax"]["useful_frac_of_shape_ceiling"] = res["interpjax"]["useful_flops"] / res["interpjax"]["median_s"] \
        / c["flops_per_s"]
    print(f"  the layer's own matmul shapes on {c['rows']} rows reach {c['flops_per_s'] / 1e9:.0f} GFLOP/s "
          f"= {c['frac_of_peak']:.0%} of the peak; interpjax's useful FLOP/s = "
          f"{res['interpjax']['useful_frac_of_shape_ceiling']:.0%} of that")


def report(title: str, res: dict, unit_rows=None) -> None:
    peak = res["matmul_peak"]["used_flops"]
    rows = []
    for lib in ("interpjax", "transformers"):
        e = res[lib]
        rows.append([lib, f"{e['median_s']:.3f}", f"{e['min_s']:.3f}", f"{e['warmup_s']:.2f}",
                     f"{e['useful_frac_of_peak']:.0%}",
                     f"{e['achieved_frac_of_peak']:.0%}" if "achieved_frac_of_peak" in e else "-",
                     f"{e['peak_rss_increase_bytes'] / 2 ** 20:,.0f}"] + (unit_rows(e) if unit_rows else []))
    extra = ["tokens/s"] if unit_rows else []
    bcm.print_table(f"{title} (fp32 matmul peak {peak / 1e9:.0f} GFLOP/s; {res['repeats']} timed runs)", rows,
                    ["", "median s", "min s", "warm-up s", "useful/peak", "own work/peak", "peak RSS MiB"] + extra)
    msg = f"interpjax speedup {res['speedup']:.2f}x"
    if "limit_ratio" in res:
        msg += f" (this host's limit ratio {res['limit_ratio']:.2f}x)"
    print(msg)
    for k, v in res.get("agreement", {}).items():
        print(f"  agreement {k}: {v}")


# ---------------------------------------------------------------------------------------------
# transformers idioms


def _hf_layers(hf):
    return hf.model.layers


def hf_steering(hf, tokens_BT, v_D, coefs_C, layers, ids, rows_max: int = 512):
    """[L, C] mean logit difference, transformers: per layer one forward pre-hook on the decoder
    layer adding coef * v to its input, the C coefficients stacked as rows (C x B rows, cut into
    forwards of at most ``rows_max`` rows), ``logits_to_keep=1``, ``use_cache=False``."""
    import torch

    B, T = tokens_BT.shape
    C = len(coefs_C)
    toks = torch.from_numpy(np.tile(tokens_BT, (C, 1))).long()  # row c * B + b
    coef_R = torch.from_numpy(np.repeat(np.asarray(coefs_C, np.float32), B))
    v = torch.from_numpy(np.asarray(v_D, np.float32))
    out = np.zeros((len(layers), C), np.float64)
    state = {}

    def hook(mod, args):
        h = args[0]
        return (h + state["coef"][:, None, None] * v,) + tuple(args[1:])

    with torch.inference_mode():
        for li, l in enumerate(layers):
            handle = _hf_layers(hf)[int(l)].register_forward_pre_hook(hook)
            try:
                diffs = []
                for a in range(0, C * B, rows_max):
                    state["coef"] = coef_R[a:a + rows_max]
                    lg = hf(toks[a:a + rows_max], logits_to_keep=1, use_cache=False).logits[:, -1]
                    diffs.append((lg[:, ids[0]] - lg[:, ids[1]]).double())
                out[li] = torch.cat(diffs).reshape(C, B).mean(1).numpy()
            finally:
                handle.remove()
    return out


def hf_patching(hf, clean_BT, corrupted_BT, layers, positions, ids, rows_max: int = 512):
    """[L, P] mean logit difference, transformers: one clean run caching every decoder layer's
    input (forward pre-hooks on the base model, no head), then per layer the P patched positions
    stacked as rows of the corrupted prompts (P x B rows), a pre-hook writing the clean value at
    each row's position, ``logits_to_keep=1``, ``use_cache=False``."""
    import torch

    B, T = clean_BT.shape
    P = len(positions)
    cache = {}

    def grab(l):
        def fn(mod, args):
            cache[l] = args[0].detach().clone()
        return fn

    layers = [int(l) for l in layers]
    with torch.inference_mode():
        handles = [_hf_layers(hf)[l].register_forward_pre_hook(grab(l)) for l in layers]
        try:
            hf.model(torch.from_numpy(clean_BT).long(), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        toks = torch.from_numpy(np.tile(corrupted_BT, (P, 1))).long()  # row p * B + b
        pos_R = torch.from_numpy(np.repeat(np.asarray(positions, np.int64), B))
        b_R = torch.arange(P * B) % B
        out = np.zeros((len(layers), P), np.float64)
        state = {}

        def patch(mod, args):
            h = args[0].clone()
            r, p, b = state["rows"], state["pos"], state["b"]
            h[r, p] = state["clean"][b, p]
            return (h,) + tuple(args[1:])

        for li, l in enumerate(layers):
            handle = _hf_layers(hf)[l].register_forward_pre_hook(patch)
            try:
                diffs = []
                for a in range(0, P * B, rows_max):
                    n = min(rows_max, P * B - a)
                    state.update(rows=torch.arange(n), pos=pos_R[a:a + n], b=b_R[a:a + n], clean=cache[l])
                    lg = hf(toks[a:a + n], logits_to_keep=1, use_cache=False).logits[:, -1]
                    diffs.append((lg[:, ids[0]] - lg[:, ids[1]]).double())
                out[li] = torch.cat(diffs).reshape(P, B).mean(1).numpy()
            finally:
                handle.remove()
    return out


def hf_steered_generate(hf, prompts_BT, v_D, layer_B, coef_B, n_new: int):
    """[B, T0 + n_new] greedy tokens, transformers ``generate`` (KV cache, no stop token) with a
    forward pre-hook on each decoder layer some row steers: row b adds coef_b * v at every position
    (prompt and generated tokens) entering layer layer_b."""
    import torch
    from transformers import GenerationConfig

    v = torch.from_numpy(np.asarray(v_D, np.float32))
    layer_B = np.asarray(layer_B)
    handles = []

    def make(delta_B):
        def hook(mod, args):
            return (args[0] + delta_B[:, None, None] * v,) + tuple(args[1:])
        return hook

    for l in np.unique(layer_B).tolist():
        delta = torch.from_numpy(np.where(layer_B == l, np.asarray(coef_B, np.float32), 0).astype(np.float32))
        handles.append(_hf_layers(hf)[l].register_forward_pre_hook(make(delta)))
    gen_cfg = GenerationConfig(max_new_tokens=n_new, do_sample=False, eos_token_id=None, pad_token_id=0,
                               bos_token_id=None)
    try:
        with torch.inference_mode():
            ids = torch.from_numpy(np.asarray(prompts_BT)).long()
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gen_cfg)
    finally:
        for h in handles:
            h.remove()
    return out.numpy()


# ---------------------------------------------------------------------------------------------
# W1-real, W2-real


def _metric_fn(ids):
    import jax.numpy as jnp

    A, Bt = ids

    def metric(out):
        """mean_b logits[b, -1, A] - logits[b, -1, B]."""
        lg = out.logits(-1, (A, Bt))
        return jnp.mean(lg[:, 0] - lg[:, 1])

    return metric


def cmd_w1(args, loader) -> dict:
    from interpjax import sweep as sw
    from interpjax.sweep import cost

    ctx = begin(args, "W1-real steering")
    model, hf = loader(args.model)
    cfg = model.cfg
    q = args.quick
    B, T = (2, 8) if q else (8, 64)
    layers = np.array([0, cfg.n_layers - 1] if q else np.arange(cfg.n_layers), np.int32)
    ids = metric_ids(model)
    v = steering_vector(model, ids)
    tokens = random_tokens(cfg, B, T, TOKEN_SEED)
    scale = resid_scale(model, tokens)
    coefs = (np.linspace(-1, 1, 2 if q else 16) * scale).astype(np.float32)  # up to one |resid|
    metric = _metric_fn(ids)
    mp = (cfg, model.params)
    print(f"W1-real: {args.model}, {len(layers)} layers x {len(coefs)} coefficients, {B} prompts x {T} tokens; "
          f"metric logit[{ids[0]}] - logit[{ids[1]}] at the last position; coefficients -1..1 x |resid| = {scale:.1f}",
          flush=True)

    ij_r, ij_out = timed(lambda: sw.steering(mp, tokens, v, coefs, metric, layers=layers, progress=False).values,
                         None, args.repeats, jax_sync)
    gc.collect()
    hf_run = functools.partial(hf_steering, hf, tokens, v, coefs, layers, ids)
    hf_warm = functools.partial(hf_steering, hf, tokens, v, coefs, layers[:1], ids)  # every per-call shape once
    hf_r, hf_out = timed(hf_run, hf_warm, args.repeats, lambda x: x)
    ceiling = shape_ceiling(cfg, args.quick)
    res = end(args, ctx, {"subcommand": "w1", "shape_ceiling": ceiling, "model": args.model, "grid": [len(layers), len(coefs)],
                          "batch": B, "seq": T, "metric_ids": list(ids)})
    peak = res["matmul_peak"]["used_flops"]
    useful = cost.estimate(cfg, len(layers) * len(coefs), B, T, kind="steering", layers=layers)
    hf_work = len(layers) * cost.forward_flops(cfg, len(coefs) * B, T, readout_positions=1)
    res["interpjax"] = side(ij_r, useful["flops"], peak)
    res["transformers"] = side(hf_r, useful["flops"], peak, hf_work)
    res["transformers"]["idiom"] = "forward pre-hook per layer, coefficients stacked as rows, logits_to_keep=1"
    res["useful"] = useful
    err = bcm.rel_err(np.asarray(ij_out, np.float64), hf_out)
    res["agreement"] = {"rel_err": err, "tolerance": SWEEP_TOL, "ok": err <= SWEEP_TOL}
    res["values"] = {"interpjax": np.asarray(ij_out, np.float64), "transformers": hf_out}
    compare(res, peak)
    finish_ceiling(res, peak)
    report("W1-real steering", res)
    return res


def cmd_w2(args, loader) -> dict:
    from interpjax import sweep as sw
    from interpjax.sweep import cost

    ctx = begin(args, "W2-real patching")
    model, hf = loader(args.model)
    cfg = model.cfg
    q = args.quick
    B, T = (2, 8) if q else (8, 32)
    layers = np.array([0, cfg.n_layers - 1] if q else np.arange(cfg.n_layers), np.int32)
    positions = np.array([0, T - 1] if q else np.arange(T), np.int32)
    ids = metric_ids(model)
    clean, corrupted = random_tokens(cfg, B, T, TOKEN_SEED), random_tokens(cfg, B, T, CORRUPT_SEED)
    metric = _metric_fn(ids)
    mp = (cfg, model.params)
    print(f"W2-real: {args.model}, resid_pre patching {len(layers)} layers x {len(positions)} positions, "
          f"{B} prompts x {T} tokens", flush=True)

    def ij_run():
        return sw.patching(mp, clean, corrupted, metric, site="resid_pre", layers=layers, positions=positions,
                           progress=False).values

    ij_r, ij_out = timed(ij_run, None, args.repeats, jax_sync)
    gc.collect()
    hf_run = functools.partial(hf_patching, hf, clean, corrupted, layers, positions, ids)
    hf_warm = functools.partial(hf_patching, hf, clean, corrupted, layers[:1], positions, ids)
    hf_r, hf_out = timed(hf_run, hf_warm, args.repeats, lambda x: x)
    ceiling = shape_ceiling(cfg, args.quick)
    res = end(args, ctx, {"subcommand": "w2", "shape_ceiling": ceiling, "model": args.model, "grid": [len(layers), len(positions)],
                          "batch": B, "seq": T, "metric_ids": list(ids)})
    peak = res["matmul_peak"]["used_flops"]
    useful = cost.estimate(cfg, len(layers) * len(positions), B, T, kind="patching", layers=layers,
                           positions=positions)
    hf_work = (cost.forward_flops(cfg, B, T, readout_positions=0)
               + len(layers) * cost.forward_flops(cfg, len(positions) * B, T, readout_positions=1))
    res["interpjax"] = side(ij_r, useful["flops"], peak)
    res["transformers"] = side(hf_r, useful["flops"], peak, hf_work)
    res["transformers"]["idiom"] = "clean run cached by pre-hooks; per layer positions stacked as rows, logits_to_keep=1"
    res["useful"] = useful
    err = bcm.rel_err(np.asarray(ij_out, np.float64), hf_out)
    res["agreement"] = {"rel_err": err, "tolerance": SWEEP_TOL, "ok": err <= SWEEP_TOL}
    res["values"] = {"interpjax": np.asarray(ij_out, np.float64), "transformers": hf_out}
    compare(res, peak)
    finish_ceiling(res, peak)
    report("W2-real patching", res)
    return res


# ---------------------------------------------------------------------------------------------
# W5: steered generation


W5_PROMPTS = ("The ship left the harbour at dawn and the sailors looked towards the distant hills, where",
              "My favourite place to spend a quiet afternoon is a small garden behind the old library, because",
              "The weather report for tomorrow says that the coast will be windy and the mountains will",
              "When the children came back from their long walk through the fields and along the river, they")


def w5_inputs(model, rows: int, T0: int, quick: bool):
    """Prompts [rows, T0] (the texts cycled, each cut to T0 tokens) and each row's (layer, coef):
    a grid of 16 layers spread over the depth x 4 coefficients (quick: 2 x 2)."""
    cfg = model.cfg
    if getattr(model, "tokenizer", None) is not None:
        enc = [model.tokenizer(t, add_special_tokens=False)["input_ids"] for t in W5_PROMPTS]
        if min(len(e) for e in enc) < T0:
            raise ValueError(f"W5 prompts are shorter than {T0} tokens")
        base = np.asarray([e[:T0] for e in enc], np.int64)
    else:
        base = random_tokens(cfg, len(W5_PROMPTS), T0, TOKEN_SEED)
    prompts = base[np.arange(rows) % len(base)]
    n_l, n_c = (2, 2) if quick else (16, 4)
    assert n_l * n_c == rows
    layers = np.round(np.linspace(0, cfg.n_layers - 1, n_l)).astype(np.int32)
    coefs = np.array([-8.0, 8.0] if quick else [-8.0, -4.0, 4.0, 8.0], np.float32)
    L, C = np.meshgrid(layers, coefs, indexing="ij")
    return prompts, L.reshape(-1), C.reshape(-1)


def cmd_w5(args, loader) -> dict:
    import jax.numpy as jnp

    from interpjax import Add
    from interpjax.generate import generate, stack_rows

    ctx = begin(args, "W5 steered generation")
    model, hf = loader(args.model)
    cfg = model.cfg
    q = args.quick
    rows, T0, N = (4, 8, 4) if q else (64, 16, 32)
    prompts, layer_B, coef_B = w5_inputs(model, rows, T0, q)
    ids = metric_ids(model)
    v = steering_vector(model, ids)
    scale = resid_scale(model, prompts) / 16  # coefficients +-4, +-8: a quarter and half of |resid|
    coef_B = (coef_B * scale).astype(np.float32)
    print(f"W5: {args.model}, {rows} rows x {N} new greedy tokens after {T0} prompt tokens; per-row "
          f"(layer, coef) grid, coefficients x {scale:.2f} (|resid| / 16)", flush=True)
    vj = jnp.asarray(v)
    ivs = stack_rows([Add("resid_pre", layer=int(l), vector=vj, coeff=float(c)) for l, c in zip(layer_B, coef_B)])

    def ij_run():
        return generate(cfg, model.params, prompts, N, ivs, per_row=True).tokens

    ij_r, ij_tok = timed(ij_run, None, args.repeats, lambda x: x)
    gc.collect()
    hf_run = functools.partial(hf_steered_generate, hf, prompts, v, layer_B, coef_B, N)
    hf_r, hf_tok = timed(hf_run, None, args.repeats, lambda x: x)
    res = end(args, ctx, {"subcommand": "w5", "model": args.model, "rows": rows, "prompt_tokens": T0,
                          "new_tokens": N, "layers": layer_B, "coefs": coef_B})
    peak = res["matmul_peak"]["used_flops"]
    n_tok = rows * N
    for lib, r in (("interpjax", ij_r), ("transformers", hf_r)):
        res[lib] = {k: r[k] for k in ("warmup_s", "median_s", "min_s", "all_s", "cpu_s_median",
                                      "peak_rss_increase_bytes")}
        res[lib]["tokens_per_s"] = n_tok / r["median_s"]
    res["interpjax"]["idiom"] = "generate(per_row=True, interventions=stack_rows([Add(resid_pre, layer_b, coef_b)]))"
    res["transformers"]["idiom"] = "generate (KV cache) + a pre-hook per steered layer adding coef_b*v to its rows"
    new_ij, new_hf = np.asarray(ij_tok)[:, T0:], np.asarray(hf_tok)[:, T0:]
    if new_ij.shape != new_hf.shape:
        raise RuntimeError(f"generation shapes differ: interpjax {new_ij.shape}, transformers {new_hf.shape}")
    same_rows = (new_ij == new_hf).all(1)
    first_diff = np.where(same_rows, N, np.argmax(new_ij != new_hf, axis=1))
    share = float(same_rows.mean())
    res["agreement"] = {"rows_identical_share": share, "rows_identical": int(same_rows.sum()),
                        "mean_tokens_before_first_difference": float(first_diff.mean()),
                        "tokens_equal_share": float((new_ij == new_hf).mean()),
                        "tolerance_min_share": W5_MIN_SHARE, "ok": share >= W5_MIN_SHARE}
    res["speedup"] = hf_r["median_s"] / ij_r["median_s"]
    res["goal_speedup"] = 3.0
    res["sample"] = {"interpjax": model.to_string(new_ij[0]) if model.tokenizer is not None else new_ij[0],
                     "layer": int(layer_B[0]), "coef": float(coef_B[0])}
    res["tokens"] = {"interpjax": np.asarray(ij_tok), "transformers": np.asarray(hf_tok)}
    bcm.print_table(f"W5 steered generation ({rows} rows x {N} tokens; {args.repeats} timed runs)", [
        [lib, f"{res[lib]['median_s']:.3f}", f"{res[lib]['min_s']:.3f}", f"{res[lib]['warmup_s']:.2f}",
         f"{res[lib]['tokens_per_s']:,.0f}"] for lib in ("interpjax", "transformers")],
        ["", "median s", "min s", "warm-up s", "new tokens/s"])
    print(f"interpjax speedup {res['speedup']:.2f}x (goal >= 3x); identical rows {same_rows.sum()}/{rows}; "
          f"tokens equal {res['agreement']['tokens_equal_share']:.1%}; matmul peak {peak / 1e9:.0f} GFLOP/s")
    return res


# ---------------------------------------------------------------------------------------------
# plain forward (Gemma 3 by default)


def cmd_forward(args, loader) -> dict:
    import jax
    import torch

    import interpjax
    from interpjax.sweep import cost

    ctx = begin(args, "forward")
    model, hf = loader(args.model)
    cfg = model.cfg
    shapes = [(1, 16), (1, 32)] if args.quick else [(2, 512), (1, 2048)]
    fwd = jax.jit(functools.partial(interpjax.forward, cfg))
    res = {"subcommand": "forward", "model": args.model, "shapes": {}}
    raw = []
    for B, T in shapes:
        toks = random_tokens(cfg, B, T, TOKEN_SEED)
        toks_j, toks_t = jax.numpy.asarray(toks), torch.from_numpy(toks).long()
        print(f"forward {args.model}: B={B} T={T}", flush=True)
        ij_r, ij_out = timed(lambda: fwd(model.params, toks_j), None, args.repeats, jax_sync)
        ij_out = np.asarray(ij_out)
        gc.collect()

        def hf_run():
            with torch.inference_mode():
                return hf(toks_t, use_cache=False).logits

        hf_r, hf_out = timed(hf_run, None, args.repeats, lambda x: x)
        hf_out = hf_out.numpy()
        d = max_abs_diff(ij_out, hf_out)
        m = float(np.max(np.abs(hf_out)))
        argmax_eq = float((ij_out.argmax(-1) == hf_out.argmax(-1)).mean())
        del ij_out, hf_out
        gc.collect()
        raw.append((f"B{B}_T{T}", B, T, ij_r, hf_r, d, m, argmax_eq))
    res = end(args, ctx, res)
    peak = res["matmul_peak"]["used_flops"]
    ok = True
    for key, B, T, ij_r, hf_r, d, m, am in raw:
        flops = cost.forward_flops(cfg, B, T)
        e = {"batch": B, "seq": T, "interpjax": side(ij_r, flops, peak), "transformers": side(hf_r, flops, peak),
             "agreement": {"max_abs_logit_diff": d, "max_abs_logit": m, "rel": d / m, "tolerance": LOGIT_TOL,
                           "argmax_equal_share": am, "ok": d / m <= LOGIT_TOL}}
        for lib in ("interpjax", "transformers"):
            e[lib]["tokens_per_s"] = B * T / e[lib]["median_s"]
        e["speedup"] = hf_r["median_s"] / ij_r["median_s"]
        ok &= e["agreement"]["ok"]
        res["shapes"][key] = e
    res["agreement"] = {"ok": bool(ok), "tolerance": LOGIT_TOL,
                        "worst_rel": max(e["agreement"]["rel"] for e in res["shapes"].values())}
    bcm.print_table(f"forward {args.model} fp32 (matmul peak {peak / 1e9:.0f} GFLOP/s; {args.repeats} timed runs)", [
        [f"B{e['batch']} T{e['seq']}", f"{e['interpjax']['median_s']:.3f}", f"{e['transformers']['median_s']:.3f}",
         f"{e['speedup']:.2f}x", f"{e['interpjax']['useful_frac_of_peak']:.0%}",
         f"{e['transformers']['useful_frac_of_peak']:.0%}", f"{e['agreement']['rel']:.1e}"]
        for e in res["shapes"].values()],
        ["", "interpjax s", "transformers s", "speedup", "interpjax useful/peak", "transformers useful/peak",
         "max|Δlogit|/max|logit|"])
    return res


# ---------------------------------------------------------------------------------------------
# scaling: sweep time vs variants, depth and sequence length, beside the minimal-work model


def _truncated(cfg, params, n_layers: int):
    """The first ``n_layers`` layers of a model (params stacked on a leading layer axis)."""
    import dataclasses

    import jax

    if n_layers == cfg.n_layers:
        return cfg, params
    c = dataclasses.replace(cfg, n_layers=n_layers, window=tuple(cfg.window[:n_layers]) if cfg.window else ())
    p = dict(params, layers=jax.tree.map(lambda a: a[:n_layers], params["layers"]))
    return c, p


def scaling_points(cfg, quick: bool) -> list:
    """(series, x, n_layers, layers, n_coefs, B, T) of every measured sweep (steering, 2-logit metric)."""
    n = cfg.n_layers
    if quick:
        pts = [("variants", nv, n, [0, n - 1], nv // 2, 1, 2) for nv in (4, 8)]
        pts += [("depth", d, d, list(range(d)), 2, 1, 4) for d in (1, 2)]
        pts += [("seq", T, n, [0, n - 1], 2, 1, T) for T in (2, 4)]
        return pts
    ten = list(range(0, n, 3))[:10]  # 10 start layers spread over the depth
    pts = [("variants", nv, n, ten, nv // len(ten), 1, 4) for nv in (100, 1000, 10000, 100000)]
    pts += [("depth", d, d, list(range(d)), 16, 2, 16) for d in (6, 12, 18, 24, 30) if d <= n]
    pts += [("seq", T, n, list(range(n)), 4, 1, T) for T in (8, 16, 32, 64, 128)]
    return pts


def cmd_scaling(args, loader) -> dict:
    from interpjax import sweep as sw
    from interpjax.sweep import cost, program

    ctx = begin(args, "scaling")
    model, _ = loader(args.model)
    ids = metric_ids(model)
    v = steering_vector(model, ids)
    metric = _metric_fn(ids)
    points = []
    t_start = time.perf_counter()
    for series, x, depth, layers, n_coef, B, T in scaling_points(model.cfg, args.quick):
        cfg, params = _truncated(model.cfg, model.params, depth)
        tokens = random_tokens(cfg, B, T, TOKEN_SEED)
        coefs = np.linspace(-16, 16, n_coef).astype(np.float32)
        layers = np.asarray(layers, np.int32)

        def run():
            return sw.steering((cfg, params), tokens, v, coefs, metric, layers=layers, progress=False).values

        nv = len(layers) * n_coef
        est = cost.estimate(cfg, nv, B, T, kind="steering", layers=layers)
        big = est["flops"] > 2e13  # the 10^5-variant point: no separate warm-up if its chunk shapes are compiled
        t0 = time.perf_counter()
        traces0 = program.TRACES["chunk"]
        if not big:
            jax_sync(run())
        cold = time.perf_counter() - t0
        traces1 = program.TRACES["chunk"]
        ts = []
        for _ in range(1 if (big or args.quick) else 2):
            t0 = time.perf_counter()
            jax_sync(run())
            ts.append(time.perf_counter() - t0)
        new_traces = program.TRACES["chunk"] - traces1
        p = {"series": series, "x": x, "n_layers": depth, "n_variants": nv, "batch": B, "seq": T,
             "flops": est["flops"], "seconds": min(ts), "all_s": ts, "warmup_s": cold if not big else None,
             "warm_traces": traces1 - traces0, "traces_during_timed_runs": new_traces}
        points.append(p)
        print(f"  {series:8s} x={x:<7d} variants {nv:7d}  B{B} T{T:<4d} depth {depth:2d}: {est['flops'] / 1e12:8.3f} "
              f"TFLOP  {p['seconds']:8.3f} s  ({est['flops'] / p['seconds'] / 1e9:6.1f} GFLOP/s; compiles during "
              f"timing: {new_traces})", flush=True)
    total_s = time.perf_counter() - t_start
    res = end(args, ctx, {"subcommand": "scaling", "model": args.model, "points": points, "total_s": total_s})
    peak = res["matmul_peak"]["used_flops"]
    fitted = cost.fit([p["flops"] for p in points], [p["seconds"] for p in points])
    for p in points:
        p["predicted_s"] = p["flops"] / fitted["flops_per_s"] + fitted["overhead_s"]
        p["useful_frac_of_peak"] = p["flops"] / p["seconds"] / peak
    res["fit"] = {**fitted, "frac_of_peak": fitted["flops_per_s"] / peak}
    res["fit_per_series"] = {}
    for series in ("variants", "depth", "seq"):
        pts = [p for p in points if p["series"] == series]
        if len(pts) >= 2:
            f = cost.fit([p["flops"] for p in pts], [p["seconds"] for p in pts])
            res["fit_per_series"][series] = {**f, "frac_of_peak": f["flops_per_s"] / peak}
            print(f"  fit on the {series} series alone: {f['flops_per_s'] / 1e9:.0f} GFLOP/s "
                  f"({f['flops_per_s'] / peak:.0%} of peak) + {f['overhead_s']:.3f} s; worst residual "
                  f"{f['max_rel_residual']:.0%}")
    bcm.print_table(f"scaling (fit: {fitted['flops_per_s'] / 1e9:.0f} GFLOP/s = {res['fit']['frac_of_peak']:.0%} of "
                    f"the {peak / 1e9:.0f} GFLOP/s peak, overhead {fitted['overhead_s']:.3f} s)", [
        [p["series"], p["x"], p["n_variants"], f"B{p['batch']} T{p['seq']} L{p['n_layers']}", f"{p['flops'] / 1e12:.3f}",
         f"{p['seconds']:.3f}", f"{p['predicted_s']:.3f}", f"{p['useful_frac_of_peak']:.0%}"] for p in points],
        ["series", "x", "variants", "shape", "useful TFLOP", "measured s", "model s", "useful/peak"])
    png = Path(args.png) if args.png else Path(args.json_path).with_suffix(".png")
    res["png"] = str(plot_scaling(points, fitted, peak, png))
    print(f"plot: {res['png']}")
    return res


def plot_scaling(points, fitted, peak, path) -> Path:
    """Measured sweep time against useful FLOPs per series, with the fitted minimal-work model and
    the 100%-of-peak line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from interpjax.io.plots import save_figure

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, series in zip(axes, ("variants", "depth", "seq")):
        pts = [p for p in points if p["series"] == series]
        if not pts:
            continue
        x = np.array([p["x"] for p in pts], float)
        ax.plot(x, [p["seconds"] for p in pts], "o-", label="measured")
        ax.plot(x, [p["predicted_s"] for p in pts], "s--", label=f"model: FLOPs / {fitted['flops_per_s'] / 1e9:.0f} "
                                                                   f"GFLOP/s + {fitted['overhead_s']:.2f} s")
        ax.plot(x, [p["flops"] / peak for p in pts], ":", color="gray", label="FLOPs / matmul peak")
        ax.set_xscale("log")
        ax.set_yscale("log")
        p0 = pts[0]
        ax.set_xlabel({"variants": f"variants (start layers x coefficients; B{p0['batch']} T{p0['seq']})",
                       "depth": f"model layers (all x coefficients; B{p0['batch']} T{p0['seq']})",
                       "seq": f"sequence length ({p0['n_layers']} layers x coefficients; B{p0['batch']})"}[series])
        ax.set_ylabel("sweep seconds")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("interpjax steering sweeps on SmolLM2-135M: time vs the minimal-work model")
    out = save_figure(fig, path)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------
# command line

COMMANDS = {"w1": cmd_w1, "w2": cmd_w2, "w5": cmd_w5, "forward": cmd_forward, "scaling": cmd_scaling}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {"w1": "W1-real: steering sweep, all layers x 16 coefficients, 8 x 64 tokens",
             "w2": "W2-real: resid_pre patching, all layers x 32 positions, 8 x 32 tokens",
             "w5": "W5: steered greedy generation, 64 rows each with its own (layer, coef), 32 new tokens",
             "forward": "plain forward at T=512 (B=2) and T=2048 (B=1), logits agreement",
             "scaling": "sweep time vs variants (1e2..1e5), depth and sequence length; fit and PNG"}
    for name, fn in COMMANDS.items():
        p = sub.add_parser(name, help=helps[name])
        p.add_argument("--model", default=GEMMA if name == "forward" else SMOL,
                       help="named real model (default %(default)s)")
        p.add_argument("--repeats", type=int, default=3 if name in ("forward", "w5") else 1,
                       help="timed runs after the warm-up (default %(default)s)")
        p.add_argument("--quick", action="store_true", help="tiny sizes, 1 timed run: a smoke test")
        p.add_argument("--json", metavar="OUT", help="JSON results (default $INTERPJAX_BENCH_CACHE/real/<cmd>.json)")
        if name == "scaling":
            p.add_argument("--png", metavar="OUT", help="the plot (default: beside the JSON, .png)")
        p.set_defaults(func=fn)
    return parser


def main(argv=None, loader=None) -> int:
    """Run one subcommand; ``loader(name) -> (interpjax Model, transformers model)`` (default
    ``load_pair``; the tests pass their session fixture). Returns 1 when an agreement check fails."""
    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    if args.quick:
        args.repeats = 1
    args.json_path = args.json or str(bcm.default_cache_dir() / "real" / f"{args.command}{'_quick' if args.quick else ''}.json")
    if loader is None:
        cache = {}

        def loader(name):
            if name not in cache:
                cache[name] = load_pair(name)
            return cache[name]

    res = args.func(args, loader)
    res["argv"] = list(sys.argv if argv is None else argv)
    bcm.write_json_atomic(args.json_path, res)
    print(f"wrote {args.json_path}")
    ok = res.get("agreement", {}).get("ok", True)
    if not ok:
        print(f"AGREEMENT CHECK FAILED: {res['agreement']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
