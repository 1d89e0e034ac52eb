"""Anomalous tokens (M22; Rumbelow & Watkins 2023, "SolidGoldMagikarp") on the real vocabularies.

For each model: the distance of every token embedding to the centroid (one compiled program over
chunks of the vocabulary), the tokens nearest the centroid as candidates, and the paper's
behavioural test -- asked to repeat a token's string, does the model say it? -- for the candidates
against random tokens drawn from the same population (decodable, non-special tokens that are the
tokenizer's own encoding of their string), over seeds. Plus the neighbourhood (k-NN distance and
norm) of candidates vs random tokens, and GCG prompt search (``input_search.optimize_prompt``) for
candidate vs random target tokens: the log-probability an optimised 8-token prompt reaches.

    python experiments/anomalous_tokens/run.py           # full: SmolLM2 + Gemma 3 -> results/full, README blocks
    python experiments/anomalous_tokens/run.py --quick   # SmolLM2, small samples -> results/quick (or --out DIR)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from interpjax.evidence import Record, bootstrap_ci, fmt_ci, markdown_table, seed_summary, sync_readme
from interpjax.methods import anomalous_tokens as at
from interpjax.methods import input_search as search

HERE = Path(__file__).resolve().parent
MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
FULL = dict(n_candidates=100, n_random=100, seeds=(0, 1, 2), k=8, gcg_targets=3, gcg_steps=12, gcg_tokens=8,
            gcg_cands=32, gcg_topk=64, new_tokens=32, n_boot=2000)
QUICK = dict(FULL, n_candidates=64, n_random=64, seeds=(0,), gcg_targets=1, gcg_steps=3, n_boot=500)
MARGIN = 0.2  # the repeat rate of random tokens must beat the candidates' by this much
GCG_MODELS = ("smollm2-135m-instruct",)  # GCG on Gemma's 262k vocabulary costs too much on 2 CPU cores


def log(msg: str) -> None:
    print(f"[anomalous_tokens] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# the population and the samples


def population(tokenizer, V: int) -> np.ndarray:
    """bool [V]: tokens a repeat request can name fairly -- not special, their decoded string is
    non-blank and whole (no U+FFFD byte fragment), and encoding that string gives back the token."""
    special = set(int(i) for i in tokenizer.all_special_ids)
    texts = [tokenizer.decode([i]) for i in range(V)]
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return np.array([i not in special and t.strip() != "" and "\ufffd" not in t and list(e) == [i]
                     for i, (t, e) in enumerate(zip(texts, enc))], bool)


def select_candidates(stats: at.EmbeddingStats, ok_V: np.ndarray, n: int) -> np.ndarray:
    """The method's core: the ``n`` tokens of the population nearest the embedding centroid."""
    return at.candidates(stats, n, by="centroid", exclude=np.flatnonzero(~ok_V))


def random_tokens(ok_V: np.ndarray, n: int, seed: int, avoid) -> np.ndarray:
    """``n`` tokens drawn uniformly (seeded) from the population, none of ``avoid``."""
    pool = np.setdiff1d(np.flatnonzero(ok_V), np.asarray(avoid, np.int64))
    return np.sort(np.random.default_rng(1000 + seed).choice(pool, n, replace=False)).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# measures


