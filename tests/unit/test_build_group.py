"""The build group (issue 12 item 4): what a build cost, from its manifest, through compare into the
leaderboard, with no engine started."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

from rich.console import Console

from quantkit import loader, paths, variants
from quantkit.evaluation import compare
from quantkit.evaluation.groups.run import CompareConfig, Inputs
from quantkit.results import report
from quantkit.results.exporters import get as exporter
from quantkit.results.store import Store


class NoExecutor:
    def start(self, target, label="run"):
        raise AssertionError("the build group must start no engine")


def _target(name: str, home):
    return SimpleNamespace(name=name, engine=SimpleNamespace(name="fake", serves_from_worker=False), kv_cache_type="f16",
                           settings=SimpleNamespace(model_dump=lambda: {"n_ctx": 64}), model_path=home)


def test_build_figures_come_from_the_manifest_and_reach_the_leaderboard(tmp_home, monkeypatch):
    folder = paths.variants_dir() / "v-int8"
    folder.mkdir(parents=True)
    variants.write_manifest(folder, {
        "name": "v-int8", "status": "complete", "source": {"spec": "default"}, "build_seconds": 106.4,
        "peak_memory_mib": 3120, "peak_gpu_memory_mib": 2210, "calibration_tokens": 8192,
        "built_on": {"hardware": "test box"}, "recipe": {"method": {"kind": "int8"}},
        "build_settings": {"device": "NVIDIA H100", "calibration_dtype": "bfloat16", "torch_threads": 16},
        "tool_versions": {"llmcompressor": "0.x"}, "finished": "2026-12-07T00:00:00"})
    monkeypatch.setattr(loader, "locate", lambda name: (name, tmp_home, "safetensors"))
    monkeypatch.setattr(loader, "load", lambda name, settings=None: _target(name, tmp_home))
    monkeypatch.setattr(compare, "reference_of", lambda name: "reference")
    monkeypatch.setattr(compare, "fingerprint", lambda: {"hardware": "test"})
    monkeypatch.setattr(compare, "model_identity", lambda name: {"model": name})
    monkeypatch.setattr(compare, "prepare_inputs", lambda cfg, ref=None: Inputs([], [], [], 0, [], [], 512, tmp_home))
    out = io.StringIO()
    store = compare.compare(["v-int8"], CompareConfig(groups=("build",)), store=Store(tmp_home / "r.sqlite"),
                            console=Console(file=out, width=200), executor=NoExecutor())
    figs = {(f.variant, f.metric): f for f in store.figures() if f.group == "build"}
    assert figs[("v-int8", "build_seconds")].value == 106.4
    assert figs[("v-int8", "build_peak_rss_mib")].value == 3120
    gpu = figs[("v-int8", "build_peak_gpu_mib")]
    assert gpu.value == 2210 and gpu.unit == "MiB" and gpu.conditions["device"] == "NVIDIA H100"
    assert figs[("v-int8", "calibration_tokens")].value == 8192
    ref = figs[("reference", "build_seconds")]
    assert ref.value is None and "not built" in ref.text  # stored, so a re-run does not measure it again
    assert "build" not in "".join(r for r in out.getvalue().splitlines() if "started in" in r)

    # a second compare finds everything stored
    out2 = io.StringIO()
    compare.compare(["v-int8"], CompareConfig(groups=("build",)), store=store, console=Console(file=out2, width=200),
                    executor=NoExecutor())
    assert out2.getvalue().count("every figure already measured") == 2

    rep = report.build(store)
    header = rep.sections[0].table.header()
    assert {"build s", "build peak RSS MiB", "build peak GPU MiB", "calibration tokens"} <= set(header)
    md = exporter("md").render(rep)
    assert "2210" in md and "3120" in md


def test_a_cpu_build_records_no_gpu_figure(tmp_home):
    from quantkit.evaluation.groups.build import BuildGroup

    folder = paths.variants_dir() / "v-q4"
    folder.mkdir(parents=True)
    (folder / variants.MANIFEST).write_text(json.dumps({"name": "v-q4", "status": "complete", "build_seconds": 12.0,
                                                         "peak_memory_mib": 900}))
    run = SimpleNamespace(target=_target("v-q4", tmp_home), is_reference=False,
                          fig=lambda g, m, v, u, n, unit, **kw: SimpleNamespace(metric=m, value=v, unit=unit, **kw))
    figs = {f.metric: f for f in BuildGroup().measure(run)}
    assert set(figs) == {"build_seconds", "build_peak_rss_mib"}
    assert figs["build_seconds"].conditions["device"] == "cpu"
