"""ActAdd (Turner et al. 2023) on SmolLM2-135M-Instruct: does the " weddings" - " " vector,
added front-aligned at one layer, lower perplexity on wedding text more than on off-topic
(shipping) text, and more than a norm-matched random vector or a " cooking" vector does? And do
steered generations from neutral prompts mention weddings more often than unsteered ones?

    python experiments/actadd/run.py --quick       # CI-sized run (results/quick/)
    python experiments/actadd/run.py               # full run (results/full/, refreshes the README)

Plain text, no chat template: every sequence starts with <|endoftext|> (SmolLM2's document
separator), as GPT-2's sequences start with its BOS in the paper, so the two-position vector is
zero on that token and carries the topic difference on the next one.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import interpjax  # noqa: E402
import interpjax.sweep as sw  # noqa: E402
from interpjax.evidence import (Record, bootstrap_ci, fmt_ci, markdown_table, paired_bootstrap_diff,  # noqa: E402
                                sync_readme)
from interpjax.generate import generate  # noqa: E402
from interpjax.methods import steering as st  # noqa: E402
from texts import NEUTRAL_PROMPTS, OFF_TOPIC, ON_TOPIC, TOPIC_PATTERN  # noqa: E402

BOS = "<|endoftext|>"
SITE = "resid_pre"
VECTORS = ("wedding", "cooking", "random")


# ---------------------------------------------------------------------------------------------
# vectors


def build_vectors(model, layers, *, positive=" weddings", other=" cooking", negative=" ", seed=0) -> dict:
    """name -> [L, P, D] ActAdd vectors at ``layers``: the topic vector, a different-topic vector and,
    per layer, a random direction matched row by row to the topic vector's norm (zero where it is)."""
    out = {"wedding": [], "cooking": [], "random": []}
    rng = np.random.default_rng(seed)
    for l in layers:
        w = st.actadd(model, BOS + positive, BOS + negative, layer=int(l), site=SITE).vector
        c = st.actadd(model, BOS + other, BOS + negative, layer=int(l), site=SITE).vector
        if c.shape != w.shape:
            raise ValueError(f"{positive!r} and {other!r} tokenize to different lengths ({w.shape} vs {c.shape})")
        g = rng.standard_normal(w.shape).astype(np.float32)
        g *= (np.linalg.norm(w, axis=-1, keepdims=True) / np.linalg.norm(g, axis=-1, keepdims=True))
        out["wedding"].append(w), out["cooking"].append(c), out["random"].append(g)
    return {k: np.stack(v) for k, v in out.items()}


def as_steering(vec_PD, layer: int) -> st.SteeringVector:
    """A bare [P, D] array as the library's ActAdd vector (its intervention lays it front-aligned)."""
    return st.SteeringVector(np.asarray(vec_PD, np.float32), SITE, int(layer), "actadd")


# ---------------------------------------------------------------------------------------------
# perplexity


def sentence_batch(model, sentences, prefix_ids):
    """Right-padded tokens [N, T] (``prefix_ids`` then the sentence), attention mask and the mask of
    scored next-token targets (sentence tokens only)."""
    rows = [list(prefix_ids) + st.content_ids(model, s) for s in sentences]
    T = max(map(len, rows))
    tokens = np.zeros((len(rows), T), np.int32)
    attn = np.zeros((len(rows), T), np.int32)
    for i, r in enumerate(rows):
        tokens[i, :len(r)], attn[i, :len(r)] = r, 1
    scored = attn.copy()
    scored[:, :len(prefix_ids)] = 0
    return tokens, attn, scored


def nll_rows(logp_NTV, tokens_NT, scored_NT):
    """Mean next-token NLL per row over its scored tokens: [N]."""
    nll = -jnp.take_along_axis(logp_NTV[:, :-1], tokens_NT[:, 1:, None], axis=-1)[..., 0]
    w = scored_NT[:, 1:].astype(jnp.float32)
    return (nll * w).sum(1) / w.sum(1)


def plain_nll(model, tokens, attn, scored) -> np.ndarray:
    logits = interpjax.forward(model.cfg, model.params, tokens, attn)
    return np.asarray(nll_rows(jax.nn.log_softmax(logits.astype(jnp.float32), -1), jnp.asarray(tokens),
                               jnp.asarray(scored)))


