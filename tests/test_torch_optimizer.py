import copy

import pytest
import torch
from torch import nn

from artopt.learned_optimizers import LearnedOptimizer, LSTMOptimizerNet, learned_update, load_learned, save_learned


def sign_descent_net():
    """A hand-set network that ignores its state and outputs -0.1·sign(g): a known, sane optimizer."""
    net = LSTMOptimizerNet()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        # layer 1: input gate and output gate open, cell input = tanh(5·sign)
        H = 20
        w = net.lstm.weight_ih_l0
        net.lstm.bias_ih_l0[:H] = 10.0  # input gate
        net.lstm.bias_ih_l0[3 * H : 4 * H] = 10.0  # output gate
        w[2 * H : 3 * H, 1] = 5.0  # cell candidate from the sign feature
        net.lstm.bias_ih_l0[H : 2 * H] = -10.0  # forget gate closed
        net.lstm.bias_ih_l1[:H] = 10.0
        net.lstm.bias_ih_l1[3 * H : 4 * H] = 10.0
        net.lstm.bias_ih_l1[H : 2 * H] = -10.0
        net.lstm.weight_ih_l1[2 * H : 3 * H, :] = torch.eye(H) * 5.0
        net.head.weight[:] = -1.0 / H / 0.7  # undo tanh saturation roughly; scale 0.1 applied after
    return net


def test_trains_a_tiny_model():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    opt = LearnedOptimizer(model.parameters(), nets={"default": sign_descent_net()})

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    first = closure().item()
    for _ in range(60):
        opt.step(closure)
    assert closure().item() < 0.1 * first


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8])
def test_state_dict_round_trip_keeps_hidden_states(tmp_path, state_dtype):
    torch.manual_seed(0)
    path = save_learned(tmp_path / "o.safetensors", {"default": LSTMOptimizerNet()})
    model = nn.Linear(4, 2)
    opt = LearnedOptimizer(model.parameters(), weights=path, state_dtype=state_dtype)
    x = torch.randn(8, 4)

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).sum()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    # Saved and loaded as people do (torch.load with weights_only=True).
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    saved_opt = torch.load(tmp_path / "opt.pt", weights_only=True)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    opt.step(closure)
    after = {k: v.clone() for k, v in model.state_dict().items()}

    model2 = nn.Linear(4, 2)
    model2.load_state_dict(saved_model)
    opt2 = LearnedOptimizer(model2.parameters(), weights=path, state_dtype=state_dtype)
    opt2.load_state_dict(saved_opt)
    p0 = next(iter(model2.parameters()))
    assert opt2.state[p0]["h"].abs().sum() > 0
    # torch casts loaded state to the parameter's dtype; the storage dtypes must survive that.
    assert opt2.state[p0]["h"].dtype == state_dtype and opt2.state[p0]["c"].dtype == opt2._c_dtype

    def closure2():
        opt2.zero_grad()
        loss = model2(x).pow(2).sum()
        loss.backward()
        return loss

    opt2.step(closure2)
    for k in after:
        torch.testing.assert_close(model2.state_dict()[k], after[k], rtol=0, atol=0)


def test_loading_converts_between_state_dtypes(tmp_path):
    torch.manual_seed(0)
    path = save_learned(tmp_path / "o.safetensors", {"default": LSTMOptimizerNet()})
    model = nn.Linear(4, 2)
    x = torch.randn(8, 4)
    opt32 = LearnedOptimizer(model.parameters(), weights=path)
    for _ in range(3):
        opt32.zero_grad()
        model(x).pow(2).sum().backward()
        opt32.step()
    p = model.weight
    opt8 = LearnedOptimizer(model.parameters(), weights=path, state_dtype=torch.int8)
    opt8.load_state_dict(opt32.state_dict())
    assert opt8.state[p]["h"].dtype == torch.int8
    torch.testing.assert_close(opt8.state[p]["h"].float() / 127, opt32.state[p]["h"], rtol=0, atol=0.5 / 127)
    back = LearnedOptimizer(model.parameters(), weights=path)
    back.load_state_dict(opt8.state_dict())
    torch.testing.assert_close(back.state[p]["h"], opt32.state[p]["h"], rtol=0, atol=0.5 / 127)



