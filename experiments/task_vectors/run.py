"""ICL task vectors (Hendel et al. 2023, M2) and FFN-output arithmetic (Merullo et al. 2023, M8) on a
real LM (default SmolLM2-135M-Instruct) over the built-in word tasks of ``interpjax.worlds.word_tasks``.

Per task, prompts ``<s>x1 -> y1\\n ... xk -> yk\\nxq ->`` (``<s>`` = the model's document-start token)
and zero-shot prompts ``<s>xq ->``; queries are split into dev and test halves, the vectors come from
separate source prompts. Measured:

- task vectors (M2): the last-position ``resid_pre`` of layer l averaged over source ICL prompts,
  patched into the zero-shot prompts at layer l; one layer for all tasks chosen on the dev queries,
  reported on the test queries beside the regular (ICL) and baseline (zero-shot) accuracy and two
  controls patched at the same layer: another task's vector and the mean vector of all tasks;
- function vectors (M8): the last-position MLP output o_l of the source prompts *added* at layer l;
  layer chosen on dev, control = another task's o_l;
- layer truncation: ICL accuracy with the last k layers dropped, extractive (copy) vs abstractive;
- M8 logit lens: rank of the argument token (" China") and the answer token (" Beijing") at the last
  position of ``Q: What is the capital of China?\\nA:`` prompts, per layer (argument -> function
  application -> saturation), with an unrelated country's token as control;
- M8 transplant: the capital prompts' mean o_l added into copy prompts ``... China ->`` (which answer
  " China") turns the answer into the capital; layer and scale chosen on dev countries, reported on
  test countries, controls = an unrelated prompt's o_l (antonym questions) and a random direction,
  both norm-matched;
- t-SNE of per-prompt task vectors at the chosen layer, with a leave-one-out nearest-neighbour task
  readout against shuffled labels.

    python experiments/task_vectors/run.py                   # full mode (and Gemma 3 beside it): results/full
    python experiments/task_vectors/run.py --quick           # CI setting: results/quick only
    python experiments/task_vectors/run.py --model gemma-3-270m
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from interpjax.core import model as M
from interpjax.evidence import Record, bootstrap_ci, fmt_ci, markdown_table, paired_bootstrap_diff, sync_readme
from interpjax.io.loading import model_label  # noqa: F401 (tests check that labels never hold a path)
from interpjax.methods import lens
from interpjax.methods import task_vectors as tv
from interpjax.worlds import word_tasks

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = "smollm2-135m-instruct"
# document-start text prepended to every prompt: without it the query word is the attention-sink
# position of a 2-token zero-shot prompt
PREFIX = {"smollm2-135m-instruct": "<|endoftext|>", "gemma-3-270m": "<bos>"}

FULL = dict(tasks=None, demos=5, n_src=24, n_dev=16, n_test=24, layer_step=3, m8_eval=60, m8_src=40,
            m8_scales=(1.0, 3.0))
# CI setting: two tasks, two candidate layers, no M8 part (the full run covers it)
QUICK = dict(tasks=("antonym", "past_tense"), demos=4, n_src=6, n_dev=4, n_test=8, layer_fracs=(0.5, 0.7),
             m8_eval=0, m8_src=0, m8_scales=(1.0,))
TRUNC_K_FRAC = 0.2  # headline truncation depth: the last 20% of layers dropped (fixed in advance)


# ---------------------------------------------------------------------------------------------
# prompts


def encode(model, texts, T=None):
    """Left-padded (tokens [B, T], mask [B, T]) without added special tokens; ``T`` fixes the width
    (so every task reuses one compiled program)."""
    tok = model.tokenizer
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    T = max(len(i) for i in ids) if T is None else T
    if max(len(i) for i in ids) > T:
        raise ValueError(f"a prompt has {max(len(i) for i in ids)} tokens, more than the width {T}")
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    tokens = np.full((len(ids), T), pad, np.int32)
    mask = np.zeros((len(ids), T), np.int32)
    for r, i in enumerate(ids):
        tokens[r, T - len(i):], mask[r, T - len(i):] = i, 1
    return tokens, mask


def task_prompts(model, task, queries, k, rng, prefix):
    """ICL texts with ``k`` demonstrations (other pairs) per query index, and first-token answers."""
    texts, answers = [], []
    n = len(task.pairs)
    for qi in queries:
        others = np.setdiff1d(np.arange(n), [qi])
        demos = [task.pairs[i] for i in rng.choice(others, k, replace=False)] if k else []
        text = prefix + word_tasks.prompt_text(demos, task.pairs[qi][0])
        texts.append(text)
        answers.append(word_tasks.answer_token(model.tokenizer, text, task.pairs[qi][1]))
    return texts, np.asarray(answers, np.int32)


def split_queries(task, size, rng):
    """Disjoint dev / test query indices and source-prompt queries drawn from the non-test pairs."""
    need = size["n_dev"] + size["n_test"]
    if len(task.pairs) < need or len(task.pairs) < size["demos"] + 1:
        raise ValueError(f"task {task.name!r} has {len(task.pairs)} pairs, needs {need} distinct queries")
    perm = rng.permutation(len(task.pairs))
    dev, test = perm[:size["n_dev"]], perm[size["n_dev"]:need]
    rest = np.setdiff1d(np.arange(len(task.pairs)), test)
    src = rng.choice(rest, size["n_src"], replace=len(rest) < size["n_src"])
    return dev, test, src


# ---------------------------------------------------------------------------------------------
# model reads


def last_states(model, tokens, mask):
    """Last-position activations [L, B, D] of resid_pre, mlp_out and resid_post (one forward)."""
    _, cache = M.run_with_cache(model.cfg, model.params, tokens, sites=("resid_pre", "mlp_out", "resid_post"),
                                attention_mask=mask)
    return {s: np.asarray(cache[s][:, :, -1], np.float32) for s in ("resid_pre", "mlp_out", "resid_post")}


def decode_top1(model, x_LBD):
    """Top-1 token of last-position residuals [L, B, D] through the final norm and unembedding."""
    logits = lens.decode(model.cfg, model.params, np.asarray(x_LBD, M.compute_dtype(model.params))[:, :, None])
    return np.asarray(logits[:, :, 0].argmax(-1))


def top1(model, tokens, mask):
    return np.asarray(M.forward(model.cfg, model.params, tokens, mask)[:, -1].argmax(-1))


# ---------------------------------------------------------------------------------------------
# task vectors, function vectors, truncation (M2, M8)


def collect_tasks(model, tasks, size, grid, prefix, seed):
    """Per task: source vectors, ICL test correctness (all truncation depths) and zero-shot
    correctness on dev + test with every grid layer patched (task vector) and added (o_l)."""
    rng = np.random.default_rng(seed)
    built = []
    for task in tasks:
        dev, test, src = split_queries(task, size, rng)
        src_t, _ = task_prompts(model, task, src, size["demos"], rng, prefix)
        icl_t, icl_a = task_prompts(model, task, test, size["demos"], rng, prefix)
        zs_t, zs_a = task_prompts(model, task, np.concatenate([dev, test]), 0, rng, prefix)
        built.append((task, src_t, icl_t, icl_a, zs_t, zs_a))
    T_icl = max(len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) for b in built for t in b[1] + b[2])
    T_zs = max(len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) for b in built for t in b[4])
    out = {}
    L = model.cfg.n_layers
    for task, src_t, icl_t, icl_a, zs_t, zs_a in built:
        t0 = time.time()
        src = last_states(model, *encode(model, src_t, T_icl))
        icl_tok, icl_mask = encode(model, icl_t, T_icl)
        icl = last_states(model, icl_tok, icl_mask)
        trunc = decode_top1(model, icl["resid_post"][::-1]) == icl_a[None]  # [k = 0..L-1, B]
        zs_tok, zs_mask = encode(model, zs_t, T_zs)
        tvec, fvec = src["resid_pre"].mean(1), src["mlp_out"].mean(1)  # [L, D]
        base = top1(model, zs_tok, zs_mask) == zs_a
        patched = tv.edited_predictions(model, zs_tok, tvec[grid], attention_mask=zs_mask, edit="patch",
                                        layers=grid) == zs_a[None]
        added = tv.edited_predictions(model, zs_tok, fvec[grid], attention_mask=zs_mask, site="mlp_out",
                                      edit="add", layers=grid) == zs_a[None]
        out[task.name] = dict(kind=task.kind, tvec=tvec, fvec=fvec, src_states=src["resid_pre"],
                              regular=trunc[0], trunc=trunc, base=base, patched=patched, added=added,
                              zs=(zs_tok, zs_mask, zs_a), n_dev=size["n_dev"])
        print(f"  {task.name}: regular {trunc[0].mean():.2f} baseline {base.mean():.2f} "
              f"task vector best {patched.mean(1).max():.2f} ({time.time() - t0:.0f}s)", flush=True)
    assert L == len(out[tasks[0].name]["trunc"])
    return out


def evaluate_tasks(model, data, grid):
    """Layer choice on dev, test numbers with bootstrap intervals and the same-layer controls."""
    names = list(data)
    nd = data[names[0]]["n_dev"]
    dev_tv = np.mean([d["patched"][:, :nd].mean(1) for d in data.values()], 0)  # [G]
    dev_fv = np.mean([d["added"][:, :nd].mean(1) for d in data.values()], 0)
    g_tv, g_fv = int(np.argmax(dev_tv)), int(np.argmax(dev_fv))
    layer_tv, layer_fv = int(grid[g_tv]), int(grid[g_fv])
    mean_tvec = np.mean([d["tvec"] for d in data.values()], 0)
    per_task, pooled = {}, {k: [] for k in ("regular", "baseline", "task_vector", "other_task", "mean_task",
                                             "function_vector", "fv_other_task")}
    for i, name in enumerate(names):
        d = data[name]
        other = data[names[(i + 1) % len(names)]]
        tok, mask, ans = d["zs"]
        tok, mask, ans = tok[nd:], mask[nd:], ans[nd:]
        ctrl = tv.edited_predictions(model, tok, np.stack([other["tvec"][layer_tv], mean_tvec[layer_tv]]),
                                     attention_mask=mask, edit="patch", layers=[layer_tv, layer_tv]) == ans[None]
        fctrl = tv.edited_predictions(model, tok, other["fvec"][layer_fv][None], attention_mask=mask, site="mlp_out",
                                      edit="add", layers=[layer_fv]) == ans[None]
        items = dict(regular=d["regular"], baseline=d["base"][nd:], task_vector=d["patched"][g_tv, nd:],
                     other_task=ctrl[0], mean_task=ctrl[1], function_vector=d["added"][g_fv, nd:],
                     fv_other_task=fctrl[0])
        per_task[name] = {"kind": d["kind"], **{k: bootstrap_ci(v.astype(float)) for k, v in items.items()},
                          "task_vector_by_layer": d["patched"][:, nd:].mean(1),
                          "function_vector_by_layer": d["added"][:, nd:].mean(1)}
        for k, v in items.items():
            pooled[k].append(v.astype(float))
    pooled = {k: np.concatenate(v) for k, v in pooled.items()}
    test_tv = np.concatenate([d["patched"][:, nd:] for d in data.values()], 1).astype(float)  # [G, N]
    test_fv = np.concatenate([d["added"][:, nd:] for d in data.values()], 1).astype(float)
    return {
        "tasks": names, "layers_grid": [int(g) for g in grid], "layer_task_vector": layer_tv,
        "layer_function_vector": layer_fv, "dev_task_vector_by_layer": dev_tv, "dev_function_vector_by_layer": dev_fv,
        "per_task": per_task,
        "mean": {k: bootstrap_ci(v) for k, v in pooled.items()},
        "tv_minus_other_task": paired_bootstrap_diff(pooled["task_vector"], pooled["other_task"]),
        "tv_minus_baseline": paired_bootstrap_diff(pooled["task_vector"], pooled["baseline"]),
        "tv_over_regular": float(pooled["task_vector"].mean() / max(pooled["regular"].mean(), 1e-9)),
        "fv_minus_other_task": paired_bootstrap_diff(pooled["function_vector"], pooled["fv_other_task"]),
        "fv_minus_baseline": paired_bootstrap_diff(pooled["function_vector"], pooled["baseline"]),
        "test_task_vector_by_layer": [bootstrap_ci(r) for r in test_tv],
        "test_function_vector_by_layer": [bootstrap_ci(r) for r in test_fv],
    }


def truncation(data, n_layers):
    """ICL accuracy with the last k layers dropped, extractive vs abstractive, with intervals."""
    ext = [d["trunc"] for d in data.values() if d["kind"] == "extractive"]
    abs_ = [d["trunc"] for d in data.values() if d["kind"] == "abstractive"]
    k_head = max(1, int(round(TRUNC_K_FRAC * n_layers)))
    res = {"k_headline": k_head}
    for name, group in (("extractive", ext), ("abstractive", abs_)):
        if group:
            g = np.concatenate(group, 1).astype(float)  # [L, N]
            res[name] = [bootstrap_ci(r) for r in g]
    if ext and abs_:
        e = np.concatenate(ext, 1).astype(float)
        a = np.concatenate(abs_, 1).astype(float)
        # drop relative to k = 0, each group; difference of drops by a bootstrap over both groups
        rng = np.random.default_rng(0)
        drops = []
        for _ in range(2000):
            ie, ia = rng.integers(0, e.shape[1], e.shape[1]), rng.integers(0, a.shape[1], a.shape[1])
            drops.append((a[0, ia] - a[k_head, ia]).mean() - (e[0, ie] - e[k_head, ie]).mean())
        lo, hi = np.quantile(drops, [0.025, 0.975])
        res["abstractive_minus_extractive_drop"] = {
            "value": float((a[0] - a[k_head]).mean() - (e[0] - e[k_head]).mean()), "lo": float(lo), "hi": float(hi),
            "n": int(e.shape[1] + a.shape[1])}
    return res


# ---------------------------------------------------------------------------------------------
# M8: logit-lens trajectory and the FFN-output transplant on capitals


def qa_text(prefix, question, demos, x):
    return prefix + "".join(f"Q: {question.format(a)}\nA: {b}\n" for a, b in demos) + f"Q: {question.format(x)}\nA:"


def m8(model, size, prefix, grid, seed):
    """Logit lens at the last position of capital questions (argument / answer / control-country
    ranks by layer) and the o_l transplant into copy prompts; returns numbers for the record."""
    tk = model.tokenizer
    n_eval, n_src = size["m8_eval"], size["m8_src"]
    pairs = word_tasks.country_capital_pairs(n_eval + n_src)
    rng = np.random.default_rng(seed + 7)
    order = rng.permutation(len(pairs))
    eval_p = [pairs[i] for i in order[:n_eval]]
    src_p = [pairs[i] for i in order[n_eval:]]
    q = "What is the capital of {}?"
    demo_sets = [[src_p[j] for j in rng.choice(len(src_p), 2, replace=False)] for _ in eval_p]
    texts = [qa_text(prefix, q, ds, c) for ds, (c, _) in zip(demo_sets, eval_p)]
    ans = np.array([word_tasks.answer_token(tk, t, cap) for t, (_, cap) in zip(texts, eval_p)], np.int32)
    arg = np.array([word_tasks.answer_token(tk, "Q: What is the capital of", c) for c, _ in eval_p], np.int32)
    other = np.roll(arg, 1)  # another country's token: the control for the argument's rank
    tok, mask = encode(model, texts)
    _, resid = lens.residual_stack(model.cfg, model.params, tok, mask)
    logits = np.asarray(lens.decode(model.cfg, model.params, resid[:, :, -1:]), np.float32)[:, :, 0]  # [L+1, B, V]
    take = lambda ids: np.take_along_axis(logits, np.broadcast_to(ids[None, :, None], logits.shape[:2] + (1,)), 2)  # noqa: E731
    rank = {n: (logits > take(ids)).sum(-1) for n, ids in (("argument", arg), ("answer", ans), ("other_country", other))}
    known = rank["answer"][-1] == 0
    # per prompt: the row where the argument ranks best, and the row from which the answer stays top-1
    l_arg = rank["argument"].argmin(0)
    top_ans = rank["answer"] == 0
    settled = np.cumprod(top_ans[::-1], 0)[::-1]
    l_ans = np.where(top_ans[-1], top_ans.shape[0] - settled.sum(0), -1)
    kn = np.flatnonzero(known)
    traj = {
        "n_pairs": n_eval, "n_known": int(known.sum()), "qa_accuracy": bootstrap_ci(known.astype(float)),
        "median_rank_by_row": {n: np.median(r, 1).tolist() for n, r in rank.items()},
        "top1_by_row": {n: (r == 0).mean(1).tolist() for n, r in rank.items()},
        "median_rank_known_by_row": {n: (np.median(r[:, kn], 1).tolist() if kn.size else []) for n, r in rank.items()},
    }
    if kn.size >= 2:
        traj["argument_best_row"] = bootstrap_ci(l_arg[kn].astype(float))
        traj["answer_settles_row"] = bootstrap_ci(l_ans[kn].astype(float))
        traj["answer_minus_argument_row"] = bootstrap_ci((l_ans[kn] - l_arg[kn]).astype(float))
        traj["argument_before_answer"] = bootstrap_ci((l_arg[kn] < l_ans[kn]).astype(float))
        # argument vs another country's token at the argument's best row: specificity of the peak
        traj["argument_log_rank_minus_other"] = paired_bootstrap_diff(
            np.log1p(rank["argument"][l_arg[kn], kn]), np.log1p(rank["other_country"][l_arg[kn], kn]))

    # transplant: o_l of capital questions about the source countries, added into copy prompts
    src_texts = [qa_text(prefix, q, [src_p[(j + 1) % n_src], src_p[(j + 2) % n_src]], c) for j, (c, _) in enumerate(src_p)]
    o_cap = last_states(model, *encode(model, src_texts))["mlp_out"].mean(1)  # [L, D]
    ant = word_tasks.ANTONYMS
    ctrl_texts = [qa_text(prefix, "What is the opposite of {}?", [ant[(j + 1) % len(ant)], ant[(j + 2) % len(ant)]],
                          ant[j][0]) for j in range(n_src)]
    o_ctrl = last_states(model, *encode(model, ctrl_texts))["mlp_out"].mean(1)
    o_ctrl *= np.linalg.norm(o_cap, axis=1, keepdims=True) / np.linalg.norm(o_ctrl, axis=1, keepdims=True)
    o_rand = np.random.default_rng(seed).normal(size=o_cap.shape).astype(np.float32)
    o_rand *= np.linalg.norm(o_cap, axis=1, keepdims=True) / np.linalg.norm(o_rand, axis=1, keepdims=True)
    copy_texts = [prefix + word_tasks.prompt_text([(a, a) for a, _ in ds], c) for ds, (c, _) in zip(demo_sets, eval_p)]
    copy_arg = np.array([word_tasks.answer_token(tk, t, c) for t, (c, _) in zip(copy_texts, eval_p)], np.int32)
    copy_ans = np.array([word_tasks.answer_token(tk, t, cap) for t, (_, cap) in zip(copy_texts, eval_p)], np.int32)
    ctok, cmask = encode(model, copy_texts)
    half = n_eval // 2
    dev, test = slice(0, half), slice(half, None)
    base_top = top1(model, ctok, cmask)
    layers = [int(g) for g in grid if g >= model.cfg.n_layers // 3]
    variants = [(l, s) for l in layers for s in size["m8_scales"]]
    vecs = np.stack([s * o_cap[l] for l, s in variants])
    dev_top = tv.edited_predictions(model, ctok[dev], vecs, attention_mask=cmask[dev], site="mlp_out", edit="add",
                                    layers=[l for l, _ in variants])
    dev_acc = (dev_top == copy_ans[dev][None]).mean(1)
    best = int(np.argmax(dev_acc))
    l_best, s_best = variants[best]
    test_top = tv.edited_predictions(model, ctok[test], np.stack([s_best * o_cap[l_best], s_best * o_ctrl[l_best],
                                                                  s_best * o_rand[l_best]]),
                                     attention_mask=cmask[test], site="mlp_out", edit="add", layers=[l_best] * 3)
    hit = test_top == copy_ans[test][None]
    kt = known[test]
    transplant = {
        "layer": l_best, "scale": s_best, "n_test": int(n_eval - half), "n_test_known": int(kt.sum()),
        "dev_accuracy_by_variant": [{"layer": l, "scale": s, "accuracy": float(a)} for (l, s), a in zip(variants, dev_acc)],
        "baseline_answers_argument": bootstrap_ci((base_top[test] == copy_arg[test]).astype(float)),
        "baseline_answers_capital": bootstrap_ci((base_top[test] == copy_ans[test]).astype(float)),
        "capital_vector": bootstrap_ci(hit[0].astype(float)),
        "unrelated_prompt_vector": bootstrap_ci(hit[1].astype(float)),
        "random_vector": bootstrap_ci(hit[2].astype(float)),
        "capital_minus_unrelated": paired_bootstrap_diff(hit[0].astype(float), hit[1].astype(float)),
    }
    if kt.sum() >= 2:
        transplant["capital_vector_known"] = bootstrap_ci(hit[0][kt].astype(float))
        transplant["unrelated_prompt_vector_known"] = bootstrap_ci(hit[1][kt].astype(float))
    examples = [f"{eval_p[half + i][0]} -> {model.to_string([int(test_top[0, i])]).strip()}" for i in range(min(6, n_eval - half))]
    transplant["examples"] = examples
    return {"trajectory": traj, "transplant": transplant}


# ---------------------------------------------------------------------------------------------
# t-SNE


def tsne_and_readout(data, layer, seed):
    """2-D t-SNE (scikit-learn) of per-prompt task vectors at ``layer`` and a leave-one-out 5-NN task
    readout (cosine) on the raw vectors, against the same readout with shuffled task labels."""
    X = np.concatenate([d["src_states"][layer] for d in data.values()])
    y = np.concatenate([[i] * d["src_states"].shape[1] for i, d in enumerate(data.values())])
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = Xn @ Xn.T
    np.fill_diagonal(S, -np.inf)

    def knn(labels):
        nn = np.argsort(-S, 1)[:, :5]
        votes = labels[nn]
        pred = np.array([np.bincount(v, minlength=labels.max() + 1).argmax() for v in votes])
        return (pred == labels).astype(float)

    shuffled = np.random.default_rng(seed).permutation(y)
    from sklearn.manifold import TSNE

    Z = TSNE(2, perplexity=min(15.0, (len(X) - 1) / 3), init="pca", random_state=seed).fit_transform(X)
    return Z, y, {"knn_task_accuracy": bootstrap_ci(knn(y)), "knn_shuffled_labels": bootstrap_ci(knn(shuffled)),
                  "chance": 1.0 / len(data), "layer": int(layer), "n_vectors": int(len(X))}


# ---------------------------------------------------------------------------------------------
# the claim, tables, figures


def effect_holds(result) -> bool:
    """Task vectors patched at the dev-chosen layer beat both the zero-shot baseline and another
    task's vector patched at the same layer, each with a paired 95% interval above zero."""
    tvr = result["task_vectors"]
    return tvr["tv_minus_other_task"]["lo"] > 0 and tvr["tv_minus_baseline"]["lo"] > 0


