"""The canonical decoder: embed -> lax.scan over stacked layers -> final norm -> unembed.

Every supported family runs through this one function, driven by a frozen ``Config``. Per-layer
weights carry a leading layer axis and the layer loop is a ``lax.scan`` whose index is a traced
value, so compile time does not grow with depth and "which layer" can be a vmapped array.

Interventions are applied at every site as ``where(layer == iv.layer, edit(x), x)``; requested
activations are recorded into buffers sized by what was asked for.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from . import interventions as ivmod
from .config import Config
from .sites import LAYER_SITES, SITES, check_site, site_shape

F32 = jnp.float32


# ---------------------------------------------------------------------------------------------
# building blocks


def norm(cfg: Config, p: dict, x):
    """LayerNorm or RMSNorm, computed in float32 and cast back like the HF reference."""
    xf = x.astype(F32)
    if cfg.norm == "rmsnorm":
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + cfg.norm_eps)
        return y.astype(x.dtype) * p["scale"]
    mu = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mu), axis=-1, keepdims=True)
    y = (xf - mu) * jax.lax.rsqrt(var + cfg.norm_eps) * p["scale"].astype(F32)
    if "bias" in p:
        y = y + p["bias"].astype(F32)
    return y.astype(x.dtype)


def activation(name: str, x):
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name in ("gelu_tanh", "gelu_fast"):
        return jax.nn.gelu(x, approximate=True)
    if name == "silu":
        return jax.nn.silu(x)
    if name == "relu":
        return jax.nn.relu(x)
    if name == "quick_gelu":
        return x * jax.nn.sigmoid(1.702 * x)
    raise ValueError(f"unknown activation {name!r}")


def rope_inv_freq(cfg: Config) -> np.ndarray:
    """Inverse frequencies of the rotary embedding (float32, with llama3/linear scaling)."""
    R = cfg.rotary_dim
    inv = 1.0 / (np.float32(cfg.rotary_base) ** (np.arange(0, R, 2, dtype=np.int64).astype(np.float32) / np.float32(R)))
    inv = inv.astype(np.float32)
    if cfg.rope_scaling == "linear":
        inv = inv / np.float32(cfg.rope_factor)
    elif cfg.rope_scaling == "llama3":
        f, lo, hi, old = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor, cfg.rope_original_ctx
        wavelen = 2 * np.pi / inv
        scaled = np.where(wavelen > old / lo, inv / f, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / f + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def rotary_tables(cfg: Config, pos_BT):
    """cos/sin tables [B, T, R] laid out for the config's rotary style."""
    angles = pos_BT.astype(F32)[..., None] * jnp.asarray(rope_inv_freq(cfg))  # [B, T, R/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    if cfg.rotary_style == "half":
        return jnp.concatenate([cos, cos], -1), jnp.concatenate([sin, sin], -1)
    return jnp.repeat(cos, 2, axis=-1), jnp.repeat(sin, 2, axis=-1)


