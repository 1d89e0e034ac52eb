"""Boundless DAS (M23; Wu et al. 2023, "Interpretability at Scale") on the price-bracket task, judged
cell by cell against swapping the whole residual state.

A small decoder is trained from scratch to answer "Yes iff X <= Z <= Y" (``price.py``); four
competing causal models (left boundary, left-and-right boundary, mid-point distance, bracket
identity) are aligned with Boundless DAS at every layer x position of ``resid_post``
(``interpjax.methods.das.train_das_grid``). Every cell's interchange intervention accuracy (IIA)
on held-out pairs is set beside three references measured on the same pairs:

* the **whole-state swap**: the base's entire residual vector at that cell replaced by the
  source's (no rotation, no interval); DAS shows an aligned *subspace* only where it beats this;
* a **random rotation** with DAS's learned intervals (same number of swapped coordinates, not
  learned): DAS's learned rotation matters only where it beats this;
* **copy the source's answer** (the label of the source prompt itself) and doing nothing (0.5).

Each seed trains its own model and its own DAS (model seed = DAS seed = pair-sampling seed).
Before the search the full run measures whether SmolLM2-135M-Instruct solves the text version of
the task (``price_text.py``); DAS on a pretrained LM is ``--model`` (run it only where the task
accuracy is above chance).

    python experiments/das/run.py --quick                  # smoke run: results/quick/ (or --out)
    python experiments/das/run.py                          # full run: results/full/ + README blocks
    python experiments/das/run.py --model smollm2-135m-instruct --layers 0,10,20,29   # DAS on an LM
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import price  # noqa: E402
import price_text  # noqa: E402

from interpjax import Model, forward, run_with_cache  # noqa: E402
from interpjax.evidence import (Record, bootstrap_ci, fmt_ci, markdown_table, paired_bootstrap_diff,  # noqa: E402
                                seed_summary, sync_readme)
from interpjax.io.loading import model_label  # noqa: E402
from interpjax.methods.das import hard_masks, interchange_intervention, rotation, sample_interchange, take_rows, train_das_grid  # noqa: E402
from interpjax.train import TrainConfig, Trainer, lm_loss  # noqa: E402

SITE = "resid_post"
SEEDS = (0, 1, 2)
DEFAULT_LM = "smollm2-135m-instruct"
MODES = {
    # the trained decoder: amount levels, width/depth, training steps; DAS pairs (train / held out),
    # steps, batch, positions searched
    "quick": dict(levels=100, d_model=64, n_layers=2, train_steps=200, n_train=128, n_test=256, das_steps=30,
                  das_batch=32, positions=("Z", "answer"), lm_prompts=0),
    "full": dict(levels=100, d_model=64, n_layers=3, train_steps=600, n_train=2048, n_test=512, das_steps=150,
                 das_batch=32, positions=("Y", "Z", "answer"), lm_prompts=256),
}
# --model: DAS pairs (train / held out), steps, batch; candidate prompts drawn per pair needed (layout filter)
MODEL_MODES = {
    "quick": dict(n_train=128, n_test=64, das_steps=20, das_batch=32, candidates_per_pair=4),
    "full": dict(n_train=1024, n_test=256, das_steps=150, das_batch=32, candidates_per_pair=4),
}
CONDITIONS = ("das", "whole", "random")  # learned alignment, whole-state swap, random rotation + DAS's intervals
# the quick test's cell: the answer position of the last layer, where every causal model's variables can exist
QUICK_CELL = ("left_boundary", -1, "answer")


# ---------------------------------------------------------------------------------------------
# the trained decoder


def train_model(cfg, levels: int, steps: int, workdir: Path | None, seed: int):
    """Train (or resume / reuse from ``workdir``; None: in memory) the price-bracket decoder; returns
    (params, test metrics on 4000 fresh prompts)."""
    tc = TrainConfig(lr=3e-3, weight_decay=0.01, warmup_steps=min(100, steps // 5), schedule="cosine",
                     total_steps=steps, log_every=50, ckpt_every=max(steps // 3, 1), seed=seed)
    trainer = Trainer(cfg, tc, workdir, keep_checkpoints=1 if workdir is not None else None)
    trainer.train(lambda step: price.training_batch(np.random.default_rng([seed, step]), 256, levels), steps,
                  progress=False)
    test = price.training_batch(np.random.default_rng([seed, 10**6]), 4000, levels)
    logits = np.asarray(forward(cfg, trainer.params, test["tokens"][:, :-1]))[:, -1]
    answers = price.answer_tokens(levels)
    pred = answers[logits[:, answers].argmax(-1)]
    loss, _ = lm_loss(cfg, trainer.params, jnp.asarray(test["tokens"]), jnp.asarray(test["loss_mask"]))
    return trainer.params, {"test_accuracy": float((pred == test["tokens"][:, -1]).mean()),
                            "test_top1_accuracy": float((logits.argmax(-1) == test["tokens"][:, -1]).mean()),
                            "test_loss": float(loss), "n_test": 4000}


# ---------------------------------------------------------------------------------------------
# interchange data and per-pair evaluation


def interchange_tokens(cm, n, sample_fn, tokens_of, rng):
    """(base prompts [N, T], source prompts [K, N, T], counterfactual labels [N]) drawn with
    ``sample_fn(rng, m) -> inputs`` and tokenized by ``tokens_of(inputs)``, and the IIA of the "copy
    the source's answer" shortcut (best over the K sources), a reference every alignment must beat."""
    base, sources, labels = sample_interchange(cm, sample_fn, n, rng)
    copy = max(float(np.mean(price.label(s).astype(np.int32) == labels)) for s in sources)
    return (tokens_of(base), np.stack([tokens_of(s) for s in sources]), labels), copy


