import itertools
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from artopt.learned_optimizers import LSTMOptimizerNet, load_learned
from artopt.learned_optimizers.network import learned_update
from artopt.outer_trainers import MetaTrainConfig, meta_train, run_episode, trajectory_score
from artopt.outer_trainers.checkpoints import RunBusyError
from artopt.outer_trainers.truncated_bptt import sample_problems
from artopt.tasks.base import Problem, stack_problems


class TinyQuadratic:
    """f(θ) = ||Wθ - y||² in 3 dimensions: small enough to meta-train in seconds."""

    name, steps, unroll = "tiny-quadratic", 20, 5

    def sample(self, generator, split="train"):
        W = torch.randn(3, 3, generator=generator)
        y = torch.randn(3, generator=generator)
        theta = torch.randn(3, generator=generator)
        return Problem([theta], lambda ps, t: ((W @ ps[0] - y) ** 2).sum())


def test_run_episode_without_training_changes_nothing():
    torch.manual_seed(0)
    nets = nn.ModuleDict({"default": LSTMOptimizerNet()})
    before = [p.clone() for p in nets.parameters()]
    problem = TinyQuadratic().sample(torch.Generator().manual_seed(1))
    losses = run_episode(nets, problem, steps=10)
    assert len(losses) == 11
    assert all(torch.equal(a, b) for a, b in zip(before, nets.parameters()))


def test_surrogate_gradient_equals_first_order_meta_gradient():
    """⟨∇f(θ_t), θ_t⟩ backprop gives the same dφ as f(θ_t) with the LSTM's input gradient detached."""
    torch.manual_seed(0)
    net = LSTMOptimizerNet()
    W, y = torch.randn(3, 3), torch.randn(3)
    f = lambda th: ((W @ th - y) ** 2).sum()
    theta0 = torch.randn(3)

    def unroll(use_surrogate):
        net.zero_grad()
        th, state, total = theta0.clone(), net.init_state(3), 0.0
        for _ in range(4):
            leaf = th.detach().requires_grad_(True)
            g = torch.autograd.grad(f(leaf), leaf)[0]
            upd, state = net(g, state)
            th = th + upd
            if use_surrogate:
                leaf = th.detach().requires_grad_(True)
                g_new = torch.autograd.grad(f(leaf), leaf)[0]
                total = total + (g_new * th).sum()
            else:
                total = total + f(th)
        total.backward()
        return [p.grad.clone() for p in net.parameters()]

    for a, b in zip(unroll(True), unroll(False)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _meta_grad(nets, problem, fraction=1.0, subset=None):
    """φ's gradient after one unroll of 4 steps, backpropagating through ``subset`` only if given."""
    nets.zero_grad()
    params = [p.clone() for p in problem.params]
    states = {} if subset is None else {"default/meta_idx": torch.tensor(subset),
                                        "default/meta_state": nets["default"].init_state(len(subset))}
    total = 0.0
    for t in range(4):
        leaf = params[0].detach().requires_grad_(True)
        g = torch.autograd.grad(problem.loss([leaf], t), leaf)[0]
        params, states = learned_update(nets, params, [g], problem.groups, states, fraction)
        leaf = params[0].detach().requires_grad_(True)
        total = total + (torch.autograd.grad(problem.loss([leaf], t), leaf)[0] * params[0]).sum()
    total.backward()
    return [p.grad.clone() for p in nets.parameters()]


def test_coordinate_subset_meta_gradient_is_unbiased():
    """Averaged over all subsets of 2 of the 4 coordinates, the scaled estimate is the exact gradient."""
    torch.manual_seed(0)
    nets = nn.ModuleDict({"default": LSTMOptimizerNet()})
    W, y = torch.randn(4, 4), torch.randn(4)
    problem = Problem([torch.randn(4)], lambda ps, t: ((W @ ps[0] - y) ** 2).sum())
    full = _meta_grad(nets, problem)
    subsets = list(itertools.combinations(range(4), 2))
    estimates = [_meta_grad(nets, problem, 0.5, list(s)) for s in subsets]
    for i, exact in enumerate(full):
        mean = sum(e[i] for e in estimates) / len(subsets)
        torch.testing.assert_close(mean, exact, rtol=1e-4, atol=1e-6)
    # A single subset is a different (noisy) estimate, not a copy of the full gradient.
    assert any(not torch.allclose(a, b) for a, b in zip(estimates[0], full))


def test_meta_training_with_a_coordinate_subset_lowers_the_meta_loss(tmp_path):
    torch.manual_seed(0)
    task = TinyQuadratic()
    nets = nn.ModuleDict({"default": LSTMOptimizerNet()})
    cfg = MetaTrainConfig(steps=20, unroll=5, episodes=60, meta_lr=3e-3, val_every=20, val_problems=8,
                          meta_fraction=0.67)
    res = meta_train(task, nets, cfg, out_dir=tmp_path, name="tiny", progress=False)
    vals = [json.loads(line) for line in (tmp_path / "tiny.log.jsonl").read_text().splitlines()]
    vals = [v["val"] for v in vals if v["event"] == "val"]
    assert res.best_val < 0.7 * vals[0]


def test_meta_training_lowers_the_meta_loss(tmp_path):
    torch.manual_seed(0)
    task = TinyQuadratic()
    nets = nn.ModuleDict({"default": LSTMOptimizerNet()})
    cfg = MetaTrainConfig(steps=20, unroll=5, episodes=60, meta_lr=3e-3, val_every=20, val_problems=8, seed=0)
    res = meta_train(task, nets, cfg, out_dir=tmp_path, name="tiny", progress=False)
    vals = [json.loads(line) for line in (tmp_path / "tiny.log.jsonl").read_text().splitlines()]
    vals = [v["val"] for v in vals if v["event"] == "val"]
    assert res.best_val < 0.7 * vals[0]
    # The best networks were written and load back.
    nets_loaded = load_learned(tmp_path / "tiny.safetensors")
    gen = torch.Generator().manual_seed(10_000)
    p = task.sample(gen, "val")
    with torch.no_grad():
        assert trajectory_score(run_episode(nn.ModuleDict(nets_loaded), p, 20)) < float("inf")


def test_resume_continues_from_checkpoint(tmp_path):
    torch.manual_seed(0)
    task = TinyQuadratic()
    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=4, val_every=2, val_problems=2)
    meta_train(task, nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path, name="r", progress=False)
    cfg.episodes = 6
    res = meta_train(task, nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path, name="r",
                     progress=False)
    assert res.episodes_done == 6
    train_events = [json.loads(l) for l in (tmp_path / "r.log.jsonl").read_text().splitlines()]
    assert [e["episode"] for e in train_events if e["event"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_a_rerun_with_its_budget_spent_says_so_on_the_console(tmp_path, capsys):
    # Before: it stopped at once, and only the log's time_budget event said why.
    task = TinyQuadratic()
    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=2, val_every=2, val_problems=1)
    meta_train(task, nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path, name="r")
    assert "budget is spent" not in capsys.readouterr().err
    res = meta_train(task, nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path, name="r")
    assert res.episodes_done == 2
    assert "r: its budget is spent (2 episodes, " in capsys.readouterr().err


def test_a_rerun_with_its_budget_spent_adds_no_wall_time_and_starts_no_helpers(tmp_path, monkeypatch):
    # Before: each rerun (e.g. to ship again) added its own seconds, helper start-up included, to the run's
    # recorded meta-training time, and a --workers 2 rerun started a helper process to do nothing.
    import artopt.outer_trainers.truncated_bptt as tb

    task = TinyQuadratic()
    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=2, val_every=2, val_problems=1, workers=2)
    first = meta_train(task, nn.ModuleDict({"default": LSTMOptimizerNet()}), replace(cfg, workers=1),
                       out_dir=tmp_path, name="r", progress=False)

    def no_helpers(*args, **kwargs):
        raise AssertionError("helpers started for a run with nothing left to train")

    monkeypatch.setattr(tb, "_Helpers", no_helpers)
    monkeypatch.setattr(tb, "check_resume", lambda *args: None)  # (the first run had one worker: quicker)
    again = meta_train(task, nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path, name="r",
                       progress=False)
    assert again.episodes_done == 2 and again.wall_time_s == first.wall_time_s
    assert torch.load(tmp_path / "r.ckpt", weights_only=True)["elapsed"] == first.wall_time_s


