"""The multi-scale image basis: shapes, the adjoint, and the optimizer and problem forms agreeing."""

from __future__ import annotations

import copy as copy_module
import warnings

import pytest
import torch

from artopt.evaluation import baseline_factory, lstm_factory, run_optimizer
from artopt.learned_optimizers import LearnedOptimizer, load_learned
from artopt.learned_optimizers.multiscale import (LevelSplit, MultiscaleOptimizer, adjoint, auto_levels, level_shapes,
                                                  level_sizes, multiscale_problem, synthesize)
from artopt.learned_optimizers.shipped import NEURAL_ART, weights_path
from artopt.tasks.base import Problem


def _nets():
    # A trained network: a random one barely reacts to its gradients, which would hide differences.
    return load_learned(weights_path(NEURAL_ART))


def _problem(shape=(1, 3, 20, 13), seed=0) -> Problem:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g)
    weights = torch.rand(shape, generator=g) + 0.5

    def loss(params, t):
        return (weights * (params[0] - target) ** 2).mean() + 1e-3 * params[0].sin().sum()

    return Problem([torch.rand(shape, generator=g)], loss, project=lambda ps: [ps[0].clamp(0, 1)])


def test_levels_halve_down_to_the_coarsest_size():
    assert auto_levels(64, 64) == 4  # 64, 32, 16, 8
    assert auto_levels(63, 100) == 3
    assert auto_levels(341, 512) == 6
    assert auto_levels(5, 5) == 1
    assert level_shapes((2, 3, 20, 13), 3) == [(2, 3, 20, 13), (2, 3, 10, 7), (2, 3, 5, 4)]
    with pytest.raises(ValueError):
        level_shapes((1, 3, 8, 8), 0)


def test_the_finest_level_is_the_image_and_coarse_levels_are_smooth():
    z = [torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 4, 4)]
    assert torch.allclose(synthesize(z, (8, 8)), torch.ones(1, 1, 8, 8))
    fine = torch.randn(1, 1, 8, 8)
    assert torch.equal(synthesize([fine], (8, 8)), fine)
    # One coarse coefficient is a smooth (bilinear, half-pixel centred) bump, not a hard 2x2 block as
    # nearest-neighbour upsampling would make: along each axis it spreads as 1/4, 3/4, 3/4, 1/4.
    delta = torch.zeros(1, 1, 4, 4)
    delta[0, 0, 1, 1] = 1.0
    profile = torch.tensor([0.0, 0.25, 0.75, 0.75, 0.25, 0.0, 0.0, 0.0])
    torch.testing.assert_close(synthesize([torch.zeros(1, 1, 8, 8), delta], (8, 8))[0, 0], torch.outer(profile, profile))


def test_adjoint_is_the_transpose_of_synthesis():
    g = torch.Generator().manual_seed(1)
    shapes = level_shapes((1, 3, 11, 17), 3)
    zs = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    y = torch.randn(1, 3, 11, 17, generator=g, dtype=torch.float64)
    lhs = (synthesize(zs, (11, 17)) * y).sum()
    rhs = sum((z * a).sum() for z, a in zip(zs, adjoint(y, shapes)))
    assert torch.allclose(lhs, rhs)


def test_optimizer_and_problem_forms_follow_the_same_path():
    """MultiscaleOptimizer (inference) and multiscale_problem (meta-training) are one algorithm."""
    nets = _nets()
    problem = _problem()
    a = run_optimizer(problem, lambda ps, gs: MultiscaleOptimizer(ps, lambda zs: LearnedOptimizer(zs, nets=nets),
                                                                  levels=3), 15)
    b = run_optimizer(multiscale_problem(problem, 3), lstm_factory(nets=nets), 15)
    assert torch.allclose(a.curve, b.curve, rtol=1e-5, atol=1e-7)
    assert a.curve[-1] < a.curve[0]
    # the projection keeps the image in [0, 1] while the coefficients themselves are unconstrained
    assert a.params[0].min() >= 0 and a.params[0].max() <= 1


