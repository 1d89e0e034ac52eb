"""One converter per Hugging Face family: HF config + weights -> (Config, params) and back."""

from __future__ import annotations

from types import ModuleType

import jax.numpy as jnp
import numpy as np

from ...core.config import Config
from . import bert, gemma, gpt2, gpt_neo, gpt_neox, gptj, llama, phi3, qwen3
from .common import Weights

FAMILIES: dict[str, ModuleType] = {t: m for m in (gpt2, gpt_neox, gptj, gpt_neo, llama, bert, gemma, qwen3, phi3)
                                   for t in m.MODEL_TYPES}
SUPPORTED = tuple(sorted(FAMILIES))


def converter(model_type: str) -> ModuleType:
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported architecture {model_type!r}; supported model types: {', '.join(SUPPORTED)}")
    return FAMILIES[model_type]


def config_from_hf(hf_config) -> Config:
    """HF config (PretrainedConfig or its dict) -> Config; refuses fields it does not handle."""
    d = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
    return converter(d.get("model_type")).config_from_hf(d)


def expected_shapes(cfg: Config) -> dict:
    """The params pytree's shapes for a config (the contract every converter must meet)."""
    L, D, N, K, H, F, V = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.d_mlp, cfg.vocab_size
    ln = lambda: {"scale": (L, D), **({"bias": (L, D)} if cfg.norm == "layernorm" and cfg.norm_bias else {})}
    attn = {"q": (L, D, N, H), "k": (L, D, K, H), "v": (L, D, K, H), "o": (L, N, H, D)}
    if cfg.qkv_bias:
        attn.update(q_bias=(L, N, H), k_bias=(L, K, H), v_bias=(L, K, H))
    if cfg.o_bias:
        attn["o_bias"] = (L, D)
    if cfg.qk_norm:
        attn.update(q_norm={"scale": (L, H)}, k_norm={"scale": (L, H)})
    mlp = {"up": (L, D, F), "down": (L, F, D)}
    if cfg.mlp == "gated":
        mlp["gate"] = (L, D, F)
    if cfg.mlp_bias:
        mlp.update(up_bias=(L, F), down_bias=(L, D), **({"gate_bias": (L, F)} if cfg.mlp == "gated" else {}))
    if cfg.sandwich_norm:
        attn["post_norm"], mlp["post_norm"] = ln(), ln()
    layers = {"ln1": ln(), "attn": attn, "mlp": mlp}
    if not cfg.shared_norm:
        layers["ln2"] = ln()
    shapes = {"embed": {"tok": (V, D)}, "layers": layers}
    if cfg.final_norm:
        shapes["final_norm"] = {k: v[1:] for k, v in ln().items()}
    if cfg.positions == "learned":
        shapes["embed"]["pos"] = (cfg.n_ctx, D)
    if cfg.type_vocab_size:
        shapes["embed"]["type"] = (cfg.type_vocab_size, D)
    if cfg.embed_norm:
        shapes["embed"]["norm"] = {k: v[1:] for k, v in ln().items()}
    if cfg.head == "bert_mlm":
        shapes["head"] = {"w": (D, D), "b": (D,), "norm": {k: v[1:] for k, v in ln().items()}}
    if cfg.head != "none":
        unembed = {} if cfg.tie_embeddings else {"w": (D, V)}
        if cfg.unembed_bias:
            unembed["b"] = (V,)
        if unembed:
            shapes["unembed"] = unembed
    return shapes


def check_shapes(cfg: Config, params: dict, where: str = "params") -> None:
    """Raise a ValueError naming every weight whose shape (or presence) disagrees with the config."""
    want = expected_shapes(cfg)
    problems = []

    def walk(w, p, path):
        if isinstance(w, dict):
            if not isinstance(p, dict):
                problems.append(f"{path}: expected a dict of {sorted(w)}")
                return
            for k in sorted(set(w) | set(p)):
                if k not in p:
                    problems.append(f"{path}/{k}: missing")
                elif k not in w:
                    problems.append(f"{path}/{k}: unexpected for this config")
                else:
                    walk(w[k], p[k], f"{path}/{k}")
        elif tuple(np.shape(p)) != tuple(w):
            problems.append(f"{path}: shape {tuple(np.shape(p))}, config needs {tuple(w)}")

    walk(want, params, where)
    if problems:
        raise ValueError("weights disagree with the config:\n  " + "\n  ".join(problems[:20]))


def params_from_hf(cfg: Config, get, names, dtype=jnp.float32, owned: bool = False) -> dict:
    """Build params from a name -> array getter, check shapes, cast to ``dtype`` as JAX arrays.

    ``owned``: the getter returns fresh arrays already in ``dtype`` (the GGUF reader); leaves are
    then handed to JAX one at a time (without a copy where the backend allows) so loading never
    holds two copies of the params."""
    mod = converter(cfg.family)
    w = Weights(get, names, mod.PREFIXES)
    p = mod.params_from_hf(w, cfg)
    check_shapes(cfg, p, "checkpoint")
    import jax

    if not owned:
        return jax.tree.map(lambda a: jnp.asarray(np.asarray(a), dtype=dtype), p)
    leaves, tree = jax.tree.flatten(p)
    del p
    for i, a in enumerate(leaves):
        a = np.asarray(a)
        if a.dtype != jnp.dtype(dtype):
            a = np.asarray(jnp.asarray(a, dtype=dtype))
        leaves[i] = jax.device_put(a if a.flags.c_contiguous else np.ascontiguousarray(a))
        del a
    return jax.tree.unflatten(tree, leaves)


def params_to_hf(cfg: Config, params: dict) -> dict:
    """params -> HF state dict (numpy arrays, HF names) for the family that produced ``cfg``."""
    import jax

    p = jax.tree.map(lambda a: np.asarray(a, dtype=np.float32), params)
    return converter(cfg.family).params_to_hf(p, cfg)
