"""Training tasks: the built-in ones by name, a team's own by `package.module:factory`.

A task knows one kind of data (see `base.Task`); the harness knows the rest. The artifact
records the task it was made by, so serving loads it through the same task.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from workloads.training.tasks.base import REQUIRED_MEMBERS, Task

__all__ = ["BUILTIN_TASKS", "Task", "TaskLoadError", "load_task"]

# name -> "module:class"; imported only when asked for (the image and text tasks pull in
# their own libraries).
BUILTIN_TASKS: dict[str, str] = {
    "tabular": "workloads.training.tasks.tabular:TabularTask",
    "image": "workloads.training.tasks.image:ImageTask",
    "text": "workloads.training.tasks.text:TextTask",
}
# Older jobs and artifacts name the tabular problem as the task.
TASK_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    problem: ("tabular", {"problem": problem}) for problem in ("binary", "multiclass", "regression")
}


class TaskLoadError(ValueError):
    """The task named cannot be loaded or does not implement the protocol."""


def load_task(spec: str) -> tuple[type[Task], dict[str, Any]]:
    """The task class `spec` names, and the params its name implies (for the aliases).

    `spec` is a built-in name, or `package.module:attr` where `attr` is a task class or a
    factory (a callable taking no arguments) returning one.
    """
    implied: dict[str, Any] = {}
    if spec in TASK_ALIASES:
        spec, implied = TASK_ALIASES[spec]
    target = BUILTIN_TASKS.get(spec, spec)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        known = ", ".join([*BUILTIN_TASKS, *TASK_ALIASES])
        raise TaskLoadError(
            f"unknown task {spec!r}; built-in: {known}; or 'package.module:factory'"
        )
    try:
        obj: Any = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise TaskLoadError(f"cannot load task {spec!r}: {exc}") from None
    if not inspect.isclass(obj) and callable(obj):
        obj = obj()
    missing = [m for m in REQUIRED_MEMBERS if not hasattr(obj, m)]
    if not inspect.isclass(obj) or missing:
        what = f"lacks {', '.join(missing)}" if inspect.isclass(obj) else "is not a class"
        raise TaskLoadError(
            f"task {spec!r} {what}: a task implements workloads.training.tasks.Task"
        )
    return obj, implied
