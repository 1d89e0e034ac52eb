"""Logit lens (nostalgebraist 2020; the baseline of Belrose et al. 2023, M8 / M19) on a real LM over
held-out real text: decode every layer's residual stream with the model's own final norm and
unembedding.

Text: the Python reference manual's topic pages (``pydoc_data.topics``, standard library, PSF
License), split by topic with a fixed seed (``pydoc_text.py``); every number is measured on blocks
of the held-out topics only.

- per lens row: perplexity of the actual next token and KL(model output || lens), 95% bootstrap
  intervals over blocks; the control is the same lens scored against the next tokens of another
  held-out block (what a lens that reads nothing of this text would get);
- prediction depth (the first row from which the top-1 prediction stays the output's) histogram;
- prediction trajectories (layers x positions) of three prompts, and the rank across layers of the
  model's own next token at each prompt's last position.

    python experiments/logit_lens/run.py                 # full mode (README numbers)
    python experiments/logit_lens/run.py --quick         # CI-sized run, results/quick/
    python experiments/logit_lens/run.py --model gemma-3-270m
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from interpjax.evidence import Record, bootstrap_ci, fmt_ci, markdown_table, paired_bootstrap_diff, sync_readme  # noqa: E402
from interpjax.methods import lens as LZ  # noqa: E402
from pydoc_text import fmt_ppl as _ppl, pick, row_name, split_words, token_blocks, topic_split  # noqa: E402

MODEL = "smollm2-135m-instruct"
SIZES = {
    "full": dict(T=128, n_eval=16, n_boot=2000, prompts=3),
    "reduced": dict(T=128, n_eval=10, n_boot=2000, prompts=3),
    "quick": dict(T=32, n_eval=3, n_boot=200, prompts=1),
}
PROMPTS = [
    "The capital of France is Paris. The capital of Germany is",
    "In Python, the keyword used to define a function is",
    "Once upon a time, there was a little girl who",
]
SHOW_ROWS = (0, 5, 10, 15, 20, 25)


# ---------------------------------------------------------------------------------------------
# data and measurement


def heldout_blocks(model, T: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` held-out blocks [n, T] (seeded draw from the held-out topics' blocks)."""
    return pick(token_blocks(model, topic_split()["heldout"], T), n, seed)


def control_targets(blocks: np.ndarray) -> np.ndarray:
    """Each block's control targets: the next tokens of the following block (cyclically)."""
    return np.roll(blocks[:, 1:], 1, axis=0)


def measure(model, blocks: np.ndarray, lens=None) -> dict:
    """Per-block arrays: nll [L+1, n], nll against control targets [L+1, n], KL [L+1, n], depth [n, T]."""
    ctrl = control_targets(blocks)
    parts = [LZ.evaluate_lens_per_sequence(model.cfg, model.params, blocks[i:i + 1], lens, control_targets=ctrl[i:i + 1])
             for i in range(len(blocks))]
    return {"nll": np.concatenate([p["nll_LB"] for p in parts], 1),
            "nll_control": np.concatenate([p["nll_control_LB"] for p in parts], 1),
            "kl": np.concatenate([p["kl_LB"] for p in parts], 1),
            "depth": np.concatenate([p["depth_BT"] for p in parts], 0)}


def _exp_ci(s: dict) -> dict:
    return {"value": float(np.exp(s["value"])), "lo": float(np.exp(s["lo"])), "hi": float(np.exp(s["hi"])), "n": s["n"]}


def per_layer(m: dict, n_boot: int) -> list[dict]:
    """Per lens row: perplexity (exp of the bootstrapped mean NLL), control perplexity, KL, and the
    paired NLL difference actual - control (negative: the lens reads this text)."""
    rows = []
    for l in range(m["nll"].shape[0]):
        rows.append({"ppl": _exp_ci(bootstrap_ci(m["nll"][l], n_boot=n_boot)),
                     "ppl_control": _exp_ci(bootstrap_ci(m["nll_control"][l], n_boot=n_boot)),
                     "kl": bootstrap_ci(m["kl"][l], n_boot=n_boot),
                     "nll_minus_control": paired_bootstrap_diff(m["nll"][l], m["nll_control"][l], n_boot=n_boot)})
    return rows


def depth_summary(depth_nT: np.ndarray, n_rows: int, n_boot: int) -> dict:
    """Prediction-depth histogram (fractions of positions) and the mean depth (bootstrap over blocks)."""
    hist = np.bincount(depth_nT.ravel(), minlength=n_rows) / depth_nT.size
    return {"hist": hist.tolist(), "mean": bootstrap_ci(depth_nT.mean(1).astype(np.float64), n_boot=n_boot)}


