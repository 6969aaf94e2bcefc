"""Writing outputs so that a failed or interrupted run never leaves a partial file: each file
is written beside its destination under a temporary name and renamed into place (one
atomic step on POSIX file systems); and checking, before a long run starts, that its
outputs can be written at all.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tilesim.errors import ConfigError


def _usual_mode(temporary: str) -> None:
    """Give a temporary file the mode a plain `open` would (mkstemp makes it owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)


def _destination(path: str | Path) -> tuple[Path, bool]:
    """The file to write for `path`: a symbolic link's target (renaming onto the link would
    replace the link), and whether it is a special file (a device such as /dev/null, a FIFO),
    which is written in place: renaming onto it would replace the device itself."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    return path, path.exists() and not path.is_file()


@contextmanager
def _written_in_place(path: Path) -> Iterator[None]:
    """Writing a special file: its failure (/dev/full) as one line."""
    try:
        yield
    except OSError as exc:
        raise _cannot_write(str(path), exc) from None


@contextmanager
def atomic(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """`with atomic(path) as f:` writes `f` to `path` only if the block completes."""
    path, special = _destination(path)
    if special:
        with _written_in_place(path), open(path, mode) as f:
            yield f
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, mode) as f:
            yield f
        _usual_mode(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_save(path: str | Path, save: Callable[[str], None]) -> None:
    """`save(temporary_path)` (e.g. matplotlib's savefig), then the file renamed into place."""
    path, special = _destination(path)
    if special:
        with _written_in_place(path):
            save(str(path))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    try:
        save(temporary)
        _usual_mode(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def all_or_nothing(paths: list[Path]) -> Iterator[list[Path]]:
    """Temporary paths beside `paths` to write; renamed into place together when the block
    completes, all removed if it does not."""
    paths = [_destination(p)[0] for p in paths]
    temporary = [p.with_name(f".{p.name}.partial") for p in paths]
    try:
        yield temporary
        for t, p in zip(temporary, paths, strict=True):
            os.replace(t, p)
    except BaseException:
        for t in temporary:
            t.unlink(missing_ok=True)
        raise


def writable_file(path: str | Path, what: str) -> Path:
    """`path` as a file output: its folder (made when the file is written, if missing) must
    take a new file; the path itself must not be a folder. Raises ConfigError naming `what` (e.g. '--trace')."""
    path = _given(path, what)
    if path.is_dir():
        raise ConfigError(f"{what} {path}: is a folder; give a file name")
    _can_write_in(path.parent, f"{what} {path}")
    return path


# What a plot may be written as, by the name's ending; a name without one gets a PNG.
IMAGE_FORMATS = {"png": "png", "svg": "svg", "pdf": "pdf", "jpg": "jpeg", "jpeg": "jpeg"}


def image_format(path: str | Path, what: str = "--plot") -> str:
    """The format a plot at `path` is written in, from its ending ('' -> png). Another ending
    is refused: a PNG named out.jpg would be a file its name lies about."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if not suffix:
        return "png"
    if suffix not in IMAGE_FORMATS:
        raise ConfigError(f"{what} {path}: cannot draw a .{suffix} file; end the name in .png, .svg, .pdf or .jpg")
    return IMAGE_FORMATS[suffix]


def writable_image(path: str | Path, what: str) -> Path:
    """`writable_file` for a plot, whose ending must name a format matplotlib writes."""
    path = writable_file(path, what)
    image_format(path, what)
    return path


def writable_folder(path: str | Path, what: str) -> Path:
    """`path` as a folder of outputs (made when they are written, if missing): must take new files."""
    path = _given(path, what)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path}: is a file; give a folder")
    _can_write_in(path, f"{what} {path}")
    return path


def _given(path: str | Path, what: str) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"{what}={path!r:.60} must be a path")
    # Path("") is the current folder: an empty argument must not write there unasked
    if not str(path).strip():
        raise ConfigError(f"{what} {str(path)!r}: give a path")
    return Path(path)


def _can_write_in(folder: Path, label: str) -> None:
    """Whether files can be made in `folder`, or, where it does not exist yet, in the
    nearest folder above it that does (the writers make the rest when they write, so a run
    that fails leaves no empty folder behind)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise _cannot_write(label, exc) from None


def _cannot_write(label: str, exc: OSError) -> ConfigError:
    reason = (exc.strerror or type(exc).__name__).lower()
    return ConfigError(f"{label}: cannot write there ({reason}); choose another place")
