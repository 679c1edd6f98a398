"""Issue 5: compare is resumable after a kill, and the leaderboard orders fidelity as bits do."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quantkit import builders, paths
from quantkit.recipes import load_recipe
from quantkit.results import leaderboard
from quantkit.results.store import Store

VARIANTS = {"f16": "smollm2-gguf-f16", "q8_0": "smollm2-gguf-q8_0", "q4_k_m": "smollm2-gguf-q4_k_m",
            "q2_k": "smollm2-gguf-q2_k"}


@pytest.fixture(scope="module")
def gguf_variants(reference):
    for q in VARIANTS:
        builders.build(load_recipe(paths.recipes_dir() / f"smollm2_gguf_{q}.yaml"))
    return list(VARIANTS.values())


STARTED: dict[str, float] = {}  # when finished_db's first compare began (engine logs after it are its own)


def _compare(db, names, extra=()):
    return subprocess.Popen([sys.executable, "-m", "quantkit.cli", "compare", *names, "--quick", "--db", str(db),
                             "--tasks", "arc_easy", "--limit", "8", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _ok_rows(db) -> list[tuple]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as c:
        return c.execute("SELECT key, variant, grp, metric, measured_at FROM figures WHERE status='ok' ORDER BY id").fetchall()


@pytest.fixture(scope="module")
def finished_db(gguf_variants, tmp_path_factory):
    """A compare killed halfway (SIGKILL, whole process group), then run again to completion."""
    db = tmp_path_factory.mktemp("results") / "r.sqlite"
    STARTED["at"] = time.time() - 1  # log names carry whole seconds
    proc = _compare(db, gguf_variants)
    deadline = time.time() + 900
    while time.time() < deadline and len({r[1] for r in _ok_rows(db)}) < 2:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _ok_rows(db)
    assert before, "nothing was measured before the kill"
    again = _compare(db, gguf_variants)
    out, _ = again.communicate(timeout=1800)
    assert again.returncode == 0, out
    after = _ok_rows(db)
    kept = {r[0]: r[4] for r in after}
    for key, _, _, _, measured_at in before:  # every figure measured before the kill survives untouched
        assert kept.get(key) == measured_at
    assert "every figure already measured" in out or "reference" in out
    return db, before, out


def test_compare_resumes_after_a_kill_without_losing_figures(finished_db):
    db, before, out = finished_db
    groups = {(r[1], r[2]) for r in _ok_rows(db)}
    for name in ["reference", *VARIANTS.values()]:
        for g in ("fidelity", "probes", "speed", "memory", "tasks"):
            assert (name, g) in groups, (name, g, out)
    assert ("reference", "fidelity") in {(r[1], r[2]) for r in before}


def test_stage_times_and_what_ran_before_each_figure_are_stored(finished_db):
    """Issue 13 item 7: compare prints and stores the wall time of each engine start and group;
    every figure records what ran before it in its engine process; the roofline's decode rate is
    1 / TPOT at concurrency 1 (issue 11: groups are registered classes, compare orchestrates)."""
    db, _, out = finished_db
    figs = Store(db).figures()
    stages = {(f.variant, f.metric): f for f in figs if f.group == "stages"}
    for name in ["reference", *VARIANTS.values()]:
        assert any(v == name and m.startswith("group:") for v, m in stages), (name, sorted(stages))
    assert all(f.value > 0 and f.unit == "s" for f in stages.values())
    # llama.cpp: its worker and llama-server; vLLM (the reference): one process, its worker serving HTTP
    assert any(m == "start:worker" for _, m in stages) and any(m == "start:server" for _, m in stages)
    assert {m for v, m in stages if v == "reference" and m.startswith("start:")} == {"start:worker+server"}
    assert "compare: stage times" in out and "started in" in out
    for f in figs:
        if f.status != "ok" or f.group == "stages":
            continue
        assert isinstance(f.conditions.get("ran_before"), list), (f.variant, f.group, f.metric)
        if f.group == "memory":  # the groups of its own engine process before it
            assert f.conditions["ran_before"] == f.conditions["peak_after_groups"]
            assert ("serving" in f.conditions["ran_before"]) == (f.engine == "vllm"), (f.variant, f.conditions)
        if f.group == "serving":
            assert f.conditions["ran_before"] == []  # first in its engine process
    roof = [f for f in figs if f.group == "roofline"]
    assert roof, "no roofline figures"
    for f in roof:
        if f.status == "ok":
            assert "TPOT" in f.conditions["decode_rate"]
            assert f.metric != "fraction_of_bound" or 0 < f.value <= 1
        else:
            assert f.reason, f


def test_one_vllm_engine_start_per_model_from_the_engine_logs(finished_db):
    """Issue 13 item 2: the reference on vLLM is measured (serving sweep included) by one engine
    process, started once per compare run: each of its worker logs shows one engine initialisation
    and vLLM's OpenAI app starting in it, and no separate vLLM server was started."""
    db, _, out = finished_db
    logs = [p for p in (paths.cache_dir() / "logs").glob("*-vllm-reference-compare.log")
            if p.stat().st_mtime >= STARTED["at"]]
    assert logs, "no vLLM worker log of this test's compare runs"
    served = 0
    for log in logs:
        text = log.read_text(errors="replace")
        assert text.count("Initializing a V1 LLM engine") == 1, log
        served += text.count("Application startup complete")
    assert served >= 1, "vLLM's OpenAI app never started inside the worker"
    assert not [p for p in (paths.cache_dir() / "logs").glob("*-serve-vllm-reference-*.log")
                if p.stat().st_mtime >= STARTED["at"]], "a separate vLLM server was started"
    serving = [f for f in Store(db).figures() if f.variant == "reference" and f.group == "serving" and f.status == "ok"]
    assert serving and all("served by quantkit's worker" in f.conditions["server"] for f in serving)


