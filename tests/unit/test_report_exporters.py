"""The typed report's cells, the exporter registry (a dummy exporter registered from this file
alone reaches the CLI), and the HTML page's structure (the browser test is
tests/integration/test_html_leaderboard.py)."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest

# tests/unit is on sys.path (pytest's prepend import mode)
from test_report_golden import build
from typer.testing import CliRunner

from quantkit.results import exporters, report
from quantkit.results.report import Report
from quantkit.results.store import Store


class DummyExporter:
    """A test-only format: one line per section and row, the KLD cell's value and marks."""
    name = "dummy"
    suffix = ".txt"
    description = "test-only: one line per row"

    def render(self, rep: Report) -> str:
        lines = []
        for s in rep.sections:
            col = s.table.header().index("KLD mean")
            for r in s.table.rows:
                c = r.cells[col]
                lines.append(f"{s.reference} {r.variant} {c.value} tie={c.tie} floors={','.join(c.floors)}")
        return "\n".join(lines)


@pytest.fixture
def store(tmp_path):
    s = build(tmp_path / "g.sqlite")
    yield s
    s.close()


@pytest.fixture
def dummy():
    exporters.register("dummy", f"{__name__}:DummyExporter")  # lazy, by "module:attr", like the built-ins
    yield
    exporters.unregister("dummy")


def test_cells_hold_values_and_marks_not_strings(store):
    rep = report.build(store)
    ref = rep.sections[0]
    assert [s.reference for s in rep.sections] == ["reference", "reference:Qwen/Qwen2.5-0.5B-Instruct"]
    header = ref.table.header()
    row = {r.variant: dict(zip(header, r.cells)) for r in ref.table.rows}
    q8 = row["q8"]
    assert (q8["KLD mean"].value, q8["KLD mean"].uncertainty, q8["KLD mean"].floors) == (0.0104, 0.0003, ("≤E",))
    assert q8["arc_easy acc"].tie and q8["arc_easy acc"].flips == report.Flips(8, 3, 0.2266)
    assert q8["tok/s (offline)"].comparable is False and not q8["tok/s (offline)"].tie
    assert q8["KLD mean"].figure is not None and q8["KLD mean"].figure.conditions == {"setup": "s"}
    assert row["int8"]["KLD mean"].floors == ("≤N",) and row["int8"]["PPL"].tie  # the paired ratio decides
    assert not row["awq"]["PPL"].tie  # 20.4 ± 0.5 vs 20.0 ± 0.5, but the paired ratio 1.02 ± 0.005 is not 1
    nf4 = row["nf4"]["KLD mean"]
    assert nf4.missing and nf4.failed and nf4.reason.startswith("cannot load: smollm2-bnb-nf4")
    assert row["q2x"]["KLD vs own engine base"].failed
    assert row["q5"]["tok/s (offline)"].reason == "not reported" and not row["q5"]["tok/s (offline)"].failed
    assert row["q4"]["top-1 agree"].reason is None and row["awq"]["top-1 agree"].reason == "not measured"
    assert [r.reference for r in ref.table.rows][:2] == [True, False]
    assert ref.overlapping == [("f16", "q8"), ("q4", "q5")]
    assert ref.floors.noise is not None and ref.floors.engine["llamacpp"].variant == "f16"


def test_the_registry_lists_the_builtin_formats_lazily():
    assert exporters.names()[:4] == ["md", "csv", "json", "html"]
    assert all(isinstance(t, str) for t in exporters.BUILTIN.values())  # "module:attr", imported on use
    assert exporters.get("html").suffix == ".html"
    with pytest.raises(KeyError, match="choose one of: md, csv, json, html"):
        exporters.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        exporters.register("md", DummyExporter)


def test_a_dummy_exporter_registered_from_the_tests_reaches_the_cli(store, dummy, tmp_path):
    from quantkit.cli import app

    assert "dummy" in exporters.names()
    runner = CliRunner()
    listed = runner.invoke(app, ["leaderboard", "--formats"])
    assert listed.exit_code == 0 and "dummy\t.txt\ttest-only: one line per row" in listed.output
    out = tmp_path / "lb.txt"
    done = runner.invoke(app, ["leaderboard", "--format", "dummy", "--db", str(store.path), "--out", str(out)])
    assert done.exit_code == 0, done.output
    lines = out.read_text().splitlines()
    assert "reference q8 0.0104 tie=False floors=≤E" in lines and "reference int8 2e-05 tie=False floors=≤N" in lines
    bad = runner.invoke(app, ["leaderboard", "--format", "nope", "--db", str(store.path)])
    assert bad.exit_code == 2 and "md, csv, json, html, dummy" in bad.output