@pytest.mark.parametrize("state_dtype", [torch.float32, torch.int8])
def test_load_state_dict_hooks_see_and_keep_the_loaded_state(tmp_path, state_dtype):
    path = save_learned(tmp_path / "o.safetensors", {"default": LSTMOptimizerNet()})
    p = nn.Parameter(torch.randn(6))
    opt = LearnedOptimizer([p], weights=path, state_dtype=state_dtype)
    p.grad = torch.randn(6)
    opt.step()
    saved = opt.state_dict()
    assert opt.state[p]["h"].abs().max() > 0

    def zero_h(_, state_dict):  # e.g. a checkpoint migration: what it returns is what loads
        state_dict = copy.deepcopy(state_dict)
        for st in state_dict["state"].values():
            st["h"].zero_()
        return state_dict

    seen = {}

    def look_then_zero_c(optimizer):  # post-hooks see the state as it will be, and their changes stay
        st = optimizer.state[p]
        seen["h"], seen["c"] = st["h"].dtype, st["c"].dtype
        st["c"].zero_()

    again = LearnedOptimizer([p], weights=path, state_dtype=state_dtype)
    again.register_load_state_dict_pre_hook(zero_h)
    again.register_load_state_dict_post_hook(look_then_zero_c)
    again.load_state_dict(saved)
    assert seen == {"h": again.state[p]["h"].dtype, "c": again.state[p]["c"].dtype}
    assert seen["h"] == (torch.int8 if state_dtype == torch.int8 else torch.float32)
    assert again.state[p]["h"].abs().max() == 0 and again.state[p]["c"].abs().max() == 0
    assert opt.state[p]["h"].abs().max() > 0  # the saved dict itself untouched
    # a pre-hook's result is what the shape check sees
    other = LearnedOptimizer([nn.Parameter(torch.randn(6))], weights=path, state_dtype=state_dtype)
    other.register_load_state_dict_pre_hook(
        lambda _, sd: {**sd, "state": {k: {**st, "h": st["h"][:, :3]} for k, st in sd["state"].items()}})
    with pytest.raises(ValueError):
        other.load_state_dict(saved)
    assert len(other._optimizer_load_state_dict_pre_hooks) == 1  # this load's own hooks are gone
    assert not other._optimizer_load_state_dict_post_hooks

def test_param_groups_route_to_named_nets():
    nets = {"conv": LSTMOptimizerNet(), "fc": LSTMOptimizerNet()}
    a, b = nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(2))
    opt = LearnedOptimizer([{"params": [a], "net": "conv"}, {"params": [b], "net": "fc"}], nets=nets)
    (a.sum() + b.sum()).backward()
    opt.step()
    assert opt.state[a]["h"].shape == (2, 3, 20) and opt.state[b]["h"].shape == (2, 2, 20)
    with pytest.raises(ValueError, match="network 'other'"):
        LearnedOptimizer([{"params": [a], "net": "other"}], nets=nets)


def test_lr_multiplier_scales_update():
    torch.manual_seed(0)
    net = LSTMOptimizerNet()
    a = nn.Parameter(torch.zeros(5))
    b = nn.Parameter(torch.zeros(5))
    g = torch.randn(5)
    oa = LearnedOptimizer([a], nets={"default": net})
    ob = LearnedOptimizer([b], nets={"default": net}, lr=2.0)
    a.grad, b.grad = g.clone(), g.clone()
    oa.step(), ob.step()
    torch.testing.assert_close(b.detach(), 2 * a.detach())


def test_input_scale_rescales_what_the_lstm_sees_not_the_update():
    torch.manual_seed(0)
    net = LSTMOptimizerNet()
    a, b = nn.Parameter(torch.zeros(5)), nn.Parameter(torch.zeros(5))
    g = torch.randn(5) * 1e-3
    oa = LearnedOptimizer([a], nets={"default": net}, input_scale=16.0)
    ob = LearnedOptimizer([b], nets={"default": net})
    a.grad, b.grad = g.clone(), 16.0 * g
    oa.step(), ob.step()
    torch.testing.assert_close(a.detach(), b.detach())
    with pytest.raises(ValueError, match="input_scale"):
        LearnedOptimizer([a], nets={"default": net}, input_scale=0.0)


def test_non_finite_gradient_never_reaches_parameters():
    net = LSTMOptimizerNet()
    p = nn.Parameter(torch.ones(4))
    opt = LearnedOptimizer([p], nets={"default": net})
    p.grad = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])
    opt.step()
    assert torch.isfinite(p).all()
    assert p[0].item() == 1.0 and p[1].item() == 1.0  # no direction, no step
    assert opt.last_notice and "non-finite" in opt.last_notice
    # ... and the LSTM state of those coordinates is reset (zero), while the finite one keeps its own
    h, c = opt.state[p]["h"], opt.state[p]["c"]
    assert torch.equal(h[:, :3], torch.zeros_like(h[:, :3])) and torch.equal(c[:, :3], torch.zeros_like(c[:, :3]))
    assert h[:, 3].abs().sum() > 0 and c[:, 3].abs().sum() > 0


def test_non_finite_update_falls_back_to_adam_step():
    net = LSTMOptimizerNet()
    with torch.no_grad():
        net.head.bias.fill_(float("nan"))
    p = nn.Parameter(torch.zeros(3))
    opt = LearnedOptimizer([p], nets={"default": net}, fallback_lr=0.01)
    p.grad = torch.tensor([2.0, -3.0, 0.5])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-0.01, 0.01, -0.01]))
    assert opt.fallback_count == 3
    # every coordinate needed the fallback: its LSTM state starts over from zero (h alone stays finite
    # here anyway: only the output head is broken)
    assert torch.equal(opt.state[p]["h"], torch.zeros_like(opt.state[p]["h"]))
    assert torch.equal(opt.state[p]["c"], torch.zeros_like(opt.state[p]["c"]))
    # the group's lr scales the fallback as it scales the learned step: a schedule at 0 stops both
    for lr, moved in ((0.5, 0.005), (0.0, 0.0)):
        opt.param_groups[0]["lr"] = lr
        before = p.detach().clone()
        opt.step()
        torch.testing.assert_close(p.detach() - before, torch.tensor([-moved, moved, -moved]))


