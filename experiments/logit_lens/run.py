"""Logit lens on the real llama2c-stories260k checkpoint (nostalgebraist 2020; Belrose et al. 2023):
decode every layer's residual stream through the final norm + unembedding, plot prediction
trajectories for a few prompts, follow one token's rank across layers, and measure per-layer
perplexity / KL to the model's output on held-out TinyStories-like text.

    python experiments/logit_lens/run.py --quick       # CI smoke run (seconds)
    python experiments/logit_lens/run.py               # full mode (numbers in README.md)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import interpjax  # noqa: E402
from interpjax.methods import lens as LZ
from stories import corpus_stories, story_stream  # noqa: E402

MODELS = Path(os.environ.get("INTERPJAX_MODELS", HERE.parents[2] / "shared" / "models"))
DEFAULT_MODEL = MODELS / "llama2c-stories260k"

PROMPTS = [
    "Once upon a time, there was a little girl named Lily. She loved to play with her red ball. One day, she",
    "Tom and his dog went to the park. Tom threw a stick and the dog ran to get it. Tom said,",
    "Lily and Ben went to the park. Lily saw a big tree. Ben said to",
]
# (prompt index, a vocabulary piece whose rank and probability we follow at the last position)
TRACK = [(0, "▁saw"), (1, '▁"'), (2, "▁Lily")]


def token_label(tokenizer, i: int) -> str:
    return tokenizer.convert_ids_to_tokens(int(i)).replace("▁", "_")


def blocks(texts_fn, tokenizer, batch, seq, n):
    stream = LZ.TokenStream(texts_fn, tokenizer, batch, seq)
    return [stream(i) for i in range(n)]


def write_json(path: Path, obj):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one prompt, one evaluation block per text set")
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    t0 = time.time()
    out = Path(args.out) / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    model = interpjax.load(args.model)
    cfg, params, tok = model.cfg, model.params, model.tokenizer
    rows = [str(l) for l in range(cfg.n_layers)] + ["out"]

    trajectories = []
    for p, text in enumerate(PROMPTS):
        if args.quick and p != 1:
            continue
        tokens, _ = model.to_tokens([text])
        lg = LZ.logit_lens(cfg, params, tokens)[:, 0]  # [L+1, T, V]
        labels = [token_label(tok, i) for i in tokens[0]]
        for color in ("prob", "entropy"):
            LZ.plot_trajectory(lg, out / f"trajectory_{p}_{color}.png", labels, lambda i: token_label(tok, i),
                               color=color, row_labels=rows,
                               title=f"logit lens on {Path(args.model).name}, prompt {p} (colour: {color})")
        probs, ids = LZ.top_k(lg[:, -1], 5)
        trajectories.append({"index": p, "prompt": text, "last_position_top5": [
            [[token_label(tok, i), round(float(q), 4)] for i, q in zip(ids[l], probs[l])] for l in range(cfg.n_layers + 1)]})
        for pi, piece in TRACK:
            if pi != p:
                continue
            tid = tok.convert_tokens_to_ids(piece)
            if tid == tok.unk_token_id:
                raise ValueError(f"{piece!r} is not one token of this vocabulary")
            rank, prob = LZ.token_rank_prob(lg[:, None], tid)
            trajectories[-1].setdefault("tracked", []).append(
                {"token": piece.replace("▁", "_"), "rank": np.asarray(rank[:, 0, -1]).tolist(),
                 "prob": [round(float(x), 5) for x in prob[:, 0, -1]]})

    n_eval = 1 if args.quick else 8
    sets = {"handwritten corpus": blocks(corpus_stories, tok, 4, 128, n_eval),
            "template stories (seed 1000)": blocks(lambda: story_stream(1000), tok, 4, 128, n_eval)}
    metrics = {name: LZ.evaluate_lens(cfg, params, b) for name, b in sets.items()}

    res = {"model": Path(args.model).name, "quick": args.quick, "layers": LZ.lens_names(cfg),
           "trajectories": trajectories, "per_layer": metrics, "wall_s": round(time.time() - t0, 1)}
    write_json(out / "results.json", res)
    for name, m in metrics.items():
        print(f"{name} ({m['tokens']} tokens)")
        print("  layer           ppl          KL(final||lens)")
        for lname, ppl, kl in zip(m["layers"], m["ppl"], m["kl"]):
            print(f"  {lname:14s} {ppl:12.2f}  {kl:8.3f}")
    for t in trajectories:
        print(t["prompt"][-50:], "->", [r[0][0] for r in t["last_position_top5"]], t.get("tracked", ""))
    print(f"wrote {out} in {res['wall_s']} s")
    return res


if __name__ == "__main__":
    main()
