"""Representation Engineering (M1, Zou et al. 2023) on SmolLM2-135M-Instruct: reading vectors for
two concepts -- happiness vs sadness in scenarios, and true vs false statements (only the facts
whose true version the model itself finds more likely than the false one) -- at every layer,
scored on held-out pairs that share no scenario / fact with the training pairs, against two
sign-agnostic controls; LAT token x layer scans; and control by adding the reading vector to
several layers at once (next-token logit differences over layer bands x coefficients, sampled
generations, the model's own true/false judgement), each against a norm-matched random vector.

Per concept and split seed (3 seeds; groups dealt 60/20/20 into train/dev/test):
- PCA and mean-difference reading vectors are fitted on train at every layer; the layer is chosen
  by dev pair accuracy and reported on test (pair accuracy and single accuracy, bootstrap 95% CI
  over test pairs).
- Controls, same layers and splits: the same pipeline fitted on label-shuffled pseudo-pairs (20
  draws) and 20 random unit directions; both scored sign-agnostically, max(acc, 1 - acc) on test,
  at a dev-chosen layer -- so a control gets the better of its two signs on the test data, the
  method only its train-chosen sign.
- The effect check (``effect_holds``) pairs each reader with the control that removes what it
  learns from: mean-diff (supervised) against its label-shuffled fit, PCA (unsupervised, the
  paper's LAT, which needs no labels and so survives shuffling) against the random direction.
  It is required for emotion (``REQUIRED``); for honesty it is reported.

    python experiments/repe/run.py            # full run -> results/full, README blocks
    python experiments/repe/run.py --quick    # small CI run -> results/quick (or --out DIR)
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stimuli as S  # noqa: E402
from interpjax.evidence import (Record, bootstrap_ci, fmt_ci, markdown_table, paired_bootstrap_diff,  # noqa: E402
                                seed_summary, sync_readme)

DEFAULT_MODEL = "smollm2-135m-instruct"
SITE = "resid_post"
SEEDS = (0, 1, 2)
CONCEPTS = ("emotion", "honesty")
CORES = ("method", "shuffled", "random")
N_RANDOM = 20            # random directions per split (the random-direction control)
N_SHUFFLED = 20          # label-shuffled fits per split (the shuffled-label control)
MARGIN = 0.1             # the asserted effect: test pair accuracy beats the reader's control by this much
CONTROL_OF = {"mean_diff": "shuffled", "pca": "random"}  # the control each reader's effect is checked against
REQUIRED = ("emotion",)  # the concepts effect_holds must hold for (honesty: reported, not required)
BAND = 3                 # control: the vector is added at this many consecutive layers at once
COEFFS = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)  # x the per-layer mean positive-negative gap
GEN_COEFF = 1.0          # generation: +/- this coefficient (fixed before the full run)
TARGET_TOKENS = {"emotion": (" happy", " sad"), "honesty": (" True", " False")}
_T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - _T0:7.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# data and activations


def build_pairs(concept: str, quick: bool) -> list[dict]:
    """The contrast pairs of ``concept`` (a subset in quick mode)."""
    if concept == "emotion":
        return S.emotion_pairs(2 if quick else 5)
    if concept == "honesty":
        return S.honesty_pairs(40, 40) if quick else S.honesty_pairs()
    raise ValueError(f"concept={concept!r}; valid: {CONCEPTS}")


def statement_log_probs(model, texts, batch_size: int = 64) -> np.ndarray:
    """Sum of the model's log-probabilities of each text's tokens after its first: [N]."""
    import jax
    import jax.numpy as jnp

    import interpjax

    out = []
    for i in range(0, len(texts), batch_size):
        toks, mask = model.to_tokens(texts[i:i + batch_size])
        toks, real = jnp.asarray(toks), jnp.asarray(mask) > 0
        logits = interpjax.forward(model.cfg, model.params, toks, jnp.asarray(mask), ())
        lp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
        tgt = jnp.take_along_axis(lp, toks[:, 1:, None], -1)[..., 0]
        out.append(np.asarray(jnp.where(real[:, :-1] & real[:, 1:], tgt, 0.0).sum(1)))
    return np.concatenate(out)


def known_facts(model, pairs, batch_size: int = 64) -> tuple[list, dict]:
    """The honesty pairs whose true statement the model itself finds more likely than its false
    partner (so a truth reading has something to read), and the share kept per kind."""
    lt = statement_log_probs(model, [p["true"] for p in pairs], batch_size)
    lf = statement_log_probs(model, [p["false"] for p in pairs], batch_size)
    keep = lt > lf
    kinds = sorted({p["kind"] for p in pairs})
    share = {k: float(np.mean([keep[i] for i, p in enumerate(pairs) if p["kind"] == k])) for k in kinds}
    return [p for p, k in zip(pairs, keep) if k], {"all": float(keep.mean()), **share}


def pair_acts(model, pairs, layers, batch_size: int = 64):
    """Last-token activations at ``SITE`` of the positive and negative texts: two [L, N, D]."""
    from interpjax.methods import steering as st

    pos = st.activations_at(model, [p["pos"] for p in pairs], SITE, layers, batch_size=batch_size)
    neg = st.activations_at(model, [p["neg"] for p in pairs], SITE, layers, batch_size=batch_size)
    return pos, neg


# ---------------------------------------------------------------------------------------------
# reading: one split


def fit_core(pos, neg, layers, core: str, method: str, seed: int):
    """The reading vectors of ``core``: the method itself, or one of its controls in its place."""
    from interpjax.methods import reading as rd

    if core == "method":
        return rd.fit(pos, neg, layers, SITE, method, seed)
    if core == "shuffled":
        return rd.fit_shuffled(pos, neg, layers, SITE, method, seed + 1000)
    if core == "random":
        return rd.random_reading_vectors(pos, neg, layers, SITE, 1, seed + 2000)[0]
    raise ValueError(f"core={core!r}; valid: {CORES}")


def hits(rv, pos, neg) -> np.ndarray:
    """Per layer and pair, whether the positive scores above its negative: bool [L, N]."""
    return rv.scores(pos) > rv.scores(neg)


def sign_agnostic_choice(dev_LN: np.ndarray, test_LN: np.ndarray):
    """A control's dev-chosen layer (best sign-agnostic dev accuracy) and its per-pair test
    correctness under the better sign on test: (layer index, float [N])."""
    from interpjax.methods import reading as rd

    l = int(np.argmax(rd.sign_agnostic(dev_LN.mean(-1))))
    t = test_LN[l].astype(np.float64)
    return l, (t if t.mean() >= 0.5 else 1.0 - t)


def evaluate_split(pos, neg, split: dict, layers, seed: int, method: str = "pca", core: str = "method",
                   n_random: int = N_RANDOM, n_shuffled: int = N_SHUFFLED) -> dict:
    """One split: reading vectors (``core``; the method unless a control replaces it) fitted on train,
    layer chosen on dev, scored on test; plus the shuffled-label and random-direction controls."""
    from interpjax.methods import reading as rd

    tr, dev, te = split["train"], split["dev"], split["test"]
    rv = fit_core(pos[:, tr], neg[:, tr], layers, core, method, seed)
    dev_hits, test_hits = hits(rv, pos[:, dev], neg[:, dev]), hits(rv, pos[:, te], neg[:, te])
    sel = int(np.argmax(dev_hits.mean(1)))
    single_LN = np.concatenate([rv.scores(pos[:, te]) > 0, rv.scores(neg[:, te]) < 0], 1)
    # shuffled labels: each draw at its own dev-chosen layer, its sign chosen on test; mean over draws
    shs = [rd.fit_shuffled(pos[:, tr], neg[:, tr], layers, SITE, method, seed + 1 + 7919 * k) for k in range(n_shuffled)]
    sh_dev = np.stack([hits(h, pos[:, dev], neg[:, dev]) for h in shs])  # [K, L, N]
    sh_test = np.stack([hits(h, pos[:, te], neg[:, te]) for h in shs])
    sh_choice = [sign_agnostic_choice(sh_dev[k], sh_test[k]) for k in range(n_shuffled)]
    sh_items = np.mean([c[1] for c in sh_choice], 0)
    sh_layers = [layers[c[0]] for c in sh_choice]
    # random directions: one layer chosen on dev for all draws, each draw's sign chosen on test
    rands = rd.random_reading_vectors(pos[:, tr], neg[:, tr], layers, SITE, n_random, seed + 2)
    r_dev = np.stack([hits(r, pos[:, dev], neg[:, dev]) for r in rands])  # [K, L, N]
    r_test = np.stack([hits(r, pos[:, te], neg[:, te]) for r in rands])
    r_sel = int(np.argmax(rd.sign_agnostic(r_dev.mean(-1)).mean(0)))
    r_items = np.mean([sign_agnostic_choice(r_dev[k, r_sel][None], r_test[k, r_sel][None])[1]
                       for k in range(n_random)], 0)
    pair_items = test_hits[sel].astype(np.float64)
    return {
        "layer": layers[sel], "shuffled_layer": int(np.bincount(sh_layers).argmax()), "shuffled_layers": sh_layers,
        "random_layer": layers[r_sel], "n_train": len(tr), "n_dev": len(dev), "n_test": len(te),
        "pair": bootstrap_ci(pair_items, seed=seed), "single": bootstrap_ci(single_LN[sel].astype(np.float64), seed=seed),
        "shuffled": bootstrap_ci(sh_items, seed=seed), "random": bootstrap_ci(r_items, seed=seed),
        "shuffled_draws": [float(c[1].mean()) for c in sh_choice],
        "minus_shuffled": paired_bootstrap_diff(pair_items, sh_items, seed=seed),
        "minus_random": paired_bootstrap_diff(pair_items, r_items, seed=seed),
        "train_pair_by_layer": rv.meta["train_pair_accuracy"],
        "dev_pair_by_layer": dev_hits.mean(1), "test_pair_by_layer": test_hits.mean(1),
        "test_single_by_layer": single_LN.mean(1),
        "shuffled_sa_by_layer": rd.sign_agnostic(sh_test.mean(-1)).mean(0),
        "random_sa_by_layer": rd.sign_agnostic(r_test.mean(-1)).mean(0),
    }


def summarise(rows: list) -> dict:
    """Mean over split seeds (Student-t 95% interval) of the test numbers at the dev-chosen layers."""
    s = {k: seed_summary([r[k]["value"] for r in rows]) for k in ("pair", "single", "shuffled", "random")}
    for ctrl in ("shuffled", "random"):
        s[f"minus_{ctrl}_lo"] = [r[f"minus_{ctrl}"]["lo"] for r in rows]
    s["layers"] = [r["layer"] for r in rows]
    return s


def evaluate_concept(pos, neg, splits: list, layers, seeds, methods=("pca", "mean_diff"), core: str = "method",
                     n_random: int = N_RANDOM, n_shuffled: int = N_SHUFFLED) -> tuple[dict, dict]:
    """Every split of one concept for each reading method: (per-seed rows, summaries) by method."""
    rows = {m: [evaluate_split(pos, neg, sp, layers, seed, m, core, n_random, n_shuffled)
                for sp, seed in zip(splits, seeds)] for m in methods}
    return rows, {m: summarise(r) for m, r in rows.items()}


def reader_beats_control(s: dict, control: str, margin: float = MARGIN) -> bool:
    """One reader's summary beats ``control`` by ``margin`` (mean over seeds) and on every seed the
    paired bootstrap interval of reader - control lies above 0."""
    return bool(s["pair"]["value"] > s[control]["value"] + margin and all(lo > 0 for lo in s[f"minus_{control}_lo"]))


def effect_holds(summary: dict, margin: float = MARGIN) -> bool:
    """The asserted effect for one concept: each reader of ``CONTROL_OF`` beats its own control --
    mean-diff its label-shuffled fit, PCA the random direction -- by ``margin`` on held-out pairs at
    the dev-chosen layer, every seed's paired interval above 0."""
    missing = [m for m in CONTROL_OF if m not in summary]
    if missing:
        raise ValueError(f"effect_holds needs summaries of {list(CONTROL_OF)}; missing {missing}")
    return all(reader_beats_control(summary[m], c, margin) for m, c in CONTROL_OF.items())


