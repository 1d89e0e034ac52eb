"""Probes: ridge, logistic and MLP read-outs of activations, fitted on one layer or all at once.

Every fitting function takes ``X`` as ``[N, D]`` (one layer) or ``[L, N, D]`` (all layers): the
per-layer fit is ``jax.vmap``-ed over the layer axis, so all layers train in one compiled program
and the result keeps the leading ``L`` axis. Bad input (shape, count, NaN, label range, unknown
task) is a ``ValueError`` raised before any compute.

Ridge is closed form: the Gram matrix of each cross-validation fold is eigendecomposed once, so
every ridge strength costs only a rescaling; all folds x alphas x layers run in one program, whose
eigendecompositions run one at a time (a batched CPU eigh can deadlock XLA's thread pool).
Logistic and MLP probes are trained with optax on centred features divided by one scalar scale per
layer (geometry preserved); the scaling is folded back into the stored weights, so a probe always
acts on raw activations and its weight columns are directions in activation space.
"""

from __future__ import annotations

import contextlib

import json
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from ..core import inputs
from ..io.artifacts import ArtifactError
from ..train.optimizers import optax_promotion
from .result import Result

KINDS = ("ridge", "logistic", "mlp")
TASKS = ("regression", "classification")
HIGHEST = jax.lax.Precision.HIGHEST
_mm = partial(jnp.matmul, precision=HIGHEST)
FORMAT = "interpjax.probe"
VERSION = 2  # 1: the pre-artifact layout (JSON under the 'interpjax_probe' header key)
PARAM_NAMES = {"ridge": ("w", "b"), "logistic": ("w", "b"), "mlp": ("w1", "b1", "w2", "b2")}
CV_RTOL = 1e-4  # CV errors within this relative distance of the best count as ties (largest alpha wins)


@struct.dataclass
class Probe(Result):
    """A fitted probe: ``params`` (array leaves, leading L axis when fitted on [L, N, D]) + static meta.

    ``squeeze`` records that the targets were given as [N] (so predictions drop the target axis);
    ``alpha`` is the ridge strength chosen per layer by cross-validation (None for other kinds) and
    ``cv_mse`` the mean held-out MSE of every candidate alpha ([.., A]). A ``Result``:
    ``probe.save(path)`` / ``Probe.load(path)`` (one safetensors file, no pickle).
    """

    FORMAT = FORMAT
    VERSION = VERSION

    params: dict
    alpha: jax.Array | None = None
    cv_mse: jax.Array | None = None
    kind: str = struct.field(pytree_node=False, default="ridge")
    task: str = struct.field(pytree_node=False, default="regression")
    n_classes: int | None = struct.field(pytree_node=False, default=None)
    n_targets: int = struct.field(pytree_node=False, default=1)
    d_in: int = struct.field(pytree_node=False, default=0)
    n_layers: int | None = struct.field(pytree_node=False, default=None)
    squeeze: bool = struct.field(pytree_node=False, default=False)
    alphas: tuple = struct.field(pytree_node=False, default=())

    def at_layer(self, layer: int) -> "Probe":
        """The single-layer probe of layer index ``layer`` of an all-layers probe."""
        if self.n_layers is None:
            raise ValueError("this probe was fitted on one layer ([N, D]); it has no layer axis to index")
        if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer)):
            raise ValueError(f"layer must be an integer, got {layer!r}; this probe has layers 0..{self.n_layers - 1}")
        if not -self.n_layers <= int(layer) < self.n_layers:
            raise ValueError(f"layer {layer} out of range: this probe has layers 0..{self.n_layers - 1}")
        pick = lambda a: None if a is None else a[int(layer)]  # noqa: E731
        return self.replace(params=jax.tree.map(pick, self.params), alpha=pick(self.alpha),
                            cv_mse=pick(self.cv_mse), n_layers=None)

    @classmethod
    def from_artifact(cls, art) -> "Probe":
        """A loaded probe file as a Probe (jax arrays), its kind and parameters checked."""
        kind = art.meta.get("kind")
        if kind not in KINDS:
            raise ArtifactError(f"unknown probe kind {kind!r}; valid kinds: {KINDS}")
        probe = super().from_artifact(art)
        params = dict(probe.params) if isinstance(probe.params, dict) else {}
        missing = [k for k in PARAM_NAMES[kind] if k not in params]
        if missing:
            raise ArtifactError(f"missing tensor 'params.{missing[0]}' of a {kind} probe (the file holds "
                                f"{sorted(art.arrays)})")
        get = lambda a: None if a is None else jnp.asarray(a)  # noqa: E731
        return probe.replace(params={k: jnp.asarray(v) for k, v in params.items()}, alpha=get(probe.alpha),
                             cv_mse=get(probe.cv_mse))

    @classmethod
    def legacy_artifact(cls, header_meta: dict):
        """The header of a probe file of the pre-artifact layout (``interpjax_probe`` key), or None."""
        raw = header_meta.get("interpjax_probe")
        if raw is None:
            return None
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ArtifactError(f"corrupt 'interpjax_probe' metadata ({e})") from None
        if not isinstance(meta, dict) or meta.pop("format", None) != "interpjax.probe/1":
            raise ArtifactError("unknown probe format in 'interpjax_probe'; expected 'interpjax.probe/1'")
        return meta, None, 1, {}


