import json

import pytest

from quantkit import envs
from quantkit.envs import manager
from quantkit.errors import ConfigError, EngineMissingError
from quantkit.hardware import Gpu, Hardware

CPU = Hardware("cpu", 2, 24.0, "x86_64")
CUDA = Hardware("cpu", 16, 128.0, "x86_64", (Gpu("H100", 81920, "570"),))


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
