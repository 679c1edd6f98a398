"""Issue 12, item 1: calibration is packed into exactly samples x seq_len reference tokens, for
llm-compressor and for llama-imatrix, and the manifests say so (with the CPU-only choices)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import suite_recipes

from quantkit import builders, calibration, evaldata, paths, variants
from quantkit.builders.common import write_calibration
from quantkit.envs.manager import python_for, runtime_env
from quantkit.envs.run import run_worker
from quantkit.errors import ConfigError
from quantkit.hardware import detect
from quantkit.recipes import load_recipe


def _build(stem: str):
    return suite_recipes.build(stem)  # the suite's calibration scale, shared with the other tests


def test_the_reference_tokenizer_packs_lambada_into_full_sequences(reference, tmp_path):
    recipe = load_recipe(paths.recipes_dir() / "smollm2_gptq_w4a16.yaml")
    calib = recipe.calibration
    write_calibration(calib, tmp_path / "passages.jsonl")
    out = run_worker("compressor", "quantkit.calibration",
                     [reference.location, tmp_path / "passages.jsonl", calib.samples, calib.seq_len, tmp_path / "c.txt"],
                     tmp_path / "pack.log")
    assert out["sequences"] == calib.samples and out["tokens"] == calib.samples * calib.seq_len
    # one LAMBADA passage is ~80 tokens: one passage per sample would have given about a third
    assert out["passages_used"] > 2 * calib.samples, out
    code = ("import sys; from transformers import AutoTokenizer; t = AutoTokenizer.from_pretrained(sys.argv[1]);"
            "print(len(t(open(sys.argv[2]).read(), add_special_tokens=False)['input_ids']))")
    n = subprocess.run([str(python_for("compressor")), "-c", code, reference.location, str(tmp_path / "c.txt")],
                       env=runtime_env("compressor"), capture_output=True, text=True, check=True)
    # the text handed to llama-imatrix holds one spare chunk
    assert int(n.stdout.split()[-1]) >= (calib.samples + 1) * calib.seq_len
    texts = evaldata.load_texts(calib.dataset)
    scored = texts[:evaldata.evaluation_capacity(len(texts))]  # where compare's fidelity text comes from
    packed_text = (tmp_path / "c.txt").read_text()
    assert packed_text.startswith(texts[-1]) and not any(p in packed_text for p in scored[:600])


@pytest.mark.parametrize("stem", ["smollm2_gptq_w4a16", "smollm2_int8_w8a8", "smollm2_awq_w4a16"])
def test_llm_compressor_manifests_record_packed_calibration_and_device_choices(reference, stem):
    recipe, v = _build(stem)
    m, calib = v.manifest, recipe.calibration
    assert m["calibration_samples_used"] == calib.samples
    assert m["calibration_tokens"] == calib.samples * calib.seq_len
    assert m["calibration_packing"]["packing"] == calibration.PACKING
    assert m["build_revision"] == {"calibration": calibration.PACKING}
    settings = m["build_settings"]
    if detect().has_cuda:
        assert settings["calibration_dtype"] == settings["saved_dtype"] and m["peak_gpu_memory_mib"] > 0
    else:
        assert settings["device"] == "cpu" and settings["calibration_dtype"] == "float32"
        assert m["peak_gpu_memory_mib"] is None
    # calibrated in float32 on a CPU, saved as the reference's bf16: no float32 tensor is written
    assert settings["saved_dtype"] == "bfloat16" and "F32" not in m["tensor_dtypes"], m["tensor_dtypes"]
    assert json.loads((v.path / "config.json").read_text())["dtype"] == "bfloat16"
    if stem == "smollm2_awq_w4a16":
        assert settings["awq_n_grid"] == (20 if detect().has_cuda else 10)


def test_imatrix_is_computed_over_exactly_samples_chunks(reference):
    recipe, v = _build("smollm2_gguf_q4_k_m_imatrix")
    calib = recipe.calibration
    assert v.manifest["calibration_samples_used"] == calib.samples
    assert v.manifest["calibration_tokens"] == calib.samples * calib.seq_len
    assert Path(v.path / "imatrix.gguf").exists()


def test_a_budget_the_data_cannot_fill_is_a_one_line_error_before_the_model_loads(reference):
    recipe = load_recipe(paths.recipes_dir() / "smollm2_gptq_w4a16.yaml",
                         ["name=gptq-calibration-too-long", "calibration.samples=4000"])
    with pytest.raises(ConfigError, match=r"^calibration: lambada: \d+ passages tokenize to \d+ tokens, fewer than "
                                          r"samples x seq_len = 4000 x 256 = 1024000$"):
        builders.build(recipe)
    assert not variants.variant_dir("gptq-calibration-too-long").exists()
