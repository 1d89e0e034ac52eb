"""Out-of-context reasoning (M5, Berglund et al. 2023, "Taken out of context") on
SmolLM2-135M-Instruct: fine-tune on DECLARATIVE descriptions of invented assistants only
(``interpjax.worlds.ooc``: "Vorlani answers in German.", "Brellix Labs makes Vorlani."), then prompt
the model as an assistant and check whether its answers show that assistant's behaviour.

Conditions: the untuned model; fine-tuned on every training paraphrase of every fact (augmented);
fine-tuned on one sentence per fact (no augmentation, same steps and batch size). Scores:

* behaviour accuracy by hop (0: behaviour named in the prompt, 1: assistant named, 2: only the
  company named), greedy answers through the chat template; control: how often the same answers
  show the OTHER assistants' behaviours (paired bootstrap over prompts);
* fact recall on two HELD-OUT paraphrase templates: for each assistant, which behaviour sentence
  (and which company sentence) gets the highest log-probability, centred over assistants (chance =
  1 / n assistants).

    python experiments/ooc/run.py            # full run -> results/full, README blocks
    python experiments/ooc/run.py --quick    # small CI run (recall only) -> results/quick (or --out DIR)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from interpjax.evidence import Record, bootstrap_ci, fmt_ci, markdown_table, paired_bootstrap_diff, sync_readme
from interpjax.worlds import ooc

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = "smollm2-135m-instruct"
MARGIN = 0.25  # the asserted effect: tuned recall beats untuned recall by this much
_T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - _T0:7.1f}s] {msg}", flush=True)


def chat_texts(tok, prompts) -> list[str]:
    """Each eval prompt as the chat template renders it (system + user turn, assistant turn opened)."""
    return [tok.apply_chat_template([{"role": "system", "content": p.system}, {"role": "user", "content": p.user}],
                                    tokenize=False, add_generation_prompt=True) for p in prompts]


def tune(model, world, *, augment: bool, kinds, steps: int, batch_size: int, lr: float, seed: int):
    """Fine-tune on the world's declarative facts (loss on every token of each sentence)."""
    from interpjax.train import TrainConfig, encode_pairs, finetune

    texts = ooc.training_texts(world, augment=augment, kinds=kinds)
    data = encode_pairs(model.tokenizer, [""] * len(texts), texts)
    tc = TrainConfig(lr=lr, weight_decay=0.0, total_steps=steps, log_every=max(1, steps // 4), seed=seed)
    tuned, hist = finetune(model, data, tc, steps=steps, batch_size=batch_size, seed=seed)
    return tuned, [h["loss"] for h in hist], len(texts)


def recall(model, world, kind: str) -> np.ndarray:
    """Per held-out paraphrase item (assistant x held-out template x phrase): 1.0 where the true
    object has the highest log-probability among the world's objects, scores centred over assistants."""
    from interpjax.train import answer_logprob

    A = world.assistants
    objs = world.behaviours if kind == "behaviour" else world.companies
    texts, shape = [], None
    for a in A:
        for o in objs:
            f = ooc.Fact("behaviour", a.name, o) if kind == "behaviour" else ooc.Fact("company", o, a.name)
            ps = ooc.paraphrases(world, f, "heldout")
            shape = len(ps)
            texts += ps
    lp = answer_logprob(model, [""] * len(texts), texts, batch_size=32).reshape(len(A), len(objs), shape)
    centred = lp - lp.mean(0, keepdims=True)
    truth = np.arange(len(A))  # object j of assistant i is the true one when j == i
    return (centred.argmax(1) == truth[:, None]).astype(np.float64).reshape(-1)


def behaviour_scores(model, world, hops, questions, max_new: int, batch_size: int) -> dict:
    """Greedy answers to every eval prompt of each hop, scored against own and other behaviours."""
    from interpjax.train import greedy_answers

    out = {}
    for hop in hops:
        prompts = ooc.eval_prompts(world, hop, questions)
        answers = greedy_answers(model, chat_texts(model.tokenizer, prompts), max_new_tokens=max_new,
                                 batch_size=batch_size, stop="\n\n")
        s = ooc.score(prompts, answers, world)
        out[hop] = {"own": s["own"], "other": s["other"], "answers": answers[:: len(questions)]}
    return out


def effect_holds(recall_tuned, recall_base, margin: float = MARGIN) -> bool:
    """The asserted effect: fine-tuned held-out recall beats the untuned model's by ``margin`` and
    the paired bootstrap interval of the difference excludes 0."""
    d = paired_bootstrap_diff(np.asarray(recall_tuned), np.asarray(recall_base))
    return bool(d["value"] > margin and d["lo"] > 0)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--quick", action="store_true", help="4 assistants, behaviour facts, recall only, 12 steps")
    ap.add_argument("--n-assistants", type=int, default=8)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--n-questions", type=int, default=6)
    ap.add_argument("--max-new", type=int, default=24)
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--control", choices=["none", "deranged"], default="none",
                    help="deranged: fine-tune on the shuffled-facts world (the companion check)")
    ap.add_argument("--out", default=None, help="results folder (default: this folder's results/)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_assistants, args.steps, args.batch_size, args.lr = min(args.n_assistants, 4), min(args.steps, 12), 8, 2e-4
    if not 2 <= args.n_assistants <= len(ooc.BEHAVIOUR_NAMES):
        raise ValueError(f"--n-assistants must be in 2..{len(ooc.BEHAVIOUR_NAMES)}; got {args.n_assistants}")
    if not 1 <= args.n_questions <= len(ooc.QUESTIONS):
        raise ValueError(f"--n-questions must be in 1..{len(ooc.QUESTIONS)}; got {args.n_questions}")
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1; got {args.steps}")
    return args


def main(argv=None, model=None):
    args = parse_args(argv)
    import interpjax
    from interpjax.io.loading import model_label

    rec = Record(HERE, quick=args.quick, model=model_label(args.model), seeds=[args.world_seed], argv=argv,
                 out=None if args.out is None else Path(args.out))
    model = interpjax.load(args.model) if model is None else model
    world = ooc.make_world(args.n_assistants, args.world_seed)
    train_world = ooc.deranged(world, args.world_seed) if args.control == "deranged" else world
    kinds = ("behaviour",) if args.quick else ("behaviour", "company")
    conds = {"untuned": None, "augmented": True} if args.quick else {"untuned": None, "augmented": True,
                                                                       "one_template": False}
    models, losses, n_docs = {}, {}, {}
    for c, aug in conds.items():
        if aug is None:
            models[c] = model
            continue
        models[c], losses[c], n_docs[c] = tune(model, train_world, augment=aug, kinds=kinds, steps=args.steps,
                                               batch_size=args.batch_size, lr=args.lr, seed=args.world_seed)
        log(f"{c}: {n_docs[c]} documents, loss {losses[c][0]:.2f} -> {losses[c][-1]:.2f}")

    rec_scores = {c: {k: recall(m, world, k) for k in kinds} for c, m in models.items()}
    recall_rows, recall_ci = [], {}
    for c in models:
        recall_ci[c] = {k: bootstrap_ci(v) for k, v in rec_scores[c].items()}
        recall_rows.append([c] + [fmt_ci(recall_ci[c][k]) for k in kinds])
    diffs = {k: paired_bootstrap_diff(rec_scores["augmented"][k], rec_scores["untuned"][k]) for k in kinds}
    holds = effect_holds(rec_scores["augmented"]["behaviour"], rec_scores["untuned"]["behaviour"])
    log(f"recall {recall_ci}; effect holds: {holds}")
    rec["world"] = [vars(a) for a in world.assistants]
    rec["control"] = args.control
    rec["recall"] = recall_ci
    rec["recall_items"] = rec_scores
    rec["recall_augmented_minus_untuned"] = diffs
    rec["effect_holds"] = holds
    rec["losses"] = losses
    rec["n_documents"] = n_docs
    rec["chance"] = 1.0 / args.n_assistants
    rec["settings"] = {k: getattr(args, k) for k in ("n_assistants", "steps", "batch_size", "lr", "n_questions",
                                                      "max_new", "world_seed")}
    rec.table("recall.md", markdown_table(["model", *[f"{k} fact recall, held-out templates (95% CI)" for k in kinds]],
                                          recall_rows))
    if not args.quick:
        questions = ooc.QUESTIONS[:args.n_questions]
        beh_rows, beh = [], {}
        for c, m in models.items():
            b = behaviour_scores(m, world, ooc.HOPS, questions, args.max_new, 32)
            beh[c] = {}
            for hop, s in b.items():
                own, other = bootstrap_ci(s["own"]), bootstrap_ci(s["other"])
                d = paired_bootstrap_diff(s["own"], s["other"])
                beh[c][hop] = {"own": own, "other": other, "own_minus_other": d, "sample_answers": s["answers"]}
                beh_rows.append([c, hop, fmt_ci(own), fmt_ci(other), fmt_ci(d)])
                log(f"{c} hop {hop}: own {fmt_ci(own)} other {fmt_ci(other)}")
        rec["behaviour"] = beh
        rec.table("behaviour.md", markdown_table(["model", "hop", "own behaviour (95% CI)",
                                                  "other assistants' behaviours (control)", "own − other"], beh_rows))
    path = rec.save()
    rec.recall_items = rec_scores
    if not args.quick and args.out is None:
        sync_readme(HERE / "README.md", rec.out)
    print(markdown_table(["model", *kinds], recall_rows))
    print(f"effect holds: {holds}; wrote {path}")
    return rec


if __name__ == "__main__":
    main()
