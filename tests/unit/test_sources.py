import http.server
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from quantkit import sources
from quantkit.errors import ConfigError, EngineMissingError


def test_hub_id_passes_through():
    s = sources.resolve("Qwen/Qwen2.5-0.5B-Instruct")
    assert (s.kind, s.location, s.name) == ("hub", "Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B-Instruct")


def test_local_folder_needs_a_config(tmp_path):
    with pytest.raises(ConfigError, match="has no config.json"):
        sources.resolve(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"w")
    s = sources.resolve(str(tmp_path))
    assert s.kind == "local" and len(s.identity()["sha256"]) == 64


def test_nonsense_is_refused_with_the_accepted_forms():
    with pytest.raises(ConfigError) as e:
        sources.resolve("not a model")
    assert "Qwen/Qwen2.5-0.5B-Instruct" in e.value.hint


def test_embedded_before_setup_says_to_run_setup(tmp_home):
    with pytest.raises(EngineMissingError) as e:
        sources.resolve("default")
    assert "quantkit setup" in e.value.hint


# --- hub models: cached, downloadable, or a fast clear error -----------------------------------------

REPO = "Qwen/Qwen2.5-0.5B-Instruct"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache and an endpoint that refuses connections (works on any machine)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # recorded, so a value set by the code under test is undone
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    return tmp_path / "hf" / "hub"


def _cache(hub: Path, repo: str, files: dict[str, str]) -> Path:
    """The huggingface_hub cache layout: refs/main names a commit whose snapshot holds the files."""
    root = hub / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, text in files.items():
        (snap / name).write_text(text)
    return snap


def test_uncached_model_without_a_hub_fails_fast_naming_the_alternatives(no_hub):
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        sources.preflight(REPO)
    assert time.perf_counter() - t0 < 5
    msg = str(e.value.args[0])
    assert f"{REPO} is not in the Hugging Face cache ({no_hub})" in msg and "no hub is reachable" in msg
    assert os.environ["HF_ENDPOINT"] in msg and "\n" not in msg
    for alternative in ("recipes/smollm2_awq_w4a16.yaml", "local checkpoint folder", "HF_HUB_OFFLINE=1"):
        assert alternative in e.value.hint


def test_offline_mode_uses_only_the_cache(no_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set"):
        sources.preflight(REPO)
    _cache(no_hub, REPO, {"config.json": "{}", "model.safetensors": "w"})
    sources.preflight(REPO)  # cached: nothing to download, no error


def test_cached_model_passes_and_engines_are_told_to_stay_offline(no_hub):
    snap = _cache(no_hub, REPO, {"config.json": "{}", "model.safetensors": "w"})
    assert sources.cached_snapshot(REPO) == snap
    sources.preflight(REPO)
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # the hub did not answer: workers read the cache directly


def test_a_partial_cache_is_not_a_cached_model(no_hub):
    _cache(no_hub, REPO, {"config.json": "{}"})  # weights never downloaded
    assert sources.cached_snapshot(REPO) is None
    other = "Org/Sharded"
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    snap = _cache(no_hub, other, {"config.json": "{}", "model.safetensors.index.json": json.dumps(index),
                                  "model-00001-of-00002.safetensors": "w"})
    assert sources.cached_snapshot(other) is None
    (snap / "model-00002-of-00002.safetensors").write_text("w")
    assert sources.cached_snapshot(other) == snap


def test_hf_hub_cache_takes_precedence_over_hf_home(no_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert sources.hub_cache_dir() == tmp_path / "elsewhere"
    _cache(tmp_path / "elsewhere", REPO, {"config.json": "{}", "model.safetensors": "w"})
    assert sources.cached_snapshot(REPO) is not None


def test_a_reachable_hub_lets_the_download_go_ahead(no_hub, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        assert sources.probe_hub() is None  # it answered (501 to HEAD): reachable
        sources.preflight(REPO)
    finally:
        server.shutdown()
        server.server_close()


def test_a_silent_hub_is_given_up_on_after_the_timeout():
    with socket.socket() as s:  # listens but never answers: the TCP handshake completes, no reply comes
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        t0 = time.perf_counter()
        why = sources.probe_hub(f"http://127.0.0.1:{s.getsockname()[1]}", timeout=0.5)
        assert why is not None and time.perf_counter() - t0 < 2


def test_local_and_embedded_sources_need_no_hub(no_hub, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    sources.preflight(str(tmp_path / "m"))
    sources.preflight("default")  # the embedded model's readiness is checked where it is used
    assert os.environ["HF_HUB_OFFLINE"] == "0"


def test_materialize_of_a_hub_model_checks_before_starting_any_worker(no_hub, tmp_home):
    with pytest.raises(ConfigError, match="no hub is reachable"):
        sources.materialize(sources.resolve(REPO))
