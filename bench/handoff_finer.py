"""Once the learned optimizer has handed a pyramid scale over to Adam, should Adam also run the finer
scales from their start (StylizeConfig.handoff_finer_lr)?

With the pyramid, a handoff on the coarse scale is followed by a fresh learned optimizer at the next
scale, which the handoff reaches only near its end, if at all: bench/adam_rates.py's piano_keyboard_sketch
runs at 512 px were handed off on the 256 px scale and only at step 45-47 of the 50 at 512 px, and
ended 1.06-1.16x as high as Adam on the multi-scale basis (at 256 px, one scale, 0.95-1.01x).  A style
the learned optimizer stalls on at the coarse scale is likely as far from its training at the finer
ones.  The option changes nothing in a run whose coarser scales were not handed off, or with one scale.

``probe`` (no rule for it; validation photos 1-4 of bench/fine_scale_step.py's 8, 512 px with the
pyramid (256 -> 512), piano_keyboard_sketch and vallotton_camille_mauclair, 200 steps, 1 thread, the
engine's defaults otherwise): the engine as it is, and the finer scales at Adam's rate 0.0009 (the
handoff's) and 0.0036 (Adam's default on the basis), each ramping up over the handoff's 10 steps.
The probe's pick, fixed before it ran: the rate with the lower sum of the two styles' mean ratios
to the engine as it is.

The rule, committed before any of its runs: the picked rate becomes the default of handoff_finer_lr
only if all of these hold:
  (a) validation photos 5-8 (``probe --first-photo 4 --lrs RATE``, with woman_with_a_hat added), 512 px,
      pyramid on: its mean over the engine's is below 1 with piano_keyboard_sketch and with
      vallotton_camille_mauclair, and at most 1.002 with woman_with_a_hat;
  (b) ``test --lr RATE``: on the evaluation's test settings with the pyramid (256 / 384 / 512 px; the
      pyramid-off settings have one scale, where the option cannot act) its mean final loss is at most
      1.005x the engine's, run here too;
  (c) ``bench/style_sweep.py --size 512 --handoff-finer-lr RATE`` (the CLI, 2 photos x the 8 styles
      other than the training one): its mean ratio to the LSTM as it is at most 1, no run above 1.02,
      and below Adam (pixels, its default rate) in all 16 runs.
Otherwise the option stays off, and the README and card say what was measured.

Session 57: the probe picked 0.0036 (0.831 / 0.880 of the engine's loss with piano_keyboard_sketch /
vallotton_camille_mauclair; 0.0009: 0.955 / 1.054); (a) held (0.828 / 0.896, woman_with_a_hat 1.0000);
(b) failed: at 256 px one test photo with the held-out style was handed off on its 128 px scale and
ended 19% higher, 1.037x the engine's mean there (384 / 512 px: no coarse handoff, 1.0000).  So the
option stays off.  (c), run afterwards: mean 0.972, the 4 handed-off runs 0.86-0.93, 16 of 16 below Adam.
A last probe on 4 fresh validation photos (``probe --fresh-photos --where-it-acts``): with 200 steps the
moderately far styles were handed off on the coarse scale too, and ended 1.054x (klee_clouds_over_bor) and
1.111x (van_doesburg_composition_xiii) the engine's loss; piano_keyboard_sketch 0.837.

Session 58: only an early coarse handoff (StylizeConfig.handoff_finer_within).  The far styles' learned
optimizer may stall sooner on the coarse scale than the moderately far ones'.  ``when`` runs again each
committed probe run (the three probe files above, 512 px, 200 steps) whose coarse scale was handed off,
with the engine's defaults, and records how many of the coarse scale's steps the learned optimizer took
before the handoff (as a fraction of that scale's steps), beside the option's ratio to the engine there
(at 0.0036).  The rule below was committed before any of those fractions was seen.
The threshold: for each fraction t seen, G(t) = sum over the rows with fraction <= t of (1 - ratio);
t* = the t with the largest G (the smallest such t on a tie).  If G(t*) <= 0, or t* is the largest
fraction seen (nothing gated out), the option stays off.  Otherwise F = the midpoint of t* and the next
larger fraction seen, rounded to 2 decimals, and handoff_finer_lr = 0.0036 with handoff_finer_within = F
becomes the engine's default only if all of these hold:
  (a') ``probe --fresh-photos 58 --lrs 0.0036 --within F --where-it-acts`` on all 8 styles other than
       the training one (4 validation photos no earlier run of this question used; 512 px, pyramid on,
       200 steps, 1 thread): the mean over the 32 (photo, style) ratios to the engine is below 1, no
       style's mean ratio is above 1.005, and no run is above 1.05;
  (b') ``test --lr 0.0036 --within F``: each pyramid-on test setting's mean final loss at most 1.005x the
       engine's;
  (c') ``bench/style_sweep.py --size 512 --handoff-finer-lr 0.0036 --handoff-finer-within F`` (the CLI's
       150 steps): mean ratio to the LSTM as it is at most 1, no run above 1.02, below Adam in all 16.
Otherwise handoff_finer_within stays a flag (default 1) and the option stays off.

Session 58's runs: far styles handed off after 31-81 of the 134 coarse steps (the option 0.77-0.95 of the
engine's loss), nearer ones after 84-115 (1.04-1.13), so F = 0.62.  (a') held: mean 0.959, piano_keyboard_sketch
0.841, vallotton_camille_mauclair 0.830, the other 6 styles 1.0000; (b') held: 1.0000 at each setting;
(c') held: mean 0.978, 3 of 16 runs changed (0.86-0.93), none higher, below Adam in 16 of 16.  So 0.0036
and 0.62 are the engine's defaults (HANDOFF_FINER_LR, HANDOFF_FINER_WITHIN).  In this script's runs and
files, "engine" still names the engine without the option (handoff_finer_lr None), as its runs were made.

Session 65: the threshold again, under the fixed style loss (session 62).  0.62 was fitted to the old loss's
stalls; under the fixed loss the CLI's piano_keyboard_sketch runs at 512 px were handed off after 65 and 72 of
their 100 coarse steps, past it, and ended 1.19x as high as Adam on the basis at its best rate
(bench/results/adam_rates_multiscale_framed_style.json).  ``refit`` runs every (photo, style) of the three
probe files again under the current loss: the engine without the option, and the option at 0.0036 (within 1)
where the engine's run handed the coarse scale off; its rows go through pick_within as in session 58, giving
F'.  The rule, committed before any of these runs: if F' is None or 0.62, the defaults stay.  Otherwise F'
replaces 0.62 as handoff_finer_within only if all of these hold, each against the engine's current defaults
(the option at 0.0036 within 0.62):
  (a'') ``refit-check --within F'``: 4 validation photos no earlier run of this question used (seed 59),
        the 8 styles other than the training one, 512 px, pyramid on, 200 steps, 1 thread: the mean over the
        32 (photo, style) ratios of the option within F' to it within 0.62 below 1, no style's mean above
        1.005, no run above 1.05;
  (b'') ``test --lr 0.0036 --within F' --against 0.62``: each pyramid-on test setting's mean final loss
        within F' at most 1.005x within 0.62;
  (c'') ``bench/style_sweep.py --size 512 --handoff-finer-lr 0.0036 --handoff-finer-within F'`` (the CLI's
        150 steps): mean ratio to the CLI's defaults at most 1, no run above 1.02, below Adam in all 16.

Session 65, part 2: the threshold in steps, committed after the refit's engine runs had begun and before any
of its option runs was seen.  The learned optimizer stalls after about the same number of its steps whatever
the scale's length: the CLI's chelsea / piano_keyboard_sketch run was handed off at step 65 both at 256 px
(one scale of 150 steps) and on the 256 px scale of its 512 px run (100 steps).  So a fraction moves the
threshold with --steps: 0.62 is 62 steps in the CLI's 150-step runs, 83 in these 200-step runs and 165 at
--steps 400.  ``refit`` also picks N' from its rows by the same G on the learned optimizer's steps before the
handoff: t*'s steps and the next larger number seen, their midpoint rounded down (none where G(t*) <= 0 or
t* is the largest).  StylizeConfig.handoff_finer_steps = N' (the option acts only where the coarser scale
was handed off within N' of its steps), with handoff_finer_within 1, replaces handoff_finer_within 0.62 as
the default only if all of these hold, each against the engine's defaults when this rule was committed
(within 0.62, no limit in steps):
  (A) ``refit-check --steps N'`` (part (a'')'s photos and styles): the mean over the 32 ratios at most 1, no
      style's mean above 1.005, no run above 1.05;
  (B) ``test --lr 0.0036 --steps N' --against 0.62``: each pyramid-on test setting at most 1.005x;
  (C) the CLI at its default 150 steps, 512 px: ``bench/style_sweep.py --size 512 --handoff-finer-lr 0.0036
      --handoff-finer-within 1 --handoff-finer-steps N'``: mean ratio to the CLI's defaults at most 1, no run
      above 1.02, below Adam in 16 of 16; and on bench/adam_rates.py's 512 px photos and styles (chelsea and
      grace_hopper x woman_with_a_hat, piano_keyboard_sketch, checker; ``adam_rates.py --basis multiscale
      --size 512 --lstm-flags ...``) the mean ratio to the CLI's defaults at most 1, no run above 1.02.
Where both parts' thresholds pass, N' is the default: it is the one that holds its place as --steps changes.

Session 65, part 3: the option after a handoff on a 128 px scale, committed before its runs.  Both times the
option broke a test setting it was at 256 px with the pyramid on, whose coarse scale is 128 px: session 57
(a handoff after 127 of 134 steps) and now under the fixed loss (``test --lr 0.0036 --within 0.62``:
woman_with_a_hat on n03133878_Crock_Pot handed off after 75 of 134 and ended 1.18x the engine without the
option, the setting's mean 1.035x).  The automatic pyramid's coarsest scale is never under 192 px; only
--pyramid at 256-383 px makes a smaller one.  ``probe --size 256 --fresh-photos 59 --where-it-acts --lrs
0.0036 --within 0.62`` with the 8 styles (part (a'')'s 4 photos, 128 -> 256 px, 200 steps, 1 thread): if
the mean of the 32 (photo, style) ratios of the option to the engine without it is above 1, the option no
longer acts after a handoff on a scale whose long side is under 192 px; otherwise it stays as it is and
the closing note reports the 256 px test setting's loss.

    .venv/bin/python bench/handoff_finer.py refit --jobs 2            # ~45 min on 2 cores
    .venv/bin/python bench/handoff_finer.py refit-check --within F --jobs 2
    .venv/bin/python bench/handoff_finer.py test --lr 0.0036 --within F --against 0.62 --jobs 2
    .venv/bin/python bench/handoff_finer.py when --jobs 2             # ~20 min on 2 cores
    .venv/bin/python bench/handoff_finer.py probe --jobs 2            # ~15 min on 2 cores
    .venv/bin/python bench/handoff_finer.py probe --first-photo 4 --lrs RATE \\
        --styles piano_keyboard_sketch.jpg vallotton_camille_mauclair.jpg woman_with_a_hat.jpg --jobs 2 \\
        --json bench/results/handoff_finer_rule_val.json               # (a)
    .venv/bin/python bench/handoff_finer.py test --lr RATE --jobs 2   # (b)

Each run is one JSON file under --runs (reused when present).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from artopt.script_args import at_least, check_output_dir, check_output_file, script_parser  # noqa: E402
from artopt.style.engine import FINE_SCALE_STEP, HANDOFF_LR, HANDOFF_WARMUP, early_handoff  # noqa: E402
from cli_runs import report_path, write_report  # noqa: E402
from fine_scale_step import RESULTS, ROOT, STEPS, committed_settings, run_all, summarize, val_photos  # noqa: E402

PHOTOS = 4
SIZE = 512
PROBE_LRS = (0.0009, 0.0036)
STYLES = ("piano_keyboard_sketch.jpg", "vallotton_camille_mauclair.jpg", "woman_with_a_hat.jpg")
OTHER_STYLES = ("klee_clouds_over_bor.jpg", "van_doesburg_composition_xiii.jpg", "zigzag_colorful.jpg",
                "composition_vii.jpg", "shipwreck_of_the_minotaur.jpg")  # (for --styles; starry_night is the training one)
TEST_SETTINGS = ("256-pyramid-on", "384-pyramid-on", "512-pyramid-on")
VAL_MAX = {"woman_with_a_hat.jpg": 1.002}  # (a): the other styles' limit is below 1
TEST_MAX_RATIO = 1.005  # (b)
RUNS = ROOT / "runs" / "handoff_finer"
PROBE_FILES = ("handoff_finer_probe.json", "handoff_finer_rule_val.json", "handoff_finer_probe_fresh.json")
WHEN_JSON = ROOT / "bench" / "results" / "handoff_finer_when.json"
FRESH_SEEDS = (57, 58, 59)  # --fresh-photos: session 57's probe, session 58's rule, session 65's refit-check
REFIT_JSON = ROOT / "bench" / "results" / "handoff_finer_when_framed_style.json"
REFIT_SEED = 59
REFIT_RUNS = ROOT / "runs" / "handoff_refit"  # (new files: none of the old loss's runs may be reused)
REFIT_AGAINST = 0.62  # the engine's handoff_finer_within when the refit's rule was committed
WHEN_LR = 0.0036  # the rate those files ran the option at (and the probe's pick)


def extra(style: str, finer: float | None, within: float = 1.0, steps: int = 0) -> dict:
    """fine_scale_step.one_run's ``extra``: the engine's handoff, and the finer scales' rate (None: off),
    handoff_finer_within and handoff_finer_steps (each recorded where it gates, so that earlier runs' files
    stay valid)."""
    out = {"style": style, "handoff_lr": HANDOFF_LR, "handoff_warmup": HANDOFF_WARMUP, "pyramid": True,
           "handoff_finer_lr": finer}
    if finer is not None and within < 1:
        out["handoff_finer_within"] = within
    if finer is not None and steps:
        out["handoff_finer_steps"] = steps
    return out


def tag(finer: float | None, within: float = 1.0, steps: int = 0) -> str:
    return "engine" if finer is None else (f"finer{finer:g}" + ("" if within >= 1 else f"-within{within:g}")
                                           + (f"-steps{steps}" if steps else ""))


def main(argv=None) -> int:
    ap = script_parser(__doc__)
    ap.add_argument("what", choices=("probe", "test", "when", "refit", "refit-check"))
    ap.add_argument("--jobs", type=at_least(1), default=1, help="runs side by side, 1 thread each (default: %(default)s)")
    ap.add_argument("--runs", type=Path, help="folder of the per-run files (default: runs/handoff_finer; when: "
                    "runs/handoff_when; refit, refit-check and test --against: runs/handoff_refit)")
    ap.add_argument("--json", type=Path, help="the report (default: bench/results/handoff_finer_probe.json; test: "
                    "train/results/neural_art/ablation-handoff-finer-lrLR[-withinF][-againstA].json; when: "
                    "bench/results/handoff_finer_when.json; refit: bench/results/handoff_finer_when_framed_style.json; "
                    "refit-check: bench/results/handoff_finer_refit_check_withinF.json)")
    ap.add_argument("--lrs", type=float, nargs="+", default=list(PROBE_LRS), help="probe: the finer scales' rates "
                    "(default: %(default)s)")
    ap.add_argument("--lr", type=float, help="test: the finer scales' rate")
    ap.add_argument("--within", type=float, default=1.0, help="probe, test: the option's handoff_finer_within, the "
                    "fraction of a coarser scale's steps within which its handoff must come (default: %(default)s)")
    ap.add_argument("--steps", type=at_least(1), default=0, help="probe, test, refit-check: the option's "
                    "handoff_finer_steps, the learned optimizer's steps within which the handoff must come (default: "
                    "no limit)")
    ap.add_argument("--against", type=float, help="test: also run the option within this fraction and compare "
                    "(part (b'') of the session-65 rule)")
    ap.add_argument("--size", type=int, choices=(256, SIZE), default=SIZE, help="probe: the output's long side, "
                    "with the pyramid (default: %(default)s)")
    ap.add_argument("--styles", nargs="+", choices=STYLES + OTHER_STYLES, default=list(STYLES[:2]),
                    help="probe (default: %(default)s)")
    ap.add_argument("--fresh-photos", type=int, nargs="?", const=FRESH_SEEDS[0], choices=FRESH_SEEDS, metavar="SEED",
                    help="probe: 4 validation photos outside the 8 of bench/fine_scale_step.py's rule and outside "
                    "the samples of the seeds before SEED (instead of --first-photo; seeds %s; default %d)"
                    % (", ".join(map(str, FRESH_SEEDS)), FRESH_SEEDS[0]))
    ap.add_argument("--where-it-acts", action="store_true", help="probe: run the option only where the engine's run "
                    "handed a scale before the last off; elsewhere it is the same run (tests/test_engine.py)")
    ap.add_argument("--first-photo", type=int, choices=range(0, 8 - PHOTOS + 1), default=0,
                    help="probe: which of the 8 validation photos: this one and the next %d (default: %%(default)s)"
                    % (PHOTOS - 1))
    args = ap.parse_args(argv)
    for rate in args.lrs + ([args.lr] if args.lr is not None else []):
        if not 0 < rate < float("inf"):
            ap.error(f"rates must be positive, got {rate}")
    if args.what == "test" and args.lr is None:
        ap.error("test needs --lr")
    for fraction in (args.within, args.against if args.against is not None else 0):
        if not 0 <= fraction <= 1:
            ap.error(f"--within and --against are fractions between 0 and 1, got {fraction}")
    if args.against is not None and args.what != "test":
        ap.error("--against is for test")
    if args.what == "refit-check" and (args.within >= 1) == (not args.steps):
        ap.error("refit-check needs --within F or --steps N, a threshold refit picked")
    if args.runs is None:
        new_runs = args.what in ("refit", "refit-check") or args.against is not None
        args.runs = ROOT / "runs" / "handoff_when" if args.what == "when" else REFIT_RUNS if new_runs else RUNS
    if args.what == "probe":  # (the others' names say what they ran)
        args.json = report_path(ap, args, ROOT / "bench" / "results" / "handoff_finer_probe.json", exempt=("what",))
    elif args.json is None:
        gate = ("" if args.within >= 1 else f"-within{args.within:g}") + (f"-steps{args.steps}" if args.steps else "")
        against = "" if args.against is None else f"-against{args.against:g}"
        args.json = {"when": WHEN_JSON, "refit": REFIT_JSON,
                     "refit-check": ROOT / "bench" / "results" / f"handoff_finer_refit_check{gate.replace('-', '_')}.json",
                     }.get(args.what) or RESULTS / f"ablation-handoff-finer-lr{args.lr:g}{gate}{against}.json"
    check_output_dir(ap, "--runs", args.runs)
    check_output_file(ap, "--json", args.json)
    if args.what == "when":
        report = when(args.runs, args.jobs)
    elif args.what == "refit":
        report = refit(args.runs, args.jobs)
    elif args.what == "refit-check":
        report = refit_check(args.within, args.runs, args.jobs, args.steps)
    elif args.what == "test":
        report = test(args.lr, args.runs, args.jobs, args.within, args.against, args.steps)
    else:
        report = probe(args.lrs, args.styles, args.first_photo, args.runs, args.jobs, args.fresh_photos,
                       args.where_it_acts, args.within, args.steps, args.size)
    write_report(report, args.json)
    return 0


def fresh_photos(seed: int) -> list[str]:
    """PHOTOS validation photos drawn with ``seed`` from those no earlier question used: outside the 8 of
    fine_scale_step's rule and outside the samples of the FRESH_SEEDS before ``seed``."""
    from artopt.tasks.neural_art import NeuralArtTask

    used = set(val_photos())
    for earlier in FRESH_SEEDS:
        photos = random.Random(earlier).sample(sorted(set(NeuralArtTask(size=64).split["val"]) - used), PHOTOS)
        if earlier == seed:
            return photos
        used |= set(photos)
    raise ValueError(f"no fresh photos for seed {seed}")