def test_resume_refuses_a_run_with_other_settings(tmp_path):
    from dataclasses import replace

    task = TinyQuadratic()
    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=2, val_every=2, val_problems=2)
    meta_train(task, nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path, name="r", progress=False)
    with pytest.raises(ValueError, match="other settings .*steps 10 -> 12"):
        meta_train(task, nn.ModuleDict({"default": LSTMOptimizerNet()}), replace(cfg, steps=12, episodes=3),
                   out_dir=tmp_path, name="r", progress=False)
    # Each changed field of a network's config, not the whole config printed twice.
    with pytest.raises(ValueError, match=r"other settings \(nets\.default\.output_scale 0\.1 -> 0\.5\)"):
        meta_train(task, nn.ModuleDict({"default": LSTMOptimizerNet(output_scale=0.5)}), replace(cfg, episodes=3),
                   out_dir=tmp_path, name="r", progress=False)
    # A bigger budget is what resuming is for.
    res = meta_train(task, nn.ModuleDict({"default": LSTMOptimizerNet()}), replace(cfg, episodes=3, max_minutes=5.0),
                     out_dir=tmp_path, name="r", progress=False)
    assert res.episodes_done == 3


def test_a_damaged_checkpoint_is_named_not_a_traceback(tmp_path):
    task = TinyQuadratic()
    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=2, val_every=2, val_problems=2)
    meta_train(task, nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path, name="r", progress=False)
    ckpt = tmp_path / "r.ckpt"
    for damaged in (ckpt.read_bytes()[:1000], b"", b"garbage\n"):
        ckpt.write_bytes(damaged)
        with pytest.raises(ValueError, match="r.ckpt cannot be resumed.*delete it") as exc:
            meta_train(task, nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path, name="r",
                       progress=False)
        assert "\n" not in str(exc.value)  # one line, without torch.load's advice


def _interrupt_training_episode(monkeypatch, n: int):
    """Make this process's n-th training episode raise KeyboardInterrupt, as Ctrl-C would; returns the
    real run_episode."""
    import artopt.outer_trainers.truncated_bptt as tb

    real, calls = tb.run_episode, []

    def interrupted(nets, problem, steps, *args, **kwargs):
        if args:  # a training episode (validation passes no optimizer)
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
        return real(nets, problem, steps, *args, **kwargs)

    monkeypatch.setattr(tb, "run_episode", interrupted)
    return real


def test_an_interrupted_run_keeps_its_episodes(tmp_path, monkeypatch):
    _interrupt_training_episode(monkeypatch, 4)
    task = TinyQuadratic()
    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=6, val_every=5, val_problems=2)
    with pytest.raises(KeyboardInterrupt):
        meta_train(task, nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path, name="r",
                   progress=False)
    assert torch.load(tmp_path / "r.ckpt", weights_only=True)["episode"] == 3  # not 0: no validation came yet
    res = meta_train(task, nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path, name="r",
                     progress=False)
    events = [json.loads(line) for line in (tmp_path / "r.log.jsonl").read_text().splitlines()]
    assert res.episodes_done == 6
    assert [e["episode"] for e in events if e["event"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_a_log_cut_mid_line_gets_the_resumed_runs_events_on_lines_of_their_own(tmp_path):
    cfg = MetaTrainConfig(steps=4, unroll=2, episodes=1, val_problems=1)
    meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path, name="r",
               progress=False)
    log = tmp_path / "r.log.jsonl"
    with open(log, "a") as f:
        f.write('{"event": "tra')  # a full disk, or a crash while writing
    cfg.episodes = 2
    meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path, name="r",
               progress=False)
    lines = log.read_text().splitlines()
    assert lines.count('{"event": "tra') == 1  # the cut line stays as it was; every other line reads
    events = [json.loads(line) for line in lines if line != '{"event": "tra']
    assert [e["event"] for e in events].count("resumed") == 1 and events[-1]["episode"] == 2


def test_a_run_another_process_is_training_is_refused(tmp_path):
    import subprocess
    import sys

    # another process holds the run's lock, as a second `artopt train` of the same name would meet it
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; "
                               f"fd = os.open({str(tmp_path / '.r.lock')!r}, os.O_RDWR | os.O_CREAT); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = MetaTrainConfig(steps=4, unroll=2, episodes=1, val_problems=1)
        with pytest.raises(RunBusyError, match="run 'r' in .* is being trained by another process"):
            meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path,
                       name="r", progress=False)
        assert not (tmp_path / "r.log.jsonl").exists()  # nothing of the other run's touched
        # another name in the same folder is free
        meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path,
                   name="s", progress=False)
    finally:
        holder.kill()
        holder.wait()
    res = meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path,
                     name="r", progress=False)
    assert res.episodes_done == 1


def test_a_run_interrupted_while_saving_its_best_networks_saves_them_when_resumed(tmp_path, monkeypatch):
    import artopt.outer_trainers.truncated_bptt as tb

    real, calls = tb.save_best, []

    def interrupted_at_the_second(*args, **kwargs):  # the first is the start's validation
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tb, "save_best", interrupted_at_the_second)
    torch.manual_seed(0)
    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=8, meta_lr=3e-3, val_every=1, val_problems=2)
    with pytest.raises(KeyboardInterrupt):
        meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path,
                   name="r", progress=False)
    assert len(calls) == 2  # a validation improved on the start, and its networks were not written
    monkeypatch.setattr(tb, "save_best", real)
    cfg.episodes = torch.load(tmp_path / "r.ckpt", weights_only=True)["episode"]  # no later validation to mend it
    res = meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path,
                     name="r", progress=False)
    card = json.loads((tmp_path / "r.json").read_text())["meta_training"]
    # was the start's networks under the run's later best score: the checkpoint had taken the new score
    assert card["best_episode"] == res.best_episode and card[f"best_val_{cfg.val_criterion}_loss"] == pytest.approx(res.best_val)


@pytest.mark.parametrize("bad", [dict(val_every=0), dict(val_problems=0), dict(episodes=-1), dict(steps=0),
                                 dict(max_minutes=-1.0), dict(meta_fraction=0.0), dict(meta_fraction=2.0),
                                 dict(meta_lr=0.0)])
def test_meta_training_settings_are_checked(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).replace("_", "-").replace("max-", "")):
        MetaTrainConfig(**bad)


