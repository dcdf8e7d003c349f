"""Evaluation: running optimizers on problems, the 95% band, compare(), and the CLI."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from artopt.evaluation import (EVAL_SEED_OFFSET, EvalResult, band, baseline_factory, compare, evaluate,
                               lstm_factory, run_optimizer, sample_problems)
from artopt.tasks.base import Problem
from artopt.tasks.quadratic import QuadraticTask, quadratic_problem

ROOT = Path(__file__).resolve().parents[1]


def iso_problem(y):
    return quadratic_problem(torch.eye(len(y)), torch.as_tensor(y, dtype=torch.float32), torch.zeros(len(y)))


class RecordingTask:
    """Quadratics that remember which split they were drawn from."""

    name = "recording"
    steps = 4
    unroll = 4

    def __init__(self):
        self.splits = []
        self.inner = QuadraticTask(dim=3)

    def sample(self, generator, split="train"):
        self.splits.append(split)
        return self.inner.sample(generator, split)


def test_run_optimizer_matches_a_hand_written_loop():
    prob = iso_problem([1.0, -2.0])
    run = run_optimizer(prob, baseline_factory("sgd", 0.1), steps=3)
    theta, expected = torch.zeros(2), []
    y = torch.tensor([1.0, -2.0])
    for _ in range(3):
        expected.append(float(((theta - y) ** 2).sum()))
        theta = theta - 0.1 * 2 * (theta - y)
    expected.append(float(((theta - y) ** 2).sum()))
    assert run.curve.shape == (4,)
    assert torch.allclose(run.curve, torch.tensor(expected, dtype=torch.float64), rtol=1e-6)
    assert torch.allclose(run.params[0], theta) and run.evaluations == 3
    assert torch.equal(prob.params[0], torch.zeros(2))  # the problem's θ₀ is never modified


def test_run_optimizer_uses_step_index_and_projection():
    seen = []

    def loss(params, t):
        seen.append(t)
        return ((params[0] - 5.0) ** 2).sum()

    prob = Problem([torch.zeros(3)], loss, project=lambda ps: [ps[0].clamp(0.0, 1.0)])
    run = run_optimizer(prob, baseline_factory("sgd", 1.0), steps=4)
    assert seen == [0, 1, 2, 3, 4]
    assert float(run.params[0].max()) == 1.0  # projected after every step (it would be far above)


def test_lbfgs_runs_unconstrained_and_is_projected_at_the_end():
    def loss(params, t):
        return ((params[0] - torch.tensor([5.0, 0.5])) ** 2).sum()

    prob = Problem([torch.zeros(2)], loss, project=lambda ps: [ps[0].clamp(0.0, 1.0)])
    run = run_optimizer(prob, baseline_factory("lbfgs", 1.0), steps=3)
    # it stays at the unconstrained optimum between steps (projected, it stood at (1, 0.5): loss 16)...
    assert float(run.curve[2]) < 1e-6
    assert run.params[0].tolist() == [1.0, 0.5] and float(run.curve[-1]) == 16.0  # ...and ends projected


def test_divergence_is_recorded_as_inf():
    run = run_optimizer(iso_problem([1.0]), baseline_factory("sgd", 1e20), steps=50)
    assert run.curve[0] == 1.0 and math.isinf(float(run.curve[-1]))
    b = band(torch.stack([run.curve, torch.ones(51, dtype=torch.float64)]))
    assert math.isinf(float(b["mean"][-1])) and float(b["mean"][0]) == 1.0


def test_lbfgs_counts_line_search_evaluations():
    run = run_optimizer(iso_problem([1.0, 2.0, 3.0]), baseline_factory("lbfgs", 1.0), steps=3)
    assert run.evaluations >= 3
    assert float(run.curve[-1]) < 1e-8  # exact line search on an isotropic quadratic


def test_band_is_a_bootstrap_ci_of_the_mean():
    b = band(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert torch.allclose(b["mean"], torch.tensor([2.0, 3.0], dtype=torch.float64))
    assert torch.equal(b["lo"], torch.tensor([1.0, 2.0], dtype=torch.float64))  # resampled means span
    assert torch.equal(b["hi"], torch.tensor([3.0, 4.0], dtype=torch.float64))  # {1, 2, 3} at step 0
    single = band(torch.tensor([[1.0, 2.0]]))
    assert torch.equal(single["lo"], single["hi"]) and torch.equal(single["lo"], single["mean"])
    # Many roughly normal instances: close to mean ± 1.96 standard errors.
    x = torch.randn(400, 3, generator=torch.Generator().manual_seed(0)) + 10
    b = band(x)
    se = x.double().std(0) / 20
    assert torch.allclose((b["hi"] - b["lo"]) / (2 * 1.96 * se), torch.ones(3, dtype=torch.float64), atol=0.1)
    # Skewed positive losses: the band stays positive (log plots) and brackets the mean.
    skewed = torch.exp(3 * torch.randn(30, 2, generator=torch.Generator().manual_seed(1)))
    b = band(skewed)
    assert (b["lo"] > 0).all() and (b["lo"] < b["mean"]).all() and (b["mean"] < b["hi"]).all()
    assert torch.equal(band(skewed)["lo"], b["lo"])  # deterministic
    for bad in (torch.ones(3), torch.ones(0, 3)):  # an IndexError, and a band of NaN
        with pytest.raises(ValueError, match="curves must be \\(instances, steps \\+ 1\\)"):
            band(bad)


def test_evaluate_refuses_a_fractional_step_count():
    with pytest.raises(ValueError, match="steps must be a whole number, got 2.7"):  # ran 2 steps
        evaluate(QuadraticTask(), {"adam": baseline_factory("adam", 0.1)}, instances=1, steps=2.7)


def test_evaluate_same_fresh_test_problems_for_every_optimizer():
    task = RecordingTask()
    factories = {"sgd": baseline_factory("sgd", 0.01), "adam": baseline_factory("adam", 0.1)}
    res = evaluate(task, factories, instances=3, steps=4, seed=7)
    assert set(task.splits) == {"test"}
    assert res.curves["sgd"].shape == (3, 5)
    assert torch.equal(res.curves["sgd"][:, 0], res.curves["adam"][:, 0])  # same problems
    assert len(set(res.curves["sgd"][:, 0].tolist())) == 3  # and they differ from each other
    again = evaluate(RecordingTask(), factories, instances=3, steps=4, seed=7)
    other = evaluate(RecordingTask(), factories, instances=3, steps=4, seed=8)
    assert torch.equal(res.curves["adam"], again.curves["adam"])
    assert not torch.equal(res.curves["adam"][:, 0], other.curves["adam"][:, 0])
    # Meta-training seeds its generators with small numbers and the "train"/"val" splits:
    x = torch.randn(3)
    train = QuadraticTask(dim=3).sample(torch.Generator().manual_seed(EVAL_SEED_OFFSET + 7), "train")
    assert train.loss([x], 0) != sample_problems(QuadraticTask(dim=3), 1, 7)[0].loss([x], 0)
    with pytest.raises(ValueError):
        evaluate(task, factories, instances=0)


def _result(curves):
    return EvalResult("t", 2, 0, "test", {k: torch.tensor(v, dtype=torch.float64) for k, v in curves.items()})


def test_compare_ratio_and_best_baseline():
    res = _result({"lstm": [[4.0, 1.0, 0.5], [4.0, 1.0, 1.5]],  # mean final 1.0
                   "adam": [[4.0, 2.0, 2.0], [4.0, 2.0, 2.0]],  # 2.0 (best baseline)
                   "sgd": [[4.0, 3.0, 4.0], [4.0, 3.0, 4.0]]})  # 4.0
    out = compare(res, lrs={"adam": 0.01, "sgd": 0.1})
    assert out["best_baseline"] == "adam"
    assert out["lstm_over_best_baseline"] == pytest.approx(0.5)
    assert out["lstm_wins_fraction"] == 1.0
    assert out["lstm_over_each_baseline"] == {"adam": pytest.approx(0.5), "sgd": pytest.approx(0.25)}
    windowed = compare(res, window=2)  # mean of the last two losses: lstm 1.0, adam 2.0, sgd 3.5
    assert windowed["optimizers"]["sgd"]["mean_last_window_loss"] == pytest.approx(3.5)
    assert windowed["lstm_over_best_baseline_last_window"] == pytest.approx(0.5)
    assert out["optimizers"]["adam"]["lr"] == 0.01 and out["optimizers"]["lstm"]["learned"]
    assert out["optimizers"]["sgd"]["mean_trajectory_loss"] == pytest.approx(11 / 3)
    assert out["instances"] == 2
    json.dumps(out, allow_nan=False)
    import numpy as np
    assert compare(res, window=np.int64(2)) == windowed  # a numpy integer is a whole number too
    for bad in (0, -1, 2.5, True):  # 0 averaged the whole curve, -1 all but its first loss
        with pytest.raises(ValueError, match="window must be a whole number of steps, at least 1"):
            compare(res, window=bad)


def test_compare_without_lstm_and_with_divergence():
    res = _result({"adam": [[1.0, 0.5, math.inf]], "sgd": [[1.0, 0.9, 0.8]]})
    out = compare(res)
    assert out["lstm_over_best_baseline"] is None and out["best_baseline"] == "sgd"
    assert out["optimizers"]["adam"]["mean_final_loss"] == "inf" and out["optimizers"]["adam"]["diverged"] == 1
    json.dumps(out, allow_nan=False)


def _nets(*names):
    from artopt.learned_optimizers import LSTMOptimizerNet

    torch.manual_seed(0)
    return {n: LSTMOptimizerNet() for n in names}


def test_lstm_factory_routes_groups(tmp_path):
    from artopt.learned_optimizers import save_learned

    prob = Problem([torch.zeros(3), torch.zeros(2)], lambda ps, t: sum((p - 1).pow(2).sum() for p in ps),
                   groups=["conv", "fc"])
    nets = _nets("conv", "fc")
    opt = lstm_factory(nets=nets)(prob.fresh_params(), prob.groups)
    assert sorted(g["net"] for g in opt.param_groups) == ["conv", "fc"]
    # A single-network file serves every group.
    path = save_learned(tmp_path / "one.safetensors", _nets("default"))
    run = run_optimizer(prob, lstm_factory(weights=path), steps=3)
    assert torch.isfinite(run.curve).all() and run.evaluations == 3
    with pytest.raises(ValueError, match="none for parameter group"):
        lstm_factory(nets=_nets("conv", "other"))(prob.fresh_params(), prob.groups)
    with pytest.raises(ValueError):
        lstm_factory()


def test_cli_end_to_end(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "train"))
    import evaluate as cli

    out_json, out_png = tmp_path / "q.json", tmp_path / "q.png"
    from artopt.learned_optimizers import save_learned

    weights = save_learned(tmp_path / "q.safetensors", _nets("default"))
    rc = cli.main(["quadratic", "--optimizers", "lstm,sgd,adam", "--steps", "5", "--instances", "3",
                   "--weights", str(weights), "--lr", "sgd=0.01", "--tuned-lrs", str(tmp_path / "lrs.json"),
                   "--tune-problems", "1", "--tune-grid", "1e-2:1e-1:1", "--json", str(out_json),
                   "--plot", str(out_png), "--quiet"])
    assert rc == 0
    report = json.loads(out_json.read_text())
    assert report["optimizers"]["sgd"]["lr"] == 0.01
    assert report["optimizers"]["adam"]["lr"] in (0.01, 0.1)  # tuned on the 2-point grid, then cached
    assert json.loads((tmp_path / "lrs.json").read_text())["quadratic"]["steps=5"]["adam"]["lr"] == \
        report["optimizers"]["adam"]["lr"]
    assert isinstance(report["lstm_over_best_baseline"], float)
    assert len(report["optimizers"]["lstm"]["mean_curve"]) == 6
    assert report["weights"] == {"lstm": str(weights)}
    assert out_png.stat().st_size > 1000
    assert cli.main(["quadratic", "--optimizers", "nag", "--steps", "5", "--tune-only", "--tune-problems", "1",
                     "--tune-grid", "1e-2:1e-1:1", "--tuned-lrs", str(tmp_path / "lrs.json"), "--quiet"]) == 0
    assert "nag" in json.loads((tmp_path / "lrs.json").read_text())["quadratic"]["steps=5"]
    with pytest.raises(SystemExit):
        cli.parse_args(["quadratic", "--optimizers", "adagrad"])
    with pytest.raises(SystemExit):
        cli.parse_args(["quadratic", "--lr", "sgd=-1"])
    with pytest.raises(SystemExit) as done:  # before any tuning
        cli.main(["quadratic", "--optimizers", "lstm", "--weights", str(tmp_path / "missing.safetensors"), "--quiet"])
    assert done.value.code == 2


def test_ratios_over_a_diverged_best_baseline_are_undefined_not_zero():
    # Every baseline diverged on its instance: LSTM / inf used to read 0.0 ("infinitely better").
    res = _result({"lstm": [[1.0, 0.5, 0.2]], "adam": [[1.0, math.inf, math.inf]], "sgd": [[1.0, 2.0, math.inf]]})
    out = compare(res, lrs={"adam": 0.1, "sgd": 0.1})
    assert out["best_baseline_final_loss"] == "inf"
    assert out["lstm_over_best_baseline"] is None and out["learned_over_best_baseline"] == {"lstm": None}
    assert out["lstm_over_each_baseline"] == {"adam": None, "sgd": None}
    assert "lstm_over_best_baseline_last_window" not in out
    json.dumps(out, allow_nan=False)
    # One finite baseline: the ratios are against it, and the diverged one's stays undefined.
    res = _result({"lstm": [[1.0, 0.5, 0.2]], "adam": [[1.0, math.inf, math.inf]], "sgd": [[1.0, 0.5, 0.4]]})
    out = compare(res)
    assert out["best_baseline"] == "sgd" and out["lstm_over_best_baseline"] == pytest.approx(0.5)
    assert out["lstm_over_each_baseline"] == {"adam": None, "sgd": pytest.approx(0.5)}


def test_evaluations_per_step_counts_the_steps_a_diverged_run_took():
    # SGD takes one evaluation per step; a run that diverges at step 3 of 50 took 4 steps, not 50.
    run = run_optimizer(iso_problem([1.0]), baseline_factory("sgd", 1e20), steps=50)
    assert run.steps < 50 and run.evaluations == run.steps
    res = evaluate(RecordingTask(), {"sgd": baseline_factory("sgd", 1e20), "adam": baseline_factory("adam", 0.1)},
                   instances=2, steps=50)
    assert res.evaluations == {"sgd": 1.0, "adam": 1.0}
    assert run_optimizer(iso_problem([1.0]), baseline_factory("sgd", 0.1), steps=5).steps == 5


def test_band_in_blocks_equals_the_bootstrap_in_one_piece():
    # 300 instances x 200 steps: the resamples are averaged a block at a time (memory); same numbers.
    curves = torch.exp(torch.randn(300, 200, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    b = band(curves, resamples=500, seed=3)
    idx = torch.randint(0, 300, (500, 300), generator=torch.Generator().manual_seed(3))
    lo, hi = torch.quantile(curves[idx].mean(1), torch.tensor([0.025, 0.975], dtype=torch.float64), dim=0)
    assert torch.equal(b["lo"], lo) and torch.equal(b["hi"], hi)


def _cli():
    sys.path.insert(0, str(ROOT / "train"))
    import evaluate as cli

    return cli


@pytest.mark.parametrize("argv, message", [
    (["--tune-grid", "1e-4:inf:2"], "--tune-grid"),  # was an OverflowError traceback
    (["--tune-grid", "1e-4:10:nan"], "--tune-grid"),
    (["--tune-grid", "1e-9:1e9:1000"], "at most 1000"),
    (["--lr", "adam=inf"], "finite"),  # was accepted: every run diverged
    (["--lr", "adma=0.01"], "'adma'"),  # a typo was ignored and the tuned lr used
    (["--weights", "lstm-x=w.safetensors"], "'lstm-x'"),
    (["--optimizers", "adam", "--weights", "adam=w.safetensors"], "learned"),
    (["--tune-problems", "0"], "--tune-problems"),  # was a ValueError from search_lr, mid-run
    (["--plot", "out.xyz"], "--plot"),  # was refused by savefig after the whole evaluation
    (["--json", "same.png", "--plot", "same.png"], "same file"),
    (["--json", "lrs.json", "--tuned-lrs", "lrs.json"], "same file"),  # the report overwrote the cache
    (["--tune-only", "--json", "q.json"], "--tune-only writes no report"),  # taken, and never written
    # Before: found by main, as 'error: ...' without the command's name (and the missing file only there).
    (["--optimizers", "lstm-x,adam"], "lstm-x needs --weights lstm-x=PATH"),
    (["--weights", "nope.safetensors"], "--weights lstm=nope.safetensors: no such file"),
])
def test_cli_bad_flags_exit_2_before_work(tmp_path, monkeypatch, capsys, argv, message):
    cli = _cli()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        cli.parse_args(["quadratic", *argv])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err


@pytest.mark.parametrize("flag", ["--json", "--tuned-lrs"])  # (--plot must end in an image format)
def test_cli_refuses_an_output_that_names_the_weights_it_runs(tmp_path, capsys, flag):
    weights = tmp_path / "w.safetensors"  # was overwritten by the report (or the cache)
    weights.write_bytes(b"weights")
    argv = ["quadratic", "--optimizers", "lstm,adam", "--weights", str(weights), flag, str(weights)]
    with pytest.raises(SystemExit) as done:
        _cli().parse_args(argv)
    assert done.value.code == 2
    assert f"{flag} and the weights of lstm name the same file" in capsys.readouterr().err
    assert weights.read_bytes() == b"weights"


def test_a_cards_first_order_ratio_comes_from_the_unrounded_losses():
    evaluate_script = _cli()
    # cifar2's losses: rounded to 4 places, nag and adam tied at 0.0052 and adam was named
    assert evaluate_script.first_order_ratio({"lstm": 0.00301, "adam": 0.00524, "nag": 0.00516}, "lstm") == \
        {"best_first_order_baseline": "nag", "over_best_first_order": 0.583}
    # a baseline under 5e-5 rounded to 0 and divided by zero; L-BFGS and non-finite losses do not count
    assert evaluate_script.first_order_ratio({"lstm": 1e-5, "sgd": 4e-5, "lbfgs": 1e-9, "adam": None}, "lstm") == \
        {"best_first_order_baseline": "sgd", "over_best_first_order": 0.25}
    assert evaluate_script.first_order_ratio({"lstm": None, "sgd": 1.0}, "lstm") == {}


def test_cli_card_is_checked_before_the_run_and_bad_flags_leave_no_folder(tmp_path, capsys):
    cli = _cli()
    out = tmp_path / "new" / "q.json"
    with pytest.raises(SystemExit) as done:  # the missing card was found after the whole evaluation
        cli.parse_args(["quadratic", "--json", str(out), "--card", str(tmp_path / "missing.json")])
    assert done.value.code == 2 and "--card" in capsys.readouterr().err
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(SystemExit):
        cli.parse_args(["quadratic", "--json", str(out), "--card", str(tmp_path / "list.json")])
    with pytest.raises(SystemExit):
        cli.parse_args(["quadratic", "--json", str(out), "--lr", "sgd=-1"])
    assert not (tmp_path / "new").exists()  # the --json folder was made before the --lr check


def test_cli_tune_grid_stays_within_low_and_high():
    # 1.5 points per decade over 5 decades: 8 rates from 1e-4, the last 10**1.33, not 10**1.33 x 10**0.67
    grid = _cli().parse_args(["quadratic", "--tune-grid", "1e-4:10:1.5"]).grid
    assert grid[0] == pytest.approx(1e-4) and max(grid) <= 10 and len(grid) == 8
    assert _cli().parse_args(["quadratic", "--tune-grid", "1e-4:10:2"]).grid == pytest.approx(
        [10 ** (k / 2) for k in range(-8, 3)])
    assert _cli().parse_args(["quadratic", "--tune-grid", "0.1:0.1:1"]).grid == [pytest.approx(0.1)]


def test_cli_bad_lr_cache_and_missing_data_are_errors_before_work(tmp_path, monkeypatch, capsys):
    cli = _cli()
    lrs = tmp_path / "lrs.json"
    lrs.write_text('{"quadratic": {"steps=2": {"sgd": 5}}}')
    assert cli.main(["quadratic", "--optimizers", "sgd", "--steps", "2", "--tuned-lrs", str(lrs), "--quiet"]) == 2
    assert "lrs.json" in capsys.readouterr().err  # was a TypeError traceback
    monkeypatch.setenv("ARTOPT_DATA", str(tmp_path / "absent"))
    assert cli.main(["mnist", "--optimizers", "sgd", "--lr", "sgd=0.1", "--steps", "2", "--instances", "1",
                     "--tuned-lrs", str(tmp_path / "ok.json"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert ": error:" in err.splitlines()[0] and "ARTOPT_DATA" in err  # was a DataNotFoundError traceback


def test_cli_retunes_an_lr_cached_for_another_criterion(tmp_path):
    cli = _cli()
    lrs = tmp_path / "lrs.json"
    lrs.write_text(json.dumps({"quadratic": {"steps=2": {"sgd": {"lr": 0.5, "criterion": "final", "problems": 1,
                                                                 "steps": 2, "seed": 0, "at_edge": False}}}}))
    argv = ["quadratic", "--optimizers", "sgd", "--steps", "2", "--tune-only", "--tune-problems", "1",
            "--tune-grid", "1e-2:1e-1:1", "--tuned-lrs", str(lrs), "--quiet"]
    assert cli.main(argv) == 0  # the same criterion: the cached lr, untouched
    assert json.loads(lrs.read_text())["quadratic"]["steps=2"]["sgd"]["lr"] == 0.5
    assert cli.main(argv + ["--tune-criterion", "trajectory"]) == 0  # used to take the 'final' one
    entry = json.loads(lrs.read_text())["quadratic"]["steps=2"]["sgd"]
    assert entry["criterion"] == "trajectory" and entry["lr"] in (0.01, 0.1)


def test_median_final_loss_of_an_even_count_is_the_mean_of_the_middle_two():
    # torch's median returns the lower middle value: 2.0 here, where the median is 2.5.
    res = _result({"adam": [[9.0, 1.0], [9.0, 2.0], [9.0, 3.0], [9.0, 4.0]],
                   "sgd": [[9.0, 1.0], [9.0, 2.0], [9.0, math.inf]]})
    out = compare(res)
    assert out["optimizers"]["adam"]["median_final_loss"] == 2.5
    assert out["optimizers"]["sgd"]["median_final_loss"] == 2.0  # odd count; the diverged run sorts last
    out = compare(_result({"sgd": [[9.0, 1.0], [9.0, math.inf]]}))
    assert out["optimizers"]["sgd"]["median_final_loss"] == "inf"


def test_plot_survives_curves_with_nothing_to_log_scale(tmp_path):
    cli = _cli()
    inf = math.inf
    for name, curves in (("diverged", {"lstm": [[inf, inf, inf]], "adam": [[inf, inf, inf]]}),  # savefig raised
                         ("mixed", {"lstm": [[1.0, 0.5, 0.0]], "adam": [[1.0, inf, inf]]})):
        out = compare(_result(curves), lrs={"adam": 0.1})
        cli.plot_curves(out, tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


@pytest.mark.parametrize("weights, message", [
    (None, "cannot load lstm ("),
    # networks for CIFAR's conv and fc groups, on a task whose parameters are one default group
    (ROOT / "weights" / "cifar10.safetensors", "none for parameter group 'default'")])
def test_cli_a_weights_file_that_cannot_be_loaded_is_said_before_any_tuning(tmp_path, capsys, weights, message):
    # Before: with the learned optimizer listed after a baseline, the baseline was tuned (and cached) first.
    cli = _cli()
    if weights is None:
        weights = tmp_path / "bad.safetensors"
        weights.write_bytes(b"garbage")
    assert cli.main(["quadratic", "--optimizers", "adam,lstm", "--weights", str(weights),
                     "--tuned-lrs", str(tmp_path / "lrs.json"), "--steps", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert ": error: cannot load lstm" in err and message in err and "\n" not in err.strip()
    assert not (tmp_path / "lrs.json").exists()


def test_the_report_names_the_default_weights_too(tmp_path):
    cli = _cli()
    assert cli.main(["quadratic", "--optimizers", "lstm", "--steps", "2", "--instances", "1", "--json",
                     str(tmp_path / "q.json"), "--tuned-lrs", str(tmp_path / "lrs.json"), "--quiet"]) == 0
    # was {}: the report did not say which file it measured
    assert json.loads((tmp_path / "q.json").read_text())["weights"] == {"lstm": "weights/quadratic.safetensors"}
    assert cli.default_weights("neural-art").name == "neural_art.safetensors"  # was neural-art.safetensors
    assert cli.default_weights("mnist-relu").name == "mnist.safetensors"


# Mutation audit, round 2 (session 51): each test below failed on a one-line bug the suite missed.

def test_a_tie_on_an_instance_is_not_a_win():
    res = _result({"lstm": [[4.0, 2.0, 1.0], [4.0, 2.0, 0.5]], "adam": [[4.0, 2.0, 1.0], [4.0, 2.0, 1.0]]})
    assert compare(res)["lstm_wins_fraction"] == 0.5  # instance 0 ties: not a win


def test_the_last_window_ratio_divides_window_by_window():
    # window 2: lstm (2 + 1) / 2 = 1.5, adam (4 + 2) / 2 = 3.0 (its final alone is 2.0)
    res = _result({"lstm": [[4.0, 2.0, 1.0]], "adam": [[4.0, 4.0, 2.0]]})
    out = compare(res, window=2)
    assert out["lstm_over_best_baseline_last_window"] == pytest.approx(0.5)


def test_every_learned_run_is_left_out_of_the_baselines():
    res = _result({"lstm": [[4.0, 2.0, 1.0]], "lstm-bf16": [[4.0, 2.0, 0.8]], "adam": [[4.0, 2.0, 2.0]]})
    out = compare(res, learned=["lstm", "lstm-bf16"])
    assert out["best_baseline"] == "adam" and out["lstm_over_best_baseline"] == pytest.approx(0.5)
    assert out["learned_over_best_baseline"] == {"lstm": pytest.approx(0.5), "lstm-bf16": pytest.approx(0.4)}
    assert set(out["lstm_over_each_baseline"]) == {"adam"}


def test_t_quantile_matches_the_tables():
    from artopt.evaluation import t_quantile

    # Student's t 0.975 quantiles of the printed tables, and the normal's 1.96 in the limit
    for df, q in [(1, 12.7062), (2, 4.3027), (3, 3.1824), (5, 2.5706), (10, 2.2281), (30, 2.0423), (10**6, 1.9600)]:
        assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-4)
    assert t_quantile(0.95, 4) == pytest.approx(2.1318, abs=1e-4)
    for p, df in [(0.5, 3), (1.0, 3), (0.975, 0)]:
        with pytest.raises(ValueError):
            t_quantile(p, df)
