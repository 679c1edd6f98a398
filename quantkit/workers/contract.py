"""The worker contract: every op an engine worker answers, its arguments and its answer, typed once.

Stdlib only: imported by the core (engines' core side, evaluation) and by workers, which run in
engine environments with other packages. No `from __future__ import annotations` here: the
TypedDicts are read at run time (`check_answer`), and Python 3.11 only sees `NotRequired` in
evaluated annotations.

Ops (quantkit.workers.protocol carries them as JSON lines):
    generate(GenerateArgs)          -> list (per prompt) of list (per sample) of Sample
    logprobs(LogprobsArgs)          -> list (per sequence) of list (per position i >= 1) of LogprobRow
    topk_logprobs(TopkLogprobsArgs) -> list (per sequence) of TopkRows (arrays: quantkit.workers.arrays)
    bench(BenchArgs)                -> BenchAnswer
    memory()                        -> MemoryAnswer
    info()                          -> InfoAnswer
    shutdown()                      -> None (the worker stops)

One-shot workers (`python -m quantkit.workers.compress SPEC` and the like) print their result as
the last JSON line on stdout; when they fail for a reason the user can fix, their last line on
stderr is `{"quantkit_error": WorkerError}` (`fail` writes it, `read_error` finds it).
"""

import json
import sys
import types
import typing
from typing import Any, NoReturn, NotRequired, TypedDict, Union

# ---- requests --------------------------------------------------------------------------------------


class GenerateArgs(TypedDict):
    prompts: list[list[int]]  # token ids, rendered once by the core (quantkit.prompts)
    temperature: NotRequired[float]  # 0.0: greedy
    top_p: NotRequired[float]
    top_k: NotRequired[int]  # -1: off
    max_tokens: NotRequired[int]
    seed: NotRequired[int | None]  # sample i is seeded with seed + i
    stop: NotRequired[list[str] | None]
    n: NotRequired[int]  # samples per prompt


class LogprobsArgs(TypedDict):
    sequences: list[list[int]]
    top_k: NotRequired[int]


class TopkLogprobsArgs(TypedDict):
    sequences: list[list[int]]
    score_from: int  # rows predict tokens score_from..L-1
    top_k: int
    ref_ids: NotRequired[list[dict] | None]  # per sequence, an encoded int array [L - score_from, K]


class BenchArgs(TypedDict):
    prompts: list[list[int]]
    max_tokens: int
    repeats: NotRequired[int]
    # False: feed tokens without picking them, as llama-bench does (the speed cross-check's like-for-like
    # run); engines that always sample (vLLM) refuse it
    pick: NotRequired[bool]


class NoArgs(TypedDict):
    pass


# ---- answers ---------------------------------------------------------------------------------------


class Sample(TypedDict):
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop" or "length"


class LogprobRow(TypedDict):
    token: float  # log-prob of the actual token at this position
    top: list[list[Any]]  # [[token id, log-prob], ...], most likely first


class EncodedArray(TypedDict):
    """A numeric array across the protocol (quantkit.workers.arrays)."""

    dtype: str
    shape: list[int]
    b64: str


class TopkRows(TypedDict):
    """One sequence's fidelity rows (n = L - score_from), see quantkit/evaluation/fidelity.py."""

    ids: EncodedArray  # int32 [n, K]: own top-K by descending log-prob, or exactly the given ref_ids
    logprobs: EncodedArray  # float32 [n, K]: full-vocabulary log-probs of those ids
    tail_logprob: EncodedArray  # float64 [n]: log of the mass outside them
    argmax: EncodedArray  # int32 [n]
    token_logprob: EncodedArray  # float64 [n]: log-prob of the actual next token


class BenchRun(TypedDict):
    seconds: float
    output_tokens: int
    prefill_seconds: NotRequired[float]
    decode_tokens: NotRequired[int]
    decode_seconds: NotRequired[float]
    first_sequence_tokens: NotRequired[list[int]]
    # seconds spent picking tokens (llama.cpp: llama_sampler_sample), in the whole run and in its
    # decode phase: llama-bench never samples, so its cross-check compares the rest
    sample_seconds: NotRequired[float]
    decode_sample_seconds: NotRequired[float]


class BenchAnswer(TypedDict):
    runs: list[BenchRun]
    sequences: NotRequired[int]
    method: NotRequired[str]  # how the batch ran, in words


class MemoryAnswer(TypedDict):
    rss_bytes: int  # the worker and its engine processes now
    peak_rss_bytes: int  # their peak resident sets (VmHWM), summed
    pids: NotRequired[list[int]]  # every process of the engine (GPU memory is looked up by pid)
    n_ctx: NotRequired[int]  # tokens of KV cache allocated, where the engine allocates up front
    weights_bytes: NotRequired[int]  # weights as loaded, where the engine reports them


