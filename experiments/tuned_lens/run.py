"""Tuned lens on the real llama2c-stories260k checkpoint (Belrose et al. 2023, "Eliciting Latent
Predictions from Transformers with the Tuned Lens"): train one affine translator per layer (all
layers at once, model frozen) to minimise KL(final || lens) on a stream of TinyStories-like text,
then compare tuned vs logit lens on held-out text: per-layer perplexity of the actual next token,
KL to the model's output, and the prediction-depth histogram.

    python experiments/tuned_lens/run.py --quick       # CI smoke run
    python experiments/tuned_lens/run.py               # full mode (numbers in README.md)

Training checkpoints go to ``--workdir`` (default runs/tuned_lens/<mode>, git-ignored); running the
same command again resumes from the last checkpoint (and skips training when it is complete).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "logit_lens"))  # the shared story generator and corpus

import interpjax  # noqa: E402
from interpjax.methods import lens as LZ
from interpjax.io.plots import labelled_heatmap
from interpjax.train import TrainConfig
from stories import corpus_stories, story_stream  # noqa: E402

MODELS = Path(os.environ.get("INTERPJAX_MODELS", HERE.parents[2] / "shared" / "models"))
DEFAULT_MODEL = MODELS / "llama2c-stories260k"
PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play with her red ball. One day, she"

QUICK = dict(steps=40, batch=8, seq=128, lr=1e-2, eval_blocks=1)
FULL = dict(steps=300, batch=16, seq=128, lr=3e-3, eval_blocks=8)


def write_json(path: Path, obj):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def token_label(tokenizer, i: int) -> str:
    return tokenizer.convert_ids_to_tokens(int(i)).replace("▁", "_")


def plot_layers(metrics: dict, path: Path, key: str, ylabel: str, log: bool):
    """Per-layer curve of ``key`` for each lens and evaluation set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from interpjax.io.plots import save_figure

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for (lens_name, set_name), m in metrics.items():
        x = np.arange(len(m[key]))
        ax.plot(x, m[key], marker="o", ls="-" if lens_name == "tuned" else "--",
                label=f"{lens_name} lens, {set_name}")
    ax.set_xticks(x, [str(i) for i in range(len(x) - 1)] + ["out"])
    ax.set_xlabel("layer (residual stream entering it; out = model output)")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)
    plt.close(fig)


