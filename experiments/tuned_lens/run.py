"""Tuned lens (Belrose et al. 2023, M19) on a real LM over held-out real text, with prediction depth
and causal basis extraction.

Text: the Python reference manual's topic pages (``pydoc_data.topics``, standard library, PSF
License), split by topic with a fixed seed (``../logit_lens/pydoc_text.py``): the translators are
trained on blocks of the training topics, every number is measured on blocks of the held-out topics.

- ``TunedLensTrainer`` trains all translators at once (model frozen) for each seed (the seed sets
  the order of the training blocks; translators start at the identity, as in the paper);
- per lens row on held-out blocks: perplexity of the actual next token and KL(output || lens) of the
  tuned lens, of its control the logit lens (= the untrained tuned lens, exactly) and of the tuned
  lens with every layer's translator moved to its neighbour (``shifted_lens``); paired bootstrap
  intervals over blocks, seed-to-seed spread;
- prediction depth under both lenses;
- causal basis extraction (``causal_basis``) at one middle layer: k orthonormal directions whose
  mean-ablation most changes the tuned lens, fitted on training blocks; on held-out blocks their
  influence on the lens against their effect on the model's output when the same direction is
  mean-ablated in the model (``model_ablation_effect``), with k random unit directions as the control.

    python experiments/tuned_lens/run.py                 # full mode (README numbers)
    python experiments/tuned_lens/run.py --quick         # CI-sized run, results/quick/
    python experiments/tuned_lens/run.py --model gemma-3-270m

Checkpoints go to ``--workdir`` (default ``runs/tuned_lens/<mode>/seed<s>`` at the repository
root, git-ignored); rerunning resumes from the last one and continues exactly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "logit_lens"))

from interpjax.evidence import (Record, bootstrap_ci, fmt_ci, markdown_table, paired_bootstrap_diff,  # noqa: E402
                                seed_summary, sync_readme)
from interpjax.io.artifacts import atomic_write_text  # noqa: E402
from interpjax.methods import lens as LZ  # noqa: E402
from interpjax.train import TrainConfig  # noqa: E402
from pydoc_text import fmt_ppl as _ppl, pick, row_name, split_words, token_blocks, topic_split  # noqa: E402

MODEL = "smollm2-135m-instruct"
SIZES = {
    "full": dict(T_train=64, batch=1, steps=60, lr=1e-3, seeds=(0, 1, 2), T=128, n_eval=8, n_boot=2000,
                 k=8, n_random=16, cbe_steps=20, cbe_lr=0.05, n_fit=2, n_cbe_eval=4),
    # a smaller full run, for when the shared CPU leaves too little time (the README says when it was used)
    "reduced": dict(T_train=64, batch=1, steps=30, lr=1e-3, seeds=(0, 1, 2), T=128, n_eval=6, n_boot=2000,
                    k=8, n_random=16, cbe_steps=12, cbe_lr=0.05, n_fit=2, n_cbe_eval=3),
    "quick": dict(T_train=32, batch=1, steps=5, lr=1e-3, seeds=(0,), T=32, n_eval=3, n_boot=200,
                  k=2, n_random=16, cbe_steps=4, cbe_lr=0.05, n_fit=2, n_cbe_eval=3),
}


# ---------------------------------------------------------------------------------------------
# training


def train_config(size: dict, seed: int) -> TrainConfig:
    return TrainConfig(lr=size["lr"], weight_decay=0.0, b1=0.9, b2=0.999, warmup_steps=max(size["steps"] // 12, 1),
                       schedule="cosine", total_steps=size["steps"], clip_norm=1.0, log_every=1,
                       ckpt_every=max(size["steps"] // 3, 1), seed=seed)


def batch_fn(blocks: np.ndarray, batch: int, seed: int):
    """step -> [batch, T] training blocks in a seeded order (cycling through the training split)."""
    order = np.random.default_rng(seed).permutation(len(blocks))

    def get(step: int) -> np.ndarray:
        return blocks[order[(step * batch + np.arange(batch)) % len(blocks)]]

    return get


def train_lenses(model, train_blocks: np.ndarray, size: dict, workdir: Path, progress: bool = False) -> tuple[dict, dict]:
    """One trained tuned lens per seed, and each seed's training log (KL per step)."""
    lenses, logs = {}, {}
    for s in size["seeds"]:
        trainer = LZ.TunedLensTrainer(model, train_config(size, s), workdir / f"seed{s}", name=model.name)
        trainer.train(batch_fn(train_blocks, size["batch"], s), size["steps"], progress=progress)
        lenses[s] = trainer.lens
        logs[s] = [json.loads(x)["kl"] for x in trainer.log_path.read_text().splitlines() if x]
    return lenses, logs