def test_cosine_meta_lr_schedule_decays_over_the_budget():
    from artopt.outer_trainers.truncated_bptt import MetaTrainConfig, meta_lr_at

    const = MetaTrainConfig(meta_lr=1e-2)
    assert meta_lr_at(const, 500, 1e6) == 1e-2
    by_time = MetaTrainConfig(meta_lr=1e-2, meta_lr_schedule="cosine", max_minutes=10)
    assert meta_lr_at(by_time, 0, 0.0) == pytest.approx(1e-2)
    assert meta_lr_at(by_time, 0, 300.0) == pytest.approx(5e-3)
    assert meta_lr_at(by_time, 0, 900.0) == pytest.approx(0.0)
    by_episode = MetaTrainConfig(meta_lr=1e-2, meta_lr_schedule="cosine", episodes=100)
    assert meta_lr_at(by_episode, 50, 1e6) == pytest.approx(5e-3)


def test_growing_unroll_reaches_the_whole_horizon_halfway_through_the_budget():
    from artopt.outer_trainers.truncated_bptt import MetaTrainConfig, unroll_at

    const = MetaTrainConfig(steps=100, unroll=20)
    assert unroll_at(const, 900, 1e6) == 20
    grow = MetaTrainConfig(steps=100, unroll=20, unroll_schedule="grow", episodes=100)
    assert unroll_at(grow, 0, 0.0) == 20
    assert unroll_at(grow, 25, 0.0) == round(20 * 5 ** 0.5)  # geometric: 45 a quarter of the way
    assert unroll_at(grow, 50, 0.0) == 100
    assert unroll_at(grow, 100, 0.0) == 100
    by_time = MetaTrainConfig(steps=128, unroll=32, unroll_schedule="grow", max_minutes=10)
    assert unroll_at(by_time, 0, 300.0) == 128
    with pytest.raises(ValueError, match="unroll_schedule"):
        MetaTrainConfig(unroll_schedule="shrink")


def test_a_horizon_curriculum_grows_episodes_to_the_whole_horizon_halfway_through_the_budget(tmp_path):
    from artopt.outer_trainers.truncated_bptt import MetaTrainConfig, horizon_at

    assert horizon_at(MetaTrainConfig(steps=128, unroll=16), 0, 0.0) == 128
    grow = MetaTrainConfig(steps=128, unroll=16, horizon_schedule="grow", episodes=100)
    assert horizon_at(grow, 0, 0.0) == 32  # two truncations
    assert horizon_at(grow, 25, 0.0) == 64  # geometric: 32 * 4 ** 0.5, in whole truncations
    assert horizon_at(grow, 50, 0.0) == horizon_at(grow, 99, 0.0) == 128
    assert all(horizon_at(grow, e, 0.0) % 16 == 0 for e in range(100))
    assert horizon_at(MetaTrainConfig(steps=20, unroll=15, horizon_schedule="grow"), 0, 0.0) == 20
    # grown, it is the whole horizon, also where that is not whole truncations (rounding kept it at 80)
    partial = MetaTrainConfig(steps=100, unroll=40, horizon_schedule="grow", episodes=100)
    assert horizon_at(partial, 0, 0.0) == 80 and horizon_at(partial, 50, 0.0) == horizon_at(partial, 99, 0.0) == 100
    with pytest.raises(ValueError, match="horizon_schedule"):
        MetaTrainConfig(horizon_schedule="shrink")
    # Training episodes follow it; validation runs the whole horizon from the start.
    cfg = MetaTrainConfig(steps=8, unroll=2, episodes=4, val_every=4, val_problems=1, horizon_schedule="grow")
    meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path, name="h",
               progress=False)
    events = [json.loads(line) for line in (tmp_path / "h.log.jsonl").read_text().splitlines()]
    assert [e["steps"] for e in events if e["event"] == "train"] == [4, 6, 8, 8]


def test_a_run_from_before_a_setting_existed_resumes_with_its_default(tmp_path):
    # Before: a checkpoint written before a MetaTrainConfig or network field was added could not be resumed
    # ("unset -> 'constant'"), though the run had used what is now that field's default.
    from dataclasses import replace

    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=2, val_every=2, val_problems=2)
    run = lambda cfg: meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg,
                                 out_dir=tmp_path, name="r", progress=False)
    run(cfg)
    ckpt = torch.load(tmp_path / "r.ckpt", weights_only=True)
    settings = json.loads(ckpt["settings"])
    del settings["horizon_schedule"], settings["nets"]["default"]["head_hidden"]
    ckpt["settings"] = json.dumps(settings)
    torch.save(ckpt, tmp_path / "r.ckpt")
    assert run(replace(cfg, episodes=3)).episodes_done == 3
    with pytest.raises(ValueError, match=r"horizon_schedule 'constant' -> 'grow'"):  # the resumed run wrote it
        run(replace(cfg, episodes=4, horizon_schedule="grow"))


class Recorder(torch.optim.SGD):
    """A meta-optimizer that only records each meta-gradient it is given (lr 0: φ stays frozen)."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.seen = []

    def step(self, closure=None):
        self.seen.append([p.grad.clone() for p in self.param_groups[0]["params"]])


@pytest.mark.parametrize("kind", ["linear", "sqrt", "quadratic"])
def test_trajectory_weights_scale_each_steps_meta_gradient(kind):
    """With φ frozen (lr 0) every weighting follows one trajectory; with unroll 1, unroll t's
    meta-gradient is w_t times the uniform one (linear: 2t / (T + 1); sqrt: √t scaled to mean 1;
    quadratic: t² scaled to mean 1)."""
    torch.manual_seed(0)
    nets = nn.ModuleDict({"default": LSTMOptimizerNet()})
    steps, recorded = 3, {}
    for weights in ("uniform", kind):
        problem = TinyQuadratic().sample(torch.Generator().manual_seed(4))
        rec = Recorder(nets.parameters())
        run_episode(nets, problem, steps, unroll=1, meta_opt=rec, grad_clip=1e12, trajectory_weights=weights)
        recorded[weights] = rec.seen
    assert len(recorded["uniform"]) == len(recorded[kind]) == steps
    expected = {"linear": [2 * t / (steps + 1) for t in (1, 2, 3)],
                "sqrt": [3 * math.sqrt(t) / (1 + math.sqrt(2) + math.sqrt(3)) for t in (1, 2, 3)],
                "quadratic": [3 * t * t / (1 + 4 + 9) for t in (1, 2, 3)]}[kind]
    assert sum(expected) == pytest.approx(steps)  # mean 1
    for w, uni, other in zip(expected, recorded["uniform"], recorded[kind]):
        for gu, go in zip(uni, other):
            torch.testing.assert_close(go, gu * w)


def test_log_meta_loss_divides_each_steps_meta_gradient_by_its_loss():
    """meta_loss="log": d log f(θ_t) = df(θ_t) / f(θ_t), so with φ frozen and unroll 1, unroll t's
    meta-gradient is the "sum" one divided by f(θ_t)."""
    torch.manual_seed(0)
    nets = nn.ModuleDict({"default": LSTMOptimizerNet()})
    steps, recorded, losses = 3, {}, {}
    for meta_loss in ("sum", "log"):
        problem = TinyQuadratic().sample(torch.Generator().manual_seed(4))
        rec = Recorder(nets.parameters())
        losses[meta_loss] = run_episode(nets, problem, steps, unroll=1, meta_opt=rec, grad_clip=1e12,
                                        meta_loss=meta_loss)
        recorded[meta_loss] = rec.seen
    assert losses["sum"] == losses["log"]
    for t in range(1, steps + 1):
        assert losses["sum"][t] > 0
        for gs, gl in zip(recorded["sum"][t - 1], recorded["log"][t - 1]):
            torch.testing.assert_close(gl, gs / losses["sum"][t])


def test_a_stacked_problem_reports_and_trains_on_the_mean_of_its_problems():
    """Two problems stacked: each coordinate keeps its own gradient, the reported losses are the
    mean of the two runs and the meta-gradient is the mean of the two problems' meta-gradients."""
    torch.manual_seed(0)
    nets = nn.ModuleDict({"default": LSTMOptimizerNet()})
    a, b = (TinyQuadratic().sample(torch.Generator().manual_seed(s)) for s in (5, 6))
    losses, grads = [], []
    for problem in (a, b, stack_problems([a, b])):
        rec = Recorder(nets.parameters())
        losses.append(run_episode(nets, problem, 3, unroll=3, meta_opt=rec, grad_clip=1e12))
        grads.append(rec.seen[0])
    assert stack_problems([a, b]).count == 2
    for la, lb, ls in zip(*losses):
        assert ls == pytest.approx((la + lb) / 2, rel=1e-5)
    for ga, gb, gs in zip(*grads):
        torch.testing.assert_close(gs, (ga + gb) / 2, rtol=1e-4, atol=1e-6)


