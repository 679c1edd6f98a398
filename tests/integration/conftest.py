"""Integration tests use the real engines made by `quantkit setup`. Without them they fail, with
the fix in the message: a missing engine must never turn into a silently skipped test."""

from __future__ import annotations

import pytest

from quantkit import doctor, sources


@pytest.fixture(scope="session")
def components():
    rows = {r["component"]: r for r in doctor.rows(probe=False)}
    missing = [f"{name}: {r['fix']}" for name, r in rows.items() if not r["ready"]]
    if missing:
        pytest.fail("quantkit is not set up (run `make setup`):\n  " + "\n  ".join(missing), pytrace=False)
    return rows


@pytest.fixture(scope="session")
def reference(components):
    return sources.resolve("default")