def probe(lrs: list[float], styles: list[str], first_photo: int, runs_dir: Path, jobs: int, fresh: int | None = None,
          where_it_acts: bool = False, within: float = 1.0, steps: int = 0, size: int = SIZE) -> dict:
    photos = fresh_photos(fresh) if fresh else val_photos()[first_photo:first_photo + PHOTOS]
    variants = [None, *lrs]

    def job(style, p, v):
        return ("val", p, size, FINE_SCALE_STEP, runs_dir / f"{size}-{Path(style).stem}-{tag(v, within, steps)}-{p}.json",
                False, extra(style, v, within, steps))

    if where_it_acts:
        runs = run_all([job(style, p, None) for style in styles for p in photos], jobs)
        acts = [r for r in runs if _handed_off_before_final(r, within, steps)]
        done = run_all([job(r["style"], r["photo"], v) for r in acts for v in lrs], jobs)
        runs += done + [{**r, **extra(r["style"], v, within, steps), "same_run_as_the_engine": True}
                        for r in runs if not _handed_off_before_final(r, within, steps) for v in lrs]
    else:
        runs = run_all([job(style, p, v) for v in variants for style in styles for p in photos], jobs)
    table = {}
    for style in styles:
        mine = [r for r in runs if r["style"] == style]
        means = {v: sum(r["final"] for r in mine if r["handoff_finer_lr"] == v) / PHOTOS for v in variants}
        coarse = sum(_handed_off_before_final(r, within, steps) for r in mine if r["handoff_finer_lr"] is None)
        # (with within < 1: the photos handed off early enough for the option to act)
        table[Path(style).stem] = {"engine": means[None], "photos_handed_off_before_the_final_scale": coarse,
                                   **{f"{v:g}": {"mean": means[v], "over_engine": means[v] / means[None],
                                                 "holds": means[v] / means[None] <= VAL_MAX.get(style, 1 - 1e-12)}
                                      for v in lrs}}
        early = ("" if within >= 1 else f" within {within:g} of its steps") + (f" within {steps} steps" if steps else "")
        print(f"{Path(style).stem}: engine {means[None]:.5f} (coarse scale handed off{early} on {coarse} of {PHOTOS}); "
              + ", ".join(f"{v:g}: {means[v]:.5f} ({means[v] / means[None]:.4f})" for v in lrs), flush=True)
    if within < 1 or steps:
        for v in lrs:
            rule = rule_a_prime(runs, v)
            print(f"part (a') of the session-58 rule at {v:g}: {rule}", flush=True)
            table[f"rule_a_prime_{v:g}"] = rule
    sums = {f"{v:g}": sum(table[Path(s).stem][f"{v:g}"]["over_engine"] for s in styles) for v in lrs}
    pick = min(sums, key=sums.get)
    print(f"sum of the styles' ratios: {sums}; lower: {pick}")
    return {"what": "bench/handoff_finer.py probe (see its docstring for the pick and the rule)", "photos": photos,
            "fresh_photos": fresh, "where_it_acts": where_it_acts, "within": within, "handoff_finer_steps": steps,
            "size": size, "pyramid": True, "steps": STEPS, "threads": 1, "styles": styles, "lrs": lrs,
            "handoff_lr": HANDOFF_LR, "handoff_warmup": HANDOFF_WARMUP, "table": table, "sum_of_ratios": sums,
            "lower_sum": pick, "all_styles_hold": {f"{v:g}": all(row[f"{v:g}"]["holds"] for row in table.values())
                                                   for v in lrs}, "runs": runs}


