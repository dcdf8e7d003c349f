"""The learned optimizer and the stylize engine on a CUDA GPU.

Skipped where there is no GPU (CI has none); run them on a GPU machine with
``python -m pytest -q tests/test_cuda.py``.  Each compares the GPU against the CPU result of the
same computation, so a device-specific bug (a tensor left on the wrong device, a path that only
the CPU takes) shows up as a failure or a mismatch.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from artopt.learned_optimizers import LearnedOptimizer, LSTMOptimizerNet, load_learned, save_learned
from artopt.learned_optimizers.shipped import NEURAL_ART, weights_path

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_inference_on_cuda_matches_the_cpu(dtype):
    torch.manual_seed(0)
    net = LSTMOptimizerNet()
    n = 50_000
    g = torch.randn(n) * torch.logspace(-8, 2, n)
    state = tuple((torch.randn(2, n, 20) * 0.5).to(dtype) for _ in range(2))
    with torch.no_grad():
        u_cpu, (h_cpu, c_cpu) = net(g, state)
        net_gpu = copy.deepcopy(net).cuda()
        u_gpu, (h_gpu, c_gpu) = net_gpu(g.cuda(), tuple(s.cuda() for s in state))
        u_chunked, _ = net_gpu._inference(g.cuda(), tuple(s.cuda() for s in state), chunk=7_000)
    assert u_gpu.is_cuda and h_gpu.dtype == c_gpu.dtype == dtype
    torch.testing.assert_close(u_chunked, u_gpu)  # big images go through in chunks
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(u_gpu.cpu(), u_cpu, **tol)
    torch.testing.assert_close(h_gpu.cpu().float(), h_cpu.float(), **tol)
    torch.testing.assert_close(c_gpu.cpu().float(), c_cpu.float(), **tol)


def test_learned_optimizer_trains_on_cuda_and_its_state_moves_to_the_cpu(tmp_path):
    torch.manual_seed(0)
    path = save_learned(tmp_path / "o.safetensors", {"default": LSTMOptimizerNet()})
    model = nn.Linear(4, 2).cuda()
    x = torch.randn(16, 4, device="cuda")
    opt = LearnedOptimizer(model.parameters(), weights=path)

    def closure_for(m, o, inputs):
        def closure():
            o.zero_grad()
            loss = m(inputs).pow(2).mean()
            loss.backward()
            return loss
        return closure

    for _ in range(3):
        opt.step(closure_for(model, opt, x))
    p0 = next(iter(model.parameters()))
    assert opt.state[p0]["h"].is_cuda and opt.state[p0]["h"].abs().sum() > 0

    saved = copy.deepcopy(opt.state_dict())
    cpu_model = copy.deepcopy(model).cpu()
    opt.step(closure_for(model, opt, x))
    # The same step on the CPU, from the state the GPU run saved.
    cpu_opt = LearnedOptimizer(cpu_model.parameters(), weights=path)
    cpu_opt.load_state_dict(saved)
    assert not cpu_opt.state[next(iter(cpu_model.parameters()))]["h"].is_cuda
    cpu_opt.step(closure_for(cpu_model, cpu_opt, x.cpu()))
    for got, want in zip(cpu_model.parameters(), model.parameters()):
        torch.testing.assert_close(got.detach(), want.detach().cpu(), rtol=1e-4, atol=1e-5)


def test_non_finite_gradient_never_reaches_a_cuda_parameter():
    p = nn.Parameter(torch.zeros(4, device="cuda"))
    opt = LearnedOptimizer([p], weights=weights_path(NEURAL_ART), state_dtype=torch.float16)
    p.grad = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0], device="cuda")
    opt.step()
    assert torch.isfinite(p).all() and p[:3].eq(0).all() and p[3] != 0
    assert "non-finite" in opt.last_notice


def test_parameters_on_two_devices_are_refused_before_anything_moves():
    p, q = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3, device="cuda"))
    opt = LearnedOptimizer([{"params": [p]}, {"params": [q]}], nets={"default": LSTMOptimizerNet()})
    p.grad, q.grad = torch.ones(3), torch.ones(3, device="cuda")
    with pytest.raises(ValueError, match="one device at a time"):
        opt.step()
    assert next(opt.nets.parameters()).device.type == "cpu"


def test_shipped_weights_load_onto_the_gpu():
    nets = load_learned(weights_path(NEURAL_ART), device="cuda")
    assert all(p.is_cuda for net in nets.values() for p in net.parameters())


@pytest.mark.parametrize("optimizer, extra", [("lstm", {}), ("adam", {}),
                                              ("lstm", {"size": 256, "pyramid": True, "adam_levels": 2})])  # (LevelSplit)
def test_stylize_on_cuda_follows_the_cpu_run(optimizer, extra):
    from pathlib import Path

    from artopt.style.engine import StylizeConfig, stylize
    from artopt.style.images import load_image, pil_to_tensor, resize_long_side

    assets = Path(__file__).resolve().parents[1] / "assets"
    content = resize_long_side(pil_to_tensor(load_image(assets / "photos" / "chelsea.jpg")), 96)
    style = resize_long_side(pil_to_tensor(load_image(assets / "styles" / "starry_night.jpg")), 96)
    finals = {}
    for device in ("cpu", "cuda"):
        infos = []
        config = StylizeConfig(**{"size": 96, "steps": 12, "optimizer": optimizer, "device": device,
                                  "loss_net": "efficientnet-lite0", **extra})
        out = stylize(content, [style], config, callback=infos.append)
        assert out.device.type == "cpu" and torch.isfinite(out).all()
        assert infos[-1].losses["total"] < 0.9 * infos[0].losses["total"]
        finals[device] = infos[-1].losses["total"]
    # Float rounding differs between the devices (cuDNN kernels, fused ops): close, not identical.
    assert finals["cuda"] == pytest.approx(finals["cpu"], rel=0.03)
