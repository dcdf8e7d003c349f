"""The web page in a real headless browser: Debian's chromium driven by Playwright.

Playwright's own browser download is never used: ``bash .ci/install-browser`` installs the system
``chromium`` and the ``playwright`` package.  Without them this test skips, loudly.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

from conftest import skip_or_fail

pytestmark = [
    pytest.mark.browser,
    pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning"),
]

# ARTOPT_CHROMIUM points at another Chromium build (or a missing one, to see the skip).
CHROMIUM = os.environ.get("ARTOPT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Flags that work as root in a container; nothing in the background may reach the network.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Set ARTOPT_SCREENSHOT_DIR to keep the screenshots (tmp_path is used otherwise).
SCREENSHOT_DIR_ENV = "ARTOPT_SCREENSHOT_DIR"


def _skip_loudly(why: str) -> None:
    message = (
        f"BROWSER TEST SKIPPED: {why}. Run `bash .ci/install-browser` "
        "(Debian chromium + the playwright package) to enable it."
    )
    print("\n" + "!" * 78 + f"\n{message}\n" + "!" * 78, file=sys.stderr)
    warnings.warn(message)
    skip_or_fail(message)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        _skip_loudly(f"no system chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_loudly("the playwright package is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from artopt import web

    # Served from a folder outside the checkout, as `artopt serve` run from anywhere is: Gradio
    # serves files under the working directory only, so the presets must be allowed explicitly.
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("elsewhere"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = web.build_app(
        device="cpu",
        limits=web.WebLimits(min_size=48, max_size=256),
        default_size=96,
        default_steps=4,
        preview_every=1,
        output_dir=tmp_path_factory.mktemp("web-out"),
    )
    web.launch(app, port=port, block=False, quiet=True)
    yield app
    app.close()
    os.chdir(cwd)


@pytest.fixture()
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get(SCREENSHOT_DIR_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _outside_requests(page, server_url: str) -> list[str]:
    """Collects every request the page makes to a host other than the app's own."""
    own = urlparse(server_url).netloc
    outside: list[str] = []

    def note(request):
        parsed = urlparse(request.url)
        if parsed.scheme in ("http", "https", "ws", "wss") and parsed.netloc != own:
            outside.append(request.url)

    page.on("request", note)
    return outside


def _upload(page, elem_id: str, path: Path) -> None:
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))
    page.locator(f"#{elem_id} img").first.wait_for(state="visible", timeout=30_000)


def _open(browser, url: str, width: int = 1400, height: int = 1500):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url, wait_until="networkidle")
    page.locator("#stylize-button").wait_for(state="visible", timeout=60_000)
    return page


def _first_preset_into_style_2(page) -> None:
    page.get_by_role("radio", name="Style 2").check()
    page.locator("#preset-gallery img").first.click()
    page.locator("#style-image-2 img").first.wait_for(state="visible", timeout=30_000)


def test_page_stylizes_an_upload_and_shows_the_result(browser, server, shots, tmp_path):
    from artopt import web

    content = tmp_path / "content.png"
    style = tmp_path / "style.jpg"
    Image.open(web.example_photos()[1]).convert("RGB").resize((120, 90)).save(content)
    Image.open(web.preset_styles()[0]).convert("RGB").resize((100, 100)).save(style)

    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    outside = _outside_requests(page, server.local_url)
    page.goto(server.local_url, wait_until="networkidle")
    page.locator("#stylize-button").wait_for(state="visible", timeout=60_000)
    assert "artopt" in page.title()
    assert "loss network" in page.locator("#device-info").inner_text()

    # Screen readers are told to announce the status line's changes.
    assert page.locator("#run-status").get_attribute("aria-live") == "polite"
    # Stop is off until this page has a run waiting or running.
    assert page.locator("#stylize-button").is_enabled() and page.locator("#stop-button").is_disabled()
    _upload(page, "content-image", content)
    _upload(page, "style-image-1", style)
    page.locator("#stylize-button").click()

    # The before/after slider shows two images once the run is done.
    result_images = page.locator("#before-after img")
    result_images.nth(1).wait_for(state="visible", timeout=120_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#before-after img')]"
        ".every(img => img.complete && img.naturalWidth > 0)",
        timeout=30_000,
    )
    widths = result_images.evaluate_all("imgs => imgs.map(img => img.naturalWidth)")
    assert len(widths) == 2 and all(w == 96 for w in widths), widths
    # The live preview ends on the finished image too (the screenshot below waits for it to load).
    page.wait_for_function(
        "() => { const img = document.querySelector('#live-preview img');"
        " return img && img.complete && img.naturalWidth === 96; }",
        timeout=30_000,
    )
    assert "Done" in page.locator("#run-status").inner_text()
    assert page.locator("#run-status").get_attribute("aria-live") == "polite"  # kept through the updates
    # The whole picture fits the before/after box (a 4:3 result lost its bottom 7% before).
    box = page.locator("#before-after .content").bounding_box()
    for image_box in (result_images.nth(i).bounding_box() for i in range(2)):
        assert image_box["y"] >= box["y"] - 1 and image_box["y"] + image_box["height"] <= box["y"] + box["height"] + 1
    # Once the run is over, Stylize is on again and Stop off.
    page.wait_for_function("() => !document.querySelector('#stylize-button').disabled", timeout=30_000)
    assert page.locator("#stop-button").is_disabled()
    # The full-resolution PNG is offered for download.
    link = page.locator("#download-file a").first
    assert link.get_attribute("href").endswith(".png")

    page.screenshot(path=str(shots / "browser_result.png"), full_page=True)
    assert (shots / "browser_result.png").stat().st_size > 10_000
    assert outside == [], f"the page reached outside the app: {outside}"
    page.close()


