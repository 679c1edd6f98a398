"""Measurement groups as registered classes (issue 11 item 2), stage times (issue 13 item 7) and the
roofline from TPOT: a dummy group registered from this test alone (no file under quantkit/ knows
it) runs through compare, is keyed by its conditions, and records what ran before it."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from quantkit import loader
from quantkit.errors import ConfigError
from quantkit.evaluation import compare, groups
from quantkit.evaluation.groups import Group
from quantkit.evaluation.groups.run import CompareConfig, Inputs
from quantkit.results.store import Store


class DummyGroup(Group):
    """Asks the worker one question; its key holds the configuration's seed."""

    name = "dummy"
    needs = "worker"
    order = 1

    def conditions(self, cfg, inputs):
        return {"seed": cfg.seed, "question": "answer"}

    def measure(self, run):
        return [run.fig("dummy", "answer", float(run.worker.call("answer")), None, 1, "widgets",
                        conditions={"asked": "answer", "history_seen": list(run.history)})]


class AfterDummy(Group):
    name = "dummy_after"
    order = 2

    def conditions(self, cfg, inputs):
        return {}

    def measure(self, run):
        assert run.history == ["dummy"], run.history  # what ran before it, never itself
        raise RuntimeError("this group always fails")


class NoConditions(Group):  # forgets its conditions: must never be measured (nor registered)
    name = "forgetful"

    def measure(self, run):
        return []


class FakeWorker:
    alive = True
    log_path = Path("/dev/null")

    def __init__(self, starts):
        starts.append(self)
        self.calls = []

    def call(self, op, **args):
        self.calls.append(op)
        return {"info": {"load_seconds": 0.25}, "answer": 42}[op]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


class FakeExecutor:
    def __init__(self):
        self.starts = []

    def start(self, target, label="run"):
        return FakeWorker(self.starts)


@pytest.fixture
def dummy_groups():
    groups.register("dummy", f"{__name__}:DummyGroup")  # lazily, by "module:Class"
    groups.register("dummy_after", AfterDummy)  # or the class itself
    yield
    groups.unregister("dummy")
    groups.unregister("dummy_after")


@pytest.fixture
def fake_models(tmp_home, monkeypatch):
    """compare with no engine: the reference 'loads' as a fake target; inputs are empty."""
    target = SimpleNamespace(name="reference", engine=SimpleNamespace(name="fake", serves_from_worker=False),
                             kv_cache_type="f16",
                             settings=SimpleNamespace(model_dump=lambda: {"n_ctx": 64}), model_path=tmp_home)
    monkeypatch.setattr(loader, "locate", lambda name: (name, tmp_home, "safetensors"))
    monkeypatch.setattr(loader, "load", lambda name, settings=None: target)
    monkeypatch.setattr(compare, "fingerprint", lambda: {"hardware": "test"})
    monkeypatch.setattr(compare, "model_identity", lambda name: {"reference": "fake"})
    monkeypatch.setattr(compare, "prepare_inputs",
                        lambda cfg, ref=None: Inputs([], [], [], 0, [], [], 512, tmp_home))
    return tmp_home


def _compare(db, cfg, executor):
    out = io.StringIO()
    store = compare.compare(["reference"], cfg, store=Store(db), console=Console(file=out, width=200),
                            executor=executor)
    return store, out.getvalue()


