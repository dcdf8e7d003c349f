"""The stylize engine on small images: every optimizer lowers the loss, pyramid, colours, seeds."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time

import pytest
import torch
import torch.nn.functional as F

from pathlib import Path

from artopt.style import engine
from artopt.style.images import load_image, pil_to_tensor, resize_long_side
from artopt.style.engine import StylizeConfig, pyramid_sizes, resolve_device, rgb_to_ycbcr, split_steps, stylize


def _image(seed: int, height=48, width=64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 8, generator=g)
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)


ASSETS = Path(__file__).resolve().parents[1] / "assets"
# Shipped public-domain examples, shrunk: real textures make the losses behave as in real use.
CONTENT = resize_long_side(pil_to_tensor(load_image(ASSETS / "photos" / "chelsea.jpg")), 64)  # 43x64
STYLE = resize_long_side(pil_to_tensor(load_image(ASSETS / "styles" / "starry_night.jpg")), 64)


def _config(**overrides) -> StylizeConfig:
    base = dict(size=64, steps=6, optimizer="adam", device="cpu", loss_net="efficientnet-lite0")
    base.update(overrides)
    return StylizeConfig(**base)


def _count_style_losses(monkeypatch) -> list:
    """A list that gets an entry each time the engine builds a StyleLoss (a scale's targets)."""
    from artopt.style import losses

    built = []
    real_init = losses.StyleLoss.__init__
    monkeypatch.setattr(losses.StyleLoss, "__init__", lambda self, *a, **k: built.append(1) or real_init(self, *a, **k))
    return built

def _run(config: StylizeConfig, **kwargs):
    return _run_on(CONTENT, config, **kwargs)


def _run_on(content, config: StylizeConfig, **kwargs):
    infos = []
    out = stylize(content, [STYLE], config, callback=infos.append, **kwargs)
    return out, infos


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs", "sgd", "rmsprop", "nag"])
def test_every_optimizer_lowers_the_loss(optimizer):
    out, infos = _run(_config(optimizer=optimizer, steps=8))
    assert out.shape == (1, 3, 43, 64) and 0 <= out.min() and out.max() <= 1
    assert infos[-1].step >= 8
    assert infos[-1].losses["total"] < 0.9 * infos[0].losses["total"], optimizer


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop", "nag"])
def test_a_baseline_on_the_multiscale_basis_lowers_the_loss_its_own_way(optimizer):
    """basis="multiscale": the optimizer moves the basis's coefficients (its first step already differs
    from the pixel one), says so in the first notice, and still lowers the loss."""
    pixels, pixel_infos = _run(_config(optimizer=optimizer, steps=8))
    multi, infos = _run(_config(optimizer=optimizer, steps=8, basis="multiscale"))
    assert infos[0].notice.endswith(f"optimizer: {optimizer} on the multi-scale basis")
    assert "multi-scale" not in pixel_infos[0].notice
    assert infos[0].losses == pixel_infos[0].losses  # the same start
    assert infos[1].losses["total"] != pixel_infos[1].losses["total"]
    assert infos[-1].losses["total"] < 0.9 * infos[0].losses["total"]
    assert multi.shape == pixels.shape and 0 <= multi.min() and multi.max() <= 1


def test_the_multiscale_basis_has_its_own_default_rates():
    """A coarse coefficient moves a whole neighbourhood, so each baseline has a default rate on the
    basis that differs from its pixel one; an explicit lr still wins."""
    image = torch.zeros(1, 3, 32, 32, requires_grad=True)
    for name in ("adam", "sgd", "rmsprop", "nag"):
        default = engine.resolve_lr(name, basis="multiscale", pixels=32 * 32)
        assert default != engine.resolve_lr(name, pixels=32 * 32)
        assert engine._make_optimizer(name, image, None, basis="multiscale").inner.param_groups[0]["lr"] == default
        assert engine._make_optimizer(name, image, 0.1, basis="multiscale").inner.param_groups[0]["lr"] == 0.1
    baselines = set(engine.OPTIMIZERS) - {"auto", "lbfgs", "lstm"}
    assert set(engine.STYLIZE_LR_MULTISCALE) | set(engine.STYLIZE_LR_PER_PIXEL["multiscale"]) == baselines


@pytest.mark.parametrize("basis", engine.BASES)
def test_sgd_and_nag_default_rates_follow_the_pixel_count(basis):
    """Their steps are the raw gradient times the rate, and the gradient shrinks with the pixel count
    (the losses are means): the default rate is per pixel of the image (each pyramid scale its own);
    an explicit lr is taken as given."""
    for name in ("sgd", "nag"):
        rates = [getattr(opt, "inner", opt).param_groups[0]["lr"] for opt in
                 (engine._make_optimizer(name, torch.zeros(1, 3, h, w, requires_grad=True), None, basis=basis)
                  for h, w in ((32, 48), (64, 96)))]
        assert rates[0] == pytest.approx(engine.STYLIZE_LR_PER_PIXEL[basis][name] * 32 * 48)
        assert rates[1] == pytest.approx(4 * rates[0])
        assert engine.resolve_lr(name, 0.3, basis=basis) == 0.3
        with pytest.raises(ValueError, match="per pixel"):
            engine.resolve_lr(name, basis=basis)


def test_the_basis_setting_is_checked():
    with pytest.raises(ValueError, match="lbfgs runs on the pixels only"):
        _config(optimizer="lbfgs", basis="multiscale").validated()
    with pytest.raises(ValueError, match="basis must be one of pixels, multiscale"):
        _config(basis="wavelets").validated()


def test_lbfgs_steps_count_loss_evaluations(monkeypatch):
    _, infos = _run(_config(optimizer="lbfgs", steps=10))
    steps = [i.step for i in infos]
    assert steps == sorted(steps) and steps[-1] >= 10
    # its line search is held to what is left of the budget: one evaluation past it at most (a step
    # takes two); with up to 27 a step, a noise start used 7 for a budget of 1, and a coarse scale 27 of 4
    for budget in (1, 2, 4):
        _, infos = _run(_config(optimizer="lbfgs", steps=budget, init="noise"))
        assert budget <= infos[-1].step <= max(2, budget + 1)
    monkeypatch.setattr(engine, "PYRAMID_BASE", 32)
    infos = []
    stylize(_image(4, 96, 128), [STYLE], _config(size=128, steps=6, pyramid=True, optimizer="lbfgs", init="noise"),
            callback=infos.append)
    assert max(i.step for i in infos if i.scale_index == 0) <= 5 and infos[-1].step <= 7  # split [4, 2]



def test_an_overshoot_at_one_scale_comes_off_the_next(monkeypatch):
    class ThreeEvaluations(torch.optim.SGD):  # as an L-BFGS iteration whose line search takes three
        def step(self, closure):
            for _ in range(3):
                closure()
            return super().step()

    monkeypatch.setattr(engine, "PYRAMID_BASE", 32)
    monkeypatch.setattr(engine, "_make_optimizer", lambda name, image, *a: ThreeEvaluations([image], lr=0.01))
    # scales 32, 64 and 128 px, split_steps(7, 3) == [5, 1, 1]: the coarse scale ended at 6, and each
    # finer scale then added its own step's overshoot (12 in all)
    infos = []
    stylize(_image(6, 128, 128), [STYLE], _config(size=128, steps=7, pyramid=True), callback=infos.append)
    assert [(i.scale_index, i.step) for i in infos] == [(0, 3), (0, 6), (2, 9)]  # only the last step went past 7


def test_lbfgs_evaluates_each_point_once_and_runs_unconstrained_within_a_scale(monkeypatch):
    from artopt.style import losses

    seen = []
    forward = losses.StyleLoss.forward
    monkeypatch.setattr(losses.StyleLoss, "forward", lambda self, image: seen.append(image.detach().clone())
                        or forward(self, image))
    infos = []
    out = stylize(CONTENT, [STYLE], _config(optimizer="lbfgs", steps=12), callback=infos.append)
    evaluated = seen[:-1]  # the last: final_losses, of the returned image
    assert len(evaluated) == infos[-1].step >= 12
    assert all(not torch.equal(a, b) for a, b in itertools.combinations(evaluated, 2))  # was every point twice
    assert 0 <= out.min() and out.max() <= 1 and torch.equal(seen[-1], out)  # clamped when the scale ended
    assert infos[-1].final_losses["total"] < infos[0].losses["total"]


def test_the_last_step_reports_the_losses_of_the_image_the_run_ends_with():
    for optimizer in ("adam", "lstm"):
        _, short = _run(_config(optimizer=optimizer, steps=3))
        _, longer = _run(_config(optimizer=optimizer, steps=4))
        # a step's losses are of the image before its update; the extra evaluation is of the image after
        assert short[-1].final_losses == longer[-1].losses and short[-1].losses == longer[-2].losses
        assert short[-1].final_losses["total"] < short[-1].losses["total"]
        assert all(i.final_losses is None for i in short[:-1])
    assert stylize(CONTENT, [STYLE], _config(steps=0)).shape == CONTENT.shape  # no steps, nothing to report


def test_no_default_rate_is_a_value_error():
    for name, basis in (("lbfgs", "multiscale"), ("auto", "pixels")):
        with pytest.raises(ValueError, match=f"no default learning rate for '{name}'"):
            engine.resolve_lr(name, basis=basis)

def test_a_content_image_too_elongated_for_the_size_says_what_would_work():
    strip = torch.rand(1, 3, 10, 200)  # 31.5 px high, rounded to 32, at a 630 px long side
    with pytest.raises(ValueError, match="needs at least 32: choose an output size of at least 630 px"):
        stylize(strip, [STYLE], _config(size=64, steps=1))
    assert resize_long_side(strip, 630).shape[-2] == 32 and resize_long_side(strip, 629).shape[-2] == 31
    with pytest.raises(ValueError, match="crop the photo: its long side is 1000x its short side"):
        stylize(torch.rand(1, 3, 1, 1000), [STYLE], _config(size=64, steps=1))


def test_the_size_advice_stays_within_the_callers_largest_size():
    from artopt.style.engine import content_size_problem

    assert content_size_problem((40, 1000), 788, 32, "net") is None  # 31.52 px high at 788 px: 32, fits
    assert content_size_problem((40, 1000), 787, 32, "net") is not None
    assert content_size_problem((40, 1000), 256, 32, "net").endswith("choose an output size of at least 788 px")
    # the advice is the smallest size that works, for any shape (it said 34 px for 31 x 32, where 33 works)
    for hw in [(31, 32), (10, 200), (33, 100), (7, 61), (100, 999)]:
        needed = int(content_size_problem(hw, 32, 32, "net").split("at least ")[-1].split(" px")[0])
        assert content_size_problem(hw, needed, 32, "net") is None
        assert content_size_problem(hw, needed - 1, 32, "net") is not None
    advice = content_size_problem((40, 1000), 256, 32, "net", max_size=512)  # e.g. the web page's limit
    assert advice.endswith("crop the photo: its long side is 25x its short side, too elongated even at 512 px")


def test_pyramid_gives_requested_size_and_aspect(monkeypatch):
    monkeypatch.setattr(engine, "PYRAMID_BASE", 32)
    assert pyramid_sizes(128, True) == [32, 64, 128]
    assert pyramid_sizes(128, False) == [128]
    content = _image(2, 90, 60)  # portrait 2:3
    infos = []
    out = stylize(content, STYLE, _config(size=150, steps=6, pyramid=True), callback=infos.append)
    assert out.shape[-2:] == (150, 100)
    assert [i.n_scales for i in infos][0] >= 2
    assert infos[-1].scale_index == infos[-1].n_scales - 1 and infos[-1].size == (150, 100)
    assert sum(split_steps(6, 3)) == 6
    monkeypatch.undo()
    # Explicitly on: at least two scales (down to PYRAMID_MIN_COARSE); auto: one scale up to 383 px.
    assert pyramid_sizes(256, True) == [128, 256] and pyramid_sizes(256, None) == [256]
    assert pyramid_sizes(383, None) == [383] and pyramid_sizes(384, None) == [192, 384]
    assert engine.min_coarse_to_fine_size() == engine.PYRAMID_AUTO_ABOVE + 1  # the constant says what happens
    assert pyramid_sizes(512, True) == [256, 512] == pyramid_sizes(512, None)
    assert pyramid_sizes(255, True) == [255]  # the coarse scale would be under PYRAMID_MIN_COARSE


def test_edge_pad_reaches_the_loss():
    """The mirrored border (on by default) changes what the loss network sees, so the loss."""
    assert StylizeConfig().edge_pad == 8
    _, padded = _run(_config(steps=1))
    _, plain = _run(_config(steps=1, edge_pad=0))
    assert padded[0].losses["total"] != plain[0].losses["total"]


def test_keep_colors_keeps_content_chroma():
    out, _ = _run(_config(keep_colors=True, steps=5))
    chroma_out = rgb_to_ycbcr(out)[:, 1:]
    chroma_content = rgb_to_ycbcr(CONTENT)[:, 1:]
    plain, _ = _run(_config(steps=5))
    assert (chroma_out - chroma_content).abs().mean() < 0.01  # only clamping to [0,1] may move it
    assert (rgb_to_ycbcr(plain)[:, 1:] - chroma_content).abs().mean() > 0.01  # without it colours change
    assert (rgb_to_ycbcr(out)[:, :1] - rgb_to_ycbcr(CONTENT)[:, :1]).abs().mean() > 0.005  # luminance is stylized


def test_same_seed_same_image_and_different_seed_different_image():
    a, _ = _run(_config(init="noise", seed=3, steps=3))
    b, _ = _run(_config(init="noise", seed=3, steps=3))
    c, _ = _run(_config(init="noise", seed=4, steps=3))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_callback_images_and_stop():
    out, infos = _run(_config(steps=6), image_every=2)
    assert [i.image is not None for i in infos] == [False, True, False, True, False, True]
    assert infos[0].notice and "efficientnet-lite0" in infos[0].notice
    assert torch.equal(infos[-1].image, out)
    infos = []
    out = stylize(CONTENT, [STYLE], _config(steps=50), callback=infos.append, should_stop=lambda: len(infos) >= 3)
    assert infos[-1].step == 3 and out.shape == (1, 3, 43, 64)


def test_lbfgs_gives_an_image_at_the_first_step_past_each_multiple():
    # an L-BFGS step counts several loss evaluations: "done % image_every == 0" passed multiples over
    out, infos = _run(_config(optimizer="lbfgs", steps=20), image_every=5)
    steps = [i.step for i in infos]
    shown = {i.step for i in infos if i.image is not None}
    assert any(b - a > 1 for a, b in zip([0] + steps, steps))  # some steps counted several evaluations
    for k in range(1, steps[-1] // 5 + 1):
        assert next(s for s in steps if s >= 5 * k) in shown, (k, steps, shown)


def test_the_last_steps_image_is_the_returned_one_when_the_finer_scale_gets_no_steps(monkeypatch):
    monkeypatch.setattr(engine, "PYRAMID_BASE", 32)
    content = _image(5, 96, 128)
    infos = []
    out = stylize(content, [STYLE], _config(size=128, steps=2, pyramid=True), callback=infos.append)
    assert infos[-1].size != tuple(out.shape[-2:])  # the 2 steps all went to a coarser scale
    assert torch.equal(infos[-1].image, out)  # was that scale's smaller image


def test_a_content_tensor_that_requires_grad_is_taken_without_a_warning():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float() of such a tensor warned
        out = stylize(CONTENT.clone().requires_grad_(), [STYLE.clone().requires_grad_()], _config(steps=0))
    assert torch.equal(out, CONTENT)


def test_numpy_integers_are_integers():
    import numpy as np
    config = _config(size=np.int64(48), steps=np.int32(2), seed=np.int64(3), edge_pad=np.int64(4),
                     handoff_warmup=np.int64(5), adam_levels=np.int64(2)).validated()
    assert (config.size, config.steps, config.seed, config.edge_pad) == (48, 2, 3, 4) and type(config.size) is int
    assert (config.handoff_warmup, config.adam_levels) == (5, 2) and type(config.adam_levels) is int


def test_lstm_without_shipped_weights_is_a_clear_error(monkeypatch):
    from artopt.learned_optimizers import shipped

    monkeypatch.setattr(shipped, "neural_art_available", lambda: False)
    with pytest.raises(ValueError, match="no trained neural-art optimizer is shipped"):
        _run(_config(optimizer="lstm"))
    assert engine.resolve_optimizer("auto", 1024) == "adam"


@pytest.mark.parametrize("scope, expected", [
    (True, ["lstm", "lstm", "lstm", "lstm"]),
    ("always", ["lstm", "lstm", "lstm", "lstm"]),
    # 256 px: one scale unless the pyramid is asked for (then 128 -> 256); 512 off is one scale
    ("coarse-to-fine", ["adam", "lstm", "adam", "lstm"]),
    (False, ["adam", "adam", "adam", "adam"]),
    ("somewhere", ["adam", "adam", "adam", "adam"]),  # an unknown scope never switches the optimizer
])
def test_auto_follows_the_scope_in_the_neural_art_card(monkeypatch, tmp_path, scope, expected):
    from artopt.learned_optimizers import shipped

    (tmp_path / "neural_art.safetensors").write_bytes(shipped.weights_path(shipped.NEURAL_ART).read_bytes())
    (tmp_path / "neural_art.json").write_text(json.dumps({"default_for_stylize": scope}))
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path)
    got = [engine.resolve_optimizer("auto", 256), engine.resolve_optimizer("auto", 512),
           engine.resolve_optimizer("auto", 512, pyramid=False), engine.resolve_optimizer("auto", 256, pyramid=True)]
    assert got == expected
    assert engine.resolve_optimizer("nag", 512) == "nag"


def test_auto_uses_the_learned_optimizer_on_single_scale_outputs_from_the_cards_size(monkeypatch, tmp_path):
    from artopt.learned_optimizers import shipped

    (tmp_path / "neural_art.safetensors").write_bytes(shipped.weights_path(shipped.NEURAL_ART).read_bytes())
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path)
    card = {"default_for_stylize": "coarse-to-fine", "default_single_scale_from": 256}
    (tmp_path / "neural_art.json").write_text(json.dumps(card))
    assert [engine.resolve_optimizer("auto", s, pyramid=False) for s in (128, 255, 256, 300, 512)] == \
        ["adam", "adam", "lstm", "lstm", "lstm"]
    assert engine.resolve_optimizer("auto", 128) == "adam"
    assert engine.resolve_optimizer("auto", 512) == "lstm"  # coarse-to-fine, as before
    for bad in (True, "256", -1, 0, None):  # anything but a positive size leaves single-scale outputs to Adam
        (tmp_path / "neural_art.json").write_text(json.dumps({**card, "default_single_scale_from": bad}))
        assert engine.resolve_optimizer("auto", 300, pyramid=False) == "adam"


