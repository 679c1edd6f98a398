import os

import pytest

from quantkit.atomic import atomic_dir, sweep_partials


def test_success_renames_into_place(tmp_path):
    final = tmp_path / "variant"
    with atomic_dir(final) as tmp:
        (tmp / "weights.bin").write_bytes(b"x")
        assert not final.exists()
    assert (final / "weights.bin").read_bytes() == b"x"
    assert [p.name for p in tmp_path.iterdir()] == ["variant"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failure_or_ctrl_c_leaves_nothing(tmp_path, exc):
    final = tmp_path / "variant"
    with pytest.raises(exc):
        with atomic_dir(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise exc()
    assert list(tmp_path.iterdir()) == []


def test_replace_swaps_an_existing_dir(tmp_path):
    final = tmp_path / "v"
    final.mkdir()
    (final / "old").write_text("old")
    with atomic_dir(final, replace=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["v"]


def test_sweep_removes_leftovers_of_dead_writers_only(tmp_path):
    dead = tmp_path / ".v.partial-999999999"
    live = tmp_path / f".w.partial-{os.getpid()}"
    dead.mkdir()
    live.mkdir()
    assert sweep_partials(tmp_path) == [dead]
    assert live.exists() and not dead.exists()
