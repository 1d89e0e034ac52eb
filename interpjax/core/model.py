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

from . import inputs, interventions as ivmod
from .config import Config
from .sites import ATTN_SITES, LAYER_SITES, SITES, check_site, site_shape

F32 = jnp.float32


# ---------------------------------------------------------------------------------------------
# building blocks


def norm(cfg: Config, p: dict, x):
    """LayerNorm or RMSNorm, computed in float32 and cast back like the HF reference."""
    xf = x.astype(F32)
    if cfg.norm == "rmsnorm":
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + cfg.norm_eps)
        if cfg.norm_offset:  # Gemma: (offset + w) multiplied in float32, then cast
            return (y * (F32(cfg.norm_offset) + p["scale"].astype(F32))).astype(x.dtype)
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


def rope_inv_freq(cfg: Config, local: bool = False) -> np.ndarray:
    """Inverse frequencies of the rotary embedding (float32, with llama3/linear scaling); ``local``:
    those of windowed layers (``cfg.rotary_base_local``, never scaled)."""
    R = cfg.rotary_dim
    base = cfg.rotary_base_local if local else cfg.rotary_base
    inv = 1.0 / (np.float32(base) ** (np.arange(0, R, 2, dtype=np.int64).astype(np.float32) / np.float32(R)))
    inv = inv.astype(np.float32)
    if local:
        return inv
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


def rotary_tables(cfg: Config, pos_BT, local: bool = False):
    """cos/sin tables [B, T, R] laid out for the config's rotary style (``local``: windowed layers')."""
    angles = pos_BT.astype(F32)[..., None] * jnp.asarray(rope_inv_freq(cfg, local))  # [B, T, R/2]
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


def attention(cfg: Config, p: dict, x_BTD, ctx, tap, past_kv=None):
    """Attention of the T new positions over S keys: ``past_kv`` (post-rotary [B, S0, K, H] keys
    and values of earlier positions, or None) followed by the new positions themselves.
    Returns (attn_out, (k, v)) with the new positions' post-rotary keys and values."""
    B, T, _ = x_BTD.shape
    N, K, H = cfg.n_heads, cfg.kv_heads, cfg.d_head
    G = N // K
    q = jnp.einsum("btd,dnh->btnh", x_BTD, p["q"])
    k = jnp.einsum("btd,dkh->btkh", x_BTD, p["k"])
    v = jnp.einsum("btd,dkh->btkh", x_BTD, p["v"])
    if cfg.qkv_bias:
        q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
    if cfg.qk_norm:
        q, k = norm(cfg, p["q_norm"], q), norm(cfg, p["k_norm"], k)
    q, k, v = tap("q", q), tap("k", k), tap("v", v)
    if cfg.positions == "rotary":
        q = apply_rotary(cfg, q, ctx["cos"], ctx["sin"])
        k = apply_rotary(cfg, k, ctx["cos"], ctx["sin"])
    k_all, v_all = k, v
    if past_kv is not None:
        k_all = jnp.concatenate([past_kv[0].astype(k.dtype), k], axis=1)
        v_all = jnp.concatenate([past_kv[1].astype(v.dtype), v], axis=1)
    S = k_all.shape[1]
    scores = jnp.einsum("btkgh,bskh->bkgts", q.reshape(B, T, K, G, H), k_all, preferred_element_type=F32)
    scores = scores.reshape(B, N, T, S) * F32(cfg.scale)
    if cfg.attn_softcap:
        scores = jnp.tanh(scores / F32(cfg.attn_softcap)) * F32(cfg.attn_softcap)
    allowed = ctx["allowed_BTS"] & ((ctx["window"] == 0) | (ctx["dist_BTS"] < ctx["window"]))
    scores = jnp.where(allowed[:, None], scores, F32(ivmod.MASK_VALUE))
    scores = tap("attn_scores", scores)
    pattern = tap("pattern", jax.nn.softmax(scores, axis=-1))
    z = jnp.einsum("bkgts,bskh->btkgh", pattern.astype(v.dtype).reshape(B, K, G, T, S), v_all)
    z = tap("z", z.reshape(B, T, N, H))
    out = jnp.einsum("btnh,nhd->btd", z, p["o"])
    if cfg.o_bias:
        out = out + p["o_bias"]
    if cfg.sandwich_norm:
        out = norm(cfg, p["post_norm"], out)
    return tap("attn_out", out), (k, v)


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
    if cfg.sandwich_norm:
        out = norm(cfg, p["post_norm"], out)
    return tap("mlp_out", out)