def tables(rec, res, trunc, m8r, tsne, tag=""):
    """The README tables; ``tag`` prefixes every file name (a second model's tables)."""
    f = fmt_ci
    rec = _Tagged(rec, tag)
    rows = []
    for name, r in res["per_task"].items():
        rows.append([name, r["kind"], f(r["regular"]), f(r["baseline"]), f(r["task_vector"]), f(r["other_task"]),
                     f(r["mean_task"])])
    m = res["mean"]
    rows.append(["**mean**", "", f(m["regular"]), f(m["baseline"]), f(m["task_vector"]), f(m["other_task"]),
                 f(m["mean_task"])])
    rec.table("task_vectors.md", markdown_table(
        ["task", "kind", "regular (ICL)", "baseline (zero-shot)", f"task vector (layer {res['layer_task_vector']})",
         "control: other task's vector", "control: mean of all tasks"], rows))
    rows = [[l, f"{a:.2f}", f(t), f"{b:.2f}", f(fv)] for l, a, t, b, fv in zip(
        res["layers_grid"], res["dev_task_vector_by_layer"], res["test_task_vector_by_layer"],
        res["dev_function_vector_by_layer"], res["test_function_vector_by_layer"])]
    rec.table("by_layer.md", markdown_table(["layer", "task vector dev", "task vector test (95% CI)",
                                             "function vector dev", "function vector test (95% CI)"], rows))
    rows = [[name, f(r["function_vector"]), f(r["fv_other_task"])] for name, r in res["per_task"].items()]
    rows.append(["**mean**", f(m["function_vector"]), f(m["fv_other_task"])])
    rec.table("function_vectors.md", markdown_table(
        ["task", f"o_l added (layer {res['layer_function_vector']})", "control: other task's o_l"], rows))
    if "extractive" in trunc and "abstractive" in trunc:
        ks = sorted({0, 1, 2, trunc["k_headline"], 2 * trunc["k_headline"], len(trunc["extractive"]) // 2})
        rows = [[k, f(trunc["extractive"][k]), f(trunc["abstractive"][k])] for k in ks]
        rec.table("truncation.md", markdown_table(["last k layers dropped", "extractive (copy)",
                                                   "abstractive (other tasks)"], rows))
    if m8r:
        t, p = m8r["trajectory"], m8r["transplant"]
        rows = [["QA accuracy on capital questions (n pairs)", f"{f(t['qa_accuracy'])} ({t['n_pairs']})"]]
        if "argument_best_row" in t:
            rows += [["lens row where the argument token ranks best (known pairs)", f(t["argument_best_row"], 1)],
                     ["lens row from which the answer stays top-1", f(t["answer_settles_row"], 1)],
                     ["argument's best row before the answer settles (fraction)", f(t["argument_before_answer"])],
                     ["log(1+rank): argument minus other country's token at that row",
                      f(t["argument_log_rank_minus_other"])]]
        rows += [[f"copy prompts answering the argument, no edit (n = {p['n_test']} test pairs)",
                  f(p["baseline_answers_argument"])],
                 ["copy prompts answering the capital, no edit", f(p["baseline_answers_capital"])],
                 [f"+ capital-question o_l (layer {p['layer']}, scale {p['scale']:g}) → capital",
                  f(p["capital_vector"])],
                 ["+ unrelated-question o_l (antonyms, norm-matched) → capital", f(p["unrelated_prompt_vector"])],
                 ["+ random direction (norm-matched) → capital", f(p["random_vector"])],
                 ["capital minus unrelated (paired)", f(p["capital_minus_unrelated"])]]
        if "capital_vector_known" in p:
            rows.append([f"+ capital o_l → capital, pairs the model knows (n = {p['n_test_known']})",
                         f(p["capital_vector_known"])])
        rec.table("m8.md", markdown_table(["M8 measurement", "value (95% CI)"], rows))
    rec.table("tsne.md", markdown_table(["readout of the task from per-prompt task vectors (5-NN, cosine)", "accuracy"], [
        [f"true task labels (layer {tsne['layer']}, {tsne['n_vectors']} vectors)", fmt_ci(tsne["knn_task_accuracy"])],
        ["control: shuffled labels", fmt_ci(tsne["knn_shuffled_labels"])], ["chance", f"{tsne['chance']:.2f}"]]))


def figures(rec, res, trunc, m8r, Z, y, tag=""):
    rec = _Tagged(rec, tag)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = res["layers_grid"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, title in ((axes[0], "test_task_vector_by_layer", "task vector patched (resid_pre)"),
                           (axes[1], "test_function_vector_by_layer", "o_l (MLP output) added")):
        s = res[key]
        ax.plot(g, [c["value"] for c in s], marker="o", label=title)
        ax.fill_between(g, [c["lo"] for c in s], [c["hi"] for c in s], alpha=0.25)
        ax.axhline(res["mean"]["regular"]["value"], color="k", ls="--", label="regular (ICL)")
        ax.axhline(res["mean"]["baseline"]["value"], color="grey", ls=":", label="baseline (zero-shot)")
        ax.set(title=f"{title}, test queries, mean of {len(res['tasks'])} tasks", xlabel="layer", ylabel="accuracy",
               ylim=(-0.02, 1.02))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for kind in ("extractive", "abstractive"):
        if kind in trunc:
            s = trunc[kind]
            axes[2].plot(range(len(s)), [c["value"] for c in s], marker=".", label=kind)
            axes[2].fill_between(range(len(s)), [c["lo"] for c in s], [c["hi"] for c in s], alpha=0.25)
    axes[2].set(title="ICL accuracy, last k layers dropped", xlabel="k", ylabel="accuracy")
    axes[2].legend(fontsize=7)
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    rec.figure("by_layer.png", fig)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for i, name in enumerate(res["tasks"]):
        ax.scatter(*Z[y == i].T, s=12, label=name)
    ax.set(title=f"t-SNE of per-prompt task vectors (layer {res['layer_task_vector']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    rec.figure("tsne.png", fig)
    if m8r:
        t = m8r["trajectory"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        key = "median_rank_known_by_row" if t["median_rank_known_by_row"]["answer"] else "median_rank_by_row"
        for n, r in t[key].items():
            axes[0].plot(np.asarray(r) + 1, marker=".", label=n.replace("_", " ") + " token")
        axes[0].set(yscale="log", xlabel="lens row (resid_pre of layer; last = output)", ylabel="median rank + 1",
                    title="logit lens at 'A:' of capital questions (known pairs)")
        axes[0].legend(fontsize=7)
        axes[0].grid(alpha=0.3)
        for s in sorted({v["scale"] for v in m8r["transplant"]["dev_accuracy_by_variant"]}):
            v = [x for x in m8r["transplant"]["dev_accuracy_by_variant"] if x["scale"] == s]
            axes[1].plot([x["layer"] for x in v], [x["accuracy"] for x in v], marker="o", label=f"scale {s:g}")
        axes[1].set(xlabel="layer o_l is added at", ylabel="capital answered (dev pairs)",
                    title="capital o_l transplanted into copy prompts")
        axes[1].legend(fontsize=7)
        axes[1].grid(alpha=0.3)
        fig.tight_layout()
        rec.figure("m8.png", fig)


class _Tagged:
    """A Record whose table and figure names carry a prefix (``gemma-3-270m_by_layer.md``)."""

    def __init__(self, rec, tag):
        self.rec, self.tag = rec, tag

    def table(self, name, md):
        return self.rec.table(self.tag + name, md)

    def figure(self, name, fig):
        return self.rec.figure(self.tag + name, fig)


def measure(model, size, *, seed=0, prefix=""):
    """Every measurement on ``model``: (result dict, t-SNE points, their task labels)."""
    t0 = time.time()
    tasks = word_tasks.make_tasks(size["tasks"])
    if len(tasks) < 2:
        raise ValueError("need at least two tasks (the other-task control)")
    L = model.cfg.n_layers
    if "layer_fracs" in size:
        grid = np.array(sorted({int(f * L) for f in size["layer_fracs"]}), np.int32)
    else:
        grid = np.arange(0, L, size["layer_step"], dtype=np.int32)
    data = collect_tasks(model, tasks, size, grid, prefix, seed)
    res = evaluate_tasks(model, data, grid)
    trunc = truncation(data, L)
    Z, y, tsne = tsne_and_readout(data, res["layer_task_vector"], seed)
    m8r = m8(model, size, prefix, grid, seed) if size["m8_eval"] else None
    result = {"task_vectors": res, "truncation": trunc, "tsne": tsne, "m8": m8r, "size": {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in size.items()}, "prefix": prefix,
        "n_layers": L, "compute_s": round(time.time() - t0, 1)}
    result["effect_holds"] = effect_holds(result)
    return result, Z, y


def models_table(rows_by_model: dict) -> str:
    """One row per model: the headline numbers at each model's own dev-chosen layer."""
    f = fmt_ci
    rows = []
    for name, r in rows_by_model.items():
        tvr, m8r = r["task_vectors"], r["m8"]
        m = tvr["mean"]
        rows.append([name, f"{tvr['layer_task_vector']} of {r['n_layers']}", f(m["regular"]), f(m["baseline"]),
                     f(m["task_vector"]), f(m["other_task"]), f(tvr["tv_minus_other_task"]),
                     f(m8r["transplant"]["capital_vector"]) if m8r else "–"])
    return markdown_table(["model", "task-vector layer (dev)", "regular (ICL)", "baseline (zero-shot)", "task vector",
                           "control: other task's vector", "task vector minus control (paired)",
                           "M8 capital transplant"], rows)


def run(model, size, *, seed=0, prefix="", out=None, quick=True, argv=None, label=None, compare=()):
    """Every measurement on ``model`` (and on each ``(label, model, prefix)`` of ``compare``, whose
    tables carry the label as prefix); returns the result dict (recorded when ``out`` is set)."""
    # opened first so that meta.wall_s covers the whole computation
    rec = Record(HERE, quick=quick, model=label, seeds=[seed], argv=argv, out=out) if out is not None else None
    result, Z, y = measure(model, size, seed=seed, prefix=prefix)
    others = {}
    for name, other, other_prefix in compare:
        others[name] = measure(other, size, seed=seed, prefix=other_prefix)
        print(f"{name}: effect holds {others[name][0]['effect_holds']}", flush=True)
    if others:
        result["compare"] = {name: r for name, (r, _, _) in others.items()}
    if rec is not None:
        for k, v in result.items():
            rec[k] = v
        tables(rec, result["task_vectors"], result["truncation"], result["m8"], result["tsne"])
        figures(rec, result["task_vectors"], result["truncation"], result["m8"], Z, y)
        for name, (r, Zo, yo) in others.items():
            tables(rec, r["task_vectors"], r["truncation"], r["m8"], r["tsne"], tag=f"{name}_")
            figures(rec, r["task_vectors"], r["truncation"], r["m8"], Zo, yo, tag=f"{name}_")
        if others:
            rec.table("models.md", models_table({label or "model": result, **{n: r for n, (r, _, _) in others.items()}}))
        rec.save()
        result["out"] = str(rec.out)
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="interpjax.load name (default smollm2-135m-instruct)")
    ap.add_argument("--out", type=Path, default=None, help="results root (default: this folder's results/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare", default=None,
                    help="comma-separated second models run the same way (full default: gemma-3-270m; quick: none)")
    args = ap.parse_args(argv)
    import interpjax

    argv = list(sys.argv if argv is None else ["run.py"] + list(argv))
    model = interpjax.load(args.model)
    if model.tokenizer is None:
        raise ValueError(f"model {args.model!r} has no tokenizer; the word tasks need one")
    size = QUICK if args.quick else FULL
    names = ("" if args.quick else "gemma-3-270m") if args.compare is None else args.compare
    compare = [(n, interpjax.load(n), PREFIX.get(n, "")) for n in names.split(",") if n and n != args.model]
    result = run(model, size, seed=args.seed, prefix=PREFIX.get(args.model, ""), out=args.out or HERE / "results",
                 quick=args.quick, argv=argv, label=model_label(args.model), compare=compare)
    if not args.quick and args.out is None:
        sync_readme(HERE / "README.md", Path(result["out"]))
    m = result["task_vectors"]["mean"]
    print(f"layer {result['task_vectors']['layer_task_vector']}: regular {fmt_ci(m['regular'])} baseline "
          f"{fmt_ci(m['baseline'])} task vector {fmt_ci(m['task_vector'])} other-task {fmt_ci(m['other_task'])}; "
          f"effect holds: {result['effect_holds']}")
    return result


if __name__ == "__main__":
    main()