def token_label(tok, i: int) -> str:
    return tok.convert_ids_to_tokens(int(i)).replace("Ġ", "_").replace("▁", "_").replace("Ċ", "\\n")


def trajectory(model, prompt: str, out_png: Path | None, title: str) -> dict:
    """Logit-lens trajectory of one prompt: the heatmap, the top-1 at the last position per row, and
    the rank per row of the model's own next token there."""
    cfg, params, tok = model.cfg, model.params, model.tokenizer
    tokens, _ = model.to_tokens([prompt])
    lg = LZ.logit_lens(cfg, params, tokens)[:, 0]  # [L+1, T, V]
    labels = [token_label(tok, i) for i in np.asarray(tokens[0])]
    if out_png is not None:
        rows = [str(l) for l in range(cfg.n_layers)] + ["out"]
        LZ.plot_trajectory(lg, out_png, labels, lambda i: token_label(tok, i), row_labels=rows, title=title)
    top1 = np.asarray(np.argmax(lg[:, -1], -1))
    final = int(top1[-1])
    rank, prob = LZ.token_rank_prob(lg[:, None], final)
    return {"prompt": prompt, "next_token": token_label(tok, final),
            "top1_by_row": [token_label(tok, i) for i in top1],
            "rank_by_row": np.asarray(rank[:, 0, -1]).tolist(), "prob_out": float(prob[-1, 0, -1]),
            "depth": int(LZ.prediction_depth(top1[:, None])[0])}


