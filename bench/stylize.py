"""Benchmarks of the stylize engine: quality grid, speed, memory, Adam vs L-BFGS, layer choice.

Writes JSON + PNG under bench/results/ (or --results DIR).  Examples (run from the repository root):

    OMP_NUM_THREADS=2 .venv/bin/python bench/stylize.py quality      # styles x photos grid at 512 px
    OMP_NUM_THREADS=2 .venv/bin/python bench/stylize.py speed        # per-step cost at 256/512/1024 + 512 px default run
    OMP_NUM_THREADS=2 .venv/bin/python bench/stylize.py memory --sizes 256 512 1024 1536   # peak memory (MiB) of 2-step runs
    OMP_NUM_THREADS=2 .venv/bin/python bench/stylize.py adam-vs-lbfgs
    OMP_NUM_THREADS=1 .venv/bin/python bench/stylize.py layers       # EfficientNet-Lite0 layer sets compared
    OMP_NUM_THREADS=1 .venv/bin/python bench/stylize.py lr-sweep     # per-optimizer learning rates
    python bench/stylize.py gpu --steps 200 --sizes 512 1024 2048 4096      # on a CUDA GPU: step split, LSTM vs Adam
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ASSETS = ROOT / "assets"

from artopt.script_args import check_names, check_output_dir, check_photo_sizes, dumps, positive_int, script_parser  # noqa: E402

from artopt.style import engine as engine_module  # noqa: E402
from artopt.style.engine import (STYLIZE_LR, STYLIZE_LR_PER_PIXEL, StylizeConfig, pyramid_sizes,  # noqa: E402
                                 split_steps, stylize)
from artopt.style.images import load_image, pil_to_tensor, resize_long_side, tensor_to_pil  # noqa: E402
from artopt.style.loss_nets import EfficientNetLite0LossNet, build_loss_net  # noqa: E402
from artopt.style.losses import StyleLoss  # noqa: E402


def photos() -> list[Path]:
    return sorted((ASSETS / "photos").glob("*.jpg"))


def styles() -> list[Path]:
    return sorted((ASSETS / "styles").glob("*.jpg"))


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_json(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(dumps({"machine": machine(), **data}, indent=2))  # strict JSON: a non-finite loss is null
    print(f"wrote {path}")
    return path


def grid(rows: list[list[Image.Image]], labels_top: list[str], labels_left: list[str], cell: int = 256) -> Image.Image:
    """Tile images into a labelled grid (each thumbnail fits a cell x cell box)."""
    pad = 18
    left = 110 if labels_left else 0
    sheet = Image.new("RGB", (left + cell * len(rows[0]), pad + cell * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, text in enumerate(labels_top):
        draw.text((left + j * cell + 4, 3), text[:40], fill="black")
    for i, row in enumerate(rows):
        if labels_left:
            draw.text((4, pad + i * cell + cell // 2), labels_left[i][:18], fill="black")
        for j, im in enumerate(row):
            thumb = im.copy()
            thumb.thumbnail((cell - 4, cell - 4))
            sheet.paste(thumb, (left + j * cell + 2, pad + i * cell + 2))
    return sheet


# ------------------------------------------------------------------------------------------


LAYER_PAIRS = [("chelsea", "starry_night"), ("astronaut", "composition_vii"), ("coffee", "woman_with_a_hat")]


def bench_layers(args) -> None:
    """Compare EfficientNet-Lite0 content/style layer sets on photos x styles at 256 px."""
    candidates = {
        "A exp 1/2..1/16": (("b3.0.exp",), ("stem", "b1.0.exp", "b2.0.exp", "b3.0.exp", "b4.0.exp")),
        "B stage outs": (("s3",), ("stem", "s1", "s2", "s3", "s5")),
        "C exp shallow": (("b2.0.exp",), ("stem", "b1.0.exp", "b2.0.exp", "b3.0.exp")),
        "D exp deep": (("b4.0.exp",), ("b1.0.exp", "b2.0.exp", "b3.0.exp", "b4.0.exp", "b5.0.exp")),
        "E dw acts": (("b3.0.dw",), ("stem", "b1.0.dw", "b2.0.dw", "b3.0.dw", "b5.0.dw")),
    }
    pairs = LAYER_PAIRS
    rows, results = [], {}
    for name, (content_layers, style_layers) in candidates.items():
        net = EfficientNetLite0LossNet(content_layers=content_layers, style_layers=style_layers)
        engine_module.build_loss_net = lambda *a, **k: net  # noqa: E731 - this run's layer set
        row = []
        for photo, style in pairs:
            t = time.perf_counter()
            out = stylize(load_image(ASSETS / "photos" / f"{photo}.jpg"), [load_image(ASSETS / "styles" / f"{style}.jpg")],
                          StylizeConfig(size=args.size, steps=args.steps, optimizer="adam", loss_net="efficientnet-lite0"))
            row.append(tensor_to_pil(out))
            results.setdefault(name, {})[f"{photo}+{style}"] = round(time.perf_counter() - t, 2)
            print(name, photo, style, results[name][f"{photo}+{style}"], "s", flush=True)
        rows.append(row)
    engine_module.build_loss_net = build_loss_net
    sheet = grid(rows, [f"{p} + {s}" for p, s in pairs], list(candidates))
    RESULTS.mkdir(parents=True, exist_ok=True)
    sheet.save(RESULTS / "effnet_layers.png")
    write_json("effnet_layers", {"size": args.size, "steps": args.steps, "candidates": {
        k: {"content": v[0], "style": v[1]} for k, v in candidates.items()}, "seconds": results})


def _load_assets(names: list[str], folder: str) -> list:
    return [load_image(ASSETS / folder / f"{n}.jpg") for n in names]


def bench_quality(args) -> None:
    """Shipped styles on shipped photos at --size px with default settings: one grid PNG + timings."""
    photo_names = args.photos or [p.stem for p in photos()]
    style_names = args.styles or [s.stem for s in styles()]
    config = StylizeConfig(size=args.size)
    rows, seconds = [], {}
    for photo_name, photo in zip(photo_names, _load_assets(photo_names, "photos")):
        row = [photo]
        for style_name, style in zip(style_names, _load_assets(style_names, "styles")):
            t = time.perf_counter()
            row.append(tensor_to_pil(stylize(photo, [style], config)))
            seconds[f"{photo_name}+{style_name}"] = round(time.perf_counter() - t, 2)
            print(photo_name, style_name, seconds[f"{photo_name}+{style_name}"], "s", flush=True)
            # Rewrite after every image: a long run that is cut short still leaves its results.
            done_rows = rows + [row + [Image.new("RGB", (8, 8), "white")] * (len(style_names) + 1 - len(row))]
            grid(done_rows, ["photo"] + style_names, photo_names[: len(done_rows)]).save(RESULTS / f"quality_{args.size}.png")
            write_json(f"quality_{args.size}", {"config": dataclasses.asdict(config), "seconds": seconds,
                                                "load_average": os.getloadavg()})
        rows.append(row)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_steps(size: int, optimizer_name: str, steps: int, device: str = "cpu") -> dict:
    """Per-step time split into loss-network forward+backward and the optimizer update."""
    photo, style = _load_assets(["chelsea"], "photos")[0], _load_assets(["starry_night"], "styles")[0]
    defaults = StylizeConfig()
    dev = torch.device(device)
    net = build_loss_net(defaults.loss_net, device=dev)
    content = resize_long_side(pil_to_tensor(photo), size).to(dev)
    loss_fn = StyleLoss(net, content, [pil_to_tensor(style).to(dev)], content_weight=defaults.content_weight,
                        style_weight=defaults.style_weight, tv_weight=defaults.tv_weight, edge_pad=defaults.edge_pad)
    image = content.clone().requires_grad_(True)
    optimizer = engine_module._make_optimizer(optimizer_name, image, None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    # Wall time and this process's CPU time: on a shared, oversubscribed machine the CPU time
    # (with one thread) is what the step would take on an idle core.
    forward_backward, update, fb_cpu, update_cpu = [], [], [], []
    for _ in range(steps + 1):  # the first step warms up allocators and is not counted
        _sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(image)["total"].backward()
        _sync(dev)
        t1, c1 = time.perf_counter(), time.process_time()
        optimizer.step()
        with torch.no_grad():
            image.clamp_(0, 1)
        _sync(dev)
        t2, c2 = time.perf_counter(), time.process_time()
        forward_backward.append(t1 - t0)
        update.append(t2 - t1)
        fb_cpu.append(c1 - c0)
        update_cpu.append(c2 - c1)
    mean = lambda xs: round(sum(xs[1:]) / steps, 5)  # noqa: E731
    out = {"size": list(content.shape[-2:]), "loss_net": net.name, "threads": torch.get_num_threads(),
           "device": str(dev), "forward_backward_wall_s": mean(forward_backward), "update_wall_s": mean(update),
           "forward_backward_cpu_s": mean(fb_cpu), "update_cpu_s": mean(update_cpu)}
    if dev.type == "cuda":
        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    return out


def bench_speed(args) -> None:
    results = {"per_step_adam": [], "per_step_lstm": [], "load_average_start": os.getloadavg()}
    for size in (256, 512, 1024):
        for name in ("adam", "lstm"):
            results[f"per_step_{name}"].append(_timed_steps(size, name, args.timed_steps))
            print(name, results[f"per_step_{name}"][-1], flush=True)
    write_json("speed", results)  # the per-step part survives if the full run below is cut short
    photo, style = _load_assets(["chelsea"], "photos")[0], _load_assets(["starry_night"], "styles")[0]
    config = StylizeConfig(size=512)
    build_loss_net(config.loss_net)  # built once per process; the web app and CLI pay it once too
    t, c = time.perf_counter(), time.process_time()
    infos = []
    stylize(photo, [style], config, callback=infos.append)
    results["default_512"] = {"seconds": round(time.perf_counter() - t, 2), "cpu_seconds": round(time.process_time() - c, 2),
                              "config": dataclasses.asdict(config),
                              "loss_net_seconds": round(infos[-1].loss_seconds, 2),
                              "final_losses": infos[-1].final_losses or infos[-1].losses, "target_s": 60}
    results["load_average_end"] = os.getloadavg()
    print(results["default_512"], flush=True)
    write_json("speed", results)


def _run_curve(photo, style, size: int, optimizer: str, steps: int, device: str) -> dict:
    """One engine run; the final scale's loss after each step and the wall time it was reached."""
    config = StylizeConfig(size=size, steps=steps, optimizer=optimizer, device=device)
    curve, times = [], []

    def record(info):
        if info.scale_index == info.n_scales - 1:
            curve.append(info.losses["total"])
            times.append(info.elapsed)

    t = time.perf_counter()
    stylize(photo, [style], config, callback=record)
    return {"curve": curve, "times": times, "seconds": time.perf_counter() - t}