def test_bfloat16_state_storage():
    net = LSTMOptimizerNet()
    p = nn.Parameter(torch.randn(10))
    opt = LearnedOptimizer([p], nets={"default": net}, state_dtype=torch.bfloat16)
    p.grad = torch.randn(10)
    opt.step()
    assert opt.state[p]["h"].dtype == torch.bfloat16
    assert opt.state[p]["h"].element_size() * 2 * 2 * 20 == 160  # bytes per coordinate


def test_int8_hidden_state_stays_close_to_float32():
    """int8 state: h in steps of 1/127 (it lies in (-1, 1)), c in float16, 120 B per coordinate."""
    torch.manual_seed(0)
    net = LSTMOptimizerNet(output_scale=0.05)
    target = torch.randn(200)
    runs = {}
    for dtype in (torch.float32, torch.int8):
        p = nn.Parameter(torch.zeros(200))
        opt = LearnedOptimizer([p], nets={"default": net}, state_dtype=dtype)
        for _ in range(10):
            p.grad = p.detach() - target
            opt.step()
        runs[dtype] = (p.detach().clone(), opt.state[p])
    (p32, s32), (p8, s8) = runs[torch.float32], runs[torch.int8]
    assert s8["h"].dtype == torch.int8 and s8["c"].dtype == torch.float16
    assert s8["h"].element_size() * 2 * 20 + s8["c"].element_size() * 2 * 20 == 120  # bytes per coordinate
    assert (s8["h"].float() / 127 - s32["h"]).abs().max() < 0.02
    assert (p8 - p32).abs().max() < 0.01 * p32.abs().max()
    with pytest.raises(ValueError, match="state_dtype"):
        LearnedOptimizer([nn.Parameter(torch.zeros(1))], nets={"default": net}, state_dtype=torch.int32)


def test_needs_weights_or_nets():
    with pytest.raises(ValueError):
        LearnedOptimizer([nn.Parameter(torch.zeros(1))])


def test_first_rms_normalization_makes_updates_loss_scale_invariant():
    torch.manual_seed(0)
    net = LSTMOptimizerNet(grad_normalization="first_rms")
    a, b = nn.Parameter(torch.randn(20)), nn.Parameter(torch.randn(20))
    b.data.copy_(a.data)
    oa = LearnedOptimizer([a], nets={"default": net})
    ob = LearnedOptimizer([b], nets={"default": net})
    target = torch.randn(20)
    for _ in range(5):
        oa.zero_grad(), ob.zero_grad()
        ((a - target) ** 2).sum().backward()
        (1000.0 * ((b - target) ** 2).sum()).backward()
        oa.step(), ob.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-4, atol=1e-5)


def test_first_rms_waits_for_a_nonzero_gradient():
    net = LSTMOptimizerNet(grad_normalization="first_rms")
    p = nn.Parameter(torch.zeros(3))
    opt = LearnedOptimizer([p], nets={"default": net})
    p.grad = torch.zeros(3)
    opt.step()
    assert opt.state[p]["grad_scale"] is None
    p.grad = torch.full((3,), 4.0)
    opt.step()
    assert float(opt.state[p]["grad_scale"]) == pytest.approx(0.25)


def test_refuses_what_it_cannot_optimize():
    net = {"default": sign_descent_net()}
    with pytest.raises(ValueError, match="complex"):
        LearnedOptimizer([nn.Parameter(torch.zeros(3, dtype=torch.complex64))], nets=net)
    for lr in (-1.0, float("inf"), "x"):
        with pytest.raises(ValueError, match="lr multiplier"):
            LearnedOptimizer([{"params": [nn.Parameter(torch.zeros(3))], "lr": lr}], nets=net)
    with pytest.raises(ValueError, match="fallback_lr"):
        LearnedOptimizer([nn.Parameter(torch.zeros(3))], nets=net, fallback_lr=float("nan"))
    params = (p for p in nn.Linear(2, 2).parameters())  # a generator is read once, and kept
    assert len(LearnedOptimizer(params, nets=net).param_groups[0]["params"]) == 2

    with pytest.raises(ValueError, match="floating-point parameters only"):  # its update would be truncated
        LearnedOptimizer([torch.zeros(3, dtype=torch.long)], nets=net)

    # A sparse gradient is refused before anything moves, also where another network's batch comes first.
    lin, emb = nn.Linear(2, 2), nn.Embedding(10, 3, sparse=True)
    opt = LearnedOptimizer([{"params": lin.parameters()}, {"params": emb.parameters(), "net": "other"}],
                           nets={"default": sign_descent_net(), "other": sign_descent_net()})
    before = lin.weight.detach().clone()
    (lin(torch.ones(1, 2)).sum() + emb(torch.tensor([1, 2])).sum()).backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert torch.equal(lin.weight, before) and not opt.state


