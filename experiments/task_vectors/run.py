"""ICL task vectors (Hendel et al. 2023) and function vectors (Merullo et al. 2023) on a decoder
trained here to learn tasks in context.

A small decoder is trained from scratch on the ICL world (``BOS x1 -> y1 ; ... xq -> yq`` with
one task per sequence: copy, +1, -1, +5 and random permutations of 32 items), so it must infer the
task from the demonstrations. Then:

- task vectors: the last-position ``resid_pre`` at layer L averaged over ICL prompts of a task,
  patched into zero-shot prompts ``BOS xq ->`` at the same layer and position; accuracy per layer
  (one vmapped sweep), and the regular / baseline / task-vector table at the best layer (chosen on
  a dev split, reported on a test split); a PCA plot of per-prompt task vectors coloured by task;
  the top tokens of each task vector through the unembedding;
- function vectors: the MLP output o_L at the last position of ICL prompts, *added* into zero-shot
  prompts at layer L; accuracy per layer;
- layer truncation: accuracy of ICL prompts when the last k layers are dropped, for the
  extractive task (copy: the answer is in the prompt) vs the abstractive ones.

    python experiments/task_vectors/run.py --quick      # CI smoke run
    python experiments/task_vectors/run.py              # full mode (README numbers)
    python experiments/task_vectors/run.py --model gpt2 [--tasks antonym,copy] [--demos 5] [--n-eval 40]

With ``--model`` (a local folder or hub id) the same measurements run on a pretrained LM over the
built-in word tasks of ``interpjax.worlds.word_tasks`` (antonyms, country -> capital, uppercase,
next letter, next number word, copy, past tense; prompts ``x1 -> y1\\n ... xq ->``, the answer is
the first token of `` y``); results go to ``--out/model-<folder name or hub id>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from interpjax import Config, Model
from interpjax.methods import task_vectors as tv
from interpjax.io.loading import model_label
from interpjax.io.plots import save_figure
from interpjax.train import TrainConfig, train_in_memory
from interpjax.worlds import icl

QUICK = dict(n_items=16, n_perms=1, layers=3, d_model=64, steps=800, batch=64, demos=3, n_eval=48)
FULL = dict(n_items=24, n_perms=2, layers=4, d_model=96, steps=1500, batch=64, demos=4, n_eval=160)


def train(tasks, size, seed=0):
    """Train the ICL model in memory; returns (cfg, params)."""
    D = size["d_model"]
    cfg = Config(vocab_size=icl.vocab_size(size["n_items"]), d_model=D, n_layers=size["layers"], n_heads=4,
                 d_head=D // 4, d_mlp=4 * D, n_ctx=4 * size["demos"] + 8, positions="rotary", rotary_dim=D // 4,
                 norm="layernorm",
                 activation="gelu")
    tc = TrainConfig(lr=2e-3, weight_decay=0.01, warmup_steps=100, schedule="cosine", total_steps=size["steps"], seed=seed)
    rng = np.random.default_rng(seed)
    return cfg, train_in_memory(cfg, tc, lambda step: icl.training_batch(tasks, size["batch"], size["demos"], rng), size["steps"])


def evaluate_task(model, task, n, k, make):
    """Every measurement for one task; dev/test splits of the zero-shot queries. ``make(task, k, n)``
    returns ICL prompts (tokens, answers, attention mask or None) with k demonstrations."""
    icl_tok, icl_ans, icl_mask = make(task, k, n)
    src_tok, _, src_mask = make(task, k, n)  # prompts the vectors are built from
    zs_tok, zs_ans, zs_mask = make(task, 0, n)
    vectors = tv.task_vectors(model, src_tok, attention_mask=src_mask)  # [L, D]
    half = n // 2
    rows = lambda m, sl: None if m is None else m[sl]  # noqa: E731
    dev = tv.patch_accuracy(model, zs_tok[:half], zs_ans[:half], vectors,
                            attention_mask=rows(zs_mask, slice(None, half))).accuracy
    test = tv.patch_accuracy(model, zs_tok[half:], zs_ans[half:], vectors,
                             attention_mask=rows(zs_mask, slice(half, None))).accuracy
    best = int(np.argmax(dev))
    fv = tv.add_accuracy(model, zs_tok, zs_ans, tv.function_vectors(model, src_tok, attention_mask=src_mask),
                         attention_mask=zs_mask).accuracy
    ids, _ = tv.top_tokens(model, vectors[best], k=5)
    return {
        "kind": task.kind,
        "regular": tv.accuracy(model, icl_tok[half:], icl_ans[half:], attention_mask=rows(icl_mask, slice(half, None))),
        "baseline": tv.accuracy(model, zs_tok[half:], zs_ans[half:], attention_mask=rows(zs_mask, slice(half, None))),
        "task_vector": float(test[best]),
        "best_layer": best,
        "task_vector_by_layer": test.tolist(),
        "function_vector_by_layer": fv.tolist(),
        "truncated_by_k": tv.truncated_accuracy(model, icl_tok, icl_ans, attention_mask=icl_mask).accuracy.tolist(),
        "top_tokens": [int(i) for i in ids],
    }


def per_prompt_vectors(model, tasks, k, layer, make, n=40):
    """Task vectors of single ICL prompts at ``layer`` (for the PCA plot): [tasks * n, D]."""
    rows, labels = [], []
    for i, task in enumerate(tasks):
        tok, _, mask = make(task, k, n)
        rows.append(tv.last_position_states(model, tok, attention_mask=mask)[layer])
        labels += [i] * n
    return np.concatenate(rows), np.asarray(labels)


def task_identity_probe(X, labels, n_tasks, seed=0):
    """Held-out accuracy per layer of a logistic probe reading the task from last-position states:
    whether the ICL prompt's last residual carries the task at all."""
    from interpjax.methods import probes

    tr, te = probes.split(len(labels), 0.3, seed)
    probe = probes.fit_logistic(X[:, tr], labels[tr], n_tasks, steps=300, seed=seed)
    return np.asarray(probes.score(probe, X[:, te], labels[te])).tolist()


