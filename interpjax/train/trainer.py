"""Training any interpjax decoder from scratch or fine-tuning it: next-token loss with masks, optax
AdamW (weight decay, schedules, clipping, gradient accumulation), optional remat, data parallel
over local devices, orbax checkpoints with exact resume, JSONL metrics and a progress bar.

Batches come from ``batch_fn(step) -> {"tokens": [B, T], "loss_mask": [B, T] (optional)}``, a
function of the step number, so a run killed and resumed sees exactly the batches it would have.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..core import model as M
from ..core.config import Config
from ..io.artifacts import atomic_write_text
from ..io.convert import expected_shapes

SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and loop settings; saved next to checkpoints so a resume can check them."""

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

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r}; valid: {SCHEDULES}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")


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
    acc = ((logp.argmax(-1) == target) * w).sum() / denom
    return (nll * w).sum() / denom, acc


def make_schedule(tc: TrainConfig):
    """Linear warmup from 0 (if any), then constant / cosine decay / linear decay to 0."""
    main_steps = max(tc.total_steps - tc.warmup_steps, 1)
    main = {"constant": optax.constant_schedule(tc.lr),
            "cosine": optax.cosine_decay_schedule(tc.lr, main_steps),
            "linear": optax.linear_schedule(tc.lr, 0.0, main_steps)}[tc.schedule]
    if not tc.warmup_steps:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, tc.lr, tc.warmup_steps), main], [tc.warmup_steps])


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    sched = make_schedule(tc)
    chain = ([optax.clip_by_global_norm(tc.clip_norm)] if tc.clip_norm else []) + [
        optax.adamw(sched, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay)]
    opt = optax.chain(*chain)
    return optax.MultiSteps(opt, every_k_schedule=tc.grad_accum) if tc.grad_accum > 1 else opt


def param_norm(params) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(p.astype(jnp.float32))) for p in jax.tree.leaves(params)))


def make_train_step(cfg: Config, tc: TrainConfig, opt: optax.GradientTransformation):
    """Jitted (params, opt_state, tokens, loss_mask) -> (params, opt_state, metrics)."""

    def step(params, opt_state, tokens, loss_mask):
        (loss, acc), grads = jax.value_and_grad(lambda p: lm_loss(cfg, p, tokens, loss_mask, tc.remat),
                                                has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, "acc": acc, "grad_norm": optax.global_norm(grads),
                                   "param_norm": param_norm(params)}

    return jax.jit(step, donate_argnums=(0, 1))


def train_in_memory(cfg: Config, tc: TrainConfig, batch_fn, steps: int, params=None):
    """Train without checkpoints or logs (small models in experiments): ``batch_fn(step)`` returns
    (tokens, loss_mask); returns the trained params. Use ``Trainer`` for anything worth resuming."""
    params = init_params(cfg, jax.random.PRNGKey(tc.seed)) if params is None else params
    opt = make_optimizer(tc)
    state = opt.init(params)
    step_fn = make_train_step(cfg, tc, opt)
    for step in range(steps):
        tokens, loss_mask = batch_fn(step)
        params, state, _ = step_fn(params, state, jnp.asarray(tokens), jnp.asarray(loss_mask))
    return params


