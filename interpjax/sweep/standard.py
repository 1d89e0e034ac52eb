"""Standard sweeps on top of ``sweep``: activation patching, per-head patching, steering and
ablation, each returning a ``Labelled`` array (axis names, layer/head/position ticks, positions
labelled with their tokens) that ``.plot(path)`` turns into a heatmap."""

from __future__ import annotations


import jax.numpy as jnp
import numpy as np

from ..core import inputs
from ..core import model as M
from ..core.interventions import ABLATE_KINDS, Ablate, Add, Patch
from ..core.sites import LAYER_SITES, feature_shape
from . import grid as G
from .engine import unpack_model, sweep
from .plot import Labelled

__all__ = ["ablation", "head_patching", "patching", "steering", "token_labels"]

RESID_SITES = tuple(s for s in LAYER_SITES if s in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"))
HEAD_PATCH_SITES = ("z", "pattern")


def token_labels(model, tokens_T) -> tuple:
    """Tick labels ``"p:token"`` for one row of tokens (ids when the model has no tokenizer)."""
    tok = getattr(model, "tokenizer", None)
    out = []
    for p, t in enumerate(np.asarray(tokens_T).tolist()):
        s = tok.decode([t]) if tok is not None else str(t)
        out.append(f"{p}:{s}")
    return tuple(out)


def _layers(cfg, layers):
    return np.asarray(inputs.check_layers(cfg, layers, allow_empty=False), np.int32)


def _positions(T, positions):
    ps = np.arange(T) if positions is None else inputs.check_positions(np.atleast_1d(positions), T)
    return np.where(ps < 0, ps + T, ps).astype(np.int32)


def check_heads(cfg, heads):
    """Head indices [Hs] checked against the model (None = every head)."""
    if heads is None:
        return np.arange(cfg.n_heads, dtype=np.int32)
    hs = np.atleast_1d(np.asarray(heads))
    if hs.dtype == bool or not np.issubdtype(hs.dtype, np.integer):
        raise ValueError(f"heads must be integers; got {hs.tolist()[:5]} (dtype {hs.dtype}); "
                         f"valid heads are 0..{cfg.n_heads - 1}")
    bad = [int(h) for h in hs if not 0 <= h < cfg.n_heads]
    if bad or hs.size == 0:
        raise ValueError(f"heads {hs.tolist()} invalid: valid heads are 0..{cfg.n_heads - 1}")
    return hs.astype(np.int32)


def _check_pair(clean, corrupted):
    clean, corrupted = np.asarray(clean), np.asarray(corrupted)
    if clean.shape != corrupted.shape:
        raise ValueError(f"clean tokens {clean.shape} and corrupted tokens {corrupted.shape} must have the same shape")
    return clean, corrupted


def _label(model, values, grid, names, clean_row, title, pos_axis_names=("position",)):
    ticks = []
    labels = token_labels(model, clean_row)
    for name, t in zip(names, grid.ticks):
        ticks.append(tuple(labels[int(p)] for p in t) if name in pos_axis_names else tuple(t))
    return Labelled(np.asarray(values), tuple(names), tuple(ticks), title)


def patching(model, clean, corrupted, metric, site: str = "resid_pre", by=("layer", "position"), layers=None,
             positions=None, **sweep_kw) -> Labelled:
    """Activation patching: run ``corrupted`` with ``site[layer][:, position]`` replaced by the
    clean run's value; ``by`` is ("layer", "position") or ("layer",) (all positions at once)."""
    cfg, params = unpack_model(model)
    if site not in RESID_SITES:
        raise ValueError(f"patching site {site!r} not supported; valid: {RESID_SITES} (heads: head_patching)")
    by = tuple(by)
    if by not in (("layer", "position"), ("layer",)):
        raise ValueError(f"by={by}; valid: ('layer', 'position') or ('layer',)")
    clean, corrupted = _check_pair(clean, corrupted)
    ls = _layers(cfg, layers)
    _, cache = M.run_with_cache(cfg, params, clean, sites=[site], layers=tuple(int(l) for l in ls))
    lay = G.zip(layer=ls, value=cache[site], name="layer")
    if by == ("layer",):
        grid = lay.build(lambda a: Patch(site, layer=a.layer, value=a.value))
    else:
        ps = _positions(clean.shape[1], positions)
        grid = G.product(lay, position=ps).build(
            lambda a: Patch(site, layer=a.layer, value=a.value, positions=a.position))
    vals = sweep((cfg, params), corrupted, grid, metric, **sweep_kw)
    return _label(model, vals, grid, by, clean[0], f"patching {site} (clean -> corrupted)")


def head_patching(model, clean, corrupted, metric, site: str = "z", by=("layer", "head"), layers=None, heads=None,
                  positions=None, **sweep_kw) -> Labelled:
    """Per-head patching of ``z`` or ``pattern`` from the clean run into ``corrupted``; ``by`` is
    ("layer", "head"), ("layer", "head", "position") or ("head", "position") (then give one layer)."""
    cfg, params = unpack_model(model)
    if site not in HEAD_PATCH_SITES:
        raise ValueError(f"head patching site {site!r} not supported; valid: {HEAD_PATCH_SITES}")
    by = tuple(by)
    valid = (("layer", "head"), ("layer", "head", "position"), ("head", "position"))
    if by not in valid:
        raise ValueError(f"by={by}; valid: {valid}")
    clean, corrupted = _check_pair(clean, corrupted)
    ls = _layers(cfg, layers)
    if by == ("head", "position") and ls.size != 1:
        raise ValueError(f"by=('head', 'position') patches one layer: pass layers=<one layer>, got {ls.tolist()}")
    hs = check_heads(cfg, heads)
    _, cache = M.run_with_cache(cfg, params, clean, sites=[site], layers=tuple(int(l) for l in ls))
    lay = G.zip(layer=ls, value=cache[site], name="layer")
    axes = [lay] if "layer" in by else []
    axes.append(G.axis("head", hs))
    if "position" in by:
        axes.append(G.axis("position", _positions(clean.shape[1], positions)))
    space = G.product(*axes)
    if "layer" in by:
        def build(a):
            return Patch(site, layer=a.layer, value=a.value, heads=a.head,
                         positions=a.position if "position" in by else None)
    else:
        l0, v0 = int(ls[0]), cache[site][0]

        def build(a):
            return Patch(site, layer=l0, value=v0, heads=a.head, positions=a.position)
    grid = space.build(build)
    vals = sweep((cfg, params), corrupted, grid, metric, **sweep_kw)
    title = f"patching {site} per head (clean -> corrupted)" + ("" if "layer" in by else f", layer {int(ls[0])}")
    return _label(model, vals, grid, by, clean[0], title)


def steering(model, tokens, vector, coeffs, metric, layers=None, site: str = "resid_pre", positions=None,
             **sweep_kw) -> Labelled:
    """Steering: ``site[layer] += coeff * vector`` (at ``positions``, default all) for every layer x
    coefficient."""
    cfg, params = unpack_model(model)
    if site not in RESID_SITES:
        raise ValueError(f"steering site {site!r} not supported; valid: {RESID_SITES}")
    ls = _layers(cfg, layers)
    cs = np.asarray(coeffs, np.float32).reshape(-1)
    if cs.size == 0:
        raise ValueError("coeffs is empty")
    vec = jnp.asarray(vector, M.compute_dtype(params))
    pos = None if positions is None else jnp.asarray(_positions(np.shape(tokens)[1], positions))
    grid = G.product(layer=ls, coeff=cs).build(
        lambda a: Add(site, layer=a.layer, vector=vec, coeff=a.coeff, positions=pos))
    vals = sweep((cfg, params), tokens, grid, metric, **sweep_kw)
    return Labelled(np.asarray(vals), ("layer", "coeff"), grid.ticks, f"steering {site} += coeff * v")


def ablation(model, tokens, metric, kind: str = "zero", per: str = "layer", site: str | None = None, layers=None,
             heads=None, source_tokens=None, key=None, **sweep_kw) -> Labelled:
    """Ablate ``site`` per layer (default ``attn_out``) or per head (default ``z``): ``kind`` is
    zero, mean (over every token of ``source_tokens``, default ``tokens``) or resample (each prompt's
    activations replaced by a random source prompt's, drawn with ``key``)."""
    cfg, params = unpack_model(model)
    if kind not in ABLATE_KINDS:
        raise ValueError(f"ablation kind {kind!r}; valid: {ABLATE_KINDS}")
    if per not in ("layer", "head"):
        raise ValueError(f"per={per!r}; valid: 'layer', 'head'")
    site = site or ("attn_out" if per == "layer" else "z")
    valid_sites = RESID_SITES + ("mlp_post",) if per == "layer" else ("z", "q", "k", "v")
    if site not in valid_sites:
        raise ValueError(f"ablation site {site!r} for per={per!r} not supported; valid: {valid_sites}")
    tokens = np.asarray(tokens)
    ls = _layers(cfg, layers)
    fields = {"layer": ls}
    if kind != "zero":
        src = tokens if source_tokens is None else np.asarray(source_tokens)
        _, cache = M.run_with_cache(cfg, params, src, sites=[site], layers=tuple(int(l) for l in ls))
        acts = cache[site]  # [L, Bs, Ts, ...feature]
        if kind == "mean":
            fields["source"] = acts.reshape((acts.shape[0], -1) + feature_shape(cfg, site))
        else:
            if src.shape[1] != tokens.shape[1]:
                raise ValueError(f"resample ablation needs source prompts as long as tokens ({tokens.shape[1]}), "
                                 f"got {src.shape[1]}")
            fields["source"] = acts
    if kind == "resample" and key is None:
        raise ValueError("resample ablation needs a PRNG key (key=jax.random.PRNGKey(0))")
    lay = G.zip(name="layer", **fields)
    if per == "head":
        hs = check_heads(cfg, heads) if site != "k" and site != "v" else np.arange(cfg.kv_heads, dtype=np.int32)
        space = G.product(lay, head=hs)
    else:
        space = lay
    src_of = (lambda a: a.source) if kind != "zero" else (lambda a: None)

    def build(a):
        return Ablate(site, layer=a.layer, kind=kind, source=src_of(a), key=key,
                      heads=a.head if per == "head" else None)

    grid = space.build(build)
    vals = sweep((cfg, params), tokens, grid, metric, **sweep_kw)
    names = ("layer", "head") if per == "head" else ("layer",)
    return Labelled(np.asarray(vals), names, grid.ticks, f"{kind}-ablation of {site} per {per}")


