"""Where the trained optimizers shipped in ``weights/`` live, and which one the stylizer uses."""

from __future__ import annotations

import json
import os
from pathlib import Path

# The repository's weights/ folder; ARTOPT_WEIGHTS_DIR points elsewhere (e.g. an installed copy).
WEIGHTS_DIR = Path(os.environ.get("ARTOPT_WEIGHTS_DIR", Path(__file__).resolve().parents[2] / "weights"))

NEURAL_ART = "neural_art"


def weights_path(name: str) -> Path:
    """Path of the shipped safetensors file ``name`` (without extension)."""
    return WEIGHTS_DIR / f"{name}.safetensors"


def card(name: str) -> dict | None:
    """The JSON card of a shipped optimizer, or None when it is not shipped."""
    path = WEIGHTS_DIR / f"{name}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def trained_pixels(weights: str | os.PathLike) -> int | None:
    """Pixels of the training crops recorded in the card beside a neural-art weights file, if any."""
    card_path = Path(weights).with_suffix(".json")
    if not card_path.is_file():
        return None
    return json.loads(card_path.read_text()).get("trained_pixels")


def neural_art_available() -> bool:
    return weights_path(NEURAL_ART).is_file()


def neural_art_is_default() -> bool:
    """True when the shipped neural-art optimizer beat the tuned baselines and its card says so.

    The stylizer's ``optimizer="auto"`` resolves to the learned optimizer only then.
    """
    c = card(NEURAL_ART)
    return bool(neural_art_available() and c and c.get("default_for_stylize"))
