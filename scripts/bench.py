#!/usr/bin/env python
"""Benchmarks for interpjax, one subcommand each.

    python scripts/bench.py forward [--layers-compile 12 48] [--batch 8] [--seq 128] [--repeats 5] [--json OUT]

``forward``: a GPT-2-small-shaped model with random weights (torch.manual_seed(0)), run side by side
in one process by transformers (PyTorch, float32, inference_mode) and interpjax (the same weights,
converted in memory). Reports the agreement of the logits, interpjax's compile time, steady-state
latency and tokens/s of both, and how interpjax's compile time scales with depth (12 vs 48 layers
of random weights; the layer loop is a ``lax.scan`` so it should barely grow).

Adding a subcommand: write ``cmd_<name>(args) -> dict``, register its parser in ``build_parser``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter

import numpy as np

# ---------------------------------------------------------------------------------------------
# shared helpers


def cpu_model() -> str:
    """'model name' from /proc/cpuinfo, with family/model/stepping (virtual machines often show a bare
    'AMD EPYC'; family 26 is Zen 5, 25 Zen 3/4, 6 Intel)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # first processor only
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown"
    ids = [f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields]
    return f"{name} ({', '.join(ids)})" if ids else name


def load_average() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return []


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_names() -> Counter:
    """Names of this process's threads (Linux), e.g. XLA's intra-op pool shows as 'tf_XLAEigen'."""
    names = Counter()
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/comm") as f:
                    names[f.read().strip()] += 1
            except OSError:
                pass
    except OSError:
        pass
    return names


def machine_info() -> dict:
    import jax
    import jaxlib

    info = {
        "cpu_model": cpu_model(),
        "os_cpu_count": os.cpu_count(),
        "cores_available": available_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        import interpjax

        info["interpjax"] = getattr(interpjax, "__version__", "?")
    except ImportError:
        pass
    return info


def summarize(times: list) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "all_s": list(times)}


def write_json_atomic(path: str, obj) -> None:
    """Write JSON to a temp file next to ``path`` then os.replace it, so readers never see half a file."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bench-", suffix=".json", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def print_table(title: str, rows: list, headers: list) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    print(f"\n{title}")
    print(line)
    for k, r in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |")
        if k == 0:
            print(line)
    print(line)


def print_machine(info: dict) -> None:
    print("machine")
    print(f"  cpu            : {info['cpu_model']}  ({info['cores_available']} cores available, "
          f"os.cpu_count()={info['os_cpu_count']})")
    print(f"  platform       : {info['platform']}, python {info['python']}")
    print(f"  versions       : jax {info['jax']} (jaxlib {info['jaxlib']}, backend {info['jax_backend']}), "
          f"torch {info.get('torch', '-')}, transformers {info.get('transformers', '-')}, "
          f"numpy {info['numpy']}, interpjax {info.get('interpjax', '-')}")
    if info["XLA_FLAGS"]:
        print(f"  XLA_FLAGS      : {info['XLA_FLAGS']}")


def ms(s: float) -> str:
    return f"{s * 1e3:,.1f}"


# ---------------------------------------------------------------------------------------------
# forward: interpjax vs transformers throughput, and compile-time scaling with depth


def gpt2_small_config_kwargs() -> dict:
    """GPT-2 small's architecture as an interpjax Config (what config_from_hf(GPT2Config()) gives)."""
    return dict(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024,
                norm="layernorm", norm_eps=1e-5, positions="learned", mlp="standard", activation="gelu_tanh",
                qkv_bias=True, o_bias=True, mlp_bias=True, tie_embeddings=True, family="gpt2")


def random_params(cfg, seed: int = 0, std: float = 0.02) -> dict:
    """Params of the shapes ``expected_shapes(cfg)`` asks for: N(0, std) weights, norm scales 1."""
    import jax
    import jax.numpy as jnp
    from interpjax.convert import expected_shapes

    rng = np.random.default_rng(seed)

    def fill(path, shape):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            a = np.ones(shape, np.float32)
        elif "bias" in name:
            a = np.zeros(shape, np.float32)
        else:
            a = rng.standard_normal(shape, dtype=np.float32)
            a *= np.float32(std)
        return jnp.asarray(a)

    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x)
    # block: host->device copies run asynchronously and would otherwise overlap (and inflate) what is timed next
    return jax.block_until_ready(jax.tree_util.tree_map_with_path(fill, expected_shapes(cfg), is_leaf=is_shape))


