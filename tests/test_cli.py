"""The command line: writes the image and the JSON log; bad input gives one line and a non-zero exit."""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from artopt.cli import main
from artopt.style.images import load_image, pil_to_tensor

ASSETS = Path(__file__).resolve().parents[1] / "assets"
PHOTO, STYLE = ASSETS / "photos" / "chelsea.jpg", ASSETS / "styles" / "starry_night.jpg"
FAST = ["--size", "48", "--steps", "3", "--loss-net", "efficientnet-lite0", "--device", "cpu", "--quiet"]


def test_stylize_writes_image_and_json_log(tmp_path):
    out, log = tmp_path / "out.jpg", tmp_path / "log.json"
    code = main(["stylize", str(PHOTO), str(STYLE), str(STYLE), "-o", str(out), "--log-json", str(log),
                 "--style-weights", "0.25", "0.75", "--optimizer", "adam", *FAST])
    assert code == 0
    image = Image.open(out)
    assert image.format == "JPEG" and image.size == (48, 32)
    record = json.loads(log.read_text())
    assert record["settings"]["size"] == 48 and record["settings"]["style_weights"] == [0.25, 0.75]
    assert record["settings"]["resolved_loss_net"] == "efficientnet-lite0"
    assert record["settings"]["lr"] is None and record["settings"]["resolved_lr"] == 0.02  # what adam ran with
    assert [s["step"] for s in record["steps"]] == [1, 2, 3]
    assert {"total", "content", "style", "tv", "wall_time"} <= set(record["steps"][0])
    # the output's own losses, one evaluation past the last step's (which are of the image before it)
    assert set(record["final_losses"]) == {"total", "content", "style", "tv"}
    assert record["final_losses"]["total"] < record["steps"][-1]["total"]


@pytest.mark.parametrize("optimizer, basis", [("adam", "multiscale"), ("sgd", "pixels")])
def test_the_log_records_the_basis_and_the_rate_it_ran_with(tmp_path, optimizer, basis):
    from artopt.style.engine import resolve_lr

    out, log = tmp_path / "out.png", tmp_path / "log.json"
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(out), "--log-json", str(log), "--optimizer", optimizer,
                 "--basis", basis, *FAST]) == 0
    settings = json.loads(log.read_text())["settings"]
    assert settings["basis"] == basis
    # sgd's default is per pixel: the log has the rate of the output's size (48 x 32 px)
    assert settings["resolved_lr"] == resolve_lr(optimizer, basis=basis, pixels=48 * 32)


def test_save_every_writes_intermediate_images(tmp_path):
    out = tmp_path / "out.png"
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(out), "--save-every", "2", *FAST]) == 0
    assert (tmp_path / "out_step2.png").is_file() and out.is_file()


def _failing_save(monkeypatch, fails):
    """save_image that fails (as on a full disk) for the paths ``fails`` picks."""
    import artopt.style.images as images
    from artopt.style.images import ImageError

    real = images.save_image

    def save(image, path, **kwargs):
        if fails(Path(path)):
            raise ImageError(f"{path}: cannot write image (No space left on device)")
        return real(image, path, **kwargs)

    monkeypatch.setattr(images, "save_image", save)


def test_an_intermediate_image_that_cannot_be_written_does_not_end_the_run(tmp_path, monkeypatch, capsys):
    _failing_save(monkeypatch, lambda p: "_step" in p.name)
    out = tmp_path / "out.png"
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(out), "--save-every", "2", *FAST]) == 0
    err = capsys.readouterr().err
    assert out.is_file() and not (tmp_path / "out_step2.png").exists()
    assert f"artopt: warning: {tmp_path / 'out_step2.png'}: cannot write image (No space left on device)" in err


def test_a_final_image_that_cannot_be_written_is_saved_elsewhere(tmp_path, monkeypatch, capsys):
    _failing_save(monkeypatch, lambda p: p.parent == tmp_path)
    out, log = tmp_path / "out.png", tmp_path / "log.json"
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(out), "--log-json", str(log), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"artopt: error: {out}: cannot write image (No space left on device); the image was saved to ")
    fallback = Path(err.rsplit(" was saved to ", 1)[1].removesuffix(" instead"))
    try:
        assert not out.exists() and Image.open(fallback).size == (48, 32)
        assert json.loads(log.read_text())["settings"]["output_path"] == str(fallback)
    finally:
        fallback.unlink(missing_ok=True)


@pytest.mark.parametrize("make_args, message", [
    (lambda d: [str(d / "missing.jpg"), str(STYLE), "-o", str(d / "o.png")], "not found"),
    (lambda d: [str(d / "text.jpg"), str(STYLE), "-o", str(d / "o.png")], "not an image"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "o.gif")], "output must end in"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "no" / "o.png")], "does not exist"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "text.jpg" / "o.png")], "text.jpg is a file, not a folder"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "o.png"), "--log-json", ""], "--log-json needs a file name"),
    # e.g. --vgg-weights "$UNSET": before, taken as no flag (auto chose a network without a word)
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "o.png"), "--vgg-weights", ""], "--vgg-weights needs a file name"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "o.png"), "--lstm-weights", " "], "--lstm-weights needs a file"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "o.png"), "--style-weights", "1", "2"], "2 value(s) for 1 style"),
    # Engine messages name the flag the user typed, not the setting.
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "o.png"), "--lr", "-1"], "--lr must be positive"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "o.png"), "--save-every", "-2"], "--save-every must be 0 (off)"),
    # a finite rate past what the optimizers can hold was a traceback, the run's work lost
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "o.png"), "--lr", "1e39"], "--lr must be positive and at most 1e+30"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "o.png"), "--handoff-lr", "1e31"], "--handoff-lr must be 0"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "o.png"), "--tv-weight", "-1"], "--tv-weight must be between"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "o.png"), "--style-scale", "9"], "--style-scale must be in"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "o.png"), "--style-weights", "-1"], "--style-weights must be"),
    # Each weight is finite, but their sum is not: the blend would have zeroed every style target.
    (lambda d: [str(PHOTO), str(STYLE), str(STYLE), "-o", str(d / "o.png"), "--style-weights", "1e308", "1e308"],
     "--style-weights must be between 0 and 1e+12"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "o.png"), "--seed", str(2**64)], "--seed must be an integer"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", ""], "-o needs a file name"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / ".png")], "give the output a name before its extension"),
])
def test_bad_input_gives_one_line_error(tmp_path, capsys, make_args, message):
    (tmp_path / "text.jpg").write_text("hello")
    code = main(["stylize", *make_args(tmp_path), *FAST])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("artopt: error:") and message in err and "\n" not in err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("device, message", [
    ("cuda:1", "device 'cuda:1' requested but no CUDA GPU is available"),  # argparse's choices refused cuda:N
    ("CUDA", "device 'cuda' requested but no CUDA GPU is available"),
    ("gpu", "--device must be one of auto, cpu, cuda, mps (or cuda:N), got 'gpu'"),
])
def test_device_names_reach_the_engine_checks(tmp_path, monkeypatch, capsys, instant_stylize, device, message):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), *FAST, "--device", device])
    assert code == 2 and capsys.readouterr().err.strip() == f"artopt: error: {message}"
    assert instant_stylize.calls == 0