@pytest.mark.parametrize("state_dtype,moment_dtype,bytes_per_coordinate",
                         [(torch.float32, torch.float32, 328), (torch.int8, torch.bfloat16, 124)])
def test_moment_inputs_state(tmp_path, state_dtype, moment_dtype, bytes_per_coordinate):
    """A network with moment inputs keeps m and v per coordinate (bfloat16 beside a reduced-precision
    LSTM state: 124 B per coordinate, 496 B per pixel in the 4/3-coordinate multi-scale basis), steps
    parameters in one batch as it would one by one, and carries the moments through state_dict."""
    torch.manual_seed(0)
    net = LSTMOptimizerNet(moment_inputs=True)
    a, b = nn.Parameter(torch.randn(30)), nn.Parameter(torch.randn(20))
    whole = nn.Parameter(torch.cat([a.detach(), b.detach()]))
    opt = LearnedOptimizer([a, b], nets={"default": net}, state_dtype=state_dtype)
    opt_whole = LearnedOptimizer([whole], nets={"default": net}, state_dtype=state_dtype)
    for _ in range(4):
        g = torch.randn(50)
        a.grad, b.grad, whole.grad = g[:30].clone(), g[30:].clone(), g.clone()
        opt.step(), opt_whole.step()
    torch.testing.assert_close(torch.cat([a.detach(), b.detach()]), whole.detach())
    assert opt.state[a]["m"].dtype == opt.state[a]["v"].dtype == moment_dtype
    assert opt.state_bytes() == 50 * bytes_per_coordinate
    path = save_learned(tmp_path / "m.safetensors", {"default": net})
    again = LearnedOptimizer([a, b], weights=path, state_dtype=state_dtype)
    again.load_state_dict(opt.state_dict())
    assert again.state[b]["v"].dtype == moment_dtype
    torch.testing.assert_close(again.state[b]["v"], opt.state[b]["v"])


def test_non_finite_gradient_resets_the_moments_too():
    net = LSTMOptimizerNet(moment_inputs=True)
    p = nn.Parameter(torch.ones(3))
    opt = LearnedOptimizer([p], nets={"default": net})
    p.grad = torch.tensor([1.0, float("inf"), 2.0])
    opt.step()
    assert torch.isfinite(p).all() and p[1].item() == 1.0
    assert opt.state[p]["v"][1].item() == 0.0 and opt.state[p]["v"][0].item() == 1.0
    p.grad = torch.tensor([1.0, 1.0, 2.0])
    opt.step()
    assert torch.isfinite(opt.state[p]["v"]).all() and torch.isfinite(p).all()



@pytest.mark.parametrize("state_dtype", [torch.float32, torch.int8])
def test_a_huge_finite_gradient_steps_with_finite_moments(state_dtype):
    # |g| > 1.8e19 overflows g² in float32; two infinite v's met in the running mean as NaN, and the
    # guard then took the fallback and reset the moments every other step
    net = LSTMOptimizerNet(moment_inputs=True)
    p = nn.Parameter(torch.zeros(2))
    opt = LearnedOptimizer([p], nets={"default": net}, state_dtype=state_dtype)
    for _ in range(3):
        p.grad = torch.tensor([2e19, 1.0])
        opt.step()
        assert opt.last_notice is None
        assert torch.isfinite(opt.state[p]["v"]).all() and opt.state[p]["v"][0].item() > 1e38

def test_a_parameter_added_later_starts_its_moments_fresh():
    torch.manual_seed(0)
    net = LSTMOptimizerNet(moment_inputs=True)
    a, b = nn.Parameter(torch.zeros(5)), nn.Parameter(torch.zeros(3))
    opt = LearnedOptimizer([a], nets={"default": net})
    a.grad = torch.randn(5)
    opt.step()
    opt.add_param_group({"params": [b]})
    a.grad, b.grad = torch.randn(5), torch.tensor([1.0, -2.0, 0.5])
    opt.step()
    torch.testing.assert_close(opt.state[b]["m"], b.grad)  # as on its first step
    torch.testing.assert_close(opt.state[b]["v"], b.grad ** 2)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()


