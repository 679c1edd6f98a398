"""Task accuracy through lm-eval (per question, so that any two models compare question by
question), with the questions lost and gained against the reference and McNemar's test."""

from __future__ import annotations

import json

from quantkit import evaldata, paths
from quantkit.evaluation import stats
from quantkit.evaluation.groups.base import Group
from quantkit.evaluation.groups.run import CompareConfig, Inputs, Run, digest
from quantkit.results.store import Figure, Store


class TasksGroup(Group):
    name = "tasks"
    needs = "worker"
    order = 30

    def applies(self, cfg: CompareConfig) -> bool:
        return bool(cfg.tasks)

    def conditions(self, cfg: CompareConfig, inputs: Inputs) -> dict:
        from quantkit.evaluation.tasks import lm_eval_version

        files = sorted((paths.evals_dir() / "tasks").glob("*.yaml")) + [evaldata.definitions_file()]
        return {"tasks": sorted(cfg.tasks), "limit": cfg.limit, "lm_eval": lm_eval_version(),
                "configs": digest({f.name: f.read_text() for f in files}), "per_doc": True}

    def relative_to(self, run: Run) -> dict:
        return {} if run.role == "reference" else {"reference_tasks": run.anchors.reference_tasks_key}

    def anchor(self, run: Run, key: str) -> None:
        if run.role == "reference":
            run.anchors.reference_tasks_key = key

    def after(self, run: Run, store: Store, key: str) -> None:
        if run.role == "reference":  # the others' questions lost and gained are counted against these
            run.anchors.task_docs = task_docs(store.get(key))

    def measure(self, run: Run) -> list[Figure]:
        from quantkit.evaluation.scorer import WorkerScorer
        from quantkit.evaluation.tasks import run_tasks

        assert run.worker is not None, "tasks need the engine's worker"
        cfg = run.cfg
        results = run_tasks(WorkerScorer(run.worker, run.inputs.reference_dir), cfg.tasks, limit=cfg.limit)
        figs = []
        for r in results:
            metric, task = r["metric"], {"task": r["task"]}
            cond = {"lm_eval": r["lm_eval_version"], "num_fewshot": r["num_fewshot"], "limit": cfg.limit}
            figs += [run.fig("tasks", metric, r["value"], r["stderr"], r["n"], conditions=cond, params=task),
                     # per question, so that any two models can be compared question by question
                     run.fig("tasks", f"{metric}:per_doc", None, None, len(r["per_doc"]),
                             text=json.dumps(r["per_doc"], sort_keys=True), conditions=cond, params=task)]
            ref_docs = run.anchors.task_docs.get((r["task"], metric))
            flip = stats.flips(ref_docs, r["per_doc"]) if run.role != "reference" and ref_docs else None
            if flip:
                fcond = {**cond, "paired_with": run.reference_name, "reference_tasks": run.anchors.reference_tasks_key,
                         "test": "exact McNemar (two-sided binomial on the discordant questions)"}
                figs += [run.fig("tasks", f"{metric}:lost", flip["lost"], None, flip["n"], "questions",
                                 conditions={**fcond, "meaning": "right for the reference, wrong here"}, params=task),
                         run.fig("tasks", f"{metric}:gained", flip["gained"], None, flip["n"], "questions",
                                 conditions={**fcond, "meaning": "wrong for the reference, right here"}, params=task),
                         run.fig("tasks", f"{metric}:mcnemar_p", flip["p"], None, flip["n"], conditions=fcond, params=task)]
        return figs


def task_docs(figs: list[Figure]) -> dict[tuple[str, str], dict[str, float]]:
    """{(task, metric): {doc_id: value}} from a tasks measurement's per-document figures."""
    return {(f.params.get("task", ""), f.metric.removesuffix(":per_doc")): json.loads(f.text)
            for f in figs if f.metric.endswith(":per_doc") and f.status == "ok" and f.text}
