"""llm-compressor `oneshot` for AWQ / GPTQ / FP8 / INT8. Runs inside the `compressor` env.

Usage: python -m quantkit.workers.compress SPEC_JSON
SPEC: {"source": dir or hub id, "method": {...recipe method...}, "calibration": {...} | null,
       "calibration_file": JSONL of {"text"} | null, "out_dir": ..., "device": "cpu"|"cuda"}
Prints one JSON line with what it measured.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def _scheme_kwargs(method: dict) -> dict:
    if "group_size" not in method:
        return {"scheme": method["scheme"]}
    # A preset scheme with its group size changed: build the config group from the preset.
    from compressed_tensors.quantization import preset_name_to_scheme

    scheme = preset_name_to_scheme(method["scheme"], ["Linear"])
    scheme.weights.group_size = method["group_size"]
    return {"config_groups": {"group_0": scheme}}


def modifiers(method: dict) -> list:
    kind = method["kind"]
    ignore = method.get("ignore", ["lm_head"])
    if kind == "fp8":
        from llmcompressor.modifiers.quantization import QuantizationModifier

        return [QuantizationModifier(targets="Linear", scheme=method["scheme"], ignore=ignore)]
    if kind == "gptq":
        from llmcompressor.modifiers.quantization import GPTQModifier

        return [GPTQModifier(targets="Linear", ignore=ignore, dampening_frac=method["dampening_frac"],
                             **_scheme_kwargs(method))]
    if kind == "int8":
        from llmcompressor.modifiers.quantization import GPTQModifier

        mods = []
        if method.get("smoothquant_strength") is not None:
            from llmcompressor.modifiers.smoothquant import SmoothQuantModifier

            mods.append(SmoothQuantModifier(smoothing_strength=method["smoothquant_strength"]))
        mods.append(GPTQModifier(targets="Linear", scheme=method["scheme"], ignore=ignore,
                                 dampening_frac=method["dampening_frac"]))
        return mods
    if kind == "awq":
        # llm-compressor >= 0.14: AWQ is a smoothing transform; the quantization that follows it
        # is a separate QuantizationModifier (one modifier, one job).
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [AWQModifier(), QuantizationModifier(targets="Linear", ignore=ignore, **_scheme_kwargs(method))]
    raise ValueError(f"method kind {kind!r} is not an llm-compressor method")


def linear_widths(model) -> dict[str, int]:
    import torch

    return {name: m.in_features for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")}


def main(spec: dict) -> dict:
    import compressed_tensors
    import llmcompressor
    import torch
    import transformers
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantkit.builders.groups import check
    from quantkit.workers.cpu_compat import apply as apply_cpu_compat

    t0 = time.time()
    method = spec["method"]
    tokenizer = AutoTokenizer.from_pretrained(spec["source"])
    model = AutoModelForCausalLM.from_pretrained(spec["source"], dtype="auto")
    if "group_size" in method:
        problem = check(linear_widths(model), method["group_size"])
        if problem:
            raise SystemExit(f"QUANTKIT_ERROR method.group_size: {problem}")
    n_params = sum(p.numel() for p in model.parameters())
    patched = apply_cpu_compat()

    kwargs = {}
    calib = spec.get("calibration")
    if calib:
        with open(spec["calibration_file"], encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f]
        ds = Dataset.from_dict({"text": texts}).map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=calib["seq_len"], add_special_tokens=False),
            batched=True, remove_columns=["text"])
        kwargs = {"dataset": ds, "max_seq_length": calib["seq_len"], "num_calibration_samples": len(texts)}
    oneshot(model=model, recipe=modifiers(method), **kwargs)
    model.save_pretrained(spec["out_dir"], save_compressed=True)
    tokenizer.save_pretrained(spec["out_dir"])
    return {
        "seconds": round(time.time() - t0, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "versions": {"llmcompressor": llmcompressor.__version__, "compressed-tensors": compressed_tensors.__version__,
                     "transformers": transformers.__version__, "torch": torch.__version__},
        "cpu_compat_patches": patched,
        "source_parameters": n_params,
    }


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        result = main(json.load(f))
    print(json.dumps(result), flush=True)
