"""Where the trained optimizers shipped in ``weights/`` live, and which one the stylizer uses."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..shipped_files import shipped_dir

# The repository's weights/ folder, or the copy an installed wheel carries; ARTOPT_WEIGHTS_DIR
# points elsewhere.
WEIGHTS_DIR = Path(os.environ.get("ARTOPT_WEIGHTS_DIR") or shipped_dir("weights"))

NEURAL_ART = "neural_art"


def weights_path(name: str) -> Path:
    """Path of the shipped safetensors file ``name`` (without extension)."""
    return WEIGHTS_DIR / f"{name}.safetensors"


def card(name: str) -> dict | None:
    """The JSON card of a shipped optimizer, or None when it is not shipped."""
    path = WEIGHTS_DIR / f"{name}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _card_beside(weights: str | os.PathLike) -> tuple[Path, dict]:
    """(path, contents) of the JSON card beside a weights file; contents {} when there is none.
    ValueError, naming the card, when it is not a readable JSON object."""
    card_path = Path(weights).with_suffix(".json")
    if not card_path.is_file():
        return card_path, {}
    try:
        found = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{card_path}: not a readable JSON card ({e})") from None
    if not isinstance(found, dict):
        raise ValueError(f"{card_path}: the card must be a JSON object, got {type(found).__name__}")
    return card_path, found


def trained_task(weights: str | os.PathLike) -> str | None:
    """The task named by the card beside ``weights``; None without a card or a task name in it.
    ValueError, naming the card, when it is not a readable JSON object."""
    task = _card_beside(weights)[1].get("task")
    return task if isinstance(task, str) else None


def check_neural_art(weights: str | os.PathLike) -> None:
    """ValueError unless ``weights`` may be a neural-art optimizer: its card, if it has one, must not
    name another task (an MNIST optimizer runs on images, but badly, and nothing would say why)."""
    card_path, found = _card_beside(weights)
    task = found.get("task")
    if task not in (None, "neural-art"):
        raise ValueError(f"{weights}: its card ({card_path.name}) says it was meta-trained on {task!r}, "
                         "not neural art")


def trained_pixels(weights: str | os.PathLike) -> int | None:
    """Pixels of the training crops recorded in the card beside a neural-art weights file, if any
    (ValueError for a value that is not a positive number)."""
    card_path, found = _card_beside(weights)
    pixels = found.get("trained_pixels")
    if pixels is None:
        return None
    if isinstance(pixels, bool) or not isinstance(pixels, (int, float)) or not (0 < pixels < math.inf):
        raise ValueError(f"{card_path}: trained_pixels must be a positive number of pixels, got {pixels!r}")
    return pixels


BASES = ("pixels", "multiscale")


def trained_basis(weights: str | os.PathLike) -> str:
    """The image basis a neural-art weights file was meta-trained in (its card's ``basis``): "pixels"
    (also for files without a card) or "multiscale" (artopt.learned_optimizers.multiscale)."""
    card_path, found = _card_beside(weights)
    basis = found.get("basis") or {}
    kind = basis.get("kind", "pixels") if isinstance(basis, dict) else str(basis)
    if kind not in BASES:
        raise ValueError(f"{card_path}: unknown basis {kind!r}; expected one of {BASES}")
    return kind


def trained_coarsest(weights: str | os.PathLike) -> int:
    """The multi-scale basis's coarsest level (px) during meta-training: the crop's side halved
    ``levels - 1`` times (64 px crops, 4 levels: 8 px; 5 levels: 4 px).  ``multiscale.COARSEST``
    when the card does not record both."""
    return _coarsest_in(_card_beside(weights)[1])


def _whole(value) -> bool:
    """An integer as JSON gives one (true and false are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _coarsest_in(card: dict) -> int:
    """``trained_coarsest`` from a card's contents."""
    from .multiscale import COARSEST

    basis, pixels = card.get("basis"), card.get("trained_pixels")
    levels = basis.get("levels") if isinstance(basis, dict) and basis.get("kind") == "multiscale" else None
    if levels is not None and not (_whole(levels) and levels >= 1):
        raise ValueError(f"bad basis levels {levels!r} in the card (a whole number, at least 1)")
    if not (isinstance(levels, int) and isinstance(pixels, (int, float)) and 1 <= pixels < math.inf):
        return COARSEST  # (a bad trained_pixels is trained_pixels()' error to report)
    return max(1, round(math.sqrt(pixels)) >> (levels - 1))


def inference_settings(weights: str | os.PathLike) -> dict:
    """How to run a neural-art weights file, from its card's ``inference`` (calibrated after
    meta-training on validation problems, ``train/calibrate_neural_art.py``): ``lr``, the multiplier
    on the learned update, and ``coarsest``, the multi-scale basis's coarsest level in px.  Files
    without one run as trained (1.0, ``trained_coarsest``)."""
    card_path, card = _card_beside(weights)
    found = card.get("inference") or {}
    if not isinstance(found, dict):
        raise ValueError(f"{card_path}: bad inference settings {found!r} (a JSON object with lr and coarsest)")
    lr = found.get("lr", 1.0)
    try:
        coarsest = found["coarsest"] if "coarsest" in found else _coarsest_in(card)
    except ValueError as err:
        raise ValueError(f"{card_path}: {err}") from None
    lr_ok = isinstance(lr, (int, float)) and not isinstance(lr, bool) and 0 < lr < math.inf  # JSON true is no number
    if not lr_ok or not (_whole(coarsest) and coarsest >= 1):
        raise ValueError(f"{card_path}: bad inference settings {found!r} (lr > 0, coarsest >= 1 px)")
    return {"lr": float(lr), "coarsest": coarsest}


@dataclass(frozen=True)
class LearnedSetup:
    """How the stylizer runs one neural-art weights file (normally all read from its card)."""

    weights: Path
    basis: str  # "pixels" or "multiscale": where the updates are applied
    lr: float  # multiplier on the learned update
    coarsest: int  # coarsest multi-scale basis level, px
    trained_pixels: int | None  # pixels of the training crops: gradients are rescaled to that size


def missing_card(weights: str | os.PathLike, alternative: str = "") -> str | None:
    """Why a neural-art weights file cannot run as it was meta-trained: "has no card ... beside it"
    and what to do (``alternative``: another way the caller offers, e.g. naming the basis), or None
    when the card is there.  Without its card a file would run in pixels at an unknown crop scale:
    the shipped weights copied alone did about 3x worse, and nothing said why."""
    card_path = Path(weights).with_suffix(".json")
    if card_path.is_file():
        return None
    return (f"has no card ({card_path.name}) beside it: copy it along with the weights{alternative}; it records "
            "how they were meta-trained (image basis, crop size), and they run badly without it")


def learned_setup(weights: str | os.PathLike | None = None, *, raw: bool = False,
                  basis: str | None = None) -> LearnedSetup:
    """The setup of ``weights`` (default: the shipped neural-art file) from its card: the card's
    calibrated ``inference_settings``, or with ``raw`` the settings it was meta-trained with;
    ``basis`` overrides the card's.  Raises ValueError for a missing file, a missing card (unless
    ``basis`` is given) or a bad card."""
    if weights is None and not neural_art_available():
        raise ValueError(f"no trained neural-art optimizer is shipped (expected {weights_path(NEURAL_ART)}); "
                         "use --optimizer adam or lbfgs")
    path = Path(weights) if weights is not None else weights_path(NEURAL_ART)
    if not path.is_file():
        raise ValueError(f"no neural-art optimizer weights at {path}")
    if basis is not None and basis not in BASES:
        raise ValueError(f"unknown basis {basis!r}; expected one of {BASES}")
    if basis is None and missing_card(path):
        raise ValueError(f"{path} {missing_card(path)}")
    check_neural_art(path)
    settings = {"lr": 1.0, "coarsest": trained_coarsest(path)} if raw else inference_settings(path)
    return LearnedSetup(weights=path, basis=basis or trained_basis(path), lr=settings["lr"],
                        coarsest=settings["coarsest"], trained_pixels=trained_pixels(path))


def neural_art_available() -> bool:
    return weights_path(NEURAL_ART).is_file()


DEFAULT_SCOPES = ("always", "coarse-to-fine")


def neural_art_default_scope() -> str | None:
    """Where the stylizer's ``optimizer="auto"`` uses the shipped neural-art optimizer.

    Its card's ``default_for_stylize`` says where it beat the tuned baselines: ``"always"`` (or
    true), ``"coarse-to-fine"`` (outputs made at two or more pyramid scales), or false / absent
    (nowhere: ``auto`` means Adam).
    """
    c = card(NEURAL_ART)
    if not (neural_art_available() and c):
        return None
    scope = c.get("default_for_stylize")
    if scope is True:
        return "always"
    return scope if scope in DEFAULT_SCOPES else None


def neural_art_single_scale_from() -> int | None:
    """With the ``"coarse-to-fine"`` scope: the smallest single-scale output size (long side, px)
    at which the card says the learned optimizer also won (``default_single_scale_from``), if any."""
    c = card(NEURAL_ART)
    value = c.get("default_single_scale_from") if c else None
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None