class InfoAnswer(TypedDict):
    engine: str
    version: str
    model: str
    load_seconds: float
    pid: int
    n_vocab: NotRequired[int]
    add_bos: NotRequired[bool]
    bos: NotRequired[int]
    topk_hook: NotRequired[dict]
    engine_client: NotRequired[str]  # what drives the engine (vLLM: its OpenAI server's AsyncLLM)
    serving: NotRequired[str | None]  # the URL `serve_http` serves on, once it does


class ServeHttpArgs(TypedDict):
    host: NotRequired[str]  # the address to bind (a free port is chosen); default loopback
    served_name: NotRequired[str]  # the model name requests carry


class ServeHttpAnswer(TypedDict):
    url: str  # "http://HOST:PORT/v1": the engine's own OpenAI server, in front of this worker's engine
    model: str


# op -> (arguments, answer)
OPS: dict[str, tuple[Any, Any]] = {
    "generate": (GenerateArgs, list[list[Sample]]),
    "logprobs": (LogprobsArgs, list[list[LogprobRow]]),
    "topk_logprobs": (TopkLogprobsArgs, list[TopkRows]),
    "bench": (BenchArgs, BenchAnswer),
    "memory": (NoArgs, MemoryAnswer),
    "info": (NoArgs, InfoAnswer),
    # optional: only workers of engines with `Engine.serves_from_worker` (vLLM) answer it
    "serve_http": (ServeHttpArgs, ServeHttpAnswer),
}
REQUIRED_OPS = tuple(op for op in OPS if op != "serve_http")


# ---- checking an answer against its type -----------------------------------------------------------


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__required_keys__")


def _problems(value: Any, tp: Any, where: str) -> list[str]:
    if tp is Any:
        return []
    if tp is None or tp is type(None):
        return [] if value is None else [f"{where}: expected null, got {type(value).__name__}"]
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if any(not _problems(value, o, where) for o in options):
            return []
        return [f"{where}: {value!r:.60} is none of {', '.join(getattr(o, '__name__', str(o)) for o in options)}"]
    if _is_typeddict(tp):
        if not isinstance(value, dict):
            return [f"{where}: expected an object ({tp.__name__}), got {type(value).__name__}"]
        hints = typing.get_type_hints(tp)
        out = [f"{where}: missing {k!r} ({tp.__name__})" for k in sorted(tp.__required_keys__) if k not in value]
        for key, sub in hints.items():
            if key in value:
                out += _problems(value[key], sub, f"{where}.{key}")
        return out
    if origin is list or tp is list:
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {type(value).__name__}"]
        args = typing.get_args(tp)
        out = []
        for i, item in enumerate(value):
            out += _problems(item, args[0], f"{where}[{i}]") if args else []
            if len(out) > 5:
                break
        return out
    if origin is dict or tp is dict:
        return [] if isinstance(value, dict) else [f"{where}: expected an object, got {type(value).__name__}"]
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return [] if ok else [f"{where}: expected a number, got {type(value).__name__}"]
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{where}: expected an integer, got {type(value).__name__}"]
    if isinstance(tp, type):
        return [] if isinstance(value, tp) else [f"{where}: expected {tp.__name__}, got {type(value).__name__}"]
    return []


def check_answer(op: str, answer: Any) -> list[str]:
    """What in `answer` does not match op's answer type (empty: it matches). Extra keys are allowed."""
    if op not in OPS:
        return [f"unknown op {op!r}; the contract has {', '.join(OPS)}"]
    return _problems(answer, OPS[op][1], op)


def check_args(op: str, args: dict) -> list[str]:
    """What in a request's arguments does not match op's argument type, unknown arguments included."""
    if op not in OPS:
        return [f"unknown op {op!r}; the contract has {', '.join(OPS)}"]
    tp = OPS[op][0]
    extra = [f"{op}: unknown argument {k!r}" for k in args if k not in typing.get_type_hints(tp)]
    return extra + _problems(args, tp, op)


# ---- one-shot workers: the structured error line ---------------------------------------------------

ERROR_KEY = "quantkit_error"


class WorkerError(TypedDict):
    message: str  # one line, for the user
    field: NotRequired[str | None]  # the recipe field it is about ("calibration", "method.group_size")
    kind: NotRequired[str]  # "config": the input cannot work (fix the recipe); "engine": the tool failed


def fail(message: str, *, field: str | None = None, kind: str = "config", code: int = 2) -> NoReturn:
    """End a one-shot worker: the structured error as the last line on stderr, then exit `code`."""
    err: WorkerError = {"message": message, "field": field, "kind": kind}
    sys.stderr.write(json.dumps({ERROR_KEY: err}) + "\n")
    sys.stderr.flush()
    raise SystemExit(code)


def read_error(lines: list[str]) -> WorkerError | None:
    """The last structured error line among a worker's output lines, or None."""
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{") and ERROR_KEY in line:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get(ERROR_KEY), dict) and "message" in obj[ERROR_KEY]:
                return obj[ERROR_KEY]
    return None
