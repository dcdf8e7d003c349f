"""Learning-rate search on validation problems, and its JSON cache."""

import json
import math

import pytest
import torch

from artopt.optimizers.tuning import LRSearchResult, TunedLRCache, score_curves, search_lr
from artopt.tasks.quadratic import quadratic_problem


class IsotropicQuadratics:
    """f(θ) = ‖θ − y‖²: gradient 2(θ − y), so SGD with lr 0.5 lands on y in one step and any
    other lr contracts the error by |1 − 2·lr| per step.  Records the splits it is asked for."""

    name = "isotropic"
    steps = 3
    unroll = 3

    def __init__(self):
        self.splits = []

    def sample(self, generator, split="train"):
        self.splits.append(split)
        y = torch.randn(5, generator=generator)
        return quadratic_problem(torch.eye(5), y, torch.zeros(5))


def test_picks_the_known_best_lr():
    task = IsotropicQuadratics()
    res = search_lr(task, "sgd", grid=[0.05, 0.1, 0.2, 0.5, 0.8, 1.0, 2.0], problems=3)
    assert res.lr == 0.5
    assert res.scores["0.5"] < 1e-10
    assert res.scores["2.0"] > res.scores["1.0"] > res.scores["0.8"] > res.scores["0.5"]
    assert res.steps == 3 and res.problems == 3 and not res.at_edge
    assert set(task.splits) == {"val"}  # tuning never sees evaluation ("test") problems


def test_trajectory_criterion_and_edge_flag():
    task = IsotropicQuadratics()
    res = search_lr(task, "sgd", grid=[0.01, 0.1, 0.3], problems=2, criterion="trajectory")
    assert res.lr == 0.3 and res.at_edge and res.criterion == "trajectory"


def test_divergence_scores_inf_and_all_diverging_raises():
    task = IsotropicQuadratics()
    res = search_lr(task, "sgd", grid=[0.5, 1e30], problems=1, steps=3)
    assert res.scores[repr(1e30)] == math.inf and res.lr == 0.5
    with pytest.raises(RuntimeError, match="diverged"):
        search_lr(task, "sgd", grid=[1e30], problems=1, steps=5)
    assert json.dumps(res.to_dict(), allow_nan=False)  # inf written as a string


def test_score_curves():
    c = torch.tensor([[3.0, 1.0], [5.0, 3.0]])
    assert score_curves(c, "final") == 2.0
    assert score_curves(c, "trajectory") == 3.0
    assert score_curves(torch.tensor([[1.0, math.inf]]), "final") == math.inf
    with pytest.raises(ValueError, match="criterion"):
        score_curves(c, "best")


def test_bad_arguments():
    task = IsotropicQuadratics()
    with pytest.raises(ValueError):
        search_lr(task, "sgd", grid=[])
    with pytest.raises(ValueError):
        search_lr(task, "sgd", grid=[0.1, -1.0])
    with pytest.raises(ValueError, match="unknown optimizer"):
        search_lr(task, "adagrad", grid=[0.1], problems=1)
    with pytest.raises(ValueError, match="criterion"):
        search_lr(task, "sgd", grid=[0.1], criterion="median")


def test_search_is_deterministic():
    a = search_lr(IsotropicQuadratics(), "adam", grid=[0.01, 0.1], problems=2, seed=3)
    b = search_lr(IsotropicQuadratics(), "adam", grid=[0.01, 0.1], problems=2, seed=3)
    assert a.scores == b.scores


def _result(opt, lr, steps=100):
    return LRSearchResult(opt, lr, "final", {repr(lr): 1.0}, 2, steps, 0, False, [lr])


def test_cache_roundtrip_and_merge(tmp_path):
    path = tmp_path / "sub" / "tuned.json"
    a = TunedLRCache(path)
    assert a.get("mnist", 100, "adam") is None
    a.put("mnist", _result("adam", 0.01))
    a.save()
    # Another run (e.g. on another task) loaded the file before; its save must keep ours.
    b = TunedLRCache(tmp_path / "sub" / "tuned.json")
    c = TunedLRCache(path)
    b.put("quadratic", _result("sgd", 0.1))
    c.put("mnist", _result("adam", 0.003, steps=200))
    b.save()
    c.save()
    final = TunedLRCache(path)
    assert final.get("mnist", 100, "adam")["lr"] == 0.01
    assert final.get("mnist", 200, "adam")["lr"] == 0.003
    assert final.get("quadratic", 100, "sgd")["lr"] == 0.1
    assert not list(path.parent.glob("*.tmp"))


def test_cache_rejects_corrupt_file(tmp_path):
    path = tmp_path / "tuned.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TunedLRCache(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        TunedLRCache(path)
