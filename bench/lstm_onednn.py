"""Would torch's own fused LSTM kernel (oneDNN on CPU) run the learned optimizer's update faster?

``nn.LSTM``'s CPU kernel (``torch.lstm``, oneDNN's RNN primitive for float32 and, on CPUs with
AVX512-BF16/AMX, bfloat16) fuses the gate arithmetic that the library writes out as a dozen small
ops per layer.  This script runs the same update through it: the library's inputs, the int8-h /
float16-c state converted per chunk, the oneDNN LSTM, the linear head, the state rounded back.  It
times that against the library's update on the shipped weights (699k coefficients, a 341x512
image's), alternating the two over several rounds, at several chunk sizes and both thread counts,
and reports how far each variant's update and state are from the library's:

    .venv/bin/python bench/lstm_onednn.py

Writes bench/results/lstm_onednn.json.  The variant lives here, not in the library.
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

from artopt.learned_optimizers.network import INT8_STEPS  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from artopt.script_args import check_output_file, positive_int  # noqa: E402
from cli_runs import write_report  # noqa: E402
from lstm_features import shipped_update_inputs  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@torch.no_grad()
def onednn_update(net, grad, state, moments, chunk: int, dtype: torch.dtype):
    """The library's no-grad step, its LSTM run by ``torch.lstm`` (one time step, batch = chunk)."""
    L = net.config.num_layers
    h_in, c_in = state
    n = grad.numel()
    h_out, c_out = torch.empty_like(h_in), torch.empty_like(c_in)
    update = torch.empty(n)
    params = [getattr(net.lstm, f"{name}_l{layer}").detach().to(dtype)
              for layer in range(L) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    scale = net.config.output_scale
    head_w, head_b = net.head.weight[0].detach() * scale, net.head.bias.detach() * scale
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        x = net.features(grad[s:e], (moments[0][s:e], moments[1][s:e])).to(dtype).unsqueeze(0)
        hx = (h_in[:, s:e].to(dtype) / INT8_STEPS, c_in[:, s:e].to(dtype))
        # (input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        out, h, c = torch.lstm(x, hx, params, True, L, 0.0, False, False, False)
        h_out[:, s:e] = (h.float() * INT8_STEPS).round_()
        c_out[:, s:e] = c
        torch.add(head_b, out[0].float() @ head_w, out=update[s:e])
    return update, (h_out, c_out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coords", type=positive_int, default=699_000)
    ap.add_argument("--threads", type=positive_int, nargs="+", default=[1, 2])
    ap.add_argument("--chunks", type=positive_int, nargs="+", default=[4096, 32768, 262144])
    ap.add_argument("--rounds", type=positive_int, default=5)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "lstm_onednn.json")
    args = ap.parse_args(argv)
    check_output_file(ap, "--json", args.json)
    net, grad, state, moments = shipped_update_inputs(args.coords)
    n = args.coords

    def library():
        return net._inference(grad, state, moments=moments)

    variants = {"library": library}
    for dname, dtype in DTYPES.items():
        for chunk in args.chunks:
            variants[f"onednn {dname}, chunk {chunk}"] = (
                lambda chunk=chunk, dtype=dtype: onednn_update(net, grad, state, moments, chunk, dtype))
    ref_u, (ref_h, ref_c) = library()
    report = {"coords": n, "rounds": args.rounds, "cpus": os.cpu_count(), "torch": torch.__version__,
              "mkldnn_enabled": torch.backends.mkldnn.enabled, "load_average_1min_start": os.getloadavg()[0],
              "difference_from_library": {}, "median_update_seconds": {}, "library_over_variant": {}}
    for name, fn in variants.items():
        if name == "library":
            continue
        u, (h, c) = fn()
        report["difference_from_library"][name] = {
            "max_update_relative": float((u - ref_u).abs().max() / ref_u.abs().max()),
            "int8_h_entries_changed": int((h != ref_h).sum()),
            "max_c_difference": float((c.float() - ref_c.float()).abs().max())}
    for threads in args.threads:
        torch.set_num_threads(threads)
        times = {k: [] for k in variants}
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(args.rounds):
            for k, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        report["median_update_seconds"][str(threads)] = med
        # above 1: the variant is faster than the library
        report["library_over_variant"][str(threads)] = {k: med["library"] / med[k] for k in med if k != "library"}
    report["load_average_1min_end"] = os.getloadavg()[0]
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
