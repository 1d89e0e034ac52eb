"""Boundless DAS on the price-bracket task (Wu et al. 2023, "Interpretability at Scale"): train a small
decoder from scratch to answer "Yes iff X <= Z <= Y", then align four competing causal models
(left boundary, left-and-right boundary, mid-point distance, bracket identity) with Boundless DAS at
every layer x position of the residual stream and report interchange intervention accuracy (IIA).

    python experiments/das/run.py --quick     # CI smoke run
    python experiments/das/run.py             # full mode (see README for time)

Writes results.json and iia.png (atomically) to ``--out``/{quick,full}; the trained model's
checkpoints go to ``--workdir`` (default runs/das/<mode>; a rerun with the same settings reuses them).
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

from interpjax import forward  # noqa: E402
from interpjax.das import sample_interchange, train_das_grid  # noqa: E402
from interpjax.train import TrainConfig, Trainer, lm_loss  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODES = {
    # amount levels, model width/depth and training steps; DAS pairs (train / held out), steps, batch, positions
    "quick": dict(levels=100, d_model=64, n_layers=2, train_steps=300, n_train=256, n_test=256, das_steps=40,
                  das_batch=32, positions=("Z", "answer")),
    "full": dict(levels=100, d_model=64, n_layers=3, train_steps=600, n_train=2048, n_test=512, das_steps=150,
                 das_batch=32, positions=("Y", "Z", "answer")),
}


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


def interchange_tokens(cm, n, levels, rng, with_baseline: bool = False):
    """(base prompts [N, T], source prompts [K, N, T], counterfactual labels [N]) and, if asked, the
    IIA of the "copy the source's answer" shortcut (best over sources), the reference to beat."""
    base, sources, labels = sample_interchange(cm, lambda r, m: price.sample_inputs(r, m, levels), n, rng)
    out = (price.prompts(base, levels), np.stack([price.prompts(s, levels) for s in sources]), labels)
    if not with_baseline:
        return out
    copy = max(float(np.mean(price.label(s).astype(np.int32) == labels)) for s in sources)
    return out, copy


def plot(iia: dict, layers, pos_names, path: Path):
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
    fig.suptitle("Boundless DAS: IIA on held-out pairs (chance 0.5)", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI smoke run (small model, few steps)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--workdir", type=Path, default=None, help="model checkpoints (default: <repo>/runs/das/<mode>, git-ignored)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--das-steps", type=int, default=None)
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    m = dict(MODES[mode])
    if args.das_steps is not None:
        m["das_steps"] = args.das_steps
    out = args.out / mode
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    levels = m["levels"]
    cfg = price.model_config(levels, m["d_model"], m["n_layers"])
    params, acc = train_model(cfg, levels, m["train_steps"], args.workdir or REPO / "runs" / "das" / mode, args.seed)
    t_model = time.time() - t0
    print(f"model: {acc} ({t_model:.0f} s)", flush=True)

    layers = list(range(cfg.n_layers))
    pos_names = list(m["positions"])
    positions = [price.POSITION_NAMES.index(p) for p in pos_names]
    labels = price.answer_tokens(levels)
    iia, train_iia, widths, times, copy_baseline = {}, {}, {}, {}, {}
    for ci, (name, cm) in enumerate(price.CAUSAL_MODELS.items()):
        rng = np.random.default_rng([args.seed, 1, ci])
        train = interchange_tokens(cm, m["n_train"], levels, rng)
        held, copy_baseline[name] = interchange_tokens(cm, m["n_test"], levels, rng, with_baseline=True)
        t1 = time.time()
        grid = train_das_grid(cfg, params, *train, labels, site="resid_post", layers=layers, positions=positions,
                              steps=m["das_steps"], batch_size=m["das_batch"], lr=1e-2, temperature=(4.0, 0.1),
                              eval_data=held, seed=args.seed)
        times[name] = time.time() - t1
        iia[name], train_iia[name], widths[name] = grid.iia.tolist(), grid.train_iia.tolist(), grid.widths.tolist()
        print(f"{name}: best IIA {grid.iia.max():.3f}, copy-source-answer {copy_baseline[name]:.3f} ({times[name]:.0f} s)\n{np.round(grid.iia, 3)}", flush=True)

    best_per_layer = {str(l): max(iia, key=lambda n: max(iia[n][li])) for li, l in enumerate(layers)}
    best_cell = {n: {"iia": float(np.max(a)), "layer": layers[int(np.argmax(a)) // len(positions)],
                     "position": pos_names[int(np.argmax(a)) % len(positions)]} for n, a in iia.items()}
    res = {"mode": mode, "settings": m, "model": {**acc, "config": cfg.to_dict(), "train_seconds": t_model},
           "layers": layers, "positions": pos_names, "site": "resid_post", "iia": iia, "train_iia": train_iia,
           "interval_widths": widths,
           "copy_source_answer_iia": copy_baseline, "no_op_iia": 0.5, "best_cell": best_cell, "best_model_per_layer": best_per_layer,
           "das_seconds": times, "wall_seconds": time.time() - t0, "jax_backend": jax.default_backend()}
    plot(iia, layers, pos_names, out / "iia.png")
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, out / "results.json")
    print(f"wrote {out}/results.json and iia.png in {res['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
