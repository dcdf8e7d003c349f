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