# ---------------------------------------------------------------------------------------------
# control: adding the vector at several layers at once


def token_id(model, text: str) -> int:
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{text!r} is {len(ids)} tokens for this tokenizer; the logit metric needs one")
    return int(ids[0])


def steering_vectors(rv, seed: int) -> dict:
    """[L, D] vectors added by the control: the reading direction times its per-layer mean gap, and
    a norm-matched random direction per layer."""
    gap_L = np.abs(np.asarray(rv.meta["mean_gap"], np.float32))
    g = np.random.default_rng(seed).normal(size=rv.directions_LD.shape).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return {"reading": rv.directions_LD * gap_L[:, None], "random": g * gap_L[:, None]}


def band_interventions(vecs_LD, start, coeff, width: int = BAND) -> tuple:
    """``coeff * vecs_LD[l]`` added at ``SITE`` of layers start .. start + width - 1 (traceable)."""
    from interpjax import Add

    return tuple(Add(SITE, layer=start + k, vector=vecs_LD[start + k], coeff=coeff) for k in range(width))


@functools.lru_cache(maxsize=None)
def _grid_program(cfg, ids: tuple):
    """The jitted [S, C, P] grid for one model config and token pair; the weights, prompts and
    vectors are its arguments (closing over them would make XLA constant-fold 135M weights)."""
    import jax
    import jax.numpy as jnp

    import interpjax

    def cell(params, toks, mask, vecs, start, coeff):
        out = interpjax.forward(cfg, params, toks, mask, band_interventions(vecs, start, coeff))
        logp = jax.nn.log_softmax(out[:, -1].astype(jnp.float32))
        return logp[:, ids[0]] - logp[:, ids[1]]

    over_c = jax.vmap(cell, in_axes=(None, None, None, None, None, 0))
    return jax.jit(jax.vmap(over_c, in_axes=(None, None, None, None, 0, None)))