def test_time_inputs_count_each_parameters_steps(tmp_path):
    """A network with time inputs gets the steps each parameter has taken: a parameter added later
    starts at 0 (it is stepped apart from the others meanwhile), and the count survives state_dict."""
    torch.manual_seed(0)
    net = LSTMOptimizerNet(moment_inputs=True, time_inputs=True)
    a, b = nn.Parameter(torch.zeros(5)), nn.Parameter(torch.zeros(3))
    opt = LearnedOptimizer([a], nets={"default": net}, state_dtype=torch.int8)
    for _ in range(2):
        a.grad = torch.randn(5)
        opt.step()
    opt.add_param_group({"params": [b]})
    ga, gb = torch.randn(5), torch.randn(3)
    a.grad, b.grad = ga, gb
    b_before = b.detach().clone()
    opt.step()
    assert (opt.state[a]["step"], opt.state[b]["step"]) == (3, 1)
    # b's first step is what a fresh optimizer gives it alone
    b2 = nn.Parameter(b_before.clone())
    alone = LearnedOptimizer([b2], nets={"default": net}, state_dtype=torch.int8)
    b2.grad = gb.clone()
    alone.step()
    torch.testing.assert_close(b2.detach(), b.detach())
    path = save_learned(tmp_path / "t.safetensors", {"default": net})
    again = LearnedOptimizer([{"params": [a]}, {"params": [b]}], weights=path, state_dtype=torch.int8)
    again.load_state_dict(opt.state_dict())
    assert (again.state[a]["step"], again.state[b]["step"]) == (3, 1)
    assert load_learned(path)["default"].config.time_inputs


def test_loss_inputs_take_the_loss_from_the_closure_or_the_caller(tmp_path):
    """A network with loss inputs sees log(f_t / f_(t-1)): from step(closure) or step(loss=...), the
    same update either way; without a loss it says what to pass; the last loss survives state_dict."""
    from artopt.learned_optimizers.multiscale import MultiscaleOptimizer

    torch.manual_seed(0)
    net = LSTMOptimizerNet(moment_inputs=True, loss_inputs=True)
    target = torch.randn(6)

    def run(use_closure: bool, steps: int = 3):
        p = nn.Parameter(torch.zeros(6))
        opt = LearnedOptimizer([p], nets={"default": net})
        seen = []

        def closure():
            opt.zero_grad()
            loss = ((p - target) ** 2).sum()
            loss.backward()
            seen.append(float(loss.detach()))
            return loss

        for _ in range(steps):
            if use_closure:
                opt.step(closure)
            else:
                opt.step(loss=closure())
        return p, opt, seen

    (p1, opt1, seen), (p2, _, _) = run(True), run(False)
    assert torch.equal(p1.detach(), p2.detach())
    # The loss really reaches the network: the same steps as meta-training's learned_update given those
    # losses, and not the steps of a run that sees no change of the loss (a constant loss).
    theta, states = torch.zeros(6), {}
    for _ in range(3):
        loss = float(((theta - target) ** 2).sum())
        with torch.no_grad():
            (theta,), states = learned_update({"default": net}, [theta], [2 * (theta - target)], ["default"],
                                              states, loss=loss)
    torch.testing.assert_close(p1.detach(), theta, rtol=1e-5, atol=1e-7)
    q = nn.Parameter(torch.zeros(6))
    flat = LearnedOptimizer([q], nets={"default": net})
    for _ in range(3):
        q.grad = 2 * (q.detach() - target)
        flat.step(loss=1.0)
    assert not torch.allclose(q.detach(), p1.detach(), rtol=0, atol=1e-6)
    assert opt1.state[p1]["loss"] == seen[-1]  # the loss at the point the last update started from
    p1.grad = torch.ones(6)
    with pytest.raises(ValueError, match="loss inputs"):
        opt1.step()
    path = save_learned(tmp_path / "l.safetensors", {"default": net})
    again = LearnedOptimizer([p1], weights=path)
    again.load_state_dict(opt1.state_dict())
    assert again.state[p1]["loss"] == opt1.state[p1]["loss"] and load_learned(path)["default"].config.loss_inputs
    # through the multi-scale basis, the loss reaches the learned optimizer
    image = nn.Parameter(torch.rand(1, 3, 16, 16))
    ms = MultiscaleOptimizer([image], lambda zs: LearnedOptimizer(zs, nets={"default": net}), levels=2)

    def image_closure():
        ms.zero_grad()
        loss = image.square().sum()
        loss.backward()
        return loss

    start = float(image.detach().square().sum())
    ms.step(image_closure)
    assert ms.inner.state[ms.flat[0]]["loss"] == start


def test_a_late_parameter_joins_the_first_rms_scale_instead_of_resetting_it():
    a, b = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(4))
    opt = LearnedOptimizer([a, b], nets={"default": LSTMOptimizerNet(grad_normalization="first_rms")})
    b.grad = torch.ones(4)  # a gets no gradient on the first step
    opt.step()
    a.grad, b.grad = torch.full((4,), 50.0), torch.ones(4)
    opt.step()
    assert float(opt.state[a]["grad_scale"]) == float(opt.state[b]["grad_scale"]) == pytest.approx(1.0)


