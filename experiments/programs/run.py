"""Program semantics in a LM trained on programs (M24; Jin & Rinard 2023, "Evidence of meaning in
language models trained on programs").

A small LM is trained on grid-world robot tasks written as ``<bos> (<in> grid <out> grid)*
<prog> program <eos>`` with the loss on the program only. At checkpoints through training we
measure (a) generation accuracy -- greedy-decoded programs for held-out specs that satisfy the
spec (``gridworld.check_program``) -- and (b) linear probe accuracy on the hidden states at program
tokens for the robot's facing after this instruction, one and two instructions ahead (the
semantic probes). The paper's claim: semantic probe accuracy rises with training, together with
generation accuracy.

Controls: the untrained model (checkpoint 0) and a probe fitted to shuffled labels. Positive
controls, so that "at chance" means something: the robot's *initial* facing (written in the first
input grid of the prompt, so any model that reads its spec can carry it to the program tokens)
and the current instruction (the token itself).

    python experiments/programs/run.py --quick    # one seed, 200 steps (results/quick/)
    python experiments/programs/run.py            # full mode: one model, 3 probe seeds (results/full/, README)

Probes are fitted on 60% of held-out tasks, the layer is chosen on 20% and accuracy reported on the
last 20% (split by task); intervals: bootstrap over test tasks of one run, Student-t over runs
(probe seeds: task split, probe init) when there are several.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from interpjax import Config, run_with_cache
from interpjax.evidence import Record, bootstrap_ci, fmt_ci, markdown_table, seed_summary, sync_readme
from interpjax.generate import greedy
from interpjax.methods import probes
from interpjax.train import TrainConfig, Trainer
from interpjax.worlds import gridworld as G

HERE = Path(__file__).resolve().parent
SITE = "resid_post"
SEMANTIC = ("facing", "facing_next", "facing_next2")
POSITIVE = ("facing_start", "instruction")
TARGETS = SEMANTIC + POSITIVE
N_CLASSES = {"facing": 4, "facing_next": 4, "facing_next2": 4, "facing_start": 4, "instruction": len(G.INSTRUCTIONS)}
CONDITIONS = ("model", "shuffled")  # probe on this checkpoint's states / the same with shuffled labels
SPLIT = (0.6, 0.2, 0.2)  # probe-fit / layer-selection / test share of the probe tasks

SIZES = {
    "quick": dict(n_layers=2, d_model=64, n_heads=2, batch=32, steps=200, lr=3e-3, n_train=4000, n_eval=100,
                  n_probe=300, checkpoints=(0, 200), probe_steps=200, seeds=(0,), probe_seeds=(0,)),
    "full": dict(n_layers=2, d_model=64, n_heads=4, batch=32, steps=600, lr=3e-3, n_train=30_000, n_eval=300,
                 n_probe=800, checkpoints=(0, 200, 400, 600), probe_steps=300, seeds=(0,), probe_seeds=(0, 1, 2)),
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
    """Greedy-decode a program for each spec: per-spec correctness (satisfies the spec), exact match,
    malformed; the shares with bootstrap intervals over specs."""
    starts = set(ds.program_start_N.tolist())
    if len(starts) != 1:
        raise ValueError(f"specs must share one length for batched decoding; got prompt lengths {sorted(starts)}")
    T0 = starts.pop()
    out = np.asarray(greedy(cfg, params, ds.tokens_NT[:, :T0], max_prog + 1))
    ok, exact, malformed = [], [], []
    for row, task in zip(out, ds.tasks):
        try:
            prog = G.decode_program(row)
        except ValueError:
            ok.append(0.0), exact.append(0.0), malformed.append(1.0)
            continue
        ok.append(float(G.check_program(prog, task))), exact.append(float(tuple(prog) == tuple(task.program)))
        malformed.append(0.0)
    return {"gen_acc": bootstrap_ci(ok), "exact_match": float(np.mean(exact)), "malformed": float(np.mean(malformed))}


def probe_labels(ds: G.GridDataset):
    """(rows: task index [M] and position [M] of every program token, labels {target: [M]}; -1 = none)."""
    n_idx, t_idx = np.nonzero(ds.program_mask_NT)
    start_N = np.array([t.inputs[0].facing for t in ds.tasks])
    labels = {"facing": ds.facing_NT[n_idx, t_idx], "facing_next": ds.facing_next_NT[n_idx, t_idx],
              "facing_next2": ds.facing_next2_NT[n_idx, t_idx], "facing_start": start_N[n_idx],
              "instruction": ds.tokens_NT[n_idx, t_idx] - G.VOCAB.instr0}
    return n_idx, t_idx, {k: np.asarray(v, np.int32) for k, v in labels.items()}


def program_states(cfg: Config, params, ds: G.GridDataset, n_idx, t_idx, chunk: int = 128) -> np.ndarray:
    """float32 [L, M, D]: resid_post of every layer at every program token."""
    acts = []
    for s in range(0, len(ds.tokens_NT), chunk):
        _, cache = run_with_cache(cfg, params, ds.tokens_NT[s:s + chunk], sites=[SITE])
        a = np.asarray(cache[SITE])
        sel = (n_idx >= s) & (n_idx < s + chunk)
        acts.append(a[:, n_idx[sel] - s, t_idx[sel]])
    return np.concatenate(acts, axis=1)


def task_split(n_tasks: int, seed: int) -> dict:
    """Disjoint task index sets {"fit", "select", "test"} (shares SPLIT): no program text in two."""
    perm = np.random.default_rng([seed, 77]).permutation(n_tasks)
    a, b = int(SPLIT[0] * n_tasks), int((SPLIT[0] + SPLIT[1]) * n_tasks)
    return {"fit": np.sort(perm[:a]), "select": np.sort(perm[a:b]), "test": np.sort(perm[b:])}


def _per_task_acc(correct_LM: np.ndarray, task_M: np.ndarray) -> np.ndarray:
    """[L, tasks] accuracy of each task over its labelled program tokens."""
    _, inv = np.unique(task_M, return_inverse=True)
    num = np.zeros((correct_LM.shape[0], int(inv.max()) + 1))
    for l in range(correct_LM.shape[0]):
        num[l] = np.bincount(inv, weights=correct_LM[l].astype(float))
    return num / np.bincount(inv)[None]


def probe_scores(X_LMD: np.ndarray, labels: dict, task_M: np.ndarray, split: dict, steps: int, seed: int) -> dict:
    """Per target and condition: linear (logistic) probe fitted on the 'fit' tasks, layer chosen on
    'select', accuracy on 'test' with a bootstrap over test tasks; plus the majority-class rate."""
    out = {}
    for name in TARGETS:
        y = labels[name]
        have = y >= 0
        part = {k: np.flatnonzero(have & np.isin(task_M, v)) for k, v in split.items()}
        res = {}
        for cond in CONDITIONS:
            y_fit = y[part["fit"]] if cond == "model" else probes.shuffled_control(y[part["fit"]], seed)
            probe = probes.fit_logistic(jnp.asarray(X_LMD[:, part["fit"]]), y_fit, N_CLASSES[name], l2=1e-4,
                                        steps=steps, lr=1e-2, batch_size=min(1024, len(y_fit)), seed=seed)
            acc = {}
            for k in ("select", "test"):
                idx = part[k]
                pred = np.asarray(jnp.argmax(probes.predict(probe, jnp.asarray(X_LMD[:, idx])), -1))
                acc[k] = _per_task_acc(pred == y[idx][None], task_M[idx])
            layer = int(np.argmax(acc["select"].mean(1)))
            res[cond] = {"layer": layer, "test_acc_by_layer": acc["test"].mean(1).round(4).tolist(),
                         "acc": bootstrap_ci(acc["test"][layer])}
        maj = np.bincount(y[part["fit"]], minlength=N_CLASSES[name]).argmax()
        res["majority"] = float((y[part["test"]] == maj).mean())
        res["n_test"] = int(len(part["test"]))
        out[name] = res
    return out


# ---------------------------------------------------------------------------------------------
# the predicates the tests assert


def positive_control_holds(per_seed: dict, target: str = "instruction", margin: float = 0.05) -> bool:
    """On every seed, at the last checkpoint, the probe for ``target`` beats the same probe fitted to
    shuffled labels by ``margin``, with disjoint 95% intervals (bootstrap over test tasks)."""
    for r in per_seed.values():
        p = r["evals"][-1]["probe"][target]
        m, s = p["model"]["acc"], p["shuffled"]["acc"]
        if not (m["value"] > s["value"] + margin and m["lo"] > s["hi"]):
            return False
    return True


def semantic_rises(per_seed: dict, target: str = "facing", margin: float = 0.05) -> bool:
    """The paper's claim, per seed: the last checkpoint's semantic probe beats the untrained
    model's (checkpoint 0) by ``margin`` with disjoint intervals."""
    for r in per_seed.values():
        last, first = r["evals"][-1]["probe"][target]["model"]["acc"], r["evals"][0]["probe"][target]["model"]["acc"]
        if not (last["value"] > first["value"] + margin and last["lo"] > first["hi"]):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# one seed, summaries, tables, figure


