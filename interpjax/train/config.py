"""``TrainConfig``: the optimiser and loop settings of one training run, checked when built.

Every field is validated here, before any compute: a NaN learning rate or ``log_every=0`` is
refused with the value named rather than surfacing as a NaN model or a crash after step one.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

SCHEDULES = ("constant", "cosine", "linear")


def _check_real(name: str, value, lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = True):
    """A finite real number in [lo, hi) (bounds per flags); bools and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"TrainConfig.{name} must be a real number; got {value!r} ({type(value).__name__})")
    v = float(value)
    low_ok = v > lo if lo_open else v >= lo
    high_ok = hi is None or (v < hi if hi_open else v <= hi)
    if not (math.isfinite(v) and low_ok and high_ok):
        lo_s = f"{'>' if lo_open else '>='} {lo}"
        hi_s = "" if hi is None else f" and {'<' if hi_open else '<='} {hi}"
        raise ValueError(f"TrainConfig.{name} must be a finite number {lo_s}{hi_s}; got {value!r}")


def _check_int(name: str, value, lo: int):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"TrainConfig.{name} must be an integer; got {value!r} ({type(value).__name__})")
    if value < lo:
        raise ValueError(f"TrainConfig.{name} must be >= {lo}; got {value}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and loop settings; saved next to checkpoints so a resume can check them.

    ``optimizer`` names an entry of ``interpjax.train.OPTIMIZERS`` (``adamw``, ``adam``, ``adafactor``,
    ``sgd``, or one added with ``register_optimizer``); ``b1``/``b2`` are Adam's moment decays (``b1``
    is SGD's momentum; Adafactor uses neither). ``lr`` is the peak of the ``schedule`` (after
    ``warmup_steps`` of linear warmup); ``clip_norm`` clips the global gradient norm (None: off);
    ``grad_accum`` micro-steps make one optimiser update; ``remat`` recomputes activations in the
    backward pass; metrics are logged every ``log_every`` steps and checkpoints written every
    ``ckpt_every`` steps (and at the end of every ``train`` call)."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98
    warmup_steps: int = 0
    schedule: str = "constant"
    total_steps: int = 1000
    clip_norm: float | None = 1.0
    grad_accum: int = 1
    remat: bool = False
    log_every: int = 10
    ckpt_every: int = 100
    seed: int = 0
    optimizer: str = "adamw"

    def __post_init__(self):
        from .optimizers import OPTIMIZERS

        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule {self.schedule!r} is not one of {SCHEDULES}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer {self.optimizer!r} is not registered; valid: {sorted(OPTIMIZERS)}")
        _check_real("lr", self.lr, 0.0)
        _check_real("weight_decay", self.weight_decay, 0.0)
        _check_real("b1", self.b1, 0.0, 1.0)
        _check_real("b2", self.b2, 0.0, 1.0)
        if self.clip_norm is not None:
            _check_real("clip_norm", self.clip_norm, 0.0, lo_open=True)
        _check_int("warmup_steps", self.warmup_steps, 0)
        _check_int("total_steps", self.total_steps, 1)
        _check_int("grad_accum", self.grad_accum, 1)
        _check_int("log_every", self.log_every, 1)
        _check_int("ckpt_every", self.ckpt_every, 1)
        _check_int("seed", self.seed, 0)
        if not isinstance(self.remat, bool):
            raise TypeError(f"TrainConfig.remat must be True or False; got {self.remat!r}")