def perplexity_sweep(model, tokens, attn, scored, vecs: dict, layers, coeffs) -> np.ndarray:
    """Per-sentence NLL [K, L, C, N] for every vector x layer x coefficient: one ``interpjax.sweep``
    (one compiled program reused for every start layer, the layers below each variant's injection
    taken from the base run)."""
    T = tokens.shape[1]
    names = list(vecs)
    full = np.stack([[np.asarray(as_steering(vecs[k][i], l).intervention(1.0, seq_len=T, start=0).vector)
                      for i, l in enumerate(layers)] for k in names])  # [K, L, T, D]
    P = next(iter(vecs.values())).shape[1]
    iv = interpjax.Add(SITE, layer=jnp.asarray(np.asarray(layers, np.int32)[None, :, None]),
                       vector=jnp.asarray(full[:, :, None]), coeff=jnp.asarray(np.asarray(coeffs, np.float32)[None, None]),
                       positions=jnp.arange(P)[None, None, None])
    grid = sw.from_stacked(iv, ("vector", "layer", "coeff"), ticks=(names, list(layers), list(coeffs)))
    tok_j, sc_j = jnp.asarray(tokens), jnp.asarray(scored)
    metric = lambda out: nll_rows(out.log_probs(), tok_j, sc_j)  # noqa: E731
    return np.asarray(sw.sweep(model, tokens, grid, metric, attention_mask=attn, metric_shape=(tokens.shape[0],),
                               progress=False))