def diff_ci(a, b, n_boot: int, seed: int = 0) -> dict:
    """mean(a) - mean(b) for two independent samples, percentile bootstrap (95%) resampling each."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    boots = rng.choice(a, (n_boot, len(a))).mean(1) - rng.choice(b, (n_boot, len(b))).mean(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"value": float(a.mean() - b.mean()), "lo": float(lo), "hi": float(hi), "n": int(len(a) + len(b))}


def effect_holds(res: dict, margin: float = MARGIN) -> bool:
    """Random tokens are repeated more often than the centroid candidates by ``margin``, the
    bootstrap interval of the difference above 0 on every seed."""
    r = res["repeat"]
    return bool(r["random_minus_candidates"]["value"] > margin
                and all(s["lo"] > 0 for s in r["per_seed_diff"]))


def analyze(model, s: dict) -> dict:
    """Statistics, samples, repeat tests and (for GCG_MODELS) prompt search for one model."""
    t0 = time.perf_counter()
    tok, V = model.tokenizer, model.cfg.vocab_size
    ok_V = population(tok, V)
    stats0 = at.embedding_stats(model, k=s["k"], rows=np.arange(1))  # centroid distances of every row
    cand = select_candidates(stats0, ok_V, s["n_candidates"])
    rand = {seed: random_tokens(ok_V, s["n_random"], seed, cand) for seed in s["seeds"]}
    rows = np.unique(np.concatenate([cand] + list(rand.values())))
    stats = at.embedding_stats(model, k=s["k"], rows=rows)
    knn = dict(zip(stats.knn_rows.tolist(), stats.mean_knn_dist.tolist()))
    log(f"{model.name}: V={V}, population {int(ok_V.sum())}, statistics {time.perf_counter() - t0:.1f} s")

    rep_c = at.repeat_test(model, cand, batch_size=len(cand), max_new_tokens=s["new_tokens"])
    per_seed, rep_r = [], {}
    for seed, ids in rand.items():
        rep_r[seed] = at.repeat_test(model, ids, batch_size=len(ids), max_new_tokens=s["new_tokens"])
        per_seed.append(diff_ci(rep_r[seed]["repeated"], rep_c["repeated"], s["n_boot"], seed))
    all_r = np.concatenate([rep_r[k]["repeated"] for k in rand])
    log(f"{model.name}: repeated candidates {rep_c['repeated'].mean():.2f}, random {all_r.mean():.2f}")

    def geometry(ids):
        return {"dist_centroid": bootstrap_ci(stats.dist_centroid_V[ids], n_boot=s["n_boot"]),
                "norm": bootstrap_ci(stats.norm_V[ids], n_boot=s["n_boot"]),
                "mean_knn_dist": bootstrap_ci(np.array([knn[int(i)] for i in ids]), n_boot=s["n_boot"])}

    rand_all = np.concatenate(list(rand.values()))
    out = {"model": model.name, "vocab_size": int(V), "population": int(ok_V.sum()),
           "dist_centroid_percentiles": {str(q): float(v) for q, v in
                                         zip((0, 1, 50, 99, 100), np.percentile(stats0.dist_centroid_V[ok_V],
                                                                                (0, 1, 50, 99, 100)))},
           "candidates": [{"id": int(i), "text": at.token_text(tok, int(i)),
                           "dist_centroid": float(stats0.dist_centroid_V[i]), "norm": float(stats0.norm_V[i]),
                           "repeated": bool(r), "answer": a}
                          for i, r, a in zip(cand, rep_c["repeated"], rep_c["answers"])],
           "random_samples": {str(k): [{"id": int(i), "text": at.token_text(tok, int(i)), "repeated": bool(r),
                                        "answer": a} for i, r, a in zip(v["ids"], v["repeated"], v["answers"])]
                              for k, v in rep_r.items()},
           "repeat": {"candidates": bootstrap_ci(rep_c["repeated"].astype(float), n_boot=s["n_boot"]),
                      "random": bootstrap_ci(all_r.astype(float), n_boot=s["n_boot"]),
                      "random_per_seed": seed_summary([float(rep_r[k]["repeated"].mean()) for k in rand]),
                      "random_minus_candidates": diff_ci(all_r, rep_c["repeated"], s["n_boot"]),
                      "per_seed_diff": per_seed},
           "geometry": {"candidates": geometry(cand), "random": geometry(rand_all)}}
    if s["gcg_targets"] > 0 and model.name in GCG_MODELS:
        out["gcg"] = gcg(model, cand, rand_all, ok_V, s)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def gcg(model, cand, rand_all, ok_V, s: dict) -> dict:
    """Optimise an 8-token prompt (tokens from the population) for the first ``gcg_targets``
    candidates and as many random tokens: the log-probability reached, before and after."""
    rows = {"candidates": [int(i) for i in cand[:s["gcg_targets"]]],
            "random": [int(i) for i in rand_all[:s["gcg_targets"]]]}
    out = {}
    for group, ids in rows.items():
        runs = []
        for j, t in enumerate(ids):
            r = search.optimize_prompt(model, t, n_tokens=s["gcg_tokens"], steps=s["gcg_steps"],
                                       topk=s["gcg_topk"], n_candidates=s["gcg_cands"], allowed=ok_V, seed=j)
            runs.append({"target": t, "target_text": at.token_text(model.tokenizer, t), "prompt": r["text"],
                         "start_logprob": float(r["start_logprob"]), "logprob": float(r["logprob"])})
            log(f"{model.name} GCG {group} {runs[-1]['target_text']!r}: {r['start_logprob']:.2f} -> {r['logprob']:.2f}")
        out[group] = {"runs": runs, "final": bootstrap_ci([r["logprob"] for r in runs], n_boot=s["n_boot"]),
                      "gain": bootstrap_ci([r["logprob"] - r["start_logprob"] for r in runs], n_boot=s["n_boot"])}
    return out


# ---------------------------------------------------------------------------------------------
# tables


def _md_text(t: str) -> str:
    return repr(t).replace("|", "\\|")


def tables(results: dict) -> dict[str, str]:
    rows = []
    for name, r in results.items():
        g, rep = r["geometry"], r["repeat"]
        rows.append([name, r["vocab_size"], r["population"], len(r["candidates"]), fmt_ci(rep["candidates"]),
                     fmt_ci(rep["random"]), fmt_ci(rep["random_minus_candidates"]),
                     f"{g['candidates']['dist_centroid']['value']:.3f} / {g['random']['dist_centroid']['value']:.3f}",
                     f"{g['candidates']['norm']['value']:.3f} / {g['random']['norm']['value']:.3f}",
                     f"{g['candidates']['mean_knn_dist']['value']:.3f} / {g['random']['mean_knn_dist']['value']:.3f}"])
    out = {"repeat.md": markdown_table(
        ["model", "vocabulary", "population", "candidates", "candidates repeated (95% CI)",
         "random tokens repeated (95% CI)", "random − candidates", "distance to centroid: cand. / random",
         "norm: cand. / random", "mean 8-NN distance: cand. / random"], rows)}
    for name, r in results.items():
        rows = [[j + 1, _md_text(c["text"]), c["id"], f"{c['dist_centroid']:.4f}", f"{c['norm']:.4f}",
                 "yes" if c["repeated"] else "no", _md_text(c["answer"][:40])] for j, c in enumerate(r["candidates"][:20])]
        out[f"{name}_candidates.md"] = markdown_table(
            ["rank", "token", "id", "distance to centroid", "norm", "repeated", "answer (first 40 characters)"], rows)
    gcg_rows = []
    for name, r in results.items():
        for group in ("candidates", "random"):
            if "gcg" not in r:
                continue
            for run in r["gcg"][group]["runs"]:
                gcg_rows.append([name, group, _md_text(run["target_text"]), f"{run['start_logprob']:.2f}",
                                 f"{run['logprob']:.2f}", _md_text(run["prompt"])])
    if gcg_rows:
        out["gcg.md"] = markdown_table(["model", "target kind", "target", "log p before", "log p after",
                                        "optimised prompt"], gcg_rows)
    return out


def figure(results: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.4), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        pct = r["dist_centroid_percentiles"]
        c = [x["dist_centroid"] for x in r["candidates"]]
        ax.hist(c, bins=20, alpha=0.7, label="candidates")
        ax.axvline(pct["50"], color="k", ls=":", label="population median")
        ax.set_title(f"{name}: repeated {r['repeat']['candidates']['value']:.2f} vs random "
                     f"{r['repeat']['random']['value']:.2f}", fontsize=9)
        ax.set_xlabel("distance to the embedding centroid")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="SmolLM2 only, 64 candidates, 1 seed (results/quick/)")
    ap.add_argument("--models", nargs="+", default=None, help=f"model names (default: {' '.join(MODELS)}; quick: the first)")
    ap.add_argument("--out", default=None, help="results base folder (default: this folder's results/)")
    args = ap.parse_args(argv)
    if args.models is None:
        args.models = list(MODELS[:1] if args.quick else MODELS)
    return args


def main(argv=None, model=None) -> Record:
    """Run the experiment; ``model``: an already loaded Model for the first of ``--models``."""
    args = parse_args(argv)
    s = dict(QUICK if args.quick else FULL)
    rec = Record(HERE, quick=args.quick, model=", ".join(args.models), seeds=s["seeds"],
                 argv=["experiments/anomalous_tokens/run.py"] + list(sys.argv[1:] if argv is None else argv),
                 out=None if args.out is None else Path(args.out))
    results = {}
    for j, name in enumerate(args.models):
        if j == 0 and model is not None:
            m = model
        else:
            import interpjax

            m = interpjax.load(name)
        results[name] = analyze(m, s)
        del m
    rec["settings"] = {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()}
    rec["margin"] = MARGIN
    rec["models"] = results
    rec["effect_holds"] = {name: effect_holds(r) for name, r in results.items()}
    for name, md in tables(results).items():
        rec.table(name, md)
    rec.figure("centroid.png", figure(results))
    rec.save()
    if not args.quick:
        sync_readme(HERE / "README.md", rec.out)
    log(f"effect holds: {rec['effect_holds']}")
    return rec


if __name__ == "__main__":
    main()