def rule_a_prime(runs: list[dict], lr: float) -> dict:
    """Part (a') of the session-58 rule (docstring): over the (photo, style) ratios of the option at ``lr`` to
    the engine, the mean below 1, no style's mean above 1.005, no run above 1.05."""
    engine = {(r["photo"], r["style"]): r["final"] for r in runs if r["handoff_finer_lr"] is None}
    return _rule_over({k: r["final"] / engine[k] for r in runs if r["handoff_finer_lr"] == lr
                       for k in [(r["photo"], r["style"])]})


def _rule_over(ratios: dict[tuple[str, str], float], strict: bool = True) -> dict:
    """Parts (a'), (a'') and (A): (photo, style) -> ratio; the mean below 1 (not ``strict``: at most 1), no
    style's mean above 1.005, no run above 1.05."""
    styles = sorted({s for _, s in ratios})
    by_style = {Path(s).stem: sum(v for (_, t), v in ratios.items() if t == s) / sum(t == s for _, t in ratios)
                for s in styles}
    mean, worst = sum(ratios.values()) / len(ratios), max(ratios.values())
    return {"mean": mean, "style_means": by_style, "worst_run": worst, "runs_changed": sum(v != 1 for v in ratios.values()),
            "holds": (mean < 1 if strict else mean <= 1) and max(by_style.values()) <= 1.005 and worst <= 1.05}