def two_sample_diff(a, b, n_boot=2000, seed=0) -> dict:
    """mean(a) - mean(b) for two independent item sets, with a percentile bootstrap (each resampled)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    boots = a[rng.integers(0, a.size, (n_boot, a.size))].mean(1) - b[rng.integers(0, b.size, (n_boot, b.size))].mean(1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return {"value": float(a.mean() - b.mean()), "lo": float(lo), "hi": float(hi), "n": [int(a.size), int(b.size)]}


def ratio_ci(delta) -> dict:
    """Geometric-mean perplexity ratio exp(mean ΔNLL) with its bootstrap interval."""
    s = bootstrap_ci(delta)
    return {k: (float(np.exp(v)) if k in ("value", "lo", "hi") else v) for k, v in s.items()}


def summarize(delta_on, delta_off) -> dict:
    """On- and off-topic ratios and the selectivity (ΔNLL on - ΔNLL off, nats; < 0 favours the topic)."""
    return {"ratio_on": ratio_ci(delta_on), "ratio_off": ratio_ci(delta_off),
            "selectivity": two_sample_diff(delta_on, delta_off)}


def effect_holds(result: dict) -> bool:
    """The claim on held-out sentences: the topic vector is selective (its selectivity interval lies
    below 0) and more selective than both controls (its value below each control's interval)."""
    h = result["heldout"]
    sel = h["wedding"]["selectivity"]
    return bool(sel["hi"] < 0 and all(sel["value"] < h[c]["selectivity"]["lo"] for c in ("cooking", "random")))


# ---------------------------------------------------------------------------------------------
# generations


def steered_generations(model, prompts, conditions, vecs, layers, *, seeds, n_new, temperature, top_p):
    """For each condition (name, vector name or None, layer, coeff): prompts x seeds continuations.
    One ``generate`` call per (condition, seed), all with the same structure (unsteered = coefficient
    0 exactly), so one compiled decoder serves all and row r draws the same random stream in every
    condition. Returns {condition name: [continuation texts, prompt-major]}."""
    tokens, mask = model.to_tokens([BOS + p for p in prompts])
    total = tokens.shape[1] + n_new
    starts = (np.asarray(mask) == 0).sum(1)  # left padding: the vector starts at <|endoftext|>
    li = {l: i for i, l in enumerate(layers)}
    out = {}
    for name, vname, layer, coeff in conditions:
        v = as_steering(vecs[vname or "wedding"][li[layer]], layer)
        iv = v.intervention(float(coeff) if vname else 0.0, seq_len=total, start=starts)
        texts = [[None] * len(seeds) for _ in prompts]
        for j, s in enumerate(seeds):
            g = generate(model.cfg, model.params, tokens, n_new, iv, attention_mask=mask, temperature=temperature,
                         top_p=top_p, seed=int(s), stop_tokens=(0,))
            for i in range(len(prompts)):
                cont = g.tokens[i, tokens.shape[1]:][g.mask[i, tokens.shape[1]:] > 0]
                texts[i][j] = model.to_string(cont[cont != 0])
        out[name] = [t for row in texts for t in row]
    return out


def on_topic(text: str) -> bool:
    return re.search(TOPIC_PATTERN, text.lower()) is not None


# ---------------------------------------------------------------------------------------------


def perplexity_part(model, on_texts, off_texts, layers, coeffs, *, seed=0):
    """The perplexity analysis: vectors, unsteered and prefix NLL, the sweep, the held-out choice.
    Returns (vectors, {grid, heldout, prefix, prefix_check, base, nll, seconds})."""
    # -- vectors and texts
    vecs = build_vectors(model, layers, seed=seed)
    bos = st.content_ids(model, BOS)
    space, topic = st.content_ids(model, " "), st.content_ids(model, " weddings")
    sentences = on_texts + off_texts
    n_on = len(on_texts)
    tokens, attn, scored = sentence_batch(model, sentences, bos + space)  # ActAdd: a space the vector lands on
    ptokens, pattn, pscored = sentence_batch(model, sentences, bos + topic)  # prompt prefix: " weddings" itself
    if len(topic) != len(space):
        raise ValueError("the prefix baseline needs ' weddings' and ' ' to be one token each")

    # -- perplexity: base, prefix, and the sweep
    t0 = time.time()
    base = plain_nll(model, tokens, attn, scored)
    prefix = plain_nll(model, ptokens, pattn, pscored)
    nll = perplexity_sweep(model, tokens, attn, scored, vecs, layers, coeffs)  # [K, L, C, N]
    t_sweep = time.time() - t0
    delta = nll - base  # per-sentence ΔNLL
    on, off = slice(0, n_on), slice(n_on, None)
    grid = {k: [[summarize(delta[ki, li, ci, on], delta[ki, li, ci, off]) for ci in range(len(coeffs))]
                for li in range(len(layers))] for ki, k in enumerate(vecs)}
    prefix_all = summarize((prefix - base)[on], (prefix - base)[off])

    # -- held-out: choose (layer, coeff) on the even sentences of each set, report on the odd ones
    idx_on, idx_off = np.arange(n_on), np.arange(n_on, len(sentences))
    sel_on, sel_off, ev_on, ev_off = idx_on[0::2], idx_off[0::2], idx_on[1::2], idx_off[1::2]
    d_w = delta[0]
    sel_score = d_w[:, :, sel_on].mean(-1) - d_w[:, :, sel_off].mean(-1)  # [L, C]
    li, ci = np.unravel_index(int(np.argmin(sel_score)), sel_score.shape)
    heldout = {k: summarize(delta[ki, li, ci, ev_on], delta[ki, li, ci, ev_off]) for ki, k in enumerate(vecs)}
    heldout["prompt_prefix"] = summarize((prefix - base)[ev_on], (prefix - base)[ev_off])
    heldout["wedding_minus_cooking_on"] = paired_bootstrap_diff(delta[0, li, ci, ev_on], delta[1, li, ci, ev_on])
    heldout["wedding_minus_random_on"] = paired_bootstrap_diff(delta[0, li, ci, ev_on], delta[2, li, ci, ev_on])
    heldout.update(layer=int(layers[li]), coeff=float(coeffs[ci]), n_on=int(ev_on.size), n_off=int(ev_off.size))
    # layer 0, coefficient 1 of the wedding vector turns the space into " weddings": it equals the prefix
    prefix_check = float(np.abs(nll[0, layers.index(0), coeffs.index(1.0)] - prefix).max()) \
        if 0 in layers and 1.0 in coeffs else None

    return vecs, {"grid": grid, "heldout": heldout, "prefix": prefix_all, "prefix_check": prefix_check,
                  "base": base, "nll": nll, "seconds": t_sweep}


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="results folder (default: this experiment's results/)")
    ap.add_argument("--seed", type=int, default=0, help="random-vector and bootstrap seed")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(sys.argv[1:] if argv is None else argv)
    t_start = time.time()
    if args.quick:
        layers, coeffs = [0], [1.0]
        on_texts, off_texts = ON_TOPIC[:12], OFF_TOPIC[:12]
        prompts, gen_seeds, n_new, gen_layers = NEUTRAL_PROMPTS[:2], [0], 6, [0]
    else:
        layers, coeffs = [0, 5, 10, 15, 20, 25], [1.0, 4.0]
        on_texts, off_texts = ON_TOPIC[:40], OFF_TOPIC[:40]
        prompts, gen_seeds, n_new, gen_layers = NEUTRAL_PROMPTS, [0, 1, 2], 28, [5, 15]
    gen_coeff, temperature, top_p = 4.0, 1.0, 0.9
    rec = Record(HERE, quick=args.quick, model=args.model, seeds=gen_seeds,
                 argv=["experiments/actadd/run.py"] + (list(argv) if argv is not None else sys.argv[1:]),
                 out=None if args.out is None else Path(args.out))
    model = interpjax.load(args.model)

    vecs, ppl = perplexity_part(model, on_texts, off_texts, layers, coeffs, seed=args.seed)
    grid, heldout, prefix_all, prefix_check = ppl["grid"], ppl["heldout"], ppl["prefix"], ppl["prefix_check"]
    base, n_on, t_sweep = ppl["base"], len(on_texts), ppl["seconds"]
    on, off = slice(0, n_on), slice(n_on, None)

    # -- generations
    conditions = [("unsteered", None, gen_layers[0], 0.0)] + \
        [(f"{k} L{l}", k, l, gen_coeff) for l in gen_layers for k in VECTORS]
    t0 = time.time()
    gens = steered_generations(model, prompts, conditions, vecs, layers, seeds=gen_seeds, n_new=n_new,
                               temperature=temperature, top_p=top_p)
    t_gen = time.time() - t0
    hits = {k: np.array([on_topic(t) for t in v], np.float64) for k, v in gens.items()}
    gen_res = {k: bootstrap_ci(h) for k, h in hits.items()}
    gen_diff = {}
    for l in gen_layers:
        w = hits[f"wedding L{l}"]
        gen_diff[f"L{l}"] = {"vs_unsteered": paired_bootstrap_diff(w, hits["unsteered"]),
                             "vs_cooking": paired_bootstrap_diff(w, hits[f"cooking L{l}"]),
                             "vs_random": paired_bootstrap_diff(w, hits[f"random L{l}"])}

    # -- record
    rec["setup"] = {"positive": " weddings", "negative": " ", "other_topic": " cooking", "site": SITE,
                    "bos": BOS, "layers": layers, "coeffs": coeffs, "n_on": n_on, "n_off": len(off_texts),
                    "template": "plain text", "P": int(vecs["wedding"].shape[1])}
    rec["vector_norm_pos1"] = {"layers": layers, "norm": np.linalg.norm(vecs["wedding"][:, 1], axis=-1)}
    rec["unsteered_ppl"] = {"on": float(np.exp(base[on].mean())), "off": float(np.exp(base[off].mean()))}
    rec["sweep"] = grid
    rec["prompt_prefix"] = prefix_all
    rec["prefix_equals_layer0_c1_max_abs_nll_diff"] = prefix_check
    rec["heldout"] = heldout
    rec["generation"] = {"layers": gen_layers, "coeff": gen_coeff, "n_new": n_new, "temperature": temperature,
                         "top_p": top_p, "prompts": len(prompts), "seeds": gen_seeds, "topic_pattern": TOPIC_PATTERN,
                         "on_topic": gen_res, "diff": gen_diff,
                         "n_steered": int(sum(len(v) for k, v in gens.items() if k != "unsteered")),
                         "examples": {k: v[:: len(gen_seeds)][:3] for k, v in gens.items()}}
    rec["seconds"] = {"sweep": t_sweep, "generation": t_gen, "variants": int(np.prod(ppl["nll"].shape[:3]))}
    result = {"heldout": heldout, "sweep": grid, "prompt_prefix": prefix_all, "generation": rec["generation"],
              "layers": layers, "coeffs": coeffs, "prefix_check": prefix_check}
    rec["effect_holds"] = effect_holds(result)

    rec.table("sweep.md", sweep_table(grid, layers, coeffs, prefix_all))
    rec.table("heldout.md", heldout_table(heldout))
    rec.table("generation.md", generation_table(gen_res, gen_diff, gen_layers, len(prompts), len(gen_seeds)))
    rec.figure("perplexity.png", plot(grid, layers, coeffs, prefix_all))
    rec.save()
    if not args.quick:
        sync_readme(HERE / "README.md", rec.out)
    print(f"held-out at layer {heldout['layer']}, c={heldout['coeff']}: " +
          "; ".join(f"{k} {fmt_ci(heldout[k]['selectivity'], 3)}" for k in (*VECTORS, "prompt_prefix")))
    print("on-topic generations:", {k: round(v["value"], 3) for k, v in gen_res.items()})
    print(f"wrote {rec.out} in {time.time() - t_start:.0f}s; effect_holds={rec['effect_holds']}")
    return result


