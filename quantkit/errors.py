"""Errors a user can act on: each carries the fix, printed by the CLI without a traceback."""

from __future__ import annotations


class QuantkitError(Exception):
    """An error with an optional `hint` telling the user what to do about it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - trivial
        base = super().__str__()
        return f"{base}\n  fix: {self.hint}" if self.hint else base


class ConfigError(QuantkitError):
    """A recipe, dataset definition or setting is invalid."""


class EngineMissingError(QuantkitError):
    """An engine environment has not been created yet."""


class EngineError(QuantkitError):
    """An engine process failed; the message carries its last log lines."""


class DataError(QuantkitError):
    """Evaluation or calibration data is unknown or unreadable."""
