"""ActAdd (Turner et al. 2023, "Steering GPT-2-XL by adding an activation vector"): the
perplexity analysis. A topic vector (activations of " dog" minus " ", per position) is added
front-aligned at one layer with one coefficient; we measure perplexity on on-topic (dog) and
off-topic sentences across layers x coefficients -- one vmapped program compiled once -- against
the unsteered model and the prompt-prefix baseline (the topic words simply prepended). Then a
steered-generation check: prompts x coefficients decoded side by side in one compiled loop, with
the share of continuations that mention the topic.

    python experiments/actadd/run.py --quick       # CI smoke run (seconds)
    python experiments/actadd/run.py               # full mode (see README)
    python experiments/actadd/run.py --model gpt2 --positive " weddings" --negative " " \
        --on-topic wed.txt --off-topic ship.txt --topic-words wedding,bride
"""

from __future__ import annotations

import argparse
import json
import os
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
from interpjax.methods import steering as st
from interpjax.generate import generate, stack_rows
from texts import OFF_TOPIC, ON_TOPIC  # noqa: E402

PROMPTS = ["Once upon a time, there was a", "One day, Tom went to the", "Lily looked out of the window and saw a",
           "The girl opened the box and found a", "After lunch, Sara wanted to play with her",
           "In the morning, the boy saw a big", "Mom said, \"Let's go to the", "There was a little"]


