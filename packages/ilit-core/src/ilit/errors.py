"""Exceptions ilit raises, each telling the user what was wrong and what to do."""

from __future__ import annotations

from typing import Any, Dict, Optional

__all__ = ["ConfigError", "PluginNotFoundError", "PluginLoadError", "ResumeError", "ModelFileError",
           "RepeatedTrialError", "WorkspaceBusyError"]


class ConfigError(ValueError):
    """A YAML config (or its intersection with what the framework can do) is invalid.

    The message starts with the dotted key path, e.g. ``tuning.accuracy_criterion: ...``.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class PluginNotFoundError(ConfigError, LookupError):
    """No plugin of that name is installed in an ``ilit.*`` entry-point group.

    It is a :class:`ConfigError` too, naming the config key that asked for it (e.g. ``tuning.strategy``).
    """


class PluginLoadError(ImportError):
    """A plugin is installed but failed to import; the original error is chained."""


class ResumeError(ValueError):
    """A ``resume_file`` cannot be used with this config or model."""


class ModelFileError(ValueError):
    """A file read as a saved model is not one the adaptor wrote; nothing in it was run.

    ``file`` is its path. Each adaptor's ``load`` raises this or a subclass, with a message that names the file,
    says what is wrong with it and how to get a file it can load.
    """

    def __init__(self, file: str, message: str) -> None:
        self.file = file
        super().__init__(message)


class RepeatedTrialError(RuntimeError):
    """The same error ended several trials in a row: it does not depend on the config, so tuning stopped.

    The history holds the failed trials; fix the cause (often the data or ``eval_func``) and run again.
    """


class WorkspaceBusyError(RuntimeError):
    """Another tuning run holds the workspace (see :mod:`ilit.lock`); nothing was written to it.

    ``workspace`` is the directory; ``holder`` what the other run recorded about itself (pid, host, started,
    command), or None if it could not be read.
    """

    def __init__(self, workspace: str, holder: "Optional[Dict[str, Any]]", message: str = "") -> None:
        self.workspace = workspace
        self.holder = holder
        if not message:
            who = "another ilit run"
            if holder:
                from .text import printable

                who = (f"another ilit run (pid {printable(holder.get('pid'), 20)} on "
                       f"{printable(holder.get('host'), 80)}, started {printable(holder.get('started'), 40)}: "
                       f"{printable(holder.get('command'), 200)})")
            message = (f"workspace {workspace!r} is in use by {who}; wait for it to finish, or give this run "
                       "another tuning.workspace.path")
        super().__init__(message)
