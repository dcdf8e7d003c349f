"""Does computing the learned optimizer's inputs once per block, not once per chunk, speed up its update?

The CPU update runs the LSTM over chunks of 4096 coordinates.  Its inputs (the preprocessed
gradient and the moment ratios, about 20 small element-wise ops) used to be computed per chunk: on
4096 numbers each op costs mostly its call, and below torch's grain size it runs on one core.  The
library now computes them for a block of 64 chunks at once (``network.FEATURE_BLOCK``) and slices
each chunk's rows from that.  This script times both on the shipped weights, in the engine's state
dtypes (int8 h, float16 c, bfloat16 moments), on a 341x512 image's 699k coefficients, alternating
the two over several rounds at each thread count, and checks that they compute the same update to
the bit.  Then whole stylize steps at 512 px without the pyramid (loss network and update) on
``--engine-threads``, the two alternating again:

    .venv/bin/python bench/lstm_features.py

Writes bench/results/lstm_features.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from artopt.learned_optimizers import network  # noqa: E402
from artopt.learned_optimizers.shipped import NEURAL_ART, weights_path  # noqa: E402
from artopt.learned_optimizers.weights import load_learned  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from artopt.script_args import at_least, check_output_file, positive_int  # noqa: E402
from cli_runs import write_report  # noqa: E402
from lstm_threads import engine_step_seconds  # noqa: E402

VARIANTS = {"inputs per chunk (before)": 1, "inputs per block (library)": network.FEATURE_BLOCK}


def shipped_update_inputs(n: int):
    """The shipped network and one step's inputs on ``n`` coefficients in the engine's dtypes: a
    gradient spread over 8 decades, as a stylize run's are, and the int8-h / float16-c state and
    bfloat16 moments after three such steps from zero (so the state is not trivial).  Seeded."""
    torch.manual_seed(0)
    net = load_learned(weights_path(NEURAL_ART))["default"]
    L, H = net.config.num_layers, net.config.hidden_size
    grads = [torch.randn(n) * torch.logspace(-8, 0, n)[torch.randperm(n)] for _ in range(4)]
    state, moments = (torch.zeros(L, n, H, dtype=torch.int8), torch.zeros(L, n, H, dtype=torch.float16)), None
    for g in grads[:3]:
        m, v = net.update_moments(g, moments)
        moments = (m.bfloat16(), v.bfloat16())
        _, state = net._inference(g, state, moments=moments)
    return net, grads[3], state, moments


def add_update_timing_flags(ap: argparse.ArgumentParser, json_default: Path) -> None:
    """The flags of a script that times variants of the update, then whole stylize steps."""
    ap.add_argument("--coords", type=positive_int, default=699_000)
    ap.add_argument("--threads", type=positive_int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=positive_int, default=9)
    ap.add_argument("--engine-threads", type=positive_int, default=2)
    # a step's time is measured from the end of the first step: one step measures nothing
    ap.add_argument("--engine-steps", type=at_least(2), default=30)
    ap.add_argument("--engine-rounds", type=at_least(0), default=4, help="0: no whole stylize steps")
    ap.add_argument("--json", type=Path, default=json_default)


def median_seconds(calls: dict, rounds: int) -> dict[str, float]:
    """The median wall time of each call (name: function of no arguments): one warm-up call each, then
    ``rounds`` rounds in which the calls alternate, so a slow minute of the machine hits them alike."""
    for call in calls.values():
        call()
    times = {k: [] for k in calls}
    for _ in range(rounds):
        for k, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _update(net, grad, state, moments, block: int):
    network.FEATURE_BLOCK = block  # 1: every chunk is its own block, as before
    return net._inference(grad, state, moments=moments)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_update_timing_flags(ap, ROOT / "bench" / "results" / "lstm_features.json")
    args = ap.parse_args(argv)
    check_output_file(ap, "--json", args.json)
    net, grad, state, moments = shipped_update_inputs(args.coords)
    n = args.coords
    outs = {k: _update(net, grad, state, moments, b) for k, b in VARIANTS.items()}
    (u0, (h0, c0)), (u1, (h1, c1)) = outs.values()
    same = bool(torch.equal(u0, u1) and torch.equal(h0, h1) and torch.equal(c0, c1))
    report = {"coords": n, "chunk": network.CPU_CHUNK, "feature_block": VARIANTS["inputs per block (library)"],
              "rounds": args.rounds, "cpus": os.cpu_count(), "load_average_1min_start": os.getloadavg()[0],
              "same_update_to_the_bit": same, "median_update_seconds": {}, "before_over_library": {}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        med = median_seconds({k: (lambda b=b: _update(net, grad, state, moments, b)) for k, b in VARIANTS.items()},
                             args.rounds)
        report["median_update_seconds"][str(threads)] = med
        report["before_over_library"][str(threads)] = med["inputs per chunk (before)"] / med["inputs per block (library)"]
    if args.engine_rounds:
        torch.set_num_threads(args.engine_threads)
        runs = {k: [] for k in VARIANTS}
        for _ in range(args.engine_rounds):
            for k, b in VARIANTS.items():
                network.FEATURE_BLOCK = b
                runs[k].append(engine_step_seconds(args.engine_steps))
        med = {k: statistics.median(r["step_seconds"] for r in v) for k, v in runs.items()}
        report["engine"] = {"what": f"stylize, 512 px, no pyramid, chelsea.jpg, woman_with_a_hat.jpg, shipped LSTM, "
                                    f"{args.engine_steps} steps, {args.engine_threads} threads",
                            "median_step_seconds": med,
                            "before_over_library": med["inputs per chunk (before)"] / med["inputs per block (library)"],
                            "median_loss_net_seconds_per_step": {
                                k: statistics.median(r["loss_net_seconds_per_step"] for r in v) for k, v in runs.items()},
                            "same_final_loss": len({r["final_loss"] for v in runs.values() for r in v}) == 1,
                            "runs": runs}
    network.FEATURE_BLOCK = VARIANTS["inputs per block (library)"]
    report["load_average_1min_end"] = os.getloadavg()[0]
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
