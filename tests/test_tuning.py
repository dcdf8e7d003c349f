"""Learning-rate search on validation problems, and its JSON cache."""

import json
import math

import pytest
import torch

from artopt.optimizers.tuning import LRSearchResult, TunedLRCache, grid_search, score_curves, search_lr
from artopt.tasks.quadratic import quadratic_problem
from artopt.optimizers import make_optimizer


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


def test_grid_search_widens_past_an_edge_until_the_best_is_inside():
    calls = []

    def score(lr):  # minimum at lr = 0.5, above the grid
        calls.append(lr)
        return (math.log(lr) - math.log(0.5)) ** 2

    found = grid_search(score, [0.01, 0.02, 0.04], widen=10)
    assert found.lr == pytest.approx(0.64) and not found.at_edge
    assert found.grid == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28])  # x2 steps, as the grid
    assert len(calls) == len(set(calls)) == 8  # each rate scored once
    low = grid_search(lambda lr: (math.log(lr) - math.log(0.5)) ** 2, [3.0, 9.0], widen=10)
    assert low.lr == pytest.approx(1 / 3) and low.grid[0] == pytest.approx(1 / 9) and not low.at_edge
    capped = grid_search(score, [0.01, 0.02], widen=2)
    assert capped.lr == pytest.approx(0.08) and capped.at_edge and len(capped.grid) == 4
    assert grid_search(score, [0.01, 0.02], widen=0).grid == [0.01, 0.02]  # widen=0: the grid as given
    single = grid_search(lambda lr: math.inf if lr > 0.3 else -lr, [1.0], widen=3)  # diverged: go smaller
    assert single.lr == pytest.approx(0.25) and single.grid == pytest.approx([0.125, 0.25, 0.5, 1.0])
    with pytest.raises(ValueError, match="widen"):
        grid_search(score, [0.1], widen=-1)
    with pytest.raises(ValueError, match="grid"):
        grid_search(score, [0.1, math.inf])


def test_search_lr_widens_the_grid():
    task = IsotropicQuadratics()
    res = search_lr(task, "sgd", grid=[0.01, 0.1], problems=2, widen=4)  # best is 0.5 (exact in 1 step)
    assert res.grid == pytest.approx([0.01, 0.1, 1.0]) and res.lr == pytest.approx(0.1)
    res = search_lr(task, "sgd", grid=[0.2, 0.3], problems=2, widen=4)
    assert res.lr == pytest.approx(0.45) and not res.at_edge and res.grid[-1] == pytest.approx(0.675)


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
    # A run that re-tunes an entry (--tune) while another, which read the old one, saves another task's:
    # the re-tuned rate stays (the other wrote back all it had read, the old rate with it)
    d, e = TunedLRCache(path), TunedLRCache(path)
    d.put("mnist", _result("adam", 0.0316))
    d.save()
    e.put("cifar10", _result("nag", 0.3))
    e.save()
    final = TunedLRCache(path)
    assert final.get("mnist", 100, "adam")["lr"] == 0.0316 and final.get("cifar10", 100, "nag")["lr"] == 0.3


def test_cache_rejects_corrupt_file(tmp_path):
    path = tmp_path / "tuned.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TunedLRCache(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        TunedLRCache(path)


@pytest.mark.parametrize("text, where", [
    ('{"quadratic": []}', "quadratic"),
    ('{"quadratic": {"steps=2": 5}}', "steps=2"),
    ('{"quadratic": {"steps=2": {"sgd": 5}}}', "sgd"),
    ('{"quadratic": {"steps=2": {"sgd": {"lr": "abc"}}}}', "'lr'"),
    ('{"quadratic": {"steps=2": {"sgd": {"lr": -1}}}}', "'lr'"),
    ('{"quadratic": {"steps=2": {"sgd": {"lr": true}}}}', "'lr'"),
    ('{"quadratic": {"steps=2": {"sgd": {"criterion": "final"}}}}', "'lr'"),
    ('{"quadratic": {"steps=2": {"sgd": {"lr": Infinity}}}}', "not valid JSON"),  # Python reads it; JSON has none
    ('{"quadratic": {"steps=2": {"sgd": {"lr": 0.1, "scores": {"0.1": NaN}}}}}', "not valid JSON"),
])
def test_cache_refuses_wrong_types_naming_file_and_entry(tmp_path, text, where):
    # They used to load and then fail as AttributeError / KeyError / TypeError deep in evaluate.py
    # (or, for lr -1, only when the optimizer was built).
    path = tmp_path / "tuned.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="tuned.json") as err:
        TunedLRCache(path)
    assert where in str(err.value)