def site_acts(cfg, params, tokens_NT, layers, positions, chunk: int = 512) -> np.ndarray:
    """``resid_post`` of ``tokens_NT`` at every (layer, position): [L, P, N, D] float32 (fixed-size
    chunks, the last padded, so one compile)."""
    n = len(tokens_NT)
    chunk = min(chunk, n)
    out = []
    for i in range(0, n, chunk):
        rows = np.arange(i, i + chunk) % n
        _, cache = run_with_cache(cfg, params, tokens_NT[rows], sites=[SITE], layers=list(layers))
        out.append(np.asarray(cache[SITE], np.float32)[:, : min(chunk, n - i)][:, :, list(positions)])  # [L, b, P, D]
    return np.transpose(np.concatenate(out, 1), (0, 2, 1, 3))


def cell_correct(cfg, params, layer: int, position: int, base_NT, src_KND, labels_N, class_tokens, rot_DD, mask_KD,
                 chunk: int = 512) -> np.ndarray:
    """bool [N]: with the masked rotated coordinates of the base's ``resid_post`` at (layer, position)
    replaced by each source's, does the model's answer (argmax over ``class_tokens`` at the last
    position) equal the counterfactual label? ``rot_DD`` = identity and a full mask is the
    whole-state swap."""
    n = len(labels_N)
    chunk = min(chunk, n)
    rot, mask, cls = jnp.asarray(rot_DD, jnp.float32), jnp.asarray(mask_KD, jnp.float32), np.asarray(class_tokens)
    out = np.zeros(n, bool)
    for i in range(0, n, chunk):
        rows = np.arange(i, i + chunk) % n
        iv = interchange_intervention(SITE, layer, position, rot, mask, jnp.asarray(src_KND[:, rows]))
        logits = np.asarray(forward(cfg, params, base_NT[rows], interventions=iv)[:, -1])[:, cls]
        keep = min(chunk, n - i)
        out[i:i + keep] = (logits.argmax(-1) == labels_N[rows])[:keep]
    return out


