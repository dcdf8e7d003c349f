"""Content, style and TV losses: zeros where they must be, resolution-invariant Grams, blending."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from artopt.style.loss_nets import build_loss_net
from artopt.style.losses import StyleLoss, gram_matrix, total_variation


@pytest.fixture(scope="module")
def net():
    return build_loss_net("efficientnet-lite0")


def _smooth_image(seed: int, size=(64, 64)) -> torch.Tensor:
    # Low-frequency random image: upscaling it changes little besides the resolution.
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 8, generator=g)
    return F.interpolate(coarse, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


def test_content_loss_zero_at_content_and_style_loss_zero_at_style(net):
    content, style = _smooth_image(0), _smooth_image(1)
    loss = StyleLoss(net, content, [style], tv_weight=1.0)
    at_content = loss(content)
    assert at_content["content"].item() == pytest.approx(0.0, abs=1e-10)
    assert at_content["style"].item() > 1e-3
    loss_same_size_style = StyleLoss(net, content, [style], style_scale=None)
    at_style = loss_same_size_style(style)
    assert at_style["style"].item() == pytest.approx(0.0, abs=1e-10)
    assert at_style["content"].item() > 1e-3


def test_tv_zero_for_constant_image_and_positive_otherwise():
    assert total_variation(torch.full((1, 3, 20, 30), 0.3)).item() == 0.0
    assert total_variation(torch.rand(1, 3, 20, 30)).item() > 0.0


def test_gram_is_normalised_by_positions():
    features = torch.rand(1, 5, 6, 7)
    upscaled = F.interpolate(features, scale_factor=2, mode="nearest")
    torch.testing.assert_close(gram_matrix(features), gram_matrix(upscaled))


def test_style_loss_similar_for_image_and_its_2x_upscale(net):
    image = _smooth_image(2)
    up = F.interpolate(image, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    # Gram magnitudes per layer: position-averaged, they match at 2x (summed ones would be 4x).
    small_features, large_features = net(image), net(up)
    for name in net.style_layers:
        ratio = gram_matrix(large_features[name]).norm() / gram_matrix(small_features[name]).norm()
        assert ratio.item() == pytest.approx(1.0, abs=0.25), name
    # The style loss against one fixed target (a very different, noisy style) matches too.
    style = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    small = StyleLoss(net, image, [style], style_scale=None)(image)["style"].item()
    large = StyleLoss(net, up, [style], style_scale=None)(up)["style"].item()
    assert large == pytest.approx(small, rel=0.2)


def test_blend_weights_interpolate_between_styles(net):
    content, a, b = _smooth_image(4), _smooth_image(5), _smooth_image(6)
    only_a = StyleLoss(net, content, [a, b], style_weights=[1, 0], style_scale=None)
    assert only_a(a)["style"].item() == pytest.approx(0.0, abs=1e-10)
    half = StyleLoss(net, content, [a, b], style_weights=[2, 2], style_scale=None)
    equal = StyleLoss(net, content, [a, b], style_scale=None)
    assert half(content)["style"].item() == pytest.approx(equal(content)["style"].item(), rel=1e-6)
    with pytest.raises(ValueError, match="2 style images"):
        StyleLoss(net, content, [a, b], style_weights=[1.0])
    with pytest.raises(ValueError, match="non-negative"):
        StyleLoss(net, content, [a], style_weights=[-1.0])
    with pytest.raises(ValueError, match="finite"):  # each is finite, their sum is not: every blend weight would be 0
        StyleLoss(net, content, [a, b], style_weights=[1e308, 1e308])


def test_total_is_weighted_sum_and_differentiable(net):
    content, style = _smooth_image(7), _smooth_image(8)
    loss = StyleLoss(net, content, [style], content_weight=2.0, style_weight=3.0, tv_weight=4.0)
    image = torch.rand_like(content).requires_grad_(True)
    parts = loss(image)
    expected = 2 * parts["content"] + 3 * parts["style"] + 4 * parts["tv"]
    torch.testing.assert_close(parts["total"], expected)
    parts["total"].backward()
    assert image.grad is not None and torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


def test_parts_are_relative_squared_errors_weighted_per_layer(net):
    """As documented: content = mean over content layers of ||F - P||^2 / ||P||^2, style = sum over style
    layers of w_l ||G - A||^2 / ||A||^2 (w_l the network's style layer weights), TV the mean squared
    neighbour difference; computed here from the network's features directly."""
    content, style, image = _smooth_image(12), _smooth_image(13), _smooth_image(14)
    parts = StyleLoss(net, content, [style], style_scale=None, tv_weight=1.0)(image)
    fx, fc, fs = net(image), net(content), net(style)
    rel = lambda a, b: float((a - b).pow(2).sum() / b.pow(2).sum())
    want_content = sum(rel(fx[n], fc[n]) for n in net.content_layers) / len(net.content_layers)
    want_style = sum(net.style_layer_weights[n] * rel(gram_matrix(fx[n]), gram_matrix(fs[n])) for n in net.style_layers)
    assert parts["content"].item() == pytest.approx(want_content, rel=1e-4)
    assert parts["style"].item() == pytest.approx(want_style, rel=1e-4)
    assert parts["tv"].item() == pytest.approx(total_variation(image).item(), rel=1e-6)
    assert min(want_content, want_style) > 1e-4  # neither term is trivially zero here


def test_style_scale_resizes_style_and_construction_is_deterministic(net):
    content, style = _smooth_image(9), _smooth_image(10, size=(200, 300))
    first = StyleLoss(net, content, [style], style_scale=0.5)(content)["style"].item()
    again = StyleLoss(net, content, [style], style_scale=0.5)(content)["style"].item()
    other_scale = StyleLoss(net, content, [style], style_scale=2.0)(content)["style"].item()
    assert first == again
    assert first != other_scale


def test_bad_inputs_are_refused(net):
    content = _smooth_image(11)
    with pytest.raises(ValueError, match="NaN"):
        StyleLoss(net, content, [torch.full_like(content, float("nan"))])
    with pytest.raises(ValueError, match="shape"):
        StyleLoss(net, content[0], [content])
    with pytest.raises(ValueError, match="at least one"):
        StyleLoss(net, content, [])
    with pytest.raises(ValueError, match="built for"):
        StyleLoss(net, content, [content])(torch.rand(1, 3, 32, 32))


def test_edge_pad_gives_the_border_pixels_interior_gradients(net):
    """With a mirrored border the loss network's zero padding no longer starves the outermost pixels."""
    content, style = _smooth_image(0, (96, 96)), _smooth_image(1)
    torch.manual_seed(0)
    image = (content + 0.1 * torch.randn_like(content)).clamp(0, 1)

    def border_over_interior(loss_fn):
        x = image.clone().requires_grad_(True)
        loss_fn(x)["total"].backward()
        g = x.grad.abs().mean(1)[0]
        edges = torch.cat([g[:, 0], g[0, :], g[:, -1], g[-1, :]]).mean()
        return float(edges / g[8:-8, 8:-8].mean())

    plain = StyleLoss(net, content, [style], edge_pad=0)
    padded = StyleLoss(net, content, [style], edge_pad=8)
    assert padded(content)["content"].item() == pytest.approx(0.0, abs=1e-10)  # the target is padded alike
    # ... and so are the style's Grams: the style itself scored 0.018 at 128 px with its Grams unframed
    square = style[..., :96, :96]
    assert StyleLoss(net, square, [square], edge_pad=8, style_scale=None)(square)["style"].item() == pytest.approx(
        0.0, abs=1e-10)
    assert padded(image)["total"].item() != plain(image)["total"].item()
    plain_ratio, padded_ratio = border_over_interior(plain), border_over_interior(padded)
    # not starved (the frame's receptive fields give them a little more than the interior: 1.28 here)
    assert plain_ratio < 0.8 and padded_ratio > 0.9, (plain_ratio, padded_ratio)
    # a pad wider than the image is cut to what reflection allows
    tiny = _smooth_image(2, (32, 32))
    assert torch.isfinite(StyleLoss(net, tiny, [style], edge_pad=64)(tiny)["total"])
    for bad in (-1, 1.5, 10_000):
        with pytest.raises(ValueError, match="edge pad"):
            StyleLoss(net, content, [style], edge_pad=bad)


def test_tv_of_a_one_pixel_side_is_finite():
    # an empty mean (no vertical neighbours) made the TV, and so the total, NaN
    assert total_variation(torch.rand(1, 3, 1, 1)).item() == 0.0
    row = torch.rand(1, 3, 1, 5)
    assert total_variation(row).item() == pytest.approx((row[..., 1:] - row[..., :-1]).pow(2).mean().item())
    image = torch.rand(1, 3, 6, 7)  # the usual case is unchanged, bit for bit
    dy, dx = image[..., 1:, :] - image[..., :-1, :], image[..., 1:] - image[..., :-1]
    assert torch.equal(total_variation(image), dy.pow(2).mean() + dx.pow(2).mean())


def test_images_of_the_wrong_kind_are_refused_clearly(net):
    content, style = _smooth_image(0, (40, 40)), _smooth_image(1, (40, 40))
    for bad, message in ((torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8), "floats in"),
                         (torch.rand(1, 3, 0, 40), "empty")):
        with pytest.raises(ValueError, match=f"content image .*{message}"):
            StyleLoss(net, bad, [style])
        with pytest.raises(ValueError, match=f"style image .*{message}"):
            StyleLoss(net, content, [bad])
    loss = StyleLoss(net, content, [style])
    # these were scored silently (broadcast to 3 channels, or the batch summed)
    for bad in (content[0], content[:, :1], content.expand(2, -1, -1, -1), content.long()):
        with pytest.raises(ValueError, match=r"float tensor of shape \(1, 3, H, W\)"):
            loss(bad)
    with pytest.raises(ValueError, match="image is on meta, the loss network on cpu"):
        loss(torch.empty(1, 3, 40, 40, device="meta"))