def test_level_inputs_follow_the_same_path_in_both_forms():
    """A network with level inputs sees each coefficient's level in the optimizer form (one flat tensor
    per image, declared through set_basis_levels) as in the problem form (one parameter per level)."""
    from artopt.learned_optimizers import LSTMOptimizerNet

    torch.manual_seed(0)
    net = LSTMOptimizerNet(moment_inputs=True, level_inputs=True)
    with torch.no_grad():  # a fresh network's level weights are small; make the level count
        net.lstm.weight_ih_l0[:, 4:] *= 20
    nets = {"default": net}
    problem = _problem()
    a = run_optimizer(problem, lambda ps, gs: MultiscaleOptimizer(ps, lambda zs: LearnedOptimizer(zs, nets=nets),
                                                                  levels=3), 10)
    ms = multiscale_problem(problem, 3)
    assert ms.levels == [0, 1, 2]
    b = run_optimizer(ms, lstm_factory(nets=nets, basis="pixels"), 10)
    assert not torch.allclose(a.curve, b.curve)  # per-level parameters, each undeclared: all level 0
    from artopt.outer_trainers.truncated_bptt import run_episode
    with torch.no_grad():
        c = run_episode(nets, ms, 10)
    torch.testing.assert_close(torch.tensor(c, dtype=a.curve.dtype), a.curve, rtol=1e-5, atol=1e-7)


def test_set_basis_levels_checks_its_parameter_and_sizes_and_outlives_a_state_load():
    p, q = torch.zeros(10, requires_grad=True), torch.zeros(3, requires_grad=True)
    opt = LearnedOptimizer([p], nets=_nets())
    with pytest.raises(ValueError, match="not optimized"):
        opt.set_basis_levels(q, [3])
    with pytest.raises(ValueError, match="add up"):
        opt.set_basis_levels(p, [8, 1])
    opt.set_basis_levels(p, [8, 2])
    assert opt.state[p]["level_sizes"] == [8, 2]
    saved = opt.state_dict()
    assert saved["state"][0]["level_sizes"] == [8, 2]
    # a state saved without levels (an older file) keeps the levels declared here
    plain = LearnedOptimizer([torch.zeros(10, requires_grad=True)], nets=_nets()).state_dict()
    opt.load_state_dict(plain)
    assert opt.state[p]["level_sizes"] == [8, 2]


def test_stacked_problems_keep_each_parameters_level():
    from artopt.tasks.base import stack_problems

    ms = multiscale_problem(_problem(), 3)
    stacked = stack_problems([ms, _problem(seed=1), ms])
    assert stacked.levels == [0, 1, 2, 0, 0, 1, 2]
    assert stack_problems([_problem(), _problem(seed=1)]).levels is None
    with pytest.raises(ValueError, match="one basis level per parameter"):
        Problem([torch.zeros(3)], lambda ps, t: ps[0].sum(), levels=[0, 1])


def test_inner_optimizer_sees_one_flat_tensor_per_image():
    """The levels are views of one tensor, so the LSTM state is never concatenated or split per level."""
    images = [torch.rand(1, 3, 20, 13, requires_grad=True), torch.rand(1, 3, 9, 9, requires_grad=True)]
    opt = MultiscaleOptimizer(images, lambda zs: torch.optim.SGD(zs, lr=0.1), levels=2)
    assert [p.shape for p in opt.inner.param_groups[0]["params"]] == [(3 * 20 * 13 + 3 * 10 * 7,), (3 * 81 + 3 * 25,)]
    for flat, zs in zip(opt.flat, opt.coefficients):
        assert [tuple(z.shape) for z in zs] == level_shapes(zs[0].shape, 2)
        assert zs[0].data_ptr() == flat.data_ptr() and zs[1].data_ptr() == flat.data_ptr() + 4 * zs[0].numel()
    for x in images:
        x.grad = torch.ones_like(x)
    before = [x.detach().clone() for x in images]
    opt.step()
    for x, b, zs in zip(images, before, opt.coefficients):
        # one SGD step on z moves x by -0.1 Σ_k up(upᵀ 1): the coarse levels' update shows in x
        torch.testing.assert_close(x.detach() - b, synthesize([z.detach() for z in zs], tuple(x.shape[-2:])))
        assert zs[1].abs().min() > 0


