"""Would the learned optimizer's CPU update use two cores better with its chunks side by side?

The update runs the LSTM over chunks of 4096 coordinates, about 50 small ops per chunk.  With
torch's threading each op is split across the cores, and the fork/join per op eats part of the gain.
The prototype here runs whole chunks side by side instead, one per core, in Python threads that each
run torch on one thread (torch releases the GIL inside ops).  It computes the same update to the bit:
the same 4096-coordinate chunks, each on one core.  A larger chunk on torch's threads (fewer
fork/joins) is timed too.

Each variant runs in a fresh process, the variants alternating over several rounds (these CPUs are
noisy; compare medians within one run).  A separate process each, because once the prototype's
threads have run, torch's own threads in the same process run several times slower (a first run
that timed all variants in one process measured the library's update at 3x its usual time).  Two
measurements per process:
- ``update``: the update alone on a 341x512 image's 699k coefficients (shipped weights, the engine's
  int8 h, float16 c and bfloat16 moments);
- ``engine``: whole stylize steps at 512 px without the pyramid (loss network and update), with each
  variant patched into the library's update.

    .venv/bin/python bench/lstm_threads.py            # 2 threads by default: this machine's cores

Writes bench/results/lstm_threads.json.  The prototype lives here, not in the library.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from artopt.learned_optimizers.network import CPU_CHUNK, LSTMOptimizerNet  # noqa: E402
from artopt.learned_optimizers.shipped import NEURAL_ART, weights_path  # noqa: E402
from artopt.learned_optimizers.weights import load_learned  # noqa: E402
from artopt.style.engine import StylizeConfig, stylize  # noqa: E402
from artopt.style.images import load_image  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from artopt.script_args import at_least, check_output_file, dumps, positive_int  # noqa: E402
from cli_runs import write_report  # noqa: E402

LIBRARY_INFERENCE = LSTMOptimizerNet._inference


def single_threaded_pool(workers: int) -> ThreadPoolExecutor:
    """Threads in which torch runs on one core.  torch.set_num_threads(1) in a thread also changes
    the default of threads started later, so the caller's count is set again once all have started."""
    count = torch.get_num_threads()
    ready = threading.Barrier(workers + 1)

    def init() -> None:
        torch.set_num_threads(1)
        ready.wait()

    pool = ThreadPoolExecutor(workers, initializer=init)
    for _ in range(workers):  # no initializer ends before all have started, so each submit starts a thread
        pool.submit(int)
    ready.wait()
    torch.set_num_threads(count)
    return pool


def side_by_side(pool: ThreadPoolExecutor, workers: int):
    """A drop-in for ``LSTMOptimizerNet._inference``: contiguous runs of whole chunks, one per worker."""

    def inference(net, grad, state, chunk=None, moments=None, step=None, level=None, change=None):
        n, chunk = grad.numel(), chunk or CPU_CHUNK
        per = math.ceil(math.ceil(n / chunk) / workers) * chunk  # whole chunks per worker
        h_in, c_in = state
        update = torch.empty(n)
        h_out, c_out = torch.empty_like(h_in), torch.empty_like(c_in)

        def run(s: int) -> None:
            e = min(n, s + per)
            with torch.no_grad():  # grad mode is per thread
                u, (h, c) = LIBRARY_INFERENCE(
                    net, grad[s:e], (h_in[:, s:e], c_in[:, s:e]), chunk,
                    None if moments is None else (moments[0][s:e], moments[1][s:e]), step,
                    None if level is None else level[s:e], change)
            update[s:e], h_out[:, s:e], c_out[:, s:e] = u, h, c

        for job in [pool.submit(run, s) for s in range(0, n, per)]:
            job.result()
        return update, (h_out, c_out)

    return inference


VARIANTS = ("library", "big-chunk", "side-by-side")


def variant_inference(variant: str, threads: int, big_chunk: int):
    """The update function a variant patches into the library."""
    if variant == "library":
        return LIBRARY_INFERENCE
    if variant == "big-chunk":
        return functools.partialmethod(LIBRARY_INFERENCE, chunk=big_chunk)
    return side_by_side(single_threaded_pool(threads), threads)


