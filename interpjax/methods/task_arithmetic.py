"""Task arithmetic (Ilharco et al. 2023, "Editing Models with Task Arithmetic"): weight-space task
vectors tau = theta_ft - theta_base, added, negated, scaled and combined on param pytrees.

``task_vector(ft, base)`` is a :class:`TaskVector`; ``apply(base, tv, lam)`` is the edited model
``theta_base + lam * tau``; ``lambda_sweep`` evaluates a metric of that model over many ``lam`` as one
compiled program. Nothing here changes the caller's arrays: every operation returns new ones.

Exactness at ``lam = 1``. In floating point ``base + (ft - base)`` is not always ``ft``: when an entry
of ``ft`` and ``base`` are not within a factor of two of each other (e.g. a weight that crosses zero),
``ft - base`` is rounded and adding it back misses ``ft`` by an ulp. So a task vector made by
subtraction also keeps the rounding error of that subtraction (``residual``: ``delta + residual ==
ft - base`` exactly, the error-free "TwoSum" of Knuth), and ``apply`` adds ``lam * delta`` to the base
with a compensated sum (the sum's own rounding error and ``lam * residual`` are added back before the
final rounding). At ``lam = 1`` this returns ``ft`` bit for bit and at ``lam = 0`` the base, on every
finite float (the test checks both on adversarial values); at other ``lam`` it is ``base + lam * tau``
rounded once. Vectors not made by a subtraction (``random_like``) have no residual. The residual
costs a second param-sized pytree; ``tv.drop_residual()`` gives it up (``apply`` at 1 is then within
an ulp of ``ft``, not exact).
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..core.handle import Model

MATCHES = ("leaf", "global")


# ---------------------------------------------------------------------------------------------
# param pytrees: unwrap, compare


def _params(x, name: str):
    """The param pytree of a Model, a TaskVector-free dict of arrays, or an error naming ``name``."""
    if isinstance(x, Model):
        return x.params
    if isinstance(x, TaskVector):
        raise TypeError(f"{name} must be a Model or a param pytree, not a TaskVector")
    if not isinstance(x, dict):
        raise TypeError(f"{name} must be a Model or a param pytree (dict of arrays); got {type(x).__name__}")
    return x


def _leaves_with_paths(tree) -> list[tuple[str, object]]:
    return [(jax.tree_util.keystr(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def check_same_structure(a, b, name_a: str = "a", name_b: str = "b") -> None:
    """Raise ``ValueError`` naming the first leaf path where two param pytrees differ in presence,
    shape or dtype; non-float leaves are refused (a task vector is a difference of real weights)."""
    la, lb = _leaves_with_paths(a), _leaves_with_paths(b)
    pa, pb = [p for p, _ in la], [p for p, _ in lb]
    if pa != pb:
        only_a = [p for p in pa if p not in set(pb)]
        only_b = [p for p in pb if p not in set(pa)]
        first = next((x for x, y in zip(pa, pb) if x != y), None)
        raise ValueError(f"{name_a} and {name_b} have different param structures: leaves only in {name_a}: "
                         f"{only_a[:3]}, only in {name_b}: {only_b[:3]}"
                         + ("" if first is None else f"; first differing leaf path {first}"))
    for (path, x), (_, y) in zip(la, lb):
        xs, ys = jnp.shape(x), jnp.shape(y)
        xd, yd = jnp.result_type(x), jnp.result_type(y)
        if xs != ys:
            raise ValueError(f"leaf {path}: {name_a} has shape {xs}, {name_b} has shape {ys}")
        if xd != yd:
            raise ValueError(f"leaf {path}: {name_a} has dtype {xd}, {name_b} has dtype {yd}")
        if not jnp.issubdtype(xd, jnp.floating):
            raise ValueError(f"leaf {path} has dtype {xd}: task vectors need floating-point params")


def _scalar(c, what: str):
    """A real scalar (Python number or 0-d float array, traced allowed) or a TypeError."""
    if isinstance(c, bool):
        raise TypeError(f"{what} must be a real number, got {c!r}")
    if isinstance(c, numbers.Real):
        if not np.isfinite(float(c)):
            raise ValueError(f"{what} must be finite, got {c!r}")
        return float(c)
    if isinstance(c, (jax.Array, np.ndarray, np.generic)) and jnp.ndim(c) == 0 \
            and jnp.issubdtype(jnp.result_type(c), jnp.floating):
        return c
    raise TypeError(f"{what} must be a real number or a 0-d float array, got {type(c).__name__}")


def _mul(c, x):
    """``c * x`` in ``x``'s dtype (no promotion)."""
    return jnp.asarray(c, x.dtype) * x


