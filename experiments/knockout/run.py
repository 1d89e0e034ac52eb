"""Dissecting factual recall (Geva et al. 2023) on a decoder that memorised facts here.

A small decoder is trained from scratch on a fact world (two-token subjects, relations,
attributes: ``BOS f f s1 s2 IS r -> a``) until it recalls the facts; then:

- attention knockout: block the last position's attention to the subject tokens, to the other
  (non-subject) tokens, or to itself, for every window of k layers (one compiled vmapped sweep),
  and report the relative change in the probability of the recalled attribute;
- sublayer knockout: zero the MLP or attention output at the subject's last token per window;
- attribute rate: the share of the top-k vocabulary projection of the subject's last token, per
  layer, that are this subject's own attributes (k = number of relations; chance = k / vocab)
  and, for contrast, attributes of the prompt's relation for any subject.

    python experiments/knockout/run.py --quick      # CI smoke run
    python experiments/knockout/run.py              # full mode (README numbers)
    python experiments/knockout/run.py --model gpt2 [--prompts facts.json]   # a pretrained LM

With ``--model`` (a local folder or hub id) the same analysis runs on a pretrained LM over
subject/relation prompts (built-in world facts, or a JSON list of {"prompt", "subject"}); the
target is the model's own top-1 prediction, as in Geva et al.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from interpjax import Config, Model, forward
from interpjax.methods.knockout import attention_knockout, attribute_rate, sublayer_knockout
from interpjax.io.plots import save_figure
from interpjax.train import TrainConfig, train_in_memory
from interpjax.worlds import facts

QUICK = dict(n_subjects=40, n_relations=2, n_parts=12, layers=3, d_model=64, steps=600, batch=128, window=1)
FULL = dict(n_subjects=120, n_relations=3, n_parts=20, layers=4, d_model=96, steps=1500, batch=128, window=1)


def train(world, size, seed=0):
    """Train the recall model in memory; returns (cfg, params)."""
    D = size["d_model"]
    cfg = Config(vocab_size=world.vocab_size, d_model=D, n_layers=size["layers"], n_heads=4, d_head=D // 4,
                 d_mlp=4 * D, n_ctx=16, positions="learned", norm="layernorm", activation="gelu")
    tc = TrainConfig(lr=3e-3, weight_decay=0.01, warmup_steps=100, schedule="cosine", total_steps=size["steps"], seed=seed)
    rng = np.random.default_rng(seed)
    return cfg, train_in_memory(cfg, tc, lambda step: facts.training_batch(world, size["batch"], rng), size["steps"])


def all_facts(world, rng):
    s, r = np.meshgrid(np.arange(world.n_subjects), np.arange(world.n_relations), indexing="ij")
    return facts.prompts(world, s.ravel(), r.ravel(), rng), s.ravel(), r.ravel()


# (prompt, subject) pairs in the style of CounterFact, for pretrained LMs
WORLD_FACTS = [
    ("The Eiffel Tower is located in the city of", "The Eiffel Tower"),
    ("The Colosseum is located in the city of", "The Colosseum"),
    ("Barack Obama was born in the state of", "Barack Obama"),
    ("The mother tongue of Victor Hugo is", "Victor Hugo"),
    ("Toyota is a company headquartered in", "Toyota"),
    ("The capital of Japan is the city of", "Japan"),
    ("Steve Jobs was the co-founder of", "Steve Jobs"),
    ("Lionel Messi plays the sport of", "Lionel Messi"),
    ("The Great Wall is located in the country of", "The Great Wall"),
    ("Mount Everest is part of the mountain range called the", "Mount Everest"),
    ("The official language of Brazil is", "Brazil"),
    ("Microsoft was founded by Bill Gates and", "Microsoft"),
    ("The Statue of Liberty is located in the city of", "The Statue of Liberty"),
    ("Albert Einstein is famous for the theory of", "Albert Einstein"),
    ("The Amazon River flows through the country of", "The Amazon River"),
    ("William Shakespeare was born in the country of", "William Shakespeare"),
]


def subject_masks(model, prompts):
    """Left-padded tokens, mask and subject-token mask from character spans of the subjects."""
    tok = model.tokenizer
    if tok is None or not getattr(tok, "is_fast", False):
        raise ValueError("--model needs a fast tokenizer (character offsets locate the subject)")
    rows = []
    for text, subject in prompts:
        start = text.find(subject)
        if start < 0:
            raise ValueError(f"subject {subject!r} does not occur in prompt {text!r}")
        enc = tok(text, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        subj = [a < start + len(subject) and b > start and a < b for a, b in enc["offset_mapping"]]
        rows.append((ids, subj))
    T = max(len(i) for i, _ in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    tokens = np.full((len(rows), T), pad, np.int32)
    mask = np.zeros((len(rows), T), np.int32)
    subj_mask = np.zeros((len(rows), T), bool)
    for r, (ids, subj) in enumerate(rows):
        tokens[r, T - len(ids):], mask[r, T - len(ids):], subj_mask[r, T - len(ids):] = ids, 1, subj
    return tokens, mask, subj_mask


def pretrained(args, out):
    """The analysis on a pretrained LM: knockouts per window; attribute rate needs attribute sets,
    so it reports the rate of the model's own final prediction among the top-k per layer."""
    import interpjax

    model = interpjax.load(args.model)
    prompts = WORLD_FACTS if args.prompts is None else [(r["prompt"], r["subject"])
                                                        for r in json.loads(Path(args.prompts).read_text())]
    tokens, mask, subj = subject_masks(model, prompts)
    cfg = model.cfg
    k = args.window or max(1, cfg.n_layers // 4)
    result = {"model": args.model, "n_prompts": len(prompts), "window": k, "knockout": {}, "sublayer": {}}
    for kind in ("subject", "non_subject", "last"):
        r = attention_knockout(model, tokens, subj, attention_mask=mask, kind=kind, window=k)
        result["knockout"][kind] = r.relative_change.tolist()
    result["predictions"] = [model.to_string([t]) for t in r.answers]
    subj_last = np.array([np.flatnonzero(row)[-1] for row in subj])
    for sub in ("mlp", "attn"):
        r = sublayer_knockout(model, tokens, subj_last[:, None], attention_mask=mask, sublayer=sub, window=k)
        result["sublayer"][sub] = r.relative_change.tolist()
    sets = [{int(t)} for t in r.answers]
    result["attribute_rate_subject"] = attribute_rate(model, tokens, subj_last, sets, attention_mask=mask,
                                                      k=50).rate.tolist()
    result["attribute_label"] = "the model's final prediction"
    result["attribute_rate_k"], result["attribute_rate_chance"] = 50, 50 / cfg.vocab_size
    return result, cfg.n_layers


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default=None, help="a pretrained LM (folder or hub id) instead of the fact world")
    ap.add_argument("--prompts", default=None, help="JSON list of {prompt, subject} for --model")
    ap.add_argument("--window", type=int, default=None, help="layers per knockout window")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    size = QUICK if args.quick else FULL
    out = args.out / ("quick" if args.quick else "full")
    t0 = time.time()
    if args.model:
        out = args.out / Path(args.model).name
        out.mkdir(parents=True, exist_ok=True)
        result, n_layers = pretrained(args, out)
        return _finish(result, n_layers, out, t0)
    out.mkdir(parents=True, exist_ok=True)
    world = facts.make_world(size["n_subjects"], size["n_relations"], size["n_parts"], seed=args.seed)
    cfg, params = train(world, size, args.seed)
    model = Model(cfg=cfg, params=params, name="fact-world")
    train_s = time.time() - t0
    rng = np.random.default_rng(args.seed + 1)
    (tokens, subj, answers), sid, rel = all_facts(world, rng)
    logits = np.asarray(forward(cfg, params, tokens))[:, -1]
    recalled = logits.argmax(-1) == answers
    print(f"trained in {train_s:.0f}s: recalls {recalled.mean():.1%} of {len(answers)} facts")
    # analyse the facts the model recalls (as Geva et al. do), at most 256 prompts
    idx = np.flatnonzero(recalled)[:256]
    tokens, subj, answers, sid, rel = tokens[idx], subj[idx], answers[idx], sid[idx], rel[idx]
    k = args.window or size["window"]
    result = {"size": size, "train_seconds": train_s, "recall_accuracy": float(recalled.mean()), "n_prompts": len(idx),
              "window": k, "knockout": {}, "sublayer": {}}
    for kind in ("subject", "non_subject", "last"):
        r = attention_knockout(model, tokens, subj, kind=kind, window=k, answers=answers)
        result["knockout"][kind] = r.relative_change.tolist()
    subj_last = np.full(len(idx), tokens.shape[1] - 3)
    for sub in ("mlp", "attn"):
        r = sublayer_knockout(model, tokens, subj_last[:, None], sublayer=sub, window=k, answers=answers)
        result["sublayer"][sub] = r.relative_change.tolist()
    topk = world.n_relations
    own = [world.attribute_token(np.full(world.n_relations, s), np.arange(world.n_relations)) for s in sid]
    relation_set = [world.attribute_tokens(int(r)) for r in rel]
    result["attribute_rate_subject"] = attribute_rate(model, tokens, subj_last, own, k=topk).rate.tolist()
    result["attribute_rate_relation"] = attribute_rate(model, tokens, subj_last, relation_set, k=topk).rate.tolist()
    result["attribute_rate_k"] = topk
    result["attribute_rate_chance"] = topk / world.vocab_size
    return _finish(result, cfg.n_layers, out, t0)