def run_model(size: dict, seed: int, probe_seeds, work: Path) -> list[dict]:
    """Train model ``seed``; at each checkpoint, generation accuracy and, for each probe seed (its
    own task split and probe initialisation), every probe. One result per probe seed."""
    t0 = time.perf_counter()
    max_prog = TASK_KW["program_length"][1]
    T = G.sequence_length(TASK_KW["grid"], TASK_KW["n_examples"], max_prog)
    train_ds = G.make_dataset(size["n_train"], seed=seed, **TASK_KW)
    eval_ds = G.make_dataset(size["n_eval"], seed=seed + 1000, **TASK_KW)
    probe_ds = G.make_dataset(size["n_probe"], seed=seed + 2000, **TASK_KW)
    train_progs = {t.program for t in train_ds.tasks}
    n_idx, t_idx, labels = probe_labels(probe_ds)
    splits = {ps: task_split(size["n_probe"], ps) for ps in probe_seeds}
    mask = program_loss_mask(train_ds)
    cfg = model_config(size["n_layers"], size["d_model"], size["n_heads"], T)
    steps, B = size["steps"], size["batch"]
    tc = TrainConfig(lr=size["lr"], weight_decay=0.1, warmup_steps=max(steps // 20, 1), schedule="cosine",
                     total_steps=steps, clip_norm=1.0, log_every=max(steps // 40, 1), ckpt_every=steps, seed=seed)

    def batch_fn(step):
        idx = np.random.default_rng([seed, step]).integers(0, size["n_train"], B)
        return {"tokens": train_ds.tokens_NT[idx], "loss_mask": mask[idx]}

    trainer = Trainer(cfg, tc, work / f"seed{seed}", keep_checkpoints=None)
    evals = {ps: [] for ps in probe_seeds}
    for ck in size["checkpoints"]:
        trainer.train(batch_fn, ck, progress=False)
        if ck == 0:
            trainer.save()  # the untrained model is the step-0 checkpoint (the probe baseline)
        te = time.perf_counter()
        gen = generation_accuracy(cfg, trainer.params, eval_ds, max_prog)
        X = program_states(cfg, trainer.params, probe_ds, n_idx, t_idx)
        for ps in probe_seeds:
            row = {"step": ck, **gen, "probe": probe_scores(X, labels, n_idx, splits[ps], size["probe_steps"], ps)}
            evals[ps].append(row)
            print(json.dumps({"seed": seed, "probe_seed": ps, "step": ck, "gen_acc": row["gen_acc"]["value"],
                              **{k: v["model"]["acc"]["value"] for k, v in row["probe"].items()}}), flush=True)
        evals[probe_seeds[0]][-1]["eval_seconds"] = round(time.perf_counter() - te, 1)
    losses = [json.loads(line) for line in trainer.log_path.read_text().splitlines()]
    shared = {"checkpoints": trainer.all_steps(), "distinct_train_programs": len(train_progs),
              "eval_programs_seen_in_training": float(np.mean([t.program in train_progs for t in eval_ds.tasks])),
              "loss_curve": [{"step": r["step"], "loss": round(r["loss"], 4), "acc": round(r["acc"], 4)}
                             for r in losses],
              "seq_len": T, "seconds": round(time.perf_counter() - t0, 1)}
    return [{"model_seed": int(seed), "probe_seed": int(ps), "evals": evals[ps], **shared} for ps in probe_seeds]


def _across(per_seed: dict, get) -> dict:
    """Seed summary (mean, t-interval over seeds) of ``get(seed result)``; with one seed, its bootstrap CI."""
    vals = [get(r) for r in per_seed.values()]
    if len(vals) == 1:
        return dict(vals[0], seeds=1)
    return dict(seed_summary([v["value"] for v in vals]), seeds=len(vals))


def summarise(per_seed: dict, size: dict) -> dict:
    n_ck = len(size["checkpoints"])
    per_model = {str(r["model_seed"]): r for r in per_seed.values()}  # generation accuracy: one per model
    return {"by_checkpoint": [
        {"step": size["checkpoints"][i],
         "gen_acc": _across(per_model, lambda r, i=i: r["evals"][i]["gen_acc"]),
         "probe": {t: {c: _across(per_seed, lambda r, i=i, t=t, c=c: r["evals"][i]["probe"][t][c]["acc"])
                       for c in CONDITIONS} for t in TARGETS},
         "majority": {t: float(np.mean([r["evals"][i]["probe"][t]["majority"] for r in per_seed.values()]))
                      for t in TARGETS}}
        for i in range(n_ck)]}


def tables(summ: dict) -> dict:
    ck = summ["by_checkpoint"]
    first, last = ck[0], ck[-1]
    rows = [[f"`{t}`" + (" (positive control)" if t in POSITIVE else ""), fmt_ci(first["probe"][t]["model"], 3),
             fmt_ci(last["probe"][t]["model"], 3), fmt_ci(last["probe"][t]["shuffled"], 3),
             f"{last['majority'][t]:.3f}"] for t in TARGETS]
    out = {"probes.md": markdown_table(
        ["probe target", "untrained (step 0)", f"trained (step {last['step']})", "shuffled labels (trained)",
         "majority class"], rows)}
    out["by_checkpoint.md"] = markdown_table(
        ["step", "generation acc (satisfies spec)"] + [f"`{t}`" for t in TARGETS],
        [[c["step"], fmt_ci(c["gen_acc"], 3)] + [fmt_ci(c["probe"][t]["model"], 3) for t in TARGETS] for c in ck])
    return out


def figure(summ: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ck = summ["by_checkpoint"]
    steps = [c["step"] for c in ck]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.plot(steps, [c["gen_acc"]["value"] for c in ck], "k-o", lw=2, label="generation accuracy (satisfies spec)")
    for t, color in zip(TARGETS, ("C0", "C1", "C2", "C3", "C4")):
        ax.plot(steps, [c["probe"][t]["model"]["value"] for c in ck], "-o", color=color, label=f"probe: {t}")
        ax.plot(steps, [c["probe"][t]["shuffled"]["value"] for c in ck], ":", color=color, lw=1)
    ax.set_xlabel("training step"), ax.set_ylabel("accuracy (held-out tasks, seed mean)")
    ax.set_title("probe accuracy over training (dotted: shuffled-label probe)")
    ax.set_ylim(0, 1.02), ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, 200 steps (results/quick/)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="model seeds (default: 0)")
    ap.add_argument("--probe-seeds", type=int, nargs="+", default=None,
                    help="probe seeds per model: task split, probe init (default: 0 1 2 full, 0 quick)")
    ap.add_argument("--out", default=None, help="results base folder (default: this folder's results/)")
    ap.add_argument("--workdir", default=None,
                    help="checkpoints + metrics.jsonl (default: <repo>/runs/programs, or <out>/work with --out)")
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    size = dict(SIZES[mode])
    for name in ("seeds", "probe_seeds"):
        val = getattr(args, name)
        if val is not None:
            if len(set(val)) != len(val) or min(val) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be distinct integers >= 0, got {val}")
            size[name] = tuple(val)
    rec = Record(HERE, quick=args.quick, model=f"{size['n_layers']}-layer d_model {size['d_model']} decoder, trained here",
                 seeds=[p for _ in size["seeds"] for p in size["probe_seeds"]], argv=["experiments/programs/run.py"] + list(sys.argv[1:] if argv is None else argv),
                 out=None if args.out is None else Path(args.out))
    work = (Path(args.workdir) if args.workdir else
            (HERE.parents[1] / "runs" / "programs" if args.out is None else Path(args.out) / "work")) / mode
    if work.exists():
        shutil.rmtree(work)
    per_seed = {}  # one entry per (model seed, probe seed) run, keyed "0", "1", ...
    for seed in size["seeds"]:
        for r in run_model(size, seed, size["probe_seeds"], work):
            per_seed[str(len(per_seed))] = r
    summ = summarise(per_seed, size)
    rec["settings"] = {k: list(v) if isinstance(v, tuple) else v for k, v in size.items()} | {
        "task": {k: list(v) if isinstance(v, tuple) else v for k, v in TASK_KW.items()}, "split": list(SPLIT)}
    rec["per_seed"] = per_seed
    rec["summary"] = summ
    rec["positive_control_holds"] = {t: positive_control_holds(per_seed, t) for t in POSITIVE}
    rec["semantic_rises"] = {t: semantic_rises(per_seed, t) for t in SEMANTIC}
    for name, md in tables(summ).items():
        rec.table(name, md)
    rec.figure("curves.png", figure(summ))
    path = rec.save()
    if not args.quick:
        sync_readme(HERE / "README.md", rec.out)
    print(rec.tables["probes.md"] + "\n" + rec.tables["by_checkpoint.md"])
    print(f"positive control holds: {rec['positive_control_holds']}; semantic rises: {rec['semantic_rises']}; "
          f"wrote {path}", flush=True)
    return rec


if __name__ == "__main__":
    main()