def test_an_exporter_instance_registers_too(store):
    exporters.register("dummy2", DummyExporter())
    try:
        assert exporters.export(store, "dummy2").startswith("reference reference 0.0")
    finally:
        exporters.unregister("dummy2")
    assert "dummy2" not in exporters.names()


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: dict[str, str] = {}
        self._script: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        self._script = a.get("id") if tag == "script" else None

    def handle_data(self, data):
        if self._script:
            self.scripts[self._script] = self.scripts.get(self._script, "") + data


def test_the_html_page_is_self_contained_and_styles_what_the_report_marks(store):
    page = exporters.export(store, "html")
    p = _Page()
    p.feed(page)
    # nothing to fetch: no src anywhere, the one <link> is the empty data: favicon, no CSS imports
    assert not [t for t, a in p.tags if "src" in a]
    assert [a["href"] for t, a in p.tags if t == "link"] == ["data:,"]
    assert "@import" not in page and "url(http" not in page
    assert not [a["href"] for t, a in p.tags if t == "a" and not a["href"].startswith("#")]
    tables = [a for t, a in p.tags if t == "table" and "sortable" in a.get("class", "")]
    assert {"board-0", "board-1", "fidelity-0", "sweep"} <= {a["id"] for a in tables}
    classes = [set(a.get("class", "").split()) for t, a in p.tags if t == "td"]
    for cls in ("tie", "incomparable", "floor", "failed", "missing"):
        assert any(cls in c for c in classes), cls
    assert page.count("<svg") == 3 and page.count('class="qk-point"') == 3 + 2 + 6
    assert "q8\narc_easy accuracy: 0.45 ± 0.05\nsize MiB: 136.4" in page  # a point's hover text
    figures = json.loads(p.scripts["qk-figures"])
    fps = json.loads(p.scripts["qk-fingerprints"])
    fig_refs = [int(a["data-fig"]) for t, a in p.tags if "data-fig" in a]
    assert fig_refs and max(fig_refs) < len(figures) and all(f["fingerprint"] in fps for f in figures)
    assert fps["fp1"]["hardware"] == "test cpu (4 cores)"
    titles = [a["title"] for t, a in p.tags if t == "td" and "data-fig" in a and "fig" in a.get("class", "")]
    assert any('conditions: {"setup": "t"}' in t and "fingerprint: fp1" in t for t in titles)
    reasons = [a for t, a in p.tags if t == "li" and a.get("id", "").startswith("board-0-note")]
    assert len(reasons) == 3  # the long reasons, once each, as in the markdown
    assert "<script>alert" not in exporters.export(_with_hostile_text(store), "html")


def _with_hostile_text(store: Store) -> Store:
    from quantkit.results.store import Figure

    store.put("x", [Figure("<script>alert(1)</script>", "vllm", "fidelity", "failed", status="failed",
                           reason="</script><script>alert(2)</script>")])
    return store


def test_the_json_script_cannot_close_its_tag(store):
    _with_hostile_text(store)
    page = exporters.export(store, "html")
    assert page.count("</script>") == 3  # the two JSON blocks and the page's script, nothing injected


