"""Issue 9: exact full-vocabulary log-probs through vLLM's own kernels (the worker's `topk_logprobs` op).

One engine start for the module, on the reference. The engine's token budget per step is small, so
prompts are prefilled in chunks and the chunk bookkeeping of the hook is exercised (it must give
the same rows as one pass). vLLM's own prompt log-probs (the `logprobs` op) are the exactness
check: the same sequences in the same order make the same engine steps, hence the same logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantkit import evaldata, loader, paths, prompts
from quantkit.errors import EngineError
from quantkit.execution.worker_client import WorkerClient
from quantkit.workers.arrays import decode, encode

K = 32
SCORE_FROM = 40
VOCAB = 49152  # the reference's (SmolLM2)
FIELDS = {"ids": np.int32, "logprobs": np.float32, "tail_logprob": np.float64, "argmax": np.int32,
          "token_logprob": np.float64}


@pytest.fixture(scope="module")
def sequences(reference):
    texts = evaldata.load_texts("lambada", limit=40)
    [stream] = prompts.render(Path(reference.location), [prompts.plain("\n\n".join(texts))])
    toks = list(stream.token_ids)
    assert len(toks) > 500
    return [toks[0:96], toks[100:260], toks[300:348]]  # lengths 96, 160, 48: scored rows 56, 120, 8


@pytest.fixture(scope="module")
def worker(reference):
    target = loader.load("reference", settings={"max_model_len": 256, "max_logprobs": K})
    # 64 tokens per engine step: every prompt is prefilled over several steps, cut mid-sequence.
    settings = {**target.worker_settings(), "max_num_batched_tokens": 64, "max_num_seqs": 4}
    log = paths.cache_dir() / "logs" / "test-vllm-topk.log"
    client = WorkerClient(target.engine.env, target.engine.worker_module, settings, log)
    yield client
    client.close()


def _decoded(answers):
    out = [{k: decode(v) for k, v in a.items()} for a in answers]
    for a in out:
        assert {k: a[k].dtype for k in FIELDS} == {k: np.dtype(t) for k, t in FIELDS.items()}
    return out


@pytest.fixture(scope="module")
def own(worker, sequences):
    return _decoded(worker.call("topk_logprobs", sequences=sequences, score_from=SCORE_FROM, top_k=K))


def _mass(a):
    return np.exp(a["logprobs"].astype(np.float64)).sum(axis=1) + np.exp(a["tail_logprob"])


def test_own_top_k_meets_the_contract(own, sequences):
    all_tokens = []
    for a, seq in zip(own, sequences):
        n = len(seq) - SCORE_FROM
        assert a["ids"].shape == a["logprobs"].shape == (n, K)
        assert a["tail_logprob"].shape == a["argmax"].shape == a["token_logprob"].shape == (n,)
        assert (np.diff(a["logprobs"], axis=1) <= 0).all()  # sorted by descending log-prob
        assert all(len(set(row)) == K for row in a["ids"].tolist())
        assert np.array_equal(a["argmax"], a["ids"][:, 0])
        np.testing.assert_allclose(_mass(a), 1.0, rtol=0, atol=2e-6)
        targets = np.array(seq[SCORE_FROM:])
        hit = a["ids"] == targets[:, None]
        found = hit.any(axis=1)
        assert 0 < found.sum() < n or n < 10  # real text: some next tokens in the top-32, not all
        np.testing.assert_allclose(a["token_logprob"][found], a["logprobs"][hit], rtol=0, atol=1e-6)
        assert (a["token_logprob"][~found] <= a["logprobs"][~found, -1] + 1e-6).all()
        all_tokens.append(a["token_logprob"])
    # Rows aligned with the tokens they predict: the reference's perplexity on LAMBADA is ~50
    # (ln 50 = 3.9); scoring each row against a neighbouring token would give far lower log-probs.
    mean = float(np.concatenate(all_tokens).mean())
    assert -5.5 < mean < -2.5, mean


def test_agrees_with_vllms_own_prompt_logprobs(worker, own, sequences):
    """Same logits as vLLM's prompt log-probs: per row, ours minus vLLM's is one constant over every
    shared id and the next token, and that constant is vLLM's float32 normaliser's rounding (a naive
    float32 sum over 49,152 terms, ~1e-5 relative), which ours avoids (mass check above at 2e-6)."""
    theirs = worker.call("logprobs", sequences=sequences, top_k=K)
    compared, offsets = 0, []
    for a, rows, seq in zip(own, theirs, sequences):
        for r, pos in enumerate(range(SCORE_FROM, len(seq))):
            row = rows[pos - 1]  # the `logprobs` op's rows start at position 1
            vllm_top = {int(i): lp for i, lp in row["top"]}
            ours = dict(zip(a["ids"][r].tolist(), a["logprobs"][r].tolist()))
            shared = ours.keys() & vllm_top.keys()
            d = np.array([ours[t] - vllm_top[t] for t in shared] + [a["token_logprob"][r] - row["token"]])
            assert d.max() - d.min() < 2e-6, (pos, d)
            offsets.append(float(np.median(d)))
            # Same K largest values; ids may differ only among exact ties at the K-th value.
            np.testing.assert_allclose(sorted(ours.values()), np.array(sorted(vllm_top.values())[-K:]) + d[-1],
                                       rtol=0, atol=2e-6)
            compared += len(shared)
    assert compared > 0.95 * K * sum(len(s) - SCORE_FROM for s in sequences)
    assert np.abs(offsets).max() < 1e-4, max(offsets, key=abs)


def test_given_ids_are_scored_exactly_as_given(worker, own, sequences):
    rng = np.random.default_rng(0)
    refs = []
    for a in own:
        ids = a["ids"][:, ::-1].copy()  # own top-K, reversed order
        for row in ids[::2]:  # every other row: half of the ids drawn from the rest of the vocabulary
            rest = np.setdiff1d(np.arange(VOCAB), row)
            row[: K // 2] = rng.choice(rest, size=K // 2, replace=False)
        refs.append(ids.astype(np.int32))
    given = _decoded(worker.call("topk_logprobs", sequences=sequences, score_from=SCORE_FROM, top_k=K,
                                 ref_ids=[encode(r) for r in refs]))
    for g, a, ref in zip(given, own, refs):
        assert np.array_equal(g["ids"], ref)
        np.testing.assert_allclose(_mass(g), 1.0, rtol=0, atol=2e-6)
        for r in np.flatnonzero(g["argmax"] != a["argmax"]):  # only between exactly tied top logits
            assert dict(zip(a["ids"][r].tolist(), a["logprobs"][r].tolist()))[int(g["argmax"][r])] == a["logprobs"][r, 0]
        np.testing.assert_allclose(g["token_logprob"], a["token_logprob"], rtol=0, atol=1e-6)
        for r in range(len(ref)):
            mine = dict(zip(a["ids"][r].tolist(), a["logprobs"][r].tolist()))
            for c, tid in enumerate(ref[r].tolist()):
                if tid in mine:
                    assert abs(g["logprobs"][r, c] - mine[tid]) <= 1e-6
                else:  # outside the own top-K: below its K-th value
                    assert g["logprobs"][r, c] <= a["logprobs"][r, -1] + 1e-6
        # The tail of the given ids holds the own top-K mass they miss: larger where they differ.
        differs = (np.sort(ref, axis=1) != np.sort(a["ids"], axis=1)).any(axis=1)
        assert (g["tail_logprob"][differs] > a["tail_logprob"][differs]).all()
        np.testing.assert_allclose(g["tail_logprob"][~differs], a["tail_logprob"][~differs], atol=1e-9)


def test_bad_requests_are_named_and_the_engine_keeps_serving(worker, sequences):
    with pytest.raises(EngineError, match="score_from 0 outside"):
        worker.call("topk_logprobs", sequences=sequences, score_from=0, top_k=K)
    wrong = [encode(np.zeros((3, K), dtype=np.int32)) for _ in sequences]
    with pytest.raises(EngineError, match=r"ref_ids has shape \[3, 32\]"):
        worker.call("topk_logprobs", sequences=sequences, score_from=SCORE_FROM, top_k=K, ref_ids=wrong)
    n = len(sequences[2]) - SCORE_FROM
    with pytest.raises(EngineError, match="outside the vocabulary"):
        worker.call("topk_logprobs", sequences=sequences[2:], score_from=SCORE_FROM, top_k=K,
                    ref_ids=[encode(np.full((n, K), VOCAB, dtype=np.int32))])
    [a] = _decoded(worker.call("topk_logprobs", sequences=sequences[2:], score_from=SCORE_FROM, top_k=4))
    assert a["ids"].shape == (n, 4)
