"""Workarounds and choices that let llm-compressor run, and run fast enough, without an accelerator.

Each patch changes the narrowest thing that fails, only when no accelerator is present, and its
name is recorded in the variant's manifest; so are the CPU-only choices below (calibration dtype,
batch size), which change how fast a build runs, not what it computes.
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


def calibration_dtype(dtype: str, *, calibrated: bool, cuda: bool) -> str:
    """The dtype (torch's name) to run calibration in. On a CPU, a 16-bit checkpoint is calibrated
    in float32.

    Measured on an AVX2 EPYC without native bf16 (torch 2.13 CPU, one thread, CPU seconds so that
    the other work on the shared machine does not count): llm-compressor's AWQ over SmolLM2's first
    decoder layer, 32 x 256 packed tokens, took 224.9 s in bfloat16 against 34.9 s in float32.
    Float32 holds every bf16/fp16 value exactly, so the statistics GPTQ and AWQ collect are the
    same or more precise; the checkpoint is compressed in float32 and its floating tensors cast back
    to the checkpoint's dtype before it is saved (workers/compress.py). Builds without calibration
    (FP8 dynamic) keep the checkpoint's dtype.
    """
    if cuda or not calibrated or dtype not in ("bfloat16", "float16"):
        return dtype
    return "float32"


def calibration_batch(*, cuda: bool) -> int:
    """Packed sequences per calibration forward. On a CPU, 8: fewer, larger matmuls (AWQ over one
    layer as above: 30.2 CPU s against 34.9 with 1). On CUDA, llm-compressor's default of 1, whose
    memory footprint its users know."""
    return 1 if cuda else 8


# llm-compressor's AWQ grid search: n_grid points per mapping, each a forward pass of the mapping's
# parent (attention or MLP) over every calibration token. Its default is 20.
AWQ_GRID_DEFAULT = 20


def awq_grid(*, cuda: bool) -> int:
    """AWQ grid points: llm-compressor's 20 on CUDA; 10 on a CPU, half the search time.

    Measured on SmolLM2's first three decoder layers (float32, 32 x 256 packed LAMBADA tokens,
    W4A16_ASYM group 64, duo scaling): the best output MSE found with 10 points was within
    -0.4%..+3.0% of the one found with 20 for each of the 9 mappings (mean +1.1%), against a
    reduction from the unsmoothed error of up to 4.6x; CPU time 51.9 s against 96.9 s.
    """
    return AWQ_GRID_DEFAULT if cuda else 10
