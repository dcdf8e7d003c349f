"""Tasks: the paper's optimizee problems, the registry and data loading.

Most tests use tiny synthetic datasets written to tmp_path (fast, and independent of the shared
data); one smoke test per dataset runs on the real files when they are present.
"""


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from artopt.tasks import CIFARTask, MNISTTask, QuadraticTask, get_task
from artopt.tasks.data import (DataNotFoundError, data_root, load_cifar10, load_mnist, load_npz,
                               minibatch_indices, split_seed)
from artopt.tasks.quadratic import quadratic_problem


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- synthetic data ----------------------------------------------------------------------------

@pytest.fixture
def mnist_dir(tmp_path):
    """Train images are all labelled 0, test images all 1: a problem's split shows in its loss."""
    rng = np.random.default_rng(0)
    d = tmp_path / "mnist"
    d.mkdir()
    np.savez(d / "mnist_train.npz", x=rng.integers(0, 256, (300, 28, 28), dtype=np.uint8), y=np.zeros(300, np.uint8))
    np.savez(d / "mnist_t10k.npz", x=rng.integers(0, 256, (100, 28, 28), dtype=np.uint8), y=np.ones(100, np.uint8))
    load_mnist.cache_clear()
    yield str(d)
    load_mnist.cache_clear()


@pytest.fixture
def cifar_dir(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "cifar10"
    d.mkdir()
    np.savez(d / "cifar10_subset.npz",
             x_train=rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8), y_train=np.arange(200) % 10,
             x_test=rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8), y_test=np.arange(50) % 10)
    load_cifar10.cache_clear()
    yield str(d)
    load_cifar10.cache_clear()


def _as_graph_of(params, scale):
    """θ as a differentiable function of another leaf, as in meta-training (θ_t depends on φ)."""
    return [p * scale for p in params]


# ---- registry ----------------------------------------------------------------------------------

def test_registry_names_and_variants():
    assert get_task("mnist-40").hidden == (40,)
    assert get_task("mnist-2layer").hidden == (20, 20)
    assert get_task("mnist-relu").activation == "relu"
    assert get_task("cifar2").labels == (0, 1)
    assert get_task("cifar5-heldout").labels == (5, 6, 7, 8, 9)
    assert get_task("quadratic").steps == 100 and get_task("quadratic").unroll == 20
    t = get_task("mnist", steps=200, hidden=[40])
    assert t.steps == 200 and t.hidden == (40,)
    assert t.name == "mnist[hidden=(40),steps=200]"  # overrides show in the name (cache keys)
    # root= says where the data is, not what the task is: the name (and rate caches keyed by it) stays
    assert get_task("mnist", root="/elsewhere/mnist").name == "mnist"
    assert get_task("mnist", root="/elsewhere/mnist", steps=200).name == "mnist[steps=200]"


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown task"):
        get_task("imagenet")
    with pytest.raises(ValueError, match="bad arguments"):
        get_task("mnist", hiden=(3,))
    with pytest.raises(ValueError, match="activation"):
        get_task("mnist", activation="swish")
    with pytest.raises(ValueError, match="labels"):
        get_task("cifar10", labels=[3])
    with pytest.raises(ValueError, match="labels"):
        get_task("cifar10", labels=[1, 1])
    with pytest.raises(ValueError, match="batch_size at least 2"):  # batch norm needs two images
        get_task("cifar10", batch_size=1)


# ---- quadratic ---------------------------------------------------------------------------------

def test_quadratic_loss_is_the_formula():
    p = QuadraticTask().sample(gen(), "train")
    theta = torch.randn(10)
    # Rebuild W, y, θ₀ the way the task documents it draws them, and compare with the closed form.
    g = torch.Generator().manual_seed(split_seed(gen(), "train"))
    W, y = torch.randn(10, 10, generator=g), torch.randn(10, generator=g)
    theta0 = 0.01 * torch.randn(10, generator=g)
    assert torch.allclose(p.params[0], theta0)
    assert torch.allclose(p.loss([theta], 0), ((W @ theta - y) ** 2).sum())
    assert p.loss([theta], 0) == p.loss([theta], 57)  # deterministic: t plays no part