def test_an_update_that_overflows_a_half_precision_parameter_is_not_applied():
    torch.manual_seed(0)
    p = nn.Parameter(torch.ones(2, dtype=torch.float16))
    opt = LearnedOptimizer([p], nets={"default": sign_descent_net()}, lr=1e9)  # steps of about 1e8
    p.grad = torch.tensor([1.0, -1.0], dtype=torch.float16)
    opt.step()
    assert torch.equal(p.detach(), torch.ones(2, dtype=torch.float16))
    assert "overflow torch.float16 at 2 coordinate(s)" in opt.last_notice and opt.fallback_count == 2
    opt.param_groups[0]["lr"] = 1.0
    opt.step()  # an ordinary step goes through again, and the notice is gone
    assert torch.isfinite(p).all() and not torch.equal(p.detach(), torch.ones(2, dtype=torch.float16))
    assert opt.last_notice is None


def test_refuses_meta_tensors_and_mixed_devices_without_breaking():
    p, q = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3, device="meta"))
    opt = LearnedOptimizer([{"params": [p]}, {"params": [q]}], nets={"default": sign_descent_net()})
    p.grad, q.grad = torch.ones(3), torch.ones(3, device="meta")
    with pytest.raises(ValueError, match="meta device"):
        opt.step()
    q.grad, p.grad = None, torch.ones(3)
    opt.step()  # the networks stayed where they were
    assert torch.allclose(p.detach(), torch.full((3,), -0.1), atol=0.02)


def test_refuses_duplicates_and_unknown_networks_when_added_or_loaded():
    net = {"default": sign_descent_net()}
    p, q = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="appears twice"):
        LearnedOptimizer([p, p], nets=net)
    opt = LearnedOptimizer([p], nets=net)
    with pytest.raises(ValueError, match="network 'conv'"):
        opt.add_param_group({"params": [q], "net": "conv"})
    other = LearnedOptimizer([nn.Parameter(torch.zeros(3))], nets={"fc": sign_descent_net()})
    with pytest.raises(ValueError, match=r"network\(s\) \['fc'\]"):
        opt.load_state_dict(other.state_dict())


@pytest.mark.parametrize("param_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.float16, torch.int8])
def test_half_precision_parameters_resume_exactly(tmp_path, param_dtype, state_dtype):
    # torch's load casts floating-point state to the parameter's dtype: a float32 h came back
    # rounded to float16, and the resumed run drifted from the uninterrupted one.
    torch.manual_seed(0)
    path = save_learned(tmp_path / "o.safetensors", {"default": LSTMOptimizerNet(moment_inputs=True)})
    target = torch.randn(50)

    def run(opt, p, steps):
        for _ in range(steps):
            opt.zero_grad()
            ((p.float() - target) ** 2).sum().backward()
            opt.step()

    p = nn.Parameter(torch.zeros(50, dtype=param_dtype))
    opt = LearnedOptimizer([p], weights=path, state_dtype=state_dtype)
    run(opt, p, 3)
    saved, start = copy.deepcopy(opt.state_dict()), p.detach().clone()  # a snapshot, as torch.save makes
    saved_state = {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
    run(opt, p, 2)
    q = nn.Parameter(start.clone())
    resumed = LearnedOptimizer([q], weights=path, state_dtype=state_dtype)
    resumed.load_state_dict(saved)
    for name, value in saved_state.items():
        assert resumed.state[q][name].dtype == value.dtype and torch.equal(resumed.state[q][name], value), name
    run(resumed, q, 2)
    assert torch.equal(q.detach(), p.detach())


def test_a_float16_parameter_keeps_training_after_its_first_rms_scale_is_reloaded():
    # The scale of tiny gradients (about 1e5) overflowed float16 when torch cast it to the
    # parameter's dtype on load: every later update was non-finite and nothing moved again.
    net = {"default": LSTMOptimizerNet(grad_normalization="first_rms")}
    p = nn.Parameter(torch.zeros(100, dtype=torch.float16))
    opt = LearnedOptimizer([p], nets=net)
    g = (torch.randn(100, generator=torch.Generator().manual_seed(0)) * 1e-5).half()
    p.grad = g.clone()
    opt.step()
    scale = opt.state[p]["grad_scale"].clone()
    opt.load_state_dict(opt.state_dict())
    assert torch.equal(opt.state[p]["grad_scale"], scale)
    before = p.detach().clone()
    p.grad = g.clone()
    opt.step()
    assert opt.last_notice is None and bool((p != before).all())


def test_a_state_dict_of_other_parameters_is_refused_when_loaded():
    def stepped(*sizes):
        params = [nn.Parameter(torch.zeros(n)) for n in sizes]
        opt = LearnedOptimizer(params, nets={"default": sign_descent_net()})
        for q in params:
            q.grad = torch.ones_like(q)
        opt.step()
        return opt

    other = stepped(5, 3).state_dict()
    for sizes in [(3, 3), (3, 5)]:  # another model; the same one with its parameters in another order
        fresh = LearnedOptimizer([nn.Parameter(torch.zeros(n)) for n in sizes], nets={"default": sign_descent_net()})
        with pytest.raises(ValueError, match="does not fit a parameter of 3 coordinate"):
            fresh.load_state_dict(other)
    stepped(5, 3).load_state_dict(other)  # the same shapes load


def test_a_state_dict_of_a_network_of_other_layers_or_units_is_refused_when_loaded():
    # It used to load, and every step() after failed with a message that did not point back to the load.
    def stepped(**config):
        p = nn.Parameter(torch.zeros(4))
        opt = LearnedOptimizer([p], nets={"default": LSTMOptimizerNet(**config)})
        p.grad = torch.ones(4)
        opt.step()
        return opt

    for other in (stepped(num_layers=1), stepped(hidden_size=8)):
        with pytest.raises(ValueError, match="other layers or units"):
            stepped().load_state_dict(other.state_dict())
    stepped().load_state_dict(stepped().state_dict())


def test_the_notice_counts_every_groups_coordinates():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))
    opt = LearnedOptimizer([{"params": [a]}, {"params": [b], "lr": 0.5}], nets={"default": sign_descent_net()})
    nan = float("nan")
    a.grad, b.grad = torch.full((3,), nan), torch.tensor([nan, 1.0, 1.0])
    opt.step()
    assert "non-finite gradient or update at 4 coordinate(s)" in opt.last_notice and opt.fallback_count == 4


