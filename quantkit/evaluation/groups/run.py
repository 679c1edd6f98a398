"""What a measurement group is given: the compare configuration, the inputs prepared once, and the
`Run` (one model on one engine, with its running worker or server)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from quantkit.errors import ConfigError
from quantkit.results.store import Figure

if TYPE_CHECKING:
    from quantkit.execution.worker_client import WorkerClient
    from quantkit.loader import Target
    from quantkit.server import EngineServer


# Named presets: settings a preset changes from the defaults. `quick` is a smoke test (4 x 256
# fidelity windows, small batches, concurrency 1 and 4), not a measurement to rank variants by.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"window_len": 256, "windows": 4, "bench_batch": 4, "bench_input": 64, "bench_output": 32,
              "bench_repeats": 3, "serving_levels": (1, 4), "serving_output": 32, "serving_repeats": 2,
              "sweep_samples": 4, "sweep_problems": 10},
}


class CompareConfig(BaseModel):
    """How `compare` measures: validated once (pydantic, unknown fields refused), then read by the
    groups, whose `conditions` put the fields they depend on into their measurement keys."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(default_factory=list)
    limit: int | None = None
    quick: bool = False
    force: bool = False
    # fidelity: the baseline's top-K ids per position; KL is exact over them plus a tail bucket, a
    # lower bound that misses the KL inside the tail. SmolLM2-135M is diffuse on LAMBADA (top-128
    # holds ~90% of the mass): K=128 gives ~0.85 of the full KL, K=4096 0.99 (README, fidelity.py)
    top_k: int = Field(4096, strict=True)  # strict: True is not a K
    window_len: int = 512
    windows: int = 64  # 64 x 512, second halves scored: 16,384 positions
    bench_batch: int = 8
    bench_input: int = 128
    bench_output: int = 64
    bench_repeats: int = 3
    serving_levels: tuple[int, ...] = (1, 4, 16)
    serving_output: int = 64
    serving_repeats: int = 3
    # the replica sweep (group "scaling"): N replicas of the engine's server, each on 1/N of the
    # cores, against one server on all of them and one on a single share; 1: not measured
    replicas: int = Field(1, ge=1)
    temperatures: tuple[float, ...] = ()
    top_p: float = 1.0
    sweep_samples: int = 8
    sweep_problems: int = 50
    seed: int = 0
    # measurement groups to run, by registered name (quantkit.evaluation.groups); empty: every
    # registered group that applies to this configuration
    groups: tuple[str, ...] = ()

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            err = e.errors()[0]
            field_name = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            raise ConfigError(f"compare setting {field_name!r}: {msg}" if field_name else msg,
                              hint=f"compare settings: {', '.join(type(self).model_fields)}") from None

    @classmethod
    def preset(cls, name: str | None, **kw: Any) -> CompareConfig:
        """The defaults, changed by preset `name` (see PRESETS), then by `kw` (None values ignored)."""
        if name is not None and name not in PRESETS:
            raise ConfigError(f"unknown compare preset {name!r}", hint=f"presets: {', '.join(PRESETS)}")
        base = PRESETS[name] if name else {}
        return cls(**{**base, **({"quick": True} if name == "quick" else {}),
                      **{k: v for k, v in kw.items() if v is not None}})

    @classmethod
    def make(cls, quick: bool, **kw: Any) -> CompareConfig:
        return cls.preset("quick" if quick else None, **kw)

    @model_validator(mode="after")
    def _check(self) -> CompareConfig:
        if self.top_k < 1:
            raise ValueError(f"fidelity top_k must be a positive whole number of token ids, not {self.top_k!r} "
                             "(the default is 4096, within ~1% of the full KL on the embedded model)")
        if self.window_len < 4 or self.windows < 1:
            raise ValueError(f"fidelity windows must be at least 1 x 4 tokens, not {self.windows} x {self.window_len}")
        return self


