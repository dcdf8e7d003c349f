"""The benchmark scripts (bench/*.py): bad flags and unwritable outputs end in one argparse error
line (exit 2) before any work, the JSON they write is strict, and a few of their numbers and labels.
No benchmark runs here: each test stops at the checks or fakes the runs."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def load(name: str):
    """bench/NAME.py as a module (not run as __main__)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def strict_loads(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def no_cli_runs(monkeypatch):
    """The user-setting benchmarks' `artopt stylize` runs fail the test: nothing may run before the checks."""
    load("cli_runs")  # puts bench/ on sys.path
    import cli_runs

    def refuse(*args, **kwargs):
        raise AssertionError(f"a run started before the flags were checked: {args}")

    monkeypatch.setattr(cli_runs.subprocess, "run", refuse)


def expect_usage_error(capsys, name: str, argv: list[str], words: str) -> str:
    with pytest.raises(SystemExit) as exc:
        load(name).main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    last = err.strip().splitlines()[-1]
    assert "error:" in last and words in last, err
    return last


@pytest.mark.parametrize("name, argv", [
    ("stylize", ["speed", "--timed-steps", "0"]),
    ("stylize", ["layers", "--steps", "0"]),
    ("task_step_time", ["--suites", "quadratic", "--repeats", "0"]),
    ("web_timing", ["--steps", "0"]),  # 0 used to run the engine's default steps
    ("long_runs", ["--steps", "1", "--size", "64", "--points", "0"]),  # labelled the last loss "0"
    ("basis_variants", ["--problems", "0"]),
    ("basis_fourier", ["--jobs", "0"]),
    ("basis_hybrid", ["--problems", "0"]),
    ("lstm_features", ["--engine-steps", "1"]),
    ("lstm_ops", ["--rounds", "0"]),
    ("lstm_threads", ["--rounds", "0"]),
    ("lstm_onednn", ["--coords", "1000", "--rounds", "0"]),
    ("lstm_layout", ["--repeats", "0"]),
    ("coarse_share", ["val", "--jobs", "0"]),  # a ValueError from the process pool
    ("carry_state", ["val", "--jobs", "0"]),
    ("fine_scale_step", ["val", "--jobs", "0"]),
])
def test_counts_below_their_minimum_are_refused_before_any_work(capsys, no_cli_runs, tmp_path, name, argv):
    expect_usage_error(capsys, name, [*argv, *(["--results", str(tmp_path)] if name == "stylize" else [])],
                       "must be at least")


@pytest.mark.parametrize("name, argv", [
    ("stylize", ["layers", "--results"]),
    ("task_step_time", ["--suites", "quadratic", "--repeats", "1", "--json"]),
    ("loss_net_truncation", ["--json"]),
    ("web_timing", ["--json"]),
    ("style_sweep", ["--json"]),
    ("loss_weights", ["--out"]),
    ("basis_variants", ["--json"]),
    ("basis_fourier", ["--json"]),
    ("basis_hybrid", ["--json"]),
    ("lstm_features", ["--json"]),
    ("lstm_ops", ["--json"]),
    ("lstm_threads", ["--json"]),
])
def test_outputs_that_cannot_be_written_are_refused_before_any_work(capsys, no_cli_runs, tmp_path, name, argv):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    last = expect_usage_error(capsys, name, [*argv, str(blocker / "out" / "x.json")], "is a file, not a folder")
    assert str(blocker) in last


def test_an_output_folder_given_for_a_file_is_refused(capsys, no_cli_runs, tmp_path):
    expect_usage_error(capsys, "long_runs", ["--json", str(tmp_path), "--out", str(tmp_path / "runs")],
                       "is a folder; give a file name")
    expect_usage_error(capsys, "stylize", ["layers", "--results", __file__], "is a file; give a folder")


@pytest.mark.parametrize("name, argv, words", [
    ("stylize", ["quality", "--photos", "nope"], "no nope.jpg"),
    ("stylize", ["lr-sweep", "--optimizers", "lstm"], "invalid choice: 'lstm'"),  # was silently no optimizer
    ("stylize", ["lr-sweep", "--size", "40"], "at least 48 px"),  # chelsea.jpg is 3:2 (31.9 px high at 48)
    ("stylize", ["memory", "--sizes", "512", "9000"], "--sizes"),
    ("stylize", ["gpu", "--steps", "3"], "no step for the final scale"),  # curve[-1] of an empty curve
    ("long_runs", ["--photos", "nope"], "no nope.jpg"),
    ("loss_weights", ["--style", "nope"], "no nope.jpg"),
    ("style_sweep", ["--size", "16"], "--size"),
    ("style_sweep", ["--handoff-lr", "0"], "--handoff-lr must be positive"),
    ("handoff", ["test", "--lr", "-1"], "--lr must be positive"),
    ("handoff_finer", ["test"], "test needs --lr"),
    ("handoff_finer", ["probe", "--lrs", "0"], "rates must be positive"),
    ("style_sweep", ["--handoff-finer-lr", "0.001", "--handoff-lr", "0.001"], "not with --handoff-lr"),
    ("sizes", ["--sizes", "64", "16"], "--sizes"),
    ("sizes", ["--sizes", "40"], "at least 48 px"),  # chelsea.jpg is 3:2: 27 px high at 40
    ("new_inputs", ["--sizes", "16"], "--sizes"),
    ("adam_rates", ["--sizes", "16"], "--sizes"),
    ("user_options", ["--size", "16"], "--size"),
    ("threads_under_load", ["--loads", "-1"], "--loads must be 0 or more"),
    ("task_step_time", ["--suites", "quadratic,nope"], "unknown 'nope'"),
    ("web_timing", ["--size", "64"], "the page's limits"),  # the page would run 256 px, recorded as 64
    ("web_timing", ["--optimizer", "foo"], "no menu entry 'foo'"),
    ("web_timing", ["--content", "/no/such.jpg"], "no such file"),
    ("web_timing", ["--chromium", "/no/such/chromium"], "no such program"),
    # each was a traceback, some after minutes of runs
    ("fine_scale_step", ["test", "256-pyramid-on", "--step", "0"], "--step must be a positive number"),
    ("fine_scale_step", ["val", "--runs", __file__], "is a file; give a folder"),
    ("carry_state", ["val", "--runs", __file__], "is a file; give a folder"),
    ("coarse_share", ["val", "--runs", __file__], "is a file; give a folder"),
    ("coarse_share", ["speed", str(Path(__file__).resolve().parents[1] / "train" / "results" / "neural_art"
                                   / "256-pyramid-on.json")], "not the timed --coarse-share evaluation's JSON"),
    ("new_inputs", ["--sizes", "36"], "at 36 px the content image's shorter side is 31 px"),  # after drawing styles
])
def test_bad_inputs_are_refused_before_any_work(capsys, no_cli_runs, tmp_path, name, argv, words):
    extra = {"stylize": ["--results", str(tmp_path)], "task_step_time": ["--repeats", "1"]}.get(name, [])
    expect_usage_error(capsys, name, [*argv, *extra], words)


@pytest.mark.parametrize("name", ["basis_variants", "basis_fourier", "basis_hybrid"])
def test_a_probe_refuses_weights_it_cannot_read_or_would_write_over(capsys, tmp_path, name):
    weights = tmp_path / "w.safetensors"
    shutil.copy(ROOT / "weights" / "neural_art.safetensors", weights)
    # was replaced by the report
    expect_usage_error(capsys, name, ["--weights", str(weights), "--json", str(weights)],
                       f"--json {weights} is also the input of --weights: it would be overwritten")
    assert weights.read_bytes() == (ROOT / "weights" / "neural_art.safetensors").read_bytes()
    card = ROOT / "weights" / "neural_art.json"  # the card given for the weights: a traceback per worker
    expect_usage_error(capsys, name, ["--weights", str(card), "--json", str(tmp_path / "r.json")], str(card))
    mnist = ROOT / "weights" / "mnist.safetensors"  # another task's optimizer: it ran and scored without a word
    expect_usage_error(capsys, name, ["--weights", str(mnist), "--json", str(tmp_path / "r.json")],
                       "says it was meta-trained on 'mnist', not neural art")
    # a seed torch cannot take: a traceback from each worker process
    seeds = ["--val-seeds"] if name == "basis_variants" else ["--tune-seed"]
    expect_usage_error(capsys, name, [*seeds, str(2**64), "--json", str(tmp_path / "r.json")],
                       f"must be a seed from 0 to {2**63 - 1 - 10_000}, got {2**64}")


@pytest.mark.parametrize("name, argv, words", [
    ("web_timing", ["--json", "{content}"], "is also the input of --content"),  # the photo became the report
    ("web_timing", ["--screenshot", "{out}", "--zero-byte-screenshot", "{out}"], "is also the output of --screenshot"),
    ("loss_weights", ["--json", "{style}"], "is also the input of --style"),
    ("long_runs", ["--json", "{content}"], "is also the input of --photos"),
])
def test_a_benchmark_output_may_not_name_its_inputs_or_another_output(capsys, no_cli_runs, tmp_path, name, argv,
                                                                       words):
    paths = {"content": ROOT / "assets" / "photos" / "chelsea.jpg", "out": tmp_path / "x.png",
             "style": ROOT / "assets" / "styles" / "woman_with_a_hat.jpg"}
    before = {k: p.read_bytes() for k, p in paths.items() if p.exists()}
    argv = [a.format(**paths) for a in argv]
    extra = ["--photos", "chelsea", "--out", str(tmp_path / "runs")] if name != "web_timing" else []
    expect_usage_error(capsys, name, [*argv, *extra], words)
    assert {k: p.read_bytes() for k, p in paths.items() if p.exists()} == before


@pytest.mark.parametrize("name, argv, flags, report", [
    ("style_sweep", ["--size", "512"], "--size makes", "style_sweep.json"),
    ("style_sweep", ["--handoff-lr", "0.0009", "--handoff-warmup", "10"], "--handoff-lr, --handoff-warmup make",
     "style_sweep.json"),
    ("adam_rates", ["--basis", "multiscale", "--reuse"], "--basis makes", "adam_rates.json"),
    ("sizes", ["--sizes", "96"], "--sizes makes", "sizes.json"),
    ("new_inputs", ["--sizes", "256"], "--sizes makes", "new_inputs.json"),
    ("long_runs", ["--photos", "chelsea"], "--photos makes", "long_runs.json"),
    ("user_options", ["--size", "512"], "--size makes", "user_options.json"),
    ("handoff", ["--lr", "0.0009"], "--lr makes", "handoff_probe.json"),
    ("handoff", ["--no-pyramid", "--sizes", "256"], "--sizes, --no-pyramid make", "handoff_probe.json"),
    ("handoff_finer", ["probe", "--first-photo", "4"], "--first-photo makes", "handoff_finer_probe.json"),
])
def test_a_variant_run_must_name_its_report(capsys, no_cli_runs, tmp_path, name, argv, flags, report):
    """A run at other settings than the default wrote over the committed report of the default run
    (style_sweep --size 512 over style_sweep.json)."""
    committed = ROOT / "bench" / "results" / report
    before = committed.read_bytes()
    expect_usage_error(capsys, name, [*argv, "--out", str(tmp_path / "runs")] if name not in ("handoff", "handoff_finer")
                       else [*argv, "--runs", str(tmp_path / "runs")],
                       f"{flags} this run a variant of the committed report bench/results/{report}: name its own "
                       "report with --json PATH")
    assert committed.read_bytes() == before


@pytest.mark.parametrize("name, argv, runs", [
    ("handoff_finer", ["when", "--jobs", "2"], "when"),  # was a TypeError: it named test's report, of --lr None
    ("handoff_finer", ["probe", "--jobs", "2"], "probe"),
    ("handoff_finer", ["test", "--lr", "0.0036", "--jobs", "2"], "test"),
    ("handoff", ["--jobs", "2"], "run_all"),
    ("handoff", ["test", "--lr", "0.0009", "--jobs", "2"], "test"),
])
def test_the_documented_commands_get_to_their_runs(monkeypatch, tmp_path, name, argv, runs):
    script = load(name)

    def reached(*args, **kwargs):
        raise SystemExit("reached the runs")

    monkeypatch.setattr(script, runs, reached)
    with pytest.raises(SystemExit, match="reached the runs"):
        script.main([*argv, "--runs", str(tmp_path / "runs")])


def test_the_default_settings_write_the_committed_report_and_a_named_one_goes_where_it_is_named(tmp_path):
    from artopt.script_args import script_parser

    load("cli_runs")
    import cli_runs

    ap = script_parser("x")
    cli_runs.add_run_flags(ap, "style_sweep", style=False)
    ap.add_argument("--jobs", type=int, default=1)
    default = ROOT / "bench" / "results" / "style_sweep.json"
    # where files go and how many run at once do not make a variant
    args = ap.parse_args(["--out", str(tmp_path), "--reuse", "--jobs", "2", "--photos", "chelsea", "rocket"])
    assert cli_runs.report_path(ap, args) == default
    args = ap.parse_args(["--size", "512", "--json", str(tmp_path / "r.json")])
    assert cli_runs.report_path(ap, args) == tmp_path / "r.json"
    args = ap.parse_args(["--size", "512"])
    assert cli_runs.report_path(ap, args, tmp_path / "other.json", exempt=("size",)) == tmp_path / "other.json"


def test_artopt_bench_passes_the_scripts_usage_errors_on(capsys):
    from artopt.cli import main

    assert main(["bench", "task-step-time", "--suites", "quadratic", "--repeats", "0"]) == 2
    assert "error: argument --repeats: must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "cli_runs"))
def test_every_script_has_help(capsys, name):
    """--help prints the flags and runs nothing (loss_net_truncation ran the benchmark and replaced
    its committed JSON)."""
    with pytest.raises(SystemExit) as exc:
        load(name).main(["--help"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("usage:")


def test_json_is_strict_non_finite_numbers_are_null(tmp_path):
    from artopt.script_args import dumps

    assert strict_loads(dumps({"a": math.nan, "b": [math.inf, 1.5], "c": (2, -math.inf)})) == \
        {"a": None, "b": [None, 1.5], "c": [2, None]}
    cli_runs = load("cli_runs")
    cli_runs.write_report({"ratio": math.inf, "losses": [math.nan]}, tmp_path / "r.json")
    assert strict_loads((tmp_path / "r.json").read_text()) == {"ratio": None, "losses": [None]}
    stylize = load("stylize")
    stylize.RESULTS = tmp_path
    stylize.write_json("x", {"loss": math.nan})
    assert strict_loads((tmp_path / "x.json").read_text())["loss"] is None


def test_lr_sweep_best_rate_is_never_a_diverged_one(monkeypatch, tmp_path):
    """min() keeps a NaN it meets first: a diverged first rate was reported as the best."""
    stylize = load("stylize")
    losses = {0.01: math.nan, 0.02: 3.0, 0.05: 2.0}

    def fake_stylize(content, styles, config, callback):  # the last step began at 99: the returned image decides
        callback(SimpleNamespace(losses={"total": 99.0}, final_losses={"total": losses[config.lr]}))

    monkeypatch.setattr(stylize, "stylize", fake_stylize)
    monkeypatch.setattr(stylize, "_load_assets", lambda names, folder: [None])
    monkeypatch.setattr(stylize, "RESULTS", tmp_path)
    stylize.bench_lr_sweep(SimpleNamespace(size=64, steps=1, optimizers=["adam"]))
    report = strict_loads((tmp_path / "lr_sweep.json").read_text())
    assert report["best_lr"] == {"adam": "0.05"}
    assert report["final_total_loss"]["adam"]["0.01"] is None


def _fake_log(path: Path, content: Path, style: Path, size: int) -> None:
    path.write_text(json.dumps({"settings": {"size": size, "optimizer": "lstm", "resolved_optimizer": "lstm",
                                             "keep_best": True, "backoff": True, "handoff_lr": 0.0009,
                                             "handoff_warmup": 10, "handoff_finer_lr": 0.0036,
                                             "handoff_finer_within": 1.0, "handoff_finer_steps": 83,
                                             "content_path": str(content),
                                             "style_paths": [str(style)]},
                                "steps": [{"step": 1, "scale": 0, "total": 2.0}, {"step": 2, "scale": 0, "total": 1.5}],
                                "final_losses": {"total": 1.25}}))


def test_reuse_reads_only_a_log_of_the_same_settings(monkeypatch, tmp_path):
    """loss_weights' and style_sweep's run names do not name the size: --reuse read a run made at
    another --size as this one."""
    cli_runs = load("cli_runs")
    content, style = ROOT / "assets" / "photos" / "chelsea.jpg", ROOT / "assets" / "styles" / "woman_with_a_hat.jpg"
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        _fake_log(Path(cmd[cmd.index("--log-json") + 1]), content, style, int(cmd[cmd.index("--size") + 1]))
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(cli_runs.subprocess, "run", fake_run)
    _fake_log(tmp_path / "run.json", content, style, 128)
    cli_runs.stylize_totals(content, style, ["--size", "128", "--optimizer", "lstm"], tmp_path, "run", reuse=True)
    assert calls == []  # the same settings: reused
    run = cli_runs.stylize_totals(content, style, ["--size", "64", "--optimizer", "lstm"], tmp_path, "run", reuse=True)
    assert len(calls) == 1 and run["settings"]["size"] == 64


def test_reuse_reads_a_log_of_the_same_images_however_their_paths_are_spelt(monkeypatch, tmp_path, capsys):
    """A log whose image paths were spelt otherwise (through '..', or in another checkout) was rerun
    without a word."""
    cli_runs = load("cli_runs")
    photos, styles = ROOT / "assets" / "photos", ROOT / "assets" / "styles"
    content, style = photos / "chelsea.jpg", styles / "woman_with_a_hat.jpg"
    elsewhere = tmp_path / "other_checkout"
    elsewhere.mkdir()
    shutil.copy(style, elsewhere / "woman_with_a_hat.jpg")
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        _fake_log(Path(cmd[cmd.index("--log-json") + 1]), content, style, 128)
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(cli_runs.subprocess, "run", fake_run)
    flags = ["--size", "128", "--optimizer", "lstm"]
    _fake_log(tmp_path / "run.json", photos / ".." / "photos" / "chelsea.jpg", elsewhere / "woman_with_a_hat.jpg", 128)
    cli_runs.stylize_totals(content, style, flags, tmp_path, "run", reuse=True)
    assert calls == []
    _fake_log(tmp_path / "run.json", photos / "rocket.jpg", style, 128)  # another photo: run again, and said
    cli_runs.stylize_totals(content, style, flags, tmp_path, "run", reuse=True)
    assert len(calls) == 1 and "it is of other images" in capsys.readouterr().out


def test_reuse_tells_a_switch_from_a_flag_with_a_value(tmp_path):
    """--keep-colors takes no value: a log is reused for it only where the run kept the colours, and
    the flags after it still pair up."""
    cli_runs = load("cli_runs")
    content, style = ROOT / "assets" / "photos" / "chelsea.jpg", ROOT / "assets" / "styles" / "woman_with_a_hat.jpg"
    log = tmp_path / "run.json"
    _fake_log(log, content, style, 128)
    flags = ["--keep-colors", "--size", "128", "--optimizer", "lstm"]
    assert not cli_runs._log_matches(log, content, style, flags)  # the run did not keep the colours
    found = json.loads(log.read_text())
    found["settings"]["keep_colors"] = True
    log.write_text(json.dumps(found))
    assert cli_runs._log_matches(log, content, style, flags)
    assert not cli_runs._log_matches(log, content, style, ["--keep-colors", "--size", "64"])
    assert cli_runs._flag_values(["--init", "noise", "--keep-colors", "--lr", "-1"]) == [
        ("--init", "noise"), ("--keep-colors", None), ("--lr", "-1")]


def test_a_runs_losses_after_each_step_end_in_the_returned_images():
    """The log's per-step total is the loss a step started from: the benchmarks reported the loss
    before the last update as the final one, and long_runs labelled the loss after p - 1 steps as p."""
    cli_runs = load("cli_runs")
    content, style = ROOT / "assets" / "photos" / "chelsea.jpg", ROOT / "assets" / "styles" / "woman_with_a_hat.jpg"
    with tempfile.TemporaryDirectory() as folder:
        _fake_log(Path(folder) / "run.json", content, style, 64)
        run = cli_runs.stylize_totals(content, style, ["--size", "64"], Path(folder), "run", reuse=True)
        assert run["totals"] == [2.0, 1.5] and run["after"] == [1.5, 1.25] and run["final_total"] == 1.25
        old = json.loads((Path(folder) / "run.json").read_text())
        del old["settings"]["backoff"]  # an LSTM log from before backoff: its losses are of another run
        (Path(folder) / "run.json").write_text(json.dumps(old))
        assert not cli_runs._log_matches(Path(folder) / "run.json", content, style, ["--size", "64"])
        old["settings"]["resolved_optimizer"] = "adam"  # which backoff leaves alone
        (Path(folder) / "run.json").write_text(json.dumps(old))
        assert cli_runs._log_matches(Path(folder) / "run.json", content, style, ["--size", "64"])
        del old["settings"]["keep_best"]  # a log from before keep_best: its final loss is the last image's
        (Path(folder) / "run.json").write_text(json.dumps(old))
        assert not cli_runs._log_matches(Path(folder) / "run.json", content, style, ["--size", "64"])
        del old["final_losses"]  # a log from before final_losses: not reused (it would run again)
        (Path(folder) / "run.json").write_text(json.dumps(old))
        assert not cli_runs._log_matches(Path(folder) / "run.json", content, style, ["--size", "64"])


def test_an_lstm_pyramid_log_of_another_fine_scale_step_is_not_reused(tmp_path):
    """Logs from before fine_scale_step ran the pyramid's finer scales at the full learned step: such an
    LSTM run is made again, unless it had one scale (the same run) or --fine-scale-step asks for its value."""
    cli_runs = load("cli_runs")
    content, style = ROOT / "assets" / "photos" / "chelsea.jpg", ROOT / "assets" / "styles" / "woman_with_a_hat.jpg"
    log = tmp_path / "run.json"
    _fake_log(log, content, style, 512)
    found = json.loads(log.read_text())
    found["steps"][1]["scale"] = 1
    log.write_text(json.dumps(found))
    assert not cli_runs._log_matches(log, content, style, ["--size", "512"])
    assert cli_runs._log_matches(log, content, style, ["--size", "512", "--fine-scale-step", "1"])
    found["settings"]["fine_scale_step"] = cli_runs.FINE_SCALE_STEP
    log.write_text(json.dumps(found))
    assert cli_runs._log_matches(log, content, style, ["--size", "512"])
    assert not cli_runs._log_matches(log, content, style, ["--size", "512", "--fine-scale-step", "1"])
    del found["settings"]["fine_scale_step"]
    found["steps"][1]["scale"] = 0  # one scale: fine_scale_step changed nothing
    log.write_text(json.dumps(found))
    assert cli_runs._log_matches(log, content, style, ["--size", "512"])


def _reusable_lstm_log(tmp_path: Path, size: int):
    """cli_runs, a content and a style, and a default LSTM run's log of them (reused as it is) with its JSON."""
    cli_runs = load("cli_runs")
    content, style = ROOT / "assets" / "photos" / "chelsea.jpg", ROOT / "assets" / "styles" / "woman_with_a_hat.jpg"
    log = tmp_path / "run.json"
    _fake_log(log, content, style, size)
    assert cli_runs._log_matches(log, content, style, ["--size", str(size)])
    return cli_runs, content, style, log, json.loads(log.read_text())


def test_an_lstm_log_from_before_the_default_handoff_is_not_reused(tmp_path):
    """A default LSTM run's log with the handoff off (or another warm-up) is made again; one that asks for
    --handoff-lr is matched on its flags as before."""
    cli_runs, content, style, log, found = _reusable_lstm_log(tmp_path, 256)
    for handoff in ({"handoff_lr": None, "handoff_warmup": 10}, {"handoff_warmup": 0}, {"handoff_lr": 0.0}):
        log.write_text(json.dumps({**found, "settings": {**found["settings"], **handoff}}))
        assert not cli_runs._log_matches(log, content, style, ["--size", "256"])
    del found["settings"]["handoff_lr"], found["settings"]["handoff_warmup"]  # a log from before the handoff
    log.write_text(json.dumps(found))
    assert not cli_runs._log_matches(log, content, style, ["--size", "256"])
    found["settings"]["handoff_lr"] = None  # (off, before 0 said so)
    log.write_text(json.dumps(found))
    assert cli_runs._log_matches(log, content, style, ["--size", "256", "--handoff-lr", "0"])
    assert not cli_runs._log_matches(log, content, style, ["--size", "256", "--handoff-lr", "0.0009"])


def test_an_lstm_log_from_before_the_finer_scales_default_handoff_is_not_reused(tmp_path):
    """Session 58 made --handoff-finer-lr 0.0036 with --handoff-finer-within 0.62 the default, session 65
    --handoff-finer-steps 83 with --handoff-finer-within 1: a log without them, or with other values, is made
    again unless its flags ask for what it ran."""
    cli_runs, content, style, log, found = _reusable_lstm_log(tmp_path, 512)
    for finer in ({"handoff_finer_lr": None}, {"handoff_finer_within": 0.62}, {"handoff_finer_steps": 0},
                  {"handoff_finer_lr": 0.001}):
        log.write_text(json.dumps({**found, "settings": {**found["settings"], **finer}}))
        assert not cli_runs._log_matches(log, content, style, ["--size", "512"])
    for key in ("handoff_finer_lr", "handoff_finer_within", "handoff_finer_steps"):  # a log from before any
        del found["settings"][key]
    log.write_text(json.dumps(found))
    assert not cli_runs._log_matches(log, content, style, ["--size", "512"])
    found["settings"].update(handoff_finer_lr=0.0036, handoff_finer_within=0.62)  # session 58's defaults
    log.write_text(json.dumps(found))
    assert not cli_runs._log_matches(log, content, style, ["--size", "512"])
    assert cli_runs._log_matches(log, content, style, ["--size", "512", "--handoff-finer-within", "0.62",
                                                       "--handoff-finer-steps", "0"])
    found["settings"].update(handoff_finer_lr=0.0, handoff_finer_within=1.0)  # off: matched on its flags
    log.write_text(json.dumps(found))
    assert not cli_runs._log_matches(log, content, style, ["--size", "512", "--handoff-finer-lr", "0"])
    assert cli_runs._log_matches(log, content, style, ["--size", "512", "--handoff-finer-lr", "0",
                                                       "--handoff-finer-steps", "0"])
    # a log with another gate in steps is reused only where the flags ask for it
    found["settings"].update(handoff_finer_lr=0.0036, handoff_finer_steps=74)
    log.write_text(json.dumps(found))
    assert not cli_runs._log_matches(log, content, style, ["--size", "512"])
    assert cli_runs._log_matches(log, content, style, ["--size", "512", "--handoff-finer-steps", "74"])


def test_a_log_with_another_coarse_share_is_reused_only_when_the_flags_ask_for_it(tmp_path):
    cli_runs, content, style, log, found = _reusable_lstm_log(tmp_path, 512)
    log.write_text(json.dumps({**found, "settings": {**found["settings"], "coarse_share": 0.1}}))
    assert not cli_runs._log_matches(log, content, style, ["--size", "512"])
    assert cli_runs._log_matches(log, content, style, ["--size", "512", "--coarse-share", "0.1"])
    assert not cli_runs._log_matches(log, content, style, ["--size", "512", "--coarse-share", "0.2"])
    log.write_text(json.dumps(found))  # (logs from before the option: the default split)
    assert cli_runs._log_matches(log, content, style, ["--size", "512"])
    assert not cli_runs._log_matches(log, content, style, ["--size", "512", "--coarse-share", "0.1"])


def test_a_log_with_adam_levels_is_reused_only_when_the_flags_ask_for_them(tmp_path):
    cli_runs, content, style, log, found = _reusable_lstm_log(tmp_path, 512)
    log.write_text(json.dumps({**found, "settings": {**found["settings"], "adam_levels": 1}}))
    assert not cli_runs._log_matches(log, content, style, ["--size", "512"])
    assert cli_runs._log_matches(log, content, style, ["--size", "512", "--adam-levels", "1"])
    assert not cli_runs._log_matches(log, content, style, ["--size", "512", "--adam-levels", "2"])
    log.write_text(json.dumps({**found, "settings": {**found["settings"], "adam_levels": 0}}))
    assert cli_runs._log_matches(log, content, style, ["--size", "512"])


def test_a_run_stopped_early_is_never_reused_and_ends_the_benchmark(monkeypatch, tmp_path):
    # Ctrl-C reaches the artopt child too: it saves what it has, a log of fewer steps marked stopped_early
    cli_runs = load("cli_runs")
    content, style = ROOT / "assets" / "photos" / "chelsea.jpg", ROOT / "assets" / "styles" / "woman_with_a_hat.jpg"
    calls = []

    def stopped_run(cmd, **kwargs):
        calls.append(cmd)
        log = Path(cmd[cmd.index("--log-json") + 1])
        _fake_log(log, content, style, 128)
        log.write_text(json.dumps({**json.loads(log.read_text()), "stopped_early": True}))
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(cli_runs.subprocess, "run", stopped_run)
    _fake_log(tmp_path / "run.json", content, style, 128)
    stopped = json.loads((tmp_path / "run.json").read_text())
    (tmp_path / "run.json").write_text(json.dumps({**stopped, "stopped_early": True}))
    with pytest.raises(SystemExit) as exc:  # was reused: 76 of 150 steps compared with Adam's 150
        cli_runs.stylize_totals(content, style, ["--size", "128"], tmp_path, "run", reuse=True)
    assert len(calls) == 1  # not reused: run again, and that run stopped early too
    assert exc.value.code == f"this run stopped early: {tmp_path / 'run.json'}; run the benchmark again to finish it"


def test_a_failed_cli_run_is_one_line_not_a_traceback(monkeypatch, tmp_path):
    cli_runs = load("cli_runs")
    monkeypatch.setattr(cli_runs.subprocess, "run", lambda cmd, **kwargs: SimpleNamespace(returncode=2))
    with pytest.raises(SystemExit) as exc:
        cli_runs.stylize_totals(Path("c.jpg"), Path("s.jpg"), ["--size", "64"], tmp_path, "run")
    assert isinstance(exc.value.code, str) and exc.value.code.startswith("this run failed: ")


def test_long_runs_rise_is_measured_on_the_final_scale(monkeypatch, tmp_path):
    """From 384 px a run is coarse-to-fine: the jump in loss at the next scale is no rise of the LSTM."""
    long_runs = load("long_runs")
    steps = [{"step": 1, "scale": 0, "total": 2.0}, {"step": 2, "scale": 0, "total": 1.0},
             {"step": 3, "scale": 1, "total": 5.0}, {"step": 4, "scale": 1, "total": 4.0}]

    def fake_totals(content, style, flags, out, stem, reuse):
        totals = [s["total"] for s in steps]
        return {"steps": steps, "totals": totals, "after": totals[1:] + [3.5], "final_total": 3.5}

    monkeypatch.setattr(long_runs, "stylize_totals", fake_totals)
    assert long_runs.main(["--photos", "chelsea", "--size", "512", "--steps", "4", "--points", "2", "4",
                           "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "r.json")]) == 0
    row = strict_loads((tmp_path / "r.json").read_text())["runs"][0]
    # after steps 3 and 4 (final scale): 4.0 and 3.5; the loss after p steps is reported at p
    assert row["lstm_largest_rise_over_its_best"] == 0.0 and row["lstm_lowest_at_step"] == 4
    assert row["lstm"] == {"2": 5.0, "4": 3.5}


def test_sizes_reads_when_the_lstm_reached_adams_final_loss_on_the_final_scale(monkeypatch, tmp_path):
    """A coarser scale's lower loss is no reaching of Adam's final loss; the time is the step's own."""
    sizes = load("sizes")
    lstm = [{"step": 1, "scale": 0, "total": 2.0, "wall_time": 1.0, "width": 48, "height": 32},
            {"step": 2, "scale": 0, "total": 0.5, "wall_time": 2.0, "width": 48, "height": 32},
            {"step": 3, "scale": 1, "total": 5.0, "wall_time": 4.0, "width": 96, "height": 64},
            {"step": 4, "scale": 1, "total": 3.0, "wall_time": 6.0, "width": 96, "height": 64}]
    adam = [{**s, "total": 9.0} for s in lstm]

    def fake_totals(content, style, flags, out, stem, reuse):
        steps, final, seconds = (lstm, 2.5, 7.0) if "lstm" in flags else (adam, 2.8, 3.5)
        totals = [s["total"] for s in steps]
        return {"steps": steps, "totals": totals, "after": totals[1:] + [final], "final_total": final,
                "seconds": seconds, "settings": {"cpu_threads": 1 if "lstm" in flags else 2}}

    monkeypatch.setattr(sizes, "stylize_totals", fake_totals)
    assert sizes.main(["--photos", "chelsea", "--sizes", "96", "--out", str(tmp_path / "runs"),
                       "--json", str(tmp_path / "r.json")]) == 0
    report = strict_loads((tmp_path / "r.json").read_text())
    row = report["runs"][0]
    # after step 1 the loss is 0.5, below 2.8, but on the coarse scale; on the final one, after step 4
    assert row["lstm_reaches_adam_final"] == {"step": 4, "final_scale_step": 2, "of_final_scale_steps": 2,
                                              "seconds": 6.0}
    assert row["adam_seconds_over_lstm_seconds_to_it"] == 3.5 / 6.0
    assert row["lstm_over_adam"] == 2.5 / 2.8 and row["output"] == [96, 64] and row["scales"] == 2
    assert report["lstm_lower_in"] == "1 of 1" and row["cpu_threads"] == {"lstm": 1, "adam": 2}
    # a run that never gets there says so
    assert sizes.reach({"steps": lstm, "after": [1.0, 1.0, 9.0, 9.0]}, 2.0) is None


def test_new_inputs_draws_the_same_four_styles_every_time_and_needs_its_photo(monkeypatch, capsys, tmp_path):
    new_inputs = load("new_inputs")
    first, again = new_inputs.drawn_styles(64), new_inputs.drawn_styles(64)
    assert list(first) == ["checker", "dots", "noise", "stripes"]
    assert all(first[k].mode == "RGB" and first[k].size == (64, 64) and first[k].tobytes() == again[k].tobytes()
               for k in first)
    assert len({im.tobytes() for im in first.values()}) == 4
    monkeypatch.setattr(new_inputs, "sample_photo", lambda: None)  # matplotlib without its sample data
    with pytest.raises(SystemExit) as exc:
        new_inputs.main(["--out", str(tmp_path / "o"), "--json", str(tmp_path / "r.json")])
    assert exc.value.code == 2 and "grace_hopper.jpg is not installed" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_web_timing_picks_exactly_one_menu_entry():
    """Playwright's substring match for "Adam" found two entries and failed (strict mode)."""
    from artopt.web import OPTIMIZER_LABELS

    web_timing = load("web_timing")
    # the page's menu: its "auto" entry, when there is one, carries a note
    entries = [v for k, v in OPTIMIZER_LABELS.items() if k != "auto"] + ["auto: learned (LSTM) from 256 px, Adam below"]
    for label in OPTIMIZER_LABELS.values():
        matches = [e for e in entries if web_timing.menu_option(label).search(e)]
        assert len(matches) == 1 and matches[0].startswith(label), (label, matches)


def test_the_gate_major_prototype_computes_the_librarys_update(tmp_path):
    # the shipped network takes moment inputs: the prototype stopped at once before session 51
    load("lstm_layout").main(["--coords", "300", "--chunk", "128", "--repeats", "1", "--json", str(tmp_path / "x.json")])
    report = strict_loads((tmp_path / "x.json").read_text())
    assert report["moment_inputs"] and report["same_state"] and report["max_update_difference"] < 1e-6


def test_the_compile_prototypes_chunk_computes_the_librarys_update():
    import torch

    from artopt.learned_optimizers.shipped import NEURAL_ART, weights_path
    from artopt.learned_optimizers.weights import load_learned

    lstm_compile = load("lstm_compile")
    net = load_learned(weights_path(NEURAL_ART))["default"]
    torch.manual_seed(0)
    n, L, H = 300, net.config.num_layers, net.config.hidden_size
    state = (torch.randint(-100, 100, (L, n, H), dtype=torch.int8), torch.randn(L, n, H).half())
    grad = torch.randn(n) * torch.logspace(-8, 0, n)
    m, v = net.update_moments(grad, None)
    moments = (m.bfloat16(), v.bfloat16())
    with torch.no_grad():  # the plain function, not compiled: the arithmetic is what is checked here
        update, (h, c) = lstm_compile.compiled_update(net, lstm_compile.chunk_update, grad, state, 128, moments)
        ref_update, (ref_h, ref_c) = net._inference(grad, state, moments=moments)
    assert (update - ref_update).abs().max() < 1e-6 and (h.int() - ref_h.int()).abs().max() <= 1
    assert (c.float() - ref_c.float()).abs().max() < 1e-2


@pytest.mark.parametrize("state_dtype", ["int8", "float32"])
def test_the_fewer_ops_prototype_computes_the_librarys_update(state_dtype):
    # bench/lstm_ops.py times it against the library: it must compute the same step (up to rounding).
    import torch

    bench = load("lstm_ops")
    net, grad, state, moments = bench.shipped_update_inputs(6000)  # the last chunk is a partial one
    if state_dtype == "float32":
        state = (state[0].float() / 127, state[1].float())
    (u0, (h0, c0)), (u1, (h1, c1)) = net._inference(grad, state, moments=moments), \
        bench.fewer_ops_inference(net, grad, state, moments=moments)
    assert h1.dtype == h0.dtype and c1.dtype == c0.dtype
    assert torch.allclose(u0, u1, rtol=1e-5, atol=1e-7)
    assert torch.allclose(c0.float(), c1.float(), rtol=2e-3, atol=1e-5)
    if state_dtype == "int8":
        assert (h0.int() - h1.int()).abs().max() <= 1 and (h0 != h1).float().mean() < 1e-4
    else:
        assert torch.allclose(h0, h1, rtol=1e-5, atol=1e-6)


def test_the_fourier_basis_probe_refuses_decays_it_cannot_use(capsys):
    expect_usage_error(capsys, "basis_fourier", ["--decays", "1", "nan"], "--decays must be finite")
    expect_usage_error(capsys, "basis_fourier", ["--decays", "-1"], "--decays must be finite and not negative")


def test_the_fourier_basis_probe_hands_the_inner_optimizer_the_coefficients_gradient():
    # bench/basis_fourier.py: x = x0 + irfft2(S * z); the inner optimizer must see d f / d z, and the
    # image must move by the image of the inner optimizer's update.
    import torch

    bench = load("basis_fourier")
    scale = bench.spectrum_scale(10, 13, 1.5)
    assert scale.shape == (10, 7) and math.isclose(float(scale.pow(2).mean()), 1.0, rel_tol=1e-5)
    assert float(scale[0, 0]) == float(scale.max()) and float(scale[5, 6]) == float(scale.min())  # low f: large
    torch.manual_seed(0)
    target = torch.rand(1, 3, 10, 13)
    x = torch.rand(1, 3, 10, 13, requires_grad=True)
    x0 = x.detach().clone()
    opt = bench.FourierOptimizer([x], lambda zs: torch.optim.SGD(zs, lr=0.001), decay=1.5, gain=2.0)

    def closure():
        opt.zero_grad()
        loss = ((x - target) ** 2).sum()
        loss.backward()
        return loss

    z = torch.zeros(1, 3, 10, 7, 2, requires_grad=True)
    f = ((x0 + bench.FourierOptimizer._image(z, 2.0 * scale, (10, 13)) - target) ** 2).sum()
    expected, = torch.autograd.grad(f, z)
    before = float(closure().detach())
    opt.step(closure)
    assert torch.allclose(opt.z[0].grad, expected, atol=1e-6)
    moved = x0 + bench.FourierOptimizer._image(-0.001 * expected, 2.0 * scale, (10, 13))
    assert torch.allclose(x.detach(), moved, atol=1e-6)
    assert float(((x.detach() - target) ** 2).sum()) < before


def test_the_fine_scale_step_rule_wants_lower_at_both_sizes_then_the_lowest_sum():
    """bench/fine_scale_step.py's rule (48842c9): a candidate must beat the full step at 256 and 512 px;
    of those the lowest sum of ratios wins; none: the full step stays.  Its committed choice follows it."""
    rule = load("fine_scale_step")
    means = {256: {1.0: 1.0, 0.35: 0.90, 0.5: 0.99, 0.7: 0.98}, 512: {1.0: 1.0, 0.35: 1.01, 0.5: 0.95, 0.7: 0.97}}
    chosen, table = rule.choose(means)
    assert chosen == 0.5 and not table[0.35]["qualifies"] and table[0.7]["qualifies"]
    assert table[0.5]["sum"] == pytest.approx(1.94)
    means[512] = {1.0: 1.0, 0.35: 1.01, 0.5: 1.0, 0.7: 1.02}  # a tie is not lower
    assert rule.choose(means)[0] == 1.0
    val = json.loads((ROOT / "bench" / "results" / "fine_scale_step_val.json").read_text())
    found = {int(s): {float(m): v for m, v in ms.items()} for s, ms in val["means"].items()}
    assert rule.choose(found)[0] == val["chosen"] == 0.5


def test_the_carry_state_rule_wants_lower_than_the_default_at_both_sizes():
    """bench/carry_state.py's rule (149c3fa), as the fine-scale step's: the committed validation report
    follows it (no candidate was lower, so carry_state stays off)."""
    rule = load("carry_state")
    carry_half, carry_full = rule.CANDIDATES
    means = {256: {rule.DEFAULT: 1.0, carry_half: 0.98, carry_full: 0.97},
             512: {rule.DEFAULT: 1.0, carry_half: 0.99, carry_full: 1.001}}
    assert rule.choose(means)[0] == carry_half
    val = json.loads((ROOT / "bench" / "results" / "carry_state_val.json").read_text())
    labels = {rule.label(v): v for v in (rule.DEFAULT, *rule.CANDIDATES)}
    found = {int(s): {labels[k]: m for k, m in ms.items()} for s, ms in val["means"].items()}
    chosen, table = rule.choose(found)
    assert chosen is None and val["chosen"] is None
    assert val["best_scoring"] == rule.label(min(rule.CANDIDATES, key=lambda v: table[v]["sum"]))
    from artopt.style.engine import StylizeConfig

    assert StylizeConfig().carry_state is False


def test_adam_rates_widens_the_grid_while_an_edge_is_best_and_compares_with_the_best(monkeypatch, tmp_path):
    """Adam's best rate per run is found past the first grid's top edge (and the widening stops at
    the minimum); the LSTM is compared with that best run and with the default rate's."""
    adam_rates = load("adam_rates")
    monkeypatch.setattr(sys.modules["new_inputs"], "sample_photo", lambda: ROOT / "assets" / "photos" / "rocket.jpg")
    steps = [{"step": 1, "scale": 0, "total": 4.0, "wall_time": 1.0},
             {"step": 2, "scale": 0, "total": 2.0, "wall_time": 2.0}]
    asked = []

    def fake_totals(content, style, flags, out, stem, reuse):
        if "lstm" in flags:
            final = 1.0
        else:
            lr = float(flags[flags.index("--lr") + 1])
            asked.append(lr)
            final = 2.0 + abs(math.log2(lr / 0.08))  # lowest at 0.08 = 0.02 * sqrt(2)^4, past the grid's top
        return {"steps": steps, "after": [2.0, final], "final_total": final}

    monkeypatch.setattr(adam_rates, "stylize_totals", fake_totals)
    assert adam_rates.main(["--sizes", "64", "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "r.json")]) == 0
    report = strict_loads((tmp_path / "r.json").read_text())
    assert report["runs_count"] == 6 and report["lstm_lower_than_best_adam"] == 6
    row = report["runs"][0]
    # k = -2..3, then 4 (best so far at the edge 3), then 5 (4 best, at the edge), and 4 stays best
    assert sorted(asked[:8]) == sorted(round(0.02 * math.sqrt(2) ** k, 6) for k in range(-2, 6))
    assert len(asked) == 6 * 8
    assert row["adam_best_lr"] == 0.08 and row["adam_best"] == 2.0 and row["lstm_over_best_adam"] == 0.5
    assert row["adam_default"] == 2.0 + math.log2(4) and row["lstm_over_default_adam"] == 1 / 4
    assert row["lstm_reaches_best_adam"] == {"step": 1, "final_scale_step": 1, "of_final_scale_steps": 2,
                                             "seconds": 1.0}


def _adam_rates_faking_runs(monkeypatch, final_of):
    """bench/adam_rates.py with each CLI run faked: its final loss ``final_of(flags)``; returns the module and
    the list the runs' (stem, flags) go to."""
    adam_rates = load("adam_rates")
    monkeypatch.setattr(sys.modules["new_inputs"], "sample_photo", lambda: ROOT / "assets" / "photos" / "rocket.jpg")
    runs = []

    def fake_totals(content, style, flags, out, stem, reuse):
        runs.append((stem, flags))
        final = final_of(flags)
        return {"steps": [{"step": 1, "scale": 0, "total": 3.0, "wall_time": 1.0}], "after": [final],
                "final_total": final}

    monkeypatch.setattr(adam_rates, "stylize_totals", fake_totals)
    return adam_rates, runs


def test_adam_rates_on_the_basis_runs_adam_there_around_the_basis_default(monkeypatch, tmp_path):
    adam_rates, runs = _adam_rates_faking_runs(monkeypatch, lambda flags: 1.0 if "lstm" in flags else 2.0 + abs(
        math.log2(float(flags[flags.index("--lr") + 1]) / 0.0036)))
    assert adam_rates.main(["--basis", "multiscale", "--sizes", "64", "--out", str(tmp_path / "runs"),
                            "--json", str(tmp_path / "r.json")]) == 0
    report = strict_loads((tmp_path / "r.json").read_text())
    seen = [(flags[flags.index("--basis") + 1], float(flags[flags.index("--lr") + 1]), stem)
            for stem, flags in runs if "adam" in flags]
    assert report["adam_basis"] == "multiscale" and report["adam_default_lr"] == 0.0036
    assert {basis for basis, _, _ in seen} == {"multiscale"} and all("_adam-ms_" in stem for *_, stem in seen)
    assert sorted({lr for _, lr, _ in seen}) == [0.0018, 0.002546, 0.0036, 0.005091, 0.0072, 0.010182]
    assert report["runs"][0]["adam_best_lr"] == 0.0036 and report["runs"][0]["adam_default"] == 2.0


def test_adam_rates_can_run_the_lstm_with_more_flags_and_compare_it_with_its_defaults(monkeypatch, tmp_path):
    adam_rates, runs = _adam_rates_faking_runs(
        monkeypatch, lambda flags: (0.9 if "--handoff-finer-steps" in flags else 1.0) if "lstm" in flags else 2.0)
    assert adam_rates.main(["--sizes", "64", "--lstm-flags=--handoff-finer-within 1 --handoff-finer-steps 74",
                            "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "r.json")]) == 0
    report = strict_loads((tmp_path / "r.json").read_text())
    lstm_runs = [run for run in runs if "lstm" in run[1]]
    assert len(lstm_runs) == 2 * 6 and ("chelsea_woman_with_a_hat_64px_lstm_handoff-finer-within_1_handoff-finer-steps_74",
                                        ["--size", "64", "--steps", "150", "--optimizer", "lstm", "--handoff-finer-within",
                                         "1", "--handoff-finer-steps", "74"]) in lstm_runs
    row = report["runs"][0]
    assert row["lstm"] == 0.9 and row["lstm_defaults"] == 1.0 and row["lstm_over_best_adam"] == 0.45
    assert report["mean_over_lstm_defaults"] == pytest.approx(0.9) and report["lstm_flags"][-1] == "74"
    with pytest.raises(SystemExit):
        adam_rates.main(["--sizes", "64", "--lstm-flags=74", "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "x.json")])


def _committed_settings(names) -> dict:
    """The evaluation's committed results of these test settings, by name."""
    return {name: json.loads((ROOT / "train" / "results" / "neural_art" / f"{name}.json").read_text()) for name in names}


def test_the_handoff_probe_compares_each_size_and_style_with_and_without(monkeypatch, tmp_path):
    handoff = load("handoff")
    seen = []

    def fake_run_all(jobs, workers):
        seen.extend(jobs)
        return [{"size": size, "style": extra["style"], "handoff_lr": extra["handoff_lr"],
                 "final": 2.0 if extra["handoff_lr"] is None else 1.5, "backoff_scales": ["handoff"]}
                for _, _, size, _, _, _, extra in jobs]

    monkeypatch.setattr(handoff, "run_all", fake_run_all)
    assert handoff.main(["--runs", str(tmp_path / "runs"), "--json", str(tmp_path / "r.json")]) == 0
    report = strict_loads((tmp_path / "r.json").read_text())
    assert len(seen) == 2 * 2 * 2 * 4 and len({path for *_, path, _, _ in seen}) == len(seen)
    assert all(step == 0.5 and split == "val" for split, _, _, step, *_ in seen)
    assert report["table"]["512 px piano_keyboard_sketch"] == {"off": 2.0, "handoff": 1.5, "ratio": 0.75,
                                                              "photos_handed_off": 4}
    assert len(report["photos"]) == 4 and report["handoff_lr"] == 0.0036


def test_the_handoff_test_runs_each_committed_setting_without_and_with(monkeypatch, tmp_path):
    """The default rule's part 1: both variants on every committed test setting's photos, the pyramid
    as the setting has it, and the verdict from the largest handoff / off ratio."""
    handoff = load("handoff")
    seen = []
    finals = {"256-pyramid-off": 1.004, "512-pyramid-on": 1.006}  # handoff / off per setting (else 0.98)

    def fake_run_all(jobs, workers):
        seen.extend(jobs)
        out = []
        for _, photo, size, _, path, _, extra in jobs:
            setting = f"{size}-pyramid-{'on' if extra['pyramid'] else 'off'}"
            final = 2.0 if extra["handoff_lr"] is None else 2.0 * finals.get(setting, 0.98)
            out.append({"photo": photo, "size": size, **extra, "final": final, "curve": [3.0, final],
                        "backoff_scales": ["handoff"] if extra["handoff_lr"] else [0.5]})
        return out

    monkeypatch.setattr(handoff, "run_all", fake_run_all)
    assert handoff.main(["test", "--lr", "0.0009", "--runs", str(tmp_path / "runs"), "--json", str(tmp_path / "r.json")]) == 0
    report = strict_loads((tmp_path / "r.json").read_text())
    committed = _committed_settings(handoff.TEST_SETTINGS)
    assert len(seen) == 2 * sum(len(c["photos"]) for c in committed.values())
    assert len({path for *_, path, _, _ in seen}) == len(seen)
    assert all(extra["style"] == "woman_with_a_hat.jpg" and step == 0.5 for _, _, _, step, _, _, extra in seen)
    table = report["table"]
    assert table["256-pyramid-off"]["handoff_over_off"] == pytest.approx(1.004) and table["256-pyramid-off"]["holds"]
    assert not table["512-pyramid-on"]["holds"] and not report["part_1_holds"]
    assert table["384-pyramid-on"]["photos_handed_off"] == len(committed["384-pyramid-on"]["photos"])
    best = committed["512-pyramid-off"]["best_baseline_final_loss"]
    assert table["512-pyramid-off"]["off"]["over_best_baseline"] == pytest.approx(2.0 / best)


def test_the_style_sweep_runs_the_handoff_beside_the_lstm_and_adam(monkeypatch, tmp_path):
    style_sweep = load("style_sweep")
    calls = []

    def fake_totals(content, style, flags, out, stem, reuse=False):
        calls.append((stem, flags))
        final = {"adam": 2.0, "lstm": 1.0}.get(flags[flags.index("--optimizer") + 1], 1.0)
        handoff = "--handoff-lr" in flags and flags[flags.index("--handoff-lr") + 1] != "0"
        notices = [{"step": 5, "notice": "...; Adam on the multi-scale basis goes on at lr 0.0009 (handoff)"}]
        return {"final_total": 0.9 if handoff else final, "steps": notices if handoff else [], "backoff_steps": []}

    monkeypatch.setattr(style_sweep, "stylize_totals", fake_totals)
    assert style_sweep.main(["--handoff-lr", "0.0009", "--out", str(tmp_path / "runs"),
                             "--json", str(tmp_path / "r.json")]) == 0
    report = strict_loads((tmp_path / "r.json").read_text())
    assert len(calls) == 3 * report["runs_count"] == 3 * 16
    assert ("chelsea_woman_with_a_hat_lstm_handoff0.0009", ["--size", "256", "--optimizer", "lstm",
                                                            "--handoff-lr", "0.0009"]) in calls
    assert ("chelsea_woman_with_a_hat_lstm", ["--size", "256", "--optimizer", "lstm", "--handoff-lr", "0"]) in calls
    h = report["handoff"]
    assert h["runs_handed_off"] == 16 and h["mean_over_lstm"] == pytest.approx(0.9) and h["lower_than_adam"] == 16
    assert report["runs"][0]["handoff_steps"] == [5]
    assert "handoff" not in (style_sweep.main(["--out", str(tmp_path / "runs"), "--json", str(tmp_path / "p.json")])
                             or strict_loads((tmp_path / "p.json").read_text()))
    calls.clear()  # the finer scales' gate in steps (part (C) of bench/handoff_finer.py's session-65 rule)
    assert style_sweep.main(["--size", "512", "--handoff-finer-lr", "0.0036", "--handoff-finer-within", "1",
                             "--handoff-finer-steps", "74", "--out", str(tmp_path / "runs"),
                             "--json", str(tmp_path / "s.json")]) == 0
    assert ("chelsea_woman_with_a_hat_lstm_finer0.0036_within1_steps74",
            ["--size", "512", "--optimizer", "lstm", "--handoff-finer-lr", "0.0036", "--handoff-finer-within", "1",
             "--handoff-finer-steps", "74"]) in calls
    assert strict_loads((tmp_path / "s.json").read_text())["handoff_finer"]["steps"] == 74


def test_the_handoff_finer_probe_compares_each_rate_with_the_engine_and_picks_the_lower_sum(monkeypatch, tmp_path):
    """512 px with the pyramid, the engine's handoff in every variant; only runs that handed a scale
    before the last over count as ones the option can change."""
    finer = load("handoff_finer")
    seen = []
    ratio = {None: 1.0, 0.0009: 0.9, 0.0036: 0.95}

    def fake_run_all(jobs, workers):
        seen.extend(jobs)
        return [{"size": size, **extra, "final": 2.0 * ratio[extra["handoff_finer_lr"]],
                 "handed_off_scales": [0, 1] if photo == jobs[0][1] else [1], "n_scales": 2}
                for _, photo, size, _, _, _, extra in jobs]

    monkeypatch.setattr(finer, "run_all", fake_run_all)
    assert finer.main(["probe", "--runs", str(tmp_path / "runs"), "--json", str(tmp_path / "r.json")]) == 0
    report = strict_loads((tmp_path / "r.json").read_text())
    assert len(seen) == 3 * 2 * 4 and len({path for *_, path, _, _ in seen}) == len(seen)
    assert all(size == 512 and extra["pyramid"] and extra["handoff_lr"] == 0.0009 and extra["handoff_warmup"] == 10
               for _, _, size, _, _, _, extra in seen)
    row = report["table"]["piano_keyboard_sketch"]
    assert row["engine"] == 2.0 and row["0.0009"]["over_engine"] == pytest.approx(0.9) and row["0.0009"]["holds"]
    assert row["photos_handed_off_before_the_final_scale"] == 1
    assert report["lower_sum"] == "0.0009" and report["all_styles_hold"] == {"0.0009": True, "0.0036": True}


def test_the_handoff_finer_test_runs_the_pyramid_settings_with_and_without(monkeypatch, tmp_path):
    finer = load("handoff_finer")
    seen = []

    def fake_run_all(jobs, workers):
        seen.extend(jobs)
        return [{"photo": photo, "size": size, **extra, "curve": [3.0, 2.0], "backoff_scales": ["handoff"],
                 "handed_off_scales": [0], "n_scales": 2,
                 "final": 2.0 * (1.006 if size == 384 and extra["handoff_finer_lr"] else 1.0)}
                for _, photo, size, _, _, _, extra in jobs]

    monkeypatch.setattr(finer, "run_all", fake_run_all)
    assert finer.main(["test", "--lr", "0.0036", "--runs", str(tmp_path / "runs"), "--json", str(tmp_path / "r.json")]) == 0
    report = strict_loads((tmp_path / "r.json").read_text())
    committed = _committed_settings(finer.TEST_SETTINGS)
    assert len(seen) == 2 * sum(len(c["photos"]) for c in committed.values())
    assert report["table"]["256-pyramid-on"]["holds"] and not report["table"]["384-pyramid-on"]["holds"]
    assert not report["part_b_holds"] and report["handoff_finer_lr"] == 0.0036
    assert report["table"]["512-pyramid-on"]["photos_handed_off_before_the_final_scale"] == len(
        committed["512-pyramid-on"]["photos"])


def test_the_handoff_finer_probe_can_run_the_option_only_where_it_acts(monkeypatch, tmp_path):
    """--where-it-acts: the engine's runs first, then the option only on the photos whose engine run
    handed a scale before the last off; the others count as the same run.  --fresh-photos takes 4
    validation photos outside the rule's 8."""
    finer = load("handoff_finer")
    calls = []

    def fake_run_all(jobs, workers):
        calls.append(jobs)
        return [{"photo": photo, "size": size, **extra, "final": 1.0 if extra["handoff_finer_lr"] else 2.0,
                 "handed_off_scales": [0] if photo == jobs[0][1] else [], "n_scales": 2}
                for _, photo, size, _, _, _, extra in jobs]

    monkeypatch.setattr(finer, "run_all", fake_run_all)
    assert finer.main(["probe", "--lrs", "0.0036", "--fresh-photos", "--where-it-acts", "--styles", "klee_clouds_over_bor.jpg",
                       "--runs", str(tmp_path / "runs"), "--json", str(tmp_path / "r.json")]) == 0
    report = strict_loads((tmp_path / "r.json").read_text())
    assert [len(c) for c in calls] == [4, 1] and all(extra["handoff_finer_lr"] is None for *_, extra in calls[0])
    assert calls[1][0][1] == calls[0][0][1]  # (the photo handed off)
    from artopt.tasks.neural_art import NeuralArtTask

    assert not set(report["photos"]) & set(random.Random(0).sample(NeuralArtTask(size=64).split["val"], 8))
    assert report["table"]["klee_clouds_over_bor"]["0.0036"]["over_engine"] == pytest.approx((1.0 + 3 * 2.0) / 8)
    calls.clear()  # --size 256: the pyramid's 128 px coarse scale (part 3 of the session-65 rule)
    assert finer.main(["probe", "--size", "256", "--lrs", "0.0036", "--fresh-photos", "59", "--where-it-acts",
                       "--styles", "klee_clouds_over_bor.jpg", "--json", str(tmp_path / "s.json")]) == 0
    assert {j[2] for c in calls for j in c} == {256} and all(j[4].name.startswith("256-") for c in calls for j in c)
    assert strict_loads((tmp_path / "s.json").read_text())["size"] == 256


def test_the_handoff_finer_threshold_keeps_the_fractions_whose_gains_add_up_most():
    pick = load("handoff_finer").pick_within
    rows = [{"fraction": f, "finer_over_engine": r} for f, r in
            [(0.2, 0.8), (0.3, 0.9), (0.5, 1.1), (0.7, 0.95), (0.9, 1.2), (None, 1.0)]]
    # G: 0.2 -> 0.2, 0.3 -> 0.3, 0.5 -> 0.2, 0.7 -> 0.25, 0.9 -> 0.05: t* = 0.3, F halfway to 0.5
    assert pick(rows) == {"gains": {"0.2000": pytest.approx(0.2), "0.3000": pytest.approx(0.3),
                                    "0.5000": pytest.approx(0.2), "0.7000": pytest.approx(0.25),
                                    "0.9000": pytest.approx(0.05)}, "t_star": 0.3, "within": 0.4}
    assert pick([{"fraction": 0.2, "finer_over_engine": 1.01}, {"fraction": 0.4, "finer_over_engine": 1.0}])["within"] is None
    assert pick([{"fraction": 0.2, "finer_over_engine": 0.9}, {"fraction": 0.4, "finer_over_engine": 0.9}])["within"] is None
    assert pick([])["within"] is None


def test_the_handoff_finer_threshold_in_steps_keeps_the_steps_whose_gains_add_up_most():
    pick = load("handoff_finer").pick_steps
    rows = [{"lstm_steps_before_coarse_handoff": n, "finer_over_engine": r} for n, r in
            [(31, 0.8), (65, 0.9), (84, 1.1), (115, 1.05), (None, 1.0)]]
    assert pick(rows) == {"gains": {"31": pytest.approx(0.2), "65": pytest.approx(0.3), "84": pytest.approx(0.2),
                                    "115": pytest.approx(0.15)}, "t_star": 65, "steps": 74}  # (65 + 84) // 2
    assert pick(rows[:2])["steps"] is None and pick([])["steps"] is None  # t* the largest seen; none seen


def test_the_handoff_finer_probe_counts_a_coarse_handoff_within_the_fraction_as_the_engine_does():
    acts = load("handoff_finer")._handed_off_before_final
    run = {"handed_off_scales": [0, 1], "handoff_steps": [30, 20], "scale_starts": [0, 100], "n_scales": 2}
    assert acts(run) and acts(run, 0.3) and not acts(run, 0.29)  # (the 512 px handoff cannot change a finer scale)
    three = {"handed_off_scales": [1], "handoff_steps": [10], "scale_starts": [0, 80, 120], "n_scales": 3}
    assert acts(three, 0.25) and not acts(three, 0.2)
    assert not acts({"handed_off_scales": [1], "handoff_steps": [5], "scale_starts": [0, 100], "n_scales": 2}, 0.5)
    assert acts(run, steps=30) and not acts(run, steps=29) and not acts(run, 0.29, steps=40)  # both must hold


def test_part_a_prime_of_the_handoff_finer_rule_asks_for_a_gain_and_no_style_or_run_worse():
    rule = load("handoff_finer").rule_a_prime

    def runs(ratios):
        out = []
        for (photo, style), ratio in ratios.items():
            out += [{"photo": photo, "style": style, "handoff_finer_lr": None, "final": 2.0},
                    {"photo": photo, "style": style, "handoff_finer_lr": 0.0036, "final": 2.0 * ratio}]
        return out

    good = rule(runs({("a", "x.jpg"): 0.8, ("b", "x.jpg"): 1.0, ("a", "y.jpg"): 1.0, ("b", "y.jpg"): 1.0}), 0.0036)
    assert good["holds"] and good["mean"] == pytest.approx(0.95) and good["runs_changed"] == 1
    assert good["style_means"] == {"x": pytest.approx(0.9), "y": 1.0}
    assert not rule(runs({("a", "x.jpg"): 0.8, ("a", "y.jpg"): 1.006}), 0.0036)["holds"]  # a style above 1.005
    assert not rule(runs({("a", "x.jpg"): 0.8, ("b", "x.jpg"): 1.06, ("a", "y.jpg"): 0.9}), 0.0036)["holds"]  # a run
    assert not rule(runs({("a", "x.jpg"): 1.0, ("a", "y.jpg"): 1.0}), 0.0036)["holds"]  # no gain


def _handoff_finer_faking_runs(monkeypatch, handoff_step: dict, option_ratio: dict):
    """bench/handoff_finer.py with its runs faked: a style in ``handoff_step`` has its coarse scale (100 steps)
    handed off after that many steps; the option ends at ``option_ratio``'s ratio to the engine (default 0.9).
    Returns the module and the list each run_all call's jobs go to."""
    finer = load("handoff_finer")
    calls = []

    def fake_run_all(jobs, workers):
        calls.append(jobs)
        out = []
        for _, photo, size, _, _, _, extra in jobs:
            step = handoff_step.get(extra["style"])
            ratio = option_ratio.get(extra["style"], 0.9) if extra["handoff_finer_lr"] is not None else 1.0
            out.append({"photo": photo, "size": size, **extra, "scale_starts": [0, 100], "n_scales": 2,
                        "handed_off_scales": [0] if step else [], "handoff_steps": [step] if step else [],
                        "final": 2.0 * ratio})
        return out

    monkeypatch.setattr(finer, "run_all", fake_run_all)
    return finer, calls


def test_the_handoff_finer_refit_reruns_the_probe_pairs_and_runs_the_option_where_the_coarse_scale_was_handed_off(
        monkeypatch, tmp_path):
    """Session 65: every (photo, style) of the committed probe files under the current loss, the option
    (within 1) only where the engine's coarse scale was handed off, into pick_within; new run files."""
    # piano_keyboard_sketch handed off after 20 of 100 coarse steps, the option 0.8; vallotton after 90, 1.1
    finer, calls = _handoff_finer_faking_runs(monkeypatch, {"piano_keyboard_sketch.jpg": 20, "vallotton_camille_mauclair.jpg": 90},
                                              {"piano_keyboard_sketch.jpg": 0.8, "vallotton_camille_mauclair.jpg": 1.1})
    assert finer.main(["refit", "--json", str(tmp_path / "r.json")]) == 0
    report = strict_loads((tmp_path / "r.json").read_text())
    committed = [r for name in finer.PROBE_FILES
                 for r in json.loads((finer.ROOT / "bench" / "results" / name).read_text())["runs"]]
    pairs = {(r["photo"], r["style"]) for r in committed}
    assert len(calls) == 2 and {(j[1], j[6]["style"]) for j in calls[0]} == pairs and len(calls[0]) == len(pairs)
    assert all(j[6]["handoff_finer_lr"] is None for j in calls[0]) and all(j[4].parent == finer.REFIT_RUNS for j in calls[0])
    assert {j[6]["style"] for j in calls[1]} == {"piano_keyboard_sketch.jpg", "vallotton_camille_mauclair.jpg"}
    assert all(j[6]["handoff_finer_lr"] == 0.0036 and "handoff_finer_within" not in j[6] for j in calls[1])
    assert report["pairs"] == len(pairs) and report["pairs_handed_off_before_the_final_scale"] == len(calls[1])
    assert report["pick"]["t_star"] == 0.2 and report["pick"]["within"] == 0.55  # halfway from 0.2 to 0.9
    assert report["pick_steps"]["t_star"] == 20 and report["pick_steps"]["steps"] == 55  # part 2: in steps
    assert report["rows"][0]["fraction"] == 0.2 and report["rows"][0]["finer_over_engine"] == pytest.approx(0.8)


def test_the_handoff_finer_refit_check_compares_the_new_threshold_with_the_old_on_fresh_photos(monkeypatch, tmp_path):
    """(a''): the 8 styles on 4 photos outside every earlier sample; the option within F' over it within 0.62,
    each run only where the coarse handoff came early enough for it."""
    finer, calls = _handoff_finer_faking_runs(monkeypatch, {"piano_keyboard_sketch.jpg": 50, "klee_clouds_over_bor.jpg": 70},
                                              {})
    assert finer.main(["refit-check", "--within", "0.75", "--json", str(tmp_path / "r.json")]) == 0
    report = strict_loads((tmp_path / "r.json").read_text())
    option_runs = [j for c in calls for j in c if j[6]["handoff_finer_lr"] is not None]
    assert {(j[6]["style"], j[6]["handoff_finer_within"]) for j in option_runs} == {
        ("piano_keyboard_sketch.jpg", 0.62), ("piano_keyboard_sketch.jpg", 0.75), ("klee_clouds_over_bor.jpg", 0.75)}
    photos = {j[1] for c in calls for j in c}
    assert len(photos) == 4 and len({j[6]["style"] for c in calls for j in c}) == 8
    assert not photos & (set(finer.fresh_photos(57)) | set(finer.fresh_photos(58)) | set(finer.val_photos()))
    rule = report["rule"]  # klee 0.9 (acts only within 0.75), every other pair the same run: 1
    assert rule["style_means"]["klee_clouds_over_bor"] == pytest.approx(0.9) and rule["style_means"]["piano_keyboard_sketch"] == 1
    assert rule["mean"] == pytest.approx(1 - 0.1 * 4 / 32) and rule["runs_changed"] == 4 and rule["holds"]
    with pytest.raises(SystemExit):
        finer.main(["refit-check", "--json", str(tmp_path / "x.json")])  # needs --within or --steps
    # (A): the gate in steps (60: piano only, as within 0.62), so every ratio is 1, which (A) allows
    calls.clear()
    assert finer.main(["refit-check", "--steps", "60", "--json", str(tmp_path / "s.json")]) == 0
    report = strict_loads((tmp_path / "s.json").read_text())
    assert {(j[6]["style"], j[6].get("handoff_finer_within"), j[6].get("handoff_finer_steps"))
            for c in calls for j in c if j[6]["handoff_finer_lr"] is not None} == {
        ("piano_keyboard_sketch.jpg", 0.62, None), ("piano_keyboard_sketch.jpg", None, 60)}
    assert report["rule"]["mean"] == 1 and report["rule"]["holds"] and report["handoff_finer_steps"] == 60


def test_the_handoff_finer_test_can_compare_two_thresholds(monkeypatch, tmp_path):
    """(b''): with --against, each setting's mean within F' over it within the other fraction."""
    finer = load("handoff_finer")
    seen = []

    def fake_run_all(jobs, workers):
        seen.extend(jobs)
        return [{"photo": photo, "size": size, **extra, "curve": [3.0, 2.0], "backoff_scales": [],
                 "handed_off_scales": [0], "handoff_steps": [70], "scale_starts": [0, 100], "n_scales": 2,
                 "final": 2.0 * (1.01 if size == 512 and extra.get("handoff_finer_within") == 0.75 else 1.0)}
                for _, photo, size, _, _, _, extra in jobs]

    monkeypatch.setattr(finer, "run_all", fake_run_all)
    assert finer.main(["test", "--lr", "0.0036", "--within", "0.75", "--against", "0.62",
                       "--json", str(tmp_path / "r.json")]) == 0
    report = strict_loads((tmp_path / "r.json").read_text())
    committed = _committed_settings(finer.TEST_SETTINGS)
    assert len(seen) == 3 * sum(len(c["photos"]) for c in committed.values())
    assert all(path.parent == finer.REFIT_RUNS for *_, path, _, _ in seen)
    table = report["table"]
    assert table["256-pyramid-on"]["holds"] and table["256-pyramid-on"]["finer_over_against"] == 1
    assert table["512-pyramid-on"]["finer_over_against"] == pytest.approx(1.01) and not table["512-pyramid-on"]["holds"]
    assert not report["part_b_holds"] and report["against_within"] == 0.62
    seen.clear()  # (B): the gate in steps
    assert finer.main(["test", "--lr", "0.0036", "--steps", "75", "--against", "0.62", "--json", str(tmp_path / "s.json")]) == 0
    report = strict_loads((tmp_path / "s.json").read_text())
    assert {extra.get("handoff_finer_steps") for *_, extra in seen} == {None, 75}
    assert report["part_b_holds"] and report["handoff_finer_steps"] == 75


def test_the_backoff_rerun_compares_with_the_lstms_first_committed_run(monkeypatch, tmp_path):
    """The evaluation's LSTM rows now run the engine's defaults (--replace); backoff_eval's rerun without
    backoff is compared with the run they replaced, whose mean it repeated."""
    backoff_eval = load("backoff_eval")
    threads = torch.get_num_threads()
    monkeypatch.setattr(backoff_eval, "run_lstm", lambda setting, photo, backoff: {
        "photo": photo, "final": 1.0, "backoff_scales": [0.5] if backoff else [], "curve": [1.0], "seconds": 0.0})
    try:
        assert backoff_eval.main(["512-pyramid-off", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "ablation-backoff-512-pyramid-off.json").read_text())
    committed = _committed_settings(["512-pyramid-off"])["512-pyramid-off"]
    assert report["committed_lstm_mean_final"] == committed["replaced"][0]["mean_final_loss"]["lstm"] != \
        committed["optimizers"]["lstm"]["mean_final_loss"]


def test_the_adam_levels_rule_picks_the_faster_candidate_and_reads_its_timed_run(tmp_path, capsys, monkeypatch):
    """bench/adam_levels.py: val chooses the K that reaches Adam's final loss sooner on average (one that misses
    a photo is out); speed applies bench/coarse_share.py's test to the lstm-adamlevelsK entry."""
    bench = load("adam_levels")
    adam = tmp_path / "adam"
    adam.mkdir()
    for p in bench.PHOTOS:
        (adam / f"{p}-adam.json").write_text(json.dumps({"final": 1.0}))
    times = {0: (5.0, 6.0), 1: (3.0, 4.0), 2: (2.0, None)}  # K=2 is faster on one photo, misses the other

    def fake(job):
        photo, k, _ = job
        t = times[k][bench.PHOTOS.index(photo)]
        return {"curve": [3.0, 2.0, 0.5 if t else 2.0], "elapsed": [1.0, 2.0, t or 3.0], "loss_seconds": [0.5, 1.0, 1.5]}

    monkeypatch.setattr(bench, "one_run", fake)
    found = bench.val(SimpleNamespace(adam_runs=adam, runs=tmp_path / "runs"))
    assert found["chosen"] == 1 and found["mean_seconds_to_adam_final"] == {"0": 5.5, "1": 3.5, "2": None}
    assert [r["steps_to_adam_final"] for r in found["rows"]][:2] == [2, 2]
    expect_usage_error(capsys, "adam_levels", ["val", "--adam-runs", str(tmp_path / "none")], "no Adam run for")
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"optimizers": {"adam": {}}}))
    expect_usage_error(capsys, "adam_levels", ["speed", str(report)], "holds no lstm-adamlevelsK run")


def test_the_coarse_share_speed_rule_takes_the_faster_adam_as_the_yardstick():
    """bench/coarse_share.py speed: met when the LSTM with the share gets to Adam's final loss in at most half
    the time of the faster of Adam and Adam with the same share (where that one gets there on every photo)."""
    coarse_share = load("coarse_share")

    def report(lstm_times, adam_share_times):
        rows = lambda times: [{"seconds_to_adam_final": t} for t in times]  # noqa: E731
        curve = {"mean_curve": [3.0, 1.0], "mean_final_loss": 1.0}
        return {"photos": ["a", "b"], "timing_conditions": {"threads": 1},
                "timing": {"adam": rows([20.0, 20.0]), "lstm-coarse0.1": rows(lstm_times),
                           "adam-coarse0.1": rows(adam_share_times)},
                "speed": {"lstm-coarse0.1": {"update_share": 0.6}},
                "optimizers": {"adam": {**curve, "mean_final_loss": 2.0}, "lstm-coarse0.1": curve,
                               "adam-coarse0.1": curve}}

    found = coarse_share.speed(report([9.0, 11.0], [30.0, None]))  # Adam with the share misses one photo
    assert found["baseline_seconds"] == 20.0 and found["met"] and found["lstm_speedup"] == 2.0
    found = coarse_share.speed(report([9.0, 11.0], [16.0, 18.0]))  # ... here it is the faster one
    assert found["baseline_seconds"] == 17.0 and not found["met"] and found["lstm_speedup"] == pytest.approx(1.7)
    assert found["lstm_over_adam"] == 0.5 and found["lstm_mean_curve_steps_to_adam_final"] == 1
