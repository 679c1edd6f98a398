"""Probes: greedy answers to a few fixed chat prompts (evals/probes.yaml), kept as text."""

from __future__ import annotations

from quantkit.evaluation.groups.base import Group
from quantkit.evaluation.groups.run import CompareConfig, Inputs, Run, digest
from quantkit.results.store import Figure


class ProbesGroup(Group):
    name = "probes"
    needs = "worker"
    order = 20

    def conditions(self, cfg: CompareConfig, inputs: Inputs) -> dict:
        return {"inputs": digest([inputs.probe_ids, inputs.probe_max_tokens])}

    def measure(self, run: Run) -> list[Figure]:
        assert run.worker is not None, "probes need the engine's worker"
        inputs = run.inputs
        outs = run.worker.call("generate", prompts=inputs.probe_ids, temperature=0.0,
                               max_tokens=inputs.probe_max_tokens, seed=0)
        cond = {"sampling": "greedy", "max_tokens": inputs.probe_max_tokens, "chat_template": "reference tokenizer"}
        return [run.fig("probes", "answer", None, None, 1, text=o[0]["text"],
                        conditions={**cond, "prompt": p["prompt"]}, params={"probe": p["id"]})
                for p, o in zip(inputs.probes, outs)]