def _handed_off_before_final(run: dict, within: float = 1.0, steps: int = 0) -> bool:
    """Whether a scale before the run's last was handed off to Adam (within ``within`` of its steps and, with
    ``steps``, within that many, as the engine counts them): the runs the option can change."""
    if within >= 1 and not steps:
        return bool(run["handed_off_scales"]) and min(run["handed_off_scales"]) < run["n_scales"] - 1
    starts = run["scale_starts"]
    return any(scale < run["n_scales"] - 1 and early_handoff(step, starts[scale + 1] - starts[scale], within, steps)
               for scale, step in zip(run["handed_off_scales"], run["handoff_steps"]))


def test(lr: float, runs_dir: Path, jobs: int, within: float = 1.0, against: float | None = None,
         steps: int = 0) -> dict:
    """(b): the engine with and without the finer scales' Adam on each pyramid-on test setting.  With
    ``against``, (b'') and (B): also the option within that fraction, and the option within ``within`` (and
    ``steps``) over it."""
    settings = committed_settings(TEST_SETTINGS)
    variants = [(None, 1.0, 0), (lr, within, steps)] + ([] if against is None else [(lr, against, 0)])
    work = [("test", p, c["size"], FINE_SCALE_STEP, runs_dir / f"test-{name}-{tag(*v)}-{p}.json", False,
             extra(c["style"], *v)) for name, c in settings.items() for p in c["photos"] for v in variants]
    runs = run_all(work, jobs)

    def of(mine, v, w, n=0):
        return [r for r in mine if r["handoff_finer_lr"] == v and (v is None or (
            r.get("handoff_finer_within", 1.0), r.get("handoff_finer_steps", 0)) == (w, n))]

    table = {}
    for name, c in settings.items():
        best = c["best_baseline_final_loss"]
        mine = [r for r in runs if r["size"] == c["size"]]
        engine = summarize(of(mine, None, 1.0), best)
        finer = summarize(of(mine, lr, within, steps), best)
        ratio = finer["mean_final"] / engine["mean_final"]
        table[name] = {"photos": c["photos"], "style": c["style"], "best_baseline": c["best_baseline"],
                       "best_baseline_final_loss": best, "engine": engine, "finer": finer, "finer_over_engine": ratio,
                       "photos_handed_off_before_the_final_scale": sum(
                           _handed_off_before_final(r, within, steps) for r in mine if r["handoff_finer_lr"] is None),
                       "holds": ratio <= TEST_MAX_RATIO}
        line = (f"{name}: engine {engine['mean_final']:.5f} ({engine['over_best_baseline']:.4f} of {c['best_baseline']}), "
                f"finer {finer['mean_final']:.5f} ({finer['over_best_baseline']:.4f}); finer / engine {ratio:.4f}")
        if against is not None:
            other = summarize(of(mine, lr, against), best)
            table[name].update(against=other, finer_over_against=finer["mean_final"] / other["mean_final"],
                               holds=finer["mean_final"] / other["mean_final"] <= TEST_MAX_RATIO)
            line += f"; within {against:g}: {other['mean_final']:.5f}, finer / that {table[name]['finer_over_against']:.4f}"
        print(line, flush=True)
    holds = all(row["holds"] for row in table.values())
    part = "(b)" if against is None else "(B)" if steps else "(b'')"
    gate = f"within {within:g}" + (f" and {steps} steps" if steps else "")
    compared = "finer / engine" if against is None else f"{gate} / within {against:g}"
    print(f"part {part} of the rule (each setting's {compared} <= {TEST_MAX_RATIO}): {'holds' if holds else 'fails'}")
    return {"what": f"part {part} of bench/handoff_finer.py's rule, committed before its runs", "handoff_finer_lr": lr,
            "handoff_finer_within": within, "handoff_finer_steps": steps,
            "against_within": against,
            "handoff_lr": HANDOFF_LR, "handoff_warmup": HANDOFF_WARMUP, "steps": STEPS, "threads": 1,
            "max_ratio": TEST_MAX_RATIO, "table": table, "part_b_holds": holds, "runs": runs}