def test_multiscale_differs_from_pixels_and_lstm_factory_selects_it():
    nets = _nets()
    problem = _problem((1, 3, 32, 24))  # 2 levels
    pixels = run_optimizer(problem, lstm_factory(nets=nets), 10).curve
    multi = run_optimizer(problem, lstm_factory(nets=nets, basis="multiscale"), 10).curve
    assert not torch.allclose(pixels, multi)
    opt = lstm_factory(nets=nets, basis="multiscale")(problem.fresh_params(), problem.groups)
    assert isinstance(opt, MultiscaleOptimizer) and opt.coordinates == 3 * (32 * 24 + 16 * 12)
    with pytest.raises(ValueError, match="basis"):
        lstm_factory(nets=nets, basis="wavelets")


def test_a_baseline_runs_in_the_basis_as_the_lstm_does():
    """baseline_factory(basis="multiscale"): SGD on the coefficients moves the image by -lr·B Bᵀ∇f,
    which is not the pixel step; L-BFGS is refused there."""
    problem = _problem((1, 3, 32, 24))  # 2 levels
    params = problem.fresh_params()
    opt = baseline_factory("sgd", 0.1, basis="multiscale")(params, problem.groups)
    assert isinstance(opt, MultiscaleOptimizer) and opt.coordinates == 3 * (32 * 24 + 16 * 12)
    x0 = params[0].detach().clone()
    params[0].requires_grad_(True)
    problem.loss(params, 0).backward()
    grad = params[0].grad.clone()
    opt.step()
    shapes = level_shapes(x0.shape, 2)
    expected = x0 - 0.1 * synthesize(adjoint(grad, shapes), tuple(x0.shape[-2:]))
    torch.testing.assert_close(params[0].detach(), expected)
    assert not torch.allclose(params[0].detach(), x0 - 0.1 * grad, atol=1e-4)
    with pytest.raises(ValueError, match="lbfgs"):
        baseline_factory("lbfgs", 1.0, basis="multiscale")
    with pytest.raises(ValueError, match="basis"):
        baseline_factory("adam", 0.01, basis="wavelets")


def test_non_finite_updates_are_guarded_and_reported():
    nets = _nets()
    image = torch.full((1, 3, 16, 16), 0.5, requires_grad=True)
    opt = MultiscaleOptimizer([image], lambda zs: LearnedOptimizer(zs, nets=nets))
    image.grad = torch.ones_like(image)
    image.grad[0, 0, 3, 3] = float("nan")
    opt.step()
    assert torch.isfinite(image).all()
    assert opt.fallback_count > 0 and "non-finite" in opt.last_notice
    image.grad = torch.ones_like(image)
    opt.step()
    assert opt.last_notice is None


def test_problem_form_starts_at_the_image_and_keeps_groups_and_count():
    problem = _problem((2, 3, 16, 16))
    problem.count = 2
    mp = multiscale_problem(problem)  # 16 px: 2 levels
    assert [tuple(p.shape) for p in mp.params] == [(2, 3, 16, 16), (2, 3, 8, 8)]
    assert all(float(p.abs().sum()) == 0 for p in mp.params)
    assert mp.groups == ["default", "default"] and mp.count == 2 and mp.info["levels"] == [2]
    assert torch.allclose(mp.loss(mp.params, 0), problem.loss(problem.params, 0))


@pytest.mark.parametrize("shape, levels", [((1, 1, 1, 1), 3), ((1, 1, 1, 7), 4), ((7, 1), 2), ((3, 5), 6),
                                           ((2, 3, 17, 9), 3), ((1, 2, 2, 3), 5)])
