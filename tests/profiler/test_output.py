"""Outputs written atomically keep the permissions a plain `open` would give them."""

import os
import stat
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