def _two_sum(a, b):
    """Error-free sum (Knuth): s = fl(a + b) and e with a + b == s + e exactly."""
    s = a + b
    bv = s - a
    av = s - bv
    return s, (a - av) + (b - bv)


# ---------------------------------------------------------------------------------------------
# the value


@jax.tree_util.register_pytree_with_keys_class
@dataclass(frozen=True, eq=False)
class TaskVector:
    """A direction in weight space shaped like a model's params: ``delta`` (+ ``residual``, the exact
    rounding error of the subtraction that made it, or None). ``tv1 + tv2``, ``tv1 - tv2``, ``-tv``,
    ``c * tv`` are new TaskVectors; as a pytree (children ``delta``, ``residual``) it passes through
    ``jax.jit`` / ``jax.vmap`` / ``jax.tree.map``."""

    delta: dict
    residual: dict | None = None

    # -- pytree protocol ------------------------------------------------------------------------

    def tree_flatten_with_keys(self):
        return (((jax.tree_util.GetAttrKey("delta"), self.delta),
                 (jax.tree_util.GetAttrKey("residual"), self.residual)), None)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    # -- algebra --------------------------------------------------------------------------------

    def __add__(self, other):
        if not isinstance(other, TaskVector):
            return NotImplemented
        check_same_structure(self.delta, other.delta, "left task vector", "right task vector")
        delta = jax.tree.map(jnp.add, self.delta, other.delta)
        if self.residual is None and other.residual is None:
            return TaskVector(delta)
        ra = self.residual if self.residual is not None else jax.tree.map(jnp.zeros_like, self.delta)
        rb = other.residual if other.residual is not None else jax.tree.map(jnp.zeros_like, other.delta)
        return TaskVector(delta, jax.tree.map(jnp.add, ra, rb))

    def __neg__(self):
        neg = functools.partial(jax.tree.map, jnp.negative)
        return TaskVector(neg(self.delta), None if self.residual is None else neg(self.residual))

    def __sub__(self, other):
        if not isinstance(other, TaskVector):
            return NotImplemented
        return self + (-other)

    def __mul__(self, c):
        if isinstance(c, TaskVector):
            raise TypeError("a TaskVector can be multiplied by a number only, not by another TaskVector")
        c = _scalar(c, "task vector scale")
        scale = functools.partial(jax.tree.map, lambda x: _mul(c, x))
        return TaskVector(scale(self.delta), None if self.residual is None else scale(self.residual))

    __rmul__ = __mul__

    # -- measures -------------------------------------------------------------------------------

    def leaf_norms(self) -> dict:
        """L2 norm of each leaf of ``delta`` (float32), as a pytree of scalars."""
        return jax.tree.map(lambda x: jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)))), self.delta)

    def norm(self):
        """Global L2 norm of ``delta`` over every leaf (float32 scalar)."""
        sq = [jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(self.delta)]
        return jnp.sqrt(sum(sq[1:], sq[0]))

    def drop_residual(self) -> "TaskVector":
        """The same vector without the rounding residual (half the memory; apply at 1 then within an ulp)."""
        return TaskVector(self.delta)


# ---------------------------------------------------------------------------------------------
# constructors and combinations


@jax.jit
def _difference(ft, base):
    def one(f, b):
        return _two_sum(f, -b)

    pairs = jax.tree.map(one, ft, base)
    is_pair = lambda x: isinstance(x, tuple)  # noqa: E731
    return (jax.tree.map(lambda p: p[0], pairs, is_leaf=is_pair), jax.tree.map(lambda p: p[1], pairs, is_leaf=is_pair))


