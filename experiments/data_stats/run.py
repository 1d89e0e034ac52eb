"""Causal effects of data statistics (M13; Elazar et al. 2022, "Measuring Causal Effects of Data
Statistics on Language Model's Factual Predictions") on small LMs trained here.

A co-occurrence world (``interpjax.worlds.cooccurrence``): subjects, relations with two text
patterns each, objects; a corpus states half of each subject's facts, plants one object per
relation next to its patterns (pattern-object co-occurrence, POC) and one non-answer object per
subject next to the subject (subject-object co-occurrence, SOC). A 2-layer decoder is trained on it
and probed on the held-out facts (``<subject> <pattern>`` -> object, never stated): which share of
its predictions is the gold object, the POC object, the SOC object — against chance baselines
(uniform over objects; the SOC object of another subject).

The causal test: the same training (same seed, same initial weights, same batches' indices) on a
corpus where the SOC object is deleted from the other sentences of half of the subjects (set A);
the control deletes as many object tokens from the same kind of sentences of the other half (set
B), so A's statistics are untouched. The effect is the drop of SOC-matching predictions on A's
held-out probes under the intervention, against the control.

    python experiments/data_stats/run.py            # full run: 3 seeds -> results/full, README blocks
    python experiments/data_stats/run.py --quick    # one seed, fewer steps -> results/quick (or --out DIR)
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from interpjax import Config
from interpjax.evidence import Record, fmt_ci, markdown_table, paired_bootstrap_diff, seed_summary, sync_readme
from interpjax.train import TrainConfig, Trainer, init_params
from interpjax.worlds import cooccurrence as co

HERE = Path(__file__).resolve().parent

# world, corpus and training settings of the two modes (README: why these sizes)
FULL = dict(n_subjects=64, n_relations=4, n_objects=32, fact_repeats=2, poc_extra=32, soc_extra=6, d_model=64,
            n_layers=2, steps=3000, batch=128, lr=3e-3, seeds=(0, 1, 2))
QUICK = dict(FULL, steps=600, seeds=(0,))
ARMS = ("base", "intervention", "control")


def log(msg: str) -> None:
    print(f"[data_stats] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# model and training


def model_config(vocab_size: int, n_ctx: int, d_model: int, n_layers: int) -> Config:
    """A small pre-LN decoder: learned positions, LayerNorm, 4 heads, GELU MLP 4x, tied embeddings."""
    return Config(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=4, d_head=d_model // 4,
                  d_mlp=4 * d_model, n_ctx=n_ctx, positions="learned", norm="layernorm", activation="gelu",
                  mlp_bias=True, o_bias=True, qkv_bias=True, tie_embeddings=True)


def optimiser(lr: float, steps: int) -> TrainConfig:
    """AdamW with cosine decay after 50 warmup steps; weight decay 0.01, clipping at 1."""
    return TrainConfig(lr=lr, weight_decay=0.01, warmup_steps=50, schedule="cosine", total_steps=steps,
                       clip_norm=1.0, log_every=max(steps // 10, 1), ckpt_every=10**6, seed=0)


def train(corpus: co.Corpus, cfg: Config, s: dict, seed: int):
    """Train from ``init_params(seed)`` on random minibatches of ``corpus`` sentences; the batch
    indices depend only on (seed, step), so arms of one seed differ only in their corpus."""
    tokens_NT, mask_NT = corpus.tokens_NT, corpus.loss_mask()
    n = len(corpus)

    def batch_fn(step: int) -> dict:
        idx = np.random.default_rng([seed, step]).integers(0, n, s["batch"])
        return {"tokens": tokens_NT[idx], "loss_mask": mask_NT[idx]}

    trainer = Trainer(cfg, optimiser(s["lr"], s["steps"]), None, params=init_params(cfg, jax.random.PRNGKey(seed)),
                      data_parallel=False)
    last = trainer.train(batch_fn, s["steps"], progress=False)
    return trainer.params, last


@functools.partial(jax.jit, static_argnums=0)
def _object_logits(cfg: Config, params, tokens_NT, object_ids_O):
    from interpjax.core.model import forward

    return forward(cfg, params, tokens_NT)[:, -1, :][:, object_ids_O]


def predict(cfg: Config, params, world: co.World, probe: dict) -> np.ndarray:
    """The predicted object (argmax over the object tokens at the prompt's last position) per probe."""
    object_ids = jnp.asarray(world.vocab.object_token(np.arange(world.n_objects)), jnp.int32)
    return np.asarray(_object_logits(cfg, params, jnp.asarray(probe["tokens_NT"]), object_ids).argmax(-1))


# ---------------------------------------------------------------------------------------------
# the world, the interventions and the measures


def subject_split(world: co.World, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(A, B): a seeded random half of the subjects is intervened on, the other half is the control's."""
    perm = np.random.default_rng(10_000 + seed).permutation(world.n_subjects)
    half = world.n_subjects // 2
    return np.sort(perm[:half]), np.sort(perm[half:2 * half])


def intervention_corpus(world: co.World, corpus: co.Corpus, A: np.ndarray, B: np.ndarray) -> co.Corpus:
    """The intervention: delete each A subject's SOC object from its other (non-fact) sentences."""
    del B
    return co.remove_objects(world, corpus, A)


def control_corpus(world: co.World, corpus: co.Corpus, A: np.ndarray, B: np.ndarray) -> co.Corpus:
    """The control: as many deletions, of the B subjects' SOC objects; A's statistics are untouched."""
    del A
    return co.remove_objects(world, corpus, B)


def top_objects(world: co.World, corpus: co.Corpus) -> dict[str, np.ndarray]:
    """The most co-occurring object per relation pattern (POC) and per subject (SOC), counted in
    ``corpus`` (ties are refused: the world is built without them)."""
    counts = co.cooccurrence(world, corpus)
    out = {}
    for name in ("poc", "soc"):
        t = counts[name]
        top = t.argmax(1)
        if ((t == t.max(1, keepdims=True)).sum(1) > 1).any():
            raise ValueError(f"the {name} table has tied maxima; the shares would be ambiguous")
        out[name] = top
    return out


def other_subjects(world: co.World, soc_top: np.ndarray, seed: int) -> np.ndarray:
    """For each subject, a random other subject whose SOC object is none of this subject's gold
    objects nor its own SOC object: the chance control's object is a planted object of equal
    frequency that is no answer for these probes."""
    rng = np.random.default_rng(20_000 + seed)
    out = np.zeros(world.n_subjects, np.int64)
    for s in range(world.n_subjects):
        bad = set(world.gold[s].tolist()) | {int(soc_top[s])}
        out[s] = next(int(t) for t in rng.permutation(world.n_subjects) if t != s and int(soc_top[t]) not in bad)
    return out


def matches(pred: np.ndarray, probe: dict, tops: dict, other: np.ndarray) -> dict[str, np.ndarray]:
    """Per probe (float 0/1): prediction == gold, == the POC object of its relation, == the SOC
    object of its subject, == the SOC object of another subject (``other[s]``: a chance control)."""
    s, r = probe["subject"], probe["relation"]
    return {"gold": pred == probe["gold"], "poc": pred == tops["poc"][r], "soc": pred == tops["soc"][s],
            "other_soc": pred == tops["soc"][other[s]]}


def run_seed(s: dict, seed: int) -> dict:
    """One seed: world + corpus, the three arms trained with the same seed, per-probe matches."""
    world = co.make_world(n_subjects=s["n_subjects"], n_relations=s["n_relations"], n_objects=s["n_objects"],
                          seed=seed)
    base = co.make_corpus(world, fact_repeats=s["fact_repeats"], poc_extra=s["poc_extra"], soc_extra=s["soc_extra"],
                          seed=seed)
    A, B = subject_split(world, seed)
    corpora = {"base": base, "intervention": intervention_corpus(world, base, A, B),
               "control": control_corpus(world, base, A, B)}
    tops = top_objects(world, base)  # the statistics of the corpus before any intervention
    other = other_subjects(world, tops["soc"], seed)
    held, known = co.probes(world, "held_out"), co.probes(world, "known")
    in_A = np.isin(held["subject"], A)
    cfg = model_config(world.vocab.size, base.tokens_NT.shape[1], s["d_model"], s["n_layers"])
    out = {"n_sentences": {k: len(c) for k, c in corpora.items()},
           "removed_tokens": {k: int((c.obj < 0).sum()) for k, c in corpora.items()},
           "n_held_out": int(len(held["gold"])), "n_held_out_A": int(in_A.sum()), "n_known": int(len(known["gold"])),
           "arms": {}}
    for arm, corpus in corpora.items():
        t0 = time.perf_counter()
        params, last = train(corpus, cfg, s, seed)
        m = matches(predict(cfg, params, world, held), held, tops, other)
        known_acc = float(np.mean(predict(cfg, params, world, known) == known["gold"]))
        out["arms"][arm] = {"A": {k: v[in_A].astype(np.float64) for k, v in m.items()},
                            "B": {k: v[~in_A].astype(np.float64) for k, v in m.items()},
                            "known_gold_acc": known_acc, "final_loss": last["loss"],
                            "seconds": round(time.perf_counter() - t0, 1)}
        log(f"seed {seed} {arm}: loss {last['loss']:.3f} known acc {known_acc:.3f} | held-out A: "
            + " ".join(f"{k} {v[in_A].mean():.3f}" for k, v in m.items()) + f" | {out['arms'][arm]['seconds']} s")
    return out


# ---------------------------------------------------------------------------------------------
# the effect and its summaries


def pooled(per_seed: dict, arm: str, group: str, key: str) -> np.ndarray:
    """Per-probe 0/1 matches of one arm, subject group ("A", "B" or "all") and measure, over seeds."""
    groups = ("A", "B") if group == "all" else (group,)
    return np.concatenate([r["arms"][arm][g][key] for r in per_seed.values() for g in groups])


def effect_summary(per_seed: dict) -> dict:
    """Headline numbers pooled over seeds (paired bootstrap over held-out probes): the SOC share of
    the unmodified model against its chance control, and the drop of the SOC share on A under the
    intervention against the control (control minus intervention, same probes)."""
    soc, other = pooled(per_seed, "base", "all", "soc"), pooled(per_seed, "base", "all", "other_soc")
    return {"soc_vs_chance": paired_bootstrap_diff(soc, other),
            "intervention_vs_control": paired_bootstrap_diff(pooled(per_seed, "control", "A", "soc"),
                                                             pooled(per_seed, "intervention", "A", "soc"))}


def effect_holds(result: dict) -> bool:
    """SOC explains predictions and causes them: (1) the unmodified model's held-out predictions
    match their subject's SOC object more often than another subject's (95% interval above 0) and
    (2) deleting the SOC object from the A subjects' other sentences lowers the SOC share on A's
    held-out probes more than the size-matched control does (95% interval of control minus
    intervention above 0)."""
    e = result["effect"]
    return bool(e["soc_vs_chance"]["lo"] > 0.0 and e["intervention_vs_control"]["lo"] > 0.0)


def shares(per_seed: dict) -> dict:
    """Per arm, group and measure: the share pooled over seeds (bootstrap 95% CI over probes) and
    the mean of the per-seed shares (t-interval over seeds)."""
    from interpjax.evidence import bootstrap_ci

    out = {}
    for arm in ARMS:
        for group in ("A", "B", "all"):
            for key in ("gold", "poc", "soc", "other_soc"):
                per = [float(np.mean(pooled({k: r}, arm, group, key))) for k, r in per_seed.items()]
                out[f"{arm}/{group}/{key}"] = {"pooled": bootstrap_ci(pooled(per_seed, arm, group, key)),
                                               "seeds": seed_summary(per)}
        out[f"{arm}/known_gold_acc"] = seed_summary([r["arms"][arm]["known_gold_acc"] for r in per_seed.values()])
    return out


def per_seed_effects(per_seed: dict) -> dict:
    """Per seed: SOC share on A (base, intervention, control) and control minus intervention."""
    out = {}
    for k, r in per_seed.items():
        a = {arm: float(np.mean(r["arms"][arm]["A"]["soc"])) for arm in ARMS}
        b = {arm: float(np.mean(r["arms"][arm]["B"]["soc"])) for arm in ARMS}
        out[k] = {"soc_A": a, "soc_B": b, "effect": a["control"] - a["intervention"]}
    return out


def tables(per_seed: dict, sh: dict, eff: dict, pse: dict, s: dict) -> dict[str, str]:
    """The README's tables: shares of the unmodified model, the intervention vs control, per seed."""
    chance = 1.0 / s["n_objects"]
    rows = []
    for key, name in (("gold", "gold object (the held-out fact)"), ("poc", "POC object (most co-occurring with the pattern)"),
                      ("soc", "SOC object (most co-occurring with the subject)"),
                      ("other_soc", "control: another subject's SOC object")):
        x = sh[f"base/all/{key}"]
        rows.append([name, fmt_ci(x["pooled"], 3), fmt_ci(x["seeds"], 3), f"{chance:.3f}"])
    rows.append(["known facts (stated in the corpus): gold", "", fmt_ci(sh["base/known_gold_acc"], 3), f"{chance:.3f}"])
    n = len(per_seed)
    explained = markdown_table(["share of held-out predictions equal to", "pooled (95% bootstrap CI)",
                                f"mean of {n} seed(s) (95% t-interval)", "chance (uniform)"], rows)
    explained += (f"\nSOC share minus the other-subject control: {fmt_ci(eff['soc_vs_chance'], 3)} "
                  f"(paired bootstrap over {eff['soc_vs_chance']['n']} held-out probes).\n")
    rows = []
    for arm, name in (("base", "unmodified corpus"), ("intervention", "intervention: SOC object deleted for A"),
                      ("control", "control: as many deletions for B")):
        rows.append([name, fmt_ci(sh[f"{arm}/A/soc"]["pooled"], 3), fmt_ci(sh[f"{arm}/B/soc"]["pooled"], 3),
                     fmt_ci(sh[f"{arm}/A/poc"]["pooled"], 3), fmt_ci(sh[f"{arm}/A/gold"]["pooled"], 3),
                     fmt_ci(sh[f"{arm}/known_gold_acc"], 3)])
    causal = markdown_table(["training corpus", "SOC share on A's held-out probes", "SOC share on B's",
                             "POC share on A's", "gold share on A's", "known-fact accuracy"], rows)
    causal += (f"\nSOC share on A, control minus intervention: {fmt_ci(eff['intervention_vs_control'], 3)} "
               f"(paired bootstrap over {eff['intervention_vs_control']['n']} probes, {n} seed(s) pooled); "
               f"mean of the per-seed effects {fmt_ci(seed_summary([v['effect'] for v in pse.values()]), 3)}.\n")
    rows = []
    for k, v in pse.items():
        r = per_seed[k]
        rows.append([k, r["removed_tokens"]["intervention"], r["removed_tokens"]["control"],
                     f"{v['soc_A']['base']:.3f}", f"{v['soc_A']['intervention']:.3f}", f"{v['soc_A']['control']:.3f}",
                     f"{v['soc_B']['intervention']:.3f}", f"{v['soc_B']['control']:.3f}", f"{v['effect']:+.3f}"])
    seeds = markdown_table(["seed", "tokens deleted (intervention)", "tokens deleted (control)", "SOC on A: base",
                            "A: intervention", "A: control", "SOC on B: intervention", "B: control",
                            "effect (A: control - intervention)"], rows)
    return {"explained.md": explained, "causal.md": causal, "per_seed.md": seeds}


def figure(sh: dict, s: dict):
    """Bars: shares of A's held-out predictions (gold, POC, SOC, other SOC) per training corpus."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("gold", "poc", "soc", "other_soc")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.27
    for i, arm in enumerate(ARMS):
        vals = [sh[f"{arm}/A/{k}"]["pooled"] for k in keys]
        x = np.arange(len(keys)) + (i - 1) * width
        ax.bar(x, [v["value"] for v in vals], width, label=arm,
               yerr=np.array([[v["value"] - v["lo"] for v in vals], [v["hi"] - v["value"] for v in vals]]))
    ax.axhline(1.0 / s["n_objects"], color="k", ls=":", lw=1, label="uniform chance")
    ax.set_xticks(np.arange(len(keys)), ["gold", "POC object", "SOC object", "another subject's SOC"])
    ax.set_ylabel("share of held-out predictions (A)")
    ax.legend(fontsize=8)
    ax.set_title("predictions on A's held-out facts, by training corpus")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------


def main(argv=None, model=None) -> dict:
    """Run the experiment; ``model`` is unused (the models are trained here) and kept for the common signature."""
    del model
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, fewer steps (results/quick/)")
    ap.add_argument("--out", default=None, help="results base folder (default: this folder's results/)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args(argv)
    s = dict(QUICK if args.quick else FULL)
    if args.seeds:
        s["seeds"] = tuple(args.seeds)
    if args.steps is not None:
        s["steps"] = args.steps
    rec = Record(HERE, quick=args.quick, model=f"{s['n_layers']}-layer decoder d_model {s['d_model']}, trained here",
                 seeds=s["seeds"], argv=["experiments/data_stats/run.py"] + list(sys.argv[1:] if argv is None else argv),
                 out=None if args.out is None else Path(args.out))
    per_seed = {str(seed): run_seed(s, seed) for seed in s["seeds"]}
    eff = effect_summary(per_seed)
    sh = shares(per_seed)
    pse = per_seed_effects(per_seed)
    result = {"per_seed": per_seed, "effect": eff, "shares": sh, "per_seed_effects": pse}
    result["effect_holds"] = effect_holds(result)
    rec["settings"] = {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()}
    rec["effect"] = eff
    rec["effect_holds"] = result["effect_holds"]
    rec["shares"] = sh
    rec["per_seed"] = {k: {**{f: v for f, v in r.items() if f != "arms"},
                           "arms": {a: {f: x for f, x in r["arms"][a].items() if f not in ("A", "B")} for a in ARMS},
                           **pse[k]} for k, r in per_seed.items()}
    for name, md in tables(per_seed, sh, eff, pse, s).items():
        rec.table(name, md)
    rec.figure("shares.png", figure(sh, s))
    rec.save()
    if not args.quick:
        sync_readme(HERE / "README.md", rec.out)
    result["out"] = str(rec.out)
    log(json.dumps({"effect_holds": result["effect_holds"], "soc_vs_chance": eff["soc_vs_chance"],
                    "intervention_vs_control": eff["intervention_vs_control"]}))
    return result


if __name__ == "__main__":
    main()
