"""Packed calibration: exactly `samples` sequences of `seq_len` tokens of the reference tokenizer.

One LAMBADA passage is about 80 tokens, so "32 samples of 256 tokens" taken one passage per sample
calibrated on about 2.6k tokens, not 8k. As llm-compressor's examples (`concatenate_data`) and
`llama-imatrix` (its `-c` chunks) do, the passages are joined with a separator, tokenized as one
text and cut into full sequences; the remainder is dropped. No library packs token ids for both
llm-compressor and llama-imatrix with the reference tokenizer, so this module does.

Runs in the core venv (the pure functions, for tests) and in the `compressor` env (tokenizing):
  python -m quantkit.calibration TOKENIZER_DIR PASSAGES_JSONL SAMPLES SEQ_LEN OUT_TEXT
writes the text that tokenizes to at least SAMPLES x SEQ_LEN tokens (for llama-imatrix, which
tokenizes and chunks itself) and prints one JSON line with what it packed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence

SEPARATOR = "\n\n"  # the same joiner compare uses for its fidelity text
# Bump when packing changes what a build calibrates on: builds record it (manifest
# "calibration.packing") so a build made with other packing is not taken for this one.
PACKING = "packed-v1"
# `calibration.packing: passages`: one passage per sequence, cut at seq_len (llm-compressor's own
# loading, and quantkit's before packing); kept to measure what packing changes
PASSAGES = "passages-v1"


class CalibrationShortError(ValueError):
    """The data set cannot fill samples x seq_len tokens."""


def pack(ids: Sequence[int], samples: int, seq_len: int) -> list[list[int]]:
    """Cut one token stream into exactly `samples` sequences of `seq_len` tokens (the rest is dropped)."""
    if samples < 1 or seq_len < 1:
        raise ValueError(f"samples and seq_len must be positive, got {samples} and {seq_len}")
    need = samples * seq_len
    if len(ids) < need:
        raise CalibrationShortError(f"{len(ids)} tokens cannot fill {samples} x {seq_len} = {need}")
    return [list(ids[i * seq_len:(i + 1) * seq_len]) for i in range(samples)]


def per_passage(encode: Callable[[str], list[int]], texts: Sequence[str], samples: int,
                seq_len: int) -> tuple[list[list[int]], int]:
    """One sequence per passage, the first `samples` non-empty passages, each cut at `seq_len`
    tokens (no packing: a short passage stays short). Returns (sequences, passages used)."""
    seqs: list[list[int]] = []
    used = 0
    for text in texts:
        if len(seqs) == samples:
            break
        used += 1
        ids = encode(text)[:seq_len]
        if ids:
            seqs.append(ids)
    if len(seqs) < samples:
        raise CalibrationShortError(f"{len(texts)} passages give {len(seqs)} non-empty sequences, fewer than "
                                    f"samples = {samples}")
    return seqs, used


def pack_texts(encode: Callable[[str], list[int]], texts: Sequence[str], samples: int, seq_len: int,
               *, separator: str = SEPARATOR, spare_tokens: int = 0) -> tuple[list[list[int]], int, str]:
    """Join the first passages of `texts` that hold samples x seq_len (+ spare) tokens, tokenize the
    joined text once with `encode` (no special tokens) and pack it.

    Returns (sequences, passages used, the joined text). Passages are added until the joined text
    is long enough: per-passage counts only estimate it (tokens can merge across the separator),
    so the joined text is re-tokenized until it holds enough.
    """
    need = samples * seq_len + spare_tokens
    sep_len = len(encode(separator))
    n, estimate = 0, 0
    while True:
        while estimate < need and n < len(texts):
            estimate += len(encode(texts[n])) + sep_len
            n += 1
        joined = separator.join(texts[:n])
        ids = encode(joined)
        if len(ids) >= need:
            return pack(ids, samples, seq_len), n, joined
        if n >= len(texts):
            raise CalibrationShortError(
                f"{len(texts)} passages tokenize to {len(ids)} tokens, fewer than samples x seq_len "
                f"= {samples} x {seq_len}{f' + {spare_tokens}' if spare_tokens else ''} = {need}")
        estimate = len(ids)  # short by a few merged tokens: add passages beyond the estimate


def hf_encoder(tokenizer_dir: str) -> Callable[[str], list[int]]:
    """The reference tokenizer's encoder, without BOS/EOS (calibration text, as the examples do)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return lambda text: list(tok(text, add_special_tokens=False)["input_ids"])


def read_passages(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def main(argv: list[str]) -> dict:
    tokenizer_dir, passages_file, samples, seq_len, out_text = argv
    # one spare sequence: llama-imatrix re-tokenizes the text and must still find `samples` chunks
    seqs, used, text = pack_texts(hf_encoder(tokenizer_dir), read_passages(passages_file), int(samples),
                                  int(seq_len), spare_tokens=int(seq_len))
    with open(out_text, "w", encoding="utf-8") as f:
        f.write(text)
    return {"sequences": len(seqs), "seq_len": int(seq_len), "tokens": sum(map(len, seqs)),
            "passages_used": used, "separator": SEPARATOR, "packing": PACKING}


if __name__ == "__main__":
    try:
        result = main(sys.argv[1:])
    except CalibrationShortError as e:
        from quantkit.workers.contract import fail

        fail(str(e), field="calibration")
    print(json.dumps(result), flush=True)
