"""Do quantkit's task figures agree with lm-eval's own model backend on the same engine?

    python -m quantkit.evaluation.lmeval_crosscheck [VARIANT] [--task arc_easy] [--limit 20]

One engine start (a vLLM model: the reference by default): quantkit's tasks path (lm-eval's task
over quantkit's `_ScorerLM` adapter, token ids through the worker's `logprobs` op), then lm-eval's
own `local-completions` backend (lm-eval's request building, tokenization through the server's
`/tokenize`, log-likelihoods from `echo` + `logprobs` over HTTP) against vLLM's OpenAI server that
the same worker serves. Prints each figure from both and the per-document agreement; exit code 1
when the accuracy differs or a document's answer differs.

Only vLLM: lm-eval's completions backends score a continuation through the prompt log-probs of an
`echo` request, which llama-server does not return (a GGUF variant is refused with that reason).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from quantkit import loader
from quantkit.errors import ConfigError


def lm_eval_over_server(url: str, model: str, tasks: list[str], limit: int | None, seed: int = 0) -> list[dict]:
    """The tasks through lm-eval's `local-completions` backend against an OpenAI server at `url`
    (".../v1"), in run_tasks' row shape."""
    from quantkit.evaluation.tasks import run_tasks

    args = {"base_url": f"{url}/completions", "model": model, "tokenizer_backend": "remote",
            "tokenized_requests": True, "num_concurrent": 1, "max_retries": 1, "batch_size": 1}
    return run_tasks(None, tasks, limit=limit, seed=seed, lm_eval_model=("local-completions", args))


def compare_rows(ours: list[dict], theirs: list[dict]) -> list[dict]:
    """Per (task, metric): both values, and the documents whose value differs."""
    by = {(r["task"], r["metric"]): r for r in theirs}
    out = []
    for r in ours:
        t = by.get((r["task"], r["metric"]))
        if t is None:
            continue
        differ = sorted(d for d, v in r["per_doc"].items() if t["per_doc"].get(d) != v)
        out.append({"task": r["task"], "metric": r["metric"], "quantkit": r["value"], "lm_eval": t["value"],
                    "n": r["n"], "n_lm_eval": t["n"], "docs_differing": differ})
    return out


def crosscheck(variant: str, tasks: list[str], limit: int | None) -> tuple[list[dict], dict[str, Any]]:
    from quantkit.evaluation.compare import CompareConfig, engine_settings, reference_of
    from quantkit.evaluation.scorer import WorkerScorer
    from quantkit.evaluation.tasks import run_tasks
    from quantkit.execution.local import LocalExecutor

    cfg = CompareConfig.make(quick=True, tasks=tasks, limit=limit)
    target = loader.load(variant, settings=engine_settings(variant, cfg, None))
    if not target.engine.serves_from_worker:
        raise ConfigError(f"{variant} runs on {target.engine.display_name}, whose server returns no prompt "
                          "log-probs: lm-eval's completions backend cannot score it",
                          hint="cross-check a vLLM model (the reference, an INT8 or FP8 variant)")
    reference_dir = loader.locate(reference_of(variant))[1]  # the reference tokenizer renders, as in compare
    with LocalExecutor().start(target, label="lmeval-crosscheck") as worker:
        ours = run_tasks(WorkerScorer(worker, reference_dir), tasks, limit=limit)
        served = worker.call("serve_http", served_name=target.name)
        theirs = lm_eval_over_server(served["url"], served["model"], tasks, limit)
        info = worker.call("info")
    return compare_rows(ours, theirs), {"engine": f"vllm {info.get('version')}", "variant": variant,
                                         "limit": limit, "tasks": tasks}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant", nargs="?", default="reference")
    ap.add_argument("--task", action="append", default=None, help="quantkit task name (repeatable; default arc_easy)")
    ap.add_argument("--limit", type=int, default=20)
    args = ap.parse_args(argv)
    rows, cond = crosscheck(args.variant, args.task or ["arc_easy"], args.limit)
    ok = bool(rows)
    print(f"{'task':12} {'metric':26} {'quantkit':>9} {'lm-eval':>9}  documents that differ")
    for r in rows:
        same = not r["docs_differing"] and r["quantkit"] == r["lm_eval"] and r["n"] == r["n_lm_eval"]
        ok &= same
        print(f"{r['task']:12} {r['metric']:26} {r['quantkit']:9.4f} {r['lm_eval']:9.4f}  "
              f"{len(r['docs_differing'])} of {r['n']}" + ("" if same else "  DIFFERENT"))
    print(f"conditions: {cond}; quantkit: worker `logprobs`/`generate` under lm-eval's task; lm-eval: its "
          "local-completions backend (remote tokenizer, echo + logprobs) on vLLM's OpenAI server of the same engine")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
