"""llama.cpp's own tools, compiled from the source tree vendored in the llama-cpp-python sdist.

One CMake build gives both the shared library the Python binding loads (via LLAMA_CPP_LIB_PATH)
and the command-line tools, so the binding and the tools are always the same llama.cpp commit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from rich.progress import Progress, TaskID

from quantkit import paths
from quantkit.envs.specs import LLAMA_CPP_PYTHON_VERSION
from quantkit.envs.steps import run_logged
from quantkit.errors import EngineMissingError
from quantkit.hardware import Hardware, detect

TOOLS = ("llama-quantize", "llama-imatrix", "llama-perplexity", "llama-bench", "llama-server")
MARKER = ".quantkit-built.json"
# As an env's native build (EnvSpec.native_build): what it is, its key in the env's marker.
WHAT = "llama.cpp tools"
MARKER_KEY = "llama_cpp"


def cuda_architectures(hw: Hardware) -> str:
    """CMAKE_CUDA_ARCHITECTURES for this machine's GPUs ("90" for an H100's compute capability 9.0).
    Each is built as real code plus PTX, so a newer GPU can still JIT the PTX. "native" where the driver
    does not report compute capabilities (llama.cpp's own default: the GPUs present, no PTX)."""
    caps = [c.replace(".", "") for c in hw.compute_caps]
    return ";".join(caps) if caps else "native"


def _flavour(hw: Hardware) -> str:
    """The build folder's key: a CUDA build runs only on the architectures it was compiled for."""
    if not hw.has_cuda:
        return "cpu"
    archs = cuda_architectures(hw)
    return "cuda-native" if archs == "native" else "cuda-sm" + "-".join(archs.split(";"))


def source_dir() -> Path:
    return paths.tools_dir() / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}"


def llama_cpp_dir() -> Path:
    return source_dir() / "vendor" / "llama.cpp"


def build_dir(hw: Hardware | None = None) -> Path:
    return paths.tools_dir() / f"llama.cpp-build-{LLAMA_CPP_PYTHON_VERSION}-{_flavour(hw or detect())}"


def bin_dir(hw: Hardware | None = None) -> Path:
    return build_dir(hw) / "bin"


def is_built(hw: Hardware | None = None) -> bool:
    """Built here, for this CPU: llama.cpp compiles for the build machine's instruction sets (GGML_NATIVE),
    so a QUANTKIT_HOME moved to a CPU with other instruction sets builds again (older markers lack them)."""
    hw = hw or detect()
    marker = build_dir(hw) / MARKER
    if not marker.exists() or not all((bin_dir(hw) / t).exists() for t in TOOLS):
        return False
    try:
        built_for = json.loads(marker.read_text()).get("cpu_flags")
    except ValueError:
        return False
    return built_for is None or tuple(built_for) == hw.cpu_flags


def tool(name: str) -> Path:
    path = bin_dir() / name
    if not is_built() or not path.exists():
        raise EngineMissingError(
            f"llama.cpp tool {name} is not built", hint="run `quantkit setup --engines llamacpp`"
        )
    return path


def converter() -> tuple[Path, Path]:
    """(convert_hf_to_gguf.py, its gguf-py folder) from the vendored llama.cpp source."""
    script = llama_cpp_dir() / "convert_hf_to_gguf.py"
    if not script.exists():
        raise EngineMissingError(
            "llama.cpp's convert_hf_to_gguf.py is missing", hint="run `quantkit setup --engines llamacpp`"
        )
    return script, llama_cpp_dir() / "gguf-py"


def built_info() -> dict:
    marker = build_dir() / MARKER
    return json.loads(marker.read_text()) if marker.exists() else {}


def doctor_detail() -> str:
    """What `doctor` adds to the env's row once built."""
    return f"tools: {', '.join(TOOLS)} ({built_info().get('llama_cpp_build') or 'built'})"


def _fetch_source(log: Path, progress: Progress, task: TaskID) -> None:
    if (llama_cpp_dir() / "CMakeLists.txt").exists():
        return
    sdist_dir = paths.cache_dir() / "sdist"
    progress.update(task, status="downloading llama-cpp-python sdist")
    run_logged(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", sdist_dir],
        log, progress=progress, task=task, what="download of the llama-cpp-python sdist",
    )
    archive = sdist_dir / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    progress.update(task, status="unpacking llama.cpp source")
    paths.tools_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=paths.tools_dir()) as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        if source_dir().exists():
            shutil.rmtree(source_dir())
        (Path(tmp) / archive.name.removesuffix(".tar.gz")).rename(source_dir())


def cmake_flags(hw: Hardware) -> list[str]:
    flags = [
        "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON",
        "-DLLAMA_USE_PREBUILT_UI=OFF",  # llama-server's UI would be downloaded from a hub: build offline
    ]
    if hw.has_cuda:
        flags += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={cuda_architectures(hw)}"]
    return flags


def build(progress: Progress, task: TaskID, hw: Hardware | None = None) -> Path:
    """Compile libllama and the tools; idempotent (a finished build is kept)."""
    hw = hw or detect()
    if is_built(hw):
        return bin_dir(hw)
    log = paths.envs_dir() / "llamacpp-build.log"
    _fetch_source(log, progress, task)
    out = build_dir(hw)
    if out.exists():
        shutil.rmtree(out)  # a previous build died: start clean
    flags = cmake_flags(hw)
    progress.update(task, status="configuring llama.cpp (cmake)")
    run_logged(["cmake", "-S", llama_cpp_dir(), "-B", out, *flags], log,
               progress=progress, task=task, what="cmake configure of llama.cpp")
    run_logged(["cmake", "--build", out, "--config", "Release", "-j", str(max(1, hw.cpu_cores)),
                "--target", "llama", *TOOLS], log,
               progress=progress, task=task, what="compile of llama.cpp tools")
    commit = _vendored_commit(hw)
    (out / MARKER).write_text(json.dumps({
        "llama_cpp_python": LLAMA_CPP_PYTHON_VERSION, "flavour": _flavour(hw), "llama_cpp_build": commit,
        "cmake_flags": flags, "cpu_flags": list(hw.cpu_flags),
        "cuda_architectures": cuda_architectures(hw) if hw.has_cuda else None,
        "compute_caps": list(hw.compute_caps),
        "tools": {t: str(bin_dir(hw) / t) for t in TOOLS},
    }, indent=2))
    return bin_dir(hw)


def version_line(output: str) -> str | None:
    """The `version: 6540 (3ecb2f67)` line of `llama-bench --version`. CUDA builds print
    `ggml_cuda_init: found 1 CUDA devices ...` lines before it, so the first line will not do."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return next((ln for ln in lines if ln.startswith("version:")), lines[0] if lines else None)


def _vendored_commit(hw: Hardware | None = None) -> str | None:
    """llama.cpp's build number and commit, as `llama-bench --version` prints them."""
    try:
        out = subprocess.run([str(bin_dir(hw) / "llama-bench"), "--version"], capture_output=True,
                             text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return version_line(out.stdout + "\n" + out.stderr)
