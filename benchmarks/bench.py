#!/usr/bin/env python
"""Benchmarks for interpjax, one subcommand each.

    python benchmarks/bench.py forward [--layers-compile 12 48] [--batch 8] [--seq 128] [--repeats 5] [--json OUT]

``forward``: a GPT-2-small-shaped model with random weights (torch.manual_seed(0)), run side by side
in one process by transformers (PyTorch, float32, inference_mode) and interpjax (the same weights,
converted in memory). Reports the agreement of the logits, interpjax's compile time, steady-state
latency and tokens/s of both, and how interpjax's compile time scales with depth (12 vs 48 layers
of random weights; the layer loop is a ``lax.scan`` so it should barely grow).

    python benchmarks/bench.py sweeps [--workloads W1 W2 W3 W0] [--peers hf tl3 tl4 nnsight pyvene] [--repeats 3]

``sweeps``: the standard workloads of ../shared/bench/WORKLOADS.md (W0 plain forward, W1 steering
layer x coefficient, W2 activation patching layer x position, W3 activation cache) run by interpjax in
this process (``interpjax_side``) and by each PyTorch peer in its own venv (``bench_peers.py``, as a
subprocess), all on one safetensors file of random GPT-2-small weights. Checks the arrays agree
(max|a - ref| / max|ref| <= 1e-3 against transformers hooks), measures the fp32 matmul peak in the
same run and prints median / min seconds, CPU seconds, forward-pass equivalents, useful FLOP/s as a
fraction of the peak (analytic FLOPs of the minimal recompute, ``bench_common.useful_flops``), peak
RSS increase and the ratio to each peer. Per (library, workload) results are cached as JSON and reused.
See docs/benchmarks.md for setting up the peer venvs.

    python benchmarks/bench.py bigsteer [--shape llama7b|tiny] [--dtype bfloat16] [--layers 32] [--coefs 64] [--json OUT]

``bigsteer``: the accelerator workload: a random model of the Llama-2-7B shape (32 layers, d_model
4096, 32 heads, d_mlp 11008, vocab 32000; bf16), the steering sweep ``resid_pre[L] += c*v`` for 32
layers x 64 coefficients on 8 prompts x 32 tokens, logit difference at the last position. Reports
median seconds and useful FLOP/s (the minimal recompute) as a fraction of the bf16 matmul peak
measured in the same run, and the agreement of sampled cells with direct forwards. ``--shape tiny``
runs the same code on a small model (CPU smoke test).

Adding a subcommand: write ``cmd_<name>(args) -> dict``, register its parser in ``build_parser``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    available_cores, cpu_model, load_average, print_table, summarize, write_json_atomic)
import bench_common as bcm  # noqa: E402

# ---------------------------------------------------------------------------------------------
# shared helpers


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
    from interpjax.io.convert import expected_shapes

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
    from interpjax.io.convert import config_from_hf, params_from_hf

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
# sweeps: the standard workloads W0-W3 (../shared/bench/WORKLOADS.md), interpjax vs the PyTorch peers

PEER_LIBS = ("hf", "tl3", "tl4", "nnsight", "pyvene")
PEER_LABELS = {"hf": "transformers hooks", "tl3": "TransformerLens 3.x", "tl4": "TransformerLens 4.x bridge",
               "nnsight": "nnsight", "pyvene": "pyvene"}
PEER_VENVS = {"hf": None, "tl3": "venv-tl3", "tl4": "venv-peers", "nnsight": "venv-peers", "pyvene": "venv-peers"}
W3_SITES = ("resid_pre", "attn_out", "mlp_out")


def peer_python(lib: str, args) -> str:
    """The python of the lib's venv: --venv-LIB, $INTERPJAX_BENCH_VENV_LIB, else CACHE/<default venv>
    (hf runs in this interpreter's venv, which has torch and transformers)."""
    flag = getattr(args, f"venv_{lib}", None) or os.environ.get(f"INTERPJAX_BENCH_VENV_{lib.upper()}")
    if flag:
        return str(Path(flag) / "bin" / "python")
    if PEER_VENVS[lib] is None:
        return sys.executable
    return str(Path(args.cache) / PEER_VENVS[lib] / "bin" / "python")


def run_peer(lib: str, workload: str, args, out: Path) -> dict:
    """Run bench_peers.py for one (lib, workload) in the lib's venv; returns its JSON, or
    {"unavailable": reason} when the venv or the library is missing or the run fails."""
    import json

    py = peer_python(lib, args)
    if not Path(py).exists():
        return {"unavailable": f"no venv python at {py} (see docs/benchmarks.md to create it)"}
    cmd = [py, str(Path(__file__).resolve().parent / "bench_peers.py"), "--lib", lib, "--workload", workload,
           "--out", str(out), "--cache", str(args.cache), "--repeats", str(args.repeats),
           "--threads", str(args.threads)]
    if args.bench_config:
        cmd += ["--bench-config", args.bench_config]
    if args.quick:
        cmd.append("--quick")
    if not args.per_variant:
        cmd.append("--no-per-variant")
    if args.fastest_only:
        cmd.append("--fastest-only")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), TQDM_DISABLE="1")
    print(f"  {lib} {workload}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        return {"unavailable": f"exit {proc.returncode}: " + " | ".join(tail)}
    with open(out) as f:
        res = json.load(f)
    res["subprocess_wall_s"] = time.perf_counter() - t0
    return res


def matmul_peak(threads: int, repeats: int = 5) -> dict:
    """The machine's fp32 matmul peak, measured now: the best FLOP/s of jnp.dot (XLA) and torch.mm
    (threads set to ``threads``) over square sizes 1024..3072."""
    import jax
    import jax.numpy as jnp

    out = {"jax": 0.0, "torch": 0.0, "jax_per_cpu_s": 0.0, "torch_per_cpu_s": 0.0}
    rng = np.random.default_rng(0)

    def timed(fn, key, flops):
        for _ in range(repeats):
            c0, t0 = os.times(), time.perf_counter()
            fn()
            t1, c1 = time.perf_counter(), os.times()
            cpu = (c1.user - c0.user) + (c1.system - c0.system)
            out[key] = max(out[key], flops / (t1 - t0))
            if flops >= 1e10 and cpu >= 0.05:  # os.times() ticks are 10 ms: only long enough products
                out[key + "_per_cpu_s"] = max(out[key + "_per_cpu_s"], flops / cpu)

    for n in (1024, 2048, 3072):
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        dot = jax.jit(jnp.dot)
        dot(ja, jb).block_until_ready()
        timed(lambda: dot(ja, jb).block_until_ready(), "jax", 2 * n ** 3)
        try:
            import torch

            torch.set_num_threads(threads)
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            torch.mm(ta, tb)
            timed(lambda: torch.mm(ta, tb), "torch", 2 * n ** 3)
        except ImportError:
            pass
    out["peak_flops"] = max(out["jax"], out["torch"])
    # FLOP per CPU-second of the best matmul: the peak that CPU-time-based efficiency divides by
    # (on a shared machine a process gets a fraction of the cores; its CPU seconds are what it used)
    out["peak_flops_per_cpu_s"] = max(out["jax_per_cpu_s"], out["torch_per_cpu_s"])
    return out


def load_interpjax_model(args):
    """(cfg, params) of the benchmark weights, read by interpjax from the shared safetensors file."""
    import jax
    from interpjax.io.loading import load_params

    wdir = Path(args.cache) / bcm.WEIGHTS_DIRNAME
    if not (wdir / "model.safetensors").is_file():
        raise SystemExit(f"no weights in {wdir}; run: python benchmarks/bench_peers.py --make-weights --cache {args.cache}")
    cfg, params, _ = load_params(str(wdir))
    return cfg, jax.block_until_ready(params)


def sweep_grid(bc, quick: bool):
    """(layers, coefs, positions) of the grids; --quick takes the same 2x2 corner as bench_peers.py."""
    coefs, layers, positions = np.asarray(bc.COEFS, np.float32), list(bc.LAYERS), list(range(bc.T))
    if quick:
        coefs, layers, positions = coefs[:2], [0, bc.N_LAYERS - 1], [0, bc.T - 1]
    return np.asarray(layers, np.int32), coefs, np.asarray(positions, np.int32)


def interpjax_side(workload: str, cfg, params, bc, quick: bool = False) -> dict:
    """The interpjax idioms of ``workload``: {name: (run, warm)}; ``run()`` returns the result arrays.

    W1/W2 are what a user writes: ``interpjax.sweep.steering`` / ``interpjax.sweep.patching``
    (grid -> ``sweep``: the base run is cached, each variant starts at its first edited layer and,
    for patching, its first edited position; one compiled program serves every start layer; the
    metric reads two logits at the last position, never the full vocabulary). W3 is
    ``run_with_cache`` under jit with the unused logits dropped.
    """
    import jax
    import jax.numpy as jnp

    import interpjax
    from interpjax import sweep as sw

    inp = bcm.workload_inputs(bc)
    layers, coefs, positions = sweep_grid(bc, quick)
    A, Bt = bc.TOKEN_A, bc.TOKEN_B
    model = (cfg, params)

    def metric(out):
        """mean_b logits[b, -1, A] - logits[b, -1, B]."""
        lg = out.logits(-1, (A, Bt))
        return jnp.mean(lg[:, 0] - lg[:, 1])

    if workload == "W0":
        fns = {}
        for T in (bc.T, bc.T_CACHE):
            toks = jnp.asarray(bc.tokens(bc.B, T, bc.TOKEN_SEED))
            fwd = jax.jit(functools.partial(interpjax.forward, cfg))
            fns[f"forward B{bc.B} T{T}"] = (functools.partial(fwd, params, toks), None)
        return fns

    if workload == "W1":
        clean, v = np.asarray(inp["clean"]), np.asarray(inp["steer"])

        def run():
            return sw.steering(model, clean, v, coefs, metric, layers=layers, progress=False).values

        return {"sweep.steering (layers x coefs)": (run, None)}

    if workload == "W2":
        clean, corrupted = np.asarray(inp["clean"]), np.asarray(inp["corrupted"])

        def run():
            return sw.patching(model, clean, corrupted, metric, site="resid_pre", layers=layers,
                               positions=positions, progress=False).values

        return {"sweep.patching (layers x positions)": (run, None)}

    if workload == "W3":
        toks = jnp.asarray(inp["cache_tokens"])

        @jax.jit
        def cache_run(params, tokens):
            _, cache = interpjax.run_with_cache(cfg, params, tokens, sites=list(W3_SITES))
            return {s: cache[s] for s in W3_SITES}  # logits dropped: XLA removes the unembedding

        return {"run_with_cache (jit, logits dropped)": (lambda: cache_run(params, toks), None)}
    raise ValueError(f"unknown workload {workload!r}; valid: {bcm.WORKLOADS}")


def fingerprint_np(acts: dict) -> dict:
    """W3 agreement arrays (same as bench_peers.fingerprint): per (site, layer, b, t) L2 norms and the
    vector at (b=0, t=-1); ``acts[site]`` is [L, B, T, D]."""
    norms = np.stack([np.linalg.norm(np.asarray(acts[s], np.float64), axis=-1) for s in W3_SITES])
    last = np.stack([np.asarray(acts[s], np.float64)[:, 0, -1] for s in W3_SITES])
    return {"norms": norms, "last": last}


def run_interpjax(workload: str, cfg, params, bc, args) -> dict:
    """Time the interpjax idioms of one workload by the same protocol as the peers."""
    import jax

    res = {"lib": "interpjax", "workload": workload, "idioms": {}, "load_average_start": load_average(),
           "model_bytes": sum(int(a.nbytes) for a in jax.tree.leaves(params))}
    if workload != "W0":
        seq = bc.T_CACHE if workload == "W3" else bc.T
        toks = jax.numpy.asarray(bc.tokens(bc.B, seq, bc.TOKEN_SEED))
        fwd = jax.jit(functools.partial(__import__("interpjax").forward, cfg))
        fwd(params, toks).block_until_ready()
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            fwd(params, toks).block_until_ready()
            ts.append(time.perf_counter() - t0)
        res["plain_forward"] = {**summarize(ts), "shape": [bc.B, seq]}
    for name, (run, warm) in interpjax_side(workload, cfg, params, bc, args.quick).items():
        print(f"  interpjax {workload}: {name} ...", flush=True)
        reps = max(args.repeats, 5) if workload == "W0" else args.repeats
        r = bcm.time_protocol(run, warm, repeats=reps, sync=jax.block_until_ready)
        out = r.pop("result")
        if workload == "W3":
            r["result"] = fingerprint_np(out)
        elif workload == "W0":
            r["logits_last"] = np.asarray(out[:, -1, :8], np.float64)
        else:
            r["result"] = np.asarray(out, np.float64)
        if "plain_forward" in res:
            r["forward_equivalents"] = r["median_s"] / res["plain_forward"]["median_s"]
        res["idioms"][name] = r
    res["load_average_end"] = load_average()
    return res


def agreement(a, ref) -> float:
    """max|a - ref| / max|ref| over every array of a result (W3: norms and last vectors)."""
    if isinstance(ref, dict):
        return max(bcm.rel_err(a[k], ref[k]) for k in ref)
    return bcm.rel_err(a, ref)


def result_key(r: dict):
    return r.get("result", r.get("logits_last"))


def cmd_sweeps(args) -> dict:
    """Run W0-W3 for interpjax (in process) and every available peer (subprocess in its venv), check
    agreement against the transformers-hooks arrays, and print the head-to-head table."""
    import json

    import jax

    bc = bcm.load_bench_config(args.bench_config)
    unknown = [w for w in args.workloads if w not in bcm.WORKLOADS]
    bad_libs = [p for p in args.peers if p not in PEER_LIBS]
    if unknown or bad_libs:
        raise SystemExit(f"unknown workloads {unknown} / peers {bad_libs}; valid: {bcm.WORKLOADS} / {PEER_LIBS}")
    if "hf" not in args.peers:
        raise SystemExit("--peers must include hf: its arrays are the agreement reference")
    info = machine_info()
    results_dir = Path(args.results or Path(args.cache) / ("results-quick" if args.quick else "results"))
    results_dir.mkdir(parents=True, exist_ok=True)
    print_machine(info)
    print(f"load average at start: {load_average()}; threads: {args.threads}; results in {results_dir}")

    # weights (built once, by the hf venv, which has torch + transformers)
    wdir = Path(args.cache) / bcm.WEIGHTS_DIRNAME
    if not (wdir / "model.safetensors").is_file():
        subprocess.run([peer_python("hf", args), str(Path(__file__).resolve().parent / "bench_peers.py"),
                        "--make-weights", "--cache", str(args.cache)], check=True)

    peak0 = matmul_peak(args.threads)
    print(f"fp32 matmul peak (start): jax {peak0['jax'] / 1e9:.1f} GFLOP/s, torch {peak0['torch'] / 1e9:.1f} GFLOP/s")

    all_res = {}
    cfg, params = load_interpjax_model(args) if not args.no_run else (None, None)
    for w in args.workloads:
        all_res[w] = {}
        ij_path = results_dir / f"interpjax_{w}.json"
        if ij_path.is_file() and not args.rerun:
            with open(ij_path) as f:
                all_res[w]["interpjax"] = json.load(f)
        elif args.no_run:
            all_res[w]["interpjax"] = {"unavailable": "not run (no cached result; --no-run)"}
        else:
            r = run_interpjax(w, cfg, params, bc, args)
            write_json_atomic(ij_path, r)
            all_res[w]["interpjax"] = json.loads(json.dumps(r, default=bcm._json_default))
        for lib in args.peers:
            out = results_dir / f"{lib}_{w}.json"
            if out.is_file() and not args.rerun:
                with open(out) as f:
                    all_res[w][lib] = json.load(f)
            elif args.no_run:
                all_res[w][lib] = {"unavailable": "not run (no cached result; --no-run)"}
            else:
                all_res[w][lib] = run_peer(lib, w, args, out)
            if "unavailable" in all_res[w][lib]:
                print(f"    {lib} {w} unavailable: {all_res[w][lib]['unavailable']}")
    del params
    jax.clear_caches()
    peak1 = matmul_peak(args.threads)
    peak = max(peak0["peak_flops"], peak1["peak_flops"])
    peak_cpu = max(peak0["peak_flops_per_cpu_s"], peak1["peak_flops_per_cpu_s"])
    print(f"fp32 matmul peak (end): jax {peak1['jax'] / 1e9:.1f} GFLOP/s, torch {peak1['torch'] / 1e9:.1f} GFLOP/s; "
          f"using the best, {peak / 1e9:.1f} GFLOP/s; per CPU-second {peak_cpu / 1e9:.1f} GFLOP")

    table = summarize_sweeps(all_res, bc, peak, args, peak_cpu)
    return {"subcommand": "sweeps", "machine": info, "threads": args.threads, "repeats": args.repeats,
            "quick": args.quick, "per_variant": args.per_variant, "matmul_peak": {"start": peak0, "end": peak1,
            "used_flops": peak, "used_flops_per_cpu_s": peak_cpu}, "load_average_end": load_average(), "rows": table, "raw": all_res}


def speedup_cell(e: dict) -> str:
    """'wall x / CPU x': a peer row's time over interpjax's, or interpjax's speedup over the fastest peer."""
    def x(v):
        return "-" if v is None else f"{v:.2f}x"

    if "interpjax_speedup" in e:
        return f"{x(e['interpjax_speedup'])} / {x(e.get('interpjax_speedup_cpu'))}"
    if "speedup_vs_fastest_peer" in e:
        return f"{x(e['speedup_vs_fastest_peer'])} / {x(e.get('speedup_vs_fastest_peer_cpu'))} vs fastest peer"
    return "-"


def summarize_sweeps(all_res: dict, bc, peak: float, args, peak_cpu: float = 0.0) -> list:
    """Agreement, forward-pass equivalents, useful FLOP/s (per wall second against the wall-clock matmul
    peak, and per CPU second against the matmul's FLOP per CPU second) and ratios; one table per workload."""
    rows = []
    for w, libs in all_res.items():
        ref_lib = libs.get("hf", {})
        ref = None
        for name, r in ref_lib.get("idioms", {}).items():
            if "error" in r:
                continue
            ref = result_key(r)  # the first transformers idiom (per variant when run, else stacked)
            ref_name = name
            break
        flops = None if args.quick else (bcm.useful_flops(bc, w) if w != "W0" else None)
        entries = []
        for lib, res in libs.items():
            if "unavailable" in res:
                entries.append({"workload": w, "lib": lib, "idiom": "-", "unavailable": res["unavailable"]})
                continue
            for name, r in res["idioms"].items():
                if "error" in r:
                    entries.append({"workload": w, "lib": lib, "idiom": name, "unavailable": r["error"]})
                    continue
                e = {"workload": w, "lib": lib, "idiom": name, "median_s": r["median_s"], "min_s": r["min_s"],
                     "warmup_s": r["warmup_s"], "cpu_s_median": r.get("cpu_s_median"),
                     "peak_rss_mib": r["peak_rss_increase_bytes"] / 2 ** 20,
                     "forward_equivalents": r.get("forward_equivalents"), "cpu_share": r.get("cpu_share")}
                if w == "W3":  # the model resident (params / RSS growth while loading) + the run's peak growth
                    model_b = res.get("model_bytes", res.get("model_rss_bytes"))
                    if model_b:
                        need = bcm.cache_bytes(bc) + bcm.param_bytes(bc)
                        e["model_mib"] = model_b / 2 ** 20
                        e["peak_over_acts_plus_params"] = (model_b + r["peak_rss_increase_bytes"]) / need
                        e["increase_over_acts"] = r["peak_rss_increase_bytes"] / bcm.cache_bytes(bc)
                r_ref = ref
                if w == "W0":  # each forward shape against the transformers forward of the same shape
                    same = [v for k, v in ref_lib.get("idioms", {}).items() if k.split()[-1] == name.split()[-1]]
                    r_ref = result_key(same[0]) if same and "error" not in same[0] else None
                if r_ref is not None and result_key(r) is not None:
                    try:
                        e["agreement"] = agreement(result_key(r), r_ref)
                    except ValueError as err:
                        e["agreement_error"] = str(err)
                if w == "W0":
                    T = int(name.split("T")[-1])
                    e["useful_flops"] = bcm.useful_flops(bc, "W0", seq=T)
                elif flops:
                    e["useful_flops"] = flops
                if e.get("useful_flops"):
                    e["useful_frac_of_peak"] = e["useful_flops"] / r["median_s"] / peak
                    if e.get("cpu_s_median") and peak_cpu:
                        e["useful_frac_of_peak_cpu"] = e["useful_flops"] / e["cpu_s_median"] / peak_cpu
                entries.append(e)
        ij = [e for e in entries if e["lib"] == "interpjax"]
        peers = [e for e in entries if e["lib"] != "interpjax" and "median_s" in e]
        for e in entries:
            if "median_s" not in e:
                continue
            if w == "W0":  # compare forwards of the same shape only
                tail = e["idiom"].split()[-1]
                ij = [x for x in entries if x["lib"] == "interpjax" and x["idiom"].split()[-1] == tail]
                peers = [x for x in entries if x["lib"] != "interpjax" and "median_s" in x
                         and x["idiom"].split()[-1] == tail]
            if e["lib"] == "interpjax" and peers:
                fastest = min(peers, key=lambda p: p["median_s"])
                e["fastest_peer"] = f"{fastest['lib']}: {fastest['idiom']}"
                e["speedup_vs_fastest_peer"] = fastest["median_s"] / e["median_s"]
                if e.get("cpu_s_median") and all(p.get("cpu_s_median") for p in peers):
                    fastest_cpu = min(peers, key=lambda p: p["cpu_s_median"])
                    e["fastest_peer_cpu"] = f"{fastest_cpu['lib']}: {fastest_cpu['idiom']}"
                    e["speedup_vs_fastest_peer_cpu"] = fastest_cpu["cpu_s_median"] / e["cpu_s_median"]
            elif ij and "median_s" in ij[0]:
                e["interpjax_speedup"] = e["median_s"] / ij[0]["median_s"]
                if e.get("cpu_s_median") and ij[0].get("cpu_s_median"):
                    e["interpjax_speedup_cpu"] = e["cpu_s_median"] / ij[0]["cpu_s_median"]
        rows += entries

        def fmt(x, f):
            return "-" if x is None else format(x, f)

        if w != "W0" and ref is not None:
            print(f"\n{w}: agreement reference = transformers '{ref_name}'")
        print_table(f"{w} ({'quick corner' if args.quick else 'full grid'}; {args.repeats} timed runs; "
                    f"useful FLOP/s as a fraction of {peak / 1e9:.0f} GFLOP/s fp32 matmul peak)", [
            [f"{PEER_LABELS.get(e['lib'], e['lib'])}: {e['idiom']}"] + (
                [f"unavailable ({e['unavailable'][:60]})", "", "", "", "", "", "", "", "", ""] if "unavailable" in e else
                [fmt(e["median_s"], ".3f"), fmt(e["min_s"], ".3f"), fmt(e.get("cpu_s_median"), ".1f"),
                 fmt(e["warmup_s"], ".2f"),
                 fmt(e.get("forward_equivalents"), ".1f"), fmt(e.get("useful_frac_of_peak"), ".0%"),
                 fmt(e.get("useful_frac_of_peak_cpu"), ".0%"),
                 fmt(e["peak_rss_mib"], ",.0f"), fmt(e.get("agreement"), ".1e"),
                 speedup_cell(e)])
            for e in entries],
            ["", "median s", "min s", "CPU s", "warm-up s", "fwd equiv", "useful/peak", "useful/peak (CPU)", "peak RSS MiB", "rel diff",
             "interpjax speedup (wall / CPU)"])
        if w == "W3":
            need = (bcm.cache_bytes(bc) + bcm.param_bytes(bc)) / 2 ** 20
            print(f"W3 memory: activations asked for {bcm.cache_bytes(bc) / 2 ** 20:.0f} MiB + params "
                  f"{bcm.param_bytes(bc) / 2 ** 20:.0f} MiB = {need:.0f} MiB")
            for e in entries:
                if "peak_over_acts_plus_params" in e:
                    print(f"  {e['lib']}: model {e['model_mib']:.0f} MiB + peak increase {e['peak_rss_mib']:.0f} MiB "
                          f"= {e['peak_over_acts_plus_params']:.2f} x (activations + params); "
                          f"increase / activations {e['increase_over_acts']:.2f}")
    return rows


# ---------------------------------------------------------------------------------------------
# command line


BIGSTEER_SHAPES = {
    # Llama-2-7B: rotary, RMSNorm, gated SiLU MLP, untied unembedding
    "llama7b": dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_head=128, d_mlp=11008, n_ctx=4096,
                    positions="rotary", rotary_dim=128, norm="rmsnorm", norm_bias=False, mlp="gated",
                    activation="silu"),
    "tiny": dict(vocab_size=512, d_model=64, n_layers=4, n_heads=4, d_head=16, d_mlp=172, n_ctx=64,
                 positions="rotary", rotary_dim=16, norm="rmsnorm", norm_bias=False, mlp="gated", activation="silu"),
}