def test_adjoint_is_exact_for_odd_sides_1_pixel_sides_and_more_levels_than_the_image_has(shape, levels):
    g = torch.Generator().manual_seed(2)
    shapes = level_shapes(shape, levels)
    assert all(min(s[-2:]) >= 1 for s in shapes)  # levels past 1 px stay 1 px
    zs = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    y = torch.randn(shape, generator=g, dtype=torch.float64)
    adj = adjoint(y, shapes)
    assert [tuple(a.shape) for a in adj] == [tuple(s) for s in shapes]
    lhs = (synthesize(zs, shape[-2:]) * y).sum()
    torch.testing.assert_close(lhs, sum((z * a).sum() for z, a in zip(zs, adj)), rtol=1e-12, atol=1e-12)


def _steps_alike(opt, image, make, saved):
    """A fresh optimizer (``make``) of a copy of ``image`` loaded with ``saved`` takes the same next step as
    ``opt``; returns it."""
    copy = image.detach().clone().requires_grad_(True)
    reloaded = make(copy)
    reloaded.load_state_dict(saved)
    grad = torch.randn_like(image)
    image.grad, copy.grad = grad.clone(), grad.clone()
    opt.step()
    reloaded.step()
    assert torch.equal(image, copy)
    return reloaded


def test_state_dict_carries_the_inner_optimizers_state():
    """The state dict held the outer optimizer's state only (empty): a reloaded run restarted the
    LSTM from zero state and took another step than the run it was saved from."""
    nets = _nets()
    torch.manual_seed(0)
    image = torch.rand(1, 3, 16, 16, requires_grad=True)

    def make(x):
        return MultiscaleOptimizer([x], lambda zs: LearnedOptimizer(zs, nets=nets), levels=2)

    opt = make(image)
    for _ in range(3):
        image.grad = torch.randn_like(image)
        opt.step()
    saved = opt.state_dict()
    reloaded = _steps_alike(opt, image, make, saved)
    with pytest.raises(ValueError, match="inner"):
        reloaded.load_state_dict({k: v for k, v in saved.items() if k != "inner"})
    # a plain torch inner optimizer round-trips too
    sgd = MultiscaleOptimizer([torch.rand(4, 4, requires_grad=True)], lambda zs: torch.optim.SGD(zs, lr=0.1, momentum=0.9))
    sgd.images[0].grad = torch.ones(4, 4)
    sgd.step()
    other = MultiscaleOptimizer([torch.rand(4, 4, requires_grad=True)], lambda zs: torch.optim.SGD(zs, lr=0.1, momentum=0.9))
    other.load_state_dict(sgd.state_dict())
    assert torch.equal(other.inner.state[other.flat[0]]["momentum_buffer"], sgd.inner.state[sgd.flat[0]]["momentum_buffer"])


def test_an_image_without_a_gradient_leaves_its_coefficients_state_alone():
    """Without a zero_grad, an image whose gradient was set to None kept its coefficients' old gradient,
    and the inner optimizer stepped on it (the LSTM state moved while the image did not)."""
    nets = _nets()
    a, b = torch.rand(1, 1, 8, 8, requires_grad=True), torch.rand(1, 1, 8, 8, requires_grad=True)
    opt = MultiscaleOptimizer([a, b], lambda zs: LearnedOptimizer(zs, nets=nets), levels=2)
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    opt.step()
    h = opt.inner.state[opt.flat[1]]["h"].clone()
    b_before = b.detach().clone()
    b.grad = None
    opt.step()
    assert torch.equal(opt.inner.state[opt.flat[1]]["h"], h) and torch.equal(b, b_before)


def test_bad_coarsest_and_late_images_are_refused():
    image = torch.rand(1, 3, 16, 16, requires_grad=True)
    for coarsest in (0, -1, float("inf")):
        with pytest.raises(ValueError, match="coarsest"):
            MultiscaleOptimizer([image], lambda zs: torch.optim.SGD(zs, lr=0.1), coarsest=coarsest)
    assert auto_levels(16, 16, 8.0) == auto_levels(16, 16, 8) == 2
    opt = MultiscaleOptimizer([image], lambda zs: torch.optim.SGD(zs, lr=0.1))
    with pytest.raises(NotImplementedError, match="images"):  # it would get no coefficients and never move
        opt.add_param_group({"params": [torch.rand(1, 3, 8, 8, requires_grad=True)]})