def test_kl_divergence_orders_as_bits_per_weight_and_reference_is_zero(finished_db):
    store = Store(finished_db[0])
    kld = {f.variant: f.value for f in store.figures() if f.metric == "kld_mean"}
    assert kld["reference"] == 0.0
    # f16 holds the reference's weights exactly: what is left is llama.cpp-vs-vLLM arithmetic
    assert kld[VARIANTS["f16"]] < kld[VARIANTS["q8_0"]] < kld[VARIANTS["q4_k_m"]] < kld[VARIANTS["q2_k"]], kld
    top1 = {f.variant: f.value for f in store.figures() if f.metric == "top1_agreement"}
    assert top1["reference"] == 1.0 and top1[VARIANTS["q2_k"]] < top1[VARIANTS["q8_0"]]


def test_fidelity_against_the_reference_and_the_own_engine_base_with_floors(finished_db):
    """Issue 9: every GGUF variant is scored against the reference and against the f16 GGUF on
    llama.cpp; the f16 GGUF's own divergence is the engine floor, the reference re-scored with
    another batch composition the noise floor."""
    store = Store(finished_db[0])
    fid = {(f.variant, f.metric): f for f in store.figures() if f.group == "fidelity" and f.status == "ok"}
    noise, engine_floor = fid[("reference", "noise_kld_mean")], fid[(VARIANTS["f16"], "kld_mean")]
    assert 0.0 <= noise.value < engine_floor.value, (noise.value, engine_floor.value)
    assert engine_floor.conditions["role"] == "engine baseline of llamacpp"
    assert fid[(VARIANTS["f16"], "base_kld_mean")].value == 0.0  # itself, by construction
    damage = []
    for q in ("q8_0", "q4_k_m", "q2_k"):
        base, ref = fid[(VARIANTS[q], "base_kld_mean")], fid[(VARIANTS[q], "kld_mean")]
        assert base.conditions["baseline"] == f"{VARIANTS['f16']} on llamacpp" and base.n == ref.n
        assert base.conditions["top_k"] == 4096 and 0 < base.conditions["baseline_tail_mass_mean"] < 0.05
        damage.append(base.value)
    assert damage[0] < damage[1] < damage[2], damage
    fl = leaderboard.floors(store)
    assert fl["noise"].value == noise.value and fl["engine"]["llamacpp"].variant == VARIANTS["f16"]
    header, _ = leaderboard.table(store)
    assert "KLD vs own engine base" in header and leaderboard.FLOOR_COLUMN in header
    assert "KLD floors: noise floor" in leaderboard.to_markdown(store)


def test_accuracy_flips_against_the_reference_per_question(finished_db):
    store = Store(finished_db[0])
    figs = {(f.variant, f.metric): f for f in store.figures()
            if f.group == "tasks" and f.params == {"task": "arc_easy"} and f.status == "ok"}
    ref = json.loads(figs[("reference", "acc:per_doc")].text)
    assert len(ref) == 8 and ("reference", "acc:lost") not in figs
    for v in VARIANTS.values():
        per = json.loads(figs[(v, "acc:per_doc")].text)
        assert figs[(v, "acc:lost")].value == sum(1 for d in per if ref[d] == 1.0 and per[d] == 0.0)
        assert figs[(v, "acc:gained")].value == sum(1 for d in per if ref[d] == 0.0 and per[d] == 1.0)
        assert 0.0 < figs[(v, "acc:mcnemar_p")].value <= 1.0 and figs[(v, "acc:lost")].n == 8


