import math

import pytest
import torch

from artopt.learned_optimizers.preprocessing import preprocess_gradients


def expected(g, p=10.0):
    if abs(g) >= math.exp(-p):
        return (math.log(abs(g)) / p, math.copysign(1.0, g))
    return (-1.0, math.exp(p) * g)


@pytest.mark.parametrize("g", [0.0, 1e-12, -1e-6, math.exp(-10), 0.5, -3.0, 1e20, -1e-4])
def test_matches_appendix_a(g):
    out = preprocess_gradients(torch.tensor([g], dtype=torch.float64).float())
    want = expected(float(torch.tensor(g).float()))
    assert out.shape == (1, 2)
    assert out[0, 0].item() == pytest.approx(want[0], rel=1e-5, abs=1e-6)
    assert out[0, 1].item() == pytest.approx(want[1], rel=1e-5, abs=1e-6)


def test_threshold_is_continuous_in_the_first_feature():
    p = 10.0
    just_below = torch.tensor([math.exp(-p) * (1 - 1e-4)])
    just_above = torch.tensor([math.exp(-p) * (1 + 1e-4)])
    assert preprocess_gradients(just_below)[0, 0].item() == pytest.approx(-1.0)
    assert preprocess_gradients(just_above)[0, 0].item() == pytest.approx(-1.0, abs=1e-4)


def test_other_p():
    out = preprocess_gradients(torch.tensor([0.01]), p=5.0)
    assert out[0, 0].item() == pytest.approx(math.log(0.01) / 5.0, rel=1e-5)
    with pytest.raises(ValueError):
        preprocess_gradients(torch.tensor([1.0]), p=0)


def test_non_finite_inputs_give_finite_features():
    out = preprocess_gradients(torch.tensor([float("nan"), float("inf"), -float("inf")]))
    assert torch.isfinite(out).all()
    assert out[0].tolist() == [-1.0, 0.0]  # NaN treated as a zero gradient
    assert out[1, 1].item() == 1.0 and out[2, 1].item() == -1.0


@pytest.mark.parametrize("p", [float("nan"), float("inf"), -1.0])
def test_p_must_be_positive_and_finite(p):
    # NaN passed the old `p <= 0` check and gave NaN features; inf gave NaN for a zero gradient
    with pytest.raises(ValueError, match="positive and finite"):
        preprocess_gradients(torch.tensor([0.0, 1.0]), p=p)
