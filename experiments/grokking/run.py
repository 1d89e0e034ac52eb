"""Grokking on modular addition (Nanda et al. 2023; Varma et al. 2023, "Explaining grokking through
circuit efficiency"): a 1-layer transformer trained full-batch with AdamW + weight decay first
memorises the training pairs, then, much later, generalises; parameter norm falls as it does.
Also: the training-set-size sweep around the critical size, and ungrokking (continue training a
grokked model on a smaller subset until test accuracy collapses).

    python experiments/grokking/run.py --quick          # CI smoke run (seconds)
    python experiments/grokking/run.py                  # full mode (see README for time)

Results (results.json, curves.png, sweep.png, ungrok.png) go to ``--out``/{quick,full}; the
Trainer checkpoints and metrics.jsonl files to ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from interpjax import Config
from interpjax.train import TrainConfig, Trainer, lm_loss


def dataset(p: int):
    """All (a, b) pairs as sequences [a, b, =, (a+b) mod p]; '=' is token p."""
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    a, b = a.ravel(), b.ravel()
    return np.stack([a, b, np.full_like(a, p), (a + b) % p], 1).astype(np.int32)


def model_config(p: int, d_model: int = 128) -> Config:
    return Config(vocab_size=p + 1, d_model=d_model, n_layers=1, n_heads=4, d_head=d_model // 4, d_mlp=4 * d_model,
                  n_ctx=4, positions="learned", norm="layernorm", activation="relu", mlp_bias=True, o_bias=True,
                  qkv_bias=True, tie_embeddings=False)


def answer_mask(n: int):
    m = np.zeros((n, 4), np.float32)
    m[:, 3] = 1.0
    return m


def run(workdir: Path, p: int, frac: float, steps: int, seed: int, d_model: int, lr: float, wd: float,
        log_every: int, params=None, train_idx=None, tag: str = "") -> dict:
    """Train full-batch on a fraction of pairs; returns the metric curves."""
    data = dataset(p)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(data))
    n_train = int(frac * len(data))
    if train_idx is None:
        train_idx = perm[:n_train]
    test_idx = np.setdiff1d(np.arange(len(data)), train_idx)
    train, test = data[train_idx], data[test_idx]
    cfg = model_config(p, d_model)
    tc = TrainConfig(lr=lr, weight_decay=wd, b1=0.9, b2=0.98, warmup_steps=10, schedule="constant",
                     total_steps=steps, clip_norm=None, log_every=log_every, ckpt_every=max(steps // 4, 1), seed=seed)
    test_tokens, test_mask = jnp.asarray(test), jnp.asarray(answer_mask(len(test)))

    @jax.jit
    def evaluate(params):
        loss, acc = lm_loss(cfg, params, test_tokens, test_mask)
        return {"loss": loss, "acc": acc}

    batch = {"tokens": train, "loss_mask": answer_mask(len(train))}
    trainer = Trainer(cfg, tc, workdir / f"run{tag}", params=params, eval_fn=evaluate, eval_every=log_every)
    trainer.train(lambda step: batch, steps, progress=False)
    rows = [json.loads(l) for l in trainer.log_path.read_text().splitlines()]
    return {"rows": rows, "params": trainer.params, "train_idx": train_idx, "n_train": len(train_idx)}


def grok_step(rows, thresh=0.95):
    """First logged step with test accuracy >= thresh (None if never)."""
    for r in rows:
        if r.get("eval_acc", 0) >= thresh:
            return r["step"]
    return None


def plot_curves(rows, path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    ax[0].plot(steps, [r["loss"] for r in rows], label="train")
    ax[0].plot(steps, [r["eval_loss"] for r in rows], label="test")
    ax[0].set_yscale("log"), ax[0].set_title("loss"), ax[0].legend()
    ax[1].plot(steps, [r["acc"] for r in rows], label="train")
    ax[1].plot(steps, [r["eval_acc"] for r in rows], label="test")
    ax[1].set_title("accuracy"), ax[1].legend()
    ax[2].plot(steps, [r["param_norm"] for r in rows])
    ax[2].set_title("parameter norm")
    for a in ax:
        a.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)
    plt.close(fig)


def plot_sweep(sweep, path: Path, p: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    fr = [s["frac"] for s in sweep]
    ax.plot(fr, [s["final_train_acc"] for s in sweep], "o-", label="train")
    ax.plot(fr, [s["final_test_acc"] for s in sweep], "o-", label="test")
    ax.set_xlabel("training fraction of all p^2 pairs"), ax.set_ylabel("final accuracy")
    ax.set_title(f"dataset-size sweep (p={p})"), ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--p", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="steps of the main run")
    ap.add_argument("--sweep-steps", type=int, default=None)
    ap.add_argument("--d-model", type=int, default=None)
    ap.add_argument("--frac", type=float, default=None, help="training fraction of the main run")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--wd", type=float, default=1.0)
    ap.add_argument("--ungrok-steps", type=int, default=None, help="steps of the ungrokking run")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--workdir", default=None,
                    help="checkpoints + metrics.jsonl (default: <repo>/runs/grokking, or <out>/work with --out)")
    ap.add_argument("--resume", action="store_true", help="resume runs found in --workdir instead of starting fresh")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    q = args.quick
    p = args.p or (23 if q else 97)
    if not 2 <= p:
        raise ValueError(f"--p must be >= 2, got {p}")
    steps = args.steps or (300 if q else 1000)
    sweep_steps = args.sweep_steps or (150 if q else 800)
    d_model = args.d_model or (32 if q else 64)
    lr = args.lr or 3e-3
    frac = args.frac or (0.5 if q else 0.3)
    log_every = 25 if q else 50
    mode = "quick" if q else "full"
    out = Path(args.out) / mode
    out.mkdir(parents=True, exist_ok=True)
    default_out = Path(args.out).resolve() == (Path(__file__).resolve().parent / "results")
    work = Path(args.workdir) if args.workdir else (
        Path(__file__).resolve().parents[2] / "runs" / "grokking" if default_out else Path(args.out) / "work") / mode
    if work.exists() and not args.resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    main_run = run(work, p, frac, steps, args.seed, d_model, lr, args.wd, log_every, tag="_main")
    rows = main_run["rows"]
    summary = {"p": p, "steps": steps, "sweep_steps": sweep_steps, "d_model": d_model, "lr": lr,
               "weight_decay": args.wd, "train_frac": frac, "n_train": main_run["n_train"],
               "final": rows[-1], "grok_step": grok_step(rows),
               "memorised_step": next((r["step"] for r in rows if r["acc"] >= 0.99), None),
               "max_param_norm": max(r["param_norm"] for r in rows),
               "seconds_main": round(time.perf_counter() - t0, 1),
               "resumed": bool(args.resume)}  # with --resume, runs found finished are restored, not re-timed
    plot_curves(rows, out / "curves.png", f"modular addition p={p}, {frac:.0%} of pairs: train vs test")

    sweep = []
    fracs = [0.2, 0.3] if q else [0.2, 0.25, 0.3]
    for f in fracs:
        if f == frac and sweep_steps <= steps:
            # constant lr schedule: the main run's first sweep_steps steps ARE this sweep point
            rr = [r for r in rows if r["step"] <= sweep_steps]
        else:
            rr = run(work, p, f, sweep_steps, args.seed, d_model, lr, args.wd, log_every, tag=f"_frac{f}")["rows"]
        sweep.append({"frac": f, "n_train": int(f * p * p), "final_test_acc": rr[-1]["eval_acc"],
                      "final_train_acc": rr[-1]["acc"], "grok_step": grok_step(rr)})
    summary["size_sweep"] = sweep
    plot_sweep(sweep, out / "sweep.png", p)

    # ungrokking: continue the grokked model on a much smaller subset of its training pairs
    t1 = time.perf_counter()
    small = main_run["train_idx"][: max(len(main_run["train_idx"]) // 4, 1)]
    ung_steps = args.ungrok_steps or (150 if q else 3000)
    ung = run(work, p, 0.0, ung_steps, args.seed, d_model, lr, args.wd, log_every,
              params=main_run["params"], train_idx=small, tag="_ungrok")
    summary["ungrok"] = {"n_train": len(small), "frac": len(small) / p**2, "start_test_acc": rows[-1]["eval_acc"],
                         "end_test_acc": ung["rows"][-1]["eval_acc"], "end_train_acc": ung["rows"][-1]["acc"],
                         "steps": ung["rows"][-1]["step"], "seconds": round(time.perf_counter() - t1, 1),
                         "first_step_test_below_0.5": next((r["step"] for r in ung["rows"] if r["eval_acc"] < 0.5), None),
                         "min_param_norm": min(r["param_norm"] for r in ung["rows"])}
    plot_curves(ung["rows"], out / "ungrok.png", f"ungrokking: continue on {len(small)} pairs")
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out / "results.json")
    print(json.dumps({k: v for k, v in summary.items() if k != "final"}, indent=1))


if __name__ == "__main__":
    main()