def measure(variant: str, args) -> dict:
    """One process's measurements of one variant: the update alone, then whole engine steps."""
    torch.manual_seed(0)
    net = load_learned(weights_path(NEURAL_ART))["default"]
    L, H, n = net.config.num_layers, net.config.hidden_size, args.coords
    grad = torch.randn(n) * 1e-3
    state = ((torch.rand(L, n, H) * 254 - 127).round().to(torch.int8), torch.randn(L, n, H).half())
    moments = ((grad * 0.5).bfloat16(), (grad * grad).bfloat16())
    with torch.no_grad():  # as in the engine's optimizer step
        torch.set_num_threads(1)
        reference = LIBRARY_INFERENCE(net, grad, state, moments=moments)
        torch.set_num_threads(args.threads)
        LSTMOptimizerNet._inference = variant_inference(variant, args.threads, args.big_chunk)
        u, (h, c) = net(grad, state, moments)  # also the warm-up
        same = bool(torch.equal(u, reference[0]) and torch.equal(h, reference[1][0]) and torch.equal(c, reference[1][1]))
        update_s = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            net(grad, state, moments)
            update_s.append(time.perf_counter() - t0)
    return {"same_as_1_thread_to_the_bit": same, "update_seconds": statistics.median(update_s),
            **engine_step_seconds(args.engine_steps)}


def engine_step_seconds(steps: int) -> dict:
    """Seconds per stylize step and the loss network's part of them, 512 px without the pyramid, the
    shipped LSTM on chelsea.jpg with woman_with_a_hat.jpg; and the final loss."""
    content = load_image(ROOT / "assets" / "photos" / "chelsea.jpg")
    style = load_image(ROOT / "assets" / "styles" / "woman_with_a_hat.jpg")
    infos = []
    stylize(content, style, StylizeConfig(size=512, steps=steps, optimizer="lstm", pyramid=False), callback=infos.append)
    n = len(infos) - 1  # from the end of step 1 (targets and set-up come before it) to the last
    return {"step_seconds": (infos[-1].elapsed - infos[0].elapsed) / n,
            "loss_net_seconds_per_step": (infos[-1].loss_seconds - infos[0].loss_seconds) / n,
            "final_loss": (infos[-1].final_losses or infos[-1].losses)["total"]}  # of the returned image


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--coords", type=positive_int, default=699_000)
    ap.add_argument("--big-chunk", type=positive_int, default=16384)
    ap.add_argument("--rounds", type=positive_int, default=4, help="processes per variant, alternating")
    ap.add_argument("--repeats", type=positive_int, default=5, help="timed updates per process")
    # a step's time is measured from the end of the first step: one step measures nothing
    ap.add_argument("--engine-steps", type=at_least(2), default=30, help="stylize steps at 512 px per process")
    ap.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)  # a worker process: print its JSON
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "lstm_threads.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one:
        print(dumps(measure(args.one, args)))
        return 0
    check_output_file(ap, "--json", args.json)
    names = {"library": f"torch threads, chunk {CPU_CHUNK} (library)", "big-chunk": f"torch threads, chunk {args.big_chunk}",
             "side-by-side": f"chunks side by side, chunk {CPU_CHUNK}"}
    flags = ["--threads", str(args.threads), "--coords", str(args.coords), "--big-chunk", str(args.big_chunk),
             "--repeats", str(args.repeats), "--engine-steps", str(args.engine_steps)]
    load = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for v in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--one", v, *flags], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"the {v} process failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
            runs[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} {names[v]}: {runs[v][-1]}", flush=True)
    summary = {}
    for key in ("update_seconds", "step_seconds", "loss_net_seconds_per_step"):
        summary[f"median_{key}"] = {names[v]: statistics.median(x[key] for x in runs[v]) for v in VARIANTS}
    for key in ("update_seconds", "step_seconds"):
        med = summary[f"median_{key}"]
        summary[f"library_over_this_{key}"] = {k: med[names["library"]] / m for k, m in med.items()}
    report = {"threads": args.threads, "cpus": os.cpu_count(), "coords": args.coords,
              "engine": "512 px, no pyramid, chelsea.jpg, woman_with_a_hat.jpg, shipped LSTM",
              "engine_steps": args.engine_steps, "rounds": args.rounds,
              "load_average_1min_start": load, **summary,
              "same_as_1_thread_to_the_bit": {names[v]: all(x["same_as_1_thread_to_the_bit"] for x in runs[v]) for v in VARIANTS},
              "final_losses": {names[v]: [x["final_loss"] for x in runs[v]] for v in VARIANTS},
              "runs": {names[v]: runs[v] for v in VARIANTS},
              "load_average_1min_end": os.getloadavg()[0]}
    print(dumps(report, indent=2))
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