def test_quadratic_metric_gap_is_zero_at_optimum():
    W, y = torch.randn(4, 4, generator=gen(1)), torch.randn(4, generator=gen(2))
    prob = quadratic_problem(W, y, torch.zeros(4))
    opt = torch.linalg.solve(W, y)
    assert abs(prob.metric([opt])["optimum_gap"]) < 1e-4
    assert prob.metric([torch.zeros(4)])["optimum_gap"] > 0


def test_quadratic_metric_gap_subtracts_the_minimum_of_a_singular_quadratic():
    # A rank-deficient W cannot reach y: f* > 0, and the gap at the least-squares solution is still 0.
    W = torch.tensor([[1.0, 2.0], [2.0, 4.0]])
    y = torch.tensor([1.0, 0.0])
    prob = quadratic_problem(W, y, torch.zeros(2))
    best = torch.linalg.lstsq(W, y.unsqueeze(-1)).solution.squeeze(-1)
    assert float(prob.loss([best], 0)) > 0.5
    assert abs(prob.metric([best])["optimum_gap"]) < 1e-5


def test_batched_quadratic_gives_each_function_its_own_gradient():
    p = QuadraticTask(batch=3).sample(gen(), "train")
    assert p.params[0].shape == (3, 10)
    theta = torch.randn(3, 10, requires_grad=True)
    (grad,) = torch.autograd.grad(p.loss([theta], 0), theta)
    g = torch.Generator().manual_seed(split_seed(gen(), "train"))
    W, y = torch.randn(3, 10, 10, generator=g), torch.randn(3, 10, generator=g)
    for b in range(3):
        row = theta[b].detach().requires_grad_(True)
        (expected,) = torch.autograd.grad(((W[b] @ row - y[b]) ** 2).sum(), row)
        torch.testing.assert_close(grad[b], expected)
    # The optimum gap adds up over the batch and vanishes at the joint optimum.
    best = torch.linalg.solve(W, y.unsqueeze(-1)).squeeze(-1)
    assert abs(p.metric([best])["optimum_gap"]) < 1e-3
    with pytest.raises(ValueError, match="batch"):
        QuadraticTask(batch=0)


def test_splits_and_seeds():
    task = QuadraticTask()
    a = task.sample(gen(0), "train")
    b = task.sample(gen(0), "train")
    c = task.sample(gen(0), "test")
    d = task.sample(gen(0), "val")
    x = torch.randn(10)
    assert torch.equal(a.params[0], b.params[0]) and a.loss([x], 0) == b.loss([x], 0)  # reproducible
    assert a.loss([x], 0) != c.loss([x], 0) and a.loss([x], 0) != d.loss([x], 0)  # splits differ
    assert c.loss([x], 0) != d.loss([x], 0)  # checkpoint selection never sees the evaluation problems
    g = gen(0)
    first, second = task.sample(g, "train"), task.sample(g, "train")
    assert first.loss([x], 0) != second.loss([x], 0)  # a fresh problem each draw
    with pytest.raises(ValueError, match="split"):
        task.sample(gen(0), "validation")


# ---- MNIST -------------------------------------------------------------------------------------

def test_mnist_shapes_groups_and_init(mnist_dir):
    p = MNISTTask(hidden=(20, 20), root=mnist_dir).sample(gen(), "train")
    assert [tuple(t.shape) for t in p.params] == [(20, 784), (20,), (20, 20), (20,), (10, 20), (10,)]
    assert p.groups == ["default"] * 6
    assert 0.005 < float(p.params[0].std()) < 0.015  # N(0, 0.01²)


def test_mnist_width_mixture_draws_each_listed_width(mnist_dir):
    task = MNISTTask(hidden=(20, 20), widths=[10, 30], root=mnist_dir)
    g = gen()
    seen = {tuple(task.sample(g, "train").params[0].shape) for _ in range(20)}
    assert seen == {(10, 784), (30, 784)}
    p = task.sample(g, "train")
    width = p.params[0].shape[0]
    # every hidden layer gets that width, and none is dropped (both layers: 6 tensors)
    assert [tuple(t.shape) for t in p.params] == [(width, 784), (width,), (width, width), (width,), (10, width), (10,)]
    with pytest.raises(ValueError, match="widths"):
        MNISTTask(widths=[], root=mnist_dir)


