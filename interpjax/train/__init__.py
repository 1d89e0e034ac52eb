"""Training: one Trainer (pluggable loss and trainable pytree), optimizers, data parallel, resume."""

from .trainer import (SCHEDULES, TrainConfig, Trainer, data_sharding, init_params, lm_loss, make_optimizer,
                      make_schedule, make_train_step, param_norm, restore_latest, train_in_memory)

__all__ = ["SCHEDULES", "TrainConfig", "Trainer", "data_sharding", "init_params", "lm_loss", "make_optimizer",
           "make_schedule", "make_train_step", "param_norm", "restore_latest", "train_in_memory"]
