"""The artopt web app: a Gradio Blocks page around :func:`artopt.style.engine.stylize`.

A person uploads a content photo and one to three style images (or clicks a shipped preset), sets
size, quality, style strength, optimizer, colour keeping and seed, presses *Stylize*, watches a
live preview form, and gets a before/after slider plus the full-resolution PNG to download.

``build_app(...)`` makes the page; ``serve(...)`` queues and launches it (127.0.0.1, no share link
unless asked).  Nothing here downloads anything: the theme uses the fonts bundled with Gradio and
analytics are off.
"""

from __future__ import annotations

import os

# Before gradio is imported: it reads this at import time to decide whether to phone home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import html
import itertools
import logging
import queue
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
import torch
from PIL import Image

from artopt.shipped_files import shipped_dir

log = logging.getLogger(__name__)

ASSETS_DIR = shipped_dir("assets")  # preset photos and styles: the checkout's, or an installed wheel's
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}

READABLE_FORMATS_HINT = ("Use a JPEG, PNG, WebP, AVIF, GIF, BMP or TIFF image; SVG drawings and HEIC photos need "
                         "converting first")
N_STYLE_SLOTS = 3
WAITING_STATUS = "Waiting for a free slot…"  # from the click until the run starts
# While others' runs are ahead of the person's request; refreshed every WAITING_REFRESH_S.
WAITING_AHEAD_STATUS = "Waiting for a free slot: {ahead} run{s} ahead of yours…"
WAITING_REFRESH_S = 1.0
STATUS_EVERY_S = 1.0  # a run's status line (its step) between previews, at most this often
# From the moment a waiting request starts until its first preview.
STARTING_STATUS = "Working: starting…"
WITHDRAWN_STATUS = "Withdrawn: this request will not run; the page frees up when the run ahead of it ends."
# Height (px) of the live preview and the before/after slider.
RESULT_HEIGHT = 420
PAGE_CSS = "\n".join([
    # The live preview fills its box like the slider beside it (a small output stayed at its pixel size).
    "#live-preview img { width: 100%; height: 100%; object-fit: contain; }",
    # The before/after images were sized to the box's width: a portrait result lost its bottom.
    "#before-after .content img { height: 100%; }",
    # After a failed run Gradio may lay an "Error" pill (and a × to clear it) over the middle of the
    # status line's "Not stylized: why"; the toast already says it is an error.
    "#run-status .error, #run-status .clear-status { display: none; }",
    # Gradio's progress tracker sits inside the status line, invisible (show_progress="hidden") but
    # not gone: its queue timer ("queue: 1/1 | 0.8/2.5s", every 100 ms) was read out by the live region.
    "#run-status [data-testid='status-tracker'] { display: none; }",
    # A gallery without a fixed height gets a 450 px minimum (an empty band under the presets' two
    # rows), and its floating label covered the top of the first row.
    "#preset-gallery .grid-wrap { min-height: 0; }",
    "#preset-gallery .grid-container { padding-top: 34px; }",
    # On a phone five 100 px columns ran off the side, hiding three presets.
    "@media (max-width: 640px) {"
    " #preset-gallery .grid-container { grid-template-columns: repeat(3, minmax(0, 1fr)); } }",
    # Style 1 sits in a gr.Group, whose "border: none" on its children leaves the image's own
    # border-style drawn at the default 3 px in the text colour; the group's border is the frame.
    "#style-image-1 { border-width: 0; }",
])
# Screen readers announce the status line as it changes (Gradio's Markdown has no such option).
PAGE_JS = ("() => { const status = document.querySelector('#run-status');"
           " if (status) { status.setAttribute('role', 'status'); status.setAttribute('aria-live', 'polite'); } }")
MIN_SIZE = 256
MAX_SIZE = 4096
# An uploaded image larger than this is refused before decoding (decompression-bomb guard).
DEFAULT_MAX_INPUT_PIXELS = 50_000_000
DEFAULT_MAX_UPLOAD_MB = 25
# On out-of-memory the run is retried at this fraction of the long side, down to min_size.
OOM_SHRINK = 0.75
# Gradio's copies of uploads and results are kept this long (ours go when each run ends): people's
# photos must not pile up on the server.  Gradio's cache is swept every CACHE_SWEEP_S.
FILE_MAX_AGE_S = 6 * 3600
CACHE_SWEEP_S = 3600

OPTIMIZER_INFO = ("what changes the image at each step: the learned (LSTM) optimizer was meta-trained on style "
                  "transfer and reaches a lower loss in the same steps; its faster entry leaves the finest detail "
                  "of outputs from 384 px to Adam (about half the time at 512 px for about 5% higher loss); Adam on "
                  "its multi-scale basis comes close in less time on a CPU; Adam and L-BFGS on the pixels are the "
                  "classic choices")
OPTIMIZER_LABELS = {"auto": "auto", "lstm": "learned (LSTM)", "lstm-fast": "learned (LSTM), faster",
                    "adam-ms": "Adam, multi-scale basis", "adam": "Adam", "lbfgs": "L-BFGS"}
# A menu entry NAME-ms runs optimizer NAME on the learned optimizer's multi-scale basis.
MULTISCALE_SUFFIX = "-ms"
# The menu entry lstm-fast runs the learned optimizer with Adam on this many finest basis levels at the
# pyramid's finer scales (StylizeConfig.adam_levels; bench/adam_levels.py).
FAST_SUFFIX, FAST_ADAM_LEVELS = "-fast", 2


@dataclass(frozen=True)
class WebLimits:
    """What the server allows one request to ask for."""

    min_size: int = MIN_SIZE
    max_size: int = MAX_SIZE
    max_steps: int = 2000
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS


def default_size_for(device: str) -> int:
    """Output long side offered by default: large on a GPU, modest on CPUs (minutes, not hours)."""
    return 1024 if str(device).startswith("cuda") else 512