def test_a_photo_too_narrow_for_the_size_is_refused_before_the_progress_bar(tmp_path, capsys):
    # Before: the progress bar was drawn at 0% first, and the error came when the engine started.
    Image.new("RGB", (200, 40)).save(tmp_path / "narrow.png")
    code = main(["stylize", str(tmp_path / "narrow.png"), str(STYLE), "-o", str(tmp_path / "o.png"),
                 *[a for a in FAST if a != "--quiet"]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "step" not in err, err
    assert err.startswith("artopt: error: at 48 px the content image's shorter side is 10 px")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("make_args, message", [
    (lambda d: [str(d / "mine.png"), str(STYLE), "-o", str(d / "mine.png")], "is the content image"),
    (lambda d: [str(PHOTO), str(d / "mine.png"), "-o", str(d / "o.jpg"), "--log-json", str(d / "mine.png")],
     "is the style image"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "o.jpg"), "--log-json", str(d / "o.jpg")], "same file"),
    (lambda d: [str(d / "o_step2.png"), str(STYLE), "-o", str(d / "o.png"), "--save-every", "1"],
     "--save-every would write o_step2.png over the content image"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "o.jpg"), "--log-json", str(d)], "is a folder"),
])
def test_nothing_the_user_made_is_overwritten(tmp_path, capsys, make_args, message):
    mine = Image.new("RGB", (64, 48), (200, 30, 30))
    for name in ("mine.png", "o_step2.png"):
        mine.save(tmp_path / name)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code = main(["stylize", *make_args(tmp_path), *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("artopt: error:") and message in err and "\n" not in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # checked before anything ran


def test_the_log_never_replaces_the_optimizer_or_loss_network_the_run_reads(tmp_path, monkeypatch, capsys,
                                                                            instant_stylize):
    # Only the files named by a flag were protected: a --log-json onto the card beside --lstm-weights,
    # or onto $ARTOPT_VGG_WEIGHTS, replaced it (and the run after went on without its settings).
    import shutil

    from artopt.learned_optimizers.shipped import NEURAL_ART, weights_path

    shipped = weights_path(NEURAL_ART)
    for src in (shipped, shipped.with_suffix(".json")):
        shutil.copy(src, tmp_path / src.name)
    (tmp_path / "vgg.pth").write_bytes(b"not read")
    monkeypatch.setenv("ARTOPT_VGG_WEIGHTS", str(tmp_path / "vgg.pth"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    lstm = ["--optimizer", "lstm", "--lstm-weights", str(tmp_path / shipped.name)]
    for extra, log, message in [(lstm, tmp_path / shipped.with_suffix(".json").name, "is the lstm weights' card"),
                                ([], shipped.with_suffix(".json"), "is the lstm weights' card"),  # the shipped one
                                ([], tmp_path / "vgg.pth", "is the vgg weights")]:
        code = main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), *FAST, *extra,
                     "--log-json", str(log)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and "\n" not in err, err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before and instant_stylize.calls == 0


def test_a_pipe_or_device_is_written_in_place_and_a_replaced_file_keeps_its_mode(tmp_path, capsys,
                                                                                 instant_stylize):
    # A rename put a plain file where the FIFO (or /dev/null) had been; and a private file became 0644.
    import os
    import stat
    import threading

    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    private = tmp_path / "o.png"
    private.write_bytes(b"old")
    private.chmod(0o600)
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(private), *FAST, "--log-json", str(fifo)]) == 0
    reader.join(10)
    assert stat.S_ISFIFO(fifo.stat().st_mode) and json.loads(got[0])["settings"]["resolved_optimizer"]
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and Image.open(private).format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.fifo", "o.png"]  # no temporary file left


def test_save_every_follows_links_to_what_it_would_overwrite(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(photos / "mine.png")

    def refused(content: Path, output: Path, name: str) -> None:
        before = (photos / "mine.png").read_bytes()
        code = main(["stylize", str(content), str(STYLE), "-o", str(output), "--save-every", "1", *FAST])
        err = capsys.readouterr().err.strip()
        assert code == 2 and f"--save-every would write {name} over the content image" in err, err
        assert (photos / "mine.png").read_bytes() == before

    # a link named like a step image, pointing at the photo: writing the step image writes the photo
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "o_step1.png").symlink_to(photos / "mine.png")
    refused(photos / "mine.png", tmp_path / "a" / "o.png", "o_step1.png")
    # the photo given through a link, and itself named like a step image
    (tmp_path / "b").mkdir()
    (photos / "o_step2.png").write_bytes((photos / "mine.png").read_bytes())
    (tmp_path / "b" / "photo.png").symlink_to(photos / "o_step2.png")
    refused(tmp_path / "b" / "photo.png", photos / "o.png", "o_step2.png")
    # the output is a link into another folder: the step images still go beside the link
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "o.png").symlink_to(tmp_path / "elsewhere.png")
    (tmp_path / "c" / "o_step1.png").write_bytes((photos / "mine.png").read_bytes())
    refused(tmp_path / "c" / "o_step1.png", tmp_path / "c" / "o.png", "o_step1.png")
    # ... so a photo named like a step image in the link's target folder is safe, and the run goes on
    (tmp_path / "o_step1.png").write_bytes((photos / "mine.png").read_bytes())
    code = main(["stylize", str(tmp_path / "o_step1.png"), str(STYLE), "-o", str(tmp_path / "c" / "o.png"),
                 "--save-every", "1", *FAST])
    assert code == 0 and (tmp_path / "elsewhere.png").is_file()
    assert (tmp_path / "o_step1.png").read_bytes() == (photos / "mine.png").read_bytes()