def test_mnist_pool_limits_each_problem_to_its_own_images(mnist_dir):
    def batch_losses(task, seed):
        p = task.sample(gen(seed), "train")
        params = p.fresh_params(requires_grad=False)
        params[0] = torch.randn(params[0].shape, generator=gen(1))  # make the loss depend on the images
        return [float(p.loss(params, t)) for t in range(4)]

    # A pool of one image: every minibatch is that image repeated, so every step sees the same loss.
    one = batch_losses(MNISTTask(root=mnist_dir, batch_size=16, pool=1), 0)
    assert one == pytest.approx([one[0]] * 4)
    assert batch_losses(MNISTTask(root=mnist_dir, batch_size=16, pool=1), 5)[0] != pytest.approx(one[0])  # own image
    whole = batch_losses(MNISTTask(root=mnist_dir, batch_size=16), 0)
    assert len(set(whole)) == 4
    # A pool as large as the split leaves the problems unchanged.
    assert batch_losses(MNISTTask(root=mnist_dir, batch_size=16, pool=300), 0) == whole
    assert get_task("mnist", pool=10_000).name == "mnist[pool=10000]"
    with pytest.raises(ValueError, match="pool"):
        MNISTTask(root=mnist_dir, pool=0)


def test_mnist_batches_are_a_function_of_t(mnist_dir):
    p = MNISTTask(root=mnist_dir, batch_size=16).sample(gen(), "train")
    params = p.fresh_params(requires_grad=False)
    params[0] = torch.randn_like(params[0])  # make the loss depend on the images
    assert p.loss(params, 3) == p.loss(params, 3)
    assert p.loss(params, 3) != p.loss(params, 4)
    idx = minibatch_indices(1234, 7, 300, 16)
    assert torch.equal(idx, minibatch_indices(1234, 7, 300, 16))
    assert idx.min() >= 0 and idx.max() < 300
    assert not torch.equal(idx, minibatch_indices(1234, 8, 300, 16))
    assert not torch.equal(idx, minibatch_indices(1235, 7, 300, 16))


def test_mnist_loss_differentiable_through_params(mnist_dir):
    for activation in ("sigmoid", "relu"):
        p = MNISTTask(root=mnist_dir, activation=activation, batch_size=8).sample(gen(), "train")
        scale = torch.tensor(1.5, requires_grad=True)
        loss = p.loss(_as_graph_of(p.params, scale), 0)
        (g,) = torch.autograd.grad(loss, scale)
        assert torch.isfinite(g) and g != 0


def test_mnist_test_split_uses_test_images(mnist_dir):
    task = MNISTTask(root=mnist_dir, batch_size=32)
    train, test = task.sample(gen(), "train"), task.sample(gen(), "test")
    # Bias the output towards class 0: right on the training labels (all 0), wrong on test (all 1).
    params = [torch.zeros_like(t) for t in train.params]
    params[-1][0] = 5.0
    assert float(train.loss(params, 0)) < 0.1 < 4.0 < float(test.loss(params, 0))
    assert train.metric(params)["accuracy"] == 1.0 and test.metric(params)["accuracy"] == 0.0


def test_mnist_val_split_draws_from_the_training_images(mnist_dir):
    """Validation problems must not use the test images (the module's documented split)."""
    val = MNISTTask(root=mnist_dir, batch_size=32).sample(gen(), "val")
    params = [torch.zeros_like(t) for t in val.params]
    params[-1][0] = 5.0  # right on the training labels (all 0), wrong on test (all 1)
    assert float(val.loss(params, 0)) < 0.1 and val.metric(params)["accuracy"] == 1.0


