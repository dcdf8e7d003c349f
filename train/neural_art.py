r"""Meta-train the neural-art optimizer (the paper's Section 3.4) on 64×64 ImageNet crops.

    # the paper's setup: one style (starry_night), 128 steps, unroll 32, Appendix-A preprocessing
    python train/neural_art.py --mode paper --name neural_art_paper --minutes 35
    # the shipped optimizer's recipe (weights/neural_art.json; 55 min on 2 cores)
    python train/neural_art.py --mode paper --name neural_art --seed 16 --minutes 55 --val-problems 6 \
        --val-every 80 --unroll 16 --meta-lr-schedule cosine --trajectory-weights linear --val-criterion final \
        --meta-fraction 0.1 --threads 1 --basis-levels 4 --workers 2 --moment-inputs
    # generalisation aids tried: several training styles, random crop sizes, loss-scale invariance
    python train/neural_art.py --mode multi --size-range 48 96 --grad-normalization first_rms \
        --name neural_art_multi --minutes 35

Resumable (rerun the same command).  Photos are split train/val/test by file
(artopt.tasks.neural_art.split_photos); validation uses val photos, never test photos.  Two styles
(artopt.tasks.neural_art.HELD_OUT_STYLES) are never used for training in any mode.
The best networks by validation are kept in runs/<name>/ with a JSON card, and copied to --ship
(``--ship weights``: over weights/<name>.safetensors, the shipped ones).
"""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from artopt.learned_optimizers import LSTMOptimizerConfig, LSTMOptimizerNet  # noqa: E402
from artopt.learned_optimizers.network import LEVEL_INPUTS  # noqa: E402
from artopt.outer_trainers import (MetaTrainConfig, add_meta_train_flags, meta_train,  # noqa: E402
                                   meta_train_flag_values, ship_best)
from artopt.script_args import add_run_folder_flags, check_run_flags, config_error, finish_meta_training, script_parser, setting_flags  # noqa: E402
from artopt.tasks.neural_art import HELD_OUT_STYLES, TRAIN_STYLE, NeuralArtTask, split_digest, style_names  # noqa: E402


