"""Forward + backward time of the EfficientNet-Lite0 loss network with only the blocks its layers
need (the library's) against one run through its whole last stage (what it did before), 1 thread:

    .venv/bin/python bench/loss_net_truncation.py     # writes bench/results/loss_net_truncation.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from artopt.style.loss_nets import EFFNET_STYLE_LAYERS, EfficientNetLite0LossNet  # noqa: E402

from artopt.script_args import check_output_file, dumps  # noqa: E402


def main(argv=None) -> int:
    # Flags at all so that --help (or a typo) does not run the benchmark and overwrite the committed JSON.
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "loss_net_truncation.json",
                    help="the report (default: bench/results/loss_net_truncation.json, the committed one)")
    args = ap.parse_args(argv)
    check_output_file(ap, "--json", args.json)
    torch.set_num_threads(1)
    needed = EfficientNetLite0LossNet()
    whole = EfficientNetLite0LossNet(style_layers=EFFNET_STYLE_LAYERS + ("s5",))  # runs all of stage 5

    def step(net, image):
        features = net(image)
        sum((features[n] ** 2).mean() for n in needed.layers).backward()

    report = {"threads": 1, "layers": list(needed.layers), "ms_per_forward_backward": {}}
    for height, width, reps in ((64, 64, 40), (341, 512, 6)):
        image = torch.rand(1, 3, height, width, requires_grad=True)
        best = {"whole_last_stage": float("inf"), "needed_blocks": float("inf")}
        for _ in range(3):  # interleaved, best of three
            for label, net in (("whole_last_stage", whole), ("needed_blocks", needed)):
                step(net, image)
                t0 = time.perf_counter()
                for _ in range(reps):
                    step(net, image)
                best[label] = min(best[label], (time.perf_counter() - t0) / reps * 1e3)
        best["speedup"] = best["whole_last_stage"] / best["needed_blocks"]
        report["ms_per_forward_backward"][f"{height}x{width}"] = best
        print(f"{height}x{width}: {best}", flush=True)
    args.json.write_text(dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