# ---------------------------------------------------------------------------------------------
# tuned vs logit lens


def eval_lenses(model, blocks: np.ndarray, lenses: dict) -> dict:
    """name -> per-block nll [L+1, n], KL [L+1, n] and depth [n, T] of each lens on ``blocks``."""
    out = {}
    for name, lens in lenses.items():
        parts = [LZ.evaluate_lens_per_sequence(model.cfg, model.params, blocks[i:i + 1], lens) for i in range(len(blocks))]
        out[name] = {"nll": np.concatenate([p["nll_LB"] for p in parts], 1),
                     "kl": np.concatenate([p["kl_LB"] for p in parts], 1),
                     "depth": np.concatenate([p["depth_BT"] for p in parts], 0)}
    return out


def _exp_ci(s: dict) -> dict:
    return {**s, "value": float(np.exp(s["value"])), "lo": float(np.exp(s["lo"])), "hi": float(np.exp(s["hi"]))}


def compare(metrics: dict, seeds, n_boot: int) -> dict:
    """Per lens row: logit, tuned (averaged over seeds per block) and shifted perplexity / KL with
    bootstrap intervals over blocks, the paired differences tuned - logit, and the seed spread."""
    tuned = {k: np.mean([metrics[f"tuned/{s}"][k] for s in seeds], axis=0) for k in ("nll", "kl")}
    L1 = tuned["nll"].shape[0]
    rows = []
    for l in range(L1):
        r = {}
        for name, m in (("logit", metrics["logit"]), ("tuned", tuned), ("shifted", metrics.get("shifted"))):
            if m is None:
                continue
            r[f"ppl_{name}"] = _exp_ci(bootstrap_ci(m["nll"][l], n_boot=n_boot))
            r[f"kl_{name}"] = bootstrap_ci(m["kl"][l], n_boot=n_boot)
        r["nll_tuned_minus_logit"] = paired_bootstrap_diff(tuned["nll"][l], metrics["logit"]["nll"][l], n_boot=n_boot)
        r["kl_tuned_minus_logit"] = paired_bootstrap_diff(tuned["kl"][l], metrics["logit"]["kl"][l], n_boot=n_boot)
        if "shifted" in metrics:
            r["kl_tuned_minus_shifted"] = paired_bootstrap_diff(tuned["kl"][l], metrics["shifted"]["kl"][l], n_boot=n_boot)
        if len(seeds) > 1:
            r["ppl_tuned_seeds"] = _exp_ci(seed_summary([metrics[f"tuned/{s}"]["nll"][l].mean() for s in seeds]))
            r["kl_tuned_seeds"] = seed_summary([metrics[f"tuned/{s}"]["kl"][l].mean() for s in seeds])
        rows.append(r)
    L = L1 - 1
    beats = {k: int(sum(rows[l][f"{k}_tuned_minus_logit"]["hi"] < 0 for l in range(L))) for k in ("nll", "kl")}
    return {"per_layer": rows, "layers_tuned_beats_logit": beats, "n_translated": L}


def depth_stats(metrics: dict, names, n_boot: int) -> dict:
    """Prediction-depth histogram and mean depth (bootstrap over blocks) of each named lens."""
    out = {}
    for name in names:
        d = metrics[name]["depth"]
        L1 = metrics[name]["nll"].shape[0]
        out[name] = {"hist": (np.bincount(d.ravel(), minlength=L1) / d.size).tolist(),
                     "mean": bootstrap_ci(d.mean(1).astype(np.float64), n_boot=n_boot)}
    return out


