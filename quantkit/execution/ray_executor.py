"""The Ray executor: runs each engine worker inside a Ray actor, on whichever node of a Ray cluster
has the resources the variant needs (issue 10, first slice).

    with RayExecutor(address="auto") as executor:       # or None: a local Ray instance
        compare(names, cfg, executor=executor)           # quantkit compare --executor ray

`start(target, label=...)` has LocalExecutor's signature and returns a `RayWorker`, which answers
what compare asks of a `WorkerClient`: `call`, `alive`, `log_path`, `close`, and the context
manager. The evaluator does not change.

How a worker runs on a node. The actor (`_WorkerActor`) is scheduled with the variant's
resources (`resources_for`: GPUs = `tensor_parallel_size` for a GPU target, CPUs = the engine's
CPU threads otherwise, memory estimated from the weights); on its node it starts the very same
worker subprocess the local executor starts (`WorkerClient`: the engine env's Python, supervised,
so that the worker's tree dies with the actor) and relays each call to it. Answers come back as
Ray objects; the figures are computed and stored by the driver, one SQLite store.

Where things must be on a node (documented in the README's architecture section):

- **Model files: a shared filesystem.** The worker opens the model at the path the driver
  resolved (models/variants/..., the reference under models/reference, the Hugging Face cache),
  so that path must exist on every node: mount the repository (or at least its `models/` folder
  and the HF cache) at the same path everywhere. A node where it is missing fails at start with
  the path and that fix; nothing is copied.
- **Engine environments: each node's own, created beforehand.** The actor runs the env of its
  node's `QUANTKIT_HOME` (default ~/.cache/quantkit/envs). A node without a ready env fails at
  start with the node's name and the fix (`quantkit setup --engines <env>` on that node; it is
  idempotent); the executor never creates environments itself, because a creation takes minutes
  to hours (llama.cpp compiles) and would be charged to a measurement.
- **A node that dies** (or the actor, or its worker process): the call in flight raises an
  `EngineError` naming the node and the reason, so compare records the groups of that engine
  process as failed with that reason and goes on; a re-run measures what is missing.

Fan-out: compare measures the reference and the engine baselines first (the variants are scored
against them), then up to `parallel_models` variants at once, each in its own driver thread whose
worker Ray places on a node with room; figures are stored by the driver as each group ends.

Servers: an engine whose worker serves its own OpenAI app (vLLM, `Engine.serves_from_worker`) serves
the serving sweep from the worker's node, bound to that node's IP (`RayWorker.ip`); `llama-server`
and the replica sweep's servers still run on the driver's machine. Serving sweeps run one at a time
either way (they are latency figures). Builds go through Ray in `ray_builds.py`.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from quantkit import errors, paths
from quantkit.errors import ConfigError, EngineError, QuantkitError

# GiB of memory a worker needs besides its weights (engine runtime, KV cache, activations) and the
# factor on the weights (dequantization buffers, a copy while loading); an estimate for scheduling only
MEMORY_OVERHEAD_BYTES = 1 << 30
MEMORY_WEIGHTS_FACTOR = 1.2
START_TIMEOUT_S = 600.0  # how long a worker may wait for a node with room for it
CALL_MARGIN_S = 60.0  # beyond the call's own timeout (the actor enforces that one)


def _import_ray():
    try:
        import ray
    except ImportError as e:  # pragma: no cover - the extra is part of the dev install
        raise ConfigError("the Ray executor needs Ray, which is not installed",
                          hint="pip install 'quantkit[ray]' (ray 2.60)") from e
    return ray


# --------------------------------------------------------------------------------------------
# resources


def weights_bytes(target: Any) -> int:
    """The model's weight bytes: from the variant's manifest, else the files themselves."""
    from quantkit import safetensors_info, sources, variants

    path = Path(target.model_path)
    try:
        if not sources.is_reference_name(target.name) and path.suffix != ".gguf":
            size = variants.get(target.name).manifest.get("weights_bytes")
            if size:
                return int(size)
    except QuantkitError:
        pass
    if path.is_file():
        return path.stat().st_size
    try:
        return int(safetensors_info.tensor_bytes(path))
    except Exception:  # noqa: BLE001 - an estimate: a folder we cannot read is sized by its files
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def is_gpu_target(worker_settings: dict, has_gpu: bool) -> bool:
    """Does the worker run on GPUs? vLLM on a GPU machine (the cluster is taken to be alike), or
    llama.cpp with layers offloaded."""
    if worker_settings.get("n_gpu_layers"):
        return True
    return has_gpu and "tensor_parallel_size" in worker_settings


def resources_for(worker_settings: dict, weights: int, has_gpu: bool) -> dict:
    """Ray resources of one worker: `num_gpus` = tensor_parallel_size on a GPU target (and 1 CPU to
    drive them), else `num_cpus` = the engine's CPU threads; `memory` = weights x 1.2 + 1 GiB."""
    memory = int(weights * MEMORY_WEIGHTS_FACTOR) + MEMORY_OVERHEAD_BYTES
    if is_gpu_target(worker_settings, has_gpu):
        return {"num_gpus": int(worker_settings.get("tensor_parallel_size") or 1), "num_cpus": 1, "memory": memory}
    threads = worker_settings.get("n_threads") or worker_settings.get("cpu_threads") or 1
    return {"num_gpus": 0, "num_cpus": int(threads), "memory": memory}