def when(runs_dir: Path, jobs: int) -> dict:
    """How early on the coarse scale the engine handed off, in the committed probe runs the option changed:
    each such engine run again (the engine's defaults; its final loss must repeat the committed one), now
    recording the learned optimizer's steps on the coarse scale before the handoff, beside the option's
    ratio to the engine on that photo and style (from the committed runs at WHEN_LR)."""
    committed = _committed_probe_runs()
    finer = {(r["photo"], r["style"]): r["final"] for r in committed
             if r["handoff_finer_lr"] == WHEN_LR and not r.get("same_run_as_the_engine")}
    engine = {(r["photo"], r["style"]): r for r in committed if r["handoff_finer_lr"] is None}
    keys = [k for k, r in engine.items() if k in finer and _handed_off_before_final(r)]
    runs = run_all([("val", p, SIZE, FINE_SCALE_STEP, runs_dir / f"{SIZE}-{Path(style).stem}-engine-{p}.json", False,
                     extra(style, None)) for p, style in keys], jobs)
    rows = [{**_when_row(run, finer[(photo, style)]),
             "repeats_committed_final": run["final"] == engine[(photo, style)]["final"]}
            for (photo, style), run in zip(keys, runs)]
    pick = pick_within(rows)
    print(f"threshold: {pick}", flush=True)
    return {"what": "bench/handoff_finer.py when: the coarse handoff's step in the probe runs the option changed",
            "files": list(PROBE_FILES), "handoff_finer_lr": WHEN_LR, "size": SIZE, "steps": STEPS, "threads": 1,
            "pick": pick, "rows": sorted(rows, key=lambda r: r["fraction"] if r["fraction"] is not None else 2),
            "runs": runs}


