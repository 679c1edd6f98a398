"""llm-compressor `oneshot` for AWQ / GPTQ / FP8 / INT8. Runs inside the `compressor` env.

Usage: python -m quantkit.workers.compress SPEC_JSON
SPEC: {"source": dir or hub id, "method": {...recipe method...}, "calibration": {...} | null,
       "calibration_file": JSONL of {"text"} passages, in the order to use them | null,
       "out_dir": ...}
The worker calibrates on CUDA when torch sees a GPU (llm-compressor picks it), else on the CPU.
Prints one JSON line with what it measured; a recipe it cannot build ends it with the structured
error line of quantkit.workers.contract (`fail`), which the builder raises naming the field.
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


def modifiers(method: dict, *, awq_grid: int) -> list:
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
            from llmcompressor.modifiers.transform.smoothquant import (
                SmoothQuantModifier,
            )

            mods.append(SmoothQuantModifier(smoothing_strength=method["smoothquant_strength"]))
        mods.append(GPTQModifier(targets="Linear", scheme=method["scheme"], ignore=ignore,
                                 dampening_frac=method["dampening_frac"]))
        return mods
    if kind == "awq":
        # llm-compressor >= 0.14: AWQ is a smoothing transform; the quantization that follows it
        # is a separate QuantizationModifier (one modifier, one job).
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [AWQModifier(n_grid=awq_grid), QuantizationModifier(targets="Linear", ignore=ignore, **_scheme_kwargs(method))]
    raise ValueError(f"method kind {kind!r} is not an llm-compressor method")


def linear_widths(model) -> dict[str, int]:
    import torch

    return {name: m.in_features for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")}


def compress_then_cast(model, calib_dtype, saved_dtype) -> None:
    """Compress in the calibration dtype, then cast what it made wider back to the saved dtype.

    Compressing first keeps the integers exact: round(W / scale) is computed on the float32 values
    calibration produced, not on 16-bit roundings of W and scale (which for 8-bit weights could move
    a value by one step). Then the scales and unquantized tensors (embeddings, norms, lm_head) are
    cast back, so the checkpoint has the dtype and size a 16-bit calibration would have given.
    save_pretrained then skips the modules already compressed.
    """
    import itertools

    from compressed_tensors.compressors import ModelCompressor

    ModelCompressor.from_pretrained_model(model).compress_model(model)
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.dtype == calib_dtype:
            t.data = t.data.to(saved_dtype)
    model.config.dtype = saved_dtype


def calibration_dataset(tokenizer, calib: dict, passages_file: str):
    """Packed calibration (quantkit.calibration): exactly samples x seq_len tokens; with
    `packing: passages`, one passage per sequence, cut at seq_len."""
    from datasets import Dataset

    from quantkit.calibration import (
        PACKING,
        PASSAGES,
        SEPARATOR,
        CalibrationShortError,
        pack_texts,
        per_passage,
        read_passages,
    )
    from quantkit.workers.contract import fail

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    passages = calib.get("packing", "packed") == "passages"
    try:
        if passages:
            seqs, used = per_passage(encode, read_passages(passages_file), calib["samples"], calib["seq_len"])
        else:
            seqs, used, _ = pack_texts(encode, read_passages(passages_file), calib["samples"], calib["seq_len"])
    except CalibrationShortError as e:
        fail(f"{calib['dataset']}: {e}", field="calibration")
    ds = Dataset.from_dict({"input_ids": seqs, "attention_mask": [[1] * len(x) for x in seqs]})
    info = {"sequences": len(seqs), "seq_len": calib["seq_len"], "tokens": sum(map(len, seqs)),
            "passages_used": used, "separator": None if passages else SEPARATOR,
            "packing": PASSAGES if passages else PACKING}
    return ds, info


def main(spec: dict) -> dict:
    import compressed_tensors
    import llmcompressor
    import torch
    import transformers
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantkit.builders.groups import check
    from quantkit.workers.contract import fail
    from quantkit.workers.cpu_compat import apply as apply_cpu_compat
    from quantkit.workers.cpu_compat import (
        awq_grid,
        calibration_batch,
        calibration_dtype,
    )

    t0 = time.time()
    method = spec["method"]
    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(spec["source"])
    kwargs: dict = {}
    calib_info = None
    calib = spec.get("calibration")
    if calib:  # packed before the model loads: too little text fails in seconds
        ds, calib_info = calibration_dataset(tokenizer, calib, spec["calibration_file"])
        # Packed sequences all have seq_len tokens: batches need no padding, and the order does
        # not change what GPTQ's Hessians or AWQ's statistics sum over.
        calib_info["batch_size"] = batch = calibration_batch(cuda=cuda)
        kwargs = {"dataset": ds, "max_seq_length": calib["seq_len"], "num_calibration_samples": len(ds),
                  "batch_size": batch, "shuffle_calibration_samples": False}
    model = AutoModelForCausalLM.from_pretrained(spec["source"], dtype="auto")
    saved_dtype = model.dtype
    # On a CPU, 16-bit matmuls run several times slower than float32 without native bf16 (AVX2):
    # calibrate in float32 there and save in the checkpoint's own dtype (see cpu_compat).
    calib_dtype = getattr(torch, calibration_dtype(str(saved_dtype).removeprefix("torch."),
                                                   calibrated=bool(spec.get("calibration")), cuda=cuda))
    if calib_dtype != saved_dtype:
        model = model.to(calib_dtype)
    if "group_size" in method:
        problem = check(linear_widths(model), method["group_size"])
        if problem:
            fail(problem, field="method.group_size")
    n_params = sum(p.numel() for p in model.parameters())
    patched = apply_cpu_compat()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    grid = awq_grid(cuda=cuda)
    oneshot(model=model, recipe=modifiers(method, awq_grid=grid), **kwargs)
    if calib_dtype != saved_dtype:
        compress_then_cast(model, calib_dtype, saved_dtype)
    model.save_pretrained(spec["out_dir"], save_compressed=True)
    tokenizer.save_pretrained(spec["out_dir"])
    result = {
        "seconds": round(time.time() - t0, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "versions": {"llmcompressor": llmcompressor.__version__, "compressed-tensors": compressed_tensors.__version__,
                     "transformers": transformers.__version__, "torch": torch.__version__},
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch_threads": torch.get_num_threads(),
        "calibration_dtype": str(calib_dtype).removeprefix("torch."),
        "saved_dtype": str(saved_dtype).removeprefix("torch."),
        "cpu_compat_patches": patched,
        "awq_n_grid": grid if method["kind"] == "awq" else None,
        "calibration": calib_info,
        "source_parameters": n_params,
    }
    if cuda:
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return result


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        result = main(json.load(f))
    print(json.dumps(result), flush=True)