def test_divergence_stops_with_last_finite_image(monkeypatch):
    from artopt.style import losses

    real_forward = losses.StyleLoss.forward

    def poisoned(self, image):
        out = real_forward(self, image)
        if poisoned.calls >= 2:
            out["total"] = out["total"] * float("nan")
        poisoned.calls += 1
        return out

    poisoned.calls = 0
    monkeypatch.setattr(losses.StyleLoss, "forward", poisoned)
    out, infos = _run(_config(steps=10, keep_best=False), image_every=1)
    assert torch.isfinite(out).all()
    # the third evaluation diverges: the run stops there with the image of step 2 (the last finite one),
    # neither the start image nor the broken one
    assert [i.step for i in infos] == [1, 2, 3] and "diverged (non-finite loss or image) at step 3;" in infos[-1].notice
    assert torch.equal(out, infos[1].image) and not torch.equal(out, CONTENT)
    # keep_best: that image's own loss is NaN here, so the one of a finite loss comes back (after step 1)
    poisoned.calls = 0
    out, infos = _run(_config(steps=10), image_every=1)
    assert torch.equal(out, infos[0].image) and infos[-1].kept_after == 1
    assert "kept the image after step 1 (the lowest loss at this size; the last step's loss was not finite)" \
        in infos[-1].notice and infos[-1].final_losses["total"] == infos[1].losses["total"]


