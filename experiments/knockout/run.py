"""Dissecting factual recall (Geva et al. 2023, M12) on a real LM: attention knockout by layer
window and the attribute rate of the subject's last token.

Facts come from ``facts.tsv`` (written here: relation, subject, attribute). Each becomes a prompt
``<bos> + template(subject)``; the facts the model gets right (greedy next token = the attribute's
first token) are kept. Subject / relation / last positions come from the tokenizer's character
offsets (the start token belongs to no set: it is the attention sink every prompt shares).

- attention knockout (``interpjax.knockout.edge_knockout``): block the last position's edges to
  the subject, to the relation tokens, to itself, or to a random equal-count set of non-subject
  positions, in every window of k layers -- every set and window start in one compiled vmapped
  sweep -- and measure the relative change of the attribute's probability per fact;
- the most damaging window is chosen on one half of the facts and reported on the other;
- attribute rate (``interpjax.knockout.attribute_rate``): the share of the top-k vocabulary
  projection of the subject's last token, per layer, that are this subject's attributes (every
  attribute ``facts.tsv`` lists for it), against the attributes of other, random subjects.

    python experiments/knockout/run.py                 # full mode (README numbers)
    python experiments/knockout/run.py --quick         # CI-sized run, results/quick/
    python experiments/knockout/run.py --model gemma-3-270m
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from interpjax.evidence import (Record, bootstrap_ci, fmt_ci, markdown_table, paired_bootstrap_diff,
                                sync_readme)
from interpjax.methods.knockout import attribute_rate, edge_knockout

HERE = Path(__file__).resolve().parent
FACTS = HERE / "facts.tsv"
TEMPLATES = {
    "capital": "The capital city of {s} is",
    "language": "The official language of {s} is",
    "continent": "{s} is a country in the continent of",
    "currency": "The currency of {s} is the",
    "founder": "{s} was founded by",
    "product": "{s} is a product made by the company",
    "landmark": "{s} is located in the city of",
}
# the document-start token each model was trained with (its tokenizer's bos otherwise)
START_TOKEN = {"smollm2-135m-instruct": "<|endoftext|>", "gemma-3-270m": "<bos>"}
SIZES = {
    "full": dict(every=1, window=5, stride=1, n_random=3, n_control=5, k=50, n_boot=2000),
    "quick": dict(every=5, window=5, stride=2, n_random=1, n_control=1, k=50, n_boot=200),
}
KINDS = ("subject", "relation", "last", "random")


# ---------------------------------------------------------------------------------------------
# data


def load_facts(path=FACTS, every: int = 1) -> list[dict]:
    """Rows of ``facts.tsv`` as ``{relation, subject, attributes, prompt}`` (every ``every``-th row)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        relation, subject, attrs = line.split("\t")
        if relation not in TEMPLATES:
            raise ValueError(f"{path}: unknown relation {relation!r}; valid: {tuple(TEMPLATES)}")
        prompt = TEMPLATES[relation].format(s=subject)
        rows.append({"relation": relation, "subject": subject, "attributes": attrs.split("|"),
                     "prompt": prompt[0].upper() + prompt[1:]})
    return rows[::every]


def first_tokens(tok, word: str) -> set[int]:
    """First token ids of ``word`` as it may follow a space or not, capitalised or lower-case."""
    ids = set()
    for w in {word, word.lower(), word[0].upper() + word[1:]}:
        for text in (" " + w, w):
            enc = tok(text, add_special_tokens=False)["input_ids"]
            if enc:
                ids.add(int(enc[0]))
    return ids


