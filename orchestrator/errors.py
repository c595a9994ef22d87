"""Errors a user can cause, and the one table that maps them to exit codes.

Every command raises one of these; `cli.main` turns it into a message and an exit code,
so a user mistake never ends in a traceback (as httpie and pip do).
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # a run or a check failed
EXIT_USAGE = 2  # bad input: spec, flags, run ids
EXIT_BACKEND = 3  # backend or scheduler unavailable


class OrchError(Exception):
    """Base class: carries a message and an optional hint."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        text = f"error: {self.message}"
        if self.hint:
            text += f"\nhint: {self.hint}"
        return text


class UserError(OrchError):
    """The user gave us something we cannot use (flags, run ids, files)."""

    exit_code = EXIT_USAGE


class SpecError(UserError):
    """A problem in an experiment spec, located at file:line and key path."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        what = f"{key}: {message}" if key else message
        super().__init__(where + what, hint)
        self.file, self.line, self.key = file, line, key

    def render(self) -> str:
        text = self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class SpecErrors(UserError):
    """Several spec problems reported at once, so one edit fixes them all."""

    def __init__(self, errors: list[SpecError]) -> None:
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors

    def render(self) -> str:
        return "\n".join(e.render() for e in self.errors)


class RunNotFound(UserError):
    """A run id or prefix matched nothing, or more than one run."""


class BackendUnavailable(OrchError):
    """The scheduler (or the local process table) cannot be reached."""

    exit_code = EXIT_BACKEND


class IllegalTransition(OrchError):
    """A run record refused a state change: the run is not in a state the transition leaves from
    (usually someone else acted first: a monitor, another `orch resume`, the job itself)."""

    exit_code = EXIT_FAILED


class RecordDamaged(OrchError):
    """A run folder whose run.json is missing, unreadable or not a run record."""

    exit_code = EXIT_FAILED


class RunFailed(OrchError):
    """A run ended in a state other than COMPLETED, or a check failed."""

    exit_code = EXIT_FAILED


def exit_code_for(exc: BaseException) -> int:
    """The single place that decides the exit code of an exception."""
    if isinstance(exc, OrchError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return EXIT_FAILED
