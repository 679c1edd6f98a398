"""vLLM on CPU: compile-cache settings, preloaded tcmalloc / Intel OpenMP, optional extras."""

import json
import shutil
from pathlib import Path

import pytest

from quantkit import envs
from quantkit.envs import manager
from quantkit.hardware import Gpu, Hardware

CPU = Hardware("cpu", 2, 24.0, "x86_64")
CUDA = Hardware("cpu", 16, 128.0, "x86_64", (Gpu("H100", 81920, "570", "9.0"),))


@pytest.fixture
def on(monkeypatch):
    def use(hw):
        monkeypatch.setattr(manager, "detect", lambda: hw)
    return use


def _fake_libs(name="vllm"):
    lib = manager.env_dir(name) / "lib"
    lib.mkdir(parents=True)
    (lib / "libtcmalloc_minimal.so.4.5.10").write_bytes(b"")
    (lib / "libtcmalloc_minimal.so.4").symlink_to("libtcmalloc_minimal.so.4.5.10")
    (lib / "libiomp5.so").write_bytes(b"")
    return lib


def test_vllm_on_cpu_gets_a_loadable_compile_cache_and_preloads(tmp_home, on, monkeypatch):
    on(CPU)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    lib = _fake_libs()
    env = manager.runtime_env("vllm")
    assert env["VLLM_USE_AOT_COMPILE"] == "0"
    assert Path(env["TORCHINDUCTOR_CACHE_DIR"]).is_relative_to(Path(tmp_home))
    assert "autograd_cache" in env["TORCH_LOGS"] and "codecache" in env["TORCH_LOGS"]
    assert env["LD_PRELOAD"] == f"{lib / 'libtcmalloc_minimal.so.4'}:{lib / 'libiomp5.so'}"
    # a user's own preload is kept, after ours; a user's own setting wins
    monkeypatch.setenv("LD_PRELOAD", "/x/libfoo.so")
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")
    env = manager.runtime_env("vllm")
    assert env["LD_PRELOAD"].endswith(":/x/libfoo.so") and env["VLLM_USE_AOT_COMPILE"] == "1"
    monkeypatch.setenv("QUANTKIT_VLLM_PRELOAD", "0")
    assert manager.runtime_env("vllm")["LD_PRELOAD"] == "/x/libfoo.so"


def test_other_envs_and_cuda_get_none_of_it(tmp_home, on, monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    on(CPU)
    _fake_libs("llamacpp")
    assert "LD_PRELOAD" not in manager.runtime_env("llamacpp")
    on(CUDA)
    _fake_libs("vllm")
    env = manager.runtime_env("vllm")
    assert "LD_PRELOAD" not in env and "VLLM_USE_AOT_COMPILE" not in env


def test_missing_libraries_are_left_out(tmp_home, on, monkeypatch):
    on(CPU)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert "LD_PRELOAD" not in manager.runtime_env("vllm")


def test_cpu_vllm_spec_names_its_extras_and_they_exist():
    s = envs.spec("vllm", CPU)
    assert s.extras and (manager.REQUIREMENTS_DIR / s.extras).read_text().count("intel-openmp==") == 1
    assert ("libtcmalloc-minimal4", "libtcmalloc_minimal.so.4*") in s.debian_libs
    assert envs.spec("vllm", CUDA).extras is None


def test_extras_failures_are_recorded_not_raised(tmp_home, monkeypatch):
    from rich.progress import Progress

    s = envs.spec("vllm", CPU)
    manager.env_dir("vllm").mkdir(parents=True)

    def fail(cmd, log, **kw):
        from quantkit.errors import QuantkitError
        raise QuantkitError(f"{kw.get('what')} failed (exit 1)")

    monkeypatch.setattr(manager, "run_logged", fail)
    with Progress() as p:
        t = p.add_task("vllm", status="")
        result = manager.ensure_extras(s, p, t)
    assert set(result["missing"]) == {s.extras, "libtcmalloc-minimal4"} and result["installed"] == []
    assert json.loads((manager.env_dir("vllm") / manager.EXTRAS_MARKER).read_text()) == result


@pytest.mark.skipif(not (shutil.which("apt-get") and shutil.which("dpkg-deb")), reason="needs apt-get and dpkg-deb (Debian)")
def test_tcmalloc_comes_from_the_debian_package_without_root(tmp_path):
    """The real registry: apt-get download + dpkg-deb -x, nothing installed system-wide."""
    files = manager.unpack_debian_lib("libtcmalloc-minimal4", "libtcmalloc_minimal.so.4*", tmp_path / "lib",
                                      tmp_path / "log")
    names = {f.name for f in files}
    assert "libtcmalloc_minimal.so.4" in names and (tmp_path / "lib" / "libtcmalloc_minimal.so.4").resolve().exists()
