"""Knowledge neurons (Dai et al. 2022) on SmolLM2-135M-Instruct, with held-out paraphrases and an
activation-matched random control.

For each built-in fact the model gets right (``facts.py``: capitals, languages, continents,
currencies; four paraphrases each), integrated gradients of p(answer) over the MLP neurons
(``mlp_post`` at the last position) are computed on the *selection* paraphrases (the first two);
a neuron is a knowledge neuron when its attribution exceeds ``--threshold`` x that prompt's
maximum on a majority of them. The neurons are then suppressed (x0) or amplified (x2) on the
*held-out* paraphrases (the last two) and the relative change of p(answer) is compared with the
same number of random neurons in the same layers matched on mean |activation| (``--seeds`` draws),
and with the change on unrelated facts' prompts (other relations: specificity).

    python experiments/knowledge_neurons/run.py            # full run, writes results/full and the README
    python experiments/knowledge_neurons/run.py --quick    # small setting, writes results/quick only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import interpjax
from interpjax.core import model as M
from interpjax.evidence import (Record, bootstrap_ci, fmt_ci, markdown_table, paired_bootstrap_diff, seed_summary,
                                sync_readme)
from interpjax.methods.attribution import (activation_matched_neurons, answer_probs, integrated_gradients,
                                           knowledge_neurons, neuron_factors, scaled_answer_probs)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import facts as facts_mod  # noqa: E402

DEFAULT_MODEL = "smollm2-135m-instruct"
N_SELECT = 2  # paraphrases 0..1 select the neurons; 2..3 are held out for the evaluation
QUICK_FACTS = [("continent", "Germany", "Europe"), ("continent", "Italy", "Europe"), ("language", "Spain", "Spanish"),
               ("language", "Italy", "Italian"), ("capital", "South Korea", "Seoul"),
               ("capital", "the Czech Republic", "Prague"), ("continent", "Argentina", "South"),
               ("language", "Mexico", "Spanish")]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="interpjax.load name or checkpoint folder")
    ap.add_argument("--quick", action="store_true", help="8 facts, 6 layers, 4 IG steps, 3 seeds")
    ap.add_argument("--out", type=Path, default=None, help="results base folder (default: this folder's results/)")
    ap.add_argument("--steps", type=int, default=None, help="IG path intervals, trapezoid rule (default 8; quick 4)")
    ap.add_argument("--layers", default=None,
                    help="IG layers 'a-b' (default: the upper half of the model; quick: the last 6)")
    ap.add_argument("--threshold", type=float, default=0.2, help="attribution > threshold x the prompt's max")
    ap.add_argument("--min-prob", type=float, default=0.02, help="a known fact has p(answer) >= this on every paraphrase")
    ap.add_argument("--pool", type=int, default=3, help="control: draw among the POOL neurons nearest in mean |act|")
    ap.add_argument("--n-unrelated", type=int, default=8, help="unrelated held-out prompts per fact (specificity)")
    ap.add_argument("--seeds", type=int, default=None, help="random-control draws (default 5; quick 3)")
    ap.add_argument("--max-facts", type=int, default=None, help="use at most this many known facts")
    return ap.parse_args(argv)


def answer_token(tokenizer, prompt: str, answer: str) -> int:
    """First token of " " + answer after ``prompt`` (the prompt must end on a token boundary)."""
    a = tokenizer(prompt)["input_ids"]
    b = tokenizer(prompt + " " + answer)["input_ids"]
    if b[:len(a)] != a or len(b) == len(a):
        raise ValueError(f"{prompt!r} + {answer!r}: the prompt's tokens are not a prefix of the full text's")
    return int(b[len(a)])


def known_facts(model, triples, min_prob: float):
    """Facts the model gets right: the answer is its top-1 token on at least half the paraphrases and
    has p >= ``min_prob`` on every one. Returns (kept facts as dicts, clean p per candidate)."""
    prompts = [p for r, s, _ in triples for p in facts_mod.fact_prompts(r, s)]
    answers = np.array([answer_token(model.tokenizer, facts_mod.fact_prompts(r, s)[k], a)
                        for r, s, a in triples for k in range(len(facts_mod.TEMPLATES[r]))])
    probs, top1 = [], []
    for i in range(0, len(prompts), 32):
        tokens, mask = model.to_tokens(prompts[i:i + 32])
        logits = np.asarray(M.forward(model.cfg, model.params, tokens, mask))[:, -1].astype(np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        a = answers[i:i + 32]
        probs.append(np.exp(logp[np.arange(len(a)), a]))
        top1.append(logits.argmax(-1) == a)
    probs, top1 = np.concatenate(probs), np.concatenate(top1)
    kept, k = [], 0
    for r, s, a in triples:
        n = len(facts_mod.TEMPLATES[r])
        p, t = probs[k:k + n], top1[k:k + n]
        if t.mean() >= 0.5 and p.min() >= min_prob:
            kept.append({"relation": r, "subject": s, "attribute": a, "prompts": prompts[k:k + n],
                         "answers": answers[k:k + n].tolist(), "clean_prob": p.tolist()})
        k += n
    return kept, probs


def attribute(model, kept, layers, steps: int):
    """IG [facts, N_SELECT, len(layers), F] on the selection paraphrases, the completeness gap, and
    mean |mlp_post| at the last position over those prompts per (model layer, neuron) [facts, L, F]."""
    prompts = [f["prompts"][k] for f in kept for k in range(N_SELECT)]
    answers = np.array([f["answers"][k] for f in kept for k in range(N_SELECT)])
    tokens, mask = model.to_tokens(prompts)
    ig = integrated_gradients(model, tokens, answers, attention_mask=mask, layers=layers, steps=steps,
                              rule="trapezoid")
    F = model.cfg.d_mlp
    attr = ig.attributions.reshape(len(kept), N_SELECT, len(layers), F)
    _, cache = M.run_with_cache(model.cfg, model.params, tokens, sites=("mlp_post",), layers=list(layers),
                                attention_mask=mask)
    act_LBF = np.abs(np.asarray(cache["mlp_post"])[:, :, -1].astype(np.float64))
    act = np.zeros((len(kept), model.cfg.n_layers, F))
    act[:, list(layers)] = act_LBF.reshape(len(layers), len(kept), N_SELECT, F).mean(2).transpose(1, 0, 2)
    return attr, ig.completeness_gap().reshape(len(kept), N_SELECT, len(layers)), act


def select_neurons(attr_PLF, layers, threshold: float):
    """Knowledge neurons of one fact: above ``threshold`` x max on a strict majority of its selection prompts."""
    share = (attr_PLF.shape[0] // 2 + 1) / attr_PLF.shape[0]
    return knowledge_neurons(attr_PLF, threshold=threshold, share=share, layers=layers)


def unrelated_prompts(kept, n: int, rng):
    """For each fact, ``n`` held-out prompts of facts with another relation (fixed draw)."""
    out = []
    for i, f in enumerate(kept):
        pool = [(j, k) for j, g in enumerate(kept) if g["relation"] != f["relation"]
                for k in range(N_SELECT, len(g["prompts"]))]
        pick = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
        out.append([pool[p] for p in pick])
    return out


def evaluate(model, kept, neurons, controls, unrelated):
    """Relative change of p(answer), (p' - p) / p, per fact for the knowledge neurons and each control
    draw, x0 and x2, on the fact's selection prompts, held-out prompts and unrelated prompts."""
    flat = [(i, k) for i, f in enumerate(kept) for k in range(len(f["prompts"]))]
    row_of = {ik: r for r, ik in enumerate(flat)}
    tokens, mask = model.to_tokens([kept[i]["prompts"][k] for i, k in flat])
    answers = np.array([kept[i]["answers"][k] for i, k in flat])
    clean = answer_probs(model, tokens, answers, attention_mask=mask)
    n_p = len(kept[0]["prompts"])
    factors, rows, meta = [], [], []
    for i in range(len(kept)):
        own = [row_of[(i, k)] for k in range(n_p)]
        other = [row_of[jk] for jk in unrelated[i]]
        for arm, sets in (("kn", [neurons[i]]), ("control", controls[i])):
            for s, nset in enumerate(sets):
                for label, factor in (("suppress", 0.0), ("amplify", 2.0)):
                    factors.append(neuron_factors(model, nset, factor))
                    rows.append(own + other)
                    meta.append((i, arm, s, label))
    width = max(len(r) for r in rows)
    rows_CP = np.array([r + [r[0]] * (width - len(r)) for r in rows])
    probs = scaled_answer_probs(model, tokens, answers, np.stack(factors), attention_mask=mask, prompts_CP=rows_CP)
    rel = (probs - clean[rows_CP]) / np.maximum(clean[rows_CP], 1e-12)
    n_seeds = len(controls[0])
    out = {f"{label}_{arm}_{part}": np.zeros((len(kept), n_seeds if arm == "control" else 1))
           for label in ("suppress", "amplify") for arm in ("kn", "control") for part in ("select", "heldout", "unrelated")}
    for c, (i, arm, s, label) in enumerate(meta):
        n_other = len(unrelated[i])
        out[f"{label}_{arm}_select"][i, s] = rel[c, :N_SELECT].mean()
        out[f"{label}_{arm}_heldout"][i, s] = rel[c, N_SELECT:n_p].mean()
        out[f"{label}_{arm}_unrelated"][i, s] = rel[c, n_p:n_p + n_other].mean()
    return out, clean


def effect_holds(result) -> bool:
    """The claim, against its control: suppressing the knowledge neurons lowers p(answer) on held-out
    paraphrases by at least 10 points more than activation-matched random neurons do, with the 95%
    paired-bootstrap interval of that difference below zero."""
    d = result["heldout"]["suppress"]["kn_minus_control"]
    return bool(d["hi"] < 0 and d["value"] <= -0.10)


def parse_layers(spec, n_layers: int, quick: bool):
    if spec is None:
        return list(range(n_layers - 6, n_layers)) if quick else list(range(n_layers // 2, n_layers))
    a, b = (int(x) for x in spec.split("-"))
    if not 0 <= a <= b < n_layers:
        raise ValueError(f"--layers {spec!r} must be a-b inside 0..{n_layers - 1}")
    return list(range(a, b + 1))


def figure(summary):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=False)
    parts = [("select", "selection\nparaphrases"), ("heldout", "held-out\nparaphrases"), ("unrelated", "unrelated\nfacts")]
    for ax, label in zip(axes, ("suppress", "amplify")):
        x = np.arange(len(parts))
        for off, arm, color in ((-0.18, "kn", "C3"), (0.18, "control", "C7")):
            s = [summary[p][label][arm] for p, _ in parts]
            v = np.array([c["value"] for c in s]) * 100
            err = np.array([[c["value"] - c["lo"], c["hi"] - c["value"]] for c in s]).T * 100
            ax.bar(x + off, v, 0.36, yerr=err, color=color, capsize=3,
                   label="knowledge neurons" if arm == "kn" else "activation-matched random")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(x, [t for _, t in parts])
        ax.set_title(f"{label} ({'x0' if label == 'suppress' else 'x2'})")
        ax.set_ylabel("relative change of p(answer), %")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def main(argv=None, model=None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    steps = args.steps or (4 if args.quick else 8)
    n_seeds = args.seeds or (3 if args.quick else 5)
    seeds = list(range(n_seeds))
    model = interpjax.load(args.model) if model is None else model
    rec = Record(HERE, quick=args.quick, model=args.model, seeds=seeds, argv=["experiments/knowledge_neurons/run.py"] + list(sys.argv[1:] if argv is None else argv),
                 out=args.out)
    layers = parse_layers(args.layers, model.cfg.n_layers, args.quick)

    triples = QUICK_FACTS if args.quick else facts_mod.TRIPLES
    kept, _ = known_facts(model, triples, args.min_prob)
    if args.max_facts:
        kept = kept[:args.max_facts]
    if len(kept) < 4:
        raise SystemExit(f"only {len(kept)} facts are known to the model; need at least 4")
    print(f"{len(kept)} of {len(triples)} facts known; IG over layers {layers[0]}-{layers[-1]}, {steps} steps", flush=True)

    attr, gap, act = attribute(model, kept, layers, steps)
    print(f"IG done at {time.time() - t0:.0f} s", flush=True)
    neurons = [select_neurons(attr[i], layers, args.threshold) for i in range(len(kept))]
    has = np.array([len(n) > 0 for n in neurons])
    if has.sum() < 4:
        raise SystemExit(f"only {int(has.sum())} facts have knowledge neurons")
    kept = [f for f, h in zip(kept, has) if h]
    neurons = [n for n, h in zip(neurons, has) if h]
    attr, gap, act = attr[has], gap[has], act[has]
    controls = [[activation_matched_neurons(n, act[i], np.random.default_rng([s, i]), pool=args.pool) for s in seeds]
                for i, n in enumerate(neurons)]
    unrelated = unrelated_prompts(kept, args.n_unrelated, np.random.default_rng(0))
    eff, clean = evaluate(model, kept, neurons, controls, unrelated)
    print(f"evaluation done at {time.time() - t0:.0f} s", flush=True)

    summary = {}
    for part in ("select", "heldout", "unrelated"):
        summary[part] = {}
        for label in ("suppress", "amplify"):
            kn = eff[f"{label}_kn_{part}"][:, 0]
            ctrl = eff[f"{label}_control_{part}"]
            summary[part][label] = {"kn": bootstrap_ci(kn), "control": bootstrap_ci(ctrl.mean(1)),
                                    "kn_minus_control": paired_bootstrap_diff(kn, ctrl.mean(1)),
                                    "control_by_seed": seed_summary(ctrl.mean(0))}
    n_kn = np.array([len(n) for n in neurons])
    act_kn = np.array([act[i][n[:, 0], n[:, 1]].mean() for i, n in enumerate(neurons)])
    act_ctrl = np.array([np.mean([act[i][c[:, 0], c[:, 1]].mean() for c in controls[i]]) for i in range(len(kept))])
    layer_hist = np.bincount(np.concatenate([n[:, 0] for n in neurons]), minlength=model.cfg.n_layers)[layers]

    rec["n_candidates"] = len(triples)
    rec["n_facts"] = len(kept)
    rec["n_facts_without_neurons"] = int((~has).sum())
    rec["relations"] = {r: sum(f["relation"] == r for f in kept) for r in sorted({f["relation"] for f in kept})}
    rec["setup"] = {"layers": layers, "site": "mlp_post", "ig_steps": steps, "ig_rule": "trapezoid",
                    "threshold": args.threshold, "selection_prompts": N_SELECT, "heldout_prompts": 2,
                    "control_pool": args.pool, "n_unrelated": args.n_unrelated, "min_prob": args.min_prob}
    rec["neurons_per_fact"] = {"mean": float(n_kn.mean()), "median": float(np.median(n_kn)), "min": int(n_kn.min()),
                               "max": int(n_kn.max())}
    rec["neurons_by_layer"] = dict(zip([str(l) for l in layers], layer_hist.tolist()))
    rec["mean_abs_act"] = {"kn": bootstrap_ci(act_kn), "control": bootstrap_ci(act_ctrl)}
    rec["completeness_gap"] = {"median": float(np.median(gap)), "p90": float(np.quantile(gap, 0.9))}
    rec["heldout"] = summary["heldout"]
    rec["select"] = summary["select"]
    rec["unrelated"] = summary["unrelated"]
    rec["effect_holds"] = effect_holds({"heldout": summary["heldout"]})
    rec["facts"] = [{"fact": f"{f['relation']}({f['subject']}) = {f['attribute']}", "clean_prob": f["clean_prob"],
                     "n_neurons": int(len(n)), "neurons": n.tolist(),
                     **{k: float(v[i].mean()) for k, v in eff.items()}} for i, (f, n) in enumerate(zip(kept, neurons))]

    def row(part, label, name):
        s = summary[part][label]
        return [name, f"{label} ({'x0' if label == 'suppress' else 'x2'})", fmt_ci(_pct(s["kn"]), 1),
                fmt_ci(_pct(s["control"]), 1), fmt_ci(_pct(s["kn_minus_control"]), 1)]

    rows = [row(p, l, n) for p, n in (("heldout", "held-out paraphrases"), ("select", "selection paraphrases"),
                                      ("unrelated", "unrelated facts")) for l in ("suppress", "amplify")]
    rec.table("effects.md", markdown_table(["prompts", "edit", "knowledge neurons, % (95% CI)",
                                            "matched random, % (95% CI)", "difference, % (95% CI)"], rows))
    cs = [[l, fmt_ci(_pct(summary["heldout"][l]["control_by_seed"]), 1),
           ", ".join(f"{100 * v:.1f}" for v in summary["heldout"][l]["control_by_seed"]["values"])]
          for l in ("suppress", "amplify")]
    rec.table("control_seeds.md", markdown_table(["held-out edit", "matched random over seeds, % (95% t-CI)",
                                                  "per seed, %"], cs))
    setup_rows = [["facts known / candidates", f"{len(kept) + int((~has).sum())} / {len(triples)}"],
                  ["facts with knowledge neurons (used)", str(len(kept))],
                  ["facts per relation", ", ".join(f"{r} {n}" for r, n in rec["relations"].items())],
                  ["IG layers, steps", f"{layers[0]}-{layers[-1]}, {steps} (trapezoid)"],
                  ["knowledge neurons per fact: mean (min-max)", f"{n_kn.mean():.1f} ({n_kn.min()}-{n_kn.max()})"],
                  ["mean abs activation: KN vs matched random", f"{fmt_ci(rec['mean_abs_act']['kn'], 3)} vs "
                                                              f"{fmt_ci(rec['mean_abs_act']['control'], 3)}"],
                  ["IG completeness gap: median (90th pct)", f"{np.median(gap):.3f} ({np.quantile(gap, 0.9):.3f})"],
                  ["effect_holds", str(rec["effect_holds"])]]
    rec.table("setup.md", markdown_table(["quantity", "value"], setup_rows))
    rec.figure("effects.png", figure(summary))
    rec.save()
    if not args.quick and args.out is None:
        sync_readme(HERE / "README.md", rec.out)
    print(open(rec.out / "effects.md").read())
    print(f"wrote {rec.out} in {time.time() - t0:.0f} s")
    return {"out": rec.out, **rec.numbers}


def _pct(s):
    return {k: (100 * v if k in ("value", "lo", "hi") else v) for k, v in s.items()}


if __name__ == "__main__":
    main()