def tuned_effect_holds(result: dict) -> bool:
    """At the middle lens row the tuned lens is closer to the model's output than the logit lens on
    held-out blocks: paired 95% interval of KL(tuned) - KL(logit) below zero."""
    mid = result["n_translated"] // 2
    return result["per_layer"][mid]["kl_tuned_minus_logit"]["hi"] < 0.0


# ---------------------------------------------------------------------------------------------
# causal basis extraction


def resid_at(model, blocks: np.ndarray, layer: int) -> np.ndarray:
    """Residual vectors [n, T-1, D] entering ``layer`` at positions 1.. (position 0 is the start token)."""
    out = []
    for i in range(len(blocks)):
        _, resid = LZ.residual_stack(model.cfg, model.params, blocks[i:i + 1])
        out.append(np.asarray(resid[layer, 0, 1:], np.float32))
    return np.stack(out)


def extract_basis(lens, model, layer: int, fit_resid_ND: np.ndarray, size: dict, seed: int) -> LZ.CausalBasis:
    """The causal basis of the tuned lens at ``layer`` (the method's core; the test swaps it for random directions)."""
    return LZ.causal_basis(lens, model.cfg, model.params, layer, fit_resid_ND, size["k"], steps=size["cbe_steps"],
                           lr=size["cbe_lr"], seed=seed)


def random_directions(k: int, D: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(k, D))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def cbe_analysis(model, lens, fit_blocks: np.ndarray, eval_blocks: np.ndarray, layer: int, size: dict,
                 seed: int = 0) -> dict:
    """CBE directions (fitted on ``fit_blocks``) vs random directions on ``eval_blocks``: influence on
    the lens and effect on the model per direction and block, their rank correlation, and the
    paired difference of the mean model effect (CBE - random)."""
    n_boot = size["n_boot"]
    fit = resid_at(model, fit_blocks, layer).reshape(-1, model.cfg.d_model)
    basis = extract_basis(lens, model, layer, fit, size, seed)
    rand = random_directions(size["n_random"], model.cfg.d_model, seed + 1000)
    held = resid_at(model, eval_blocks, layer)  # [n, T-1, D]
    T = eval_blocks.shape[1]
    per = {}
    for name, dirs in (("cbe", basis.directions_KD), ("random", rand)):
        lens_nk = np.stack([LZ.lens_influence(lens, model.cfg, model.params, layer, h, dirs, basis.mean_D).mean(1)
                            for h in held])
        model_kn = LZ.model_ablation_effect(model, eval_blocks, layer, dirs, basis.mean_D, positions=np.arange(1, T))
        per[name] = {"lens": lens_nk, "model": model_kn.T}  # both [n, K]
    n = len(eval_blocks)

    def rho(name):
        return lambda idx: LZ.spearman(per[name]["lens"][idx.astype(int)].mean(0), per[name]["model"][idx.astype(int)].mean(0))

    both = {k: np.concatenate([per["cbe"][k], per["random"][k]], 1) for k in ("lens", "model")}
    rho_all = lambda idx: LZ.spearman(both["lens"][idx.astype(int)].mean(0), both["model"][idx.astype(int)].mean(0))  # noqa: E731
    idx = np.arange(n, dtype=np.float64)
    out = {"layer": int(layer), "k": int(size["k"]), "n_fit_vectors": int(fit.shape[0]), "n_eval_blocks": int(n),
           "influence_at_fit": basis.influence_K.tolist(),
           "orthonormality_error": float(np.abs(basis.directions_KD @ basis.directions_KD.T - np.eye(size["k"])).max())}
    for name in ("cbe", "random"):
        K = per[name]["lens"].shape[1]
        out[name] = {"lens": [bootstrap_ci(per[name]["lens"][:, j], n_boot=n_boot) for j in range(K)],
                     "model": [bootstrap_ci(per[name]["model"][:, j], n_boot=n_boot) for j in range(K)],
                     "model_mean": bootstrap_ci(per[name]["model"].mean(1), n_boot=n_boot),
                     "lens_mean": bootstrap_ci(per[name]["lens"].mean(1), n_boot=n_boot)}
    if size["k"] >= 2:
        out["spearman_cbe"] = bootstrap_ci(idx, stat=rho("cbe"), n_boot=n_boot)
        out["spearman_random"] = bootstrap_ci(idx, stat=rho("random"), n_boot=n_boot)
    out["spearman_all"] = bootstrap_ci(idx, stat=rho_all, n_boot=n_boot)
    out["model_cbe_minus_random"] = paired_bootstrap_diff(per["cbe"]["model"].mean(1), per["random"]["model"].mean(1),
                                                          n_boot=n_boot)
    out["model_ratio"] = float(per["cbe"]["model"].mean() / max(per["random"]["model"].mean(), 1e-12))
    out["max_cbe_over_max_random"] = float(per["cbe"]["model"].mean(0).max() / max(per["random"]["model"].mean(0).max(), 1e-12))
    return out


