"""Program semantics in a LM trained on programs (Jin & Rinard 2023, "Evidence of meaning in
language models trained on programs"): a small LM is trained on grid-world robot tasks written as
``<bos> (<in> grid <out> grid)* <prog> program <eos>`` with the loss on the program only; at
checkpoints through training we measure (a) generation accuracy -- greedy-decoded programs for
held-out specs that satisfy the spec (``gridworld.check_program``) -- and (b) linear probe accuracy
on the hidden states at program tokens for the robot's facing direction now, one and two
instructions ahead. The paper's claim: probe accuracy for (future) semantic state rises together
with generation accuracy.

    python experiments/programs/run.py --quick    # CI smoke run
    python experiments/programs/run.py            # full mode (sizes and time in the README)

Results (results.json, curves.png) go to ``--out``/{quick,full}; every evaluated checkpoint is
kept (orbax) under ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from interpjax import Config, run_with_cache
from interpjax.methods import probes
from interpjax.generate import greedy
from interpjax.train import TrainConfig, Trainer
from interpjax.worlds import gridworld as G

HERE = Path(__file__).resolve().parent
SITE = "resid_post"
TARGETS = ("facing", "facing_next", "facing_next2")

SIZES = {
    "quick": dict(n_layers=2, d_model=64, n_heads=2, batch=32, steps=200, lr=3e-3, n_train=4000, n_eval=100,
                  n_probe=300, checkpoints=(0, 200), probe_steps=200),
    "full": dict(n_layers=2, d_model=64, n_heads=4, batch=32, steps=1200, lr=3e-3, n_train=30_000, n_eval=300,
                 n_probe=800, checkpoints=(0, 100, 200, 400, 600, 900, 1200), probe_steps=400),
}
TASK_KW = dict(grid=(4, 4), n_examples=3, program_length=(2, 6))


def model_config(n_layers: int, d_model: int, n_heads: int, n_ctx: int) -> Config:
    """A small GPT-2-style decoder over the 63-token grid-world vocabulary."""
    return Config(vocab_size=G.VOCAB.size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                  d_head=d_model // n_heads, d_mlp=4 * d_model, n_ctx=n_ctx, positions="learned",
                  norm="layernorm", activation="gelu", qkv_bias=True, o_bias=True, mlp_bias=True,
                  tie_embeddings=False)


def program_loss_mask(ds: G.GridDataset) -> np.ndarray:
    """float [N, T]: 1 on the program instructions and the <eos> after them (what the LM is scored on)."""
    mask = ds.program_mask_NT.astype(np.float32)
    mask[np.arange(len(mask)), ds.lengths_N - 1] = 1.0  # <eos>
    return mask


def generation_accuracy(cfg: Config, params, ds: G.GridDataset, max_prog: int) -> dict:
    """Greedy-decode a program for each spec; fraction that satisfy the spec / equal the reference."""
    starts = set(ds.program_start_N.tolist())
    if len(starts) != 1:
        raise ValueError(f"specs must share one length for batched decoding; got prompt lengths {sorted(starts)}")
    T0 = starts.pop()
    out = greedy(cfg, params, ds.tokens_NT[:, :T0], max_prog + 1)
    ok = exact = malformed = 0
    for row, task in zip(out, ds.tasks):
        try:
            prog = G.decode_program(row)
        except ValueError:
            malformed += 1
            continue
        ok += G.check_program(prog, task)
        exact += tuple(prog) == tuple(task.program)
    n = len(ds.tasks)
    return {"gen_acc": ok / n, "exact_match": exact / n, "malformed": malformed / n}


def probe_data(cfg: Config, params, ds: G.GridDataset, chunk: int = 128):
    """(X [L, M, D] resid_post at every program token, labels {target: [M]}, task index [M])."""
    n_idx, t_idx = np.nonzero(ds.program_mask_NT)
    acts = []
    for s in range(0, len(ds.tokens_NT), chunk):
        _, cache = run_with_cache(cfg, params, ds.tokens_NT[s:s + chunk], sites=[SITE])
        a = np.asarray(cache[SITE])
        sel = (n_idx >= s) & (n_idx < s + chunk)
        acts.append(a[:, n_idx[sel] - s, t_idx[sel]])
    X = np.concatenate(acts, axis=1)
    labels = {"facing": ds.facing_NT[n_idx, t_idx], "facing_next": ds.facing_next_NT[n_idx, t_idx],
              "facing_next2": ds.facing_next2_NT[n_idx, t_idx]}
    return X, labels, n_idx


def probe_scores(X_LMD: np.ndarray, labels: dict, task_idx: np.ndarray, n_tasks: int, steps: int, seed: int) -> dict:
    """Held-out accuracy per layer of a linear (logistic) probe per target; split by task (no
    program is in both halves), positions past the program end (-1) excluded."""
    tr_tasks, _ = probes.split(n_tasks, test_frac=0.25, seed=seed)
    is_tr = np.isin(task_idx, tr_tasks)
    out = {}
    for name in TARGETS:
        y = labels[name].astype(np.int32)
        have = y >= 0
        tr, te = have & is_tr, have & ~is_tr
        probe = probes.fit_logistic(jnp.asarray(X_LMD[:, tr]), y[tr], 4, l2=1e-4, steps=steps, lr=1e-2,
                                    batch_size=min(1024, int(tr.sum())), seed=seed)
        acc = np.asarray(probes.score(probe, jnp.asarray(X_LMD[:, te]), y[te]))
        majority = float((y[te] == np.bincount(y[tr], minlength=4).argmax()).mean())
        out[name] = {"acc_by_layer": acc.round(4).tolist(), "best": round(float(acc.max()), 4),
                     "majority": round(majority, 4), "n_test": int(te.sum())}
    return out


def plot(evals: list, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["step"] for e in evals]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [e["gen_acc"] for e in evals], "k-o", lw=2, label="generation accuracy (satisfies spec)")
    for name, color in zip(TARGETS, ("C0", "C1", "C2")):
        ax.plot(steps, [e["probe"][name]["best"] for e in evals], "-o", color=color, label=f"probe: {name} (best layer)")
        ax.axhline(evals[-1]["probe"][name]["majority"], color=color, ls=":", lw=1)
    ax.set_xlabel("training step"), ax.set_ylabel("accuracy (held out)")
    ax.set_title("probe accuracy vs generation accuracy over training (dotted: majority class)")
    ax.set_ylim(0, 1.02), ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--workdir", default=None,
                    help="checkpoints + metrics.jsonl (default: <repo>/runs/programs, or <out>/work with --out)")
    ap.add_argument("--resume", action="store_true", help="resume the run found in --workdir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    mode = "quick" if args.quick else "full"
    size = SIZES[mode]
    out = Path(args.out) / mode
    out.mkdir(parents=True, exist_ok=True)
    default_out = Path(args.out).resolve() == (HERE / "results")
    work = (Path(args.workdir) if args.workdir else
            (HERE.parents[1] / "runs" / "programs" if default_out else Path(args.out) / "work")) / mode
    if work.exists() and not args.resume:
        shutil.rmtree(work)
    t0 = time.perf_counter()

    max_prog = TASK_KW["program_length"][1]
    T = G.sequence_length(TASK_KW["grid"], TASK_KW["n_examples"], max_prog)
    train_ds = G.make_dataset(size["n_train"], seed=args.seed, **TASK_KW)
    eval_ds = G.make_dataset(size["n_eval"], seed=args.seed + 1000, **TASK_KW)
    probe_ds = G.make_dataset(size["n_probe"], seed=args.seed + 2000, **TASK_KW)
    train_progs = {t.program for t in train_ds.tasks}
    mask = program_loss_mask(train_ds)
    cfg = model_config(size["n_layers"], size["d_model"], size["n_heads"], T)
    steps, B = size["steps"], size["batch"]
    tc = TrainConfig(lr=size["lr"], weight_decay=0.1, warmup_steps=max(steps // 20, 1), schedule="cosine",
                     total_steps=steps, clip_norm=1.0, log_every=max(steps // 40, 1), ckpt_every=steps, seed=args.seed)

    def batch_fn(step):
        idx = np.random.default_rng([args.seed, step]).integers(0, size["n_train"], B)
        return {"tokens": train_ds.tokens_NT[idx], "loss_mask": mask[idx]}

    trainer = Trainer(cfg, tc, work / "train", keep_checkpoints=None)
    evals = []
    for ck in size["checkpoints"]:
        trainer.train(batch_fn, ck, progress=False)
        if ck == 0:
            trainer.save()  # the untrained model is the step-0 checkpoint (the probe baseline)
        te = time.perf_counter()
        row = {"step": ck, **generation_accuracy(cfg, trainer.params, eval_ds, max_prog)}
        X, labels, task_idx = probe_data(cfg, trainer.params, probe_ds)
        row["probe"] = probe_scores(X, labels, task_idx, size["n_probe"], size["probe_steps"], args.seed)
        row["eval_seconds"] = round(time.perf_counter() - te, 1)
        evals.append(row)
        print(json.dumps({"step": ck, "gen_acc": row["gen_acc"],
                          **{k: v["best"] for k, v in row["probe"].items()}}), flush=True)
    losses = [json.loads(line) for line in trainer.log_path.read_text().splitlines()]
    summary = {"mode": mode, "task": {k: list(v) if isinstance(v, tuple) else v for k, v in TASK_KW.items()},
               "seq_len": T, "model": {k: size[k] for k in ("n_layers", "d_model", "n_heads")},
               "train": {k: size[k] for k in ("steps", "batch", "lr", "n_train")},
               "distinct_train_programs": len(train_progs),
               "eval_programs_seen_in_training": float(np.mean([t.program in train_progs for t in eval_ds.tasks])),
               "checkpoints": trainer.all_steps(), "evals": evals,
               "loss_curve": [{"step": r["step"], "loss": round(r["loss"], 4), "acc": round(r["acc"], 4)} for r in losses],
               "seconds": round(time.perf_counter() - t0, 1)}
    plot(evals, out / "curves.png")
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out / "results.json")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("evals", "loss_curve")}, indent=1))


if __name__ == "__main__":
    main()