def test_what_the_wrapper_cannot_honour_is_refused():
    image = torch.rand(1, 3, 16, 16, requires_grad=True)
    sgd = lambda zs: torch.optim.SGD(zs, lr=0.1)
    cases = [(dict(params=[image, image], inner=sgd), "listed more than once"),  # was two steps
             # an lr on the wrapper's groups was silently ignored: the inner optimizer steps
             (dict(params=[{"params": [image], "lr": 1e-6}], inner=sgd), "give lr to the inner optimizer"),
             (dict(params=[image], inner=lambda zs: torch.optim.LBFGS(zs)), "L-BFGS cannot run"),
             (dict(params=[image], inner=sgd, levels=2.5), "levels must be a whole number"),
             (dict(params=[image], inner=sgd, levels=True), "levels must be a whole number")]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's own, on the duplicate
            MultiscaleOptimizer(**kwargs)
    assert len(MultiscaleOptimizer([image], sgd, levels=torch.tensor(2).item()).coefficients[0]) == 2


def test_problem_form_keeps_the_coefficients_on_the_images_device():
    """The coefficients were made on the CPU whatever the image's device (a CUDA problem failed)."""
    image = torch.zeros(1, 3, 16, 16, device="meta")
    mp = multiscale_problem(Problem([image], lambda ps, t: ps[0].sum()), 2)
    assert [p.device for p in mp.params] == [image.device] * 2


def test_a_scheduler_on_the_inner_optimizer_sets_the_step():
    """The documented way to schedule the rate: the scheduler drives ``opt.inner``."""
    def run(gamma):
        image = torch.zeros(1, 1, 8, 8, requires_grad=True)
        opt = MultiscaleOptimizer([image], lambda zs: torch.optim.SGD(zs, lr=0.1), levels=2)
        schedule = torch.optim.lr_scheduler.StepLR(opt.inner, step_size=1, gamma=gamma)
        moves = []
        for _ in range(2):
            before = image.detach().clone()
            image.grad = torch.ones_like(image)
            opt.step()
            schedule.step()
            moves.append(float((image.detach() - before).abs().max()))
        return moves

    constant, halved = run(1.0), run(0.5)
    assert constant[0] == halved[0] > 0 and halved[1] == pytest.approx(constant[1] / 2)


def test_a_deep_copy_steps_as_the_original_and_on_its_own_image():
    import copy
    nets = _nets()
    image = torch.full((1, 3, 16, 16), 0.5, requires_grad=True)
    opt = MultiscaleOptimizer([image], lambda zs: LearnedOptimizer(zs, nets=nets))
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(image.shape, generator=g) for _ in range(3)]
    image.grad = grads[0].clone()
    opt.step()
    image2, opt2 = copy.deepcopy((image, opt))
    before = image.detach().clone()
    for gr in grads[1:]:
        image2.grad = gr.clone()
        opt2.step()
    assert torch.equal(image.detach(), before) and not torch.equal(image2.detach(), before)
    for gr in grads[1:]:
        image.grad = gr.clone()
        opt.step()
    assert torch.equal(image.detach(), image2.detach())


