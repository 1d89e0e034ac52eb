"""Feature visualisation (M16; Olah et al. 2017, ported from images to a language model) on
SmolLM2-135M-Instruct: soft input rows optimised to maximise MLP neurons, a residual direction and
an output logit, against the maxima those units reach on real text.

Units: at each of ``layers``, MLP neurons (``mlp_post``) of two kinds -- the highest-variance ones on
the selection split of the Python reference manual (``../logit_lens/pydoc_text.py``) and uniformly
random ones --, the top principal direction of ``resid_post`` at ``dir_layer`` on the same split, and
the logit of one token. Dataset maxima are measured on the held-out split. Every objective is
divided by its unit's dataset maximum, so "1.0" means "as high as any held-out text". Per unit and
seed: soft rows (norm penalty), their nearest-token projection, soft rows with the nearest-token
penalty and their projection, GCG token search, and two controls (the optimiser's start, random
rows with the optimised rows' norms); plus a batch of K inputs with and without the diversity term.

    python experiments/feature_vis/run.py           # full: 3 seeds -> results/full, README blocks
    python experiments/feature_vis/run.py --quick   # one layer, 2 neurons, 1 seed -> results/quick (or --out DIR)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "logit_lens"))

from interpjax.evidence import (Record, bootstrap_ci, fmt_ci, markdown_table, paired_bootstrap_diff,  # noqa: E402
                                seed_summary, sync_readme)
from interpjax.methods import feature_vis as FV  # noqa: E402
from pydoc_text import pick, start_id, token_blocks, topic_split  # noqa: E402

MODEL = "smollm2-135m-instruct"
FULL = dict(layers=(4, 12), n_top=2, n_random=2, dir_layer=12, logit_text=" Python", seeds=(0, 1, 2), T=64,
            n_select=64, n_heldout=128, n_tokens=4, steps=100, lr=0.05, norm_weight=0.1, max_norm=3.0,
            nearest_weight=1.0, gcg_steps=10, gcg_topk=64, gcg_cands=16, div_batch=4, div_weight=1.0,
            n_boot=2000)
QUICK = dict(FULL, layers=(4,), n_top=1, n_random=1, dir_layer=None, logit_text=None, seeds=(0,), n_select=16,
             n_heldout=32, steps=60, nearest_weight=0.0, gcg_steps=0, div_batch=0, n_boot=500)


def log(msg: str) -> None:
    print(f"[feature_vis] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# text, units and dataset maxima


def corpus(model, s: dict) -> tuple[np.ndarray, np.ndarray]:
    """(selection blocks from the train topics, held-out blocks for the dataset maxima), [N, T]."""
    sp = topic_split()
    sel = pick(token_blocks(model, sp["train"], s["T"]), s["n_select"], seed=0)
    held = pick(token_blocks(model, sp["heldout"], s["T"]), s["n_heldout"], seed=1)
    return sel, held


def text_values(model, obj: FV.Objective, blocks: np.ndarray) -> np.ndarray:
    """Unit values [U, B, T-1] on text, the start token's position left out (the optimised inputs
    start with that same fixed token and are read at a later position)."""
    return FV.unit_activations(model, obj, blocks, batch_size=16)[:, :, 1:]


def choose_neurons(model, layer: int, sel: np.ndarray, n_top: int, n_random: int) -> tuple[np.ndarray, list]:
    """The ``n_top`` highest-variance ``mlp_post`` neurons on the selection blocks and ``n_random``
    others drawn uniformly (fixed seed): (indices, kinds)."""
    F = model.cfg.d_mlp
    acts = text_values(model, FV.neurons(model, "mlp_post", layer, np.arange(F)), sel).reshape(F, -1)
    top = np.argsort(-acts.var(1), kind="stable")[:n_top]
    rest = np.setdiff1d(np.arange(F), top)
    rnd = np.sort(np.random.default_rng(100 + layer).choice(rest, n_random, replace=False))
    return np.concatenate([top, rnd]), ["top-variance"] * n_top + ["random"] * n_random


def principal_direction(model, layer: int, sel: np.ndarray) -> np.ndarray:
    """Top principal direction of ``resid_post`` at ``layer`` on the selection blocks, oriented so
    that its larger tail is positive (the tail feature visualisation then maximises)."""
    D = model.cfg.d_model
    x = text_values(model, FV.directions(model, "resid_post", layer, np.eye(D, dtype=np.float32)), sel)
    x = x.reshape(D, -1).T.astype(np.float64)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    v = vt[0]
    p = x @ v
    return (v if p.max() >= -p.min() else -v).astype(np.float32)


def build_units(model, s: dict, sel: np.ndarray) -> list[tuple[FV.Objective, list]]:
    """The objectives (one per site and layer) and each unit's kind."""
    groups = []
    for layer in s["layers"]:
        idx, kinds = choose_neurons(model, layer, sel, s["n_top"], s["n_random"])
        groups.append((FV.neurons(model, "mlp_post", layer, idx), kinds))
    if s["dir_layer"] is not None:
        v = principal_direction(model, s["dir_layer"], sel)
        groups.append((FV.directions(model, "resid_post", s["dir_layer"], v,
                                     names=[f"resid_post[{s['dir_layer']}] PC1"]), ["direction"]))
    if s["logit_text"] is not None:
        ids = model.tokenizer(s["logit_text"], add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"logit_text {s['logit_text']!r} is {len(ids)} tokens; it must be one token")
        groups.append((FV.logits(model, ids), ["logit"]))
    return groups


