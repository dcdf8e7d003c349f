"""Evaluate the neural-art optimizer against tuned baselines (the paper's Figure 8 / 9).

    python train/eval_neural_art.py 64        # 64 px test crops, training style, 128 steps
    python train/eval_neural_art.py 128       # 128 px test crops, held-out style
    python train/eval_neural_art.py 256       # whole test photos at 256 px through the engine
    python train/eval_neural_art.py 384|512 --pyramid on|off   # 384: the smallest coarse-to-fine size
    python train/eval_neural_art.py summary   # the table of the JSONs above (summary.json; --card: into a card)
    python train/eval_neural_art.py grid      # Figure-9-style grid of test photos, the LSTM's next to Adam's

Baseline learning rates are tuned on *validation* photos for each setting (a log grid around
GRID_REFERENCE_LR, criterion: mean final loss) and cached in train/results/neural_art/lrs.json;
evaluation uses *test* photos (artopt.tasks.neural_art.split_photos), never seen in training.
Results: train/results/neural_art/<setting>.json and .png.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from artopt.evaluation import baseline_factory, compare, evaluate, lstm_factory, t_quantile  # noqa: E402
from artopt.file_writes import folder_lock  # noqa: E402
from artopt.learned_optimizers.shipped import learned_setup, trained_basis, trained_pixels  # noqa: E402
from artopt.learned_optimizers.weights import write_json_atomic  # noqa: E402
from artopt.optimizers.tuning import TuningDivergedError, grid_search, is_tuned_rate, search_lr  # noqa: E402
from artopt.style.engine import (HANDOFF_FINER_LR, HANDOFF_FINER_STEPS, HANDOFF_FINER_WITHIN, HANDOFF_LR,  # noqa: E402
                                 HANDOFF_WARMUP, MAX_ADAM_LEVELS, StylizeConfig, stylize)
from artopt.tasks.neural_art import HELD_OUT_STYLES, TRAIN_STYLE, NeuralArtTask, _load_rgb  # noqa: E402
from artopt.script_args import check_output_file, finite_or_none, script_parser  # noqa: E402

OUT = ROOT / "train" / "results" / "neural_art"
DEFAULT_OPTIMIZERS = "lstm,adam,rmsprop,sgd,nag,lbfgs"  # what the loss-curve settings compare
# The rates --grid-factors and --engine-grid-factors multiply (docs/retraining.md's grids): the
# engine's defaults when the baselines were tuned, fixed here so those factors keep their meaning.
GRID_REFERENCE_LR = {"adam": 0.02, "lbfgs": 1.0, "sgd": 0.5, "rmsprop": 0.005, "nag": 0.05}
BASELINES = ("adam", "rmsprop", "sgd", "nag")
# reduced-precision LSTM state ("-int8": h in int8, c in float16)
STATE_DTYPES = {"-bf16": torch.bfloat16, "-fp16": torch.float16, "-int8": torch.int8}
MULTISCALE = "-ms"  # run weights in the multi-scale basis (artopt.learned_optimizers.multiscale)
RAW = "-raw"  # ignore the card's calibrated inference settings: run the weights as meta-trained
# engine settings: run this optimizer without the coarse-to-fine pyramid in a --pyramid on run, so
# its time to reach the pyramid-run Adam's final loss is measured in the same run
FLAT = "-flat"
# engine settings: NAME-coarseS gives the pyramid's coarsest scale the share S of the steps (StylizeConfig.coarse_share)
COARSE = "-coarse"
# engine settings: lstm-adamlevelsK leaves the K finest basis levels of the finer pyramid scales to Adam
# (StylizeConfig.adam_levels)
ADAM_LEVELS = "-adamlevels"


TUNED_LRS: Path | None = None  # --tuned-lrs; None: lrs.json in OUT


def _lrs_path() -> Path:
    return TUNED_LRS if TUNED_LRS is not None else OUT / "lrs.json"


def _lr_cache() -> dict:
    """The tuned rates, {setting/steps/optimizer: {"lr": ...}}; ValueError naming the file if it is
    damaged (it was a JSONDecodeError traceback, or a format error where an entry's rate was not a number)."""
    path = _lrs_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file of tuned rates ({err}); delete it to tune again") from None
    bad = next((k for k, v in data.items() if not (isinstance(v, dict) and is_tuned_rate(v.get("lr")))), None) \
        if isinstance(data, dict) else "(the whole file)"
    if bad is not None:
        raise ValueError(f"{path}: the entry {bad!r} holds no tuned rate (a positive number as 'lr'); delete "
                         "that entry, or the file, to tune again")
    return data


# An optimizer's loss fields in a result JSON.  A diverged run's inf or NaN is written as null, so the
# file is strict JSON (a bare Infinity stops most other programs' readers), and read back as inf, which
# ranks last and is never "reached".
LOSS_FIELDS = ("mean_final_loss", "median_final_loss", "mean_trajectory_loss", "mean_last_window_loss",
               "final_loss_ci95", "final_losses", "mean_curve", "band_lo", "band_hi")


def _read_result(path: Path) -> dict:
    """A setting's result JSON (--add, summary); ValueError naming it if it is damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable result JSON ({err})") from None
    if not (isinstance(data, dict) and isinstance(data.get("optimizers"), dict)):
        raise ValueError(f"{path}: not a result of this script (no 'optimizers')")
    for entry in data["optimizers"].values():
        for key in LOSS_FIELDS if isinstance(entry, dict) else ():
            if key in entry and entry[key] is None:
                entry[key] = math.inf
            elif isinstance(entry.get(key), list):
                entry[key] = [math.inf if v is None else v for v in entry[key]]
    for old in data.get("replaced", []):  # (first_lstm_final reads these)
        if isinstance(old, dict) and isinstance(old.get("mean_final_loss"), dict):
            old["mean_final_loss"] = {k: math.inf if v is None else v for k, v in old["mean_final_loss"].items()}
    return data


def _write_json(path: Path, data) -> None:
    """Strict JSON: every non-finite number as null (LOSS_FIELDS)."""
    write_json_atomic(path, finite_or_none(data))


def _save_lr_entry(key: str, entry: dict) -> None:
    """Record one tuned rate.  The file is re-read under a lock and replaced atomically, so tuning
    runs of other settings going on at the same time keep theirs."""
    with folder_lock(_lrs_path()):
        data = _lr_cache()
        data[key] = entry
        write_json_atomic(_lrs_path(), dict(sorted(data.items())))


def _warn_at_edge(name: str, lr: float) -> None:
    print(f"warning: {name}'s best rate {lr:g} is still at the edge of the rates tried; raise --widen",
          file=sys.stderr, flush=True)


def _say_cached(name: str, key: str, entry: dict) -> None:
    """Cached rates are reused whatever --tune-photos / --grid-factors say: say so, with what they came from."""
    photos = entry.get("problems", len(entry.get("photos", [])))
    print(f"{name}: lr {entry['lr']:g} from {_lrs_path()} [{key}] (tuned on {photos} validation photo(s); "
          "--retune tunes again)", flush=True)


def crop_setting(args) -> dict:
    """Settings (a) and (b): square test crops as the meta-training task makes them."""
    size = int(args.setting)
    style = TRAIN_STYLE if size == 64 else HELD_OUT_STYLES[0]
    task = NeuralArtTask(size=size, styles=(style,), steps=args.steps)
    task.name = f"neural-art-{size}px-{style.rsplit('.', 1)[0]}"
    cache = _lr_cache()
    lrs = {}
    for name in [o for o in args.optimizers if _baseline(o)]:
        key = f"{task.name}/steps={args.steps}/{name}"
        if key not in cache or args.retune:
            base, basis = _baseline(name)
            grid = [GRID_REFERENCE_LR[base] * f for f in args.grid_factors]
            res = search_lr(task, base, grid=grid, problems=args.tune_photos, steps=args.steps, seed=args.seed,
                            widen=args.widen, basis=basis)
            cache[key] = res.to_dict()
            _save_lr_entry(key, cache[key])
            print(f"tuned {name}: lr={res.lr:g} (at grid edge: {res.at_edge})", flush=True)
            if res.at_edge:
                _warn_at_edge(name, res.lr)
        else:
            _say_cached(name, key, cache[key])
        lrs[name] = cache[key]["lr"]
    factories, inference = {}, {}
    for name in args.optimizers:
        if name.startswith("lstm"):
            # Same weights, bfloat16 / float16 LSTM state for "-bf16" / "-fp16"; gradients rescaled
            # to the training crop size as the engine does (see artopt.style.engine.lstm_input_scale).
            base, raw = _raw(name)
            dtype = torch.float32
            for suffix, reduced in STATE_DTYPES.items():
                if base.endswith(suffix):
                    base, dtype = base.removesuffix(suffix), reduced
            base, basis = _basis(base, args)
            path = args.weights[base]
            settings = inference[name] = _settings(path, raw)
            factories[name] = lstm_factory(weights=path, input_scale=_input_scale(path, size), state_dtype=dtype,
                                           basis=basis, lr=settings["lr"], coarsest=settings["coarsest"])
        elif name == "lbfgs":
            factories[name] = baseline_factory("lbfgs", 1.0)
            lrs[name] = 1.0
        else:
            base, basis = _baseline(name)
            factories[name] = baseline_factory(base, lrs[name], basis=basis)
    t0 = time.time()
    result = evaluate(task, factories, instances=args.photos, steps=args.steps, seed=args.seed, split=args.split,
                      with_metrics=False)
    report = compare(result, lrs=lrs, learned=[n for n in factories if n.startswith("lstm")])
    report.update(_reach_steps(report), setting=args.setting, split=args.split, style=style, size=size,
                  seconds=time.time() - t0,
                  weights={k: str(v) for k, v in args.weights.items()}, inference=inference)
    return report


def _baseline(name: str) -> tuple[str, str] | None:
    """(optimizer, basis) for a tuned baseline's name ("adam"; "adam-ms": Adam on the multi-scale
    basis's coefficients, as the LSTM runs), None for any other name."""
    base = name.removesuffix(MULTISCALE)
    if base in BASELINES:
        return base, "multiscale" if name.endswith(MULTISCALE) else "pixels"
    return None


def _check_optimizers(names: list[str], crops: bool) -> str | None:
    """What is wrong with the --optimizers list, or None."""
    if not names:
        return "--optimizers names no optimizer"
    for name in names:
        base, _, share, adam_levels = _engine_variant(name, True) if not crops else (name, True, None, None)
        if share is not None and not 0 < share < 1:
            return f"{name}: the coarse share must be a fraction between 0 and 1 (exclusive), got {share:g}"
        if adam_levels is not None and not (base.startswith("lstm") and 1 <= adam_levels <= MAX_ADAM_LEVELS):
            return (f"{name}: {ADAM_LEVELS}K is for learned optimizers, K from 1 to {MAX_ADAM_LEVELS} "
                    "(StylizeConfig.adam_levels)")
        if base.startswith("lstm") or base == "lbfgs" or _baseline(base):
            continue
        if base == f"lbfgs{MULTISCALE}":
            return "lbfgs does not run in the multi-scale basis (its line search needs a closure the basis does not pass on)"
        return f"unknown optimizer {name!r}"
    return None


def _weights_name(name: str, weights: dict, crops: bool) -> tuple[str, bool]:
    """The --weights name a learned optimizer in --optimizers runs, as the settings resolve it, and
    whether it runs them in the multi-scale basis whatever their card says ("lstm-prev-ms-bf16-raw":
    lstm-prev, True; an engine setting's "lstm-prev-raw-flat": lstm-prev, False)."""
    base, _ = _raw(name if crops else _engine_variant(name, True)[0])
    if crops:
        for suffix in STATE_DTYPES:
            base = base.removesuffix(suffix)
    if base.endswith(MULTISCALE) and base.removesuffix(MULTISCALE) in weights:
        return base.removesuffix(MULTISCALE), True
    return base, False


def _check_weights(names: list[str], weights: dict, given: set[str], crops: bool) -> str | None:
    """What is wrong with the --weights for the --optimizers list, or None: a learned optimizer without
    weights (a KeyError once the baselines were tuned), a --weights name ``given`` that nothing runs (it
    was skipped without a word), or weights that cannot be run (found only after the tuning)."""
    runs = {}  # --weights name: whether some optimizer runs it in its card's basis (so needs the card)
    for name in names:
        if (name if crops else _engine_variant(name, True)[0]).startswith("lstm"):
            key, multiscale = _weights_name(name, weights, crops)
            if key not in weights:
                return f"--optimizers {name} runs the weights named {key}: give them with --weights {key}=PATH"
            runs[key] = runs.get(key, False) or not multiscale
    unused = sorted(given - set(runs))
    if unused:
        return (f"--weights {unused[0]}: no optimizer in --optimizers runs it (learned ones: "
                f"{', '.join(sorted(runs)) or 'none'})")
    for key, needs_card in sorted(runs.items()):
        if not Path(weights[key]).is_file():
            return f"--weights {key}={weights[key]}: no such file"
        try:
            learned_setup(weights[key], basis=None if needs_card else "multiscale")
        except (ValueError, OSError) as err:  # a damaged file or card, or none beside it
            return f"--weights {key}={weights[key]}: {err}"
    return None


def _engine_variant(name: str, pyramid: bool) -> tuple[str, bool, float | None, int | None]:
    """(name without its engine-setting suffixes, NAME[-adamlevelsK][-coarseS][-flat], whether its engine
    run uses the pyramid, the coarsest scale's share of the steps or None for the engine's, the finest
    basis levels left to Adam or None)."""
    flat = name.endswith(FLAT)
    name = name.removesuffix(FLAT)
    share = None
    found = re.fullmatch(rf"(.+){COARSE}([0-9]*\.?[0-9]+)", name)
    if found:
        name, share = found.group(1), float(found.group(2))
    found = re.fullmatch(rf"(.+){ADAM_LEVELS}([0-9]+)", name)
    adam_levels = int(found.group(2)) if found else None
    return (found.group(1) if found else name), pyramid and not flat, share, adam_levels


def _raw(name: str) -> tuple[str, bool]:
    """("lstm-x", True) for "lstm-x-raw": the weights run as meta-trained, not as calibrated."""
    return (name.removesuffix(RAW), True) if name.endswith(RAW) else (name, False)


def _settings(weights: Path, raw: bool) -> dict:
    """The card's calibrated inference settings, or the meta-training ones for a "-raw" name."""
    setup = learned_setup(weights, raw=raw)
    return {"lr": setup.lr, "coarsest": setup.coarsest}


def _basis(name: str, args) -> tuple[str, str]:
    """(weights name, basis): "lstm-NAME-ms" runs NAME's weights in the multi-scale basis, any other
    learned name in the basis its card records."""
    if name.endswith(MULTISCALE) and name.removesuffix(MULTISCALE) in args.weights:
        return name.removesuffix(MULTISCALE), "multiscale"
    return name, trained_basis(args.weights[name])


def _input_scale(weights: Path, size: int) -> float:
    """As the engine's lstm_input_scale, for square crops of ``size``."""
    trained = trained_pixels(weights)
    return size * size / trained if trained else 1.0


def engine_setting(args) -> dict:
    """Setting (c): whole test photos through the stylize engine (optionally coarse-to-fine)."""
    size = int(args.setting)
    style_name = HELD_OUT_STYLES[0]
    task = NeuralArtTask(size=64)  # only for the split
    photos = random.Random(args.seed).sample(task.split[args.split], args.photos)
    if args.existing is not None and (args.existing["photos"], args.existing["style"]) != (photos, style_name):
        raise SystemExit("--add: the setting's JSON was run on other photos or another style "
                         f"({args.existing['photos']}, {args.existing['style']}); use its --photos and --seed")
    style = _load_rgb(str(task.root / "styles" / style_name), 1024).unsqueeze(0)
    pyramid = {"on": True, "off": False}[args.pyramid]
    cache = _lr_cache()
    lrs: dict[str, float | None] = {}
    for name in args.optimizers:
        base, run_pyramid, _, _ = _engine_variant(name, pyramid)
        if _baseline(base):
            key = f"engine-{args.tune_size or size}px{'' if run_pyramid else '-pyramid-off'}/steps={args.steps}/{base}"
            if key not in cache or args.retune:
                val_photo = sorted(task.split["val"])[: args.tune_photos]

                def score(lr, base=base, run_pyramid=run_pyramid, val_photo=val_photo):
                    finals = [_engine_run(task, p, style, args.tune_size or size, run_pyramid, base, lr,
                                          args.steps)["final"]
                              for p in val_photo]
                    mean = sum(finals) / len(finals)
                    print(f"tune {base} lr={lr:g}: {mean:.4g}", flush=True)
                    return mean if math.isfinite(mean) else math.inf

                reference = GRID_REFERENCE_LR[_baseline(base)[0]]
                found = grid_search(score, [reference * f for f in args.engine_grid_factors], args.widen)
                cache[key] = {"lr": found.lr, "scores": found.scores, "photos": val_photo, "pyramid": run_pyramid,
                              "at_edge": found.at_edge}
                _save_lr_entry(key, cache[key])
                if found.at_edge:
                    _warn_at_edge(base, found.lr)
            else:
                _say_cached(base, key, cache[key])
            lrs[name] = cache[key]["lr"]
        elif base == "lbfgs":
            lrs[name] = 1.0
        else:
            lrs[name] = None
    curves: dict[str, list[list[float]]] = {n: [] for n in args.optimizers}
    timing: dict[str, list[dict]] = {n: [] for n in args.optimizers}
    inference: dict[str, dict] = {}
    load_start = _load_average()
    if load_start is not None and load_start > torch.get_num_threads() + 0.5:
        print(f"warning: load average {load_start:.1f} with {os.cpu_count()} CPUs: other work is running, so "
              "this run's timings (and the LSTM's memory-bound update most) will be slower than alone",
              file=sys.stderr, flush=True)
    for photo in photos:
        for name in args.optimizers:
            weights, basis, raw = None, None, False
            base, run_pyramid, share, adam_levels = _engine_variant(name, pyramid)
            engine_name = base
            if base.startswith("lstm"):
                base, raw = _raw(base)
                base, basis = _basis(base, args)
                weights = args.weights[base]
            run = _engine_run(task, photo, style, size, run_pyramid, engine_name, lrs[name], args.steps,
                              weights=weights, basis=basis, raw=raw, coarse_share=share, adam_levels=adam_levels or 0)
            if weights is not None:
                inference[name] = _settings(weights, raw)
            curves[name].append(run["curve"])
            timing[name].append({k: run[k] for k in ("seconds", "loss_seconds", "times")})
            print(f"{photo} {name}: final {run['final']:.4g} in {run['seconds']:.1f}s", flush=True)
    report = _summarize_curves(curves, lrs)
    report.update(_reach_steps(report), setting=f"{size}px-pyramid-{args.pyramid}", style=style_name, size=size,
                  split=args.split, steps=args.steps,
                  photos=photos, weights={k: str(v) for k, v in args.weights.items()}, inference=inference)
    report["timing"] = _timing_summary(report, curves, timing)
    report["speed"] = _speed_summary(report["timing"])
    # Timings are comparable only between runs made alone: a second run beside this one slows the
    # LSTM's update (memory-bound) more than the loss network.
    report["timing_conditions"] = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                                   "load_average_1min_start": load_start, "load_average_1min_end": _load_average()}
    return report