def test_problem_form_gives_each_image_its_own_levels():
    """With several images, each image's coefficients must synthesize that image alone: the gradient of
    every level is upᵀ of its own image's pixel gradient (a shifted bound between images mixed them up)."""
    g = torch.Generator().manual_seed(3)
    xs = [torch.rand(1, 3, 12, 10, generator=g), torch.rand(1, 3, 7, 9, generator=g)]
    ws = [torch.randn(x.shape, generator=g) for x in xs]
    mp = multiscale_problem(Problem(xs, lambda ps, t: sum((w * p).sum() for w, p in zip(ws, ps))), 3)
    assert mp.info["levels"] == [3, 3] and mp.levels == [0, 1, 2, 0, 1, 2]
    zs = [p.clone().requires_grad_(True) for p in mp.params]
    got = torch.autograd.grad(mp.loss(zs, 0), zs)
    want = adjoint(ws[0], level_shapes(xs[0].shape, 3)) + adjoint(ws[1], level_shapes(xs[1].shape, 3))
    assert [tuple(a.shape) for a in got] == [tuple(b.shape) for b in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def _learned_ms(shape, levels=None):
    image = torch.rand(shape, requires_grad=True)
    opt = MultiscaleOptimizer([image], lambda ps: LearnedOptimizer(ps, nets=_nets(), state_dtype=torch.int8),
                              levels=levels)
    return image, opt


def test_carried_state_moves_each_level_up_one_and_the_new_finest_starts_fresh():
    """A coarse-to-fine run's next scale: level k of the half-size image covers what level k + 1 does
    here, so its h and c move there (exactly where the shapes agree, nearest where rounding made them
    differ by a pixel); the new finest level gets zeros, and the moments restart from the next gradient."""
    coarse, old = _learned_ms((1, 3, 8, 12), levels=3)
    coarse.grad = torch.randn_like(coarse)
    old.step()
    before = old.inner.state[old.flat[0]]
    fine, new = _learned_ms((1, 3, 16, 24), levels=4)
    assert new.carry_state_from(old) == old.flat[0].numel()
    after = new.inner.state[new.flat[0]]
    finest = new.coefficients[0][0].numel()
    assert after["h"].dtype == torch.int8 and after["h"].shape == (2, new.flat[0].numel(), 20)
    assert not after["h"][:, :finest].any() and not after["c"][:, :finest].any()
    assert torch.equal(after["h"][:, finest:], before["h"]) and torch.equal(after["c"][:, finest:], before["c"])
    assert "m" not in after
    fine.grad = torch.randn_like(fine)
    new.step()  # and it steps from there
    assert torch.isfinite(fine).all() and "m" in after
    # at 17 rows level 1 has 9 rows for the coarse finest level's 8: filled from the nearest rows
    _, odd = _learned_ms((1, 3, 17, 24), levels=4)
    odd.carry_state_from(old)
    h = odd.inner.state[odd.flat[0]]["h"]
    n0, n1 = (z.numel() for z in odd.coefficients[0][:2])
    level1 = h[:, n0:n0 + n1].reshape(2, 3, 9, 12, 20)
    source = before["h"][:, :old.coefficients[0][0].numel()].reshape(2, 3, 8, 12, 20)
    rows = [int(y * 8 / 9) for y in range(9)]  # nearest: floor(y * 8 / 9)
    assert torch.equal(level1, source[:, :, rows])


def test_nothing_is_carried_from_an_optimizer_without_learned_state():
    image, new = _learned_ms((1, 3, 16, 24), levels=4)
    _, old = _learned_ms((1, 3, 8, 12), levels=3)
    assert new.carry_state_from(old) == 0 and "h" not in new.inner.state[new.flat[0]]
    adam = MultiscaleOptimizer([torch.rand(1, 3, 8, 12, requires_grad=True)], lambda ps: torch.optim.Adam(ps))
    assert new.carry_state_from(adam) == 0


def _split(x, levels, finest, rest, basis_levels=3):
    return MultiscaleOptimizer([x], lambda flats: LevelSplit(flats, [level_sizes(x.shape, basis_levels)], levels,
                                                             finest, rest), levels=basis_levels)


@pytest.mark.parametrize("levels", [1, 2])
def test_a_level_split_steps_the_finest_levels_and_the_rest_with_their_own_optimizers(levels):
    # With two plain SGDs of different rates the image must move by exactly their two updates.
    torch.manual_seed(0)
    target = torch.rand(1, 3, 16, 12)
    x = torch.rand(1, 3, 16, 12, requires_grad=True)
    x0 = x.detach().clone()
    opt = _split(x, levels, lambda ps: torch.optim.SGD(ps, lr=0.1), lambda ps: torch.optim.SGD(ps, lr=0.02))
    assert level_sizes(x.shape, 3) == [3 * 16 * 12, 3 * 8 * 6, 3 * 4 * 3]
    opt.zero_grad()
    ((x - target) ** 2).sum().backward()
    grads = adjoint(x.grad, [z.shape for z in opt.coefficients[0]])
    opt.step()
    rates = [0.1] * levels + [0.02] * (3 - levels)
    assert torch.allclose(x.detach(), x0 + synthesize([-r * g for r, g in zip(rates, grads)], (16, 12)), atol=1e-6)
    fine, coarse = opt.inner.parts[0]
    assert fine.numel() == sum(level_sizes(x.shape, 3)[:levels]) and fine.numel() + coarse.numel() == opt.coordinates


def test_a_level_split_gives_a_learned_rest_its_levels_loss_notices_and_state():
    nets = _nets()
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16, requires_grad=True)

    def make(image):
        return _split(image, 1, lambda ps: torch.optim.Adam(ps, lr=0.01), lambda ps: LearnedOptimizer(ps, nets=nets))

    opt = make(x)
    learned = opt.inner.rest
    coarse = opt.inner.parts[0][1]
    assert learned.state[coarse]["level_sizes"] == [0, 3 * 8 * 8, 3 * 4 * 4]  # counted from the image's finest
    for _ in range(3):
        x.grad = torch.randn_like(x)
        opt.step(loss=torch.tensor(1.0))
    assert opt.last_notice is None and opt.fallback_count == 0
    # state: the learned part's (int h and c per coordinate) plus Adam's two moments on level 0
    assert opt.state_bytes() == learned.state_bytes() + 2 * 4 * x.numel()
    # (a deep copy, as saved: torch's Adam loads the tensors it is given as they are)
    reloaded = _steps_alike(opt, x, make, copy_module.deepcopy(opt.state_dict()))
    with pytest.raises(ValueError, match="LevelSplit"):
        reloaded.inner.load_state_dict(LearnedOptimizer([coarse], nets=nets).state_dict())
    # the learned part's non-finite guard is reported through the split (Adam has none: the engine's
    # divergence check covers the image)
    flat, n = opt.inner.flats[0], opt.inner.n_finest[0]
    flat.grad = torch.ones_like(flat)
    flat.grad[n + 5] = float("nan")
    opt.inner.step()
    assert torch.isfinite(flat).all() and opt.fallback_count > 0 and "non-finite" in opt.last_notice