def data_sharding():
    """Batch axis sharded over all local devices; params replicated."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.local_devices()), ("data",))
    return NamedSharding(mesh, P("data")), NamedSharding(mesh, P())


def restore_latest(ckpt, state: dict):
    """(restored state, step) from an orbax CheckpointManager's latest step, shaped like ``state``;
    (state, None) when there is no checkpoint yet."""
    import orbax.checkpoint as ocp

    latest = ckpt.latest_step()
    if latest is None:
        return state, None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    return ckpt.restore(latest, args=ocp.args.StandardRestore(abstract)), latest


class Trainer:
    """Runs ``train step`` over ``batch_fn(step)`` with periodic orbax checkpoints in ``workdir``;
    a new Trainer on the same workdir resumes from the latest checkpoint and loses no steps.
    ``keep_checkpoints``: how many recent checkpoints to keep on disk (None keeps every one, e.g.
    to analyse a model across training)."""

    def __init__(self, cfg: Config, tc: TrainConfig, workdir, params=None,
                 eval_fn: Callable | None = None, eval_every: int = 0, keep_checkpoints: int | None = 2):
        import orbax.checkpoint as ocp

        if keep_checkpoints is not None and keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1 or None (keep all), got {keep_checkpoints}")

        self.cfg, self.tc, self.eval_fn, self.eval_every = cfg, tc, eval_fn, eval_every
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        meta = {"model": cfg.to_dict(), "train": dataclasses.asdict(tc)}
        meta_path = self.workdir / "run.json"
        if meta_path.exists():
            old = json.loads(meta_path.read_text())
            if old != json.loads(json.dumps(meta)):
                raise ValueError(f"{self.workdir} holds a run with a different model or TrainConfig; "
                                 f"use a new workdir or the same settings to resume")
        else:
            atomic_write_text(meta_path, json.dumps(meta, indent=1))
        self.opt = make_optimizer(tc)
        self.step_fn = make_train_step(cfg, tc, self.opt)
        self.batch_sharding, self.replicated = data_sharding()
        params = params if params is not None else init_params(cfg, jax.random.PRNGKey(tc.seed))
        self.params = jax.device_put(params, self.replicated)
        self.opt_state = jax.device_put(self.opt.init(self.params), self.replicated)
        self.step = 0
        self.ckpt = ocp.CheckpointManager(self.workdir.resolve() / "ckpt",
                                          options=ocp.CheckpointManagerOptions(max_to_keep=keep_checkpoints, create=True))
        restored, latest = restore_latest(self.ckpt, {"params": self.params, "opt_state": self.opt_state})
        if latest is not None:
            self.params, self.opt_state, self.step = restored["params"], restored["opt_state"], latest
            self._truncate_log(latest)

    @property
    def log_path(self) -> Path:
        return self.workdir / "metrics.jsonl"

    def _truncate_log(self, upto: int):
        if self.log_path.exists():
            keep = [l for l in self.log_path.read_text().splitlines() if l and json.loads(l)["step"] <= upto]
            atomic_write_text(self.log_path, "".join(k + "\n" for k in keep))

    def restore(self, step: int) -> dict:
        """The params saved at checkpoint ``step`` (see ``all_steps()``), without changing the trainer."""
        import orbax.checkpoint as ocp

        steps = self.all_steps()
        if step not in steps:
            raise ValueError(f"no checkpoint at step {step}; saved steps: {steps}")
        state = {"params": self.params, "opt_state": self.opt_state}
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        return self.ckpt.restore(step, args=ocp.args.StandardRestore(abstract))["params"]

    def all_steps(self) -> list[int]:
        """Steps of the checkpoints kept on disk, ascending."""
        return sorted(self.ckpt.all_steps())

    def save(self):
        import orbax.checkpoint as ocp

        self.ckpt.save(self.step, args=ocp.args.StandardSave({"params": self.params, "opt_state": self.opt_state}),
                       force=True)
        self.ckpt.wait_until_finished()

    def train(self, batch_fn: Callable[[int], dict], steps: int, progress: bool = True) -> dict:
        """Train until ``steps`` total optimizer micro-steps; returns the last metrics."""
        from tqdm.auto import tqdm

        last = {}
        bar = tqdm(total=steps, initial=self.step, disable=not progress, desc="train")
        with open(self.log_path, "a") as log:
            while self.step < steps:
                batch = batch_fn(self.step)
                tokens = jax.device_put(jnp.asarray(batch["tokens"], jnp.int32), self.batch_sharding)
                mask = batch.get("loss_mask")
                mask = jax.device_put(jnp.asarray(mask if mask is not None else np.ones(tokens.shape), jnp.float32),
                                      self.batch_sharding)
                self.params, self.opt_state, metrics = self.step_fn(self.params, self.opt_state, tokens, mask)
                self.step += 1
                bar.update(1)
                if self.step % self.tc.log_every == 0 or self.step == steps:
                    last = {"step": self.step, **{k: float(v) for k, v in metrics.items()}}
                    if self.eval_fn is not None and self.eval_every and self.step % self.eval_every == 0:
                        last.update({f"eval_{k}": float(v) for k, v in self.eval_fn(self.params).items()})
                    log.write(json.dumps(last) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{last['loss']:.3f}")
                if self.step % self.tc.ckpt_every == 0 or self.step == steps:
                    self.save()
        bar.close()
        return last