def block(cfg: Config, p: dict, x_BTD, ctx, tap, past_kv=None):
    """One layer; returns (resid_post, (k, v) of the new positions)."""
    x = tap("resid_pre", x_BTD)
    if cfg.post_norm:  # BERT: normalise after each residual add
        attn_out, kv = attention(cfg, p["attn"], x, ctx, tap, past_kv)
        mid = tap("resid_mid", norm(cfg, p["ln1"], x + attn_out))
        return tap("resid_post", norm(cfg, p["ln2"], mid + mlp(cfg, p["mlp"], mid, tap))), kv
    h = norm(cfg, p["ln1"], x)
    attn_out, kv = attention(cfg, p["attn"], h, ctx, tap, past_kv)
    mid = tap("resid_mid", x + attn_out)
    if cfg.parallel_residual:
        mlp_in = h if cfg.shared_norm else norm(cfg, p["ln2"], x)
    else:
        mlp_in = norm(cfg, p["ln2"], mid)
    return tap("resid_post", mid + mlp(cfg, p["mlp"], mlp_in, tap)), kv


# ---------------------------------------------------------------------------------------------
# the whole model


def positions_from_mask(mask_BT):
    """Position ids that skip padding: a left-padded row counts from its first real token."""
    return jnp.maximum(jnp.cumsum(mask_BT.astype(jnp.int32), axis=1) - 1, 0)


def embed(cfg: Config, params: dict, tokens_BT, pos_BT, types_BT=None):
    """Token (+ learned position, + token type) embedding, then the embedding norm if any."""
    types = None if not cfg.type_vocab_size else (jnp.zeros_like(tokens_BT) if types_BT is None else types_BT)
    return embed_rows(cfg, params, jnp.take(params["embed"]["tok"], tokens_BT, axis=0), pos_BT, types)


def embed_rows(cfg: Config, params: dict, rows_BTD, pos_BT, types_BT=None):
    """``embed`` from given rows of the token-embedding table [B, T, D] instead of token ids: the
    entry point for soft inputs (mixtures of token embeddings, optimised embeddings). The rows are
    scaled, get positions / token types added and normed exactly as a looked-up token's row is."""
    x = rows_BTD
    if cfg.embed_scale != 1.0:
        x = x * jnp.asarray(cfg.embed_scale, x.dtype)
    if cfg.positions == "learned":
        x = x + jnp.take(params["embed"]["pos"], pos_BT, axis=0)
    if cfg.type_vocab_size:
        types = jnp.zeros(rows_BTD.shape[:2], jnp.int32) if types_BT is None else types_BT
        x = x + jnp.take(params["embed"]["type"], types, axis=0)
    if cfg.embed_norm:
        x = norm(cfg, params["embed"]["norm"], x)
    return x


def forward_rows(cfg: Config, params: dict, rows_BTD, mask_BT=None, ivs: tuple = ()):
    """Logits [B, T, V] of the model fed embedding-table rows [B, T, D] instead of token ids
    (traceable and differentiable in the rows; ``mask_BT`` left padding, default all ones). With the
    rows of real tokens it computes what ``run`` does on those tokens (equal to float rounding)."""
    B, T, _ = rows_BTD.shape
    mask = jnp.ones((B, T), jnp.int32) if mask_BT is None else mask_BT
    pos = positions_from_mask(mask)
    idx = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    ctx = make_ctx(cfg, idx, mask, idx, mask, rope_pos_BT=pos)
    tap = _make_tap(ivs, None, (), {})
    x = tap("embed", embed_rows(cfg, params, rows_BTD.astype(compute_dtype(params)), pos))
    x, _, _ = run_layers(cfg, params, x, ctx, ivs, (), ())
    return tap("logits", unembed(cfg, params, tap("final", final_norm(cfg, params, x))))


def unembed(cfg: Config, params: dict, final_BTD):
    """The output head on final hidden states [..., D]: logits [..., V] ([..., D] for head="none")."""
    if cfg.head == "none":
        return final_BTD
    x = final_BTD
    if cfg.head == "bert_mlm":
        h = params["head"]
        x = activation(cfg.activation, jnp.einsum("...d,de->...e", x, h["w"]) + h["b"])
        x = norm(cfg, h["norm"], x)
    if cfg.tie_embeddings:
        logits = jnp.einsum("...d,vd->...v", x, params["embed"]["tok"])
    else:
        logits = jnp.einsum("...d,dv->...v", x, params["unembed"]["w"])
    if cfg.unembed_bias:
        logits = logits + params["unembed"]["b"]
    return cap_logits(cfg, logits)


