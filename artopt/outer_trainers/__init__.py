"""Meta-training of learned optimizers."""

from .truncated_bptt import MetaTrainConfig, MetaTrainResult, meta_train, run_episode, ship_best, trajectory_score

__all__ = ["MetaTrainConfig", "MetaTrainResult", "meta_train", "run_episode", "ship_best", "trajectory_score"]