def plot_depth(hists: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from interpjax.io.plots import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    n = len(next(iter(hists.values())))
    width = 0.8 / len(hists)
    for k, (name, h) in enumerate(hists.items()):
        h = np.asarray(h, float)
        ax.bar(np.arange(n) + (k - (len(hists) - 1) / 2) * width, h / h.sum(), width, label=name)
    ax.set_xticks(range(n), [str(i) for i in range(n - 1)] + ["out"])
    ax.set_xlabel("prediction depth (first layer from which top-1 = final top-1)")
    ax.set_ylabel("fraction of tokens")
    ax.legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--workdir", default=None, help="training checkpoints (default runs/tuned_lens/<mode>)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.time()
    mode = "quick" if args.quick else "full"
    hp = dict(QUICK if args.quick else FULL)
    if args.steps is not None:
        hp["steps"] = args.steps
    out = Path(args.out) / mode
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir) if args.workdir else HERE.parents[1] / "runs" / "tuned_lens" / mode
    model = interpjax.load(args.model)
    cfg, params, tok = model.cfg, model.params, model.tokenizer

    # training: an endless template-story stream (seed 1), packed into [batch, seq] blocks
    train_stream = LZ.TokenStream(lambda: story_stream(1), tok, hp["batch"], hp["seq"])
    tc = TrainConfig(lr=hp["lr"], weight_decay=0.0, b1=0.9, b2=0.999, warmup_steps=max(hp["steps"] // 20, 1),
                     schedule="cosine", total_steps=hp["steps"], clip_norm=1.0, log_every=10,
                     ckpt_every=max(hp["steps"] // 4, 1), seed=0)
    trainer = LZ.TunedLensTrainer(model, tc, workdir, name=args.model)
    resumed_from = trainer.step
    t_train = time.time()
    trainer.train(train_stream, hp["steps"], progress=not args.no_progress)
    train_s = time.time() - t_train
    LZ.save_tuned_lens(trainer.lens, out / "lens.safetensors")
    lens = LZ.load_tuned_lens(out / "lens.safetensors", cfg, params)  # what we evaluate is what was saved

    # held-out evaluation: the handwritten corpus, and template stories from an unseen seed
    n = hp["eval_blocks"]
    sets = {"corpus": (corpus_stories, 4, 128), "templates": (lambda: story_stream(1000), 4, 128)}
    metrics = {}
    for set_name, (fn, b, s) in sets.items():
        stream = LZ.TokenStream(fn, tok, b, s)
        batches = [stream(i) for i in range(n)]
        metrics[("logit", set_name)] = LZ.evaluate_lens(cfg, params, batches)
        metrics[("tuned", set_name)] = LZ.evaluate_lens(cfg, params, batches, lens)

    L = cfg.n_layers
    beats = {s: {"ppl": all(metrics[("tuned", s)]["ppl"][l] < metrics[("logit", s)]["ppl"][l] for l in range(L)),
                 "kl": all(metrics[("tuned", s)]["kl"][l] < metrics[("logit", s)]["kl"][l] for l in range(L))}
             for s in sets}
    plot_layers(metrics, out / "perplexity.png", "ppl", "perplexity of the next token", log=True)
    plot_layers(metrics, out / "kl.png", "kl", "KL(model output || lens) [nats]", log=True)
    plot_depth({f"{k[0]} lens": metrics[k]["depth_hist"] for k in [("logit", "corpus"), ("tuned", "corpus")]},
               out / "prediction_depth.png")
    tokens, _ = model.to_tokens([PROMPT])
    labels = [token_label(tok, i) for i in tokens[0]]
    rows = [str(l) for l in range(L)] + ["out"]
    tuned_lg = LZ.tuned_lens(lens, cfg, params, tokens)[:, 0]
    LZ.plot_trajectory(tuned_lg, out / "trajectory_tuned.png", labels, lambda i: token_label(tok, i),
                       row_labels=rows, title="tuned lens (colour: top-token probability)")
    depth_per_token = {}
    if not args.quick:
        logit_lg = LZ.logit_lens(cfg, params, tokens)[:, 0]
        LZ.plot_trajectory(logit_lg, out / "trajectory_logit.png", labels, lambda i: token_label(tok, i),
                           row_labels=rows, title="logit lens (colour: top-token probability)")
        # per-token prediction depth of the prompt under both lenses, annotated with the model's next-token guess
        depth = np.stack([np.asarray(LZ.prediction_depth(np.argmax(x, -1))) for x in (logit_lg, tuned_lg)])
        guess = [token_label(tok, i) for i in np.argmax(np.asarray(tuned_lg[-1]), -1)]
        labelled_heatmap(depth, out / "depth_per_token.png", ["logit lens", "tuned lens"], labels, [guess, guess],
                title="prediction depth per token (text: the model's top-1 next token)", cmap="viridis",
                cbar_label="prediction depth (layer; 5 = output)", vmin=0, vmax=L,
                xlabel="input token")
        depth_per_token = {"tokens": labels, "logit": depth[0].tolist(), "tuned": depth[1].tolist()}

    log = [json.loads(x) for x in trainer.log_path.read_text().splitlines() if x]
    res = {"model": Path(args.model).name, "mode": mode, "hyper": hp, "train_tokens": hp["steps"] * hp["batch"] * hp["seq"],
           "resumed_from_step": resumed_from, "prompt_depth_per_token": depth_per_token, "train_s": round(train_s, 1), "train_log": log,
           "layers": LZ.lens_names(cfg),
           "eval": {f"{k[0]}/{k[1]}": v for k, v in metrics.items()},
           "tuned_beats_logit_every_intermediate_layer": beats, "wall_s": round(time.time() - t0, 1)}
    write_json(out / "results.json", res)
    for s in sets:
        lg, tu = metrics[("logit", s)], metrics[("tuned", s)]
        print(f"{s} ({lg['tokens']} held-out tokens)   ppl logit / tuned     KL logit / tuned")
        for i, name in enumerate(lg["layers"]):
            print(f"  {name:13s} {lg['ppl'][i]:14.2f} / {tu['ppl'][i]:8.2f}   {lg['kl'][i]:7.3f} / {tu['kl'][i]:6.3f}")
        print("  prediction depth histogram logit:", lg["depth_hist"], " tuned:", tu["depth_hist"])
    print("tuned beats logit at every intermediate layer:", beats)
    print(f"trained {hp['steps']} steps ({res['train_tokens']} tokens) in {train_s:.1f} s; wrote {out} in {res['wall_s']} s")
    return res


if __name__ == "__main__":
    main()
