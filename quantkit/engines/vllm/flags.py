"""Engine settings as vLLM command-line flags (stdlib only: the vLLM worker imports it too)."""

from __future__ import annotations


def cli_flags(settings: dict) -> list[str]:
    """Engine settings as vLLM command-line flags (`vllm serve`, `vllm bench`, the worker's own
    argument parsing): booleans are switches."""
    flags: list[str] = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag] if value else []
        else:
            flags += [flag, str(value)]
    return flags
