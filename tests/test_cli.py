"""The command line: writes the image and the JSON log; bad input gives one line and a non-zero exit."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from PIL import Image

from artopt.cli import main

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
    assert [s["step"] for s in record["steps"]] == [1, 2, 3]
    assert {"total", "content", "style", "tv", "wall_time"} <= set(record["steps"][0])


def test_save_every_writes_intermediate_images(tmp_path):
    out = tmp_path / "out.png"
    assert main(["stylize", str(PHOTO), str(STYLE), "-o", str(out), "--save-every", "2", *FAST]) == 0
    assert (tmp_path / "out_step2.png").is_file() and out.is_file()


@pytest.mark.parametrize("make_args, message", [
    (lambda d: [str(d / "missing.jpg"), str(STYLE), "-o", str(d / "o.png")], "not found"),
    (lambda d: [str(d / "text.jpg"), str(STYLE), "-o", str(d / "o.png")], "not an image"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "o.gif")], "output must end in"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "no" / "o.png")], "does not exist"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "o.png"), "--style-weights", "1", "2"], "2 value(s) for 1 style"),
    (lambda d: [str(PHOTO), str(STYLE), "-o", str(d / "o.png"), "--lr", "-1"], "learning rate"),
])
def test_bad_input_gives_one_line_error(tmp_path, capsys, make_args, message):
    (tmp_path / "text.jpg").write_text("hello")
    code = main(["stylize", *make_args(tmp_path), *FAST])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("artopt: error:") and message in err and "\n" not in err
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


def test_train_runs_a_short_meta_training(tmp_path, capsys):
    rc = main(["train", "quadratic", "--episodes", "2", "--val-every", "2", "--val-problems", "1",
               "--runs", str(tmp_path), "--ship", ""])
    assert rc == 0
    assert (tmp_path / "quadratic" / "quadratic.safetensors").is_file()
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["episodes"] == 2
    assert main(["train", "quadratic", "--episodes", "x"]) == 2  # the script's own flag check


def test_train_with_a_time_budget_is_not_capped_at_1000_episodes(tmp_path, capsys):
    # A wall-time budget without --episodes: the budget decides (a tiny one stops after one episode).
    rc = main(["train", "quadratic", "--minutes", "0.0001", "--val-every", "50", "--val-problems", "1",
               "--runs", str(tmp_path), "--ship", ""])
    assert rc == 0
    card = json.loads((tmp_path / "quadratic" / "quadratic.json").read_text())
    assert card["meta_training"]["episodes"] == 100_000
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["episodes"] == 1


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
