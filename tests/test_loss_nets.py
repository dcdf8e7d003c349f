"""Loss networks: frozen, correct weights (ImageNet accuracy), layer outputs, VGG-19 weight sources."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from artopt.style import loss_nets
from artopt.style.loss_nets import (
    LossNetError,
    build_efficientnet_lite0_classifier,
    build_loss_net,
    resolve_loss_net_name,
)



@pytest.fixture()
def no_vgg(monkeypatch, tmp_path):
    """No VGG-19 weights anywhere: empty hub cache, no env var, no download."""
    monkeypatch.delenv(loss_nets.VGG_WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A randomly initialised VGG-19 feature stack saved like torchvision's (features.* keys)."""
    from safetensors.torch import save_file
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    features = make_layers(cfgs["E"])  # VGG-19's conv stack, as torchvision numbers it
    path = tmp_path_factory.mktemp("vgg") / "vgg19.safetensors"
    save_file({f"features.{k}": v.contiguous() for k, v in features.state_dict().items()}, str(path))
    return path


def test_efficientnet_is_frozen_eval_and_returns_its_layers():
    net = build_loss_net("efficientnet-lite0")
    assert net.name == "efficientnet-lite0"
    assert not net.training and all(not p.requires_grad for p in net.parameters())
    net.train()  # stays in eval mode: batch-norm statistics must never move
    assert not net.training
    image = torch.rand(1, 3, 64, 96, requires_grad=True)
    features = net(image)
    assert set(features) == set(net.content_layers) | set(net.style_layers)
    assert abs(sum(net.style_layer_weights.values()) - 1) < 1e-6
    sum(f.mean() for f in features.values()).backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert build_loss_net("efficientnet-lite0") is net  # cached


