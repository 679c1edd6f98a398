"""A tiny, fast Llama with the reference's tokenizer, for timing checks where the model must be fast.

A timing client is tested hardest by a model that makes tokens faster than the client reads
them: a random-init Llama of 4 layers and width 256 decodes at hundreds of tokens per second on
2 cores, where the 30-layer reference makes about a hundred. The weights are random (seeded): the
text is nonsense, the speed is real. It is built with transformers in the compressor env, from
the reference's config (vocabulary, special tokens) and tokenizer, and converted to an f16 GGUF
with llama.cpp's own converter for llama-server.
"""

from __future__ import annotations

from pathlib import Path

from quantkit.builders.gguf_convert import convert_hf_to_gguf
from quantkit.envs.manager import python_for, runtime_env
from quantkit.envs.steps import run_logged

_BUILD = """
import json, shutil, sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

ref, out, layers, width = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rc = json.loads((ref / "config.json").read_text())
cfg = LlamaConfig(vocab_size=rc["vocab_size"], hidden_size=width, intermediate_size=2 * width,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=rc.get("max_position_embeddings", 8192),
                  rope_theta=rc.get("rope_theta", 10000.0), rms_norm_eps=rc.get("rms_norm_eps", 1e-5),
                  bos_token_id=rc.get("bos_token_id"), eos_token_id=rc.get("eos_token_id"),
                  pad_token_id=rc.get("pad_token_id"), tie_word_embeddings=True)
torch.manual_seed(0)
model = LlamaForCausalLM(cfg).to(torch.bfloat16)
model.save_pretrained(out)
AutoTokenizer.from_pretrained(ref).save_pretrained(out)
if (ref / "generation_config.json").exists():
    shutil.copy(ref / "generation_config.json", out / "generation_config.json")
print("built", sum(p.numel() for p in model.parameters()), "parameters")
"""


def build(reference_dir: Path, out_dir: Path, *, layers: int = 4, width: int = 256) -> tuple[Path, Path]:
    """(HF checkpoint dir, f16 GGUF file) of a seeded random-init Llama with the reference's tokenizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    hf = out_dir / f"llama-{layers}x{width}"
    log = out_dir / "build.log"
    run_logged([python_for("compressor"), "-c", _BUILD, reference_dir, hf, str(layers), str(width)], log,
               env=runtime_env("compressor"), what="tiny Llama build")
    gguf = convert_hf_to_gguf(hf, out_dir / f"llama-{layers}x{width}-f16.gguf", log)
    return hf, gguf