def dataset_max(model, obj: FV.Objective, held: np.ndarray) -> tuple[np.ndarray, list]:
    """Each unit's maximum over the held-out blocks [U] and the text leading up to it."""
    v = text_values(model, obj, held)
    U = v.shape[0]
    flat = v.reshape(U, -1).argmax(1)
    b, t = np.unravel_index(flat, v.shape[1:])
    ctx = [model.tokenizer.decode([int(i) for i in held[bi, max(1, ti + 1 - 6): ti + 2]]) for bi, ti in zip(b, t)]
    return v.reshape(U, -1).max(1), ctx


def scaled(obj: FV.Objective, dmax: np.ndarray) -> FV.Objective:
    """The objective divided by each unit's dataset maximum: its value is the ratio to that maximum."""
    if not (dmax > 0).all():
        raise ValueError(f"every unit needs a positive dataset maximum to be scaled; got {dmax.tolist()}")
    return FV.Objective(obj.site, obj.layer, (obj.vectors_UF / dmax[:, None]).astype(np.float32), obj.names)


def allowed_tokens(model) -> np.ndarray:
    """bool [V]: every token but the special ones (starts, projections and GCG draw from these)."""
    ok = np.ones(model.cfg.vocab_size, bool)
    ok[[int(i) for i in model.tokenizer.all_special_ids if int(i) < model.cfg.vocab_size]] = False
    return ok


# ---------------------------------------------------------------------------------------------
# the method's core and its measures


def soft_inputs(model, obj: FV.Objective, s: dict, seed: int, prefix, allowed, **extra) -> FV.SoftResult:
    """The method's core: soft rows optimised for every unit (norm penalty, hard ball, Adam)."""
    kw = dict(n_tokens=s["n_tokens"], prefix=prefix, steps=s["steps"], lr=s["lr"], norm_weight=s["norm_weight"],
              max_norm=s["max_norm"], allowed=allowed, seed=seed)
    return FV.optimize_soft(model, obj, **{**kw, **extra})


def random_rows_like(rows: np.ndarray, seed: int) -> np.ndarray:
    """Gaussian rows with exactly the norms of ``rows`` (the norm-matched random control)."""
    g = np.random.default_rng(500 + seed).normal(size=rows.shape).astype(np.float32)
    return g * (np.linalg.norm(rows, axis=-1, keepdims=True) / np.linalg.norm(g, axis=-1, keepdims=True))


def projected(model, obj, rows, prefix, allowed, ref: float):
    """(values of the nearest-token projection [U, K], its token ids [U, K, N], row distance to
    the nearest token / ref [U, K, N])."""
    ids, dist = FV.nearest_tokens(model, rows, allowed=allowed)
    E = np.asarray(model.params["embed"]["tok"], np.float32)
    return FV.soft_activation(model, obj, E[ids], prefix=prefix), ids, dist / ref


