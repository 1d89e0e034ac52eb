"""Concepts as sparse mixtures of vocabulary embeddings (M7, Chefer et al. 2023, "The Hidden Language
of Diffusion Models", Conceptor), ported from a text-to-image model to SmolLM2-135M-Instruct.

For each concept word (one token, e.g. " tiger") a non-negative, L1-sparse mixture of candidate
vocabulary rows is fitted (``interpjax.methods.conceptor.fit``) so that, put in the word's place, it
reproduces the model's next-token distributions on prompts with the word (KL, from the word's
position on). The word's case/space variants are never candidates. Fitted on 8 of 24 template
prompts per concept, reported on the other 16, for 3 seeds (prompt split, init noise, controls).

Compared on held-out prompts: the learned mixture, its 10 largest constituents alone, the single
nearest token by cosine (the word's variants excluded), random mixtures with the same nonzero weights
on as many random candidates and the same row norm (3 draws per seed), and the word's own row
(KL 0). Edits: the top constituent's weight x3 moves the outputs towards the outputs with that
token in the word's place, against adding the same amount to a random small coefficient; setting
it to 0 moves them away from the concept, against zeroing a random small coefficient.

    python experiments/conceptor/run.py            # full run -> results/full, README blocks
    python experiments/conceptor/run.py --quick    # CI run -> results/quick (or --out DIR)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

from interpjax.evidence import (Record, bootstrap_ci, fmt_ci, markdown_table, paired_bootstrap_diff,  # noqa: E402
                                seed_summary, sync_readme)

DEFAULT_MODEL = "smollm2-135m-instruct"
CONCEPTS = (" king", " doctor", " tiger", " piano", " winter", " ocean")
QUICK_CONCEPTS = (" tiger", " piano")
TEMPLATES = (
    "The {w} was", "The {w} is", "I saw a {w} and", "She told me about the {w} and", "There is a {w} in",
    "We talked about the {w} for", "He dreamed of the {w}.", "This story is about a {w} who",
    "My favourite thing is the {w} because", "They wrote a poem about the {w}:", "Nobody expected the {w} to",
    "A picture of the {w} shows", "Facts about the {w}:", "The old {w} looked", "Think of a {w}. It",
    "Look at the {w}! It", "Here is the {w}, which", "Yesterday the {w}", "In the book, the {w}",
    "I love the {w} because", "Everyone knows that a {w}", "Tell me about the {w}.", "The famous {w} of",
    "Without the {w}, we",
)
SEEDS = (0, 1, 2)
N_RANDOM = 3  # random-mixture draws per seed
TOP_N = 10  # constituents shown / kept in the truncated mixture
FULL = dict(n_train=8, steps=60, n_cos=384, n_pred=128)
QUICK = dict(n_train=8, steps=30, n_cos=192, n_pred=64)
_T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - _T0:7.1f}s] {msg}", flush=True)


def split_prompts(n: int, n_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) prompt indices: a seeded permutation of ``n`` prompts."""
    if not 1 <= n_train < n:
        raise ValueError(f"n_train must be in 1..{n - 1} for {n} prompts; got {n_train}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def small_coefficient(w_C: np.ndarray, avoid: int, rng) -> int:
    """A random nonzero coefficient from the smaller half of the nonzero weights (never ``avoid``);
    the top coefficient when it is the only one."""
    nz = [i for i in np.flatnonzero(w_C > 0) if i != avoid]
    if not nz:
        return int(avoid)
    nz = sorted(nz, key=lambda i: w_C[i])
    return int(rng.choice(nz[:max(1, len(nz) // 2)]))


def heldout_kls(CT, model, held, target, cand, w, nearest_K, seed: int) -> dict:
    """Per held-out prompt [K, B] KL of each condition: the learned mixture, its TOP_N largest
    constituents, the random mixtures (N_RANDOM draws), the nearest token and the word's own row."""
    E = np.asarray(model.params["embed"]["tok"], np.float32)
    out = {"learned": CT.kl_to(model, held, target, CT.mixture_rows(model, cand, w))}
    keep = np.zeros_like(w)
    for k in range(w.shape[0]):
        top = np.argsort(-w[k], kind="stable")[:TOP_N]
        keep[k, top] = w[k, top]
    out[f"top{TOP_N}"] = CT.kl_to(model, held, target, CT.mixture_rows(model, cand, keep))
    for j in range(N_RANDOM):
        rc, rw = CT.random_mixture(model, cand, w, seed=1000 * seed + j)
        out[f"random_{j}"] = CT.kl_to(model, held, target, CT.mixture_rows(model, rc, rw))
    out["nearest"] = CT.kl_to(model, held, target, E[nearest_K])
    out["own word"] = CT.kl_to(model, held, target, E[held.word_K])
    return out


def effect_summary(kls: dict) -> dict:
    """Paired bootstrap over held-out prompts (all concepts pooled) of KL(random_j) − KL(learned)
    per random draw, and of KL(nearest) − KL(learned)."""
    learned = kls["learned"].ravel()
    out = {f"random_{j}_minus_learned": paired_bootstrap_diff(kls[f"random_{j}"].ravel(), learned)
           for j in range(N_RANDOM)}
    out["nearest_minus_learned"] = paired_bootstrap_diff(kls["nearest"].ravel(), learned)
    return out


def effect_holds(eff: dict) -> bool:
    """The asserted effect: the learned mixture reproduces the concept better (lower held-out KL)
    than every norm- and sparsity-matched random mixture, each paired 95% interval above 0."""
    return all(eff[f"random_{j}_minus_learned"]["lo"] > 0 for j in range(N_RANDOM))


def edit_effects(CT, model, held, target, cand, w, seed: int) -> dict:
    """Per held-out prompt [K, B]: ΔKL to the top constituent's own outputs (the word replaced by
    that token) when its weight is tripled, and when the same amount is added to a random small
    coefficient; ΔKL to the concept's outputs when the top weight is zeroed, and when a random small
    coefficient is zeroed."""
    rng = np.random.default_rng(10_000 + seed)
    E = np.asarray(model.params["embed"]["tok"], np.float32)
    K = w.shape[0]
    top = np.argmax(w, 1)
    small = np.array([small_coefficient(w[k], top[k], rng) for k in range(K)])
    tok_top = cand[np.arange(K), top]
    target_top = CT.logprobs_with(model, held, E[tok_top])
    base_rows = CT.mixture_rows(model, cand, w)
    kl_top_base = CT.kl_to(model, held, target_top, base_rows)
    kl_base = CT.kl_to(model, held, target, base_rows)
    boost_top, boost_small, zero_top, zero_small = (w.copy() for _ in range(4))
    for k in range(K):
        delta = 2.0 * float(w[k, top[k]])
        boost_top[k] = CT.edit(w, k, int(top[k]), scale=3.0)[k]
        boost_small[k] = CT.edit(w, k, int(small[k]), add=delta)[k]
        zero_top[k] = CT.edit(w, k, int(top[k]), scale=0.0)[k]
        zero_small[k] = CT.edit(w, k, int(small[k]), scale=0.0)[k]
    d = {
        "boost_top": CT.kl_to(model, held, target_top, CT.mixture_rows(model, cand, boost_top)) - kl_top_base,
        "boost_small": CT.kl_to(model, held, target_top, CT.mixture_rows(model, cand, boost_small)) - kl_top_base,
        "zero_top": CT.kl_to(model, held, target, CT.mixture_rows(model, cand, zero_top)) - kl_base,
        "zero_small": CT.kl_to(model, held, target, CT.mixture_rows(model, cand, zero_small)) - kl_base,
    }
    return {"delta": d, "top_token": tok_top, "small_token": cand[np.arange(K), small],
            "top_weight": w[np.arange(K), top], "small_weight": w[np.arange(K), small]}


def edit_summary(ed: dict) -> dict:
    d = {k: v.ravel() for k, v in ed["delta"].items()}
    return {"boost_top": bootstrap_ci(d["boost_top"]), "boost_small": bootstrap_ci(d["boost_small"]),
            "boost_top_minus_small": paired_bootstrap_diff(d["boost_top"], d["boost_small"]),
            "zero_top": bootstrap_ci(d["zero_top"]), "zero_small": bootstrap_ci(d["zero_small"]),
            "zero_top_minus_small": paired_bootstrap_diff(d["zero_top"], d["zero_small"])}


def edit_holds(es: dict) -> bool:
    """Tripling the top weight moves outputs towards that token's (ΔKL < 0) more than adding the same
    amount to a small coefficient, and zeroing it moves them away from the concept more than zeroing
    a small coefficient (paired 95% intervals excluding 0)."""
    return es["boost_top_minus_small"]["hi"] < 0 and es["zero_top_minus_small"]["lo"] > 0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--quick", action="store_true", help="2 concepts, 30 steps, 256 candidates, 1 seed (results/quick/)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--l1", type=float, default=0.01)
    ap.add_argument("--out", default=None, help="results folder (default: this folder's results/)")
    args = ap.parse_args(argv)
    s = dict(QUICK if args.quick else FULL)
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1; got {args.steps}")
        s["steps"] = args.steps
    args.settings = s
    return args


def main(argv=None, model=None):
    """Run the experiment; returns the Record (with the held-out data and the seed-0 mixture
    attached for in-process checks)."""
    args = parse_args(argv)
    import interpjax
    from interpjax.io.loading import model_label
    from interpjax.methods import conceptor as CT

    s = args.settings
    concepts = QUICK_CONCEPTS if args.quick else CONCEPTS
    seeds = SEEDS[:1] if args.quick else SEEDS
    model_name = model_label(args.model)
    rec = Record(HERE, quick=args.quick, model=model_name, seeds=seeds, argv=argv,
                 out=None if args.out is None else Path(args.out))
    model = interpjax.load(args.model) if model is None else model
    tok = model.tokenizer
    V = model.cfg.vocab_size
    log(f"model {model_name}")
    full = CT.encode(tok, concepts, TEMPLATES)
    variants = [CT.variant_ids(tok, w, V) for w in concepts]
    nearest = CT.nearest_tokens(model, full.word_K, exclude=variants)
    log(f"batch {full.shape}; variants excluded: " + ", ".join(f"{w!r}: {len(v)}" for w, v in zip(concepts, variants)))

    per_seed, kls_by_seed, edits_by_seed = [], [], []
    keep = None
    for seed in seeds:
        tr_idx, ho_idx = split_prompts(len(TEMPLATES), s["n_train"], seed)
        train, held = full.take(tr_idx), full.take(ho_idx)
        t1 = time.time()
        target_tr = CT.logprobs_with(model, train)
        cand = CT.candidates(model, train, n_cos=s["n_cos"], n_pred=s["n_pred"], exclude=variants, target_KBTV=target_tr)
        mix = CT.fit(model, train, cand, steps=s["steps"], lr=args.lr, l1=args.l1, seed=seed, target_KBTV=target_tr)
        fit_s = time.time() - t1
        log(f"seed {seed}: fit {s['steps']} steps in {fit_s:.1f} s; train KL {mix.kl_history[0].round(3)} -> "
            f"{mix.kl_history[-1].round(3)}; nonzeros {mix.nnz_K}")
        target_ho = CT.logprobs_with(model, held)
        kls = heldout_kls(CT, model, held, target_ho, cand, mix.weights_KC, nearest, seed)
        eff = effect_summary(kls)
        ed = edit_effects(CT, model, held, target_ho, cand, mix.weights_KC, seed)
        es = edit_summary(ed)
        log(f"seed {seed}: held-out KL learned {kls['learned'].mean():.3f}, nearest {kls['nearest'].mean():.3f}, "
            f"random {np.mean([kls[f'random_{j}'].mean() for j in range(N_RANDOM)]):.3f}; "
            f"edit boost {es['boost_top']['value']:.3f} vs {es['boost_small']['value']:.3f}, "
            f"zero {es['zero_top']['value']:.3f} vs {es['zero_small']['value']:.3f}")
        per_seed.append({
            "seed": seed, "train_prompts": tr_idx, "heldout_prompts": ho_idx, "fit_s": round(fit_s, 1),
            "heldout_kl": {c: bootstrap_ci(v.ravel()) for c, v in kls.items()},
            "heldout_kl_per_concept": {c: v.mean(1) for c, v in kls.items()},
            "effect": eff, "effect_holds": effect_holds(eff), "edit": es, "edit_holds": edit_holds(es),
            "edit_tokens": {"top": ed["top_token"], "small": ed["small_token"], "top_weight": ed["top_weight"],
                            "small_weight": ed["small_weight"]},
            "nnz": mix.nnz_K, "weight_sum": mix.weights_KC.sum(1),
            "train_kl_first_last": [mix.kl_history[0], mix.kl_history[-1]],
            "top": [[[tok.decode([t]), t, round(wt, 4)] for t, wt in mix.top(k, TOP_N)] for k in range(len(concepts))],
        })
        kls_by_seed.append(kls)
        edits_by_seed.append(ed)
        if keep is None:
            keep = dict(held=held, nearest=nearest, target=target_ho, cand=cand, mix=mix, kls=kls)

    conds = list(kls_by_seed[0])
    over = {c: seed_summary([k[c].mean() for k in kls_by_seed]) if len(seeds) > 1 else None for c in conds}
    rec["concepts"] = list(concepts)
    rec["templates"] = list(TEMPLATES)
    rec["settings"] = {**s, "lr": args.lr, "l1": args.l1, "n_random": N_RANDOM, "top_n": TOP_N}
    rec["nearest_tokens"] = [[tok.decode([int(t)]), int(t)] for t in nearest]
    rec["variants_excluded"] = [[tok.decode([int(t)]) for t in v] for v in variants]
    rec["per_seed"] = per_seed
    rec["over_seeds"] = over
    rec["effect_holds"] = all(p["effect_holds"] for p in per_seed)
    rec["edit_holds"] = all(p["edit_holds"] for p in per_seed)

    labels = {"learned": "learned mixture", f"top{TOP_N}": f"its {TOP_N} largest constituents only",
              "nearest": "nearest token by cosine (variants excluded)",
              **{f"random_{j}": f"random mixture {j} (same weights, random candidates, same norm)" for j in range(N_RANDOM)},
              "own word": "the word's own row"}
    rows = [[labels[c]] + [fmt_ci(p["heldout_kl"][c], 3) for p in per_seed]
            + ([fmt_ci(over[c], 3)] if len(seeds) > 1 else []) for c in conds]
    head = ["slot row"] + [f"held-out KL, seed {p['seed']} (95% CI)" for p in per_seed] + \
        (["mean over seeds (t 95% CI)"] if len(seeds) > 1 else [])
    rec.table("heldout_kl.md", markdown_table(head, rows))
    eff_rows = [[p["seed"]] + [fmt_ci(p["effect"][f"random_{j}_minus_learned"], 3) for j in range(N_RANDOM)]
                + [fmt_ci(p["effect"]["nearest_minus_learned"], 3)] for p in per_seed]
    rec.table("effect.md", markdown_table(["seed"] + [f"KL(random {j}) − KL(learned)" for j in range(N_RANDOM)]
                                          + ["KL(nearest) − KL(learned)"], eff_rows))
    p0 = per_seed[0]
    conc_rows = []
    for k, w in enumerate(concepts):
        consts = ", ".join(f"{t!r} {wt:.3f}" for t, _, wt in p0["top"][k][:8])
        pc = p0["heldout_kl_per_concept"]
        conc_rows.append([repr(w), consts, int(p0["nnz"][k]), f"{pc['learned'][k]:.3f}",
                          f"{rec['nearest_tokens'][k][0]!r} {pc['nearest'][k]:.3f}",
                          f"{np.mean([pc[f'random_{j}'][k] for j in range(N_RANDOM)]):.3f}"])
    rec.table("constituents.md", markdown_table(
        ["concept", f"top constituents (weight), seed {p0['seed']}", "nonzeros", "held-out KL learned",
         "nearest token, KL", "random mixtures, mean KL"], conc_rows))
    ed_rows = []
    for name, lab in (("boost_top", "top weight ×3: ΔKL to the top token's outputs"),
                      ("boost_small", "same amount added to a random small weight: ΔKL to the top token's outputs"),
                      ("zero_top", "top weight → 0: ΔKL to the concept's outputs"),
                      ("zero_small", "a random small weight → 0: ΔKL to the concept's outputs")):
        ed_rows.append([lab] + [fmt_ci(p["edit"][name], 3) for p in per_seed])
    ed_rows.append(["paired: ×3 top − small"] + [fmt_ci(p["edit"]["boost_top_minus_small"], 3) for p in per_seed])
    ed_rows.append(["paired: → 0 top − small"] + [fmt_ci(p["edit"]["zero_top_minus_small"], 3) for p in per_seed])
    rec.table("edits.md", markdown_table(["edit (held-out prompts, all concepts)"] + [f"seed {p['seed']}" for p in per_seed],
                                         ed_rows))
    path = rec.save()
    rec.held, rec.target, rec.cand, rec.mix, rec.kls, rec.nearest = (keep[k] for k in ("held", "target", "cand", "mix", "kls", "nearest"))
    rec.model = model
    if not args.quick and args.out is None:
        sync_readme(HERE / "README.md", rec.out)
    print(markdown_table(head, rows))
    print(f"effect holds: {rec['effect_holds']}; edits hold: {rec['edit_holds']}; wrote {path}")
    return rec


if __name__ == "__main__":
    main()
