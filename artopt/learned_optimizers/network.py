"""The coordinatewise LSTM optimizer network m(∇f, h; φ).

One small LSTM, shared by every coordinate: the coordinates of all parameters form the batch
dimension, so each coordinate keeps its own hidden state while φ stays tiny (a few thousand
numbers).  The update is ``output_scale · Linear(h)``; θ ← θ + update.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from .preprocessing import preprocess_gradients, sanitize

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (num_layers, N, hidden_size)


@dataclass(frozen=True)
class LSTMOptimizerConfig:
    hidden_size: int = 20
    num_layers: int = 2
    preprocess: bool = True  # Appendix-A log/sign preprocessing; False feeds the raw gradient
    p: float = 10.0
    output_scale: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LSTMOptimizerConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown learned-optimizer config keys: {sorted(unknown)}")
        return cls(**d)


class LSTMOptimizerNet(nn.Module):
    def __init__(self, config: LSTMOptimizerConfig | None = None, **overrides):
        super().__init__()
        config = config or LSTMOptimizerConfig()
        if overrides:
            config = LSTMOptimizerConfig(**{**config.to_dict(), **overrides})
        self.config = config
        in_features = 2 if config.preprocess else 1
        self.lstm = nn.LSTM(in_features, config.hidden_size, config.num_layers)
        self.head = nn.Linear(config.hidden_size, 1)

    @property
    def state_numbers_per_coordinate(self) -> int:
        return 2 * self.config.num_layers * self.config.hidden_size

    def init_state(self, n: int, device=None, dtype=torch.float32) -> State:
        shape = (self.config.num_layers, n, self.config.hidden_size)
        return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)

    def features(self, grad: torch.Tensor) -> torch.Tensor:
        if self.config.preprocess:
            return preprocess_gradients(grad, self.config.p)
        return sanitize(grad.float()).unsqueeze(-1)

    def forward(self, grad: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """grad: (N,) flattened gradients (treated as constants); returns (update (N,), new state)."""
        x = self.features(grad.detach()).unsqueeze(0)  # (seq=1, N, features)
        h, c = state
        out, (h, c) = self.lstm(x, (h.to(x.dtype), c.to(x.dtype)))
        update = self.head(out[0]).squeeze(-1) * self.config.output_scale
        return update, (h, c)


def learned_update(
    nets: nn.ModuleDict | dict,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    groups: list[str],
    states: dict[str, State],
) -> tuple[list[torch.Tensor], dict[str, State]]:
    """One functional optimizer step θ ← θ + m(∇f) for meta-training (differentiable w.r.t. φ).

    All coordinates served by one network go through it as a single batch, in parameter order;
    ``states[group]`` holds their hidden states in that same order.
    """
    new_params = list(params)
    new_states = dict(states)
    for group in dict.fromkeys(groups):  # unique, in order
        idx = [i for i, g in enumerate(groups) if g == group]
        flat = torch.cat([grads[i].reshape(-1) for i in idx])
        if group not in new_states:
            new_states[group] = nets[group].init_state(flat.numel(), device=flat.device)
        update, new_states[group] = nets[group](flat, new_states[group])
        offset = 0
        for i in idx:
            n = params[i].numel()
            new_params[i] = params[i] + update[offset : offset + n].view_as(params[i]).to(params[i].dtype)
            offset += n
    return new_params, new_states