def token_spacing(model, allowed, n: int = 512) -> float:
    """Median distance / ref from a real token's row to the nearest other token's row (sampled)."""
    E = np.asarray(model.params["embed"]["tok"], np.float32)
    ids = np.random.default_rng(0).choice(np.flatnonzero(allowed), n, replace=False)
    d2 = (E[ids] ** 2).sum(1)[:, None] - 2 * E[ids] @ E.T + (E ** 2).sum(1)[None]
    d2[np.arange(n), ids] = np.inf
    d2[:, ~allowed] = np.inf
    return float(np.median(np.sqrt(np.maximum(d2.min(1), 0))) / FV.token_norm(model, allowed))


def run_group(model, obj, kinds, dmax, ctx, s, prefix, allowed) -> list[dict]:
    """Every condition for every unit of one objective, over seeds: one record per unit."""
    sobj = scaled(obj, dmax)
    U = sobj.n_units
    per = {k: np.zeros((len(s["seeds"]), U)) for k in
           ("soft", "start", "random_rows", "projected", "dist", "near", "near_projected", "near_dist", "gcg")}
    readout = {}
    for j, seed in enumerate(s["seeds"]):
        res = soft_inputs(model, sobj, s, seed, prefix, allowed)
        ref = res.ref_norm
        per["soft"][j], per["start"][j] = res.activation[:, 0], res.start_activation[:, 0]
        per["random_rows"][j] = FV.soft_activation(model, sobj, random_rows_like(res.rows, seed), prefix=prefix)[:, 0]
        pv, ids, dist = projected(model, sobj, res.rows, prefix, allowed, ref)
        per["projected"][j], per["dist"][j] = pv[:, 0], dist[:, 0].mean(-1)
        if j == 0:
            readout["soft_nearest"] = [model.tokenizer.decode([int(t) for t in ids[u, 0]]) for u in range(U)]
        if s["nearest_weight"]:
            near = soft_inputs(model, sobj, s, seed, prefix, allowed, nearest_weight=s["nearest_weight"])
            npv, nids, ndist = projected(model, sobj, near.rows, prefix, allowed, ref)
            per["near"][j], per["near_projected"][j] = near.activation[:, 0], npv[:, 0]
            per["near_dist"][j] = ndist[:, 0].mean(-1)
        if s["gcg_steps"]:
            g = FV.optimize_tokens(model, sobj, n_tokens=s["n_tokens"], prefix=prefix, steps=s["gcg_steps"],
                                   topk=s["gcg_topk"], n_candidates=s["gcg_cands"], allowed=allowed, seed=seed)
            per["gcg"][j] = g.activation
            if j == 0:
                readout["gcg"] = [model.tokenizer.decode([int(t) for t in g.tokens[u]]) for u in range(U)]
    out = []
    for u in range(U):
        d = {"unit": sobj.names[u], "kind": kinds[u], "site": sobj.site, "layer": sobj.layer,
             "dataset_max": float(dmax[u]), "dataset_max_context": ctx[u],
             "soft_nearest_tokens": readout["soft_nearest"][u], "gcg_tokens": readout.get("gcg", [None] * U)[u]}
        for k, a in per.items():
            if (k.startswith("near") and not s["nearest_weight"]) or (k == "gcg" and not s["gcg_steps"]):
                continue
            d[k] = [float(x) for x in a[:, u]]
        out.append(d)
    return out


def diversity(model, obj, dmax, s, prefix, allowed) -> dict:
    """K inputs per unit optimised jointly with and without the diversity term, over seeds:
    mean pairwise cosine of the inputs, mean activation ratio, distinct nearest-token readouts."""
    sobj = scaled(obj, dmax)
    out = {}
    for name, w in (("without", 0.0), ("with", s["div_weight"])):
        cos, act, distinct = [], [], []
        for seed in s["seeds"]:
            res = soft_inputs(model, sobj, s, seed, prefix, allowed, batch=s["div_batch"], diversity_weight=w)
            ids, _ = FV.nearest_tokens(model, res.rows, allowed=allowed)
            cos.append(float(res.pairwise_cos.mean()))
            act.append(float(res.activation.mean()))
            distinct.append(float(np.mean([len({tuple(r) for r in ids[u]}) for u in range(sobj.n_units)])))
        out[name] = {"pairwise_cos": seed_summary(cos), "ratio": seed_summary(act),
                     "distinct_readouts": seed_summary(distinct)}
    return out


