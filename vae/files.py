"""Files a run or a sweep writes: atomically (a reader sees the old file or the new one, never half of
one), never through a symbolic link, and a directory held by one process at a time."""
from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from vae.errors import MachineError, UserError

LOCK = ".lock"  # held (flock) by the process writing the directory


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a temp file beside `path`, flush and fsync it, then rename it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def create_exclusive(path: Path, text: str) -> bool:
    """Write `path` whole, only if no file is there yet (of two processes at once, one wins); False if one was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if `path` exists, and never leaves half a file there
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links (FAT, some network and FUSE mounts)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
            with os.fdopen(fd, "wb") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)
    return True


def refuse_links(*paths: Path) -> None:
    """A symbolic link where a run's or a sweep's own file should be is refused: writing or reading
    through it would reach a file outside (truncate it, or copy it in)."""
    for path in paths:
        if Path(path).is_symlink():
            raise UserError(f"{path} is a symbolic link; this project writes its own files there and never "
                            f"through a link: remove it")


def read_text_no_follow(path: Path) -> str:
    """The text of `path`, refusing a symbolic link (FileNotFoundError when it is missing)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno == errno.ELOOP:
            refuse_links(path)
        raise
    with os.fdopen(fd, encoding="utf-8") as f:
        return f.read()


@contextmanager
def locked(folder: Path, busy: str):
    """Hold `folder` for this process while the block runs; another process that asks for it gets
    UserError(busy), its "{pid}" replaced by the holder's.

    An OS file lock (flock) on <folder>/.lock, which dies with its holder, so a killed process leaves
    nothing that blocks the next one; the lock file is never opened through a link.
    """
    refuse_links(folder / LOCK)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            refuse_links(folder / LOCK)
        raise MachineError(f"cannot write {folder}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise UserError(busy.replace("{pid}", f" (pid {holder})" if holder.isdigit() else "")) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message above
        yield
    finally:
        os.close(fd)
