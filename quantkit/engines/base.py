"""The engine interface: how a variant format maps to an engine, its settings, worker and server.

Each engine lives in engines/<name>/{config.py, engine.py, worker.py}: config.py validates the
engine's own setting names, engine.py implements this interface in the core, worker.py runs in
the engine's environment.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ValidationError

from quantkit.errors import ConfigError

KV_FP8_NAMES = ("fp8", "fp8_e4m3", "fp8_e5m2")


class Engine(ABC):
    name: ClassVar[str]
    env: ClassVar[str]
    worker_module: ClassVar[str]
    formats: ClassVar[frozenset[str]]  # variant formats this engine can run
    settings_model: ClassVar[type[BaseModel]]

    def settings(self, raw: dict) -> BaseModel:
        """Validate engine settings given with the engine's own names."""
        try:
            return self.settings_model.model_validate(raw)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            known = ", ".join(self.settings_model.model_fields)
            raise ConfigError(f"{self.name} setting {field!r}: {err['msg']}",
                              hint=f"{self.name} settings: {known}") from None

    @abstractmethod
    def worker_settings(self, model_path: Path, settings: BaseModel) -> dict:
        """Arguments for this engine's worker (loaded in-process in its env)."""

    @abstractmethod
    def server_command(self, model_path: Path, served_name: str, settings: BaseModel,
                       host: str, port: int) -> list[str]:
        """Command line of the engine's own OpenAI-compatible server."""

    @abstractmethod
    def kv_cache_type(self, settings: BaseModel) -> str:
        """The KV cache type these settings give, as recorded with results."""