# ---------------------------------------------------------------------------------------------
# validation (all before compute)


def _check_X(X, name="X"):
    """X as a float32 array [N, D] or [L, N, D], finite."""
    X = np.asarray(X) if not isinstance(X, jax.Array) else X
    if X.ndim not in (2, 3):
        raise ValueError(f"{name} must be [N, D] (one layer) or [L, N, D] (all layers); got shape {tuple(X.shape)}")
    if not (jnp.issubdtype(X.dtype, jnp.floating) or jnp.issubdtype(X.dtype, jnp.integer)):
        raise ValueError(f"{name} must be numeric; got dtype {X.dtype}")
    if X.shape[-2] == 0 or X.shape[-1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(X.shape)}")
    X = jnp.asarray(X, jnp.float32)
    if not bool(jnp.isfinite(X).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return X


def _check_targets(y, n, name="y"):
    """Regression targets [N] or [N, K], finite, count n; returns (y [N, K] float32, squeeze)."""
    y = np.asarray(y)
    if y.ndim not in (1, 2):
        raise ValueError(f"{name} must be [N] or [N, K]; got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric; got dtype {y.dtype}")
    if y.shape[0] != n:
        raise ValueError(f"X has {n} examples but {name} has {y.shape[0]}")
    if not np.isfinite(y).all():
        raise ValueError(f"{name} contains NaN or inf values")
    squeeze = y.ndim == 1
    return jnp.asarray(y.reshape(n, -1), jnp.float32), squeeze


def _check_labels(labels, n, n_classes, name="labels"):
    """Class labels [N] or [N, S], ints in [0, n_classes); returns (labels [N, S] int32, squeeze)."""
    if n_classes is None or int(n_classes) != n_classes or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2; got {n_classes!r}")
    labels = np.asarray(labels)
    if labels.ndim not in (1, 2):
        raise ValueError(f"{name} must be [N] or [N, S] integer class ids; got shape {labels.shape}")
    if labels.shape[0] != n:
        raise ValueError(f"X has {n} examples but {name} has {labels.shape[0]}")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all():
            raise ValueError(f"{name} contains NaN or inf values")
        raise ValueError(f"{name} must be integer class ids; got dtype {labels.dtype}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"{name} must be integer class ids; got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        bad = sorted(set(labels[(labels < 0) | (labels >= n_classes)].tolist()))[:5]
        raise ValueError(f"{name} {bad} outside [0, n_classes={n_classes})")
    squeeze = labels.ndim == 1
    return jnp.asarray(labels.reshape(n, -1), jnp.int32), squeeze


def _check_positive(name, value, integer=True):
    if (integer and int(value) != value) or value <= 0:
        raise ValueError(f"{name} must be a positive {'integer' if integer else 'number'}; got {value!r}")


def _check_batch_size(batch_size, n):
    if batch_size is not None:
        _check_positive("batch_size", batch_size)
        if batch_size > n:
            raise ValueError(f"batch_size={batch_size} exceeds the number of examples {n}")


def _check_layer_chunk(layer_chunk):
    if layer_chunk is not None:
        _check_positive("layer_chunk", layer_chunk)


def _over_layers(run, X, layer_chunk=None):
    """Apply ``run`` (a jitted fit vmapped over a leading layer axis) to [L, N, D]; [N, D] runs as
    L = 1, so a one-layer fit is the same batched program (the same numbers) as that layer of an
    all-layers fit. ``layer_chunk`` (for memory) runs it on that many layers at a time, the last
    chunk padded so that one compiled program serves every chunk."""
    XL = X if X.ndim == 3 else X[None]
    L = XL.shape[0]
    if layer_chunk is None or layer_chunk >= L:
        out = run(XL)
    else:
        k = int(layer_chunk)
        parts = []
        for i in range(0, L, k):
            idx = jnp.minimum(jnp.arange(i, i + k), L - 1)  # repeat the last layer to keep one shape
            parts.append(jax.tree.map(lambda a: a[: min(k, L - i)], run(XL[idx])))
        out = jax.tree.map(lambda *a: jnp.concatenate(a), *parts)
    return out if X.ndim == 3 else jax.tree.map(lambda a: a[0], out)


# ---------------------------------------------------------------------------------------------
# splits and controls


def split(n: int, test_frac: float = 0.2, seed: int = 0):
    """(train_idx, test_idx): a seeded random split of ``range(n)``, both sorted numpy int arrays."""
    _check_positive("n", n)
    if not 0 < test_frac < 1:
        raise ValueError(f"test_frac must lie in (0, 1); got {test_frac}")
    n_test = int(round(n * test_frac))
    if n_test < 1 or n_test >= n:
        raise ValueError(f"test_frac={test_frac} of n={n} leaves an empty train or test set")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def shuffled_control(y, seed: int = 0):
    """The control-task baseline: ``y`` with its examples (axis 0) randomly permuted."""
    y = np.asarray(y)
    if y.ndim == 0:
        raise ValueError("y must have an example axis; got a scalar")
    return y[np.random.default_rng(seed).permutation(y.shape[0])]


# ---------------------------------------------------------------------------------------------
# ridge


def _ridge_gram(X_ND, Y_NK, w_N):
    """Centred weighted ridge system of the rows with w_N = 1: (mx, my, Xc, Yc, G) with G the D x D
    Gram matrix (primal form, D <= N) or the N x N kernel matrix (dual form)."""
    cnt = w_N.sum()
    mx = _mm(w_N, X_ND) / cnt
    my = _mm(w_N, Y_NK) / cnt
    Xc = (X_ND - mx) * w_N[:, None]
    Yc = (Y_NK - my) * w_N[:, None]
    N, D = X_ND.shape
    G = _mm(Xc.T, Xc) if D <= N else _mm(Xc, Xc.T)
    return mx, my, Xc, Yc, G


def _ridge_basis(X_ND, Y_NK, w_N, s, E):
    """(mx, my, Q, s, P) such that the ridge solution for strength a is ``Q @ (P / (s + a)[:, None])``,
    given (s, E) = eigh of this weighted system's Gram / kernel matrix."""
    mx, my, Xc, Yc, _ = _ridge_gram(X_ND, Y_NK, w_N)
    if X_ND.shape[1] <= X_ND.shape[0]:  # primal: eigenvectors of the D x D Gram matrix
        Q, P = E, _mm(E.T, _mm(Xc.T, Yc))
    else:  # dual: eigenvectors of the N x N kernel matrix
        Q, P = _mm(Xc.T, E), _mm(E.T, Yc)
    return mx, my, Q, jnp.maximum(s, 0.0), P


def _fold_weights(fold_N, n_folds):
    """[F + 1, N] row weights: the training rows of each fold, then all rows (the final refit)."""
    train_FN = (fold_N[None] != jnp.arange(n_folds)[:, None]).astype(jnp.float32)
    return jnp.concatenate([train_FN, jnp.ones_like(train_FN[:1])])


def _eigh_one_at_a_time(G_BMM):
    """eigh of each matrix of G [B, M, M], one LAPACK call at a time (``lax.map``, not a batched call).

    jaxlib's CPU eigh splits a batch over XLA's intra-op thread pool and the calling pool thread
    blocks until its batch is done; two batched eighs running at once (e.g. the CV folds and the
    refit of a vmapped program) can thus occupy every pool thread with waiters and deadlock (seen on
    2 cores). Serial unbatched calls never wait on the pool, and each matrix gets the very same
    LAPACK call whatever the number of layers, so all-layers and per-layer fits agree. Accelerators
    take the batched call (the workaround is for jaxlib's CPU thread pool only)."""
    if jax.default_backend() != "cpu":
        return jnp.linalg.eigh(G_BMM)
    return jax.lax.map(jnp.linalg.eigh, G_BMM)


@partial(jax.jit, static_argnums=(3,))
def _ridge_layers(X_LND, Y_NK, fold_N, n_folds, alphas_A):
    w_FN = _fold_weights(fold_N, n_folds)
    G = jax.vmap(lambda x: jax.vmap(lambda w: _ridge_gram(x, Y_NK, w)[-1])(w_FN))(X_LND)  # [L, F+1, M, M]
    L, F1, M = G.shape[:3]
    s, E = _eigh_one_at_a_time(G.reshape(L * F1, M, M))
    s_LFM, E_LFMM = s.reshape(L, F1, M), E.reshape(L, F1, M, M)
    return jax.vmap(lambda x, s, E: _ridge_layer(x, Y_NK, w_FN, alphas_A, s, E))(X_LND, s_LFM, E_LFMM)


def _ridge_layer(X_ND, Y_NK, w_FN, alphas_A, s_FM, E_FMM):
    """Cross-validate every alpha over the folds, then refit on all rows with the best alpha
    (the folds' and the refit's eigendecompositions given, in the order of ``_fold_weights``)."""

    def fold_errors(train, s, E):
        mx, my, Q, s, P = _ridge_basis(X_ND, Y_NK, train, s, E)
        Z = _mm(X_ND - mx, Q)  # [N, M]
        coef_AMK = P[None] / (s[None, :, None] + alphas_A[:, None, None])
        pred_ANK = jnp.einsum("nm,amk->ank", Z, coef_AMK, precision=HIGHEST) + my
        err_AN = jnp.mean(jnp.square(pred_ANK - Y_NK), axis=-1)
        return jnp.sum(err_AN * (1.0 - train), axis=-1)  # held-out squared error per alpha

    cv_mse = jax.vmap(fold_errors)(w_FN[:-1], s_FM[:-1], E_FMM[:-1]).sum(0) / X_ND.shape[0]
    # the strongest ridge among those within CV_RTOL of the best CV error: near-ties (common when the
    # noise is tiny) then resolve the same way whatever the float32 round-off of each program.
    near = cv_mse <= jnp.min(cv_mse) * (1.0 + CV_RTOL)
    alpha = jnp.max(jnp.where(near, alphas_A, -jnp.inf))
    return _ridge_solve(X_ND, Y_NK, alpha, s_FM[-1], E_FMM[-1]), alpha, cv_mse


def _ridge_solve(X_ND, Y_NK, alpha, s, E, refine: int = 2):
    """Ridge weights and intercept on all rows for one alpha, given (s, E) = eigh of the all-rows
    Gram / kernel matrix, with ``refine`` steps of iterative refinement of the (primal or dual)
    linear system so float32 round-off stays near machine eps."""
    mx, my, Xc, Yc, A = _ridge_gram(X_ND, Y_NK, jnp.ones(X_ND.shape[0], jnp.float32))
    primal = X_ND.shape[1] <= X_ND.shape[0]
    B = _mm(Xc.T, Yc) if primal else Yc
    inv = 1.0 / (jnp.maximum(s, 0.0) + alpha)
    solve = lambda r: _mm(E, inv[:, None] * _mm(E.T, r))  # noqa: E731
    z = solve(B)
    for _ in range(refine):
        z = z + solve(B - _mm(A, z) - alpha * z)
    w = z if primal else _mm(Xc.T, z)
    return {"w": w, "b": my - _mm(mx, w)}


def _single_threaded_blas():
    """Context in which BLAS / LAPACK (OpenBLAS under numpy, scipy and jax's CPU eigh) use one thread.

    XLA already runs the eigh calls on its own CPU thread pool; a multi-threaded OpenBLAS underneath
    oversubscribes the cores and its spinning workers slowed each ridge fit 2-4x on a loaded 2-core
    machine. The limit is process-wide while the context is open and restored on exit; on an
    accelerator backend XLA does not run LAPACK on host threads, so nothing is limited there."""
    if jax.default_backend() != "cpu":
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def fit_ridge(X, y, *, alphas=np.logspace(-3, 4, 15), folds: int = 5, seed: int = 0,
              layer_chunk: int | None = None) -> Probe:
    """Closed-form ridge regression (with intercept) of y [N] / [N, K] on X [N, D] or [L, N, D],
    the ridge strength chosen per layer by ``folds``-fold cross-validation (mean held-out MSE; the
    largest alpha within ``CV_RTOL`` of the best wins ties). Alphas are absolute (sklearn's convention).
    ``layer_chunk`` bounds memory by fitting that many layers at a time (same compiled program)."""
    _check_layer_chunk(layer_chunk)
    X = _check_X(X)
    n = X.shape[-2]
    Y, squeeze = _check_targets(y, n)
    alphas = np.asarray(alphas, np.float64).reshape(-1)
    if alphas.size == 0 or not np.isfinite(alphas).all() or (alphas <= 0).any():
        raise ValueError(f"alphas must be a non-empty list of positive finite numbers; got {alphas}")
    if int(folds) != folds or folds < 2:
        raise ValueError(f"folds must be an integer >= 2; got {folds!r}")
    if n < folds:
        raise ValueError(f"{n} examples is fewer than folds={folds}; need at least one example per fold")
    fold_N = jnp.asarray(np.random.default_rng(seed).permutation(n) % folds, jnp.int32)
    alphas_A = jnp.asarray(alphas, jnp.float32)
    run = lambda XL: _ridge_layers(XL, Y, fold_N, int(folds), alphas_A)  # noqa: E731
    with _single_threaded_blas():  # the fit runs (and finishes) inside: ridge returns ready arrays
        params, alpha, cv_mse = jax.block_until_ready(_over_layers(run, X, layer_chunk))
    return Probe(params=params, alpha=alpha, cv_mse=cv_mse, kind="ridge", task="regression", n_classes=None,
                 n_targets=Y.shape[1], d_in=X.shape[-1], n_layers=X.shape[0] if X.ndim == 3 else None,
                 squeeze=squeeze, alphas=tuple(float(a) for a in alphas))


# ---------------------------------------------------------------------------------------------
# gradient-trained probes (logistic, MLP)


def _standardize(X_ND):
    """Centre each feature and divide by one scalar scale (the RMS of the centred entries)."""
    mu = X_ND.mean(0)
    scale = jnp.sqrt(jnp.mean(jnp.square(X_ND - mu))) + 1e-12
    return (X_ND - mu) / scale, mu, scale


def _train(loss_fn, params, opt, X_ND, T_N, key, steps, batch_size):
    """``steps`` optimizer updates of loss_fn(params, x, t) inside one lax.scan (minibatches with
    replacement when batch_size is set); optax runs under standard dtype promotion (``optax_promotion``)."""
    opt = optax_promotion(opt)
    state = opt.init(params)
    n = X_ND.shape[0]

    def step(carry, k):
        p, st = carry
        if batch_size is None:
            xb, tb = X_ND, T_N
        else:
            idx = jax.random.randint(k, (batch_size,), 0, n)
            xb, tb = X_ND[idx], T_N[idx]
        loss, g = jax.value_and_grad(loss_fn)(p, xb, tb)
        upd, st = opt.update(g, st, p)
        return (optax.apply_updates(p, upd), st), loss

    (params, _), losses = jax.lax.scan(step, (params, state), jax.random.split(key, steps))
    return params, losses


@partial(jax.jit, static_argnums=(2, 3, 4, 5, 7, 8))
def _logistic_layers(X_LND, *args):
    return jax.vmap(lambda x: _logistic_layer(x, *args))(X_LND)


def _logistic_layer(X_ND, L_NS, n_classes, steps, lr, batch_size, l2, n_targets, seed):
    Xs, mu, scale = _standardize(X_ND)
    D = X_ND.shape[1]
    params = {"w": jnp.zeros((D, n_targets, n_classes)), "b": jnp.zeros((n_targets, n_classes))}

    def loss_fn(p, x, t):
        logits = jnp.einsum("nd,dsc->nsc", x, p["w"], precision=HIGHEST) + p["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, t).mean()
        return ce + l2 * jnp.sum(jnp.square(p["w"]))

    p, _ = _train(loss_fn, params, optax.adam(lr), Xs, L_NS, jax.random.PRNGKey(seed), steps, batch_size)
    w = p["w"] / scale
    return {"w": w, "b": p["b"] - jnp.einsum("d,dsc->sc", mu, w, precision=HIGHEST)}


def fit_logistic(X, labels, n_classes: int, *, l2: float = 1e-4, steps: int = 500, lr: float = 1e-2,
                 batch_size: int | None = None, seed: int = 0, layer_chunk: int | None = None) -> Probe:
    """Multinomial logistic regression (adam) of int labels [N] or [N, S] (S independent targets,
    each with ``n_classes`` classes) on X [N, D] or [L, N, D]; weights [D, S, C] (S squeezed for [N])."""
    _check_layer_chunk(layer_chunk)
    X = _check_X(X)
    n = X.shape[-2]
    L_NS, squeeze = _check_labels(labels, n, n_classes)
    _check_positive("steps", steps)
    _check_positive("lr", lr, integer=False)
    _check_batch_size(batch_size, n)
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0; got {l2}")
    S = L_NS.shape[1]
    bs = None if batch_size is None else int(batch_size)
    run = lambda XL: _logistic_layers(XL, L_NS, int(n_classes), int(steps), float(lr), bs, float(l2), S,  # noqa: E731
                                      int(seed))
    params = _over_layers(run, X, layer_chunk)
    return Probe(params=params, kind="logistic", task="classification", n_classes=int(n_classes), n_targets=S,
                 d_in=X.shape[-1], n_layers=X.shape[0] if X.ndim == 3 else None, squeeze=squeeze)


@partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7, 8, 9))
def _mlp_layers(X_LND, *args):
    return jax.vmap(lambda x: _mlp_layer(x, *args))(X_LND)


def _mlp_layer(X_ND, T_N, classification, n_out, hidden, steps, lr, weight_decay, batch_size, seed):
    Xs, mu, scale = _standardize(X_ND)
    D = X_ND.shape[1]
    k_init, k_train = jax.random.split(jax.random.PRNGKey(seed))
    k1, k2 = jax.random.split(k_init)
    params = {
        "w1": jax.random.normal(k1, (D, hidden)) * jnp.sqrt(2.0 / D),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, n_out)) * jnp.sqrt(1.0 / hidden),
        "b2": jnp.zeros(n_out),
    }
    if classification:
        ym, ys = 0.0, 1.0
        T = T_N
    else:
        ym, sd = T_N.mean(0), T_N.std(0)
        ys = jnp.where(sd > 0, sd, 1.0)  # a constant target stays constant (weights ~ 0)
        T = (T_N - ym) / ys

    def out(p, x):
        h = jax.nn.relu(_mm(x, p["w1"]) + p["b1"])
        return _mm(h, p["w2"]) + p["b2"]

    def loss_fn(p, x, t):
        o = out(p, x)
        if classification:
            logits = o.reshape(o.shape[0], t.shape[1], -1)
            return optax.softmax_cross_entropy_with_integer_labels(logits, t).mean()
        return jnp.mean(jnp.square(o - t))

    opt = optax.adamw(lr, weight_decay=weight_decay)
    p, _ = _train(loss_fn, params, opt, Xs, T, k_train, steps, batch_size)
    w1 = p["w1"] / scale
    return {"w1": w1, "b1": p["b1"] - _mm(mu, w1), "w2": p["w2"] * ys, "b2": p["b2"] * ys + ym}