def test_the_loss_settings_reach_the_loss():
    """Every loss setting of the config (weights, blend weights, style scale, edge pad) is the loss the
    run reports: its first evaluation, at the start image (noise drawn from the seed), is that of a
    StyleLoss built with those settings."""
    from artopt.style.loss_nets import build_loss_net
    from artopt.style.losses import StyleLoss

    other_style = _image(7, 64, 48)
    settings = dict(content_weight=2.0, style_weight=3.0, tv_weight=4.0, style_weights=[1.0, 3.0],
                    style_scale=0.5, edge_pad=4)
    infos = []
    stylize(CONTENT, [STYLE, other_style], _config(steps=1, init="noise", seed=5, **settings), callback=infos.append)
    start = torch.rand(CONTENT.shape, generator=torch.Generator().manual_seed(5))
    expected = StyleLoss(build_loss_net("efficientnet-lite0"), CONTENT, [STYLE, other_style], **settings)(start)
    assert infos[0].losses == pytest.approx({k: float(v) for k, v in expected.items()}, rel=1e-5)
    assert min(infos[0].losses.values()) > 0  # every term counts in the total


def test_finer_pyramid_scales_start_from_the_coarser_result(monkeypatch):
    """Coarse-to-fine: each finer scale starts from the upsampled result of the coarser one, so its first
    Adam step (at most lr per pixel) stays that close to it, not to the content at that size."""
    monkeypatch.setattr(engine, "PYRAMID_BASE", 32)
    content = _image(4, 96, 128)
    infos = []
    stylize(content, [STYLE], _config(size=128, steps=6, pyramid=True), callback=infos.append, image_every=1)
    assert [i.scale_index for i in infos] == [0, 0, 0, 0, 1, 1]  # 64 then 128 px, split_steps(6, 2)
    coarse_end, fine_first = infos[3].image, infos[4].image
    upsampled = F.interpolate(coarse_end, size=fine_first.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
    assert (fine_first - upsampled).abs().max() <= 0.02 + 1e-6  # adam's rate
    assert (fine_first - content).abs().max() > 0.05


def test_coarse_share_sets_the_coarsest_scales_steps(monkeypatch):
    """--coarse-share gives the coarsest scale that share of the budget (at least one step, at most all),
    the finer scales sharing the rest equally; without it the split is the default two thirds."""
    assert split_steps(200, 2) == [134, 66] and split_steps(150, 2) == [100, 50]
    assert split_steps(200, 2, 0.1) == [20, 180] and split_steps(150, 3, 0.1) == [16, 67, 67]
    assert split_steps(10, 2, 0.01) == [1, 9] and split_steps(0, 2, 0.5) == [0, 0] and split_steps(9, 1, 0.5) == [9]
    monkeypatch.setattr(engine, "PYRAMID_BASE", 32)
    content = _image(4, 96, 128)
    infos = []
    stylize(content, [STYLE], _config(size=128, steps=6, pyramid=True, coarse_share=0.2), callback=infos.append)
    assert [i.scale_index for i in infos] == [0, 1, 1, 1, 1, 1]  # 64 then 128 px, split_steps(6, 2, 0.2)
    infos.clear()
    stylize(content, [STYLE], _config(size=128, steps=2, pyramid=False, coarse_share=0.2), callback=infos.append)
    assert "coarse share 0.2 is for coarse-to-fine runs" in infos[0].notice


@pytest.mark.parametrize("bad, message", [
    (dict(size=8), "size"), (dict(steps=-1), "steps"), (dict(optimizer="magic"), "unknown optimizer"),
    (dict(lr=0.0), "learning rate"), (dict(style_weight=float("nan")), "style weight"),
    (dict(style_weight=1e300), "style weight must be between 0 and 1e"), (dict(tv_weight=-1.0), "tv weight"),
    (dict(init="zeros"), "init"), (dict(loss_net="resnet"), "loss network"), (dict(device="tpu"), "device"),
    (dict(style_weights=[1.0, 2.0]), "style weights"), (dict(style_scale=0), "style scale"),
    (dict(edge_pad=-1), "edge pad"), (dict(coarse_share=1.0), "coarse share"), (dict(coarse_share=0), "coarse share"),
    (dict(coarse_share="0.2"), "coarse share"), (dict(coarse_share=True), "coarse share"),
])
def test_bad_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        _run(_config(**bad))


def test_names_are_case_insensitive():
    out_upper, _ = _run(_config(init="Noise", optimizer="ADAM", steps=1))
    out_lower, _ = _run(_config(init="noise", optimizer="adam", steps=1))
    assert torch.equal(out_upper, out_lower)


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        stylize(torch.full((1, 3, 40, 40), float("nan")), [STYLE], _config())
    with pytest.raises(ValueError, match="shape"):
        stylize(torch.rand(2, 3, 40, 40), [STYLE], _config())
    with pytest.raises(ValueError, match="needs at least"):
        stylize(_image(5, 10, 200), [STYLE], _config(size=64))
    with pytest.raises(ValueError, match="empty"):
        stylize(torch.rand(1, 3, 0, 40), [STYLE], _config())
    with pytest.raises(ValueError, match=r"floats in \[0, 1\], got torch.uint8 .*/ 255"):
        stylize(torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8), [STYLE], _config())
    with pytest.raises(ValueError, match="floats"):
        stylize(torch.rand(1, 3, 40, 40, dtype=torch.complex64), [STYLE], _config())
    with pytest.raises(ValueError, match=r"style image values must lie in \[0, 1\], got 0 to 255"):
        stylize(torch.rand(1, 3, 40, 40), [torch.rand(1, 3, 40, 40) * 0 + torch.tensor([0.0, 255.0, 9.0]).view(1, 3, 1, 1)],
                _config())


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")


def test_lstm_sees_gradients_rescaled_to_its_training_resolution(monkeypatch):
    import artopt.learned_optimizers.shipped as shipped

    assert engine.lstm_input_scale(torch.zeros(1, 3, 128, 256), 64 * 64) == 8.0
    assert engine.lstm_input_scale(torch.zeros(1, 3, 64, 64), 64 * 64) == 1.0
    assert engine.lstm_input_scale(torch.zeros(1, 3, 128, 256), None) == 1.0  # an older card: no rescaling
    monkeypatch.setattr(shipped, "trained_pixels", lambda weights: None)
    opt = engine._make_optimizer("lstm", torch.zeros(1, 3, 32, 32, requires_grad=True), None)
    assert getattr(opt, "inner", opt).input_scale == 1.0  # the learned optimizer, in either basis


def test_lstm_runs_with_the_inference_settings_its_card_records(monkeypatch, tmp_path):
    """The card's calibrated update multiplier and coarsest level; an explicit lr overrides the multiplier."""
    from artopt.learned_optimizers import shipped

    (tmp_path / "neural_art.safetensors").write_bytes(shipped.weights_path(shipped.NEURAL_ART).read_bytes())
    card = {"basis": {"kind": "multiscale", "levels": 4}, "trained_pixels": 64 * 64}
    (tmp_path / "neural_art.json").write_text(json.dumps(card))
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path)
    image = torch.zeros(1, 3, 64, 128, requires_grad=True)
    opt = engine._make_optimizer("lstm", image, None)
    assert opt.inner.param_groups[0]["lr"] == 1.0 and [z.shape[-2] for z in opt.coefficients[0]] == [64, 32, 16, 8]
    (tmp_path / "neural_art.json").write_text(json.dumps({**card, "inference": {"lr": 1.25, "coarsest": 2}}))
    opt = engine._make_optimizer("lstm", image, None)
    assert opt.inner.param_groups[0]["lr"] == 1.25 and [z.shape[-2] for z in opt.coefficients[0]] == [64, 32, 16, 8, 4, 2]
    assert engine._make_optimizer("lstm", image, 0.5).inner.param_groups[0]["lr"] == 0.5


def test_lstm_weights_option_runs_the_given_weights(tmp_path):
    """--lstm-weights (and the programmatic lstm_setup) run that file, not the shipped one: a network
    whose output is scaled to zero never moves the image, the shipped one lowers the loss."""
    from artopt.learned_optimizers import LSTMOptimizerNet, save_learned
    from artopt.learned_optimizers.shipped import learned_setup

    frozen = save_learned(tmp_path / "frozen.safetensors", {"default": LSTMOptimizerNet(output_scale=0.0)})
    with pytest.raises(ValueError, match="has no card"):  # it would run blind to its basis and crop size
        _config(optimizer="lstm", steps=1, lstm_weights=str(frozen)).validated()
    assert learned_setup(frozen, basis="pixels").basis == "pixels"  # unless the caller names the basis
    frozen.with_suffix(".json").write_text(json.dumps({"task": "neural-art", "basis": "pixels"}))
    setup = learned_setup(frozen)
    assert (setup.basis, setup.lr, setup.trained_pixels) == ("pixels", 1.0, None)  # nothing calibrated: as trained
    assert learned_setup(frozen, basis="multiscale").basis == "multiscale"
    start = _run(_config(optimizer="lstm", steps=0))[0]
    for config, kwargs in [(_config(optimizer="lstm", steps=3, lstm_weights=str(frozen)), {}),
                           (_config(optimizer="lstm", steps=3), {"lstm_setup": setup})]:
        out, infos = _run(config, **kwargs)
        assert len({i.losses["total"] for i in infos}) == 1 and torch.equal(out, start)
    infos = _run(_config(optimizer="lstm", steps=3))[1]
    assert infos[-1].losses["total"] < infos[0].losses["total"]
    assert "not used" in _run(_config(optimizer="adam", steps=1, lstm_weights=str(frozen)))[1][0].notice
    with pytest.raises(ValueError, match="lstm weights file not found"):
        _config(optimizer="lstm", lstm_weights=str(tmp_path / "missing.safetensors")).validated()
    (tmp_path / "corrupt.safetensors").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="corrupt"):
        _run(_config(optimizer="lstm", steps=2, lstm_weights=str(tmp_path / "corrupt.safetensors")))
    with pytest.raises(ValueError, match="unknown basis"):
        learned_setup(frozen, basis="wavelets")
    other = tmp_path / "mnist.safetensors"
    other.write_bytes(frozen.read_bytes())
    other.with_suffix(".json").write_text(json.dumps({"task": "mnist"}))
    with pytest.raises(ValueError, match="meta-trained on 'mnist', not neural art"):
        _config(optimizer="lstm", lstm_weights=str(other)).validated()
    with pytest.raises(ValueError, match="not neural art"):
        learned_setup(other)


