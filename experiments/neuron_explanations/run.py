"""Neuron explanations (M15, Bills et al. 2023, "Language models can explain neurons in language
models") on SmolLM2-135M-Instruct, which is also the explainer and the simulator.

Activation records: ``records.py`` (MLP ``mlp_post`` neurons at 8 layers, 64-token excerpts of movie
reviews). Per neuron, ``neuron_explain.sample_excerpts`` splits the 10 top excerpts (by max activation)
into 5 shown to the explainer and 5 for scoring, plus 5 random scoring excerpts and 10 random ones
for the revision's false-positive search. Scores (top-and-random correlation, nan counted as 0):

(a) the LM explanation; (b) control: the LM explanation of another neuron of the same layer simulated
on this neuron's scoring excerpts; (c) the token-lookup baseline, with its control, the same table's
values dealt to its tokens at random; (d) the next-token variant (explained and scored with each
activation paired with the following token); (e) one revision round, shown up to 3 false positives.

    python experiments/neuron_explanations/run.py            # full run -> results/full (resumable:
                                                             #   rerun until it reports "complete")
    python experiments/neuron_explanations/run.py --quick    # CI run -> results/quick (or --out DIR)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

from interpjax.evidence import (Record, bootstrap_ci, fmt_ci, markdown_table, paired_bootstrap_diff,  # noqa: E402
                                sync_readme)
from interpjax.io.artifacts import atomic_write_text  # noqa: E402
from interpjax.methods import neuron_explain as NE  # noqa: E402

DEFAULT_MODEL = "smollm2-135m-instruct"
N_PER_LAYER = 4  # LM neurons per layer: 8 did not fit the 25 CPU-minute cap (about 0.9 s per simulated excerpt)
NEXT_LAYERS = (16, 20, 24, 28)  # the next-token variant: the late half of the recorded layers
N_REVISE = 1  # neurons per layer given one revision round
SAMPLE = dict(n_explain=5, n_top_score=5, n_random_score=5, n_random_revise=10)
SAMPLE_QUICK = dict(n_explain=5, n_top_score=2, n_random_score=2, n_random_revise=0)  # CI: 4 scoring excerpts
_T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - _T0:7.1f}s] {msg}", flush=True)


def _records_module():
    name = "neuron_explanations_records"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "records.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


# ---------------------------------------------------------------------------------------------
# records -> per-neuron excerpt sets


def token_strings(tokenizer, tokens_NT, lengths_N) -> list:
    """The text of every token of every excerpt (each id decoded on its own, once)."""
    ids = np.unique(tokens_NT[tokens_NT >= 0])
    text = {int(i): tokenizer.decode([int(i)]) for i in ids}
    return [tuple(text[int(t)] for t in row[:n]) for row, n in zip(tokens_NT, lengths_N)]


def layer_acts(ds, layer: int, n_excerpts: int, site: str = "mlp_post") -> np.ndarray:
    """[N, 64, U] float32 activations of one layer, -inf past each excerpt's end."""
    a = ds.load(site, layer).astype(np.float32)
    out = np.full((n_excerpts, 64, a.shape[1]), -np.inf, np.float32)
    out[ds.example_ids, ds.token_positions] = a
    return out


def neuron_sets(acts_NT, strings, seed: int, sample: dict = SAMPLE) -> dict:
    """The neuron's record sets ("explain", "top", "random", "revise") with the paper's scale (its
    max over the top excerpts)."""
    max_N = acts_NT.max(1)
    idx = NE.sample_excerpts(max_N, seed=seed, **sample)
    scale = float(max(max_N[idx["explain"]].max(), max_N[idx["top"]].max()))
    if not scale > 0:
        raise ValueError(f"a neuron whose top excerpts never exceed 0 (max {scale}) cannot be normalised")
    mk = lambda i: NE.NeuronRecord(strings[i], acts_NT[i, :len(strings[i])], scale, {"excerpt": int(i)})  # noqa: E731
    return {k: [mk(int(i)) for i in v] for k, v in idx.items()}


def lookup_explanation(records) -> str:
    """The token-lookup baseline's explanation (the core the companion test replaces)."""
    return NE.TokenLookupExplainer()(records)


# ---------------------------------------------------------------------------------------------
# the resumable LM stages