def _as_bool(value: Any) -> bool:
    """A checkbox's value; API callers may send it as text ("false" is not true)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


def default_max_size_for(device: str) -> int:
    """Largest output long side allowed by default: a CPU would take hours beyond 2048 px."""
    return MAX_SIZE if str(device).startswith("cuda") else 2048


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def preset_styles(assets_dir: Path = ASSETS_DIR) -> list[Path]:
    """The shipped public-domain style presets."""
    return _image_files(assets_dir / "styles")


def example_photos(assets_dir: Path = ASSETS_DIR) -> list[Path]:
    """The shipped public-domain example photos."""
    return _image_files(assets_dir / "photos")


def _pretty_name(path: Path) -> str:
    return path.stem.replace("_", " ")


def _payload_path(payload: Any) -> str | None:
    """File path of an image input as the queue hands it over with ``preprocess=False``."""
    if payload is None:
        return None
    if isinstance(payload, (str, Path)):
        return str(payload)
    if isinstance(payload, dict):
        return payload.get("path")
    return getattr(payload, "path", None)


def _plain(number: float) -> str:
    """A limit as people write it: {:g} made the seed's 2147483647 "2.14748e+09"."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _user_error(message: str, title: str) -> gr.Error:
    """An error the person can fix (a setting, an upload): a toast, and no traceback in the server log.

    The toast renders HTML, and the message may quote what was sent (a file name, a menu value):
    escaped, a name like "<img src=…>.png" shows as written instead of fetching the image."""
    return gr.Error(html.escape(message, quote=False), title=title, print_exception=False)


def _markdown_text(text: str) -> str:
    """``text`` shown as written in a gr.Markdown (the status line): a file name's * _ [ ] ~ or
    backticks made emphasis, links or code there."""
    return "".join("\\" + ch if ch in "\\`*_[]<>~" else ch for ch in text)


def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _free_device_memory(device: str) -> None:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


class _StopFlags:
    """Stop flags per browser session: one per running request and one per request still waiting
    in the queue (reserved when the button is clicked), so Stop reaches both, and only that
    person's requests.  The reservations, in click order, also tell a waiting person how many
    runs are ahead of theirs (:meth:`places_ahead`)."""

    STALE_S = 3600.0  # a reservation whose request never started (e.g. refused by a full queue)
    SWEEP_S = 60.0  # every session's stale reservations go at most this often (a pass over all of them)
    # The page has one run at a time; more reservations are a script calling /reserve, whose
    # oldest ones go.
    MAX_RESERVED = 8
    # A waiting page asks for its place every WAITING_REFRESH_S; one that stopped asking this long
    # ago (closed: Gradio dropped its request; or a script's bare /reserve) is not counted as a run
    # ahead of others.  Generous, as a browser may slow a background tab's timer to once a minute.
    ASKED_S = 90.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # session -> its reservations (time made, stop flag, ticket), oldest first; tickets give the
        # click order across sessions.
        self._waiting: dict[str, list[tuple[float, threading.Event, int]]] = {}
        self._tickets = itertools.count()
        self._asked: dict[str, float] = {}  # session -> when it last reserved or asked for its place
        self._running: dict[str, set[threading.Event]] = {}
        self._swept = float("-inf")

    def _waiting_now(self, session: str) -> list[tuple[float, threading.Event, int]]:
        """The session's reservations, oldest first, without stale ones (call with the lock held)."""
        now = time.monotonic()
        waiting = [w for w in self._waiting.pop(session, []) if now - w[0] < self.STALE_S]
        if waiting:
            self._waiting[session] = waiting
        else:
            self._asked.pop(session, None)
        return waiting

    def reserve(self, session: str) -> None:
        with self._lock:
            # Every session's stale ones go, not just this one's: a session may never come back.
            if time.monotonic() - self._swept >= self.SWEEP_S:
                self._swept = time.monotonic()
                for other in list(self._waiting):
                    self._waiting_now(other)
            waiting = self._waiting.setdefault(session, [])
            waiting.append((time.monotonic(), threading.Event(), next(self._tickets)))
            del waiting[:-self.MAX_RESERVED]
            self._asked[session] = time.monotonic()

    def start(self, session: str) -> threading.Event:
        """The flag of the session's oldest waiting request (queue order), or a new one."""
        return self.take(session)[0]

    def take(self, session: str) -> tuple[threading.Event, bool]:
        """``start``, also saying whether the request had been reserved (the page's Stylize)."""
        with self._lock:
            waiting = self._waiting_now(session)
            reserved = bool(waiting)
            flag = waiting.pop(0)[1] if reserved else threading.Event()
            if not waiting:
                self._waiting.pop(session, None)
                self._asked.pop(session, None)
            self._running.setdefault(session, set()).add(flag)
            return flag, reserved

    def places_ahead(self, session: str) -> int | None:
        """How many requests are ahead of the session's oldest waiting one: those running and those
        reserved before it that still wait, by sessions that asked for their place lately (withdrawn
        ones end as soon as they reach the front, so they do not count).  None when the session has
        no request waiting, or it was withdrawn.  Asking keeps the session's own request counted.

        Requests sent to /stylize without /reserve (API clients) count only once they run."""
        with self._lock:
            mine = self._waiting_now(session)
            if not mine or mine[0][1].is_set():
                return None
            now = time.monotonic()
            self._asked[session] = now
            ticket = mine[0][2]
            earlier = sum(
                1
                for other, reservations in self._waiting.items()
                if now - self._asked.get(other, float("-inf")) < self.ASKED_S
                for made, flag, number in reservations
                if number < ticket and not flag.is_set() and now - made < self.STALE_S
            )
            return earlier + sum(len(flags) for flags in self._running.values())

    def stop(self, session: str) -> tuple[int, int]:
        """Sets the session's flags; returns how many (running, waiting) requests it reached."""
        with self._lock:
            running = list(self._running.get(session, ()))
            waiting = [f for _, f, _ in self._waiting.get(session, [])]
        for flag in running + waiting:
            flag.set()
        return len(running), len(waiting)

    def release(self, session: str) -> None:
        """Drop the session's reservations whose requests never started (e.g. a full queue refused
        them): the page calls this when its run is over, and it has one run at a time."""
        with self._lock:
            self._waiting.pop(session, None)
            self._asked.pop(session, None)

    def forget(self, session: str, flag: threading.Event) -> None:
        with self._lock:
            running = self._running.get(session)
            if running is not None:
                running.discard(flag)
                if not running:
                    del self._running[session]