@pytest.mark.parametrize("basis", ["pixels", "multiscale"])
def test_lstm_runs_in_the_basis_its_card_records(monkeypatch, tmp_path, basis):
    from artopt.learned_optimizers import LearnedOptimizer, shipped
    from artopt.learned_optimizers.multiscale import MultiscaleOptimizer

    (tmp_path / "neural_art.safetensors").write_bytes(shipped.weights_path(shipped.NEURAL_ART).read_bytes())
    (tmp_path / "neural_art.json").write_text(json.dumps({"basis": {"kind": basis, "levels": 4},
                                                          "trained_pixels": 64 * 64}))
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path)
    image = torch.zeros(1, 3, 64, 128, requires_grad=True)
    opt = engine._make_optimizer("lstm", image, None)
    inner = opt.inner if basis == "multiscale" else opt
    assert isinstance(opt, MultiscaleOptimizer if basis == "multiscale" else LearnedOptimizer)
    assert inner.input_scale == 2.0
    image.grad = torch.randn_like(image)
    opt.step()
    assert torch.isfinite(image).all()
    # the bound on the optimizer's state: at most 500 B per pixel
    assert opt.state_bytes() / (64 * 128) <= 500
    # a network with moment inputs also keeps m and v in bfloat16: 4 B more per coordinate
    moments = 4 if next(iter(inner.nets.values())).config.moment_inputs else 0
    if basis == "multiscale":
        assert opt.coordinates == 3 * (64 * 128 + 32 * 64 + 16 * 32 + 8 * 16)
        assert inner.state_dtype == torch.int8 and opt.state_bytes() == (120 + moments) * opt.coordinates
    else:
        assert inner.state_dtype == torch.float16 and opt.state_bytes() == (160 + moments) * 3 * 64 * 128
    out, infos = _run(_config(optimizer="lstm", steps=4))
    assert infos[-1].losses["total"] < infos[0].losses["total"] and torch.isfinite(out).all()
    (tmp_path / "neural_art.json").write_text(json.dumps({"basis": {"kind": "wavelets"}}))
    with pytest.raises(ValueError, match="unknown basis"):
        engine._make_optimizer("lstm", image, None)


def test_an_empty_pil_image_is_refused_clearly():
    from PIL import Image

    with pytest.raises(ValueError, match="content image is empty"):  # was a ZeroDivisionError
        stylize(Image.new("RGB", (0, 0)), [STYLE], _config())
    with pytest.raises(ValueError, match="style image is empty"):
        stylize(CONTENT, [Image.new("RGB", (40, 0))], _config())


def test_keep_colors_with_a_one_pixel_style():
    # the std of one pixel is NaN: it was refused as "style image contains NaN"
    out = stylize(CONTENT, [torch.rand(1, 3, 1, 1)], _config(keep_colors=True, steps=1))
    assert out.shape == (1, 3, 43, 64) and torch.isfinite(out).all()


def test_no_steps_with_the_pyramid_gives_the_start_image_at_full_resolution(monkeypatch):
    monkeypatch.setattr(engine, "PYRAMID_BASE", 32)
    content = _image(4, 96, 128)
    assert pyramid_sizes(128, True) == [32, 64, 128]
    out = stylize(content, [STYLE], _config(size=128, steps=0, pyramid=True))
    assert torch.equal(out, content)  # was the content made at 64 px and upsampled: blurred



def test_a_stop_before_the_first_step_gives_the_start_image_at_full_resolution(monkeypatch):
    monkeypatch.setattr(engine, "PYRAMID_BASE", 32)
    content = _image(4, 96, 128)
    # asked while the first scale's targets are computed (a Ctrl-C in those seconds), and before
    asked = _count_style_losses(monkeypatch)
    for should_stop in (lambda: bool(asked), lambda: True):
        infos = []
        out = stylize(content, [STYLE], _config(size=128, steps=6, pyramid=True), callback=infos.append,
                      should_stop=should_stop)
        assert torch.equal(out, content) and infos == []  # was the 64 px start image upsampled: blurred


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_the_last_step_has_the_final_losses_however_the_run_ends(monkeypatch, optimizer):
    from artopt.style import losses

    # a stop: the step it was asked during is the last, and reports the image the run ends with
    infos = []
    out = stylize(CONTENT, [STYLE], _config(optimizer=optimizer, steps=30), callback=infos.append,
                  should_stop=lambda: len(infos) >= 3)
    # (asked after the third step's report: a last report follows, under the same step count)
    assert len(infos) == 4 and infos[-1].step == infos[-2].step and infos[-1].final_losses is not None
    assert infos[-2].final_losses is None and torch.equal(infos[-1].image, out)
    infos = []
    out = stylize(CONTENT, [STYLE], _config(optimizer=optimizer, steps=30), callback=infos.append,
                  should_stop=lambda: len(infos) >= 2 and infos[-1].step >= 3)
    assert infos[-1].final_losses is not None and torch.equal(infos[-1].image, out)
    # L-BFGS with nothing to do (loss 0 at the start): it stops early, and still says so
    infos = []
    stylize(CONTENT, [STYLE], _config(optimizer="lbfgs", steps=6, style_weight=0, tv_weight=0), callback=infos.append)
    assert infos[-1].final_losses["total"] == 0.0 and infos[-1].image is not None
    # a divergence: the losses are of the returned image, clamped (L-BFGS's last good one was not)
    seen, forward = [], losses.StyleLoss.forward

    def failing(self, image):
        seen.append(image.detach().clone())
        out = forward(self, image)
        return {**out, "total": out["total"] * float("nan")} if len(seen) >= 5 else out

    monkeypatch.setattr(losses.StyleLoss, "forward", failing)
    infos = []
    out = stylize(CONTENT, [STYLE], _config(optimizer=optimizer, steps=12, init="noise", lr=5.0 if optimizer == "lbfgs"
                                            else None, keep_best=False), callback=infos.append)
    assert "diverged" in infos[-1].notice and torch.equal(seen[-1], out) and infos[-1].final_losses is not None


def test_a_first_steps_notice_keeps_the_setup_notice(monkeypatch):
    # The setup line (loss network, optimizer, scales) used to be dropped when the first step had a
    # notice of its own; the same held for a finer scale's first notice (e.g. adam_levels' split).
    from artopt.style import losses

    forward = losses.StyleLoss.forward
    monkeypatch.setattr(losses.StyleLoss, "forward",
                        lambda self, image: {**(out := forward(self, image)), "total": out["total"] * float("nan")})
    infos = []
    stylize(CONTENT, [STYLE], _config(steps=3), callback=infos.append)
    setup = "loss network: efficientnet-lite0; optimizer: adam"
    assert infos[0].setup_notice == setup and infos[0].notice.startswith(setup + "; adam diverged")
    assert all(i.setup_notice is None for i in infos[1:])


def test_a_pyramid_scale_dropped_for_a_narrow_photo_is_said(monkeypatch):
    monkeypatch.setattr(engine, "PYRAMID_BASE", 32)
    infos = []
    stylize(_image(4, 40, 128), [STYLE], _config(size=128, steps=2, pyramid=True), callback=infos.append)
    assert infos[0].n_scales == 1 and "1 scale(s) instead of 3" in infos[0].notice

@pytest.mark.parametrize("bad, message", [
    (dict(lr="0.1"), "lr must be a number"), (dict(content_weight="1"), "content weight must be a number"),
    (dict(style_scale=None), "style scale must be a number"),
    (dict(style_weights=["1"]), "style weights must be a list of numbers"),
    (dict(style_weights=5), "style weights must be a list of numbers, got 5"),
    (dict(optimizer=None), "optimizer must be a string"), (dict(loss_net=None), "loss net must be a string"),
    (dict(steps=True), "steps must be a non-negative integer"),
    # a string "false" counted as true
    (dict(keep_colors="false"), r"keep colors must be True or False, got 'false'"),
    (dict(pyramid=1), r"pyramid must be True or False \(or None: automatic\), got 1"),
    (dict(lstm_weights=5), "lstm weights must be a file path, got 5"),
    (dict(vgg_weights=5), "vgg weights must be a file path, got 5"),
])
def test_settings_of_the_wrong_type_are_refused_clearly(bad, message):
    # these met a bare TypeError or AttributeError (or, for steps=True, ran one step)
    with pytest.raises(ValueError, match=message):
        _config(**bad).validated()


def test_a_config_that_is_not_a_stylize_config_is_a_type_error():
    with pytest.raises(TypeError, match="config must be a StylizeConfig, got dict .*config_from_dict"):
        stylize(CONTENT, [STYLE], {"size": 64})


def test_config_from_dict_round_trips_and_refuses_unknown_or_bad_settings():
    import dataclasses

    config = StylizeConfig(size=96, steps=7, optimizer="adam", lr=0.01, pyramid=False, seed=3)
    assert engine.config_from_dict(dataclasses.asdict(config)) == config
    assert engine.config_from_dict({"size": 80}) == StylizeConfig(size=80)
    with pytest.raises(ValueError, match="unknown setting.*resolved_device, sizes"):
        engine.config_from_dict({"size": 80, "sizes": [80], "resolved_device": "cpu"})
    with pytest.raises(ValueError, match="steps must be a non-negative integer"):
        engine.config_from_dict({"steps": -1})