def _fits(demand: dict, extra: dict, node: dict) -> bool:
    total = node.get("Resources", {})
    need = {"CPU": demand.get("num_cpus", 0), "GPU": demand.get("num_gpus", 0), "memory": demand.get("memory", 0),
            **extra}
    return all(total.get(k, 0) >= v for k, v in need.items() if v)


# --------------------------------------------------------------------------------------------
# the actor (runs on a node)


def _error_answer(e: BaseException) -> dict:
    if isinstance(e, QuantkitError):
        return {"ok": False, "cls": type(e).__name__, "message": e.args[0] if e.args else str(e), "hint": e.hint}
    return {"ok": False, "cls": "EngineError", "message": f"{type(e).__name__}: {e}", "hint": None}


def take_niceness(nice: int | None) -> str | None:
    """Ray starts its workers at niceness 15 (its worker_niceness), which an engine or a build would
    inherit: on a busy node it would run slower than under the local executor. Take the driver's
    niceness back where allowed (root, or CAP_SYS_NICE); returns why not, if it could not."""
    if nice is None:
        return None
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None


class _WorkerActor:
    """One engine worker on a node: the local executor's WorkerClient, run where the actor runs."""

    def __init__(self, run_id: str | None, nice: int | None = None):
        from quantkit.execution.procs import RUN_ID_VAR

        if run_id:  # engine processes on the node carry the driver's run marker (see procs.run_id)
            os.environ[RUN_ID_VAR] = run_id
        self.client: Any = None
        self.nice_error = take_niceness(nice)  # `where` reports what the engine got

    def where(self) -> dict:
        import ray

        runtime = ray.get_runtime_context()
        return {"node_id": runtime.get_node_id(), "ip": ray.util.get_node_ip_address(), "host": socket.gethostname(),
                "pid": os.getpid(), "home": str(paths.home()), "nice": os.getpriority(os.PRIO_PROCESS, 0),
                "nice_error": self.nice_error}

    def start(self, env: str, module: str, settings: dict, model_path: str, log_name: str) -> dict:
        from quantkit.execution.worker_client import WorkerClient

        host = socket.gethostname()
        try:
            if not Path(model_path).exists():
                raise ConfigError(
                    f"node {host}: the model {model_path} does not exist there",
                    hint="the Ray executor reads model files from a shared filesystem: mount the models "
                         f"(and the Hugging Face cache) at the same path on every node ({Path(model_path).parent})")
            try:
                log = paths.cache_dir() / "logs" / log_name
                self.client = WorkerClient(env, module, settings, log)
            except errors.EngineMissingError as e:
                raise errors.EngineMissingError(
                    f"node {host}: {e.args[0]}",
                    hint=f"on that node: {e.hint or 'quantkit setup'} (idempotent); the Ray executor does not "
                         "create engine environments") from e
            return {"ok": True, "result": {"log_path": str(log)}}
        except Exception as e:  # noqa: BLE001 - sent to the driver as a typed answer
            return _error_answer(e)

    def call(self, op: str, timeout: float | None, args: dict) -> dict:
        try:
            return {"ok": True, "result": self.client.call(op, timeout=timeout, **args)}
        except Exception as e:  # noqa: BLE001
            return {**_error_answer(e), "alive": self.client.alive}

    def alive(self) -> bool:
        return self.client is not None and self.client.alive

    def log_text(self) -> str:
        if self.client is None:
            return ""
        try:
            return Path(self.client.log_path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def close(self, grace: float) -> None:
        if self.client is not None:
            self.client.close(grace)


# --------------------------------------------------------------------------------------------
# the driver side


def _raise(answer: dict, prefix: str = "") -> None:
    cls = getattr(errors, answer.get("cls") or "", None)
    if not (isinstance(cls, type) and issubclass(cls, QuantkitError)):
        cls = EngineError
    raise cls(prefix + answer["message"], hint=answer.get("hint"))


class RayWorker:
    """Driver-side handle of one engine worker running in a Ray actor (a WorkerClient look-alike)."""

    def __init__(self, actor: Any, where: dict, target_name: str, engine: str, local_log: Path):
        self._actor, self.where, self.target_name, self.engine = actor, where, target_name, engine
        self.node = f"{where.get('host')} ({where.get('ip')}, node {str(where.get('node_id'))[:12]})"
        self.ip = str(where.get('ip') or '127.0.0.1')  # the node's address: where its worker serves HTTP
        self._local_log = local_log
        self._lost: str | None = None  # why the actor is gone, once it is
        self.remote_log_path: str | None = None

    # what compare uses on a WorkerClient ---------------------------------------------------

    def call(self, op: str, timeout: float | None = 1800, **args: Any) -> Any:
        ray = _import_ray()
        if self._lost:
            raise EngineError(self._lost)
        try:
            answer = ray.get(self._actor.call.remote(op, timeout, args),
                             timeout=None if timeout is None else timeout + CALL_MARGIN_S)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise EngineError(f"{self.target_name} on {self.engine}: `{op}` on Ray node {self.node} took longer "
                              f"than {timeout:.0f} s") from None
        except ray.exceptions.RayError as e:
            self._mark_lost(op, e)
            raise EngineError(self._lost or "the Ray actor is gone", hint=f"log: {self._local_log}") from None
        if not answer["ok"]:
            if not answer.get("alive", True):
                self._lost = f"the {self.engine} engine process on Ray node {self.node} exited during `{op}`"
            self._sync_log()
            _raise(answer)
        return answer["result"]

    @property
    def alive(self) -> bool:
        if self._lost:
            return False
        ray = _import_ray()
        try:
            return bool(ray.get(self._actor.alive.remote(), timeout=30))
        except ray.exceptions.GetTimeoutError:
            return True  # busy, not gone
        except ray.exceptions.RayError as e:
            self._mark_lost("alive", e)
            return False

    @property
    def log_path(self) -> Path:
        """A local copy of the worker's log on its node (fetched each time it is asked for; the last
        copy once the node is gone)."""
        self._sync_log()
        return self._local_log

    def close(self, grace: float = 30) -> None:
        ray = _import_ray()
        if not self._lost:
            try:
                self._sync_log()
                ray.get(self._actor.close.remote(grace), timeout=grace + CALL_MARGIN_S)
            except ray.exceptions.RayError:
                pass
        try:
            ray.kill(self._actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def __enter__(self) -> RayWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # internals -----------------------------------------------------------------------------

    def _sync_log(self) -> None:
        if self._lost:
            return
        ray = _import_ray()
        try:
            text = ray.get(self._actor.log_text.remote(), timeout=60)
        except ray.exceptions.RayError:
            return
        self._local_log.parent.mkdir(parents=True, exist_ok=True)
        self._local_log.write_text(text, encoding="utf-8")

    def _mark_lost(self, op: str, e: BaseException) -> None:
        ray = _import_ray()
        node_alive = None
        try:
            for n in ray.nodes():
                if n.get("NodeID") == self.where.get("node_id"):
                    node_alive = bool(n.get("Alive"))
        except Exception:  # noqa: BLE001 - the cluster itself may be gone
            pass
        what = {False: "the node died", True: "its Ray actor died", None: "the cluster is unreachable"}[node_alive]
        reason = _reason(e)
        self._lost = (f"Ray node {self.node} lost {self.target_name} on {self.engine} during `{op}`: {what} "
                      f"({reason})")


class RayExecutor:
    """Starts engine workers as Ray actors. `address`: None starts a local Ray instance (this
    machine only), "auto" joins the cluster this machine belongs to, "HOST:PORT" a given one.
    `resources`: custom Ray resources every worker asks for as well (to pin workers to labelled
    nodes); `runtime_env`: Ray's runtime environment for the actors (e.g. env_vars such as a
    node-side QUANTKIT_HOME). Ray is initialised on first use and shut down by `close` when this executor started it."""

    def __init__(self, address: str | None = None, *, resources: dict[str, float] | None = None,
                 log_dir: Path | None = None, start_timeout: float = START_TIMEOUT_S,
                 init_kwargs: dict | None = None, runtime_env: dict | None = None, parallel: int | None = None):
        self.address, self.resources, self.runtime_env = address, dict(resources or {}), runtime_env
        self._parallel = parallel
        self.log_dir = log_dir or paths.cache_dir() / "logs"
        self.start_timeout, self.init_kwargs = start_timeout, dict(init_kwargs or {})
        self._owns_ray = False
        self._actor_cls: Any = None
        self.placements: list[tuple[str, str, str]] = []  # (model, engine, node) of each worker started

    @property
    def parallel_models(self) -> int:
        """How many variants compare measures at once: `parallel` if given, else one per live node
        with CPUs or GPUs (Ray places each worker where its resources fit; the others queue for up to
        start_timeout)."""
        if self._parallel:
            return max(1, int(self._parallel))
        ray = self.connect()
        return max(1, sum(1 for n in ray.nodes() if n.get("Alive")
                          and (n.get("Resources", {}).get("CPU") or n.get("Resources", {}).get("GPU"))))

    def connect(self):
        """The `ray` module, initialised on this executor's cluster (joined or started on first use),
        with the worker actor class registered; used by the build runner and benchmarks too."""
        ray = _import_ray()
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False,
                      **self.init_kwargs}
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ConfigError(f"cannot reach the Ray cluster at {self.address or 'a new local instance'}: {e}",
                                  hint="start one with `ray start --head` (then --address auto), or give "
                                       "--address HOST:PORT of its head node") from e
            self._owns_ray = True
        if self._actor_cls is None:
            self._actor_cls = ray.remote(max_restarts=0, max_task_retries=0, max_concurrency=4)(_WorkerActor)
        return ray

    def start(self, target: Any, *, label: str = "run") -> RayWorker:
        """Start the engine worker for `target` (see quantkit.loader) on a node with room for it."""
        from quantkit.execution.procs import run_id
        from quantkit.hardware import detect

        ray = self.connect()
        settings = target.worker_settings()
        demand = resources_for(settings, weights_bytes(target), bool(detect().gpus))
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if not any(_fits(demand, self.resources, n) for n in nodes):
            have = "; ".join(f"{n.get('NodeManagerAddress')}: " + ", ".join(
                f"{k}={v:g}" for k, v in sorted(n.get("Resources", {}).items())
                if k in ("CPU", "GPU", "memory") or k in self.resources) for n in nodes)
            raise ConfigError(f"{target.name} on {target.engine.name} needs {_describe(demand, self.resources)}, "
                              f"which no node of the Ray cluster has ({have or 'no live node'})",
                              hint="add a node that has them, or lower the engine's threads / tensor_parallel_size "
                                   "(-o n_threads=N)")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        log_name = f"{stamp}-{target.engine.name}-{target.name}-{label}.log"
        actor = self._actor_cls.options(
            num_cpus=demand["num_cpus"], num_gpus=demand["num_gpus"], memory=demand["memory"],
            resources=self.resources or None, runtime_env=self.runtime_env,
        ).remote(run_id(), os.getpriority(os.PRIO_PROCESS, 0))
        try:
            where = ray.get(actor.where.remote(), timeout=self.start_timeout)
        except ray.exceptions.GetTimeoutError:
            ray.kill(actor, no_restart=True)
            raise EngineError(f"{target.name} on {target.engine.name}: no Ray node had "
                              f"{_describe(demand, self.resources)} free within {self.start_timeout:.0f} s",
                              hint="wait for running workers to finish, or add nodes") from None
        except ray.exceptions.RayError as e:
            ray.kill(actor, no_restart=True)
            raise EngineError(f"{target.name} on {target.engine.name}: its Ray actor did not start: "
                              f"{' '.join(str(e).split())[:300]}") from None
        worker = RayWorker(actor, where, target.name, target.engine.name, self.log_dir / f"ray-{log_name}")
        try:
            answer = ray.get(actor.start.remote(target.engine.env, target.engine.worker_module, settings,
                                                str(target.model_path), log_name), timeout=self.start_timeout)
        except ray.exceptions.RayError as e:
            worker._mark_lost("start", e)
            worker.close()
            raise EngineError(worker._lost or "the Ray actor is gone") from None
        if not answer["ok"]:
            worker.close()
            _raise(answer)
        worker.remote_log_path = answer["result"]["log_path"]
        self.placements.append((target.name, target.engine.name, worker.node))
        return worker

    def close(self) -> None:
        """Shut Ray down if this executor started it (a joined cluster keeps running)."""
        if self._owns_ray:
            ray = _import_ray()
            ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(e: BaseException) -> str:
    """Ray's own account of a lost actor, without its ids: the sentence saying why, if it has one."""
    import re

    text = " ".join(str(e).split())
    why = re.search(r"(?:The|the) [^.]*\bbecause\b[^.]*\.", text)
    return f"{type(e).__name__}: {why.group(0) if why else text}"[:300]


def _describe(demand: dict, extra: dict) -> str:
    parts = [f"{demand['num_cpus']} CPU"]
    if demand.get("num_gpus"):
        parts.append(f"{demand['num_gpus']} GPU")
    parts.append(f"{demand['memory'] / 2**30:.1f} GiB memory")
    parts += [f"{k}={v:g}" for k, v in extra.items()]
    return ", ".join(parts)
