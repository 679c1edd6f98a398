"""Shared fixtures. Integration tests need `quantkit setup` (the README's `make test` runs it)."""

from __future__ import annotations

import signal

import pytest


def pytest_configure(config):
    """Tests press Ctrl-C on the commands they start (SIGINT to the process group). A run started
    as a background job of a non-interactive shell (`cmd &` without job control) inherits SIGINT
    ignored, and so would every command it starts: Python then never raises KeyboardInterrupt and
    those tests would measure the shell, not quantkit. Give the suite (and so its children) the
    default handler back."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def tmp_home(tmp_path, monkeypatch):
    """A private QUANTKIT_HOME / models folder for tests of pure logic."""
    monkeypatch.setenv("QUANTKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("QUANTKIT_MODELS", str(tmp_path / "models"))
    return tmp_path

