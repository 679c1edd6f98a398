"""llama.cpp settings, under llama.cpp's own names (validated before an engine starts)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# K/V cache element types llama.cpp offers (llama-server -ctk/-ctv); it has no FP8 cache.
KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
KvType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]


class LlamaCppSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_ctx: int = Field(2048, ge=16)
    n_threads: int | None = Field(None, ge=1, description="default: all cores")
    n_gpu_layers: int = Field(0, ge=-1, description="-1 offloads every layer (CUDA builds)")
    n_batch: int = Field(512, ge=1)
    cache_type_k: KvType = "f16"
    cache_type_v: KvType = "f16"
    seed: int = 0
    flash_attn: bool = False