def fit_mlp(X, y, *, task: str = "classification", n_classes: int | None = None, hidden: int = 256,
            steps: int = 1000, lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int | None = None,
            seed: int = 0, layer_chunk: int | None = None) -> Probe:
    """A 2-layer ReLU MLP probe (adamw): int labels [N] / [N, S] for classification, floats [N] /
    [N, K] for regression, on X [N, D] or [L, N, D]."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    _check_layer_chunk(layer_chunk)
    X = _check_X(X)
    n = X.shape[-2]
    if task == "classification":
        T, squeeze = _check_labels(y, n, n_classes)
        n_targets, n_out = T.shape[1], T.shape[1] * int(n_classes)
    else:
        if n_classes is not None:
            raise ValueError("n_classes is only meaningful for task='classification'")
        T, squeeze = _check_targets(y, n)
        n_targets = n_out = T.shape[1]
    _check_positive("hidden", hidden)
    _check_positive("steps", steps)
    _check_positive("lr", lr, integer=False)
    _check_batch_size(batch_size, n)
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0; got {weight_decay}")
    bs = None if batch_size is None else int(batch_size)
    run = lambda XL: _mlp_layers(XL, T, task == "classification", n_out, int(hidden), int(steps),  # noqa: E731
                                 float(lr), float(weight_decay), bs, int(seed))
    params = _over_layers(run, X, layer_chunk)
    return Probe(params=params, kind="mlp", task=task, n_classes=None if task == "regression" else int(n_classes),
                 n_targets=n_targets, d_in=X.shape[-1], n_layers=X.shape[0] if X.ndim == 3 else None,
                 squeeze=squeeze)


# ---------------------------------------------------------------------------------------------
# using a probe


def _check_probe_X(probe: Probe, X):
    X = _check_X(X)
    if X.shape[-1] != probe.d_in:
        raise ValueError(f"X has {X.shape[-1]} features; the probe was fitted on d_in={probe.d_in}")
    if probe.n_layers is None and X.ndim != 2:
        raise ValueError(f"a one-layer probe takes X [N, D]; got shape {tuple(X.shape)} "
                         "(fit on [L, N, D] for all layers, or pass one layer)")
    if probe.n_layers is not None and (X.ndim != 3 or X.shape[0] != probe.n_layers):
        raise ValueError(f"this probe has {probe.n_layers} layers and takes X [{probe.n_layers}, N, D]; got shape "
                         f"{tuple(X.shape)} (use probe.at_layer(l) for one layer)")
    return X


def _predict_layer(kind, task, n_targets, params, X_ND):
    if kind == "ridge":
        return _mm(X_ND, params["w"]) + params["b"]
    if kind == "logistic":
        return jnp.einsum("nd,dsc->nsc", X_ND, params["w"], precision=HIGHEST) + params["b"]
    h = jax.nn.relu(_mm(X_ND, params["w1"]) + params["b1"])
    o = _mm(h, params["w2"]) + params["b2"]
    return o.reshape(o.shape[0], n_targets, -1) if task == "classification" else o


def _raw_predict(probe: Probe, X):
    """Predictions with the target axis kept: [.., N, K] or [.., N, S, C]."""
    if probe.kind not in KINDS:
        raise ValueError(f"unknown probe kind {probe.kind!r}; valid kinds: {KINDS}")
    fn = partial(_predict_layer, probe.kind, probe.task, probe.n_targets)
    return fn(probe.params, X) if X.ndim == 2 else jax.vmap(fn)(probe.params, X)


def predict(probe: Probe, X):
    """Regression values [.., N, K] or class logits [.., N, S, C]; the K / S axis is dropped when the
    probe was fitted on [N] targets."""
    X = _check_probe_X(probe, X)
    out = _raw_predict(probe, X)
    if probe.squeeze:
        out = out.squeeze(-1) if probe.task == "regression" else out.squeeze(-2)
    return out


def score(probe: Probe, X, y, per_target: bool = False):
    """Held-out quality per layer ([L] or scalar): R^2 (1 - SSE/SST, averaged over outputs) for
    regression, accuracy (averaged over the S targets) for classification. ``per_target=True``
    keeps the output / target axis instead: [.., K] or [.., S]."""
    X = _check_probe_X(probe, X)
    n = X.shape[-2]
    if probe.task == "regression":
        Y, squeeze = _check_targets(y, n)
        if Y.shape[1] != probe.n_targets:
            raise ValueError(f"y has {Y.shape[1]} outputs; the probe predicts {probe.n_targets}")
        pred = _raw_predict(probe, X)
        sse = jnp.sum(jnp.square(pred - Y), axis=-2)
        sst = jnp.sum(jnp.square(Y - Y.mean(0)), axis=-2)
        if bool((sst == 0).any()):
            raise ValueError("y is constant over the examples for some output: R^2 is undefined")
        r2 = 1.0 - sse / sst
        return r2 if per_target else jnp.mean(r2, axis=-1)
    labels, squeeze = _check_labels(y, n, probe.n_classes)
    if labels.shape[1] != probe.n_targets:
        raise ValueError(f"labels have {labels.shape[1]} targets; the probe predicts {probe.n_targets}")
    acc = jnp.mean(jnp.argmax(_raw_predict(probe, X), axis=-1) == labels, axis=-2)
    return acc if per_target else jnp.mean(acc, axis=-1)


# ---------------------------------------------------------------------------------------------
# directions and neurons


def probe_direction(probe: Probe, layer: int | None = None, output: int = 0, cls: int | None = None):
    """Unit vector [D] a linear probe reads: ridge output ``output``'s weights; for logistic the
    weights of class ``cls`` minus the mean over classes (class 1 minus class 0 when binary)."""
    if probe.kind not in ("ridge", "logistic"):
        raise ValueError(f"probe_direction needs a linear probe (ridge or logistic); this one is {probe.kind!r}")
    if probe.n_layers is not None:
        if layer is None:
            raise ValueError(f"this probe has {probe.n_layers} layers; pass layer=0..{probe.n_layers - 1}")
        probe = probe.at_layer(layer)
    elif layer is not None:
        raise ValueError("this probe was fitted on one layer; do not pass layer")
    if not 0 <= output < probe.n_targets:
        raise ValueError(f"output {output} out of range: the probe has outputs 0..{probe.n_targets - 1}")
    w = probe.params["w"]
    if probe.kind == "ridge":
        if cls is not None:
            raise ValueError("cls is only meaningful for a logistic probe")
        v = w[:, output]
    else:
        w_DC = w[:, output, :]
        if cls is None:
            if probe.n_classes != 2:
                raise ValueError(f"the probe has {probe.n_classes} classes; pass cls=0..{probe.n_classes - 1}")
            cls = 1
        if not 0 <= cls < probe.n_classes:
            raise ValueError(f"cls {cls} out of range: classes are 0..{probe.n_classes - 1}")
        v = w_DC[:, cls] - w_DC.mean(-1)
    norm = jnp.linalg.norm(v)
    if float(norm) == 0.0:
        raise ValueError("the probe's weight vector is zero; it has no direction")
    return v / norm


def _cosines(W_DF, d_D):
    """Cosine of each column of W [D, F] with d [D]."""
    d = d_D / jnp.linalg.norm(d_D)
    return _mm(d, W_DF) / (jnp.linalg.norm(W_DF, axis=0) + 1e-12)


def neuron_cosines(cfg, params: dict, direction_D, layer: int) -> dict:
    """Cosines of a direction with each MLP neuron of ``layer``: "read" (input weights ``up``),
    "gate" (gated MLPs only) and "write" (output weights ``down``), each [F]."""
    (layer,) = inputs.check_layers(cfg, [layer], name="layer")
    d = jnp.asarray(direction_D, jnp.float32)
    if d.shape != (cfg.d_model,):
        raise ValueError(f"direction must have shape ({cfg.d_model},) = [d_model]; got {tuple(d.shape)}")
    if not bool(jnp.isfinite(d).all()) or float(jnp.linalg.norm(d)) == 0.0:
        raise ValueError("direction must be finite and nonzero")
    mlp = params["layers"]["mlp"]
    out = {"read": _cosines(jnp.asarray(mlp["up"][layer], jnp.float32), d)}
    if cfg.mlp == "gated":
        out["gate"] = _cosines(jnp.asarray(mlp["gate"][layer], jnp.float32), d)
    out["write"] = _cosines(jnp.asarray(mlp["down"][layer], jnp.float32).T, d)
    return out


def top_neurons(cos_F, k: int):
    """(indices, values) of the ``k`` neurons with the largest |cosine|, largest first."""
    cos = np.asarray(cos_F)
    if cos.ndim != 1:
        raise ValueError(f"cos_F must be one cosine per neuron [F]; got shape {cos.shape}")
    if int(k) != k or not 1 <= k <= cos.shape[0]:
        raise ValueError(f"k must be an integer in 1..{cos.shape[0]}; got {k!r}")
    idx = np.argsort(-np.abs(cos), kind="stable")[: int(k)]
    return idx, cos[idx]


# ---------------------------------------------------------------------------------------------
# saving


def save_probe(probe: Probe, path) -> Path:
    """Write the probe as one safetensors file (weights + JSON meta in its header), atomically
    (the same as ``probe.save(path)``)."""
    return probe.save(path)


def load_probe(path) -> Probe:
    """Read a probe written by ``save_probe`` / ``Probe.save`` (or by the older ``interpjax.probe/1``
    layout); no pickle involved (the same as ``Probe.load(path)``)."""
    return Probe.load(path)