def test_a_groups_lr_scales_its_step_and_nothing_else():
    # With a shared first_rms scale, a group whose lr differed by 0.1% used to be batched apart and
    # normalised by its own gradients: its steps changed by far more than its lr.
    torch.manual_seed(0)
    net = LSTMOptimizerNet(grad_normalization="first_rms")

    def steps(lr_b):
        a, b = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(4))
        opt = LearnedOptimizer([{"params": [a]}, {"params": [b], "lr": lr_b}], nets={"default": net})
        a.grad, b.grad = torch.full((4,), 10.0), torch.full((4,), 0.01)
        opt.step()
        return a.detach().clone(), b.detach().clone()

    (a1, b1), (a2, b2) = steps(1.0), steps(0.999)
    assert torch.equal(a1, a2) and bool((b1 != 0).all())
    torch.testing.assert_close(b2, 0.999 * b1, rtol=1e-5, atol=0)


def test_numbers_of_any_real_type_are_accepted_and_nonsense_is_refused():
    import numpy as np

    net = {"default": sign_descent_net()}
    p = nn.Parameter(torch.zeros(2))
    opt = LearnedOptimizer([{"params": [p], "lr": np.float32(0.5)}], nets=net, fallback_lr=np.float64(1e-3))
    assert opt.param_groups[0]["lr"] == 0.5 and type(opt.param_groups[0]["lr"]) is float
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "lr": None})  # None: as trained, as in the constructor
    assert opt.param_groups[1]["lr"] == 1.0
    for kwargs in ({"input_scale": None}, {"fallback_lr": True}, {"lr": float("nan")}):
        with pytest.raises(ValueError):
            LearnedOptimizer([nn.Parameter(torch.zeros(2))], nets=net, **kwargs)


def test_input_scale_does_not_overflow_a_float16_gradient():
    p = nn.Parameter(torch.zeros(2, dtype=torch.float16))
    opt = LearnedOptimizer([p], nets={"default": sign_descent_net()}, input_scale=100.0)
    p.grad = torch.tensor([1000.0, -1000.0], dtype=torch.float16)  # x100 is past float16's 65504
    opt.step()
    assert opt.last_notice is None and p[0] < 0 < p[1]


def test_a_scaled_gradient_that_leaves_its_dtype_still_steps():
    # first_rms scaled a float16 gradient in float16: a gradient 1e5 times the first one's RMS became
    # inf, was taken for a non-finite gradient, and the coordinate stopped moving.
    p = nn.Parameter(torch.zeros(4, dtype=torch.float16))
    opt = LearnedOptimizer([p], nets={"default": LSTMOptimizerNet(grad_normalization="first_rms")})
    p.grad = torch.full((4,), 1e-3, dtype=torch.float16)
    opt.step()
    before = p.detach().clone()
    p.grad = torch.full((4,), 100.0, dtype=torch.float16)
    opt.step()
    assert opt.last_notice is None and opt.fallback_count == 0 and bool((p != before).all())
    # The same where the scaled gradient passes float32's range: the gradient itself was finite.
    q = nn.Parameter(torch.zeros(2))
    opt = LearnedOptimizer([q], nets={"default": sign_descent_net()}, input_scale=10.0)
    q.grad = torch.tensor([3e38, -3e38])
    opt.step()
    assert opt.last_notice is None and q[0] < 0 < q[1]