# ---------------------------------------------------------------------------------------------
# summaries and the effect check


CONDITIONS = (("start", "optimiser's start (random tokens)"), ("random_rows", "random rows, optimised rows' norms"),
              ("soft", "soft rows (norm penalty)"), ("projected", "soft rows projected to nearest tokens"),
              ("near", "soft rows + nearest-token penalty"), ("near_projected", "  ... projected to nearest tokens"),
              ("gcg", "GCG tokens (discrete search)"))


def unit_means(units: list[dict], key: str) -> np.ndarray:
    return np.array([np.mean(u[key]) for u in units])


def summarise(units: list[dict], n_boot: int) -> dict:
    """Per condition: ratio to the dataset maximum, mean over seeds per unit, bootstrap over units;
    the soft-minus-control differences (paired over units); distances to the nearest token."""
    out = {}
    for key, _ in CONDITIONS:
        if key in units[0]:
            out[key] = bootstrap_ci(unit_means(units, key), n_boot=n_boot)
            out[key + "_per_seed"] = seed_summary([float(np.mean([u[key][j] for u in units]))
                                                   for j in range(len(units[0][key]))])
    soft = unit_means(units, "soft")
    for key in ("start", "random_rows", "projected"):
        out[f"soft_minus_{key}"] = paired_bootstrap_diff(soft, unit_means(units, key), n_boot=n_boot)
    out["dist"] = bootstrap_ci(unit_means(units, "dist"), n_boot=n_boot)
    if "near_dist" in units[0]:
        out["near_dist"] = bootstrap_ci(unit_means(units, "near_dist"), n_boot=n_boot)
    out["units_above_max"] = int((soft > 1).sum())
    out["n_units"] = len(units)
    return out


def effect_holds(summary: dict) -> bool:
    """Optimised soft rows beat the dataset maximum (ratio interval above 1) and beat both
    controls (paired interval of the difference above 0), while the controls stay below 1."""
    return bool(summary["soft"]["lo"] > 1.0 and summary["soft_minus_start"]["lo"] > 0
                and summary["soft_minus_random_rows"]["lo"] > 0 and summary["start"]["value"] < 1.0
                and summary["random_rows"]["value"] < 1.0)


def _cell(t) -> str:
    return "" if t is None else repr(t).replace("|", "\\|")


def tables(units: list[dict], summary: dict, div: dict | None, spacing: float) -> dict[str, str]:
    rows = []
    for key, label in CONDITIONS:
        if key in summary:
            dist = {"soft": summary["dist"], "near": summary.get("near_dist")}.get(key)
            rows.append([label, fmt_ci(summary[key]), fmt_ci(summary[key + "_per_seed"]),
                         fmt_ci(dist) if dist else ("0 (tokens)" if key in ("start", "projected", "near_projected", "gcg")
                                                    else "")])
    out = {"summary.md": markdown_table(
        ["input", "activation / dataset max (95% CI over units)", "per-seed mean (95% t-CI)",
         "distance to nearest token / median token norm"], rows)}
    diffs = [[f"soft − {lbl}", fmt_ci(summary[f"soft_minus_{k}"]), f"{summary[f'soft_minus_{k}']['p_le_0']:.3f}"]
             for k, lbl in (("start", "optimiser's start"), ("random_rows", "norm-matched random rows"),
                            ("projected", "nearest-token projection"))]
    diffs.append(["units whose soft optimum beats the dataset max", f"{summary['units_above_max']} / {summary['n_units']}", ""])
    diffs.append(["real token to its nearest other token / median token norm (median of 512)", f"{spacing:.2f}", ""])
    out["effect.md"] = markdown_table(["comparison", "value (95% CI)", "bootstrap p(≤ 0)"], diffs)
    urows = []
    for u in units:
        urows.append([u["unit"], u["kind"], f"{u['dataset_max']:.3g}", _cell(u["dataset_max_context"]),
                      f"{np.mean(u['soft']):.2f}", f"{np.mean(u['projected']):.2f}",
                      f"{np.mean(u['gcg']):.2f}" if "gcg" in u else "", f"{np.mean(u['dist']):.2f}",
                      _cell(u["soft_nearest_tokens"]), _cell(u["gcg_tokens"])])
    out["units.md"] = markdown_table(
        ["unit", "kind", "dataset max", "held-out text at the max", "soft / max", "projected / max", "GCG / max",
         "soft row distance / token norm", "nearest tokens of the soft rows (seed 0)", "GCG tokens (seed 0)"], urows)
    if div is not None:
        drows = [[name, fmt_ci(d["pairwise_cos"]), fmt_ci(d["ratio"]), fmt_ci(d["distinct_readouts"])]
                 for name, d in div.items()]
        out["diversity.md"] = markdown_table(
            ["diversity term", "mean pairwise cosine of the K inputs (95% t-CI over seeds)",
             "activation / dataset max", "distinct nearest-token readouts of K"], drows)
    return out


