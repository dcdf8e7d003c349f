"""train/meta_train.py and train/neural_art.py as users run them: what they say when a run cannot
start, resume or ship.  Runs are a few episodes of a few steps."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "train" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.fixture
def suite():
    """train/meta_train.py; torch's thread count (the script sets its own) is restored afterwards."""
    threads = torch.get_num_threads()
    yield _script("meta_train")
    torch.set_num_threads(threads)


@pytest.fixture
def neural_art(shared_data):
    threads = torch.get_num_threads()
    yield _script("neural_art")
    torch.set_num_threads(threads)


def _tiny(tmp_path, *extra, ship=""):
    return ["quadratic", "--steps", "4", "--unroll", "2", "--episodes", "1", "--val-every", "1",
            "--val-problems", "1", "--runs", str(tmp_path / "runs"), "--ship", str(ship), *extra]


def _one_error_line(err: str, *parts: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in lines[0], err
    return lines[0]


def test_a_damaged_checkpoint_is_one_error_line_when_the_script_runs_directly(tmp_path):
    # Before: a traceback ending in torch's advice about weights_only (only 'artopt train' said it plainly).
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "x.ckpt").write_text("garbage\n")
    done = subprocess.run([sys.executable, str(ROOT / "train" / "meta_train.py"), *_tiny(tmp_path, "--name", "x")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("meta_train.py: error: ")
    _one_error_line(done.stderr, "x.ckpt cannot be resumed: it is not a readable checkpoint", "--name")


def test_a_checkpoint_of_other_settings_is_one_error_line(tmp_path, suite, capsys):
    assert suite.main(_tiny(tmp_path, "--name", "x")) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        suite.main(_tiny(tmp_path, "--name", "x", "--meta-lr", "0.01"))
    assert done.value.code == 2
    # The flag the user changed, not the setting's name (before: "meta_lr 0.001 -> 0.01").
    _one_error_line(capsys.readouterr().err, "belongs to a run with other settings (--meta-lr 0.001 -> 0.01)")
    # A flag whose setting has another name says both; before, the whole network config was printed.
    with pytest.raises(SystemExit):
        suite.main(_tiny(tmp_path, "--name", "x", "--no-preprocess"))
    line = _one_error_line(capsys.readouterr().err, "other settings (--no-preprocess (preprocess True -> False))")
    assert "hidden_size" not in line
    with pytest.raises(SystemExit):
        suite.main(_tiny(tmp_path, "--name", "x", "--global-cells", "4"))
    _one_error_line(capsys.readouterr().err, "other settings (--global-cells 0 -> 4)")
    assert suite.main(_tiny(tmp_path, "--name", "x", "--episodes", "2")) == 0  # a bigger budget resumes


def test_a_task_arg_at_its_default_resumes_a_run_without_it_and_back(tmp_path, suite, capsys):
    """--task-arg dim=10 is the quadratic's default: the same run as none (it was refused as
    "task_kwargs.dim 10 -> unset"); another value is still a changed task."""
    assert suite.main(_tiny(tmp_path, "--name", "x", "--task-arg", "dim=10")) == 0
    assert suite.main(_tiny(tmp_path, "--name", "x", "--episodes", "2")) == 0
    assert suite.main(_tiny(tmp_path, "--name", "x", "--episodes", "3", "--task-arg", "dim=10")) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        suite.main(_tiny(tmp_path, "--name", "x", "--episodes", "4", "--task-arg", "dim=11"))
    _one_error_line(capsys.readouterr().err, "other settings (--task-arg (task_kwargs.dim 10 -> 11))")


def test_the_suite_script_meta_trains_global_averaging_cells(tmp_path, suite, capsys):
    from artopt.learned_optimizers import load_learned

    assert suite.main(_tiny(tmp_path, "--name", "gac", "--global-cells", "3")) == 0
    (net,) = load_learned(tmp_path / "runs" / "gac" / "gac.safetensors").values()
    assert net.config.global_cells == 3
    card = json.loads((tmp_path / "runs" / "gac" / "gac.json").read_text())
    assert "global averaging cells" in card["architecture"]
    with pytest.raises(SystemExit) as done:
        suite.main(_tiny(tmp_path, "--name", "bad", "--global-cells", "21"))
    assert done.value.code == 2
    _one_error_line(capsys.readouterr().err, "error: --global-cells must be a whole number from 0 to hidden_size (20)")
    assert not (tmp_path / "runs" / "bad").exists()


def test_a_resumed_neural_art_run_names_the_changed_flags(tmp_path, neural_art, capsys):
    assert neural_art.main(_tiny_art(tmp_path, "--name", "x")) == 0
    capsys.readouterr()
    for args, said in ((["--moment-inputs"], "(--moment-inputs False -> True)"),
                       (["--moment-betas", "0.9", "0.95"], "(--moment-betas (beta1 0.95 -> 0.9))"),
                       (["--size", "24"], "(--size 16 -> 24)"),
                       (["--trajectory-weights", "linear"], "(--trajectory-weights 'uniform' -> 'linear')")):
        with pytest.raises(SystemExit) as done:
            neural_art.main(_tiny_art(tmp_path, "--name", "x", *args))
        assert done.value.code == 2
        _one_error_line(capsys.readouterr().err, said)


def test_a_neural_art_run_records_its_photo_split_and_is_not_resumed_on_another(tmp_path, neural_art, capsys,
                                                                               monkeypatch, shared_data):
    # The split goes by the rank of a hash: a photo removed from the folder moves others across it, and
    # a resumed run's validation problems changed mid-run without a word.
    data = tmp_path / "data"
    (data / "imagenet-sample").mkdir(parents=True)
    (data / "styles").symlink_to(shared_data / "styles")
    for photo in (shared_data / "imagenet-sample").iterdir():
        (data / "imagenet-sample" / photo.name).symlink_to(photo)
    monkeypatch.setenv("ARTOPT_DATA", str(data))
    assert neural_art.main(_tiny_art(tmp_path, "--name", "x", "--episodes", "1")) == 0
    card = json.loads((tmp_path / "runs" / "x" / "x.json").read_text())
    from artopt.tasks.neural_art import split_digest, split_photos

    split = split_photos(data / "imagenet-sample")
    assert card["photo_split"] == {"digest": split_digest(split), "val": split["val"], "test": split["test"]}
    (data / "imagenet-sample" / split["test"][0]).unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        neural_art.main(_tiny_art(tmp_path, "--name", "x", "--episodes", "2"))
    assert done.value.code == 2
    _one_error_line(capsys.readouterr().err, "belongs to a run on another split of the photos in", "photos were added or removed")


def test_without_ship_a_run_replaces_nothing_shipped(tmp_path, suite, capsys):
    # --ship defaulted to weights/: a smoke-sized run replaced the shipped optimizer and its card.
    shipped = [ROOT / "weights" / f"quadratic.{ext}" for ext in ("safetensors", "json")]
    before = [p.read_bytes() for p in shipped]
    args = [a for a in _tiny(tmp_path) if a not in ("--ship", "")]
    assert "--ship" not in args and suite.main(args) == 0
    assert [p.read_bytes() for p in shipped] == before
    assert (tmp_path / "runs" / "quadratic" / "quadratic.safetensors").is_file()  # kept with the run
    assert "shipped" not in capsys.readouterr().out


def test_an_empty_run_name_is_refused_not_read_as_the_suite(tmp_path, suite, capsys):
    # Before: --name '' trained (and shipped) under the suite's name, over that run if there was one.
    with pytest.raises(SystemExit) as done:
        suite.main(_tiny(tmp_path, "--name", ""))
    assert done.value.code == 2
    _one_error_line(capsys.readouterr().err, "--name must be a plain file name")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flag", ["--steps", "--unroll"])
def test_a_zero_horizon_or_truncation_is_refused_not_read_as_the_default(tmp_path, suite, capsys, flag):
    # Before: 0 silently ran the task's default (20 steps of truncation for the quadratics).
    with pytest.raises(SystemExit) as done:
        suite.main([*_tiny(tmp_path, "--name", "x"), flag, "0"])
    assert done.value.code == 2
    _one_error_line(capsys.readouterr().err, f"error: {flag} must be a positive integer, got 0")
    assert not (tmp_path / "runs" / "x").exists()


def test_a_genuine_bug_still_shows_its_traceback(tmp_path, suite, monkeypatch):
    # Only the resume refusals become one-line errors, not every ValueError of the run.
    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(suite, "meta_train", broken)
    with pytest.raises(ValueError, match="a bug"):
        suite.main(_tiny(tmp_path, "--name", "x"))


@pytest.mark.parametrize("args, message", [
    (["--name", "a/b"], "--name must be a plain file name"),
    (["--name", ".."], "--name must be a plain file name"),
    (["--runs", "{file}"], "--runs {file}: {file} is a file, not a folder"),
    (["--runs", "{file}/sub"], "--runs {file}/sub: {file} is a file, not a folder"),
    (["--ship", "{file}"], "--ship {file}: {file} is a file, not a folder"),
])
def test_unusable_names_and_folders_are_refused_before_training(tmp_path, suite, capsys, args, message):
    # Before: a traceback (NotADirectoryError, FileNotFoundError mid-run), hidden files for '' (neural_art.py)
    # or '..', and a --ship folder that is a file failed only after the whole run.
    file = tmp_path / "file"
    file.write_text("x")
    args = [a.format(file=file) for a in args]
    with pytest.raises(SystemExit) as done:
        suite.main(_tiny(tmp_path, *args))
    assert done.value.code == 2
    _one_error_line(capsys.readouterr().err, message.format(file=file))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flag", ["--ship", "--runs"])
def test_an_unwritable_folder_is_refused_before_training(tmp_path, suite, capsys, monkeypatch, flag):
    import os

    real = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != locked and real(p, mode, **kw))
    with pytest.raises(SystemExit) as done:
        suite.main(_tiny(tmp_path, "--name", "x", flag, str(locked / "sub")))  # the later flag wins
    assert done.value.code == 2
    _one_error_line(capsys.readouterr().err, f"{flag} {locked / 'sub'}: {locked} is not writable")


def test_a_failed_ship_says_where_the_trained_networks_are(tmp_path, suite, capsys, monkeypatch):
    # Before: a traceback after the whole run, without a word on where its result was.
    from artopt.outer_trainers import ship_best as real_ship

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(suite, "ship_best", disk_full)
    assert suite.main(_tiny(tmp_path, "--name", "x", ship=tmp_path / "weights")) == 1
    kept = tmp_path / "runs" / "x" / "x.safetensors"
    _one_error_line(capsys.readouterr().err, f"not shipped to {tmp_path / 'weights'}", "No space left on device",
                    str(kept), "rerun the command")
    assert kept.is_file()
    monkeypatch.setattr(suite, "ship_best", real_ship)  # rerun the same command: the finished run ships
    assert suite.main(_tiny(tmp_path, "--name", "x", ship=tmp_path / "weights")) == 0
    assert (tmp_path / "weights" / "x.safetensors").read_bytes() == kept.read_bytes()


def test_the_summary_line_is_strict_json(tmp_path, suite, capsys, monkeypatch):
    import artopt.outer_trainers.truncated_bptt as tb

    def diverged(*args, **kwargs):
        return tb.MetaTrainResult(float("inf"), 0, 1, 0.1, [])

    monkeypatch.setattr(suite, "meta_train", diverged)
    assert suite.main(_tiny(tmp_path, "--name", "x")) == 0

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    assert json.loads(capsys.readouterr().out.splitlines()[-1], parse_constant=refuse)["best_val"] is None


def _tiny_art(tmp_path, *extra):
    return ["--size", "16", "--steps", "2", "--unroll", "1", "--episodes", "1", "--val-every", "1",
            "--val-problems", "1", "--runs", str(tmp_path / "runs"), "--ship", "", *extra]


def test_the_neural_art_script_says_its_errors_in_one_line(tmp_path, neural_art, capsys):
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "x.ckpt").write_bytes(b"")
    with pytest.raises(SystemExit) as done:
        neural_art.main(_tiny_art(tmp_path, "--name", "x"))
    assert done.value.code == 2
    _one_error_line(capsys.readouterr().err, "x.ckpt cannot be resumed: it is not a readable checkpoint")
    weights = Path(__file__).resolve().parents[1] / "weights"
    for args, message in ((["--name", ""], "--name must be a plain file name"),
                          (["--basis-levels", "-1"], "--basis-levels must be 0 (pixels) or more, got -1"),
                          (["--init-from", str(tmp_path / "missing.safetensors")], "--init-from"),
                          # a KeyError, and two whole configs on an "artopt: error" line with exit 1
                          (["--init-from", str(weights / "cifar10.safetensors")], "holds the networks ['conv', 'fc']"),
                          (["--init-from", str(weights / "neural_art.safetensors")],
                           "was trained with other network settings: --moment-inputs True (this run: False)")):
        with pytest.raises(SystemExit) as done:
            neural_art.main(_tiny_art(tmp_path, *args))
        assert done.value.code == 2
        _one_error_line(capsys.readouterr().err, message)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["x"]