def test_cache_entry_with_only_an_lr_is_usable_and_saved_as_strict_json(tmp_path):
    path = tmp_path / "tuned.json"
    path.write_text('{"quadratic": {"steps=2": {"sgd": {"lr": 1}}}}')
    cache = TunedLRCache(path)
    assert cache.get("quadratic", 2, "sgd") == {"lr": 1}
    res = LRSearchResult("adam", 0.1, "final", {"0.1": 1.0, "10.0": math.inf}, 1, 2, 0, False, [0.1, 10.0])
    cache.put("quadratic", res)
    cache.save()
    assert '"inf"' in path.read_text()
    assert TunedLRCache(path).get("quadratic", 2, "adam")["scores"]["10.0"] == "inf"


def test_search_lr_refuses_zero_steps():
    # With 0 steps every lr ties at the initial loss and the smallest would be "tuned".
    with pytest.raises(ValueError, match="steps"):
        search_lr(IsotropicQuadratics(), "sgd", grid=[0.1, 1.0], problems=1, steps=0)


def test_make_optimizer_refuses_non_finite_rates():
    from artopt.optimizers import make_optimizer

    p = [torch.zeros(2, requires_grad=True)]
    for lr in (math.inf, math.nan, 0.0, -1.0):
        with pytest.raises(ValueError, match="learning rate"):
            make_optimizer("adam", p, lr)
    assert make_optimizer("sgd", p, 0.5).param_groups[0]["lr"] == 0.5


def test_lbfgs_line_search_can_shorten_a_step_that_overshoots():
    from artopt.optimizers import make_optimizer

    # lr 10 makes the first trial step overshoot (x = 1 - 10 / 2 * 2 = -9); torch's default max_eval
    # for one iteration left the line search no evaluation to shorten it: x stayed at 1 for good
    x = torch.ones(1, requires_grad=True)
    opt = make_optimizer("lbfgs", [x], 10.0)

    def closure():
        opt.zero_grad()
        loss = (x ** 2).sum()
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    assert float(x.detach().abs()) < 1e-3


def test_lbfgs_starts_afresh_after_a_step_that_did_not_move_and_then_stops():
    from artopt.optimizers import make_optimizer

    x = torch.zeros(3, requires_grad=True)
    opt = make_optimizer("lbfgs", [x], 1.0)
    calls = []

    def lying():  # a gradient that promises a descent the loss never shows
        calls.append(1)
        opt.zero_grad()
        x.grad = torch.ones(3)
        return torch.tensor(1.0)

    opt.step(lying)
    assert not opt.stalled and not opt.state  # no move: history cleared, the next step from the gradient
    opt.step(lying)
    assert opt.stalled and torch.equal(x.detach(), torch.zeros(3))
    before = len(calls)
    assert float(opt.step(lying)) == 1.0 and len(calls) == before + 1  # stalled: only the loss, no search


# Mutation audit, round 2 (session 51): each test below failed on a one-line bug the suite missed.

def test_baselines_have_the_papers_hyperparameters():
    p = [torch.zeros(2, requires_grad=True)]
    nag = make_optimizer("nag", p).param_groups[0]
    assert nag["nesterov"] is True and nag["momentum"] == 0.9
    sgd = make_optimizer("sgd", p).param_groups[0]
    assert sgd["momentum"] == 0 and not sgd["nesterov"]
    rms = make_optimizer("rmsprop", p).param_groups[0]
    assert rms["alpha"] == 0.99 and rms["momentum"] == 0 and not rms["centered"]
    adam = make_optimizer("adam", p).param_groups[0]
    assert tuple(adam["betas"]) == (0.9, 0.999) and adam["eps"] == 1e-8


def test_nag_takes_a_nesterov_step():
    # f = x^2 / 2 from x = 1, lr 0.1: step 1 x = 1 - 0.1 * 1.9 = 0.81 (plain momentum: 0.9)
    x = torch.ones(1, requires_grad=True)
    opt = make_optimizer("nag", [x], 0.1)

    def closure():
        opt.zero_grad()
        loss = (x ** 2).sum() / 2
        loss.backward()
        return loss

    opt.step(closure)
    assert float(x.detach()) == pytest.approx(0.81)


def test_a_best_rate_at_the_low_edge_is_flagged():
    score = lambda lr: (math.log(lr) - math.log(0.01)) ** 2  # optimum below the grid  # noqa: E731
    found = grid_search(score, [0.1, 0.3, 1.0], widen=0)
    assert found.lr == 0.1 and found.at_edge
    assert not grid_search(score, [0.003, 0.01, 0.03]).at_edge