def steering_flops(cfg, B: int, T: int, n_coefs: int) -> float:
    """Useful FLOPs of a layers x coefficients steering sweep at every position with a two-logit
    metric: the base run (all layers) + per coefficient and start layer l the layers l..n-1 on all
    positions, + 2 logits per prompt per variant. Dense part per row 2(D*N*H + 2*D*K*H + N*H*D +
    m*D*F) (m = 3 gated, 2 standard); causal attention 4*N*H*(t+1) at position t."""
    D, N, K, H, F, n = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.d_mlp, cfg.n_layers
    dense = 2 * (D * N * H + 2 * D * K * H + N * H * D + (3 if cfg.mlp == "gated" else 2) * D * F)
    layer = B * sum(dense + 4 * N * H * (t + 1) for t in range(T))
    passes = n + n_coefs * sum(n - l for l in range(n))
    return float(passes * layer + 2 * n_coefs * n * B * D * 2)


def dot_peak(dtype, sizes=(2048, 4096, 8192), repeats: int = 5) -> float:
    """The best FLOP/s of jnp.dot on square ``dtype`` matrices (the peak to divide by)."""
    import jax
    import jax.numpy as jnp

    best = 0.0
    for n in sizes:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
        dot = jax.jit(jnp.dot)
        dot(a, a).block_until_ready()
        for _ in range(repeats):
            t0 = time.perf_counter()
            dot(a, a).block_until_ready()
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def cmd_bigsteer(args) -> dict:
    import jax
    import jax.numpy as jnp

    import interpjax
    from interpjax import Add, Config, sweep as sw
    from interpjax import train

    if args.layers < 0:
        raise SystemExit("--layers must be >= 0 (0: the shape's own layer count)")
    dtype = jnp.dtype(args.dtype)
    cfg = Config(**{**BIGSTEER_SHAPES[args.shape], **({"n_layers": args.layers} if args.layers else {})})
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({dev.platform}) x {len(jax.devices())}; shape {args.shape}, {cfg.n_layers} "
          f"layers, {args.dtype}, {args.batch} prompts x {args.seq} tokens, {args.coefs} coefficients", flush=True)
    peak = dot_peak(dtype, (256, 512) if args.shape == "tiny" else (2048, 4096, 8192))
    print(f"{args.dtype} matmul peak (jnp.dot, measured now): {peak / 1e12:.2f} TFLOP/s", flush=True)
    params = jax.block_until_ready(jax.jit(functools.partial(train.init_params, cfg, dtype=dtype))(jax.random.PRNGKey(0)))
    n_params = sum(int(a.size) for a in jax.tree.leaves(params))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (args.batch, args.seq)).astype(np.int32)
    v = jnp.asarray(rng.standard_normal(cfg.d_model).astype(np.float32) / np.sqrt(cfg.d_model), dtype)
    coefs = np.linspace(-8, 8, args.coefs).astype(np.float32)
    layers = np.arange(cfg.n_layers)

    def metric(out):
        lg = out.logits(-1, (0, 1)).astype(jnp.float32)
        return jnp.mean(lg[:, 0] - lg[:, 1])

    run = lambda: sw.steering((cfg, params), tokens, v, coefs, metric, layers=layers, progress=False).values
    t0 = time.perf_counter()
    vals = np.asarray(run())
    cold = time.perf_counter() - t0
    ts = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        vals = np.asarray(run())
        ts.append(time.perf_counter() - t0)
    med = float(np.median(ts))
    flops = steering_flops(cfg, args.batch, args.seq, args.coefs)
    errs = []
    for l, c in ((0, 0), (cfg.n_layers // 2, args.coefs // 3), (cfg.n_layers - 1, args.coefs - 1)):
        lg = interpjax.forward(cfg, params, tokens, interventions=Add("resid_pre", layer=l, vector=v, coeff=coefs[c]))
        ref = float(jnp.mean(lg[:, -1, 0].astype(jnp.float32) - lg[:, -1, 1].astype(jnp.float32)))
        errs.append(abs(float(vals[l, c]) - ref) / max(abs(ref), 1e-6))
    res = {"subcommand": "bigsteer", "device": dev.device_kind, "platform": dev.platform, "shape": args.shape,
           "dtype": args.dtype, "n_params": n_params, "grid": [cfg.n_layers, args.coefs], "batch": args.batch,
           "seq": args.seq, "cold_s": cold, "times_s": ts, "median_s": med, "useful_flops": flops,
           "useful_flops_per_s": flops / med, "matmul_peak": peak, "fraction_of_peak": flops / med / peak,
           "max_rel_err_sampled": max(errs), "finite": bool(np.isfinite(vals).all())}
    print(f"{n_params / 1e9:.2f}B params; sweep {cfg.n_layers}x{args.coefs}: cold {cold:.1f} s, median {med:.2f} s "
          f"(runs {', '.join(f'{t:.2f}' for t in ts)}); useful {flops / med / 1e12:.2f} TFLOP/s = "
          f"{100 * res['fraction_of_peak']:.0f}% of the measured {args.dtype} peak; sampled cells vs direct forwards: "
          f"max rel err {max(errs):.2e}", flush=True)
    return res


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

    p = sub.add_parser("sweeps", help="workloads W0-W3 head to head: interpjax vs transformers, TransformerLens, "
                                      "nnsight, pyvene (../shared/bench/WORKLOADS.md)")
    p.add_argument("--workloads", nargs="+", default=list(bcm.WORKLOADS), metavar="W", help="default: W0 W1 W2 W3")
    p.add_argument("--peers", nargs="+", default=list(PEER_LIBS), metavar="LIB",
                   help=f"peer libraries (default: all of {PEER_LIBS}; hf is required, it is the reference)")
    p.add_argument("--cache", default=str(bcm.default_cache_dir()),
                   help="weights, venvs and results (default %(default)s; never inside the repo)")
    for lib in PEER_LIBS:
        p.add_argument(f"--venv-{lib}", metavar="DIR", help=f"venv for {lib} (default: $INTERPJAX_BENCH_VENV_{lib.upper()} "
                                                            f"or CACHE/{PEER_VENVS[lib] or '<this python>'})")
    p.add_argument("--results", metavar="DIR", help="per (lib, workload) JSON; existing ones are reused unless "
                                                    "--rerun (default CACHE/results)")
    p.add_argument("--rerun", action="store_true", help="recompute results that already exist")
    p.add_argument("--no-run", action="store_true", help="only report the cached results (missing ones: 'not run')")
    p.add_argument("--repeats", type=int, default=3, help="timed full sweeps per idiom (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per peer (default 2; XLA uses the cores)")
    p.add_argument("--per-variant", action="store_true",
                   help="also time the one-forward-per-variant idioms (192 / 384 forwards per sweep; slow)")
    p.add_argument("--fastest-only", action="store_true",
                   help="W1/W2: time only each peer's fastest idiom (bench_peers.FASTEST)")
    p.add_argument("--quick", action="store_true", help="a 2x2 corner of each grid, 1 repeat: a smoke run")
    p.add_argument("--bench-config", help="bench_config.py (default ../shared/bench/bench_config.py beside the repo)")
    p.add_argument("--json", metavar="OUT", help="also write all results as JSON to OUT (atomically)")
    p.set_defaults(func=cmd_sweeps)

    p = sub.add_parser("bigsteer", help="accelerator workload: Llama-7B-shaped bf16 steering sweep, 32 layers x 64 "
                                        "coefficients, useful FLOP/s vs the measured matmul peak")
    p.add_argument("--shape", choices=sorted(BIGSTEER_SHAPES), default="llama7b")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--layers", type=int, default=0, help="override the layer count (default: the shape's)")
    p.add_argument("--coefs", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT (atomically)")
    p.set_defaults(func=cmd_bigsteer)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("batch", "seq", "repeats", "compile_repeats", "coefs"):
        if getattr(args, name, 1) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if getattr(args, "quick", False):
        args.repeats = 1
    result = args.func(args)
    if getattr(args, "json", None):
        result["argv"] = sys.argv
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