def _speed_summary(timing: dict) -> dict:
    """Per optimizer: mean wall time to the Adam run's final loss over the photos, Adam's mean time to
    its own final loss, their ratio (``adam_over_this``: above 1 is faster than Adam) and the share of
    the time not spent in the loss network (the optimizer's update, for a learned optimizer)."""
    if "adam" not in timing:
        return {}
    adam = [row["seconds_to_adam_final"] for row in timing["adam"]]
    adam_mean = sum(adam) / len(adam)
    out = {}
    for name, rows in timing.items():
        if name == "adam":
            continue
        reached = [row["seconds_to_adam_final"] for row in rows if row["seconds_to_adam_final"] is not None]
        shares = [row["loss_net_share"] for row in rows if row["loss_net_share"] is not None]
        mean = sum(reached) / len(reached) if len(reached) == len(rows) else None
        out[name] = {"photos_reaching_adam_final": len(reached), "photos": len(rows),
                     "mean_seconds_to_adam_final": mean, "adam_mean_seconds": adam_mean,
                     "adam_over_this": adam_mean / mean if mean else None,
                     "update_share": 1 - sum(shares) / len(shares) if shares else None}
    return out


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # not available on every platform
        return None


def _engine_run(task, photo, style, size, pyramid, name, lr, steps, weights=None, basis=None, raw=False,
                backoff: bool = True, fine_scale_step: float | None = None, carry_state: bool | None = None,
                handoff_lr: float | None = HANDOFF_LR, handoff_warmup: int = HANDOFF_WARMUP,
                handoff_finer_lr: float | None = HANDOFF_FINER_LR,
                handoff_finer_within: float = HANDOFF_FINER_WITHIN, coarse_share: float | None = None,
                adam_levels: int = 0, handoff_finer_steps: int = HANDOFF_FINER_STEPS) -> dict:
    content = _load_rgb(str(task.root / "imagenet-sample" / photo), 1024).unsqueeze(0)
    optimizer, pixel_basis = ("lstm", "pixels") if name.startswith("lstm") else (_baseline(name) or (name, "pixels"))
    cfg = StylizeConfig(size=size, steps=steps, optimizer=optimizer, lr=lr, pyramid=pyramid, device="cpu", seed=0,
                        basis=pixel_basis, backoff=backoff)
    if fine_scale_step is not None:
        cfg.fine_scale_step = fine_scale_step
    if carry_state is not None:
        cfg.carry_state = carry_state
    cfg.handoff_lr, cfg.handoff_warmup, cfg.handoff_finer_lr = handoff_lr, handoff_warmup, handoff_finer_lr
    cfg.handoff_finer_within, cfg.coarse_share, cfg.adam_levels = handoff_finer_within, coarse_share, adam_levels
    cfg.handoff_finer_steps = handoff_finer_steps
    curve, times, = [], []
    backoff_scales = []  # backoff's step multipliers in order (any scale); "handoff" where Adam took over
    handed_off_scales, n_scales = [], [1]  # the scales whose notices say "(handoff)"
    scale_starts = {}  # scale index: steps done before its first step
    handoff_steps = []  # the handoffs' steps, counted from their scale's start

    def cb(info):
        n_scales[0] = info.n_scales
        scale_starts.setdefault(info.scale_index, info.step - 1)
        if info.notice and "(handoff)" in info.notice:
            backoff_scales.append("handoff")
            handed_off_scales.append(info.scale_index)
            handoff_steps.append(info.step - scale_starts[info.scale_index])
        if info.step_scale is not None:
            backoff_scales.append(info.step_scale)
        if info.scale_index == info.n_scales - 1:
            curve.append(info.losses["total"])
            times.append((info.elapsed, info.loss_seconds))

    setup = None if weights is None else learned_setup(weights, raw=raw, basis=basis)
    t0 = time.perf_counter()
    stylize(content, [style], cfg, callback=cb, lstm_setup=setup)
    seconds = time.perf_counter() - t0
    return {"curve": curve, "final": curve[-1], "seconds": seconds, "loss_seconds": times[-1][1] if times else 0.0,
            "times": times, "first_final_scale_step": scale_starts.get(n_scales[0] - 1, 0),
            "backoff_scales": backoff_scales,
            "handed_off_scales": handed_off_scales, "handoff_steps": handoff_steps, "n_scales": n_scales[0],
            "scale_starts": [scale_starts[i] for i in sorted(scale_starts)]}


