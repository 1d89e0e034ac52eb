"""Command line: ``interpjax demo`` (load a model, steer it, patch it), ``interpjax sites``,
``interpjax steer`` (unsteered vs steered continuations side by side) and ``interpjax read``
(a LAT token x layer scan of a text as a self-contained HTML page)."""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

DEFAULT_MODEL_ENV = "INTERPJAX_MODEL"
USAGE_ERROR = 2  # exit status of every user error (as argparse uses)


class UserError(Exception):
    """A mistake in what the user passed: reported as one line on stderr, exit status 2."""


def _fail(msg: str):
    raise UserError(msg)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (no usage block), exit status 2."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def _int_in(lo: int, hi: int | None = None):
    """An argparse type: an integer in lo..hi (hi None = unbounded)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            valid = f"{lo} or more" if hi is None else f"{lo}..{hi}"
            raise argparse.ArgumentTypeError(f"{v} is out of range: valid values are {valid}")
        return v

    return parse


def _existing_file(flag: str, path: str | None) -> None:
    if path is not None and not os.path.isfile(path):
        _fail(f"{flag} {path}: no such file" if not os.path.exists(path) else f"{flag} {path}: not a file")


def _writable(flag: str, path: str | None) -> None:
    """Check, before any work, that ``path`` can be written: its folder exists and takes a file."""
    if path is None:
        return
    import tempfile

    target = os.path.abspath(path)
    folder = os.path.dirname(target)
    if os.path.isdir(target):
        _fail(f"{flag} {path}: is a folder, not a file name")
    if not os.path.isdir(folder):
        _fail(f"{flag} {path}: folder {folder} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".interpjax-write-check-"):
            pass
    except OSError as e:
        _fail(f"{flag} {path}: cannot write in {folder} ({e.strerror or e})")


def _check_new_tokens(model, prompt_len: int, new_tokens: int) -> None:
    n_ctx = model.cfg.n_ctx
    if prompt_len + new_tokens > n_ctx:
        _fail(f"--new-tokens {new_tokens}: the prompt ({prompt_len} tokens) plus {new_tokens} new tokens exceeds "
              f"the model context n_ctx={n_ctx}; valid: 1..{max(n_ctx - prompt_len, 0)}")


def _model_arg(p: argparse.ArgumentParser):
    p.add_argument("--model", default=os.environ.get(DEFAULT_MODEL_ENV),
                   help=f"local checkpoint folder or hub id (default: ${DEFAULT_MODEL_ENV})")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def _load(args):
    import interpjax

    if not args.model:
        _fail(f"pass --model PATH_OR_HUB_ID or set ${DEFAULT_MODEL_ENV}")
    t0 = time.perf_counter()
    try:
        model = interpjax.load(args.model, dtype=args.dtype)
    except (OSError, ValueError, TypeError) as e:
        _fail(f"cannot load model {args.model!r}: {e}")
    n = sum(int(np.prod(a.shape)) for a in __import__("jax").tree.leaves(model.params))
    print(f"loaded {args.model}: {model.cfg.family}, {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
          f"{n:,} params, {args.dtype} ({time.perf_counter() - t0:.1f}s)")
    return model


def cmd_sites(args):
    model = _load(args)
    if args.seq > model.cfg.n_ctx:
        _fail(f"--seq {args.seq} exceeds the model context n_ctx={model.cfg.n_ctx}; valid: 1..{model.cfg.n_ctx}")
    for row in model.sites(batch=1, seq=args.seq):
        layers = f"x{row['layers']} layers" if row["layers"] else "global"
        print(f"  {row['site']:11s} {str(row['shape']):22s} {layers:12s} {row['doc']}")


def cmd_demo(args):
    """Greedy continuation, a steering vector (ActAdd-style difference of residuals), and an
    activation-patching sweep over layers x positions compiled as one vmapped program."""
    import jax
    import jax.numpy as jnp

    import interpjax
    from . import Add, Patch
    from .generate import greedy

    model = _load(args)
    cfg = model.cfg
    layer = args.layer if args.layer is not None else (3 * cfg.n_layers) // 5
    if not 0 <= layer < cfg.n_layers:
        _fail(f"--layer {layer} out of range: valid layers are 0..{cfg.n_layers - 1}")

    tokens, _ = model.to_tokens(args.prompt)
    _check_new_tokens(model, tokens.shape[1], args.new_tokens)
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
        logits = interpjax.core.model.run(cfg, model.params, jnp.asarray(corrupt), jnp.ones_like(corrupt), None,
                                      (iv,), (), ())[0]
        return jax.nn.softmax(logits[0, -1].astype(jnp.float32))[answer]

    L, P = jnp.meshgrid(jnp.arange(cfg.n_layers), jnp.arange(T), indexing="ij")
    interpjax.core.model.prepare(cfg, model.params, corrupt, None,
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


def _side_by_side(left: str, right: str, titles=("unsteered", "steered"), width: int = 52) -> str:
    import textwrap

    a, b = textwrap.wrap(left, width) or [""], textwrap.wrap(right, width) or [""]
    n = max(len(a), len(b))
    a, b = a + [""] * (n - len(a)), b + [""] * (n - len(b))
    lines = [f"{titles[0]:<{width}} | {titles[1]}", f"{'-' * width}-+-{'-' * width}"]
    return "\n".join(lines + [f"{x:<{width}} | {y}" for x, y in zip(a, b)])


def cmd_steer(args):
    """Build a steering vector (ActAdd from one prompt pair, or CAA/RepE from several) and print the
    unsteered and steered continuations of --prompt side by side."""
    from .methods import steering as st
    from .generate import generate

    if args.vector is None and (not args.positive or not args.negative):
        _fail("pass --positive and --negative (or --vector FILE)")
    _existing_file("--vector", args.vector)
    _writable("--save", args.save)
    model = _load(args)
    try:
        if args.vector:
            vec = st.SteeringVector.load(args.vector, model=model)
        elif args.method == "actadd":
            if len(args.positive) != 1 or len(args.negative) != 1:
                _fail("--method actadd takes exactly one --positive and one --negative prompt")
            vec = st.actadd(model, args.positive[0], args.negative[0], args.layer, site=args.site)
        else:
            vec = st.from_contrast(model, args.positive, args.negative, args.layer, site=args.site, method=args.method)
        tokens, mask = model.to_tokens([args.prompt])
        _check_new_tokens(model, tokens.shape[1], args.new_tokens)
        total = tokens.shape[1] + args.new_tokens
        dtype = model.params["embed"]["tok"].dtype
        iv = vec.intervention(args.coeff, seq_len=total if vec.per_position else None, dtype=dtype)
        kw = dict(attention_mask=mask, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
        plain = generate(model.cfg, model.params, tokens, args.new_tokens, **kw)
        steered = generate(model.cfg, model.params, tokens, args.new_tokens, iv, **kw)
    except (ValueError, OSError) as e:
        _fail(str(e))
    if args.save:
        vec.save(args.save)
    show = lambda g: model.tokenizer.decode(g.tokens[0][g.mask[0] > 0].tolist(), skip_special_tokens=True)  # noqa: E731
    where = "front-aligned" if vec.per_position else "every position"
    print(f"\n{vec.method} vector at {vec.site}[{vec.layer}], coeff {args.coeff}, added {where}\n")
    print(_side_by_side(show(plain), show(steered), ("unsteered", f"steered (coeff {args.coeff})")))
    if args.save:
        print(f"\nsaved the vector to {args.save}")


def _read_pairs(path: str):
    _existing_file("--pairs", path)
    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        _fail(f"--pairs {path}: cannot read it as UTF-8 text ({e})")
    pos, neg = [], []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            _fail(f"{path}:{i + 1}: expected 'positive<TAB>negative', got {len(parts)} field(s)")
        pos.append(parts[0])
        neg.append(parts[1])
    return pos, neg


def cmd_read(args):
    """Reading vectors from contrast pairs (or a saved file), then the LAT scan of --text as HTML."""
    from .methods import reading as rd

    pos, neg = list(args.positive or []), list(args.negative or [])
    if args.pairs:
        p, n = _read_pairs(args.pairs)
        pos, neg = pos + p, neg + n
    if args.vector is None and not (pos or neg):
        _fail("pass contrast pairs (--positive/--negative, or --pairs FILE) or --vector FILE")
    _existing_file("--vector", args.vector)
    layers = None
    if args.layers is not None:
        try:
            layers = [int(x) for x in args.layers.split(",")]
        except ValueError:
            _fail(f"--layers {args.layers!r}: expected comma-separated layer numbers, e.g. 2,3,4")
    for flag, path in (("--out", args.out), ("--png", args.png), ("--save", args.save)):
        _writable(flag, path)
    model = _load(args)
    try:
        if args.vector:
            rv = rd.ReadingVectors.load(args.vector, model=model)
        else:
            rv = rd.reading_vectors(model, pos, neg, site=args.site, method=args.method, label=args.label)
        s = rd.scan(model, args.text, rv)
        if layers is not None:
            bad = [l for l in layers if l not in s.layers]
            if bad:
                _fail(f"--layers {bad} not in the scanned layers {list(s.layers)}")
    except (ValueError, OSError) as e:
        _fail(str(e))
    out = rd.render_html(s, args.out, layers=layers)
    print(f"wrote {out} ({len(s.tokens)} tokens x {len(s.layers)} layers)")
    if args.png:
        print(f"wrote {rd.heatmap_png(s, args.png)}")
    if args.save:
        print(f"wrote {rv.save(args.save)}")
    if "train_pair_accuracy" in rv.meta:
        print("train pair accuracy per layer: " + " ".join(f"L{l}:{a:.2f}" for l, a in
                                                         zip(rv.layers, rv.meta["train_pair_accuracy"])))


def main(argv=None):
    """Run the command line; a user error is one line on stderr and exit status 2 (no traceback)."""
    try:
        args = _parser().parse_args(argv)
        args.fn(args)
    except UserError as e:
        msg = str(e)
        print(msg if msg.startswith("interpjax") else f"interpjax: {msg}", file=sys.stderr)
        sys.exit(USAGE_ERROR)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="interpjax", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="load a model, steer a generation and run a patching sweep")
    _model_arg(demo)
    demo.add_argument("--prompt", default="Once upon a time, there was a little girl named")
    demo.add_argument("--corrupt", default="Once upon a time, there was a little boy named")
    demo.add_argument("--positive", default=" dog")
    demo.add_argument("--negative", default=" girl")
    demo.add_argument("--layer", type=int, default=None, help="steering layer (default: 3/5 of the depth)")
    demo.add_argument("--coeff", type=float, default=0.5)
    demo.add_argument("--new-tokens", type=_int_in(1), default=30)
    demo.set_defaults(fn=cmd_demo)
    sites = sub.add_parser("sites", help="list the site vocabulary with shapes for a model")
    _model_arg(sites)
    sites.add_argument("--seq", type=_int_in(1), default=16)
    sites.set_defaults(fn=cmd_sites)

    steer = sub.add_parser("steer", help="steer a generation: unsteered vs steered continuations side by side")
    _model_arg(steer)
    steer.add_argument("--positive", action="append", help="positive prompt (repeat for a contrast set)")
    steer.add_argument("--negative", action="append", help="negative prompt (repeat for a contrast set)")
    steer.add_argument("--method", default="actadd", choices=["actadd", "mean_diff", "pca"])
    steer.add_argument("--vector", help="a saved steering vector (.safetensors) instead of prompts")
    steer.add_argument("--site", default="resid_pre")
    steer.add_argument("--layer", type=int, default=0)
    steer.add_argument("--coeff", type=float, default=4.0)
    steer.add_argument("--prompt", required=True)
    steer.add_argument("--new-tokens", type=_int_in(1), default=40)
    steer.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    steer.add_argument("--top-k", type=int, default=0)
    steer.add_argument("--top-p", type=float, default=1.0)
    steer.add_argument("--seed", type=int, default=0)
    steer.add_argument("--save", help="also save the steering vector to this .safetensors file")
    steer.set_defaults(fn=cmd_steer)

    read = sub.add_parser("read", help="LAT scan: score every token x layer of a text against a reading vector (HTML)")
    _model_arg(read)
    read.add_argument("--positive", action="append", help="positive text of a pair (repeat)")
    read.add_argument("--negative", action="append", help="negative text of a pair (repeat)")
    read.add_argument("--pairs", help="file of 'positive<TAB>negative' lines")
    read.add_argument("--vector", help="saved reading vectors (.safetensors) instead of pairs")
    read.add_argument("--site", default="resid_post")
    read.add_argument("--method", default="pca", choices=["pca", "mean_diff"])
    read.add_argument("--label", default="")
    read.add_argument("--text", required=True)
    read.add_argument("--layers", help="comma-separated layers averaged for the coloured line (default all)")
    read.add_argument("--out", default="lat_scan.html")
    read.add_argument("--png", help="also write the token x layer heatmap PNG here")
    read.add_argument("--save", help="also save the reading vectors to this .safetensors file")
    read.set_defaults(fn=cmd_read)
    return parser


if __name__ == "__main__":
    main()
