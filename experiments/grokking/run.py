"""Grokking on modular addition (Power et al. 2022; Nanda et al. 2023; Varma et al. 2023, "Explaining
grokking through circuit efficiency"), with its controls.

A 1-layer transformer trained full-batch with AdamW on part of the table ``(a + b) mod p`` first
memorises its training pairs, and only much later generalises to the held-out pairs while its
parameter norm falls. The control is the same run with weight decay 0 (same steps, same seed,
same split): it memorises but does not generalise in the same budget. Ungrokking: a grokked model
continued on a small subset of its training pairs loses test accuracy, against the control of
continuing it for as long on its whole training set.

    python experiments/grokking/run.py            # full mode: p = 31, 3 seeds (results/full/)
    python experiments/grokking/run.py --quick    # p = 31, 1 seed, seconds (results/quick/)

Every logged step of every run (train/test loss and accuracy, parameter norm) goes to
``metrics.jsonl``; numbers to ``results.json``; tables and figures beside them.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from interpjax import Config
from interpjax.evidence import Record, fmt_ci, markdown_table, seed_summary, sync_readme
from interpjax.io.artifacts import atomic_write_text
from interpjax.train import TrainConfig, Trainer, init_params, lm_loss

HERE = Path(__file__).resolve().parent
MEMORISED, GROKKED = 0.99, 0.95  # train / test accuracy thresholds of "memorised" and "grokked"

# settings of the two modes (README: why these sizes)
FULL = dict(p=31, d_model=64, frac=0.5, lr=3e-3, wd=1.0, steps=1200, log_every=25, seeds=(0, 1, 2),
            ungrok_frac=0.25, ungrok_steps=400)
QUICK = dict(p=31, d_model=32, frac=0.6, lr=1e-2, wd=1.0, steps=500, log_every=25, seeds=(0,),
             ungrok_frac=0.25, ungrok_steps=100)


# ---------------------------------------------------------------------------------------------
# data and model


def dataset(p: int) -> np.ndarray:
    """All p^2 sequences ``[a, b, =, (a + b) mod p]`` as int32 [p^2, 4]; '=' is token p."""
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    a, b = a.ravel(), b.ravel()
    return np.stack([a, b, np.full_like(a, p), (a + b) % p], 1).astype(np.int32)


def split(p: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices) into ``dataset(p)``: a random ``frac`` of the pairs trains."""
    perm = np.random.default_rng(seed).permutation(p * p)
    n_train = int(frac * p * p)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def model_config(p: int, d_model: int) -> Config:
    """1-layer decoder of Nanda et al.: learned positions, LayerNorm, 4 heads, ReLU MLP 4x, untied."""
    return Config(vocab_size=p + 1, d_model=d_model, n_layers=1, n_heads=4, d_head=d_model // 4, d_mlp=4 * d_model,
                  n_ctx=4, positions="learned", norm="layernorm", activation="relu", mlp_bias=True, o_bias=True,
                  qkv_bias=True, tie_embeddings=False)


def answer_mask(n: int) -> np.ndarray:
    """Loss only on the answer token (position 3)."""
    m_B4 = np.zeros((n, 4), np.float32)
    m_B4[:, 3] = 1.0
    return m_B4


def optimiser(lr: float, weight_decay: float, log_every: int) -> TrainConfig:
    """AdamW, full batch, constant lr after 10 warmup steps, no clipping. The weight decay is the
    method's core: the control sets it to 0. Run length and seed are not part of it (the schedule
    is constant, the init is passed in), so every run with one weight decay shares one compiled step."""
    return TrainConfig(lr=lr, weight_decay=weight_decay, b1=0.9, b2=0.98, warmup_steps=10, schedule="constant",
                       total_steps=10**6, clip_norm=None, log_every=log_every, ckpt_every=10**6, seed=0)


@functools.partial(jax.jit, static_argnums=0)
def _evaluate(cfg: Config, params, tokens_B4, mask_B4) -> dict:
    loss, acc = lm_loss(cfg, params, tokens_B4, mask_B4)
    return {"loss": loss, "acc": acc}


