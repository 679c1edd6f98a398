import pytest

from quantkit.errors import ConfigError
from quantkit.setup_steps import OPTIONAL, STEPS, parse_steps


def test_default_is_every_required_step_in_dependency_order():
    assert parse_steps(None) == [s for s in STEPS if s not in OPTIONAL] and "autoawq" not in parse_steps(None)
    assert parse_steps(["autoawq"]) == ["autoawq"]
    assert STEPS.index("compressor") < STEPS.index("reference") and STEPS.index("data") < STEPS.index("reference")


def test_steps_accept_commas_and_repeats_and_keep_order():
    assert parse_steps(["vllm,data", "llamacpp"]) == ["data", "llamacpp", "vllm"]


def test_unknown_step_is_named():
    with pytest.raises(ConfigError, match="unknown setup step\\(s\\): vlm"):
        parse_steps(["vlm"])