def digest(obj: Any) -> str:
    """Short content hash of anything JSON-serialisable (inputs, files) for measurement keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Inputs:
    """Everything every variant sees, prepared once."""

    windows: list[list[int]]
    probes: list[dict]
    probe_ids: list[list[int]]
    probe_max_tokens: int
    bench_prompts: list[list[int]]
    serving_prompts: list[list[int]]
    vocab_size: int
    reference_dir: Path


@dataclass
class Anchors:
    """What the models of one reference are scored against, filled in as compare goes (the
    reference first, then each engine's full-precision baseline, then the variants)."""

    reference: str
    reference_key: str = ""  # the reference's fidelity key: names its rows file
    reference_engine: str = ""  # the engine the reference ran on
    reference_tasks_key: str = ""
    task_docs: dict = field(default_factory=dict)  # (task, metric) -> the reference's {doc_id: value}
    baselines: dict[str, tuple[str, str]] = field(default_factory=dict)  # engine -> (model, its fidelity key)
    missing: dict[str, str] = field(default_factory=dict)  # engine -> why it has no baseline

    def baseline(self, engine: str) -> tuple[str | None, str, str]:
        """(baseline model, its fidelity key, "") or (None, "", why there is none)."""
        if engine in self.baselines:
            return (*self.baselines[engine], "")
        return None, "", self.missing.get(engine, f"no full-precision baseline is defined for {engine}")


@dataclass(frozen=True)
class WorkerServed:
    """The engine's OpenAI server, served by its worker in front of the worker's own engine
    (`Engine.serves_from_worker`): what the serving group needs of a server."""

    url: str
    model_name: str


@dataclass
class Run:
    """One model on one engine: what a measurement needs. `worker` is set while the engine's worker
    runs the groups that need it, `server` while its OpenAI server runs those that need that."""

    target: Target
    worker: WorkerClient | None
    inputs: Inputs
    cfg: CompareConfig
    fp: dict
    role: str  # "reference" | "baseline" (an engine's full-precision baseline) | "variant"
    reference_name: str = "reference"
    anchors: Anchors = field(default_factory=lambda: Anchors("reference"))
    keys: dict[str, str] = field(default_factory=dict)  # group -> measurement key
    history: list[str] = field(default_factory=list)  # groups the current engine process ran, in order
    node: str = "local"  # where the current worker runs (a Ray node, for a cluster executor)
    server: EngineServer | WorkerServed | None = None

    @property
    def is_reference(self) -> bool:
        return self.role == "reference"

    @property
    def settings(self) -> dict:
        return {**self.target.settings.model_dump(), "kv_cache_type": self.target.kv_cache_type}

    def engine_alive(self) -> bool:
        """Is the engine process the current group talks to still running?"""
        if self.worker is not None:
            return self.worker.alive
        if isinstance(self.server, WorkerServed):
            return True  # no worker: the group ended with the process
        if self.server is not None:
            return self.server.proc is not None and self.server.proc.poll() is None
        return True

    def fig(self, group: str, metric: str, value, unc=None, n=None, unit=None, *, text=None, conditions=None,
            params: dict | None = None) -> Figure:
        return Figure(self.target.name, self.target.engine.name, group, metric, value, unc, n, unit, text,
                      settings=self.settings, conditions=conditions or {}, fingerprint=self.fp, params=params or {})

    def failed(self, group: str, reason: str, metric: str = "failed", conditions: dict | None = None) -> Figure:
        """A failed measurement (metric "failed": the whole group) with its reason."""
        return failure(self.target.name, self.target.engine.name, group, reason, self.reference_name, self.fp,
                       metric=metric, settings=self.settings if metric != "failed" else None,
                       conditions=conditions)


def failure(name: str, engine: str, group: str, reason: str, reference: str, fp: dict, *, metric: str = "failed",
            settings: dict | None = None, conditions: dict | None = None) -> Figure:
    return Figure(name, engine, group, metric, status="failed", reason=reason, settings=settings or {},
                  conditions={**(conditions or {}), "compared_with": reference}, fingerprint=fp)
