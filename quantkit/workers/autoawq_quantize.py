"""AWQ through AutoAWQ (CUDA only). Runs inside the `autoawq` env.

Usage: python -m quantkit.workers.autoawq_quantize SPEC_JSON  (same SPEC as workers.compress)
Writes an AutoAWQ GEMM checkpoint (quant_method "awq"), which vLLM loads natively.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def main(spec: dict) -> dict:
    import awq
    import torch
    import transformers
    from awq import AutoAWQForCausalLM
    from transformers import AutoTokenizer

    t0 = time.time()
    method, calib = spec["method"], spec["calibration"]
    with open(spec["calibration_file"], encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    tokenizer = AutoTokenizer.from_pretrained(spec["source"])
    model = AutoAWQForCausalLM.from_pretrained(spec["source"], device_map="cuda")
    n_params = sum(p.numel() for p in model.model.parameters())
    quant_config = {"zero_point": method["scheme"].endswith("ASYM"), "q_group_size": method["group_size"],
                    "w_bit": 4, "version": "GEMM"}
    model.quantize(tokenizer, quant_config=quant_config, calib_data=texts,
                   max_calib_samples=len(texts), max_calib_seq_len=calib["seq_len"])
    model.save_quantized(spec["out_dir"])
    tokenizer.save_pretrained(spec["out_dir"])
    return {
        "seconds": round(time.time() - t0, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20),
        "versions": {"autoawq": awq.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        "source_parameters": n_params,
    }


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        result = main(json.load(f))
    print(json.dumps(result), flush=True)
