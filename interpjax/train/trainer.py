"""The one Trainer: minimises a pluggable ``loss(trainable, batch, key) -> (loss, metrics)`` over a
pluggable trainable pytree (a model's params, a tuned lens, a grid of DAS rotations, ...).

It brings the optimizer registry (``TrainConfig.optimizer``), schedules, clipping and gradient
accumulation, data parallel over local devices, orbax checkpoints with exact resume after a kill,
JSONL metrics and a progress bar. The compiled step is cached per ``TrainConfig`` and loss, so a
resumed trainer reuses it; losses and metrics stay on device between logging steps.

    Trainer(cfg, tc, "runs/lm")                          # a language model from scratch (LMLoss)
    Trainer(model, tc, "runs/ft")                        # fine-tune a Model (its params are copied)
    Trainer(loss, tc, None, trainable=tree)              # anything: in memory, no checkpoints

Batches come from ``batch_fn(step)``, a function of the step number, so a run killed and resumed
sees exactly the batches it would have. Large arrays a loss needs but does not train (a frozen
model) are passed as ``jax.tree_util.Partial(fn, frozen)``: they travel as step arguments, never
as compile-time constants, and are never donated. A loss object may define ``check_batch(batch)``
(host-side validation before compute), ``loss_name`` (the log key of the loss value) and ``remat``
(it handles ``TrainConfig.remat`` itself; otherwise the whole loss is wrapped in ``jax.checkpoint``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.tree_util import Partial

from ..core.config import Config
from ..core.handle import Model
from ..io.artifacts import atomic_write_text, model_fingerprint
from . import optimizers
from .config import TrainConfig
from .data import data_sharding
from .lm import LMLoss, init_params
from .optimizers import make_optimizer


def param_norm(params) -> jax.Array:
    """Global L2 norm of a pytree, in float32."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(p.astype(jnp.float32))) for p in jax.tree.leaves(params)))


def loss_attr(loss, name: str, default=None):
    """An attribute of the loss object, looking through a ``Partial`` to the function it wraps."""
    return getattr(loss.func if isinstance(loss, Partial) else loss, name, default)


def train_step(opt: optax.GradientTransformation, seed: int, remat: bool, trainable, opt_state, loss: Partial, batch,
               step):
    """One optimizer (micro-)step; the loss gets the key ``fold_in(PRNGKey(seed), step)``."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
    fn = lambda t: loss(t, batch, key)
    if remat and loss_attr(loss, "remat") is None:
        fn = jax.checkpoint(fn)
    (value, metrics), grads = jax.value_and_grad(fn, has_aux=True)(trainable)
    updates, opt_state = opt.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    return trainable, opt_state, {loss_attr(loss, "loss_name", "loss"): value, **metrics,
                                  "grad_norm": optax.global_norm(grads), "param_norm": param_norm(trainable)}


@functools.lru_cache(maxsize=32)
def _cached_step(tc: TrainConfig, registry_version: int):
    del registry_version  # part of the key: re-registering an optimizer invalidates its steps
    opt = make_optimizer(tc)
    return opt, jax.jit(functools.partial(train_step, opt, tc.seed, tc.remat), donate_argnums=(0, 1))


def compiled_step(tc: TrainConfig):
    """(optimizer, jitted ``(trainable, opt_state, loss, batch, step) -> (trainable, opt_state,
    metrics)``) for ``tc``, shared by every trainer with this config; trainable and state are donated."""
    return _cached_step(tc, optimizers.registry_version())


def make_train_step(cfg: Config, tc: TrainConfig, opt: optax.GradientTransformation):
    """Jitted LM step ``(params, opt_state, tokens, loss_mask) -> (params, opt_state, metrics)``;
    params and state are donated (pass buffers you own)."""
    loss = Partial(LMLoss(cfg, tc.remat))

    def step(params, opt_state, tokens, loss_mask):
        return train_step(opt, tc.seed, False, params, opt_state, loss, {"tokens": tokens, "loss_mask": loss_mask}, 0)

    return jax.jit(step, donate_argnums=(0, 1))


def restore_latest(ckpt, state: dict):
    """(restored state, step) from an orbax CheckpointManager's latest step, shaped like ``state``
    (arrays or ShapeDtypeStructs); (state, None) when there is no checkpoint yet."""
    import orbax.checkpoint as ocp

    latest = ckpt.latest_step()
    if latest is None:
        return state, None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    return ckpt.restore(latest, args=ocp.args.StandardRestore(abstract)), latest


def _signature(tree) -> list:
    """[path, shape, dtype] of every leaf: what a checkpoint of this trainable must match."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return [[jax.tree_util.keystr(p), list(x.shape), str(x.dtype)] for p, x in leaves]