def logit_grid(model, prompts, vecs_LD, starts, coeffs, ids: tuple) -> np.ndarray:
    """log p(ids[0]) - log p(ids[1]) at the last position of each prompt, with the vector added at
    each band start x coefficient: [S, C, P], one vmapped program per model config."""
    import jax.numpy as jnp

    toks, mask = model.to_tokens(prompts)
    grid = _grid_program(model.cfg, tuple(int(i) for i in ids))
    return np.asarray(grid(model.params, jnp.asarray(toks), jnp.asarray(mask), jnp.asarray(vecs_LD, jnp.float32),
                           jnp.asarray(starts, jnp.int32), jnp.asarray(coeffs, jnp.float32)))


def band_start(layer: int, n_layers: int, width: int = BAND) -> int:
    """The start of the band of ``width`` layers centred on ``layer`` (inside the model)."""
    return int(min(max(layer - width // 2, 0), n_layers - width))


def shift_summary(grid_SCP: np.ndarray, s: int, coeffs, c: float, seed: int = 0) -> dict:
    """Per prompt, metric(+c) - metric(-c) at band row ``s``: bootstrap CI over prompts."""
    i, j = list(coeffs).index(c), list(coeffs).index(-c)
    return bootstrap_ci(grid_SCP[s, i] - grid_SCP[s, j], seed=seed)


def count_words(text: str, words) -> int:
    toks = re.findall(r"[a-z]+", text.lower())
    return sum(t in words for t in toks)


def generation_test(model, vecs: dict, start: int, prompts, coeff: float, n_samples: int, n_new: int, seed: int):
    """Sampled continuations of neutral prompts with +/-coeff x (reading | random) vector at the band
    from ``start`` and with none: per row the word-list score (#happy - #sad words)."""
    import jax.numpy as jnp

    from interpjax.generate import generate, stack_rows

    conds = [("none", 0.0), ("reading", coeff), ("reading", -coeff), ("random", coeff), ("random", -coeff)]
    zero = jnp.zeros_like(jnp.asarray(vecs["reading"]))
    rows = [(k, c, p, r) for k, c in conds for p in range(len(prompts)) for r in range(n_samples)]
    ivs = stack_rows([band_interventions(zero if k == "none" else jnp.asarray(vecs[k]), start, c) for k, c, _, _ in rows])
    toks, mask = model.to_tokens([prompts[p] for _, _, p, _ in rows])
    gen = generate(model.cfg, model.params, toks, n_new, ivs, attention_mask=mask, per_row=True, temperature=0.8,
                   top_k=40, seed=seed)
    T0 = toks.shape[1]
    texts = [model.to_string(gen.tokens[i, T0:][gen.mask[i, T0:] > 0]) for i in range(len(rows))]
    score = np.array([count_words(t, S.HAPPY_WORDS) - count_words(t, S.SAD_WORDS) for t in texts], np.float64)
    out = {}
    for k, c in conds:
        sel = [i for i, r in enumerate(rows) if r[:2] == (k, c)]
        out[f"{k}{c:+g}"] = {"score": score[sel], "texts": [texts[i] for i in sel]}
    return out


# ---------------------------------------------------------------------------------------------
# figures


def plot_layers(rows_by_concept: dict, layers, model_name: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows_by_concept), figsize=(6.4 * len(rows_by_concept), 3.8), squeeze=False)
    for ax, (concept, rows) in zip(axes[0], rows_by_concept.items()):
        for m, color in (("pca", "tab:blue"), ("mean_diff", "tab:green")):
            ax.plot(layers, np.mean([r["test_pair_by_layer"] for r in rows[m]], 0), "-o", ms=3, color=color,
                    label=f"{m} pair (test)")
            ax.plot(layers, np.mean([r["test_single_by_layer"] for r in rows[m]], 0), "--", color=color,
                    label=f"{m} single (test)")
        ax.plot(layers, np.mean([r["shuffled_sa_by_layer"] for r in rows["pca"]], 0), ":", color="tab:red",
                label="shuffled labels, max(acc, 1-acc)")
        ax.plot(layers, np.mean([r["random_sa_by_layer"] for r in rows["pca"]], 0), ":", color="grey",
                label="random directions, max(acc, 1-acc)")
        ax.axhline(0.5, color="k", lw=0.5)
        ax.set_ylim(0.3, 1.02)
        ax.set_xlabel("layer (resid_post)")
        ax.set_ylabel("held-out accuracy (mean over seeds)")
        ax.set_title(f"{concept}: {model_name}")
        ax.legend(fontsize=6)
    return fig


def plot_steer(grids: dict, starts, coeffs, concept: str, label: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    c0 = list(coeffs).index(0.0)
    lim = max(float(np.abs(g.mean(-1) - g.mean(-1)[:, c0:c0 + 1]).max()) for g in grids.values()) or 1.0
    for ax, (k, g) in zip(axes, grids.items()):
        d = g.mean(-1) - g.mean(-1)[:, c0:c0 + 1]
        im = ax.imshow(d, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(len(coeffs)), [f"{c:g}" for c in coeffs])
        ax.set_yticks(range(len(starts)), [f"{s}-{s + BAND - 1}" for s in starts])
        ax.set_xlabel("coefficient (x mean gap per layer)")
        ax.set_title(f"{k} vector")
    axes[0].set_ylabel("layers steered")
    fig.colorbar(im, ax=axes, label=f"change in {label}")
    fig.suptitle(f"{concept}: steering {BAND} layers at once")
    return fig


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--quick", action="store_true", help="fewer pairs, one split seed, a small control part")
    ap.add_argument("--concepts", nargs="+", default=list(CONCEPTS), choices=CONCEPTS)
    ap.add_argument("--no-control", action="store_true", help="reading only (no steering part)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default=None, help="results folder (default: this folder's results/)")
    args = ap.parse_args(argv)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def main(argv=None, model=None):
    args = parse_args(argv)
    import interpjax
    from interpjax.io.artifacts import model_identity
    from interpjax.io.loading import model_label
    from interpjax.methods import reading as rd

    seeds = SEEDS[:1] if args.quick else SEEDS
    model_name = model_label(args.model)
    rec = Record(HERE, quick=args.quick, model=model_name, seeds=seeds, argv=argv,
                 out=None if args.out is None else Path(args.out))
    model = interpjax.load(args.model) if model is None else model
    L = model.cfg.n_layers
    layers = list(range(L))
    arrays, rows_by, summary, pairs_by, splits_by = {}, {}, {}, {}, {}
    head_rows, seed_rows, knowledge = [], [], {}
    for concept in args.concepts:
        pairs = build_pairs(concept, args.quick)
        if concept == "honesty":
            n_all = len(pairs)
            pairs, share = known_facts(model, pairs, args.batch_size)
            knowledge.update(n_pairs_before=n_all, lm_prefers_true=share)
            know_rows = [[k, f"{v:.3f}"] for k, v in share.items()]
            rec.table("knowledge.md", markdown_table(["statement kind", "share of pairs with log p(true) > log p(false)"],
                                                     know_rows))
            log(f"honesty: the model prefers the true statement in {share['all']:.3f} of {n_all} pairs; kept those")
        pos, neg = pair_acts(model, pairs, layers, args.batch_size)
        splits = [S.split_groups(pairs, s) for s in seeds]
        log(f"{concept}: {len(pairs)} pairs, {len({p['group'] for p in pairs})} groups, activations {pos.shape}")
        rows, summ = evaluate_concept(pos, neg, splits, layers, seeds)
        arrays[concept], rows_by[concept], summary[concept] = {"pos": pos, "neg": neg}, rows, summ
        pairs_by[concept], splits_by[concept] = pairs, splits
        for m in ("pca", "mean_diff"):
            s = summ[m]
            head_rows.append([concept, m, ", ".join(map(str, s["layers"])), fmt_ci(s["pair"]), fmt_ci(s["single"]),
                              fmt_ci(s["shuffled"]), fmt_ci(s["random"])])
            for r, seed in zip(rows[m], seeds):
                seed_rows.append([concept, m, seed, f"{r['n_train']}/{r['n_dev']}/{r['n_test']}", r["layer"],
                                  fmt_ci(r["pair"]), fmt_ci(r["single"]), f"{r['shuffled_layer']}: {fmt_ci(r['shuffled'])}",
                                  f"{r['random_layer']}: {fmt_ci(r['random'])}", fmt_ci(r["minus_shuffled"]),
                                  fmt_ci(r["minus_random"])])
            log(f"{concept}/{m}: layers {s['layers']} pair {fmt_ci(s['pair'])} single {fmt_ci(s['single'])} "
                f"shuffled {fmt_ci(s['shuffled'])} random {fmt_ci(s['random'])}")
        by_layer = [[l] + [f"{np.mean([r[k][i] for r in rows[m]]):.3f}" for m in ("pca", "mean_diff")
                           for k in ("dev_pair_by_layer", "test_pair_by_layer", "test_single_by_layer")]
                    + [f"{np.mean([r[k][i] for r in rows['pca']]):.3f}" for k in ("shuffled_sa_by_layer", "random_sa_by_layer")]
                    for i, l in enumerate(layers)]
        rec.table(f"by_layer_{concept}.md", markdown_table(
            ["layer", "PCA dev pair", "PCA test pair", "PCA test single", "mean-diff dev pair", "mean-diff test pair",
             "mean-diff test single", "shuffled-label ctrl (sign-agnostic)", "random-dir ctrl (sign-agnostic)"], by_layer))

    rec["n_pairs"] = {c: len(p) for c, p in pairs_by.items()}
    if knowledge:
        rec["honesty_known_facts"] = knowledge
    rec["n_groups"] = {c: len({p["group"] for p in ps}) for c, ps in pairs_by.items()}
    rec["per_seed"] = rows_by
    rec["summary"] = summary
    rec["effect_holds"] = {c: effect_holds(summary[c]) for c in summary}
    rec["effect_required"] = [c for c in REQUIRED if c in summary]
    rec["examples"] = {c: {"pos": ps[0]["pos"], "neg": ps[0]["neg"]} for c, ps in pairs_by.items()}
    rec.table("headline.md", markdown_table(
        ["concept", "reading vector", "dev-chosen layer (per seed)", "test pair acc", "test single acc",
         "shuffled-label ctrl", "random-direction ctrl"], head_rows))
    rec.table("seeds.md", markdown_table(
        ["concept", "vector", "seed", "pairs train/dev/test", "layer", "pair acc (bootstrap CI)", "single acc",
         f"shuffled ctrl, {N_SHUFFLED} fits (modal layer: acc)", f"random ctrl, {N_RANDOM} dirs (layer: acc)",
         "pair − shuffled ctrl (paired CI)", "pair − random ctrl (paired CI)"], seed_rows))
    rec.figure("accuracy_by_layer.png", plot_layers(rows_by, layers, model_name))

    # reading vectors of split seed 0 (train pairs): the scans and the control use them
    rvs = {}
    for concept in args.concepts:
        tr = splits_by[concept][0]["train"]
        rvs[concept] = rd.fit(arrays[concept]["pos"][:, tr], arrays[concept]["neg"][:, tr], layers, SITE, "pca", 0,
                              {**model_identity(model), "label": f"{concept} (seed-0 train pairs)"})
        rvs[concept].save(rec.out / f"{concept}.reading.safetensors")
        scan = rd.scan(model, S.SCAN_TEXTS[concept], rvs[concept])
        band = list(range(band_start(rows_by[concept]["pca"][0]["layer"], L, 5),
                          band_start(rows_by[concept]["pca"][0]["layer"], L, 5) + 5))
        rd.render_html(scan, rec.out / f"scan_{concept}.html", layers=band,
                       title=f"LAT scan, {concept} reading vector (green = {'happy' if concept == 'emotion' else 'true'})")
        rd.heatmap_png(scan, rec.out / f"scan_{concept}.png", title=f"LAT scan: {concept} (PCA, seed-0 train pairs)")
        rec[f"scan_{concept}"] = {"text": S.SCAN_TEXTS[concept], "tokens": scan.tokens, "colour_layers": band,
                                  "scores_TL": np.round(scan.scores_TL, 3)}

    if not args.no_control:
        control_part(rec, model, args, rvs, rows_by, pairs_by, splits_by, seeds)
    path = rec.save()
    rec.arrays, rec.splits, rec.layers = arrays, splits_by, layers  # for in-process checks (not saved)
    if not args.quick:
        sync_readme(HERE / "README.md", rec.out)
    print(markdown_table(["concept", "reading vector", "layers", "pair", "single", "shuffled", "random"], head_rows))
    print(f"effect holds: {rec['effect_holds']}; wrote {path}")
    return rec


def control_part(rec, model, args, rvs, rows_by, pairs_by, splits_by, seeds) -> None:
    """Steering with the seed-0 reading vector at bands of BAND layers vs a norm-matched random
    vector: next-token logit differences over bands x coefficients, the model's true/false
    judgement, and (emotion) sampled generations scored with word lists."""
    L = model.cfg.n_layers
    starts = [0, 3] if args.quick else list(range(0, L - BAND + 1, 3))
    coeffs = (-1.0, 0.0, 1.0) if args.quick else COEFFS
    steer_rows, steer, gen_rows = [], {}, []
    for concept in rvs:
        chosen = rows_by[concept]["pca"][0]["layer"]
        s0 = band_start(chosen, L)
        band_starts = sorted(set(starts) | {s0})
        vecs = steering_vectors(rvs[concept], seed=11)
        if concept == "emotion":
            prompts = S.neutral_emotion_prompts(4 if args.quick else 16)
        else:
            te = splits_by[concept][0]["test"][: 4 if args.quick else 16]
            ps = pairs_by[concept]
            prompts = [S.JUDGE.format(statement=ps[i][k]) for i in te for k in ("true", "false")]
        ids = tuple(token_id(model, t) for t in TARGET_TOKENS[concept])
        grids = {k: logit_grid(model, prompts, v, band_starts, coeffs, ids) for k, v in vecs.items()}
        log(f"{concept}: steering grid {grids['reading'].shape} done")
        si, c = band_starts.index(s0), max(coeffs)
        res = {"band": [s0, s0 + BAND - 1], "starts": band_starts, "coeffs": coeffs, "prompts": prompts,
               "target_tokens": TARGET_TOKENS[concept], "grid_mean_SC": {k: g.mean(-1) for k, g in grids.items()}}
        for k, g in grids.items():
            res[f"{k}_shift"] = shift_summary(g, si, coeffs, c)
        res["reading_minus_random"] = paired_bootstrap_diff(grids["reading"][si, coeffs.index(c)] - grids["reading"][si, coeffs.index(-c)],
                                                            grids["random"][si, coeffs.index(c)] - grids["random"][si, coeffs.index(-c)])
        if concept == "honesty":  # the unsteered model's own judgement: true statement above its false partner
            base = grids["reading"][si, coeffs.index(0.0)]
            res["judge_pair_accuracy_unsteered"] = bootstrap_ci((base[0::2] > base[1::2]).astype(np.float64))
        steer[concept] = res
        for k in grids:
            steer_rows.append([concept, f"{s0}-{s0 + BAND - 1}", k, f"±{c:g}", fmt_ci(res[f"{k}_shift"])])
        rec.figure(f"steer_{concept}.png", plot_steer(grids, band_starts, coeffs, concept,
                                                      "log p({}) − log p({})".format(*TARGET_TOKENS[concept])))
        grid_md = [[f"{s}-{s + BAND - 1}", k] + [f"{v:+.2f}" for v in g.mean(-1)[i] - g.mean(-1)[i, coeffs.index(0.0)]]
                   for i, s in enumerate(band_starts) for k, g in grids.items()]
        rec.table(f"steer_grid_{concept}.md", markdown_table(["layers", "vector"] + [f"c={x:g}" for x in coeffs], grid_md))
        if concept == "emotion":
            gprompts = S.neutral_emotion_prompts(4 if args.quick else 12)
            gen = generation_test(model, vecs, s0, gprompts, GEN_COEFF, 1 if args.quick else 4, 12 if args.quick else 32,
                                  seed=seeds[0])
            gres = {}
            for k in ("reading", "random"):
                up, down = gen[f"{k}{GEN_COEFF:+g}"]["score"], gen[f"{k}{-GEN_COEFF:+g}"]["score"]
                gres[k] = {"plus": bootstrap_ci(up), "minus": bootstrap_ci(down), "plus_minus_minus": paired_bootstrap_diff(up, down)}
                gen_rows.append([f"{s0}-{s0 + BAND - 1}", k, fmt_ci(gres[k]["plus"]), fmt_ci(gres[k]["minus"]),
                                 fmt_ci(gres[k]["plus_minus_minus"])])
            gres["none"] = bootstrap_ci(gen["none+0"]["score"])
            gen_rows.append([f"{s0}-{s0 + BAND - 1}", "none", fmt_ci(gres["none"]), "", ""])
            gres["examples"] = {k: v["texts"][:3] for k, v in gen.items()}
            gres["prompts"], gres["coeff"] = gprompts, GEN_COEFF
            steer["generation"] = gres
            log(f"generation: {fmt_ci(gres['reading']['plus_minus_minus'])} vs random {fmt_ci(gres['random']['plus_minus_minus'])}")
    rec["control"] = steer
    rec.table("steer.md", markdown_table(["concept", "layers steered (dev-chosen band)", "vector", "coefficient",
                                          "metric(+c) − metric(−c), per prompt (bootstrap CI)"], steer_rows))
    if gen_rows:
        rec.table("generation.md", markdown_table(["layers steered", "vector", f"#happy − #sad words, +{GEN_COEFF:g}",
                                                   f"−{GEN_COEFF:g}", "(+) − (−) (paired CI)"], gen_rows))


if __name__ == "__main__":
    main()
