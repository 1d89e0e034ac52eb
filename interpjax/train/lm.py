"""The language-model loss on the one Trainer: GPT-2-style initialisation, masked next-token
cross-entropy, and ``LMLoss``, the loss object ``Trainer(cfg, ...)`` trains with."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..core import model as M
from ..core.config import Config
from ..io.convert import expected_shapes
from .data import check_train_tokens


def init_params(cfg: Config, key, dtype=jnp.float32) -> dict:
    """GPT-2-style init: N(0, 0.02) matrices, output projections scaled by 1/sqrt(2L), unit norms."""
    shapes = expected_shapes(cfg)
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
        shapes, is_leaf=lambda x: isinstance(x, tuple))[0]]
    keys = jax.random.split(key, len(leaves))
    out = []
    for path, shape, k in zip(paths, leaves, keys):
        if "scale" in path:
            out.append(jnp.ones(shape, dtype))
        elif "bias" in path or path.endswith("['b']"):
            out.append(jnp.zeros(shape, dtype))
        else:
            std = 0.02 / np.sqrt(2 * cfg.n_layers) if ("'o'" in path or "'down'" in path) else 0.02
            out.append((std * jax.random.normal(k, shape)).astype(dtype))
    return jax.tree.unflatten(treedef, out)


def lm_loss(cfg: Config, params: dict, tokens_BT, loss_mask_BT=None, remat: bool = False):
    """Mean next-token cross-entropy and accuracy. ``loss_mask_BT[b, t]`` weights the loss of
    predicting ``tokens[b, t]`` from the prefix before it (position 0 is never predicted)."""
    B, T = tokens_BT.shape
    logits = M.run(cfg, params, tokens_BT, jnp.ones((B, T), jnp.int32), None, (), (), (), remat=remat)[0]
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    target = tokens_BT[:, 1:]
    nll = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    w = jnp.ones_like(nll) if loss_mask_BT is None else loss_mask_BT[:, 1:].astype(jnp.float32)
    denom = jnp.maximum(w.sum(), 1.0)
    acc = ((logp.argmax(-1) == target).astype(jnp.float32) * w).sum() / denom
    return (nll * w).sum() / denom, acc


@dataclass(frozen=True)
class LMLoss:
    """``loss(params, batch, key) -> (loss, {"acc"})`` on batches ``{"tokens": [B, T], "loss_mask":
    [B, T] (optional)}``; ``remat`` recomputes each layer in the backward pass. Hashable by value, so
    every Trainer of one config shares one compiled step."""

    cfg: Config
    remat: bool = False
    loss_name = "loss"

    def __call__(self, params, batch, key):
        del key
        loss, acc = lm_loss(self.cfg, params, batch["tokens"], batch["loss_mask"], self.remat)
        return loss, {"acc": acc}

    def check_batch(self, batch) -> dict:
        """Host-side checks before compute (see ``check_train_tokens``); a missing mask is all ones."""
        if not isinstance(batch, dict) or "tokens" not in batch:
            raise ValueError(f"an LM training batch is a dict {{'tokens': [B, T], 'loss_mask': [B, T] (optional)}}; "
                             f"got {type(batch).__name__}" + (f" with keys {sorted(batch)}" if isinstance(batch, dict)
                                                               else ""))
        tokens, mask = check_train_tokens(self.cfg, batch["tokens"], batch.get("loss_mask"), min_len=2)
        return {"tokens": tokens, "loss_mask": np.ones(tokens.shape, np.float32) if mask is None else mask}