GPU_RUN_SIZES = (512, 1024)  # the whole-run comparisons of bench_gpu


def bench_gpu(args) -> None:
    """On a CUDA GPU: the per-step split (loss network vs update) at each of --sizes, the LSTM update
    in GPU-sized chunks against CPU-sized ones, and whole runs of --steps steps, LSTM against Adam (its lr tuned
    at 512 px, train/results/neural_art/lrs.json), on the shipped photos with a held-out style:
    final-loss ratio and the wall time each needs to reach Adam's final loss."""
    if not torch.cuda.is_available():
        raise SystemExit("bench/stylize.py gpu needs a CUDA GPU")
    from artopt.learned_optimizers import network

    results: dict = {"per_step_adam": [], "per_step_lstm": [], "per_step_lstm_cpu_chunks": [], "runs": []}
    for size in args.sizes:
        for name in ("adam", "lstm"):
            results[f"per_step_{name}"].append(_timed_steps(size, name, args.timed_steps, device="cuda"))
            print(name, results[f"per_step_{name}"][-1], flush=True)
        if size > 1024:  # seconds per step in CPU-sized chunks: measured where it is still quick
            continue
        gpu_chunk, network.GPU_CHUNK = network.GPU_CHUNK, network.CPU_CHUNK
        try:
            results["per_step_lstm_cpu_chunks"].append(_timed_steps(size, "lstm", args.timed_steps, device="cuda"))
        finally:
            network.GPU_CHUNK = gpu_chunk
        print("lstm, CPU chunks", results["per_step_lstm_cpu_chunks"][-1], flush=True)
    write_json("gpu", results)
    style = _load_assets(["woman_with_a_hat"], "styles")[0]
    for size in GPU_RUN_SIZES:
        for photo_name in args.photos or ["chelsea", "astronaut"]:
            photo = _load_assets([photo_name], "photos")[0]
            runs = {name: _run_curve(photo, style, size, name, args.steps, "cuda") for name in ("adam", "lstm")}
            target = runs["adam"]["curve"][-1]
            row = {"size": size, "photo": photo_name, "style": "woman_with_a_hat", "steps": args.steps}
            for name, run in runs.items():
                hit = next((k for k, v in enumerate(run["curve"]) if v <= target), None)
                row[name] = {"final": run["curve"][-1], "seconds": round(run["seconds"], 3),
                             "final_scale_steps": len(run["curve"]),
                             "steps_to_adam_final": None if hit is None else hit + 1,
                             "seconds_to_adam_final": None if hit is None else round(run["times"][hit], 3)}
            row["lstm_over_adam_final"] = row["lstm"]["final"] / row["adam"]["final"]
            reach = row["lstm"]["seconds_to_adam_final"]
            row["adam_seconds_over_lstm_seconds_to_adam_final"] = (
                None if reach is None else row["adam"]["seconds_to_adam_final"] / reach)
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
            write_json("gpu", results)


