r"""Time the web page as a person uses it, in headless Debian chromium (Playwright).

Measures, at a given output size, the time from the click on *Stylize* to the first live preview
on the page and to the finished before/after result; saves a screenshot of the finished page and
one of the page's answer to a 0-byte upload; writes everything to a JSON file.

    .venv/bin/python bench/web_timing.py                      # 512 px, the engine's default steps
    .venv/bin/python bench/web_timing.py --size 256 --steps 20 --json /tmp/t.json \
        --screenshot /tmp/t.png --zero-byte-screenshot /tmp/z.png   # not over docs/'s screenshots

Needs ``bash .ci/install-browser`` (system chromium + the playwright package).
"""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from artopt.script_args import check_output_file, dumps, positive_int, refuse_same_files, script_parser  # noqa: E402
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def menu_option(label: str) -> re.Pattern:
    """The Optimizer menu entry ``label`` names.  The whole label: Playwright's default substring
    match for "Adam" also found "Adam, multi-scale basis" (and failed: two elements); "auto" has
    the page's note after a colon."""
    return re.compile(rf"^{re.escape(label)}(:.*)?$")


def main(argv=None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--size", type=positive_int, default=512,
                        help="output long side on the page (default: %(default)s; 256 up to the page's maximum)")
    parser.add_argument("--steps", type=positive_int, default=None, help="default: the engine's default")
    parser.add_argument("--optimizer", default=None,
                        help="the page's Optimizer menu entry, by key or label: auto, lstm, adam-ms, adam, lbfgs "
                             "(default: the page's default)")
    parser.add_argument("--content", default=str(REPO / "assets/photos/chelsea.jpg"))
    parser.add_argument("--style", default=str(REPO / "assets/styles/starry_night.jpg"))
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch CPU threads (default 1: the CPUs here are shared, and 2 threads "
                             "on busy cores ran ~10x slower than 1)")
    parser.add_argument("--json", default=str(REPO / "bench/results/web_timing.json"),
                        help="default: bench/results/web_timing.json, the committed one")
    parser.add_argument("--screenshot", default=str(REPO / "docs/screenshot.png"),
                        help="the finished page (default: docs/screenshot.png, the committed one)")
    parser.add_argument("--zero-byte-screenshot", default=str(REPO / "docs/zero_byte_upload.png"),
                        help="the page's answer to a 0-byte upload "
                             "(default: docs/zero_byte_upload.png, the committed one)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)

    # Checked now, not after the app, the browser and the run: each of these failed late (a
    # traceback, a 30 s Playwright timeout, or the JSON lost after the whole run).
    for flag in ("--content", "--style"):
        if not Path(getattr(args, flag[2:])).is_file():
            parser.error(f"{flag} {getattr(args, flag[2:])}: no such file")
    outputs = [(flag, getattr(args, flag[2:].replace("-", "_"))) for flag in ("--json", "--screenshot",
                                                                              "--zero-byte-screenshot")]
    for flag, path in outputs:
        check_output_file(parser, flag, path)
    refuse_same_files(parser, outputs, [("--content", args.content), ("--style", args.style)])

    import torch

    torch.set_num_threads(args.threads)

    from artopt import web
    from artopt.style.engine import StylizeConfig, resolve_device

    # The page clamps its size and steps into its limits; the record would name the asked-for ones.
    max_size = web.default_max_size_for(str(resolve_device("auto")))
    if not web.MIN_SIZE <= args.size <= max_size:
        parser.error(f"--size must be between {web.MIN_SIZE} and {max_size} (the page's limits), got {args.size}")
    if args.steps is not None and args.steps > web.WebLimits().max_steps:
        parser.error(f"--steps must be at most {web.WebLimits().max_steps} (the page's limit), got {args.steps}")
    option = None
    if args.optimizer:
        option = web.OPTIMIZER_LABELS.get(args.optimizer, args.optimizer)
        if option not in web.OPTIMIZER_LABELS.values():
            parser.error(f"--optimizer: no menu entry {args.optimizer!r} "
                         f"(choose from {', '.join(web.OPTIMIZER_LABELS)})")
    if not (Path(args.chromium).is_file() and os.access(args.chromium, os.X_OK)):
        parser.error(f"--chromium {args.chromium}: no such program (bash .ci/install-browser installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        parser.error("needs the playwright package: bash .ci/install-browser")

    steps = args.steps or StylizeConfig().steps
    t_build = time.perf_counter()
    app = web.build_app(device="auto", default_size=args.size, default_steps=steps)
    build_s = time.perf_counter() - t_build
    web.launch(app, port=free_port(), block=False, quiet=True)
    record: dict = {
        "size": args.size, "steps": steps, "device": app.artopt_device, "torch_threads": args.threads,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(), "app_build_s": round(build_s, 1),
        "content": Path(args.content).name, "style": Path(args.style).name,
        "chromium": subprocess.run([args.chromium, "--version"], capture_output=True, text=True).stdout.strip(),
    }
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.goto(app.local_url, wait_until="networkidle")
            page.locator("#stylize-button").wait_for(state="visible", timeout=120_000)
            record["page_info"] = page.locator("#device-info").inner_text()
            page.locator("#content-image input[type=file]").set_input_files(args.content)
            page.locator("#style-image-1 input[type=file]").set_input_files(args.style)
            page.locator("#content-image img").first.wait_for(state="visible")
            page.locator("#style-image-1 img").first.wait_for(state="visible")
            if option:
                page.get_by_role("combobox", name="Optimizer").click()
                page.get_by_role("option", name=menu_option(option)).click()
            record["optimizer"] = page.get_by_role("combobox", name="Optimizer").input_value()

            clicked = time.perf_counter()
            page.locator("#stylize-button").click()
            page.locator("#live-preview img").first.wait_for(state="visible", timeout=3_600_000)
            record["click_to_first_preview_s"] = round(time.perf_counter() - clicked, 2)
            page.locator("#before-after img").nth(1).wait_for(state="visible", timeout=3_600_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('#before-after img')]"
                ".every(img => img.complete && img.naturalWidth > 0)"
            )
            record["click_to_finished_s"] = round(time.perf_counter() - clicked, 2)
            record["status"] = page.locator("#run-status").inner_text()
            record["result_width_px"] = page.locator("#before-after img").nth(1).evaluate("i => i.naturalWidth")
            Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.screenshot, full_page=True)
            page.close()

            # What a person sees after choosing a 0-byte file.
            with tempfile.TemporaryDirectory() as tmp:
                empty = Path(tmp) / "empty.jpg"
                empty.write_bytes(b"")
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(app.local_url, wait_until="networkidle")
                page.locator("#stylize-button").wait_for(state="visible")
                page.locator("#content-image input[type=file]").set_input_files(str(empty))
                page.locator("#style-image-1 input[type=file]").set_input_files(args.style)
                page.locator("#style-image-1 img").first.wait_for(state="visible")
                page.locator("#stylize-button").click()
                toast = page.get_by_test_id("toast-body").filter(has_text="empty.jpg").first
                toast.wait_for(state="visible", timeout=60_000)
                record["zero_byte_upload_toast"] = toast.inner_text()
                page.wait_for_function(
                    "() => document.querySelector('#run-status').innerText.includes('Not stylized')")
                record["zero_byte_upload_status"] = page.locator("#run-status").inner_text()
                page.wait_for_timeout(1000)  # the toast fades in
                page.screenshot(path=args.zero_byte_screenshot)
            browser.close()
    finally:
        app.close()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(dumps(record, indent=2) + "\n")
    print(dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