def test_named_parameters_get_the_same_checks():
    # torch accepts (name, tensor) pairs; the duplicate and complex checks looked at the pairs and
    # let a twice-listed parameter (updated twice a step) and a complex one (garbage) through.
    net = {"default": sign_descent_net()}
    p = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="appears twice"):
        LearnedOptimizer([("a", p), ("b", p)], nets=net)
    with pytest.raises(ValueError, match="complex"):
        LearnedOptimizer([("z", nn.Parameter(torch.zeros(3, dtype=torch.complex64)))], nets=net)
    model = nn.Linear(2, 1)
    opt = LearnedOptimizer(model.named_parameters(), nets=net)
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]
    before = [q.detach().clone() for q in model.parameters()]
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    assert all(bool((q != b).all()) for q, b in zip(model.parameters(), before))


def test_the_complex_parameter_error_gives_advice_that_works():
    # It said "optimize torch.view_as_real(p) instead", which is a non-leaf view torch refuses.
    z = nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="complex") as err:
        LearnedOptimizer([z], nets={"default": sign_descent_net()})
    assert "view_as_complex" in str(err.value)
    real = nn.Parameter(torch.view_as_real(z.detach()).clone())  # the advice: a real leaf, viewed as complex
    opt = LearnedOptimizer([real], nets={"default": sign_descent_net()})
    torch.view_as_complex(real).abs().sum().backward()
    opt.step()


def test_add_param_group_refuses_a_non_dict_as_torch_does():
    opt = LearnedOptimizer([nn.Parameter(torch.zeros(2))], nets={"default": sign_descent_net()})
    with pytest.raises(TypeError, match="param_group must be a dict"):
        opt.add_param_group([nn.Parameter(torch.zeros(2))])


def test_another_optimizers_state_dict_is_refused_clearly():
    model = nn.Linear(2, 2)
    adam = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    adam.step()
    opt = LearnedOptimizer(model.parameters(), nets={"default": sign_descent_net()})
    with pytest.raises(ValueError, match="not saved by a LearnedOptimizer"):
        opt.load_state_dict(adam.state_dict())


def test_a_state_dict_of_parameters_of_other_shapes_is_refused():
    # Same number of coordinates, other shapes (parameters listed in another order): the LSTM states
    # would silently go to the wrong coordinates.  (torch's Adam fails at its next step.)
    def make(*shapes):
        params = [nn.Parameter(torch.zeros(s)) for s in shapes]
        return params, LearnedOptimizer(params, nets={"default": sign_descent_net()})

    params, opt = make((2, 3), (3, 2))
    for q in params:
        q.grad = torch.ones_like(q)
    opt.step()
    _, other = make((3, 2), (2, 3))
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*\(3, 2\)"):
        other.load_state_dict(opt.state_dict())
    same, again = make((2, 3), (3, 2))
    again.load_state_dict(opt.state_dict())
    for q in same:
        q.grad = torch.ones_like(q)
    again.step()


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_or_pickled_optimizer_goes_on_as_the_original(how):
    import pickle

    from artopt.learned_optimizers import weights_path
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    # the neural-art network has moment inputs: h, c, m and v all have to come along (int8 h)
    opt = LearnedOptimizer(model.parameters(), weights=weights_path("neural_art"), state_dtype=torch.int8)
    grads = [[torch.randn_like(p) for p in model.parameters()] for _ in range(4)]

    def step(m, o, gs):
        for p, g in zip(m.parameters(), gs):
            p.grad = g.clone()
        o.step()

    for gs in grads[:2]:
        step(model, opt, gs)
    # torch pickles an optimizer with its parameters' identities: copy the two together, as a user would
    model2, opt2 = copy.deepcopy((model, opt)) if how == "deepcopy" else pickle.loads(pickle.dumps((model, opt)))
    for gs in grads[2:]:
        step(model2, opt2, gs)
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))  # the copy moved alone
    for gs in grads[2:]:
        step(model, opt, gs)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    assert opt2.state_dtype == torch.int8 and opt2.state_bytes() == opt.state_bytes()


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_with_an_lr_scheduler_attached_steps_its_own_parameters(how):
    import pickle

    from artopt.learned_optimizers import weights_path
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = LearnedOptimizer(model.parameters(), weights=weights_path("mnist"))
    torch.optim.lr_scheduler.ExponentialLR(opt, 0.9)  # wraps opt.step, bound to opt
    # the wrapper came along: the copy's step moved the original's parameters (and pickle refused it)
    model2, opt2 = copy.deepcopy((model, opt)) if how == "deepcopy" else pickle.loads(pickle.dumps((model, opt)))
    before = [p.detach().clone() for p in model.parameters()]
    for p in model2.parameters():
        p.grad = torch.ones_like(p)
    opt2.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert not all(torch.equal(a, b) for a, b in zip(model2.parameters(), before))


def test_networks_passed_in_stay_trainable():
    net = LSTMOptimizerNet()
    LearnedOptimizer([nn.Parameter(torch.zeros(2))], nets={"default": net})
    # meta-training differentiates through the same networks: the optimizer must not freeze them
    assert all(p.requires_grad for p in net.parameters())
    theta = torch.randn(5)
    (new,), _ = learned_update({"default": net}, [theta], [2 * theta], ["default"], {})
    assert new.requires_grad
