"""Meta-train a learned optimizer on one of the paper's suites (``--ship weights``: ship it to weights/).

    python train/meta_train.py quadratic --episodes 300 --meta-lr 1e-3
    python train/meta_train.py mnist --minutes 25
    python train/meta_train.py cifar10 --minutes 40

Resumable: rerunning the same command continues from runs/<name>/<name>.ckpt.  The best networks
by validation (mean trajectory loss on held-out problems) are kept in runs/<name>/ with a JSON card, and
copied to --ship (``--ship weights``: over weights/<name>.safetensors, the shipped ones).
"""

from __future__ import annotations

import math
import platform
import shlex
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from artopt.learned_optimizers import LSTMOptimizerConfig, LSTMOptimizerNet  # noqa: E402
from artopt.outer_trainers import (MetaTrainConfig, add_meta_train_flags, meta_train,  # noqa: E402
                                   meta_train_flag_values, ship_best)
from artopt.script_args import add_run_folder_flags, check_run_flags, config_error, finish_meta_training, script_parser  # noqa: E402
from artopt.tasks import get_task, parse_task_args, task_defaults  # noqa: E402


def episode_cap(episodes: int | None, minutes: float | None) -> int:
    """The run's episode limit.  With a wall-time budget and no explicit limit the budget decides:
    a fixed default cap would end a run early on a fast machine (1000 MNIST episodes take 17 of the
    30 minutes on an idle 2-core CPU) and make the result depend on the machine's load."""
    if episodes is not None:
        return episodes
    return 1000 if minutes is None else 100_000


def main(argv=None) -> int:
    ap = script_parser(__doc__)
    ap.add_argument("suite", help="task name, e.g. quadratic, mnist, cifar10, cifar5")
    ap.add_argument("--name", help="output name (default: the suite)")
    ap.add_argument("--episodes", type=int, default=None,
                    help="episodes to run (default: 1000, or no cap when --minutes sets the budget)")
    ap.add_argument("--minutes", type=float, default=None, help="wall-time budget")
    ap.add_argument("--meta-lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=None, help="horizon (default: the task's)")
    ap.add_argument("--unroll", type=int, default=None, help="truncation (default: the task's)")
    ap.add_argument("--val-every", type=int, default=25)
    ap.add_argument("--val-problems", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output-scale", type=float, default=0.1)
    ap.add_argument("--no-preprocess", action="store_true", help="feed raw gradients (ablation)")
    ap.add_argument("--global-cells", type=int, default=0, metavar="K",
                    help="the last K units of each LSTM layer carry into the next step their mean over all "
                         "coordinates (the paper's global averaging cells, LSTM-GAC; "
                         "LSTMOptimizerConfig.global_cells); 0: none")
    add_meta_train_flags(ap)
    ap.add_argument("--threads", type=int, default=1)
    add_run_folder_flags(ap, ROOT)
    ap.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="extra keyword for the task constructor (JSON value), e.g. labels=[5,6,7,8,9]")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error(f"--threads must be at least 1, got {args.threads}")
    if not 0 < args.output_scale < math.inf:
        ap.error(f"--output-scale must be positive and finite, got {args.output_scale}")
    name = args.suite if args.name is None else args.name  # (an empty --name is refused below)
    check_run_flags(ap, name, args.runs, args.ship)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    try:
        task_kwargs = parse_task_args(args.task_arg)
        task = get_task(args.suite, **task_kwargs)  # an unknown suite, a bad --task-arg, missing data
    except ValueError as err:
        ap.error(str(err))
    try:
        cfg = LSTMOptimizerConfig(preprocess=not args.no_preprocess, output_scale=args.output_scale,
                                  global_cells=args.global_cells)
    except ValueError as err:
        config_error(ap, err)
    try:  # the data is read on the first sample: a missing or corrupt dataset is one line, as in evaluate.py
        groups = sorted(set(task.sample(torch.Generator().manual_seed(0), "train").groups))
    except (ValueError, OSError) as err:  # DataNotFoundError is an OSError
        ap.error(str(err))
    nets = nn.ModuleDict({g: LSTMOptimizerNet(cfg) for g in groups})
    try:
        mcfg = MetaTrainConfig(
            steps=task.steps if args.steps is None else args.steps,  # (0 is refused, not read as the default)
            unroll=task.unroll if args.unroll is None else args.unroll,
            episodes=episode_cap(args.episodes, args.minutes),
            meta_lr=args.meta_lr, val_every=args.val_every, val_problems=args.val_problems, seed=args.seed,
            max_minutes=args.minutes, **meta_train_flag_values(args),
        )
    except ValueError as err:
        config_error(ap, err)
    card = {
        "name": name,
        "task": args.suite,
        "task_kwargs": task_kwargs,
        "architecture": "coordinatewise LSTM, 2 layers x 20 units, shared weights, linear head"
                        + (f"; the last {cfg.global_cells} units of each layer carry their mean over all coordinates "
                           "into the next step (global averaging cells)" if cfg.global_cells else ""),
        "trained_on": f"{platform.processor() or platform.machine()}, {args.threads} thread(s)",
        "command": "python train/meta_train.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
    }
    run_dir = Path(args.runs) / name
    return finish_meta_training(
        ap,
        lambda: meta_train(task, nets, mcfg, out_dir=run_dir, name=name, card=card,
                           task_settings={"suite": args.suite, "task_kwargs": task_kwargs},
                           task_setting_defaults={"task_kwargs": task_defaults(args.suite)}),
        lambda res: ship_best(run_dir, name, args.ship, res, prior_seconds=0.0), args.ship,
        kept=run_dir / f"{name}.safetensors")


if __name__ == "__main__":
    raise SystemExit(main())