def sweep_table(grid, layers, coeffs, prefix) -> str:
    rows = []
    for li, l in enumerate(layers):
        for ci, c in enumerate(coeffs):
            cells = [l, f"{c:g}"]
            for k in VECTORS:
                s = grid[k][li][ci]
                cells += [f"{s['ratio_on']['value']:.3f} / {s['ratio_off']['value']:.3f}", fmt_ci(s["selectivity"], 3)]
            rows.append(cells)
    rows.append(["prefix", "—", f"{prefix['ratio_on']['value']:.3f} / {prefix['ratio_off']['value']:.3f}",
                 fmt_ci(prefix["selectivity"], 3), "", "", "", ""])
    head = ["layer", "coeff"] + [h for k in VECTORS for h in (f"{k}: ppl ratio on / off", f"{k}: selectivity")]
    return markdown_table(head, rows)


def heldout_table(h) -> str:
    rows = [[k, fmt_ci(h[k]["ratio_on"], 3), fmt_ci(h[k]["ratio_off"], 3), fmt_ci(h[k]["selectivity"], 3)]
            for k in (*VECTORS, "prompt_prefix")]
    rows.append(["wedding − cooking, on-topic ΔNLL", fmt_ci(h["wedding_minus_cooking_on"], 3), "", ""])
    rows.append(["wedding − random, on-topic ΔNLL", fmt_ci(h["wedding_minus_random_on"], 3), "", ""])
    return (f"Held-out sentences ({h['n_on']} on-topic, {h['n_off']} off-topic); setting chosen on the other half: "
            f"layer {h['layer']}, coefficient {h['coeff']:g}.\n\n" +
            markdown_table(["vector", "ppl ratio on-topic", "ppl ratio off-topic", "selectivity (ΔNLL on − off)"], rows))