def test_log_of_a_diverged_run_is_strict_json(tmp_path, monkeypatch):
    from artopt.style import losses

    forward = losses.StyleLoss.forward

    def overflowing(self, image):  # the second evaluation's loss is infinite
        out = forward(self, image)
        overflowing.calls += 1
        return {k: v * float("inf") for k, v in out.items()} if overflowing.calls == 2 else out

    overflowing.calls = 0
    monkeypatch.setattr(losses.StyleLoss, "forward", overflowing)
    log = tmp_path / "log.json"
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), "--log-json", str(log),
                 "--optimizer", "adam", *FAST]) == 0

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    record = json.loads(log.read_text(), parse_constant=refuse)
    assert record["steps"][-1]["total"] is None and "diverged" in record["steps"][-1]["notice"]
    assert (tmp_path / "o.png").is_file()


def test_help_has_an_example_and_bad_flag_exits_nonzero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["stylize", "--help"])
    assert exc.value.code == 0
    assert "example:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["stylize", str(PHOTO), str(STYLE), "-o", "x.png", "--init", "zeros"])
    assert exc.value.code != 0
    capsys.readouterr()
    # An unknown flag is reported under the command's own usage (argparse gives the top-level one).
    for command in (["stylize", str(PHOTO), str(STYLE), "-o", "x.png"], ["serve"]):
        with pytest.raises(SystemExit) as exc:
            main(command + ["--bogus"])
        err = capsys.readouterr().err
        assert exc.value.code == 2
        assert err.startswith(f"usage: artopt {command[0]} ") and "unrecognized arguments: --bogus" in err


