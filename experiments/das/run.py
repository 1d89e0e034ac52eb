"""Boundless DAS on the price-bracket task (Wu et al. 2023, "Interpretability at Scale"): train a small
decoder from scratch to answer "Yes iff X <= Z <= Y", then align four competing causal models
(left boundary, left-and-right boundary, mid-point distance, bracket identity) with Boundless DAS at
every layer x position of the residual stream and report interchange intervention accuracy (IIA).

    python experiments/das/run.py --quick     # CI smoke run
    python experiments/das/run.py             # full mode (see README for time)
    python experiments/das/run.py --model gpt2 [--layers 0,6,11] [--n-train 1024] [--n-test 256] [--das-steps 150]

Writes results.json and iia.png (atomically) to ``--out``/{quick,full}; the trained model's
checkpoints go to ``--workdir`` (default runs/das/<mode>; a rerun with the same settings reuses them).

With ``--model`` (a local folder or hub id) the same search runs on a pretrained LM over the paper's
text prompts ("Please say yes only if it costs between X.XX and Y.YY dollars, otherwise no." then
"Input: Z.ZZ dollars", answer " Yes" / " No"; ``price_text.py``) at the last tokens of the Y and Z
amounts and of the prompt, after first measuring the model's task accuracy; results go to
``--out``/model-<folder name or hub id>/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import price  # noqa: E402
import price_text  # noqa: E402

from interpjax import Model, forward
from interpjax.methods.das import sample_interchange, take_rows, train_das_grid
from interpjax.io.loading import model_label
from interpjax.train import TrainConfig, Trainer, lm_loss

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODES = {
    # amount levels, model width/depth and training steps; DAS pairs (train / held out), steps, batch, positions
    "quick": dict(levels=100, d_model=64, n_layers=2, train_steps=300, n_train=256, n_test=256, das_steps=40,
                  das_batch=32, positions=("Z", "answer")),
    "full": dict(levels=100, d_model=64, n_layers=3, train_steps=600, n_train=2048, n_test=512, das_steps=150,
                 das_batch=32, positions=("Y", "Z", "answer")),
}
# --model: DAS pairs (train / held out), steps, batch; candidate prompts drawn per pair needed (layout filter)
MODEL_MODES = {
    "quick": dict(n_train=128, n_test=64, das_steps=20, das_batch=32, candidates_per_pair=4),
    "full": dict(n_train=1024, n_test=256, das_steps=150, das_batch=32, candidates_per_pair=4),
}
NEAR_CHANCE = 0.6  # task accuracy below this: the model does not do the task, alignments mean nothing


def train_model(cfg, levels: int, steps: int, workdir: Path, seed: int):
    """Train (or resume/reuse) the price-bracket decoder; returns (params, test accuracy)."""
    tc = TrainConfig(lr=3e-3, weight_decay=0.01, warmup_steps=min(100, steps // 5), schedule="cosine",
                     total_steps=steps, log_every=50, ckpt_every=max(steps // 3, 1), seed=seed)
    trainer = Trainer(cfg, tc, workdir, keep_checkpoints=1)
    trainer.train(lambda step: price.training_batch(np.random.default_rng([seed, step]), 256, levels), steps,
                  progress=False)
    test = price.training_batch(np.random.default_rng([seed, 10**6]), 4000, levels)
    logits = np.asarray(forward(cfg, trainer.params, test["tokens"][:, :-1]))[:, -1]
    pred = price.answer_tokens(levels)[logits[:, price.answer_tokens(levels)].argmax(-1)]
    top1 = logits.argmax(-1)
    loss, _ = lm_loss(cfg, trainer.params, jnp.asarray(test["tokens"]), jnp.asarray(test["loss_mask"]))
    return trainer.params, {"test_accuracy": float((pred == test["tokens"][:, -1]).mean()),
                            "test_top1_accuracy": float((top1 == test["tokens"][:, -1]).mean()),
                            "test_loss": float(loss)}


def interchange_tokens(cm, n, sample_fn, tokens_of, rng, with_baseline: bool = False):
    """(base prompts [N, T], source prompts [K, N, T], counterfactual labels [N]) drawn with
    ``sample_fn(rng, m) -> inputs`` and tokenized by ``tokens_of(inputs)``; and, if asked, the IIA of
    the "copy the source's answer" shortcut (best over sources), the reference to beat."""
    base, sources, labels = sample_interchange(cm, sample_fn, n, rng)
    out = (tokens_of(base), np.stack([tokens_of(s) for s in sources]), labels)
    if not with_baseline:
        return out
    copy = max(float(np.mean(price.label(s).astype(np.int32) == labels)) for s in sources)
    return out, copy


def das_search(cfg, params, sample_train, sample_test, tokens_of, label_tokens, layers, pos_names, positions, m,
               seed: int, eval_chunk: int = 256) -> dict:
    """Every causal model of ``price.CAUSAL_MODELS`` aligned at every (layer, position) of resid_post:
    IIA on held-out pairs (from ``sample_test``), training IIA, interval widths, the copy-source-answer
    reference, timings and the best cells. ``eval_chunk``: rows per IIA evaluation batch."""
    iia, train_iia, widths, times, copy_baseline = {}, {}, {}, {}, {}
    for ci, (name, cm) in enumerate(price.CAUSAL_MODELS.items()):
        rng = np.random.default_rng([seed, 1, ci])
        train = interchange_tokens(cm, m["n_train"], sample_train, tokens_of, rng)
        held, copy_baseline[name] = interchange_tokens(cm, m["n_test"], sample_test, tokens_of, rng,
                                                       with_baseline=True)
        t1 = time.time()
        grid = train_das_grid(Model(cfg, params), *train, label_tokens, site="resid_post", layers=layers, positions=positions,
                              steps=m["das_steps"], batch_size=m["das_batch"], lr=1e-2, temperature=(4.0, 0.1),
                              eval_data=held, seed=seed, eval_chunk=eval_chunk)
        times[name] = time.time() - t1
        iia[name], train_iia[name], widths[name] = grid.iia.tolist(), grid.train_iia.tolist(), grid.widths.tolist()
        print(f"{name}: best IIA {grid.iia.max():.3f}, copy-source-answer {copy_baseline[name]:.3f} ({times[name]:.0f} s)\n{np.round(grid.iia, 3)}", flush=True)

    best_per_layer = {str(l): max(iia, key=lambda n: max(iia[n][li])) for li, l in enumerate(layers)}
    best_cell = {n: {"iia": float(np.max(a)), "layer": layers[int(np.argmax(a)) // len(positions)],
                     "position": pos_names[int(np.argmax(a)) % len(positions)]} for n, a in iia.items()}
    return {"iia": iia, "train_iia": train_iia, "interval_widths": widths, "copy_source_answer_iia": copy_baseline,
            "no_op_iia": 0.5, "best_cell": best_cell, "best_model_per_layer": best_per_layer, "das_seconds": times}


def plot(iia: dict, layers, pos_names, path: Path, title: str = "Boundless DAS: IIA on held-out pairs (chance 0.5)"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(iia)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 0.6 * len(layers) + 1.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        a = np.asarray(iia[name])
        ax.imshow(a, vmin=0.5, vmax=1.0, cmap="viridis", origin="lower", aspect="auto")
        for (i, j), v in np.ndenumerate(a):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="w" if v < 0.8 else "k")
        ax.set_xticks(range(len(pos_names)), pos_names, rotation=45)
        ax.set_yticks(range(len(layers)), [str(l) for l in layers])
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.set_xlabel("position")
    axes[0][0].set_ylabel("layer (resid_post)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_results(out: Path, res: dict) -> None:
    """results.json, atomically."""
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, out / "results.json")


def parse_layers(text: str | None, n_layers: int) -> list:
    """--layers "0,2,4" (default: all) checked against the model's depth."""
    if text is None or text == "all":
        return list(range(n_layers))
    try:
        layers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--layers must be comma-separated integers or 'all', got {text!r}") from None
    bad = [l for l in layers if not 0 <= l < n_layers]
    if not layers or bad or len(set(layers)) != len(layers):
        raise ValueError(f"--layers {text!r}: give distinct layers in 0..{n_layers - 1}")
    return sorted(layers)