def haar_rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    """A uniformly random orthogonal [d, d] matrix (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def evaluate_grid(cfg, params, grid, held, class_tokens, layers, positions, seed: int, chunk: int = 512) -> dict:
    """Per-pair correctness [L, P, N] on the held-out pairs of the learned alignment (``das``), the
    whole-state swap (``whole``: the better of the K sources, chosen on these same pairs, which can
    only favour the baseline) and a random rotation with DAS's learned intervals (``random``)."""
    base, src_tok, labels = held
    k = src_tok.shape[0]
    acts = np.stack([site_acts(cfg, params, src_tok[j], layers, positions, chunk) for j in range(k)])  # [K, L, P, N, D]
    d = acts.shape[-1]
    rng = np.random.default_rng([seed, 7])
    shape = (len(layers), len(positions), len(labels))
    got = {c: np.zeros(shape, bool) for c in CONDITIONS}
    whole_k = np.zeros((k,) + shape, bool)
    eye, full = np.eye(d, dtype=np.float32), np.ones((1, d), np.float32)
    for li, layer in enumerate(layers):
        for pi, pos in enumerate(positions):
            src = acts[:, li, pi]  # [K, N, D]
            cell = grid.cell(li, pi)
            masks = hard_masks(cell, d)
            args = (cfg, params, layer, pos, base, src)
            got["das"][li, pi] = cell_correct(*args, labels, class_tokens, rotation(cell), masks, chunk)
            got["random"][li, pi] = cell_correct(*args, labels, class_tokens, haar_rotation(rng, d), masks, chunk)
            for j in range(k):
                whole_k[j, li, pi] = cell_correct(cfg, params, layer, pos, base, src[j:j + 1], labels, class_tokens,
                                                  eye, full, chunk)
    best = whole_k.mean(-1).argmax(0)  # [L, P]
    got["whole"] = np.take_along_axis(whole_k, best[None, :, :, None], 0)[0]
    got["whole_source"] = best
    # the model's own answer on each source against the counterfactual label [K, N]: what the whole
    # swap at the last layer's last position must reproduce exactly (a check of the swap itself)
    got["source_answer"] = np.stack([cell_correct(cfg, params, layers[-1], base.shape[1] - 1, src_tok[j],
                                                  np.zeros((1,) + acts.shape[-2:], np.float32), labels, class_tokens,
                                                  eye, np.zeros((1, d), np.float32), chunk) for j in range(k)])
    return got