def _run_diff(old: dict, new: dict) -> list[str]:
    """What differs between a saved run description and this one (TrainConfig fields added later
    take their defaults, so runs saved before a field existed still resume)."""
    diffs = [k for k in new if k not in ("train", "trainable", "start_weights") and old.get(k) != new[k]]
    if "trainable" in old and old["trainable"] != new["trainable"]:
        diffs.append("trainable shapes")
    elif "start_weights" in old and old["start_weights"] != new["start_weights"]:  # runs saved before it resume
        diffs.append(f"starting weights: fingerprint {old['start_weights']} -> {new['start_weights']}")
    try:
        old_tc = TrainConfig(**old.get("train", {}))
    except (TypeError, ValueError):
        return diffs + ["train"]
    new_tc = TrainConfig(**new["train"])
    return diffs + [f"train.{f.name}: {getattr(old_tc, f.name)!r} -> {getattr(new_tc, f.name)!r}"
                    for f in dataclasses.fields(TrainConfig) if getattr(old_tc, f.name) != getattr(new_tc, f.name)]


def _check_trainable(tree):
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError("the trainable pytree has no arrays to train")
    bad = [(jax.tree_util.keystr(p), str(x.dtype)) for p, x in jax.tree_util.tree_leaves_with_path(tree)
           if not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.floating)]
    if bad:
        raise ValueError(f"trainable leaves must be floating-point arrays (gradients are taken); got {bad[:5]}")


