"""Shared fixtures. Integration tests need `quantkit setup` (the README's `make test` runs it)."""

from __future__ import annotations

import pytest


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