def test_float64_images_are_accepted(net):
    content, style = _smooth_image(0, (40, 40)), _smooth_image(1, (40, 40))
    loss32 = StyleLoss(net, content, [style], tv_weight=1.0)
    loss64 = StyleLoss(net, content.double(), [style.double()], tv_weight=1.0)  # a dtype error inside the net
    image = _smooth_image(2, (40, 40)).double().requires_grad_(True)
    total = loss64(image)["total"]
    total.backward()
    assert total.item() == pytest.approx(loss32(image.detach().float())["total"].item(), rel=1e-5)
    assert image.grad is not None and image.grad.dtype == torch.float64


def test_a_style_too_small_for_vgg_is_refused_clearly():
    from torchvision.models.vgg import cfgs, make_layers

    from artopt.style.loss_nets import VGG19LossNet

    torch.manual_seed(0)
    vgg = VGG19LossNet({f"features.{k}": v for k, v in make_layers(cfgs["E"]).state_dict().items()})
    content = _smooth_image(0, (48, 64))
    strip = torch.rand(1, 3, 20, 1000)  # 64 px long: 1 px high, which VGG-19's pooling empties
    with pytest.raises(ValueError, match="style image is 64x1 px at this size and style scale; vgg19 needs at least 16"):
        StyleLoss(vgg, content, [strip])
    with pytest.raises(ValueError, match="style image 2 is 64x1 px"):
        StyleLoss(vgg, content, [content, strip])
    assert torch.isfinite(StyleLoss(vgg, content, [torch.rand(1, 3, 20, 70)])(content)["total"])  # 64x18 fits
    with pytest.raises(ValueError, match=r"content image is 64x8 px; vgg19 needs at least 16 .*\(use a larger image\)"):
        StyleLoss(vgg, torch.rand(1, 3, 8, 64), [content])
