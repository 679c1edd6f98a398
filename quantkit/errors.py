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


class CannotRunHereError(ConfigError):
    """A valid model that this machine's engine has no kernel for (W4A16 on a CPU without AVX-512):
    another machine runs it. `reason` names the missing kernel and instruction set."""

    def __init__(self, display: str, reason: str, hint: str | None = None):
        super().__init__(f"{display}: {reason}", hint)
        self.reason = reason


class EngineMissingError(QuantkitError):
    """An engine environment has not been created yet."""


class EngineError(QuantkitError):
    """An engine process failed; the message carries its last log lines."""


class DataError(QuantkitError):
    """Evaluation or calibration data is unknown or unreadable."""