def test_ctrl_c_ends_the_script_with_the_resume_hint_not_a_traceback(tmp_path, suite, monkeypatch, capsys):
    # Before: Python's traceback followed meta_train's "interrupted: ... the same command resumes the run".
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(suite, "meta_train", interrupted)
    assert suite.main(_tiny(tmp_path, "--name", "x")) == 130


def test_the_recorded_command_can_be_rerun_as_written(tmp_path, suite):
    # Before: " ".join(argv) dropped the empty argument of --ship '', and the card's command failed
    # with "argument --ship: expected one argument".
    import shlex

    assert suite.main(_tiny(tmp_path, "--name", "x y")) == 0  # _tiny passes --ship ''
    command = json.loads((tmp_path / "runs" / "x y" / "x y.json").read_text())["command"]
    words = shlex.split(command)
    assert words[:2] == ["python", "train/meta_train.py"]
    assert words[2:] == _tiny(tmp_path, "--name", "x y")


@pytest.mark.parametrize("args, message", [
    (["nosuch"], "unknown task 'nosuch'"),  # these were tracebacks when the script ran directly
    (["--task-arg", "nope=3"], "unexpected keyword argument 'nope'"),
    (["--task-arg", "batch=-1"], "batch must be at least 1"),
])
def test_the_suite_script_says_a_bad_task_in_one_line(tmp_path, suite, capsys, args, message):
    argv = _tiny(tmp_path)
    argv = ["nosuch", *argv[1:]] if args == ["nosuch"] else [*argv, *args]
    with pytest.raises(SystemExit) as done:
        suite.main(argv)
    assert done.value.code == 2
    _one_error_line(capsys.readouterr().err, message)


