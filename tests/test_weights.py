import json

import pytest
import torch

from artopt.learned_optimizers import LSTMOptimizerConfig, LSTMOptimizerNet, WeightsError, load_learned, save_learned


def test_round_trip_with_card(tmp_path):
    torch.manual_seed(0)
    nets = {"conv": LSTMOptimizerNet(), "fc": LSTMOptimizerNet(LSTMOptimizerConfig(output_scale=0.05)),
            "mlp": LSTMOptimizerNet(moment_inputs=True, head_hidden=8)}
    path = save_learned(tmp_path / "opt.safetensors", nets, {"task": "test"})
    loaded = load_learned(path)
    assert set(loaded) == {"conv", "fc", "mlp"}
    assert loaded["fc"].config.output_scale == 0.05 and loaded["mlp"].config.head_hidden == 8
    for name in nets:
        for (k, a), (_, b) in zip(nets[name].state_dict().items(), loaded[name].state_dict().items()):
            assert torch.equal(a, b), k
    assert json.loads((tmp_path / "opt.json").read_text())["task"] == "test"


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_learned(tmp_path / "nope.safetensors")


def test_corrupt_file(tmp_path):
    path = save_learned(tmp_path / "opt.safetensors", {"default": LSTMOptimizerNet()})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt"):
        load_learned(path)
    path.write_bytes(b"not a weights file at all")
    with pytest.raises(WeightsError):
        load_learned(path)


def test_shape_mismatch_names_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    path = save_learned(tmp_path / "opt.safetensors", {"default": LSTMOptimizerNet()})
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    # Claim a 30-unit LSTM while the tensors are for 20 units; and a corrupt million-unit one, whose
    # network (16 TB) used to be built before the check, so loading failed to allocate memory.
    info = json.loads(meta["artopt"])
    for units in (30, 10**6):
        info["nets"]["default"]["hidden_size"] = units
        save_file(tensors, str(path), metadata={"artopt": json.dumps(info)})
        with pytest.raises(WeightsError, match=r"default\.lstm\.weight_ih_l0 has shape"):
            load_learned(path)


def test_not_an_artopt_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(WeightsError, match="not an artopt optimizer file"):
        load_learned(path)


@pytest.mark.parametrize("meta", [
    [1, 2], {"format": "FORMAT"}, {"format": "FORMAT", "nets": []}, {"format": "FORMAT", "nets": {"default": 3}},
    {"format": "FORMAT", "nets": {}},  # no network: nothing to load
])
def test_malformed_metadata_is_a_weights_error(tmp_path, meta):
    from safetensors.torch import save_file

    from artopt.learned_optimizers.weights import FORMAT

    meta = json.loads(json.dumps(meta).replace('"FORMAT"', json.dumps(FORMAT)))
    path = tmp_path / "odd.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={"artopt": json.dumps(meta)})
    with pytest.raises(WeightsError, match="corrupt artopt metadata"):
        load_learned(path)