def generation_table(res, diff, gen_layers, n_prompts, n_seeds) -> str:
    rows = [[k, res[k]["n"], fmt_ci(res[k], 3)] for k in res]
    drows = [[f"L{l}", fmt_ci(diff[f"L{l}"]["vs_unsteered"], 3), fmt_ci(diff[f"L{l}"]["vs_cooking"], 3),
              fmt_ci(diff[f"L{l}"]["vs_random"], 3)] for l in gen_layers]
    return (f"{n_prompts} neutral prompts × {n_seeds} sampling seeds per condition.\n\n" +
            markdown_table(["condition", "n", "share on topic (95% CI)"], rows) + "\n" +
            markdown_table(["layer", "wedding − unsteered", "wedding − cooking", "wedding − random"], drows))


def plot(grid, layers, coeffs, prefix):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(coeffs), figsize=(5 * len(coeffs), 3.6), sharey=True, squeeze=False)
    for ci, (ax, c) in enumerate(zip(axes[0], coeffs)):
        for k, color in zip(VECTORS, ("C3", "C0", "C7")):
            s = [grid[k][li][ci]["selectivity"] for li in range(len(layers))]
            ax.errorbar(layers, [x["value"] for x in s], yerr=[[x["value"] - x["lo"] for x in s],
                        [x["hi"] - x["value"] for x in s]], marker="o", ms=3, capsize=2, color=color, label=k)
        ax.axhline(prefix["selectivity"]["value"], color="k", ls="--", lw=1, label="prompt prefix")
        ax.axhline(0, color="gray", lw=0.6)
        ax.set(title=f"coefficient {c:g}", xlabel="injection layer")
    axes[0][0].set_ylabel("ΔNLL on-topic − off-topic (nats)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