def apply_rotary(cfg: Config, x_BTNH, cos_BTR, sin_BTR):
    R = cfg.rotary_dim
    xr, xp = x_BTNH[..., :R], x_BTNH[..., R:]
    if cfg.rotary_style == "half":
        x1, x2 = xr[..., : R // 2], xr[..., R // 2:]
        rotated = jnp.concatenate([-x2, x1], -1)
    else:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        rotated = jnp.stack([-x2, x1], -1).reshape(xr.shape)
    cos, sin = cos_BTR[:, :, None, :].astype(x_BTNH.dtype), sin_BTR[:, :, None, :].astype(x_BTNH.dtype)
    out = xr * cos + rotated * sin
    return jnp.concatenate([out, xp], -1) if R < x_BTNH.shape[-1] else out


# ---------------------------------------------------------------------------------------------
# one layer


def attention(cfg: Config, p: dict, x_BTD, ctx, tap):
    B, T, _ = x_BTD.shape
    N, K, H = cfg.n_heads, cfg.kv_heads, cfg.d_head
    G = N // K
    q = jnp.einsum("btd,dnh->btnh", x_BTD, p["q"])
    k = jnp.einsum("btd,dkh->btkh", x_BTD, p["k"])
    v = jnp.einsum("btd,dkh->btkh", x_BTD, p["v"])
    if cfg.qkv_bias:
        q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
    q, k, v = tap("q", q), tap("k", k), tap("v", v)
    if cfg.positions == "rotary":
        q = apply_rotary(cfg, q, ctx["cos"], ctx["sin"])
        k = apply_rotary(cfg, k, ctx["cos"], ctx["sin"])
    scores = jnp.einsum("btkgh,bskh->bkgts", q.reshape(B, T, K, G, H), k, preferred_element_type=F32)
    scores = scores.reshape(B, N, T, T) * F32(cfg.scale)
    allowed = ctx["allowed_BTS"] & ((ctx["window"] == 0) | (ctx["dist_TS"] < ctx["window"]))
    scores = jnp.where(allowed[:, None], scores, F32(ivmod.MASK_VALUE))
    scores = tap("attn_scores", scores)
    pattern = tap("pattern", jax.nn.softmax(scores, axis=-1))
    z = jnp.einsum("bkgts,bskh->btkgh", pattern.astype(v.dtype).reshape(B, K, G, T, T), v)
    z = tap("z", z.reshape(B, T, N, H))
    out = jnp.einsum("btnh,nhd->btd", z, p["o"])
    if cfg.o_bias:
        out = out + p["o_bias"]
    return tap("attn_out", out)


def mlp(cfg: Config, p: dict, x_BTD, tap):
    pre = jnp.einsum("btd,df->btf", x_BTD, p["gate" if cfg.mlp == "gated" else "up"])
    if cfg.mlp_bias:
        pre = pre + p["gate_bias" if cfg.mlp == "gated" else "up_bias"]
    pre = tap("mlp_pre", pre)
    post = activation(cfg.activation, pre)
    if cfg.mlp == "gated":
        up = jnp.einsum("btd,df->btf", x_BTD, p["up"])
        if cfg.mlp_bias:
            up = up + p["up_bias"]
        post = post * up
    post = tap("mlp_post", post)
    out = jnp.einsum("btf,fd->btd", post, p["down"])
    if cfg.mlp_bias:
        out = out + p["down_bias"]
    return tap("mlp_out", out)


def block(cfg: Config, p: dict, x_BTD, ctx, tap):
    x = tap("resid_pre", x_BTD)
    h = norm(cfg, p["ln1"], x)
    attn_out = attention(cfg, p["attn"], h, ctx, tap)
    mid = tap("resid_mid", x + attn_out)
    if cfg.parallel_residual:
        mlp_in = h if cfg.shared_norm else norm(cfg, p["ln2"], x)
    else:
        mlp_in = norm(cfg, p["ln2"], mid)
    return tap("resid_post", mid + mlp(cfg, p["mlp"], mlp_in, tap))


# ---------------------------------------------------------------------------------------------
# the whole model


def positions_from_mask(mask_BT):
    """Position ids that skip padding: a left-padded row counts from its first real token."""
    return jnp.maximum(jnp.cumsum(mask_BT.astype(jnp.int32), axis=1) - 1, 0)


def embed(cfg: Config, params: dict, tokens_BT, pos_BT):
    x = jnp.take(params["embed"]["tok"], tokens_BT, axis=0)
    if cfg.positions == "learned":
        x = x + jnp.take(params["embed"]["pos"], pos_BT, axis=0)
    return x


def unembed(cfg: Config, params: dict, final_BTD):
    if cfg.tie_embeddings:
        return jnp.einsum("btd,vd->btv", final_BTD, params["embed"]["tok"])
    logits = jnp.einsum("btd,dv->btv", final_BTD, params["unembed"]["w"])
    if cfg.unembed_bias:
        logits = logits + params["unembed"]["b"]
    return logits


def compute_dtype(params: dict):
    return params["embed"]["tok"].dtype


def _make_tap(ivs: tuple, layer_index, wanted: tuple, sink: dict):
    """The hook every site passes through: apply this site's interventions, record if wanted."""

    def tap(site, x):
        x = ivmod.apply_at(ivs, site, x, layer_index)
        if site in wanted:
            sink[site] = x
        return x

    return tap


def _run(cfg: Config, params: dict, tokens_BT, mask_BT, pos_BT, ivs: tuple, record: tuple, layers: tuple,
         remat: bool = False):
    """Run the model; returns (logits, {site: recorded activations}). ``record`` and ``layers``
    are static: layer sites are recorded for ``layers`` only, stacked on a leading axis.
    ``remat`` recomputes each layer in the backward pass instead of storing its activations."""
    B, T = tokens_BT.shape
    pos = positions_from_mask(mask_BT) if pos_BT is None else pos_BT
    ctx = {
        "allowed_BTS": (jnp.arange(T)[None, :, None] >= jnp.arange(T)[None, None, :]) & (mask_BT[:, None, :] > 0),
        "dist_TS": jnp.arange(T)[:, None] - jnp.arange(T)[None, :],
    }
    if cfg.positions == "rotary":
        ctx["cos"], ctx["sin"] = rotary_tables(cfg, pos)
    recorded = {}
    global_tap = _make_tap(ivs, None, record, recorded)
    x = global_tap("embed", embed(cfg, params, tokens_BT, pos))

    layer_record = tuple(s for s in record if s in LAYER_SITES)
    all_layers = layers == tuple(range(cfg.n_layers))
    slot_of_layer = np.full(cfg.n_layers, len(layers), np.int32)
    for i, layer in enumerate(layers):
        slot_of_layer[layer] = i

    def body(carry, xs):
        x, bufs = carry
        p, idx, window = xs
        seen = {}
        tap = _make_tap(ivs, idx, layer_record, seen)
        if remat:
            if layer_record:
                raise ValueError("remat=True cannot record layer activations")
            y = jax.checkpoint(lambda p, x, w: block(cfg, p, x, dict(ctx, window=w), tap))(p, x, window)
        else:
            y = block(cfg, p, x, dict(ctx, window=window), tap)
        if all_layers:
            return (y, bufs), seen
        slot = jnp.asarray(slot_of_layer)[idx]
        bufs = {s: jax.lax.dynamic_update_index_in_dim(bufs[s], seen[s].astype(bufs[s].dtype), slot, 0) for s in bufs}
        return (y, bufs), None

    bufs = {}
    if layer_record and not all_layers:
        bufs = {s: jnp.zeros((len(layers) + 1,) + site_shape(cfg, s, B, T), site_dtype(params, s)) for s in layer_record}
    xs = (params["layers"], jnp.arange(cfg.n_layers), jnp.asarray(cfg.windows, jnp.int32))
    (x, bufs), ys = jax.lax.scan(body, (x, bufs), xs)
    if layer_record:
        recorded.update(ys if all_layers else {s: b[: len(layers)] for s, b in bufs.items()})

    final = global_tap("final", norm(cfg, params["final_norm"], x))
    logits = global_tap("logits", unembed(cfg, params, final))
    return logits, recorded


def site_dtype(params: dict, site: str):
    """Attention scores and patterns are kept in float32; everything else in the compute dtype."""
    return F32 if site in ("attn_scores", "pattern") else compute_dtype(params)


@functools.partial(jax.jit, static_argnums=(0, 6, 7))
def _run_jit(cfg, params, tokens_BT, mask_BT, pos_BT, ivs, record, layers):
    return _run(cfg, params, tokens_BT, mask_BT, pos_BT, ivs, record, layers)


# ---------------------------------------------------------------------------------------------
# public entry points


def _prepare(cfg: Config, params: dict, tokens, attention_mask, interventions, position_ids=None):
    """Validate everything before compute; returns (tokens_BT, mask_BT, pos_BT or None, interventions)."""
    tokens = jnp.asarray(tokens) if not isinstance(tokens, jax.core.Tracer) else tokens
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    if tokens.ndim == 1:
        raise ValueError(f"tokens must be [batch, seq]; got shape {tokens.shape} (use tokens[None] for one sequence)")
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, seq]; got shape {tokens.shape}")
    B, T = tokens.shape
    if T > cfg.n_ctx:
        raise ValueError(f"sequence length {T} exceeds the model context n_ctx={cfg.n_ctx}")
    if T == 0:
        raise ValueError("empty sequence: tokens has 0 positions")
    concrete = ivmod._concrete(tokens)
    if concrete is not None and concrete.size and (concrete.min() < 0 or concrete.max() >= cfg.vocab_size):
        bad = concrete[(concrete < 0) | (concrete >= cfg.vocab_size)]
        raise ValueError(f"token ids {sorted(set(bad.tolist()))[:5]} outside the vocabulary 0..{cfg.vocab_size - 1}")
    if attention_mask is None:
        mask = jnp.ones((B, T), jnp.int32)
    else:
        mask = attention_mask if isinstance(attention_mask, jax.core.Tracer) else jnp.asarray(attention_mask)
        if mask.shape != (B, T):
            raise ValueError(f"attention_mask has shape {mask.shape}; expected {(B, T)} like tokens")
        mask = mask.astype(jnp.int32)
    if position_ids is not None:
        position_ids = jnp.asarray(position_ids, jnp.int32)
        if position_ids.shape != (B, T):
            raise ValueError(f"position_ids has shape {position_ids.shape}; expected {(B, T)} like tokens")
        top = ivmod._concrete(position_ids)
        if top is not None and (top.min() < 0 or top.max() >= cfg.n_ctx):
            raise ValueError(f"position_ids must lie in 0..{cfg.n_ctx - 1}")
    ivs = ivmod.compose(interventions) if interventions is not None else ()
    ivmod.validate(ivs, cfg, B, T, compute_dtype(params))
    return tokens, mask, position_ids, ivs