def main(argv=None) -> int:
    ap = script_parser(__doc__)
    ap.add_argument("--mode", choices=("paper", "multi"), default="paper",
                    help="paper: the one training style; multi: all styles but the held-out ones")
    ap.add_argument("--name", default="neural_art")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--size-range", type=int, nargs=2, default=None, metavar=("MIN", "MAX"))
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--unroll", type=int, default=32)
    ap.add_argument("--episodes", type=int, default=100000)
    ap.add_argument("--minutes", type=float, default=35.0)
    ap.add_argument("--meta-lr", type=float, default=3e-3)
    ap.add_argument("--val-every", type=int, default=40)
    ap.add_argument("--val-problems", type=int, default=4)
    ap.add_argument("--grad-normalization", choices=("none", "first_rms"), default="none")
    ap.add_argument("--output-scale", type=float, default=0.1)
    ap.add_argument("--moment-inputs", action="store_true",
                    help="also feed the LSTM m/sqrt(v) and g/sqrt(v) from running means of g and g^2 "
                         "(LSTMOptimizerConfig.moment_inputs)")
    ap.add_argument("--moment-betas", type=float, nargs=2, default=(0.95, 0.95), metavar=("BETA1", "BETA2"),
                    help="decays of those running means (default 0.95 0.95)")
    ap.add_argument("--time-inputs", action="store_true",
                    help="also feed the LSTM tanh(t/s) for s = 3, 10, 30, 100, t the steps taken so far "
                         "(LSTMOptimizerConfig.time_inputs): a schedule without counting in its state")
    ap.add_argument("--level-inputs", action="store_true",
                    help="also feed the LSTM a one-hot of each coordinate's level in the multi-scale basis "
                         "(levels 0, 1, 2, 3 and coarser; LSTMOptimizerConfig.level_inputs); needs --basis-levels")
    ap.add_argument("--loss-inputs", action="store_true",
                    help="the LSTM also sees tanh(s log(f_t/f_(t-1))), s in 1, 10, 100, the same for every coordinate "
                         "(LSTMOptimizerConfig.loss_inputs): whether and how fast the last step lowered the loss")
    ap.add_argument("--head-hidden", type=int, default=0, metavar="K",
                    help="output layer: a K-unit ReLU layer reading the top h and the LSTM's inputs, then a "
                         "linear map (LSTMOptimizerConfig.head_hidden; no added state); 0: the paper's linear map")
    ap.add_argument("--global-cells", type=int, default=0, metavar="K",
                    help="the last K units of each LSTM layer carry into the next step their mean over all "
                         "coordinates (the paper's global averaging cells; LSTMOptimizerConfig.global_cells); 0: none")
    ap.add_argument("--basis-levels", type=int, default=0, metavar="N",
                    help="meta-train in the multi-scale image basis with N levels (64 px crops: 4 reach 8 px); "
                         "0: pixels (artopt.learned_optimizers.multiscale)")
    add_meta_train_flags(ap)
    ap.add_argument("--init", choices=("content", "noise"), default="content")
    ap.add_argument("--init-from", default=None, metavar="PATH",
                    help="start from these networks (a weights file) instead of a fresh LSTM")
    ap.add_argument("--prior-minutes", type=float, default=0.0,
                    help="meta-training time already spent on --init-from (recorded in the card)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    add_run_folder_flags(ap, ROOT)
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error(f"--threads must be at least 1, got {args.threads}")
    if args.size < 8:
        ap.error(f"--size must be at least 8 px, got {args.size}")
    if args.size_range and not (8 <= args.size_range[0] <= args.size_range[1]
                                and all(side % 8 == 0 for side in args.size_range)):
        ap.error(f"--size-range needs multiples of 8 with 8 <= MIN <= MAX (crop sides are drawn in steps of 8), "
                 f"got {args.size_range[0]} {args.size_range[1]}")
    if not 0 < args.output_scale < math.inf:
        ap.error(f"--output-scale must be positive and finite, got {args.output_scale}")
    if not 0 <= args.prior_minutes < math.inf:
        ap.error(f"--prior-minutes must be 0 or more, got {args.prior_minutes}")
    if args.basis_levels < 0:
        ap.error(f"--basis-levels must be 0 (pixels) or more, got {args.basis_levels}")
    if args.level_inputs and args.basis_levels < LEVEL_INPUTS:
        # with fewer, the inputs of the coarser levels never train, and larger images have them
        ap.error(f"--level-inputs needs --basis-levels {LEVEL_INPUTS} or more, so that every level input is trained")
    check_run_flags(ap, args.name, args.runs, args.ship)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    if args.mode == "paper":
        styles = [TRAIN_STYLE]
    else:
        styles = [s for s in style_names() if s not in HELD_OUT_STYLES]
    task = NeuralArtTask(size=args.size, styles=styles, steps=args.steps, unroll=args.unroll,
                         size_range=tuple(args.size_range) if args.size_range else None, init=args.init,
                         basis_levels=args.basis_levels)
    try:
        cfg = LSTMOptimizerConfig(output_scale=args.output_scale, grad_normalization=args.grad_normalization,
                                  moment_inputs=args.moment_inputs, beta1=args.moment_betas[0],
                                  beta2=args.moment_betas[1], time_inputs=args.time_inputs,
                                  level_inputs=args.level_inputs, loss_inputs=args.loss_inputs,
                                  head_hidden=args.head_hidden, global_cells=args.global_cells)
    except ValueError as err:
        config_error(ap, err)
    nets = nn.ModuleDict({"default": LSTMOptimizerNet(cfg)})
    if args.init_from:
        from artopt.learned_optimizers import load_learned

        try:
            start = load_learned(args.init_from)
        except (OSError, ValueError) as err:  # missing, or not a weights file
            ap.error(f"--init-from: {err}")
        if list(start) != ["default"]:  # e.g. a CIFAR file (networks "conv" and "fc"): was a KeyError
            ap.error(f"--init-from {args.init_from} holds the networks {sorted(start)}; neural art trains one, "
                     "'default' (a file train/neural_art.py wrote)")
        theirs, ours = start["default"].config.to_dict(), cfg.to_dict()
        if theirs != ours:  # said with the flags that differ, not two whole configs
            flag_of = setting_flags(ap)
            differ = [f"{(flag_of((k,)) or (k,))[0]} {theirs.get(k)!r} (this run: {ours.get(k)!r})"
                      for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
            ap.error(f"--init-from {args.init_from} was trained with other network settings: {'; '.join(differ)}")
        nets["default"].load_state_dict(start["default"].state_dict())
    try:
        mcfg = MetaTrainConfig(steps=args.steps, unroll=args.unroll, episodes=args.episodes, meta_lr=args.meta_lr,
                               val_every=args.val_every, val_problems=args.val_problems, seed=args.seed,
                               max_minutes=args.minutes, **meta_train_flag_values(args))
    except ValueError as err:
        config_error(ap, err)
    card = {
        "name": args.name,
        "task": "neural-art",
        "mode": args.mode,
        "training_styles": styles,
        "held_out_styles": list(HELD_OUT_STYLES),
        "photos": "../shared/data/imagenet-sample, split by file: artopt.tasks.neural_art.split_photos "
                  f"(train {len(task.split['train'])}, val {len(task.split['val'])}, test {len(task.split['test'])})",
        # the split itself (train: the folder's other photos): a changed folder shifts files across it
        "photo_split": {"digest": split_digest(task.split), "val": task.split["val"], "test": task.split["test"]},
        "crop": f"{args.size}x{args.size}" if not args.size_range else f"square, side {args.size_range} (multiple of 8)",
        # The engine scales the gradients the LSTM sees by (image pixels) / this (lstm_input_scale);
        # without it a retrained file would see 16x too small gradients at 256 px.  For random crop
        # sizes: the middle size's pixels.
        "trained_pixels": (args.size ** 2 if not args.size_range
                           else ((args.size_range[0] + args.size_range[1]) // 2) ** 2),
        "loss": "artopt.style.StyleLoss on efficientnet-lite0, engine default weights",
        "init": args.init,
        "architecture": "coordinatewise LSTM, 2 layers x 20 units, shared weights"
                        + ("" if cfg.head_hidden else ", linear head")
                        + (f"; inputs: Appendix-A preprocessed gradient plus m/sqrt(v) and g/sqrt(v) "
                           f"(running means of g and g^2, decays {cfg.beta1} and {cfg.beta2})"
                           if cfg.moment_inputs else "")
                        + ("; plus tanh(t/s), s in (3, 10, 30, 100), t the steps taken" if cfg.time_inputs else "")
                        + ("; plus a one-hot of the coordinate's basis level (0, 1, 2, 3 and coarser)"
                           if cfg.level_inputs else "")
                        + ("; plus tanh(s log(f_t/f_(t-1))), s in (1, 10, 100), the last step's loss change"
                           if cfg.loss_inputs else "")
                        + (f"; output: a {cfg.head_hidden}-unit ReLU layer on the top h and these inputs, then "
                           "a linear map" if cfg.head_hidden else "")
                        + (f"; the last {cfg.global_cells} units of each layer carry their mean over all coordinates "
                           "into the next step (global averaging cells)" if cfg.global_cells else ""),
        "basis": ({"kind": "multiscale", "levels": args.basis_levels,
                   "note": "the LSTM runs on the coefficients of artopt.learned_optimizers.multiscale"}
                  if args.basis_levels else {"kind": "pixels"}),
        "command": "python train/neural_art.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "init_from": args.init_from,
        "prior_meta_training_minutes": args.prior_minutes,
    }
    task_settings = {"mode": args.mode, "size": args.size, "size_range": args.size_range, "init": args.init,
                     "basis_levels": args.basis_levels, "init_from": args.init_from,
                     "photo_split": split_digest(task.split)}
    run_dir = Path(args.runs) / args.name

    def train():
        from artopt.outer_trainers.checkpoints import ResumeError, SettingsChangedError

        try:
            # (a run from before the split was recorded resumes as if on this one, as it did)
            return meta_train(task, nets, mcfg, out_dir=run_dir, name=args.name, card=card,
                              task_settings=task_settings,
                              task_setting_defaults={"photo_split": task_settings["photo_split"]})
        except SettingsChangedError as err:
            split = [(old, new) for key, old, new in err.changes if key == ("task", "photo_split")]
            if not split:
                raise
            raise ResumeError(f"{err.path} belongs to a run on another split of the photos in "
                              f"{task.root / 'imagenet-sample'} (split {split[0][0]} -> {split[0][1]}): photos were "
                              "added or removed there since it started; restore them, or choose another --name") from None

    return finish_meta_training(
        ap,
        train,
        lambda res: ship_best(run_dir, args.name, args.ship, res, prior_seconds=60 * args.prior_minutes), args.ship,
        kept=run_dir / f"{args.name}.safetensors")


if __name__ == "__main__":
    raise SystemExit(main())