def _committed_probe_runs() -> list[dict]:
    """Every run of the committed probe files (PROBE_FILES), in their order."""
    return [r for name in PROBE_FILES for r in json.loads((ROOT / "bench" / "results" / name).read_text())["runs"]]


def _when_row(run: dict, finer_final: float) -> dict:
    """One engine run handed off before its last scale: the learned optimizer's steps on the coarse scale
    before the handoff, as a fraction of that scale's steps, beside the option's final loss over the run's."""
    coarse_steps = run["scale_starts"][1]
    first = run["handoff_steps"][0] if run["handed_off_scales"][:1] == [0] else None
    row = {"photo": run["photo"], "style": Path(run["style"]).stem, "coarse_scale_steps": coarse_steps,
           "lstm_steps_before_coarse_handoff": first, "fraction": None if first is None else first / coarse_steps,
           "finer_over_engine": finer_final / run["final"]}
    print(f"{row['style']:32s} {run['photo']:34s} handoff after {first} of {coarse_steps} coarse steps; "
          f"finer / engine {row['finer_over_engine']:.4f}", flush=True)
    return row


def refit(runs_dir: Path, jobs: int) -> dict:
    """Session 65 (docstring): every (photo, style) of the committed probe files, run again under the current
    loss, the engine without the option and, where its coarse scale was handed off, the option at WHEN_LR
    (within 1); the rows and the threshold as ``when`` makes them."""
    keys = list(dict.fromkeys((r["photo"], r["style"]) for r in _committed_probe_runs()))

    def job(photo, style, finer):
        return ("val", photo, SIZE, FINE_SCALE_STEP, runs_dir / f"{SIZE}-{Path(style).stem}-{tag(finer)}-{photo}.json",
                False, extra(style, finer))

    engine = run_all([job(p, style, None) for p, style in keys], jobs)
    acted = [r for r in engine if _handed_off_before_final(r)]
    finer = run_all([job(r["photo"], r["style"], WHEN_LR) for r in acted], jobs)
    rows = [_when_row(run, other["final"]) for run, other in zip(acted, finer)]
    pick, by_steps = pick_within(rows), pick_steps(rows)
    print(f"{len(acted)} of {len(keys)} runs handed the coarse scale off; threshold: {pick}; "
          f"F' {'is' if pick['within'] == REFIT_AGAINST else 'is not'} {REFIT_AGAINST:g}; in steps (part 2): {by_steps}",
          flush=True)
    return {"what": "bench/handoff_finer.py refit: the coarse handoff's step and the option's ratio to the engine, "
                    "under the current style loss, on the probe files' photos and styles (session 65)",
            "files": list(PROBE_FILES), "handoff_finer_lr": WHEN_LR, "size": SIZE, "steps": STEPS, "threads": 1,
            "handoff_lr": HANDOFF_LR, "handoff_warmup": HANDOFF_WARMUP, "pairs": len(keys),
            "pairs_handed_off_before_the_final_scale": len(acted), "pick": pick, "pick_steps": by_steps,
            "against": REFIT_AGAINST,
            "rows": sorted(rows, key=lambda r: r["fraction"] if r["fraction"] is not None else 2),
            "runs": engine + finer}


