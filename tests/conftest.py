import os

import pytest
import torch

# Two shared CPU cores: tests are small, and one thread keeps them deterministic and polite.  The
# variable keeps artopt's CLI and web app from choosing threads by the load (artopt.cpu) in-process;
# tests/test_cpu.py tests that choice.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def skip_or_fail(why: str) -> None:
    """Skip a test whose shared data or browser is missing; under CI (CI=true) fail instead:
    .ci/run installs the browser and locates the data, so a missing one there is a broken setup."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{why} (required when CI=true)", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def shared_data():
    """The shared data folder (``artopt.tasks.data.data_root``); skips (fails under CI) without it."""
    from artopt.tasks.data import DataNotFoundError, data_root

    try:
        return data_root()
    except DataNotFoundError as e:
        skip_or_fail(f"shared data missing: {e}")


@pytest.fixture(autouse=True)
def _no_vgg_weights_from_this_machine(monkeypatch, tmp_path_factory):
    """The loss network "auto" picks VGG-19 where $ARTOPT_VGG_WEIGHTS is set or torch's cache holds its
    weights: on such a machine the tests ran another network than CI's (or failed on a dummy file).
    Each test sees an empty torch cache and no variable; the VGG tests set their own."""
    from artopt.style.loss_nets import VGG_WEIGHTS_ENV

    monkeypatch.delenv(VGG_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch-home"))


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """A script run in-process sets torch's thread count (bench/lstm_threads.py to 2): later tests ran
    with it, which tests chosen with -k then depended on."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