@pytest.mark.parametrize("when", ["with the coarse scale's last step", "while the next scale is built"])
def test_a_stop_between_scales_reports_the_scale_it_ends_on(monkeypatch, when):
    monkeypatch.setattr(engine, "PYRAMID_BASE", 32)
    built = _count_style_losses(monkeypatch)
    infos = []
    # scales 64 and 128 px (32 px would be 24 high), split_steps(6, 2) == [4, 2]
    first = when.startswith("with")
    out = stylize(_image(4, 96, 128), [STYLE], _config(size=128, steps=6, pyramid=True), callback=infos.append,
                  should_stop=(lambda: len(infos) >= 4) if first else (lambda: len(built) >= 2))
    assert out.shape == (1, 3, 96, 128) and [i.step for i in infos] == [1, 2, 3, 4, 4]
    # the last report: the same step, with the image the run ends with (at the output size) and its losses
    assert infos[-1].final_losses and torch.equal(infos[-1].image, out)
    if first:  # the next scale is not built
        assert [i.scale_index for i in infos] == [0] * 5 and len(built) == 1
    else:  # the report is of the scale whose loss and image it gives (it said scale 0 with scale 1's size)
        assert (infos[-1].scale_index, infos[-1].size) == (1, (96, 128))

def test_cpu_memory_estimate_refuses_past_the_ram_and_warns_past_the_free_memory():
    from artopt.style.engine import CPU_BASE_BYTES, CPU_BYTES_PER_PIXEL, cpu_memory_problem, input_image_bytes

    held = input_image_bytes((1000, 2000), 2048)  # the photo itself: 4 + 12 B per pixel
    assert held == 16 * 1000 * 2000
    need = CPU_BASE_BYTES + held + CPU_BYTES_PER_PIXEL * 2048 * 1024  # a 2:1 photo at 2048 px
    assert cpu_memory_problem((1000, 2000), 2048, memory=(need + 1, need + 1)) == (None, None)
    assert cpu_memory_problem((1000, 2000), 2048, memory=(None, None)) == (None, None)  # unknown: no advice
    error, warning = cpu_memory_problem((2000, 1000), 2048, "--size", memory=(need - 1, None))
    assert warning is None and error.startswith("at 2048 px a CPU run needs about")
    # the advised size fits in 90% of the RAM, and one more pixel of long side per 100 would not
    advised = int(error.split("at most about ")[1].split(" px")[0])
    fits = lambda size: CPU_BASE_BYTES + held + CPU_BYTES_PER_PIXEL * size * round(size / 2) <= 0.9 * (need - 1)  # noqa: E731
    assert fits(advised) and not fits(int(advised * 1.01))
    error, warning = cpu_memory_problem((1000, 2000), 2048, memory=(2 * need, need - 1))
    assert error is None and warning.startswith("at 2048 px a CPU run needs about") and "may run out of memory" in warning


def test_cpu_memory_estimate_counts_the_style_images_at_their_scale():
    from artopt.style.engine import (CPU_BASE_BYTES, CPU_BYTES_PER_PIXEL, CPU_BYTES_PER_STYLE_PIXEL, cpu_memory_problem,
                                     input_image_bytes)

    held = input_image_bytes((500, 1000), 512) + input_image_bytes((600, 800), 512)
    content_only = CPU_BASE_BYTES + held + CPU_BYTES_PER_PIXEL * 512 * 256  # a 2:1 photo at 512 px
    roomy = (content_only + 10**8, None)
    assert cpu_memory_problem((500, 1000), 512, memory=roomy, style_hws=[(600, 800)]) == (None, None)
    # --style-scale 8 sends a 4096 px style through the network: 3.4 GB more at 512 px, measured
    error, _ = cpu_memory_problem((500, 1000), 512, "--size", memory=roomy, style_hws=[(600, 800), (100, 100)],
                                  style_scale=8)
    assert error.endswith("or a smaller style scale, or run on a GPU")
    advised = int(error.split("at most about ")[1].split(" px")[0])
    # the squarer style counts (the styles go through one at a time), and the advice fits 90% of the RAM
    held8 = sum(input_image_bytes(hw, side) for hw, side in [((500, 1000), 512), ((600, 800), 4096), ((100, 100), 4096)])
    need = lambda size: (CPU_BASE_BYTES + held8 + CPU_BYTES_PER_PIXEL * size * round(size / 2)  # noqa: E731
                         + CPU_BYTES_PER_STYLE_PIXEL * (8 * size) ** 2)
    assert need(512) > roomy[0] and need(advised) <= 0.9 * roomy[0] < need(int(advised * 1.01))


def test_cpu_memory_estimate_counts_the_input_images_held_through_the_run():
    from artopt.style.engine import CPU_BASE_BYTES, CPU_BYTES_PER_PIXEL, cpu_memory_problem, input_image_bytes

    # a 50 MP upload (8660 x 5774) for a 2048 px output: its decoded pixels and its float copy at 4096 px
    big = (5774, 8660)
    assert input_image_bytes(big, 2048) == 4 * 5774 * 8660 + 12 * 2731 * 4096  # 0.33 GB
    assert input_image_bytes(big, 2200) == 16 * 5774 * 8660  # under 4x: floats of every pixel, 0.8 GB
    output = CPU_BASE_BYTES + CPU_BYTES_PER_PIXEL * 2048 * 1365
    roomy_for_output_alone = (output + 10**8, None)
    assert cpu_memory_problem((600, 900), 2048, memory=roomy_for_output_alone) == (None, None)
    error, _ = cpu_memory_problem(big, 2048, "--size", memory=roomy_for_output_alone)
    assert error and "at most about" in error
    # over 4x the output the float copy is taken at twice the output's size, as _to_tensor shrinks it
    assert input_image_bytes(big, 512) == 4 * 5774 * 8660 + 12 * 683 * 1024
    photo = load_image(ASSETS / "photos" / "chelsea.jpg").resize((2100, 1400))
    for side in (256, 1024):
        floats = engine._to_tensor(photo, "content", max_side=side)
        assert input_image_bytes((1400, 2100), side) == 4 * 1400 * 2100 + 12 * floats.shape[-1] * floats.shape[-2]


def test_a_huge_photo_is_shrunk_before_it_becomes_floats_and_keeps_its_exact_size():
    from PIL import Image
    photo = load_image(ASSETS / "photos" / "chelsea.jpg")
    big = photo.resize((1003, 701), Image.Resampling.BICUBIC)  # over 4x the 64 px output
    # float32 at twice the output size, not 1003 x 701 (a 49 MP upload took over 1 GB)
    assert engine._to_tensor(big, "content", max_side=64).shape[-2:] == (89, 128)
    assert engine._to_tensor(big, "content", max_side=256).shape[-2:] == (701, 1003)  # under 4x: as it is
    config = _config(steps=0, pyramid=False)
    shrunk = stylize(big, [big], config)
    full = stylize(pil_to_tensor(big), [pil_to_tensor(big)], config)
    assert shrunk.shape == full.shape == (1, 3, 45, 64)  # 44.7 rows: as the whole photo rounds
    assert (shrunk - full).abs().mean() < 0.004


def test_the_configs_lr_sets_the_step_size():
    """Adam's first step moves a pixel by about lr: the run must use config.lr, not the default."""
    for lr in (0.002, 0.05):
        config = StylizeConfig(size=64, steps=1, optimizer="adam", lr=lr, pyramid=False, device="cpu",
                               loss_net="efficientnet-lite0")
        moved = (stylize(CONTENT, [STYLE], config) - CONTENT).abs().max().item()
        assert 0.5 * lr < moved <= 1.01 * lr, (lr, moved)


# Mutation audit, round 2 (session 51): each test below failed on a one-line bug the suite missed.

def _flat_image(seed, height, width, level):
    g = torch.Generator().manual_seed(seed)
    coarse = level + 0.1 * torch.rand(1, 3, 6, 8, generator=g)
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)


def _styles_seen(monkeypatch, content, style, **settings):
    seen = []
    real = engine.StyleLoss
    monkeypatch.setattr(engine, "StyleLoss", lambda net, target, styles, **kw: seen.append(styles) or real(net, target, styles, **kw))
    config = StylizeConfig(size=64, steps=1, optimizer="adam", device="cpu", loss_net="efficientnet-lite0", **settings)
    stylize(content, [style], config)
    return seen[-1][0]


def test_keep_colors_matches_the_styles_luminance_to_the_photo(monkeypatch):
    content, style = _flat_image(0, 48, 64, 0.15), _flat_image(1, 48, 64, 0.8)  # dark photo, bright style
    seen = _styles_seen(monkeypatch, content, style, keep_colors=True)
    y_style, y_content = rgb_to_ycbcr(seen)[:, 0], rgb_to_ycbcr(content)[:, 0]
    assert abs(float(y_style.mean() - y_content.mean())) < 0.02


def test_style_images_keep_style_scale_times_the_output_size(monkeypatch):
    style = _flat_image(1, 192, 256, 0.5)
    seen = _styles_seen(monkeypatch, _flat_image(0, 48, 64, 0.3), style, style_scale=2.0)
    assert max(seen.shape[-2:]) == 128  # 2 x 64 px, not shrunk to the output's 64 px and blown up again


