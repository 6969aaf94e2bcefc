"""Outputs written atomically keep the permissions a plain `open` would give them, follow
symbolic links, and write special files (devices, FIFOs) in place."""

import os
import stat
import threading
from pathlib import Path

from tilesim.profiler.output import atomic, atomic_save


def test_atomic_files_get_the_usual_mode_not_mkstemps_owner_only(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic(tmp_path / "a.json") as f:
            f.write("{}")
        atomic_save(tmp_path / "b.png", lambda temporary: Path(temporary).write_bytes(b"png"))
    finally:
        os.umask(umask)
    for name in ("a.json", "b.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.png"]  # no temporary left


def test_a_symbolic_link_stays_a_link_and_its_target_gets_the_output(tmp_path):
    target, link = tmp_path / "real.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    with atomic(link) as f:
        f.write("{}")
    assert link.is_symlink() and target.read_text() == "{}"


def test_a_special_file_is_written_in_place_not_replaced(tmp_path):
    """A FIFO (as /dev/null or /dev/stdout, a file that is not a regular one) gets the bytes
    and stays what it was: renaming a temporary file onto it would replace it (as root,
    /dev/null itself)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    with atomic(fifo) as f:
        f.write('{"traceEvents": []}')
    reader.join(timeout=30)
    assert got == ['{"traceEvents": []}'] and stat.S_ISFIFO(fifo.stat().st_mode)
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    atomic_save(fifo, lambda name: Path(name).write_bytes(b"png"))
    reader.join(timeout=30)
    assert got[1] == b"png" and stat.S_ISFIFO(fifo.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no temporary left