def analyse(model, tasks, n, k, make, seed, n_pca):
    """Per-task measurements, the PCA vectors at the most common best layer and the task-identity
    probe by layer; returns (result dict, X, labels) for the plots."""
    cfg = model.cfg
    per_task = {t.name: evaluate_task(model, t, n, k, make) for t in tasks}
    layers = [r["best_layer"] for r in per_task.values()]
    pca_layer = int(np.bincount(layers).argmax())
    X, labels = per_prompt_vectors(model, tasks, k, pca_layer, make, n_pca)
    X_all, labels_all = per_prompt_vectors(model, tasks, k, slice(None), make, n_pca)
    X_all = np.moveaxis(X_all.reshape(len(tasks), cfg.n_layers, -1, cfg.d_model), 1, 0).reshape(cfg.n_layers, -1,
                                                                                               cfg.d_model)
    probe_acc = task_identity_probe(X_all, labels_all, len(tasks), seed)
    result = {"tasks": per_task, "pca_layer": pca_layer,
              "task_probe_accuracy_by_layer": probe_acc, "task_probe_chance": 1 / len(tasks),
              "mean": {key: float(np.mean([r[key] for r in per_task.values()]))
                       for key in ("regular", "baseline", "task_vector")}}
    return result, X, labels


def pretrained(args):
    """The same measurements on a pretrained LM with the built-in word tasks (interpjax.worlds.word_tasks)."""
    import interpjax
    from interpjax.worlds import word_tasks

    k = args.demos if args.demos is not None else (3 if args.quick else 5)
    n = args.n_eval if args.n_eval is not None else (16 if args.quick else 40)
    if n < 4:
        raise ValueError(f"--n-eval={n}: need at least 4 prompts (dev and test halves)")
    tasks = word_tasks.make_tasks(args.tasks.split(",") if args.tasks else None)
    for task in tasks:  # fail before loading the model
        word_tasks.check_counts(task, k, n)
    label = model_label(args.model)
    out = args.out / f"model-{label}"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = interpjax.load(args.model)
    if model.tokenizer is None:
        raise ValueError(f"model {label!r} has no tokenizer; the word tasks need one")
    load_s = time.time() - t0
    rng = np.random.default_rng(args.seed + 1)

    def make(task, n_demos, n_prompts):
        tok, mask, ans, _ = word_tasks.build_prompts(model, task, n_demos, n_prompts, rng)
        if tok.shape[1] > model.cfg.n_ctx:
            raise ValueError(f"prompts of {tok.shape[1]} tokens exceed the model's n_ctx={model.cfg.n_ctx}; "
                             "use fewer --demos")
        return tok, ans, mask

    result, X, labels = analyse(model, tasks, n, k, make, args.seed, n)
    for r in result["tasks"].values():
        r["top_token_strings"] = [model.to_string([i]) for i in r["top_tokens"]]
    result = {"model": label, "demos": k, "n_eval": n, "template": word_tasks.prompt_text([("x1", "y1"), ("xk", "yk")], "xq"),
              "answer": "first token of ' y' as tokenized after the prompt", "load_seconds": load_s, **result}
    return result, tasks, X, labels, out, t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default=None, help="a pretrained LM (folder or hub id) run on word tasks "
                    "instead of the model trained here")
    ap.add_argument("--tasks", default=None, help="comma-separated word tasks for --model (default: all)")
    ap.add_argument("--demos", type=int, default=None, help="demonstrations per ICL prompt for --model (default 5; quick 3)")
    ap.add_argument("--n-eval", type=int, default=None, help="prompts per task for --model (default 40; quick 16)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.model is None and (args.tasks, args.demos, args.n_eval) != (None, None, None):
        ap.error("--tasks, --demos and --n-eval apply to --model only")
    if args.model:
        result, tasks, X, labels, out, t0 = pretrained(args)
        header = f"model {result['model']} ({result['demos']} demos, {result['n_eval']} prompts per task)"
    else:
        size = QUICK if args.quick else FULL
        out = args.out / ("quick" if args.quick else "full")
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        tasks = icl.make_tasks(size["n_items"], size["n_perms"], seed=args.seed)
        cfg, params = train(tasks, size, args.seed)
        train_s = time.time() - t0
        rng = np.random.default_rng(args.seed + 1)

        def make(task, k, n):
            tok, ans, _ = icl.icl_prompts(task, k, n, rng)
            return tok, ans, None

        model = Model(cfg=cfg, params=params, name="icl-world")
        analysed, X, labels = analyse(model, tasks, size["n_eval"], size["demos"], make, args.seed, 40)
        result = {"size": size, "train_seconds": train_s, **analysed}
        header = f"trained in {train_s:.0f}s"
    result["total_seconds"] = time.time() - t0
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out / "results.json")
    plot(result, tasks, X, labels, out)
    print(header)
    w = max(8, *(len(t) for t in result["tasks"]))
    print(f"{'task':{w}s} {'kind':11s} regular baseline task-vector (layer)")
    for name, r in result["tasks"].items():
        print(f"{name:{w}s} {r['kind']:11s} {r['regular']:7.2f} {r['baseline']:8.2f} {r['task_vector']:11.2f} "
              f"({r['best_layer']})")
    m = result["mean"]
    print(f"{'mean':{w + 12}s} {m['regular']:7.2f} {m['baseline']:8.2f} {m['task_vector']:11.2f}")
    probe_acc = result["task_probe_accuracy_by_layer"]
    print("task read from the last ICL position by a linear probe, by layer: "
          + " ".join(f"{a:.2f}" for a in probe_acc) + f" (chance {1 / len(tasks):.2f})")
    print(f"total {result['total_seconds']:.0f}s; results in {out}")
    return result