def test_keep_best_returns_the_lowest_loss_image_the_steps_made():
    """Adam at lr 0.1 ends 4 steps above where it was after 2: the run returns that image (what a
    2-step run returns) and says so; with keep_best off, the last step's.  An untouched start is never
    returned, even when it is the lowest (the user asked for a stylized image)."""
    out, infos = _run(_config(steps=4, lr=0.1))
    after = [i.losses["total"] for i in infos[1:]]  # the loss of the image after steps 1, 2, 3
    last_out, last_infos = _run(_config(steps=4, lr=0.1, keep_best=False))
    assert last_infos[-1].final_losses["total"] > after[1]  # the run's loss rose after step 2
    assert "kept" not in (last_infos[-1].notice or "")
    assert infos[-1].final_losses == last_infos[2].losses  # the image after step 2's losses
    assert infos[-1].kept_after == 2 and last_infos[-1].kept_after is None
    assert "kept the image after step 2 (the lowest loss at this size" in infos[-1].notice
    two_steps, _ = _run(_config(steps=2, lr=0.1))
    assert torch.equal(out, two_steps) and torch.equal(infos[-1].image, out) and not torch.equal(out, last_out)
    assert min(after) == after[1]
    assert torch.equal(stylize(CONTENT, [STYLE], _config(steps=4, lr=0.1)), out)  # without a callback too
    # With keep_colors the grey start's loss is below every step's in a short run: it is not returned.
    _, grey = _run(_config(keep_colors=True, steps=4, lr=0.1))
    made = [i.losses["total"] for i in grey[1:]] + [grey[-1].final_losses["total"]]  # after steps 1..4
    assert grey[0].losses["total"] < min(made) and grey[-1].final_losses["total"] == min(made)


def test_keep_best_is_on_the_final_scale_only_and_not_for_lbfgs(monkeypatch):
    """A coarse scale's lower losses are of another image size; L-BFGS's line search evaluates points
    outside [0, 1] that no run returns."""
    out, infos = _run(_config(size=256, steps=6, pyramid=True, lr=0.1))
    final_scale = [i for i in infos if i.scale_index == i.n_scales - 1]
    assert infos[0].n_scales == 2 and infos[-1].final_losses["total"] <= min(
        i.losses["total"] for i in final_scale[1:])  # (its first is the upsampled coarse image, kept too)
    # The coarse scale's loss rises after its first step here (3.54 at the start, then 4.95, 5.28, 5.18).
    # A run stopped there returns its last image, not that scale's lowest, as keep_best off does.
    coarse = [i.losses["total"] for i in infos if i.scale_index == 0]
    assert min(coarse[1:]) < coarse[-1]

    def stopped(keep_best):
        seen = []
        out = stylize(CONTENT, [STYLE], _config(size=256, steps=6, pyramid=True, lr=0.1, keep_best=keep_best),
                      callback=seen.append, should_stop=lambda: len(seen) >= 3)
        return out, seen

    (kept, seen), (last, _) = stopped(True), stopped(False)
    assert seen[-1].scale_index == 0 and seen[-1].kept_after is None and torch.equal(kept, last)
    out, infos = _run(_config(steps=6, optimizer="lbfgs"))
    assert "kept" not in (infos[-1].notice or "")
    with pytest.raises(ValueError, match="keep best must be True or False"):
        _config(keep_best="no").validated()


class _Groups:
    def __init__(self, lr):
        self.param_groups = [{"lr": lr}]


def test_backoff_counts_the_evaluations_above_the_lowest_and_lowers_the_step_after_three(monkeypatch):
    """A scale's first 10 losses are not counted (a fresh LSTM's first steps may overshoot); after them
    a new lowest resets the count, a loss equal to the lowest neither resets nor counts, and the step
    halves after three above it in a row, again after three more; a MultiscaleOptimizer's lr lives in
    its inner optimizer's groups."""
    opt = _Groups(2.0)
    backoff = engine._Backoff(opt)
    assert [backoff.observe(x) for x in [1.0] + [9.0] * 9 + [5.0, 6.0, 6.0, 6.0]] == [None] * 13 + [0.5]
    assert backoff.lowest == 5.0 and opt.param_groups[0]["lr"] == 1.0
    monkeypatch.setattr(engine, "BACKOFF_GRACE", 0)
    opt = _Groups(2.0)
    backoff = engine._Backoff(opt)
    seen = [backoff.observe(x) for x in (5.0, 4.0, 4.5, 4.5, 3.0, 3.0, 3.5, 3.6, 3.7, 3.8, 3.9, 4.0, 2.0)]
    assert seen == [None] * 8 + [0.5, None, None, 0.25, None]
    assert opt.param_groups[0]["lr"] == 0.5 and backoff.lowest == 2.0
    wrapped = _Groups(None)
    wrapped.inner = _Groups(1.0)
    backoff = engine._Backoff(wrapped)
    assert [backoff.observe(x) for x in (1.0, 2.0, 2.0, 2.0)] == [None, None, None, 0.5]
    assert wrapped.inner.param_groups[0]["lr"] == 0.5 and wrapped.param_groups[0]["lr"] is None


def test_backoff_halves_the_learned_step_once_the_loss_stays_above_its_lowest(monkeypatch):
    """Here (content weight 100, 3x the learned step) the LSTM's loss never gets back under its start:
    its step halves after the 4th evaluation (the 2nd, 3rd and 4th were above the 1st) and after the
    7th, once the grace of a scale's first 10 steps is taken away.  The run is the same as one without
    backoff until then, and says so on those steps."""
    from artopt.learned_optimizers import LearnedOptimizer

    config = _config(optimizer="lstm", steps=8, lr=3.0, content_weight=100.0, keep_best=False, handoff_lr=0)
    assert all(i.step_scale is None for i in _run(config)[1])  # (within the grace)
    monkeypatch.setattr(engine, "BACKOFF_GRACE", 0)

    lrs = []
    real_step = LearnedOptimizer.step
    monkeypatch.setattr(LearnedOptimizer, "step",
                        lambda self, *a, **k: lrs.append(self.param_groups[0]["lr"]) or real_step(self, *a, **k))
    _, infos = _run(config)
    backed, lrs[:] = list(lrs), []
    _, plain = _run(dataclasses.replace(config, backoff=False))
    assert lrs == [3.0] * 8 and backed == [3.0] * 3 + [1.5] * 3 + [0.75] * 2
    assert [i.step_scale for i in infos] == [None] * 3 + [0.5] + [None] * 2 + [0.25, None]
    assert all(i.step_scale is None for i in plain)
    totals = [i.losses["total"] for i in infos]
    assert all(t > totals[0] for t in totals[1:])
    assert totals[:4] == [i.losses["total"] for i in plain[:4]] and totals[4] != plain[4].losses["total"]
    assert infos[3].notice == (f"learned optimizer: the loss has stayed above its lowest at this size ({totals[0]:.4g}) "
                               "for 3 steps; its step is now 0.5x (backoff)")
    assert "0.25x" in infos[6].notice and "backoff" not in (plain[3].notice or "")


def _record_steps(monkeypatch) -> list:
    """A list that gets, per optimizer step, "lstm" for a learned step, Adam's current rate for an Adam
    step on the multi-scale basis, and "basis" for the basis wrapper around a learned step."""
    from artopt.learned_optimizers import LearnedOptimizer
    from artopt.learned_optimizers.multiscale import MultiscaleOptimizer

    steps = []
    real_learned, real_multiscale = LearnedOptimizer.step, MultiscaleOptimizer.step
    monkeypatch.setattr(LearnedOptimizer, "step", lambda self, *a, **k: steps.append("lstm") or real_learned(self, *a, **k))
    monkeypatch.setattr(MultiscaleOptimizer, "step", lambda self, *a, **k: steps.append(
        self.inner.param_groups[0]["lr"] if isinstance(self.inner, torch.optim.Adam) else "basis") or
        real_multiscale(self, *a, **k))
    return steps


def test_handoff_goes_on_with_adam_on_the_basis_where_backoff_would_first_act(monkeypatch):
    """The backoff test's run with handoff_lr: the LSTM takes the first 4 steps (as without handoff,
    the 4th shortened), then Adam on the multi-scale basis, at the given rate, the other 4; backoff does not act after
    that, and the notice says so.  With --no-backoff, handoff still watches the loss."""
    monkeypatch.setattr(engine, "BACKOFF_GRACE", 0)
    config = _config(optimizer="lstm", steps=8, lr=3.0, content_weight=100.0, keep_best=False, handoff_lr=0.004,
                     handoff_warmup=0)
    steps = _record_steps(monkeypatch)
    _, infos = _run(config)
    assert steps == ["basis", "lstm"] * 4 + [0.004] * 4
    assert [i.step_scale for i in infos] == [None] * 8
    totals = [i.losses["total"] for i in infos]
    assert infos[3].notice == (f"learned optimizer: the loss has stayed above its lowest at this size ({totals[0]:.4g}) "
                               "for 3 steps; Adam on the multi-scale basis goes on at lr 0.004 (handoff)")
    assert all("handoff" not in (i.notice or "") for i in infos[4:])
    _, plain = _run(dataclasses.replace(config, handoff_lr=0))
    # (the 4th step, whose start showed the rise, is the LSTM's shortened one in both runs)
    assert totals[:5] == [i.losses["total"] for i in plain[:5]] and totals[5] != plain[5].losses["total"]
    steps[:] = []
    _, no_backoff = _run(dataclasses.replace(config, backoff=False))
    assert steps == ["basis", "lstm"] * 4 + [0.004] * 4 and [i.losses["total"] for i in no_backoff] == totals
    # the hand-designed optimizers say it is not theirs; a bad rate is refused
    assert "handoff lr 0.004 is for lstm only: not used" in _run(dataclasses.replace(config, optimizer="adam", lr=None))[1][0].notice
    for bad in (-1.0, math.inf, math.nan, "0.1", True):
        with pytest.raises(ValueError, match="handoff lr must be"):
            dataclasses.replace(config, handoff_lr=bad).validated()
    # handoff_warmup: Adam's rate ramps up over that many steps after the handoff, then stays
    steps[:] = []
    _, warmed = _run(dataclasses.replace(config, handoff_warmup=3))
    assert steps[:8] == ["basis", "lstm"] * 4 and steps[8:] == pytest.approx([0.001, 0.002, 0.003, 0.004])
    assert [i.losses["total"] for i in warmed][:5] == totals[:5] and warmed[5].losses["total"] != totals[5]
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="handoff warmup must be"):
            dataclasses.replace(config, handoff_warmup=bad).validated()