def figure(units: list[dict], summary: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(k, lbl) for k, lbl in CONDITIONS if k in summary]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for i, (k, _) in enumerate(keys):
        vals = unit_means(units, k)
        ax.scatter(np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), vals, s=12, alpha=0.7)
        ax.errorbar([i], [summary[k]["value"]], yerr=[[summary[k]["value"] - summary[k]["lo"]],
                                                      [summary[k]["hi"] - summary[k]["value"]]], fmt="k_", capsize=4)
    ax.axhline(1.0, color="k", ls=":", label="held-out dataset max")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([lbl.strip(". ") for _, lbl in keys], rotation=25, ha="right", fontsize=7)
    ax.set_ylabel("activation / dataset max")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one layer, 2 neurons, 1 seed, 60 steps (results/quick/)")
    ap.add_argument("--out", default=None, help="results base folder (default: this folder's results/)")
    return ap.parse_args(argv)


def main(argv=None, model=None) -> Record:
    """Run the experiment; ``model``: an already loaded SmolLM2-135M-Instruct."""
    args = parse_args(argv)
    s = dict(QUICK if args.quick else FULL)
    rec = Record(HERE, quick=args.quick, model=MODEL, seeds=s["seeds"],
                 argv=["experiments/feature_vis/run.py"] + list(sys.argv[1:] if argv is None else argv),
                 out=None if args.out is None else Path(args.out))
    if model is None:
        import interpjax

        model = interpjax.load(MODEL)
    t0 = time.perf_counter()
    sel, held = corpus(model, s)
    prefix, allowed = [start_id(model)], allowed_tokens(model)
    groups = build_units(model, s, sel)
    units, div = [], None
    for g, (obj, kinds) in enumerate(groups):
        dmax, ctx = dataset_max(model, obj, held)
        log(f"{obj.site}[{obj.layer}]: dataset max {np.round(dmax, 3).tolist()} ({time.perf_counter() - t0:.0f} s)")
        units += run_group(model, obj, kinds, dmax, ctx, s, prefix, allowed)
        if g == 0 and s["div_batch"]:
            div = diversity(model, obj, dmax, s, prefix, allowed)
        log(f"{obj.site}[{obj.layer}]: soft / max {[round(float(np.mean(u['soft'])), 2) for u in units[-obj.n_units:]]}"
            f" ({time.perf_counter() - t0:.0f} s)")
    summary = summarise(units, s["n_boot"])
    spacing = token_spacing(model, allowed)
    rec["settings"] = {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()}
    rec["corpus"] = {"selection_blocks": int(len(sel)), "heldout_blocks": int(len(held)), "T": s["T"]}
    rec["units"] = units
    rec["summary"] = summary
    rec["diversity"] = div
    rec["token_spacing"] = spacing
    rec["effect_holds"] = effect_holds(summary)
    for name, md in tables(units, summary, div, spacing).items():
        rec.table(name, md)
    rec.figure("ratios.png", figure(units, summary))
    rec.save()
    if not args.quick:
        sync_readme(HERE / "README.md", rec.out)
    log(f"soft / max {fmt_ci(summary['soft'])}, start {fmt_ci(summary['start'])}, effect holds: {rec['effect_holds']}")
    return rec


if __name__ == "__main__":
    main()