def task_vector(ft, base) -> TaskVector:
    """tau = ft - base for two Models (same config) or two param pytrees of the same structure, shapes
    and dtypes (else ``ValueError`` naming the first differing leaf path). Keeps the exact rounding
    residual, so ``apply(base, tau, 1.0)`` is ``ft`` bit for bit."""
    if isinstance(ft, Model) and isinstance(base, Model) and ft.cfg != base.cfg:
        raise ValueError("ft and base are Models of different configs; a task vector needs one architecture")
    f, b = _params(ft, "ft"), _params(base, "base")
    check_same_structure(f, b, "ft", "base")
    delta, residual = _difference(f, b)
    return TaskVector(delta, residual)


def _check_vectors(tvs, what: str) -> list:
    tvs = list(tvs)
    if not tvs:
        raise ValueError(f"{what} needs at least one TaskVector, got none")
    for i, tv in enumerate(tvs):
        if not isinstance(tv, TaskVector):
            raise TypeError(f"{what}: item {i} is a {type(tv).__name__}, not a TaskVector")
    return tvs


def combine(tvs: Sequence[TaskVector], weights: Sequence[float] | None = None) -> TaskVector:
    """sum_i weights[i] * tvs[i] (weights default to 1: the paper's multi-task addition)."""
    tvs = _check_vectors(tvs, "combine")
    if weights is None:
        weights = [1.0] * len(tvs)
    weights = list(weights)
    if len(weights) != len(tvs):
        raise ValueError(f"combine: {len(tvs)} task vectors but {len(weights)} weights")
    out = weights[0] * tvs[0] if weights[0] != 1.0 else tvs[0]
    for w, tv in zip(weights[1:], tvs[1:]):
        out = out + (tv if w == 1.0 else w * tv)
    return out


def analogy(a: TaskVector, b: TaskVector, c: TaskVector) -> TaskVector:
    """a - b + c: "a is to b as c is to ?" (the paper's task analogies)."""
    _check_vectors([a, b, c], "analogy")
    return a - b + c


def random_like(tv: TaskVector, seed: int = 0, *, match: str = "leaf") -> TaskVector:
    """A Gaussian random TaskVector with ``tv``'s structure, rescaled to the same L2 norm per leaf
    (``match="leaf"``, default: which matrices move, and by how much, is kept; the global norm is then
    equal too) or to the same global norm only (``match="global"``). Leaves of ``tv`` that are zero
    stay zero under "leaf". The norm-matched control of task arithmetic; no residual."""
    if not isinstance(tv, TaskVector):
        raise TypeError(f"random_like needs a TaskVector, got {type(tv).__name__}")
    if match not in MATCHES:
        raise ValueError(f"random_like: match={match!r} is not one of {MATCHES}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"random_like: seed must be a non-negative integer, got {seed!r}")
    return _random(tv, jax.random.key(int(seed)), match)


@functools.partial(jax.jit, static_argnums=(2,))
def _random(tv, key, match):
    leaves, treedef = jax.tree.flatten(tv.delta)
    keys = jax.random.split(key, len(leaves))
    noise = [jax.random.normal(k, x.shape, jnp.float32) for k, x in zip(keys, leaves)]
    norm = lambda x: jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))  # noqa: E731
    if match == "leaf":
        out = [(z * (norm(x) / jnp.maximum(norm(z), 1e-30))).astype(x.dtype) for z, x in zip(noise, leaves)]
    else:
        target = jnp.sqrt(jnp.sum(jnp.stack([jnp.square(norm(x)) for x in leaves])))
        have = jnp.sqrt(jnp.sum(jnp.stack([jnp.square(norm(z)) for z in noise])))
        out = [(z * (target / jnp.maximum(have, 1e-30))).astype(x.dtype) for z, x in zip(noise, leaves)]
    return TaskVector(jax.tree.unflatten(treedef, out))


# ---------------------------------------------------------------------------------------------
# applying