def cap_logits(cfg: Config, logits):
    """Final-logit soft-capping (Gemma 2: cap * tanh(logits / cap)); identity when off."""
    if not cfg.final_softcap:
        return logits
    cap = jnp.asarray(cfg.final_softcap, logits.dtype)
    return jnp.tanh(logits / cap) * cap


def final_norm(cfg: Config, params: dict, x_BTD):
    """The final norm (identity for models without one, e.g. BERT)."""
    return norm(cfg, params["final_norm"], x_BTD) if cfg.final_norm else x_BTD


def final_logits(cfg: Config, params: dict, x_BTD):
    """Final norm + head of a last-layer residual, without taps (for lenses and segment runs)."""
    return unembed(cfg, params, final_norm(cfg, params, x_BTD))


def compute_dtype(params: dict):
    return params["embed"]["tok"].dtype


def _make_tap(ivs: tuple, layer_index, wanted: tuple, sink: dict, apply=None):
    """The hook every site passes through: apply this site's interventions (or ``apply(site, x,
    layer_index)`` when given), record if wanted."""

    def tap(site, x):
        x = apply(site, x, layer_index) if apply is not None else ivmod.apply_at(ivs, site, x, layer_index)
        if site in wanted:
            sink[site] = x
        return x

    return tap


def make_ctx(cfg: Config, q_pos_BT, q_valid_BT, k_pos_BS, k_valid_BS, *, rope_pos_BT=None):
    """Attention context for T query positions over S keys (past keys first, then the queries).

    ``q_pos``/``k_pos`` are sequence indices (buffer slots): they decide causality (key index <=
    query index unless ``cfg.causal`` is False) and local windows (query index - key index < w).
    ``k_valid`` masks padding keys. ``rope_pos_BT`` are the position ids the rotary embedding uses
    for the queries (default ``q_pos``; pass ids that skip left padding). ``q_valid`` is accepted
    for symmetry: outputs at invalid (padding) queries are unspecified and should be ignored.
    """
    del q_valid_BT
    k_valid_BS = jnp.asarray(k_valid_BS)
    k_ok_BS = k_valid_BS if k_valid_BS.dtype == jnp.bool_ else k_valid_BS > 0
    allowed = jnp.broadcast_to(k_ok_BS[:, None, :], (q_pos_BT.shape[0], q_pos_BT.shape[1], k_pos_BS.shape[1]))
    if cfg.causal:
        allowed = allowed & (k_pos_BS[:, None, :] <= q_pos_BT[:, :, None])
    ctx = {"allowed_BTS": allowed, "dist_BTS": q_pos_BT[:, :, None] - k_pos_BS[:, None, :]}
    if cfg.positions == "rotary":
        rope_pos = q_pos_BT if rope_pos_BT is None else rope_pos_BT
        ctx["cos"], ctx["sin"] = rotary_tables(cfg, rope_pos)
        if cfg.rotary_base_local:  # windowed layers pick these inside the scan (layer_ctx)
            ctx["cos_local"], ctx["sin_local"] = rotary_tables(cfg, rope_pos, local=True)
    return ctx


def layer_ctx(ctx: dict, window):
    """One layer's context inside the scan: its (traced) window and, for configs with a local
    rope base, the rotary tables of its kind (local when it has a window)."""
    out = dict(ctx, window=window)
    if "cos_local" in ctx:
        local = window > 0
        out["cos"] = jnp.where(local, ctx["cos_local"], ctx["cos"])
        out["sin"] = jnp.where(local, ctx["sin_local"], ctx["sin"])
    return out


def _record_shape(cfg: Config, site: str, B: int, T: int, S: int):
    return (B, cfg.n_heads, T, S) if site in ATTN_SITES else site_shape(cfg, site, B, T)


