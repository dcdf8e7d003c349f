"""Meta-training of learned optimizers."""

from .checkpoints import ship_best
from .truncated_bptt import (OBJECTIVE_OPTIONS, MetaTrainConfig, MetaTrainResult, add_meta_train_flags, meta_train,
                             meta_train_flag_values, run_episode, trajectory_score, validation_problems)

__all__ = ["OBJECTIVE_OPTIONS", "MetaTrainConfig", "MetaTrainResult", "add_meta_train_flags", "meta_train",
           "meta_train_flag_values", "run_episode", "ship_best", "trajectory_score", "validation_problems"]