def _summarize_curves(curves: dict[str, list[list[float]]], lrs) -> dict:
    out = {"optimizers": {}}
    finals = {}
    for name, rows in curves.items():
        # An L-BFGS curve has a point per iteration, and its iterations take a varying share of the
        # budget, so its photos' curves differ in length: each is held at its last loss to the longest,
        # and a photo's final loss is its own last one (cut to the shortest, as before, a longer run's
        # "final" was an earlier, higher loss).
        n = max(len(r) for r in rows)
        t = torch.tensor([list(r) + [r[-1]] * (n - len(r)) for r in rows], dtype=torch.float64)
        mean = t.mean(0)
        # 95%: Student's t, not 1.96, for a mean over a few photos (1.96 made it 1.6× too narrow for 4)
        k = t.shape[0]
        half = t_quantile(0.975, k - 1) * t.std(0, correction=1) / math.sqrt(k) if k > 1 else torch.zeros_like(mean)
        finals[name] = float(mean[-1])
        out["optimizers"][name] = {"learned": name.startswith("lstm"), "lr": lrs.get(name),
                                   "mean_final_loss": float(mean[-1]),
                                   "final_loss_ci95": [float(mean[-1] - half[-1]), float(mean[-1] + half[-1])],
                                   # per photo, in the order of "photos": to count where one optimizer wins
                                   "final_losses": t[:, -1].tolist(),
                                   "mean_curve": mean.tolist(), "band_lo": (mean - half).tolist(),
                                   "band_hi": (mean + half).tolist()}
    _rank(out)
    return out