def run_layers(cfg: Config, params: dict, x_BTD, ctx, ivs: tuple, record: tuple, layers: tuple,
                start: int = 0, stop: int | None = None, past_kv=None, return_kv: bool = False,
                remat: bool = False, first=None, apply=None):
    """Run layers ``start..stop-1`` (static) on the residual ``x_BTD`` of T positions.

    ``first``: an optional traced layer index; layers below it pass ``x`` through unchanged (a
    ``lax.cond`` per layer), so one compiled program serves every start layer (the sweep engine
    packs variants that start at different layers into one program this way). ``apply(site, x,
    layer_index)`` replaces the application of ``ivs`` at every site (the sweep engine's packed rows).

    ``past_kv``: (k, v) [stop-start, B, S0, K, H] post-rotary keys/values of earlier positions for
    those layers, attended before the new positions (``ctx`` must describe S0 + T keys). Layer
    sites in ``record`` are recorded for ``layers`` (a subset of start..stop-1), stacked on a
    leading axis. Returns (x, recorded, (k, v) [stop-start, B, T, K, H] if ``return_kv`` else None).
    """
    stop = cfg.n_layers if stop is None else stop
    if not 0 <= start < stop <= cfg.n_layers:
        raise ValueError(f"layer range {start}..{stop - 1} is not inside 0..{cfg.n_layers - 1}")
    if first is not None and (record or return_kv or remat):
        raise ValueError("a dynamic first layer cannot record activations, return keys/values or remat")
    outside = [l for l in layers if not start <= l < stop]
    if outside:
        raise ValueError(f"cannot record layers {outside}: only layers {start}..{stop - 1} run here")
    B, T, _ = x_BTD.shape
    S = ctx["allowed_BTS"].shape[-1]
    layer_record = tuple(s for s in record if s in LAYER_SITES)
    all_layers = tuple(layers) == tuple(range(start, stop))
    slot_of_layer = np.full(cfg.n_layers, len(layers), np.int32)
    for i, layer in enumerate(layers):
        slot_of_layer[layer] = i

    def body(carry, xs):
        x, bufs = carry
        p, idx, window, past = xs
        seen = {}
        tap = _make_tap(ivs, idx, layer_record, seen, apply)
        run = lambda p, x, w, past: block(cfg, p, x, layer_ctx(ctx, w), tap, past)
        if remat:
            if layer_record:
                raise ValueError("remat=True cannot record layer activations")
            run = jax.checkpoint(run)
        if first is None:
            y, kv = run(p, x, window, past)
        else:
            y, kv = jax.lax.cond(idx >= first, lambda: run(p, x, window, past)[0], lambda: x), None
        out = {"kv": kv} if return_kv else {}
        if all_layers:
            out.update(seen)
        elif layer_record:
            slot = jnp.asarray(slot_of_layer)[idx]
            bufs = {s: jax.lax.dynamic_update_index_in_dim(bufs[s], seen[s].astype(bufs[s].dtype), slot, 0)
                    for s in bufs}
        return (y, bufs), out

    bufs = {}
    if layer_record and not all_layers:
        bufs = {s: jnp.zeros((len(layers) + 1,) + _record_shape(cfg, s, B, T, S), site_dtype(params, s))
                for s in layer_record}
    lp = params["layers"] if (start, stop) == (0, cfg.n_layers) else jax.tree.map(lambda a: a[start:stop], params["layers"])
    xs = (lp, jnp.arange(start, stop), jnp.asarray(cfg.windows[start:stop], jnp.int32), past_kv)
    (x, bufs), ys = jax.lax.scan(body, (x_BTD, bufs), xs)
    recorded = {}
    if layer_record:
        recorded = {s: ys[s] for s in layer_record} if all_layers else {s: b[: len(layers)] for s, b in bufs.items()}
    return x, recorded, (ys["kv"] if return_kv else None)


def run(cfg: Config, params: dict, tokens_BT, mask_BT, pos_BT, ivs: tuple, record: tuple, layers: tuple,
         remat: bool = False, types_BT=None, trim: bool = False):
    """Run the model; returns (logits, {site: recorded activations}). ``record`` and ``layers``
    are static: layer sites are recorded for ``layers`` only, stacked on a leading axis.
    ``remat`` recomputes each layer in the backward pass instead of storing its activations.
    ``trim`` computes no more than ``record`` needs and returns (None, recorded) unless ``logits`` is
    recorded: the layer scan stops after the deepest recorded layer and there is no unembedding."""
    B, T = tokens_BT.shape
    pos = positions_from_mask(mask_BT) if pos_BT is None else pos_BT
    idx = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    ctx = make_ctx(cfg, idx, mask_BT, idx, mask_BT, rope_pos_BT=pos)
    recorded = {}
    global_tap = _make_tap(ivs, None, record, recorded)
    x = global_tap("embed", embed(cfg, params, tokens_BT, pos, types_BT))
    head = not trim or "final" in record or "logits" in record  # the final norm (and maybe logits) is needed
    if head or any(s in LAYER_SITES for s in record):
        stop = cfg.n_layers if head or not layers else max(layers) + 1
        x, layer_acts, _ = run_layers(cfg, params, x, ctx, ivs, record, layers, stop=stop, remat=remat)
        recorded.update(layer_acts)
    if not head:
        return None, recorded
    final = global_tap("final", final_norm(cfg, params, x))
    if trim and "logits" not in record:
        return None, recorded
    logits = global_tap("logits", unembed(cfg, params, final))
    return logits, recorded