def forward(cfg: Config, params: dict, tokens, attention_mask=None, interventions=None, *, position_ids=None):
    """Logits [B, T, V] of ``tokens`` [B, T] with ``interventions`` (one, a sequence, or None).

    Padding: ``attention_mask`` [B, T] (1 = real token) works with left or right padding; position
    ids then skip the padding unless ``position_ids`` are given explicitly.
    """
    tokens, mask, pos, ivs = _prepare(cfg, params, tokens, attention_mask, interventions, position_ids)
    return _run_jit(cfg, params, tokens, mask, pos, ivs, (), ())[0]


@struct.dataclass
class Cache:
    """Recorded activations: ``cache[site]`` is stacked [layer, B, T, ...] over ``layers`` for layer
    sites (plain [B, T, ...] for embed/final/logits); ``cache[site, layer]`` picks one layer."""

    acts: dict
    layers: tuple = struct.field(pytree_node=False)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            site, layer = key
            if site not in self.acts:
                raise KeyError(f"site {site!r} was not recorded; recorded: {sorted(self.acts)}")
            if layer not in self.layers:
                raise KeyError(f"layer {layer} was not recorded; recorded layers: {list(self.layers)}")
            return self.acts[site][self.layers.index(layer)]
        if key not in self.acts:
            raise KeyError(f"site {key!r} was not recorded; recorded: {sorted(self.acts)}")
        return self.acts[key]

    def __contains__(self, site):
        return site in self.acts

    def keys(self):
        return self.acts.keys()


