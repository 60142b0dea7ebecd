"""Typed errors. The library raises these; only the CLI (and later the HTTP layer) turns them into
messages and exit codes, so callers of the Python API can catch exactly what they care about."""
from __future__ import annotations


class ClassifineError(Exception):
    """Base class. ``problems`` holds every problem found, each with the fix, so one run reports all."""

    exit_code = 1

    def __init__(self, summary: str, problems: list[str] | None = None):
        self.summary = summary
        self.problems = list(problems or [])
        super().__init__(self.render())

    def render(self) -> str:
        if not self.problems:
            return self.summary
        lines = [self.summary]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class TaskError(ClassifineError):
    """The task spec (YAML) is invalid."""

    exit_code = 2


class DataError(ClassifineError):
    """A data file cannot be read or does not fit the task."""

    exit_code = 2


class ConfigError(ClassifineError):
    """A method name or a hyper-parameter is invalid, or a method does not support the task kind."""

    exit_code = 2


class ModelError(ClassifineError):
    """A model name cannot be resolved or loaded."""

    exit_code = 3


class RunError(ClassifineError):
    """A run directory is missing, incomplete or would be overwritten."""

    exit_code = 2


class AnnotatorError(ClassifineError):
    """An annotator (an OpenAI-compatible server or a local model) cannot be reached or refuses the
    requests: wrong URL, key or model name, or it keeps failing after the retries."""

    exit_code = 4
