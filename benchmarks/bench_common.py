"""Helpers shared by ``bench.py`` (interpjax side, jax venv) and ``bench_peers.py`` (PyTorch peers,
each in its own venv). numpy and the standard library only, so every venv can import it.

- where things live: the shared workload definition (``bench_config.py``), the weight cache;
- machine facts (CPU model, load, cores) and the timing protocol (warm-up, >= 3 timed runs,
  median and min, peak RSS increase sampled from /proc);
- the analytic FLOP counts of each workload's *minimal* recompute (what "useful FLOP/s" divides);
- atomic JSON writing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("W0", "W1", "W2", "W3")
WEIGHTS_DIRNAME = "gpt2-small-random-seed0"  # inside the cache dir: config.json + model.safetensors

# ---------------------------------------------------------------------------------------------
# locations


def default_cache_dir() -> Path:
    """Where generated weights, venvs and results live (never inside the repo):
    ``$INTERPJAX_BENCH_CACHE`` or ``~/.cache/interpjax-bench``."""
    return Path(os.environ.get("INTERPJAX_BENCH_CACHE", Path.home() / ".cache" / "interpjax-bench")).expanduser()


def default_bench_config_path() -> Path:
    """``$INTERPJAX_BENCH_CONFIG`` or ``../shared/bench/bench_config.py`` relative to the repo root."""
    env = os.environ.get("INTERPJAX_BENCH_CONFIG")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "bench" / "bench_config.py"


def load_bench_config(path=None):
    """Import the shared workload definition (numpy only) from its file."""
    path = Path(path) if path else default_bench_config_path()
    if not path.is_file():
        raise ValueError(f"bench_config.py not found at {path}; pass --bench-config or set INTERPJAX_BENCH_CONFIG")
    spec = importlib.util.spec_from_file_location("bench_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def workload_inputs(bc) -> dict:
    """Every input array of the workloads, from the shared definition."""
    return {
        "clean": bc.clean_tokens(),            # [8, 32] int64
        "corrupted": bc.corrupted_tokens(),    # [8, 32]
        "cache_tokens": bc.cache_tokens(),     # [8, 128]
        "steer": bc.steering_vector(),         # [768] float32
        "coefs": np.asarray(bc.COEFS, np.float32),  # [16]
    }


# ---------------------------------------------------------------------------------------------
# machine


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


# ---------------------------------------------------------------------------------------------
# memory: peak RSS increase


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc/self/statm; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


class PeakRSS:
    """Context manager: peak RSS increase over the RSS at entry, sampled every ``interval`` s by a
    background thread (plus once at exit).

    Method, and why: torch's and XLA's CPU allocators bypass tracemalloc, so the process RSS is the
    one number every library shares. Spikes shorter than ``interval`` can be missed, and memory a
    library freed but its allocator kept mapped still counts (as it does for the machine).
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.base = self.peak = 0
        self._stop = threading.Event()

    def _poll(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self):
        self.base = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        return False

    @property
    def increase(self) -> int:
        return self.peak - self.base


# ---------------------------------------------------------------------------------------------
# timing protocol


def summarize(times: list) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "all_s": list(times)}