def test_python_dash_m_runs_the_cli(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["artopt", "--version"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("artopt", run_name="__main__")
    assert exc.value.code == 0 and "artopt 0.1.0" in capsys.readouterr().out


def test_train_evaluate_bench_map_to_the_checkout_scripts():
    from artopt.cli import script_for

    assert script_for("train", "mnist")[0].name == "meta_train.py" and script_for("train", "mnist")[1] == ["mnist"]
    assert script_for("train", "neural-art")[0].name == "neural_art.py"
    assert script_for("evaluate", "neural-art")[0].name == "eval_neural_art.py"
    assert script_for("evaluate", "cifar5")[1] == ["cifar5"]
    assert script_for("bench", "speed")[1] == ["speed"]
    assert script_for("bench", "web")[0].name == "web_timing.py"
    for kind, target in (("train", "quadratic"), ("evaluate", "neural-art"), ("bench", "web")):
        assert script_for(kind, target)[0].is_file()


@pytest.mark.parametrize("argv, prog", [
    (["train", "neural-art"], "artopt train neural-art"),
    (["train", "quadratic"], "artopt train"),  # the suite is the script's own positional
    (["evaluate", "neural-art", "64"], "artopt evaluate neural-art"),
    (["evaluate", "mnist"], "artopt evaluate"),
    (["bench", "speed"], "artopt bench"),
    (["bench", "web"], "artopt bench web"),
])
def test_a_scripts_usage_and_errors_name_the_command_typed(argv, prog, capsys):
    # Before: "usage: neural_art.py ..." and "meta_train.py: error: ...", the file runpy ran.
    from artopt import script_args

    assert main([*argv, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: {prog} ")
    assert main([*argv, "--no-such-flag"]) == 2
    assert f"{prog}: error: unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    assert script_args.PROG is None  # restored: a script run directly names its file again


def test_a_scripts_flag_before_target_is_pointed_after_it(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--episodes", "2", "quadratic"])
    assert exc.value.code == 2
    assert "a script's flags go after TARGET: artopt train TARGET FLAGS" in capsys.readouterr().err


def test_train_runs_a_short_meta_training(tmp_path, capsys):
    rc = main(["train", "quadratic", "--episodes", "2", "--val-every", "2", "--val-problems", "1",
               "--runs", str(tmp_path), "--ship", ""])
    assert rc == 0
    assert (tmp_path / "quadratic" / "quadratic.safetensors").is_file()
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["episodes"] == 2
    assert main(["train", "quadratic", "--episodes", "x"]) == 2  # the script's own flag check


def test_train_with_a_time_budget_is_not_capped_at_1000_episodes(tmp_path, capsys):
    # A wall-time budget without --episodes: the budget decides (a tiny one is spent by the first
    # validation, which counts in it, or one episode later).
    rc = main(["train", "quadratic", "--minutes", "0.0001", "--val-every", "50", "--val-problems", "1",
               "--runs", str(tmp_path), "--ship", ""])
    assert rc == 0
    card = json.loads((tmp_path / "quadratic" / "quadratic.json").read_text())
    assert card["meta_training"]["episodes"] == 100_000
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["episodes"] <= 1


def test_train_without_a_checkout_says_where_the_scripts_live(tmp_path, monkeypatch, capsys):
    import artopt.cli as cli

    monkeypatch.setattr(cli, "_source_root", lambda: tmp_path)
    assert main(["train", "mnist"]) == 2
    assert "source checkout" in capsys.readouterr().err


def test_a_script_that_exits_with_a_message_shows_it(tmp_path, monkeypatch, capsys):
    import artopt.cli as cli

    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "neural_art.py").write_text("import sys\nsys.exit('the config does not match')\n")
    monkeypatch.setattr(cli, "_source_root", lambda: tmp_path)
    assert main(["train", "neural-art"]) == 1
    assert capsys.readouterr().err.strip() == "artopt: error: the config does not match"


@pytest.fixture
def instant_stylize(monkeypatch):
    """stylize() returns the content image at once (as a tensor, like the real one): for tests of what
    happens around the run."""
    from artopt.style import engine

    def instant(content, styles, config, **kwargs):
        instant.calls += 1
        return pil_to_tensor(content)

    instant.calls = 0
    monkeypatch.setattr(engine, "stylize", instant)
    return instant


@pytest.mark.parametrize("flag", ["-o", "--log-json"])
def test_unwritable_folder_is_refused_before_the_run(tmp_path, monkeypatch, capsys, instant_stylize, flag):
    import os

    locked = tmp_path / "ro"
    locked.mkdir()
    access = os.access
    # Root may write anywhere, so the locked folder is simulated.
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != locked and access(path, mode, **kw))
    names = {"-o": locked / "x.png", "--log-json": locked / "log.json"}
    args = ["-o", str(tmp_path / "o.png"), "--log-json", str(tmp_path / "log.json"), flag, str(names[flag])]
    code = main(["stylize", str(PHOTO), str(STYLE), *args, *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"artopt: error: {names[flag]}: folder {locked} is not writable"
    assert instant_stylize.calls == 0


def test_a_folder_that_refuses_a_write_is_found_before_the_run(tmp_path, monkeypatch, capsys, instant_stylize):
    """Root passes os.access everywhere; a trial file finds a folder whose writes fail (here faked as a
    read-only mount) before the run, not after it."""
    import errno
    import tempfile

    locked = tmp_path / "mount"
    locked.mkdir()
    real = tempfile.TemporaryFile

    def refusing(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == locked:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refusing)
    code = main(["stylize", str(PHOTO), str(STYLE), "-o", str(locked / "x.png"), *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"artopt: error: {locked / 'x.png'}: folder {locked} is not writable (Read-only file system)"
    assert instant_stylize.calls == 0 and list(locked.iterdir()) == []
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "ok.png"), *FAST]) == 0
    assert instant_stylize.calls == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["mount", "ok.png"]


def test_write_failures_after_the_run_are_one_line_errors_naming_the_users_file(tmp_path, monkeypatch, capsys,
                                                                                 instant_stylize):
    import errno
    import shutil

    out, log = tmp_path / "o.png", tmp_path / "logs" / "log.json"
    log.parent.mkdir()

    def refuse(image, fp, *args, **kwargs):  # what PIL raises in a folder it may not write
        raise PermissionError(errno.EACCES, "Permission denied", str(fp))

    with monkeypatch.context() as patch:
        patch.setattr(Image.Image, "save", refuse)
        code = main(["stylize", str(PHOTO), str(STYLE), "-o", str(out), *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"artopt: error: {out}: cannot write image (Permission denied)"  # not .o.png.tmp

    from artopt.style import engine

    def stylize_then_lose_the_log_folder(content, styles, config, **kwargs):
        shutil.rmtree(log.parent)
        return pil_to_tensor(content)

    monkeypatch.setattr(engine, "stylize", stylize_then_lose_the_log_folder)
    code = main(["stylize", str(PHOTO), str(STYLE), "-o", str(out), "--log-json", str(log), *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"artopt: error: --log-json {log}: cannot write it (No such file")
    assert "\n" not in err and out.is_file()
    kept = Path(re.search(r"the log was saved to (.+?); the image", err).group(1))
    try:
        assert json.loads(kept.read_text())["settings"]["output_path"] == str(out)
    finally:
        kept.unlink()


def test_a_log_that_cannot_be_written_leaves_the_last_one_whole(tmp_path, monkeypatch, capsys, instant_stylize):
    import errno
    import os

    out, log = tmp_path / "o.png", tmp_path / "log.json"
    log.write_text('{"the": "last run"}')
    real_replace = os.replace

    def full_disk(src, dst):
        if Path(dst) == log:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    code = main(["stylize", str(PHOTO), str(STYLE), "-o", str(out), "--log-json", str(log), *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"artopt: error: --log-json {log}: cannot write it (No space left on device)")
    assert log.read_text() == '{"the": "last run"}' and sorted(p.name for p in tmp_path.iterdir()) == ["log.json", "o.png"]
    kept = Path(re.search(r"the log was saved to (.+?); the image", err).group(1))
    try:
        assert json.loads(kept.read_text())["settings"]["output_path"] == str(out)
    finally:
        kept.unlink()


@pytest.mark.parametrize("flag", ["-o", "--log-json"])
def test_a_read_only_output_is_refused_before_the_run(tmp_path, monkeypatch, capsys, instant_stylize, flag):
    import os

    names = {"-o": tmp_path / "mine.png", "--log-json": tmp_path / "mine.json"}
    names[flag].write_bytes(b"keep me")
    access = os.access
    # Root may write anything, so the read-only file is simulated.
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != names[flag] and access(path, mode, **kw))
    args = ["-o", str(tmp_path / "o.png"), flag, str(names[flag])]
    code = main(["stylize", str(PHOTO), str(STYLE), *args, *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"artopt: error: {names[flag]} is read-only; make it writable or choose another name"
    assert instant_stylize.calls == 0 and names[flag].read_bytes() == b"keep me"


@pytest.mark.parametrize("existing, make_extra, message", [
    ("o.png", lambda d: [], "o.png exists and --no-clobber is given"),
    ("log.json", lambda d: ["--log-json", str(d / "log.json")], "log.json exists and --no-clobber is given"),
    ("o_step4.png", lambda d: ["--save-every", "2"], "--save-every would replace"),
])
def test_no_clobber_refuses_existing_outputs_before_the_run(tmp_path, capsys, instant_stylize, existing, make_extra,
                                                            message):
    (tmp_path / existing).write_text("mine")
    extra = make_extra(tmp_path)
    code = main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), *extra, "--no-clobber", *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("artopt: error:") and message in err and "\n" not in err
    assert instant_stylize.calls == 0 and (tmp_path / existing).read_text() == "mine"
    # Without the flag an existing output is replaced, as scripts expect.
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), *extra, *FAST]) == 0
    assert Image.open(tmp_path / "o.png").format == "PNG"


@pytest.mark.parametrize("lr, warned", [("0.02", "50x smaller"), ("10", "10x larger"), ("0.5", None), ("3", None)])
def test_an_lstm_lr_far_from_its_cards_multiplier_warns(tmp_path, capsys, instant_stylize, lr, warned):
    code = main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), "--optimizer", "lstm",
                 "--lr", lr, *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 0 and instant_stylize.calls == 1
    if warned:  # the shipped card's multiplier is 1
        assert err == (f"artopt: warning: for --optimizer lstm, --lr multiplies the learned step (its weights' "
                       f"card: 1); {lr} makes every step {warned} than that")
    else:
        assert "warning" not in err


def test_adam_takes_any_lr_without_a_warning(tmp_path, capsys, instant_stylize):
    code = main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), "--optimizer", "adam",
                 "--lr", "0.002", *FAST])
    assert code == 0 and "warning" not in capsys.readouterr().err


def test_optimizer_and_other_names_take_any_case():
    from artopt.cli import _build_parser

    args = _build_parser().parse_args(["stylize", "p.jpg", "s.jpg", "-o", "o.png", "--optimizer", "LSTM",
                                       "--loss-net", "EfficientNet-Lite0", "--init", "Noise"])
    assert (args.optimizer, args.loss_net, args.init) == ("lstm", "efficientnet-lite0", "noise")


def test_lstm_weights_with_another_optimizer_warn(tmp_path, capsys, instant_stylize):
    from artopt.learned_optimizers.shipped import weights_path

    code = main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), "--optimizer", "adam",
                 "--lstm-weights", str(weights_path("neural_art")), *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 0 and instant_stylize.calls == 1
    assert err == "artopt: warning: --lstm-weights is ignored: it is for --optimizer lstm, and this run uses adam"


