"""Workarounds that let llm-compressor run on a machine without an accelerator.

Filled in from measurement (see the AWQ note in README); each entry says what it patches and why.
"""

from __future__ import annotations


def apply() -> list[str]:
    """Apply the CPU workarounds; returns the names of what was patched (recorded in manifests)."""
    return []