def _finish(result, n_layers, out, t0):
    result["total_seconds"] = time.time() - t0
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out / "results.json")
    plot(result, n_layers, out / "knockout.png")
    for kind, v in result["knockout"].items():
        print(f"knockout last->{kind:11s} by window start: " + " ".join(f"{x:+.2f}" for x in v))
    for sub, v in result["sublayer"].items():
        print(f"zero {sub:4s} at subject's last token:     " + " ".join(f"{x:+.2f}" for x in v))
    print("attribute rate at the subject's last token by layer: "
          + " ".join(f"{x:.2f}" for x in result["attribute_rate_subject"]))
    return result


def plot(result, n_layers, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for kind, v in result["knockout"].items():
        axes[0].plot(v, marker="o", label=f"last -> {kind}")
    axes[0].set(title=f"attention knockout (window {result['window']})", xlabel="window start layer",
                ylabel="relative change in p(attribute)")
    for sub, v in result["sublayer"].items():
        axes[1].plot(v, marker="o", label=f"zero {sub} at subject")
    axes[1].set(title="sublayer knockout at subject's last token", xlabel="window start layer")
    axes[2].plot(result["attribute_rate_subject"], marker="o",
                 label=result.get("attribute_label", "the subject's own attributes"))
    if "attribute_rate_relation" in result:
        axes[2].plot(result["attribute_rate_relation"], marker="o", label="the relation's attributes (any subject)")
    axes[2].axhline(result["attribute_rate_chance"], color="grey", ls=":", label="chance")
    axes[2].set(title=f"attribute rate (top-{result['attribute_rate_k']}) at subject's last token", xlabel="layer")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