def test_the_suite_script_refuses_a_run_another_process_trains(tmp_path, suite, capsys):
    import fcntl
    import os

    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    fd = os.open(run / ".x.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held here: this process's next open() of the file is another holder
        with pytest.raises(SystemExit) as done:
            suite.main(_tiny(tmp_path, "--name", "x"))
        assert done.value.code == 2
        _one_error_line(capsys.readouterr().err, "run 'x' in", "is being trained by another process")
    finally:
        os.close(fd)


def test_a_run_that_never_beat_its_start_says_so(tmp_path, suite, capsys):
    # every episode after the first meta-step diverges: the "best" networks are the untrained ones
    assert suite.main(_tiny(tmp_path, "--name", "x", "--meta-lr", "1e30", "--episodes", "2")) == 0
    err = capsys.readouterr().err
    assert "warning: no validation after the start scored lower than the start's" in err
    assert suite.main(_tiny(tmp_path, "--name", "y", "--episodes", "3")) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.fixture
def evaluate():
    threads = torch.get_num_threads()
    yield _script("evaluate")
    torch.set_num_threads(threads)


def _tiny_eval(tmp_path, *extra):
    return ["quadratic", "--steps", "3", "--instances", "1", "--tuned-lrs", str(tmp_path / "lrs.json"), *extra]


def test_a_cached_lr_tuned_otherwise_is_said_not_silently_used(tmp_path, evaluate, capsys):
    # Before: --tune-grid and --tune-problems were dropped without a word when the cache had an entry.
    # (Not re-tuned: the committed results' commands are reproduced from the cache.)
    (tmp_path / "lrs.json").write_text(json.dumps({"quadratic": {"steps=3": {"adam": {
        "lr": 0.1, "criterion": "final", "problems": 2, "grid": [0.01, 0.1, 1.0]}}}}))
    assert evaluate.main(_tiny_eval(tmp_path, "--optimizers", "adam", "--tune-grid", "1:10:1",
                                    "--json", str(tmp_path / "r.json"))) == 0
    assert ("using the cached adam lr 0.1 (tuned on a grid of 3 rates from 0.01 to 1, 2 problem(s)), not "
            "--tune-grid/--tune-problems") in capsys.readouterr().err
    assert json.loads((tmp_path / "r.json").read_text())["tuning"]["adam"]["grid"] == [0.01, 0.1, 1.0]
    evaluate.main(_tiny_eval(tmp_path, "--optimizers", "adam", "--tune-problems", "2"))  # as cached: no word
    assert "using the cached" not in capsys.readouterr().err


def test_a_cached_lr_at_its_grids_edge_is_said(tmp_path, evaluate, capsys):
    (tmp_path / "lrs.json").write_text(json.dumps({"quadratic": {"steps=3": {"adam": {
        "lr": 1.0, "criterion": "final", "problems": 1, "grid": [0.01, 0.1, 1.0], "at_edge": True}}}}))
    assert evaluate.main(_tiny_eval(tmp_path, "--optimizers", "adam")) == 0
    assert "the cached adam lr 1 is at the edge of the grid it was tuned on" in capsys.readouterr().err


def test_an_lr_cache_that_cannot_be_written_is_refused_before_tuning(tmp_path, evaluate, capsys):
    (tmp_path / "afile").write_text("")  # before: the tuning ran, then "[Errno 17] File exists"
    with pytest.raises(SystemExit) as done:
        evaluate.main(["quadratic", "--optimizers", "adam", "--tuned-lrs", str(tmp_path / "afile" / "x.json")])
    assert done.value.code == 2
    _one_error_line(capsys.readouterr().err, "--tuned-lrs", "is a file, not a folder")


def test_a_zero_step_task_is_one_error_line(tmp_path, evaluate, capsys):
    # Before: a traceback from the lr search (or from evaluate, with --lr given)
    for extra in ([], ["--lr", "adam=0.1"]):
        assert evaluate.main(["quadratic", "--optimizers", "adam", "--task-arg", "steps=0", "--instances", "1",
                              "--tuned-lrs", str(tmp_path / "lrs.json"), *extra]) == 2
        _one_error_line(capsys.readouterr().err, "steps must be a positive whole number")


def test_tuning_that_diverges_at_every_rate_is_one_error_line(tmp_path, evaluate, capsys):
    assert evaluate.main(_tiny_eval(tmp_path, "--optimizers", "sgd", "--tune-grid", "1e6:1e7:1",
                                    "--tune-problems", "1")) == 2
    _one_error_line(capsys.readouterr().err, "sgd diverged on quadratic at every learning rate", "--tune-grid")


def test_weights_of_another_kind_of_task_are_named(tmp_path, evaluate, capsys):
    assert evaluate.main(_tiny_eval(tmp_path, "--optimizers", "lstm", "--weights",
                                    str(ROOT / "weights" / "neural_art.safetensors"))) == 0
    err = capsys.readouterr().err
    assert "warning: lstm" in err and "was meta-trained on 'neural-art' (its card), not on a task like 'quadratic'" in err
    assert evaluate.main(_tiny_eval(tmp_path, "--optimizers", "lstm")) == 0  # the quadratic's own: no word
    assert "warning" not in capsys.readouterr().err


def test_the_suite_script_says_missing_data_in_one_line(tmp_path, suite, capsys, monkeypatch):
    monkeypatch.setenv("ARTOPT_DATA", str(tmp_path))  # no mnist folder in it: it was a traceback
    with pytest.raises(SystemExit) as done:
        suite.main(["mnist", *_tiny(tmp_path)[1:]])
    assert done.value.code == 2
    _one_error_line(capsys.readouterr().err, "MNIST not found in")
