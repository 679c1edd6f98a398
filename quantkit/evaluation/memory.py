"""Memory figures: on disk, bits per weight, weights once loaded, KV cache per token and capacity, peak.

KV bytes per token are computed from the architecture (layers x KV heads x head dim x 2 for K and
V x element size) because neither engine reports them directly; capacities are what the engines
report (vLLM's start-up log) or allocate (llama.cpp's n_ctx).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import TYPE_CHECKING

from quantkit import safetensors_info, variants
from quantkit.engines.vllm.engine import kv_capacity_from_log
from quantkit.results.store import Figure

if TYPE_CHECKING:
    from quantkit.evaluation.compare import Run

# bytes per KV element for each cache type name quantkit records
KV_ELEMENT_BYTES = {"auto (model dtype)": 2.0, "bfloat16": 2.0, "float16": 2.0, "f16": 2.0, "bf16": 2.0, "f32": 4.0,
                    "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0, "q8_0": 34 / 32, "q5_1": 24 / 32,
                    "q5_0": 22 / 32, "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}
_WEIGHTS_LOADED = re.compile(r"Model loading took ([\d.]+) GiB")


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


def memory_figures(ctx: "Run") -> list[Figure]:
    t = ctx.target
    config = json.loads((ctx.inputs.reference_dir / "config.json").read_text())
    mem = ctx.worker.call("memory")
    if ctx.is_reference:
        disk = safetensors_info.tensor_bytes(t.model_path)
        bpw = 8 * disk / safetensors_info.parameter_count(t.model_path)
    else:
        m = variants.get(t.name).manifest
        disk, bpw = m.get("weights_bytes"), m.get("bits_per_weight")
    log = ctx.worker.log_path.read_text(errors="replace")
    if t.engine.name == "vllm":
        capacity = kv_capacity_from_log(log)
        found = _WEIGHTS_LOADED.findall(log)
        weights = float(found[-1]) * 2**30 if found else None
    else:
        capacity, weights = mem.get("n_ctx"), mem.get("weights_bytes")
    kv_tok = kv_bytes_per_token(config, t.kv_cache_type)
    gpu = gpu_memory_mib(mem.get("pids", []))
    cond = {"kv_cache_type": t.kv_cache_type,
            "kv_bytes_per_token": "computed from the architecture",
            "kv_capacity": "vLLM start-up log" if t.engine.name == "vllm" else "llama.cpp n_ctx (allocated up front)"}
    figs = [
        ctx.fig("memory", "weights_on_disk_mib", disk / 2**20 if disk else None, None, 1, "MiB", conditions=cond),
        ctx.fig("memory", "bits_per_weight", bpw, None, 1, "bits", conditions=cond),
        ctx.fig("memory", "weights_loaded_mib", weights / 2**20 if weights else None, None, 1, "MiB", conditions=cond),
        ctx.fig("memory", "kv_bytes_per_token", kv_tok, None, 1, "B", conditions=cond),
        ctx.fig("memory", "kv_capacity_tokens", capacity, None, 1, "tokens", conditions=cond),
        ctx.fig("memory", "peak_rss_mib", mem["peak_rss_bytes"] / 2**20, None, 1, "MiB", conditions=cond),
    ]
    if gpu is not None:
        figs.append(ctx.fig("memory", "gpu_memory_mib", gpu, None, 1, "MiB", conditions=cond))
    return figs