def test_sample_problems_stacks_k_draws_of_a_task_without_sample_batch():
    task = TinyQuadratic()
    single = sample_problems(task, torch.Generator().manual_seed(0), "train", 1)
    assert single.count == 1 and len(single.params) == 1
    stacked = sample_problems(task, torch.Generator().manual_seed(0), "train", 3)
    assert stacked.count == 3 and len(stacked.params) == 3 and stacked.groups == ["default"] * 3
    torch.testing.assert_close(stacked.params[0], single.params[0])  # the same generator, first draw
    with pytest.raises(ValueError, match="problems_per_episode"):
        MetaTrainConfig(problems_per_episode=0)


def test_unknown_meta_training_options_are_refused():
    for bad in ({"val_criterion": "best"}, {"meta_lr_schedule": "step"}, {"trajectory_weights": "linaer"},
                {"meta_loss": "exp"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MetaTrainConfig(**bad)
    problem = TinyQuadratic().sample(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="trajectory_weights"):
        run_episode(nn.ModuleDict({"default": LSTMOptimizerNet()}), problem, 2, trajectory_weights="linaer")
    with pytest.raises(ValueError, match="meta_loss"):
        run_episode(nn.ModuleDict({"default": LSTMOptimizerNet()}), problem, 2, meta_loss="exp")


def _flat(nets: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in nets.parameters()])


def test_ema_keeps_the_moving_average_of_the_iterates_and_validates_it(tmp_path):
    torch.manual_seed(0)
    decay = 0.6
    nets = nn.ModuleDict({"default": LSTMOptimizerNet()})
    iterates = []

    def log(event):
        if event["event"] == "train":
            iterates.append(_flat(nets).clone())

    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=3, meta_lr=1e-2, val_every=3, val_problems=2, ema=decay)
    initial = _flat(nets).clone()
    res = meta_train(TinyQuadratic(), nets, cfg, out_dir=tmp_path, name="e", progress=False, log=log)
    expected = iterates[0]
    for w in iterates[1:]:
        expected = decay * expected + (1 - decay) * w
    assert not torch.allclose(expected, iterates[-1])  # the average is not just the last iterate
    ck = torch.load(tmp_path / "e.ckpt", weights_only=True)
    averaged = torch.cat([v.flatten() for k, v in ck["averaged"].items() if k.startswith("module.")])
    torch.testing.assert_close(averaged, expected)
    # The averaged networks are what is validated and saved; the last iterate is logged beside them.
    last_val = [json.loads(l) for l in (tmp_path / "e.log.jsonl").read_text().splitlines()][-1]
    assert last_val["event"] == "val" and last_val["val"] != last_val["val_last_iterate"]
    # validated at episodes 0 (the start: the average is the initial networks) and 3
    assert res.best_episode in (0, 3)
    saved = nn.ModuleDict(load_learned(tmp_path / "e.safetensors"))
    torch.testing.assert_close(_flat(saved), expected if res.best_episode == 3 else initial)


def test_ema_survives_a_resume(tmp_path):
    def run(episodes, out):
        torch.manual_seed(0)
        cfg = MetaTrainConfig(steps=10, unroll=5, episodes=episodes, meta_lr=1e-2, val_every=2, val_problems=1,
                              ema=0.5)
        meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=out, name="r",
                   progress=False)
        return torch.load(out / "r.ckpt", weights_only=True)["averaged"]

    straight = run(4, tmp_path / "a")
    run(2, tmp_path / "b")
    resumed = run(4, tmp_path / "b")
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key])
    with pytest.raises(ValueError, match="ema"):
        MetaTrainConfig(ema=1.0)


def _events(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_hogwild_workers_share_the_networks_and_count_every_episode(tmp_path):
    import multiprocessing

    torch.manual_seed(0)
    nets = nn.ModuleDict({"default": LSTMOptimizerNet()})
    cfg = MetaTrainConfig(steps=20, unroll=5, episodes=60, meta_lr=3e-3, val_every=20, val_problems=8, workers=2)
    res = meta_train(TinyQuadratic(), nets, cfg, out_dir=tmp_path, name="h", progress=False)
    events = _events(tmp_path / "h.log.jsonl")
    train = [e for e in events if e["event"] == "train"]
    helper = [e for e in train if e.get("worker") == 1]
    # The helper trained too, and every finished episode has its own number.
    assert helper and len(helper) < len(train)
    assert res.episodes_done == 60
    assert sorted(e["episode"] for e in train) == list(range(1, len(train) + 1))
    vals = [e for e in events if e["event"] == "val"]
    # Validated when the count passes a multiple of val_every (helpers may pass it first), and at the end,
    # whoever finished the last episode.
    assert len(vals) == 4 and vals[-1]["episode"] == 60
    assert res.best_val < 0.7 * vals[0]["val"]
    assert not multiprocessing.active_children()  # the helper is gone
    # Only this process's networks are saved, and they load back.
    assert load_learned(tmp_path / "h.safetensors")["default"].config == nets["default"].config


def test_an_interrupted_hogwild_run_stops_its_helper_and_resumes(tmp_path, monkeypatch):
    import multiprocessing

    import artopt.outer_trainers.truncated_bptt as tb

    real = _interrupt_training_episode(monkeypatch, 4)  # in this process only
    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=400, val_every=1000, val_problems=1, workers=2)
    with pytest.raises(KeyboardInterrupt):
        meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path,
                   name="r", progress=False)
    assert not multiprocessing.active_children()
    saved = torch.load(tmp_path / "r.ckpt", weights_only=True)["episode"]
    counted = [e for e in _events(tmp_path / "r.log.jsonl") if e["event"] == "train"]
    assert saved == len(counted) >= 3  # this process's three and whatever the helper finished
    monkeypatch.setattr(tb, "run_episode", real)
    cfg.episodes = saved + 6
    res = meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path,
                     name="r", progress=False)
    assert res.episodes_done == saved + 6
    with pytest.raises(ValueError, match="workers"):
        MetaTrainConfig(workers=0)


