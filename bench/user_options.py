"""Does the learned optimizer still beat Adam when a user changes the other stylize options?

loss_weights.py varies the loss weights; this script varies the rest of what a user sets and the
shipped LSTM never saw in meta-training (content-initialised 64 px crops, 128 steps, full colour,
the style at the output's scale): a noise start, colours kept (style on the luminance only),
finer and coarser style strokes, no mirrored frame, and short and long step budgets.  It runs the
CLI as a user would, each optimizer at its default rate, on the shipped photos with a held-out
style, and reports the final total loss of each and the ratio LSTM / Adam:

    .venv/bin/python bench/user_options.py                        # 256 px, ~10 min
    .venv/bin/python bench/user_options.py --size 512 --json bench/results/user_options_512.json

Writes bench/results/user_options.json; the images and logs go to --out (``--reuse`` reads
finished runs).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loss_weights import run_settings  # noqa: E402

SETTINGS = {
    "defaults": [],
    "init noise": ["--init", "noise"],
    "keep colors": ["--keep-colors"],
    "style scale 0.5": ["--style-scale", "0.5"],
    "style scale 2": ["--style-scale", "2"],
    "edge pad 0": ["--edge-pad", "0"],
    "steps 30": ["--steps", "30"],
    "steps 400": ["--steps", "400"],
}


def main(argv=None) -> int:
    return run_settings(argv, SETTINGS, "user_options", __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
