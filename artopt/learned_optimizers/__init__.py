"""The learned optimizer: coordinatewise LSTM network, its torch.optim face and weight files."""

from .network import LSTMOptimizerConfig, LSTMOptimizerNet, learned_update
from .preprocessing import preprocess_gradients
from .shipped import weights_path
from .torch_optimizer import LearnedOptimizer
from .weights import WeightsError, load_learned, save_learned

__all__ = [
    "LSTMOptimizerConfig",
    "LSTMOptimizerNet",
    "learned_update",
    "preprocess_gradients",
    "LearnedOptimizer",
    "WeightsError",
    "load_learned",
    "save_learned",
    "weights_path",
]
