"""Per-step wall time of the validation-suite optimizees (forward + backward), and of one
learned-optimizer update on all their coordinates: the numbers that budget meta-training.

    OMP_NUM_THREADS=1 python bench/task_step_time.py --json train/results/step_times.json

Median over ``--repeats`` steps after a warm-up, on the "train" split, one thread by default.  The
machine's load average is recorded too: on a shared machine it inflates every number.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from artopt.learned_optimizers import LSTMOptimizerNet, learned_update  # noqa: E402
from artopt.tasks import TASKS, get_task  # noqa: E402

from artopt.script_args import check_output_file, dumps, positive_int, script_parser  # noqa: E402


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(warmup + i)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def measure(suite: str, repeats: int) -> dict:
    problem = get_task(suite).sample(torch.Generator().manual_seed(0), "train")
    params = problem.fresh_params()

    def fwd_bwd(t):
        loss = problem.loss(params, t)
        torch.autograd.grad(loss, params)

    grads = torch.autograd.grad(problem.loss(params, 0), params)
    nets = {g: LSTMOptimizerNet() for g in set(problem.groups)}
    plain = [p.detach() for p in params]

    def lstm_update(t):
        with torch.no_grad():
            learned_update(nets, plain, list(grads), problem.groups, {})

    return {
        "coordinates": sum(p.numel() for p in params),
        "forward_backward_ms": round(median_ms(fwd_bwd, repeats), 3),
        "lstm_update_ms": round(median_ms(lstm_update, repeats), 3),
    }


def main(argv=None) -> int:
    ap = script_parser(__doc__)
    ap.add_argument("--suites", default="quadratic,mnist,mnist-40,mnist-2layer,cifar10,cifar2",
                    help=f"comma-separated, of {', '.join(TASKS)} (default: %(default)s)")
    ap.add_argument("--repeats", type=positive_int, default=20, help="timed steps per suite (default: %(default)s)")
    ap.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default: %(default)s)")
    ap.add_argument("--json", type=Path, default=None, help="write the results there too (default: print only)")
    args = ap.parse_args(argv)
    # checked now: an unknown suite or an unwritable --json failed after the suites before it had run
    unknown = [s for s in args.suites.split(",") if s not in TASKS]
    if unknown:
        ap.error(f"--suites: unknown {', '.join(map(repr, unknown))} (choose from {', '.join(TASKS)})")
    if args.json:
        check_output_file(ap, "--json", args.json)
    torch.set_num_threads(args.threads)
    out = {"threads": args.threads, "repeats": args.repeats, "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "load_average_before": os.getloadavg(), "suites": {}}
    for suite in args.suites.split(","):
        out["suites"][suite] = measure(suite, args.repeats)
        print(suite, out["suites"][suite], flush=True)
    out["load_average_after"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
