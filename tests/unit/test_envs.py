import json

import pytest

from quantkit import envs
from quantkit.envs import manager
from quantkit.errors import ConfigError, EngineMissingError
from quantkit.hardware import Gpu, Hardware

CPU = Hardware("cpu", 2, 24.0, "x86_64")
CUDA = Hardware("cpu", 16, 128.0, "x86_64", (Gpu("H100", 81920, "570", "9.0"),))


def test_hardware_decides_vllm_flavour():
    assert envs.spec("vllm", CPU).requirements == "vllm-cpu.txt"
    assert "torchvision" in envs.spec("vllm", CPU).remove_after_install
    assert envs.spec("vllm", CUDA).requirements == "vllm-cuda.txt"
    assert envs.spec("vllm", CUDA).remove_after_install == ()


@pytest.mark.parametrize("hw", [CPU, CUDA])
def test_every_requirement_file_exists_and_pins_its_engine(hw):
    for s in envs.specs(hw):
        text = s.requirements_text()
        assert "==" in text, f"{s.requirements} must pin versions"
        assert s.versions_of[0] in text or s.versions_of[0].replace("-", "_") in text


def test_unknown_env_names_the_choices():
    with pytest.raises(ConfigError, match="unknown engine environment 'vlm'") as e:
        envs.spec("vlm", CPU)
    assert "vllm" in e.value.hint


def test_status_walks_from_missing_to_ready(tmp_home):
    s = envs.spec("compressor", CPU)
    st = envs.status(s)
    assert not st.ready and st.problem == "not created" and st.fix == "quantkit setup --engines compressor"

    path = manager.env_dir("compressor")
    path.mkdir(parents=True)
    assert envs.status(s).problem.startswith("incomplete")

    (path / manager.MARKER).write_text(json.dumps({"requirements_hash": "stale"}))
    assert "requirements changed" in envs.status(s).problem

    (path / manager.MARKER).write_text(json.dumps({"requirements_hash": manager.requirements_hash(s),
                                                   "versions": {"llmcompressor": "0.14.0.1"}}))
    st = envs.status(s)
    assert st.ready and st.versions == {"llmcompressor": "0.14.0.1"}


def test_python_for_a_missing_env_says_how_to_create_it(tmp_home):
    with pytest.raises(EngineMissingError) as e:
        envs.python_for("compressor")
    assert "quantkit setup --engines compressor" in e.value.hint


def test_runtime_env_lets_workers_import_quantkit_and_finds_libllama(tmp_home):
    env = envs.runtime_env("llamacpp")
    assert env["PYTHONPATH"] == str(manager.paths.REPO_ROOT)
    assert env["LLAMA_CPP_LIB_PATH"].endswith("/bin")
    assert str(manager.env_dir("llamacpp") / "bin") in env["PATH"].split(":")[0]


def test_autoawq_env_exists_only_with_cuda():
    with pytest.raises(ConfigError, match="needs CUDA"):
        envs.spec("autoawq", CPU)
    assert envs.spec("autoawq", CUDA).requirements == "autoawq-cuda.txt"


# --- llama.cpp build: CUDA architectures, offline UI, the version line, the CPU it was built for -------

CUDA_BENCH_VERSION = """ggml_cuda_init: found 1 CUDA devices:
  Device 0: NVIDIA H100 80GB HBM3, compute capability 9.0, VMM: yes
version: 6540 (3ecb2f67)
built with cc (Ubuntu 13.3.0-6ubuntu2~24.04) 13.3.0 for x86_64-linux-gnu
"""


def test_cuda_build_is_keyed_and_compiled_for_the_gpus_compute_capability(tmp_home):
    from quantkit.envs import llamacpp_build as b

    flags = b.cmake_flags(CUDA)
    assert "-DGGML_CUDA=ON" in flags and "-DCMAKE_CUDA_ARCHITECTURES=90" in flags
    assert "-DLLAMA_USE_PREBUILT_UI=OFF" in flags and "-DLLAMA_USE_PREBUILT_UI=OFF" in b.cmake_flags(CPU)
    assert not any("CUDA" in f for f in b.cmake_flags(CPU))
    assert b.build_dir(CUDA).name.endswith("-cuda-sm90") and b.build_dir(CPU).name.endswith("-cpu")
    two = Hardware("cpu", 16, 128.0, "x86_64", (Gpu("H100", 81920, "570", "9.0"), Gpu("L4", 23034, "570", "8.9")))
    assert "-DCMAKE_CUDA_ARCHITECTURES=89;90" in b.cmake_flags(two) and b.build_dir(two).name.endswith("-cuda-sm89-90")
    unknown = Hardware("cpu", 16, 128.0, "x86_64", (Gpu("H100", 81920, "470"),))
    assert "-DCMAKE_CUDA_ARCHITECTURES=native" in b.cmake_flags(unknown) and b.build_dir(unknown).name.endswith("-cuda-native")


def test_version_is_the_version_line_not_the_cuda_banner(tmp_home):
    import os
    import stat

    from quantkit.envs import llamacpp_build as b

    assert b.version_line(CUDA_BENCH_VERSION) == "version: 6540 (3ecb2f67)"
    assert b.version_line("version: 6540 (3ecb2f67)\nbuilt with cc for x86_64\n") == "version: 6540 (3ecb2f67)"
    # the real call path: a llama-bench that prints the CUDA banner first, on stderr as ggml does
    tool = b.bin_dir(CUDA) / "llama-bench"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\ncat >&2 <<'X'\n" + CUDA_BENCH_VERSION + "X\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    assert b._vendored_commit(CUDA) == "version: 6540 (3ecb2f67)"
    assert os.environ["QUANTKIT_HOME"] in str(tool)


def test_a_build_for_other_instruction_sets_is_not_reused(tmp_home):
    from quantkit.envs import llamacpp_build as b

    avx2 = Hardware("cpu", 2, 24.0, "x86_64", (), ("avx2", "fma", "f16c"))
    avx512 = Hardware("cpu", 2, 24.0, "x86_64", (), ("avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl"))
    b.bin_dir(avx2).mkdir(parents=True)
    for t in b.TOOLS:
        (b.bin_dir(avx2) / t).write_text("")
    marker = b.build_dir(avx2) / b.MARKER
    marker.write_text(json.dumps({"flavour": "cpu"}))  # a marker from before instruction sets were recorded
    assert b.is_built(avx2) and b.is_built(avx512)
    marker.write_text(json.dumps({"flavour": "cpu", "cpu_flags": list(avx512.cpu_flags)}))
    assert b.is_built(avx512) and not b.is_built(avx2)  # built with -march=native on AVX-512: not for AVX2