def _rewrite_config(path, change, tensors_change=None):
    """Rewrite a saved file with its metadata (and optionally tensors) changed."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        info = json.loads(f.metadata()["artopt"])
    change(info)
    if tensors_change is not None:
        tensors = {k: tensors_change(v) for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"artopt": json.dumps(info)})


@pytest.mark.parametrize("field, value", [("preprocess", "false"), ("output_scale", "0.1"), ("p", None),
                                          ("moment_inputs", 1), ("num_layers", "2")])
def test_a_mistyped_config_value_is_a_weights_error_naming_file_and_field(tmp_path, field, value):
    """preprocess "false" (truthy) used to load and run as True; a string output_scale or a null p
    loaded and failed at the first step."""
    path = save_learned(tmp_path / "opt.safetensors", {"default": LSTMOptimizerNet()})
    _rewrite_config(path, lambda info: info["nets"]["default"].__setitem__(field, value))
    with pytest.raises(WeightsError, match=rf"opt\.safetensors: bad config for network 'default': {field}"):
        load_learned(path)


def test_a_config_missing_an_original_field_is_refused_and_newer_fields_default(tmp_path):
    """A file without output_scale loaded with the default 0.1, ten times the step of an mnist-style
    network trained at 0.01."""
    path = save_learned(tmp_path / "opt.safetensors", {"default": LSTMOptimizerNet(output_scale=0.01)})
    _rewrite_config(path, lambda info: info["nets"]["default"].pop("output_scale"))
    with pytest.raises(WeightsError, match=r"opt\.safetensors: the config of network 'default' lacks \['output_scale'\]"):
        load_learned(path)
    # fields added after format 1 (here moment_inputs, head_hidden, ...) may be missing: old files
    path = save_learned(tmp_path / "old.safetensors", {"default": LSTMOptimizerNet()})
    _rewrite_config(path, lambda info: info["nets"].__setitem__("default", {
        k: info["nets"]["default"][k] for k in ("hidden_size", "num_layers", "preprocess", "p", "output_scale")}))
    assert load_learned(path)["default"].config == LSTMOptimizerConfig()


def test_a_file_from_a_newer_version_says_so(tmp_path):
    path = save_learned(tmp_path / "opt.safetensors", {"default": LSTMOptimizerNet()})
    _rewrite_config(path, lambda info: info["nets"]["default"].__setitem__("future_field", 1))
    with pytest.raises(WeightsError, match=r"opt\.safetensors: .*future_field.*newer version"):
        load_learned(path)
    _rewrite_config(path, lambda info: info.__setitem__("format", 2))
    with pytest.raises(WeightsError, match=r"opt\.safetensors: unsupported weights format 2 .*newer version"):
        load_learned(path)
    _rewrite_config(path, lambda info: info.__setitem__("format", True))  # True == 1 in Python
    with pytest.raises(WeightsError, match="unsupported weights format True"):
        load_learned(path)


def test_a_dotted_network_name_is_refused_when_saving(tmp_path):
    """Tensors are named <net>.<parameter>: a file saved for network "a.b" could not be loaded back."""
    with pytest.raises(ValueError, match="without '.'"):
        save_learned(tmp_path / "opt.safetensors", {"a.b": LSTMOptimizerNet()})
    assert not list(tmp_path.iterdir())


def test_loading_never_unpickles(tmp_path, monkeypatch):
    import pickle

    path = save_learned(tmp_path / "opt.safetensors", {"default": LSTMOptimizerNet(moment_inputs=True)})

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading weights")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    assert load_learned(path)["default"].config.moment_inputs


def test_weights_holding_nan_are_refused_naming_the_tensor(tmp_path):
    net = LSTMOptimizerNet()
    with torch.no_grad():
        net.head.bias.fill_(float("nan"))
    path = save_learned(tmp_path / "diverged.safetensors", {"default": net})
    with pytest.raises(WeightsError, match=r"diverged.safetensors: default.head.bias holds NaN or infinite"):
        load_learned(path)


def test_weights_of_integers_are_refused_not_cast(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = save_learned(tmp_path / "w.safetensors", {"default": LSTMOptimizerNet()})
    with safe_open(str(path), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    tensors["default.head.bias"] = tensors["default.head.bias"].round().to(torch.int64)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(WeightsError, match=r"w.safetensors: default.head.bias holds torch.int64 values"):
        load_learned(path)


def test_saved_weights_get_the_same_permissions_as_any_file_written_there(tmp_path):
    # Before: safetensors' save_file made them owner-only (0600) whatever the umask, so a run's best
    # weights could not be read by the other users of a shared install; its card was 0644.
    path = save_learned(tmp_path / "opt.safetensors", {"default": LSTMOptimizerNet()}, card={"task": "x"})
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    assert path.with_suffix(".json").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    assert load_learned(path)["default"].config == LSTMOptimizerConfig()


def test_tensors_the_metadata_does_not_declare_are_refused(tmp_path):
    """A stray tensor means the file is not what its metadata says (e.g. one network's file saved
    over with another's tensors): an extra parameter of a declared network, or another network."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = save_learned(tmp_path / "w.safetensors", {"default": LSTMOptimizerNet()})
    with safe_open(str(path), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_file({**tensors, "default.bogus": torch.zeros(2)}, str(path), metadata=meta)
    with pytest.raises(WeightsError, match=r"network 'default' tensors do not match.*unexpected \['bogus'\]"):
        load_learned(path)
    save_file({**tensors, "fc.head.bias": torch.zeros(1)}, str(path), metadata=meta)
    with pytest.raises(WeightsError, match=r"tensors for undeclared networks: \['fc.head.bias'\]"):
        load_learned(path)


def test_atomic_text_writes_follow_a_link_and_leave_nothing_behind_on_failure(tmp_path):
    """A card reached through a symbolic link is updated at its target (as a shell's > does), and
    a failed write leaves neither a half-written file nor its temporary."""
    from artopt.learned_optimizers.weights import write_text_atomic

    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    (tmp_path / "folder").mkdir()
    with pytest.raises(OSError):  # a file cannot replace a folder
        write_text_atomic(tmp_path / "folder", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "link.json", "real.json"]