class Trainer:
    """Runs the compiled step over ``batch_fn(step)``; with a ``workdir``, checkpoints there every
    ``tc.ckpt_every`` steps (orbax) and logs metrics to ``metrics.jsonl``; a new Trainer on the same
    workdir resumes from the latest checkpoint bit-exactly and loses no steps.

    ``loss``: a ``Config`` (train that language model: ``params`` or a fresh ``init_params``), a
    ``Model`` (fine-tune ``model.params``), or a loss callable with ``trainable=``. The caller's
    arrays are copied, never donated. ``keep_checkpoints``: how many recent checkpoints to keep
    (None keeps every one, e.g. to analyse a model across training). ``eval_fn(trainable) -> dict``
    is logged every ``eval_every`` steps (at logging steps). ``info``: what is trained, saved in
    ``run.json`` and checked on resume. ``data_parallel``: split every batch array's axis 0 over
    the local devices (else all runs on the first device)."""

    def __init__(self, loss, tc: TrainConfig, workdir=None, params=None, eval_fn: Callable | None = None,
                 eval_every: int = 0, keep_checkpoints: int | None = 2, *, trainable=None, info: dict | None = None,
                 data_parallel: bool = True, ckpt_key: str | None = None, desc: str = "train"):
        if not isinstance(tc, TrainConfig):
            raise TypeError(f"tc must be a TrainConfig; got {type(tc).__name__}")
        if keep_checkpoints is not None and (isinstance(keep_checkpoints, bool) or keep_checkpoints < 1):
            raise ValueError(f"keep_checkpoints must be >= 1 or None (keep all), got {keep_checkpoints}")
        if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 0:
            raise ValueError(f"eval_every must be an integer >= 0 (0: never), got {eval_every!r}")
        if params is not None and trainable is not None:
            raise ValueError("pass the arrays to train once: params= or trainable=, not both")
        trainable = params if trainable is None else trainable
        loss, trainable, info, default_key = self._resolve(loss, tc, trainable, info)
        _check_trainable(trainable)
        self.tc, self.eval_fn, self.eval_every, self.desc = tc, eval_fn, eval_every, desc
        self.loss = loss if isinstance(loss, Partial) else Partial(loss)
        self.ckpt_key = ckpt_key or default_key
        self.opt, self.step_fn = compiled_step(tc)
        if data_parallel:
            self.batch_sharding, self.replicated = data_sharding()
        else:
            self.batch_sharding = self.replicated = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        self.data_parallel = data_parallel
        self.loss = jax.device_put(self.loss, self.replicated)  # frozen arrays: may alias, never donated
        self.step, self.ckpt, self.history = 0, None, []
        self.workdir = None if workdir is None else Path(workdir)
        restored = None
        if self.workdir is not None:
            restored = self._open_workdir(info, trainable, keep_checkpoints)
        if restored is not None:
            self.trainable, self.opt_state = restored[self.ckpt_key], restored["opt_state"]
        else:
            # a fresh copy: the step donates its input, and device_put on one device would alias
            # the caller's buffers (their model would be deleted by the first step)
            self.trainable = jax.device_put(trainable, self.replicated, may_alias=False)
            self.opt_state = jax.device_put(self.opt.init(self.trainable), self.replicated, may_alias=False)

    @staticmethod
    def _resolve(loss, tc: TrainConfig, trainable, info):
        """(loss, trainable, run info, checkpoint key) for the three ways to name what is trained."""
        if isinstance(loss, Config):
            trainable = init_params(loss, jax.random.PRNGKey(tc.seed)) if trainable is None else trainable
            return LMLoss(loss, tc.remat), trainable, {"model": loss.to_dict(), **(info or {})}, "params"
        if isinstance(loss, Model):  # fine-tune the handle's params
            trainable = loss.params if trainable is None else trainable
            return LMLoss(loss.cfg, tc.remat), trainable, {"model": loss.cfg.to_dict(), **(info or {})}, "params"
        if callable(loss):
            if trainable is None:
                raise ValueError("a loss function needs trainable= (the pytree it is minimised over)")
            return loss, trainable, dict(info or {}), "trainable"
        raise TypeError(f"Trainer trains a Config (language model), a Model or a loss callable "
                        f"loss(trainable, batch, key) -> (loss, metrics); got {type(loss).__name__}")

    def _open_workdir(self, info: dict, trainable, keep_checkpoints):
        """Write or check ``run.json``; open the checkpoints; the restored state or None."""
        import orbax.checkpoint as ocp

        self.workdir.mkdir(parents=True, exist_ok=True)
        meta = {**info, "train": dataclasses.asdict(self.tc), "trainable": _signature(trainable),
                "start_weights": model_fingerprint(trainable)}
        meta = json.loads(json.dumps(meta))
        meta_path = self.workdir / "run.json"
        if meta_path.exists():
            try:
                old = json.loads(meta_path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{meta_path} is not valid JSON ({e}); remove the workdir or use a new one") from None
            diff = _run_diff(old, meta)
            if diff:
                raise ValueError(f"{self.workdir} holds a run with a different model or TrainConfig "
                                 f"({'; '.join(diff)}); "
                                 f"use a new workdir or the same settings to resume")
        else:
            atomic_write_text(meta_path, json.dumps(meta, indent=1))
        self.ckpt = ocp.CheckpointManager(
            self.workdir.resolve() / "ckpt",
            options=ocp.CheckpointManagerOptions(max_to_keep=keep_checkpoints, create=True,
                                                 cleanup_tmp_directories=True))
        latest = self.ckpt.latest_step()
        if latest is None:
            return None
        restored = self.ckpt.restore(latest, args=ocp.args.StandardRestore(self._abstract_state(trainable)))
        self.step = latest
        self._truncate_log(latest)
        return restored

    def _abstract_state(self, trainable) -> dict:
        """Shapes, dtypes and shardings of the checkpointed state, without allocating it."""
        abstract = jax.eval_shape(lambda t: {self.ckpt_key: t, "opt_state": self.opt.init(t)}, trainable)
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), abstract)

    # --- compatibility names -------------------------------------------------------------

    @property
    def params(self):
        """The trained pytree (the model's params for a language model)."""
        return self.trainable

    @property
    def log_path(self) -> Path | None:
        return None if self.workdir is None else self.workdir / "metrics.jsonl"

    # --- checkpoints ----------------------------------------------------------------------

    def _truncate_log(self, upto: int):
        """Drop log lines past the restored step (and a line cut short by a kill)."""
        if self.log_path.exists():
            keep = []
            for line in self.log_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if row.get("step", upto + 1) <= upto:
                    keep.append(line)
            atomic_write_text(self.log_path, "".join(k + "\n" for k in keep))

    def _need_ckpt(self):
        if self.ckpt is None:
            raise ValueError("this Trainer has no workdir, so no checkpoints")

    def save(self):
        """Checkpoint the current step (trainable and optimizer state) and wait until it is on disk."""
        import orbax.checkpoint as ocp

        self._need_ckpt()
        state = {self.ckpt_key: self.trainable, "opt_state": self.opt_state}
        self.ckpt.save(self.step, args=ocp.args.StandardSave(state), force=True)
        self.ckpt.wait_until_finished()

    def all_steps(self) -> list[int]:
        """Steps of the checkpoints kept on disk, ascending."""
        self._need_ckpt()
        return sorted(self.ckpt.all_steps())

    def restore(self, step: int):
        """The trainable saved at checkpoint ``step`` (see ``all_steps()``), without changing the trainer."""
        import orbax.checkpoint as ocp

        steps = self.all_steps()
        if step not in steps:
            raise ValueError(f"no checkpoint at step {step}; saved steps: {steps}")
        abstract = self._abstract_state(self.trainable)
        return self.ckpt.restore(step, args=ocp.args.StandardRestore(abstract))[self.ckpt_key]

    # --- the loop -------------------------------------------------------------------------

    def _put_batch(self, batch):
        check = loss_attr(self.loss, "check_batch")
        batch = check(batch) if check is not None else batch
        n = len(jax.local_devices()) if self.data_parallel else 1

        def put(x):
            x = x if isinstance(x, jax.Array) else np.asarray(x)
            if x.ndim >= 1 and n > 1:
                if x.shape[0] % n:
                    raise ValueError(f"batch axis 0 has size {x.shape[0]}, not divisible by the {n} local devices "
                                     f"it is split over (data parallel); use a multiple of {n} or data_parallel=False")
                return jax.device_put(x, self.batch_sharding)
            return jax.device_put(x, self.replicated)

        return jax.tree.map(put, batch)

    def stacked_history(self) -> dict:
        """Every metric of each step of the last ``train(history=True)`` call, stacked on a leading
        step axis (one transfer from the device)."""
        if not self.history:
            return {}
        host = jax.device_get(self.history)
        return {k: np.stack([np.asarray(h[k]) for h in host]) for k in host[0]}

    def train(self, batch_fn: Callable[[int], dict], steps: int, progress: bool = True, history: bool = False) -> dict:
        """Train until ``steps`` total optimizer micro-steps (checkpointing every ``tc.ckpt_every`` and
        at the end); returns the last logged metrics. ``history``: keep every step's metrics on device
        (read them with ``stacked_history()``)."""
        from tqdm.auto import tqdm

        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ValueError(f"steps must be an integer >= 0 (the total to reach), got {steps!r}")
        last, self.history = {}, []
        bar = tqdm(total=steps, initial=min(self.step, steps), disable=not progress, desc=self.desc)
        log = open(self.log_path, "a") if self.workdir is not None else None
        try:
            while self.step < steps:
                batch = self._put_batch(batch_fn(self.step))
                self.trainable, self.opt_state, metrics = self.step_fn(self.trainable, self.opt_state, self.loss, batch,
                                                                       jnp.int32(self.step))
                self.step += 1
                if history:
                    self.history.append(metrics)
                bar.update(1)
                if self.step % self.tc.log_every == 0 or self.step == steps:
                    last = self._log_row(metrics)
                    if log is not None:
                        log.write(json.dumps(last) + "\n")
                        log.flush()
                    name = loss_attr(self.loss, "loss_name", "loss")
                    if np.ndim(last[name]) == 0:
                        bar.set_postfix({name: f"{last[name]:.3f}"})
                if self.ckpt is not None and (self.step % self.tc.ckpt_every == 0 or self.step == steps):
                    self.save()
        finally:
            bar.close()
            if log is not None:
                log.close()
        return last

    def _log_row(self, metrics: dict) -> dict:
        """The host copy of one step's metrics (the only sync of a logging step), plus evaluation."""
        row = {"step": self.step}
        for k, v in jax.device_get(metrics).items():
            row[k] = float(v) if np.ndim(v) == 0 else np.asarray(v).tolist()
        if self.eval_fn is not None and self.eval_every and self.step % self.eval_every == 0:
            row.update({f"eval_{k}": float(v) for k, v in self.eval_fn(self.trainable).items()})
        return row


def train_in_memory(cfg: Config, tc: TrainConfig, batch_fn, steps: int, params=None):
    """Train a language model without checkpoints or logs (small models in experiments):
    ``batch_fn(step)`` returns (tokens, loss_mask); returns the trained params (the caller's
    ``params`` are copied, not consumed). Use ``Trainer`` with a workdir for anything worth resuming."""
    trainer = Trainer(cfg, tc, None, params=params, data_parallel=False)

    def as_dict(step):
        tokens, loss_mask = batch_fn(step)
        return {"tokens": tokens, "loss_mask": loss_mask}

    trainer.train(as_dict, steps, progress=False)
    return trainer.params