def jitted_forward(cfg):
    """A fresh jax.jit of the public interpjax.forward (so compile timings see the real entry point
    without depending on private signatures)."""
    import jax
    import interpjax

    return jax.jit(functools.partial(interpjax.forward, cfg))


def time_compile(cfg, params, tokens, repeats: int) -> dict:
    """Trace+lower and XLA-compile time of the forward, from empty JAX caches each time: wall clock and
    this process's CPU time (all threads; unlike wall clock it barely moves when other processes load the
    machine). The repeat with the smallest wall total is reported."""
    import jax

    jax.block_until_ready((params, tokens))
    lowers, compiles, cpus = [], [], []
    for _ in range(repeats):
        jax.clear_caches()
        gc.collect()
        fn = jitted_forward(cfg)
        c0, t0 = time.process_time(), time.perf_counter()
        lowered = fn.lower(params, tokens)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2, c2 = time.perf_counter(), time.process_time()
        lowers.append(t1 - t0)
        compiles.append(t2 - t1)
        cpus.append(c2 - c0)
        del lowered, compiled
    totals = [a + b for a, b in zip(lowers, compiles)]
    best = int(np.argmin(totals))
    return {"lower_s": lowers[best], "compile_s": compiles[best], "total_s": totals[best], "cpu_s": cpus[best],
            "all_total_s": totals, "all_cpu_s": cpus}