def _normalize_request(cfg: Config, sites, layers):
    if isinstance(sites, str):
        sites = (sites,)
    sites = tuple(sites) if sites is not None else SITES
    for s in sites:
        check_site(s)
    if layers is None:
        layers = tuple(range(cfg.n_layers))
    else:
        layers = tuple(int(l) for l in np.atleast_1d(np.asarray(layers)))
        bad = [l for l in layers if not 0 <= l < cfg.n_layers]
        if bad:
            raise ValueError(f"layers {bad} out of range: valid layers are 0..{cfg.n_layers - 1}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers {list(layers)} contain duplicates")
    if not any(s in LAYER_SITES for s in sites):
        layers = ()
    return sites, layers


def run_with_cache(cfg: Config, params: dict, tokens, sites=None, layers=None, attention_mask=None,
                   interventions=None, *, position_ids=None):
    """(logits, Cache) recording only ``sites`` at ``layers`` (defaults: every site, every layer).

    Recorded activations are the values after any intervention at that site.
    """
    sites, layers = _normalize_request(cfg, sites, layers)
    tokens, mask, pos, ivs = _prepare(cfg, params, tokens, attention_mask, interventions, position_ids)
    logits, acts = _run_jit(cfg, params, tokens, mask, pos, ivs, sites, layers)
    return logits, Cache(acts=acts, layers=layers)