def test_threads_are_asked_for_or_chosen_from_the_free_cores_and_logged(tmp_path, monkeypatch, capsys,
                                                                        instant_stylize):
    import torch

    from artopt import cpu

    before = torch.get_num_threads()
    monkeypatch.setattr(cpu, "usable_cores", lambda: [0, 1])
    monkeypatch.setattr(cpu, "busy_cores", lambda: 1.0)
    monkeypatch.setattr(cpu, "_torch_default", 2)  # (the tests run torch on 1 thread)
    log = tmp_path / "log.json"
    args = ["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), "--log-json", str(log)]
    try:
        assert main([*args, *FAST, "--threads", "2"]) == 0
        assert json.loads(log.read_text())["settings"]["cpu_threads"] == 2 == torch.get_num_threads()
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # (the tests set it: no choice by load)
        assert main([*args, *[f for f in FAST if f != "--quiet"]]) == 0
        assert json.loads(log.read_text())["settings"]["cpu_threads"] == 1 == torch.get_num_threads()
        assert "artopt: other processes keep 1.0 of the 2 cores busy: 1 thread" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit) as exc:
        main([*args, *FAST, "--threads", "0"])
    assert exc.value.code == 2 and "--threads: must be a positive whole number, got '0'" in capsys.readouterr().err


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_reaches_the_vgg_download(tmp_path, monkeypatch, capsys, instant_stylize, quiet):
    """--quiet silences the VGG-19 download too (torchvision's loader printed a line on stdout)."""
    from artopt.style import loss_nets

    monkeypatch.delenv(loss_nets.VGG_WEIGHTS_ENV, raising=False)
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "hub"))
    asked = []

    def offline(progress=True):
        asked.append(progress)
        raise loss_nets.LossNetError("offline")

    monkeypatch.setattr(loss_nets, "download_vgg19", offline)
    flags = [f for f in FAST if f != "--quiet"] + (["--quiet"] if quiet else [])
    flags[flags.index("efficientnet-lite0")] = "vgg19"
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), *flags]) == 2
    assert asked == [not quiet] and "offline" in capsys.readouterr().err


def test_the_log_names_the_vgg_weights_a_run_downloaded(tmp_path, monkeypatch, instant_stylize):
    """The run that downloads VGG-19 logged resolved_vgg_weights null: the file was looked up before the
    download put it in torch's cache."""
    import torch
    from safetensors.torch import save_file
    from torchvision.models.vgg import cfgs, make_layers

    from artopt.style import loss_nets

    monkeypatch.delenv(loss_nets.VGG_WEIGHTS_ENV, raising=False)
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "hub"))
    torch.manual_seed(0)
    features = make_layers(cfgs["E"])  # VGG-19's conv stack, random, saved as torchvision numbers it
    weights = tmp_path / "vgg19.safetensors"
    save_file({f"features.{k}": v.contiguous() for k, v in features.state_dict().items()}, str(weights))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda url, dst, **kwargs: Path(dst).write_bytes(weights.read_bytes()))
    flags = list(FAST)
    flags[flags.index("efficientnet-lite0")] = "vgg19"
    log = tmp_path / "log.json"
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), "--log-json", str(log),
                 "--vgg-pooling", "avg", *flags]) == 0  # (avg: not another test's cached network)
    settings = json.loads(log.read_text())["settings"]
    cached = tmp_path / "hub" / "checkpoints" / loss_nets.VGG19_CACHE_NAME
    assert settings["resolved_loss_net"] == "vgg19" and settings["resolved_vgg_weights"] == str(cached)


