"""Would a gate-major LSTM state make the learned optimizer's CPU update faster?

The library keeps the state coordinate-major, (layer, coordinate, unit), so each chunk's gates come
out of one (chunk, 20) @ (20, 80) matrix product as (chunk, 80) and every gate is a strided
20-of-80 view.  A gate-major state, (layer, unit, coordinate), makes every gate op contiguous but
turns the product into (80, 20) @ (20, chunk).  This script times both on the shipped weights in the
engine's state dtypes (int8 h, float16 c), checks they compute the same update, and times the two
product shapes and one gate op alone:

    OMP_NUM_THREADS=1 .venv/bin/python bench/lstm_layout.py --coords 699000   # a 341x512 image's coefficients

Writes bench/results/lstm_layout.json.  The prototype lives here, not in the library.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from artopt.learned_optimizers.network import CPU_CHUNK, INT8_STEPS  # noqa: E402
from artopt.learned_optimizers.shipped import NEURAL_ART, weights_path  # noqa: E402
from artopt.learned_optimizers.weights import load_learned  # noqa: E402

from artopt.script_args import check_output_file, dumps, positive_int  # noqa: E402


def _gate_major_weights(net, h_scale: float):
    """The library's packed weights (tanh folded into the sigmoid), untransposed: W (4H, in), b (4H, 1)."""
    return [(w_ih.t().contiguous(), w_hh.t().contiguous(), b[:, None].contiguous())
            for w_ih, w_hh, b in net._packed_weights(h_scale)]


@torch.no_grad()
def gate_major_update(net, grad, state, chunk, moments=None):
    """The library's no-grad step on a (layer, unit, coordinate) int8-h / float16-c state (``moments``:
    the running means m and v, for a network with moment inputs)."""
    H = net.config.hidden_size
    h_in, c_in = state
    n = grad.numel()
    h_out, c_out = torch.empty_like(h_in), torch.empty_like(c_in)
    update = torch.empty(n)
    packed = _gate_major_weights(net, 1.0 / INT8_STEPS)
    head_w = net.head.weight.detach() * net.config.output_scale  # (1, H)
    head_b = net.head.bias.detach() * net.config.output_scale
    gates = None
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        if gates is None or gates.shape[1] != e - s:  # scratch reused across chunks, as the library does
            gates, scratch, h_prev = torch.empty(4 * H, e - s), torch.empty(3, H, e - s), torch.empty(H, e - s)
        x = net.features(grad[s:e], None if moments is None else (moments[0][s:e], moments[1][s:e])).t()
        for layer, (w_ih, w_hh, b) in enumerate(packed):
            torch.addmm(b, w_ih, x, out=gates)
            h_prev.copy_(h_in[layer, :, s:e])
            gates.addmm_(w_hh, h_prev)
            gates.sigmoid_()
            i, f, g, o = gates[:H], gates[H : 2 * H], gates[2 * H : 3 * H], gates[3 * H :]
            g.mul_(2).sub_(1)
            c_new, h_new = scratch[0], scratch[1 + layer % 2]
            torch.mul(f, c_in[layer, :, s:e], out=c_new).addcmul_(i, g)
            torch.mul(c_new, 2, out=h_new).sigmoid_().mul_(2).sub_(1).mul_(o)
            c_out[layer, :, s:e] = c_new
            h_out[layer, :, s:e] = torch.mul(h_new, INT8_STEPS, out=f).round_()
            x = h_new
        update[s:e] = (head_w @ x)[0] + head_b
    return update, (h_out, c_out)


def engine_moments(net, grad, moments):
    """The running means (m, v) after ``grad``, in bfloat16 as the engine keeps them; None for a
    network without moment inputs."""
    if not net.config.moment_inputs:
        return None
    m, v = net.update_moments(grad, moments)
    return m.bfloat16(), v.bfloat16()


def write_report(report: dict, path: Path) -> None:
    """Print the report and write it as (strict) JSON."""
    print(dumps(report, indent=2))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(report, indent=2) + "\n")


def _best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coords", type=positive_int, default=699_000)
    ap.add_argument("--chunk", type=positive_int, default=CPU_CHUNK)
    ap.add_argument("--repeats", type=positive_int, default=7)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "lstm_layout.json")
    args = ap.parse_args(argv)
    check_output_file(ap, "--json", args.json)
    torch.manual_seed(0)
    net = load_learned(weights_path(NEURAL_ART))["default"]
    L, H, n = net.config.num_layers, net.config.hidden_size, args.coords
    row = (torch.zeros(L, n, H, dtype=torch.int8), torch.zeros(L, n, H, dtype=torch.float16))
    col = (torch.zeros(L, H, n, dtype=torch.int8), torch.zeros(L, H, n, dtype=torch.float16))
    moments = None  # bfloat16, as the engine keeps them (None for a network without moment inputs)
    next_moments = partial(engine_moments, net)
    max_diff = 0.0
    for _ in range(3):  # a few steps from zero state, so both layouts hold the same non-trivial state
        grad = torch.randn(n) * 1e-3
        moments = next_moments(grad, moments)
        u_row, row = net._inference(grad, row, chunk=args.chunk, moments=moments)
        u_col, col = gate_major_update(net, grad, col, args.chunk, moments)
        max_diff = max(max_diff, float((u_row - u_col).abs().max()))
    same_state = bool(torch.equal(row[0], col[0].transpose(1, 2)) and torch.equal(row[1], col[1].transpose(1, 2)))
    grad = torch.randn(n) * 1e-3
    moments = next_moments(grad, moments)
    t_row = _best_of(lambda: net._inference(grad, row, chunk=args.chunk, moments=moments), args.repeats)
    t_col = _best_of(lambda: gate_major_update(net, grad, col, args.chunk, moments), args.repeats)

    c = args.chunk
    x, w, out = torch.randn(c, H), torch.randn(H, 4 * H), torch.empty(c, 4 * H)
    wt, xt, outt = torch.randn(4 * H, H), torch.randn(H, c), torch.empty(4 * H, c)
    gates, gates_t, cell, cell_t = torch.randn(c, 4 * H), torch.randn(4 * H, c), torch.randn(c, H), torch.randn(H, c)
    reps = 50

    def many(fn):
        return lambda: [fn() for _ in range(reps)]

    micro = {
        "matmul_us": {"coordinate_major (chunk,20)@(20,80)": _best_of(many(lambda: torch.mm(x, w, out=out)), 5) / reps * 1e6,
                      "gate_major (80,20)@(20,chunk)": _best_of(many(lambda: torch.mm(wt, xt, out=outt)), 5) / reps * 1e6},
        "gate_mul_us": {"strided 20-of-80 view": _best_of(many(lambda: torch.mul(gates[:, H:2 * H], cell)), 5) / reps * 1e6,
                        "contiguous": _best_of(many(lambda: torch.mul(gates_t[H:2 * H], cell_t)), 5) / reps * 1e6},
    }
    report = {"coords": n, "chunk": c, "threads": torch.get_num_threads(), "state": "int8 h, float16 c",
              "moment_inputs": net.config.moment_inputs, "same_state": same_state, "max_update_difference": max_diff,
              "seconds_per_update": {"coordinate_major (library)": t_row, "gate_major (prototype)": t_col},
              "gate_major_speedup": t_row / t_col, "micro": micro}
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