def bench_memory(args) -> None:
    """Peak resident memory of a fresh process stylizing at each size (2 steps, final scale only)."""
    results = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "memory-one", "--size", str(size)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"memory-one --size {size} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    write_json("memory", {"photo": "assets/photos/astronaut.jpg (square)", "style": "assets/styles/starry_night.jpg",
                          "run": "StylizeConfig(size, steps=2, pyramid=False), optimizer auto, in a fresh process",
                          "units": "MiB; peak_rss_mb is the process's maximum RSS",
                          "runs": results, "limit_gb": 24})


def bench_memory_one(args) -> None:
    photo, style = _load_assets(["astronaut"], "photos")[0], _load_assets(["starry_night"], "styles")[0]
    config = StylizeConfig(size=args.size, steps=2, pyramid=False)
    build_loss_net(config.loss_net)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    infos = []
    stylize(photo, [style], config, callback=infos.append)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    h, w = infos[-1].size
    # the estimate the engine refuses and warns by (cpu_memory_problem), to hold against the peak
    estimate = engine_module.CPU_BASE_BYTES + engine_module.CPU_BYTES_PER_PIXEL * h * w
    optimizer = engine_module.resolve_optimizer(config.optimizer, args.size, False)
    print(json.dumps({"size": args.size, "output_hw": [h, w], "optimizer": optimizer,
                      "peak_rss_mb": round(peak, 1), "rss_before_mb": round(base, 1),
                      "engine_estimate_mb": round(estimate / 2**20, 1),
                      "seconds_2_steps": round(time.perf_counter() - t, 2)}))