def test_handoff_finer_lr_runs_the_finer_scales_with_adam_once_a_coarser_scale_was_handed_off(monkeypatch):
    """With the pyramid (128 -> 256 px), the handoff test's run hands the coarse scale off after its 4th
    step; handoff_finer_lr then runs the 256 px scale with Adam on the basis from its first step (ramping
    up over handoff_warmup) instead of a fresh LSTM, and says so.  Without a handoff it changes nothing."""
    monkeypatch.setattr(engine, "BACKOFF_GRACE", 0)
    steps = _record_steps(monkeypatch)
    config = _config(optimizer="lstm", size=256, pyramid=True, steps=12, lr=3.0, content_weight=100.0,
                     keep_best=False, handoff_lr=0.004, handoff_warmup=0, fine_scale_step=1.0, handoff_finer_lr=0)
    _, plain = _run(config)  # (engine.split_steps: 8 coarse steps, then 4)
    assert [i.scale_index for i in plain] == [0] * 8 + [1] * 4
    assert steps[:12] == ["basis", "lstm"] * 4 + [0.004] * 4 and "lstm" in steps[12:]
    steps[:] = []
    _, finer = _run(dataclasses.replace(config, handoff_finer_lr=0.002))
    assert steps == ["basis", "lstm"] * 4 + [0.004] * 4 + [0.002] * 4
    assert [i.losses["total"] for i in finer[:8]] == [i.losses["total"] for i in plain[:8]]
    assert finer[8].notice.endswith("a coarser scale was handed off: Adam on the multi-scale basis runs this scale "
                                    "from its start at lr 0.002 (handoff)")
    assert all("handoff" not in (i.notice or "") for i in finer[9:])
    steps[:] = []
    _run(dataclasses.replace(config, handoff_finer_lr=0.002, handoff_warmup=3))
    assert steps[8:12] == pytest.approx([0.001, 0.002, 0.003, 0.004]) and steps[12:] == pytest.approx(
        [0.0005, 0.001, 0.0015, 0.002])
    # handoff_finer_within: only a handoff within that fraction of the coarser scale's steps counts (4 of 8 here)
    steps[:] = []
    _, late = _run(dataclasses.replace(config, handoff_finer_lr=0.002, handoff_finer_within=0.4))
    assert steps[:12] == ["basis", "lstm"] * 4 + [0.004] * 4 and "lstm" in steps[12:]
    assert [i.losses["total"] for i in late] == [i.losses["total"] for i in plain]
    steps[:] = []
    _run(dataclasses.replace(config, handoff_finer_lr=0.002, handoff_finer_within=0.5))
    assert steps == ["basis", "lstm"] * 4 + [0.004] * 4 + [0.002] * 4
    for bad in (-0.1, 1.5, math.nan, "0.5", True):
        with pytest.raises(ValueError, match="handoff finer within must be a fraction"):
            dataclasses.replace(config, handoff_finer_within=bad).validated()
    # handoff_finer_steps: the same gate in the learned optimizer's steps (the handoff came after 4), and with
    # handoff_finer_within both must hold
    steps[:] = []
    _, gated = _run(dataclasses.replace(config, handoff_finer_lr=0.002, handoff_finer_steps=3))
    assert "lstm" in steps[12:] and [i.losses["total"] for i in gated] == [i.losses["total"] for i in plain]
    steps[:] = []
    _run(dataclasses.replace(config, handoff_finer_lr=0.002, handoff_finer_steps=4))
    assert steps == ["basis", "lstm"] * 4 + [0.004] * 4 + [0.002] * 4
    steps[:] = []
    _run(dataclasses.replace(config, handoff_finer_lr=0.002, handoff_finer_steps=10, handoff_finer_within=0.4))
    assert "lstm" in steps[12:]
    for bad in (-1, 2.5, "3", True, None):
        with pytest.raises(ValueError, match="handoff finer steps must be a whole number"):
            dataclasses.replace(config, handoff_finer_steps=bad).validated()
    # no handoff, nothing to carry on: the same run with or without it
    off = dataclasses.replace(config, handoff_lr=0)
    assert torch.equal(stylize(CONTENT, [STYLE], off), stylize(CONTENT, [STYLE], dataclasses.replace(off, handoff_finer_lr=0.002)))
    # the default since session 65: HANDOFF_FINER_LR after a handoff within HANDOFF_FINER_STEPS coarse steps
    default = StylizeConfig()
    assert (default.handoff_finer_lr, default.handoff_finer_within, default.handoff_finer_steps) == (0.0036, 1.0, 83) == (
        engine.HANDOFF_FINER_LR, engine.HANDOFF_FINER_WITHIN, engine.HANDOFF_FINER_STEPS)
    steps[:] = []
    _run(dataclasses.replace(config, handoff_finer_lr=StylizeConfig().handoff_finer_lr))
    assert steps == ["basis", "lstm"] * 4 + [0.004] * 4 + [0.0036] * 4
    assert "handoff finer lr 0.002 is for lstm only: not used" in _run(_config(handoff_finer_lr=0.002))[1][0].notice
    assert "handoff finer" not in _run(_config())[1][0].notice  # (the hand-designed ones: not with the default)
    for bad in (-1.0, math.inf, math.nan, "0.1", True):
        with pytest.raises(ValueError, match="handoff finer lr must be"):
            dataclasses.replace(config, handoff_finer_lr=bad).validated()


def test_the_learned_optimizer_hands_off_by_default_after_a_warm_up(monkeypatch):
    """The defaults: handoff at HANDOFF_LR with a HANDOFF_WARMUP-step ramp; 0 (or None) turns it off, and
    the hand-designed optimizers' notice names only a rate the user changed."""
    from artopt.learned_optimizers.multiscale import MultiscaleOptimizer

    assert (StylizeConfig().handoff_lr, StylizeConfig().handoff_warmup) == (engine.HANDOFF_LR, engine.HANDOFF_WARMUP)
    monkeypatch.setattr(engine, "BACKOFF_GRACE", 0)
    lrs = []
    real = MultiscaleOptimizer.step
    monkeypatch.setattr(MultiscaleOptimizer, "step", lambda self, *a, **k: (
        lrs.append(self.inner.param_groups[0]["lr"]) if isinstance(self.inner, torch.optim.Adam) else None) or
        real(self, *a, **k))
    config = _config(optimizer="lstm", steps=8, lr=3.0, content_weight=100.0, keep_best=False)
    _, infos = _run(config)
    n = engine.HANDOFF_WARMUP + 1
    assert lrs == pytest.approx([engine.HANDOFF_LR * k / n for k in range(1, 5)])
    assert infos[3].notice.endswith(f"goes on at lr {engine.HANDOFF_LR:g}, reached over {engine.HANDOFF_WARMUP} steps (handoff)")
    for off in (0, None):
        lrs[:] = []
        _, plain = _run(dataclasses.replace(config, handoff_lr=off))
        assert lrs == [] and "(backoff)" in plain[3].notice
    assert "handoff" not in _run(_config())[1][0].notice


def test_backoff_leaves_the_hand_designed_optimizers_as_tuned_and_restarts_at_each_scale(monkeypatch):
    """Adam's rising run (the keep_best test's) is the same with backoff on or off; each pyramid scale of
    an LSTM run gets a backoff of its own (its losses are of another image size)."""
    on = stylize(CONTENT, [STYLE], _config(steps=4, lr=0.1, keep_best=False))
    off = stylize(CONTENT, [STYLE], _config(steps=4, lr=0.1, keep_best=False, backoff=False))
    assert torch.equal(on, off)
    made = []
    real = engine._Backoff.__init__
    monkeypatch.setattr(engine._Backoff, "__init__", lambda self, opt: made.append(opt) or real(self, opt))
    _run(_config(steps=4, lr=0.1))
    assert made == []
    _, infos = _run(_config(optimizer="lstm", size=256, steps=4, pyramid=True))
    assert infos[-1].n_scales == 2 and len(made) == 2 and made[0] is not made[1]
    _run(_config(optimizer="lstm", steps=2, backoff=False, handoff_lr=0))
    assert len(made) == 2
    with pytest.raises(ValueError, match="backoff must be True or False"):
        _config(backoff="no").validated()


def test_fine_scale_step_multiplies_the_learned_step_after_the_first_scale_only(monkeypatch):
    """fine_scale_step scales the LSTM's step at the pyramid's scales after the first (on top of --lr),
    leaves the first scale and the hand-designed optimizers alone, and must be a positive number."""
    from artopt.learned_optimizers import LearnedOptimizer

    lrs = []
    real_step = LearnedOptimizer.step
    monkeypatch.setattr(LearnedOptimizer, "step",
                        lambda self, *a, **k: lrs.append(self.param_groups[0]["lr"]) or real_step(self, *a, **k))
    config = _config(optimizer="lstm", size=256, steps=6, pyramid=True, lr=2.0, backoff=False)
    _, infos = _run(dataclasses.replace(config, fine_scale_step=0.25))
    scales = [i.scale_index for i in infos]
    assert scales == [0] * 4 + [1] * 2 and lrs == [2.0] * 4 + [0.5] * 2
    lrs[:] = []
    _run(dataclasses.replace(config, fine_scale_step=1))
    assert lrs == [2.0] * 6
    lrs[:] = []
    _run(config)  # the default
    assert config.fine_scale_step == engine.FINE_SCALE_STEP == 0.5 and lrs == [2.0] * 4 + [1.0] * 2
    adam = _config(size=256, steps=6, pyramid=True, lr=0.05)
    out, infos = _run(dataclasses.replace(adam, fine_scale_step=0.3))
    assert torch.equal(stylize(CONTENT, [STYLE], adam), out)
    assert "(fine scale step 0.3 is for lstm only: not used)" in infos[0].notice
    assert "fine scale" not in _run(adam)[1][0].notice
    for bad in (0, -1.0, float("inf"), float("nan"), "half", True):
        with pytest.raises(ValueError, match="fine scale step must be"):
            _config(fine_scale_step=bad).validated()