def cmd_forward(args) -> dict:
    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    import interpjax
    from interpjax.convert import config_from_hf, params_from_hf

    B, T, R = args.batch, args.seq, args.repeats
    info = machine_info()
    load_start = load_average()
    n_threads = os.cpu_count() or 1

    # 1. the model: random GPT-2 small in transformers, the same weights in interpjax
    torch.set_num_threads(n_threads)
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config()
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval().float()
    attn_impl = getattr(hf.config, "_attn_implementation", None)
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    cfg = config_from_hf(hf.config)
    params = params_from_hf(cfg, sd.__getitem__, sd.keys())
    del sd
    gc.collect()
    jax.block_until_ready(params)  # finish the async host->device copies before anything is timed
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))

    # 3. tokens
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T))
    tokens_pt = torch.from_numpy(tokens).long()
    tokens_jx = jnp.asarray(tokens)

    # 5a. interpjax compile: first call of the public API (trace + compile + one run), from empty caches,
    # then AOT lower/compile timings of a fresh jit of it
    jax.clear_caches()
    t0 = time.perf_counter()
    out_jx = interpjax.forward(cfg, params, tokens).block_until_ready()
    first_call_s = time.perf_counter() - t0
    aot = time_compile(cfg, params, tokens_jx, repeats=1)

    # 4. agreement (first transformers call doubles as its warm-up)
    with torch.inference_mode():
        out_pt = hf(tokens_pt).logits
    max_diff = float(np.max(np.abs(np.asarray(out_jx) - out_pt.numpy())))
    max_logit = float(np.max(np.abs(out_pt.numpy())))
    del out_pt, out_jx
    gc.collect()

    # 5b. steady state, interleaved so both see the same background load on a shared machine
    compiled = jitted_forward(cfg).lower(params, tokens_jx).compile()
    compiled(params, tokens_jx).block_until_ready()
    interpjax.forward(cfg, params, tokens).block_until_ready()  # re-warm: time_compile cleared the caches
    t_jx, t_aot, t_pt = [], [], []
    cpu0, wall0 = os.times(), time.perf_counter()
    with torch.inference_mode():
        for _ in range(R):
            t0 = time.perf_counter()
            interpjax.forward(cfg, params, tokens).block_until_ready()
            t_jx.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            compiled(params, tokens_jx).block_until_ready()
            t_aot.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            hf(tokens_pt).logits
            t_pt.append(time.perf_counter() - t0)
    cpu1, wall1 = os.times(), time.perf_counter()
    # share of the cores this process got while timing: ~1.0 when the machine is otherwise idle (both
    # runtimes keep all their threads busy), lower when other processes compete for the cores
    cpu_share = ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / ((wall1 - wall0) * available_cores())
    del compiled

    # 2. threads actually in use (XLA's CPU client sizes its Eigen intra-op pool to the available cores;
    # it has no public knob, so count its threads)
    names = thread_names()
    xla_threads = sum(c for n, c in names.items() if "Eigen" in n)
    threads = {"requested": n_threads, "torch_intra_op": torch.get_num_threads(),
               "torch_inter_op": torch.get_num_interop_threads(), "xla_eigen_pool_threads_observed": xla_threads,
               "xla_note": "XLA's CPU client sizes its Eigen intra-op pool to the available cores itself; "
                           "JAX has no public setting for it, so it is counted from /proc/self/task"}

    # free the GPT-2 pair before building deeper models
    del hf, params
    gc.collect()

    # 6. compile-time scaling with depth (random weights, same shapes otherwise)
    scaling = []
    for L in args.layers_compile:
        cfg_l = interpjax.Config(**dict(gpt2_small_config_kwargs(), n_layers=L))
        p_l = random_params(cfg_l, seed=L)
        r = time_compile(cfg_l, p_l, tokens_jx, repeats=args.compile_repeats)
        scaling.append({"n_layers": L, **r})
        del p_l
        gc.collect()
    jax.clear_caches()
    base, base_cpu = scaling[0]["total_s"], scaling[0]["cpu_s"]
    for r in scaling:
        r["ratio_vs_first"] = r["total_s"] / base
        r["cpu_ratio_vs_first"] = r["cpu_s"] / base_cpu

    tok = B * T
    jx, ja, pt = summarize(t_jx), summarize(t_aot), summarize(t_pt)
    load_end = load_average()
    result = {
        "subcommand": "forward",
        "machine": info,
        "model": {"arch": "GPT-2 small shape, random weights (torch.manual_seed(0))", "n_params": n_params,
                  "n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads, "d_mlp": cfg.d_mlp,
                  "vocab_size": cfg.vocab_size, "dtype": "float32", "transformers_attn_implementation": attn_impl},
        "batch": B, "seq": T, "repeats": R, "threads": threads,
        "load_average_1_5_15": {"start": load_start, "end": load_end},
        "cpu_share_during_timing": cpu_share,
        "worst_median_over_min": max(d["median_s"] / d["min_s"] for d in (jx, ja, pt)),
        "agreement": {"max_abs_logit_diff": max_diff, "max_abs_logit": max_logit},
        "interpjax": {"first_call_s": first_call_s, "aot_lower_s": aot["lower_s"], "aot_compile_s": aot["compile_s"],
                      "forward": {**jx, "tokens_per_s": tok / jx["median_s"]},
                      "aot_executable": {**ja, "tokens_per_s": tok / ja["median_s"]}},
        "transformers": {**pt, "tokens_per_s": tok / pt["median_s"]},
        "throughput_ratio_interpjax_over_transformers": pt["median_s"] / jx["median_s"],
        "throughput_ratio_by_min": pt["min_s"] / jx["min_s"],
        "compile_scaling": scaling,
        "compile_ratio_last_over_first": scaling[-1]["total_s"] / base,
        "compile_cpu_ratio_last_over_first": scaling[-1]["cpu_s"] / base_cpu,
    }

    # 7. report
    print_machine(info)
    print(f"  threads        : torch intra-op {threads['torch_intra_op']} (set to os.cpu_count()={n_threads}), "
          f"inter-op {threads['torch_inter_op']}; XLA Eigen pool {xla_threads} threads observed "
          f"(sized by XLA to the available cores; no public knob)")
    print(f"model: GPT-2 small shape ({n_params / 1e6:.1f}M params, {cfg.n_layers} layers, d_model {cfg.d_model}, "
          f"vocab {cfg.vocab_size}), random weights, float32; transformers attn_implementation={attn_impl}")
    spread = max(d["median_s"] / d["min_s"] for d in (jx, ja, pt))
    print(f"load average (1/5/15 min): before {load_start}, after {load_end}; this process got {cpu_share:.0%} of "
          f"{info['cores_available']} cores while timing; worst median/min spread {spread:.2f}"
          + ("\n  WARNING: other processes compete for the cores (timings noisy: median/min > 1.25, or this process "
             "got < 60% of the cores); latencies are inflated, torch's most (its OpenMP pool waits for a scheduler "
             "slice per op when a core is taken), so rerun on a quiet machine for a fair ratio"
             if spread > 1.25 or cpu_share < 0.6 else ""))
    print(f"input: batch {B} x seq {T} = {tok} tokens; {R} timed repeats (interleaved), medians used for ratios")
    print(f"agreement: max |logits_interpjax - logits_transformers| = {max_diff:.3g}  (max |logit| {max_logit:.3g})")
    print_table("forward latency (ms) and throughput", [
        ["interpjax.forward", ms(jx["median_s"]), ms(jx["min_s"]), f"{tok / jx['median_s']:,.0f}",
         f"{pt['median_s'] / jx['median_s']:.2f}x", f"{pt['min_s'] / jx['min_s']:.2f}x"],
        ["interpjax (AOT executable)", ms(ja["median_s"]), ms(ja["min_s"]), f"{tok / ja['median_s']:,.0f}",
         f"{pt['median_s'] / ja['median_s']:.2f}x", f"{pt['min_s'] / ja['min_s']:.2f}x"],
        ["transformers (inference_mode)", ms(pt["median_s"]), ms(pt["min_s"]), f"{tok / pt['median_s']:,.0f}", "1.00x", "1.00x"],
    ], ["", "median ms", "min ms", "tokens/s (median)", "speed vs HF (median)", "speed vs HF (min)"])
    print_table("interpjax compile (GPT-2 small, from empty caches)", [
        ["first interpjax.forward call (trace+compile+run)", ms(first_call_s)],
        ["jax.jit(forward).lower (trace+lower)", ms(aot["lower_s"])],
        ["lowered.compile (XLA)", ms(aot["compile_s"])],
        ["lower + compile, process CPU time (all threads)", ms(aot["cpu_s"])],
    ], ["", "ms"])
    print_table(f"compile-time scaling with depth (random weights, best of {args.compile_repeats})", [
        [f"{r['n_layers']} layers", ms(r["lower_s"]), ms(r["compile_s"]), ms(r["total_s"]), f"{r['ratio_vs_first']:.2f}x",
         ms(r["cpu_s"]), f"{r['cpu_ratio_vs_first']:.2f}x"]
        for r in scaling], ["", "lower ms", "compile ms", "total ms (wall)", f"wall vs {scaling[0]['n_layers']} layers",
                            "CPU ms", f"CPU vs {scaling[0]['n_layers']} layers"])
    ratio = result["throughput_ratio_interpjax_over_transformers"]
    cratio = result["compile_ratio_last_over_first"]
    ccpu = result["compile_cpu_ratio_last_over_first"]
    print(f"\nthroughput interpjax/transformers = {ratio:.2f}x by median, {result['throughput_ratio_by_min']:.2f}x by min "
          f"(goal >= 1.0: {'met' if ratio >= 1.0 else 'NOT met'}); "
          f"compile {scaling[-1]['n_layers']}/{scaling[0]['n_layers']} layers = {cratio:.2f}x wall, {ccpu:.2f}x CPU "
          f"(goal <= 1.5: wall {'met' if cratio <= 1.5 else 'NOT met'}, CPU {'met' if ccpu <= 1.5 else 'NOT met'})")
    return result


# ---------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("forward", help="interpjax vs transformers forward throughput; compile-time scaling")
    p.add_argument("--layers-compile", type=int, nargs="+", default=[12, 48], metavar="L",
                   help="layer counts for the compile-time scaling (default: 12 48)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5, help="timed steady-state calls per framework")
    p.add_argument("--compile-repeats", type=int, default=2,
                   help="compiles per layer count in the scaling test; the fastest is reported (default 2)")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT (atomically)")
    p.set_defaults(func=cmd_forward)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("batch", "seq", "repeats", "compile_repeats"):
        if getattr(args, name, 1) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    result = args.func(args)
    if getattr(args, "json", None):
        result["argv"] = sys.argv
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