def bench_adam_vs_lbfgs(args) -> None:
    """Loss evaluations and wall time for L-BFGS to reach Adam's loss after --adam-steps steps."""
    photo, style = _load_assets(["chelsea"], "photos")[0], _load_assets(["starry_night"], "styles")[0]
    curves = {}
    build_loss_net(StylizeConfig().loss_net)  # not part of either optimizer's time
    # L-BFGS gets twice Adam's budget so that the crossing point is found when it is later.
    for name, steps in (("adam", args.adam_steps), ("lbfgs", 2 * args.adam_steps)):
        infos, cpu = [], []
        cpu_start = time.process_time()
        # CPU time (one thread) rather than wall time: the shared machine's load varies during a run.
        stylize(photo, [style], StylizeConfig(size=args.size, steps=steps, optimizer=name, pyramid=False),
                callback=lambda info: (infos.append(info), cpu.append(time.process_time() - cpu_start)))
        curves[name] = [(i.step, i.losses["total"], c) for i, c in zip(infos, cpu)]
        print(name, curves[name][-1], flush=True)
    target = curves["adam"][-1][1]
    reach, reach_seconds = {}, {}
    for name, curve in curves.items():
        hit = next(((s, t) for s, loss, t in curve if loss <= target), None)
        reach[name] = {"steps": hit[0], "cpu_seconds": round(hit[1], 2)} if hit else None
        if hit:
            reach_seconds[name] = hit[1]
    # from the unrounded times: on short runs the rounded ones are 0.0 or off by a lot
    ratio = (reach_seconds["lbfgs"] / reach_seconds["adam"]
             if "lbfgs" in reach_seconds and reach_seconds["adam"] else None)
    write_json("adam_vs_lbfgs", {"size": args.size, "adam_steps": args.adam_steps, "adam_final_loss": target,
                                 "reach": reach, "time_ratio_lbfgs_over_adam": ratio,
                                 "curves": {k: [[s, round(l, 6), round(t, 3)] for s, l, t in v] for k, v in curves.items()}})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot([t for _, _, t in curve], [l for _, l, _ in curve], label=name)
    ax.axhline(target, color="gray", ls="--", lw=0.8, label=f"Adam after {args.adam_steps} steps")
    ax.set_yscale("log"); ax.set_xlabel("CPU time, one thread (s)"); ax.set_ylabel("total loss"); ax.legend()
    ax.set_title(f"Adam vs L-BFGS, {args.size} px")
    fig.tight_layout(); fig.savefig(RESULTS / "adam_vs_lbfgs.png", dpi=100)