class SlowValidationQuadratic(TinyQuadratic):
    """A validation problem's loss takes 50 ms (only the main process validates)."""

    def sample(self, generator, split="train"):
        problem = super().sample(generator, split)
        if split == "val":
            fast = problem.loss

            def slow(ps, t):
                time.sleep(0.05)
                return fast(ps, t)

            problem.loss = slow
        return problem


def test_the_helpers_clock_counts_the_first_validation(tmp_path, monkeypatch):
    # The helpers were handed the elapsed time from before the first validation: their log's elapsed,
    # meta-lr and curriculum schedules lagged by it, and they began episodes past --minutes.
    import artopt.outer_trainers.truncated_bptt as tb

    handed = []
    real_init = tb._Helpers.__init__

    def init(self, task, nets, config, episode, elapsed_before, log_path):
        handed.append(elapsed_before)
        real_init(self, task, nets, config, episode, elapsed_before, log_path)

    monkeypatch.setattr(tb._Helpers, "__init__", init)
    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=3, val_every=1000, val_problems=2, workers=2)
    meta_train(SlowValidationQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path,
               name="r", progress=False)
    first_val = [e for e in _events(tmp_path / "r.log.jsonl") if e["event"] == "val"][0]
    assert len(handed) == 1 and handed[0] >= first_val["elapsed"] >= 1.0


_DIES_HOLDING_THE_LOCK = """
import inspect, multiprocessing, os, signal, sys
import torch
from torch import nn
from artopt.learned_optimizers import LSTMOptimizerNet
from artopt.outer_trainers import MetaTrainConfig, meta_train
from artopt.tasks.base import Problem


class DiesHoldingTheLock:
    # In a helper, after 2 episodes: takes the shared episode count's lock and is killed, as the
    # out-of-memory killer might kill it while it counts an episode
    name, steps, unroll = "tiny-quadratic", 8, 4

    def sample(self, generator, split="train"):
        if multiprocessing.current_process().name.startswith("meta-train helper"):
            for frame in inspect.stack():
                if frame.function == "_helper_main" and frame.frame.f_locals["episodes"].get_obj().value >= 2:
                    frame.frame.f_locals["episodes"].get_lock().acquire()
                    os.kill(os.getpid(), signal.SIGKILL)
        W, y, theta = (torch.randn(3, 3, generator=generator), torch.randn(3, generator=generator),
                       torch.randn(3, generator=generator))
        return Problem([theta], lambda ps, t: ((W @ ps[0] - y) ** 2).sum())


if __name__ == "__main__":
    cfg = MetaTrainConfig(steps=8, unroll=4, episodes=100000, val_every=1000, val_problems=1, max_minutes=2,
                          workers=2)
    try:
        meta_train(DiesHoldingTheLock(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=sys.argv[1],
                   name="r", progress=False)
    except RuntimeError as e:
        print("stopped:", e)
"""


def test_a_helper_killed_while_it_holds_the_shared_count_does_not_hang_the_run(tmp_path):
    # Before: the main process waited for the dead helper's lock for ever, deaf to Ctrl-C and SIGTERM
    import subprocess
    import sys

    script = tmp_path / "dies.py"
    script.write_text(_DIES_HOLDING_THE_LOCK)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "runs")], capture_output=True, text=True,
                          timeout=90, cwd=Path(__file__).resolve().parents[1])
    assert "stopped: meta-train helper 1 was killed by signal 9" in done.stdout, done.stdout + done.stderr[-2000:]


def test_a_second_ctrl_c_while_the_helpers_stop_still_saves_the_checkpoint(tmp_path, monkeypatch):
    import multiprocessing
    import os
    import signal

    import artopt.outer_trainers.truncated_bptt as tb

    real_stop = tb._Helpers.stop
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN when the tests run in the background
    _interrupt_training_episode(monkeypatch, 3)

    def impatient_stop(self, wait=False):  # the person presses Ctrl-C again while the helper ends its episode
        if not self.stopped:
            os.kill(os.getpid(), signal.SIGINT)
        return real_stop(self, wait)

    monkeypatch.setattr(tb._Helpers, "stop", impatient_stop)
    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=400, val_every=1000, val_problems=1, workers=2)
    with pytest.raises(KeyboardInterrupt):
        meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path,
                   name="r", progress=False)
    assert not multiprocessing.active_children()
    assert signal.getsignal(signal.SIGINT) is before  # put back
    # was lost: the second KeyboardInterrupt ended the handler before it saved
    saved = torch.load(tmp_path / "r.ckpt", weights_only=True)["episode"]
    assert saved >= 2 and _events(tmp_path / "r.log.jsonl")[-1]["event"] == "interrupted"


class FailsInHelpers(TinyQuadratic):
    """A task that cannot draw problems outside the process that made it."""

    def __init__(self):
        import os

        self.home = os.getpid()

    def sample(self, generator, split="train"):
        import os

        if os.getpid() != self.home:
            raise RuntimeError("no problems here")
        return super().sample(generator, split)


def test_a_helper_that_cannot_start_is_named_not_waited_for(tmp_path):
    import multiprocessing

    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=50, val_every=1000, val_problems=1, workers=2)
    with pytest.raises(RuntimeError, match="meta-train helper 1 did not start"):
        meta_train(FailsInHelpers(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path,
                   name="f", progress=False)
    assert not multiprocessing.active_children()


class SlowInHelpers(TinyQuadratic):
    """A task whose helpers take seconds to build what they cache, as neural-art's loss network."""

    def __init__(self):
        import os

        self.home = os.getpid()

    def sample(self, generator, split="train"):
        import os
        import time

        if os.getpid() != self.home:
            time.sleep(3)
        return super().sample(generator, split)


def test_an_interrupt_while_the_helpers_start_stops_them(tmp_path):
    # They were started but not yet in meta_train's hands: a caller that went on (a notebook) had a
    # helper training the networks in the background.
    import multiprocessing
    import os
    import signal
    import threading
    import time

    def interrupt_once_started():
        while not multiprocessing.active_children():
            time.sleep(0.01)
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)

    # (a background job inherits SIGINT ignored: Ctrl-C's KeyboardInterrupt, whatever ran the tests)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt_once_started, daemon=True).start()
        cfg = MetaTrainConfig(steps=10, unroll=5, episodes=400, val_every=1000, val_problems=1, workers=2)
        with pytest.raises(KeyboardInterrupt):
            meta_train(SlowInHelpers(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path,
                       name="s", progress=False)
    finally:
        signal.signal(signal.SIGINT, before)
    assert not multiprocessing.active_children()


def test_a_helper_killed_in_the_budgets_last_episodes_is_said(tmp_path, monkeypatch):
    # The run returned with fewer episodes than its budget, as if nothing had happened.
    import artopt.outer_trainers.truncated_bptt as tb

    real_stop = tb._Helpers.stop

    def killed_then_stopped(self, wait=False):
        if wait:
            self.terminate()  # as the out-of-memory killer would, during the last episodes
        return real_stop(self, wait)

    monkeypatch.setattr(tb._Helpers, "stop", killed_then_stopped)
    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=30, val_every=1000, val_problems=1, workers=2)
    with pytest.raises(RuntimeError, match="meta-train helper 1 was killed by signal 15"):
        meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path,
                   name="k", progress=False)