# ---------------------------------------------------------------------------------------------
# training


def train(p: int, train_idx, test_idx, *, steps: int, seed: int, d_model: int, lr: float, wd: float,
          log_every: int, params=None) -> dict:
    """Train full-batch on ``train_idx`` (from ``params``, or a fresh init from ``seed``); returns
    ``{"rows": [one dict per logged step], "params"}`` with train/test loss, accuracy and norm."""
    data_N4 = dataset(p)
    train_B4, test_B4 = data_N4[train_idx], data_N4[test_idx]
    cfg = model_config(p, d_model)
    tc = optimiser(lr, wd, log_every)
    if params is None:
        params = init_params(cfg, jax.random.PRNGKey(seed))
    test_tokens, test_mask = jnp.asarray(test_B4), jnp.asarray(answer_mask(len(test_B4)))
    evaluate = lambda prm: _evaluate(cfg, prm, test_tokens, test_mask)
    batch = {"tokens": train_B4, "loss_mask": answer_mask(len(train_B4))}
    trainer = Trainer(cfg, tc, None, params=params, eval_fn=evaluate, eval_every=log_every, data_parallel=False)
    rows = []
    for target in range(log_every, steps + 1, log_every):  # in memory: one train() call per logged step
        r = trainer.train(lambda step: batch, target, progress=False)
        rows.append({"step": r["step"], "train_loss": r["loss"], "train_acc": r["acc"], "test_loss": r["eval_loss"],
                     "test_acc": r["eval_acc"], "param_norm": r["param_norm"]})
    return {"rows": rows, "params": trainer.params}