def test_mnist_logits_are_computed_on_pixels_scaled_to_0_1(tmp_path):
    """A closed-form check of the forward pass on a split of one repeated image: pixels / 255."""
    image = np.random.default_rng(2).integers(0, 256, (28, 28), dtype=np.uint8)
    for name in ("mnist_train.npz", "mnist_t10k.npz"):
        np.savez(tmp_path / name, x=np.stack([image] * 4), y=np.full(4, 3, np.uint8))
    p = MNISTTask(root=str(tmp_path), hidden=(5,), batch_size=4).sample(gen(), "train")
    params = [torch.randn(t.shape, generator=gen(i)) for i, t in enumerate(p.params)]
    h = torch.sigmoid(F.linear(torch.from_numpy(image).reshape(1, -1).float() / 255.0, params[0], params[1]))
    expected = F.cross_entropy(F.linear(h, params[2], params[3]), torch.tensor([3]))
    torch.testing.assert_close(p.loss(params, 0), expected)
    load_mnist.cache_clear()


def test_mnist_real_data_smoke(shared_data):
    x, y = load_mnist("test")
    assert x.shape == (10_000, 28, 28) and x.dtype == torch.uint8 and set(y.unique().tolist()) == set(range(10))
    p = get_task("mnist").sample(gen(), "test")
    assert abs(float(p.loss(p.params, 0)) - np.log(10)) < 0.05  # tiny init: near-uniform predictions


# ---- CIFAR -------------------------------------------------------------------------------------

def test_cifar_structure_and_groups(cifar_dir):
    p = CIFARTask(root=cifar_dir, batch_size=8).sample(gen(), "train")
    shapes = [tuple(t.shape) for t in p.params]
    assert shapes[:3] == [(16, 3, 5, 5), (16,), (16,)]
    assert shapes[3 * 3:] == [(32, 16 * 4 * 4), (32,), (32,), (32,), (10, 32), (10,)]
    assert p.groups == ["conv"] * 9 + ["fc"] * 6


def test_cifar_forward_backward_and_batch_norm(cifar_dir):
    p = CIFARTask(root=cifar_dir, batch_size=8).sample(gen(), "train")
    scale = torch.tensor(1.0, requires_grad=True)
    params = list(p.params)
    params[-1] = params[-1] * scale  # output bias, a function of another leaf
    params[-2] = torch.randn(10, 32)
    loss = p.loss(params, 0)
    (g,) = torch.autograd.grad(loss, scale)
    assert torch.isfinite(loss) and torch.isfinite(g)
    # Batch norm with batch statistics: rescaling a conv layer's weights changes nothing.
    scaled = list(params)
    scaled[3] = params[3] * 7.0
    assert torch.allclose(p.loss(scaled, 0), p.loss(params, 0), rtol=1e-4)
    assert p.loss(params, 2) == p.loss(params, 2) and p.loss(params, 2) != p.loss(params, 3)


def test_cifar_label_subsets(cifar_dir):
    task = CIFARTask(root=cifar_dir, labels=(5, 7), batch_size=8)
    p = task.sample(gen(), "test")
    assert tuple(p.params[-1].shape) == (2,)
    from artopt.tasks.cifar import _subset

    x, y = _subset("test", (5, 7), cifar_dir)
    assert x.shape[0] == 10 and set(y.tolist()) == {0, 1}  # 50 test images, labels 5 and 7 → 0, 1
    m = p.metric(p.params)
    assert 0.0 <= m["accuracy"] <= 1.0


