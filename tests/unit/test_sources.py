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