def plot(result, tasks, X, labels, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for name, r in result["tasks"].items():
        axes[0].plot(r["task_vector_by_layer"], marker="o", label=name)
        axes[1].plot(r["function_vector_by_layer"], marker="o", label=name)
    axes[0].set(title="task vector patched into zero-shot (resid_pre)", xlabel="layer", ylabel="accuracy")
    axes[1].set(title="MLP output o_L added into zero-shot", xlabel="layer")
    extractive = [r["truncated_by_k"] for r in result["tasks"].values() if r["kind"] == "extractive"]
    abstractive = [r["truncated_by_k"] for r in result["tasks"].values() if r["kind"] == "abstractive"]
    if extractive:
        axes[2].plot(np.mean(extractive, 0), marker="o", label="extractive (copy)")
    if abstractive:
        axes[2].plot(np.mean(abstractive, 0), marker="o", label="abstractive")
    axes[2].set(title="ICL accuracy with the last k layers dropped", xlabel="k", ylabel="accuracy")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out / "task_vectors.png")
    plt.close(fig)
    Xc = X - X.mean(0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    Z = Xc @ vt[:2].T
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for i, task in enumerate(tasks):
        ax.scatter(*Z[labels == i].T, s=10, label=task.name)
    ax.set(title=f"PCA of per-prompt task vectors (layer {result['pca_layer']})", xlabel="PC1", ylabel="PC2")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "pca.png")
    plt.close(fig)


if __name__ == "__main__":
    main()