def _finite(value) -> float | None:
    """``value`` as a float where it is a finite number (a diverged run's mean is inf, NaN, or the string
    "inf" in compare's JSON), else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _rank(report: dict) -> None:
    """The best baseline by mean final loss and each learned optimizer's ratio to it (in place).  Only a
    finite baseline can be the best (min() took a NaN listed first), and a diverged run has no ratio."""
    finals = {k: _finite(v["mean_final_loss"]) for k, v in report["optimizers"].items()}
    base = {k: v for k, v in finals.items() if not k.startswith("lstm") and v is not None}
    best = min(base, key=base.get) if base else None
    report["best_baseline"] = best
    report["best_baseline_final_loss"] = base.get(best)

    def ratio(name):
        return finals[name] / base[best] if best and finals.get(name) is not None and base[best] > 0 else None

    report["lstm_over_best_baseline"] = ratio("lstm") if "lstm" in finals else None
    report["learned_over_best_baseline"] = {k: ratio(k) for k in finals if k.startswith("lstm") and best}


def _add_to(existing: dict, report: dict, path: Path, replace: bool = False) -> dict:
    """``existing`` (the setting's JSON at ``path``) with the optimizers of ``report``, a run of the same
    photos, added: the best baseline and the ratios are ranked again over all of them.  The optimizers
    already there keep their curves, timings and speed; the added run's timing is kept apart.

    ``replace``: every optimizer of ``report`` is there already (main checks both cases before any run,
    ``_merge_problem``), and its new run takes the place of the old one, whose mean final loss, timing
    and speed are kept under "replaced" (e.g. the learned optimizer rerun after an engine change that
    leaves the baselines' runs as they were)."""
    order = list(existing["optimizers"])  # a rerun keeps its place in the table; added ones come after
    if replace:
        existing = _without(existing, sorted(report["optimizers"]))
    # One loss per step at the last scale: the first-order baselines' curves have the same length in
    # the same setting (L-BFGS records fewer points, NAME-flat runs more).
    lengths = {len(e["mean_curve"]) for opts in (existing["optimizers"], report["optimizers"])
               for name, e in opts.items() if name in BASELINES}
    if len(lengths) > 1:
        raise SystemExit(f"{path} was run with other steps than this run (curve lengths {sorted(lengths)})")
    runs = {**existing["optimizers"], **report["optimizers"]}
    merged = {**existing, "optimizers": {k: runs[k] for k in [*order, *(k for k in runs if k not in order)]}}
    _rank(merged)
    merged.update(_reach_steps(merged))
    merged.setdefault("added", []).append({"optimizers": sorted(report["optimizers"]), "timing": report.get("timing"),
                                           "timing_conditions": report.get("timing_conditions"),
                                           **({"replacing": True} if replace else {})})
    for key in ("weights", "inference"):  # the learned optimizers' weights and settings as they ran now
        if report.get(key):
            merged[key] = {**merged.get(key, {}), **report[key]}
    return merged


def _merge_problem(existing: dict, names: list[str], replace: bool) -> str | None:
    """What is wrong with running ``names`` into a setting's JSON ``existing`` (--add: none there yet;
    --replace: all there), or None."""
    there = sorted(set(names) & set(existing["optimizers"]))
    missing = sorted(set(names) - set(existing["optimizers"]))
    if replace and missing:
        return f"has no {', '.join(missing)} to replace; use --add for them"
    if not replace and there:
        return f"already has {', '.join(there)}: leave them out of --optimizers, rerun the setting, or give --replace"
    return None


def first_lstm_final(report: dict) -> float:
    """An engine setting's LSTM mean final loss as first committed: that of the first run --replace took
    out (session 59 reran the tables' LSTM under the engine's defaults of then), or the table's own.
    The ablations that rerun the LSTM without a newer default compare against it."""
    for old in report.get("replaced", []):
        if "lstm" in old["mean_final_loss"]:
            return old["mean_final_loss"]["lstm"]
    return report["optimizers"]["lstm"]["mean_final_loss"]


def _without(report: dict, names: list[str]) -> dict:
    """``report`` without the runs of ``names``, recorded under "replaced" (their mean final losses,
    timings and speed figures); the speed figures left are those of the timed runs still there."""
    if not names:
        return report
    out = {**report, "optimizers": {k: v for k, v in report["optimizers"].items() if k not in names}}
    timing = report.get("timing") or {}
    out["timing"] = {k: v for k, v in timing.items() if k not in names}
    old_speed = report.get("speed") or {}
    # Adam's time is every other optimizer's yardstick: without its run the others' speed means nothing
    out["speed"] = {} if "adam" in names else {k: v for k, v in old_speed.items() if k not in names}
    out["replaced"] = [*report.get("replaced", []), {
        "optimizers": sorted(names),
        "mean_final_loss": {k: report["optimizers"][k]["mean_final_loss"] for k in sorted(names)},
        "lstm_over_best_baseline": report.get("lstm_over_best_baseline"),
        "steps_to_reach_best_baseline_final": report.get("steps_to_reach_best_baseline_final"),
        "timing": {k: v for k, v in timing.items() if k in names},
        "speed": {k: v for k, v in old_speed.items() if k in names or "adam" in names}}]
    return out


def _reach_steps(report: dict) -> dict:
    """Steps each learned optimizer needs to reach the best baseline's final mean loss."""
    best = report.get("best_baseline")
    if not best:
        return {}
    target = _finite(report["optimizers"][best]["mean_final_loss"])  # None: diverged, nothing reaches it
    reach = {}
    for name, entry in report["optimizers"].items():
        if entry.get("learned"):
            values = [_finite(v) for v in entry["mean_curve"]]
            hit = [i for i, v in enumerate(values) if target is not None and v is not None and v <= target]
            reach[name] = hit[0] if hit else None
    return {"steps_to_reach_best_baseline_final": reach}


def _timing_summary(report, curves, timing) -> dict:
    """Wall time to reach the Adam run's final loss, per photo (same run, same machine)."""
    out = {}
    if "adam" not in curves:
        return out
    for name in curves:
        per_photo = []
        for i, row in enumerate(curves[name]):
            target = curves["adam"][i][-1]
            times = timing[name][i]["times"]
            hit = next((k for k, v in enumerate(row) if v <= target), None)
            elapsed = times[hit][0] if hit is not None else None
            total, loss_s = timing[name][i]["seconds"], timing[name][i]["loss_seconds"]
            # the loss network's share of the time to get there: the wall time a free update would take
            per_photo.append({"seconds_to_adam_final": elapsed, "total_seconds": total,
                              "loss_net_seconds_to_adam_final": times[hit][1] if hit is not None else None,
                              "loss_net_share": loss_s / total if total else None})
        out[name] = per_photo
    return out


def plot(report: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    # The axis spans the mean curves: over a few photos a band's low side can reach below 0, which a
    # log axis cannot show, so it runs off the bottom there
    seen = [float(v) for e in report["optimizers"].values() for v in e["mean_curve"]]
    seen = [v for v in seen if math.isfinite(v) and v > 0]
    bottom, top = (min(seen) / 1.25, max(seen) * 1.25) if seen else (None, None)
    for name, e in report["optimizers"].items():
        y = [float(v) for v in e["mean_curve"]]
        ax.plot(range(len(y)), y, label=f"{name}" + (f" (lr {e['lr']:.3g})" if e.get("lr") else ""),
                lw=2 if e.get("learned") else 1.2)
        lo = [max(float(v), bottom) if bottom else float(v) for v in e["band_lo"]]
        ax.fill_between(range(len(y)), lo, [float(v) for v in e["band_hi"]], alpha=0.15)
    ax.set_yscale("log")
    if seen:
        ax.set_ylim(bottom, top)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summary(out: Path = OUT) -> list[dict]:
    rows = []
    for path in sorted(out.glob("*.json")):
        if path.name in ("lrs.json", "summary.json") or path.name.startswith("ablation-"):
            continue
        r = _read_result(path)
        rows.append({"setting": r["setting"], "style": r["style"], "best_baseline": r["best_baseline"],
                     "best_baseline_final": r["best_baseline_final_loss"],
                     "lstm_final": r["optimizers"].get("lstm", {}).get("mean_final_loss"),
                     "lstm_over_best_baseline": r.get("lstm_over_best_baseline"),
                     "learned_over_best_baseline": r.get("learned_over_best_baseline"),
                     "steps_to_reach": r.get("steps_to_reach_best_baseline_final"),
                     "timing": r.get("timing")})
    (out / "summary.json").write_text(json.dumps(finite_or_none(rows), indent=2, allow_nan=False) + "\n")
    for row in rows:
        print(json.dumps({k: v for k, v in row.items() if k != "timing"}))
    return rows


def record_in_card(rows: list[dict], card_path: Path, source: Path = OUT, command: str | None = None) -> None:
    """Put the evaluation table into a shipped optimizer's JSON card, and whether it wins anywhere."""
    card = json.loads(card_path.read_text(encoding="utf-8"))
    table = {r["setting"]: {"style": r["style"], "best_baseline": r["best_baseline"],
                            "best_baseline_final": r["best_baseline_final"], "lstm_final": r["lstm_final"],
                            "lstm_over_best_baseline": r["lstm_over_best_baseline"],
                            "steps_to_reach_best_baseline_final": (r["steps_to_reach"] or {}).get("lstm")}
             for r in rows}
    folder = source.resolve().relative_to(ROOT) if source.resolve().is_relative_to(ROOT) else source
    card["evaluation"] = {"table": table, "source": f"{folder.as_posix()}/*.json",
                          "command": command or f"python train/eval_neural_art.py summary --card {card_path}"}
    wins = [k for k, v in table.items() if v["lstm_over_best_baseline"] is not None and v["lstm_over_best_baseline"] < 1]
    card["beats_best_baseline_at"] = wins
    _write_json(card_path, card)
    print(f"recorded the table in {card_path}; lstm beats the best baseline at: {wins or 'no setting'}")


def grid_canvas(rows: list[list]):
    """The rows of PIL images on one white canvas, in aligned columns: each column as wide as its widest
    tile and each row as high as its highest, every tile centred in its cell (a portrait photo's row
    has narrower tiles; packed from the left they ended up under the other rows' wrong columns)."""
    from PIL import Image

    widths = [max(row[c].size[0] for row in rows if c < len(row)) for c in range(max(len(row) for row in rows))]
    heights = [max(t.size[1] for t in row) for row in rows]
    canvas = Image.new("RGB", (sum(widths), sum(heights)), "white")
    y = 0
    for row, h in zip(rows, heights):
        x = 0
        for tile, w in zip(row, widths):
            canvas.paste(tile, (x + (w - tile.size[0]) // 2, y + (h - tile.size[1]) // 2))
            x += w
        y += h
    return canvas


def grid(args) -> None:
    """Figure 9: test photos stylized by the learned optimizer and by Adam, same settings."""
    from PIL import Image

    from artopt.style.images import tensor_to_pil

    task = NeuralArtTask(size=64)
    photos = random.Random(args.seed).sample(task.split[args.split], args.photos)
    styles = [TRAIN_STYLE, HELD_OUT_STYLES[0]]
    tiles = []
    for photo in photos:
        content = _load_rgb(str(task.root / "imagenet-sample" / photo), 1024).unsqueeze(0)
        row = []
        for s in styles:
            st = _load_rgb(str(task.root / "styles" / s), 1024).unsqueeze(0)
            for opt in ("lstm", "adam"):
                cfg = StylizeConfig(size=args.size, steps=args.steps, optimizer=opt, device="cpu",
                                    lstm_weights=str(args.weights["lstm"]) if opt == "lstm" else None,
                                    pyramid=None if args.pyramid is None else args.pyramid == "on")
                row.append(tensor_to_pil(stylize(content, [st], cfg)))
        # The content photo at the stylized images' size, first in the row.
        row.insert(0, tensor_to_pil(content).resize(row[0].size, Image.Resampling.LANCZOS))
        tiles.append(row)
    out = args.out or OUT
    out.mkdir(parents=True, exist_ok=True)
    grid_canvas(tiles).save(out / "grid.png")
    print(f"columns: content, then for {styles}: lstm, adam ({args.steps} steps, {args.size} px)")


def main(argv=None) -> int:
    ap = script_parser(__doc__)
    ap.add_argument("setting", choices=("64", "128", "256", "384", "512", "summary", "grid"))
    ap.add_argument("--optimizers", default=None,
                    help=f"default: {DEFAULT_OPTIMIZERS} (grid: lstm and adam, always); lstm[-NAME] are learned "
                         "(add -ms to run NAME's weights in the multi-scale basis, then "
                         "-bf16 / -fp16 / -int8 for bfloat16 / float16 / int8-h LSTM state, then -raw to ignore the card's "
                         "calibrated update multiplier and coarsest basis level), the rest baselines (BASELINE-ms "
                         "runs it on the multi-scale basis's coefficients, as the LSTM runs, with its own tuned rate); "
                         "engine settings: NAME-flat runs NAME without the pyramid in a --pyramid on run (timed against "
                         "its Adam), NAME-coarseS with the pyramid's coarsest scale given the share S of the steps "
                         "(a baseline at its rate tuned for the engine's split), lstm[-NAME]-adamlevelsK[-coarseS] with "
                         "Adam on the K finest basis levels of the finer pyramid scales (the engine's --adam-levels)")
    ap.add_argument("--weights", action="append", default=[], metavar="[NAME=]PATH",
                    help="learned optimizer weights (default lstm=weights/neural_art.safetensors)")
    ap.add_argument("--photos", type=int, default=8, help="photos to evaluate on (of --split)")
    ap.add_argument("--split", choices=("test", "val"), default="test",
                    help="photos to evaluate on: val chooses between weights without looking at test photos "
                         "(needs --out, so the test results stay as they are)")
    ap.add_argument("--tune-photos", type=int, default=2, help="validation photos for lr tuning")
    ap.add_argument("--tune-size", type=int, default=None, help="engine settings: tune lrs at this size")
    ap.add_argument("--grid-factors", type=float, nargs="+", default=[1 / 9, 1 / 3, 1, 3, 9])
    ap.add_argument("--engine-grid-factors", type=float, nargs="+", default=[0.5, 1, 2])
    ap.add_argument("--widen", type=int, default=3,
                    help="while a tuned rate is the smallest or largest on its grid, try up to this many more "
                         "beyond it, one grid step each (0: the grid as given)")
    ap.add_argument("--retune", action="store_true",
                    help="tune the baselines' learning rates again; otherwise a rate cached in "
                         "train/results/neural_art/lrs.json for the same setting and steps is reused, whatever "
                         "--tune-photos / --grid-factors say (each run prints what it reused)")
    ap.add_argument("--add", action="store_true",
                    help="engine settings: run only --optimizers and add them to the setting's JSON already in the "
                         "results folder (same photos; those already there keep their curves and timings), e.g. "
                         "slow untimed baselines beside a timed run")
    ap.add_argument("--replace", action="store_true",
                    help="engine settings: as --add, but --optimizers are already in the setting's JSON and their "
                         "new runs take the place of the old (kept under \"replaced\" with their timing), e.g. the "
                         "learned optimizer after an engine change that leaves the baselines' runs as they were")
    ap.add_argument("--steps", type=int, default=None, help="default: 128 for crops, 200 for the engine")
    ap.add_argument("--size", type=int, default=256, help="grid: output size")
    ap.add_argument("--pyramid", choices=("on", "off"), default=None,
                    help="engine settings: default off; grid: default the engine's own (on from 384 px)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--card", type=Path, default=None, help="summary: also record the table in this weights card")
    ap.add_argument("--out", type=Path, default=None,
                    help="results folder instead of train/results/neural_art: a setting's JSON and PNG, the grid, "
                         "and the JSONs summary reads and its summary.json (the lr cache stays shared)")
    ap.add_argument("--tuned-lrs", type=Path, default=None,
                    help="the cache of tuned learning rates (default: train/results/neural_art/lrs.json), e.g. to "
                         "try settings without adding to the shipped one")
    args = ap.parse_args(argv)
    global TUNED_LRS
    TUNED_LRS = args.tuned_lrs and check_output_file(ap, "--tuned-lrs", args.tuned_lrs)
    if args.split == "val" and args.out is None:
        ap.error("--split val needs --out (train/results/neural_art holds the test results)")
    if args.widen < 0:
        ap.error(f"--widen must be at least 0, got {args.widen}")
    for flag, value in (("--threads", args.threads), ("--photos", args.photos), ("--tune-photos", args.tune_photos),
                        ("--steps", args.steps), ("--tune-size", args.tune_size)):
        if value is not None and value < 1:  # --steps 0 used to run the default 128; the others failed late
            ap.error(f"{flag} must be at least 1, got {value}")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        ap.error(f"--out {args.out} is a file; give a folder (made if missing)")
    if args.photos > 100 or args.tune_photos > 100:  # split_photos: 100 validation and 100 test photos
        ap.error("--photos and --tune-photos can be at most 100 (the photos of a split)")
    for flag, factors in (("--grid-factors", args.grid_factors), ("--engine-grid-factors", args.engine_grid_factors)):
        for factor in factors:
            if not 0 < factor < math.inf:  # (a cached rate skips the grid: it would have failed only when tuning)
                ap.error(f"{flag} must be positive and finite, got {factor:g}")
    torch.set_num_threads(args.threads)
    try:
        _lr_cache()  # damaged: said now, before any run
        rows = summary(args.out or OUT) if args.setting == "summary" else None
    except ValueError as err:
        ap.error(str(err))
    if args.setting == "summary":
        if args.card:
            record_in_card(rows, args.card, args.out or OUT,
                           " ".join(["python train/eval_neural_art.py", *(sys.argv[1:] if argv is None else argv)]))
        return 0
    if args.setting == "grid" and args.optimizers is not None:
        ap.error("grid runs lstm (the --weights lstm=PATH given, or the shipped ones) and adam; "
                 "--optimizers is for the loss-curve settings")
    args.optimizers = [o.strip() for o in (args.optimizers or DEFAULT_OPTIMIZERS).split(",") if o.strip()]
    weights, given = {"lstm": ROOT / "weights" / "neural_art.safetensors"}, set()
    for w in args.weights:
        name, _, path = w.rpartition("=")
        weights[name or "lstm"] = Path(path)
        given.add(name or "lstm")
    args.weights = weights
    if args.setting == "grid":
        problem = _check_weights(["lstm"], weights, given, crops=False)
        if problem:
            ap.error(problem)
        args.steps = args.steps or 200
        grid(args)
        return 0
    args.pyramid = args.pyramid or "off"
    crops = args.setting in ("64", "128")
    problem = _check_optimizers(args.optimizers, crops) or _check_weights(args.optimizers, weights, given, crops)
    if problem:
        ap.error(problem)
    args.steps = args.steps or (128 if crops else 200)
    out = args.out or OUT
    stem = args.setting if crops else f"{args.setting}-pyramid-{args.pyramid}"
    args.existing = None
    if args.add and args.replace:
        ap.error("--add and --replace: give one (--replace reruns optimizers already there, --add adds new ones)")
    if args.add or args.replace:
        flag = "--add" if args.add else "--replace"
        if crops:
            ap.error(f"{flag} is for the engine settings (256, 384, 512)")
        if not (out / f"{stem}.json").is_file():
            ap.error(f"{flag}: {out / f'{stem}.json'} does not exist yet; run the setting first")
        try:
            args.existing = _read_result(out / f"{stem}.json")
        except ValueError as err:
            ap.error(f"{flag}: {err}")
        if args.existing.get("steps", args.steps) != args.steps:
            ap.error(f"{flag}: {out / f'{stem}.json'} was run with --steps {args.existing['steps']}")
        problem = _merge_problem(args.existing, args.optimizers, args.replace)
        if problem:  # said before any run (a clash was said after them)
            ap.error(f"{flag}: {out / f'{stem}.json'} {problem}")
    try:
        report = crop_setting(args) if crops else engine_setting(args)
    except TuningDivergedError as err:
        print(f"{ap.prog}: error: {err} (--grid-factors)", file=sys.stderr)
        return 2
    if args.existing is not None:
        report = _add_to(args.existing, report, out / f"{stem}.json", replace=args.replace)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / f"{stem}.json", report)
    plot(report, out / f"{stem}.png", f"neural art {stem}, style {report['style']}")
    print(json.dumps({k: report.get(k) for k in ("setting", "best_baseline", "best_baseline_final_loss",
                                                  "lstm_over_best_baseline", "steps_to_reach_best_baseline_final")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