def test_page_shows_a_clear_error_for_a_zero_byte_upload(browser, server, shots, tmp_path):
    from artopt import web

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    style = tmp_path / "style.jpg"
    Image.open(web.preset_styles()[0]).convert("RGB").resize((100, 100)).save(style)

    page = _open(browser, server.local_url, height=1200)
    page.locator("#content-image input[type=file]").set_input_files(str(empty))
    _upload(page, "style-image-1", style)
    page.locator("#stylize-button").click()
    toast = page.get_by_text("Content photo", exact=False).filter(has_text="empty.png").first
    toast.wait_for(state="visible", timeout=30_000)
    assert "empty (0 bytes)" in toast.inner_text()
    # The status line says the run did not happen (not "Waiting for a free slot…").
    page.wait_for_function("() => document.querySelector('#run-status').innerText.includes('Not stylized')",
                           timeout=30_000)
    # ... and nothing covers that text: Gradio's "Error" pill, when it draws one, would sit on top of it.
    page.wait_for_timeout(500)
    pills = page.locator("#run-status .error")
    assert all(not pills.nth(i).is_visible() for i in range(pills.count()))
    # The refused run is over: Stylize is on again.
    page.wait_for_function("() => !document.querySelector('#stylize-button').disabled", timeout=30_000)
    assert page.locator("#stop-button").is_disabled()
    page.screenshot(path=str(shots / "browser_zero_byte.png"), full_page=False)
    page.close()


def test_the_status_lines_live_region_holds_the_status_alone(browser, server):
    # Gradio's hidden progress tracker inside the status line fed its ticking queue timer to screen
    # readers while a request waited; display:none takes it out of the accessibility tree.
    page = _open(browser, server.local_url, height=900)
    tracker = page.locator("#run-status [data-testid=status-tracker]")
    assert tracker.count() == 1, "Gradio's tracker moved: check what the live region holds now"
    assert tracker.evaluate("el => getComputedStyle(el).display") == "none"
    page.close()


def test_a_preset_goes_into_the_chosen_style_slot_and_opens_it(browser, server, shots):
    page = _open(browser, server.local_url)
    assert not page.locator("#style-image-2").is_visible()  # blend slots start closed
    # The preset gallery is as tall as its thumbnails: none hidden behind a scrollbar, no empty band.
    wrap, grid = page.locator("#preset-gallery .grid-wrap"), page.locator("#preset-gallery .grid-container")
    scroll, client = wrap.evaluate("el => [el.scrollHeight, el.clientHeight]")
    assert scroll <= client + 1, (scroll, client)
    assert wrap.bounding_box()["height"] <= grid.bounding_box()["height"] + 40
    # Style 1's box has no heavier frame than the content photo's (Gradio's group drew a 3 px black one).
    border = "el => parseFloat(getComputedStyle(el).borderTopWidth)"
    assert page.locator("#style-image-1").evaluate(border) <= page.locator("#content-image").evaluate(border)
    _first_preset_into_style_2(page)
    assert page.locator(".toast-body, .toast-wrap").filter(has_text="Error").count() == 0
    page.screenshot(path=str(shots / "browser_preset_style2.png"), full_page=False)
    page.close()


def test_an_example_replaces_the_blend_styles_too(browser, server, shots):
    page = _open(browser, server.local_url)
    _first_preset_into_style_2(page)
    # An Examples row is a photo and one style: the blend style must go, or the run is something else.
    example = page.locator("#examples tbody tr").first
    example.wait_for(state="visible", timeout=30_000)
    example.click()
    page.locator("#content-image img").first.wait_for(state="visible", timeout=30_000)
    page.wait_for_function("() => document.querySelectorAll('#style-image-2 img').length === 0", timeout=30_000)
    page.screenshot(path=str(shots / "browser_example_clears_blend.png"), full_page=False)
    page.close()


