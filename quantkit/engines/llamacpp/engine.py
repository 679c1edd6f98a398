"""llama.cpp in the core: settings, environment, memory figures, worker arguments and `llama-server` command line."""

from __future__ import annotations

from pathlib import Path

from quantkit.capability import Verdict
from quantkit.engines.base import KV_FP8_NAMES, Engine, MemoryFigures
from quantkit.engines.llamacpp.config import KV_TYPES, LlamaCppSettings
from quantkit.envs import llamacpp_build
from quantkit.envs.specs import EnvSpec
from quantkit.errors import ConfigError
from quantkit.hardware import Hardware, detect
from quantkit.workers.contract import MemoryAnswer

# llama-server flag for each setting (llama.cpp's own CLI names).
SERVER_FLAGS = {"n_ctx": "-c", "n_threads": "-t", "n_gpu_layers": "-ngl", "n_batch": "-b",
                "cache_type_k": "-ctk", "cache_type_v": "-ctv", "seed": "--seed"}


class LlamaCppEngine(Engine):
    name = "llamacpp"
    label = "llama.cpp"
    env = "llamacpp"
    worker_module = "quantkit.engines.llamacpp.worker"
    formats = frozenset({"gguf"})
    settings_model = LlamaCppSettings
    # llama.cpp cannot run the safetensors reference: its baseline is the reference as an f16 GGUF
    baseline_recipe = "smollm2_gguf_f16.yaml"
    sampler_order = "top-p, then temperature (llama-cpp-python)"

    def _threads(self, settings: LlamaCppSettings) -> int:
        return settings.n_threads or detect().cpu_cores

    def map_kv_cache(self, raw: dict, kv: str) -> dict:
        if kv in KV_FP8_NAMES:
            raise ConfigError(f"llama.cpp has no FP8 KV cache (asked for {kv})",
                              hint="the nearest llama.cpp option is an 8-bit q8_0 K/V cache: --kv-cache-dtype q8_0")
        if kv not in KV_TYPES:
            raise ConfigError(f"unknown llama.cpp KV cache type {kv!r}", hint=f"llama.cpp offers {', '.join(KV_TYPES)}")
        return {**raw, "cache_type_k": kv, "cache_type_v": kv}

    def kv_cache_type(self, settings: LlamaCppSettings) -> str:
        k, v = settings.cache_type_k, settings.cache_type_v
        return k if k == v else f"K {k} / V {v}"

    def platform_defaults(self, fmt: str, hw: Hardware, schemes: tuple[str, ...] = ()) -> dict:
        if hw.has_cuda:
            # A CUDA machine gets a CUDA build of llama.cpp (envs.llamacpp_build): offload every layer, or the
            # decode runs on the CPU (H100, Q4_K_M: worker 611 tok/s offloaded vs 265 not). Flash attention:
            # llama-bench tg64 672 -> 790 tok/s (Q4_K_M), 676 -> 802 (Q8_0) on the H100 (ENGINE_NOTES.md).
            return {"n_gpu_layers": -1, "flash_attn": True}
        return {}

    def can_run(self, model_path: Path, fmt: str, hw: Hardware, settings: LlamaCppSettings) -> Verdict:
        from quantkit import capability

        return capability.check_model(self.name, model_path, fmt, hw)

    def compare_settings(self, context_len: int) -> dict:
        return {"n_ctx": context_len}

    def env_spec(self, hw: Hardware) -> EnvSpec:
        return EnvSpec(
            name="llamacpp", purpose="serve GGUF; llama-quantize / imatrix / perplexity / bench / server",
            requirements="llamacpp.txt", versions_of=("llama-cpp-python", "numpy"),
            import_check="llama_cpp",
            pip_env={"CMAKE_ARGS": "-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF"},
            native_build="quantkit.envs.llamacpp_build",
            # the binding loads libllama from the tools' build (one llama.cpp commit for both)
            env_vars={"LLAMA_CPP_LIB_PATH": str(llamacpp_build.bin_dir(hw))},
        )

    def worker_settings(self, model_path: Path, settings: LlamaCppSettings) -> dict:
        s = settings.model_dump()
        s["n_threads"] = self._threads(settings)
        # prompt batches too (llama-server's --threads-batch defaults to --threads; the binding's
        # n_threads_batch to every core, which oversubscribes a worker given a share of the cores)
        s["n_threads_batch"] = s["n_threads"]
        # the binding takes ggml type ids for the cache; the worker maps names -> ids
        return {"model": str(model_path), **s}

    def server_command(self, model_path: Path, served_name: str, settings: LlamaCppSettings,
                       host: str, port: int) -> list[str]:
        cmd = [str(llamacpp_build.tool("llama-server")), "-m", str(model_path), "--alias", served_name,
               "--host", host, "--port", str(port)]
        values = settings.model_dump()
        values["n_threads"] = self._threads(settings)
        # llama-server reads -ngl -1 as "auto" (fit to free memory) and "all" as every layer; the
        # binding's (C API's) -1 is every layer, so -1 means "all" here too.
        if values["n_gpu_layers"] < 0:
            values["n_gpu_layers"] = "all"
        for key, flag in SERVER_FLAGS.items():
            cmd += [flag, str(values[key])]
        cmd += ["-fa", "on" if settings.flash_attn else "off"]
        return cmd

    def cpu_share(self, settings: LlamaCppSettings, cpus: list[int],
                  shares: int) -> tuple[LlamaCppSettings, dict[str, str]]:
        return settings.model_copy(update={"n_threads": len(cpus)}), {}

    def uses_gpus(self, settings: LlamaCppSettings, hw: Hardware) -> bool:
        return hw.has_cuda and settings.n_gpu_layers != 0

    def gpu_share(self, settings: LlamaCppSettings, gpus: list[int]) -> tuple[LlamaCppSettings, dict[str, str]]:
        # every layer on the share's GPUs; over several GPUs llama-server splits the layers between
        # them (its default --split-mode layer: a pipeline, not tensor parallelism)
        return (settings.model_copy(update={"n_gpu_layers": -1}),
                {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus)})

    def memory_figures(self, answer: MemoryAnswer, log_text: str) -> MemoryFigures:
        # llama.cpp allocates the whole context's KV cache up front and reports its weights' size
        weights = answer.get("weights_bytes")
        return MemoryFigures(rss_bytes=int(answer["rss_bytes"]), peak_rss_bytes=int(answer["peak_rss_bytes"]),
                             weights_loaded_bytes=float(weights) if weights is not None else None,
                             kv_capacity_tokens=answer.get("n_ctx"),
                             kv_capacity_source="llama.cpp n_ctx (allocated up front)",
                             pids=tuple(answer.get("pids", ())), weights_loaded_source="llama_model_size")
