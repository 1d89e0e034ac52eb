"""Edge attribution patching (EAP, Syed et al. 2023) and EAP-IG (Hanna et al. 2024) circuits on
SmolLM2-135M-Instruct, T2: capital-city recall (the task of ``experiments/atp``), clean country vs a
corrupted country, metric logit(clean capital) - logit(corrupted capital) at the prompt's last
position. Edges are scored on a selection split of prompt pairs; the circuits (top-n edges by
|score|, n log-spaced from 10 to every valid edge) are measured on a held-out split, per pair, as
normalised faithfulness (m_circuit - m_corrupt) / (m_clean - m_corrupt), against random edge sets
of the same sizes (the control), over 3 disjoint (selection, held-out) splits. A path-patching
check re-measures the top edges exactly.

    python experiments/eap/run.py --quick      # CI smoke run (one split of 4 + 4 pairs, 5 sizes)
    python experiments/eap/run.py              # full mode (numbers in README.md)

The answers ride along as two tokens appended after each prompt (clean capital, corrupted
capital, the same in both runs). A causal model's logits at the prompt's last position never see
them, so the scores and circuit metrics are those of the bare 6-token prompts (``tail_check``
verifies it), while the metric reads its answer ids from the tokens instead of a closure: one
compiled program then serves every pair (a metric's closure is part of a program's cache key).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent

import interpjax  # noqa: E402
from interpjax.evidence import (Record, bootstrap_ci, fmt_ci, markdown_table, paired_bootstrap_diff,  # noqa: E402
                                seed_summary, sync_readme)
from interpjax.methods import eap as E  # noqa: E402

DEFAULT_MODEL = "smollm2-135m-instruct"
THRESHOLD = 0.8  # the faithfulness a circuit must reach (headline)
MARGIN = 0.2  # effect_holds: method minus random at the middle size
CONFIGS = {
    "full": dict(splits=3, pairs=6, steps=5, n_sizes=13, n_random=5, n_boot=2000, n_path=15, eap_curve=True),
    "quick": dict(splits=1, pairs=4, steps=5, n_sizes=5, n_random=2, n_boot=500, n_path=0, eap_curve=False),
}


# ---------------------------------------------------------------------------------------------
# data: the atp experiment's task, with the answers appended as a tail


def atp_module():
    """``experiments/atp/run.py`` (imported once, under the name the tests' ``load_experiment`` uses),
    so that the capital-recall task has one definition."""
    key = "exp_atp_run"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, HERE.parent / "atp" / "run.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]


def with_tail(s: dict) -> dict:
    """A pair set of atp's ``pair_sets`` with both prompts followed by [clean answer, corrupted answer]."""
    ans_B2 = np.asarray(s["answers"], np.int32)
    return {"clean": np.concatenate([np.asarray(s["clean"], np.int32), ans_B2], 1),
            "corrupted": np.concatenate([np.asarray(s["corrupted"], np.int32), ans_B2], 1),
            "bare_clean": np.asarray(s["clean"], np.int32), "answers": ans_B2, "countries": s["countries"]}


def build_splits(model, n_splits: int, n_pairs: int):
    """(number of known facts, splits): ``n_splits`` of {"selection", "heldout"} pair sets, all 2 x
    n_splits sets disjoint in their clean prompts (atp's ``known_facts`` and ``pair_sets``)."""
    atp = atp_module()
    facts, toks = atp.known_facts(model)
    sets = atp.pair_sets(facts, toks, 2 * n_splits, n_pairs)
    return len(facts), [{"selection": with_tail(sets[2 * i]), "heldout": with_tail(sets[2 * i + 1])}
                        for i in range(n_splits)]


def answer_metric(out):
    """mean_b logit(clean answer_b) - logit(corrupted answer_b) at the prompt's last position
    (position T-3), the answer ids read from the two tail tokens of each row."""
    tok_BT = out.tokens
    B, T = tok_BT.shape
    ids = tok_BT[:, T - 2:].reshape(-1)  # [2B]: clean_0, corrupt_0, clean_1, ...
    lg_BI = out.logits(T - 3, ids)  # [B, 2B]
    b = jnp.arange(B)
    return jnp.mean(lg_BI[b, 2 * b] - lg_BI[b, 2 * b + 1])


def bare_metric(model, s: dict) -> float:
    """The same metric on the bare prompts (no tail), from the model's own forward."""
    lg = np.asarray(interpjax.forward(model.cfg, model.params, s["bare_clean"]))[:, -1]
    a = s["answers"]
    return float(np.mean(lg[np.arange(len(a)), a[:, 0]] - lg[np.arange(len(a)), a[:, 1]]))


# ---------------------------------------------------------------------------------------------
# circuits and their faithfulness


def size_grid(n_valid: int, n: int) -> np.ndarray:
    """``n`` log-spaced circuit sizes from 10 edges to every valid edge (duplicates dropped)."""
    if n < 2:
        raise ValueError(f"n_sizes={n} invalid: valid values are integers >= 2")
    s = np.unique(np.round(np.logspace(1, np.log10(n_valid), n)).astype(np.int64))
    s[-1] = n_valid
    return s


def shuffled_scores(scores: E.EdgeScores, seed: int) -> E.EdgeScores:
    """The control for the scores: the same values permuted among the valid edges (a random ranking)."""
    s = scores.scores.copy()
    valid = ~np.isnan(s)
    s[valid] = np.random.default_rng(seed).permutation(s[valid])
    return E.EdgeScores(s, scores.upstream, scores.downstream, scores.method + " (shuffled)", scores.steps,
                        scores.metric_clean, scores.metric_corrupt)


def heldout_curves(model, pairs: dict, scores: E.EdgeScores, sizes, n_random: int, seed: int, timing=None) -> dict:
    """Per held-out pair: normalised faithfulness of the top-n circuits [P, S] and of ``n_random``
    random edge sets of each size [P, R, S] (the same random sets for every pair: ``seed``)."""
    method, rand, m_clean, m_corr = [], [], [], []
    for b in range(len(pairs["clean"])):
        t0 = time.perf_counter()
        c = E.faithfulness_curve(model, pairs["clean"][b:b + 1], pairs["corrupted"][b:b + 1], answer_metric, scores,
                                 sizes, n_random=n_random, seed=seed)
        if timing is not None:
            timing.append(time.perf_counter() - t0)
        method.append(c.normalised)
        rand.append(c.random_normalised)
        m_clean.append(c.metric_clean)
        m_corr.append(c.metric_corrupt)
    return {"method": np.array(method), "random": np.array(rand).reshape(len(method), n_random, len(sizes)),
            "metric_clean": np.array(m_clean), "metric_corrupt": np.array(m_corr)}


def effect_holds(method_PS, random_PS, sizes, margin: float = MARGIN, n_boot: int = 1000) -> bool:
    """The effect the tests assert: at the middle size of the grid, the method's circuits are more
    faithful on held-out pairs than random circuits of the same size, by ``margin`` on average and
    with a paired-bootstrap 95% interval of the difference above 0. ``random_PS``: per pair, the
    mean over random draws."""
    j = len(sizes) // 2
    a, r = np.asarray(method_PS, np.float64)[:, j], np.asarray(random_PS, np.float64)[:, j]
    d = paired_bootstrap_diff(a, r, n_boot=n_boot)
    return bool(d["value"] > margin and d["lo"] > 0)


def smallest_size(curve_PS, sizes, level: float = THRESHOLD) -> float:
    """The smallest size whose mean faithfulness over the pairs is >= ``level`` (NaN if none)."""
    hit = np.flatnonzero(np.asarray(curve_PS).mean(0) >= level)
    return float(sizes[hit[0]]) if hit.size else float("nan")


def smallest_size_ci(curve_PS, sizes, n_boot: int, seed: int = 0) -> dict:
    """``smallest_size`` with a percentile bootstrap over pairs (a resample that never reaches the
    level counts as above the grid)."""
    curve_PS = np.asarray(curve_PS)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        v = smallest_size(curve_PS[rng.integers(0, len(curve_PS), len(curve_PS))], sizes)
        boots.append(np.inf if np.isnan(v) else v)
    lo, hi = np.quantile(np.array(boots), [0.025, 0.975])
    return {"value": smallest_size(curve_PS, sizes), "lo": float(lo), "hi": float(hi), "n": int(len(curve_PS))}


# ---------------------------------------------------------------------------------------------
# tables


def edge_name(scores: E.EdgeScores, flat: int) -> str:
    u, d = np.unravel_index(flat, scores.scores.shape)
    return f"{scores.upstream[u]} → {scores.downstream[d]}"


def fmt_size(v: float) -> str:
    return "never" if not np.isfinite(v) else f"{int(v):,}"


def fmt_size_ci(s: dict) -> str:
    return f"{fmt_size(s['value'])} [{fmt_size(s['lo'])}, {fmt_size(s['hi'])}]"


def curve_table(sizes, n_valid, summ: dict) -> str:
    names = list(summ)
    rows = [[f"{int(n):,}", f"{100 * n / n_valid:.3g}%"] + [fmt_ci(summ[k][j]) for k in names]
            for j, n in enumerate(sizes)]
    return markdown_table(["edges", "share"] + [f"{k} faithfulness (95% CI)" for k in names], rows)


def figure(sizes, n_valid, summ: dict, n_pairs: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, s in summ.items():
        v = np.array([x["value"] for x in s])
        lo, hi = np.array([x["lo"] for x in s]), np.array([x["hi"] for x in s])
        ax.plot(sizes, v, marker="o", ms=3, label=name)
        ax.fill_between(sizes, lo, hi, alpha=0.2)
    ax.axhline(THRESHOLD, color="grey", lw=0.8, ls="--")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xscale("log")
    ax.set(xlabel=f"circuit size (edges of {n_valid:,})", ylabel="normalised faithfulness (held-out)",
           title=f"SmolLM2-135M capital recall: {n_pairs} held-out pairs, 95% CI")
    ax.legend()
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# the run


def run_split(model, split: dict, cfg: dict, sizes, seed: int, cost: dict) -> dict:
    """Scores on the selection pairs (EAP-IG, EAP), curves on the held-out pairs."""
    sel, held = split["selection"], split["heldout"]
    t0 = time.perf_counter()
    ig = E.eap(model, sel["clean"], sel["corrupted"], answer_metric, steps=cfg["steps"])
    cost.setdefault("eap_ig_s", []).append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    plain = E.eap(model, sel["clean"], sel["corrupted"], answer_metric)
    cost.setdefault("eap_s", []).append(time.perf_counter() - t0)
    out = {"scores": {"EAP-IG": ig, "EAP": plain},
           "tail_check": abs(ig.metric_clean - bare_metric(model, sel))}
    out["EAP-IG"] = heldout_curves(model, held, ig, sizes, cfg["n_random"], seed, cost.setdefault("curve_ig_s", []))
    if cfg["eap_curve"]:
        out["EAP"] = heldout_curves(model, held, plain, sizes, 0, seed, cost.setdefault("curve_eap_s", []))
    return out


def path_patch_check(model, split: dict, scores: dict, n: int, seed: int) -> dict:
    """Exact effect (``path_patch``: that one edge corrupted in the clean run) of the top-``n`` EAP-IG
    edges and of ``n`` random valid edges, on the selection pairs, beside both estimates."""
    sel, ig = split["selection"], scores["EAP-IG"]
    mag = np.where(np.isnan(ig.scores), -np.inf, np.abs(ig.scores)).ravel()
    top = np.argsort(-mag, kind="stable")[:n]
    rest = np.setdiff1d(np.flatnonzero(np.isfinite(mag)), top)
    rand = np.random.default_rng(seed).choice(rest, size=n, replace=False)
    rows = []
    for kind, idx in (("top", top), ("random", rand)):
        for f in idx:
            u, d = np.unravel_index(int(f), ig.scores.shape)
            pp = E.path_patch(model, sel["clean"], sel["corrupted"], answer_metric, ig.upstream[u], ig.downstream[d])
            rows.append({"edge": edge_name(ig, int(f)), "kind": kind, "exact": pp.effect,
                         "EAP-IG": float(ig.scores[u, d]), "EAP": float(scores["EAP"].scores[u, d])})
    atp = atp_module().A
    ex = np.array([r["exact"] for r in rows])
    summ = {}
    for name in ("EAP-IG", "EAP"):
        est = np.array([r[name] for r in rows])
        summ[name] = {"spearman": float(atp.spearman(est, ex)),
                      "sign_agree_top": float(np.mean(np.sign(est[:n]) == np.sign(ex[:n]))),
                      "median_abs_err_top": float(np.median(np.abs(est[:n] - ex[:n]))),
                      "median_abs_exact_top": float(np.median(np.abs(ex[:n])))}
    return {"edges": rows, "summary": summ}


def main(argv=None, model=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one split of 4 + 4 pairs, 5 sizes, 2 random draws")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out", default=None, help="results folder (default: this folder's results/)")
    args = ap.parse_args(argv)
    cfg = dict(CONFIGS["quick" if args.quick else "full"])
    model = interpjax.load(args.model) if model is None else model
    seeds = list(range(cfg["splits"]))
    rec = Record(HERE, quick=args.quick, model=args.model, seeds=seeds,
                 argv=None if argv is None else ["experiments/eap/run.py"] + list(argv),
                 out=None if args.out is None else Path(args.out))
    n_facts, splits = build_splits(model, cfg["splits"], cfg["pairs"])
    n_valid = int(E.precedes(model.cfg).sum())
    sizes = size_grid(n_valid, cfg["n_sizes"])
    cost, per_split = {}, []
    for seed, split in zip(seeds, splits):
        print(f"split {seed}: selection {split['selection']['countries']}\n  held-out {split['heldout']['countries']}",
              flush=True)
        per_split.append(run_split(model, split, cfg, sizes, seed, cost))
        print(f"  eap-ig {cost['eap_ig_s'][-1]:.1f}s, eap {cost['eap_s'][-1]:.1f}s, "
              f"curves {sum(cost['curve_ig_s'][-cfg['pairs']:]):.1f}s", flush=True)

    # pooled over the held-out pairs of every split (each pair measured with its own split's circuits)
    curves = {"EAP-IG": np.concatenate([r["EAP-IG"]["method"] for r in per_split])}
    if cfg["eap_curve"]:
        curves["EAP"] = np.concatenate([r["EAP"]["method"] for r in per_split])
    rand_PRS = np.concatenate([r["EAP-IG"]["random"] for r in per_split])
    curves["random"] = rand_PRS.mean(1)
    nb = cfg["n_boot"]
    summ = {k: [bootstrap_ci(v[:, j], n_boot=nb) for j in range(len(sizes))] for k, v in curves.items()}
    mid = len(sizes) // 2
    headline = {}
    for k, v in curves.items():
        headline[k] = {"smallest_size": smallest_size_ci(v, sizes, nb),
                       "per_split": [smallest_size(v[i * cfg["pairs"]:(i + 1) * cfg["pairs"]], sizes)
                                     for i in range(cfg["splits"])],
                       "at_middle": summ[k][mid]}
        headline[k]["share"] = headline[k]["smallest_size"]["value"] / n_valid
        if k != "random":
            headline[k]["minus_random_at_middle"] = paired_bootstrap_diff(v[:, mid], curves["random"][:, mid],
                                                                          n_boot=nb)
    if "EAP" in curves:
        headline["EAP-IG"]["minus_EAP_at_middle"] = paired_bootstrap_diff(curves["EAP-IG"][:, mid],
                                                                          curves["EAP"][:, mid], n_boot=nb)
    # split-level summary (3 splits: a t-interval over splits of the middle-size faithfulness)
    split_mid = {k: seed_summary([v[i * cfg["pairs"]:(i + 1) * cfg["pairs"], mid].mean() for i in range(cfg["splits"])])
                 for k, v in curves.items()} if cfg["splits"] > 1 else {}

    # top edges: mean EAP-IG score over the selection splits
    ig_mean = np.mean([r["scores"]["EAP-IG"].scores for r in per_split], 0)
    eap_mean = np.mean([r["scores"]["EAP"].scores for r in per_split], 0)
    ref = per_split[0]["scores"]["EAP-IG"]
    order = np.argsort(-np.where(np.isnan(ig_mean), -np.inf, np.abs(ig_mean)).ravel(), kind="stable")[:15]
    split_top = [set(np.argsort(-np.where(np.isnan(r["scores"]["EAP-IG"].scores), -np.inf,
                                          np.abs(r["scores"]["EAP-IG"].scores)).ravel(), kind="stable")[:15].tolist())
                 for r in per_split]
    top_edges = [{"edge": edge_name(ref, int(f)), "EAP-IG": float(ig_mean.ravel()[f]), "EAP": float(eap_mean.ravel()[f]),
                  "in_split_top15": sum(int(f) in t for t in split_top)} for f in order]

    path = path_patch_check(model, splits[0], per_split[0]["scores"], cfg["n_path"], 0) if cfg["n_path"] else None

    med = lambda xs: float(np.median(xs[1:])) if len(xs) > 1 else float(xs[0])  # noqa: E731 - warm calls
    rec["cost_s"] = {"eap_ig_first_call": cost["eap_ig_s"][0], "eap_ig_warm_call": med(cost["eap_ig_s"]),
                     "eap_warm_call": float(np.median(cost["eap_s"])),
                     "curve_first_call": cost["curve_ig_s"][0], "curve_warm_call": med(cost["curve_ig_s"]),
                     "runs_per_curve": int(len(sizes) * (1 + cfg["n_random"])),
                     "eap_curve_first_call": cost.get("curve_eap_s", [None])[0],
                     "eap_curve_warm_call": med(cost["curve_eap_s"]) if "curve_eap_s" in cost else None}
    rec["config"] = cfg
    rec["known_facts"] = n_facts
    rec["n_valid_edges"] = n_valid
    rec["n_edges_all"] = int(ref.scores.size)
    rec["sizes"] = sizes
    rec["splits"] = [{"selection": s["selection"]["countries"], "heldout": s["heldout"]["countries"]} for s in splits]
    rec["tail_check_max_abs"] = max(r["tail_check"] for r in per_split)
    rec["curves_per_pair"] = curves
    rec["random_per_pair_draw"] = rand_PRS
    rec["metric_clean_per_pair"] = np.concatenate([r["EAP-IG"]["metric_clean"] for r in per_split])
    rec["metric_corrupt_per_pair"] = np.concatenate([r["EAP-IG"]["metric_corrupt"] for r in per_split])
    rec["summary"] = summ
    rec["headline"] = headline
    rec["split_middle"] = split_mid
    rec["top_edges"] = top_edges
    rec["path_patch"] = path
    rec["scores_agreement"] = {"spearman_abs_ig_vs_eap": [float(atp_module().A.spearman(
        np.abs(r["scores"]["EAP-IG"].scores[~np.isnan(r["scores"]["EAP-IG"].scores)]),
        np.abs(r["scores"]["EAP"].scores[~np.isnan(r["scores"]["EAP"].scores)]))) for r in per_split]}
    rec["effect_holds"] = effect_holds(curves["EAP-IG"], curves["random"], sizes)

    n_pairs = len(curves["EAP-IG"])
    rec.table("curve.md", curve_table(sizes, n_valid, summ))
    hrows = []
    for k, h in headline.items():
        d = h.get("minus_random_at_middle")
        e = h.get("minus_EAP_at_middle")
        hrows.append([k, fmt_size_ci(h["smallest_size"]), f"{100 * h['share']:.3g}%",
                      ", ".join(fmt_size(v) for v in h["per_split"]), fmt_ci(h["at_middle"]),
                      "—" if d is None else fmt_ci(d), "—" if e is None else fmt_ci(e)])
    rec.table("headline.md", markdown_table(
        ["circuit", f"smallest size with faithfulness ≥ {THRESHOLD} (95% CI)", f"share of {n_valid:,} edges",
         "per split", f"faithfulness at {int(sizes[mid]):,} edges", "minus random", "minus EAP"], hrows))
    rec.table("top_edges.md", markdown_table(
        ["rank", "edge", "EAP-IG score (mean of splits)", "EAP score", f"in top 15 of k/{cfg['splits']} splits"],
        [[i + 1, e["edge"], f"{e['EAP-IG']:+.3f}", f"{e['EAP']:+.3f}", e["in_split_top15"]]
         for i, e in enumerate(top_edges)]))
    if path is not None:
        rec.table("path_patch.md", markdown_table(
            ["estimate", f"Spearman with exact ({2 * cfg['n_path']} edges)", f"sign agrees (top {cfg['n_path']})",
             "median \\|estimate − exact\\| (top)", "median \\|exact\\| (top)"],
            [[k, f"{s['spearman']:.2f}", f"{s['sign_agree_top']:.2f}", f"{s['median_abs_err_top']:.3f}",
              f"{s['median_abs_exact_top']:.3f}"] for k, s in path["summary"].items()]))
        rec.table("path_edges.md", markdown_table(
            ["edge", "exact (path patch)", "EAP-IG estimate", "EAP estimate"],
            [[e["edge"], f"{e['exact']:+.2f}", f"{e['EAP-IG']:+.2f}", f"{e['EAP']:+.2f}"]
             for e in path["edges"] if e["kind"] == "top"]))
    rec.figure("faithfulness.png", figure(sizes, n_valid, summ, n_pairs))
    out_path = rec.save()
    if not args.quick and args.out is None:
        sync_readme(HERE / "README.md", rec.out)
    rec.artifacts = {"splits": splits, "scores": [r["scores"] for r in per_split], "sizes": sizes,
                     "per_split": per_split}
    print(curve_table(sizes, n_valid, summ))
    print(rec.tables["headline.md"])
    print(f"cost: {rec['cost_s']}")
    print(f"effect holds: {rec['effect_holds']}; tail check {rec['tail_check_max_abs']:.2e}; wrote {out_path}")
    return rec


if __name__ == "__main__":
    main()