def cbe_effect_holds(cbe: dict) -> bool:
    """Mean-ablating the CBE directions in the model moves its output more than mean-ablating random
    unit directions (a larger pool): paired 95% interval of the mean difference above zero, ten times
    the mean effect, and the strongest CBE direction above the strongest random one."""
    return (cbe["model_cbe_minus_random"]["lo"] > 0.0 and cbe["model_ratio"] > 10.0
            and cbe["max_cbe_over_max_random"] > 1.0)


# ---------------------------------------------------------------------------------------------
# reporting


def tables(result: dict) -> dict[str, str]:
    cmp_, L = result["compare"], result["compare"]["n_translated"]
    rows = cmp_["per_layer"]
    per = markdown_table(["lens row", "ppl logit", "ppl **tuned**", "ppl shifted (control)", "KL logit", "KL **tuned**",
                          "KL shifted (control)"],
                         [[row_name(l, L), _ppl(r["ppl_logit"]), _ppl(r["ppl_tuned"]), _ppl(r["ppl_shifted"]),
                           fmt_ci(r["kl_logit"]), fmt_ci(r["kl_tuned"]), fmt_ci(r["kl_shifted"])]
                          for l, r in enumerate(rows)])
    mid = L // 2
    m = rows[mid]
    seeds = result["seeds"]
    summ = [["held-out blocks × tokens", f"{result['data']['n_eval']} × {result['data']['T']}"],
            ["seeds (training-block order)", ", ".join(map(str, seeds))],
            ["training per seed", f"{result['size']['steps']} steps × {result['size']['batch']} × {result['size']['T_train']} tokens"],
            ["translated rows where tuned ppl < logit ppl (paired 95% CI)", f"{cmp_['layers_tuned_beats_logit']['nll']} of {L}"],
            ["translated rows where tuned KL < logit KL (paired 95% CI)", f"{cmp_['layers_tuned_beats_logit']['kl']} of {L}"],
            ["translated rows where tuned KL < shifted KL (paired 95% CI)",
             f"{sum(rows[l]['kl_tuned_minus_shifted']['hi'] < 0 for l in range(L))} of {L}"],
            [f"row {mid}: KL tuned − logit, nats", fmt_ci(m["kl_tuned_minus_logit"])],
            [f"row {mid}: KL tuned − shifted, nats", fmt_ci(m["kl_tuned_minus_shifted"])]]
    if "kl_tuned_seeds" in m:
        summ.append([f"row {mid}: KL tuned, mean over seeds (t-interval, n = {len(seeds)})", fmt_ci(m["kl_tuned_seeds"])])
        summ.append([f"row {mid}: ppl tuned, mean over seeds", _ppl(m["ppl_tuned_seeds"])])
    d = result["depth"]
    summ += [["mean prediction depth, logit lens", fmt_ci(d["logit"]["mean"])],
             ["mean prediction depth, tuned lens (seed 0)", fmt_ci(d["tuned/0"]["mean"])]]
    summary = markdown_table(["tuned vs logit lens", "value"], summ)
    train = markdown_table(["seed", "training KL, first step", "training KL, last step"],
                           [[str(s), f"{log[0]:.2f}", f"{log[-1]:.2f}"] for s, log in result["train_log"].items()])
    c = result["cbe"]
    cbe_rows = [[f"CBE {j}", f"{c['influence_at_fit'][j]:.3f}", fmt_ci(c["cbe"]["lens"][j], 3), fmt_ci(c["cbe"]["model"][j], 4)]
                for j in range(c["k"])]
    cbe_rows += [[f"random {j}", "—", fmt_ci(c["random"]["lens"][j], 3), fmt_ci(c["random"]["model"][j], 4)]
                 for j in range(len(c["random"]["model"]))]
    cbe = markdown_table(["direction (layer %d)" % c["layer"], "lens influence on fit blocks", "lens influence, held-out",
                          "model effect, held-out"], cbe_rows)
    cs = [["directions", f"{c['k']} CBE + {len(c['random']['model'])} random, fitted on {c['n_fit_vectors']} training vectors, "
                         f"measured on {c['n_eval_blocks']} held-out blocks"],
          ["mean model effect, CBE directions (KL, nats)", fmt_ci(c["cbe"]["model_mean"], 4)],
          ["mean model effect, random directions (control)", fmt_ci(c["random"]["model_mean"], 4)],
          ["CBE − random (paired over blocks)", fmt_ci(c["model_cbe_minus_random"], 4)],
          ["Spearman ρ(lens influence, model effect), CBE directions", fmt_ci(c["spearman_cbe"]) if "spearman_cbe" in c else "—"],
          ["Spearman ρ, random directions", fmt_ci(c["spearman_random"]) if "spearman_random" in c else "—"],
          ["Spearman ρ, all directions (CBE and random)", fmt_ci(c["spearman_all"])],
          ["strongest CBE / strongest random direction, model effect", f"{c['max_cbe_over_max_random']:.1f}×"],
          ["mean CBE / mean random, model effect", f"{c['model_ratio']:.1f}×"],
          ["basis orthonormality error (max |VVᵀ − I|)", f"{c['orthonormality_error']:.1e}"]]
    cbe_summary = markdown_table(["causal basis extraction", "value (95% CI over held-out blocks)"], cs)
    return {"per_layer.md": per, "summary.md": summary, "training.md": train, "cbe.md": cbe, "cbe_summary.md": cbe_summary}