def test_vgg_flags_on_another_loss_net_warn(tmp_path, capsys, instant_stylize):
    # Before: --vgg-pooling avg on the default EfficientNet-Lite0 changed nothing, without a word.
    vgg_file = tmp_path / "vgg.pth"
    vgg_file.write_bytes(b"not read")
    code = main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), "--loss-net", "efficientnet-lite0",
                 "--vgg-pooling", "avg", "--vgg-weights", str(vgg_file), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0 and instant_stylize.calls == 1
    assert err == [f"artopt: warning: {flag} is ignored: it is for the vgg19 loss network, and this run uses "
                   "efficientnet-lite0" for flag in ("--vgg-pooling", "--vgg-weights")]
    main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), "--vgg-pooling", "max", *FAST])
    assert "warning" not in capsys.readouterr().err  # the default is no request


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "lots"])
def test_serve_refuses_a_bad_upload_limit(capsys, value):
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--max-upload-mb", value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"argument --max-upload-mb: must be a positive number, got '{value}'" in err


def test_serve_refuses_a_host_that_does_not_resolve(monkeypatch, capsys):
    import socket

    def unresolvable(host, port, *args, **kwargs):  # no lookup leaves the test
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)
    assert main(["serve", "--host", "999.1.1.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "artopt: error: --host 999.1.1.1: cannot resolve this name or address (Name or service not known)"


def test_serve_without_the_web_extra_says_what_to_install(monkeypatch, capsys):
    # A plain `pip install artopt` has no Gradio: `artopt serve` was a ModuleNotFoundError traceback.
    import artopt

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "artopt.web", raising=False)
    monkeypatch.delattr(artopt, "web", raising=False)
    assert main(["serve", "--host", "127.0.0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("artopt: error: the web app needs Gradio") and "pip install 'artopt[web]'" in err


def test_bench_typo_lists_every_target(capsys):
    import artopt.cli as cli

    with pytest.raises(SystemExit) as exc:
        main(["bench", "foo"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("usage: artopt bench ")
    targets = cli.bench_targets()
    assert f"invalid choice: 'foo' (choose from {', '.join(targets)})" in err
    # bench/stylize.py's own targets and those with their own script, each once
    assert {"quality", "gpu", "web", "task-step-time"} <= set(targets) and len(set(targets)) == len(targets)
    assert all(cli.script_for("bench", t)[0].is_file() for t in targets)


def test_bench_help_names_every_script_and_target(capsys):
    import artopt.cli as cli

    assert main(["bench", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    for target, script in cli.OTHER_BENCH_SCRIPTS.items():
        assert f"bench/{script}" in out and target in out

@pytest.mark.parametrize("flags, message", [
    (["--style-weights", "nan"], "--style-weights must be between"),
    (["--seed", str(-(2**63) - 1)], "--seed must be an integer between"),
    (["--style-weights", "1", "1"], "--style-weights has 2 value(s) for 1 style image(s)"),
])
def test_blend_weights_and_seed_are_checked_before_anything_loads(tmp_path, monkeypatch, capsys, flags, message):
    from artopt.style import loss_nets

    def no_loading(*args, **kwargs):
        raise AssertionError("the loss network was loaded before the flags were checked")

    monkeypatch.setattr(loss_nets, "build_loss_net", no_loading)
    code = main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), *flags, *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("artopt: error:") and message in err and "\n" not in err


@pytest.mark.parametrize("content, message", [
    ("missing.png", "file not found"),
    ("damaged.png", "not an image file (or a format artopt cannot read)"),
])
def test_unreadable_images_are_refused_before_the_loss_network_loads(tmp_path, monkeypatch, capsys, content,
                                                                      message):
    from artopt.style import loss_nets

    def no_loading(*args, **kwargs):  # building the network takes seconds; a typo should not wait for it
        raise AssertionError("the loss network was loaded before the images were read")

    monkeypatch.setattr(loss_nets, "build_loss_net", no_loading)
    (tmp_path / "damaged.png").write_bytes(b"not a png")
    code = main(["stylize", str(tmp_path / content), str(STYLE), "-o", str(tmp_path / "o.png"), *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"artopt: error: {tmp_path / content}: {message}"


def test_an_image_too_small_for_the_loss_network_is_refused(tmp_path, monkeypatch, capsys, instant_stylize):
    from artopt.style import loss_nets

    monkeypatch.setattr(loss_nets, "build_loss_net", lambda *a, **k: SimpleNamespace(min_size=40))
    small = tmp_path / "small.png"
    Image.new("RGB", (39, 60), "red").save(small)
    code = main(["stylize", str(PHOTO), str(small), "-o", str(tmp_path / "o.png"), *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"artopt: error: {small}: 39x60 is too small (the shorter side must be at least 40 px)"
    assert instant_stylize.calls == 0


@pytest.mark.parametrize("kind", ["train", "evaluate", "bench"])
def test_a_script_command_without_target_says_so_on_stderr(capsys, kind):
    with pytest.raises(SystemExit) as exc:  # before: the help on stdout, exit 2, and no word of what was wrong
        main([kind])
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith(f"artopt {kind}: error: a TARGET is needed: ")
    assert main([kind, "--help"]) == 0 and "TARGET" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--max-size", "100"], "artopt: error: --max-size must be between"),
    (["--queue-size", "0"], "artopt: error: --queue-size must be at least 1, got 0"),
    (["--concurrency", "0"], "artopt: error: --concurrency must be at least 1, got 0"),
    (["--device", "gpu"], "artopt: error: --device must be one of auto, cpu, cuda, mps (or cuda:N), got 'gpu'"),
])
def test_serve_errors_name_the_flags(capsys, flags, message):
    assert main(["serve", *flags]) == 2
    assert capsys.readouterr().err.strip().startswith(message)


def test_serve_on_a_busy_port_says_so(monkeypatch, capsys):
    from artopt import web

    def busy(*args, **kwargs):  # what Gradio raises when the port is taken
        raise OSError("Cannot find empty port in range: 7999-7999. You can specify a different port by ...")

    monkeypatch.setattr(web, "serve", busy)
    assert main(["serve", "--port", "7999"]) == 2
    assert capsys.readouterr().err.strip() == ("artopt: error: --port 7999: the port is in use on 127.0.0.1 "
                                               "(another server?); choose another with --port")


def test_an_output_too_large_for_the_machines_memory_is_refused_before_the_run(tmp_path, monkeypatch, capsys,
                                                                                instant_stylize):
    from artopt.style import engine

    # 48 x 32 px is estimated at 1 GiB + 1800 B/px, about 1.08 GB
    monkeypatch.setattr(engine, "system_memory", lambda: (1_000_000_000, None))
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("artopt: error: at 48 px a CPU run needs about 1.08 GB of memory, more than this machine's 1 GB")
    assert err.endswith("this machine is too small for a CPU run, or run on a GPU") and instant_stylize.calls == 0
    # enough memory, but less of it free: a warning, and the run goes on
    monkeypatch.setattr(engine, "system_memory", lambda: (8_000_000_000, 1_050_000_000))
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), *FAST]) == 0
    assert "artopt: warning: at 48 px a CPU run needs about 1.08 GB of memory and 1.05 GB is free now" in \
        capsys.readouterr().err and instant_stylize.calls == 1
    # --style-scale counts: the style goes through the loss network at 8 x 48 px
    monkeypatch.setattr(engine, "system_memory", lambda: (1_100_000_000, None))
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), *FAST]) == 0
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), "--style-scale", "8", *FAST]) == 2
    # (no size fits this machine at that scale; it said "too small for a CPU run or a smaller style scale")
    assert capsys.readouterr().err.strip().endswith("this machine is too small for a CPU run at this style scale, "
                                                    "or run on a GPU")
    assert instant_stylize.calls == 2