LR_GRIDS = {"adam": [0.01, 0.02, 0.05], "rmsprop": [0.001, 0.002, 0.005, 0.01],
            "sgd": [0.5, 2, 8, 32], "nag": [0.1, 0.5, 2, 8], "lbfgs": [0.5, 1.0]}


def bench_lr_sweep(args) -> None:
    """Final loss after --steps steps at --size px for a grid of learning rates per optimizer."""
    photo, style = _load_assets(["chelsea"], "photos")[0], _load_assets(["starry_night"], "styles")[0]
    grids = LR_GRIDS
    if args.optimizers:
        grids = {k: v for k, v in grids.items() if k in args.optimizers}
    results = {}
    for name, lrs in grids.items():
        for lr in lrs:
            infos = []
            # keep_best off: the last step's image, so that a rate whose loss rises at the end shows it
            stylize(photo, [style], StylizeConfig(size=args.size, steps=args.steps, optimizer=name, lr=lr,
                                                  pyramid=False, keep_best=False), callback=infos.append)
            # the returned image's loss (a step's own losses are of the image before its update)
            final = (infos[-1].final_losses or infos[-1].losses)["total"]
            results.setdefault(name, {})[str(lr)] = final
            print(name, lr, final, flush=True)
    # a diverged rate (NaN) must not win: min() keeps a NaN it met first, as no number is below it
    best = {k: min((lr for lr in v if math.isfinite(v[lr])), key=v.get, default=None) for k, v in results.items()}
    write_json("lr_sweep", {"size": args.size, "steps": args.steps, "final_total_loss": results, "best_lr": best,
                            "engine_defaults": {**STYLIZE_LR, "per_pixel": STYLIZE_LR_PER_PIXEL["pixels"]}})


