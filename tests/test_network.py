import pytest
import torch

from artopt.learned_optimizers import LSTMOptimizerConfig, LSTMOptimizerNet, learned_update
from artopt.learned_optimizers.network import LEVEL_INPUTS, LOSS_SCALES, TIME_SCALES, loss_change


def test_shapes_and_state_size():
    net = LSTMOptimizerNet()
    assert net.state_numbers_per_coordinate == 80  # 2 layers x 20 units x (h, c)
    state = net.init_state(7)
    update, (h, c) = net(torch.randn(7), state)
    assert update.shape == (7,) and h.shape == (2, 7, 20) and c.shape == (2, 7, 20)


def test_hidden_states_follow_their_coordinates():
    torch.manual_seed(0)
    net = LSTMOptimizerNet()
    g1, g2 = torch.randn(50), torch.randn(50)
    perm = torch.randperm(50)
    s = net.init_state(50)
    u1, s1 = net(g1, s)
    u2, _ = net(g2, s1)
    # Same trajectory with the coordinates shuffled: each coordinate must get its own update back.
    sp = net.init_state(50)
    v1, sp1 = net(g1[perm], sp)
    v2, _ = net(g2[perm], sp1)
    torch.testing.assert_close(v1, u1[perm])
    torch.testing.assert_close(v2, u2[perm])


def test_without_preprocessing_takes_raw_gradient():
    net = LSTMOptimizerNet(LSTMOptimizerConfig(preprocess=False))
    assert net.lstm.input_size == 1
    u, _ = net(torch.randn(3), net.init_state(3))
    assert u.shape == (3,)


def test_learned_update_batches_groups_and_is_differentiable():
    nets = torch.nn.ModuleDict({"conv": LSTMOptimizerNet(), "fc": LSTMOptimizerNet()})
    params = [torch.randn(2, 3), torch.randn(4), torch.randn(5)]
    grads = [torch.randn_like(p) for p in params]
    new, states = learned_update(nets, params, grads, ["conv", "fc", "conv"], {})
    assert [p.shape for p in new] == [p.shape for p in params]
    assert states["conv"][0].shape[1] == 6 + 5 and states["fc"][0].shape[1] == 4
    sum(p.sum() for p in new).backward()
    assert all(p.grad is not None for p in nets.parameters())


def _nn_lstm_reference(net, g, state):
    x = net.features(g).unsqueeze(0)
    out, (h, c) = net.lstm(x, state)
    return net.head(out[0]).squeeze(-1) * net.config.output_scale, (h, c)