def test_every_preset_is_in_view_on_a_phone(browser, server, shots):
    page = _open(browser, server.local_url, width=390, height=844)
    wrap = page.locator("#preset-gallery .grid-wrap")
    wrap.scroll_into_view_if_needed()
    scroll_width, client_width = wrap.evaluate("el => [el.scrollWidth, el.clientWidth]")
    assert scroll_width <= client_width + 1, (scroll_width, client_width)  # five 100 px columns ran off the side
    page.screenshot(path=str(shots / "browser_phone_presets.png"), full_page=False)
    page.close()


def test_a_full_queue_says_so_and_lets_the_person_try_again(browser, tmp_path):
    from gradio_client import Client, handle_file

    from artopt import web

    content, style = tmp_path / "content.png", tmp_path / "style.jpg"
    Image.open(web.example_photos()[1]).convert("RGB").resize((120, 90)).save(content)
    Image.open(web.preset_styles()[0]).convert("RGB").resize((100, 100)).save(style)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = web.build_app(device="cpu", limits=web.WebLimits(min_size=48, max_size=256), default_size=64,
                        default_steps=4, preview_every=25, output_dir=tmp_path / "out", queue_size=1)
    web.launch(app, port=port, block=False, quiet=True)
    try:
        page = _open(browser, app.local_url, height=1200)
        _upload(page, "content-image", content)
        _upload(page, "style-image-1", style)
        # Two other people: one run going, one waiting, so the queue (size 1) is full.
        args = (handle_file(str(content)), handle_file(str(style)), 1.0, None, 1.0, None, 1.0,
                64, 150, 1.0, "adam", False, 0)
        running = Client(app.local_url, verbose=False).submit(*args, api_name="/stylize")
        while not running.outputs() and not running.done():
            page.wait_for_timeout(50)
        waiting = Client(app.local_url, verbose=False).submit(*args, api_name="/stylize")
        page.wait_for_timeout(500)
        page.locator("#stylize-button").click()
        page.wait_for_function("() => document.querySelector('#run-status').innerText.includes('queue is full')",
                               timeout=30_000)
        assert page.locator("#stylize-button").is_enabled() and page.locator("#stop-button").is_disabled()
        assert not running.done(), "the queue emptied before the click: this test checked nothing"
        page.screenshot(path=str(tmp_path / "queue_full.png"))
        running.result(timeout=300)
        waiting.result(timeout=300)
        page.close()
    finally:
        app.close()


def _wait_for_status(page, text: str, timeout: int = 30_000) -> None:
    page.wait_for_function("text => document.querySelector('#run-status').innerText.includes(text)", arg=text,
                           timeout=timeout)


def test_a_waiting_page_says_how_many_runs_are_ahead_of_it(browser, server, tmp_path):
    from gradio_client import Client, handle_file

    from artopt import web

    content, style = tmp_path / "content.png", tmp_path / "style.jpg"
    Image.open(web.example_photos()[1]).convert("RGB").resize((120, 90)).save(content)
    Image.open(web.preset_styles()[0]).convert("RGB").resize((100, 100)).save(style)
    pages = [_open(browser, server.local_url, height=1200) for _ in range(2)]
    first, second = pages
    running = None
    try:
        for page in pages:
            _upload(page, "content-image", content)
            _upload(page, "style-image-1", style)
        # Someone else's long run holds the one slot (it is stopped below, long before its end).
        other = Client(server.local_url, verbose=False)
        args = (handle_file(str(content)), handle_file(str(style)), 1.0, None, 1.0, None, 1.0,
                64, 2000, 1.0, "adam", False, 0)
        running = other.submit(*args, api_name="/stylize")
        while not running.outputs() and not running.done():
            time.sleep(0.05)
        first.locator("#stylize-button").click()
        _wait_for_status(first, "Waiting for a free slot: 1 run ahead of yours")
        second.locator("#stylize-button").click()
        _wait_for_status(second, "Waiting for a free slot: 2 runs ahead of yours")
        # The first page withdraws its request: the second one's line follows, with no click.
        first.locator("#stop-button").click()
        _wait_for_status(first, web.WITHDRAWN_STATUS)
        _wait_for_status(second, "Waiting for a free slot: 1 run ahead of yours")
        assert not running.done(), "the run ahead ended too soon: this test checked nothing"
        assert other.predict(api_name="/stop").startswith("Stopping")
        # Its turn: the waiting line gives way to the run's own status, and stays gone.
        _wait_for_status(second, "Done", timeout=120_000)
        second.wait_for_timeout(int(2.5 * web.WAITING_REFRESH_S * 1000))
        assert "Done" in second.locator("#run-status").inner_text()
    finally:
        for page in pages:
            page.close()
        if running is not None:
            running.result(timeout=300)
