"""The scripts' shared flag checks (artopt.script_args): refused before any work, with the reason."""

import argparse

import pytest

from artopt import script_args


def _parser():
    return argparse.ArgumentParser(prog="prog")


def _refusal(capsys, check, *args) -> str:
    with pytest.raises(SystemExit) as done:
        check(_parser(), *args)
    assert done.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("check", [script_args.check_output_file, script_args.check_output_dir])
def test_output_under_a_file_or_dangling_link_is_refused_with_its_name(tmp_path, capsys, check):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    err = _refusal(capsys, check, "--out", blocker / "sub" / "x.json")
    assert f"{blocker} is a file, not a folder" in err
    link = tmp_path / "gone"
    link.symlink_to(tmp_path / "missing")
    err = _refusal(capsys, check, "--out", link / "x.json")
    assert f"{link} is not a folder" in err
    assert not (tmp_path / "missing").exists()


def test_output_file_in_a_new_folder_is_accepted_and_its_folder_made(tmp_path):
    out = script_args.check_output_file(_parser(), "--json", tmp_path / "a" / "b" / "r.json")
    assert out.parent.is_dir() and not out.exists()


def test_folder_problem_names_the_first_existing_thing_and_makes_nothing(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    assert script_args.folder_problem(blocker / "a" / "b") == f"{blocker} is a file, not a folder"
    assert script_args.folder_problem(tmp_path / "new" / "deeper") is None
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("message, said", [
    ("minutes must be positive, got nan", "--minutes must be positive, got nan"),  # run setting max_minutes
    ("meta-lr must be positive, got -1.0", "--meta-lr must be positive, got -1.0"),
    ("global_cells must be a whole number from 0 to 20", "--global-cells must be a whole number from 0 to 20"),
    ("beta1 must be in (0, 1)", "--moment-betas must be in (0, 1)"),  # a setting of another name
    ("batch must be at least 1", "batch must be at least 1"),  # no such flag: as it was
])
def test_a_config_error_names_the_flag_that_sets_it(capsys, message, said):
    ap = argparse.ArgumentParser(prog="x")
    for flag in ("--minutes", "--meta-lr", "--global-cells", "--moment-betas"):
        ap.add_argument(flag)
    with pytest.raises(SystemExit):
        script_args.config_error(ap, ValueError(message))
    assert capsys.readouterr().err.splitlines()[-1] == f"x: error: {said}"


def test_val_seeds_are_whole_numbers_torch_can_seed_with():
    import argparse

    import torch

    from artopt.script_args import VAL_SEED_MAX, val_seed

    assert val_seed("0") == 0 and val_seed(str(VAL_SEED_MAX)) == VAL_SEED_MAX
    torch.Generator().manual_seed(10_000 + VAL_SEED_MAX)  # the largest still fits (validation_problems)
    for bad in ("-1", str(VAL_SEED_MAX + 1), "1.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            val_seed(bad)
