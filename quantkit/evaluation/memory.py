"""Memory arithmetic shared by the memory group (groups/memory.py) and the roofline: KV bytes per
token from the architecture (layers x KV heads x head dim x 2 for K and V x element size, as
neither engine reports them directly) and GPU memory per process.
"""

from __future__ import annotations

import shutil
import subprocess

# bytes per KV element for each cache type name quantkit records
KV_ELEMENT_BYTES = {"auto (model dtype)": 2.0, "bfloat16": 2.0, "float16": 2.0, "f16": 2.0, "bf16": 2.0, "f32": 4.0,
                    "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0, "q8_0": 34 / 32, "q5_1": 24 / 32,
                    "q5_0": 22 / 32, "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}


def kv_bytes_per_token(config: dict, kv_type: str) -> float | None:
    """Bytes of K and V per token; `kv_type` is one type or llama.cpp's "K <type> / V <type>"."""
    if kv_type.startswith("K ") and " / V " in kv_type:
        k_type, v_type = kv_type[2:].split(" / V ")
    else:
        k_type = v_type = kv_type
    k, v = KV_ELEMENT_BYTES.get(k_type), KV_ELEMENT_BYTES.get(v_type)
    if k is None or v is None:
        return None
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return config["num_hidden_layers"] * config.get("num_key_value_heads", heads) * head_dim * (k + v)


def gpu_memory_mib(pids: list[int]) -> float | None:
    """GPU memory used by these processes, through NVML's command-line face (nvidia-smi)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    used = [float(p.split(",")[1]) for p in out.strip().splitlines() if p and int(p.split(",")[0]) in pids]
    return sum(used) if used else None
