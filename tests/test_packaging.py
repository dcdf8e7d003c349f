"""The wheel carries what an installed artopt needs: its code, the trained optimizers and the web
app's presets (pyproject.toml maps weights/ and assets/ into the package)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_list_names_every_sub_package():
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "artopt").rglob("__init__.py")
               if "__pycache__" not in p.parts}
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"


@pytest.mark.slow
def test_an_installed_wheel_has_its_weights_and_presets(tmp_path):
    wheels, target, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "source"
    # Built from a copy: setuptools leaves build/ (and egg-info) in the folder it builds.
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("artopt", "weights", "assets"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # No build isolation and no dependencies: nothing is downloaded, the venv's setuptools builds it.
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)], check=True,
                   cwd=tmp_path, capture_output=True)
    (wheel,) = wheels.glob("artopt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [p.relative_to(ROOT) for p in [*(ROOT / "weights").glob("*.safetensors"), *(ROOT / "weights").glob("*.json"),
                                             *(ROOT / "assets").glob("*/*.jpg")]]
    assert shipped and all(f"artopt/_{p.as_posix()}" in names for p in shipped)

    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True)
    probe = ("import artopt, artopt.web as web\n"
             "from artopt.learned_optimizers import shipped\n"
             "from artopt.style.engine import resolve_optimizer\n"
             "print(artopt.__file__, shipped.weights_path('neural_art'), web.ASSETS_DIR, len(web.preset_styles()),\n"
             "      resolve_optimizer('auto', 512))\n")
    env = {k: v for k, v in os.environ.items() if k != "ARTOPT_WEIGHTS_DIR"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={**env, "PYTHONPATH": str(target)},
                         check=True, capture_output=True, text=True).stdout.split()
    package = target / "artopt"
    assert out[0] == str(package / "__init__.py")  # the installed copy, not the checkout
    assert out[1] == str(package / "_weights" / "neural_art.safetensors") and Path(out[1]).is_file()
    assert out[2] == str(package / "_assets") and int(out[3]) == len(list((ROOT / "assets" / "styles").glob("*.jpg")))
    assert out[4] == "lstm"  # the card is found, so the learned optimizer is the default