def write_json(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def build_batch(model, sentences, prefix_ids, pad_id):
    """Right-padded [N, T] tokens: ``prefix_ids`` then each sentence; a [N, T] mask of the scored
    (sentence) tokens and the attention mask."""
    rows = [list(prefix_ids) + list(model.tokenizer(s, add_special_tokens=False)["input_ids"]) for s in sentences]
    T = max(map(len, rows))
    tokens = np.full((len(rows), T), pad_id, np.int32)
    attn = np.zeros((len(rows), T), np.int32)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = r
        attn[i, :len(r)] = 1
    scored = attn.copy()
    scored[:, :len(prefix_ids)] = 0
    return tokens, attn, scored


def nll_per_set(logits_NTV, tokens_NT, scored_NT, on_N):
    """Mean next-token NLL over the scored tokens of the on-topic rows and of the off-topic rows."""
    logp = jax.nn.log_softmax(logits_NTV[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, tokens_NT[:, 1:, None], axis=-1)[..., 0]
    w = scored_NT[:, 1:].astype(jnp.float32)
    on = on_N[:, None].astype(jnp.float32)
    return jnp.stack([(nll * w * on).sum() / (w * on).sum(), (nll * w * (1 - on)).sum() / (w * (1 - on)).sum()])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--positive", default=" dog")
    ap.add_argument("--negative", default=" ")
    ap.add_argument("--site", default="resid_pre")
    ap.add_argument("--on-topic", help="file with one on-topic sentence per line (default: built-in dog sentences)")
    ap.add_argument("--off-topic", help="file with one off-topic sentence per line (default: built-in)")
    ap.add_argument("--topic-words", default="dog,pupp", help="comma-separated words that mark an on-topic generation")
    ap.add_argument("--coeffs", default=None, help="comma-separated coefficients (default depends on mode)")
    ap.add_argument("--gen-layer", type=int, default=None, help="layer for the generation check (default: middle)")
    ap.add_argument("--chunk", type=int, default=16, help="variants evaluated at once inside the compiled sweep")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    t_start = time.perf_counter()

    model = interpjax.load(args.model)
    cfg = model.cfg
    read = lambda p: [l.strip() for l in Path(p).read_text().splitlines() if l.strip()]  # noqa: E731
    on_texts = read(args.on_topic) if args.on_topic else ON_TOPIC
    off_texts = read(args.off_topic) if args.off_topic else OFF_TOPIC
    if not on_texts or not off_texts:
        raise SystemExit("empty on-topic or off-topic text set")
    if args.quick:
        on_texts, off_texts = on_texts[:8], off_texts[:8]
    coeffs = ([float(c) for c in args.coeffs.split(",")] if args.coeffs else
              ([0.0, 1.0, 4.0] if args.quick else [-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0]))
    if 0.0 not in coeffs:
        coeffs = [0.0] + coeffs
    layers = list(range(cfg.n_layers))
    out_dir = Path(args.out) / ("quick" if args.quick else "full")
    out_dir.mkdir(parents=True, exist_ok=True)

    # the ActAdd vector at every layer ([P, D] each: positive minus space-padded negative)
    vecs = [st.actadd(model, args.positive, args.negative, layer=l, site=args.site) for l in layers]
    P = vecs[0].vector.shape[0]
    pad_id = vecs[0].meta["pad_token"]
    pos_ids = vecs[0].meta["tokens"][0]
    n_special = len(pos_ids) - len(st.content_ids(model, args.positive))
    steer_prefix = pos_ids[:n_special] + [pad_id] * (P - n_special)  # e.g. [BOS, " ", " "]: ActAdd's space prefix
    prompt_prefix = pos_ids + [pad_id] * (P - len(pos_ids))  # e.g. [BOS, " do", "g"]: the topic prepended
    sentences = on_texts + off_texts
    on_N = jnp.asarray(np.r_[np.ones(len(on_texts)), np.zeros(len(off_texts))])
    tokens, attn, scored = build_batch(model, sentences, steer_prefix, pad_id)
    base_tokens, base_attn, base_scored = build_batch(model, sentences, prompt_prefix, pad_id)
    T = tokens.shape[1]
    vec_LTD = np.zeros((cfg.n_layers, T, cfg.d_model), np.float32)
    vec_LTD[:, :P] = np.stack([v.vector for v in vecs])  # front-aligned from column 0 (right padding)
    vec_LTD = jnp.asarray(vec_LTD)
    tokens_j, attn_j, scored_j = jnp.asarray(tokens), jnp.asarray(attn), jnp.asarray(scored)

    def metric(lc):
        layer, coeff = lc[0].astype(jnp.int32), lc[1]
        iv = Add(args.site, layer=layer, vector=vec_LTD[layer], coeff=coeff)
        logits = interpjax.forward(cfg, model.params, tokens_j, attn_j, iv)
        return nll_per_set(logits, tokens_j, scored_j, on_N)

    grid = jnp.asarray([(l, c) for l in layers for c in coeffs], jnp.float32)
    sweep = jax.jit(lambda g: jax.lax.map(metric, g, batch_size=args.chunk))
    interpjax.core.model.prepare(cfg, model.params, tokens, attn, Add(args.site, layer=0, vector=vec_LTD[0], coeff=1.0))
    t0 = time.perf_counter()
    nll = np.asarray(sweep(grid)).reshape(len(layers), len(coeffs), 2)
    t_sweep = time.perf_counter() - t0
    ppl = np.exp(nll)
    base_nll = np.asarray(nll_per_set(interpjax.forward(cfg, model.params, base_tokens, base_attn),
                                      jnp.asarray(base_tokens), jnp.asarray(base_scored), on_N))
    i0 = coeffs.index(0.0)
    unsteered = ppl[0, i0]
    prefix_ppl = np.exp(base_nll)
    ratio = ppl / unsteered[None, None]

    # steered generations: prompts x coefficients in one per-row compiled loop
    gen_layer = args.gen_layer if args.gen_layer is not None else (3 * cfg.n_layers) // 5
    gen_coeffs = [0.0, 4.0, 16.0] if args.quick else [0.0, 2.0, 4.0, 8.0, 16.0]
    prompts = PROMPTS[:2] if args.quick else PROMPTS
    n_samples = 1 if args.quick else 4
    n_new = 12 if args.quick else 40
    rows_p = [p for c in gen_coeffs for p in prompts for _ in range(n_samples)]
    rows_c = [c for c in gen_coeffs for p in prompts for _ in range(n_samples)]
    ptoks, pmask = model.to_tokens(rows_p)
    total = ptoks.shape[1] + n_new
    starts = (pmask == 0).sum(1)
    ivs = stack_rows([vecs[gen_layer].intervention(c, seq_len=total, start=int(s)) for c, s in zip(rows_c, starts)])
    t0 = time.perf_counter()
    gen = generate(cfg, model.params, ptoks, n_new, ivs, attention_mask=pmask, per_row=True, temperature=1.0,
                   top_k=40, seed=0)
    t_gen = time.perf_counter() - t0
    words = [w.strip().lower() for w in args.topic_words.split(",") if w.strip()]
    conts = [model.to_string(gen.tokens[i, ptoks.shape[1]:][gen.mask[i, ptoks.shape[1]:] > 0]) for i in range(len(rows_p))]
    topic_rate = {str(c): float(np.mean([any(w in t.lower() for w in words) for t, cc in zip(conts, rows_c) if cc == c]))
                  for c in gen_coeffs}

    res = {
        "model": args.model if args.model != str(DEFAULT_MODEL) else "llama2c-stories260k",
        "positive": args.positive, "negative": args.negative, "site": args.site, "P": P,
        "n_on": len(on_texts), "n_off": len(off_texts), "layers": layers, "coeffs": coeffs,
        "ppl_on": ppl[..., 0].tolist(), "ppl_off": ppl[..., 1].tolist(),
        "ratio_on": ratio[..., 0].tolist(), "ratio_off": ratio[..., 1].tolist(),
        "unsteered": {"on": float(unsteered[0]), "off": float(unsteered[1])},
        "prompt_prefix": {"on": float(prefix_ppl[0]), "off": float(prefix_ppl[1]),
                          "ratio_on": float(prefix_ppl[0] / unsteered[0]), "ratio_off": float(prefix_ppl[1] / unsteered[1])},
        "sweep_variants": int(grid.shape[0]), "sweep_seconds_incl_compile": t_sweep,
        "generation": {"layer": gen_layer, "coeffs": gen_coeffs, "topic_words": words, "topic_rate": topic_rate,
                       "examples": {str(c): [t for t, cc in zip(conts, rows_c) if cc == c][::n_samples][:3] for c in gen_coeffs},
                       "seconds_incl_compile": t_gen, "rows": len(rows_p)},
        "quick": args.quick, "wall_seconds": time.perf_counter() - t_start,
    }
    write_json(res, out_dir / "results.json")
    plot(res, out_dir / "perplexity.png")

    print(f"ActAdd {args.positive!r} - {args.negative!r} at {args.site}, P={P}; {len(on_texts)} on-topic / "
          f"{len(off_texts)} off-topic sentences; {grid.shape[0]} variants in one program ({t_sweep:.1f}s incl. compile)")
    print(f"unsteered ppl: on {unsteered[0]:.2f}  off {unsteered[1]:.2f};  prompt-prefix: on {prefix_ppl[0]:.2f} "
          f"({prefix_ppl[0] / unsteered[0]:.3f}x)  off {prefix_ppl[1]:.2f} ({prefix_ppl[1] / unsteered[1]:.3f}x)")
    print("ppl ratio steered/unsteered, on-topic | off-topic")
    print("coeff    " + "".join(f"{c:>8g}" for c in coeffs))
    for i, l in enumerate(layers):
        print(f"L{l:<2d} on   " + "".join(f"{r:8.3f}" for r in ratio[i, :, 0]))
        print("    off  " + "".join(f"{r:8.3f}" for r in ratio[i, :, 1]))
    print(f"generation at layer {gen_layer}: share of continuations mentioning {words}: {topic_rate} "
          f"({len(rows_p)} rows, one compiled loop, {t_gen:.1f}s incl. compile)")
    print(f"wrote {out_dir}  ({res['wall_seconds']:.1f}s)")


def plot(res: dict, path: Path) -> None:
    """Perplexity ratio vs coefficient per layer (on-topic, off-topic) with the prompt-prefix baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from interpjax.io.plots import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, key, name in ((axes[0], "ratio_on", "on-topic"), (axes[1], "ratio_off", "off-topic")):
        for l, row in zip(res["layers"], res[key]):
            ax.plot(res["coeffs"], row, marker="o", ms=3, label=f"layer {l}")
        ax.axhline(res["prompt_prefix"][key], color="k", ls="--", lw=1, label="prompt prefix")
        ax.axhline(1.0, color="gray", lw=0.6)
        ax.set_title(f"{name} sentences")
        ax.set_xlabel("injection coefficient")
    axes[0].set_ylabel("perplexity / unsteered")
    axes[0].set_yscale("log")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"ActAdd {res['positive']!r} - {res['negative']!r} at {res['site']} ({res['model']})", fontsize=10)
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)


if __name__ == "__main__":
    main()