def test_the_first_validation_counts_in_the_time_budget(tmp_path):
    # It was left out of --minutes and of the card's wall time (the last validation was counted).
    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=1000, val_every=1000, val_problems=200, max_minutes=0.001)
    result = meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path,
                        name="b", progress=False)
    first_val = _events(tmp_path / "b.log.jsonl")[1]
    assert first_val["event"] == "val" and first_val["elapsed"] > 0.06  # 200 validation problems: the budget
    assert result.episodes_done == 0 and result.wall_time_s >= first_val["elapsed"]


def test_the_last_episodes_of_a_time_budget_are_validated(tmp_path):
    # Before, a --minutes budget ended without validating what it trained since the last validation:
    # with rare validations the run shipped its starting networks.
    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=1000, val_every=1000, val_problems=2, max_minutes=0.02)
    res = meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path,
                     name="t", progress=False)
    vals = [e["episode"] for e in _events(tmp_path / "t.log.jsonl") if e["event"] == "val"]
    assert 0 < res.episodes_done < 1000 and vals == [0, res.episodes_done]


def test_a_validation_due_when_the_run_stopped_comes_first_on_resume(tmp_path):
    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=2, val_every=2, val_problems=2)
    meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path, name="r",
               progress=False)
    ckpt = torch.load(tmp_path / "r.ckpt", weights_only=True)
    assert ckpt["last_validated"] == 2
    ckpt["last_validated"] = 0  # as if stopped while validating episode 2
    torch.save(ckpt, tmp_path / "r.ckpt")
    meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path, name="r",
               progress=False)
    events = _events(tmp_path / "r.log.jsonl")
    resumed = next(i for i, e in enumerate(events) if e["event"] == "resumed")
    assert [e["episode"] for e in events[resumed:] if e["event"] == "val"] == [2]
    assert [e["event"] for e in events[:1]] == ["start"]


def test_a_run_resumed_with_another_task_is_refused(tmp_path):
    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=2, val_every=2, val_problems=2)
    run = lambda task_settings: meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg,
                                           out_dir=tmp_path, name="r", progress=False, task_settings=task_settings)
    run({"size": 64})
    with pytest.raises(ValueError, match=r"other settings \(task\.size 64 -> 48\)") as refused:
        run({"size": 48})
    assert refused.value.changes == [(("task", "size"), 64, 48)]
    with pytest.raises(ValueError, match=r"other settings \(task\.mode unset -> 'multi'\)"):
        run({"size": 64, "mode": "multi"})
    run({"size": 64})  # the same task resumes


def test_shipping_the_same_networks_again_keeps_what_was_added_to_their_card(tmp_path):
    from artopt.outer_trainers import ship_best

    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=2, val_every=2, val_problems=2)
    res = meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path / "run",
                     name="r", progress=False, card={"task": "tiny"})
    dest = ship_best(tmp_path / "run", "r", tmp_path / "ship", res)
    card = json.loads(dest.with_suffix(".json").read_text())
    dest.with_suffix(".json").write_text(json.dumps({**card, "evaluation": [1, 2]}))
    ship_best(tmp_path / "run", "r", tmp_path / "ship", res)  # a finished run's command rerun
    assert json.loads(dest.with_suffix(".json").read_text())["evaluation"] == [1, 2]
    (tmp_path / "ship" / "r.safetensors").write_bytes(b"other networks")
    ship_best(tmp_path / "run", "r", tmp_path / "ship", res)  # new networks: the old evaluation is gone
    assert "evaluation" not in json.loads(dest.with_suffix(".json").read_text())


def test_an_unroll_longer_than_the_run_is_refused():
    with pytest.raises(ValueError, match="unroll must be at most steps"):
        MetaTrainConfig(steps=8, unroll=16)


def test_under_a_time_budget_the_progress_bar_shows_minutes_left_not_a_share_of_the_episode_cap(tmp_path, capsys):
    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=100000, val_every=1000, val_problems=1, max_minutes=0.01)
    meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path, name="b")
    err = capsys.readouterr().err
    assert "min_left=" in err and "/100000" not in err and "%" not in err


# ---- a task of one's own: the README's example, and the mistakes a user makes -------------------

