"""Training data: host-side checks of token batches (before any compute), a packed text stream
that is a pure function of the step (so a resumed run sees the same batches), and the
data-parallel shardings.
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import numpy as np

from ..core.config import Config
from ..core.inputs import check_tokens


def check_train_tokens(cfg: Config, tokens, loss_mask=None, min_len: int = 1):
    """(tokens int32 [B, T], loss_mask float32 [B, T] or None) as numpy, after refusing what would
    train on something else than asked (``core.inputs.check_tokens``, on the caller's values before
    any cast): float ids (a cast truncates them), ids outside the vocabulary (NaN losses; int64 ids
    >= 2**31 cannot wrap into range), sequences longer than the model's context; then fewer than
    ``min_len`` positions, and loss masks of another shape or with NaN / negative weights."""
    tok = np.asarray(check_tokens(cfg, np.asarray(tokens), name="training tokens"))
    if tok.shape[0] == 0 or tok.shape[1] < min_len:
        raise ValueError(f"training batch of shape {tok.shape}: need >= 1 row and >= {min_len} positions")
    if loss_mask is None:
        return tok, None
    mask = np.asarray(loss_mask)
    if mask.shape != tok.shape:
        raise ValueError(f"loss_mask has shape {mask.shape}; expected {tok.shape} like tokens")
    if not (np.issubdtype(mask.dtype, np.number) or mask.dtype == np.bool_) or np.iscomplexobj(mask):
        raise ValueError(f"loss_mask must hold real weights; got dtype {mask.dtype}")
    mask = mask.astype(np.float32)
    if not np.isfinite(mask).all() or (mask < 0).any():
        bad = np.unique(mask[~np.isfinite(mask) | (mask < 0)])
        raise ValueError(f"loss_mask weights must be finite and >= 0; got {bad[:5].tolist()}")
    return tok, mask


def data_sharding():
    """(batch sharding: axis 0 split over all local devices, replicated sharding for the rest)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.local_devices()), ("data",))
    return NamedSharding(mesh, P("data")), NamedSharding(mesh, P())


class TokenStream:
    """``stream(step)`` -> tokens [batch, seq]: texts from ``texts_fn()`` tokenized (BOS before each)
    and packed end to end. Holds at most one block plus one text in memory; deterministic in
    ``step`` (non-sequential access re-reads the stream), so a resumed run sees the same batches."""

    def __init__(self, texts_fn: Callable[[], Iterable[str]], tokenizer, batch: int, seq: int):
        if not callable(texts_fn):
            raise ValueError("texts_fn must be a function returning a fresh iterable of texts")
        if batch < 1 or seq < 2:
            raise ValueError(f"batch must be >= 1 and seq >= 2; got batch={batch}, seq={seq}")
        self.texts_fn, self.tokenizer, self.batch, self.seq = texts_fn, tokenizer, batch, seq
        self._restart()

    def _restart(self):
        self._texts, self._buf, self._next = iter(self.texts_fn()), [], 0

    def _ids(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        bos = self.tokenizer.bos_token_id
        return ids if bos is None or ids[:1] == [bos] else [bos] + ids

    def _take(self) -> np.ndarray:
        need = self.batch * self.seq
        while len(self._buf) < need:
            try:
                self._buf.extend(self._ids(next(self._texts)))
            except StopIteration:
                raise ValueError(f"the text stream ran out after {self._next} full batches of "
                                 f"{self.batch}x{self.seq} tokens") from None
        block, self._buf = self._buf[:need], self._buf[need:]
        self._next += 1
        return np.asarray(block, np.int32).reshape(self.batch, self.seq)

    def __call__(self, step: int) -> np.ndarray:
        if step < 0:
            raise ValueError(f"step must be >= 0; got {step}")
        if step < self._next:
            self._restart()
        while self._next < step:
            self._take()
        return self._take()