# What `artopt bench TARGET` runs here (the CLI reads this list to name every target on a typo).
TARGETS = ["layers", "quality", "speed", "memory", "memory-one", "adam-vs-lbfgs", "lr-sweep", "gpu"]


def main(argv=None) -> None:
    global RESULTS
    parser = script_parser(__doc__)
    parser.add_argument("what", choices=TARGETS)
    parser.add_argument("--size", type=positive_int, default=None,
                        help="layers, quality, adam-vs-lbfgs, lr-sweep: image long side "
                             "(default: 512 for quality, 256 for the others)")
    parser.add_argument("--steps", type=positive_int, default=100,
                        help="layers, lr-sweep, gpu: steps per run (default: %(default)s; "
                             "quality runs the engine's default)")
    parser.add_argument("--photos", nargs="+",
                        help="quality, gpu: photo names (default: all shipped; gpu: chelsea astronaut)")
    parser.add_argument("--styles", nargs="+", help="quality: style names (default: all shipped)")
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[512, 1024, 2048],
                        help="memory, gpu: sizes (default: %(default)s)")
    parser.add_argument("--timed-steps", type=positive_int, default=3,
                        help="speed, gpu: steps timed per size (default: %(default)s)")
    parser.add_argument("--adam-steps", type=positive_int, default=500,
                        help="adam-vs-lbfgs: Adam's budget (default: %(default)s)")
    parser.add_argument("--optimizers", nargs="+", choices=list(LR_GRIDS), metavar="NAME",
                        help=f"lr-sweep: optimizers, of {', '.join(LR_GRIDS)} (default: all)")
    parser.add_argument("--results", type=Path, default=None,
                        help="folder for the JSON and PNG (default: bench/results, the committed ones)")
    args = parser.parse_args(argv)
    if args.results is not None:
        RESULTS = args.results
    if args.size is None:
        args.size = {"quality": 512, "memory-one": 512}.get(args.what, 256)
    # Checked now, not when the first run (or the last write) fails after minutes of work.
    for flag, sizes in (("--size", [args.size]), ("--sizes", args.sizes)):
        for size in sizes:
            try:
                StylizeConfig(size=size).validated()
            except ValueError as exc:
                parser.error(f"{flag}: {exc}")
    if args.what == "gpu":
        for size in GPU_RUN_SIZES:
            if split_steps(args.steps, len(pyramid_sizes(size, None)))[-1] < 1:
                parser.error(f"gpu: --steps {args.steps} leaves no step for the final scale of the {size} px runs")
    check_names(parser, "--photos", args.photos or [], ASSETS / "photos")
    check_names(parser, "--styles", args.styles or [], ASSETS / "styles")
    # The photos each benchmark stylizes, and at which sizes: a wide photo at a small size is too
    # short for the loss network (the engine refuses it, which ended the benchmark in a traceback).
    used = {"layers": ([p for p, _ in LAYER_PAIRS], [args.size]),
            "quality": (args.photos or [p.stem for p in photos()], [args.size]),
            "adam-vs-lbfgs": (["chelsea"], [args.size]), "lr-sweep": (["chelsea"], [args.size]),
            "memory": (["astronaut"], args.sizes), "memory-one": (["astronaut"], [args.size]),
            "gpu": (["chelsea"], args.sizes)}.get(args.what, ([], []))
    check_photo_sizes(parser, [ASSETS / "photos" / f"{name}.jpg" for name in used[0]], used[1])
    check_output_dir(parser, "--results", RESULTS)
    handlers = {"layers": bench_layers, "quality": bench_quality, "speed": bench_speed, "memory": bench_memory,
                "memory-one": bench_memory_one, "adam-vs-lbfgs": bench_adam_vs_lbfgs, "lr-sweep": bench_lr_sweep,
                "gpu": bench_gpu}
    handlers[args.what](args)


if __name__ == "__main__":
    main()
