"""Representation Engineering (Zou et al. 2023) on a story model: reading vectors for happy vs
sad scenarios (PCA of paired differences, sign-calibrated) at every layer, held-out accuracy per
layer on scenarios whose events were never seen, a LAT token x layer scan (HTML + PNG), a PCA
view of four emotions across layers with a cluster-separation number per layer, and control:
the reading vector added at one layer while generating, prompts x coefficients decoded side by
side in one compiled loop, with the share of happy vs sad words per coefficient.

    python experiments/repe/run.py --quick       # CI smoke run (seconds)
    python experiments/repe/run.py               # full mode (see README)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DEFAULT_MODEL = HERE.parents[1].parent / "shared" / "models" / "llama2c-stories260k"

import interpjax  # noqa: E402
from interpjax import Add
from interpjax.methods import reading as rd
from interpjax.methods import steering as st
from interpjax.generate import generate, stack_rows
from stimuli import EVENTS, NAMES, stimuli  # noqa: E402

SCAN_TEXT = ("Lily lost her toy in the park and she cried. Then Mom found the toy, and Lily smiled and "
             "hugged her. They played all day.")
NEUTRAL = ["Lily went to the park. She felt", "Tom saw a cat. He felt", "Sara opened the door. She felt",
           "Ben sat on the chair. He felt", "Mia walked to school. She felt", "Tim looked at the sky. He felt"]
HAPPY_WORDS = ("happy", "smile", "laugh", "fun", "love", "glad", "joy", "excited", "hug")
SAD_WORDS = ("sad", "cry", "cried", "tears", "hurt", "sorry", "upset", "scared", "angry", "lonely")


def write_json(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def count_words(text: str, words) -> int:
    toks = re.findall(r"[a-z]+", text.lower())
    return sum(any(t.startswith(w) for w in words) for t in toks)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--site", default="resid_post")
    ap.add_argument("--method", default="pca", choices=rd.METHODS)
    ap.add_argument("--steer-layer", type=int, default=None, help="layer for the control demo (default: best held-out)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    t_start = time.perf_counter()
    model = interpjax.load(args.model)
    cfg = model.cfg
    out_dir = Path(args.out) / ("quick" if args.quick else "full")
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = list(range(cfg.n_layers))

    # 1. reading vectors, held-out accuracy by event: 5 folds, each holding out 3 of the 15 events
    #    (for every name), so a test scenario's event was never seen in training
    names = NAMES[:4] if args.quick else NAMES
    n_ev = len(EVENTS["happy"])
    pos_acts = st.activations_at(model, stimuli("happy", range(n_ev), names), args.site, layers)  # [L, names*events, D]
    neg_acts = st.activations_at(model, stimuli("sad", range(n_ev), names), args.site, layers)
    event_of = np.tile(np.arange(n_ev), len(names))
    folds = np.array_split(np.random.default_rng(1).permutation(n_ev), 5)
    pair_hits, single_hits, ctrl_hits = [], [], []
    for held_events in folds:
        test = np.isin(event_of, held_events)
        rv_f = rd.fit(pos_acts[:, ~test], neg_acts[:, ~test], layers, args.site, args.method)
        sp, sn = rv_f.scores(pos_acts[:, test]), rv_f.scores(neg_acts[:, test])
        pair_hits.append(sp > sn)
        single_hits.append(np.concatenate([sp > 0, sn < 0], 1))
        # control: the same fit on random "pairs" drawn from the pooled happy and sad training texts
        pool = np.concatenate([pos_acts[:, ~test], neg_acts[:, ~test]], 1)
        perm = np.random.default_rng(2).permutation(pool.shape[1])
        half = pool.shape[1] // 2
        rv_c = rd.fit(pool[:, perm[:half]], pool[:, perm[half:2 * half]], layers, args.site, args.method)
        ctrl_hits.append(rv_c.scores(pos_acts[:, test]) > rv_c.scores(neg_acts[:, test]))
    held = {"pair": np.concatenate(pair_hits, 1).mean(1).tolist(),
            "single": np.concatenate(single_hits, 1).mean(1).tolist()}
    ctrl = {"pair": np.concatenate(ctrl_hits, 1).mean(1).tolist()}
    train_pos = stimuli("happy", range(n_ev), names)
    rv = rd.reading_vectors(model, train_pos, stimuli("sad", range(n_ev), names), layers, site=args.site,
                            method=args.method, label="happy - sad")
    rv.save(out_dir / "happy_sad.reading.safetensors")

    # 2. LAT scan of a story whose mood turns
    s = rd.scan(model, SCAN_TEXT, rv)
    rd.render_html(s, out_dir / "scan.html", title="LAT scan: happy (green) vs sad (red)")
    rd.heatmap_png(s, out_dir / "scan.png", title="LAT scan, happy - sad reading vector")

    # 3. four emotions across layers
    acts = {e: st.activations_at(model, stimuli(e, range(15), names[:4] if args.quick else names), args.site, layers)
            for e in EVENTS}
    sep = rd.concept_separation(acts)
    rd.concept_plot(acts, out_dir / "emotions_pca.png", layers, title="four emotions, PCA per layer")

    # 4a. control, next token: log p(" happy") - log p(" sad") after neutral "... She felt" prompts with the
    #     reading vector (coeff 1 = mean gap) added at every position of one layer: layers x coeffs, one program
    happy_id = model.tokenizer(" happy", add_special_tokens=False)["input_ids"][0]
    sad_id = model.tokenizer(" sad", add_special_tokens=False)["input_ids"][0]
    ntok, nmask = model.to_tokens(NEUTRAL)
    vecs_LD = jnp.asarray(rv.directions_LD * np.asarray(rv.meta["mean_gap"], np.float32)[:, None])
    grid_coeffs = [-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0]

    def happy_minus_sad(layer, coeff):
        iv = Add(args.site, layer=layer, vector=vecs_LD[layer], coeff=coeff)
        logp = jax.nn.log_softmax(interpjax.forward(cfg, model.params, ntok, nmask, iv)[:, -1].astype(jnp.float32))
        return (logp[:, happy_id] - logp[:, sad_id]).mean()

    lsd = np.asarray(jax.jit(jax.vmap(lambda l: jax.vmap(lambda c: happy_minus_sad(l, c))(jnp.asarray(grid_coeffs))))(
        jnp.arange(cfg.n_layers)))

    # 4b. control: add the reading vector while generating, prompts x coefficients in one compiled loop
    steer_layer = args.steer_layer if args.steer_layer is not None else int(np.argmax(held["pair"]))
    vec = rv.steering(steer_layer)
    coeffs = [-4.0, 0.0, 4.0] if args.quick else [-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0]
    prompts = NEUTRAL[:2] if args.quick else NEUTRAL
    n_samples = 1 if args.quick else 4
    n_new = 12 if args.quick else 24
    rows = [(c, p) for c in coeffs for p in prompts for _ in range(n_samples)]
    ptoks, pmask = model.to_tokens([p for _, p in rows])
    ivs = stack_rows([vec.intervention(c) for c, _ in rows])
    t0 = time.perf_counter()
    gen = generate(cfg, model.params, ptoks, n_new, ivs, attention_mask=pmask, per_row=True, temperature=1.0,
                   top_k=40, seed=1)
    t_gen = time.perf_counter() - t0
    T0 = ptoks.shape[1]
    conts = [model.to_string(gen.tokens[i, T0:][gen.mask[i, T0:] > 0]) for i in range(len(rows))]
    control = {}
    for c in coeffs:
        texts = [t for (cc, _), t in zip(rows, conts) if cc == c]
        control[str(c)] = {"happy_words": sum(count_words(t, HAPPY_WORDS) for t in texts),
                           "sad_words": sum(count_words(t, SAD_WORDS) for t in texts), "n": len(texts),
                           "examples": texts[:2]}

    res = {
        "model": args.model if args.model != str(DEFAULT_MODEL) else "llama2c-stories260k", "site": args.site,
        "method": args.method, "layers": layers, "n_pairs": len(train_pos), "folds": [f.tolist() for f in folds],
        "train_pair_accuracy": rv.meta["train_pair_accuracy"], "heldout_pair_accuracy": held["pair"],
        "heldout_single_accuracy": held["single"], "random_pairs_control_pair_accuracy": ctrl["pair"],
        "explained_variance": rv.meta.get("explained_variance"),
        "scan": {"text": SCAN_TEXT, "tokens": s.tokens, "scores_TL": np.round(s.scores_TL, 3).tolist()},
        "emotion_separation_nc_accuracy": sep.tolist(), "emotions": list(EVENTS),
        "next_token_control": {"coeffs": grid_coeffs, "prompts": NEUTRAL,
                               "happy_minus_sad_logprob_LC": np.round(lsd, 4).tolist()},
        "control": {"layer": steer_layer, "coeffs": coeffs, "per_coeff": control, "rows": len(rows),
                    "seconds_incl_compile": t_gen},
        "quick": args.quick, "wall_seconds": time.perf_counter() - t_start,
    }
    write_json(res, out_dir / "results.json")
    print(f"RepE happy vs sad on {res['model']} ({args.site}, {args.method}); {len(train_pos)} pairs, held-out accuracy "
          f"over 5 folds that each hold out 3 of {n_ev} events")
    print("layer   train(all)  held-out pair  held-out single  random-pairs ctrl  emotions NC acc (4-way)")
    for i, l in enumerate(layers):
        print(f"  {l:2d}    {rv.meta['train_pair_accuracy'][i]:.2f}           {held['pair'][i]:.2f}            "
              f"{held['single'][i]:.2f}              {ctrl['pair'][i]:.2f}                 {sep[i]:.2f}")
    print("next-token control: mean log p(' happy') - log p(' sad') after neutral '... She felt' prompts")
    print("coeff   " + "".join(f"{c:>7g}" for c in grid_coeffs))
    for l in layers:
        print(f"  L{l}   " + "".join(f"{v:7.2f}" for v in lsd[l]))
    print(f"generation control at layer {steer_layer} (coeff 1 = mean happy-sad gap), {len(rows)} rows in one compiled loop "
          f"({t_gen:.1f}s incl. compile):")
    for c in coeffs:
        d = control[str(c)]
        print(f"  coeff {c:+5.1f}: happy words {d['happy_words']:3d}, sad words {d['sad_words']:3d}  "
              f"e.g. {d['examples'][0][:90]!r}")
    print(f"wrote {out_dir}  ({res['wall_seconds']:.1f}s)")


if __name__ == "__main__":
    main()