def _readme_custom_task_example() -> str:
    """The indented code block of the README that meta-trains on a task of one's own."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## The learned optimizer in your own training loop", 1)[1].split("\n## ", 1)[0]
    blocks, current = [], []
    for line in section.splitlines() + [""]:
        if line.startswith("    ") or (current and not line.strip()):
            current.append(line[4:])
        else:
            if current:
                blocks.append("\n".join(current))
            current = []
    return next(b for b in blocks if "meta_train(" in b)


def test_the_readme_example_meta_trains_on_a_task_of_ones_own_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    code = _readme_custom_task_example()
    ns = {}
    exec(code, ns)
    vals = [e["val"] for e in map(json.loads, (tmp_path / "runs/lsq/lsq.log.jsonl").read_text().splitlines())
            if e["event"] == "val"]
    assert ns["result"].episodes_done == 30 and ns["result"].best_val < 0.7 * vals[0]  # it learned
    # What it learned optimizes the user's own model through LearnedOptimizer.
    model, opt = ns["model"], ns["opt"]
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    # Run again, the example resumes the finished run instead of starting over.
    best = (tmp_path / "runs/lsq/lsq.safetensors").read_bytes()
    ns2 = {}
    exec(code, ns2)
    assert ns2["result"].best_val == ns["result"].best_val and ns2["result"].episodes_done == 30
    assert (tmp_path / "runs/lsq/lsq.safetensors").read_bytes() == best


def test_a_resumed_run_ends_where_the_uninterrupted_one_does(tmp_path):
    """Checkpoints hold everything the run draws from: an interrupted run, resumed, ends bit for bit
    where the run that was never stopped does (schedules, jitter, coordinate subsets, EMA included)."""
    cfg = dict(steps=10, unroll=5, episodes=6, val_every=4, val_problems=2, meta_lr=3e-3, loss_scale_jitter=0.5,
               meta_fraction=0.67, meta_lr_schedule="cosine", unroll_schedule="grow", ema=0.5)

    def run(out, stop_after=None):
        def log(event):
            if event["event"] == "train" and event["episode"] == stop_after:
                raise KeyboardInterrupt
        for attempt in range(2):
            torch.manual_seed(0)
            nets = nn.ModuleDict({"default": LSTMOptimizerNet()})
            try:
                res = meta_train(TinyQuadratic(), nets, MetaTrainConfig(**cfg), out_dir=out, name="r",
                                 progress=False, log=log if attempt == 0 else None)
                return nets, res
            except KeyboardInterrupt:
                assert stop_after is not None and attempt == 0

    straight, (resumed, res) = run(tmp_path / "a"), run(tmp_path / "b", stop_after=3)
    assert res.episodes_done == 6 and res.best_val == straight[1].best_val
    assert all(torch.equal(a, b) for a, b in zip(straight[0].parameters(), resumed.parameters()))


def _least_squares(loss):
    A, b = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), torch.ones(8)
    return Problem([torch.zeros(4), torch.zeros(2)], lambda ps, t: loss(A, b, ps))


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")  # the float() case's own
@pytest.mark.parametrize("loss, message", [
    (lambda A, b, ps: (A @ ps[0] - b) ** 2 + ps[1].sum(), r"must be a scalar, got a tensor of shape \(8,\).*sum"),
    (lambda A, b, ps: float(((A @ ps[0] - b) ** 2).sum()), "returned float, not a tensor"),
    (lambda A, b, ps: ((A @ ps[0].detach() - b) ** 2).sum() + ps[1].detach().sum(), "does not depend on the params"),
    (lambda A, b, ps: (b ** 2).sum(), "does not depend on the params"),  # e.g. a model's own parameters
    (lambda A, b, ps: ((A @ ps[0] - b) ** 2).sum(), r"does not depend on params\[1\] \(of 2\)"),
])
def test_a_loss_closure_gone_wrong_is_named_not_an_autograd_error(loss, message):
    nets = nn.ModuleDict({"default": LSTMOptimizerNet()})
    with pytest.raises((ValueError, TypeError), match=message):
        run_episode(nets, _least_squares(loss), steps=3)


def test_a_problem_group_without_a_network_is_named():
    problem = Problem([torch.zeros(3)], lambda ps, t: (ps[0] ** 2).sum(), groups=["conv"])
    with pytest.raises(ValueError, match=r"groups \['conv'\] have no network; the networks are \['default'\]"):
        run_episode(nn.ModuleDict({"default": LSTMOptimizerNet()}), problem, steps=3)


class _NaNAtTheStart(TinyQuadratic):
    def sample(self, generator, split="train"):
        p = super().sample(generator, split)
        return Problem(p.params, lambda ps, t: torch.log(-p.loss(ps, t)))  # log of a negative number


class _GlobalRandomness(TinyQuadratic):
    def sample(self, generator, split="train"):
        W, y = torch.randn(3, 3), torch.randn(3)  # torch's global generator, not the one given
        return Problem([torch.zeros(3)], lambda ps, t: ((W @ ps[0] - y) ** 2).sum())


@pytest.mark.parametrize("task, message", [
    (_NaNAtTheStart(), r"validation problem 0: the loss at its starting point θ₀ is not finite \(loss nan\)"),
    (_GlobalRandomness(), "task.sample drew two different problems from generators in the same state"),
])
def test_meta_training_refuses_a_task_it_could_not_learn_from_or_validate_on(tmp_path, task, message):
    # Before: the NaN run "finished" with best_val inf and untrained networks; the other trained on,
    # its validation problems different on every (re)start.
    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=2, val_problems=2)
    with pytest.raises(ValueError, match=message):
        meta_train(task, nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path, progress=False)
    assert not (tmp_path / "optimizer.ckpt").exists()


def test_meta_train_takes_one_network_or_a_plain_dict_and_trains_it_in_place(tmp_path):
    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=2, val_every=2, val_problems=2)
    for i, make in enumerate([lambda net: net, lambda net: {"default": net}]):
        torch.manual_seed(0)
        net = LSTMOptimizerNet()
        before = [p.clone() for p in net.parameters()]
        meta_train(TinyQuadratic(), make(net), cfg, out_dir=tmp_path / str(i), progress=False)
        assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
        assert set(load_learned(tmp_path / str(i) / "optimizer.safetensors")) == {"default"}
    with pytest.raises(TypeError, match="nets must map parameter groups to networks"):
        meta_train(TinyQuadratic(), [LSTMOptimizerNet()], cfg, out_dir=tmp_path / "x", progress=False)


def test_validation_scores_count_a_diverged_run_as_infinitely_bad():
    from artopt.outer_trainers.truncated_bptt import final_score

    assert trajectory_score([1.0, 2.0, 6.0]) == 3.0
    assert trajectory_score([1.0, float("nan"), 0.5]) == float("inf")  # not the mean of the finite ones
    losses = [10.0] * 38 + [2.0, 4.0]  # 40 losses: the last 5% are 2
    assert final_score(losses) == 3.0
    assert final_score([5.0, 1.0]) == 1.0  # at least one
    assert final_score(losses[:-1] + [float("nan")]) == float("inf")  # NaN is no score


def test_run_episode_clips_skips_non_finite_meta_gradients_and_stops_a_diverged_episode():
    torch.manual_seed(0)
    nets = nn.ModuleDict({"default": LSTMOptimizerNet()})
    problem = TinyQuadratic().sample(torch.Generator().manual_seed(4))
    norms = {}
    for clip in (1e-3, 1e12):
        rec = Recorder(nets.parameters())
        run_episode(nets, problem, 4, unroll=2, meta_opt=rec, grad_clip=clip)
        assert len(rec.seen) == 2
        norms[clip] = [float(torch.cat([g.flatten() for g in seen]).norm()) for seen in rec.seen]
    assert all(n <= 1e-3 * (1 + 1e-4) for n in norms[1e-3])
    assert all(n > 1e-2 for n in norms[1e12])
    # From step 1 on the loss is NaN: no meta-update from a NaN meta-gradient, and the episode ends
    # after the unroll that diverged instead of running its 6 steps.
    W, y = torch.randn(3, 3), torch.randn(3)
    poisoned = Problem([torch.randn(3)], lambda ps, t: ((W @ ps[0] - y) ** 2).sum() * (1.0 if t == 0 else float("nan")))
    rec = Recorder(nets.parameters())
    losses = run_episode(nets, poisoned, 6, unroll=2, meta_opt=rec)
    assert rec.seen == [] and len(losses) == 3 and math.isfinite(losses[0]) and math.isnan(losses[-1])


# ---- resuming, naming and shipping as users run them ----------------------------------------------

def _tiny_run(out, name="r", **overrides):
    cfg = MetaTrainConfig(**{**dict(steps=10, unroll=5, episodes=2, val_every=2, val_problems=2), **overrides})
    return meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=out, name=name,
                      progress=False)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's, on the plain pickle
def test_a_file_that_is_not_a_checkpoint_is_called_so_not_an_unsafe_one(tmp_path):
    # Before: garbage bytes quoted torch's "Weights only load failed. In PyTorch 2.6, we changed the default
    # value of weights_only ...", as if the file were unsafe rather than damaged.
    import io
    import pickle
    import zipfile

    from artopt.outer_trainers.checkpoints import ResumeError

    _tiny_run(tmp_path)
    ckpt = tmp_path / "r.ckpt"
    good = ckpt.read_bytes()
    other_zip = io.BytesIO()
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("notes.txt", "hello")
    # (cut in the middle of the zip, torch.load raises OSError(EINVAL), which was read as "the file may be fine")
    cuts = [good[:len(good) * k // 8] for k in range(1, 8)]
    for damaged in (good[:1000], good[:-10], *cuts, b"", b"garbage\n", b'{"a": 1}', pickle.dumps({"a": 1}),
                    other_zip.getvalue()):
        ckpt.write_bytes(damaged)
        with pytest.raises(ResumeError) as exc:
            _tiny_run(tmp_path)
        message = str(exc.value)
        assert "r.ckpt cannot be resumed: it is not a readable checkpoint (damaged, truncated or another kind " \
               "of file); delete it to start the run over, or choose another --name" in message, damaged[:20]
        assert "\n" not in message and "weights_only" not in message and "PyTorch" not in message
    # A real torch file holding objects a weights-only load refuses: that refusal is the reason.
    torch.save({"nets": json.JSONDecoder}, ckpt)
    with pytest.raises(ResumeError, match=r"cannot be resumed \(UnpicklingError: .*Unsupported global: GLOBAL "
                                          r"json.decoder.JSONDecoder\); delete it") as exc:
        _tiny_run(tmp_path)
    assert "\n" not in str(exc.value) and "\x1b" not in str(exc.value)


def test_resume_refusals_have_their_own_error_class(tmp_path):
    # The scripts turn these (and only these) into one-line errors; a ValueError still, for callers before.
    from artopt.outer_trainers.checkpoints import ResumeError

    assert issubclass(ResumeError, ValueError)
    _tiny_run(tmp_path)
    with pytest.raises(ResumeError, match="other settings .*steps 10 -> 12"):
        _tiny_run(tmp_path, steps=12)
    (tmp_path / "r.ckpt").write_bytes(b"garbage")
    with pytest.raises(ResumeError, match="cannot be resumed"):
        _tiny_run(tmp_path)


def test_a_run_interrupted_while_validating_validates_again_on_resume(tmp_path, monkeypatch):
    # Before: Ctrl-C during the last validation checkpointed it as done, so the resumed run ended without
    # validating (or keeping) what it trained since the one before.
    import artopt.outer_trainers.truncated_bptt as tb

    real, validations = tb.run_episode, []

    def interrupted_in_the_second_validation(nets, problem, steps, *args, **kwargs):
        if not args:  # a validation episode
            validations.append(1)
            if len(validations) == 3:  # episode 0's two problems, then the first of episode 2's
                raise KeyboardInterrupt
        return real(nets, problem, steps, *args, **kwargs)

    monkeypatch.setattr(tb, "run_episode", interrupted_in_the_second_validation)
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(tmp_path)
    monkeypatch.setattr(tb, "run_episode", real)
    _tiny_run(tmp_path)
    events = _events(tmp_path / "r.log.jsonl")
    resumed = next(i for i, e in enumerate(events) if e["event"] == "resumed")
    assert [e["episode"] for e in events[resumed:] if e["event"] == "val"] == [2]


def test_ctrl_c_in_the_first_validation_says_the_run_starts_over(tmp_path, monkeypatch, capsys):
    # Before: exit code 130 and not a word (no checkpoint exists yet, so nothing says what happened)
    import artopt.outer_trainers.truncated_bptt as tb

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tb, "run_episode", interrupted)
    cfg = MetaTrainConfig(steps=10, unroll=5, episodes=2, val_every=2, val_problems=2)
    with pytest.raises(KeyboardInterrupt):
        meta_train(TinyQuadratic(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path, name="r",
                   progress=True)
    assert capsys.readouterr().err.strip().endswith("interrupted during the first validation, before r.ckpt was "
                                                    "written: the same command starts the run over")
    assert not (tmp_path / "r.ckpt").exists()


class _Diverges(TinyQuadratic):
    """Every step of the learned optimizer overflows: each validation scores inf."""

    def sample(self, generator, split="train"):
        p = super().sample(generator, split)
        return Problem(p.params, lambda ps, t: p.loss(ps, t) * (1.0 if t == 0 else float("inf")))


def test_a_run_that_never_validated_finitely_writes_strict_json_and_is_not_shipped(tmp_path):
    # Before: the card held the literal Infinity (not JSON), and ship_best copied the untrained networks
    # over whatever weights/ held.
    from artopt.outer_trainers import ship_best

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    cfg = MetaTrainConfig(steps=4, unroll=2, episodes=2, val_every=1, val_problems=1)
    res = meta_train(_Diverges(), nn.ModuleDict({"default": LSTMOptimizerNet()}), cfg, out_dir=tmp_path / "run",
                     name="d", progress=False)
    assert res.best_val == float("inf")
    card = json.loads((tmp_path / "run" / "d.json").read_text(), parse_constant=refuse)
    assert card["meta_training"]["best_val_trajectory_loss"] is None
    for line in (tmp_path / "run" / "d.log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=refuse)
    with pytest.raises(ValueError, match=r"not shipped: no validation of this run scored a finite loss.*"
                                         r"run[/\\]d.safetensors"):
        ship_best(tmp_path / "run", "d", tmp_path / "ship", res)
    assert not (tmp_path / "ship").exists()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../up"])
def test_a_run_name_that_is_not_a_plain_file_name_is_refused(tmp_path, name):
    # Before: "a/b" failed mid-run with a FileNotFoundError; "" and "." wrote hidden files (".ckpt",
    # "..ckpt") into the folder, ".." into its parent.
    with pytest.raises(ValueError, match="name must be a plain file name"):
        _tiny_run(tmp_path / "out", name=name)
    assert not (tmp_path / "out").exists()


def test_run_episode_meta_gradient_is_the_first_order_one():
    """run_episode's φ-gradient equals that of Σ_t f(θ_t) with ∇f entering the LSTM as a constant
    (second derivatives dropped, as in the paper), not one through ∇f's own dependence on θ."""
    torch.manual_seed(0)
    nets = nn.ModuleDict({"default": LSTMOptimizerNet()})
    W, y, theta0 = torch.randn(3, 3), torch.randn(3), torch.randn(3)
    problem = Problem([theta0], lambda ps, t: ((W @ ps[0] - y) ** 2).sum())
    seen = {}

    class Capture(torch.optim.SGD):  # records φ's gradient, changes nothing
        def step(self, closure=None):
            seen["grads"] = [p.grad.clone() for p in nets.parameters()]

    run_episode(nets, problem, steps=4, unroll=4, meta_opt=Capture(nets.parameters(), lr=0.0), grad_clip=1e9)
    nets.zero_grad()
    params, states, total = [theta0.clone()], {}, 0.0
    for t in range(4):
        leaf = params[0].detach().requires_grad_(True)
        g = torch.autograd.grad(problem.loss([leaf], t), leaf)[0]
        params, states = learned_update(nets, params, [g], problem.groups, states)
        total = total + problem.loss(params, t + 1)
    total.backward()
    for got, p in zip(seen["grads"], nets.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-7)


