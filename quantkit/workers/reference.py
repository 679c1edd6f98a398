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


# transformers' GGUF loader also writes the wrong special tokens: SmolLM2's GGUF says eos = 2
# (<|im_end|>), and so do the saved config.json and generation_config.json, but the saved
# tokenizer_config.json says eos_token <|im_start|> (id 1). llama.cpp's converter reads that file,
# so every GGUF built from the reference would stop on the wrong token. The GGUF's own metadata is
# the source of truth; no library restores it, so we write it back here.
_SPECIAL_IDS = {"bos_token": "tokenizer.ggml.bos_token_id", "eos_token": "tokenizer.ggml.eos_token_id",
                "pad_token": "tokenizer.ggml.padding_token_id", "unk_token": "tokenizer.ggml.unknown_token_id"}


def gguf_special_tokens(gguf_file: Path) -> dict[str, tuple[int, str]]:
    """{"eos_token": (id, text), ...} as the GGUF's metadata declares them."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_file))
    tokens = reader.fields["tokenizer.ggml.tokens"]
    found = {}
    for role, key in _SPECIAL_IDS.items():
        field = reader.fields.get(key)
        if field is None:
            continue
        tid = int(field.parts[-1][0])
        found[role] = (tid, bytes(tokens.parts[tokens.data[tid]]).decode("utf-8"))
    return found


def restore_special_tokens(out_dir: Path, special: dict[str, tuple[int, str]]) -> dict[str, str]:
    """Write the GGUF's bos/eos/pad/unk tokens into tokenizer_config.json and the model configs."""
    cfg_file = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    for role, (tid, text) in special.items():
        cfg[role] = text
        cfg[f"{role}_id"] = tid  # the loader also writes stale ids here (eos_token_id 1, pad_token_id null)
    cfg_file.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
    for name in ("config.json", "generation_config.json"):
        f = out_dir / name
        if not f.exists():
            continue
        data = json.loads(f.read_text(encoding="utf-8"))
        for role, (tid, _) in special.items():
            if role != "unk_token":
                data[role.replace("_token", "_token_id")] = tid
        f.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return {role: text for role, (_, text) in special.items()}


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
    special = restore_special_tokens(out_dir, gguf_special_tokens(gguf_file))

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
        "special_tokens": special,
        "eos_token_id": tok.eos_token_id,
        "check_prompt": "The capital of France is",
        "check_completion": completion,
    }


if __name__ == "__main__":
    result = convert(Path(sys.argv[1]), Path(sys.argv[2]))
    print(json.dumps(result), flush=True)