def late(rows: list[dict], key: str) -> float:
    """Median of ``key`` over the last quarter of the logged steps: robust to the one-step loss
    spikes of full-batch Adam without clipping."""
    return float(np.median([r[key] for r in rows[-max(len(rows) // 4, 1):]]))


def milestones(rows: list[dict]) -> dict:
    """Step of memorisation (train acc >= 0.99), of grokking (test acc >= 0.95; None: not within
    the budget), the parameter-norm peak and the final values of one run."""
    mem = next((r["step"] for r in rows if r["train_acc"] >= MEMORISED), None)
    grok = next((r["step"] for r in rows if r["test_acc"] >= GROKKED), None)
    peak = max(rows, key=lambda r: r["param_norm"])
    last = rows[-1]
    return {"memorised_step": mem, "grok_step": grok, "delay": None if mem is None or grok is None else grok - mem,
            "peak_norm": peak["param_norm"], "peak_norm_step": peak["step"], "final_norm": last["param_norm"],
            "final_train_acc": last["train_acc"], "final_test_acc": last["test_acc"], "final_test_loss": last["test_loss"],
            "late_test_acc": late(rows, "test_acc"), "late_train_acc": late(rows, "train_acc"),
            "test_acc_at_memorised": next((r["test_acc"] for r in rows if r["step"] == mem), None)}


def run_seed(s: dict, seed: int, log) -> dict:
    """One seed: the weight-decay run, its weight-decay-0 control (same split, init and steps), and
    ungrokking (the grokked model continued on a subset vs on its whole training set)."""
    train_idx, test_idx = split(s["p"], s["frac"], seed)
    common = dict(steps=s["steps"], seed=seed, d_model=s["d_model"], lr=s["lr"], log_every=s["log_every"])
    out = {"n_train": len(train_idx), "n_test": len(test_idx)}
    for arm, wd in (("wd", s["wd"]), ("wd0", 0.0)):
        t0 = time.perf_counter()
        r = train(s["p"], train_idx, test_idx, wd=wd, **common)
        log(r["rows"], seed=seed, run=arm)
        out[arm] = {**milestones(r["rows"]), "seconds": round(time.perf_counter() - t0, 1)}
        if arm == "wd":
            grokked = r["params"]
    # ungrokking: continue the weight-decay model (grokked or not, reported) on a quarter of its
    # training pairs; the control continues it on all of them for the same steps
    small = np.random.default_rng(1000 + seed).permutation(train_idx)[: max(int(s["ungrok_frac"] * len(train_idx)), 1)]
    cont = dict(common, steps=s["ungrok_steps"])
    for arm, idx in (("ungrok_small", np.sort(small)), ("ungrok_same", train_idx)):
        t0 = time.perf_counter()
        r = train(s["p"], idx, test_idx, wd=s["wd"], params=grokked, **cont)
        log(r["rows"], seed=seed, run=arm)
        rows = r["rows"]
        out[arm] = {"n_train": len(idx), "start_test_acc": out["wd"]["final_test_acc"],
                    "end_test_acc": rows[-1]["test_acc"], "late_test_acc": late(rows, "test_acc"),
                    "min_test_acc": min(x["test_acc"] for x in rows), "late_train_acc": late(rows, "train_acc"),
                    "end_norm": rows[-1]["param_norm"],
                    "first_step_test_below_half": next((x["step"] for x in rows if x["test_acc"] < 0.5), None),
                    "seconds": round(time.perf_counter() - t0, 1)}
    return out


# ---------------------------------------------------------------------------------------------
# the effect and its summaries


def effect_holds(result: dict) -> bool:
    """Grokking, against its control: with weight decay every seed memorises first (train acc >=
    0.99 while test acc is still < 0.95) and reaches test acc >= 0.95 later within the budget;
    with weight decay 0, in the same steps, no seed does."""
    seeds = result["per_seed"]
    wd_ok = all(r["wd"]["grok_step"] is not None and r["wd"]["memorised_step"] is not None
                and r["wd"]["grok_step"] > r["wd"]["memorised_step"] for r in seeds.values())
    ctrl_ok = all(r["wd0"]["grok_step"] is None for r in seeds.values())
    return bool(seeds) and wd_ok and ctrl_ok


def _steps_summary(values: list) -> dict | None:
    """Median and mean [95% t-interval] of the steps of the seeds that reached a milestone."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {**seed_summary(vals), "median": float(np.median(vals)), "reached": len(vals), "of": len(values)}


def _fmt_steps(sm: dict | None, n: int) -> str:
    if sm is None:
        return f"never (0/{n})"
    return f"{sm['median']:.0f} ({fmt_ci(sm, 0)}; {sm['reached']}/{sm['of']})"


def summarise(per_seed: dict) -> dict:
    """Across seeds, per arm: milestones (median, mean and 95% interval) and final values."""
    out = {}
    for arm in ("wd", "wd0"):
        rs = [r[arm] for r in per_seed.values()]
        out[arm] = {"memorised_step": _steps_summary([r["memorised_step"] for r in rs]),
                    "grok_step": _steps_summary([r["grok_step"] for r in rs]),
                    "seeds_grokked": sum(r["grok_step"] is not None for r in rs), "n_seeds": len(rs),
                    "late_test_acc": seed_summary([r["late_test_acc"] for r in rs]),
                    "late_train_acc": seed_summary([r["late_train_acc"] for r in rs]),
                    "peak_norm": seed_summary([r["peak_norm"] for r in rs]),
                    "final_norm": seed_summary([r["final_norm"] for r in rs]),
                    "norm_fall": seed_summary([r["peak_norm"] - r["final_norm"] for r in rs])}
    for arm in ("ungrok_small", "ungrok_same"):
        rs = [r[arm] for r in per_seed.values()]
        out[arm] = {"late_test_acc": seed_summary([r["late_test_acc"] for r in rs]),
                    "min_test_acc": seed_summary([r["min_test_acc"] for r in rs]),
                    "test_acc_drop": seed_summary([r["start_test_acc"] - r["late_test_acc"] for r in rs])}
    out["ungrok_drop_vs_control"] = seed_summary([r["ungrok_same"]["late_test_acc"] - r["ungrok_small"]["late_test_acc"]
                                                  for r in per_seed.values()])
    return out


def tables(per_seed: dict, summ: dict, s: dict) -> dict[str, str]:
    """The markdown tables of the README: grokking vs its control, per seed, ungrokking."""
    n = len(per_seed)
    rows = []
    for arm, name in (("wd", f"weight decay {s['wd']:g}"), ("wd0", "weight decay 0 (control)")):
        a = summ[arm]
        rows.append([name, f"{a['seeds_grokked']}/{n}", _fmt_steps(a["memorised_step"], n), _fmt_steps(a["grok_step"], n),
                     fmt_ci(a["late_test_acc"], 3), fmt_ci(a["peak_norm"], 1), fmt_ci(a["final_norm"], 1)])
    grok = markdown_table(["run", "seeds grokked", "memorised at step: median (mean [95% CI]; seeds)",
                           "grokked at step: median (mean [95% CI]; seeds)", f"test acc, last {s['steps'] // 4} steps (median)",
                           "peak param norm", "final param norm"], rows)
    rows = []
    for seed, r in per_seed.items():
        for arm in ("wd", "wd0"):
            m = r[arm]
            f = lambda v, d=3: "—" if v is None else f"{v:.{d}f}"
            rows.append([seed, "wd" if arm == "wd" else "wd 0", m["memorised_step"] or "—", m["grok_step"] or "never",
                         f(m["test_acc_at_memorised"]), f(m["late_test_acc"]),
                         f"{m['peak_norm']:.1f} (step {m['peak_norm_step']})", f(m["final_norm"], 1)])
    seeds = markdown_table(["seed", "run", "memorised at", "grokked at", "test acc when memorised", "test acc, last quarter",
                            "peak norm", "final norm"], rows)
    rows = []
    for seed, r in per_seed.items():
        sm, sa = r["ungrok_small"], r["ungrok_same"]
        rows.append([seed, f"{sm['start_test_acc']:.3f}", f"{sm['late_test_acc']:.3f} (min {sm['min_test_acc']:.3f})",
                     f"{sa['late_test_acc']:.3f} (min {sa['min_test_acc']:.3f})", f"{sm['late_train_acc']:.3f}"])
    rows.append(["mean [95% CI]", "", fmt_ci(summ["ungrok_small"]["late_test_acc"], 3),
                 fmt_ci(summ["ungrok_same"]["late_test_acc"], 3), ""])
    n_small = next(iter(per_seed.values()))["ungrok_small"]["n_train"]
    n_same = next(iter(per_seed.values()))["ungrok_same"]["n_train"]
    q = s["ungrok_steps"] // 4
    ung = markdown_table(["seed", "test acc at start", f"test acc, continued on {n_small} pairs (last {q} steps, median)",
                          f"control: continued on all {n_same} training pairs", f"train acc on the {n_small}"], rows)
    ung += (f"\nTest accuracy of the control minus that of the small-subset run (last {q} of {s['ungrok_steps']} "
            f"steps): {fmt_ci(summ['ungrok_drop_vs_control'], 3)} (mean over {n} seed(s), 95% t-interval).\n")
    return {"grokking.md": grok, "per_seed.md": seeds, "ungrok.md": ung}


def figures(metrics: list[dict], s: dict):
    """(curves: test/train accuracy, test loss, norm of both arms per seed; ungrokking curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({m["seed"] for m in metrics})
    colours = dict(zip(seeds, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, ax = plt.subplots(1, 4, figsize=(18, 4))
    for m_run, ls in (("wd", "-"), ("wd0", "--")):
        for seed in seeds:
            rows = [m for m in metrics if m["seed"] == seed and m["run"] == m_run]
            st = [r["step"] for r in rows]
            lab = f"seed {seed}, {'wd ' + format(s['wd'], 'g') if m_run == 'wd' else 'wd 0'}"
            for i, key in enumerate(("train_acc", "test_acc", "test_loss", "param_norm")):
                ax[i].plot(st, [r[key] for r in rows], ls, color=colours[seed], label=lab, lw=1.2)
    for a, t in zip(ax, ("train accuracy", "test accuracy", "test loss", "parameter norm")):
        a.set_title(t), a.set_xlabel("step")
    ax[2].set_yscale("log")
    ax[1].legend(fontsize=7)
    fig.suptitle(f"modular addition p={s['p']}, {s['frac']:.0%} of pairs train: weight decay (solid) vs 0 (dashed)")
    fig.tight_layout()
    fig2, bx = plt.subplots(1, 2, figsize=(10, 3.8))
    for m_run, ls in (("ungrok_small", "-"), ("ungrok_same", "--")):
        for seed in seeds:
            rows = [m for m in metrics if m["seed"] == seed and m["run"] == m_run]
            st = [r["step"] for r in rows]
            lab = f"seed {seed}, {'small subset' if m_run == 'ungrok_small' else 'all train pairs'}"
            bx[0].plot(st, [r["test_acc"] for r in rows], ls, color=colours[seed], label=lab)
            bx[1].plot(st, [r["param_norm"] for r in rows], ls, color=colours[seed])
    bx[0].set_title("test accuracy"), bx[1].set_title("parameter norm")
    for b in bx:
        b.set_xlabel("continuation step")
    bx[0].legend(fontsize=7)
    fig2.suptitle("ungrokking: the grokked model continued on a subset (solid) vs its whole training set (dashed)")
    fig2.tight_layout()
    return fig, fig2


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="p=31, one seed, seconds (results/quick/)")
    ap.add_argument("--out", default=None, help="results base folder (default: this folder's results/)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--steps", type=int, default=None, help="steps of both arms (weight decay and its control)")
    ap.add_argument("--ungrok-steps", type=int, default=None)
    args = ap.parse_args(argv)
    s = dict(QUICK if args.quick else FULL)
    if args.seeds:
        s["seeds"] = tuple(args.seeds)
    for k in ("steps", "ungrok_steps"):
        if getattr(args, k) is not None:
            s[k] = getattr(args, k)
    rec = Record(HERE, quick=args.quick, model=f"1-layer transformer d_model {s['d_model']}, trained here",
                 seeds=s["seeds"], argv=["experiments/grokking/run.py"] + list(sys.argv[1:] if argv is None else argv),
                 out=None if args.out is None else Path(args.out))
    metrics: list[dict] = []
    log = lambda rows, **tag: metrics.extend({**tag, **r} for r in rows)
    per_seed = {}
    for seed in s["seeds"]:
        per_seed[str(seed)] = run_seed(s, seed, log)
        print(f"seed {seed}:", json.dumps({k: v for k, v in per_seed[str(seed)]["wd"].items()}), flush=True)
    summ = summarise(per_seed)
    rec["settings"] = {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()}
    rec["thresholds"] = {"memorised_train_acc": MEMORISED, "grokked_test_acc": GROKKED}
    rec["per_seed"] = per_seed
    rec["summary"] = summ
    rec["effect_holds"] = effect_holds({"per_seed": per_seed})
    for name, md in tables(per_seed, summ, s).items():
        rec.table(name, md)
    atomic_write_text(rec.out / "metrics.jsonl", "".join(json.dumps({k: (round(v, 5) if isinstance(v, float) else v)
                                                                     for k, v in m.items()}) + "\n" for m in metrics))
    fig, fig2 = figures(metrics, s)
    rec.figure("curves.png", fig)
    rec.figure("ungrok.png", fig2)
    rec.save()
    if not args.quick:
        sync_readme(HERE / "README.md", rec.out)
    result = {"per_seed": per_seed, "summary": summ, "effect_holds": rec["effect_holds"], "out": str(rec.out)}
    print(json.dumps({"effect_holds": result["effect_holds"], "wd": summ["wd"]["grok_step"],
                      "wd0_grokked": summ["wd0"]["seeds_grokked"]}), flush=True)
    return result


if __name__ == "__main__":
    main()