class _Stylist:
    """Turns the page's inputs into an engine run, streaming previews and handling failures."""

    def __init__(self, device: str, limits: WebLimits, output_dir: Path, preview_every: int | None,
                 optimizers: list[str], concurrency: int = 1, input_folders: list[Path] | None = None,
                 threads: int | None = None):
        self.device = device
        self.threads = threads  # CPU threads per run (None: chosen as each run starts)
        # Where an image input may come from (Gradio's uploads, the presets); None: anywhere, for
        # callers in Python.  The app's inputs skip Gradio's preprocessing, so an API client can send
        # any path on the server's disk: without this check it got that image back as its "before".
        self.input_folders = None if input_folders is None else [Path(f).resolve() for f in input_folders]
        self.concurrency = concurrency  # runs at once: a request with fewer ahead is about to start
        # Held by each run's worker thread while it computes.  Gradio frees a run's queue slot when it
        # cancels it (a closed tab, an API cancel), but can close the generator only at its next yield,
        # and the worker ends its step after that: the next run's worker waits for it here, or two
        # runs computed at once beyond the concurrency asked for (on a GPU, out of memory).
        self._computing = threading.BoundedSemaphore(concurrency)
        self.limits = limits
        self.optimizers = list(optimizers)  # the page's menu, in its order
        self.output_dir = output_dir
        self.preview_every = preview_every
        self.stop_flags = _StopFlags()

    # -- input checking -------------------------------------------------------------------
    def _load(self, payload: Any, what: str) -> Image.Image:
        from artopt.style.images import ImageError, load_image

        path = _payload_path(payload)
        if path is None:
            raise _user_error(f"{what}: no file was received.", "Missing upload")
        if self.input_folders is not None and not self._is_input(path):
            # said the same way whether or not such a file exists: nothing to learn about the disk
            raise _user_error(f"{what}: no uploaded file was received. Upload it again.", "Missing upload")
        shown_name = (payload.get("orig_name") if isinstance(payload, dict) else None) or Path(path).name
        try:
            if Path(path).stat().st_size == 0:  # say plainly what happened rather than "not an image"
                raise _user_error(
                    f"{what}: {shown_name} is empty (0 bytes). Choose the file again, or another one.",
                    "Bad image",
                )
            return load_image(path, max_pixels=self.limits.max_input_pixels)
        except ImageError as err:
            # The loader names the server's temporary copy; the person knows their own file name.
            message = str(err).replace(str(path), shown_name)
            if "not an image file" in message:
                # An SVG or HEIC shows in the browser's upload box (or is "a photo" on the phone), so
                # "not an image" alone left the person puzzled: say what to send instead.
                message += f". {READABLE_FORMATS_HINT}"
            raise _user_error(f"{what}: {message}", "Bad image") from err
        except FileNotFoundError as err:  # e.g. a page left open past Gradio's sweep of old uploads
            raise _user_error(f"{what}: {shown_name} is no longer on the server (uploads are deleted after some "
                              "hours). Upload it again.", "Upload gone") from err
        except OSError as err:  # unreadable temp file, disk trouble
            raise _user_error(f"{what}: could not read the upload {shown_name} ({err.strerror or err}).",
                              "Bad image") from err

    def _is_input(self, path: Any) -> bool:
        """Whether ``path`` lies in one of the input folders (links followed)."""
        try:
            resolved = Path(str(path)).resolve()
        except (OSError, ValueError):  # e.g. a NUL byte in the path
            return False
        return any(resolved.is_relative_to(folder) for folder in self.input_folders)

    def _check_number(self, value: Any, name: str, low: float, high: float, integer: bool) -> float | int:
        if value is None or (isinstance(value, str) and not value.strip()):
            # A number box the person cleared arrives as None: "got None" meant nothing to them.
            raise _user_error(f"{name} is empty: enter a number from {_plain(low)} to {_plain(high)}.",
                              "Bad setting")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise _user_error(f"{name} must be a number, got {value!r}.", "Bad setting") from None
        if number != number or not low <= number <= high:  # NaN fails the first test
            raise _user_error(f"{name} must be between {_plain(low)} and {_plain(high)}, got {value!r}.",
                              "Bad setting")
        if integer and not number.is_integer():  # rounding 1.5 to 2 in silence ran another seed than typed
            raise _user_error(f"{name} must be a whole number, got {value!r}.", "Bad setting")
        return int(number) if integer else number

    # -- the run ---------------------------------------------------------------------------
    def _checked(self, content, style_payloads, style_weights, size, steps, strength, optimizer, keep_colors,
                 seed) -> tuple[Image.Image, list[Image.Image], Any]:
        """The page's inputs, checked and loaded: (content image, style images, StylizeConfig)."""
        from artopt.style.engine import StylizeConfig, content_size_problem, cpu_memory_problem
        from artopt.style.loss_nets import MIN_SIDE

        lim = self.limits
        size = self._check_number(size, "Output size", lim.min_size, lim.max_size, integer=True)
        steps = self._check_number(steps, "Quality (steps)", 1, lim.max_steps, integer=True)
        strength = self._check_number(strength, "Style strength", 0.01, 100.0, integer=False)
        seed = self._check_number(seed, "Seed", 0, 2**31 - 1, integer=True)
        if optimizer not in self.optimizers:  # the API offers what the page's menu does, no more
            raise _user_error(f"Unknown optimizer {optimizer!r}; choose one of {', '.join(self.optimizers)}.",
                              "Bad setting")

        if content is None:
            raise _user_error("Upload a content photo first.", "Missing photo")
        content_img = self._load(content, "Content photo")
        # The engine checks this too, but its advice may name a size above the page's maximum.
        problem = content_size_problem((content_img.height, content_img.width), size, MIN_SIDE, "the loss network",
                                       max_size=lim.max_size)
        if problem:
            raise _user_error(problem[0].upper() + problem[1:] + ".", "Photo too narrow")
        styles, weights = [], []
        for i, (payload, weight) in enumerate(zip(style_payloads, style_weights), start=1):
            if payload is None:
                continue
            weight = self._check_number(weight, f"Weight of style {i}", 0.0, 1.0e6, integer=False)
            if weight > 0:
                styles.append(self._load(payload, f"Style {i}"))
                weights.append(weight)
                self._check_style_side(styles[-1], f"Style {i}", content_img, size)
        if not styles:
            if any(payload is not None for payload in style_payloads):
                raise _user_error("Every style image has blend weight 0: raise at least one weight above 0.",
                                  "Missing style")
            raise _user_error("Add a style image first (upload one or click a preset).", "Missing style")
        base = StylizeConfig()
        if str(self.device).startswith("cpu"):  # past the server's RAM the kernel would kill it, and every run
            # (the styles too: each passes through the loss network at the output's scale)
            too_big, _ = cpu_memory_problem((content_img.height, content_img.width), size, "output size",
                                            style_hws=[(s.height, s.width) for s in styles],
                                            style_scale=base.style_scale)
            if too_big:
                raise _user_error(too_big[0].upper() + too_big[1:] + ".", "Output too large")

        config = replace(
            base,
            size=size,
            steps=steps,
            optimizer=optimizer.removesuffix(MULTISCALE_SUFFIX).removesuffix(FAST_SUFFIX),
            basis="multiscale" if optimizer.endswith(MULTISCALE_SUFFIX) else "pixels",
            adam_levels=FAST_ADAM_LEVELS if optimizer.endswith(FAST_SUFFIX) else 0,
            style_weight=base.style_weight * strength,
            style_weights=[w / sum(weights) for w in weights],
            keep_colors=_as_bool(keep_colors),
            seed=seed,
            device=self.device,
        )
        return content_img, styles, config

    def _check_style_side(self, style: Image.Image, label: str, content: Image.Image, size: int) -> None:
        """The engine refuses this too, mid-run, naming a style scale the page does not have and a
        style by its place among those in use: say it here, naming the slot."""
        from artopt.style.engine import StylizeConfig, pyramid_sizes, scale_sizes
        from artopt.style.loss_nets import build_loss_net
        from artopt.style.losses import style_long_side

        base = StylizeConfig()
        net = build_loss_net(base.loss_net, self.device)  # the page's (cached: built at start)
        coarsest = scale_sizes((content.height, content.width), pyramid_sizes(size, base.pyramid), net.min_size)[0]
        long_side = style_long_side(coarsest, net.min_size, base.style_scale)  # at the run's first scale
        short = round(min(style.size) * long_side / max(style.size))
        if short < net.min_input_side:
            raise _user_error(f"{label} is too elongated: at {long_side} px, the run's first scale, its shorter side "
                              f"would be {short} px, and {net.name} needs at least {net.min_input_side}. Use a less "
                              "elongated style image (or crop it).", "Style too elongated")

    def run(
        self,
        content: Any,
        style_payloads: list[Any],
        style_weights: list[Any],
        size: Any,
        steps: Any,
        strength: Any,
        optimizer: str,
        keep_colors: bool,
        seed: Any,
        request: gr.Request | None = None,
    ) -> Iterator[tuple]:
        """Generator behind the Stylize button: validates, runs, retries smaller on OOM."""
        session = _session(request)
        # Taken first, so this click's reservation is used up even when the checks below refuse it
        # (a leftover one would let a later Stop cancel the person's next run).
        stop_flag = self.stop_flags.start(session)
        notices: list[str] = []
        try:
            if stop_flag.is_set():  # Stop was clicked while this request waited in the queue
                yield (gr.skip(), gr.skip(), gr.skip(), "Stopped before it started (it was waiting in the queue).")
                return
            # The page's status line said how many runs were ahead; the first preview may be a while
            # off.  (Sent through the run's own stream, so it comes after the waiting texts and before
            # every later status.)  Yielded always: Gradio can close (cancel) a generator only once
            # it has yielded, and a run cancelled before its first preview went on to the end.
            yield (gr.skip(), gr.skip(), gr.skip(), STARTING_STATUS)
            content_img, styles, config = self._checked(content, style_payloads, style_weights, size, steps,
                                                        strength, optimizer, keep_colors, seed)
            while True:
                try:
                    yield from self._stream(content_img, styles, config, stop_flag, notices)
                    return
                except Exception as err:
                    if not _is_out_of_memory(err) or stop_flag.is_set():  # (no retry of a stopped run)
                        raise
                    _free_device_memory(self.device)
                    smaller = int(config.size * OOM_SHRINK) // 32 * 32
                    if smaller < self.limits.min_size:
                        raise _user_error(
                            f"Ran out of memory at {config.size} px on {self.device}. "
                            f"Choose a smaller output size (or fewer style images) and try again.",
                            "Out of memory",
                        ) from err
                    notice = f"Ran out of memory at {config.size} px on {self.device}; retrying at {smaller} px."
                    log.warning(notice)
                    gr.Warning(notice)
                    notices.append(f"⚠ {notice}")
                    config = replace(config, size=smaller)
        except Exception as exc:  # the page must show something useful, and the server go on
            # gr.Error is a ValueError; a plain one is the engine's message for unusable settings or inputs.
            if isinstance(exc, ValueError):
                err = exc if isinstance(exc, gr.Error) else _user_error(str(exc), "Cannot stylize")
                log.info("not stylized: %s", err.message)
            else:
                # The page gets no exception text (it may name server paths or internals), only a
                # reference to find the traceback in the server log.
                reference = uuid.uuid4().hex[:8]
                log.exception("stylization failed [%s]", reference)
                # The line above logged the traceback; Gradio's queue would print it a second time.
                err = gr.Error(f"Stylization failed because of an error on the server (reference {reference} "
                               "in its log). Try again; if it fails again, tell whoever runs this server.",
                               title="Error", print_exception=False)
            # The toast shows the error; the status line must not go on saying "Waiting for a free slot…".
            yield (gr.skip(), gr.skip(), gr.skip(), f"Not stylized: {_markdown_text(err.message)}")
            if err is exc:
                raise
            raise err from exc
        finally:
            self.stop_flags.forget(session, stop_flag)

    def _stream(self, content_img, styles, config, stop_flag, notices) -> Iterator[tuple]:
        """Run the engine in a worker thread; yield (preview, slider, file, status) as it goes."""
        from artopt.style.engine import resolve_optimizer, stylize
        from artopt.style.images import save_image, tensor_to_pil

        every = self.preview_every or max(1, config.steps // 20)
        events: queue.Queue = queue.Queue()
        done = object()

        def work() -> None:
            try:
                with self._computing:
                    result = stylize(
                        content_img,
                        styles,
                        config,
                        callback=events.put,
                        image_every=every,
                        should_stop=stop_flag.is_set,
                    )
                events.put((done, result))
            except BaseException as err:  # handed to the generator, which re-raises it
                events.put((done, err))

        if self.device == "cpu":  # the cores other processes leave free now (one process: torch's setting)
            from artopt.cpu import set_threads

            set_threads(self.threads, lambda text: log.info("%s", text))
        # Before the worker starts, which nothing would stop if this failed.
        # Made again if gone: a /tmp cleaner (or a person) removing it made every later run fail.
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # Images go to Gradio as files of this run, never as PIL images: Gradio caches a PIL image
        # under a hash of its bytes and rewrites that file each time it is sent, so an identical image
        # (this run's result after its last preview, or another visitor's same photo) truncated a file a
        # browser was still reading.  A file is copied into the cache only when it is not there yet.
        run_dir = Path(tempfile.mkdtemp(prefix="artopt-run-", dir=self.output_dir))
        worker = threading.Thread(target=work, name="artopt-stylize", daemon=True)
        started = time.perf_counter()
        worker.start()
        last_step = "the start, before the first step"
        stepped = False  # whether the engine reported a step
        finished = False
        previews = 0
        shown: torch.Tensor | None = None  # the image already on the page is not sent again
        said = started  # when the status line was last sent
        try:
            outcome: Any = done
            while outcome is done:
                # Take everything the worker has sent so far and show only the newest image:
                # a fast device must not be held back by a backlog of stale previews.  Nothing for a
                # while (the targets of a large run take seconds): the status line is said again below,
                # which also overwrites a "Waiting…" tick the page may get after the run's first status.
                try:
                    batch = [events.get(timeout=STATUS_EVERY_S)]
                except queue.Empty:
                    batch = []
                while True:
                    try:
                        batch.append(events.get_nowait())
                    except queue.Empty:
                        break
                newest_image = None
                for item in batch:
                    if isinstance(item, tuple) and item and item[0] is done:
                        outcome = item[1]
                        continue
                    total = max(1, item.total_steps)
                    stepped = True
                    last_step = f"step {item.step}/{total}"
                    if item.n_scales > 1:
                        height, width = item.size
                        last_step += f" at scale {item.scale_index + 1}/{item.n_scales} ({width}×{height} px)"
                    # The page's header names the loss network and "Done …" the optimizer: the rest
                    # of a first step's notice (e.g. a fallback at that step) is shown.
                    notice = str(item.notice or "")
                    if item.setup_notice and notice.startswith(item.setup_notice):
                        notice = notice[len(item.setup_notice):].removeprefix("; ")
                    if notice:
                        notices.append(notice)
                    if item.image is not None:
                        newest_image = item.image
                if outcome is not done:
                    continue
                where = last_step if stepped else "starting"
                working = self._status(f"Working: {where}, {time.perf_counter() - started:.1f} s", notices)
                if newest_image is not None and not _same_image(newest_image, shown):
                    shown = newest_image
                    previews += 1
                    preview_path = run_dir / f"preview-{previews}.webp"
                    tensor_to_pil(newest_image).save(preview_path)
                    yield str(preview_path), gr.skip(), gr.skip(), working
                    said = time.perf_counter()
                elif time.perf_counter() - said >= STATUS_EVERY_S:
                    # The step count between previews; also how soon Gradio can close a run whose page
                    # went away (it does so at a yield): with slow steps a preview can be minutes apart.
                    yield gr.skip(), gr.skip(), gr.skip(), working
                    said = time.perf_counter()
            finished = True
            worker.join()
            stopped_by_user = stop_flag.is_set()
            if isinstance(outcome, BaseException):
                raise outcome
            if stopped_by_user and not stepped:
                # The engine hands back the start (the photo itself): shown as this run's result, it
                # replaced the last run's on the page, and its download.
                yield (gr.skip(), gr.skip(), gr.skip(),
                       self._status("Stopped before the first step: the page keeps what it showed before.", notices))
                return

            result = tensor_to_pil(outcome)
            elapsed = time.perf_counter() - started
            # In the run's folder like the previews: Gradio keeps its own copy (named like this one,
            # for the download) and sweeps it; ours goes when the run ends.
            out_path = run_dir / f"artopt-{time.strftime('%Y%m%d-%H%M%S')}-seed{config.seed}.png"
            save_image(result, out_path)
            before_path = run_dir / "before.webp"
            content_img.resize(result.size, Image.Resampling.LANCZOS).save(before_path)
            verb = f"Stopped at {last_step}" if stopped_by_user else "Done"
            ran = resolve_optimizer(config.optimizer, config.size, config.pyramid)
            suffix = MULTISCALE_SUFFIX if config.basis == "multiscale" else FAST_SUFFIX if config.adam_levels else ""
            ran = OPTIMIZER_LABELS[ran + suffix]
            status = self._status(
                f"{verb}: {result.width}×{result.height} px in {elapsed:.1f} s on {self.device} with {ran}.",
                notices,
            )
            # The preview ends on the PNG even when it already shows this image: its download
            # button gave the last lossy WebP preview.
            yield str(out_path), (str(before_path), str(out_path)), str(out_path), status
        finally:
            if not finished:  # the page went away or the run was cancelled: end the worker too
                stop_flag.set()
            # Gradio has copied every file yielded so far: it asks for the next value only after that.
            shutil.rmtree(run_dir, ignore_errors=True)

    @staticmethod
    def _status(text: str, notices: list[str]) -> str:
        lines = [text] + list(dict.fromkeys(notices))
        return "\n\n".join(lines)

    def reserve(self, request: gr.Request | None = None) -> str:
        """Runs at click time, before the request joins the queue, so Stop can reach it there."""
        session = _session(request)
        self.stop_flags.reserve(session)
        return self._waiting_text(self.stop_flags.places_ahead(session))

    def _waiting_text(self, ahead: int | None) -> str:
        if ahead is None or ahead < self.concurrency:  # a slot is free, or about to be
            return WAITING_STATUS
        return WAITING_AHEAD_STATUS.format(ahead=ahead, s="" if ahead == 1 else "s")

    def waiting_status(self, request: gr.Request | None = None) -> tuple:
        """The page's timer, while its request waits: (status line, timer).  Once the request has
        started (its run says so), been withdrawn or refused, the line is left alone and the timer
        goes off."""
        ahead = self.stop_flags.places_ahead(_session(request))
        if ahead is None:
            return gr.skip(), gr.Timer(active=False)
        return self._waiting_text(ahead), gr.skip()

    def release(self, request: gr.Request | None = None) -> tuple:
        """Runs when the page's run is over, however it ended: Stylize on again, Stop off, the
        waiting line's timer off."""
        self.stop_flags.release(_session(request))
        return gr.Button(interactive=True), gr.Button(interactive=False), gr.Timer(active=False)

    def release_after_failure(self, status: str, request: gr.Request | None = None) -> tuple:
        """``release`` after a failed run; a request the queue refused never ran, so the status line
        would go on saying it is waiting."""
        busy = "Not stylized: the server is busy (its queue is full). Try again in a moment."
        waiting = isinstance(status, str) and status.startswith(WAITING_STATUS.removesuffix("…"))
        return (*self.release(request), busy if waiting else gr.skip())

    def stop(self, request: gr.Request | None = None):
        running, waiting = self.stop_flags.stop(_session(request))
        if running:
            return "Stopping after the current step…"
        if waiting:
            # Gradio hands the request over only when it reaches the front; it then ends at once.
            return WITHDRAWN_STATUS
        # The page's Stop is off when nothing runs; an API call gets a no-op, and the status line
        # keeps the last run's result ("Done …", "Stopped at …").
        return gr.skip()


def _same_image(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is not None and b is not None and a.shape == b.shape and torch.equal(a, b)


def _session(request: gr.Request | None) -> str:
    return request.session_hash if request is not None and request.session_hash else "anonymous"


def _device_description(device: str, threads: int | None = None) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"GPU ({torch.cuda.get_device_name(torch.device(device))})"
    if device == "mps":
        return "Apple GPU (mps)"
    from artopt.cpu import omp_num_threads_set, usable_cores

    if threads is None and not omp_num_threads_set():  # chosen per run from the cores left free
        cores = len(usable_cores())
        return f"CPU ({cores} core{'' if cores == 1 else 's'})"
    threads = threads or torch.get_num_threads()
    return f"CPU ({threads} thread{'' if threads == 1 else 's'})"


def _example_rows(photos: list[Path], styles: list[Path]) -> list[list[str]]:
    """Each example photo paired with a different preset."""
    if not photos or not styles:
        return []
    step = max(1, len(styles) // max(1, len(photos)))
    return [[str(photo), str(styles[(i * step) % len(styles)])] for i, photo in enumerate(photos)]


def build_app(
    *,
    device: str = "auto",
    limits: WebLimits | None = None,
    default_size: int | None = None,
    default_steps: int | None = None,
    preview_every: int | None = None,
    concurrency: int = 1,
    queue_size: int | None = 32,
    assets_dir: Path = ASSETS_DIR,
    output_dir: Path | None = None,
    threads: int | None = None,
) -> gr.Blocks:
    """The artopt page, with its queue set up (``concurrency`` runs at once, ``queue_size`` waiting).
    On a CPU each run uses ``threads`` threads (None: artopt.cpu.set_threads chooses when it starts).

    ``limits`` defaults to :class:`WebLimits` with the device's default maximum size.
    ``preview_every`` is the number of steps between live previews (None: about 20 per run).
    """
    from artopt.learned_optimizers.shipped import (neural_art_available, neural_art_default_scope,
                                                   neural_art_single_scale_from)
    from artopt.style.engine import StylizeConfig, min_coarse_to_fine_size, resolve_device
    from artopt.style.loss_nets import build_loss_net

    device = str(resolve_device(device))
    if limits is None:
        limits = WebLimits(max_size=default_max_size_for(device))
    base = StylizeConfig()
    loss_net_name = build_loss_net(base.loss_net, device).name  # loads (and caches) it now, not on first click
    if output_dir is None:
        output_dir = Path(tempfile.gettempdir()) / "artopt-web"
    output_dir.mkdir(parents=True, exist_ok=True)

    optimizers = ["adam-ms", "adam", "lbfgs"]
    if neural_art_available():
        optimizers[:0] = ["lstm", "lstm-fast"]
    labels = dict(OPTIMIZER_LABELS)
    scope = neural_art_default_scope()
    if scope == "always":
        default_optimizer = "lstm"
    elif scope == "coarse-to-fine":
        # The learned optimizer beat the tuned baselines on outputs made coarse-to-fine (and on
        # single-scale ones from the card's size), not on small ones.
        optimizers.insert(0, "auto")
        start = min(s for s in (min_coarse_to_fine_size(), neural_art_single_scale_from()) if s)
        labels["auto"] = f"auto: learned (LSTM) from {start} px, Adam below"
        default_optimizer = "auto"
    else:
        default_optimizer = "adam"
    from gradio.utils import get_upload_folder  # where Gradio keeps uploads and cached examples

    stylist = _Stylist(device, limits, output_dir, preview_every, optimizers, concurrency=concurrency,
                       input_folders=[Path(get_upload_folder()), assets_dir], threads=threads)
    size = default_size or default_size_for(device)
    size = min(max(size, limits.min_size), limits.max_size)
    steps = min(default_steps or base.steps, limits.max_steps)
    presets = preset_styles(assets_dir)
    photos = example_photos(assets_dir)

    with gr.Blocks(title="artopt: neural style transfer", analytics_enabled=False,
                   delete_cache=(CACHE_SWEEP_S, FILE_MAX_AGE_S)) as app:
        gr.Markdown(
            "# artopt — neural style transfer\n"
            "Upload a photo and a style (or click a preset), press **Stylize**, watch it form, "
            "then download the full-resolution PNG."
        )
        gr.Markdown(
            f"Running on **{_device_description(device, threads)}** · loss network **{loss_net_name}** · "
            f"output up to {limits.max_size} px",
            elem_id="device-info",
        )
        with gr.Row():
            with gr.Column(scale=1):
                content = gr.Image(
                    label="Content photo",
                    type="filepath",
                    sources=["upload", "webcam", "clipboard"],
                    elem_id="content-image",
                )
                style_images, style_weights, holders = [], [], []
                for i in range(1, N_STYLE_SLOTS + 1):
                    # Slots after the first sit in an accordion: blending is the less common case.
                    holder = gr.Group() if i == 1 else gr.Accordion(f"Blend in style {i}", open=False)
                    holders.append(holder)
                    with holder:
                        style_images.append(
                            gr.Image(
                                label=f"Style {i}",
                                type="filepath",
                                sources=["upload", "clipboard"],
                                elem_id=f"style-image-{i}",
                            )
                        )
                        style_weights.append(
                            gr.Slider(0, 1, value=1.0, step=0.05, label=f"Style {i} blend weight")
                        )
                preset_target = gr.Radio(
                    [f"Style {i}" for i in range(1, N_STYLE_SLOTS + 1)],
                    value="Style 1",
                    label="A clicked preset goes into",
                )
                gallery = gr.Gallery(
                    value=[(str(p), _pretty_name(p)) for p in presets],
                    label="Public-domain style presets (click one)",
                    columns=5,
                    height=None,  # as tall as its presets (with PAGE_CSS): no scrolling, no empty band
                    object_fit="cover",
                    allow_preview=False,
                    interactive=False,
                    buttons=[],  # a picker: nothing to download or share
                    elem_id="preset-gallery",
                )
            with gr.Column(scale=1):
                size_slider = gr.Slider(
                    limits.min_size, limits.max_size, value=size, step=32,
                    label="Output size (long side, px)",
                ) if limits.max_size > limits.min_size else gr.Number(  # a slider needs two ends
                    value=size, precision=0, interactive=False, label="Output size (long side, px)",
                )
                steps_slider = gr.Slider(
                    1, limits.max_steps, value=steps, step=1, label="Quality (optimizer steps)",
                    info="more steps: finer detail, longer wait",
                )
                strength = gr.Slider(
                    0.1, 10, value=1.0, step=0.1, label="Style strength (× the default style weight)",
                    info=("higher: more of the style, less of the photo; lower it if a pale or sparse style "
                          "washes the photo out"),
                )
                optimizer = gr.Dropdown(
                    [(labels[o], o) for o in optimizers],
                    value=default_optimizer,
                    label="Optimizer",
                    info=OPTIMIZER_INFO,
                )
                keep_colors = gr.Checkbox(value=False, label="Keep the photo's original colours")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed",
                                 info="the same seed and settings give the same image (on a CPU, as "
                                      "many free cores too: their number changes the sums' order a little)")
                with gr.Row():
                    run_button = gr.Button("Stylize", variant="primary", elem_id="stylize-button")
                    # On only while this page's run waits or runs; Stylize is off meanwhile.
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop-button", interactive=False)
                # No LaTeX: a file name with $$…$$ in it was set as maths in the line.
                status = gr.Markdown("Ready.", elem_id="run-status", latex_delimiters=[])
                # Refreshes the status line's place in the queue while this page's request waits.
                waiting_timer = gr.Timer(WAITING_REFRESH_S, active=False)
        with gr.Row():
            # One height for both: a small preview would otherwise shrink to its pixel size.
            # No "share" button: it works on Hugging Face Spaces only.
            preview = gr.Image(label="Live preview", interactive=False, elem_id="live-preview",
                               height=RESULT_HEIGHT, buttons=["download", "fullscreen"])
            comparison = gr.ImageSlider(
                label="Before / after", interactive=False, format="png", elem_id="before-after",
                height=RESULT_HEIGHT, buttons=["download", "fullscreen"],
            )
        download = gr.File(label="Full-resolution PNG", interactive=False, elem_id="download-file")

        rows = _example_rows(photos, presets)
        if rows:
            examples = gr.Examples(rows, inputs=[content, style_images[0]], label="Examples (public domain)",
                                   elem_id="examples")
            # An example is its photo and style alone: blend styles left in slots 2 and 3 (or a
            # zero weight on style 1) would make the run something else.
            examples.load_input_event.then(
                lambda: (None, None, 1.0), None, [style_images[1], style_images[2], style_weights[0]],
                queue=False, api_visibility="private",
            )

        def use_preset(target: str, evt: gr.SelectData):
            chosen = str(presets[evt.index])
            slots = [f"Style {i}" for i in range(1, N_STYLE_SLOTS + 1)]
            images = [chosen if target == slot else gr.skip() for slot in slots]
            # A preset sent to a blend slot opens its accordion, or nothing would seem to happen.
            opened = [gr.Accordion(open=True) if target == slot else gr.skip() for slot in slots[1:]]
            return images + opened

        gallery.select(use_preset, preset_target, style_images + holders[1:], queue=False, api_visibility="private")

        # Gradio makes an API parameter optional when its component starts with a value (the sliders,
        # the menu) or, with none, when the function's default is None: so a script may leave out the
        # blend slots.  The other defaults are never used (the page always sends its components).
        def stylize_event(
            content, style_1, weight_1=1.0, style_2=None, weight_2=1.0, style_3=None, weight_3=1.0,
            size=None, steps=None, strength=None, optimizer=None, keep_colors=False, seed=0,
            request: gr.Request = None,
        ):
            yield from stylist.run(
                content, [style_1, style_2, style_3], [weight_1, weight_2, weight_3],
                size, steps, strength, optimizer, keep_colors, seed,
                request=request,
            )

        def clicked(request: gr.Request):
            return stylist.reserve(request), gr.Button(interactive=False), gr.Button(interactive=True)

        paired = [c for pair in zip(style_images, style_weights) for c in pair]
        # The timer is not an output of /reserve, whose API result stays the status line alone.
        run_button.click(lambda: gr.Timer(active=True), None, waiting_timer, queue=False, api_visibility="private")
        run = run_button.click(clicked, None, [status, run_button, stop_button], api_name="reserve", queue=False).then(
            stylize_event,
            [content, *paired, size_slider, steps_slider, strength, optimizer, keep_colors, seed],
            [preview, comparison, download, status],
            api_name="stylize",
            # Uploads are checked by artopt's own loader, which gives clear messages for bad files.
            preprocess=False,
            # The status line says what the run is doing; Gradio's progress overlay would cover it.
            show_progress="hidden",
        )
        # However the run ends. Gradio's page does not follow .then() after an error, hence .failure().
        run.then(stylist.release, None, [run_button, stop_button, waiting_timer], queue=False,
                 api_visibility="private")
        run.failure(stylist.release_after_failure, status, [run_button, stop_button, waiting_timer, status],
                    queue=False, api_visibility="private")
        stop_button.click(stylist.stop, None, status, api_name="stop", queue=False)
        # Not queued: it must answer while this page's own request waits in the queue.
        waiting_timer.tick(stylist.waiting_status, None, [status, waiting_timer], queue=False,
                           show_progress="hidden", api_visibility="private")

    app.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    app.artopt_device = device  # for the CLI's start-up message
    app.artopt_assets_dir = assets_dir  # served to the page (presets), wherever the server was started
    return app


def launch(
    app: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    block: bool = True,
    quiet: bool = False,
):
    """Start serving ``app``; with ``block=False`` return at once (tests, notebooks)."""
    result = app.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=int(max_upload_mb * gr.FileSize.MB),  # bytes: "20.0mb" is not a unit Gradio parses
        prevent_thread_lock=True,
        show_error=True,
        quiet=True,  # Gradio's banner tells people to edit launch(); ours names the flag
        footer_links=["api", "settings"],
        # Gradio serves files under the working directory only; the presets live with the package.
        allowed_paths=[str(getattr(app, "artopt_assets_dir", ASSETS_DIR))],
        theme=gr.themes.Default(),  # fonts ship with Gradio: nothing is fetched from the web
        css=PAGE_CSS,
        js=PAGE_JS,
        ssr_mode=False,
        mcp_server=False,
    )
    if not quiet:
        print(f"artopt: serving on {app.local_url}", flush=True)
        if share and app.share_url:
            reach = f"public link {app.share_url}"
        elif host in ("127.0.0.1", "localhost", "::1"):
            reach = "only this machine can connect (--host 0.0.0.0 serves the network, --share makes a public link)"
        else:
            reach = f"listening on {host}"
        print(f"artopt: {reach}; Ctrl-C stops", flush=True)
    if block:
        app.block_thread()
    return result


def serve(
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    concurrency: int = 1,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_size: int | None = None,
    *,
    device: str = "auto",
    queue_size: int | None = 32,
    default_size: int | None = None,
    block: bool = True,
    threads: int | None = None,
) -> gr.Blocks:
    """Build and launch the web app (the ``artopt serve`` command).

    ``concurrency`` stylizations run at once (1: one per GPU); more requests wait in a queue of
    ``queue_size``.  ``max_size`` caps the output long side (default: 4096 on a CUDA GPU, 2048 otherwise).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}")
    if max_size is not None and not MIN_SIZE <= max_size <= MAX_SIZE:
        raise ValueError(f"max_size must be between {MIN_SIZE} and {MAX_SIZE}, got {max_size}")
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    if queue_size is not None and queue_size < 1:
        raise ValueError(f"queue size must be at least 1, got {queue_size}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    from artopt.style.engine import resolve_device

    device = str(resolve_device(device))
    app = build_app(
        device=device,
        limits=WebLimits(max_size=max_size or default_max_size_for(device)),
        default_size=default_size,
        concurrency=concurrency,
        queue_size=queue_size,
        threads=threads,
    )
    launch(app, host=host, port=port, share=share, max_upload_mb=max_upload_mb, block=block)
    return app