def figures(result: dict, model_name: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, L = result["compare"]["per_layer"], result["compare"]["n_translated"]
    x = np.arange(L + 1)
    fig, axes = plt.subplots(1, 4, figsize=(22, 4.2))
    # perplexity as log10 on a linear axis: Gemma's embedding row reaches 1e270, past what a log axis can pad
    for ax, key, lab in ((axes[0], "ppl", "log10 perplexity of the actual next token"), (axes[1], "kl", "KL(output ‖ lens) [nats]")):
        f = np.log10 if key == "ppl" else np.asarray
        for name, style in (("logit", "--"), ("tuned", "-"), ("shifted", ":")):
            v = f(np.array([r[f"{key}_{name}"]["value"] for r in rows]))
            lo, hi = (f(np.array([r[f"{key}_{name}"][e] for r in rows])) for e in ("lo", "hi"))
            ax.plot(x, v, ls=style, marker="o", ms=3, label=f"{name} lens")
            ax.fill_between(x, lo, hi, alpha=0.2)
        if key == "kl":
            ax.set_yscale("log")
        ax.set(xlabel="lens row (input of layer; last = output)", ylabel=lab)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    d = result["depth"]
    w = 0.4
    for k, (name, lab) in enumerate((("logit", "logit lens"), ("tuned/0", "tuned lens (seed 0)"))):
        axes[2].bar(x + (k - 0.5) * w, d[name]["hist"], w, label=lab)
    axes[2].set(xlabel="prediction depth (lens row)", ylabel="fraction of held-out positions")
    axes[2].legend(fontsize=8)
    c = result["cbe"]
    for name, mk in (("cbe", "o"), ("random", "x")):
        axes[3].scatter([s["value"] for s in c[name]["lens"]], [s["value"] for s in c[name]["model"]], marker=mk,
                        label=f"{name} directions")
    axes[3].set(xscale="symlog", yscale="symlog", xlabel=f"influence on the tuned lens at layer {c['layer']} [KL]",
                ylabel="effect on the model's output [KL]")
    axes[3].legend(fontsize=8)
    fig.suptitle(f"tuned vs logit lens on {model_name}, held-out pydoc topics (95% bootstrap CI over blocks)")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------


def analyze(model, size: dict, workdir: Path, progress: bool = False) -> dict:
    """Every number of the experiment: train per seed, evaluate the lenses, extract the causal basis."""
    sp = topic_split()
    train_blocks = token_blocks(model, sp["train"], size["T_train"])
    held_all = token_blocks(model, sp["heldout"], size["T"])
    held = pick(held_all, size["n_eval"], 0)
    t0 = time.perf_counter()
    lenses, logs = train_lenses(model, train_blocks, size, workdir, progress)
    print(f"{model.name}: trained {len(lenses)} lenses in {time.perf_counter() - t0:.0f} s", flush=True)
    s0 = size["seeds"][0]
    todo = {"logit": LZ.init_tuned_lens(model.cfg, model.params, model.name), "shifted": LZ.shifted_lens(lenses[s0]),
            **{f"tuned/{s}": lenses[s] for s in size["seeds"]}}
    metrics = eval_lenses(model, held, todo)
    print(f"{model.name}: evaluated {len(todo)} lenses at {time.perf_counter() - t0:.0f} s", flush=True)
    L = model.cfg.n_layers
    fit_blocks = pick(token_blocks(model, sp["train"], size["T"]), size["n_fit"], 1)
    cbe_eval = pick(held_all, size["n_cbe_eval"], 2)
    return {"n_layers": L, "layers": LZ.lens_names(model.cfg), "seeds": list(size["seeds"]), "size": dict(size),
            "data": {"T": size["T"], "n_eval": size["n_eval"], "words": split_words(),
                     "n_topics": {k: len(v) for k, v in sp.items()}, "n_train_blocks": int(len(train_blocks))},
            "train_log": {str(s): v for s, v in logs.items()},
            "compare": compare(metrics, size["seeds"], size["n_boot"]),
            "depth": depth_stats(metrics, ["logit", f"tuned/{s0}"], size["n_boot"]),
            "cbe": cbe_analysis(model, lenses[s0], fit_blocks, cbe_eval, L // 2, size)}, lenses


def models_table(by_model: dict) -> str:
    """The models side by side: tuned vs logit vs shifted lens at the middle row, rows won, CBE."""
    rows = []
    for name, r in by_model.items():
        cmp_, c = r["compare"], r["cbe"]
        L = cmp_["n_translated"]
        m = cmp_["per_layer"][L // 2]
        rows.append([name, str(L), f"{r['vocab']:,}", f"{cmp_['layers_tuned_beats_logit']['kl']} of {L}",
                     fmt_ci(m["kl_logit"]), fmt_ci(m["kl_tuned"]), fmt_ci(m["kl_tuned_minus_shifted"]),
                     f"{c['model_ratio']:.1f}×", fmt_ci(c["spearman_cbe"]) if "spearman_cbe" in c else "—",
                     f"{r['wall_s']:.0f}"])
    return markdown_table(["model", "translated rows", "vocabulary", "rows where tuned KL < logit KL",
                           "middle row: KL logit", "KL tuned", "KL tuned − shifted", "CBE / random model effect",
                           "Spearman ρ, CBE directions", "wall s"], rows)


def analyze_cached(model, size: dict, workdir: Path, progress: bool = False, cache: bool = False):
    """``analyze`` with its wall time; with ``cache`` a finished model's numbers are kept in
    ``workdir/analysis.json`` (atomically) and reused by a rerun with the same sizes, so a run over
    two models that stops in the second does not redo the first. Returns (result, lenses or None)."""
    path = workdir / "analysis.json"
    if cache and path.is_file():
        kept = json.loads(path.read_text())
        if kept.get("size") == json.loads(json.dumps(dict(size))):
            print(f"{model.name}: reusing {path.name} of a finished run", flush=True)
            return kept, None
    t0 = time.perf_counter()
    result, lenses = analyze(model, size, workdir, progress)
    result = {**result, "vocab": int(model.cfg.vocab_size), "wall_s": round(time.perf_counter() - t0, 1)}
    text = json.dumps(result, allow_nan=False)
    if cache:
        atomic_write_text(path, text + "\n")
    return json.loads(text), lenses  # the same objects a rerun reads back (tuples as lists)


def presentation(main_name: str, result: dict, others: dict) -> tuple[dict, dict]:
    """Every table ({file: markdown}) and figure ({file: figure}) of a run: the main model's, each
    other model's under its name as prefix, and the side-by-side table when there are others."""
    md, figs = {}, {}
    for prefix, r, name in [("", result, main_name)] + [(f"{k}_", v, k) for k, v in others.items()]:
        md.update({f"{prefix}{table}": text for table, text in tables(r).items()})
        figs[f"{prefix}tuned_lens.png"] = figures(r, name)
    if others:
        md["models.md"] = models_table({main_name: result, **others})
    return md, figs


def retable(folder: Path, sync: bool = True) -> dict:
    """Re-derive every table and figure of a finished full run from its ``results.json`` (the numbers
    are not recomputed, only presented again), then sync the README blocks."""
    from interpjax.io.plots import save_figure

    res = json.loads((folder / "results.json").read_text())
    md, figs = presentation(res["meta"]["model"].split(", ")[0], res, res.get("others", {}))
    for name, text in md.items():
        atomic_write_text(folder / name, text)
    for name, fig in figs.items():
        save_figure(fig, folder / name)
    if sync:
        sync_readme(HERE / "README.md", folder)
    print(f"re-derived the tables and figures in {folder}")
    return res


def main(argv=None, model=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, a few steps, short blocks; writes results/quick/")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--compare", default=None,
                    help="comma-separated second models run the same way, their files prefixed by the name "
                         "(full default: gemma-3-270m; quick default: none)")
    ap.add_argument("--out", default=None, help="folder holding quick/ and full/ (default: results/ here)")
    ap.add_argument("--workdir", default=None, help="training checkpoints (default runs/tuned_lens/<mode>)")
    ap.add_argument("--reduced", action="store_true", help="a smaller full run (fewer steps and blocks)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--retable", action="store_true", help="rebuild the tables, figures and README blocks of the "
                    "finished full run from results/full/results.json (or --out/full); no compute")
    args = ap.parse_args(argv)
    if args.retable:
        return retable((Path(args.out) if args.out else HERE / "results") / "full", sync=args.out is None)
    mode = "quick" if args.quick else "full"
    if args.reduced and not args.quick:
        mode = "reduced"
    size = SIZES[mode]
    names = ("" if args.quick else "gemma-3-270m") if args.compare is None else args.compare
    names = [n for n in names.split(",") if n and n != args.model]
    rec = Record(HERE, quick=args.quick, model=", ".join([args.model] + names), seeds=list(size["seeds"]), argv=argv,
                 out=Path(args.out) if args.out else None)
    import interpjax

    if model is None:
        model = interpjax.load(args.model)
    root = Path(args.workdir) if args.workdir else HERE.parents[1] / "runs" / "tuned_lens" / mode
    result, lenses = analyze_cached(model, size, root / model.name, args.progress, cache=not args.quick)
    for k, v in result.items():
        rec[k] = v
    if args.quick:  # the test reuses it; a full run's lens (40 MB) is not committed
        LZ.save_tuned_lens(lenses[size["seeds"][0]], rec.out / "lens_seed0.safetensors")
    others = {}
    for name in names:
        other = interpjax.load(name)
        others[name], _ = analyze_cached(other, size, root / other.name, args.progress, cache=not args.quick)
        del other
    if others:
        rec["others"] = others
    md, figs = presentation(model.name, result, others)
    for name, text in md.items():
        rec.table(name, text)
    for name, fig in figs.items():
        rec.figure(name, fig)
    rec.save()
    if not args.quick and args.out is None:
        sync_readme(HERE / "README.md", rec.out)
    for name in ("summary.md", "per_layer.md", "cbe_summary.md", "cbe.md", "training.md"):
        print(rec.tables[name])
    if others:
        print(rec.tables["models.md"])
    for name, r in {args.model: result, **others}.items():
        print(f"{name}: tuned effect holds: {tuned_effect_holds(r['compare'])}; CBE effect holds: "
              f"{cbe_effect_holds(r['cbe'])}")
    print(f"wrote {rec.out} in {rec.meta['wall_s']} s")
    return result


if __name__ == "__main__":
    main()
