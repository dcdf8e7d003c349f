"""The stylization engine: optimize an image's pixels against a content + style + TV loss.

Library code only: no file I/O, no printing.  Progress goes to an optional callback that
receives a :class:`StepInfo` after every optimizer step.

What "steps" means: the budget counts *loss evaluations* (one loss-network forward + backward
each), summed over all pyramid scales.  First-order optimizers use one per step; an L-BFGS
iteration uses one plus those of its line search, so its ``step`` counter advances by the
evaluations it used and its last iteration may end a few evaluations past the budget (one that
ends past its scale's share leaves the next scales that much less).  L-BFGS runs unconstrained within
a scale and is clamped to [0, 1] when the scale ends; the other optimizers are clamped every step.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from PIL import Image

from ..optimizers import LBFGS_MAX_EVAL, make_optimizer
from .images import pil_to_tensor, resize_long_side, to_rgb
from .loss_nets import LOSS_NETS, build_loss_net, resolve_loss_net_name
from .losses import StyleLoss, check_edge_pad

if TYPE_CHECKING:
    from artopt.learned_optimizers.shipped import LearnedSetup

OPTIMIZERS = ("auto", "adam", "lbfgs", "sgd", "rmsprop", "nag", "lstm")
INITS = ("content", "noise")
# Where a hand-designed optimizer runs: on the pixels, or on the coefficients of the multi-scale image
# basis the learned optimizer was meta-trained in (artopt.learned_optimizers.multiscale), which moves
# a whole neighbourhood with one coefficient.  The LSTM always runs in the basis its card records.
BASES = ("pixels", "multiscale")
DEVICES = ("auto", "cpu", "cuda", "mps")

# Learning rates for pixels in [0, 1] under the default loss weights.  Adam's was measured
# (``bench/stylize.py lr-sweep --size 128 --steps 60 --optimizers adam``: final loss 0.843 at
# 0.01, 0.531 at 0.02, 0.576 at 0.05; bench/results/lr_sweep.json, rerun in session 52).  RMSprop's is the rate the
# evaluation's tuning chose at 128 px and with the pyramid at 256 and 384 px (0.007 at 512 px;
# train/results/neural_art/lrs.json).  L-BFGS's line search scales its step.
# ``lstm``'s lr is a multiplier on its learned step: by default the one its card's calibration chose.
STYLIZE_LR = {"adam": 0.02, "lbfgs": 1.0, "rmsprop": 0.005, "lstm": None}
# SGD and NAG step by the raw gradient, which shrinks in proportion to the pixel count (the losses
# are means over positions), so their default rates are per pixel of the scale being optimized.
# Their single-scale rates tuned in the evaluation (lrs.json: 64 and 128 px crops, 256 and 512 px
# whole photos without the pyramid) lie at 4.9e-4 to 9.6e-4 per pixel for sgd and 1.0e-4 to 1.5e-4
# for nag; on the multi-scale basis (256 px without the pyramid, 3 validation photos, x2 grids) at
# 2.1e-5 for sgd and 8.5e-6 for nag.
STYLIZE_LR_PER_PIXEL = {"pixels": {"sgd": 7e-4, "nag": 1.3e-4},
                        "multiscale": {"sgd": 2.1e-5, "nag": 8.5e-6}}
# On the multi-scale basis one coarse coefficient moves a whole neighbourhood, so the rates differ
# from the pixels' (4-11x smaller than the tuned pixel rates).  Tuned at the default 512 px (pyramid
# on, 200 steps) on 3 validation photos on sqrt(2) grids (train/eval_neural_art.py 512 ...
# --optimizers NAME-ms, cached in train/results/neural_art/lrs.json; docs/retraining.md).
STYLIZE_LR_MULTISCALE = {"adam": 0.0036, "rmsprop": 0.00064}

# The first step's notice names the loss network and optimizer a run uses (for logs; the web page
# shows both elsewhere and leaves this line out).
SETUP_NOTICE_PREFIX = "loss network: "
# The largest learning rate taken: far past any useful one, and with room below float32's 3.4e38 for
# what the optimizers compute from it (Adam's first step divides it by 1 - beta1): past that, torch
# could not convert it and the run ended in a traceback.
MAX_RATE = 1e30
# Outputs larger than this are produced coarse-to-fine when ``pyramid`` is None (auto): from 384 px,
# whose half (192 px) is the smallest coarse scale the automatic pyramid uses (PYRAMID_BASE * 3/4).
PYRAMID_AUTO_ABOVE = 383
# Image tensors given to stylize() may stray this far outside [0, 1] (then they are clamped).
TENSOR_RANGE_SLACK = 0.05
# Output long sides accepted: both loss networks need 32 px (their deepest style layer at 1/16 or
# 1/32 resolution keeps a few positions).
MIN_OUTPUT_SIZE, MAX_OUTPUT_SIZE = 32, 8192
# Largest content / style / TV weight accepted.  The losses are normalised (defaults 1 / 20 / 1), so
# this leaves twelve orders of magnitude of room while keeping the weighted loss far from float32's
# overflow (a style weight of 1e300 made every loss infinite).
MAX_LOSS_WEIGHT = 1e12
# torch.Generator.manual_seed's range (it takes uint64 and negative int64 values).
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
# The learned step at the pyramid's finer scales: chosen from 0.35 / 0.5 / 0.7 / 1 by a rule committed
# before the runs (48842c9; validation photos, held-out style, 256 and 512 px; bench/fine_scale_step.py,
# bench/results/fine_scale_step_val.json): 0.5 ended 0.2% / 1.7% lower than 1 there.
FINE_SCALE_STEP = 0.5
# The handoff (StylizeConfig.handoff_lr / handoff_warmup): where backoff would first shorten the learned
# step on a scale, Adam on the multi-scale basis goes on there at this rate, ramping up over this many
# steps.  Made the default by a rule committed before its runs (bench/handoff.py's docstring): on
# styles far from the LSTM's training it stalls late, and Adam on the basis then ends lower.
HANDOFF_LR, HANDOFF_WARMUP = 0.0009, 10
# StylizeConfig.adam_levels: at most this many finest basis levels go to Adam, so the learned optimizer
# keeps at least three at every finer pyramid scale (384 px and up: six levels or more).
MAX_ADAM_LEVELS = 3
# Adam on the finer pyramid scales (StylizeConfig.handoff_finer_lr, handoff_finer_steps / _within): where
# the learned optimizer stalled within its first 83 steps on a coarser scale, Adam on the basis runs the
# finer scales from their start.  By rules committed before their runs (bench/handoff_finer.py's docstring):
# the styles it stalls on that early are far from its training, and on nearer ones, handed off later or not
# at all, the fresh learned optimizer of the finer scale does better.  The gate counts steps (session 65)
# because the stall does: a fraction of the scale's steps (0.62, session 58) moved with --steps.
HANDOFF_FINER_LR, HANDOFF_FINER_WITHIN = 0.0036, 1.0
HANDOFF_FINER_STEPS = 83
# Long side of the coarsest pyramid scale.
PYRAMID_BASE = 256
# backoff: the learned optimizer sees gradients only (no loss, no line search), and on styles far from
# its training its loss can climb for the rest of a run (34% above its lowest by step 150 on
# piano_keyboard_sketch at 256 px).  Once a scale's loss has stayed above its lowest for this many
# steps in a row, its step is multiplied by BACKOFF_FACTOR (again after as many more).  Chosen on one
# run (chelsea x piano_keyboard_sketch, 256 px) of three tried (3 / 0.5, 5 / 0.5, 3 / 0.7).  A scale's
# first BACKOFF_GRACE losses are not counted: from a fresh state the LSTM's first steps may overshoot
# (every 512 px run of the style sweep rose for 3 steps just after the switch from 256 px, and then fell).
BACKOFF_PATIENCE, BACKOFF_FACTOR, BACKOFF_GRACE = 3, 0.5, 10
# An explicit ``pyramid=True`` always gets at least one coarser scale (half the size) while that
# scale's long side is at least this; otherwise "on" would do nothing below 384 px.
PYRAMID_MIN_COARSE = 128


@dataclass
class StylizeConfig:
    """Every setting of a stylization.  The CLI makes one flag per field (help from metadata)."""

    size: int = field(default=512, metadata={
        "help": f"long side of the output in pixels, {MIN_OUTPUT_SIZE}-{MAX_OUTPUT_SIZE} (aspect kept)"})
    steps: int = field(default=150, metadata={
        "help": "loss evaluations in total, over all pyramid scales (an L-BFGS iteration counts its line "
                "search's too, so its last may end a few past)"})
    optimizer: str = field(default="auto", metadata={
        "help": "optimizer: auto (the learned 'lstm' where its card says it beats the tuned baselines, else adam), "
                + ", ".join(OPTIMIZERS[1:]), "choices": OPTIMIZERS})
    basis: str = field(default="pixels", metadata={
        "help": "adam, sgd, rmsprop, nag: run on the pixels or on the coefficients of the multi-scale image basis "
                "the learned optimizer runs in (each with a default rate of its own; lower losses at the same steps "
                "in the evaluation; lbfgs: pixels only; lstm: the basis its card records)", "choices": BASES})
    lr: float | None = field(default=None, metadata={
        "help": "learning rate (default: per optimizer, tuned for images; sgd's and nag's grow with the pixel "
                "count); for lstm, a multiplier on its learned step (default: its card's)"})
    style_weights: list[float] | None = field(default=None, metadata={
        "help": "blend weights of the style images, one per style (default: equal)"})
    content_weight: float = field(default=1.0, metadata={"help": "weight of the content loss"})
    style_weight: float = field(default=20.0, metadata={"help": "weight of the style loss"})
    tv_weight: float = field(default=1.0, metadata={"help": "weight of the total-variation (smoothness) loss"})
    style_scale: float = field(default=1.0, metadata={
        "help": "size of the style images relative to the output (smaller = finer strokes)"})
    edge_pad: int = field(default=8, metadata={
        "help": "pixels of mirrored border the loss network sees around the image, against stripes along "
                "the edges (0: off)"})
    keep_colors: bool = field(default=False, metadata={
        "help": "keep the content's colours: transfer the style to the luminance only"})
    init: str = field(default="content", metadata={"help": "starting image: content or noise", "choices": INITS})
    seed: int = field(default=0, metadata={
        "help": "random seed (same seed, same device: same image; on a CPU also the same number of threads, as "
                "the thread count changes the sums' order: --threads)"})
    # No choices list: it would refuse cuda:N (one card of several), which check_device_name takes.
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N (the Nth GPU) or mps",
                                                  "lowercase": True})
    loss_net: str = field(default="auto", metadata={
        "help": "loss network: auto (vgg19 when its weights are available locally, else efficientnet-lite0), "
                "vgg19, efficientnet-lite0", "choices": LOSS_NETS})
    vgg_weights: str | None = field(default=None, metadata={
        "help": "VGG-19 weights file (torchvision state dict, .pth or .safetensors); "
                "default: $ARTOPT_VGG_WEIGHTS, then torchvision's cache"})
    vgg_pooling: str = field(default="max", metadata={
        "help": "vgg19 only: max or avg pooling (avg gives smoother results, Gatys et al.)", "choices": ("max", "avg")})
    lstm_weights: str | None = field(default=None, metadata={
        "help": "lstm only: a neural-art optimizer's weights file (safetensors, its JSON card beside it, as "
                "train/neural_art.py writes them); default: the shipped one"})
    keep_best: bool = field(default=True, metadata={
        "help": "return the lowest-loss image the steps made at the output size, not the last step's where that "
                "one is higher (an optimizer's loss can rise at the end, e.g. the learned one's on styles far from "
                "its training); lbfgs: always the last"})
    backoff: bool = field(default=True, metadata={
        "help": f"lstm only: multiply the learned step by {BACKOFF_FACTOR:g} each time the loss has stayed above its "
                f"lowest for {BACKOFF_PATIENCE} steps in a row, from a scale's {BACKOFF_GRACE + 1}th step on (its loss "
                "can climb late on styles far from its training); the hand-designed optimizers keep their rates. "
                "Without it the handoff still watches the loss (--handoff-lr 0: the learned optimizer alone)"})
    fine_scale_step: float = field(default=FINE_SCALE_STEP, metadata={
        "help": "lstm only: multiplier on the learned step at the pyramid's scales after the first, on top of --lr "
                "(they start from the coarser scale's result, nearer a minimum than the starts the learned optimizer "
                "was trained from; 1: the same step at every scale)"})
    carry_state: bool = field(default=False, metadata={
        "help": "lstm only: start each finer pyramid scale from the learned optimizer's state at the coarser one "
                "(each basis level's state moves up one level; the new finest level starts fresh). Off: it ended "
                "2.4-3.3% higher than a fresh state on validation photos (bench/results/carry_state_val.json)"})
    handoff_lr: float | None = field(default=HANDOFF_LR, metadata={
        "help": "lstm only: where backoff would first shorten the learned step on a scale, go on at that scale "
                "with Adam on the multi-scale basis at this rate instead (0: off, the LSTM goes on with backoff). "
                "On styles far from its training the LSTM stalls late, and Adam on the basis then ends lower: in "
                "the CLI at 256 px it ended 0.74-0.75x as high with piano_keyboard_sketch and 0.89-0.90x with "
                "vallotton_camille_mauclair, never higher; on the evaluation's test photos 0.9985-1.0x "
                "(bench/handoff.py; chosen by a rule fixed before its runs)"})
    handoff_warmup: int = field(default=HANDOFF_WARMUP, metadata={
        "help": "lstm only: Adam's rate after the handoff ramps up linearly over this many steps (0: the full rate "
                "from its first step, whose fresh moments move every coefficient by about the rate: on the test "
                "photos without the pyramid that raised the loss 6% and ended 1.2-2.7% above backoff)"})
    handoff_finer_lr: float | None = field(default=HANDOFF_FINER_LR, metadata={
        "help": "lstm only: once a pyramid scale has been handed off to Adam (--handoff-lr) early (within "
                "--handoff-finer-steps of its steps), run the finer scales with Adam on the multi-scale basis from "
                "their first step, at this rate ramping up over --handoff-warmup steps (0: off, each finer scale starts "
                "with the learned optimizer again). At 512 px it ended 0.84x as high with piano_keyboard_sketch and "
                "0.83x with vallotton_camille_mauclair on validation photos no earlier run had used, and 0.86-0.93x in "
                "3 of the CLI's 16 style-sweep runs; the other styles' runs are unchanged (bench/handoff_finer.py; "
                "chosen by a rule fixed before its runs)"})
    handoff_finer_within: float = field(default=HANDOFF_FINER_WITHIN, metadata={
        "help": "lstm only: --handoff-finer-lr acts only where the coarser scale was handed off within this fraction "
                "of its steps (1: no limit as a fraction; with --handoff-finer-steps, both must hold; 0.62 was the "
                "default from session 58 to 65)"})
    handoff_finer_steps: int = field(default=HANDOFF_FINER_STEPS, metadata={
        "help": "lstm only: --handoff-finer-lr acts only where the coarser scale was handed off within this many of "
                "its steps (0: no limit in steps; with --handoff-finer-within, both must hold). Far styles stall "
                "sooner: at 512 px with 200 steps piano_keyboard_sketch and vallotton_camille_mauclair were handed off "
                "after 36-81 steps and ended 0.71-0.96x as high with the option; klee_clouds_over_bor and "
                "van_doesburg_composition_xiii after 85-122, and 1.04-1.13x. The learned optimizer stalls after about "
                "the same number of its steps whatever a scale's length, so this gate, unlike the fraction, stays put "
                "as --steps changes (bench/handoff_finer.py; chosen by a rule fixed before its runs)"})
    coarse_share: float | None = field(default=None, metadata={
        "help": "coarse-to-fine runs: the share of --steps the coarsest scale gets, the finer scales sharing the "
                "rest equally (default: two thirds, where a coarse step costs a quarter of the next scale's). A "
                "smaller share runs more full-size steps, so it ends lower and takes longer: at 512 px with 200 steps "
                "0.1 ended 10% lower for lstm and 21% lower for adam, in 2.2x and 1.7x the time "
                "(bench/coarse_share.py)"})
    adam_levels: int = field(default=0, metadata={
        "help": "lstm only, coarse-to-fine runs: at the scales after the first, Adam on the multi-scale basis (at "
                f"{STYLIZE_LR_MULTISCALE['adam']:g}) steps this many of the basis's finest levels and the learned "
                f"optimizer the coarser ones (0-{MAX_ADAM_LEVELS}; 0: the learned optimizer steps them all). Level 0 "
                "holds 3/4 of the coefficients and most of a learned step's cost at large sizes. At 512 px with 150 "
                "steps, 2 ended 5-6% higher with the held-out style in 0.48-0.59x the time; with --coarse-share 0.1 "
                "it reached tuned Adam's final loss 2.1x as fast as Adam (bench/adam_levels.py)"})
    pyramid: bool | None = field(default=None, metadata={
        "help": f"coarse-to-fine: halve the size while the coarsest scale stays at least {PYRAMID_BASE * 3 // 4} px "
                f"(512 px: 256, 512); when on, at least two scales from {2 * PYRAMID_MIN_COARSE} px "
                f"(default: on from {PYRAMID_AUTO_ABOVE + 1} px)"})

    def validated(self) -> "StylizeConfig":
        """Check every field; return self.  Raises ValueError with a user-facing message."""
        # Types first: a string weight or a None name met a bare TypeError / AttributeError below.
        for name in ("optimizer", "basis", "init", "device", "loss_net", "vgg_pooling"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name.replace('_', ' ')} must be a string, got {getattr(self, name)!r}")
        for name in ("lr", "content_weight", "style_weight", "tv_weight", "style_scale", "fine_scale_step",
                     "handoff_lr", "handoff_finer_lr"):
            value = getattr(self, name)
            optional = value is None and name in ("lr", "handoff_lr", "handoff_finer_lr")
            if not optional and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
                raise ValueError(f"{name.replace('_', ' ')} must be a number, got {value!r}")
        if self.style_weights is not None and (not isinstance(self.style_weights, (list, tuple)) or any(
                isinstance(w, bool) or not isinstance(w, numbers.Real) for w in self.style_weights)):
            raise ValueError(f"style weights must be a list of numbers, got {self.style_weights!r}")
        for name in ("keep_colors", "keep_best", "backoff", "carry_state", "pyramid"):  # a string "false" counted as true
            value = getattr(self, name)
            if not (isinstance(value, bool) or (value is None and name == "pyramid")):
                raise ValueError(f"{name.replace('_', ' ')} must be True or False"
                                 f"{' (or None: automatic)' if name == 'pyramid' else ''}, got {value!r}")
        for name in ("vgg_weights", "lstm_weights"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise ValueError(f"{name.replace('_', ' ')} must be a file path, got {value!r}")
            if value is not None and not str(value).strip():  # e.g. "$UNSET_VARIABLE": was taken as no file
                raise ValueError(f"{name.replace('_', ' ')} needs a file name")
        # numpy integers are integers too (they were refused as "got 48"); bools are not
        for name in ("size", "steps", "seed", "edge_pad", "handoff_warmup", "adam_levels"):
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                setattr(self, name, int(value))
        if isinstance(self.steps, bool):
            raise ValueError(f"steps must be a non-negative integer, got {self.steps}")
        if not isinstance(self.size, int) or not MIN_OUTPUT_SIZE <= self.size <= MAX_OUTPUT_SIZE:
            raise ValueError(f"size must be an integer between {MIN_OUTPUT_SIZE} and {MAX_OUTPUT_SIZE}, got {self.size}")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {self.steps}")
        if self.optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        if self.basis not in BASES:
            raise ValueError(f"basis must be one of {', '.join(BASES)}, got {self.basis!r}")
        if self.basis == "multiscale" and self.optimizer.lower() == "lbfgs":
            raise ValueError("lbfgs runs on the pixels only (its line search needs a closure the multi-scale basis "
                             "does not pass on): use basis pixels, or adam, sgd, rmsprop or nag")
        if self.lr is not None and not (0 < self.lr <= MAX_RATE):
            raise ValueError(f"learning rate must be positive and at most {MAX_RATE:.3g}, got {self.lr}")
        if self.handoff_lr is not None and not (0 <= self.handoff_lr <= MAX_RATE):
            raise ValueError(f"handoff lr must be 0 (off) or positive and at most {MAX_RATE:.3g}, got {self.handoff_lr}")
        if self.handoff_finer_lr is not None and not (0 <= self.handoff_finer_lr <= MAX_RATE):
            raise ValueError(f"handoff finer lr must be 0 (off) or positive and at most {MAX_RATE:.3g}, "
                             f"got {self.handoff_finer_lr}")
        if isinstance(self.handoff_finer_within, bool) or not isinstance(self.handoff_finer_within, numbers.Real) \
                or not 0 <= self.handoff_finer_within <= 1:
            raise ValueError(f"handoff finer within must be a fraction between 0 and 1, got {self.handoff_finer_within!r}")
        if (isinstance(self.handoff_finer_steps, bool) or not isinstance(self.handoff_finer_steps, int)
                or self.handoff_finer_steps < 0):
            raise ValueError(f"handoff finer steps must be a whole number of steps, 0 or more, got "
                             f"{self.handoff_finer_steps!r}")
        if self.coarse_share is not None and (isinstance(self.coarse_share, bool) or not isinstance(
                self.coarse_share, numbers.Real) or not 0 < self.coarse_share < 1):
            raise ValueError(f"coarse share must be a fraction between 0 and 1 (exclusive), got {self.coarse_share!r}")
        if (isinstance(self.adam_levels, bool) or not isinstance(self.adam_levels, int)
                or not 0 <= self.adam_levels <= MAX_ADAM_LEVELS):
            raise ValueError(f"adam levels must be a whole number from 0 to {MAX_ADAM_LEVELS}, got {self.adam_levels!r}")
        if self.adam_levels and self.carry_state is True:  # (the state of levels Adam steps would be dropped)
            raise ValueError("adam levels and carry state cannot be combined: pick one")
        if isinstance(self.handoff_warmup, bool) or not isinstance(self.handoff_warmup, int) or self.handoff_warmup < 0:
            raise ValueError(f"handoff warmup must be a non-negative integer (steps), got {self.handoff_warmup!r}")
        for name in ("content_weight", "style_weight", "tv_weight"):
            value = getattr(self, name)
            if not (0 <= value <= MAX_LOSS_WEIGHT):
                raise ValueError(f"{name.replace('_', ' ')} must be between 0 and {MAX_LOSS_WEIGHT:g} (the losses are "
                                 f"normalised; the defaults are 1 / 20 / 1), got {value}")
        if self.style_weights is not None:
            if not self.style_weights or any(not (0 <= w <= MAX_LOSS_WEIGHT) for w in self.style_weights) \
                    or not any(w > 0 for w in self.style_weights):
                raise ValueError(f"style weights must be between 0 and {MAX_LOSS_WEIGHT:g}, not all 0 (they are "
                                 f"normalised to sum to 1), got {' '.join(f'{w:g}' for w in self.style_weights)}")
        if not (0 < self.fine_scale_step < math.inf):
            raise ValueError(f"fine scale step must be positive, got {self.fine_scale_step}")
        if not (0 < self.style_scale <= 8):
            raise ValueError(f"style scale must be in (0, 8], got {self.style_scale}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not SEED_MIN <= self.seed <= SEED_MAX:
            raise ValueError(f"seed must be an integer between {SEED_MIN} and {SEED_MAX}, got {self.seed}")
        check_edge_pad(self.edge_pad)
        if str(self.init).lower() not in INITS:  # case-insensitive, like the optimizer and loss-net names
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        check_device_name(self.device)
        if self.vgg_pooling not in ("max", "avg"):
            raise ValueError(f"vgg pooling must be max or avg, got {self.vgg_pooling!r}")
        if self.loss_net.lower() not in LOSS_NETS:
            raise ValueError(f"unknown loss network {self.loss_net!r}; choose from {', '.join(LOSS_NETS)}")
        if self.lstm_weights is not None:
            if not Path(self.lstm_weights).is_file():
                raise ValueError(f"lstm weights file not found: {self.lstm_weights}")
            from artopt.learned_optimizers.shipped import learned_setup

            learned_setup(self.lstm_weights)  # its card: present, for neural art, well-formed
        return self


@dataclass
class StepInfo:
    """Progress after one optimizer step."""

    step: int  # loss evaluations so far, over all scales (1-based)
    total_steps: int
    scale_index: int  # 0-based pyramid scale
    n_scales: int
    size: tuple[int, int]  # (height, width) of the current scale
    # total / content / style / tv at the step's last evaluation: for first-order and learned
    # optimizers the image before the step's update, for L-BFGS its line search's last point (before
    # the clamp to [0, 1])
    losses: dict[str, float]
    elapsed: float  # seconds since the start (including target computation)
    image: torch.Tensor | None = None  # (1, 3, H, W) in [0, 1] when asked for (image_every)
    notice: str | None = None  # e.g. a fallback the optimizer took, or which loss net is used
    loss_seconds: float = 0.0  # of ``elapsed``, time spent in loss-network forward + backward
    # On the run's last step (the budget's end, a divergence, or a stop): the losses of the image it
    # ends with, at this scale, from one more loss evaluation outside the budget and ``elapsed``.
    # (With keep_colors, of the luminance image optimized, before the photo's colours return.)
    final_losses: dict[str, float] | None = None
    # On the run's last step, when keep_best returns an earlier image than the last step's: the steps
    # that had made it (``image`` and ``final_losses`` are then that image's).
    kept_after: int | None = None
    # backoff: the learned optimizer's step multiplier after this step, on the steps that lowered it
    # (relative to the scale's own step, the run's lr times fine_scale_step after the first scale: 0.5
    # after the first backoff of a scale, 0.25 after the second)
    step_scale: float | None = None
    # On the run's first report: the part of ``notice`` that says how the run was set up (loss
    # network, optimizer, scales; it starts with SETUP_NOTICE_PREFIX), for a caller that shows it
    # elsewhere and wants only the rest
    setup_notice: str | None = None


def check_device_name(device: str) -> None:
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {device!r}")


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> cuda, else mps, else cpu; an explicit device must be available."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    check_device_name(device)
    try:
        dev = torch.device(device)
    except RuntimeError:  # e.g. "cuda:x"
        raise ValueError(f"not a device: {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA GPU is available")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' requested but Apple MPS is not available")
    return dev


def resolve_optimizer(name: str, size: int | None = None, pyramid: bool | None = None) -> str:
    """``"auto"`` -> the learned optimizer where its card says it beat the tuned baselines (every
    size, or coarse-to-fine outputs of ``size`` / ``pyramid``, plus single-scale outputs from the
    card's ``default_single_scale_from`` px), else Adam; other names unchanged."""
    name = name.lower()
    if name == "auto":
        from artopt.learned_optimizers.shipped import neural_art_default_scope, neural_art_single_scale_from

        scope = neural_art_default_scope()
        if scope == "always":
            return "lstm"
        if scope == "coarse-to-fine" and size is not None:
            single_from = neural_art_single_scale_from()
            if len(pyramid_sizes(size, pyramid)) > 1 or (single_from is not None and size >= single_from):
                return "lstm"
        return "adam"
    return name


def early_handoff(step: int, scale_steps: int, within: float, max_steps: int) -> bool:
    """Whether a handoff after ``step`` of a scale's ``scale_steps`` came early enough for handoff_finer_lr:
    within the fraction ``within`` of them and, unless ``max_steps`` is 0, within that many."""
    return step <= within * scale_steps and (not max_steps or step <= max_steps)


def pyramid_sizes(size: int, pyramid: bool | None) -> list[int]:
    """Long sides of the scales, coarse to fine (each twice the previous, the last == size)."""
    use = size > PYRAMID_AUTO_ABOVE if pyramid is None else pyramid
    sizes = [size]
    while use and sizes[0] // 2 >= PYRAMID_BASE * 0.75:
        sizes.insert(0, sizes[0] // 2)
    if pyramid is True and len(sizes) == 1 and size // 2 >= PYRAMID_MIN_COARSE:
        sizes.insert(0, size // 2)
    return sizes


def scale_sizes(content_hw: tuple[int, int], planned: list[int], min_size: int) -> list[int]:
    """The pyramid scales (``pyramid_sizes``) a content image of (height, width) ``content_hw`` runs at:
    none whose shorter side would be under the loss network's ``min_size`` (the output size stays)."""
    aspect = min(content_hw) / max(content_hw)
    return [s for s in planned[:-1] if s * aspect >= min_size] + planned[-1:]


def min_coarse_to_fine_size() -> int:
    """The smallest output size that the automatic pyramid makes at two or more scales."""
    size = PYRAMID_AUTO_ABOVE + 1
    while len(pyramid_sizes(size, None)) < 2:
        size += 1
    return size


def split_steps(steps: int, n_scales: int, coarse_share: float | None = None) -> list[int]:
    """Steps per scale: the coarsest scale gets two thirds (or ``coarse_share``, at least one step), the
    finer ones share the rest equally (what does not divide goes to the coarsest).

    A coarse step costs a quarter of the next scale's, and the coarse scale is where the style
    forms; the finer scales start from the upsampled result and mostly add detail.
    """
    if n_scales == 1:
        return [steps]
    coarse = (2 * steps + 2) // 3 if coarse_share is None else min(steps, max(1, round(coarse_share * steps)))
    each_fine = (steps - coarse) // (n_scales - 1)
    return [steps - each_fine * (n_scales - 1)] + [each_fine] * (n_scales - 1)


def float_copy_hw(hw: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """The (H, W) at which an input image of (H, W) becomes floats for a run that resizes it to at most
    ``max_side``: as it is, or at twice ``max_side`` when it is over 4 × that (``_to_tensor``)."""
    h, w = hw
    if not max_side or max(h, w) <= 4 * max_side:
        return h, w
    scale = 2 * max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _to_tensor(image: Image.Image | torch.Tensor, label: str, max_side: int | None = None) -> torch.Tensor:
    """``image`` as a float tensor (1, 3, H, W); a PIL image over 4× ``max_side`` (the largest long
    side the run resizes it to) comes at twice that size instead (see ``resize_long_side``'s source_hw)."""
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:  # else a ZeroDivisionError further on
            raise ValueError(f"{label} image is empty ({image.height}x{image.width} pixels)")
        height, width = float_copy_hw((image.height, image.width), max_side)
        if (height, width) != (image.height, image.width):
            # Shrink before making floats: a 49 MP upload took over 1 GB as float32 for a 256 px run.
            # (Image.reduce's whole blocks shifted the picture by up to half a block.)
            image = to_rgb(image).resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
        return pil_to_tensor(image)
    if isinstance(image, torch.Tensor):
        image = image.detach()  # (float() of a tensor that requires grad warned)
        if image.dim() == 3:
            image = image.unsqueeze(0)
        if image.dim() != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"{label} image tensor must have shape (1, 3, H, W), got {tuple(image.shape)}")
        if image.shape[2] == 0 or image.shape[3] == 0:
            raise ValueError(f"{label} image is empty ({image.shape[2]}x{image.shape[3]} pixels)")
        if not image.is_floating_point():
            raise ValueError(f"{label} image tensor must hold floats in [0, 1], got {image.dtype} "
                             "(for 0-255 data such as torchvision.io.read_image's: image.float() / 255)")
        if not torch.isfinite(image).all():
            raise ValueError(f"{label} image contains NaN or infinite values")
        low, high = float(image.min()), float(image.max())
        # A little overshoot (e.g. from bicubic resizing) is clamped; anything more is another scale.
        if low < -TENSOR_RANGE_SLACK or high > 1 + TENSOR_RANGE_SLACK:
            raise ValueError(f"{label} image values must lie in [0, 1], got {low:.3g} to {high:.3g} "
                             "(divide 0-255 data by 255; undo any normalisation)")
        return image.float().clamp(0, 1)
    raise TypeError(f"{label} image must be a PIL image or a tensor, got {type(image).__name__}")


# BT.601 luma and full-range chroma, for luminance-only transfer.
def rgb_to_ycbcr(image: torch.Tensor) -> torch.Tensor:
    r, g, b = image[:, 0:1], image[:, 1:2], image[:, 2:3]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return torch.cat([y, (b - y) * 0.564 + 0.5, (r - y) * 0.713 + 0.5], dim=1)


def ycbcr_to_rgb(image: torch.Tensor) -> torch.Tensor:
    y, cb, cr = image[:, 0:1], image[:, 1:2] - 0.5, image[:, 2:3] - 0.5
    r = y + 1.403 * cr
    g = y - 0.344 * cb - 0.714 * cr
    b = y + 1.773 * cb
    return torch.cat([r, g, b], dim=1).clamp(0, 1)


def _luminance_as_rgb(image: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """Gray version of ``image``; with ``like``, its mean/std matched to like's luminance."""
    y = rgb_to_ycbcr(image)[:, :1]
    if like is not None:
        ref = rgb_to_ycbcr(like)[:, :1]
        # A one-pixel image has no spread (torch's std of one value is NaN, which poisoned the style).
        spread = y.std().clamp_min(1e-6) if y.numel() > 1 else 1.0
        y = (y - y.mean()) / spread * (ref.std() if ref.numel() > 1 else 0.0) + ref.mean()
    return y.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()


def _with_chroma(gray: torch.Tensor, chroma_source: torch.Tensor) -> torch.Tensor:
    """Luminance of ``gray`` with the colours (Cb, Cr) of ``chroma_source`` (resized to fit)."""
    source = chroma_source
    if source.shape[-2:] != gray.shape[-2:]:
        source = torch.nn.functional.interpolate(source, size=gray.shape[-2:], mode="bilinear",
                                                 align_corners=False, antialias=True)
    ycc = rgb_to_ycbcr(source)
    ycc = torch.cat([rgb_to_ycbcr(gray)[:, :1], ycc[:, 1:]], dim=1)
    return ycbcr_to_rgb(ycc)


def lstm_input_scale(image: torch.Tensor, trained_pixels: int | None) -> float:
    """Pixel count of ``image`` over that of the learned optimizer's training crops (1 if unknown).

    The loss is a mean over feature positions, so its per-pixel gradients shrink in proportion to
    the pixel count; multiplying them back shows the LSTM gradients of the size it was trained on.
    """
    if not trained_pixels:
        return 1.0
    return image.shape[-2] * image.shape[-1] / float(trained_pixels)


def resolve_lr(name: str, lr: float | None = None, lstm_weights: str | None = None,
               basis: str = "pixels", pixels: int | None = None) -> float:
    """The learning rate a run of optimizer ``name`` (resolved, not "auto") in ``basis`` uses on an
    image of ``pixels`` pixels (height × width; needed by sgd and nag): ``lr`` if given, else the
    stylizer's default, or for lstm the multiplier its weights' card records."""
    if lr is not None:
        return float(lr)
    if name == "lstm":
        from artopt.learned_optimizers.shipped import learned_setup

        return learned_setup(lstm_weights).lr
    if name in STYLIZE_LR_PER_PIXEL[basis]:
        if not pixels:
            raise ValueError(f"{name}'s default rate is per pixel: pass the image's pixel count")
        return STYLIZE_LR_PER_PIXEL[basis][name] * pixels
    table = STYLIZE_LR_MULTISCALE if basis == "multiscale" else STYLIZE_LR
    if name not in table:  # "auto" (resolve it first), or lbfgs on the basis
        where = "on the multi-scale basis" if basis == "multiscale" else "on the pixels"
        raise ValueError(f"no default learning rate for {name!r} {where}")
    return table[name]


def _make_optimizer(name: str, image: torch.Tensor, lr: float | None,
                    setup: "LearnedSetup | None" = None, basis: str = "pixels",
                    adam_levels: int = 0) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``image``; "lstm" runs ``setup`` (default: the shipped weights) in
    its card's basis, the others in ``basis``.  ``adam_levels``: "lstm" in the multi-scale basis
    leaves that many finest levels to Adam (StylizeConfig.adam_levels)."""
    if name == "lstm":
        from artopt.learned_optimizers import LearnedOptimizer
        from artopt.learned_optimizers.shipped import learned_setup

        setup = setup or learned_setup()
        # Reduced-precision LSTM state.  In pixels: float16, 160 B per coordinate (480 B per RGB
        # pixel) instead of 320 B; float16 keeps 11 significant bits to bfloat16's 8, and a stored c
        # cannot overflow it (c grows by at most 1 a step; float16 rounds to its 65504 maximum).  The
        # multi-scale basis has 4/3 as many coordinates, so h (always in (-1, 1)) goes to int8: 120 B
        # per coordinate, 480 B per pixel again (the moments of a network with moment inputs add 4 B
        # per coordinate in bfloat16: 496 B).  Measured effects on the loss: the weights' card.
        # A non-finite LSTM update falls back to Adam's first step at Adam's image learning rate.
        multiscale = setup.basis == "multiscale"
        # The card's calibration (update multiplier) unless --lr overrides it.
        lr = setup.lr if lr is None else lr
        state_dtype = torch.int8 if multiscale else torch.float16

        def learned(params):
            return LearnedOptimizer(params, weights=setup.weights, lr=lr, state_dtype=state_dtype,
                                    fallback_lr=STYLIZE_LR["adam"],
                                    input_scale=lstm_input_scale(image, setup.trained_pixels))

        if multiscale:
            # Meta-trained on the coefficients of a multi-scale basis: it runs there too.
            from artopt.learned_optimizers.multiscale import LevelSplit, MultiscaleOptimizer, level_sizes

            sizes = level_sizes(image.shape, coarsest=setup.coarsest)
            adam_levels = min(adam_levels, len(sizes) - 1)  # (a thin image has few levels: keep one for the LSTM)

            def split(flats):  # adam_levels: Adam on the finest levels, the learned optimizer on the rest
                return LevelSplit(flats, [sizes], adam_levels,
                                  lambda ps: make_optimizer("adam", ps, STYLIZE_LR_MULTISCALE["adam"]), learned)

            return MultiscaleOptimizer([image], split if adam_levels > 0 else learned, coarsest=setup.coarsest)
        return learned([image])

    lr = resolve_lr(name, lr, basis=basis, pixels=image.shape[-2] * image.shape[-1])
    if basis == "multiscale":
        from artopt.learned_optimizers.multiscale import MultiscaleOptimizer

        return MultiscaleOptimizer([image], lambda zs: make_optimizer(name, zs, lr))
    return make_optimizer(name, [image], lr)


def _learned_groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    """The groups holding the learned optimizer's lr (a MultiscaleOptimizer's own hold the images; a
    LevelSplit's learned part is its ``rest``)."""
    inner = getattr(optimizer, "inner", optimizer)
    return getattr(inner, "rest", inner).param_groups


class _Backoff:
    """backoff on one scale: the lowest loss so far, and the evaluations since that were above it."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.groups = _learned_groups(optimizer)
        self.lowest, self.above, self.scale, self.seen = math.inf, 0, 1.0, 0

    def observe(self, loss: float) -> float | None:
        """Count the loss of the image a step starts from (after the scale's first BACKOFF_GRACE); lower
        that step (and those after) after BACKOFF_PATIENCE in a row above the lowest, and return the new
        multiplier then."""
        self.seen += 1
        if self.seen <= BACKOFF_GRACE:
            return None
        if loss < self.lowest:
            self.lowest, self.above = loss, 0
        elif loss > self.lowest:
            self.above += 1
            if self.above >= BACKOFF_PATIENCE:
                self.above = 0
                self.scale *= BACKOFF_FACTOR
                for group in self.groups:
                    group["lr"] *= BACKOFF_FACTOR
                return self.scale
        return None


def content_size_problem(content_hw: tuple[int, int], size: int, min_side: int, net_name: str,
                         max_size: int = MAX_OUTPUT_SIZE) -> str | None:
    """Why a content image of (height, width) ``content_hw`` cannot be made at ``size`` px (long
    side) for a loss network that needs ``min_side`` px on the short side, and what to do, with
    output sizes up to ``max_size`` (the web page's may be lower); None when it fits."""
    short, long = sorted(content_hw)
    short_out = max(1, round(short * (size / long)))  # as resize_long_side rounds, to the last bit
    if short_out >= min_side:
        return None
    # the smallest size whose rounded short side reaches min_side (ceil(min_side·long/short) could be 1 more)
    needed = max(1, math.ceil((min_side - 0.5) * long / short))
    while round(short * (needed / long)) < min_side:
        needed += 1
    fix = (f"choose an output size of at least {needed} px" if needed <= max_size else
           f"crop the photo: its long side is {long / short:.0f}x its short side, too elongated even at "
           f"{max_size} px")
    return f"at {size} px the content image's shorter side is {short_out} px; {net_name} needs at least {min_side}: {fix}"


# A CPU run's peak memory grows by about 2.3 kB per output pixel over the ~1 GB the process holds
# before it: `artopt stylize --steps 2 --no-pyramid --optimizer lstm` on a 3:2 photo peaked at 1.03,
# 1.30, 2.70 and 4.69 GB (maximum RSS) at 256, 512, 1024 and 1536 px (Adam: 2.26 GB at 1024 px); square
# outputs 0.98 / 1.48 / 3.43 / 6.41 GB, each under this estimate (bench/results/memory.json).
# Past the machine's memory the kernel kills the process without a word.
CPU_BYTES_PER_PIXEL = 2300
CPU_BASE_BYTES = 1 << 30
# Each style image passes through the loss network once per scale, at style_scale times the output's
# size: `--size 256 --style-scale 8` (a 2048 px style) peaked 0.84 GB above `--style-scale 1`, and a
# CLI audit measured 3.4 GB more at 512 px (a 4096 px style): about 260 B per style pixel.
CPU_BYTES_PER_STYLE_PIXEL = 300
# The input images are held through the run as well, which the per-output-pixel figure above (measured
# on photos smaller than the output) does not count: Pillow keeps a decoded RGB image at 4 B per pixel,
# and the float32 copy the run resizes from takes 12 B per pixel of the image (or of its shrunk copy,
# see _to_tensor).  A 50 MP upload holds 0.2 GB decoded and up to 0.6 GB more as floats.
PIL_RGB_BYTES_PER_PIXEL = 4
FLOAT_RGB_BYTES_PER_PIXEL = 12


def input_image_bytes(hw: tuple[int, int], max_side: int) -> int:
    """Bytes an input image of (H, W) holds through a run that resizes it to at most ``max_side`` on
    its long side: the decoded image and its float copy (:func:`float_copy_hw`)."""
    float_h, float_w = float_copy_hw(hw, max_side)
    return PIL_RGB_BYTES_PER_PIXEL * hw[0] * hw[1] + FLOAT_RGB_BYTES_PER_PIXEL * float_h * float_w


MEMINFO = Path("/proc/meminfo")  # Linux's memory table (a test points it at its own)


def system_memory() -> tuple[int | None, int | None]:
    """(total, available) bytes of RAM; None where this system does not tell."""
    try:
        info = {k: v.split() for k, v in (line.split(":", 1) for line in
                                         MEMINFO.read_text(encoding="utf-8").splitlines() if ":" in line)}
        total = int(info["MemTotal"][0]) * 1024
        available = int(info["MemAvailable"][0]) * 1024 if "MemAvailable" in info else None
        return total, available
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), None
    except (AttributeError, ValueError, OSError):
        return None, None


def cpu_memory_problem(content_hw: tuple[int, int], size: int, size_name: str = "size",
                       memory: tuple[int | None, int | None] | None = None,
                       style_hws: Sequence[tuple[int, int]] = (), style_scale: float = 1.0) -> tuple[str | None, str | None]:
    """(error, warning) for a CPU run whose output has ``size`` px on its long side: an error when
    its estimated peak memory exceeds the machine's RAM, a warning when it exceeds what is free now.
    ``memory`` is (total, available) bytes; default :func:`system_memory`.  ``style_hws``: the
    style images' (H, W), which the run sizes to ``style_scale`` times the output (one at a time).
    The input images themselves count too (:func:`input_image_bytes`)."""
    total, available = memory if memory is not None else system_memory()
    short, long = sorted(content_hw)
    aspect = short / long
    style_aspect = max((min(hw) / max(hw) for hw in style_hws if min(hw) > 0), default=0.0)
    # bytes per (long side)², so that the largest size that fits has a closed form
    per_side2 = CPU_BYTES_PER_PIXEL * aspect + CPU_BYTES_PER_STYLE_PIXEL * style_scale ** 2 * style_aspect
    # Held whatever the size; taken at this size, which over-counts a smaller one's float copies a little.
    inputs = (input_image_bytes(content_hw, size)
              + sum(input_image_bytes(hw, max(1, round(size * style_scale))) for hw in style_hws))
    base = CPU_BASE_BYTES + inputs
    need = (base + CPU_BYTES_PER_PIXEL * size * max(1, round(size * aspect))
            + round(CPU_BYTES_PER_STYLE_PIXEL * style_aspect * (size * style_scale) ** 2))
    gb = lambda n: f"{n / 1e9:.3g} GB"  # noqa: E731

    def largest(limit: int) -> int:  # the long side whose estimate fits in ``limit`` bytes
        return max(0, int(math.sqrt(max(0, limit - base) / per_side2)))

    if total is not None and need > total:
        fit = largest(int(total * 0.9))
        scaled = style_scale > 1 and style_aspect > 0
        advice = (f"choose a {size_name} of at most about {fit} px{' or a smaller style scale' if scaled else ''}"
                  if fit >= MIN_OUTPUT_SIZE else
                  f"this machine is too small for a CPU run{' at this style scale' if scaled else ''}")
        return (f"at {size} px a CPU run needs about {gb(need)} of memory, more than this machine's "
                f"{gb(total)}: {advice}, or run on a GPU", None)
    if available is not None and need > available:
        return None, (f"at {size} px a CPU run needs about {gb(need)} of memory and {gb(available)} is free now: "
                      f"it may run out of memory (about {largest(available)} px would fit)")
    return None, None


def stylize(content: Image.Image | torch.Tensor,
            styles: Sequence[Image.Image | torch.Tensor] | Image.Image | torch.Tensor,
            config: StylizeConfig | None = None,
            callback: Callable[[StepInfo], None] | None = None,
            image_every: int = 0,
            should_stop: Callable[[], bool] | None = None,
            lstm_setup: LearnedSetup | None = None) -> torch.Tensor:
    """Stylize ``content`` with ``styles``; return the image (1, 3, H, W) in [0, 1] on the CPU.

    ``callback`` gets a StepInfo after every step, with ``image`` set every ``image_every`` steps
    (at the first step past each multiple, as an L-BFGS step counts several evaluations) and at the
    end of each scale (with ``image_every`` 0, neither), and at the output size at the last step.  ``should_stop()`` returning
    True ends the run early; the current image is returned, and (after at least one step) also reported
    in a last StepInfo with its ``final_losses``.  ``lstm_setup`` runs the learned optimizer with exactly
    these settings (evaluations) instead of those of ``config.lstm_weights``' card.  Raises ValueError for
    bad settings or inputs.
    """
    if config is not None and not isinstance(config, StylizeConfig):
        raise TypeError(f"config must be a StylizeConfig, got {type(config).__name__} "
                        "(config_from_dict makes one from a dict)")
    config = (config or StylizeConfig()).validated()
    start = time.perf_counter()
    if isinstance(styles, (Image.Image, torch.Tensor)):
        styles = [styles]
    styles = list(styles)
    if not styles:
        raise ValueError("at least one style image is needed")
    if config.style_weights is not None and len(config.style_weights) != len(styles):
        raise ValueError(f"{len(config.style_weights)} style weights given for {len(styles)} style images")
    style_weights = config.style_weights
    if style_weights is not None and 0 in style_weights:
        # A style of weight 0 changes nothing: it was still resized and run through the loss network at
        # every scale, and one too elongated for it ended the run.
        styles = [s for s, w in zip(styles, style_weights) if w != 0]
        style_weights = [w for w in style_weights if w != 0]

    device = resolve_device(config.device)
    optimizer_name = resolve_optimizer(config.optimizer, config.size, config.pyramid)
    net_name = resolve_loss_net_name(config.loss_net, config.vgg_weights)
    loss_net = build_loss_net(net_name, device=device, vgg_weights=config.vgg_weights, pooling=config.vgg_pooling)
    notice: str | None = f"{SETUP_NOTICE_PREFIX}{loss_net.name}; optimizer: {optimizer_name}"
    if optimizer_name == "lstm" and lstm_setup is None:
        from artopt.learned_optimizers.shipped import learned_setup

        lstm_setup = learned_setup(config.lstm_weights)  # read once, used at every scale
    elif optimizer_name != "lstm" and config.lstm_weights is not None:
        notice += f" (the lstm weights {config.lstm_weights} are not used)"
    if optimizer_name != "lstm" and config.fine_scale_step != FINE_SCALE_STEP:
        notice += f" (fine scale step {config.fine_scale_step:g} is for lstm only: not used)"
    if optimizer_name != "lstm" and config.handoff_lr not in (None, 0, HANDOFF_LR):
        notice += f" (handoff lr {config.handoff_lr:g} is for lstm only: not used)"
    if optimizer_name != "lstm" and config.handoff_finer_lr not in (None, 0, HANDOFF_FINER_LR):
        notice += f" (handoff finer lr {config.handoff_finer_lr:g} is for lstm only: not used)"
    if optimizer_name != "lstm" and config.basis == "multiscale":
        notice += " on the multi-scale basis"
    elif optimizer_name == "lstm" and config.basis == "multiscale" and lstm_setup.basis != "multiscale":
        notice += f" (in pixels, as its weights were meta-trained; basis {config.basis} is for the other optimizers)"
    if config.size < loss_net.min_size:
        raise ValueError(f"size {config.size} is below the {loss_net.min_size} px {loss_net.name} needs")

    content_full = _to_tensor(content, "content", max_side=config.size)
    # (H, W) as given: content_full may be a shrunk copy, and every resize keeps the original's aspect
    content_hw = (content.height, content.width) if isinstance(content, Image.Image) else tuple(content_full.shape[-2:])
    # Styles never need more pixels than the largest scale uses: shrink huge ones once.
    style_cap = max(loss_net.min_size, round(config.size * config.style_scale))
    style_tensors = [_to_tensor(s, "style", max_side=style_cap) for s in styles]
    style_tensors = [resize_long_side(s, style_cap) if max(s.shape[-2:]) > style_cap else s for s in style_tensors]
    problem = content_size_problem(content_hw, config.size, loss_net.min_size, loss_net.name)
    if problem:
        raise ValueError(problem)
    content_final = resize_long_side(content_full, config.size, content_hw)
    if config.keep_colors:
        style_tensors = [_luminance_as_rgb(s, like=content_final) for s in style_tensors]

    planned = pyramid_sizes(config.size, config.pyramid)
    sizes = scale_sizes(tuple(content_final.shape[-2:]), planned, loss_net.min_size)
    if len(sizes) < len(planned):
        notice += (f"; {len(sizes)} scale(s) instead of {len(planned)}: at {max(set(planned) - set(sizes))} px "
                   f"the shorter side would be under the {loss_net.min_size} px {loss_net.name} needs")
    if config.coarse_share is not None and len(sizes) == 1:
        notice += f" (coarse share {config.coarse_share:g} is for coarse-to-fine runs: this one has one scale)"
    if config.pyramid is True and len(planned) == 1:  # (it was ignored without a word)
        notice += f" (pyramid: one scale at this size; coarse-to-fine starts at {2 * PYRAMID_MIN_COARSE} px)"
    if config.carry_state and optimizer_name != "lstm":
        notice += " (carry state is for lstm only: not used)"
    if config.style_scale is not None and round(config.size * config.style_scale) < loss_net.min_size:
        # the style never gets smaller than the network's least side: smaller scales all give this run
        notice += (f" (style scale {config.style_scale:g}: the style is {loss_net.min_size} px at every scale, "
                   f"{loss_net.name}'s least, so a smaller style scale changes nothing at this size)")
    if config.adam_levels and optimizer_name != "lstm":
        notice += f" (adam levels {config.adam_levels} is for lstm only: not used)"
    elif config.adam_levels and len(sizes) == 1:
        notice += f" (adam levels {config.adam_levels} is for coarse-to-fine runs: this one has one scale)"
    elif config.adam_levels and lstm_setup.basis != "multiscale":
        notice += f" (adam levels {config.adam_levels} needs a learned optimizer on the multi-scale basis: not used)"
    setup_notice = notice  # reported with the first step (StepInfo.setup_notice)
    steps_per_scale = split_steps(config.steps, len(sizes), config.coarse_share)
    generator = torch.Generator().manual_seed(config.seed)
    image: torch.Tensor | None = None
    done = 0
    stepped_at = None  # the scale of the last step taken
    loss_seconds = 0.0
    losses_now: dict[str, float] = {}
    stopped = False
    finished = False  # whether the run's last step knew it was the last (and so reported its final losses)
    best: dict | None = None  # keep_best's image, at the output's scale

    def at_output(img: torch.Tensor) -> torch.Tensor:
        """``img`` at the output size: a run that stopped, or whose budget ran out, before the last
        scale is upsampled (the last step's image and the returned one are the same)."""
        if img.shape[-2:] == content_final.shape[-2:]:
            return img
        return torch.nn.functional.interpolate(img.detach(), size=content_final.shape[-2:], mode="bicubic",
                                               align_corners=False).clamp(0, 1)

    def preview(img: torch.Tensor) -> torch.Tensor:
        img = img.detach().clamp(0, 1)  # (L-BFGS's images between its clamps)
        if config.keep_colors:
            img = _with_chroma(img, content_final.to(img.device))
        return img.cpu().clone()

    @torch.no_grad()
    def losses_of(img: torch.Tensor) -> dict[str, float]:
        """The losses of the image a run ends with (StepInfo.final_losses): one evaluation outside the budget."""
        return {k: float(v) for k, v in loss_fn(img).items()}

    def keep_best_image(img: torch.Tensor, kept: dict | None) -> tuple[dict[str, float], str | None, int | None]:
        """The losses of the image the run returns, a notice and the steps that made it when that is
        ``kept``'s (keep_best): ``img`` becomes it where ``kept`` holds an image of a lower loss than
        ``img``'s own (or ``img``'s is not finite)."""
        final_losses = losses_of(img)
        best_total, last_total = (math.inf if kept is None else kept["losses"]["total"]), final_losses["total"]
        if not (math.isfinite(best_total) and (best_total < last_total or not math.isfinite(last_total))):
            return final_losses, None, None
        with torch.no_grad():
            img.copy_(kept["image"])
        higher = (f"image was {100 * (last_total / best_total - 1):.2g}% higher" if math.isfinite(last_total)
                  else "loss was not finite")
        return dict(kept["losses"]), (f"kept the image after step {kept['after']} (the lowest loss at this size; the "
                                      f"last step's {higher})"), kept["after"]

    def start_image() -> torch.Tensor:
        """The run's start at the output size: what a run that took no step returns (made at the
        coarsest scale and upsampled, it was a blurred copy of the content)."""
        target = _luminance_as_rgb(content_final) if config.keep_colors else content_final
        if config.init.lower() == "noise":
            return torch.rand(target.shape, generator=torch.Generator().manual_seed(config.seed))
        return target.clone()

    if config.steps == 0:
        return preview(start_image())
    # The last scale with work to do (tiny budgets leave the finer scales empty: the result is
    # then upsampled at the end rather than optimized at a size that gets no steps).
    last_active = max((i for i, n in enumerate(steps_per_scale) if n > 0), default=len(sizes) - 1)
    budget = 0  # evaluations the scales up to this one may have used in all
    optimizer: torch.optim.Optimizer | None = None  # the current scale's
    handed_off = False  # a scale so far was handed off to Adam (handoff_lr) early enough (handoff_finer_within, _steps)
    for scale_index, (long_side, scale_steps) in enumerate(zip(sizes, steps_per_scale)):
        if scale_index > last_active:
            break
        budget += scale_steps
        # An L-BFGS iteration may end past its scale's share: the next scales get that much less, so
        # only the run's last iteration can go past the whole budget.  The last scale takes a step
        # even so, so that the result is optimized at the output size.
        allowed = budget - done if scale_index < last_active or scale_steps == 0 else max(1, budget - done)
        if allowed <= 0 and scale_index < last_active:
            continue
        if image is not None and should_stop is not None and should_stop():
            # asked during the last step of the previous scale: stop before computing this scale's targets
            stopped = True
            break
        target = resize_long_side(content_full, long_side, content_hw)
        if config.keep_colors:
            target = _luminance_as_rgb(target)
        target = target.to(device)
        height, width = target.shape[-2:]
        first_scale = image is None  # (the first scale that runs)
        if image is None:
            if config.init.lower() == "noise":
                image = torch.rand(target.shape, generator=generator).to(device)
            else:
                image = target.clone()
        else:
            image = torch.nn.functional.interpolate(image.detach(), size=(height, width), mode="bicubic",
                                                    align_corners=False).clamp(0, 1)
        image = image.detach().contiguous().requires_grad_(True)
        loss_fn = StyleLoss(loss_net, target, [s.to(device) for s in style_tensors],
                            content_weight=config.content_weight, style_weight=config.style_weight,
                            tv_weight=config.tv_weight, style_weights=style_weights,
                            style_scale=config.style_scale, edge_pad=config.edge_pad)
        previous_optimizer = optimizer  # (the coarser scale's, for carry_state; None on the first scale)
        optimizer = _make_optimizer(optimizer_name, image, config.lr, lstm_setup, config.basis,
                                    0 if first_scale else config.adam_levels)
        if optimizer_name == "lstm" and not first_scale and config.fine_scale_step != 1:
            for group in _learned_groups(optimizer):
                group["lr"] *= config.fine_scale_step
        # handoff_finer_lr: a scale the learned optimizer stalled on early (within handoff_finer_within of its
        # steps) was handed off, and Adam runs the finer ones from their start (HANDOFF_FINER_LR above).
        adam_from_start = optimizer_name == "lstm" and handed_off and bool(config.handoff_finer_lr)
        if (optimizer_name == "lstm" and config.carry_state and previous_optimizer is not None
                and hasattr(optimizer, "carry_state_from") and not adam_from_start):
            if not optimizer.carry_state_from(previous_optimizer):  # (it was dropped without a word)
                fresh = ("carry state: the coarser scale ended with no learned state (Adam after its handoff): "
                         "the learned optimizer starts this scale fresh")
                notice = f"{notice}; {fresh}" if notice else fresh
        warmup = None  # after a handoff with handoff_warmup: Adam's rate ramping up
        if adam_from_start:
            optimizer, warmup, rate = _adam_after_handoff(image, config.handoff_finer_lr, config.handoff_warmup)
            started = f"a coarser scale was handed off: Adam on the multi-scale basis runs this scale from its start at {rate}"
            notice = f"{notice}; {started}" if notice else started
        elif hasattr(getattr(optimizer, "inner", None), "finest"):  # adam_levels: a LevelSplit
            split = (f"Adam on the multi-scale basis (lr {STYLIZE_LR_MULTISCALE['adam']:g}) steps the {optimizer.inner.levels} "
                     "finest basis level(s) at this scale, the learned optimizer the coarser ones")
            notice = f"{notice}; {split}" if notice else split
        built_scale = scale_index  # the scale of loss_fn, image and size (for the post-loop report)
        evals = 0
        # L-BFGS runs unconstrained within a scale, as Gatys et al. and neural-style run it, and is
        # clamped to [0, 1] when the scale ends.  Each of its steps starts by evaluating the point its
        # last line search ended on: that evaluation is remembered, not repeated (clamping after
        # every iteration made it a new point each time, which cost two evaluations an iteration
        # and ended 12% higher at 256 px).
        lbfgs = optimizer_name == "lbfgs"
        last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (image, loss, gradient)
        # keep_best: the lowest-loss image evaluated at the output's scale.  Not L-BFGS's: its line
        # search evaluates points outside [0, 1], whose losses are not those of any image it returns.
        best = ({"image": torch.empty_like(image.detach()), "losses": {"total": math.inf}, "after": 0}
                if config.keep_best and not lbfgs and scale_index == len(sizes) - 1 else None)
        # (handoff watches the loss as backoff does, and acts where backoff would first act)
        watch_loss = optimizer_name == "lstm" and not adam_from_start and (config.backoff or bool(config.handoff_lr))
        backoff = _Backoff(optimizer) if watch_loss else None
        step_scale: float | None = None  # backoff's new multiplier, on a step that lowered it

        def closure():
            nonlocal evals, loss_seconds, losses_now, last, step_scale
            if last is not None and torch.equal(last[0], image.detach()):
                image.grad = last[2].clone()
                return last[1]
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            losses = loss_fn(image)
            losses["total"].backward()
            evals += 1
            losses_now = {k: float(v.detach()) for k, v in losses.items()}
            # (images some step made: a run returns no untouched start, even if its steps raised the loss)
            if best is not None and done > 0 and losses_now["total"] < best["losses"]["total"]:
                best["image"].copy_(image.detach())
                best.update(losses=dict(losses_now), after=done)  # the image the first `done` steps made
            if backoff is not None and math.isfinite(losses_now["total"]):  # (before this step's update)
                step_scale = backoff.observe(losses_now["total"])
            loss_seconds += time.perf_counter() - t0
            if lbfgs:
                last = (image.detach().clone(), losses["total"].detach(), image.grad.detach().clone())
            return losses["total"]

        last_good = image.detach().clone()
        while evals < allowed:
            if should_stop is not None and should_stop():  # (asked before this scale's first step)
                stopped = True
                break
            before = evals
            if lbfgs:
                # A step takes max_eval + 1 evaluations at most (its first, when not remembered, then the
                # line search's): no more than what is left of the budget, and at least the two of a step.
                optimizer.param_groups[0]["max_eval"] = max(1, min(LBFGS_MAX_EVAL, allowed - evals - 1))
            optimizer.step(closure)
            if warmup is not None:
                warmup.step()
            if evals == before:  # (a safety net: a stalled L-BFGS ends its scale below, after a step)
                break
            stop_now = should_stop is not None and should_stop()
            # the scale's last step: its budget is spent, or L-BFGS found no step even afresh
            scale_end = evals >= allowed or getattr(optimizer, "stalled", False)
            step_notice = getattr(optimizer, "last_notice", None)
            if step_scale is not None:
                stayed = (f"learned optimizer: the loss has stayed above its lowest at this size ({backoff.lowest:.4g}) "
                          f"for {BACKOFF_PATIENCE} steps; ")
                if config.handoff_lr:
                    # Adam on the multi-scale basis takes over this scale from the next step on (fresh moments)
                    optimizer, warmup, rate = _adam_after_handoff(image, config.handoff_lr, config.handoff_warmup)
                    backoff, step_scale = None, None
                    handed_off = handed_off or early_handoff(evals, scale_steps, config.handoff_finer_within,
                                                             config.handoff_finer_steps)
                    lowered = f"{stayed}Adam on the multi-scale basis goes on at {rate}"
                else:
                    lowered = f"{stayed}its step is now {step_scale:g}x (backoff)"
                step_notice = f"{step_notice}; {lowered}" if step_notice else lowered
            if not torch.isfinite(image).all() or not math.isfinite(losses_now.get("total", 0.0)):
                with torch.no_grad():
                    image.copy_(last_good)
                step_notice = (f"{optimizer_name} diverged (non-finite loss or image) at step {done + evals - before}; "
                               "stopped with the last finite image — try a smaller --lr (or smaller loss weights)")
                stopped = True
            else:
                last_good.copy_(image.detach())
            done_before, done = done, done + evals - before
            stopped = stopped or stop_now
            if not lbfgs or scale_end or stopped:  # (L-BFGS: after a divergence, its last good image)
                with torch.no_grad():
                    image.clamp_(0, 1)
            final = stopped or (scale_index == last_active and scale_end)
            final_losses = kept_after = None
            elapsed = time.perf_counter() - start  # (before the final losses' evaluation, outside the budget)
            stepped_at = scale_index
            if final and (callback is not None or best is not None):
                final_losses, kept, kept_after = keep_best_image(image, best)
                if kept:
                    step_notice = f"{step_notice}; {kept}" if step_notice else kept
            finished = final
            if callback is not None:
                # (an L-BFGS step counts several evaluations: a multiple of image_every may be passed over)
                want_image = final or (image_every > 0 and done // image_every > done_before // image_every) or (
                    image_every > 0 and scale_end)  # end of a scale
                info = StepInfo(step=done, total_steps=config.steps, scale_index=scale_index, n_scales=len(sizes),
                                size=(height, width), losses=dict(losses_now), elapsed=elapsed,
                                image=None if not want_image else preview(at_output(image) if final else image),
                                notice="; ".join(n for n in (notice, step_notice) if n) or None,
                                loss_seconds=loss_seconds,
                                final_losses=final_losses, kept_after=kept_after, step_scale=step_scale,
                                setup_notice=setup_notice)
                callback(info)
                notice = setup_notice = None
            step_scale = None
            if stopped or scale_end:
                break
        with torch.no_grad():  # (L-BFGS: a scale it ended early, converged or stopped)
            image.clamp_(0, 1)
        if stopped:
            break

    if done == 0:  # stopped before the first step (e.g. while the targets were computed)
        return preview(start_image())
    if not finished and (callback is not None or best is not None):
        # A stop seen between steps (or between scales) ended the run after a step that did not know
        # it was the last: its image and losses come now, under the same step count.
        elapsed = time.perf_counter() - start
        final_losses, kept, kept_after = keep_best_image(image, best)
        if kept:
            notice = f"{notice}; {kept}" if notice else kept
        if callback is not None:
            # (stopped while the next scale was built, no step ran at it: its image's losses, not the
            # coarser scale's last step's under this scale's index and size)
            losses = dict(losses_now) if stepped_at == built_scale else dict(final_losses)
            callback(StepInfo(step=done, total_steps=config.steps, scale_index=built_scale, n_scales=len(sizes),
                              size=(height, width), losses=losses, elapsed=elapsed,
                              image=preview(at_output(image)), notice=notice, loss_seconds=loss_seconds,
                              final_losses=final_losses, kept_after=kept_after))
    return preview(at_output(image))


def _adam_after_handoff(image: torch.Tensor, lr: float, warmup_steps: int):
    """Adam on the multi-scale basis (fresh moments) where the learned optimizer hands over; with a warm-up
    its rate goes rate/(n+1), 2 rate/(n+1), ..., the full rate from its (n+1)th step on (fresh moments
    would otherwise move every coefficient by about the rate at once).  Returns the optimizer, the
    scheduler to step after each of its steps (None without a warm-up) and the notice's words for the rate."""
    optimizer = _make_optimizer("adam", image, lr, basis="multiscale")
    warmup = (torch.optim.lr_scheduler.LinearLR(optimizer.inner, start_factor=1 / (warmup_steps + 1),
                                                total_iters=warmup_steps) if warmup_steps else None)
    ramp = f", reached over {warmup_steps} steps" if warmup_steps else ""
    return optimizer, warmup, f"lr {lr:g}{ramp} (handoff)"


def config_from_dict(values: dict) -> StylizeConfig:
    """A StylizeConfig from a dict of its fields (settings kept as JSON, say), refusing unknown keys and
    bad values."""
    known = {f.name for f in dataclasses.fields(StylizeConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    return StylizeConfig(**values).validated()