def time_protocol(run, warm=None, repeats: int = 3, sync=lambda x: x) -> dict:
    """WORKLOADS.md's protocol for one idiom: ``warm()`` (default ``run``) once untimed -- the per-call
    shapes of the full sweep, i.e. compilation -- then ``repeats`` timed ``run()``s, each under a
    peak-RSS sampler. ``sync`` blocks on asynchronous results (jax). Returns timings, the result of
    the last run, and the largest peak RSS increase of the timed runs."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    t0 = time.perf_counter()
    sync((warm or run)())
    warm_s = time.perf_counter() - t0
    times, cpus, peaks, out = [], [], [], None
    for _ in range(repeats):
        out = None
        with PeakRSS() as mem:
            c0, t0 = os.times(), time.perf_counter()
            out = sync(run())
            t1, c1 = time.perf_counter(), os.times()
        times.append(t1 - t0)
        cpus.append((c1.user - c0.user) + (c1.system - c0.system))
        peaks.append(mem.increase)
    # CPU seconds of this process (all threads) per run: steadier than wall time when other processes
    # compete for the cores, though threads that spin while waiting count too
    cpu_share = sum(cpus) / (sum(times) * available_cores())
    return {"warmup_s": warm_s, **summarize(times), "cpu_s_median": statistics.median(cpus),
            "peak_rss_increase_bytes": max(peaks), "cpu_share": cpu_share, "result": out}


# ---------------------------------------------------------------------------------------------
# FLOPs of the minimal recompute (matmul FLOPs, 2 per multiply-add; norms, softmax, GELU and
# biases are elementwise and left out)


def block_flops(bc, batch: int, query_positions) -> float:
    """One transformer block for ``batch`` rows, recomputing only ``query_positions`` (keys/values of
    earlier positions reused): per query position t the dense part 2(4D^2 + 2DF) (q, k, v, o
    projections and the two MLP matrices) plus causal attention 4D(t+1) (scores and pattern @ v
    over keys 0..t)."""
    D, F = bc.D_MODEL, bc.D_MLP
    dense = 2 * (4 * D * D + 2 * D * F)
    return float(batch * sum(dense + 4 * D * (t + 1) for t in query_positions))


def unembed_flops(bc, rows: int, n_ids: int) -> float:
    return float(2 * rows * bc.D_MODEL * n_ids)


def useful_flops(bc, workload: str, seq: int | None = None) -> float:
    """FLOPs a minimal recompute of ``workload`` needs (formulas in the comments below)."""
    L, B, T = bc.N_LAYERS, bc.B, bc.T
    full = block_flops(bc, B, range(T))  # one layer, all positions
    if workload == "W0":
        # a plain forward of [B, seq], every layer, the full-vocabulary unembedding at every position
        s = seq or T
        return L * block_flops(bc, B, range(s)) + unembed_flops(bc, B * s, bc.D_VOCAB)
    if workload == "W1":
        # the clean run once (L layers), then for each layer l and coefficient only layers l..L-1 (the
        # steer changes every position, so all of them): sum_l (L - l) = 78 of 144 layer passes per
        # coefficient (~0.54 of a naive sweep); logits only at the last position for the 2 token ids.
        n_coef = len(bc.COEFS)
        passes = L + n_coef * sum(L - l for l in range(L))
        return passes * full + unembed_flops(bc, n_coef * L * B, 2)
    if workload == "W2":
        # the clean run (to cache resid_pre) and the corrupted run once; each (l, p) variant recomputes
        # layers l..L-1 at positions p..T-1 only (causal attention: earlier positions, and their keys
        # and values, are unchanged): sum_l (L - l) * block(positions p..T-1), ~0.28 of a naive sweep.
        patched = sum((L - l) * block_flops(bc, B, range(p, T)) for l in range(L) for p in range(T))
        return 2 * L * full + patched + unembed_flops(bc, L * T * B, 2)
    if workload == "W3":
        # one forward through all layers of [B, T_CACHE]; no logits are asked for
        return L * block_flops(bc, B, range(bc.T_CACHE))
    raise ValueError(f"unknown workload {workload!r}; valid: {WORKLOADS}")


def cache_bytes(bc) -> int:
    """Bytes of the activations W3 asks for: resid_pre, attn_out, mlp_out of every layer, fp32."""
    return 3 * bc.N_LAYERS * bc.B * bc.T_CACHE * bc.D_MODEL * 4


def param_bytes(bc) -> int:
    """fp32 bytes of the GPT-2-small parameters (unembedding tied, so counted once)."""
    D, F, L = bc.D_MODEL, bc.D_MLP, bc.N_LAYERS
    per_layer = 4 * D * D + 4 * D + 2 * D * F + F + D + 4 * D  # qkv+o (+biases), MLP (+biases), two norms
    return 4 * (bc.D_VOCAB * D + bc.N_CTX * D + L * per_layer + 2 * D)


def naive_flops(bc, workload: str) -> float:
    """FLOPs of the naive sweep: every variant a full forward with full logits (for context)."""
    per_fwd = useful_flops(bc, "W0", bc.T)
    n = {"W1": bc.N_LAYERS * len(bc.COEFS), "W2": bc.N_LAYERS * bc.T}.get(workload)
    if n is None:
        raise ValueError(f"naive_flops is defined for W1 and W2, not {workload!r}")
    return n * per_fwd


# ---------------------------------------------------------------------------------------------
# results


def write_json_atomic(path, obj) -> None:
    """Write JSON to a temp file next to ``path`` then os.replace it, so readers never see half a file."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bench-", suffix=".json", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def rel_err(a, ref) -> float:
    """max|a - ref| / max|ref| (the agreement measure of WORKLOADS.md)."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    if a.shape != ref.shape:
        raise ValueError(f"shapes differ: {a.shape} vs reference {ref.shape}")
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


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