def test_a_helper_whose_main_process_died_during_an_episode_logs_nothing(tmp_path, monkeypatch):
    """A helper finishing an episode after its main process was killed wrote the episode into the
    log, which a run restarted since appends to."""
    import multiprocessing

    from artopt.outer_trainers import truncated_bptt as tb

    ctx = multiprocessing.get_context("spawn")  # (only its shared values; nothing is started)
    episodes, claimed = ctx.Value("i", 0), ctx.Value("i", 0)
    stop, ready = ctx.Event(), ctx.Semaphore(0)
    parent = {"pid": os.getppid()}
    monkeypatch.setattr(tb.signal, "signal", lambda *a: None)  # (this is pytest's process, not a helper)
    monkeypatch.setattr(tb.os, "getppid", lambda: parent["pid"])
    monkeypatch.setattr(tb, "sample_problems", lambda *a, **k: None)
    trained = []

    def episode(*args):
        trained.append(1)
        if len(trained) == 2:  # the main process is killed during the second episode
            parent["pid"] = 1
        return [2.0, 1.0]

    monkeypatch.setattr(tb, "_training_episode", episode)
    log = tmp_path / "run.log.jsonl"
    nets = nn.ModuleDict({"default": LSTMOptimizerNet()})
    config = MetaTrainConfig(episodes=5)
    tb._helper_main(1, None, nets, config, 0.0, episodes, claimed, stop, ready, str(log), 1, os.getppid())
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(trained) == 2 and [e["episode"] for e in lines] == [1] and episodes.value == 1
