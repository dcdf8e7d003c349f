"""Does the learned optimizer's CPU update get faster with fewer element-wise passes per layer?

On two threads the update is about two thirds of a stylize step at 512 px, and most of it is not
the matrix products but a dozen and a half element-wise ops per layer on each 4096-coordinate
chunk, each split across both cores.  This prototype computes the same LSTM step with three fewer
per layer (17 -> 14 in the engine's dtypes: int8 h, float16 c):

- the cell state is computed doubled, 2c = 2 f c + 4 i σ(2g) - 2 i, in three ops (before: four, plus
  one more to double it for tanh(c) = 2σ(2c) - 1), and halved on its way into the stored state;
- an int8 h is computed as 127 h (o (254 σ(2c) - 127)), so rounding it takes one op fewer; the 1/127
  moves into the next layer's input weights and the head, as it already lives in the recurrent ones.

It is the same function up to float32 rounding, not to the bit (the script reports how far apart the
two are).  Timed like ``bench/lstm_features.py``: the shipped weights on a 341x512 image's 699k
coefficients, the two alternating over several rounds at each thread count, then whole stylize
steps at 512 px without the pyramid on ``--engine-threads``:

    .venv/bin/python bench/lstm_ops.py

Writes bench/results/lstm_ops.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from artopt.learned_optimizers import network  # noqa: E402
from artopt.learned_optimizers.network import INT8_STEPS  # noqa: E402
from artopt.script_args import check_output_file  # noqa: E402
from cli_runs import write_report  # noqa: E402
from lstm_features import add_update_timing_flags, median_seconds, shipped_update_inputs  # noqa: E402
from lstm_threads import engine_step_seconds  # noqa: E402


def fewer_ops_inference(net, grad, state, chunk=network.CPU_CHUNK, moments=None):
    """``net._inference`` (linear head, int8 or float h, float c) with three fewer element-wise ops
    per layer and chunk."""
    H = net.config.hidden_size
    h_in, c_in = state
    n = grad.numel()
    h_out, c_out = torch.empty_like(h_in), torch.empty_like(c_in)
    int8_h = h_in.dtype == torch.int8
    fp32_h = h_out.dtype == torch.float32
    h_unit = INT8_STEPS if int8_h else 1.0  # h is computed in units of 1/h_unit
    update = torch.empty(n, dtype=torch.float32)
    packed = net._packed_weights(1.0 / INT8_STEPS if int8_h else 1.0)
    # layers after the first read 127 h from the layer below
    packed = [(w_ih if layer == 0 else w_ih / h_unit, w_hh, b) for layer, (w_ih, w_hh, b) in enumerate(packed)]
    scale = net.config.output_scale / h_unit
    head_w, head_b = net.head.weight[0].detach() * scale, net.head.bias.detach() * net.config.output_scale
    scratch = None
    block = max(chunk, network.FEATURE_BLOCK // chunk * chunk)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        if scratch is None or scratch.shape[1] != e - s:
            scratch = torch.empty(3, e - s, H)
        if s % block == 0:
            b0, b1 = s, min(n, s + block)
            features = net.features(grad[b0:b1], None if moments is None else (moments[0][b0:b1], moments[1][b0:b1]))
        x = features[s - b0 : e - b0]
        for layer, (w_ih, w_hh, b) in enumerate(packed):
            gates = torch.addmm(b, x, w_ih)
            h_prev = h_in[layer, s:e]
            gates.addmm_(h_prev if fp32_h else h_prev.float(), w_hh)
            gates.sigmoid_()
            i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
            # 2c = 2 f c + 2 i (2σ(2g) - 1) = -2 i + 2 f c + 4 i σ(2g)
            c2 = torch.mul(i, -2.0, out=scratch[0]).addcmul_(f, c_in[layer, s:e], value=2.0).addcmul_(i, g, value=4.0)
            torch.mul(c2, 0.5, out=c_out[layer, s:e])
            # h_unit h = o (2 h_unit σ(2c) - h_unit)
            h_new = torch.sigmoid(c2, out=scratch[1 + layer % 2]).mul_(2.0 * h_unit).sub_(h_unit).mul_(o)
            if int8_h:
                h_out[layer, s:e] = torch.round(h_new, out=f)  # f is free scratch now
            else:
                h_out[layer, s:e] = h_new
            x = h_new
        torch.add(head_b, x @ head_w, out=update[s:e])
    return update, (h_out, c_out)


VARIANTS = {"library": lambda net, g, st, m: net._inference(g, st, moments=m),
            "fewer ops": lambda net, g, st, m: fewer_ops_inference(net, g, st, moments=m)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_update_timing_flags(ap, ROOT / "bench" / "results" / "lstm_ops.json")
    args = ap.parse_args(argv)
    check_output_file(ap, "--json", args.json)
    net, grad, state, moments = shipped_update_inputs(args.coords)
    (u0, (h0, c0)), (u1, (h1, c1)) = (f(net, grad, state, moments) for f in VARIANTS.values())
    report = {"coords": args.coords, "chunk": network.CPU_CHUNK, "rounds": args.rounds, "cpus": os.cpu_count(),
              "load_average_1min_start": os.getloadavg()[0],
              "agreement": {"update_max_abs_difference": float((u0 - u1).abs().max()),
                            "update_max_abs": float(u0.abs().max()),
                            "int8_h_entries_different": int((h0 != h1).sum()), "int8_h_entries": h0.numel(),
                            "c_max_abs_difference": float((c0.float() - c1.float()).abs().max())},
              "median_update_seconds": {}, "library_over_fewer_ops": {}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        med = median_seconds({k: (lambda f=f: f(net, grad, state, moments)) for k, f in VARIANTS.items()}, args.rounds)
        report["median_update_seconds"][str(threads)] = med
        report["library_over_fewer_ops"][str(threads)] = med["library"] / med["fewer ops"]
    if args.engine_rounds:
        torch.set_num_threads(args.engine_threads)
        library = network.LSTMOptimizerNet._inference
        runs = {k: [] for k in VARIANTS}

        def patched(self, grad, state, chunk=None, moments=None, step=None, level=None, change=None):
            return fewer_ops_inference(self, grad, state, moments=moments)

        for _ in range(args.engine_rounds):
            for k in VARIANTS:
                network.LSTMOptimizerNet._inference = library if k == "library" else patched
                try:
                    runs[k].append(engine_step_seconds(args.engine_steps))
                finally:
                    network.LSTMOptimizerNet._inference = library
        med = {k: statistics.median(r["step_seconds"] for r in v) for k, v in runs.items()}
        report["engine"] = {"what": f"stylize, 512 px, no pyramid, chelsea.jpg, woman_with_a_hat.jpg, shipped LSTM, "
                                    f"{args.engine_steps} steps, {args.engine_threads} threads",
                            "median_step_seconds": med, "library_over_fewer_ops": med["library"] / med["fewer ops"],
                            "median_loss_net_seconds_per_step": {
                                k: statistics.median(r["loss_net_seconds_per_step"] for r in v) for k, v in runs.items()},
                            "final_losses": {k: sorted({r["final_loss"] for r in v}) for k, v in runs.items()},
                            "runs": runs}
    report["load_average_1min_end"] = os.getloadavg()[0]
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