def test_builtin_groups_are_registered_lazily():
    assert groups.names()[:8] == ["serving", "scaling", "fidelity", "probes", "tasks", "sweep", "speed", "memory"]
    code = ("import sys; from quantkit.evaluation import groups; groups.names(); "
            "print(any(m in sys.modules for m in ('quantkit.evaluation.groups.sweep', 'quantkit.evaluation.groups.tasks')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    assert groups.get("serving").needs == "server" and groups.get("memory").needs == "worker"


def test_default_running_order_server_first_memory_last():
    names = [g.name for g in compare.selected_groups(CompareConfig(tasks=["arc_easy"], temperatures=(0.0,)))]
    # build reads the manifest and starts nothing ("own"); no replicas: no scaling
    assert names == ["build", "serving", "fidelity", "probes", "tasks", "sweep", "speed", "memory"]
    names = [g.name for g in compare.selected_groups(CompareConfig(replicas=2))]
    assert names[:3] == ["build", "scaling", "serving"]  # scaling starts its own servers, before the model's server
    assert [g.name for g in compare.selected_groups(CompareConfig())] == ["build", "serving", "fidelity", "probes",
                                                                          "speed", "memory"]
    with pytest.raises(ConfigError, match="unknown measurement group 'nope'"):
        compare.selected_groups(CompareConfig(groups=("nope",)))


def test_a_group_without_conditions_cannot_be_registered_or_made(dummy_groups):
    with pytest.raises(TypeError):
        NoConditions()
    with pytest.raises(ConfigError, match="does not implement conditions"):
        groups.register("forgetful", NoConditions)
    groups.register("forgetful", f"{__name__}:NoConditions")  # a lazy path is checked when first used
    try:
        with pytest.raises(ConfigError, match="does not implement conditions"):
            groups.get("forgetful")
    finally:
        groups.unregister("forgetful")
    with pytest.raises(ConfigError, match="registered as 'other'"):
        groups.register("other", AfterDummy)
    with pytest.raises(ConfigError, match="already registered"):
        groups.register("dummy", DummyGroup)
    groups.register("ghost", "no_such_module_qk:Ghost")
    try:
        with pytest.raises(ConfigError, match="cannot load no_such_module_qk:Ghost"):
            groups.get("ghost")
    finally:
        groups.unregister("ghost")


def test_dummy_group_runs_through_compare_keyed_by_its_conditions(dummy_groups, fake_models):
    db, executor = fake_models / "r.sqlite", FakeExecutor()
    cfg = CompareConfig(groups=("dummy", "dummy_after"))
    store, out = _compare(db, cfg, executor)
    figs = {(f.group, f.metric): f for f in store.figures()}
    answer = figs[("dummy", "answer")]
    assert answer.value == 42.0 and answer.unit == "widgets" and answer.engine == "fake"
    assert answer.conditions["ran_before"] == [] and answer.conditions["compared_with"] == "reference"
    assert answer.conditions["history_seen"] == []  # a group never sees itself in run.history (memory's peak)
    failed = figs[("dummy_after", "failed")]
    assert failed.status == "failed" and "this group always fails" in failed.reason
    assert failed.conditions["ran_before"] == ["dummy"]
    assert [w.calls for w in executor.starts] == [["info", "answer"]]  # one worker for both groups

    # stage times: printed, tabled and stored with the run
    stages = {f.metric: f for f in store.figures() if f.group == compare.STAGES_GROUP}
    assert set(stages) == {"start:worker", "group:dummy", "group:dummy_after"}
    assert stages["start:worker"].conditions["engine_load_s"] == round(0.25, 1)  # the worker's own load time
    assert stages["group:dummy_after"].conditions["outcome"] == "failed"
    assert stages["group:dummy_after"].conditions["ran_before"] == ["dummy"]
    assert all(f.value >= 0 and f.unit == "s" for f in stages.values())
    assert "worker started in" in out and "dummy: done in" in out and "compare: stage times" in out

    # resume: the same conditions reuse the figure and start nothing (the failed group is retried)
    executor2 = FakeExecutor()
    _, out2 = _compare(db, CompareConfig(groups=("dummy",)), executor2)
    assert "every figure already measured" in out2 and executor2.starts == []
    # its conditions are its key: another seed measures it again
    executor3 = FakeExecutor()
    _compare(db, CompareConfig(groups=("dummy",), seed=1), executor3)
    assert [w.calls for w in executor3.starts] == [["info", "answer"]]


def test_dummy_group_shows_in_the_leaderboard_and_stages_stay_out_of_its_columns(dummy_groups, fake_models):
    from quantkit.results import leaderboard

    store, _ = _compare(fake_models / "r.sqlite", CompareConfig(groups=("dummy",)), FakeExecutor())
    md = leaderboard.to_markdown(store)
    assert "dummy" in md and "42" in md
    header, _ = leaderboard.table(store)
    assert not any("stages" in h or "start:worker" in h for h in header), header


def test_roofline_decode_rate_is_one_over_tpot_and_above_the_bound_fails(monkeypatch, tmp_path):
    from quantkit import hardware
    from quantkit.evaluation import roofline, serving
    from quantkit.evaluation.groups import serving as serving_group
    from quantkit.evaluation.groups.run import Run

    (tmp_path / "config.json").write_text('{"num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 8}')
    level = {"concurrency": 1, "requests": 4, "repeats": 1, "ttft_median_s": 0.01, "ttft_p90_s": 0.02,
             "itl_median_s": 0.001, "itl_p90_s": 0.002, "tpot_median_s": 0.05, "output_tokens_per_s": 20.0,
             "output_tokens_per_s_spread": [19.0, 21.0], "requests_per_s": 1.0, "requests_per_s_spread": [1.0, 1.0]}
    monkeypatch.setattr(serving, "sweep", lambda *a, **k: [dict(level)])
    monkeypatch.setattr(roofline, "measure_bandwidth_gbs", lambda: (20.0, 2))
    monkeypatch.setattr(hardware, "detect", lambda: SimpleNamespace(has_cuda=False))
    monkeypatch.setattr(serving_group, "weights_bytes", lambda run: 270e6)
    target = SimpleNamespace(name="q4", engine=SimpleNamespace(name="llamacpp"), kv_cache_type="f16",
                             settings=SimpleNamespace(model_dump=dict))
    run = Run(target, None, Inputs([], [], [], 0, [], [[1, 2]], 512, tmp_path), CompareConfig.make(True), {},
              "variant")
    run.server = SimpleNamespace(url="http://x/v1", model_name="q4")
    figs = {f.metric: f for f in groups.get("serving").measure(run) if f.group == "roofline"}
    assert figs["decode_tokens_per_s"].value == pytest.approx(20.0)  # 1 / TPOT, not 1 / ITL (1000)
    bound = figs["bound_tokens_per_s"].value
    assert figs["fraction_of_bound"].value == pytest.approx(20.0 / bound)
    assert "TPOT" in figs["decode_tokens_per_s"].conditions["decode_rate"]

    level["tpot_median_s"] = 0.001  # 1000 tok/s: far above the ~74 tok/s the bandwidth allows
    failed = [f for f in groups.get("serving").measure(run) if f.group == "roofline"]
    assert [(f.metric, f.status) for f in failed] == [("failed", "failed")]
    assert "broken measurement" in failed[0].reason and "outside (0, 1]" in failed[0].reason


class ServerDummy(Group):
    name = "dummy_server"
    needs = "server"

    def conditions(self, cfg, inputs):
        return {}

    def measure(self, run):
        return [run.fig("dummy_server", "url", None, text=run.server.url)]


@pytest.fixture
def server_dummy(dummy_groups):
    """The dummy groups plus one that needs the engine's server."""
    groups.register("dummy_server", ServerDummy)
    yield
    groups.unregister("dummy_server")


def test_a_server_that_cannot_start_fails_its_groups_and_the_worker_groups_go_on(server_dummy, fake_models,
                                                                                  monkeypatch):
    from quantkit import server
    from quantkit.errors import EngineError

    class DeadServer:
        def __init__(self, target):
            pass

        def __enter__(self):
            raise EngineError("fake server exited (code 1) during start-up")

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(server, "EngineServer", DeadServer)
    executor = FakeExecutor()
    store, out = _compare(fake_models / "r.sqlite", CompareConfig(groups=("dummy", "dummy_server")), executor)
    figs = {(f.group, f.metric): f for f in store.figures()}
    assert figs[("dummy_server", "failed")].reason == "fake server exited (code 1) during start-up"
    assert figs[("dummy", "answer")].value == 42.0 and len(executor.starts) == 1  # the server's groups first
    stages = {f.metric: f.conditions["outcome"] for f in store.figures() if f.group == compare.STAGES_GROUP}
    assert stages == {"start:server": "failed", "start:worker": "ok", "group:dummy": "ok"}
    assert "engine failed" in out


def test_an_engine_whose_worker_serves_starts_one_process_for_server_and_worker_groups(server_dummy, fake_models,
                                                                                        monkeypatch):
    """Issue 13 item 2: with `Engine.serves_from_worker` (vLLM), compare starts the worker once, asks it
    to serve HTTP, runs the serving groups first against that URL, then the worker's groups; no
    separate server is started, and the stage is `start:worker+server`."""
    from quantkit import server

    class NoServer:
        def __init__(self, target):
            raise AssertionError("a separate server was started")

    class ServingWorker(FakeWorker):
        def call(self, op, **args):
            if op == "serve_http":
                self.calls.append(op)
                assert args == {"host": "127.0.0.1", "served_name": "reference"}
                return {"url": "http://127.0.0.1:1234/v1", "model": "reference"}
            return super().call(op, **args)

    class ServingExecutor(FakeExecutor):
        def start(self, target, label="run"):
            return ServingWorker(self.starts)

    monkeypatch.setattr(server, "EngineServer", NoServer)
    monkeypatch.setattr(loader.load("reference").engine, "serves_from_worker", True)
    executor = ServingExecutor()
    store, out = _compare(fake_models / "r.sqlite", CompareConfig(groups=("dummy", "dummy_server")), executor)
    figs = {(f.group, f.metric): f for f in store.figures()}
    assert len(executor.starts) == 1 and executor.starts[0].calls[:2] == ["info", "serve_http"]
    assert figs[("dummy_server", "url")].text == "http://127.0.0.1:1234/v1"
    assert figs[("dummy_server", "url")].conditions["ran_before"] == []
    assert figs[("dummy", "answer")].conditions["ran_before"] == ["dummy_server"]
    stages = {f.metric for f in store.figures() if f.group == compare.STAGES_GROUP}
    assert stages == {"start:worker+server", "group:dummy_server", "group:dummy"}
