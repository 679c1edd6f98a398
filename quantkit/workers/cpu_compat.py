"""Workarounds that let llm-compressor run on a machine without an accelerator.

Each entry patches the narrowest thing that fails, only when no accelerator is present, and its
name is recorded in the variant's manifest.
"""

from __future__ import annotations


def _awq_pin_memory() -> str | None:
    """llm-compressor 0.14's AWQ smoothing calls IntermediatesCache.pin_memory() for each cached
    batch (modifiers/transform/awq/base.py), and Tensor.pin_memory() raises "Cannot access
    accelerator device when none is available" on CPU-only hosts. Pinning only speeds up host->GPU
    copies, so without a GPU it is skipped."""
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not hasattr(IntermediatesCache, "pin_memory"):
        return None
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    return "llmcompressor.pipelines.cache.IntermediatesCache.pin_memory -> no-op (no accelerator)"


def apply() -> list[str]:
    """Apply the CPU workarounds; returns what was patched."""
    import torch

    if torch.cuda.is_available() or torch.accelerator.is_available():
        return []
    return [p for p in (_awq_pin_memory(),) if p]