def test_efficientnet_runs_only_the_blocks_its_layers_need():
    """The default layers end in stage 5's first block: the other three are not run, and the
    features are exactly those of the network run through its whole last stage."""
    from artopt.style.loss_nets import EFFNET_STYLE_LAYERS, EfficientNetLite0LossNet

    short = EfficientNetLite0LossNet()
    whole = EfficientNetLite0LossNet(style_layers=EFFNET_STYLE_LAYERS + ("s5",))
    assert [len(stage) for stage in short.blocks] == [1, 2, 2, 3, 3, 1]
    assert [len(stage) for stage in whole.blocks] == [1, 2, 2, 3, 3, 4]
    image = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        a, b = short(image), whole(image)
    assert set(b) - set(a) == {"s5"}
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_efficientnet_weights_classify_imagenet_photos(shared_data):
    """The by-position weight mapping and the [-1, 1] input scaling are right: top-1 on real photos."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    index_of = {info.index_to_label_name(i): i for i in range(1000)}
    files = sorted((shared_data / "imagenet-sample").glob("*.JPEG"))[::45][:20]
    batch, labels = [], []
    for f in files:
        image = TF.center_crop(TF.resize(Image.open(f).convert("RGB"), 256), 224)
        batch.append(TF.to_tensor(image))
        labels.append(index_of[f.name.split("_")[0]])
    x, y = torch.stack(batch), torch.tensor(labels)
    model = build_efficientnet_lite0_classifier()
    with torch.no_grad():
        accuracy = (model((x - 0.5) / 0.5).argmax(1) == y).float().mean().item()
    assert accuracy >= 0.7  # measured 0.89 on 100 photos; random weights or a bad mapping give ~0


def test_auto_uses_efficientnet_without_vgg_weights(no_vgg):
    assert resolve_loss_net_name("auto") == "efficientnet-lite0"


def test_auto_uses_efficientnet_when_the_torch_cache_cannot_be_read(no_vgg, monkeypatch):
    # e.g. HOME=/root kept under another user: the unreadable cache holds nothing this user can use
    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_file", refuse)
    assert resolve_loss_net_name("auto") == "efficientnet-lite0"


def test_a_non_checkpoint_vgg_file_gets_a_short_safe_message(no_vgg, tmp_path):
    image = tmp_path / "style.jpg"
    Image.new("RGB", (8, 8)).save(image)
    with pytest.raises(LossNetError, match="weights_only=True") as raised:
        build_loss_net("vgg19", vgg_weights=image)
    assert "weights_only set to False" not in str(raised.value)  # torch's advice would run the file's code


def test_vgg_without_weights_says_how_to_provide_them(no_vgg, tmp_path):
    with pytest.raises(LossNetError, match="--vgg-weights") as raised:
        build_loss_net("vgg19")
    assert str(tmp_path / "hub" / "checkpoints") in str(raised.value) and "{" not in str(raised.value)
    # Why the download failed (before: "not available offline", whatever the reason, e.g. a full disk).
    assert "torchvision's download of it failed (OSError: no network)" in str(raised.value)
    with pytest.raises(LossNetError, match="not found"):
        build_loss_net("vgg19", vgg_weights="/nonexistent/vgg19.pth")


def test_auto_refuses_a_named_vgg_file_that_is_missing(no_vgg, monkeypatch):
    # The user asked for these weights: falling back to EfficientNet quietly would hide the typo.
    with pytest.raises(LossNetError, match="not found"):
        resolve_loss_net_name("auto", "/nonexistent/vgg19.pth")
    monkeypatch.setenv(loss_nets.VGG_WEIGHTS_ENV, "/nonexistent/vgg19.pth")
    with pytest.raises(LossNetError, match="missing file"):
        build_loss_net("auto")


def test_vgg_from_env_file_is_auto_choice_with_gatys_layers(no_vgg, monkeypatch, vgg_file):
    monkeypatch.setenv(loss_nets.VGG_WEIGHTS_ENV, str(vgg_file))
    assert resolve_loss_net_name("auto") == "vgg19"
    net = build_loss_net("auto")
    assert net.name == "vgg19" and net.content_layers == ("relu4_2",)
    assert net.style_layers == ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    assert all(not p.requires_grad for p in net.parameters()) and not net.training
    features = net(torch.rand(1, 3, 64, 64))
    assert features["relu1_1"].shape == (1, 64, 64, 64) and features["relu5_1"].shape == (1, 512, 4, 4)


def test_vgg_average_pooling_and_bad_weight_files(no_vgg, vgg_file, tmp_path):
    net = build_loss_net("vgg19", vgg_weights=vgg_file, pooling="avg")
    assert any(isinstance(m, torch.nn.AvgPool2d) for m in net.features)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.features)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(LossNetError, match="could not read .*not a readable PyTorch state dict"):
        build_loss_net("vgg19", vgg_weights=corrupt)


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="unknown loss network"):
        build_loss_net("resnet")


def test_vgg_files_that_do_not_fit_say_which_file_and_what_is_wrong(no_vgg, vgg_file, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(vgg_file))
    cases = {
        "shape.pth": ({**state, "features.0.weight": torch.zeros(64, 3, 5, 5)},
                      r"wrong shape: features\.0\.weight is \(64, 3, 5, 5\), VGG-19 has \(64, 3, 3, 3\)"),
        "missing.pth": ({k: v for k, v in state.items() if k != "features.34.weight"}, r"missing features\.34\.weight$"),
        "nested.pth": ({"state_dict": state}, r"no 'features\.\*' tensors.*top-level keys: state_dict\)"),
        "nan.pth": ({**state, "features.2.bias": torch.full((64,), float("nan"))},
                    r"non-finite or non-float values in features\.2\.bias"),
    }
    for name, (content, message) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(LossNetError, match=message) as raised:
            build_loss_net("vgg19", vgg_weights=tmp_path / name)
        assert f"the VGG-19 weights file {tmp_path / name} " in str(raised.value)
        assert "\n" not in str(raised.value)  # one line, not torch's key-by-key listing


def test_a_vgg_weights_path_that_is_a_folder_says_so(no_vgg, monkeypatch, tmp_path):
    with pytest.raises(LossNetError, match="is a folder"):
        build_loss_net("vgg19", vgg_weights=tmp_path)
    monkeypatch.setenv(loss_nets.VGG_WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(LossNetError, match=f"{loss_nets.VGG_WEIGHTS_ENV} points to a folder"):
        build_loss_net("auto")


def test_vgg_refuses_images_its_pooling_would_empty(no_vgg, vgg_file):
    net = build_loss_net("vgg19", vgg_weights=vgg_file)
    assert net.min_input_side == 16 and build_loss_net("efficientnet-lite0").min_input_side == 16
    assert net(torch.rand(1, 3, 16, 40))["relu5_1"].shape[-2:] == (1, 2)
    with pytest.raises(ValueError, match=r"at least 16 px on each side, got \(8, 40\)"):
        net(torch.rand(1, 3, 8, 40))


def test_a_loss_net_name_that_is_not_a_string_is_refused():
    with pytest.raises(ValueError, match="loss network must be a name"):
        build_loss_net(None)


def test_both_networks_refuse_a_style_squeezed_to_a_strip():
    # A 2000x40 style shrunk for a 64 px output is 64x1: EfficientNet's padding ran on it, and its
    # Gram matrices came from padding; VGG-19 refused it.
    from artopt.style.losses import StyleLoss

    net = build_loss_net("efficientnet-lite0")
    with pytest.raises(ValueError, match="style image is 64x2 px .*efficientnet-lite0 needs at least 16 px"):
        StyleLoss(net, torch.rand(1, 3, 64, 64), [torch.rand(1, 3, 2, 64)])


def test_a_features_only_state_dict_loads_with_or_without_its_prefix(no_vgg, vgg_file, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(vgg_file))
    bare = {k[len("features."):]: v for k, v in state.items()}  # torch.save(vgg19().features.state_dict())
    torch.save(bare, tmp_path / "bare.pth")
    image = torch.rand(1, 3, 32, 32)
    expected = build_loss_net("vgg19", vgg_weights=vgg_file)(image)["relu3_1"]
    assert torch.equal(build_loss_net("vgg19", vgg_weights=tmp_path / "bare.pth")(image)["relu3_1"], expected)
    torch.save({**bare, "extra.weight": torch.zeros(1)}, tmp_path / "other.pth")  # not a VGG stack: still refused
    with pytest.raises(LossNetError, match="no 'features"):
        build_loss_net("vgg19", vgg_weights=tmp_path / "other.pth")


def test_a_safetensors_file_is_read_by_its_content_whatever_its_name(no_vgg, vgg_file, tmp_path):
    renamed = tmp_path / "vgg19.pth"
    renamed.write_bytes(vgg_file.read_bytes())
    assert build_loss_net("vgg19", vgg_weights=renamed).name == "vgg19"


def test_a_bad_file_in_the_torch_cache_says_how_to_get_past_it(no_vgg, tmp_path):
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / loss_nets.VGG19_CACHE_NAME).write_bytes(b"\x80\x02" + bytes(range(256)) * 20)
    with pytest.raises(LossNetError, match="download cache: delete it .*--loss-net efficientnet-lite0$"):
        build_loss_net("auto")
    named = tmp_path / "named.pth"  # a file the user named is theirs to fix: no word about the cache
    named.write_bytes(b"not a checkpoint")
    with pytest.raises(LossNetError) as raised:
        build_loss_net("vgg19", vgg_weights=named)
    assert "cache" not in str(raised.value)


def test_an_empty_vgg_weights_name_is_refused(no_vgg):
    with pytest.raises(LossNetError, match="file name is empty"):
        build_loss_net("auto", vgg_weights="")


def test_the_vgg_download_waits_a_bounded_time(monkeypatch, tmp_path):
    import socket

    monkeypatch.delenv(loss_nets.VGG_WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    seen = []

    def stalled(*args, **kwargs):  # what urllib raises once the timeout passes
        seen.append(socket.getdefaulttimeout())
        raise TimeoutError("timed out")

    monkeypatch.setattr(torch.hub, "download_url_to_file", stalled)
    before = socket.getdefaulttimeout()
    with pytest.raises(LossNetError, match=r"download of it failed \(TimeoutError: timed out\)"):
        build_loss_net("vgg19")
    assert seen == [loss_nets.DOWNLOAD_TIMEOUT] and socket.getdefaulttimeout() == before


@pytest.mark.parametrize("progress", [True, False])
def test_the_vgg_download_goes_to_torchs_cache_checked_and_quiet_when_asked(monkeypatch, tmp_path, capsys, vgg_file,
                                                                            progress):
    """torchvision's loader printed 'Downloading: ...' on stdout even with artopt's --quiet; the download
    is now artopt's own: into torch's cache (where torchvision looks), its hash checked, silent if asked."""
    monkeypatch.delenv(loss_nets.VGG_WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, Path(dst), hash_prefix, progress))
        Path(dst).write_bytes(vgg_file.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    net = build_loss_net("vgg19", download_progress=progress, pooling="avg")  # (avg: not another test's cache)
    cached = tmp_path / "hub" / "checkpoints" / loss_nets.VGG19_CACHE_NAME
    assert net.name == "vgg19" and calls == [(f"https://download.pytorch.org/models/{loss_nets.VGG19_CACHE_NAME}",
                                              cached, "dcbb9e9d", progress)]
    out, err = capsys.readouterr()
    assert out == "" and (("Downloading VGG-19" in err) == progress)
    assert build_loss_net("vgg19", pooling="avg") is net and len(calls) == 1  # found in the cache next time
    assert resolve_loss_net_name("auto") == "vgg19"


def test_long_messages_are_cut_at_a_sentence_end():
    long = "First sentence. " + "x" * 300
    assert loss_nets._first_sentence(RuntimeError(long)) == "First sentence."
    assert loss_nets._first_sentence(RuntimeError("y" * 300)) == "y" * 200 + "..."
    assert loss_nets._first_sentence(RuntimeError("short\nsecond line")) == "short"


class _RunsCodeWhenUnpickled:
    """A .pth that would run code on loading (pickle's __reduce__): weights_only=True must refuse it."""
    ran: list = []

    def __reduce__(self):
        return (_RunsCodeWhenUnpickled.ran.append, ("code ran",))


def test_a_vgg_pth_that_would_run_code_is_refused_without_running_it(no_vgg, tmp_path):
    # the JPEG test above raises the same error whether or not the file is unpickled safely
    path = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": _RunsCodeWhenUnpickled()}, path)
    with pytest.raises(LossNetError, match="weights_only=True"):
        build_loss_net("vgg19", vgg_weights=path)
    assert _RunsCodeWhenUnpickled.ran == []


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_vgg_normalizes_like_its_imagenet_weights_and_names_each_relu_by_its_block(no_vgg, vgg_file, pooling):
    """Inputs get torchvision's VGG-19 ImageNet mean/std, reluB_N is the N-th ReLU of block B of torchvision's
    stack (avg: its 2x2 max poolings made 2x2 averages), and the style layers weigh 1 in all: a wrong
    constant, index or window gives maps of the same shapes."""
    from safetensors.torch import load_file
    from torchvision.models import VGG19_Weights
    from torchvision.models.vgg import cfgs, make_layers

    state = load_file(str(vgg_file))
    reference = make_layers(cfgs["E"]).eval()
    reference.load_state_dict({k[len("features."):]: v for k, v in state.items()})
    if pooling == "avg":
        reference = torch.nn.Sequential(*(torch.nn.AvgPool2d(2) if isinstance(m, torch.nn.MaxPool2d) else m
                                          for m in reference))
    index, block, relu = {}, 1, 0
    for i, module in enumerate(reference):
        if isinstance(module, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)):
            block, relu = block + 1, 0
        elif isinstance(module, torch.nn.ReLU):
            relu += 1
            index[f"relu{block}_{relu}"] = i
    net = loss_nets.VGG19LossNet(state, content_layers=("relu4_2",), style_layers=tuple(index), pooling=pooling)
    assert sum(net.style_layer_weights.values()) == pytest.approx(1)
    transform = VGG19_Weights.IMAGENET1K_V1.transforms()
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x = (image - torch.tensor(transform.mean).view(1, 3, 1, 1)) / torch.tensor(transform.std).view(1, 3, 1, 1)
    with torch.no_grad():
        got = net(image)
        assert set(got) == set(index)
        for name, i in index.items():
            torch.testing.assert_close(got[name], reference[: i + 1](x), msg=name)


