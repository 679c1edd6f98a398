"""A test-only engine, registered from the tests alone (quantkit.engines.registry), to show that a new
engine is one file: it runs the "dummy" format in the interpreter running quantkit (its worker is
tests/plugins/dummy_worker.py, stdlib only)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from quantkit.engines.base import Engine
from quantkit.envs.specs import EnvSpec, this_interpreter
from quantkit.errors import ConfigError
from quantkit.hardware import Hardware

KV_TYPES = ("f32", "i8")


class DummySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_ctx: int = Field(256, ge=16)
    kv: Literal["f32", "i8"] = "f32"
    seed: int = 0
    fast: bool = False


class DummyEngine(Engine):
    name = "dummy"
    label = "Dummy"
    env = "dummy"
    worker_module = "tests.plugins.dummy_worker"
    formats = frozenset({"dummy"})
    settings_model = DummySettings
    sampler_order = "temperature only (dummy)"

    def map_kv_cache(self, raw: dict, kv: str) -> dict:
        if kv not in KV_TYPES:
            raise ConfigError(f"the dummy engine has no {kv} KV cache", hint=f"it offers {', '.join(KV_TYPES)}")
        return {**raw, "kv": kv}

    def kv_cache_type(self, settings: DummySettings) -> str:
        return settings.kv

    def platform_defaults(self, fmt: str, hw: Hardware, schemes: tuple[str, ...] = ()) -> dict:
        return {"fast": hw.has_cuda}

    def compare_settings(self, context_len: int) -> dict:
        return {"n_ctx": context_len}

    def env_spec(self, hw: Hardware) -> EnvSpec:
        return this_interpreter("dummy", "test-only engine (tests/plugins/dummy_engine.py)")

    def worker_settings(self, model_path: Path, settings: DummySettings) -> dict:
        return {"model": str(model_path), **settings.model_dump()}

    def server_command(self, model_path: Path, served_name: str, settings: DummySettings,
                       host: str, port: int) -> list[str]:
        return [sys.executable, "-m", "tests.plugins.dummy_server", "--model", str(model_path),
                "--served-model-name", served_name, "--host", host, "--port", str(port)]