def _apply_params(base, tv: TaskVector, lam):
    """base + lam * tv as a compensated sum (exact at lam in {0, 1}); traced-safe."""
    def one(b, d, r):
        s, e = _two_sum(b, _mul(lam, d))
        if r is not None:
            e = e + _mul(lam, r)
        return s + e

    if tv.residual is None:
        return jax.tree.map(lambda b, d: one(b, d, None), base, tv.delta)
    return jax.tree.map(one, base, tv.delta, tv.residual)


_apply_jit = jax.jit(_apply_params)


def _check_tv(base_params, tv, what: str) -> None:
    if not isinstance(tv, TaskVector):
        raise TypeError(f"{what}: tv must be a TaskVector, got {type(tv).__name__}")
    check_same_structure(base_params, tv.delta, "base", "task vector")


def apply(base, tv: TaskVector, lam=1.0):
    """theta_base + lam * tau: new params (a new Model when ``base`` is a Model; the caller's arrays are
    not touched). ``lam`` is a real number or a 0-d float array (traced allowed)."""
    params = _params(base, "base")
    _check_tv(params, tv, "apply")
    lam = _scalar(lam, "lam")
    out = _apply_jit(params, tv, jnp.asarray(lam, jnp.float32))
    return base.replace(params=out) if isinstance(base, Model) else out


@functools.partial(jax.jit, static_argnums=(0,))
def _sweep(metric_fn: Callable, base, tv, lams_CK):
    one = lambda lam: metric_fn(_apply_params(base, tv, lam))  # noqa: E731
    return jax.lax.map(jax.vmap(one), lams_CK)  # [C, chunk]


def lambda_sweep(model_or_params, tv: TaskVector, lams, metric_fn: Callable, *, chunk: int | None = None) -> np.ndarray:
    """``metric_fn(base + lam * tau)`` for every ``lam`` of ``lams`` [K], as ONE compiled program: a
    ``jax.vmap`` over ``chunk`` lams at a time inside ``lax.map`` over the chunks. ``metric_fn(params)``
    is a pure JAX function of the params returning a float scalar -- or a fixed-shape float array, e.g.
    one value per evaluation item, so that intervals over items can be drawn from one sweep. It is
    traced once; pass the same function object again to reuse the compiled program. Returns float32
    [K] (or [K, *metric shape]).

    Memory: each vmapped lam holds its own edited copy of the params, so a chunk costs ``chunk`` x the
    model's size (SmolLM2-135M in fp32: 0.54 GB per lam) plus the metric's activations per lam. Default
    ``chunk=None`` runs all K at once; bound it for big models (K is padded up to a multiple of chunk
    by repeating the last lam; the padding is dropped)."""
    params = _params(model_or_params, "model_or_params")
    _check_tv(params, tv, "lambda_sweep")
    if not callable(metric_fn):
        raise TypeError(f"lambda_sweep: metric_fn must be callable, got {type(metric_fn).__name__}")
    lams_K = np.asarray(lams, np.float64)
    if lams_K.ndim != 1 or lams_K.size == 0 or not np.all(np.isfinite(lams_K)):
        raise ValueError(f"lambda_sweep: lams must be a non-empty 1-D sequence of finite numbers; got shape "
                         f"{lams_K.shape}")
    K = lams_K.size
    if chunk is None:
        chunk = K
    if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1:
        raise ValueError(f"lambda_sweep: chunk must be a positive integer or None; got {chunk!r}")
    chunk = min(int(chunk), K)
    C = -(-K // chunk)
    padded = np.concatenate([lams_K, np.full(C * chunk - K, lams_K[-1])]).astype(np.float32)
    shape = jax.eval_shape(metric_fn, params)  # traced, not run: a wrong metric fails before compute
    if not isinstance(shape, jax.ShapeDtypeStruct) or not jnp.issubdtype(shape.dtype, jnp.floating):
        raise ValueError(f"lambda_sweep: metric_fn must return one float array (a scalar, or per-item "
                         f"values); it returns {shape}")
    out = _sweep(metric_fn, params, tv, jnp.asarray(padded.reshape(C, chunk)))
    return np.asarray(out, np.float32).reshape((C * chunk,) + shape.shape)[:K]
