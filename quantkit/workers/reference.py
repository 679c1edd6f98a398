"""Turn the embedded GGUF into a bf16 Hugging Face checkpoint. Runs inside the `compressor` env.

Usage: python -m quantkit.workers.reference GGUF_FILE OUT_DIR

transformers dequantizes the GGUF on load; `save_pretrained` refuses while the model is marked as
GGUF-quantized, so the quantizer marks are cleared first (see shared ENGINE_NOTES). Prints one
JSON line with what it did on stdout.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


# transformers' GGUF loader rebuilds a "gpt2"-model tokenizer with a SentencePiece-style decoder
# (ByteFallback, "▁" -> " ") and without the per-digit split of the original pre-tokenizer. That
# checkpoint then misleads llama.cpp's converter into a "llama" vocabulary whose tokenizer aborts.
# No library restores it, so we write back the pre-tokenizer and decoder that match the GGUF's
# declared pre-tokenizer (llama.cpp `smollm` = StarCoder-style: single digits, then byte-level).
_BYTE_LEVEL_FIXES = {
    "smollm": {
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    },
}


def _gguf_pre_tokenizer(gguf_file: Path) -> str | None:
    import gguf

    field = gguf.GGUFReader(str(gguf_file)).fields.get("tokenizer.ggml.pre")
    return bytes(field.parts[-1]).decode() if field is not None else None


def repair_tokenizer(out_dir: Path, pre: str | None) -> str | None:
    fix = _BYTE_LEVEL_FIXES.get(pre or "")
    if fix is None:
        return None
    tok_file = out_dir / "tokenizer.json"
    data = json.loads(tok_file.read_text(encoding="utf-8"))
    data.update(fix)
    tok_file.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    cfg_file = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    cfg["clean_up_tokenization_spaces"] = False
    cfg_file.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return pre


def convert(gguf_file: Path, out_dir: Path) -> dict:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    src_dir, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.bfloat16)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    repaired = repair_tokenizer(out_dir, _gguf_pre_tokenizer(gguf_file))

    # Sanity check the saved checkpoint the way a user would: greedy, from disk.
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(out_dir)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        gen = reloaded.generate(**ids, max_new_tokens=8, do_sample=False)
    completion = tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    n_params = sum(p.numel() for p in reloaded.parameters())
    return {
        "seconds": round(time.time() - t0, 1),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "parameters": n_params,
        "architecture": reloaded.config.architectures[0] if reloaded.config.architectures else None,
        "has_chat_template": bool(tok.chat_template),
        "tokenizer_repaired_for": repaired,
        "check_prompt": "The capital of France is",
        "check_completion": completion,
    }


if __name__ == "__main__":
    result = convert(Path(sys.argv[1]), Path(sys.argv[2]))
    print(json.dumps(result), flush=True)
