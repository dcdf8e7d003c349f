"""The web app used as a client would: a real server on localhost, driven through gradio_client."""

from __future__ import annotations

import logging
import re
import socket
import time
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

import torch  # noqa: E402

from artopt import web  # noqa: E402
from artopt.style import engine

# max_input_pixels is low so that a small file can stand in for a decompression bomb.
TEST_LIMITS = web.WebLimits(min_size=48, max_size=256, max_steps=400, max_input_pixels=1_000_000)
STEPS = 3

pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    out = tmp_path_factory.mktemp("web-out")
    app = web.build_app(
        device="cpu",
        limits=TEST_LIMITS,
        default_size=64,
        default_steps=STEPS,
        preview_every=1,
        output_dir=out,
    )
    app.artopt_output_dir = out
    web.launch(app, port=free_port(), max_upload_mb=1.0, block=False, quiet=True)  # float, as the CLI passes it
    yield app
    app.close()


@pytest.fixture()
def client(server, tmp_path):
    return Client(server.local_url, verbose=False, download_files=str(tmp_path / "downloads"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A small content photo and style picture, cut from the shipped public-domain assets."""
    folder = tmp_path_factory.mktemp("images")
    photos, styles = web.example_photos(), web.preset_styles()
    assert photos and styles, "assets/photos and assets/styles must hold the shipped examples"
    content = folder / "content.png"
    style = folder / "style.jpg"
    Image.open(photos[0]).convert("RGB").resize((96, 72)).save(content)
    Image.open(styles[0]).convert("RGB").resize((80, 80)).save(style)
    return {"content": content, "style": style, "folder": folder}


def stylize_args(content, style, *, size=64, steps=STEPS, seed=0, optimizer="adam"):
    """Positional inputs of the /stylize endpoint, in page order."""
    return (
        handle_file(str(content)),
        handle_file(str(style)), 1.0,  # style 1 and its blend weight
        None, 1.0,
        None, 1.0,
        size, steps, 1.0, optimizer, False, seed,
    )


def test_a_script_may_name_only_the_photo_and_one_style(client, images):
    # The empty blend slots were required arguments of /stylize ("No value provided for style_2").
    *_, status = client.predict(content=handle_file(str(images["content"])), style_1=handle_file(str(images["style"])),
                                api_name="/stylize")
    assert status.startswith("Done"), status


def test_stylize_small_image_end_to_end(server, client, images):
    job = client.submit(*stylize_args(images["content"], images["style"]), api_name="/stylize")
    preview, comparison, png_path, status = job.result(timeout=180)
    assert "Done" in status, status
    # Previews streamed before the result: at least one intermediate output, then the final one.
    assert len(job.outputs()) >= 2
    result = Image.open(png_path)
    assert result.format == "PNG" and result.mode == "RGB"
    assert max(result.size) == 64
    assert abs(result.width / result.height - 96 / 72) < 0.1  # aspect ratio kept
    before, after = comparison
    assert Image.open(before).size == result.size == Image.open(after).size
    # It changed the photo, and the downloadable file is the image shown.
    content_small = Image.open(images["content"]).convert("RGB").resize(result.size)
    diff = sum(abs(a - b) for a, b in zip(result.tobytes(), content_small.tobytes()))
    assert diff / len(result.tobytes()) > 1.0
    assert Image.open(after).convert("RGB").tobytes() == result.convert("RGB").tobytes()
    assert re.fullmatch(r"artopt-\d{8}-\d{6}-seed0\.png", Path(png_path).name)  # the download's name
    # Gradio serves its own copies: nothing of the run stays in the server's folder (removed just
    # after Gradio took the last output, hence the wait).
    deadline = time.monotonic() + 10
    while any(server.artopt_output_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(server.artopt_output_dir.iterdir())


def test_the_menus_multiscale_adam_runs_adam_on_the_basis(client, images):
    """'Adam, multi-scale basis' runs Adam on the learned optimizer's basis, says so, and gives
    another image than Adam on the pixels."""
    results = {}
    for optimizer in ("adam-ms", "adam"):
        _, _, png_path, status = client.predict(*stylize_args(images["content"], images["style"], optimizer=optimizer),
                                                api_name="/stylize")
        assert f"with {web.OPTIMIZER_LABELS[optimizer]}." in status, status
        results[optimizer] = Image.open(png_path).convert("RGB").tobytes()
    assert results["adam-ms"] != results["adam"]


def test_the_menus_faster_learned_entry_leaves_the_finest_levels_to_adam(client, images, tmp_path):
    """'learned (LSTM), faster' runs the learned optimizer with Adam on the finest basis levels of the finer
    pyramid scales (adam_levels), says so in the status line, and 'learned (LSTM)' without them."""
    photo = str(web.ASSETS_DIR / "photos" / "chelsea.jpg")
    style = str(web.ASSETS_DIR / "styles" / "starry_night.jpg")
    stylist = web._Stylist("cpu", TEST_LIMITS, tmp_path, None, ["lstm", "lstm-fast", "adam"])
    for name, levels in (("lstm-fast", web.FAST_ADAM_LEVELS), ("lstm", 0), ("adam", 0)):
        config = stylist._checked(photo, [style, None, None], [1.0] * 3, 96, 7, 1.0, name, False, 0)[2]
        assert (config.optimizer, config.adam_levels, config.basis) == (name.removesuffix("-fast"), levels, "pixels")
    _, _, _, status = client.predict(*stylize_args(images["content"], images["style"], optimizer="lstm-fast"),
                                     api_name="/stylize")
    assert f"with {web.OPTIMIZER_LABELS['lstm-fast']}." in status, status


def test_an_image_already_on_the_page_is_not_sent_again(client, images):
    """Gradio caches a sent image under a hash of its bytes and rewrites that file each time it is
    sent. The run's last preview is the result, and sending it again as the final preview
    truncated the file while the browser was still loading it: a broken live preview. The preview
    ends on the result's PNG (other bytes, so another file), which its download button gives: it
    gave the last lossy WebP preview."""
    job = client.submit(*stylize_args(images["content"], images["style"]), api_name="/stylize")
    *_, png_path, status = job.result(timeout=180)
    assert "Done" in status, status
    sent = [out[0] for out in job.outputs() if isinstance(out[0], str)]
    # at most one preview per step (preview_every=1; one the page would get late is skipped), then the result.
    # (Not "at least one": on a loaded machine the page's thread may first run when all 3 steps are done.)
    assert len(sent) - 1 <= STEPS and sent, sent
    cached_as = [Path(path).parent.name for path in sent]  # the folder is the hash of the bytes
    assert len(set(cached_as)) == len(cached_as), cached_as
    assert [Path(path).suffix for path in sent] == [".webp"] * (len(sent) - 1) + [".png"]
    assert Image.open(sent[-1]).tobytes() == Image.open(png_path).tobytes()


@pytest.mark.parametrize(
    "payload, expected",
    [
        (b"", "Content photo: upload.png is empty (0 bytes)"),
        (b"this is not an image at all", "Content photo: upload.png: not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "Content photo: upload.png"),  # a PNG header, then garbage
    ],
    ids=["zero-bytes", "text", "truncated-png"],
)
def test_bad_upload_gives_clear_error_and_server_keeps_serving(client, images, tmp_path, payload, expected):
    bad = tmp_path / "upload.png"
    bad.write_bytes(payload)
    with pytest.raises(gradio_client.exceptions.AppError) as caught:
        client.predict(*stylize_args(bad, images["style"]), api_name="/stylize")
    message = str(caught.value)
    assert expected in message, message
    assert "Traceback" not in message
    # The same server still stylizes afterwards.
    *_, status = client.predict(*stylize_args(images["content"], images["style"], steps=1), api_name="/stylize")
    assert "Done" in status


def test_tiny_image_is_refused_clearly(client, images, tmp_path):
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (4, 4), "red").save(tiny)
    with pytest.raises(gradio_client.exceptions.AppError, match="Style 1"):
        client.predict(*stylize_args(images["content"], tiny), api_name="/stylize")


def test_too_many_pixels_is_refused_as_a_possible_bomb(client, images, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("RGB", (1500, 1000), "white").save(bomb)  # a few kB on disk, 1.5 megapixels decoded
    with pytest.raises(gradio_client.exceptions.AppError, match="Content photo: bomb.png: 1500x1000 is too large"):
        client.predict(*stylize_args(bomb, images["style"]), api_name="/stylize")


def test_missing_style_and_out_of_range_settings_are_refused(client, images):
    args = list(stylize_args(images["content"], images["style"]))
    args[1] = None
    with pytest.raises(gradio_client.exceptions.AppError, match="Add a style image first"):
        client.predict(*args, api_name="/stylize")
    args = list(stylize_args(images["content"], images["style"]))
    args[2] = 0.0  # a style is there, but its blend weight is 0: say that, not "add a style"
    with pytest.raises(gradio_client.exceptions.AppError, match="blend weight 0"):
        client.predict(*args, api_name="/stylize")
    with pytest.raises(gradio_client.exceptions.AppError, match="Output size must be between 48 and 256") as info:
        client.predict(*stylize_args(images["content"], images["style"], size=5000), api_name="/stylize")
    assert info.value.title == "Bad setting"  # the toast's title, not Gradio's default "Error"
    with pytest.raises(gradio_client.exceptions.AppError, match="Unknown optimizer") as info:
        client.predict(*stylize_args(images["content"], images["style"], optimizer="sgd!"), api_name="/stylize")
    assert info.value.title == "Bad setting"


def test_upload_over_the_size_limit_is_refused(client, images, tmp_path):
    big = tmp_path / "big.bmp"  # uncompressed, so it is larger than the 1 MB limit of the fixture
    Image.new("RGB", (800, 600), "blue").save(big)
    assert big.stat().st_size > 1_000_000
    with pytest.raises(Exception, match="(?i)size|large"):
        client.predict(*stylize_args(big, images["style"]), api_name="/stylize")


def test_four_concurrent_requests_all_complete(server, images, tmp_path):
    # Four identical requests: identical images (the same "before" photo, the same results).  Sent to
    # Gradio as PIL images they were rewritten in its cache on every send, cutting off another
    # client's download mid-way; as files they are copied once.
    results: dict[int, tuple] = {}
    errors: list[BaseException] = []

    def one(seed: int) -> None:
        try:
            c = Client(server.local_url, verbose=False, download_files=str(tmp_path / f"c{seed}"))
            results[seed] = c.predict(
                *stylize_args(images["content"], images["style"], steps=3), api_name="/stylize"
            )
        except BaseException as err:  # reported below, with the thread's failure
            errors.append(err)

    threads = [threading.Thread(target=one, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert sorted(results) == [0, 1, 2, 3]
    for _, _, png_path, status in results.values():
        assert "Done" in status
        assert max(Image.open(png_path).size) == 64


def test_stop_ends_the_run_and_keeps_the_image(client, images):
    job = client.submit(*stylize_args(images["content"], images["style"], steps=400), api_name="/stylize")
    deadline = 120
    start = time.monotonic()
    while len(job.outputs()) < 1 and time.monotonic() - start < deadline:
        time.sleep(0.05)
    assert job.outputs(), "no preview arrived"
    assert "Stopping" in client.predict(api_name="/stop")
    preview, comparison, png_path, status = job.result(timeout=120)
    assert status.startswith("Stopped at step"), status
    assert max(Image.open(png_path).size) == 64


def test_stop_reaches_a_request_still_waiting_in_the_queue(server, images, tmp_path):
    # One run at a time (the default): `busy` holds the slot while `waiting` sits in the queue.
    busy = Client(server.local_url, verbose=False, download_files=str(tmp_path / "busy"))
    waiting = Client(server.local_url, verbose=False, download_files=str(tmp_path / "waiting"))
    first = busy.submit(*stylize_args(images["content"], images["style"], steps=400), api_name="/stylize")
    start = time.monotonic()
    while not first.outputs() and time.monotonic() - start < 120:
        time.sleep(0.05)
    assert first.outputs(), "the first run never started"
    assert "Waiting" in waiting.predict(api_name="/reserve")  # what the page's button does first
    second = waiting.submit(*stylize_args(images["content"], images["style"], steps=400), api_name="/stylize")
    time.sleep(0.5)
    assert waiting.predict(api_name="/stop") == web.WITHDRAWN_STATUS  # it never started: not "Stopping"
    assert not first.done()  # Stop is per person: the busy client's run goes on
    assert "Stopping" in busy.predict(api_name="/stop")
    assert first.result(timeout=120)[3].startswith("Stopped at step")
    *_, status = second.result(timeout=120)
    assert status.startswith("Stopped before it started"), status


def test_a_refused_request_leaves_nothing_for_stop_to_cancel(client, images):
    # The page reserves a stop flag at click time; a request its checks refuse must use it up too,
    # or a later Stop would cancel the person's next run before it starts.
    assert "Waiting" in client.predict(api_name="/reserve")
    args = list(stylize_args(images["content"], images["style"]))
    args[9] = 0.0  # style strength: refused
    with pytest.raises(Exception, match="Style strength"):
        client.predict(*args, api_name="/stylize")
    # Nothing to stop: the status line is left as it was (a no-op update).
    assert client.predict(api_name="/stop") == {"__type__": "update"}
    assert "Waiting" in client.predict(api_name="/reserve")
    job = client.submit(*stylize_args(images["content"], images["style"]), api_name="/stylize")
    *_, status = job.result(timeout=180)
    assert status.startswith("Done"), status
    # The page's waiting line gives way as soon as the run starts, before its first preview.
    assert job.outputs()[0][3] == web.STARTING_STATUS


def test_the_pages_release_drops_a_reservation_whose_request_never_ran():
    # A full queue refuses the request after the click reserved its stop flag; the page's release
    # (run when its run is over, however it ended) must drop it, or a later Stop would cancel the
    # person's next run before it starts.
    flags = web._StopFlags()
    flags.reserve("page")
    flags.release("page")
    assert flags.stop("page") == (0, 0)
    assert not flags.start("page").is_set()


def test_a_reservation_goes_stale_even_if_its_session_never_comes_back():
    # /reserve is a public endpoint: a script calling it from many sessions filled memory, since
    # stale reservations were swept only when the same session reserved again.
    flags = web._StopFlags()
    flags.reserve("gone")
    flags.STALE_S = flags.SWEEP_S = 0.0  # every reservation made so far is now stale; sweep now
    flags.reserve("other")
    assert flags.stop("gone") == (0, 0)
    assert flags.stop("other") == (0, 1)


def test_reservations_of_one_session_are_capped():
    flags = web._StopFlags()
    for _ in range(100):
        flags.reserve("script")
    assert flags.stop("script") == (0, web._StopFlags.MAX_RESERVED)


def _stylist(tmp_path) -> web._Stylist:
    return web._Stylist("cpu", TEST_LIMITS, tmp_path, None, ["adam", "lbfgs"])


def _page(session: str):
    """A stand-in for the gr.Request of one browser page."""
    return SimpleNamespace(session_hash=session)


def test_a_waiting_request_is_told_how_many_runs_are_ahead(tmp_path):
    stylist = _stylist(tmp_path)  # one run at a time, as `artopt serve` runs by default
    flags = stylist.stop_flags
    assert stylist.reserve(_page("a")) == web.WAITING_STATUS  # nothing ahead: it is about to start
    first = flags.start("a")
    assert stylist.reserve(_page("b")) == "Waiting for a free slot: 1 run ahead of yours…"
    assert stylist.reserve(_page("c")) == "Waiting for a free slot: 2 runs ahead of yours…"
    assert stylist.reserve(_page("d")) == "Waiting for a free slot: 3 runs ahead of yours…"
    assert [flags.places_ahead(s) for s in "abcd"] == [None, 1, 2, 3]  # "a" runs: it waits for nothing

    # b withdraws (Stop while waiting): it ends at once when it reaches the front, so it does not count.
    assert stylist.stop(_page("b")) == web.WITHDRAWN_STATUS
    status, timer = stylist.waiting_status(_page("b"))  # b's own line keeps saying it was withdrawn
    assert status == gr.skip() and timer.active is False
    status, timer = stylist.waiting_status(_page("d"))
    assert status == "Waiting for a free slot: 2 runs ahead of yours…" and timer == gr.skip()

    # The run ahead ends: everyone moves up (the withdrawn b starts next, only to end at once).
    flags.forget("a", first)
    assert stylist.waiting_status(_page("c"))[0] == web.WAITING_STATUS
    assert stylist.waiting_status(_page("d"))[0] == "Waiting for a free slot: 1 run ahead of yours…"
    withdrawn = flags.start("b")
    assert withdrawn.is_set()
    flags.forget("b", withdrawn)
    assert stylist.waiting_status(_page("d"))[0] == "Waiting for a free slot: 1 run ahead of yours…"

    # c's run starts: its own line is left to the run, and its timer stops.
    running, reserved = flags.take("c")
    assert reserved and not running.is_set()
    status, timer = stylist.waiting_status(_page("c"))
    assert status == gr.skip() and timer.active is False
    assert stylist.waiting_status(_page("d"))[0] == "Waiting for a free slot: 1 run ahead of yours…"

    # An API client's request that never reserved counts once it runs.
    flags.start("api")
    assert flags.places_ahead("d") == 2


def test_a_page_that_stopped_asking_for_its_place_is_not_counted_ahead(monkeypatch):
    # A page closed while it waits: Gradio drops its request, but its reservation stays (for an hour).
    # (a clock of the test's own: with real sleeps a loaded machine's pauses between calls took 0.2 s)
    now = [1000.0]
    monkeypatch.setattr(web.time, "monotonic", lambda: now[0])
    flags = web._StopFlags()
    monkeypatch.setattr(flags, "ASKED_S", 0.2)
    flags.reserve("closed")
    flags.reserve("open")
    assert flags.places_ahead("open") == 1
    now[0] += 0.3
    assert flags.places_ahead("open") == 0  # "closed" has not asked for its place since
    assert flags.places_ahead("closed") == 0  # it asks again (a slow background tab, say) ...
    assert flags.places_ahead("open") == 1  # ... and counts again


def test_with_two_runs_at_once_a_request_with_one_ahead_is_not_told_to_wait_for_it(tmp_path):
    stylist = web._Stylist("cpu", TEST_LIMITS, tmp_path, None, ["adam"], concurrency=2)
    stylist.stop_flags.start("a")
    assert stylist.reserve(_page("b")) == web.WAITING_STATUS
    stylist.stop_flags.start("b")
    assert stylist.reserve(_page("c")) == "Waiting for a free slot: 2 runs ahead of yours…"


def test_a_refused_request_after_a_place_in_the_queue_says_the_queue_is_full(tmp_path):
    stylist = _stylist(tmp_path)
    stylist.stop_flags.start("other")
    status = stylist.reserve(_page("page"))
    assert "1 run ahead" in status
    *buttons, timer, shown = stylist.release_after_failure(status, _page("page"))
    assert "queue is full" in shown and timer.active is False
    # A run that started and then failed is not "queue full".
    assert stylist.release_after_failure(web.STARTING_STATUS, _page("page"))[-1] == gr.skip()


def test_stop_says_a_request_still_waiting_is_withdrawn_not_stopping(tmp_path):
    stylist = _stylist(tmp_path)
    stylist.reserve()  # clicked; the request waits behind someone else's run
    assert stylist.stop() == web.WITHDRAWN_STATUS
    flag = stylist.stop_flags.start("anonymous")  # it reaches the front: it ends before it starts
    assert flag.is_set()
    stylist.stop_flags.forget("anonymous", flag)
    running = stylist.stop_flags.start("anonymous")
    assert stylist.stop().startswith("Stopping after the current step") and running.is_set()


@pytest.mark.parametrize("failure", ["bad setting", "engine refuses", "bug"])
def test_only_an_unexpected_failure_logs_a_traceback_and_only_once(tmp_path, monkeypatch, caplog, failure):
    """Gradio's queue prints the traceback of every error unless print_exception is False: a
    person's mistake needs one log line, and a bug's traceback is logged by us already."""
    stylist = _stylist(tmp_path)
    size = 5000 if failure == "bad setting" else 64
    if failure != "bad setting":
        exc = ValueError("content and style differ in size") if failure == "engine refuses" else KeyError("x")
        monkeypatch.setattr(stylist, "_checked", lambda *args: (_ for _ in ()).throw(exc))
    caplog.set_level(logging.INFO, logger=web.log.name)
    with pytest.raises(gr.Error) as caught:
        list(stylist.run(None, [None] * 3, [1.0] * 3, size, STEPS, 1.0, "adam", False, 0))
    assert caught.value.print_exception is False
    records = [r for r in caplog.records if r.name == web.log.name]
    assert len(records) == 1
    assert (records[0].exc_info is not None) == (failure == "bug")


def test_out_of_memory_retries_smaller_and_says_so(client, images, monkeypatch):
    import artopt.style.engine as engine

    real = engine.stylize
    sizes = []

    def cramped(content, styles, config, **kwargs):
        sizes.append(config.size)
        if config.size > 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(content, styles, config, **kwargs)

    monkeypatch.setattr(engine, "stylize", cramped)
    *_, png_path, status = client.predict(
        *stylize_args(images["content"], images["style"], size=128, steps=1), api_name="/stylize"
    )
    assert sizes == [128, 96, 64]
    assert "retrying at 96 px" in status and "retrying at 64 px" in status
    assert max(Image.open(png_path).size) == 64

    sizes.clear()
    monkeypatch.setattr(engine, "stylize", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(gradio_client.exceptions.AppError, match="smaller output size"):
        client.predict(*stylize_args(images["content"], images["style"], size=64, steps=1), api_name="/stylize")


def test_gradios_cache_is_emptied_like_the_results(server):
    # Uploaded photos (and previews) stayed in Gradio's cache for as long as the server ran.
    assert server.delete_cache == (3600, 6 * 3600)


def test_serve_refuses_bad_settings():
    with pytest.raises(ValueError, match="concurrency"):
        web.serve(concurrency=0, block=False)
    with pytest.raises(ValueError, match="max_size"):
        web.serve(max_size=10_000, block=False)
    with pytest.raises(ValueError, match="max_upload_mb"):
        web.serve(max_upload_mb=0, block=False)
    with pytest.raises(ValueError, match="port must be between 1 and 65535"):
        web.serve(port=99_999, block=False)
    with pytest.raises(ValueError, match="queue size"):
        web.serve(queue_size=-5, block=False)
    with pytest.raises(ValueError, match="device must be one of"):
        web.serve(device="foo", block=False)


def test_serve_command_defaults_match_the_library():
    from artopt.cli import _build_parser

    args = _build_parser().parse_args(["serve"])
    assert args.max_upload_mb == web.DEFAULT_MAX_UPLOAD_MB


@pytest.mark.parametrize("scope, default", [("coarse-to-fine", "auto"), ("always", "lstm"), (None, "adam")])
def test_optimizer_menu_follows_the_neural_art_card(monkeypatch, scope, default, tmp_path):
    """auto is offered, and chosen, only where the card says the learned optimizer won."""
    import gradio as gr

    from artopt.learned_optimizers import shipped

    monkeypatch.setattr(shipped, "neural_art_default_scope", lambda: scope)
    monkeypatch.setattr(shipped, "neural_art_single_scale_from", lambda: None)
    app = web.build_app(device="cpu", output_dir=tmp_path, limits=TEST_LIMITS, default_size=64, default_steps=STEPS)
    menus = [b for b in app.blocks.values() if isinstance(b, gr.Dropdown)
             and {"adam", "lbfgs"} <= {value for _, value in b.choices}]
    assert len(menus) == 1
    values = [value for _, value in menus[0].choices]
    assert menus[0].value == default and ("auto" in values) == (scope == "coarse-to-fine")
    if scope == "coarse-to-fine":
        assert "from 384 px" in dict((v, k) for k, v in menus[0].choices)["auto"]
    # The API takes the menu's optimizers, no others (it ran "auto" where the menu had no such entry).
    stylize = next(f.fn for f in app.fns.values() if f.api_name == "stylize")
    for name in [*web.OPTIMIZER_LABELS, "sgd"]:
        with pytest.raises(gr.Error) as caught:
            list(stylize(None, None, 1.0, None, 1.0, None, 1.0, 64, STEPS, 1.0, name, False, 0, request=None))
        if name in values:
            assert caught.value.message == "Upload a content photo first."
        else:
            assert caught.value.message == f"Unknown optimizer {name!r}; choose one of {', '.join(values)}."


def test_auto_label_names_the_cards_single_scale_size(monkeypatch, tmp_path):
    import gradio as gr

    from artopt.learned_optimizers import shipped

    monkeypatch.setattr(shipped, "neural_art_default_scope", lambda: "coarse-to-fine")
    monkeypatch.setattr(shipped, "neural_art_single_scale_from", lambda: 256)
    app = web.build_app(device="cpu", output_dir=tmp_path, limits=TEST_LIMITS, default_size=64, default_steps=STEPS)
    menu = next(b for b in app.blocks.values() if isinstance(b, gr.Dropdown)
                and {"adam", "lbfgs"} <= {value for _, value in b.choices})
    assert "from 256 px" in dict((v, k) for k, v in menu.choices)["auto"]


def _error_of(stylist, content, **settings) -> str:
    style = str(web.ASSETS_DIR / "styles" / "starry_night.jpg")
    args = {"size": 64, "keep_colors": False, **settings}
    with pytest.raises(gr.Error) as caught:
        list(stylist.run(content, [style, None, None], [1.0] * 3, args["size"], STEPS, 1.0, "adam",
                         args["keep_colors"], 0))
    return caught.value.message


def test_the_memory_check_counts_the_style_images(tmp_path, monkeypatch):
    # The page checked the photo's pixels alone, the CLI the style's too: a machine with just enough
    # memory for the photo was let run out of it.
    from artopt.style import engine

    photo = Image.open(web.ASSETS_DIR / "photos" / "chelsea.jpg")
    short, long = sorted(photo.size)
    content_only = engine.CPU_BASE_BYTES + engine.CPU_BYTES_PER_PIXEL * 64 * max(1, round(64 * short / long))
    monkeypatch.setattr(engine, "system_memory", lambda: (content_only + 100, None))
    message = _error_of(_stylist(tmp_path), str(web.ASSETS_DIR / "photos" / "chelsea.jpg"))
    assert message.startswith("At 64 px a CPU run needs about"), message


def test_a_too_narrow_photo_gets_advice_the_page_can_follow(tmp_path):
    # 25x its height: at least 800 px would do, but this page stops at 256 px
    strip = tmp_path / "strip.png"
    Image.new("RGB", (1000, 40), (90, 120, 150)).save(strip)
    message = _error_of(_stylist(tmp_path), str(strip), size=256)
    assert "crop the photo" in message and "even at 256 px" in message and "800" not in message


def test_an_upload_gone_from_the_server_asks_for_it_again(tmp_path):
    message = _error_of(_stylist(tmp_path), str(tmp_path / "swept.png"))
    assert message == "Content photo: swept.png is no longer on the server (uploads are deleted after some hours). " \
                      "Upload it again."


@pytest.mark.parametrize("value, expected", [("false", False), ("False", False), ("0", False), ("true", True),
                                             (True, True), (False, False), (None, False)])
def test_keep_colors_sent_as_text_through_the_api_means_what_it_says(tmp_path, value, expected):
    photo = str(web.ASSETS_DIR / "photos" / "chelsea.jpg")
    style = str(web.ASSETS_DIR / "styles" / "starry_night.jpg")
    config = _stylist(tmp_path)._checked(photo, [style, None, None], [1.0] * 3, 64, STEPS, 1.0, "adam", value, 0)[2]
    assert config.keep_colors is expected


@pytest.mark.parametrize("seed, expected", [
    (-1, "Seed must be between 0 and 2147483647, got -1."),  # was "… and 2.14748e+09"
    (None, "Seed is empty: enter a number from 0 to 2147483647."),  # a cleared box; was "got None"
    (1.5, "Seed must be a whole number, got 1.5."),  # was run as seed 2 in silence
])
def test_a_refused_setting_names_its_limits_plainly(tmp_path, seed, expected):
    photo = str(web.ASSETS_DIR / "photos" / "chelsea.jpg")
    style = str(web.ASSETS_DIR / "styles" / "starry_night.jpg")
    with pytest.raises(gr.Error) as caught:
        list(_stylist(tmp_path).run(photo, [style, None, None], [1.0] * 3, 64, STEPS, 1.0, "adam", False, seed))
    assert caught.value.message == expected


def test_an_svg_upload_is_told_what_to_send_instead(tmp_path):
    # The browser shows an SVG in the upload box, so "not an image file" alone puzzled people.
    drawing = tmp_path / "logo.svg"
    drawing.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="90" height="90"/>')
    message = _error_of(_stylist(tmp_path), str(drawing))
    assert message.startswith("Content photo: logo.svg: not an image file") and "SVG" in message and "PNG" in message


def test_a_file_name_shows_as_written_in_the_toast_and_the_status_line(tmp_path):
    # The toast renders HTML and the status line Markdown: this name fetched an image and made a link.
    name = "<img src=x>[a](b)_*.png"
    (tmp_path / name).write_bytes(b"")
    style = str(web.ASSETS_DIR / "styles" / "starry_night.jpg")
    outputs = []
    with pytest.raises(gr.Error) as caught:
        for out in _stylist(tmp_path).run(str(tmp_path / name), [style, None, None], [1.0] * 3, 64, STEPS, 1.0,
                                          "adam", False, 0):
            outputs.append(out)
    assert caught.value.message.startswith("Content photo: &lt;img src=x&gt;[a](b)_*.png is empty (0 bytes).")
    assert outputs[-1][-1].startswith(r"Not stylized: Content photo: &lt;img src=x&gt;\[a\](b)\_\*.png is empty")


def test_the_status_line_sets_no_maths(tmp_path):
    # a file named "sum $$x^2$$.png" was set as a formula in the status line
    app = web.build_app(device="cpu", output_dir=tmp_path, limits=TEST_LIMITS, default_size=64, default_steps=STEPS)
    status = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "run-status")
    assert status.latex_delimiters == []


def test_an_unexpected_failure_shows_a_reference_not_the_exception(tmp_path, monkeypatch, caplog):
    # Exception text may name server paths and internals; the log has it, the page a reference to it.
    stylist = _stylist(tmp_path)
    leaky = FileNotFoundError(2, "No such file or directory", "/srv/secret/artopt-run-x")
    monkeypatch.setattr(stylist, "_checked", lambda *args: (_ for _ in ()).throw(leaky))
    caplog.set_level(logging.INFO, logger=web.log.name)
    with pytest.raises(gr.Error) as caught:
        list(stylist.run(None, [None] * 3, [1.0] * 3, 64, STEPS, 1.0, "adam", False, 0))
    message = caught.value.message
    assert "/srv/secret" not in message and "FileNotFoundError" not in message
    reference = re.search(r"reference (\w+)", message).group(1)
    assert any(reference in r.getMessage() and r.exc_info for r in caplog.records if r.name == web.log.name)


def test_a_run_makes_its_output_folder_again_if_it_was_removed(tmp_path):
    # A /tmp cleaner removing the output folder made every later run fail until a restart.
    import shutil

    out = tmp_path / "artopt-web"
    stylist = web._Stylist("cpu", TEST_LIMITS, out, None, ["adam"])
    photo = str(web.ASSETS_DIR / "photos" / "chelsea.jpg")
    style = str(web.ASSETS_DIR / "styles" / "starry_night.jpg")
    for _ in range(2):
        shutil.rmtree(out, ignore_errors=True)
        *_, (_, _, _, status) = stylist.run(photo, [style, None, None], [1.0] * 3, 64, 1, 1.0, "adam", False, 0)
        assert status.startswith("Done"), status


def test_a_stop_before_the_first_step_keeps_the_last_result_on_the_page(tmp_path):
    # Before: the engine's start image (the photo itself) came back as this run's result and replaced
    # the last run's on the page, and its download.
    stylist = _stylist(tmp_path)
    photo = str(web.ASSETS_DIR / "photos" / "chelsea.jpg")
    style = str(web.ASSETS_DIR / "styles" / "starry_night.jpg")
    args = (photo, [style, None, None], [1.0] * 3, 64, 2, 1.0, "adam", False, 0, _page("p"))
    *_, (image, _, download, status) = stylist.run(*args)
    assert status.startswith("Done") and isinstance(download, str), status
    stylist.reserve(_page("p"))
    run = stylist.run(*args)
    assert next(run)[3] == web.STARTING_STATUS  # the run has taken its reservation; Stop reaches it now
    stylist.stop(_page("p"))
    rest = list(run)
    assert all(out[i] == gr.skip() for out in rest for i in range(3)), rest
    assert rest[-1][3].startswith("Stopped before the first step: the page keeps what it showed before")


def test_a_cancelled_runs_worker_ends_before_the_next_run_computes(tmp_path, monkeypatch):
    # Gradio frees a cancelled run's slot at once but closes its generator only at the next yield, and
    # the worker ends its step after that: the next run computed beside it (two runs at concurrency 1).
    from artopt.style import engine

    real, log = engine.stylize, []

    def slow(*args, callback=None, **kwargs):
        def paced(info):
            time.sleep(0.3)  # a slow step
            callback(info)
        log.append(("start", time.monotonic()))
        try:
            return real(*args, callback=paced, **kwargs)
        finally:
            log.append(("end", time.monotonic()))

    monkeypatch.setattr(engine, "stylize", slow)
    stylist = _stylist(tmp_path)
    photo = str(web.ASSETS_DIR / "photos" / "chelsea.jpg")
    style = str(web.ASSETS_DIR / "styles" / "starry_night.jpg")
    first = stylist.run(photo, [style, None, None], [1.0] * 3, 64, 50, 1.0, "adam", False, 0, _page("a"))
    next(first)  # "Working: starting…"
    next(first)  # a step's status or preview: the worker is mid-run
    first.close()  # the page went away: Gradio closes the generator and starts the next request
    *_, (_, _, _, status) = stylist.run(photo, [style, None, None], [1.0] * 3, 64, 2, 1.0, "adam", False, 0,
                                        _page("b"))
    assert status.startswith("Done"), status
    assert [kind for kind, _ in log] == ["start", "end", "start", "end"], log  # one after the other, never two


def test_the_status_line_is_said_again_while_a_run_sets_up(tmp_path, monkeypatch):
    # The run's stream waited for the engine's first step without a word: a large run's targets take
    # seconds, the status could not move, and a "Waiting…" tick that reached the page after the run's
    # first status stayed on it until the first step.
    from artopt.style import engine

    real = engine.stylize

    def slow_setup(*args, **kwargs):
        time.sleep(2.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "stylize", slow_setup)
    photo = str(web.ASSETS_DIR / "photos" / "chelsea.jpg")
    style = str(web.ASSETS_DIR / "styles" / "starry_night.jpg")
    statuses = [out[3] for out in _stylist(tmp_path).run(photo, [style, None, None], [1.0] * 3, 64, 2, 1.0, "adam",
                                                          False, 0)]
    setting_up = [s for s in statuses if isinstance(s, str) and s.startswith("Working: starting, ")]
    assert len(setting_up) >= 2 and statuses[-1].startswith("Done"), statuses


def test_an_output_too_large_for_the_servers_memory_is_refused(tmp_path, monkeypatch):
    from artopt.style import engine

    monkeypatch.setattr(engine, "system_memory", lambda: (1_000_000_000, None))  # 64 px needs about 1.08 GB
    message = _error_of(_stylist(tmp_path), str(web.ASSETS_DIR / "photos" / "chelsea.jpg"))
    assert message.startswith("At 64 px a CPU run needs about 1.08 GB of memory, more than this machine's 1 GB")


def test_an_image_path_the_client_did_not_upload_is_refused(client, images, tmp_path):
    # The inputs skip Gradio's preprocessing: a bare {"path": ...} (no upload, no meta) was read from
    # the server's disk, and the image sent back as the run's "before"
    secret = tmp_path / "server-side.png"
    Image.new("RGB", (96, 72), (10, 200, 30)).save(secret)
    args = list(stylize_args(images["content"], images["style"]))
    for path in (str(secret), str(tmp_path / "missing.png"), "/etc/passwd", "x\0y.png"):
        args[0] = {"path": path}
        with pytest.raises(Exception, match="Content photo: no uploaded file was received") as refused:
            client.predict(*args, api_name="/stylize")
        assert path not in str(refused.value)


def test_input_folders_follow_links_out_of_them(tmp_path):
    uploads, outside = tmp_path / "uploads", tmp_path / "outside.png"
    uploads.mkdir()
    Image.new("RGB", (60, 40)).save(outside)
    Image.new("RGB", (60, 40)).save(uploads / "mine.png")
    (uploads / "link.png").symlink_to(outside)
    stylist = web._Stylist("cpu", TEST_LIMITS, tmp_path, None, ["adam"], input_folders=[uploads])
    assert stylist._load({"path": str(uploads / "mine.png")}, "Photo").size == (60, 40)
    for path in (outside, uploads / "link.png", uploads / ".." / "outside.png"):
        with pytest.raises(gr.Error, match="no uploaded file"):
            stylist._load({"path": str(path)}, "Photo")


def test_a_run_yields_before_its_work_so_that_a_cancel_can_close_it(tmp_path, images):
    # Gradio closes (cancels) a generator only once it has yielded: an API request that had not
    # reserved a stop flag yielded first at its first preview, and a cancel before that ran on
    stylist = web._Stylist("cpu", TEST_LIMITS, tmp_path, None, ["adam"])
    content, style = ({"path": str(images[k])} for k in ("content", "style"))
    run = stylist.run(content, [style, None, None], [1.0, 1.0, 1.0], 64, 3, 1.0, "adam", False, 0, _page("api"))
    assert next(run)[3] == web.STARTING_STATUS
    run.close()
    assert not list(tmp_path.glob("artopt-run-*"))  # nothing started, nothing left


def test_the_largest_size_may_be_the_smallest(tmp_path):
    # --max-size 256 failed to start: a slider from 256 to 256
    app = web.build_app(device="cpu", output_dir=tmp_path, limits=web.WebLimits(max_size=web.MIN_SIZE))
    app.close()


def test_the_pages_settings_reach_the_config_within_the_limits(tmp_path):
    from artopt.style.engine import StylizeConfig

    photo = str(web.ASSETS_DIR / "photos" / "chelsea.jpg")
    style = str(web.ASSETS_DIR / "styles" / "starry_night.jpg")
    stylist = web._Stylist("cpu", TEST_LIMITS, tmp_path, None, ["adam"])
    _, _, config = stylist._checked(photo, [style, None, None], [1.0] * 3, 96, 7, 2.5, "adam", False, 1234)
    assert (config.size, config.steps, config.seed, config.optimizer) == (96, 7, 1234, "adam")
    assert config.style_weight == pytest.approx(2.5 * StylizeConfig().style_weight)
    with pytest.raises(gr.Error, match="Quality"):
        stylist._checked(photo, [style, None, None], [1.0] * 3, 96, TEST_LIMITS.max_steps + 1, 1.0, "adam", False, 0)


# Mutation audit, round 2 (session 51): each test below failed on a one-line bug the suite missed.

def test_a_style_too_elongated_is_named_by_its_slot_with_advice_the_page_can_follow(tmp_path):
    # The engine's refusal came mid-run, named a style scale the page does not have, and counted
    # styles among those in use ("style image 1" for the page's Style 2 here).
    from artopt.style import engine

    photo = str(web.ASSETS_DIR / "photos" / "chelsea.jpg")
    style = str(web.ASSETS_DIR / "styles" / "starry_night.jpg")
    for w in (3000, 150):  # at 96 px: a 2 px shorter side, refused; 20 px, which the network takes
        Image.new("RGB", (w, 32), (90, 120, 200)).save(tmp_path / f"thin{w}.png")
    stylist = web._Stylist("cpu", TEST_LIMITS, tmp_path, None, ["adam"])
    with pytest.raises(gr.Error, match="Style 2 is too elongated: at 96 px.*shorter side would be 1 px") as refused:
        stylist._checked(photo, [None, str(tmp_path / "thin3000.png"), None], [1.0] * 3, 96, 2, 1.0, "adam", False, 0)
    assert "style scale" not in str(refused.value)
    content, styles, config = stylist._checked(photo, [style, str(tmp_path / "thin150.png"), None], [1.0] * 3, 96, 1,
                                               1.0, "adam", False, 0)
    engine.stylize(content, styles, config)  # and the engine agrees: it runs
    with pytest.raises(ValueError, match="style image 2 is 96x1 px"):  # as the engine would have refused it
        engine.stylize(content, [styles[0], Image.open(tmp_path / "thin3000.png")], config)


def test_closing_the_page_mid_run_stops_the_worker(tmp_path, monkeypatch):
    # Gradio closes the generator when the page goes away: the worker thread must be told to stop.
    stopped = threading.Event()

    def fake(content, styles, config, callback=None, image_every=0, should_stop=None, **kwargs):
        image = torch.full((1, 3, 48, 64), 0.5)
        callback(engine.StepInfo(step=1, total_steps=100, scale_index=0, n_scales=1, size=(48, 64),
                                 losses={"total": 1.0}, elapsed=0.1, image=image))
        for _ in range(500):  # up to 5 s
            if should_stop():
                stopped.set()
                break
            threading.Event().wait(0.01)
        return image

    monkeypatch.setattr(engine, "stylize", fake)
    stylist = web._Stylist("cpu", web.WebLimits(min_size=48, max_size=256, max_steps=400), tmp_path, None, ["adam"])
    photo, style = (str(web.ASSETS_DIR / d) for d in ("photos/chelsea.jpg", "styles/starry_night.jpg"))
    run = stylist.run(photo, [style, None, None], [1.0] * 3, 64, 100, 1.0, "adam", False, 0)
    while not str(next(run)[3]).startswith("Working: step"):  # the first preview
        pass
    run.close()
    assert stopped.wait(6), "the worker went on after the page closed the run"


def test_the_step_count_is_shown_between_previews_and_a_closed_page_stops_the_worker_there(tmp_path, monkeypatch):
    # Only a new preview was yielded, and Gradio closes a run whose page went away only at a yield:
    # with slow steps (a large image on a CPU) the worker went on for minutes.
    stopped = threading.Event()

    def fake(content, styles, config, callback=None, image_every=0, should_stop=None, **kwargs):
        for step in range(1, 101):
            callback(engine.StepInfo(step=step, total_steps=100, scale_index=0, n_scales=1, size=(48, 64),
                                     losses={"total": 1.0}, elapsed=0.1))  # no preview image
            for _ in range(50):
                if should_stop():
                    stopped.set()
                    return torch.full((1, 3, 48, 64), 0.5)
                threading.Event().wait(0.01)
        return torch.full((1, 3, 48, 64), 0.5)

    monkeypatch.setattr(engine, "stylize", fake)
    monkeypatch.setattr(web, "STATUS_EVERY_S", 0.0)
    stylist = web._Stylist("cpu", web.WebLimits(min_size=48, max_size=256, max_steps=400), tmp_path, None, ["adam"])
    photo, style = (str(web.ASSETS_DIR / d) for d in ("photos/chelsea.jpg", "styles/starry_night.jpg"))
    run = stylist.run(photo, [style, None, None], [1.0] * 3, 64, 100, 1.0, "adam", False, 0)
    while not str(next(run)[3]).startswith("Working: step 2/100"):
        pass
    run.close()
    assert stopped.wait(6), "the worker went on after the page closed the run"


def test_a_first_steps_notice_is_shown_without_the_setup_line(tmp_path, monkeypatch):
    setup = "loss network: efficientnet-lite0; optimizer: adam"

    def fake(content, styles, config, callback=None, image_every=0, should_stop=None, **kwargs):
        image = torch.full((1, 3, 48, 64), 0.5)
        for step, notice in ((1, f"{setup}; adam diverged at step 1"), (2, None)):
            callback(engine.StepInfo(step=step, total_steps=2, scale_index=0, n_scales=1, size=(48, 64),
                                     losses={"total": 1.0}, elapsed=0.1, image=image, notice=notice,
                                     setup_notice=setup if step == 1 else None))
        return image

    monkeypatch.setattr(engine, "stylize", fake)
    stylist = web._Stylist("cpu", web.WebLimits(min_size=48, max_size=256, max_steps=400), tmp_path, None, ["adam"])
    photo, style = (str(web.ASSETS_DIR / d) for d in ("photos/chelsea.jpg", "styles/starry_night.jpg"))
    status = str(list(stylist.run(photo, [style, None, None], [1.0] * 3, 64, 2, 1.0, "adam", False, 0))[-1][3])
    assert "adam diverged at step 1" in status and "loss network" not in status


def test_the_page_names_the_cpu_threads_or_the_cores_they_are_chosen_from(monkeypatch, tmp_path):
    """With --threads the page says the threads; without, each run chooses from the free cores (artopt.cpu)."""
    import gradio as gr

    from artopt import cpu

    def device_line(**kwargs) -> str:
        app = web.build_app(device="cpu", output_dir=tmp_path, limits=TEST_LIMITS, default_size=64, default_steps=STEPS, **kwargs)
        return next(b.value for b in app.blocks.values() if isinstance(b, gr.Markdown) and "Running on" in str(b.value))

    assert "**CPU (1 thread)**" in device_line(threads=1)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu, "usable_cores", lambda: [0, 1])
    assert "**CPU (2 cores)**" in device_line()
    with pytest.raises(ValueError, match="threads must be at least 1, got 0"):
        web.serve(threads=0, block=False)


def test_each_cpu_run_sets_its_threads_as_it_starts(monkeypatch, tmp_path):
    from artopt import cpu

    calls = []
    monkeypatch.setattr(cpu, "set_threads", lambda asked, say=None: calls.append(asked) or 1)
    app = web.build_app(device="cpu", output_dir=tmp_path, limits=TEST_LIMITS, default_size=64, default_steps=STEPS, threads=1)
    stylize = next(f.fn for f in app.fns.values() if f.api_name == "stylize")
    photo, style = str(web.example_photos()[0]), str(web.preset_styles()[0])
    outputs = list(stylize(photo, style, 1.0, None, 1.0, None, 1.0, 64, 2, 1.0, "adam", False, 0, request=None))
    assert calls == [1] and outputs[-1][2] is not None  # one run, one choice, and its PNG


def test_only_the_run_itself_waits_in_the_queue(tmp_path):
    # A clicked preset went through the queue, and a full queue refused it ("busy, try again").
    app = web.build_app(device="cpu", output_dir=tmp_path, limits=TEST_LIMITS, default_size=64, default_steps=STEPS)
    queued = [d["api_name"] for d in app.config["dependencies"] if d.get("queue") is not False]
    assert queued == ["stylize"]
