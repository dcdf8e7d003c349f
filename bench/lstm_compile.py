"""Would torch.compile make the learned optimizer's CPU update faster?

About two thirds of the library's no-grad update (network.LSTMOptimizerNet._inference) is
element-wise work after the two small matrix products of each layer: the gate sigmoids, the cell
update, the int8/float16 state conversions.  TorchInductor can fuse that work into a few generated
C++ loops.  This script writes one chunk of the update as a plain function, compiles it
(``dynamic=False``; the last, shorter chunk falls back to the library), checks it computes the
library's update and state, and times both on the shipped weights in the engine's state dtypes:

    OMP_NUM_THREADS=1 .venv/bin/python bench/lstm_compile.py --coords 699000   # a 341x512 image's coefficients

The inductor cache goes to a fresh temporary folder, so the first call's time is a cold compile.
Needs a C++ compiler.  Writes bench/results/lstm_compile.json.  The prototype lives here, not in the
library.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from artopt.learned_optimizers.network import INT8_STEPS  # noqa: E402
from artopt.learned_optimizers.shipped import NEURAL_ART, weights_path  # noqa: E402
from artopt.learned_optimizers.weights import load_learned  # noqa: E402
from artopt.script_args import check_output_file, positive_int  # noqa: E402
from lstm_layout import _best_of, engine_moments, write_report  # noqa: E402


def chunk_update(grad, h0, h1, c0, c1, w_ih0, w_hh0, b0, w_ih1, w_hh1, b1, head_w, head_b, p: float,
                 m=None, v=None):
    """One chunk of the library's update, out of place: int8 h and float16 c in, the same out.
    Weights as ``_packed_weights`` gives them (candidate rows doubled: tanh(x) = 2σ(2x) - 1).
    ``m``, ``v``: the running means of g and g² for a network with moment inputs (m/√v and g/√v)."""
    g = torch.nan_to_num(grad.float(), nan=0.0, posinf=torch.finfo(torch.float32).max,
                         neginf=-torch.finfo(torch.float32).max)
    magnitude = g.abs()
    large = magnitude >= math.exp(-p)
    x = torch.stack((torch.where(large, magnitude.clamp_min(math.exp(-p)).log() / p, -1.0),
                     torch.where(large, torch.sign(g), g * math.exp(p))), dim=-1)
    if m is not None:
        rms = v.float().sqrt().clamp_min(1e-30)
        x = torch.cat((x, torch.stack((m.float() / rms, g / rms), dim=-1)), dim=-1)
    H = h0.shape[1]
    out = []
    for h, c, w_ih, w_hh, b in ((h0, c0, w_ih0, w_hh0, b0), (h1, c1, w_ih1, w_hh1, b1)):
        gates = torch.sigmoid(torch.addmm(b, x, w_ih) + h.float() @ w_hh)
        i, f, cand, o = gates.split(H, dim=1)
        c_new = f * c.float() + i * (2 * cand - 1)
        x = o * (2 * torch.sigmoid(2 * c_new) - 1)
        out.append(((x * INT8_STEPS).round().to(torch.int8), c_new.to(torch.float16)))
    return x @ head_w + head_b, out[0][0], out[1][0], out[0][1], out[1][1]


@torch.no_grad()
def compiled_update(net, fn, grad, state, chunk, moments=None):
    h_in, c_in = state
    n = grad.numel()
    h_out, c_out = torch.empty_like(h_in), torch.empty_like(c_in)
    update = torch.empty(n)
    weights = [t for layer in net._packed_weights(1.0 / INT8_STEPS) for t in layer]
    head_w = net.head.weight[0].detach() * net.config.output_scale
    head_b = net.head.bias.detach() * net.config.output_scale
    full = n - n % chunk
    for s in range(0, full, chunk):
        e = s + chunk
        update[s:e], h_out[0, s:e], h_out[1, s:e], c_out[0, s:e], c_out[1, s:e] = fn(
            grad[s:e], h_in[0, s:e], h_in[1, s:e], c_in[0, s:e], c_in[1, s:e], *weights, head_w, head_b, net.config.p,
            *(() if moments is None else (moments[0][s:e], moments[1][s:e])))
    if full < n:  # the shorter last chunk: the library's eager path
        u, (h, c) = net._inference(grad[full:], (h_in[:, full:], c_in[:, full:]),
                                   moments=None if moments is None else (moments[0][full:], moments[1][full:]))
        update[full:], h_out[:, full:], c_out[:, full:] = u, h, c
    return update, (h_out, c_out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coords", type=positive_int, default=699_000)
    ap.add_argument("--chunks", type=positive_int, nargs="+", default=[4096, 32768])
    ap.add_argument("--repeats", type=positive_int, default=5)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "lstm_compile.json")
    args = ap.parse_args(argv)
    check_output_file(ap, "--json", args.json)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="artopt-inductor-")
    torch.manual_seed(0)
    net = load_learned(weights_path(NEURAL_ART))["default"]
    L, H, n = net.config.num_layers, net.config.hidden_size, args.coords
    state = (torch.zeros(L, n, H, dtype=torch.int8), torch.zeros(L, n, H, dtype=torch.float16))
    moments = None  # bfloat16, as the engine keeps them (None for a network without moment inputs)
    next_moments = partial(engine_moments, net)
    with torch.no_grad():
        for _ in range(3):  # a non-trivial state
            grad = torch.randn(n) * 1e-3
            moments = next_moments(grad, moments)
            state = net._inference(grad, state, moments=moments)[1]
        grad = torch.randn(n) * 1e-3
        moments = next_moments(grad, moments)
        ref_update, ref_state = net._inference(grad, state, moments=moments)
    report = {"coords": n, "threads": torch.get_num_threads(), "state": "int8 h, float16 c",
              "moment_inputs": net.config.moment_inputs,
              "seconds_per_update": {"library (eager, chunk 4096)": _best_of(
                  lambda: net._inference(grad, state, moments=moments), args.repeats)},
              "compiled": {}}
    for chunk in args.chunks:
        fn = torch.compile(chunk_update, dynamic=False)
        t0 = time.perf_counter()
        update, new_state = compiled_update(net, fn, grad, state, chunk, moments)
        first = time.perf_counter() - t0
        report["compiled"][str(chunk)] = {
            "first_call_s": first,
            "seconds_per_update": _best_of(lambda: compiled_update(net, fn, grad, state, chunk, moments), args.repeats),
            "max_update_difference": float((update - ref_update).abs().max()),
            "max_h_difference_steps": int((new_state[0].int() - ref_state[0].int()).abs().max()),
            "max_c_difference": float((new_state[1].float() - ref_state[1].float()).abs().max()),
        }
    lib = report["seconds_per_update"]["library (eager, chunk 4096)"]
    report["speedup_over_library"] = {k: lib / v["seconds_per_update"] for k, v in report["compiled"].items()}
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
