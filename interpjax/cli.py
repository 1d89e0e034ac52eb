"""Command line: ``interpjax demo`` (load a model, steer it, patch it) and ``interpjax sites``."""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

DEFAULT_MODEL_ENV = "INTERPJAX_MODEL"


def _model_arg(p: argparse.ArgumentParser):
    p.add_argument("--model", default=os.environ.get(DEFAULT_MODEL_ENV),
                   help=f"local checkpoint folder or hub id (default: ${DEFAULT_MODEL_ENV})")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def _load(args):
    import interpjax

    if not args.model:
        sys.exit(f"interpjax: pass --model PATH_OR_HUB_ID or set ${DEFAULT_MODEL_ENV}")
    t0 = time.perf_counter()
    model = interpjax.load(args.model, dtype=args.dtype)
    n = sum(int(np.prod(a.shape)) for a in __import__("jax").tree.leaves(model.params))
    print(f"loaded {args.model}: {model.cfg.family}, {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
          f"{n:,} params, {args.dtype} ({time.perf_counter() - t0:.1f}s)")
    return model


def cmd_sites(args):
    model = _load(args)
    for row in model.sites(batch=1, seq=args.seq):
        layers = f"x{row['layers']} layers" if row["layers"] else "global"
        print(f"  {row['site']:11s} {str(row['shape']):22s} {layers:12s} {row['doc']}")


def cmd_demo(args):
    """Greedy continuation, a steering vector (ActAdd-style difference of residuals), and an
    activation-patching sweep over layers x positions compiled as one vmapped program."""
    import jax
    import jax.numpy as jnp

    import interpjax
    from interpjax import Add, Patch
    from interpjax.generate import greedy

    model = _load(args)
    cfg = model.cfg
    layer = args.layer if args.layer is not None else (3 * cfg.n_layers) // 5
    if not 0 <= layer < cfg.n_layers:
        sys.exit(f"interpjax: --layer {layer} out of range 0..{cfg.n_layers - 1}")

    tokens, _ = model.to_tokens(args.prompt)
    plain = greedy(cfg, model.params, tokens, args.new_tokens)
    print(f"\n[plain]   {model.to_string(plain[0])}")

    # steering vector: difference of the residual entering `layer` at the last token of two prompts
    pos_t, _ = model.to_tokens(args.positive)
    neg_t, _ = model.to_tokens(args.negative)
    _, pc = model.run_with_cache(pos_t, sites=["resid_pre"], layers=[layer])
    _, nc = model.run_with_cache(neg_t, sites=["resid_pre"], layers=[layer])
    vector = pc["resid_pre", layer][0, -1] - nc["resid_pre", layer][0, -1]
    # every position but the first (BOS), on the prompt and on each generated token
    steer = Add("resid_pre", layer=layer, vector=vector, coeff=args.coeff,
                positions=jnp.arange(1, tokens.shape[1] + args.new_tokens))
    steered = greedy(cfg, model.params, tokens, args.new_tokens, interventions=steer)
    print(f"[steered] {model.to_string(steered[0])}")
    print(f"          (resid_pre[{layer}][1:] += {args.coeff} * (resid({args.positive!r}) - resid({args.negative!r})))")

    # activation patching: clean vs corrupted prompt of equal length, every (layer, position) at once
    clean, _ = model.to_tokens(args.prompt)
    corrupt, _ = model.to_tokens(args.corrupt)
    if clean.shape != corrupt.shape:
        print(f"\n(skipping patching: --corrupt tokenizes to {corrupt.shape[1]} tokens, --prompt to {clean.shape[1]})")
        return
    clean_logits, cache = model.run_with_cache(clean, sites=["resid_pre"])
    answer = int(np.argmax(np.asarray(clean_logits)[0, -1]))
    T = clean.shape[1]

    @jax.jit
    def prob_of_answer(l, p):
        iv = Patch("resid_pre", layer=l, value=cache["resid_pre"][l], positions=p[None])
        logits = interpjax.model._run(cfg, model.params, jnp.asarray(corrupt), jnp.ones_like(corrupt), None,
                                      (iv,), (), ())[0]
        return jax.nn.softmax(logits[0, -1].astype(jnp.float32))[answer]

    L, P = jnp.meshgrid(jnp.arange(cfg.n_layers), jnp.arange(T), indexing="ij")
    interpjax.model._prepare(cfg, model.params, corrupt, None,
                             Patch("resid_pre", layer=0, value=cache["resid_pre"][0], positions=jnp.array([0])))
    t0 = time.perf_counter()
    probs = np.asarray(jax.vmap(jax.vmap(prob_of_answer))(L, P))
    dt = time.perf_counter() - t0
    base = float(jax.nn.softmax(interpjax.forward(cfg, model.params, corrupt)[0, -1])[answer])
    print(f"\n[patching] P({model.to_string([answer])!r}) after patching clean resid_pre[layer, pos] into the "
          f"corrupted prompt ({cfg.n_layers * T} variants, one vmapped program, {dt:.2f}s incl. compile)")
    print(f"           corrupted baseline {base:.3f}; clean {float(jax.nn.softmax(clean_logits[0, -1])[answer]):.3f}")
    words = [model.to_string([int(t)]) or "·" for t in clean[0]]
    print("           " + "".join(f"{w[:6]:>7s}" for w in words))
    for l in range(cfg.n_layers):
        print(f"  layer {l:2d}  " + "".join(f"{p:7.2f}" for p in probs[l]))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="interpjax", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="load a model, steer a generation and run a patching sweep")
    _model_arg(demo)
    demo.add_argument("--prompt", default="Once upon a time, there was a little girl named")
    demo.add_argument("--corrupt", default="Once upon a time, there was a little boy named")
    demo.add_argument("--positive", default=" dog")
    demo.add_argument("--negative", default=" girl")
    demo.add_argument("--layer", type=int, default=None, help="steering layer (default: 3/5 of the depth)")
    demo.add_argument("--coeff", type=float, default=0.5)
    demo.add_argument("--new-tokens", type=int, default=30)
    demo.set_defaults(fn=cmd_demo)
    sites = sub.add_parser("sites", help="list the site vocabulary with shapes for a model")
    _model_arg(sites)
    sites.add_argument("--seq", type=int, default=16)
    sites.set_defaults(fn=cmd_sites)
    args = parser.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
