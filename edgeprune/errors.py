"""Errors a user can act on.

Invariant: every error raised for bad input or an unmet requirement is an
``EdgepruneError`` whose message is one line saying what went wrong and what to
do. The CLI prints it as ``edgeprune: error: ...`` and exits with ``exit_code``
(2 for bad input, 1 for a failed gate or build step). Nothing else is caught.
"""
from __future__ import annotations


class EdgepruneError(Exception):
    """A failure with a one-line, actionable message."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UserInputError(EdgepruneError):
    """Bad input: unknown name, missing file, out-of-range value, existing output."""


class RuntimeUnavailable(EdgepruneError):
    """The runtime a target needs is not installed or cannot start here."""


class UnsupportedPrecision(EdgepruneError):
    """A precision the runtime or this hardware cannot honour (never a silent fallback)."""


class CompileError(EdgepruneError):
    """The runtime's converter or compiler rejected the model."""

    exit_code = 1


class GateFailed(EdgepruneError):
    """A parity/accuracy/budget gate failed; the message carries the numbers."""

    exit_code = 1