def test_efficientnet_scales_inputs_as_its_weights_expect_and_its_layers_sit_at_their_resolutions():
    """Inputs are scaled as timm's config for these weights says ([-1, 1]); each default "dw" layer is its
    block's depthwise activation (stride 2: half the expansion's side), at the resolution listed above."""
    net = build_loss_net("efficientnet-lite0")
    classifier = build_efficientnet_lite0_classifier()
    mean, std = (torch.tensor(classifier.pretrained_cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    image = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = net(image)
        torch.testing.assert_close(got["stem"], classifier.bn1(classifier.conv_stem((image - mean) / std)))
    assert {name: tuple(f.shape[-2:]) for name, f in got.items()} == {
        "stem": (32, 48), "b1.0.dw": (16, 24), "b2.0.dw": (8, 12), "b3.0.dw": (4, 6), "b5.0.dw": (2, 3)}


def test_efficientnet_layers_of_one_stage_may_be_listed_in_any_order():
    """The blocks run up to the deepest layer asked for in each stage, not the last one listed."""
    from artopt.style.loss_nets import EfficientNetLite0LossNet

    net = EfficientNetLite0LossNet(content_layers=("b5.1.dw",), style_layers=("stem", "b5.0.dw"))
    with torch.no_grad():
        got = net(torch.rand(1, 3, 64, 64))
    assert set(got) == {"b5.1.dw", "stem", "b5.0.dw"} and got["b5.1.dw"].shape[-2:] == (2, 2)