def refit_check(within: float, runs_dir: Path, jobs: int, steps: int = 0) -> dict:
    """(a'') and, with ``steps``, (A): on REFIT_SEED's fresh photos and the 8 styles, the option within
    ``within`` (and ``steps``) over the option within REFIT_AGAINST (each run only where the engine's coarse
    handoff came early enough for it)."""
    styles = list(STYLES + OTHER_STYLES)
    gates = {"against": (REFIT_AGAINST, 0), "new": (within, steps)}
    ran = {k: probe([WHEN_LR], styles, 0, runs_dir, jobs, REFIT_SEED, True, *g) for k, g in gates.items()}
    final = {k: {(r["photo"], r["style"]): r["final"] for r in report["runs"] if r["handoff_finer_lr"] == WHEN_LR}
             for k, report in ran.items()}
    part = "(A)" if steps else "(a'')"  # (A) asks for no loss overall: at these 200 steps the gates nearly agree
    rule = _rule_over({k: final["new"][k] / v for k, v in final["against"].items()}, strict=not steps)
    gate = (f"within {within:g}" if within < 1 else "") + (f" {steps} steps" if steps else "")
    print(f"part {part} of the session-65 rule, {gate.strip()} over within {REFIT_AGAINST:g}: {rule}", flush=True)
    return {"what": f"part {part} of bench/handoff_finer.py's session-65 rule, committed before its runs",
            "within": within, "handoff_finer_steps": steps, "against": REFIT_AGAINST, "handoff_finer_lr": WHEN_LR,
            "rule": rule, "probes": {k: {n: v for n, v in report.items() if n != "runs"} for k, report in ran.items()},
            "runs": ran["against"]["runs"] + [r for r in ran["new"]["runs"] if r["handoff_finer_lr"] == WHEN_LR]}


