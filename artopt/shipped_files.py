"""Where the files shipped beside the code live: the trained optimizers (``weights/``) and the web
app's preset photos and styles (``assets/``).

In a checkout (and an editable install) they are the repository's folders.  A wheel carries them
inside the package, as ``artopt/_weights`` and ``artopt/_assets`` (pyproject.toml maps them), so an
installed artopt has its learned optimizers too.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """The folder ``name`` ("weights" or "assets"): the installed copy if there is one, else the
    checkout's."""
    installed = _PACKAGE / f"_{name}"
    return installed if installed.is_dir() else _PACKAGE.parent / name
