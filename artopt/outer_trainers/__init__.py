"""Meta-training of learned optimizers."""

from .truncated_bptt import (OBJECTIVE_OPTIONS, MetaTrainConfig, MetaTrainResult, meta_train, run_episode, ship_best,
                             trajectory_score)

__all__ = ["OBJECTIVE_OPTIONS", "MetaTrainConfig", "MetaTrainResult", "meta_train", "run_episode", "ship_best", "trajectory_score"]