def task_accuracy(cfg, params, tokens_NT, labels_N, label_tokens, chunk: int = 32) -> dict:
    """The model's own answer (argmax over [No, Yes] at the last position) against the task's label."""
    n = len(labels_N)
    pred = []
    for i in range(0, n, chunk):  # fixed-size chunks (the last padded by repeating rows): one compile
        rows = np.arange(i, i + chunk) % n
        logits = np.asarray(forward(cfg, params, tokens_NT[rows]))[:, -1][:, label_tokens]
        pred.append(logits.argmax(-1)[: min(chunk, n - i)])
    pred = np.concatenate(pred)
    acc = float(np.mean(pred == labels_N))
    return {"accuracy": acc, "yes_rate": float(np.mean(pred == 1)), "yes_fraction": float(np.mean(labels_N)),
            "majority_rate": float(max(np.mean(labels_N), 1 - np.mean(labels_N))), "n": int(n),
            "near_chance": bool(acc < NEAR_CHANCE)}


def pretrained(args, mode: str):
    """The DAS search on a pretrained LM over the text prompts of ``price_text``."""
    import interpjax

    m = dict(MODEL_MODES[mode], positions=price_text.POSITION_NAMES)
    for key in ("n_train", "n_test", "das_steps"):
        if getattr(args, key) is not None:
            m[key] = getattr(args, key)
    label = model_label(args.model)
    t0 = time.time()
    model = interpjax.load(args.model)
    load_s = time.time() - t0
    layers = parse_layers(args.layers, model.cfg.n_layers)
    pool = price_text.build_prompts(model, np.random.default_rng([args.seed, 2]),
                                    m["candidates_per_pair"] * (m["n_train"] + m["n_test"]), m["n_train"] + m["n_test"])
    info = pool.summary()
    print(f"prompts: kept {pool.n_kept} of {pool.n_candidates} candidates with the most common token layout "
          f"{info['layout']}, dropped {pool.n_dropped} ({info['n_layouts']} layouts seen)", flush=True)
    if pool.tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"prompts of {pool.tokens.shape[1]} tokens exceed the model's n_ctx={model.cfg.n_ctx}")
    # disjoint prompt pools for training and held-out pairs, in proportion to the pair counts
    perm = np.random.default_rng([args.seed, 3]).permutation(pool.n_kept)
    n_test_pool = pool.n_kept * m["n_test"] // (m["n_train"] + m["n_test"])
    test_rows, train_rows = perm[:n_test_pool], perm[n_test_pool:]
    info.update(train_prompts=len(train_rows), test_prompts=len(test_rows))

    test_labels = price.label(take_rows(pool.inputs, test_rows)).astype(np.int32)
    task = task_accuracy(model.cfg, model.params, pool.tokens[test_rows], test_labels, pool.label_tokens)
    print(f"task accuracy on {task['n']} held-out prompts: {task['accuracy']:.3f} (says Yes {task['yes_rate']:.2f}, "
          f"majority class {task['majority_rate']:.2f})", flush=True)
    if task["near_chance"]:
        task["note"] = (f"accuracy {task['accuracy']:.3f} is near chance: the model does not do the task, so no "
                        "alignment below can be meaningful (the search runs to exercise the code path)")
        print("WARNING: " + task["note"], flush=True)

    draw = lambda rows: lambda r, k: take_rows(pool.inputs, r.choice(rows, k))  # noqa: E731
    positions = [pool.positions[p] for p in m["positions"]]
    found = das_search(model.cfg, model.params, draw(train_rows), draw(test_rows), lambda i: pool.tokens[i["row"]],
                       pool.label_tokens, layers, list(m["positions"]), positions, m, args.seed,
                       eval_chunk=min(256, m["n_train"], m["n_test"]))
    res = {"mode": mode, "model": label, "settings": m, "template": price_text.TEMPLATE,
           "answers": {"No": int(pool.label_tokens[0]), "Yes": int(pool.label_tokens[1]),
                       "strings": [model.to_string([i]) for i in pool.label_tokens],
                       "shared_prefix": [model.to_string([i]) for i in pool.shared_answer]},
           "prompts": info, "task": task, "layers": layers, "positions": list(m["positions"]),
           "position_index": {p: int(pool.positions[p]) for p in m["positions"]}, "site": "resid_post", **found,
           "load_seconds": load_s, "wall_seconds": time.time() - t0, "jax_backend": jax.default_backend()}
    title = f"Boundless DAS on {label}: IIA on held-out pairs (task accuracy {task['accuracy']:.2f})"
    return res, layers, title


