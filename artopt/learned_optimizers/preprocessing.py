"""Gradient preprocessing of Andrychowicz et al. (2016), Appendix A.

Gradients of different parameters span many orders of magnitude; the LSTM sees each coordinate's
gradient as two bounded numbers instead:

    (log|g| / p, sign(g))   if |g| >= e^-p
    (-1,         e^p · g)   otherwise
"""

from __future__ import annotations

import math

import torch


def sanitize(grad: torch.Tensor) -> torch.Tensor:
    """Replace NaN by 0 and ±Inf by the largest finite value of the dtype (keeps the sign)."""
    big = torch.finfo(grad.dtype).max
    return torch.nan_to_num(grad, nan=0.0, posinf=big, neginf=-big)


def preprocess_gradients(grad: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """Map gradients of shape (N,) to LSTM inputs of shape (N, 2); non-finite values are sanitized."""
    # NaN passed `p <= 0` and gave NaN features; p = inf gave NaN (0 · log 0) for zero gradients.
    if not (p > 0 and math.isfinite(p)):
        raise ValueError(f"preprocessing exponent p must be positive and finite, got {p}")
    g = sanitize(grad.float())
    magnitude = g.abs()
    large = magnitude >= math.exp(-p)
    # clamp_min keeps log finite where the small-gradient branch is selected anyway
    log_part = torch.where(large, magnitude.clamp_min(math.exp(-p)).log() / p, torch.full_like(g, -1.0))
    sign_part = torch.where(large, torch.sign(g), g * math.exp(p))
    return torch.stack((log_part, sign_part), dim=-1)