def effect_holds(result: dict) -> bool:
    """At the last translated row the lens predicts the held-out text's actual next tokens better than
    another block's (paired 95% interval of NLL actual - control below zero), and its KL to the output
    is below the middle row's."""
    L = result["n_layers"]
    rows = result["per_layer"]
    return rows[L - 1]["nll_minus_control"]["hi"] < 0.0 and rows[L - 1]["kl"]["value"] < rows[L // 2]["kl"]["value"]


# ---------------------------------------------------------------------------------------------
# reporting


def tables(result: dict) -> dict[str, str]:
    L = result["n_layers"]
    rows = result["per_layer"]
    per = markdown_table(["lens row (input of layer)", "perplexity (95% CI)", "KL(output ‖ lens), nats",
                          "control: perplexity of another block's next tokens"],
                         [[row_name(l, L), _ppl(r["ppl"]), fmt_ci(r["kl"]), _ppl(r["ppl_control"])]
                          for l, r in enumerate(rows)])
    d = result["depth"]
    depth = markdown_table(["prediction depth", "fraction of held-out positions"],
                           [[row_name(l, L), f"{f:.3f}"] for l, f in enumerate(d["hist"])] +
                           [["mean depth (95% CI over blocks)", fmt_ci(d["mean"])]])
    shown = [l for l in SHOW_ROWS if l < L] + [L - 1, L]
    traj = markdown_table(["prompt (end)", "model's next token", "prediction depth"] +
                          [f"rank at {row_name(l, L)}" for l in shown],
                          [["…" + t["prompt"][-32:], f"`{t['next_token']}`", str(t["depth"])] +
                           [str(t["rank_by_row"][l]) for l in shown] for t in result["trajectories"]])
    data = markdown_table(["split", "topics", "words", "blocks used"],
                          [["held-out", str(result["data"]["n_topics"]["heldout"]), str(result["data"]["words"]["heldout"]),
                            f"{result['data']['n_eval']} × {result['data']['T']} tokens"],
                           ["training (unused by the logit lens)", str(result["data"]["n_topics"]["train"]),
                            str(result["data"]["words"]["train"]), "—"]])
    return {"per_layer.md": per, "depth.md": depth, "trajectories.md": traj, "data.md": data}


def figures(result: dict, model_name: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = result["n_layers"]
    x = np.arange(L + 1)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for key, ax, lab in (("ppl", axes[0], "perplexity of the actual next token"), ("kl", axes[1], "KL(output ‖ lens) [nats]")):
        v = np.array([r[key]["value"] for r in result["per_layer"]])
        lo, hi = (np.array([r[key][e] for r in result["per_layer"]]) for e in ("lo", "hi"))
        ax.plot(x, v, marker="o", ms=3, label="logit lens")
        ax.fill_between(x, lo, hi, alpha=0.25)
        if key == "ppl":
            c = np.array([r["ppl_control"]["value"] for r in result["per_layer"]])
            ax.plot(x, c, ls="--", color="grey", label="control: another block's next tokens")
            ax.legend(fontsize=8)
        ax.set_yscale("log")
        ax.set(xlabel="lens row (input of layer; last = output)", ylabel=lab)
        ax.grid(alpha=0.3)
    axes[2].bar(x, result["depth"]["hist"])
    axes[2].set(xlabel="prediction depth (lens row)", ylabel="fraction of held-out positions")
    fig.suptitle(f"logit lens on {model_name}, held-out pydoc topics (95% bootstrap CI over blocks)")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------


def analyze(model, size: dict, seed: int = 0, out: Path | None = None, tag: str = "") -> dict:
    """Every number of the experiment for one model (figures of trajectories go to ``out``, their
    names prefixed by ``tag``)."""
    sp = topic_split()
    blocks = heldout_blocks(model, size["T"], size["n_eval"], seed)
    m = measure(model, blocks)
    L = model.cfg.n_layers
    trajs = [trajectory(model, p, (out / f"{tag}trajectory_{i}.png") if out is not None else None,
                        f"logit lens on {model.name}: prompt {i} (colour: top-token probability)")
             for i, p in enumerate(PROMPTS[: size["prompts"]])]
    return {"n_layers": L, "layers": LZ.lens_names(model.cfg),
            "data": {"T": size["T"], "n_eval": size["n_eval"], "words": split_words(),
                     "n_topics": {k: len(v) for k, v in sp.items()}, "heldout_topics": sp["heldout"]},
            "per_layer": per_layer(m, size["n_boot"]),
            "depth": depth_summary(m["depth"], L + 1, size["n_boot"]),
            "trajectories": trajs, "vocab": int(model.cfg.vocab_size)}


def models_table(by_model: dict) -> str:
    """The models side by side: how far the logit lens is from the output at the same relative depth,
    how many rows predict worse than a uniform guess over the vocabulary, and the prediction depth."""
    rows = []
    for name, r in by_model.items():
        L, per = r["n_layers"], r["per_layer"]
        worse = sum(row["ppl"]["value"] > r["vocab"] for row in per[:L])
        rows.append([name, str(L), f"{r['vocab']:,}", fmt_ci(per[L // 2]["kl"]), fmt_ci(per[L - 1]["kl"]),
                     f"{worse} of {L}", f"{r['depth']['mean']['value'] / L:.2f}"])
    return markdown_table(["model", "layers", "vocabulary", "KL at the middle row, nats", "KL at the last translated row",
                           "rows worse than uniform", "mean prediction depth / layers"], rows)


def main(argv=None, model=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 short held-out blocks, one prompt; writes results/quick/")
    ap.add_argument("--reduced", action="store_true", help="a smaller full run (fewer held-out blocks)")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--out", default=None, help="folder holding quick/ and full/ (default: results/ here)")
    ap.add_argument("--compare", default=None,
                    help="comma-separated second models measured the same way (full default: gemma-3-270m)")
    args = ap.parse_args(argv)
    size = SIZES["quick" if args.quick else ("reduced" if args.reduced else "full")]
    rec = Record(HERE, quick=args.quick, model=args.model, seeds=[0], argv=argv,
                 out=Path(args.out) if args.out else None)
    import interpjax

    if model is None:
        model = interpjax.load(args.model)
    result = analyze(model, size, out=rec.out)
    for k, v in result.items():
        rec[k] = v
    for name, md in tables(result).items():
        rec.table(name, md)
    rec.figure("logit_lens.png", figures(result, model.name))
    names = ("" if args.quick else "gemma-3-270m") if args.compare is None else args.compare
    compare = {}
    for name in [n for n in names.split(",") if n and n != args.model]:
        other = interpjax.load(name)
        compare[name] = analyze(other, size, out=rec.out, tag=f"{name}_")
        for table, md in tables(compare[name]).items():
            rec.table(f"{name}_{table}", md)
        rec.figure(f"{name}_logit_lens.png", figures(compare[name], other.name))
        print(f"{name}: effect holds {effect_holds(compare[name])}", flush=True)
    if compare:
        rec["compare"] = compare
        rec.table("models.md", models_table({args.model: result, **compare}))
    rec.save()
    if not args.quick and args.out is None:
        sync_readme(HERE / "README.md", rec.out)
    print(rec.tables["per_layer.md"])
    print(rec.tables["depth.md"])
    print(rec.tables["trajectories.md"])
    print(f"effect holds: {effect_holds(result)}; wrote {rec.out} in {rec.meta['wall_s']} s")
    return result


if __name__ == "__main__":
    main()
