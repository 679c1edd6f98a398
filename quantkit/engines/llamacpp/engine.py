"""llama.cpp in the core: settings -> worker arguments and `llama-server` command line."""

from __future__ import annotations

from pathlib import Path

from quantkit.engines.base import Engine
from quantkit.engines.llamacpp.config import LlamaCppSettings
from quantkit.envs import llamacpp_build
from quantkit.hardware import detect

# llama-server flag for each setting (llama.cpp's own CLI names).
SERVER_FLAGS = {"n_ctx": "-c", "n_threads": "-t", "n_gpu_layers": "-ngl", "n_batch": "-b",
                "cache_type_k": "-ctk", "cache_type_v": "-ctv", "seed": "--seed"}


class LlamaCppEngine(Engine):
    name = "llamacpp"
    env = "llamacpp"
    worker_module = "quantkit.engines.llamacpp.worker"
    formats = frozenset({"gguf"})
    settings_model = LlamaCppSettings

    def _threads(self, settings: LlamaCppSettings) -> int:
        return settings.n_threads or detect().cpu_cores

    def worker_settings(self, model_path: Path, settings: LlamaCppSettings) -> dict:
        s = settings.model_dump()
        s["n_threads"] = self._threads(settings)
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

    def kv_cache_type(self, settings: LlamaCppSettings) -> str:
        k, v = settings.cache_type_k, settings.cache_type_v
        return k if k == v else f"K {k} / V {v}"
