"""What machine are we on? Used to pick engine flavours and recorded with every figure."""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field

import psutil


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_mib: int
    driver: str


@dataclass(frozen=True)
class Hardware:
    cpu_model: str
    cpu_cores: int  # logical CPUs usable by this process
    memory_gib: float
    machine: str
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)

    @property
    def has_cuda(self) -> bool:
        return bool(self.gpus)

    def describe(self) -> str:
        gpu = ", ".join(f"{g.name} ({g.memory_mib / 1024:.0f} GiB)" for g in self.gpus) or "no GPU"
        return f"{self.cpu_model}, {self.cpu_cores} cores, {self.memory_gib:.0f} GiB RAM, {gpu}"

    def fingerprint(self) -> dict:
        return asdict(self)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_nvidia_smi(csv_text: str) -> tuple[Gpu, ...]:
    """Parse `nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits`."""
    gpus = []
    for line in csv_text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        gpus.append(Gpu(name=parts[0], memory_mib=int(parts[1]), driver=parts[2]))
    return tuple(gpus)


def _gpus() -> tuple[Gpu, ...]:
    if os.environ.get("QUANTKIT_FORCE_CPU"):
        return ()
    smi = shutil.which("nvidia-smi")
    if not smi:
        return ()
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return parse_nvidia_smi(out)


@functools.lru_cache(maxsize=1)
def detect() -> Hardware:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return Hardware(
        cpu_model=_cpu_model(),
        cpu_cores=cores,
        memory_gib=psutil.virtual_memory().total / 2**30,
        machine=platform.machine(),
        gpus=_gpus(),
    )