def test_adam_levels_leave_the_finest_basis_levels_of_the_finer_scales_to_adam(monkeypatch):
    """adam_levels K: at the pyramid's scales after the first, Adam on the multi-scale basis (at the engine's
    rate there) steps the K finest levels and the learned optimizer the rest; the first scale, runs with one
    scale and the hand-designed optimizers are as without it, and say so."""
    from artopt.learned_optimizers.multiscale import LevelSplit, level_sizes

    built = []
    real = engine._make_optimizer
    monkeypatch.setattr(engine, "_make_optimizer", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    config = _config(optimizer="lstm", size=256, steps=6, pyramid=True)  # 128 then 256 px: 4 + 2 steps
    out, infos = _run(config)
    assert config.adam_levels == 0 and not any(isinstance(o.inner, LevelSplit) for o in built)
    built.clear()
    split, infos = _run(dataclasses.replace(config, adam_levels=2))
    assert [i.scale_index for i in infos] == [0] * 4 + [1] * 2 and torch.isfinite(split).all()
    assert not isinstance(built[0].inner, LevelSplit)
    assert infos[4].notice == ("Adam on the multi-scale basis (lr 0.0036) steps the 2 finest basis level(s) at this "
                               "scale, the learned optimizer the coarser ones")
    assert not any("finest" in (i.notice or "") for i in infos[:4] + infos[5:])
    inner = built[1].inner
    assert isinstance(inner, LevelSplit) and isinstance(inner.finest, torch.optim.Adam)
    assert inner.finest.param_groups[0]["lr"] == engine.STYLIZE_LR_MULTISCALE["adam"]
    sizes = level_sizes(built[1].images[0].shape, coarsest=8)
    assert inner.n_finest == [sum(sizes[:2])] and inner.parts[0][1].numel() == sum(sizes[2:])
    # the finer scale's learned step (fine_scale_step) and backoff act on the learned part's rate
    assert engine._learned_groups(built[1]) is inner.rest.param_groups
    assert inner.rest.param_groups[0]["lr"] == pytest.approx(built[0].inner.param_groups[0]["lr"] * config.fine_scale_step)
    assert [i.losses["total"] for i in infos[:4]] == [i.losses["total"] for i in _run(config)[1][:4]]
    assert not torch.equal(split, out)
    # a thin image has few levels: Adam gets at most all but the coarsest, none where there is one level
    thin = engine._make_optimizer("lstm", torch.zeros(1, 3, 16, 64, requires_grad=True), None, None, "pixels", 3)
    assert thin.inner.levels == 1 and len(thin.coefficients[0]) == 2
    assert not isinstance(engine._make_optimizer("lstm", torch.zeros(1, 3, 8, 64, requires_grad=True), None, None,
                                                 "pixels", 3).inner, LevelSplit)
    # not used: one scale, another optimizer; refused: a bad count, or with carry_state
    assert "adam levels 1 is for coarse-to-fine runs" in _run(dataclasses.replace(config, adam_levels=1, pyramid=False))[1][0].notice
    assert "adam levels 1 is for lstm only" in _run(_config(adam_levels=1))[1][0].notice
    for bad in (-1, engine.MAX_ADAM_LEVELS + 1, 1.0, True, "1"):
        with pytest.raises(ValueError, match="adam levels must be"):
            dataclasses.replace(config, adam_levels=bad).validated()
    with pytest.raises(ValueError, match="cannot be combined"):
        dataclasses.replace(config, adam_levels=1, carry_state=True).validated()


def test_carry_state_starts_a_finer_scale_from_the_coarser_scales_learned_state(monkeypatch):
    """carry_state: each finer pyramid scale's learned optimizer is given the coarser one's state
    (MultiscaleOptimizer.carry_state_from) before its first step; off by default, and the first scale,
    a run without the pyramid and the hand-designed optimizers never carry."""
    from artopt.learned_optimizers.multiscale import MultiscaleOptimizer

    calls = []
    real = MultiscaleOptimizer.carry_state_from
    monkeypatch.setattr(MultiscaleOptimizer, "carry_state_from",
                        lambda self, old: calls.append((self, old)) or real(self, old))
    config = _config(optimizer="lstm", size=256, steps=6, pyramid=True)
    _, infos = _run(config)
    assert calls == [] and config.carry_state is False
    out, infos = _run(dataclasses.replace(config, carry_state=True))
    assert len(calls) == 1 and calls[0][0] is not calls[0][1] and torch.isfinite(out).all()
    assert "h" in calls[0][0].inner.state[calls[0][0].flat[0]]
    assert not torch.equal(out, stylize(CONTENT, [STYLE], config))  # it changes the run
    _run(dataclasses.replace(config, carry_state=True, pyramid=False))
    _run(_config(size=256, steps=6, pyramid=True, basis="multiscale", carry_state=True))
    assert len(calls) == 1
    with pytest.raises(ValueError, match="carry state must be True or False"):
        _config(carry_state="yes").validated()


def test_every_scale_ends_with_a_preview_of_its_own_size_also_with_kept_colours():
    # The docstring promises an image at the end of each scale whatever image_every is; with keep_colors
    # the photo's colours are resized to the coarse scale's preview (no test broke without either).
    for keep_colors in (False, True):
        _, infos = _run(_config(size=256, steps=6, pyramid=True, keep_colors=keep_colors), image_every=1000)
        assert infos[0].n_scales == 2
        ends = [i for i, nxt in zip(infos, infos[1:] + [None]) if nxt is None or nxt.scale_index != i.scale_index]
        assert [i.scale_index for i in ends] == [0, 1] and all(i.image is not None for i in ends)
        coarse = ends[0]
        assert tuple(coarse.image.shape[-2:]) == coarse.size and torch.isfinite(coarse.image).all()
        assert [i for i in infos if i.image is not None] == ends


def test_a_noise_start_with_no_steps_returns_the_noise_not_the_photo():
    out = stylize(CONTENT, [STYLE], _config(steps=0, init="noise", seed=3))
    again = stylize(CONTENT, [STYLE], _config(steps=0, init="noise", seed=3))
    assert torch.equal(out, again) and (out - CONTENT).abs().mean() > 0.1


def test_system_memory_reads_the_kernels_table(tmp_path, monkeypatch):
    from artopt.style import engine

    table = tmp_path / "meminfo"
    table.write_text("MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n")
    monkeypatch.setattr(engine, "MEMINFO", table)
    assert engine.system_memory() == (24000000 * 1024, 20000000 * 1024)
    table.write_text("MemTotal:       24000000 kB\n")  # an old kernel: no MemAvailable
    assert engine.system_memory() == (24000000 * 1024, None)


def test_a_stop_while_the_next_scale_is_built_reports_that_scales_losses(monkeypatch):
    # The last report named the new scale (index, size) but carried the coarser scale's last losses.
    from artopt.style import engine, losses

    monkeypatch.setattr(engine, "PYRAMID_BASE", 32)
    built, real_init = [], losses.StyleLoss.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(losses.StyleLoss, "__init__", counting)
    content = torch.nn.functional.interpolate(CONTENT, size=(96, 128), mode="bilinear")
    infos = []
    stylize(content, [STYLE], _config(size=128, steps=6, pyramid=True), callback=infos.append,
            should_stop=lambda: len(built) >= 2)
    last = infos[-1]
    assert last.scale_index == 1 and infos[-2].scale_index == 0 and last.size == (96, 128)
    assert last.losses == last.final_losses


def test_a_style_of_weight_zero_is_left_out(monkeypatch):
    # It was resized and run through the loss network at every scale, and one too elongated for the
    # network (2x300 px) ended the run.
    thin = torch.rand(1, 3, 2, 300)
    alone = stylize(CONTENT, [STYLE], _config(steps=3))
    assert torch.equal(stylize(CONTENT, [STYLE, thin], _config(steps=3, style_weights=[1.0, 0.0])), alone)


def test_the_last_reports_elapsed_leaves_out_the_final_losses_evaluation(monkeypatch):
    # StepInfo says final_losses come from one more evaluation outside the budget and elapsed; elapsed
    # counted it.
    from artopt.style import losses

    real = losses.StyleLoss.forward

    def slow_when_scoring(self, image):
        if not torch.is_grad_enabled():  # the final losses' evaluation
            time.sleep(1.0)
        return real(self, image)

    monkeypatch.setattr(losses.StyleLoss, "forward", slow_when_scoring)
    _, infos = _run(_config(steps=3))
    assert infos[-1].final_losses is not None and infos[-1].elapsed - infos[-2].elapsed < 0.9


def test_carry_state_says_when_the_coarser_scale_ended_with_adam(monkeypatch):
    # After a handoff the coarser scale's optimizer is Adam: carry_state had nothing to carry and the
    # finer scale's learned optimizer started fresh without a word.
    from artopt.style import engine

    monkeypatch.setattr(engine, "BACKOFF_GRACE", 0)  # the handoff comes early (step 4)
    content = resize_long_side(pil_to_tensor(load_image(ASSETS / "photos" / "chelsea.jpg")), 256)
    _, infos = _run_on(content, _config(size=256, pyramid=True, steps=12, optimizer="lstm", lr=3.0,
                                        content_weight=100.0, keep_best=False, handoff_finer_lr=0, carry_state=True))
    notices = " ".join(i.notice or "" for i in infos)
    assert "handed" in notices or "handoff" in notices, notices
    assert "carry state: the coarser scale ended with no learned state" in notices, notices


@pytest.mark.parametrize("overrides, said", [
    ({"size": 64, "pyramid": True}, "pyramid: one scale at this size"),
    ({"carry_state": True}, "carry state is for lstm only: not used"),
    ({"style_scale": 0.1}, "the style is 32 px at every scale"),
])
def test_settings_that_change_nothing_here_are_said(overrides, said):
    # Each was ignored without a word (--coarse-share and --adam-levels already said so).
    _, infos = _run(_config(steps=1, **overrides))
    assert said in (infos[0].notice or ""), infos[0].notice