def test_differentiable_and_fast_paths_match_nn_lstm():
    torch.manual_seed(0)
    net = LSTMOptimizerNet()
    g = torch.randn(40_000) * torch.logspace(-8, 2, 40_000)
    state = (torch.randn(2, 40_000, 20) * 0.5, torch.randn(2, 40_000, 20))
    u_ref, (h_ref, c_ref) = _nn_lstm_reference(net, g, state)
    ref_grads = torch.autograd.grad((u_ref * torch.linspace(-1, 1, 40_000)).sum(), list(net.parameters()))
    u_d, (h_d, c_d) = net(g, state)  # grad enabled, weights require grad: differentiable path
    d_grads = torch.autograd.grad((u_d * torch.linspace(-1, 1, 40_000)).sum(), list(net.parameters()))
    with torch.no_grad():
        u, (h, c) = net(g, state)  # chunked fused path
    for got_u, got_h, got_c in ((u_d, h_d, c_d), (u, h, c)):
        torch.testing.assert_close(got_u.detach(), u_ref.detach(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got_h.detach(), h_ref.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got_c.detach(), c_ref.detach(), rtol=1e-4, atol=1e-5)
    for got, want in zip(d_grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_inference_keeps_reduced_precision_state_dtype(dtype):
    net = LSTMOptimizerNet()
    with torch.no_grad():
        u, (h, c) = net(torch.randn(10), net.init_state(10, dtype=dtype))
    assert h.dtype == c.dtype == dtype and u.dtype == torch.float32


def test_int8_hidden_state_is_h_in_steps_of_1_over_127():
    """An int8 h means h/127 (the scale lives in W_hh); the new h comes back rounded to 1/127 steps,
    the same in the chunked inference path and the differentiable path."""
    torch.manual_seed(0)
    net = LSTMOptimizerNet()
    n = 9_000
    g = torch.randn(n) * torch.logspace(-6, 1, n)
    h8 = torch.randint(-127, 128, (2, n, 20), dtype=torch.int8)
    c16 = (torch.randn(2, n, 20) * 3).half()
    with torch.no_grad():
        u_ref, (h_ref, c_ref) = net._inference(g, (h8.float() / 127, c16.float()))
        u, (h, c) = net._inference(g, (h8, c16), chunk=1000)
    u_d, (h_d, c_d) = net._differentiable(g, (h8, c16))
    assert h.dtype == torch.int8 and c.dtype == torch.float16
    torch.testing.assert_close(u, u_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(u_d.detach(), u_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_d.detach(), h_ref, rtol=1e-5, atol=1e-6)
    # rounding differs from the reference only where 127·h sits on a half step (fp32 noise)
    assert (h.int() - (h_ref * 127).round().int()).abs().max() <= 1
    assert ((h.float() / 127) - h_ref).abs().max() <= 0.5 / 127 + 1e-3
    torch.testing.assert_close(c, c_ref.half())


def test_grad_normalization_config_is_checked():
    import pytest

    with pytest.raises(ValueError, match="grad_normalization"):
        LSTMOptimizerConfig(grad_normalization="bogus")
    nets = torch.nn.ModuleDict({"default": LSTMOptimizerNet(grad_normalization="first_rms")})
    p = [torch.randn(5)]
    new_small, st_small = learned_update(nets, p, [torch.ones(5)], ["default"], {})
    new_big, st_big = learned_update(nets, p, [torch.ones(5) * 1e6], ["default"], {})
    torch.testing.assert_close(new_small[0], new_big[0])


def test_moments_start_at_g_and_g2_then_decay():
    net = LSTMOptimizerNet(moment_inputs=True, beta1=0.9, beta2=0.5)
    assert net.lstm.input_size == 4
    g1, g2 = torch.tensor([2.0, -1.0, 0.0]), torch.tensor([0.0, 3.0, float("nan")])
    m, v = net.update_moments(g1, None)
    torch.testing.assert_close(m, g1)
    torch.testing.assert_close(v, g1 * g1)
    m, v = net.update_moments(g2, (m.bfloat16(), v.bfloat16()))  # stored moments may be 16-bit
    assert m.dtype == v.dtype == torch.float32
    torch.testing.assert_close(m, torch.tensor([1.8, -0.6, 0.0]))  # NaN counts as 0
    torch.testing.assert_close(v, torch.tensor([2.0, 5.0, 0.0]))
    x = net.features(g2, (m, v))
    assert x.shape == (3, 4) and torch.isfinite(x).all()
    torch.testing.assert_close(x[:, 2], torch.tensor([1.8 / 2 ** 0.5, -0.6 / 5 ** 0.5, 0.0]))
    torch.testing.assert_close(x[:, 3], torch.tensor([0.0, 3 / 5 ** 0.5, 0.0]))
    with pytest.raises(ValueError, match="moment"):
        net(torch.randn(3), net.init_state(3))  # moments are not optional for this network
    with pytest.raises(ValueError, match="beta2"):
        LSTMOptimizerConfig(moment_inputs=True, beta2=1.0)


def test_moment_inputs_are_scale_free():
    """m/√v and g/√v do not change when the loss is scaled; only the log-magnitude input does."""
    net = LSTMOptimizerNet(moment_inputs=True)
    g = [torch.randn(100) for _ in range(3)]
    mom_a = mom_b = None
    for gi in g:
        mom_a, mom_b = net.update_moments(gi, mom_a), net.update_moments(1000 * gi, mom_b)
    xa, xb = net.features(g[-1], mom_a), net.features(1000 * g[-1], mom_b)
    torch.testing.assert_close(xa[:, 1:], xb[:, 1:])


def _full_and_subset_updates(net, steps: int = 3):
    """``steps`` learned_update calls on one 300-coordinate parameter, through every coordinate and
    through a random tenth, checked to give the same values; returns both states and the last subset
    update (differentiable)."""
    nets = torch.nn.ModuleDict({"default": net})
    params, states_full, states_sub = [torch.zeros(300)], {}, {}
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        grads = [torch.randn(300)]
        full, states_full = learned_update(nets, params, grads, ["default"], states_full)
        sub, states_sub = learned_update(nets, params, grads, ["default"], states_sub, 0.1, gen)
        torch.testing.assert_close(sub[0], full[0], rtol=1e-5, atol=1e-7)
    return states_full, states_sub, sub


def test_moment_inputs_paths_agree_and_meta_fraction_keeps_the_update():
    torch.manual_seed(0)
    net = LSTMOptimizerNet(moment_inputs=True)
    g = torch.randn(9000) * torch.logspace(-6, 0, 9000)
    moments = net.update_moments(g, net.update_moments(torch.randn(9000), None))
    state = (torch.randn(2, 9000, 20) * 0.5, torch.randn(2, 9000, 20))
    u_diff, (h_diff, c_diff) = net(g, state, moments)
    u_fast, (h_fast, c_fast) = net._inference(g, state, chunk=1000, moments=moments)
    torch.testing.assert_close(u_fast, u_diff.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_fast, h_diff.detach(), rtol=1e-5, atol=1e-5)
    # learned_update keeps the moments in its states, and a meta-fraction changes no value.
    states_full, _, sub = _full_and_subset_updates(net)
    m, v = states_full["default/moments"]
    assert m.shape == v.shape == (300,)
    sub[0].sum().backward()
    assert net.lstm.weight_ih_l0.grad[:, 2:].abs().sum() > 0  # the moment inputs are trained


def test_old_configs_load_without_moment_inputs():
    cfg = LSTMOptimizerConfig.from_dict({"hidden_size": 20, "num_layers": 2, "preprocess": True, "p": 10.0,
                                         "output_scale": 0.1, "grad_normalization": "none"})
    assert not cfg.moment_inputs and LSTMOptimizerNet(cfg).lstm.input_size == 2


def _check_inputs_shared_by_every_coordinate(net, name: str, value, expected, other, error: str) -> None:
    """A network whose inputs past the gradient and moments (4) are the same for every coordinate and
    set by the keyword ``name``: without it the network says so (``error``); with ``value`` they
    are ``expected``; both paths agree; ``other`` changes the update."""
    g = torch.randn(5000) * torch.logspace(-6, 0, 5000)
    moments = net.update_moments(g, None)
    state = (torch.randn(2, 5000, 20) * 0.5, torch.randn(2, 5000, 20))
    with pytest.raises(ValueError, match=error):
        net(g, state, moments)
    x = net.features(g, moments, **{name: value})
    torch.testing.assert_close(x[0, 4:], expected)
    assert torch.equal(x[:, 4:], x[:1, 4:].expand(5000, -1))
    u_diff, (h_diff, _) = net(g, state, moments, **{name: value})
    u_fast, (h_fast, _) = net._inference(g, state, chunk=700, moments=moments, **{name: value})
    torch.testing.assert_close(u_fast, u_diff.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_fast, h_diff.detach(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(net._inference(g, state, moments=moments, **{name: other})[0], u_fast)


def test_time_inputs_paths_agree_and_learned_update_counts_steps():
    torch.manual_seed(0)
    net = LSTMOptimizerNet(moment_inputs=True, time_inputs=True)
    assert net.lstm.input_size == 4 + len(TIME_SCALES)
    _check_inputs_shared_by_every_coordinate(net, "step", 7, torch.tanh(torch.tensor([7 / s for s in TIME_SCALES])), 50,
                                             "time inputs")
    # learned_update counts the steps per group; a meta-fraction changes no value; the time inputs train.
    states_full, states_sub, sub = _full_and_subset_updates(net)
    assert states_full["default/step"] == states_sub["default/step"] == 3
    sub[0].sum().backward()
    assert net.lstm.weight_ih_l0.grad[:, 4:].abs().sum() > 0


def test_loss_change_is_the_log_ratio_or_0_where_it_cannot_be_taken():
    assert loss_change(2.0, 1.0) == pytest.approx(-0.6931472)
    assert loss_change(1.0, 1.0) == 0.0
    for previous, now in ((None, 1.0), (1.0, None), (0.0, 1.0), (1.0, -1.0), (float("nan"), 1.0), (1.0, float("inf"))):
        assert loss_change(previous, now) == 0.0


def test_loss_inputs_paths_agree_and_learned_update_keeps_the_previous_loss():
    torch.manual_seed(0)
    net = LSTMOptimizerNet(moment_inputs=True, loss_inputs=True)
    assert net.lstm.input_size == 4 + len(LOSS_SCALES)
    _check_inputs_shared_by_every_coordinate(net, "change", -0.02,
                                             torch.tanh(torch.tensor([-0.02 * s for s in LOSS_SCALES])), 0.3,
                                             "loss inputs")
    # learned_update needs the loss, keeps it per group, and a meta-fraction changes no value
    nets = torch.nn.ModuleDict({"default": net})
    with pytest.raises(ValueError, match="loss inputs"):
        learned_update(nets, [torch.zeros(300)], [torch.randn(300)], ["default"], {})
    params, states_full, states_sub = [torch.zeros(300)], {}, {}
    gen = torch.Generator().manual_seed(0)
    for loss in (4.0, 3.0, 3.3):
        grads = [torch.randn(300)]
        full, states_full = learned_update(nets, params, grads, ["default"], states_full, loss=loss)
        sub, states_sub = learned_update(nets, params, grads, ["default"], states_sub, 0.1, gen, loss=loss)
        torch.testing.assert_close(sub[0], full[0], rtol=1e-5, atol=1e-7)
    assert states_full["default/loss"] == states_sub["default/loss"] == 3.3
    # a run's first step sees a change of 0
    first, _ = learned_update(nets, [torch.zeros(300)], grads, ["default"], {}, loss=5.0)
    zero_change, _ = net(grads[0], net.init_state(300), net.update_moments(grads[0], None), change=0.0)
    torch.testing.assert_close(first[0], zero_change.detach())
    sub[0].sum().backward()  # the loss inputs train
    assert net.lstm.weight_ih_l0.grad[:, 4:].abs().sum() > 0


def test_level_inputs_are_a_capped_one_hot_and_the_paths_agree():
    torch.manual_seed(0)
    net = LSTMOptimizerNet(moment_inputs=True, level_inputs=True)
    assert net.lstm.input_size == 4 + LEVEL_INPUTS
    g = torch.randn(5000) * torch.logspace(-6, 0, 5000)
    moments = net.update_moments(g, None)
    level = torch.arange(5000, dtype=torch.uint8) % 7  # levels 0..6: 3 and coarser share one input
    x = net.features(g, moments, level=level)
    assert torch.equal(x[:, 4:].argmax(1), level.long().clamp(max=LEVEL_INPUTS - 1))
    assert torch.equal(x[:, 4:].sum(1), torch.ones(5000))
    assert torch.equal(net.features(g, moments)[:, 4:], net.features(g, moments, level=level * 0)[:, 4:])
    state = (torch.randn(2, 5000, 20) * 0.5, torch.randn(2, 5000, 20))
    u_diff, (h_diff, _) = net(g, state, moments, level=level)
    u_fast, (h_fast, _) = net._inference(g, state, chunk=700, moments=moments, level=level)
    torch.testing.assert_close(u_fast, u_diff.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_fast, h_diff.detach(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(net._inference(g, state, moments=moments)[0], u_fast)  # the level matters


def test_learned_update_gives_each_parameter_its_level():
    torch.manual_seed(0)
    net = LSTMOptimizerNet(level_inputs=True)
    nets = torch.nn.ModuleDict({"default": net})
    params = [torch.zeros(40), torch.zeros(10)]
    grads = [torch.randn(40), torch.randn(10)]
    _, states = learned_update(nets, params, grads, ["default"] * 2, {}, levels=[0, 2])
    assert torch.equal(states["default/level"], torch.tensor([0] * 40 + [2] * 10, dtype=torch.uint8))
    # through a random subset of the coordinates the values are the same, and the level inputs train
    full, _ = learned_update(nets, params, grads, ["default"] * 2, {}, levels=[0, 2])
    sub, _ = learned_update(nets, params, grads, ["default"] * 2, {}, 0.5, torch.Generator().manual_seed(0),
                            levels=[0, 2])
    torch.testing.assert_close(sub[1], full[1], rtol=1e-5, atol=1e-7)
    sum(p.sum() for p in sub).backward()
    grad = net.lstm.weight_ih_l0.grad
    assert grad[:, 2 + 2].abs().sum() > 0  # level 2's input
    assert grad[:, 2 + 1].abs().sum() == grad[:, 2 + 3].abs().sum() == 0  # no coordinate at levels 1, 3
    flat, _ = learned_update(nets, params, grads, ["default"] * 2, {})  # no levels: all level 0
    assert not torch.allclose(flat[1], full[1])


def test_mlp_head_reads_h_and_the_inputs_and_the_paths_agree():
    torch.manual_seed(0)
    net = LSTMOptimizerNet(moment_inputs=True, head_hidden=16)
    assert net.head[0].in_features == 20 + 4 and net.state_numbers_per_coordinate == 80  # no added state
    g = torch.randn(5000) * torch.logspace(-6, 0, 5000)
    moments = net.update_moments(g, net.update_moments(torch.randn(5000), None))
    state = (torch.randn(2, 5000, 20) * 0.5, torch.randn(2, 5000, 20))
    u_diff, (h_diff, _) = net(g, state, moments)
    # the update is the head of [top h, inputs]
    want = net.head(torch.cat((h_diff[1], net.features(g, moments)), -1)).squeeze(-1) * net.config.output_scale
    torch.testing.assert_close(u_diff, want)
    u_fast, (h_fast, _) = net._inference(g, state, chunk=700, moments=moments)
    torch.testing.assert_close(u_fast, u_diff.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_fast, h_diff.detach(), rtol=1e-5, atol=1e-5)
    # int8 h / float16 c, as the engine stores them: the fast path still follows the differentiable one
    h8, c16 = (state[0] * 127).round().clamp(-127, 127).to(torch.int8), state[1].half()
    u8, _ = net._inference(g, (h8, c16), chunk=700, moments=moments)
    torch.testing.assert_close(u8, net._differentiable(g, (h8, c16), moments)[0].detach(), rtol=1e-5, atol=1e-6)
    # the skip matters: the same h with other inputs gives another update
    hidden_only = net.head(torch.cat((h_diff[1], torch.zeros(5000, 4)), -1)).squeeze(-1) * net.config.output_scale
    assert not torch.allclose(hidden_only, u_diff)
    # through a random subset of the coordinates the values are the same, and the head trains
    _, _, sub = _full_and_subset_updates(net)
    sub[0].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.head.parameters())
    assert net.lstm.weight_ih_l0.grad.abs().sum() > 0


def test_head_config_is_checked_and_old_configs_keep_the_linear_head():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="head_hidden"):
            LSTMOptimizerConfig(head_hidden=bad)
    net = LSTMOptimizerNet(LSTMOptimizerConfig.from_dict({"hidden_size": 20, "num_layers": 2}))
    assert isinstance(net.head, torch.nn.Linear) and net.head.in_features == 20


@pytest.mark.parametrize("n", [10_001, 2_800])
def test_inputs_computed_per_block_give_the_update_of_inputs_per_chunk(monkeypatch, n):
    """The inference path computes the inputs for blocks of whole chunks and slices each chunk's
    rows from them; several blocks, a last block and chunk cut short, and per-coordinate level inputs
    must give what inputs computed chunk by chunk give, to the bit."""
    from artopt.learned_optimizers import network

    torch.manual_seed(0)
    net = LSTMOptimizerNet(moment_inputs=True, level_inputs=True)
    g = torch.randn(n) * torch.logspace(-8, 0, n)[torch.randperm(n)]
    m, v = net.update_moments(g, None)
    moments = (m.bfloat16(), v.bfloat16())
    level = torch.randint(0, LEVEL_INPUTS, (n,))
    state = (torch.randint(-127, 128, (2, n, 20), dtype=torch.int8), torch.randn(2, n, 20).half())
    monkeypatch.setattr(network, "FEATURE_BLOCK", 3000)  # blocks of 4 chunks of 700
    u_block, (h_block, c_block) = net._inference(g, state, chunk=700, moments=moments, level=level)
    monkeypatch.setattr(network, "FEATURE_BLOCK", 1)  # each chunk its own block
    u_chunk, (h_chunk, c_chunk) = net._inference(g, state, chunk=700, moments=moments, level=level)
    assert torch.equal(u_block, u_chunk) and torch.equal(h_block, h_chunk) and torch.equal(c_block, c_chunk)
    # and the blocks read the right rows: each coordinate's update is its own
    perm = torch.randperm(n)
    u_perm, _ = net._inference(g[perm], (state[0][:, perm], state[1][:, perm]), chunk=700,
                               moments=(moments[0][perm], moments[1][perm]), level=level[perm])
    torch.testing.assert_close(u_perm, u_chunk[perm])


@pytest.mark.parametrize("n", [0, 1, 5, 64, 100, 257])
def test_inference_equals_the_differentiable_path_for_any_chunking(n):
    """Chunks that divide n, that do not, larger than n, of 1; n = 0 and 1; fp32 state to rounding,
    reduced-precision state keeping its dtypes."""
    torch.manual_seed(0)
    net = LSTMOptimizerNet(moment_inputs=True, head_hidden=8)
    g = torch.randn(n) * torch.logspace(-6, 1, n)
    moments = net.update_moments(g, None)
    state = (torch.randn(2, n, 20) * 0.5, torch.randn(2, n, 20))
    u_d, (h_d, c_d) = net._differentiable(g, state, moments)
    for chunk in (1, 7, 64, 100, 1000):
        u, (h, c) = net._inference(g, state, chunk=chunk, moments=moments)
        torch.testing.assert_close(u, u_d.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(h, h_d.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c, c_d.detach(), rtol=1e-5, atol=1e-6)
        _, (h16, c16) = net._inference(g, (state[0].half(), state[1].bfloat16()), chunk=chunk, moments=moments)
        assert h16.dtype == torch.float16 and c16.dtype == torch.bfloat16


def test_a_state_or_gradient_of_the_wrong_shape_is_refused():
    """A state for more coordinates than the gradient came back from the no-grad path with its extra
    rows uninitialised (torch.empty); a 2-D gradient or a chunk of 0 or less failed obscurely or
    returned uninitialised updates."""
    net = LSTMOptimizerNet()
    for grad_enabled in (False, True):
        with torch.set_grad_enabled(grad_enabled):
            with pytest.raises(ValueError, match=r"state h has shape \(2, 6, 20\).*\(2, 4, 20\)"):
                net(torch.randn(4), net.init_state(6))
            with pytest.raises(ValueError, match="state c"):
                net(torch.randn(4), (net.init_state(4)[0], torch.zeros(2, 4, 10)))
            with pytest.raises(ValueError, match=r"flat gradient of shape \(N,\), got \(2, 3\)"):
                net(torch.randn(2, 3), net.init_state(6))
            with pytest.raises(ValueError, match="dtypes"):
                net(torch.randn(4), (net.init_state(4)[0], torch.zeros(2, 4, 20, dtype=torch.int8)))
    moody = LSTMOptimizerNet(moment_inputs=True)
    g = torch.randn(5)
    m, v = moody.update_moments(g, None)
    with pytest.raises(ValueError, match="moment v"):
        moody(g, moody.init_state(5), (m, v[:4]))
    for chunk in (0, -3, 2.5):
        with pytest.raises(ValueError, match="chunk"):
            net._inference(g, net.init_state(5), chunk=chunk)


@pytest.mark.parametrize("field, value", [
    ("preprocess", "false"), ("moment_inputs", 1), ("output_scale", "0.1"), ("output_scale", float("nan")),
    ("p", float("inf")), ("p", 0.0), ("beta1", None), ("hidden_size", True), ("hidden_size", 20.0), ("num_layers", "2"),
])
def test_config_values_of_the_wrong_type_are_refused_naming_the_field(field, value):
    """The string "false" for preprocess was truthy and ran as True; a string output_scale failed only
    at the first step; p = inf gave NaN features."""
    with pytest.raises(ValueError, match=field):
        LSTMOptimizerConfig(**{field: value})
    LSTMOptimizerConfig(p=10, output_scale=1, beta1=0)  # whole numbers are numbers


def test_learned_update_takes_an_empty_parameter_with_or_without_a_meta_fraction():
    """A parameter of 0 coordinates got a 1-coordinate subset state (refused since states are checked)."""
    nets = torch.nn.ModuleDict({"default": LSTMOptimizerNet()})
    for fraction in (1.0, 0.5):
        new, states = learned_update(nets, [torch.zeros(0)], [torch.zeros(0)], ["default"], {}, fraction,
                                     torch.Generator().manual_seed(0))
        assert new[0].shape == (0,) and states["default"][0].shape == (2, 0, 20)


def test_global_cells_carry_the_mean_over_coordinates_and_the_paths_agree():
    torch.manual_seed(0)
    net = LSTMOptimizerNet(moment_inputs=True, global_cells=4)
    plain = LSTMOptimizerNet(moment_inputs=True)
    plain.load_state_dict(net.state_dict())
    n = 5000
    g = torch.randn(n) * torch.logspace(-6, 0, n)
    moments = net.update_moments(g, None)
    state = (torch.randn(2, n, 20) * 0.5, torch.randn(2, n, 20))
    u, (h, c) = net(g, state, moments)
    u_plain, (h_plain, c_plain) = plain(g, state, moments)
    # this step's update and cells are a plain LSTM's; the carried h of the last 4 units is their mean
    torch.testing.assert_close(u, u_plain)
    torch.testing.assert_close(c, c_plain)
    torch.testing.assert_close(h[:, :, :16], h_plain[:, :, :16])
    torch.testing.assert_close(h[:, :, 16:], h_plain[:, :, 16:].mean(1, keepdim=True).expand(-1, n, -1))
    torch.testing.assert_close(net.global_means(h), h_plain[:, :, 16:].mean(1).detach())
    # the chunked no-grad path computes the same, for fp32 and int8 h
    u_fast, (h_fast, c_fast) = net._inference(g, state, chunk=700, moments=moments)
    torch.testing.assert_close(u_fast, u.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_fast, h.detach(), rtol=1e-5, atol=1e-5)
    h8 = (state[0] * 127).round().clamp(-127, 127).to(torch.int8)
    _, (h8_out, _) = net._inference(g, (h8, state[1].half()), chunk=700, moments=moments)
    _, (h8_ref, _) = net._differentiable(g, (h8, state[1].half()), moments)
    assert (h8_out[:, :, 16:] == h8_out[:, :1, 16:]).all()  # one value per unit
    torch.testing.assert_close(h8_out.float()[:, :, 16:] / 127, h8_ref.detach()[:, :, 16:], rtol=0, atol=1 / 127 + 1e-6)
    # the carried value is the mean of the stored steps rounded to the nearest step, not truncated toward 0
    _, (h8_plain, _) = plain._inference(g, (h8, state[1].half()), chunk=700, moments=moments)
    assert torch.equal(h8_out[:, :, 16:].float(), h8_plain[:, :, 16:].float().mean(1, keepdim=True).round().expand(-1, n, -1))


def test_global_cells_let_one_coordinate_hear_the_others():
    """With global cells, a coordinate's second update depends on the other coordinates' first
    gradients; without them it does not."""
    torch.manual_seed(0)
    for k, coupled in ((0, False), (5, True)):
        net = LSTMOptimizerNet(global_cells=k)
        updates = []
        for first_scale in (1e-4, 1.0):
            g1 = torch.full((50,), first_scale)
            g1[0] = 0.01  # coordinate 0 sees the same gradients both times
            _, state = net._inference(g1, net.init_state(50))
            u, _ = net._inference(torch.full((50,), 0.01), state)
            updates.append(u[0])
        assert (not torch.allclose(updates[0], updates[1])) == coupled


def test_global_cells_train_through_a_subset_and_are_checked():
    torch.manual_seed(0)
    net = LSTMOptimizerNet(global_cells=4)
    states_full, states_sub, sub = _full_and_subset_updates(net)
    # the subset's carried global cells are the mean over all 300 coordinates
    torch.testing.assert_close(states_sub["default/meta_state"][0][:, :, 16:].detach(),
                               states_full["default"][0][:, :30, 16:].detach())
    sub[0].sum().backward()
    assert net.lstm.weight_hh_l0.grad[:, 16:].abs().sum() > 0  # the carried means are read, and trained
    assert net.lstm.weight_ih_l0.grad[76:80].abs().sum() > 0  # the global cells' own output gates (o: rows 60-79)
    for bad in (-1, 21, 1.5, True):
        with pytest.raises(ValueError, match="global_cells"):
            LSTMOptimizerConfig(global_cells=bad)
    assert LSTMOptimizerConfig.from_dict({"hidden_size": 20}).global_cells == 0  # files from before


def test_global_cells_pass_meta_gradient_between_coordinates():
    """On the differentiable path the carried mean is not detached: coordinate 0's second update
    depends (in autograd) on the other coordinates' first-step state; without global cells it does not."""
    for k, coupled in ((0, False), (4, True)):
        torch.manual_seed(0)
        net = LSTMOptimizerNet(global_cells=k)
        n = 6
        h0 = torch.zeros(2, n, 20, requires_grad=True)
        c0 = torch.randn(2, n, 20)
        _, state = net(torch.randn(n), (h0, c0))
        u, _ = net(torch.randn(n), state)
        (d_h0,) = torch.autograd.grad(u[0], h0)
        assert (d_h0[:, 1:].abs().sum() > 0).item() == coupled


def test_learned_update_keeps_the_first_gradients_rms_scale():
    """first_rms divides every gradient of a run by the RMS of its first one, as LearnedOptimizer does:
    meta-training that renormalised each step trained a network for inputs inference never gives it."""
    nets = torch.nn.ModuleDict({"default": LSTMOptimizerNet(grad_normalization="first_rms")})
    params = [torch.zeros(5)]
    _, states = learned_update(nets, params, [torch.full((5,), 2.0)], ["default"], {})
    assert float(states["default/grad_scale"]) == pytest.approx(0.5)
    small, small_states = learned_update(nets, params, [torch.full((5,), 0.01)], ["default"], dict(states))
    assert float(small_states["default/grad_scale"]) == pytest.approx(0.5)
    # the second step sees how much the gradient shrank: 100x smaller gradients give another update
    large, _ = learned_update(nets, params, [torch.full((5,), 1.0)], ["default"], dict(states))
    assert not torch.allclose(small[0], large[0])