class Cache:
    """{key: value} JSON files of finished explanations and simulations (full runs resume from them)."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.data = {"explanations": {}, "sims": {}}
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            for k in self.data:
                f = folder / f"{k}.json"
                if f.is_file():
                    self.data[k] = json.loads(f.read_text())

    def flush(self, kind: str):
        if self.folder is not None:
            atomic_write_text(self.folder / f"{kind}.json", json.dumps(self.data[kind]))


class OutOfTime(Exception):
    pass


def _log_stage(cache, status: str) -> list:
    """Append this invocation's wall time to the cache's stage log (a resumed run spans several)."""
    entry = {"status": status, "wall_s": round(time.time() - _T0, 1)}
    if cache.folder is None:
        return [entry]
    f = cache.folder / "stages.json"
    stages = (json.loads(f.read_text()) if f.is_file() else []) + [entry]
    atomic_write_text(f, json.dumps(stages))
    return stages


def run_explanations(explainer, cache, jobs: dict, deadline: float, kind: str = "explain"):
    """jobs: key -> records (explain) or (explanation, false positives, records) (revise)."""
    todo = [k for k in jobs if k not in cache.data["explanations"]]
    step = explainer.batch_size
    for s in range(0, len(todo), step):
        if time.time() > deadline:
            raise OutOfTime
        keys = todo[s:s + step]
        fn = explainer.explain_many if kind == "explain" else explainer.revise_many
        for k, e in zip(keys, fn([jobs[k] for k in keys])):
            cache.data["explanations"][k] = e
        cache.flush("explanations")
        log(f"{kind}: {min(s + step, len(todo))}/{len(todo)} (e.g. {keys[0]}: {cache.data['explanations'][keys[0]]!r})")


def run_sims(simulator, cache, jobs: dict, deadline: float, chunk: int = 32):
    """jobs: key -> (explanation, records); cache.sims[key] = one list of floats per record."""
    flat = [(k, j) for k in jobs if k not in cache.data["sims"] for j in range(len(jobs[k][1]))]
    for s in range(0, len(flat), chunk):
        if time.time() > deadline:
            raise OutOfTime
        part = flat[s:s + chunk]
        outs = simulator.simulate_many([(jobs[k][0], jobs[k][1][j].tokens) for k, j in part])
        for (k, j), o in zip(part, outs):
            cache.data.setdefault("_partial", {}).setdefault(k, {})[str(j)] = o.tolist()
        for k in {k for k, _ in part}:
            got = cache.data["_partial"].get(k, {})
            if len(got) == len(jobs[k][1]):
                cache.data["sims"][k] = [got[str(j)] for j in range(len(jobs[k][1]))]
                del cache.data["_partial"][k]
        cache.flush("sims")
        log(f"simulate: {min(s + chunk, len(flat))}/{len(flat)} excerpts")


# ---------------------------------------------------------------------------------------------
# summaries


def ci(values) -> dict:
    return bootstrap_ci(NE.nan_as_zero(values))


def paired(a, b) -> dict:
    return paired_bootstrap_diff(NE.nan_as_zero(a), NE.nan_as_zero(b))


def effect_holds(summary: dict) -> bool:
    """The quick test's effect: the token-lookup table beats the same table shuffled across its
    tokens (paired bootstrap interval over neurons above 0)."""
    return summary["lookup_minus_shuffled"]["lo"] > 0


def plot_by_layer(layers, series: dict, model_name: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4))
    styles = {"(a) LM explanation": ("tab:blue", "-"), "(b) control: another neuron's explanation": ("grey", ":"),
              "(c) token lookup": ("tab:green", "-"), "(c') shuffled lookup table": ("tab:olive", ":"),
              "(d) next-token explanation": ("tab:red", "--")}
    for name, per_layer in series.items():
        xs = [l for l in layers if l in per_layer]
        if not xs:
            continue
        color, ls = styles[name]
        ax.plot(xs, [per_layer[l]["value"] for l in xs], ls, marker="o", ms=4, color=color, label=name)
        ax.fill_between(xs, [per_layer[l]["lo"] for l in xs], [per_layer[l]["hi"] for l in xs], color=color, alpha=0.12)
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="layer", ylabel="top-and-random score (mean over neurons)",
           title=f"Explanation scores by layer, {model_name} (95% bootstrap CI over neurons)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--quick", action="store_true",
                    help="quick records; lookup on every recorded neuron, the LM on --lm-neurons of layer 0")
    ap.add_argument("--n-per-layer", type=int, default=N_PER_LAYER)
    ap.add_argument("--lm-neurons", type=int, default=None, help="quick: LM-explained neurons of layer 0 (default 2)")
    ap.add_argument("--budget-s", type=float, default=780.0, help="stop the LM stages after this many seconds")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default=None, help="results folder (default: this folder's results/)")
    ap.add_argument("--records", default=None, help="activation-records folder (default: cache/records_quick|full here)")
    args = ap.parse_args(argv)
    if args.n_per_layer < 2:
        raise ValueError(f"--n-per-layer must be >= 2 (the control needs another neuron); got {args.n_per_layer}")
    return args


def main(argv=None, model=None):
    """Run (or resume) the experiment; returns the Record, or None when the LM stages ran out of
    --budget-s (rerun to continue; finished work is cached)."""
    args = parse_args(argv)
    import interpjax
    from interpjax.io.loading import model_label

    R = _records_module()
    model_name = model_label(args.model)
    model = interpjax.load(args.model) if model is None else model
    rec_layers = R.layers(args.quick)
    ds, toks, lengths, units = R.build(model, args.quick, out=Path(args.records) if args.records else None)
    strings = token_strings(model.tokenizer, toks, lengths)
    log(f"records: {len(strings)} excerpts, {int(lengths.sum())} tokens, layers {list(rec_layers)}, {len(units)} units")
    deadline = time.time() + args.budget_s

    if args.quick:
        lm_layers, n_lm = (rec_layers[0],), (2 if args.lm_neurons is None else args.lm_neurons)
        next_layers, n_revise = (), 0
    else:
        lm_layers, n_lm, next_layers, n_revise = rec_layers, args.n_per_layer, NEXT_LAYERS, N_REVISE

    # per layer: every recorded neuron's sets (cheap), the LM neurons in a seeded order
    sets, chosen = {}, {}
    for layer in rec_layers:
        A = layer_acts(ds, layer, len(strings))
        for c, u in enumerate(units):
            sets[layer, int(u)] = neuron_sets(A[:, :, c], strings, seed=1000 * layer + int(u),
                                              sample=SAMPLE_QUICK if args.quick else SAMPLE)
        order = np.random.default_rng(layer).permutation(len(units))
        chosen[layer] = [int(units[c]) for c in order[:n_lm]] if layer in lm_layers else []
    key = lambda l, u: f"L{l}/n{u}"  # noqa: E731
    score_recs = lambda l, u: sets[l, u]["top"] + sets[l, u]["random"]  # noqa: E731

    # (c) token lookup and its shuffled control, every recorded neuron
    lookup, shuffled = {}, {}
    for (l, u), s in sets.items():
        expl = lookup_explanation(s["explain"])
        lookup[l, u] = NE.simulate_and_score(NE.lookup_simulator, expl, score_recs(l, u))[0]
        shuffled[l, u] = NE.simulate_and_score(NE.lookup_simulator, NE.shuffle_table(expl, seed=u), score_recs(l, u))[0]

    # the LM stages (cached and resumable in full runs)
    rec = Record(HERE, quick=args.quick, model=model_name, seeds=[0], argv=argv,
                 out=None if args.out is None else Path(args.out))
    cache = Cache(None if args.quick else HERE / "cache" / "run_full")
    bs = min(args.batch_size, 2) if args.quick else args.batch_size  # quick: 2 LM neurons, no filler rows
    explainer = NE.LMExplainer(model, batch_size=bs)
    simulator = NE.LMSimulator(model, batch_size=args.batch_size, bucket=64)
    lm = [(l, u) for l in rec_layers for u in chosen[l]]
    partner = {}
    for l in rec_layers:
        for i, u in enumerate(chosen[l]):
            partner[l, u] = chosen[l][(i + 1) % len(chosen[l])]
    revised = [(l, u) for l in rec_layers for u in chosen[l][:n_revise]]
    nxt = [(l, u) for l in next_layers for u in chosen[l]]
    E, S = cache.data["explanations"], cache.data["sims"]
    try:
        run_explanations(explainer, cache, {"a/" + key(l, u): sets[l, u]["explain"] for l, u in lm}, deadline)
        run_explanations(explainer, cache, {"d/" + key(l, u): [r.next_token() for r in sets[l, u]["explain"]]
                                            for l, u in nxt}, deadline)
        jobs = {}
        for l, u in lm:
            jobs["a/" + key(l, u)] = (E["a/" + key(l, u)], score_recs(l, u))
            jobs["b/" + key(l, u)] = (E["a/" + key(l, partner[l, u])], score_recs(l, u))
        for l, u in nxt:
            jobs["d/" + key(l, u)] = (E["d/" + key(l, u)], [r.next_token() for r in score_recs(l, u)])
        for l, u in revised:
            jobs["s/" + key(l, u)] = (E["a/" + key(l, u)], sets[l, u]["revise"])
        run_sims(simulator, cache, jobs, deadline)
        fps = {}
        for l, u in revised:
            k = key(l, u)
            idx = NE.false_positives(S["s/" + k], sets[l, u]["revise"], k=3)
            fps[l, u] = idx
            if not idx:  # nothing fired falsely: the revision sees the quietest excerpts the simulation rated highest
                idx = [int(np.argmax([max(s) for s in S["s/" + k]]))]
            E.setdefault("_fp/" + k, json.dumps(idx))
        run_explanations(explainer, cache, {"r/" + key(l, u): (E["a/" + key(l, u)],
                                                               [sets[l, u]["revise"][i] for i in json.loads(E["_fp/" + key(l, u)])],
                                                               sets[l, u]["explain"]) for l, u in revised},
                         deadline, kind="revise")
        run_sims(simulator, cache, {"r/" + key(l, u): (E["r/" + key(l, u)], score_recs(l, u)) for l, u in revised},
                 deadline)
    except OutOfTime:
        log(f"out of --budget-s {args.budget_s:g}: {len(E)} explanations, {len(S)} simulations cached; rerun to continue")
        _log_stage(cache, "partial")
        return None
    stages = _log_stage(cache, "complete")

    def sc(cond, l, u):
        recs = score_recs(l, u) if cond != "d" else [r.next_token() for r in score_recs(l, u)]
        return NE.score(S[f"{cond}/{key(l, u)}"], [r.activations for r in recs])

    a = {n: sc("a", *n) for n in lm}
    b = {n: sc("b", *n) for n in lm}
    d = {n: sc("d", *n) for n in nxt}
    r_ = {n: sc("r", *n) for n in revised}

    # numbers
    by_layer = {}
    for l in rec_layers:
        row = {"lookup_all": ci([lookup[l, int(u)] for u in units]), "shuffled_all": ci([shuffled[l, int(u)] for u in units])}
        if chosen[l]:
            ns = [(l, u) for u in chosen[l]]
            row.update(lm=ci([a[n] for n in ns]), control=ci([b[n] for n in ns]),
                       lookup=ci([lookup[n] for n in ns]), lm_minus_control=paired([a[n] for n in ns], [b[n] for n in ns]),
                       neurons=chosen[l], lm_scores=[a[n] for n in ns], control_scores=[b[n] for n in ns])
        if l in next_layers:
            ns = [(l, u) for u in chosen[l]]
            row.update(next_token=ci([d[n] for n in ns]), next_minus_lm=paired([d[n] for n in ns], [a[n] for n in ns]))
        by_layer[l] = row
    rec["by_layer"] = {str(l): v for l, v in by_layer.items()}
    alln = list(sets)
    rec["lookup_all"] = ci([lookup[n] for n in alln])
    rec["shuffled_all"] = ci([shuffled[n] for n in alln])
    rec["lookup_minus_shuffled"] = paired([lookup[n] for n in alln], [shuffled[n] for n in alln])
    rec["lookup_nan_share"] = float(np.mean(np.isnan([lookup[n] for n in alln])))
    rec["n_neurons"] = {"lookup": len(alln), "lm": len(lm), "next_token": len(nxt), "revised": len(revised)}
    if lm:
        rec["lm"] = ci([a[n] for n in lm])
        rec["control"] = ci([b[n] for n in lm])
        rec["lookup_on_lm_neurons"] = ci([lookup[n] for n in lm])
        rec["lm_minus_control"] = paired([a[n] for n in lm], [b[n] for n in lm])
        rec["lm_minus_lookup"] = paired([a[n] for n in lm], [lookup[n] for n in lm])
        rec["lm_nan_share"] = float(np.mean(np.isnan([a[n] for n in lm])))
        rec["lm_ge_0.8"] = int(np.sum(NE.nan_as_zero([a[n] for n in lm]) >= 0.8))
        first, rest = [n for n in lm if n[0] == rec_layers[0]], [n for n in lm if n[0] != rec_layers[0]]
        if rest:
            rec["lm_layer0_minus_rest"] = float(NE.mean_score([a[n] for n in first]) - NE.mean_score([a[n] for n in rest]))
            rec["depth_slope"] = float(np.polyfit([n[0] for n in lm], NE.nan_as_zero([a[n] for n in lm]), 1)[0])
    if nxt:
        rec["next_token"] = ci([d[n] for n in nxt])
        rec["lm_on_next_layers"] = ci([a[n] for n in nxt])
        rec["next_minus_lm"] = paired([d[n] for n in nxt], [a[n] for n in nxt])
    if revised:
        rec["revised"] = ci([r_[n] for n in revised])
        rec["before_revision"] = ci([a[n] for n in revised])
        rec["revised_minus_original"] = paired([r_[n] for n in revised], [a[n] for n in revised])
        rec["revision_false_positives_found"] = int(sum(bool(v) for v in fps.values()))
    rec["effect_holds"] = effect_holds(rec.numbers)
    rec["stages"] = stages
    rec["total_wall_s"] = round(sum(x["wall_s"] for x in stages), 1)
    rec["sample"] = SAMPLE_QUICK if args.quick else SAMPLE
    rec["layers"] = list(rec_layers)
    rec["units"] = [int(u) for u in units]
    rec["records"] = {"excerpts": len(strings), "tokens": int(lengths.sum())}
    rec["explanations"] = {k: v for k, v in E.items() if not k.startswith("_")}

    # tables
    rows = []
    for l in rec_layers:
        v = by_layer[l]
        rows.append([l, fmt_ci(v["lm"]) if "lm" in v else "—", fmt_ci(v["control"]) if "control" in v else "—",
                     fmt_ci(v["lm_minus_control"]) if "lm_minus_control" in v else "—",
                     fmt_ci(v["lookup"]) if "lookup" in v else "—", fmt_ci(v["lookup_all"]), fmt_ci(v["shuffled_all"]),
                     fmt_ci(v["next_token"]) if "next_token" in v else "—"])
    header = ["layer", "(a) LM explanation", "(b) control: other neuron's explanation", "(a) − (b) paired",
              "(c) token lookup, same neurons", "(c) token lookup, all 32", "(c') shuffled table, all 32",
              "(d) next-token variant"]
    rec.table("scores_by_layer.md", markdown_table(header, rows))
    eff = [["token lookup − shuffled table", f"{len(alln)} neurons", fmt_ci(rec["lookup_minus_shuffled"])]]
    if lm:
        eff += [["(a) LM explanation − (b) other neuron's explanation", f"{len(lm)} neurons", fmt_ci(rec["lm_minus_control"])],
                ["(a) LM explanation − (c) token lookup", f"{len(lm)} neurons", fmt_ci(rec["lm_minus_lookup"])]]
    if nxt:
        eff.append(["(d) next-token − (a) current-token, layers " + ", ".join(map(str, next_layers)),
                    f"{len(nxt)} neurons", fmt_ci(rec["next_minus_lm"])])
    if revised:
        eff.append(["(e) revised − original explanation", f"{len(revised)} neurons", fmt_ci(rec["revised_minus_original"])])
    rec.table("effects.md", markdown_table(["comparison", "n", "mean paired difference (95% CI)"], eff))
    ex_rows = []
    for l in rec_layers:
        for u in chosen[l][:2]:
            k = key(l, u)
            ex_rows.append([k, E["a/" + k].replace("|", "/"), f"{NE.nan_as_zero([a[l, u]])[0]:.2f}",
                            E.get("d/" + k, "—").replace("|", "/"), E.get("r/" + k, "—").replace("|", "/")])
    rec.table("examples.md", markdown_table(["neuron", "(a) explanation (\"the main thing this neuron does is find …\")",
                                             "(a) score", "(d) next-token explanation", "(e) revised"], ex_rows))
    if lm:
        rec.figure("scores_by_layer.png", plot_by_layer(rec_layers, {
            "(a) LM explanation": {l: by_layer[l]["lm"] for l in rec_layers if "lm" in by_layer[l]},
            "(b) control: another neuron's explanation": {l: by_layer[l]["control"] for l in rec_layers if "lm" in by_layer[l]},
            "(c) token lookup": {l: by_layer[l]["lookup_all"] for l in rec_layers},
            "(c') shuffled lookup table": {l: by_layer[l]["shuffled_all"] for l in rec_layers},
            "(d) next-token explanation": {l: by_layer[l]["next_token"] for l in next_layers}}, model_name))
        show = [n for l in rec_layers for n in [(l, u) for u in chosen[l][:1]]][:4]
        NE.records_html([{"name": f"layer {l}, neuron {u}", "explanation": E["a/" + key(l, u)], "score": a[l, u],
                          "records": score_recs(l, u)[:3] + score_recs(l, u)[-1:],
                          "simulated": S["a/" + key(l, u)][:3] + S["a/" + key(l, u)][-1:]} for l, u in show],
                        rec.out / "records.html", title=f"M15 neuron explanations on {model_name}")
    path = rec.save()
    if not args.quick and args.out is None:
        sync_readme(HERE / "README.md", rec.out)
    print(markdown_table(header, rows))
    print(markdown_table(["comparison", "n", "mean paired difference (95% CI)"], eff))
    log(f"complete; effect holds: {rec['effect_holds']}; wrote {path}")
    rec.sets, rec.lookup, rec.shuffled = sets, lookup, shuffled
    return rec


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 3)
