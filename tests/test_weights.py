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
    # Claim a 30-unit LSTM while the tensors are for 20 units.
    info = json.loads(meta["artopt"])
    info["nets"]["default"]["hidden_size"] = 30
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
])
def test_malformed_metadata_is_a_weights_error(tmp_path, meta):
    from safetensors.torch import save_file

    from artopt.learned_optimizers.weights import FORMAT

    meta = json.loads(json.dumps(meta).replace('"FORMAT"', json.dumps(FORMAT)))
    path = tmp_path / "odd.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={"artopt": json.dumps(meta)})
    with pytest.raises(WeightsError, match="corrupt artopt metadata"):
        load_learned(path)
