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


def test_sweep_leaves_other_machines_writers_alone(tmp_path):
    """On a shared filesystem (a Ray cluster's models), a partial folder of another machine's build
    is not this machine's to judge: its PID means nothing here."""
    import socket

    here = socket.gethostname()
    other = tmp_path / ".v.partial-999999999@another-node"
    dead_here = tmp_path / f".w.partial-999999999@{here}"
    live_here = tmp_path / f".x.old-{os.getpid()}@{here}"
    for p in (other, dead_here, live_here):
        p.mkdir()
    assert sweep_partials(tmp_path) == [dead_here]
    assert other.exists() and live_here.exists()
    with atomic_dir(tmp_path / "y") as tmp:
        assert tmp.name == f".y.partial-{os.getpid()}@{here}"
