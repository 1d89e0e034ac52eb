"""Knowledge neurons (Dai et al. 2022): integrated gradients over MLP neurons (``mlp_post``, every
layer) find the neurons behind a fact; suppressing (x0) or amplifying (x2) them should move the
answer's probability much more than the same number of random neurons (matched per layer).

Facts are TinyStories-style cloze prompts the default model (llama2c-stories260k) completes; each
fact has several paraphrase prompts, and only prompts where the model gives the answer's first
token probability >= --min-prob are used.

    python experiments/knowledge_neurons/run.py --quick          # CI smoke run
    python experiments/knowledge_neurons/run.py                  # full mode (all facts)
    python experiments/knowledge_neurons/run.py --model gpt2     # any HF id (needs a hub connection)

Writes results.json (atomically) to ``--out``/{quick,full}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import numpy as np

import interpjax
from interpjax.methods.attribution import (answer_probs, integrated_gradients, knowledge_neurons,
                                           matched_random_neurons, neuron_effect)
from interpjax.io.loading import model_label

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_MODEL = Path(os.environ.get("INTERPJAX_MODELS", REPO.parent / "shared" / "models")) / "llama2c-stories260k"

# answer word -> paraphrase prompts (the answer is the first token of " " + word)
FACTS = {
    "park": ["Tom and Lily went to the", "Lily and her mom went to the", "They played in the",
             "One day, Tim went to the", "They ran to the", "After lunch, the kids went to the"],
    "sky": ["The bird flew up in the", "The kite flew high in the", "The sun was shining in the",
            "She looked up at the"],
    "friends": ["They became best", "They were good", "Tom and Sam were best"],
    "day": ["One", "One sunny", "It was a sunny"],
    "time": ["Once upon a", "once upon a", "One upon a"],
    "mom": ["Tim said to his", "He went home to his", "She hugged her"],
    "ball": ["Tim kicked the", "The boy threw the", "The dog ran after the"],
}
QUICK_FACTS = ("park", "sky", "friends")


def answer_token(model, prompt: str, answer: str) -> int:
    """The first token of " answer" after ``prompt`` (the prompt must tokenize as a prefix)."""
    tok = model.tokenizer
    a = tok(prompt)["input_ids"]
    b = tok(prompt + " " + answer)["input_ids"]
    if b[:len(a)] != a or len(b) == len(a):
        raise ValueError(f"{prompt!r} + {answer!r}: the prompt's tokens are not a prefix of the full text's; "
                         "pick a prompt/answer split on a token boundary")
    return int(b[len(a)])


def mean_effect(model, tokens, mask, answers, neurons, factor):
    return float(np.mean(neuron_effect(model, tokens, answers, neurons, factor, attention_mask=mask)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="local checkpoint folder or HF id")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--steps", type=int, default=None, help="IG path steps (default 20; quick 8)")
    ap.add_argument("--rule", default="trapezoid", choices=("riemann", "trapezoid"))
    ap.add_argument("--threshold", type=float, default=0.2, help="coarse filter: x max attribution per prompt")
    ap.add_argument("--share", type=float, default=0.5, help="keep neurons shared by this fraction of prompts")
    ap.add_argument("--min-prob", type=float, default=0.05, help="use prompts whose answer prob is at least this")
    ap.add_argument("--n-random", type=int, default=None, help="random-neuron draws (default 20; quick 5)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    steps = args.steps or (8 if args.quick else 20)
    n_random = args.n_random or (5 if args.quick else 20)
    out = args.out / mode
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    model = interpjax.load(args.model)
    cfg = model.cfg
    facts = {k: v for k, v in FACTS.items() if not args.quick or k in QUICK_FACTS}
    pairs = [(w, p, answer_token(model, p, w)) for w, ps in facts.items() for p in ps]
    tokens, mask = model.to_tokens([p for _, p, _ in pairs])
    probs = answer_probs(model, tokens, [a for _, _, a in pairs], attention_mask=mask)
    kept = {}
    for word in facts:
        idx = [i for i, (w, _, _) in enumerate(pairs) if w == word]
        use = [i for i in idx if probs[i] >= args.min_prob]
        if len(use) >= 2:
            kept[word] = ([pairs[i][1] for i in use], [pairs[i][2] for i in use], probs[use])
        print(f"{word}: answer prob per prompt {np.round(probs[idx], 3).tolist()} -> {len(use)} kept", flush=True)
    if not kept:
        raise SystemExit("no fact has >= 2 prompts the model answers; lower --min-prob or pick other facts")

    # one left-padded batch of every kept prompt: one compile for IG and one for the edited runs
    owner = np.array([w for w, (ps, _, _) in kept.items() for _ in ps])
    all_prompts = [p for ps, _, _ in kept.values() for p in ps]
    all_ans = np.array([a for _, as_, _ in kept.values() for a in as_])
    tokens, mask = model.to_tokens(all_prompts)
    ig = integrated_gradients(model, tokens, all_ans, attention_mask=mask, steps=steps, rule=args.rule)
    gap = ig.completeness_gap()
    print(f"IG over {len(all_prompts)} prompts x {cfg.n_layers} layers x {steps} steps: {time.time() - t0:.0f} s",
          flush=True)

    def effects(neurons, factor):
        return neuron_effect(model, tokens, all_ans, neurons, factor, attention_mask=mask)

    rng = np.random.default_rng(args.seed)
    rows = []
    for word, (prompts, ans, probs) in kept.items():
        own = owner == word
        kn = knowledge_neurons(ig.attributions[own], args.threshold, args.share)
        row = {"fact": word, "prompts": prompts, "answer_token": model.tokenizer.convert_ids_to_tokens(int(ans[0])),
               "answer_prob": probs.tolist(), "n_neurons": int(len(kn)), "neurons": kn.tolist(),
               "completeness_gap_max": float(gap[own].max()), "completeness_gap_mean": float(gap[own].mean())}
        if len(kn):
            for label, factor in (("suppress", 0.0), ("amplify", 2.0)):
                eff = effects(kn, factor)
                row[f"{label}_kn"] = float(eff[own].mean())
                if (~own).any():
                    row[f"{label}_other_facts"] = float(eff[~own].mean())
                draws = [float(effects(matched_random_neurons(model, kn, rng), factor)[own].mean())
                         for _ in range(n_random)]
                row[f"{label}_random"] = float(np.mean(draws))
                row[f"{label}_random_std"] = float(np.std(draws))
        rows.append(row)
        print({k: v for k, v in row.items() if k not in ("prompts", "neurons")}, flush=True)

    with_kn = [r for r in rows if r["n_neurons"]]
    summary = {key: float(np.mean([r[key] for r in with_kn])) for key in
               ("suppress_kn", "suppress_random", "amplify_kn", "amplify_random")} if with_kn else {}
    for key in ("suppress_other_facts", "amplify_other_facts"):
        if with_kn and all(key in r for r in with_kn):
            summary[key] = float(np.mean([r[key] for r in with_kn]))
    # a local folder is recorded by its name only (no machine paths in results)
    model_name = model_label(args.model)  # a folder's name, never its path
    res = {"mode": mode, "model": model_name, "site": "mlp_post", "steps": steps, "rule": args.rule,
           "threshold": args.threshold, "share": args.share, "n_random": n_random, "facts": rows,
           "summary": summary, "wall_seconds": time.time() - t0, "jax_backend": jax.default_backend()}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, out / "results.json")
    print("summary (mean relative change of the answer probability):", json.dumps(summary, indent=1))
    print(f"wrote {out}/results.json in {res['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