def test_every_leaderboard_cell_is_a_figure_or_a_reason(finished_db):
    store = Store(finished_db[0])
    _, rows = leaderboard.table(store)
    assert rows[0][0] == "reference" and len(rows) == 1 + len(VARIANTS)
    for row in rows:
        for cell in row[3:]:
            assert cell and (cell[0].isdigit() or cell.startswith(("≈", "n/a (", "-"))), (row[0], cell)
    md = leaderboard.to_markdown(store)
    for line in md.split("## Probe generations")[0].splitlines()[4:]:  # table rows: every n/a has its reason
        if line.startswith("| "):
            assert all(c.strip() != "n/a" for c in line.split("|")), line
    assert "### singapore" in md and "## Conditions" in md
    data = json.loads(leaderboard.to_json(store))
    assert {r[0] for r in data["table"]["rows"]} == {"reference", *VARIANTS.values()}


def test_task_accuracy_comes_with_stderr_and_sample_size(finished_db):
    store = Store(finished_db[0])
    accs = [f for f in store.figures() if f.group == "tasks" and f.params == {"task": "arc_easy"} and f.metric == "acc"]
    assert len(accs) == 1 + len(VARIANTS)
    for f in accs:
        assert 0.0 <= f.value <= 1.0 and f.uncertainty is not None and f.n == 8


def test_temperature_sweep_adds_only_its_group_and_sampling_is_seeded(finished_db):
    """A second compare with --temperatures measures only the sweep (the rest is stored), on both engines."""
    db = finished_db[0]
    before = {r[0] for r in _ok_rows(db)}
    q8 = VARIANTS["q8_0"]
    run = _compare(db, [q8], ("--temperatures", "0,1.0", "--samples", "3", "--sweep-problems", "4"))
    out, _ = run.communicate(timeout=1800)
    assert run.returncode == 0, out
    new = [r for r in _ok_rows(db) if r[0] not in before]
    # every compare run stores its own stage times; nothing else is measured again
    assert {r[2] for r in new} - {"stages"} == {"sweep"}, out
    figs = {(f.variant, f.metric, f.params["temperature"]): f for f in Store(db).figures() if f.group == "sweep"}
    baseline = VARIANTS["f16"]  # llama.cpp's full-precision baseline is measured with the variants it anchors
    for name in ("reference", baseline, q8):
        for metric in (("accuracy", 0), ("diversity", 0), ("accuracy", 1), ("diversity", 1)):
            f = figs[(name, *metric)]
            assert f.n == 4 and 0.0 <= f.value <= 1.0 and f.uncertainty is not None, (name, metric)
            assert f.conditions["samples_per_problem"] == 3 and f.conditions["seed"] == 0
        assert figs[(name, "diversity", 0)].value == 0.0  # greedy samples are one sample
        # seeds differ per sample (seed + i): three 256-token samples at T=1 from a 135M model differ
        assert figs[(name, "diversity", 1)].value > 0.0, name
    sh, rows = leaderboard.sweep_table(Store(db))
    assert sh == ["variant", "T=0 acc / diversity", "T=1 acc / diversity"]
    assert [r[0] for r in rows] == ["reference", baseline, q8]


def test_seeded_samples_repeat_exactly_on_llama_cpp(gguf_variants):
    from quantkit import loader, prompts, sources
    from quantkit.execution.local import LocalExecutor

    target = loader.load(VARIANTS["q8_0"], settings={"n_ctx": 512})
    [rendered] = prompts.render(Path(sources.resolve("default").location), [prompts.chat("Tell me about cats.")])
    prompt = [list(rendered.token_ids)]
    with LocalExecutor().start(target, label="test") as w:
        a = w.call("generate", prompts=prompt, temperature=1.0, max_tokens=24, seed=7, n=2)
        b = w.call("generate", prompts=prompt, temperature=1.0, max_tokens=24, seed=7, n=2)
        c = w.call("generate", prompts=prompt, temperature=1.0, max_tokens=24, seed=8, n=1)
    assert a == b
    assert a[0][1]["token_ids"] == c[0][0]["token_ids"]  # sample i is seeded with seed + i
    assert a[0][0]["token_ids"] != a[0][1]["token_ids"]