def test_a_deep_copy_of_a_level_split_steps_as_the_original_and_on_its_own_image():
    # torch's __getstate__ kept only the groups and state: the copy had no optimizers to step with
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 12, requires_grad=True)
    opt = _split(x, 1, lambda ps: torch.optim.Adam(ps, lr=0.1), lambda ps: torch.optim.SGD(ps, lr=0.02, momentum=0.9))
    x.grad = torch.randn_like(x)
    opt.step()
    copied = copy_module.deepcopy(opt)
    before = x.detach().clone()
    grad = torch.randn_like(x)
    x.grad, copied.images[0].grad = grad.clone(), grad.clone()
    opt.step()
    copied.step()
    assert torch.equal(x, copied.images[0]) and not torch.equal(x, before)
    assert copied.inner.parts[0][0] is not opt.inner.parts[0][0]


def test_a_level_split_refuses_what_would_leave_one_optimizer_nothing():
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    sgd = lambda ps: torch.optim.SGD(ps, lr=0.1)  # noqa: E731
    with pytest.raises(ValueError, match="no coarser level"):
        _split(x, 3, sgd, sgd)
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="levels must be"):
            _split(x, bad, sgd, sgd)
    with pytest.raises(ValueError, match="add up"):
        MultiscaleOptimizer([x], lambda flats: LevelSplit(flats, [[5, 5]], 1, sgd, sgd), levels=3)
    with pytest.raises(ValueError, match="entries"):
        MultiscaleOptimizer([x], lambda flats: LevelSplit(flats, [], 1, sgd, sgd), levels=3)