def das_search(cfg, params, sample_train, sample_test, tokens_of, class_tokens, layers, pos_names, positions, m,
               seed: int, chunk: int = 512, causal_models=None) -> dict:
    """Every causal model (``price.CAUSAL_MODELS``, or the names in ``causal_models``) aligned at every
    (layer, position): the per-pair correctness of DAS and its controls on held-out pairs (from
    ``sample_test``), training IIA, interval widths, the copy-source-answer reference and timings."""
    out = {}
    for ci, name in enumerate(price.CAUSAL_MODELS):
        if causal_models is not None and name not in causal_models:
            continue
        cm = price.CAUSAL_MODELS[name]
        rng = np.random.default_rng([seed, 1, ci])
        train, _ = interchange_tokens(cm, m["n_train"], sample_train, tokens_of, rng)
        held, copy = interchange_tokens(cm, m["n_test"], sample_test, tokens_of, rng)
        t1 = time.time()
        grid = train_das_grid(Model(cfg, params), *train, class_tokens, site=SITE, layers=layers, positions=positions,
                              steps=m["das_steps"], batch_size=m["das_batch"], lr=1e-2, temperature=(4.0, 0.1),
                              eval_data=held, seed=seed, eval_chunk=min(256, m["n_train"], m["n_test"]))
        t_das = time.time() - t1
        got = evaluate_grid(cfg, params, grid, held, class_tokens, layers, positions, seed, chunk)
        out[name] = {**got, "library_iia": np.asarray(grid.iia), "train_iia": np.asarray(grid.train_iia),
                     "widths": np.asarray(grid.widths), "copy_source_answer": copy, "das_s": t_das,
                     "eval_s": time.time() - t1 - t_das}
        iia = {c: got[c].mean(-1) for c in CONDITIONS}
        print(f"seed {seed} {name}: DAS {np.round(iia['das'], 3).tolist()} whole swap "
              f"{np.round(iia['whole'], 3).tolist()} random rotation {np.round(iia['random'], 3).tolist()} "
              f"copy {copy:.3f} (DAS {t_das:.0f} s)", flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# statistics over seeds and pairs


def claim_holds(st: dict, n_seeds: int) -> bool:
    """The claim criterion of a cell, from its stored statistics: DAS beats the whole-state swap
    (paired 95% interval above 0) in the pooled pairs and in every seed, and DAS itself is above
    doing nothing (its interval above 0.5; a DAS that learns to swap nothing "beats" a whole swap
    that hurts, at chance)."""
    return bool(st["das_minus_whole"]["lo"] > 0 and st["seeds_das_above_whole"] == n_seeds and st["das"]["lo"] > 0.5)


def cell_stats(per_seed: list, name: str, li: int, pi: int) -> dict:
    """One cell of one causal model over the seeds: IIA of each condition (bootstrap over the pooled
    held-out pairs), DAS - whole swap and DAS - random rotation (paired bootstrap), per-seed IIAs and
    whether the claim criterion (``claim_holds``) holds."""
    pooled = {c: np.concatenate([s[name][c][li, pi] for s in per_seed]).astype(np.float64) for c in CONDITIONS}
    per = {c: [float(s[name][c][li, pi].mean()) for s in per_seed] for c in CONDITIONS}
    st = {**{c: bootstrap_ci(pooled[c]) for c in CONDITIONS},
          "das_minus_whole": paired_bootstrap_diff(pooled["das"], pooled["whole"]),
          "das_minus_random": paired_bootstrap_diff(pooled["das"], pooled["random"]), "per_seed": per,
          "das_seeds": seed_summary(per["das"]), "whole_seeds": seed_summary(per["whole"]),
          "seeds_das_above_whole": int(sum(a > b for a, b in zip(per["das"], per["whole"])))}
    st["claim"] = claim_holds(st, len(per_seed))
    return st


def beats(das_N, control_N) -> bool:
    """The tests' predicate: DAS's per-pair correctness beats the control's, the paired bootstrap
    95% interval of the difference lying above 0."""
    return paired_bootstrap_diff(np.asarray(das_N, np.float64), np.asarray(control_N, np.float64))["lo"] > 0


def summarise(per_seed: list, layers, pos_names) -> dict:
    """{causal model: {"L{layer}/{position}": cell_stats}}."""
    return {name: {f"L{layer}/{pos}": cell_stats(per_seed, name, li, pi) for li, layer in enumerate(layers)
                   for pi, pos in enumerate(pos_names)} for name in per_seed[0]}


def cell_rows(summary: dict, copy: dict, n_seeds: int) -> list:
    """The rows of the per-cell table, from the stored statistics."""
    rows = []
    for name, cells in summary.items():
        for key, st in cells.items():
            layer, pos = key[1:].split("/")
            rows.append([name.replace("_", " "), layer, pos, fmt_ci(st["das"]), fmt_ci(st["whole"]),
                         fmt_ci(st["das_minus_whole"], 3), f"{st['seeds_das_above_whole']}/{n_seeds}",
                         fmt_ci(st["random"]), fmt_ci(copy[name]), "**yes**" if st["claim"] else "no"])
    return rows


def best_cells(train_iia: dict, summary: dict, layers, pos_names) -> tuple[dict, list]:
    """Per causal model, the cell with the highest *training* IIA (``train_iia[name]`` [L, P], the mean
    over seeds), reported on the held-out pairs: selection and report on different pairs."""
    out, rows = {}, []
    for name in summary:
        train = np.asarray(train_iia[name])
        li, pi = np.unravel_index(int(np.argmax(train)), train.shape)
        key = f"L{layers[li]}/{pos_names[pi]}"
        st = summary[name][key]
        out[name] = {"cell": key, "train_iia": float(train[li, pi]), "das": st["das"], "whole": st["whole"],
                     "das_minus_whole": st["das_minus_whole"], "das_minus_random": st["das_minus_random"],
                     "claim": st["claim"]}
        rows.append([name.replace("_", " "), key, f"{train[li, pi]:.3f}", fmt_ci(st["das"]), fmt_ci(st["whole"]),
                     fmt_ci(st["das_minus_whole"], 3), fmt_ci(st["random"]), fmt_ci(st["das_minus_random"], 3)])
    return out, rows


CELL_HEADER = ["causal model", "layer", "position", "DAS IIA", "whole-state swap", "DAS − whole (95% CI)",
               "seeds DAS > whole", "random rotation", "copy source answer", "claim"]
BEST_HEADER = ["causal model", "cell (by train IIA)", "train IIA", "DAS IIA (held out)", "whole-state swap",
               "DAS − whole", "random rotation", "DAS − random"]


def write_search_tables(write_table, numbers: dict, n_seeds: int) -> dict:
    """iia.md and best.md (through ``write_table(name, markdown)``) and the derived numbers (claims,
    best cells), all from the stored ``summary``, ``copy_source_answer`` and ``per_seed`` train IIAs."""
    summary, layers, pos_names = numbers["summary"], numbers["layers"], numbers["positions"]
    train = {name: np.mean([np.asarray(s[name]["train_iia"]) for s in numbers["per_seed"]], 0) for name in summary}
    best, best_rows = best_cells(train, summary, layers, pos_names)
    write_table("iia.md", markdown_table(CELL_HEADER, cell_rows(summary, numbers["copy_source_answer"], n_seeds)))
    write_table("best.md", markdown_table(BEST_HEADER, best_rows))
    return {"claims": [f"{name}@{cell}" for name in summary for cell, st in summary[name].items() if st["claim"]],
            "best_cell_by_train_iia": best}


def plot(summary: dict, layers, pos_names, title: str):
    """Heatmaps per causal model: DAS IIA (top) and DAS - whole-state swap (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 2 * (0.6 * len(layers) + 1.4)), squeeze=False)
    for j, name in enumerate(names):
        for row, (key, vmin, vmax, cmap) in enumerate((("das", 0.5, 1.0, "viridis"),
                                                       ("das_minus_whole", -0.3, 0.3, "RdBu_r"))):
            a = np.array([[summary[name][f"L{l}/{p}"][key]["value"] for p in pos_names] for l in layers])
            ax = axes[row][j]
            ax.imshow(a, vmin=vmin, vmax=vmax, cmap=cmap, origin="lower", aspect="auto")
            for (i, k), v in np.ndenumerate(a):
                star = "*" if row == 1 and summary[name][f"L{layers[i]}/{pos_names[k]}"]["claim"] else ""
                ax.text(k, i, f"{v:.2f}{star}", ha="center", va="center", fontsize=8,
                        color="w" if row == 0 and v < 0.75 else "k")
            ax.set_xticks(range(len(pos_names)), pos_names)
            ax.set_yticks(range(len(layers)), [str(l) for l in layers])
            ax.set_title(("IIA " if row == 0 else "DAS - whole swap ") + name.replace("_", " "), fontsize=8)
    axes[0][0].set_ylabel("layer (resid_post)")
    axes[1][0].set_ylabel("layer (resid_post)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# pretrained LMs on the text prompts


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
    """The model's own answer (argmax over [No, Yes] at the last position) against the task's label:
    accuracy with a bootstrap 95% interval over prompts, the majority-class rate (chance) and whether
    the interval lies above it."""
    n = len(labels_N)
    pred = []
    for i in range(0, n, chunk):  # fixed-size chunks (the last padded by repeating rows): one compile
        rows = np.arange(i, i + chunk) % n
        logits = np.asarray(forward(cfg, params, tokens_NT[rows]))[:, -1][:, label_tokens]
        pred.append(logits.argmax(-1)[: min(chunk, n - i)])
    pred = np.concatenate(pred)
    correct = (pred == labels_N).astype(np.float64)
    acc = bootstrap_ci(correct)
    majority = float(max(np.mean(labels_N), 1 - np.mean(labels_N)))
    recall = [float(np.mean(pred[labels_N == c] == c)) if np.any(labels_N == c) else float("nan") for c in (0, 1)]
    return {"accuracy": acc, "yes_rate": float(np.mean(pred == 1)), "yes_fraction": float(np.mean(labels_N)),
            "majority_rate": majority, "balanced_accuracy": float(np.nanmean(recall)), "n": int(n),
            "above_chance": bool(acc["lo"] > majority)}


def text_prompts(model, n_needed: int, candidates_per_pair: int, seed: int):
    """The text prompt pool (one token layout) split into disjoint train / held-out rows."""
    pool = price_text.build_prompts(model, np.random.default_rng([seed, 2]), candidates_per_pair * n_needed, n_needed)
    if pool.tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"prompts of {pool.tokens.shape[1]} tokens exceed the model's n_ctx={model.cfg.n_ctx}")
    print(f"prompts: kept {pool.n_kept} of {pool.n_candidates} candidates with the most common token layout "
          f"{pool.summary()['layout']}, dropped {pool.n_dropped} ({pool.summary()['n_layouts']} layouts seen)", flush=True)
    return pool


def lm_task(model, n_prompts: int, seed: int = 0) -> dict:
    """A pretrained LM's accuracy on ``n_prompts`` text prompts of the task (one token layout)."""
    pool = text_prompts(model, n_prompts, 4, seed)
    rows = np.random.default_rng([seed, 3]).permutation(pool.n_kept)[:n_prompts]
    labels = price.label(take_rows(pool.inputs, rows)).astype(np.int32)
    task = task_accuracy(model.cfg, model.params, pool.tokens[rows], labels, pool.label_tokens)
    task["prompts"] = pool.summary()
    print(f"task accuracy on {task['n']} prompts: {fmt_ci(task['accuracy'], 3)} (says Yes {task['yes_rate']:.2f}, "
          f"majority class {task['majority_rate']:.2f}, above chance: {task['above_chance']})", flush=True)
    return task


def pretrained(args, mode: str, model=None) -> Record:
    """``--model``: task accuracy, then the DAS search with its controls on the text prompts."""
    import interpjax

    m = dict(MODEL_MODES[mode], positions=price_text.POSITION_NAMES)
    for key in ("n_train", "n_test", "das_steps"):
        if getattr(args, key) is not None:
            m[key] = getattr(args, key)
    label = model_label(args.model)
    model = interpjax.load(args.model) if model is None else model
    layers = parse_layers(args.layers, model.cfg.n_layers)
    seed = args.seeds[0]
    out = (args.out if args.out is not None else HERE / "results") / f"model-{label}"
    rec = Record(HERE, quick=args.quick, model=label, seeds=[seed], argv=args.argv, out=out)
    pool = text_prompts(model, m["n_train"] + m["n_test"], m["candidates_per_pair"], seed)
    perm = np.random.default_rng([seed, 3]).permutation(pool.n_kept)
    n_test_pool = pool.n_kept * m["n_test"] // (m["n_train"] + m["n_test"])
    test_rows, train_rows = perm[:n_test_pool], perm[n_test_pool:]
    info = dict(pool.summary(), train_prompts=len(train_rows), test_prompts=len(test_rows))
    test_labels = price.label(take_rows(pool.inputs, test_rows)).astype(np.int32)
    task = task_accuracy(model.cfg, model.params, pool.tokens[test_rows], test_labels, pool.label_tokens)
    print(f"task accuracy on {task['n']} held-out prompts: {fmt_ci(task['accuracy'], 3)} (says Yes "
          f"{task['yes_rate']:.2f}, majority class {task['majority_rate']:.2f})", flush=True)
    if not task["above_chance"]:
        task["note"] = (f"accuracy {task['accuracy']['value']:.3f} is not above the majority rate "
                        f"{task['majority_rate']:.3f}: the model does not do the task, so no alignment below means "
                        "anything (the search runs to exercise the code path)")
        print("WARNING: " + task["note"], flush=True)
    draw = lambda rows: lambda r, k: take_rows(pool.inputs, r.choice(rows, k))  # noqa: E731
    positions = [pool.positions[p] for p in m["positions"]]
    pos_names = list(m["positions"])
    per_seed = [das_search(model.cfg, model.params, draw(train_rows), draw(test_rows), lambda i: pool.tokens[i["row"]],
                           pool.label_tokens, layers, pos_names, positions, m, seed,
                           chunk=min(32, m["n_test"]), causal_models=args.causal_models)]
    summary = summarise(per_seed, layers, pos_names)
    rec["settings"], rec["template"], rec["prompts"], rec["task"] = m, price_text.TEMPLATE, info, task
    rec["answers"] = {"No": int(pool.label_tokens[0]), "Yes": int(pool.label_tokens[1]),
                      "strings": [model.to_string([i]) for i in pool.label_tokens],
                      "shared_prefix": [model.to_string([i]) for i in pool.shared_answer]}
    rec["layers"], rec["positions"], rec["site"] = layers, pos_names, SITE
    rec["position_index"] = {p: int(pool.positions[p]) for p in pos_names}
    _record_search(rec, per_seed, summary, layers, pos_names,
                   f"Boundless DAS on {label} (task accuracy {task['accuracy']['value']:.2f})")
    rec.save()
    return rec


# ---------------------------------------------------------------------------------------------
# the trained decoder, end to end


def _record_search(rec, per_seed, summary, layers, pos_names, title):
    rec["summary"] = summary
    rec["per_seed"] = [{name: {"iia": {c: s[name][c].mean(-1) for c in CONDITIONS},
                               "library_iia": s[name]["library_iia"], "train_iia": s[name]["train_iia"],
                               "interval_widths": s[name]["widths"], "whole_swap_source": s[name]["whole_source"],
                               "copy_source_answer": s[name]["copy_source_answer"], "das_s": s[name]["das_s"],
                               "eval_s": s[name]["eval_s"]} for name in s} for s in per_seed]
    rec["copy_source_answer"] = {name: seed_summary([s[name]["copy_source_answer"] for s in per_seed])
                                 for name in summary}
    rec["no_op_iia"] = 0.5
    derived = write_search_tables(rec.table, {"summary": summary, "layers": layers, "positions": pos_names,
                                              "per_seed": rec["per_seed"], "copy_source_answer": rec["copy_source_answer"]},
                                  len(per_seed))
    for key, value in derived.items():
        rec[key] = value
    rec.figure("iia.png", plot(summary, layers, pos_names, title))
    # DAS's per-pair IIA must match the library's own hard-mask evaluation (same masks, same pairs)
    rec["max_abs_gap_to_library_iia"] = float(max(np.abs(s[n]["das"].mean(-1) - s[n]["library_iia"]).max()
                                                  for s in per_seed for n in s))
    rec.per_seed = per_seed  # per-pair arrays, in memory only (for the tests)


def retable(folder: Path) -> Path:
    """Re-derive the claims, tables and figure of a finished run from its ``results.json`` (after a
    change of the claim criterion or the tables; the measured numbers stay as they are), recorded in
    ``meta.retabled``."""
    import datetime as dt
    import json

    from interpjax.io.artifacts import atomic_write_text
    from interpjax.io.plots import save_figure

    path = folder / "results.json"
    res = json.loads(path.read_text())
    n_seeds = len(res["meta"]["seeds"])
    for cells in res["summary"].values():
        for st in cells.values():
            st["claim"] = claim_holds(st, n_seeds)
    res.update(write_search_tables(lambda name, md: atomic_write_text(folder / name, md), res, n_seeds))
    save_figure(plot(res["summary"], res["layers"], res["positions"],
                     f"Boundless DAS on the trained price decoder ({n_seeds} seeds; * = claim)"), folder / "iia.png")
    res["meta"]["retabled"] = {"command": " ".join(["python"] + sys.argv),
                               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(path, json.dumps(res, indent=1, allow_nan=False) + "\n")
    return path


def quick_effect(per_seed: list, control: str = "random", cell=QUICK_CELL, layers=None, pos_names=None) -> bool:
    """The effect the quick test asserts: at ``cell`` (causal model, layer index, position name) DAS's
    held-out per-pair correctness beats ``control``'s (pooled over seeds) with the interval above 0."""
    name, li, pos = cell
    pi = list(pos_names).index(pos)
    das = np.concatenate([s[name]["das"][li, pi] for s in per_seed])
    ctrl = np.concatenate([s[name][control][li, pi] for s in per_seed])
    return beats(das, ctrl)


def trained_here(args, mode: str) -> Record:
    m = dict(MODES[mode])
    for key in ("n_train", "n_test", "das_steps"):
        if getattr(args, key) is not None:
            m[key] = getattr(args, key)
    if args.lm_prompts is not None:
        m["lm_prompts"] = args.lm_prompts
    seeds = list(args.seeds)
    rec = Record(HERE, quick=args.quick, model=f"price decoder trained here; task accuracy of {args.lm}",
                 seeds=seeds, argv=args.argv, out=args.out)
    levels = m["levels"]
    cfg = price.model_config(levels, m["d_model"], m["n_layers"])
    layers = parse_layers(args.layers, cfg.n_layers)
    pos_names = list(m["positions"])
    positions = [price.POSITION_NAMES.index(p) for p in pos_names]
    sample = lambda r, k: price.sample_inputs(r, k, levels)  # noqa: E731
    if m["lm_prompts"] and args.lm != "none":  # first: a pretrained LM on the text task (fails fast)
        import interpjax

        t0 = time.time()
        task = lm_task(interpjax.load(args.lm), m["lm_prompts"], seeds[0])
        task["seconds"] = time.time() - t0
        rec["lm_task"] = {args.lm: task}
        a = task["accuracy"]
        rec.table("lm.md", markdown_table(
            ["model", "prompts", "accuracy (95% CI)", "majority class (chance)", "balanced accuracy", "says Yes",
             "above chance"],
            [[args.lm, a["n"], fmt_ci(a, 3), f"{task['majority_rate']:.3f}", f"{task['balanced_accuracy']:.3f}",
              f"{task['yes_rate']:.2f}", "yes" if task["above_chance"] else "no"]]))
    # the quick run trains in memory unless --workdir is given; the full run keeps its checkpoints
    workdir = args.workdir if args.workdir is not None or mode == "quick" else REPO / "runs" / "das" / mode
    models, per_seed = [], []
    for seed in seeds:
        t0 = time.time()
        params, acc = train_model(cfg, levels, m["train_steps"], None if workdir is None else workdir / f"seed{seed}",
                                  seed)
        acc["train_s"] = time.time() - t0
        print(f"seed {seed} model: {acc}", flush=True)
        models.append(acc)
        per_seed.append(das_search(cfg, params, sample, sample, lambda i: price.prompts(i, levels),
                                   price.answer_tokens(levels), layers, pos_names, positions, m, seed,
                                   causal_models=args.causal_models))
    summary = summarise(per_seed, layers, pos_names)
    rec["settings"], rec["layers"], rec["positions"], rec["site"] = m, layers, pos_names, SITE
    rec["model_config"] = cfg.to_dict()
    rec["models"] = models
    rec["model_test_accuracy"] = seed_summary([a["test_accuracy"] for a in models])
    rec.table("model.md", markdown_table(["seed", "test accuracy (4000 prompts)", "test loss", "train s"],
                                         [[s, f"{a['test_accuracy']:.4f}", f"{a['test_loss']:.4f}", f"{a['train_s']:.0f}"]
                                          for s, a in zip(seeds, models)]))
    _record_search(rec, per_seed, summary, layers, pos_names,
                   f"Boundless DAS on the trained price decoder ({len(seeds)} seeds; * = claim)")
    if QUICK_CELL[0] in summary and "answer" in pos_names:
        rec["quick_effect"] = {c: quick_effect(per_seed, c, layers=layers, pos_names=pos_names) for c in ("random", "whole")}
    rec.save()
    return rec


def main(argv=None, model=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run (small model, few steps, one seed)")
    ap.add_argument("--model", default=None, help="a pretrained LM (interpjax.load name, local folder or hub id): DAS "
                    "on the text prompts instead of the model trained here")
    ap.add_argument("--lm", default=DEFAULT_LM, help="the pretrained LM whose task accuracy the run over the trained "
                    "model also measures ('none' to skip; the quick run skips it unless --lm-prompts is given)")
    ap.add_argument("--lm-prompts", type=int, default=None, help="text prompts for --lm's task accuracy")
    ap.add_argument("--layers", default=None, help="comma-separated layers to search (default: all)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: 0,1,2; --quick: 0)")
    ap.add_argument("--causal-models", default=None, help=f"comma-separated subset of {list(price.CAUSAL_MODELS)}")
    ap.add_argument("--n-train", type=int, default=None, help="DAS training pairs per causal model")
    ap.add_argument("--n-test", type=int, default=None, help="held-out pairs per causal model (IIA)")
    ap.add_argument("--das-steps", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: this folder's results/)")
    ap.add_argument("--workdir", type=Path, default=None, help="model checkpoints, one folder per seed (full run's "
                    "default: <repo>/runs/das/full, git-ignored; a rerun with the same settings reuses them; the "
                    "quick run trains in memory unless given)")
    ap.add_argument("--retable", action="store_true", help="re-derive claims, tables and figure of the finished full "
                    "run in results/full/ (or --out/full) from its results.json, then sync the README; no compute")
    args = ap.parse_args(argv)
    args.argv = argv
    if args.retable:
        folder = (args.out if args.out is not None else HERE / "results") / "full"
        path = retable(folder)
        if args.out is None:
            sync_readme(HERE / "README.md", folder)
        print(f"re-derived {path}")
        return path
    mode = "quick" if args.quick else "full"
    if args.model is not None and args.workdir is not None:
        ap.error("--workdir applies to the model trained here, not to --model")
    for key in ("n_train", "n_test", "das_steps", "lm_prompts"):
        v = getattr(args, key)
        if v is not None and v < (0 if key == "lm_prompts" else 1):
            ap.error(f"--{key.replace('_', '-')} must be >= {0 if key == 'lm_prompts' else 1}, got {v}")
    try:
        args.seeds = [0] if args.quick and args.seeds is None else (
            list(SEEDS) if args.seeds is None else [int(s) for s in args.seeds.split(",") if s.strip()])
    except ValueError:
        ap.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        ap.error(f"--seeds must name distinct seeds, got {args.seeds}")
    if args.causal_models is not None:
        args.causal_models = [c.strip() for c in args.causal_models.split(",") if c.strip()]
        bad = [c for c in args.causal_models if c not in price.CAUSAL_MODELS]
        if bad or not args.causal_models:
            ap.error(f"--causal-models {bad or args.causal_models}: choose from {list(price.CAUSAL_MODELS)}")
    if args.quick and args.lm_prompts is None:
        args.lm = "none"
    t0 = time.time()
    rec = pretrained(args, mode, model) if args.model is not None else trained_here(args, mode)
    if not args.quick and args.model is None and args.out is None:
        sync_readme(HERE / "README.md", rec.out)
    print(f"wrote {rec.out} in {time.time() - t0:.0f} s (backend {jax.default_backend()})")
    return rec


if __name__ == "__main__":
    main()
