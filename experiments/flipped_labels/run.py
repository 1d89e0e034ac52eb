"""Flipped-label and semantically-unrelated-label ICL (M9, Wei et al. 2023, "Larger language models
do in-context learning differently") on SmolLM2-135M-Instruct and Gemma 3 270M.

k = 8 demonstrations (4 per class) per query; 0 / 25 / 50 / 75 / 100% of their labels flipped
(equally many in each class), or the label words replaced by "foo" / "bar" (SUL). Every condition of
a query uses the same demo items, so conditions are paired; accuracy is against the query's true
label; the answer is the label word with the higher next-token logit. Controls: 0% flips and chance
(0.5). Seeds draw queries and demos; intervals are bootstraps over all queries of all seeds.

    python experiments/flipped_labels/run.py            # full run -> results/full, README blocks
    python experiments/flipped_labels/run.py --quick    # CI run -> results/quick (or --out DIR)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

from interpjax.evidence import (Record, bootstrap_ci, fmt_ci, markdown_table, paired_bootstrap_diff,  # noqa: E402
                                seed_summary, sync_readme)
from interpjax.methods import icl_labels as icl  # noqa: E402


def _data():
    """data.py beside this file (imported by path: the experiment is not a package)."""
    name = "exp_flipped_labels_data"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "data.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
TASK_NAMES = ("sentiment", "topic")
K = 8
FLIPS = icl.FLIP_FRACTIONS
SEEDS = (0, 1, 2)
N_QUERIES = 20  # per seed and task: 60 paired queries per condition
CHANCE = 0.5
MARGIN = 0.10  # the effect: accuracy at 100% flipped at least this much below 0%, interval below 0
_T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - _T0:7.1f}s] {msg}", flush=True)


def cond_name(c) -> str:
    return "SUL" if c == "SUL" else f"flip {int(round(100 * c))}%"


# ---------------------------------------------------------------------------------------------
# evaluation


def sample_queries(task, n: int, seed: int) -> np.ndarray:
    """``n`` query indices, half per class (seeded)."""
    y = task.label_ids()
    rng = np.random.default_rng(1000 + seed)
    per = n // task.n_classes
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per, replace=False) for c in range(task.n_classes)])


def evaluate(model, task, seeds, n_queries: int, conditions, k: int = K, batch_size: int = 16) -> dict:
    """Per condition (a flip fraction or "SUL"): ``correct`` and ``follows`` per query, concatenated
    over seeds, and per-seed accuracies. All conditions of a seed share its queries and demos; all
    prompts are padded to one length, so the task is one compiled program per model."""
    plan = []
    for s in seeds:
        q = sample_queries(task, n_queries, s)
        demos = icl.sample_demos(task, q, k, seed=s)
        for c in conditions:
            t = icl.sul_task(task) if c == "SUL" else task
            plan.append((s, c, t, icl.icl_prompts(t, q, demos, 0.0 if c == "SUL" else c, seed=s)))
    tok = model.tokenizer
    doc = 1  # the document token encode_prompts puts first
    length = max(len(tok(x, add_special_tokens=False)["input_ids"]) for *_, p in plan for x in p["texts"]) + doc
    length = -(-length // 16) * 16
    out = {c: {"correct": [], "follows": [], "pred": [], "per_seed": []} for c in conditions}
    for s, c, t, p in plan:
        tokens, mask = icl.encode_prompts(tok, p["texts"], length=length)
        logits = icl.label_logits(model, tokens, icl.label_token_ids(tok, t.words()), attention_mask=mask,
                                  batch_size=batch_size)
        pred = icl.predictions(logits)
        out[c]["pred"].append(pred.astype(np.int64))
        out[c]["correct"].append((pred == p["gold"]).astype(np.float64))
        out[c]["follows"].append((pred == (p["gold"] + 1) % t.n_classes).astype(np.float64))
        out[c]["per_seed"].append(float(out[c]["correct"][-1].mean()))
    for c in conditions:
        for key in ("correct", "follows", "pred"):
            out[c][key] = np.concatenate(out[c][key])
    out["length"] = length
    return out


def answer_shares(res: dict, task, conditions) -> dict:
    """Per condition: the share of queries answered with each label word (the words shown in that
    condition), so a constant answer is told apart from reading the demos."""
    out = {}
    for c in conditions:
        words = (icl.sul_task(task) if c == "SUL" else task).words()
        counts = np.bincount(res[c]["pred"], minlength=len(words)) / len(res[c]["pred"])
        out[cond_name(c)] = {w: float(f) for w, f in zip(words, counts)}
    return out


def shares_row(shares: dict) -> str:
    """The most frequent answer and its share, e.g. ``bar 1.00``."""
    w, f = max(shares.items(), key=lambda kv: kv[1])
    return f"{w} {f:.2f}"


def effect(res: dict) -> dict:
    """Paired differences against 0% flips: accuracy at 100% flipped and under SUL."""
    base = res[0.0]["correct"]
    d = {"flip100_minus_flip0": paired_bootstrap_diff(res[1.0]["correct"], base)}
    if "SUL" in res:
        d["sul_minus_flip0"] = paired_bootstrap_diff(res["SUL"]["correct"], base)
    return d


def effect_holds(eff: dict) -> bool:
    """The asserted effect: accuracy against the true labels at 100% flipped lies at least MARGIN
    below 0% flipped, with the paired 95% interval of the difference below 0 (the model reads the
    labels it is shown)."""
    d = eff["flip100_minus_flip0"]
    return d["value"] <= -MARGIN and d["hi"] < 0


# ---------------------------------------------------------------------------------------------
# figure


def plot(summary: dict, flips, model_labels: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 3.8), sharey=True, squeeze=False)
    colors = {"sentiment": "tab:blue", "topic": "tab:orange"}
    x = [100 * f for f in flips]
    for ax, name in zip(axes[0], names):
        for task, acc in summary[name].items():
            col = colors.get(task, "k")
            v = [acc[cond_name(f)] for f in flips]
            ax.plot(x, [a["value"] for a in v], "-o", ms=4, color=col, label=task)
            ax.fill_between(x, [a["lo"] for a in v], [a["hi"] for a in v], color=col, alpha=0.15)
            if "SUL" in acc:
                s = acc["SUL"]
                ax.errorbar([112], [s["value"]], yerr=[[s["value"] - s["lo"]], [s["hi"] - s["value"]]], fmt="s",
                            color=col, capsize=3)
        ax.axhline(CHANCE, color="grey", ls=":", lw=1, label="chance")
        ax.set_xticks(x + [112], [f"{v:g}" for v in x] + ["SUL"])
        ax.set(xlabel="% of demo labels flipped", title=model_labels[name], ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy vs true labels")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"k = {K} demos: accuracy against the true label as demo labels are flipped")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="SmolLM2 only, topic only, 0%% and 100%% flips, "
                                                          "one seed of 32 queries")
    ap.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(MODELS)}")
    ap.add_argument("--queries", type=int, default=None, help=f"queries per seed and task (default {N_QUERIES})")
    ap.add_argument("--out", default=None, help="results folder (default: this folder's results/)")
    args = ap.parse_args(argv)
    if args.quick:
        args.models = args.models or [MODELS[0]]
        args.tasks, args.conditions, args.seeds = ["topic"], [0.0, 1.0], [0]
        args.queries = args.queries or 32
    else:
        args.models = args.models or list(MODELS)
        args.tasks, args.conditions, args.seeds = list(TASK_NAMES), list(FLIPS) + ["SUL"], list(SEEDS)
        args.queries = args.queries or N_QUERIES
    if args.queries < 2 or args.queries % 2:
        raise ValueError(f"--queries must be an even number >= 2 (half per class); got {args.queries}")
    return args


def main(argv=None, models: dict | None = None):
    """Run the experiment; returns the Record (per-query arrays attached as ``rec.results``)."""
    args = parse_args(argv)
    import interpjax
    from interpjax.io.loading import model_label

    data = _data()
    tasks = {t: data.make_task(t) for t in args.tasks}
    labels = {m: model_label(m) for m in args.models}
    rec = Record(HERE, quick=args.quick, model=", ".join(labels.values()), seeds=args.seeds, argv=argv,
                 out=None if args.out is None else Path(args.out))
    results, summary, effects, acc_rows, eff_rows, walls = {}, {}, {}, [], [], {}
    shares, share_rows = {}, []
    for name in args.models:
        t0 = time.time()
        model = (models or {}).get(name) or interpjax.load(name)
        log(f"model {labels[name]} loaded")
        results[name], summary[name], effects[name], shares[name] = {}, {}, {}, {}
        for tname, task in tasks.items():
            t1 = time.time()
            res = evaluate(model, task, args.seeds, args.queries, args.conditions)
            results[name][tname] = res
            acc = {cond_name(c): {**bootstrap_ci(res[c]["correct"]),
                                  "seeds": seed_summary(res[c]["per_seed"]) if len(args.seeds) > 1 else None}
                   for c in args.conditions}
            acc["above_chance_at_flip0"] = acc["flip 0%"]["lo"] > CHANCE
            summary[name][tname] = acc
            eff = effect(res)
            eff["holds"] = effect_holds(eff)
            effects[name][tname] = eff
            shares[name][tname] = answer_shares(res, task, args.conditions)
            share_rows.append([labels[name], tname] + [shares_row(shares[name][tname][cond_name(c)])
                                                       for c in args.conditions])
            log(f"{labels[name]} {tname}: " + ", ".join(f"{cond_name(c)} {acc[cond_name(c)]['value']:.2f}"
                                                        for c in args.conditions) + f" ({time.time() - t1:.0f} s, T={res['length']})")
            acc_rows.append([labels[name], tname] + [fmt_ci(acc[cond_name(c)]) for c in args.conditions])
            eff_rows.append([labels[name], tname, fmt_ci(eff["flip100_minus_flip0"]),
                             fmt_ci(eff["sul_minus_flip0"]) if "sul_minus_flip0" in eff else "–",
                             "yes" if acc["above_chance_at_flip0"] else "no", "yes" if eff["holds"] else "no"])
        walls[name] = round(time.time() - t0, 1)
        del model

    rec["accuracy"] = summary
    rec["effect"] = effects
    rec["effect_holds"] = {m: {t: effects[m][t]["holds"] for t in tasks} for m in args.models}
    rec["answer_shares"] = shares
    rec["follows_flipped_at_100"] = {m: {t: bootstrap_ci(results[m][t][1.0]["follows"]) for t in tasks}
                                     for m in args.models}
    rec["setup"] = {"k": K, "flips": list(args.conditions), "queries_per_seed": args.queries, "seeds": args.seeds,
                    "n_items": {t: len(task.items) for t, task in tasks.items()}, "chance": CHANCE, "margin": MARGIN,
                    "sul_words": list(icl.SUL_WORDS[:2]), "label_words": {t: list(task.words()) for t, task in tasks.items()},
                    "prompt_example": icl.format_prompt(tasks[args.tasks[0]], [(tasks[args.tasks[0]].items[0][0],
                                                                                tasks[args.tasks[0]].items[0][1])],
                                                        tasks[args.tasks[0]].items[1][0]),
                    "wall_s_per_model": walls}
    rec.table("accuracy.md", markdown_table(["model", "task"] + [cond_name(c) for c in args.conditions], acc_rows))
    rec.table("effect.md", markdown_table(
        ["model", "task", "acc(100% flipped) − acc(0%) (paired 95% CI)", "acc(SUL) − acc(0%)",
         "0% above chance (CI > 0.5)", f"effect holds (≤ −{MARGIN:g}, CI < 0)"], eff_rows))
    rec.table("answers.md", markdown_table(["model", "task"] + [f"{cond_name(c)}: most frequent answer, share"
                                                                for c in args.conditions], share_rows))
    if not args.quick:
        rec.figure("accuracy_vs_flips.png", plot({m: summary[m] for m in args.models}, FLIPS, labels))
    path = rec.save()
    rec.results = results
    if not args.quick and args.out is None:
        sync_readme(HERE / "README.md", rec.out)
    print(rec.tables["accuracy.md"])
    print(rec.tables["effect.md"])
    print(f"wrote {path}")
    return rec


if __name__ == "__main__":
    main()
