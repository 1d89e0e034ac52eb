"""Training: one Trainer (pluggable loss and trainable pytree), the optimizer registry, data
checks and streams, data parallel, exact resume."""

from .config import SCHEDULES, TrainConfig
from .data import TokenStream, check_train_tokens, data_sharding
from .lm import LMLoss, init_params, lm_loss
from .optimizers import (OPTIMIZERS, make_optimizer, make_schedule, optax_promotion, optimizer_state_bytes,
                         register_optimizer, tree_bytes)
from .trainer import (Trainer, compiled_step, loss_attr, make_train_step, param_norm, restore_latest, train_in_memory,
                      train_step)

__all__ = ["LMLoss", "OPTIMIZERS", "SCHEDULES", "TokenStream", "TrainConfig", "Trainer", "check_train_tokens",
           "compiled_step", "data_sharding", "init_params", "lm_loss", "loss_attr", "make_optimizer", "make_schedule",
           "make_train_step", "optax_promotion", "optimizer_state_bytes", "param_norm", "register_optimizer", "restore_latest",
           "train_in_memory", "train_step", "tree_bytes"]
from .finetune import (Selection, answer_logprob, document_token_id, encode_pairs, exact_match, finetune,  # noqa: E402
                       greedy_answers, normalize_answer, pair_batches, select_params, token_f1)

__all__ += ["Selection", "answer_logprob", "document_token_id", "encode_pairs", "exact_match", "finetune",
            "greedy_answers", "normalize_answer", "pair_batches", "select_params", "token_f1"]
