"""The engine contract: everything the core knows about an engine, in one class per engine.

Each engine lives in engines/<name>/{config.py, engine.py, worker.py}: config.py validates the
engine's own setting names, engine.py implements this interface in the core, worker.py runs in
the engine's environment and answers the ops typed in quantkit/workers/contract.py. Engines are
found by name through quantkit/engines/registry.py; nothing else in the core names one.

What an engine declares:
- `formats` it runs (the first registered engine for a format serves it by default), its
  `settings_model` (pydantic, the engine's own names);
- `map_kv_cache` (quantkit's `--kv-cache-dtype` onto its settings) and `kv_cache_type` (the type
  recorded with results); `platform_defaults` for the hardware; `can_run` a model here;
- `compare_settings` (context length, log-prob limits), `baseline_recipe`, `sampler_order`;
- `env_spec` (its environment: quantkit.envs.specs.EnvSpec);
- `memory_figures` from the worker's `memory` answer and the worker's log;
- `worker_module` and `worker_settings`; `server_command` (its own OpenAI-compatible server).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ValidationError

from quantkit.errors import ConfigError

if TYPE_CHECKING:
    from quantkit.capability import Verdict
    from quantkit.envs.specs import EnvSpec
    from quantkit.hardware import Hardware
    from quantkit.workers.contract import MemoryAnswer

KV_FP8_NAMES = ("fp8", "fp8_e4m3", "fp8_e5m2")


@dataclass(frozen=True)
class MemoryFigures:
    """An engine's memory, normalised from its worker's `memory` answer and its log."""

    rss_bytes: int
    peak_rss_bytes: int
    weights_loaded_bytes: float | None  # the weights as the engine holds them
    kv_capacity_tokens: int | None  # tokens the KV cache holds
    kv_capacity_source: str  # where that figure comes from, in words (recorded as a condition)
    pids: tuple[int, ...] = ()  # the engine's processes (GPU memory is looked up by pid)
    weights_loaded_source: str = ""  # where the weights figure comes from, or why there is none


class Engine(ABC):
    """Methods taking `settings` get an instance of the engine's own `settings_model` (from `settings()`)."""

    name: ClassVar[str]
    label: ClassVar[str] = ""  # display name ("llama.cpp"); the name when empty
    env: ClassVar[str]  # the environment it runs in (env_spec().name)
    worker_module: ClassVar[str]
    formats: ClassVar[frozenset[str]]  # variant formats this engine can run
    settings_model: ClassVar[type[BaseModel]]
    # Recipe (under recipes/) of this engine's full-precision baseline of the reference, when the
    # engine cannot run the reference itself; None: the reference is its baseline.
    baseline_recipe: ClassVar[str | None] = None
    sampler_order: ClassVar[str] = ""  # how its samplers chain top-p and temperature, in words
    # Whether the worker can put the engine's own OpenAI server in front of its engine (op
    # `serve_http`): compare then starts one engine process per model for the offline groups and
    # the serving sweep. False: the server is started apart (`server_command`).
    serves_from_worker: ClassVar[bool] = False

    @property
    def display_name(self) -> str:
        return self.label or self.name

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

    # -- settings ------------------------------------------------------------------------------------

    def map_kv_cache(self, raw: dict, kv: str) -> dict:
        """`raw` settings with quantkit's KV cache type name `kv` (lower case) mapped onto the engine's own."""
        raise ConfigError(f"{self.display_name} has no KV cache type setting (asked for {kv})")

    @abstractmethod
    def kv_cache_type(self, settings: Any) -> str:
        """The KV cache type these settings give, as recorded with results."""

    def platform_defaults(self, fmt: str, hw: Hardware, schemes: tuple[str, ...] = ()) -> dict:
        """Settings that depend on the machine (every one ends up in the figures' settings)."""
        return {}

    def model_settings(self, display: str, fmt: str, manifest: dict, hw: Hardware) -> dict:
        """Settings a model needs from its variant manifest ({} for a reference or a bare file), or a
        ConfigError when this engine cannot honour it here. The user's settings override these."""
        return {}

    def can_run(self, model_path: Path, fmt: str, hw: Hardware, settings: Any) -> Verdict:
        """Whether this machine can run the model with these settings (a reason when not)."""
        from quantkit.capability import Verdict

        return Verdict(True)

    def compare_settings(self, context_len: int) -> dict:
        """Settings every model of this engine gets in `compare`: a context of `context_len` tokens
        and whatever the measurements need from the engine (log-prob limits)."""
        return {}

    # -- environment, worker, server ---------------------------------------------------------------

    @abstractmethod
    def env_spec(self, hw: Hardware) -> EnvSpec:
        """The environment this engine runs in, on this hardware."""

    @abstractmethod
    def worker_settings(self, model_path: Path, settings: Any) -> dict:
        """Arguments for this engine's worker (loaded in-process in its env)."""

    @abstractmethod
    def server_command(self, model_path: Path, served_name: str, settings: Any,
                       host: str, port: int) -> list[str]:
        """Command line of the engine's own OpenAI-compatible server."""

    def cpu_share(self, settings: Any, cpus: list[int], shares: int) -> tuple[Any, dict[str, str]]:
        """Settings and extra environment for a server confined to `cpus`, one of `shares` equal
        shares of the machine (one replica of the replica sweep; quantkit also pins the process to
        them with taskset). An engine that cannot be told its share of the cores says so."""
        from quantkit.errors import ConfigError

        raise ConfigError(f"{self.display_name} cannot be given a share of the CPU cores (replica sweep)")

    def uses_gpus(self, settings: Any, hw: Hardware) -> bool:
        """Whether a model with these settings runs on this machine's GPUs (else on its cores)."""
        return False

    def gpu_share(self, settings: Any, gpus: list[int]) -> tuple[Any, dict[str, str]]:
        """Settings and extra environment for a server confined to the GPUs `gpus` (one replica of
        the replica sweep, or with several GPUs the one server over all of them, in the engine's
        own multi-GPU mode). An engine that cannot be given GPUs says so."""
        from quantkit.errors import ConfigError

        raise ConfigError(f"{self.display_name} cannot be given a share of the GPUs (replica sweep)")

    # -- figures -----------------------------------------------------------------------------------

    def memory_figures(self, answer: MemoryAnswer, log_text: str) -> MemoryFigures:
        """Memory figures from the worker's `memory` answer and its log; by default the answer alone."""
        return MemoryFigures(rss_bytes=int(answer["rss_bytes"]), peak_rss_bytes=int(answer["peak_rss_bytes"]),
                             weights_loaded_bytes=answer.get("weights_bytes"),
                             kv_capacity_tokens=answer.get("n_ctx"),
                             kv_capacity_source=f"{self.display_name} worker",
                             pids=tuple(answer.get("pids", ())),
                             weights_loaded_source=f"{self.display_name} worker"
                             if answer.get("weights_bytes") is not None else "not reported by the worker")
