"""The ``Model`` handle: a config, params and tokenizer bound to the pure functions, and ``load``.

``Model`` is a JAX pytree whose only child is ``params``; ``cfg``, ``tokenizer`` and ``name`` are
static. So a model passes through ``jax.jit`` (cfg becomes a compile-time constant, as it is for
the pure functions), ``jax.grad`` (gradients come back as a ``Model``), ``jax.vmap`` (a stack of
param sets) and ``jax.tree.map`` without unbundling it first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from .config import Config
from ..io.loading import load_params, load_tokenizer
from .model import forward, run_with_cache
from .sites import list_sites


class ByIdentity:
    """Static pytree data compared by object identity: lets an unhashable tokenizer ride along as
    compile-time data (two models share compiled programs only when they share the tokenizer object)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, ByIdentity) and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)

    def __repr__(self):
        return f"ByIdentity({type(self.obj).__name__})"


@jax.tree_util.register_pytree_with_keys_class
@dataclass(frozen=True, eq=False, repr=False)
class Model:
    """``model(tokens, ...)`` runs with the bound params; ``model.apply(params, tokens, ...)`` is the
    pure function of params (what you jit, vmap or differentiate with respect to weights).

    As a pytree, ``params`` is the one child and (``cfg``, tokenizer identity, ``name``) the static
    data: ``jax.jit(lambda m, t: m(t))(model, tokens)`` compiles once per config and tokenizer.
    Equality and hashing are by identity (params are arrays)."""

    cfg: Config
    params: dict
    tokenizer: Any = None
    name: str = ""

    # -- pytree protocol ------------------------------------------------------------------------

    def tree_flatten_with_keys(self):
        return ((jax.tree_util.GetAttrKey("params"), self.params),), (self.cfg, ByIdentity(self.tokenizer), self.name)

    def tree_flatten(self):
        return (self.params,), (self.cfg, ByIdentity(self.tokenizer), self.name)

    @classmethod
    def tree_unflatten(cls, aux, children):
        cfg, tokenizer, name = aux
        return cls(cfg=cfg, params=children[0], tokenizer=tokenizer.obj, name=name)

    def replace(self, **changes) -> "Model":
        """A copy with some fields changed, e.g. ``model.replace(params=new_params)``."""
        return dataclasses.replace(self, **changes)

    def __repr__(self):
        cfg = self.cfg
        shape = "" if cfg is None else (f", family={cfg.family!r}, n_layers={cfg.n_layers}, d_model={cfg.d_model}, "
                                        f"vocab_size={cfg.vocab_size}")
        return f"Model(name={self.name!r}{shape})"

    # -- running --------------------------------------------------------------------------------

    def apply(self, params, tokens, attention_mask=None, interventions=None, **kw):
        return forward(self.cfg, params, tokens, attention_mask, interventions, **kw)

    def __call__(self, tokens, attention_mask=None, interventions=None, **kw):
        return forward(self.cfg, self.params, tokens, attention_mask, interventions, **kw)

    def run_with_cache(self, tokens, sites=None, layers=None, attention_mask=None, interventions=None, **kw):
        return run_with_cache(self.cfg, self.params, tokens, sites, layers, attention_mask, interventions, **kw)

    def generate(self, prompts, max_new_tokens: int, interventions=None, **kw):
        """KV-cache generation (see ``interpjax.generate.generate``); ``prompts`` may be text(s),
        which are tokenized left-padded, or token ids [B, T] with ``attention_mask=`` in ``kw``."""
        from ..generate import generate

        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], str)):
            prompts, kw["attention_mask"] = self.to_tokens(prompts)
        return generate(self.cfg, self.params, prompts, max_new_tokens, interventions, **kw)

    def sites(self, batch: int = 1, seq: int | None = None) -> list[dict]:
        return list_sites(self.cfg, batch, seq)

    # -- text -----------------------------------------------------------------------------------

    def to_tokens(self, texts, prepend_bos: bool | None = None):
        """Tokenize one text or a list: (tokens [B, T] int32, attention_mask [B, T]), left-padded."""
        if self.tokenizer is None:
            raise ValueError(f"model {self.name!r} has no tokenizer; pass token ids instead")
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if not texts:
            raise ValueError("no texts to tokenize")
        tok = self.tokenizer
        ids = [tok(t, add_special_tokens=True if prepend_bos is None else prepend_bos)["input_ids"] for t in texts]
        if prepend_bos and tok.bos_token_id is not None:
            ids = [i if i[:1] == [tok.bos_token_id] else [tok.bos_token_id] + i for i in ids]
        empty = [t for t, i in zip(texts, ids) if not i]
        if empty:
            raise ValueError(f"texts tokenize to nothing: {empty[:3]}")
        T = max(len(i) for i in ids)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        tokens = np.full((len(ids), T), pad, np.int32)
        mask = np.zeros((len(ids), T), np.int32)
        for r, i in enumerate(ids):
            tokens[r, T - len(i):] = i
            mask[r, T - len(i):] = 1
        return tokens, mask

    def to_string(self, ids) -> str:
        return self.tokenizer.decode(list(np.asarray(ids).tolist()))


def require_model(model, what: str = "this method") -> Model:
    """``model`` itself if it is a ``Model``; a ``TypeError`` that says how to make one otherwise
    (methods take the handle first, not a config and params)."""
    if isinstance(model, Model):
        return model
    raise TypeError(f"{what} takes a Model first, got {type(model).__name__}; wrap a config and params as "
                    "interpjax.Model(cfg=cfg, params=params)")


def load(name_or_path: str, dtype="float32", allow_pickle: bool = False, revision: str | None = None,
         allow_nonfinite: bool = False) -> Model:
    """Load a Hugging Face checkpoint (local folder or hub id) as a ``Model`` (weights holding NaN
    or inf are refused unless ``allow_nonfinite=True``)."""
    cfg, params, folder = load_params(name_or_path, dtype, allow_pickle, revision, allow_nonfinite=allow_nonfinite)
    return Model(cfg=cfg, params=params, tokenizer=load_tokenizer(folder), name=str(name_or_path))
