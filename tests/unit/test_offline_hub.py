"""The design card's own command on a machine without a hub: `quantkit build recipes/qwen_awq.yaml`
must fail within seconds, before any engine starts, and say what works instead. Runs the real
command line (no engines are needed: the check comes first). The first test uses this machine's
real network and skips where a hub answers; the others point HF_ENDPOINT at a closed port, so
they hold on any machine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quantkit import sources

EXE = Path(sys.executable).parent / "quantkit"
REPO_ROOT = Path(__file__).resolve().parents[2]
REPO = "Qwen/Qwen2.5-0.5B-Instruct"
ALTERNATIVES = ("recipes/smollm2_awq_w4a16.yaml", "local checkpoint folder", "HF_HUB_OFFLINE=1")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    # an empty model cache and store: nothing cached, and an engine started by mistake finds no env
    return {**env, "HF_HOME": str(tmp_path / "hf"), "QUANTKIT_HOME": str(tmp_path / "home"), **extra}


def _run(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    p = subprocess.run([str(EXE), *args], check=False, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
    return p, time.perf_counter() - t0


def _assert_clear_offline_error(p: subprocess.CompletedProcess, seconds: float, cause: str) -> None:
    out = p.stdout + p.stderr
    assert p.returncode == 2, out
    assert "Traceback" not in out, out
    [error] = [line for line in out.splitlines() if line.startswith("error:")]
    assert f"{REPO} is not in the Hugging Face cache" in error and cause in error, out
    [fix] = [line for line in out.splitlines() if line.startswith("fix:")]
    assert all(a in fix for a in ALTERNATIVES), out
    assert seconds < 10, f"took {seconds:.1f} s"


@pytest.mark.skipif(sources.probe_hub() is None, reason="a Hugging Face hub answers from this machine")
def test_design_card_command_on_this_machine_without_a_hub(tmp_path):
    p, seconds = _run(["build", "recipes/qwen_awq.yaml"], _env(tmp_path))
    _assert_clear_offline_error(p, seconds, "no hub is reachable")


def test_build_of_a_hub_recipe_with_an_unreachable_endpoint(tmp_path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    p, seconds = _run(["build", "recipes/qwen_awq.yaml"], _env(tmp_path, HF_ENDPOINT=endpoint))
    _assert_clear_offline_error(p, seconds, f"no hub is reachable ({endpoint}")


def test_build_offline_with_an_empty_cache(tmp_path):
    p, seconds = _run(["build", "recipes/qwen_gptq.yaml"], _env(tmp_path, HF_HUB_OFFLINE="1"))
    _assert_clear_offline_error(p, seconds, "HF_HUB_OFFLINE is set")


@pytest.mark.parametrize("command", [["compare", f"reference:{REPO}", "--quick"], ["serve", f"reference:{REPO}"]],
                         ids=["compare", "serve"])
def test_compare_and_serve_of_a_hub_model_check_first(tmp_path, command):
    env = _env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    extra = ["--db", str(tmp_path / "r.sqlite")] if command[0] == "compare" else []
    p, seconds = _run([*command, *extra], env)
    _assert_clear_offline_error(p, seconds, "no hub is reachable")
