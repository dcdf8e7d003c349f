"""A meta-training run's files (artopt/outer_trainers/checkpoints.py): what a resume with other settings
says, and the JSON log's lines.  The checkpoint, resume and shipping behaviour through meta_train is
tested in test_truncated_bptt.py."""

import json
from pathlib import Path

from artopt.outer_trainers.checkpoints import UNSET, SettingsChangedError, log_line, setting_changes


def test_a_flag_that_sets_every_networks_copy_is_said_once():
    changes = [(("nets", "conv", "output_scale"), 0.01, 0.1), (("nets", "fc", "output_scale"), 0.01, 0.1)]
    said = SettingsChangedError(Path("x.ckpt"), changes).describe(lambda key: ("--output-scale", 2))
    assert "other settings (--output-scale 0.01 -> 0.1); resume" in said  # was said once per network


def test_log_lines_are_strict_json_when_a_run_diverges():
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    line = log_line({"event": "val", "episode": 3, "val": float("inf"), "final": float("nan"), "score": 1.5})
    assert line.endswith("\n")
    assert json.loads(line, parse_constant=refuse) == {"event": "val", "episode": 3, "val": None, "final": None,
                                                      "score": 1.5}


def test_setting_changes_compares_nested_settings_key_by_key():
    stored = {"steps": 10, "nets": {"default": {"p": 10.0, "moment_inputs": False}}, "task": {"size": 64}}
    now = {"steps": 10, "nets": {"default": {"p": 10.0, "moment_inputs": True}}, "task": {"size": 64, "init": "noise"}}
    assert setting_changes(stored, now) == [(("nets", "default", "moment_inputs"), False, True),
                                             (("task", "init"), UNSET, "noise")]
    # A setting added later whose default is None: runs written before it still resume.
    assert setting_changes({"a": 1}, {"a": 1, "init_from": None}) == []
    assert setting_changes({"a": 1}, {"a": 1, "init_from": "x.safetensors"}) == [(("init_from",), UNSET, "x.safetensors")]