def encode(model, facts: list[dict], start_token: str | None = None) -> dict:
    """Left-padded tokens [B, T], mask, and the position masks [B, T] of the subject, the relation
    (every other real token but the start and the last) and the last token, from character offsets."""
    tok = model.tokenizer
    if tok is None or not getattr(tok, "is_fast", False):
        raise ValueError("the model needs a fast tokenizer (character offsets locate the subject)")
    start_text = START_TOKEN.get(model.name, start_token) or tok.bos_token
    start_id = tok.convert_tokens_to_ids(start_text)
    rows = []
    for f in facts:
        text = f["prompt"]
        a = text.lower().find(f["subject"].lower())
        if a < 0:
            raise ValueError(f"subject {f['subject']!r} does not occur in prompt {text!r}")
        b = a + len(f["subject"])
        enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
        subj = [s < b and e > a for s, e in enc["offset_mapping"]]
        rows.append(([start_id] + list(enc["input_ids"]), [False] + subj))
    T = max(len(ids) for ids, _ in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else start_id
    B = len(rows)
    tokens = np.full((B, T), pad, np.int32)
    mask = np.zeros((B, T), np.int32)
    subject = np.zeros((B, T), bool)
    for r, (ids, subj) in enumerate(rows):
        tokens[r, T - len(ids):], mask[r, T - len(ids):], subject[r, T - len(ids):] = ids, 1, subj
    last = np.zeros((B, T), bool)
    last[:, -1] = True
    start = np.zeros((B, T), bool)
    start[np.arange(B), T - np.array([len(ids) for ids, _ in rows])] = True
    relation = (mask > 0) & ~subject & ~last & ~start
    if (subject[:, -1]).any() or not subject.any(1).all() or not relation.any(1).all():
        raise ValueError("every prompt needs subject tokens and relation tokens before a last relation token")
    subject_last = np.array([np.flatnonzero(s)[-1] for s in subject])
    return {"tokens": tokens, "mask": mask, "subject": subject, "relation": relation, "last": last,
            "subject_last": subject_last}


def correct_facts(model, facts, enc):
    """Indices of the facts whose greedy next token is the attribute's first token, and that token."""
    import interpjax

    logits = np.asarray(interpjax.forward(model.cfg, model.params, enc["tokens"], enc["mask"])[:, -1])
    top = logits.argmax(-1)
    tok = model.tokenizer
    ok = np.array([int(t) in set().union(*(first_tokens(tok, a) for a in f["attributes"]))
                   for t, f in zip(top, facts)])
    return np.flatnonzero(ok), top.astype(np.int32)


def recalled(model, facts):
    """Encoded prompts of the facts the model recalls, those facts, their answer tokens and indices."""
    enc = encode(model, facts)
    keep, top = correct_facts(model, facts, enc)
    return take(enc, keep), [facts[i] for i in keep], top[keep], keep


def take(enc: dict, idx) -> dict:
    return {k: v[idx] for k, v in enc.items()}


def random_nonsubject(enc: dict, seed: int) -> np.ndarray:
    """Per fact, as many random non-subject positions (relation tokens) as the subject has tokens
    (all of them when the relation has fewer): the control for blocking any |subject| edges."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(enc["subject"])
    for b, (s, r) in enumerate(zip(enc["subject"], enc["relation"])):
        pool = np.flatnonzero(r)
        out[b, rng.choice(pool, size=min(int(s.sum()), pool.size), replace=False)] = True
    return out


def knockout_masks(enc: dict, n_random: int, seed: int = 0) -> dict:
    """The key sets whose edges from the last position are blocked."""
    masks = {"subject": enc["subject"], "relation": enc["relation"], "last": enc["last"]}
    for i in range(n_random):
        masks[f"random{i}"] = random_nonsubject(enc, seed + i)
    return masks


# ---------------------------------------------------------------------------------------------
# analysis


def knockout_sweep(model, enc, answers, *, window: int, n_random: int, stride: int = 1, seed: int = 0) -> dict:
    """Relative change of p(attribute) per kind [starts, B] (random: mean over its draws), for
    windows starting every ``stride`` layers."""
    starts = np.arange(0, model.cfg.n_layers - window + 1, stride)
    res = edge_knockout(model, enc["tokens"], knockout_masks(enc, n_random, seed), attention_mask=enc["mask"],
                        window=window, answers=answers, starts=starts)
    rel = {name: (r.prob_knocked - r.prob) / r.prob for name, r in res.items()}
    out = {k: rel[k] for k in ("subject", "relation", "last")}
    out["random"] = np.mean([rel[f"random{i}"] for i in range(n_random)], axis=0)
    out["starts"] = res["subject"].starts
    out["prob"] = res["subject"].prob
    return out


def split_halves(n: int, seed: int = 0):
    """A random half of the facts to select windows on, the other half to report them."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def heldout_window(rel: dict, sel, rep, n_boot: int) -> dict:
    """The window where last->subject hurts most on ``sel``; every kind there on ``rep``, with the
    paired differences subject - control; and each kind's own worst window (selected on ``sel``)."""
    starts = rel["starts"]
    s_idx = int(np.argmin(rel["subject"][:, sel].mean(-1)))
    out = {"start": int(starts[s_idx]), "n_select": int(len(sel)), "n_report": int(len(rep))}
    for k in KINDS:
        out[k] = bootstrap_ci(rel[k][s_idx, rep], n_boot=n_boot)
    for k in ("random", "relation", "last"):
        out[f"subject_minus_{k}"] = paired_bootstrap_diff(rel["subject"][s_idx, rep], rel[k][s_idx, rep], n_boot=n_boot)
    out["peaks"] = {}
    for k in KINDS:
        i = int(np.argmin(rel[k][:, sel].mean(-1)))
        out["peaks"][k] = {"start": int(starts[i]), **bootstrap_ci(rel[k][i, rep], n_boot=n_boot)}
    return out


def attribute_sets(model, facts_all: list[dict]) -> dict[str, set[int]]:
    """Each subject's attribute tokens: the first tokens of every attribute the fact list gives it."""
    sets: dict[str, set[int]] = {}
    for f in facts_all:
        for a in f["attributes"]:
            for word in a.split():
                if len(word) > 2:
                    sets.setdefault(f["subject"], set()).update(first_tokens(model.tokenizer, word))
    return sets


def attribute_rates(model, enc, facts, sets, *, k: int, n_control: int, seed: int = 0) -> dict:
    """Attribute rate [L, B] at the subject's last token: own subject's set vs (mean over
    ``n_control`` draws) the set of another random subject."""
    own = attribute_rate(model, enc["tokens"], enc["subject_last"], [sets[f["subject"]] for f in facts],
                         attention_mask=enc["mask"], k=k).per_prompt
    rng = np.random.default_rng(seed)
    names = sorted(sets)
    ctrl = []
    for _ in range(n_control):
        other = []
        for f in facts:
            choices = [n for n in names if n != f["subject"]]
            other.append(sets[choices[rng.integers(len(choices))]])
        ctrl.append(attribute_rate(model, enc["tokens"], enc["subject_last"], other, attention_mask=enc["mask"],
                                   k=k).per_prompt)
    return {"own": own, "control": np.mean(ctrl, axis=0)}


def knockout_analysis(model, enc, answers, *, window: int, n_random: int, n_boot: int, stride: int = 1,
                      seed: int = 0) -> dict:
    """The sweep, its by-window curves (bootstrap over facts) and the held-out window comparison."""
    rel = knockout_sweep(model, enc, answers, window=window, n_random=n_random, stride=stride, seed=seed)
    sel, rep = split_halves(len(answers), seed)
    return {"starts": rel["starts"].tolist(),
            "curve": {k: [bootstrap_ci(rel[k][i], n_boot=n_boot) for i in range(len(rel["starts"]))] for k in KINDS},
            "heldout": heldout_window(rel, sel, rep, n_boot),
            "clean_prob": bootstrap_ci(rel["prob"], n_boot=n_boot)}


def effect_holds(result: dict) -> bool:
    """On the held-out facts, blocking last->subject in the selected window lowers p(attribute)
    by more than a fifth, and more than blocking the same number of random non-subject edges
    (paired 95% interval below zero)."""
    h = result["heldout"]
    return h["subject"]["value"] < -0.2 and h["subject_minus_random"]["hi"] < 0.0


# ---------------------------------------------------------------------------------------------
# reporting


def _pct(s: dict) -> str:
    return fmt_ci({"value": 100 * s["value"], "lo": 100 * s["lo"], "hi": 100 * s["hi"]}, 1) + " %"


def tables(result: dict, window: int) -> dict[str, str]:
    h = result["heldout"]
    rows = [["facts kept (model's greedy answer is the attribute)", f"{result['n_correct']} of {result['n_facts']}"],
            ["window (layers)", f"{h['start']}–{h['start'] + window - 1} (chosen on {h['n_select']} facts)"]]
    rows += [[f"block last → {k}" + (" (equal-count random non-subject)" if k == "random" else ""), _pct(h[k])]
             for k in KINDS]
    rows += [[f"subject − {k}", _pct(h[f"subject_minus_{k}"])] for k in ("random", "relation", "last")]
    heldout = markdown_table([f"held-out facts (n = {h['n_report']})", "relative change in p(attribute), 95% CI"], rows)
    peaks = markdown_table(["block last →", "worst window (chosen on selection half)", "relative change on held-out half"],
                           [[k, f"{p['start']}–{p['start'] + window - 1}", _pct(p)] for k, p in h["peaks"].items()])
    curve = result["curve"]
    by_window = markdown_table(["window"] + [f"last → {k}" for k in KINDS],
                               [[f"{s}–{s + window - 1}"] + [_pct(curve[k][i]) for k in KINDS]
                                for i, s in enumerate(result["starts"])])
    ar = result["attribute_rate"]
    rate = markdown_table(["layer", "own subject's attributes", "other subjects' attributes", "own − other"],
                          [[str(l), fmt_ci(ar["own"][l], 3), fmt_ci(ar["control"][l], 3), fmt_ci(ar["diff"][l], 3)]
                           for l in range(len(ar["own"]))])
    per_rel = markdown_table(["relation", "facts", "kept"],
                             [[r, str(c["n"]), str(c["kept"])] for r, c in result["per_relation"].items()])
    return {"heldout.md": heldout, "peaks.md": peaks, "by_window.md": by_window, "attribute_rate.md": rate,
            "facts.md": per_rel}


def figure(result: dict, window: int):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    starts = np.asarray(result["starts"])
    for k in KINDS:
        c = result["curve"][k]
        v = np.array([x["value"] for x in c]) * 100
        lo, hi = (np.array([x[e] for x in c]) * 100 for e in ("lo", "hi"))
        axes[0].plot(starts, v, marker="o", ms=3, label=f"last → {k}")
        axes[0].fill_between(starts, lo, hi, alpha=0.2)
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].set(xlabel=f"window start layer (window of {window})", ylabel="relative change in p(attribute) [%]",
                title=f"attention knockout ({result['n_correct']} facts, 95% CI)")
    ar = result["attribute_rate"]
    layers = np.arange(len(ar["own"]))
    for key, label in (("own", "own subject's attributes"), ("control", "another subject's attributes")):
        v = np.array([x["value"] for x in ar[key]])
        axes[1].plot(layers, v, marker="o", ms=3, label=label)
        axes[1].fill_between(layers, [x["lo"] for x in ar[key]], [x["hi"] for x in ar[key]], alpha=0.2)
    axes[1].set(xlabel="layer", ylabel=f"attribute rate (top-{ar['k']})", title="attribute rate at the subject's last token")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a fifth of the facts, every other window, one random draw (results/quick/)")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="interpjax.load name (e.g. gemma-3-270m)")
    ap.add_argument("--window", type=int, default=None, help="layers per knockout window")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: this folder's results/)")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv=None, model=None) -> dict:
    """Run the experiment; ``model`` (an interpjax Model) skips loading ``--model``."""
    args = parse_args(argv)
    size = dict(SIZES["quick" if args.quick else "full"])
    window = args.window or size["window"]
    if model is None:
        import interpjax

        model = interpjax.load(args.model)
    rec = Record(HERE, quick=args.quick, model=model.name or args.model,
                 seeds=[args.seed + i for i in range(size["n_random"])],
                 argv=None if argv is None else ["experiments/knockout/run.py"] + list(argv), out=args.out)
    facts = load_facts(every=size["every"])
    enc, kept, answers, keep = recalled(model, facts)
    print(f"{len(keep)} of {len(facts)} facts recalled")
    result = {"n_facts": len(facts), "n_correct": int(len(keep)), "window": window, "size": size,
              "per_relation": {r: {"n": sum(f["relation"] == r for f in facts),
                                   "kept": sum(f["relation"] == r for f in kept)} for r in TEMPLATES}}

    result.update(knockout_analysis(model, enc, answers, window=window, n_random=size["n_random"],
                                    n_boot=size["n_boot"], stride=size["stride"], seed=args.seed))

    sets = attribute_sets(model, load_facts())
    rates = attribute_rates(model, enc, kept, sets, k=size["k"], n_control=size["n_control"], seed=args.seed)
    L = rates["own"].shape[0]
    result["attribute_rate"] = {
        "k": size["k"],
        "own": [bootstrap_ci(rates["own"][l], n_boot=size["n_boot"]) for l in range(L)],
        "control": [bootstrap_ci(rates["control"][l], n_boot=size["n_boot"]) for l in range(L)],
        "diff": [paired_bootstrap_diff(rates["own"][l], rates["control"][l], n_boot=size["n_boot"]) for l in range(L)],
        "mean_set_size": float(np.mean([len(sets[f["subject"]]) for f in kept])),
    }
    result["effect_holds"] = bool(effect_holds(result))

    for key, value in result.items():
        rec[key] = value
    for name, md in tables(result, window).items():
        rec.table(name, md)
    rec.figure("knockout.png", figure(result, window))
    rec.save()
    if not args.quick and args.out is None:
        sync_readme(HERE / "README.md", rec.out)
    h = result["heldout"]
    print(f"window {h['start']}: subject {_pct(h['subject'])}, relation {_pct(h['relation'])}, "
          f"last {_pct(h['last'])}, random {_pct(h['random'])}; effect holds: {result['effect_holds']}")
    return result


if __name__ == "__main__":
    main()
