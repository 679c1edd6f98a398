"""Temperature sweep: GSM8K per temperature, N seeded samples per problem -> accuracy and diversity."""

from __future__ import annotations

from quantkit import paths, prompts
from quantkit.evaluation.groups.base import Group
from quantkit.evaluation.groups.run import CompareConfig, Inputs, Run, digest
from quantkit.results.store import Figure


class SweepGroup(Group):
    name = "sweep"
    needs = "worker"
    order = 40

    def applies(self, cfg: CompareConfig) -> bool:
        return bool(cfg.temperatures)

    def conditions(self, cfg: CompareConfig, inputs: Inputs) -> dict:
        return {"temperatures": list(cfg.temperatures), "top_p": cfg.top_p, "samples": cfg.sweep_samples,
                "problems": cfg.sweep_problems, "seed": cfg.seed,
                "configs": digest((paths.evals_dir() / "tasks" / "qk_gsm8k.yaml").read_text())}

    def measure(self, run: Run) -> list[Figure]:
        from quantkit.evaluation import sweeps

        cfg = run.cfg
        assert run.worker is not None, "the sweep needs the engine's worker"
        docs = sweeps.problems(cfg.sweep_problems)
        rendered = prompts.render(run.inputs.reference_dir,
                                  [prompts.chat(f"{d['question']}\n\n{sweeps.INSTRUCTION}") for d in docs])
        ids = [list(p.token_ids) for p in rendered]
        golds = [sweeps.gold(d["answer"]) for d in docs]
        figs = []
        for t in cfg.temperatures:
            outs = run.worker.call("generate", prompts=ids, temperature=t, top_p=cfg.top_p, max_tokens=256,
                                   seed=cfg.seed, n=cfg.sweep_samples)
            r = sweeps.score(golds, [[o["text"] for o in per] for per in outs])
            cond = {"task": "gsm8k (chat prompt, flexible-extract exact match)", "temperature": t,
                    "top_p": cfg.top_p, "samples_per_problem": cfg.sweep_samples, "problems": r["problems"],
                    "seed": cfg.seed, "max_tokens": 256, "seeding": "sample i uses seed + i"}
            if cfg.top_p < 1:  # the engines chain their samplers differently; stated, not hidden
                cond["sampler_order"] = run.target.engine.sampler_order or f"as {run.target.engine.name} chains them"
            at = {"temperature": float(t)}
            figs += [run.fig("sweep", "accuracy", r["accuracy"], r["accuracy_stderr"], r["problems"],
                             conditions=cond, params=at),
                     run.fig("sweep", "diversity", r["diversity"], r["diversity_stderr"], r["problems"],
                             conditions=cond, params=at)]
        return figs
