"""Optimizee tasks and the registry that names them.

    task = get_task("mnist-40")            # the paper's test-time variant with 40 hidden units
    task = get_task("mnist", steps=200)    # any constructor argument can be overridden
    task = get_task("cifar5", labels=[5, 6, 7, 8, 9])   # CIFAR-5 on the held-out labels

Suites: quadratic; mnist (20 sigmoid units), mnist-40, mnist-2layer, mnist-relu; cifar10, cifar2,
cifar5, cifar5-heldout (labels 5..9: trains the paper's "LSTM-sub"); neural-art.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from typing import Callable

from .base import Problem, Task, stack_problems
from .cifar import CIFARTask
from .data import DataNotFoundError, data_root, split_seed
from .mnist import MNISTTask
from .quadratic import QuadraticTask


def _neural_art_class():
    from .neural_art import NeuralArtTask  # heavy (loss network); imported only when asked for

    return NeuralArtTask


def _neural_art(**kwargs):
    return _neural_art_class()(**kwargs)


_neural_art.task_class = _neural_art_class  # for get_task's checks


def _is_int(v) -> bool:  # numpy integers too
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


# A field's annotation (a string here) -> what its values must be, and how to say so.
_KINDS = {
    "int": (_is_int, "a whole number"),
    "float": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v),
              "a finite number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "Path": (lambda v: isinstance(v, (str, os.PathLike)), "a path"),
    "os.PathLike": (lambda v: isinstance(v, os.PathLike), "a path"),
    "Sequence[int]": (lambda v: isinstance(v, (list, tuple)) and all(map(_is_int, v)), "a list of whole numbers"),
    "tuple[int, int]": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_is_int, v)),
                        "two whole numbers, [low, high]"),
    "Sequence[str]": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
                      "a list of strings"),
}


def check_task_args(cls, kwargs: dict) -> None:
    """TypeError for a keyword of the wrong type for the dataclass task ``cls``, naming the setting: such
    values (--task-arg batch=1.5) passed the tasks' range checks and failed later inside torch.
    Ranges stay the tasks' own checks."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls) if f.init}
    for key, value in kwargs.items():
        if key not in fields:
            continue  # the constructor names unknown keywords
        kinds = [t.strip() for t in fields[key].split("|")]
        if value is None and "None" in kinds:
            continue
        known = [_KINDS[k] for k in kinds if k in _KINDS]
        if known and not any(ok(value) for ok, _ in known):
            raise TypeError(f"{key} must be {' or '.join(what for _, what in known)}"
                            f"{' or null' if 'None' in kinds else ''}, got {json.dumps(value, default=repr)}")


# name -> (factory, default keyword arguments)
TASKS: dict[str, tuple[Callable[..., Task], dict]] = {
    "quadratic": (QuadraticTask, {}),
    "mnist": (MNISTTask, {}),
    "mnist-40": (MNISTTask, {"hidden": (40,)}),
    "mnist-2layer": (MNISTTask, {"hidden": (20, 20)}),
    "mnist-relu": (MNISTTask, {"activation": "relu"}),
    "cifar10": (CIFARTask, {}),
    "cifar2": (CIFARTask, {"labels": (0, 1)}),
    "cifar5": (CIFARTask, {"labels": (0, 1, 2, 3, 4)}),
    "cifar5-heldout": (CIFARTask, {"labels": (5, 6, 7, 8, 9)}),
    "neural-art": (_neural_art, {}),
}


def _task_class(factory):
    """The task class a registry factory makes (the neural-art one is imported only when asked for)."""
    return factory if dataclasses.is_dataclass(factory) else factory.task_class()


def task_defaults(name: str) -> dict:
    """The keyword arguments task ``name`` is made with when none are given (its class's defaults,
    then the registry's), as JSON values (tuples become lists), for comparing with --task-arg values."""
    factory, defaults = TASKS[name]
    cls = _task_class(factory)
    found = {}
    for f in dataclasses.fields(cls):
        if f.init and f.name != "name":
            if f.default is not dataclasses.MISSING:
                found[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                found[f.name] = f.default_factory()
    return json.loads(json.dumps({**found, **defaults}, default=str))


def _is_default(defaults: dict, key: str, value) -> bool:
    return key in defaults and json.loads(json.dumps(value, default=str)) == defaults[key]


def get_task(name: str, **variant_kwargs) -> Task:
    """The task registered as ``name``, with ``variant_kwargs`` overriding its defaults.

    The task's ``name`` is the registry name, plus the overrides when there are any (e.g.
    ``mnist[steps=200]``), so results and cached learning rates keyed by it stay distinct.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    factory, defaults = TASKS[name]
    kwargs = {**defaults, **variant_kwargs}
    if "name" not in variant_kwargs:
        # (an argument equal to its default leaves the name as it is: results and cached rates are the default's)
        same = task_defaults(name)
        extra = {k: v for k, v in variant_kwargs.items() if k not in ("root",) and not _is_default(same, k, v)}
        kwargs["name"] = name + ("[" + ",".join(f"{k}={_fmt(v)}" for k, v in sorted(extra.items())) + "]"
                                 if extra else "")
    cls = _task_class(factory)
    try:
        check_task_args(cls, variant_kwargs)
        return factory(**kwargs)
    except TypeError as e:  # unknown keyword: say which task and which arguments exist
        raise ValueError(f"bad arguments for task {name!r}: {e}") from None


def parse_task_args(items: list[str]) -> dict:
    """``--task-arg KEY=JSON`` values (as the training and evaluation scripts take them) as keywords
    for :func:`get_task`; ValueError names the malformed one."""
    kwargs = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key:
                raise ValueError
            kwargs[key] = json.loads(value)
        except ValueError:  # json.JSONDecodeError is one
            raise ValueError(f"--task-arg expects KEY=JSON, got {item!r}") from None
        if key == "name":  # get_task names the task (suite and settings): results are keyed by it
            raise ValueError("--task-arg name: the task's name is made from its suite and settings; "
                             "use --name to name the run")
    return kwargs


def _fmt(v) -> str:
    if isinstance(v, (list, tuple)):
        return "(" + ",".join(map(str, v)) + ")"
    return str(v)


__all__ = ["Problem", "Task", "stack_problems", "TASKS", "get_task", "task_defaults", "parse_task_args", "QuadraticTask", "MNISTTask", "CIFARTask",
           "DataNotFoundError", "data_root", "split_seed"]
