"""What every engine worker must do, whatever the engine: the contract tests, shared by the dummy
engine (tests/unit/test_engine_contract.py) and the real workers (tests/integration/test_worker_contract.py).

Each check takes a started worker (quantkit.execution.worker_client.WorkerClient), calls one op,
checks its answer against its type (quantkit.workers.contract) and against what the op means, and
returns the answer for engine-specific checks.
"""

from __future__ import annotations

import math

import numpy as np

from quantkit.workers import arrays, contract


def typed(op: str, answer):
    problems = contract.check_answer(op, answer)
    assert not problems, f"{op} answer breaks the contract: {problems}"
    return answer


def check_info(worker) -> dict:
    info = typed("info", worker.call("info"))
    assert info["pid"] > 0 and info["load_seconds"] >= 0 and info["engine"] and info["model"]
    return info


def check_generate(worker, prompts: list[list[int]], max_tokens: int = 6) -> list:
    greedy = typed("generate", worker.call("generate", prompts=prompts, temperature=0.0, max_tokens=max_tokens))
    assert len(greedy) == len(prompts)
    for per in greedy:
        assert len(per) == 1
        s = per[0]
        assert s["finish_reason"] in ("stop", "length") and len(s["token_ids"]) <= max_tokens
        if s["finish_reason"] == "length":
            assert len(s["token_ids"]) == max_tokens
    again = worker.call("generate", prompts=prompts, temperature=0.0, max_tokens=max_tokens)
    assert [p[0]["token_ids"] for p in again] == [p[0]["token_ids"] for p in greedy], "greedy is not deterministic"
    # n samples per prompt; greedy samples are identical by definition
    two = typed("generate", worker.call("generate", prompts=prompts[:1], temperature=0.0, max_tokens=max_tokens, n=2))
    assert len(two[0]) == 2 and two[0][0]["token_ids"] == two[0][1]["token_ids"] == greedy[0][0]["token_ids"]
    # seeded sampling repeats itself
    kw = {"prompts": prompts[:1], "temperature": 0.8, "max_tokens": max_tokens, "seed": 3, "n": 2}
    sampled = typed("generate", worker.call("generate", **kw))
    assert len(sampled[0]) == 2
    assert [s["token_ids"] for s in worker.call("generate", **kw)[0]] == [s["token_ids"] for s in sampled[0]]
    return greedy


def check_logprobs(worker, sequences: list[list[int]], top_k: int = 5) -> list:
    rows = typed("logprobs", worker.call("logprobs", sequences=sequences, top_k=top_k))
    assert len(rows) == len(sequences)
    for seq, per in zip(sequences, rows):
        assert len(per) == len(seq) - 1, "one row per position after the first"
        for pos, row in enumerate(per, start=1):
            top = row["top"]
            assert 1 <= len(top) <= top_k
            values = [lp for _, lp in top]
            assert values == sorted(values, reverse=True), "top is most likely first"
            assert all(lp <= 1e-4 for lp in values) and row["token"] <= values[0] + 1e-4
            ids = [int(t) for t, _ in top]
            if seq[pos] in ids:
                assert math.isclose(row["token"], values[ids.index(seq[pos])], abs_tol=1e-4)
    return rows


def _decoded(answer: dict) -> dict:
    return {k: arrays.decode(v) for k, v in answer.items()}


def check_topk_logprobs(worker, sequences: list[list[int]], score_from: int, top_k: int,
                        logprob_rows: list | None = None) -> list[dict]:
    answers = typed("topk_logprobs", worker.call("topk_logprobs", sequences=sequences, score_from=score_from,
                                                 top_k=top_k))
    assert len(answers) == len(sequences)
    out = []
    for i, (seq, enc) in enumerate(zip(sequences, answers)):
        a = _decoded(enc)
        n = len(seq) - score_from
        assert a["ids"].shape == (n, top_k) and a["logprobs"].shape == (n, top_k)
        assert a["tail_logprob"].shape == a["argmax"].shape == a["token_logprob"].shape == (n,)
        assert a["ids"].dtype == np.int32 and a["logprobs"].dtype == np.float32
        assert a["tail_logprob"].dtype == np.float64 and a["token_logprob"].dtype == np.float64
        assert np.all(np.diff(a["logprobs"], axis=1) <= 1e-6), "own top-K comes by descending log-prob"
        # the K ids and the tail hold all the probability
        total = np.exp(a["logprobs"].astype(np.float64)).sum(axis=1) + np.exp(a["tail_logprob"])
        np.testing.assert_allclose(total, 1.0, atol=1e-3)
        # the argmax is the first of the own top-K (or ties with it)
        first = a["logprobs"][:, 0]
        at_argmax = np.array([a["logprobs"][r, list(a["ids"][r]).index(a["argmax"][r])]
                              if a["argmax"][r] in a["ids"][r] else -np.inf for r in range(n)])
        np.testing.assert_allclose(at_argmax, first, atol=1e-4)
        assert np.all(a["token_logprob"] <= 1e-6)
        if logprob_rows is not None:  # the same engine's `logprobs` op agrees on the actual tokens
            expected = np.array([row["token"] for row in logprob_rows[i][score_from - 1:]])
            np.testing.assert_allclose(a["token_logprob"], expected, atol=5e-3)
        out.append(a)
    # given ids: exactly those ids come back, with the same log-probs
    given = [arrays.encode(a["ids"][:, ::-1].copy()) for a in out]
    again = typed("topk_logprobs", worker.call("topk_logprobs", sequences=sequences, score_from=score_from,
                                               top_k=top_k, ref_ids=given))
    for a, enc in zip(out, again):
        b = _decoded(enc)
        np.testing.assert_array_equal(b["ids"], a["ids"][:, ::-1])
        np.testing.assert_allclose(b["logprobs"], a["logprobs"][:, ::-1], atol=1e-4)
        np.testing.assert_allclose(b["tail_logprob"], a["tail_logprob"], atol=1e-4)
    return out


def check_bench(worker, prompts: list[list[int]], max_tokens: int = 4, repeats: int = 2) -> dict:
    answer = typed("bench", worker.call("bench", prompts=prompts, max_tokens=max_tokens, repeats=repeats))
    assert len(answer["runs"]) == repeats
    for run in answer["runs"]:
        assert run["seconds"] > 0 and 0 < run["output_tokens"] <= len(prompts) * max_tokens
    return answer


def check_memory(worker, engine, *, expect_weights: bool = True) -> tuple[dict, object]:
    answer = typed("memory", worker.call("memory"))
    assert answer["rss_bytes"] > 0 and answer["peak_rss_bytes"] >= 0.9 * answer["rss_bytes"]
    figures = engine.memory_figures(answer, worker.log_path.read_text(errors="replace"))
    assert figures.peak_rss_bytes == answer["peak_rss_bytes"] and figures.kv_capacity_source
    assert figures.kv_capacity_tokens is not None and figures.kv_capacity_tokens > 0
    if expect_weights:
        assert figures.weights_loaded_bytes is not None and figures.weights_loaded_bytes > 0
    return answer, figures


def check_unknown_op_is_an_error_and_the_worker_survives(worker) -> None:
    import pytest

    from quantkit.errors import EngineError

    with pytest.raises(EngineError, match="unknown op 'no_such_op'"):
        worker.call("no_such_op")
    assert worker.alive and worker.call("info")["pid"] > 0