def test_running_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys):
    from artopt.style import engine

    def starved(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 34359738368 bytes.")

    monkeypatch.setattr(engine, "stylize", starved)
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), *FAST]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("artopt: error: out of memory at this size (") and err.endswith("choose a smaller --size")
    assert "\n" not in err


def test_ctrl_c_while_the_command_starts_is_one_line(monkeypatch, capsys):
    import artopt.cli as cli

    def interrupted():  # building the parser imports torch, which takes seconds
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_build_parser", interrupted)
    assert main(["stylize", "--help"]) == 130
    assert capsys.readouterr().err == "artopt: aborted\n"


def test_save_every_with_lbfgs_saves_past_each_multiple(tmp_path):
    # an L-BFGS step counts several evaluations: "step % N == 0" skipped most multiples
    out, log = tmp_path / "o.png", tmp_path / "log.json"
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(out), "--log-json", str(log), "--optimizer", "lbfgs",
                 "--steps", "12", "--save-every", "3", *FAST[:2], *FAST[4:]]) == 0
    steps = [r["step"] for r in json.loads(log.read_text())["steps"]]
    expected = {next(s for s in steps if s >= 3 * k) for k in range(1, steps[-1] // 3 + 1)}
    saved = {int(p.stem.removeprefix("o_step")) for p in tmp_path.glob("o_step*.png")}
    assert saved == expected and len(saved) >= 3, (steps, saved)


def test_outputs_given_as_symbolic_links_are_written_through_them(tmp_path):
    # The atomic save put a file in the link's place and left the target as it was.
    target_dir = tmp_path / "targets"
    target_dir.mkdir()
    (target_dir / "out.png").write_bytes(b"old")
    (target_dir / "log.json").write_text('{"old": 1}')
    (tmp_path / "out.png").symlink_to(target_dir / "out.png")
    (tmp_path / "log.json").symlink_to(target_dir / "log.json")
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "out.png"), "--log-json",
                 str(tmp_path / "log.json"), *FAST]) == 0
    assert (tmp_path / "out.png").is_symlink() and (tmp_path / "log.json").is_symlink()
    assert Image.open(target_dir / "out.png").size == (48, 32)
    assert "settings" in json.loads((target_dir / "log.json").read_text())


def test_a_ctrl_c_logs_each_step_once_and_the_outputs_losses(tmp_path, monkeypatch, capsys):
    import os
    import signal

    from artopt.style import engine

    real = engine.stylize

    def interrupted(content, styles, config, callback=None, **kwargs):
        def relay(info):
            callback(info)
            if info.step == 2 and info.final_losses is None:
                os.kill(os.getpid(), signal.SIGINT)  # the CLI's handler: stop after this step

        return real(content, styles, config, callback=relay, **kwargs)

    monkeypatch.setattr(engine, "stylize", interrupted)
    out, log = tmp_path / "o.png", tmp_path / "log.json"
    # saved, and 130 as for any Ctrl-C: 0 let `artopt stylize ... && publish` publish a cut-short image
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(out), "--log-json", str(log),
                 "--optimizer", "adam", *[a if a != "3" else "20" for a in FAST]]) == 130
    record = json.loads(log.read_text())
    assert record["stopped_early"] and [s["step"] for s in record["steps"]] == [1, 2]
    assert record["final_losses"]["total"] is not None and out.is_file()


# Mutation audit, round 2 (session 51): each test below failed on a one-line bug the suite missed.

def test_save_every_names_and_writes_intermediates_in_the_outputs_format(tmp_path):
    out = tmp_path / "out.jpg"
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(out), "--save-every", "2", *FAST]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jpg", "out_step2.jpg"]
    assert Image.open(tmp_path / "out_step2.jpg").format == "JPEG"