def test_a_new_group_and_engine_show_up_without_changes_to_the_report(tmp_path):
    """A group the leaderboard has no column for (here `energy`, as a plugin group would store it)
    gets one column per metric; an engine it has never heard of gets its rows; the reference's
    own engine, whatever it is, is the one without an engine floor."""
    from quantkit.results.store import Figure

    s = Store(tmp_path / "e.sqlite")
    fig = dict(n=10, conditions={"setup": "e"})
    s.put("r", [Figure("reference", "dummy-engine", "fidelity", "kld_mean", 0.0, 0.0, **fig),
                Figure("reference", "dummy-engine", "energy", "joules_per_token", 0.52, 0.01, unit="J", **fig)])
    s.put("v", [Figure("v", "dummy-engine", "fidelity", "kld_mean", 0.01, 0.001, **fig),
                Figure("v", "dummy-engine", "energy", "joules_per_token", 0.31, 0.01, unit="J", **fig),
                Figure("v", "dummy-engine", "energy", "joules_per_token:per_doc", None, text="{}", **fig)])
    s.put("w", [Figure("w", "vllm", "energy", "failed", status="failed", reason="no power meter")])
    rep = report.build(s)
    header = rep.sections[0].table.header()
    assert "energy joules_per_token" in header and not any("per_doc" in h for h in header)
    row = {r.variant: dict(zip(header, r.cells)) for r in rep.sections[0].table.rows}
    assert row["v"]["energy joules_per_token"].value == 0.31 and row["v"]["energy joules_per_token"].unit == "J"
    assert row["w"]["energy joules_per_token"].failed and row["w"]["energy joules_per_token"].reason == "no power meter"
    assert row["v"][report.FLOOR_COLUMN].parts[0].label == "0 (same engine)"  # the reference's engine
    assert row["w"][report.FLOOR_COLUMN].missing  # vllm did not score this reference
    md = exporters.export(rep, "md")
    assert "| v | dummy-engine | ? |" in md and "0.31 ± 0.01" in md
    data = json.loads(exporters.export(rep, "json"))
    cells = dict(zip(header, data["sections"][0]["table"]["rows"][1]["cells"]))
    assert cells["energy joules_per_token"]["value"] == 0.31 and cells["KLD mean"]["text"] == "0.0100 ± 0.0010"


def test_stage_times_get_their_own_table_never_leaderboard_columns(tmp_path):
    """compare's clock (group "stages", H3's StageClock) is this machine's wall time, not a model
    property: a table of its own, out of the main table and the notes; an unknown group's
    conditions are in the notes."""
    from quantkit.results.store import Figure

    s = Store(tmp_path / "st.sqlite")
    cond = {"compared_with": "reference", "outcome": "ok", "run": "r1", "ran_before": []}
    s.put("r", [Figure("reference", "vllm", "fidelity", "kld_mean", 0.0, 0.0, 10, conditions={"setup": "a"}),
                Figure("reference", "vllm", "energy", "joules_per_token", 0.5, 0.01, 10, conditions={"meter": "rapl"})])
    s.put("st-r", [Figure("reference", "vllm", "stages", "start:worker", 41.2, None, 1, "s", conditions=cond),
                   Figure("reference", "vllm", "stages", "group:fidelity", 120.5, None, 1, "s", conditions=cond)])
    s.put("st-q", [Figure("q4", "llamacpp", "stages", "start:worker", 3.0, None, 1, "s", conditions=cond),
                   Figure("q4", "llamacpp", "stages", "group:fidelity", 7.5, None, 1, "s",
                          conditions={**cond, "outcome": "failed"})])
    rep = report.build(s)
    assert not any("stages" in c.group or "start:" in c.title for c in rep.sections[0].table.columns)
    assert rep.stages.header() == ["variant", "engine", "start:worker s", "group:fidelity s"]
    md = exporters.export(rep, "md")
    assert "| reference | vllm | 41.2 | 120.5 |" in md and "| q4 | llamacpp | 3.0 | 7.5 (failed) |" in md
    assert not any(line.startswith("- stages:") for line in md.splitlines())
    assert '- energy: n=10; {"meter": "rapl"}' in md
    page = exporters.export(rep, "html")
    assert 'id="stages"' in page and "7.5 (failed)" in page


def test_the_kv_column_names_no_engine_and_the_notes_say_what_each_engine_reports(tmp_path):
    from quantkit.results.store import Figure

    s = Store(tmp_path / "kv.sqlite")
    s.put("a", [Figure("reference", "vllm", "memory", "kv_capacity_tokens", 65536, None, 1,
                       conditions={"kv_capacity": "vLLM start-up log"})])
    s.put("b", [Figure("q4", "llamacpp", "memory", "kv_capacity_tokens", 4096, None, 1,
                       conditions={"kv_capacity": "llama.cpp n_ctx (allocated up front)"})])
    md = exporters.export(s, "md")
    assert "| KV tokens |" in md and "vLLM:" not in md.split("## Conditions")[0]
    assert ("- KV tokens: the KV cache capacity each engine reports, from llamacpp: llama.cpp n_ctx (allocated "
            "up front); vllm: vLLM start-up log") in md
