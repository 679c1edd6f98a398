"""vLLM in the core: settings, environment, memory figures, worker arguments and `api_server` command line."""

from __future__ import annotations

import re
from pathlib import Path

from quantkit import paths
from quantkit.capability import Verdict
from quantkit.engines.base import Engine, MemoryFigures
from quantkit.engines.vllm.config import VllmSettings
from quantkit.engines.vllm.flags import cli_flags
from quantkit.envs.manager import python_for
from quantkit.envs.specs import EnvSpec
from quantkit.errors import ConfigError
from quantkit.hardware import Hardware
from quantkit.workers.contract import MemoryAnswer

_KV_TOKENS = re.compile(r"KV cache size: ([\d,]+) tokens")
_WEIGHTS_LOADED = re.compile(r"Model loading took ([\d.]+) GiB")
# quantkit's KV cache names that vLLM has, and its own spelling of the 16-bit ones
_KV_NAMES = {"auto": "auto", "fp8": "fp8", "fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2",
             "f16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}


def kv_capacity_from_log(text: str) -> int | None:
    """KV cache capacity in tokens, as vLLM logs it at start-up ("... KV cache size: 124,544 tokens")."""
    found = _KV_TOKENS.findall(text)
    return int(found[-1].replace(",", "")) if found else None


def weights_loaded_from_log(text: str) -> float | None:
    """Bytes of weights loaded, as vLLM logs them ("Model loading took 0.25 GiB")."""
    found = _WEIGHTS_LOADED.findall(text)
    return float(found[-1]) * 2**30 if found else None


_BNB_DTYPES = ("bfloat16", "float16", "float32")


def bnb_settings(display: str, load: dict) -> dict:
    """vLLM settings for a bitsandbytes variant. vLLM's in-flight bitsandbytes loader always quantizes to
    NF4 with double quantization: what it cannot honour is refused rather than silently ignored."""
    quant_type = load.get("bnb_4bit_quant_type", "nf4")
    if quant_type != "nf4" or load.get("bnb_4bit_use_double_quant", True) is not True:
        raise ConfigError(f"{display}: vLLM's bitsandbytes loader quantizes to NF4 with double quantization only "
                          f"(the manifest asks for {quant_type}, double_quant {load.get('bnb_4bit_use_double_quant')})",
                          hint="rebuild it from a recipe with quant_type: nf4 and double_quant: true")
    dtype = load.get("dtype") or load.get("bnb_4bit_compute_dtype") or "bfloat16"
    if dtype not in _BNB_DTYPES:
        raise ConfigError(f"{display}: bitsandbytes compute_dtype {dtype!r} has no vLLM dtype",
                          hint=f"use one of {', '.join(_BNB_DTYPES)}")
    return {"quantization": "bitsandbytes", "dtype": dtype}


def vllm_cpu_env() -> dict[str, str]:
    """How vllm-cpu 0.32 gets a compile cache that loads (measured; README "vLLM start-up on CPU").

    On CPU vLLM compiles with the stock "inductor" backend (platforms/cpu.py: mode DYNAMO_TRACE_ONCE).
    Its AOT compile cache (default since torch 2.10) saves that graph, but loading it fails on every
    start: torch 2.13 wraps the inductor result in BundledAOTAutogradSerializableCallable, whose
    loader returns a plain function, and vLLM then calls `.finalize_loading()` on it, a method only
    its own VllmSerializableFunction (the GPU path) has (vllm/compilation/decorators.py:315): "Compiling
    model again due to a load failure ... 'function' object has no attribute 'finalize_loading'".
    With VLLM_USE_AOT_COMPILE=0 vLLM traces with dynamo at each start (seconds) and inductor's own
    FX-graph and AOTAutograd caches, kept here under quantkit's cache, serve the compiled code; their
    hit/miss lines go to the engine's log (TORCH_LOGS), where a test checks that a second start hits.
    """
    return {"VLLM_USE_AOT_COMPILE": "0",
            "TORCHINDUCTOR_CACHE_DIR": str(paths.cache_dir() / "torchinductor"),
            "TORCH_LOGS": "torch._inductor.codecache,torch._functorch._aot_autograd.autograd_cache"}


class VllmEngine(Engine):
    name = "vllm"
    label = "vLLM"
    env = "vllm"
    worker_module = "quantkit.engines.vllm.worker"
    formats = frozenset({"safetensors", "compressed-tensors", "awq", "bnb-on-load"})
    settings_model = VllmSettings
    baseline_recipe = None  # vLLM runs the reference itself
    sampler_order = "temperature, then top-p (vLLM)"
    # the worker runs vLLM's OpenAI-server engine client and serves vLLM's own OpenAI app from it
    # (engines/vllm/worker.py): one vLLM initialisation per variant in compare
    serves_from_worker = True

    def map_kv_cache(self, raw: dict, kv: str) -> dict:
        if kv not in _KV_NAMES:
            raise ConfigError(f"vLLM has no {kv} KV cache", hint="vLLM offers auto, fp8, fp8_e4m3, fp8_e5m2")
        return {**raw, "kv_cache_dtype": _KV_NAMES[kv]}

    def kv_cache_type(self, settings: VllmSettings) -> str:
        return settings.kv_cache_dtype if settings.kv_cache_dtype != "auto" else "auto (model dtype)"

    def platform_defaults(self, fmt: str, hw: Hardware, schemes: tuple[str, ...] = ()) -> dict:
        if hw.has_cuda:
            return {}
        from quantkit import capability

        # vllm-cpu reads this as the share of the NUMA node's RAM to reserve; 0.92 fails, 0.3 works.
        return {"gpu_memory_utilization": 0.3, "dtype": capability.vllm_cpu_dtype(hw, schemes)}

    def model_settings(self, display: str, fmt: str, manifest: dict, hw: Hardware) -> dict:
        if fmt != "bnb-on-load":
            return {}
        if not hw.has_cuda:
            raise ConfigError(f"{display} is quantized by bitsandbytes on load, which needs a CUDA GPU",
                              hint="run it on a machine with an NVIDIA GPU, or pick a GGUF / GPTQ variant for CPU")
        return bnb_settings(display, manifest.get("load", {}))

    def can_run(self, model_path: Path, fmt: str, hw: Hardware, settings: VllmSettings) -> Verdict:
        from quantkit import capability

        return capability.check_model(self.name, model_path, fmt, hw, settings.kv_cache_dtype)

    def compare_settings(self, context_len: int) -> dict:
        # the `logprobs` op (lm-eval's scorer) asks for the top-1; fidelity's topk_logprobs takes
        # K ids through its own path, so vLLM's prompt log-prob limit does not depend on K
        return {"max_model_len": context_len, "max_logprobs": 20}

    def env_spec(self, hw: Hardware) -> EnvSpec:
        if hw.has_cuda:
            return EnvSpec(
                name="vllm", purpose="serve HF / compressed-tensors / AWQ / GPTQ / FP8 / INT8 / NF4 (CUDA)",
                requirements="vllm-cuda.txt", versions_of=("vllm", "torch", "transformers", "compressed-tensors"),
                import_check="vllm", env_defaults={"VLLM_NO_USAGE_STATS": "1"},
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
            env_defaults={"VLLM_NO_USAGE_STATS": "1", **vllm_cpu_env()},
            # QUANTKIT_VLLM_PRELOAD=0 turns preloading off (to measure its effect)
            preload=("libtcmalloc_minimal.so.4", "libiomp5.so"), preload_switch="QUANTKIT_VLLM_PRELOAD",
        )

    def worker_settings(self, model_path: Path, settings: VllmSettings) -> dict:
        return {"model": str(model_path), **settings.model_dump(exclude_none=True)}

    def server_command(self, model_path: Path, served_name: str, settings: VllmSettings,
                       host: str, port: int) -> list[str]:
        # `vllm serve` fails under vllm-cpu (it asks package metadata for `vllm`); the module works.
        cmd = [str(python_for(self.env)), "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(model_path), "--served-model-name", served_name,
               "--host", host, "--port", str(port)]
        return cmd + cli_flags(settings.model_dump(exclude_none=True))

    def cpu_share(self, settings: VllmSettings, cpus: list[int], shares: int) -> tuple[VllmSettings, dict[str, str]]:
        # vllm-cpu binds its OpenMP threads to the listed cores, and reserves gpu_memory_utilization
        # of the node's memory per engine: each replica gets its share of that too
        share = settings.model_copy(update={"gpu_memory_utilization": settings.gpu_memory_utilization / shares})
        return share, {"VLLM_CPU_OMP_THREADS_BIND": ",".join(str(c) for c in cpus)}

    def uses_gpus(self, settings: VllmSettings, hw: Hardware) -> bool:
        return hw.has_cuda  # the CUDA build of vLLM runs on the GPUs; vllm-cpu elsewhere

    def gpu_share(self, settings: VllmSettings, gpus: list[int]) -> tuple[VllmSettings, dict[str, str]]:
        # one engine over several GPUs is vLLM's tensor parallelism (what `-o tensor_parallel_size=N` asks)
        return (settings.model_copy(update={"tensor_parallel_size": len(gpus)}),
                {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus)})

    def memory_figures(self, answer: MemoryAnswer, log_text: str) -> MemoryFigures:
        # vLLM's memory answer has no capacity or weights: its start-up log states the capacity, and the
        # weights on CUDA ("Model loading took X GiB"); vllm-cpu 0.32 logs only the checkpoint's size on
        # disk ("Checkpoint size: 0.25 GiB", before any dtype cast), so there is no loaded figure there.
        weights = weights_loaded_from_log(log_text)
        return MemoryFigures(rss_bytes=int(answer["rss_bytes"]), peak_rss_bytes=int(answer["peak_rss_bytes"]),
                             weights_loaded_bytes=weights, kv_capacity_tokens=kv_capacity_from_log(log_text),
                             kv_capacity_source="vLLM start-up log", pids=tuple(answer.get("pids", ())),
                             weights_loaded_source="vLLM start-up log (Model loading took)" if weights is not None
                             else "not in vLLM's log (vllm-cpu does not log the loaded size)")