def test_cifar_val_split_draws_from_the_training_images(tmp_path):
    """Validation problems must not use the test images: train labels are all 0, test all 1."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cifar10_subset.npz",
             x_train=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), y_train=np.zeros(40, np.int64),
             x_test=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), y_test=np.ones(20, np.int64))
    task = CIFARTask(root=str(tmp_path), labels=(0, 1), batch_size=8)
    val, test = task.sample(gen(), "val"), task.sample(gen(), "test")
    params = [torch.zeros_like(t) for t in val.params]
    params[-1][0] = 5.0  # output biased towards class 0
    assert float(val.loss(params, 0)) < 0.1 < 4.0 < float(test.loss(params, 0))
    load_cifar10.cache_clear()


def test_cifar_inputs_are_standardised_per_channel_with_the_training_sets_statistics(tmp_path):
    """Scaling and shifting one channel of the whole dataset changes no loss: each channel is
    standardised with its own training-set mean and std before the first conv layer."""
    base = np.random.default_rng(0).integers(0, 100, (64, 32, 32, 3)).astype(np.uint8)
    changed = base.copy()
    changed[..., 0] = changed[..., 0] * 2 + 20  # (uint8: at most 218 and 249)
    changed[..., 1] += 150
    losses = []
    for name, x in (("base", base), ("changed", changed)):
        (tmp_path / name).mkdir()
        np.savez(tmp_path / name / "cifar10_subset.npz", x_train=x, y_train=np.arange(64) % 10,
                 x_test=x[:20], y_test=np.arange(20) % 10)
        p = CIFARTask(root=str(tmp_path / name), batch_size=16).sample(gen(), "train")
        params = [torch.randn(t.shape, generator=gen(i)) for i, t in enumerate(p.params)]
        losses.append(float(p.loss(params, 0)))
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    load_cifar10.cache_clear()


def test_cifar_real_data_smoke(shared_data):
    load_cifar10("test")
    p = get_task("cifar2", batch_size=16).sample(gen(), "test")
    assert abs(float(p.loss(p.params, 0)) - np.log(2)) < 0.05


# ---- data location and loading -----------------------------------------------------------------

def test_data_root_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("ARTOPT_DATA", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.setenv("ARTOPT_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataNotFoundError, match="nope"):
        data_root()


def test_missing_and_corrupt_data(tmp_path):
    with pytest.raises(DataNotFoundError, match="MNIST not found"):
        load_mnist("train", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="not found"):
        load_cifar10("train", str(tmp_path / "absent"))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match="corrupt"):
        load_npz(bad, ("x",))
    np.savez(tmp_path / "few.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="missing arrays"):
        load_npz(tmp_path / "few.npz", ("x", "y"))
    np.savez(tmp_path / "mnist_train.npz", x=np.zeros((4, 28, 28), np.float32), y=np.zeros(4))
    with pytest.raises(ValueError, match="uint8"):
        load_mnist("train", str(tmp_path))
    with pytest.raises(ValueError, match="split"):
        load_mnist("val", str(tmp_path))


def _write_idx(path, array):
    dims = array.shape
    header = bytes([0, 0, 0x08, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    x, y = load_mnist("test", str(tmp_path))
    assert x.shape == (4, 28, 28) and y.tolist() == [0, 1, 2, 3]


def test_labels_outside_the_classes_or_not_one_per_image_are_refused(tmp_path):
    """Caught when loading, not as an index error (or a silently wrong loss) inside cross_entropy."""
    x = np.zeros((4, 28, 28), np.uint8)
    for labels, message in ((np.array([0, 1, 9, 10]), "labels outside 0..9"), (np.zeros(3), "labels of shape")):
        np.savez(tmp_path / "mnist_train.npz", x=x, y=labels)
        load_mnist.cache_clear()
        with pytest.raises(ValueError, match=message):
            load_mnist("train", str(tmp_path))
    load_mnist.cache_clear()


def test_cifar_torchvision_layout_loads_the_split_asked_for(tmp_path, monkeypatch):
    """A torchvision CIFAR-10 folder: "test" must read the test batch (train=False), not the training one."""
    import torchvision.datasets

    class FakeCIFAR10:  # torchvision checks the real archive's checksums; stand in for it
        def __init__(self, root, train, download):
            n = 6 if train else 4
            self.data = np.zeros((n, 32, 32, 3), np.uint8)
            self.targets = list(range(n))

    (tmp_path / "cifar-10-batches-py").mkdir()
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    load_cifar10.cache_clear()
    assert load_cifar10("test", str(tmp_path))[0].shape[0] == 4
    assert load_cifar10("train", str(tmp_path))[0].shape[0] == 6
    load_cifar10.cache_clear()


def test_a_task_arg_at_its_default_leaves_the_task_name_as_it_is():
    """Results and cached rates are keyed by the name: --task-arg hidden=[40] on mnist-40 is mnist-40."""
    from artopt.tasks import get_task, task_defaults

    assert task_defaults("mnist-40")["hidden"] == [40] and task_defaults("quadratic")["dim"] == 10
    assert get_task("quadratic", dim=10).name == "quadratic"
    assert get_task("quadratic", dim=11, steps=100).name == "quadratic[dim=11]"
    assert get_task("mnist-40", hidden=[40]).name == "mnist-40"
    assert get_task("mnist-40", hidden=[20]).name == "mnist-40[hidden=(20)]"


def test_task_args_parse_as_json_and_name_a_malformed_one():
    from artopt.tasks import parse_task_args

    assert parse_task_args(["batch=128", "labels=[5,6]"]) == {"batch": 128, "labels": [5, 6]}
    for bad in ("foo", "batch=abc", "=3"):
        with pytest.raises(ValueError, match=f"KEY=JSON, got '{bad}'"):
            parse_task_args([bad])
    with pytest.raises(ValueError, match="--task-arg name: the task's name is made from its suite"):
        parse_task_args(["name=5"])  # was get_task's TypeError "multiple values for argument 'name'"


@pytest.mark.parametrize("suite, kwargs, message", [
    # each failed later, inside torch, with a traceback
    ("quadratic", {"batch": 1.5}, "batch must be a whole number, got 1.5"),
    ("quadratic", {"batch": True}, "batch must be a whole number, got true"),
    ("quadratic", {"init_std": "x"}, 'init_std must be a finite number, got "x"'),
    ("quadratic", {"init_std": float("inf")}, "init_std must be a finite number, got Infinity"),
    ("mnist", {"hidden": [20, "a"]}, 'hidden must be a list of whole numbers, got [20, "a"]'),
    ("mnist", {"pool": 2.5}, "pool must be a whole number or null, got 2.5"),
    ("neural-art", {"styles": "starry_night.jpg"}, 'styles must be a list of strings, got "starry_night.jpg"'),
    ("neural-art", {"size_range": [48]}, "size_range must be two whole numbers, [low, high] or null, got [48]"),
])
def test_a_task_setting_of_the_wrong_type_is_named_before_the_task_is_built(suite, kwargs, message):
    with pytest.raises(ValueError) as caught:
        get_task(suite, **kwargs)
    assert str(caught.value) == f"bad arguments for task {suite!r}: {message}"


def test_task_settings_of_the_right_type_still_pass(tmp_path):
    import numpy as np

    assert get_task("quadratic", init_std=1, batch=2).init_std == 1  # an int where a float is expected
    assert get_task("mnist", pool=None, widths=[10, 20]).widths == (10, 20)
    # numpy numbers and a pathlib root (annotated str) worked before the type checks, and still do
    assert get_task("quadratic", steps=np.int64(50), init_std=np.float32(0.1)).steps == 50
    assert get_task("mnist", root=tmp_path).root == tmp_path and get_task("cifar10", root=tmp_path).root == tmp_path


def test_bad_data_under_the_data_folder_names_the_file_and_artopt_data(tmp_path, monkeypatch):
    monkeypatch.setenv("ARTOPT_DATA", str(tmp_path))
    (tmp_path / "mnist").mkdir()
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "mnist" / "mnist_train.npz").write_bytes(b"junk, not a zip")  # np.load took it for a pickle
    with pytest.raises(ValueError, match=r"mnist_train\.npz: corrupt or not an \.npz file.*ARTOPT_DATA"):
        load_mnist("train")
    np.savez(tmp_path / "cifar10" / "cifar10_subset.npz", x_train=np.zeros((2, 32, 32, 3), np.float32),
             y_train=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"cifar10_subset\.npz.*ARTOPT_DATA"):  # the file, not just "CIFAR-10 train"
        load_cifar10("train")
    # A folder passed as root= is the user's own: the message names the file, no hint about ARTOPT_DATA.
    np.savez(tmp_path / "mnist_t10k.npz", x=np.zeros((0, 28, 28), np.uint8), y=np.zeros(0, np.uint8))
    with pytest.raises(ValueError, match="holds no images") as err:  # was torch.randint's error at the first step
        load_mnist("test", str(tmp_path))
    assert "mnist_t10k.npz" in str(err.value) and "ARTOPT_DATA" not in str(err.value)


def test_cifar_metric_with_a_batch_larger_than_the_split(cifar_dir):
    # 10 test images of labels 5 and 7, batches of 16: the metric divided by zero after the run.
    p = CIFARTask(root=cifar_dir, labels=(5, 7), batch_size=16).sample(gen(), "test")
    m = p.metric(p.params)
    assert 0.0 <= m["accuracy"] <= 1.0 and np.isfinite(m["loss"])


def test_a_problem_refuses_parameters_it_cannot_optimize():
    from artopt.tasks import Problem

    loss = lambda ps, t: ps[0].sum()
    with pytest.raises(ValueError, match="at least one parameter"):
        Problem([], loss)
    with pytest.raises(TypeError, match=r"params\[0\] must be a torch.Tensor, got ndarray"):
        Problem([np.zeros(3, np.float32)], loss)
    with pytest.raises(TypeError, match=r"params\[1\] must be floating point.*int64"):
        Problem([torch.zeros(3), torch.tensor([0, 0])], loss)
    with pytest.raises(TypeError, match="loss must be a function"):
        Problem([torch.zeros(3)], 0.0)
    # model.parameters(), a generator, is read once into the list every optimizer indexes.
    model = torch.nn.Linear(3, 2)
    p = Problem(model.parameters(), loss)
    assert [tuple(x.shape) for x in p.params] == [(2, 3), (2,)] and p.groups == ["default", "default"]


def test_a_problem_refuses_groups_that_do_not_name_one_network_per_parameter():
    """Optimizers pair params and groups with zip: a short list would leave parameters unoptimized."""
    from artopt.tasks import Problem

    with pytest.raises(ValueError, match="one network group per parameter"):
        Problem([torch.zeros(3), torch.zeros(2)], lambda ps, t: ps[0].sum() + ps[1].sum(), groups=["conv"])


def test_stacking_stacked_problems_counts_every_problem_inside():
    """count is what meta-training averages over: a stack of a 2-stack and a single holds 3 problems."""
    from artopt.tasks import stack_problems

    a, b, c = (QuadraticTask().sample(gen(i)) for i in range(3))
    nested = stack_problems([stack_problems([a, b]), c])
    assert nested.count == 3 and len(nested.params) == 3
    x = [torch.randn(10, generator=gen(9)) for _ in range(3)]
    assert float(nested.loss(x, 0)) == pytest.approx(sum(float(p.loss([xi], 0)) for p, xi in zip((a, b, c), x)))


def test_stacking_projects_each_problem_by_its_own_projection_or_none():
    """A stack of a clamped problem and an unclamped one keeps every parameter, clamping only the first's."""
    from artopt.tasks import Problem, stack_problems

    clamped = Problem([torch.zeros(2)], lambda ps, t: ps[0].sum(), project=lambda ps: [ps[0].clamp(0, 1)])
    free = Problem([torch.zeros(3)], lambda ps, t: ps[0].sum())
    out = stack_problems([clamped, free]).project([torch.tensor([-1.0, 2.0]), torch.tensor([-1.0, 2.0, 5.0])])
    assert [x.tolist() for x in out] == [[0.0, 1.0], [-1.0, 2.0, 5.0]]


def test_a_task_of_ones_own_gets_split_seed_from_artopt_tasks():
    from artopt.tasks import split_seed as exported

    assert exported is split_seed
    g1, g2 = gen(3), gen(3)
    assert exported(g1, "val") == split_seed(g2, "val") != split_seed(gen(3), "train")


@pytest.mark.parametrize("name,kwargs,message", [
    ("quadratic", {"steps": 0}, "steps must be a positive whole number"),
    ("quadratic", {"steps": -3}, "steps must be a positive whole number"),
    ("mnist", {"unroll": 0}, "unroll must be a positive whole number"),
])
def test_a_task_without_a_positive_horizon_is_refused_when_made(name, kwargs, message):
    # Before: it was made, and evaluation failed far from the cause (a traceback from the lr search)
    with pytest.raises(ValueError, match=message):
        get_task(name, **kwargs)