def pick_within(rows: list[dict]) -> dict:
    """The docstring's threshold: G(t) = sum of (1 - ratio) over the rows with fraction <= t, t* its argmax
    (the smallest on a tie); F = the midpoint of t* and the next larger fraction, 2 decimals, or None
    (the option stays off) where G(t*) <= 0 or t* is the largest fraction."""
    gains, best, within = _pick(rows, "fraction", lambda a, b: round((a + b) / 2, 2))
    return {"gains": {f"{t:.4f}": g for t, g in gains.items()}, "t_star": best, "within": within}


def pick_steps(rows: list[dict]) -> dict:
    """Part 2's threshold: the same G over the learned optimizer's steps before the handoff; N = the
    midpoint of t*'s steps and the next larger number seen, rounded down, or None."""
    gains, best, steps = _pick(rows, "lstm_steps_before_coarse_handoff", lambda a, b: (a + b) // 2)
    return {"gains": {str(t): g for t, g in gains.items()}, "t_star": best, "steps": steps}


def _pick(rows: list[dict], key: str, midpoint) -> tuple[dict, object, object]:
    seen = sorted({r[key] for r in rows if r[key] is not None})
    gains = {t: sum(1 - r["finer_over_engine"] for r in rows if r[key] is not None and r[key] <= t) for t in seen}
    best = max(seen, key=lambda t: (gains[t], -t)) if seen else None
    pick = None if best is None or gains[best] <= 0 or best == seen[-1] else midpoint(best, seen[seen.index(best) + 1])
    return gains, best, pick


if __name__ == "__main__":
    raise SystemExit(main())
