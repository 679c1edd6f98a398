"""Sampling sweeps: GSM8K re-run per temperature, N seeded samples per problem.

Per variant and temperature: accuracy (flexible-extract exact match, the answer-extraction regex
read from evals/tasks/qk_gsm8k.yaml so there is one definition) with its standard error over
problems, and diversity: the share of problems whose N samples are not all the same text.
lm-eval's generate_until hands a model one greedy request per document, so sampling N seeded
completions per problem is done here; the answer extraction and normalisation mirror that config.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

import yaml

from quantkit import evaldata, paths

INSTRUCTION = "Solve the problem step by step, then give the final answer on its own line as '#### <number>'."


class _TaskLoader(yaml.SafeLoader):
    """Reads lm-eval task YAML; its `!function` tags are kept as plain strings (not imported)."""


_TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))  # type: ignore[arg-type]


@lru_cache(maxsize=1)
def _gsm8k_config() -> dict:
    return yaml.load((paths.evals_dir() / "tasks" / "qk_gsm8k.yaml").read_text(), Loader=_TaskLoader)


def _flexible_pattern() -> re.Pattern:
    for f in _gsm8k_config()["filter_list"]:
        if f["name"] == "flexible-extract":
            return re.compile(f["filter"][0]["regex_pattern"])
    raise KeyError("flexible-extract filter missing from qk_gsm8k.yaml")


def normalise(text: str) -> str:
    """Apply the task's `regexes_to_ignore` (commas, $, '#### ' prefix, trailing dot), lower-case."""
    for pattern in _gsm8k_config()["metric_list"][0]["regexes_to_ignore"]:
        text = re.sub(pattern, "", text)
    return text.strip().lower()


def extract(completion: str) -> str | None:
    """The last number in the completion (lm-eval's flexible-extract, group_select -1)."""
    matches = _flexible_pattern().findall(completion)
    if not matches:
        return None
    last = matches[-1]
    return next((g for g in last if g), None) if isinstance(last, tuple) else last


def gold(answer: str) -> str:
    return normalise(answer.split("####")[-1])


def problems(limit: int) -> list[dict]:
    return evaldata.load_records("gsm8k", limit=limit)


def score(golds: list[str], samples: list[list[str]]) -> dict:
    """Accuracy over all samples (stderr over problems) and diversity (share of problems whose
    samples differ)."""
    per_problem = []
    diverse = 0
    for g, outs in zip(golds, samples):
        hits = [1.0 if (a := extract(o)) is not None and normalise(a) == g else 0.0 for o in outs]
        per_problem.append(sum(hits) / len(hits))
        diverse += len(set(outs)) > 1
    n = len(per_problem)
    mean = sum(per_problem) / n
    var = sum((x - mean) ** 2 for x in per_problem) / (n - 1) if n > 1 else 0.0
    d = diverse / n
    return {"accuracy": mean, "accuracy_stderr": math.sqrt(var / n), "diversity": d,
            "diversity_stderr": math.sqrt(d * (1 - d) / n), "problems": n, "samples": len(samples[0]) if samples else 0}