def run_recorded(cfg: Config, params: dict, tokens_BT, mask_BT, pos_BT, ivs: tuple, record: tuple, layers: tuple,
                 types_BT=None):
    """Only the recorded activations of ``run``, computing no more of the model than they need
    (activation datasets of early layers skip most of the model)."""
    return run(cfg, params, tokens_BT, mask_BT, pos_BT, ivs, record, layers, types_BT=types_BT, trim=True)[1]


run_recorded_jit = jax.jit(run_recorded, static_argnums=(0, 6, 7))


def site_dtype(params: dict, site: str):
    """Attention scores and patterns are kept in float32; everything else in the compute dtype."""
    return F32 if site in ("attn_scores", "pattern") else compute_dtype(params)


@functools.partial(jax.jit, static_argnums=(0, 6, 7))
def run_jit(cfg, params, tokens_BT, mask_BT, pos_BT, ivs, record, layers, types_BT=None):
    return run(cfg, params, tokens_BT, mask_BT, pos_BT, ivs, record, layers, types_BT=types_BT)


def _check_types(cfg: Config, token_type_ids, shape):
    """Validate token-type ids (BERT segment ids) against the config; None stays None."""
    return inputs.check_token_types(cfg, token_type_ids, shape)


# ---------------------------------------------------------------------------------------------
# public entry points


def prepare(cfg: Config, params: dict, tokens, attention_mask, interventions, position_ids=None):
    """Validate everything before compute; returns (tokens_BT, mask_BT, pos_BT or None, interventions).

    Tokens, mask and position ids are checked by ``core.inputs`` on the caller's values (before
    any cast), then handed on as int32 jax arrays."""
    tokens = jnp.asarray(inputs.check_tokens(cfg, tokens))
    B, T = tokens.shape
    mask = jnp.asarray(inputs.check_mask(attention_mask, (B, T)))
    position_ids = inputs.check_position_ids(cfg, position_ids, (B, T))
    ivs = ivmod.compose(interventions) if interventions is not None else ()
    ivmod.validate(ivs, cfg, B, T, compute_dtype(params))
    return tokens, mask, position_ids, ivs


def forward(cfg: Config, params: dict, tokens, attention_mask=None, interventions=None, *, position_ids=None,
            token_type_ids=None):
    """Logits [B, T, V] of ``tokens`` [B, T] with ``interventions`` (one, a sequence, or None).

    Padding: ``attention_mask`` [B, T] (1 = real token) works with left or right padding; position
    ids then skip the padding unless ``position_ids`` are given explicitly. Encoders with
    ``head="none"`` return the final hidden states [B, T, D] instead of logits.
    """
    tokens, mask, pos, ivs = prepare(cfg, params, tokens, attention_mask, interventions, position_ids)
    types = _check_types(cfg, token_type_ids, tokens.shape)
    return run_jit(cfg, params, tokens, mask, pos, ivs, (), (), types)[0]


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
    """(sites, layers) as static tuples: known sites, integer layers in range without duplicates
    (``core.inputs.check_layers``); no layers when no layer site is asked for."""
    if isinstance(sites, str):
        sites = (sites,)
    sites = tuple(sites) if sites is not None else SITES
    for s in sites:
        check_site(s)
    layers = inputs.check_layers(cfg, layers)
    if not any(s in LAYER_SITES for s in sites):
        layers = ()
    return sites, layers


def run_with_cache(cfg: Config, params: dict, tokens, sites=None, layers=None, attention_mask=None,
                   interventions=None, *, position_ids=None, token_type_ids=None):
    """(logits, Cache) recording only ``sites`` at ``layers`` (defaults: every site, every layer).

    Recorded activations are the values after any intervention at that site.
    """
    sites, layers = _normalize_request(cfg, sites, layers)
    tokens, mask, pos, ivs = prepare(cfg, params, tokens, attention_mask, interventions, position_ids)
    types = _check_types(cfg, token_type_ids, tokens.shape)
    logits, acts = run_jit(cfg, params, tokens, mask, pos, ivs, sites, layers, types)
    return logits, Cache(acts=acts, layers=layers)