def test_save_every_saves_at_the_first_step_past_each_multiple(tmp_path, monkeypatch):
    # L-BFGS steps count several evaluations: here the steps are 2, 4, 7, 8 and the engine sends
    # images at 4 (past 3), 7 (past 6) and 8 (the last).  The real engine's L-BFGS now mostly takes one
    # evaluation a step, so the lbfgs run in test_cli.py cannot tell this from "step % N == 0".
    import torch

    from artopt.style import engine

    def fake(content, styles, config, callback=None, image_every=0, **kwargs):
        image = torch.full((1, 3, 32, 48), 0.5)
        for step, with_image in ((2, False), (4, True), (7, True), (8, True)):
            callback(engine.StepInfo(step=step, total_steps=8, scale_index=0, n_scales=1, size=(32, 48),
                                     losses={"total": 1.0}, elapsed=0.1, image=image if with_image else None,
                                     final_losses={"total": 1.0} if step == 8 else None))
        return image

    monkeypatch.setattr(engine, "stylize", fake)
    out = tmp_path / "o.png"
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(out), "--save-every", "3", *FAST]) == 0
    assert sorted(p.name for p in tmp_path.glob("o_step*")) == ["o_step4.png", "o_step7.png"]


def test_a_kept_earlier_image_is_not_saved_as_the_last_steps_snapshot(tmp_path):
    """keep_best returns the image after step 2 of 4 here: OUT_step4 would have held it under step 4's name."""
    flags = [f for f in FAST if f not in ("--steps", "3")] + ["--steps", "4", "--optimizer", "adam", "--lr", "0.1",
                                                            "--size", "64", "--save-every", "2"]
    for keep in ("--keep-best", "--no-keep-best"):
        out = tmp_path / keep / "o.png"
        out.parent.mkdir()
        assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(out), "--log-json", str(out.with_suffix(".json")),
                     *flags, keep]) == 0
        log = json.loads(out.with_suffix(".json").read_text())
        step2, step4 = out.with_name("o_step2.png"), out.with_name("o_step4.png")
        if keep == "--keep-best":
            assert log["kept_after_step"] == 2 and step2.is_file() and not step4.exists()
            assert load_image(str(out)).tobytes() == load_image(str(step2)).tobytes()
        else:
            assert log["kept_after_step"] is None and step2.is_file() and step4.is_file()


def test_the_log_names_the_steps_where_backoff_lowered_the_learned_step(tmp_path, monkeypatch):
    """The engine test's rising LSTM run (content weight 100, 3x the learned step, no grace steps): the
    log lists the steps that halved the step and has the new multiplier on each; --no-backoff turns it off."""
    from artopt.style import engine

    monkeypatch.setattr(engine, "BACKOFF_GRACE", 0)
    flags = [f for f in FAST if f not in ("--steps", "3", "--size", "48")] + [
        "--steps", "8", "--size", "64", "--optimizer", "lstm", "--lr", "3", "--content-weight", "100",
        "--handoff-lr", "0"]  # (backoff alone: the handoff would take over at step 4)
    for choice, steps in (("--backoff", [4, 7]), ("--no-backoff", [])):
        log_path = tmp_path / f"{choice}.json"
        assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / f"{choice}.png"),
                     "--log-json", str(log_path), *flags, choice]) == 0
        log = json.loads(log_path.read_text())
        assert log["settings"]["backoff"] == (choice == "--backoff") and log["backoff_steps"] == steps
        assert [s.get("step_scale") for s in log["steps"] if s["step"] in steps] == [0.5, 0.25][:len(steps)]
        assert sum("step_scale" in s for s in log["steps"]) == len(steps)


def test_without_quiet_the_run_draws_its_progress_bar_and_notices(tmp_path, capsys):
    # Every other test passes --quiet: the bar's path (its total, loss and notices) ran in no test.
    flags = [f for f in FAST if f != "--quiet"]
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), *flags]) == 0
    out, err = capsys.readouterr()
    assert out == ""  # the bar and the notices go to stderr: stdout stays a script's
    assert "3/3" in err and "loss=" in err and "scale=1/1" in err, err
    assert "efficientnet-lite0" in err  # the first step's notice (how the run was set up), written beside the bar


def test_log_json_dash_is_standard_output(tmp_path, capsys, monkeypatch):
    # It made a file named "-" in the current folder.
    monkeypatch.chdir(tmp_path)
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "o.png"), "--log-json", "-", *FAST]) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "-").exists() and json.loads(out)["settings"]["output_path"] == str(tmp_path / "o.png")


def test_an_empty_image_path_is_named_as_such(tmp_path, capsys):
    # It said ": is a folder, not an image" (Path("") is the current folder).
    assert main(["stylize", "", str(STYLE), "-o", str(tmp_path / "o.png"), *FAST]) == 2
    assert "an empty file name was given for an image" in capsys.readouterr().err


def test_no_clobber_keeps_a_file_that_appeared_during_the_run(tmp_path, monkeypatch, capsys):
    # Checked only when the run started: another run's output made meanwhile was replaced.
    from artopt.style import engine

    out = tmp_path / "o.png"
    real = engine.stylize

    def another_run_finishes_first(*args, **kwargs):
        result = real(*args, **kwargs)
        Image.new("RGB", (8, 8), (1, 2, 3)).save(out)
        return result

    monkeypatch.setattr(engine, "stylize", another_run_finishes_first)
    import tempfile

    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the run's own image goes
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(out), "--no-clobber", *FAST]) == 2
    assert Image.open(out).size == (8, 8)  # the other run's image stays
    err = capsys.readouterr().err
    assert "appeared during the run" in err and "the image was saved to" in err, err
    assert len(list((tmp_path / "tmp").glob("artopt-o-*.png"))) == 1  # nothing the user made is lost


def test_save_every_refuses_only_the_names_it_writes(tmp_path, capsys):
    # A photo named o_step02.jpg was refused (step images have no leading zero), and a clash with the
    # log told the user to rename the output.
    photo = tmp_path / "o_step02.jpg"
    photo.write_bytes(PHOTO.read_bytes())
    assert main(["stylize", str(photo), str(STYLE), "-o", str(tmp_path / "o.jpg"), "--save-every", "2", *FAST]) == 0
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(tmp_path / "p.png"), "--save-every", "2",
                 "--log-json", str(tmp_path / "p_step2.png"), *FAST]) == 2
    assert "over the --log-json file; choose another --log-json name" in capsys.readouterr().err