def trained_here(args, mode: str):
    """The DAS search on the small decoder trained here on the token-level task."""
    m = dict(MODES[mode])
    for key in ("n_train", "n_test", "das_steps"):
        if getattr(args, key) is not None:
            m[key] = getattr(args, key)
    t0 = time.time()
    levels = m["levels"]
    cfg = price.model_config(levels, m["d_model"], m["n_layers"])
    params, acc = train_model(cfg, levels, m["train_steps"], args.workdir or REPO / "runs" / "das" / mode, args.seed)
    t_model = time.time() - t0
    print(f"model: {acc} ({t_model:.0f} s)", flush=True)

    layers = parse_layers(args.layers, cfg.n_layers)
    pos_names = list(m["positions"])
    positions = [price.POSITION_NAMES.index(p) for p in pos_names]
    sample = lambda r, k: price.sample_inputs(r, k, levels)  # noqa: E731
    found = das_search(cfg, params, sample, sample, lambda i: price.prompts(i, levels), price.answer_tokens(levels),
                       layers, pos_names, positions, m, args.seed)
    res = {"mode": mode, "settings": m, "model": {**acc, "config": cfg.to_dict(), "train_seconds": t_model},
           "layers": layers, "positions": pos_names, "site": "resid_post", **found,
           "wall_seconds": time.time() - t0, "jax_backend": jax.default_backend()}
    return res, layers, "Boundless DAS: IIA on held-out pairs (chance 0.5)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI smoke run (small model, few steps)")
    ap.add_argument("--model", default=None, help="a pretrained LM (local folder or hub id) run on the text prompts "
                    "instead of the model trained here")
    ap.add_argument("--layers", default=None, help="comma-separated layers to search (default: all)")
    ap.add_argument("--n-train", type=int, default=None, help="DAS training pairs per causal model")
    ap.add_argument("--n-test", type=int, default=None, help="held-out pairs per causal model (IIA)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--workdir", type=Path, default=None, help="model checkpoints (default: <repo>/runs/das/<mode>, git-ignored)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--das-steps", type=int, default=None)
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    if args.model is not None and args.workdir is not None:
        ap.error("--workdir applies to the model trained here, not to --model")
    for key in ("n_train", "n_test", "das_steps"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            ap.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.model is not None:
        out = args.out / f"model-{model_label(args.model)}"
        res, layers, title = pretrained(args, mode)
    else:
        out = args.out / mode
        res, layers, title = trained_here(args, mode)
    out.mkdir(parents=True, exist_ok=True)
    plot(res["iia"], layers, res["positions"], out / "iia.png", title)
    write_results(out, res)
    print(f"wrote {out}/results.json and iia.png in {res['wall_seconds']:.0f} s")
    return res


if __name__ == "__main__":
    main()
