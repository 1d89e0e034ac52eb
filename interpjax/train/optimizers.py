"""The optimizer registry: optax optimizers selected by name in ``TrainConfig.optimizer``, wrapped
in the learning-rate schedule, global-norm clipping and gradient accumulation every run shares.

    OPTIMIZERS                      # {"adam", "adafactor", "adamw", "sgd"} -> builder
    register_optimizer("lion", lambda tc, lr: optax.lion(lr, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay))
    optimizer_state_bytes(tc, jax.eval_shape(lambda: params))   # state size without allocating
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
import optax

from .config import TrainConfig

Builder = Callable[[TrainConfig, optax.Schedule], optax.GradientTransformation]


def _no_weight_decay(name: str, tc: TrainConfig):
    if tc.weight_decay:
        raise ValueError(f"optimizer {name!r} has no weight decay; got TrainConfig.weight_decay={tc.weight_decay} "
                         f"(use 'adamw' or weight_decay=0.0)")


def _adamw(tc: TrainConfig, lr) -> optax.GradientTransformation:
    return optax.adamw(lr, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay)


def _adam(tc: TrainConfig, lr) -> optax.GradientTransformation:
    _no_weight_decay("adam", tc)
    return optax.adam(lr, b1=tc.b1, b2=tc.b2)


def _adafactor(tc: TrainConfig, lr) -> optax.GradientTransformation:
    """optax's Adafactor defaults: factored second moments for matrices whose two largest axes are
    both >= 128, updates scaled by the parameter's RMS, no first moment; b1/b2 are not used."""
    return optax.adafactor(lr, weight_decay_rate=tc.weight_decay or None)


def _sgd(tc: TrainConfig, lr) -> optax.GradientTransformation:
    """SGD with momentum ``b1`` (0: none) and decoupled weight decay."""
    sgd = optax.sgd(lr, momentum=tc.b1 or None)
    return optax.chain(optax.add_decayed_weights(tc.weight_decay), sgd) if tc.weight_decay else sgd


OPTIMIZERS: dict[str, Builder] = {"adam": _adam, "adafactor": _adafactor, "adamw": _adamw, "sgd": _sgd}
_version = [0]  # bumped by register_optimizer, so compiled steps of a replaced builder are not reused


def registry_version() -> int:
    """A counter that changes whenever the registry does (part of the compiled-step cache key)."""
    return _version[0]


def register_optimizer(name: str, build: Builder, replace: bool = False) -> None:
    """Add ``build(tc, lr_schedule) -> optax.GradientTransformation`` under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"optimizer name must be a non-empty string; got {name!r}")
    if not callable(build):
        raise TypeError(f"build must be callable (tc, lr_schedule) -> GradientTransformation; got {build!r}")
    if name in OPTIMIZERS and not replace:
        raise ValueError(f"optimizer {name!r} is already registered (pass replace=True to override); "
                         f"registered: {sorted(OPTIMIZERS)}")
    OPTIMIZERS[name] = build
    _version[0] += 1


def make_schedule(tc: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 (if any), then constant / cosine decay / linear decay to 0."""
    main_steps = max(tc.total_steps - tc.warmup_steps, 1)
    main = {"constant": optax.constant_schedule(tc.lr),
            "cosine": optax.cosine_decay_schedule(tc.lr, main_steps),
            "linear": optax.linear_schedule(tc.lr, 0.0, main_steps)}[tc.schedule]
    if not tc.warmup_steps:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, tc.lr, tc.warmup_steps), main], [tc.warmup_steps])


def optax_promotion(tx) -> optax.GradientTransformationExtraArgs:
    """``tx`` with its ``init`` and ``update`` traced under JAX's standard dtype promotion.

    optax itself mixes dtypes implicitly (Adam's bias correction is ``1 - b1 ** count``: a Python
    float to the power of the int32 step count), which ``jax_numpy_dtype_promotion="strict"``
    rejects. Only optax's own code runs under "standard" here, which is what it is written for, so
    results are those of ``tx``; everything of ours around it stays under the caller's setting."""

    def init(params):
        with jax.numpy_dtype_promotion("standard"):
            return tx.init(params)

    def update(updates, state, params=None, **extra_args):
        with jax.numpy_dtype_promotion("standard"):
            if isinstance(tx, optax.GradientTransformationExtraArgs) or extra_args:
                return tx.update(updates, state, params, **extra_args)
            return tx.update(updates, state, params)

    return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    """Clipping (if ``tc.clip_norm``), then the named optimizer on the schedule, accumulated over
    ``tc.grad_accum`` micro-steps (``optax.MultiSteps``) when that is > 1; the whole runs under
    standard dtype promotion (``optax_promotion``)."""
    if tc.optimizer not in OPTIMIZERS:  # registered after tc was built, then removed
        raise ValueError(f"optimizer {tc.optimizer!r} is not registered; valid: {sorted(OPTIMIZERS)}")
    clip = [optax.clip_by_global_norm(tc.clip_norm)] if tc.clip_norm else []
    opt = optax.chain(*clip, OPTIMIZERS[tc.optimizer](tc, make_schedule(tc)))  # a chain always: one state layout
    opt = optax.MultiSteps(opt, every_k_schedule=tc.grad_accum) if tc.grad_accum > 1 else opt
    return optax_promotion(opt)


def tree_bytes(tree) -> int:
    """Bytes of every array (or ShapeDtypeStruct) leaf of a pytree."""
    return int(sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def optimizer_state_bytes(tc: TrainConfig, params) -> int:
    """Bytes of the optimizer state ``make_optimizer(tc)`` keeps for ``params`` (arrays or
    ``jax.ShapeDtypeStruct``s), computed with ``jax.eval_shape``: nothing is allocated."""
    return tree_bytes(jax.eval_shape(make_optimizer(tc).init, params))
