"""One writer per store: an advisory lock file beside the store, ``<store>.lock``.

The lock is a POSIX record lock (``fcntl.lockf``) on that file, so the kernel
releases it when its process ends, however it ends: after ``kill -9`` the file
is still there, with the dead writer's pid in it, but nobody holds it, and the
next writer takes it over (a *stale* lock).  A POSIX lock rather than
``flock``: forked children (the DataLoader's decoding workers) do not inherit
it, so a killed writer's lock is free at once, not when its last worker
notices; and it works on NFS.  POSIX locks do not exclude each other within
one process, so the locks this process holds are also kept in a set.  The pid written in the file is only for the message a second
writer gets.  Readers never take the lock: a store file is only ever replaced
whole, so reading one while it is written is safe.

The file is deleted when the lock is released.  A writer that opened the old
file just before it was deleted would lock a file that no longer has a name,
so after locking, a writer checks that the path still names the file it
locked, and tries again if not.
"""

from __future__ import annotations

import errno
import logging
import os
import weakref
from pathlib import Path

from ..errors import OutputPathError, StoreLockedError, message, option

try:
    import fcntl
except ImportError:  # Windows: no flock; one writer per store is not enforced there
    fcntl = None

__all__ = ["StoreLock", "lock_path", "lock_store"]

log = logging.getLogger("featx")

# (st_dev, st_ino) of the lock files this process holds.
_HELD: set[tuple[int, int]] = set()
# File systems that do not support locks (some FUSE mounts) answer with these.
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def lock_path(store: str | os.PathLike) -> Path:
    """The lock file of the store at *store*: ``<store>.lock`` beside it."""
    store = Path(store)
    return store.with_name(store.name + ".lock")


def _key(fd: int) -> tuple[int, int]:
    stat = os.fstat(fd)
    return stat.st_dev, stat.st_ino


def _release(fd: int, path: Path, created: list[Path]) -> None:
    # Unlink first, while the lock is still held: nobody can lock the file between the two.
    key = _key(fd)
    try:
        if os.path.exists(path) and os.stat(path).st_ino == key[1]:
            path.unlink()
    except OSError:
        pass  # a read-only or vanished folder: the kernel still drops the lock at close
    _HELD.discard(key)
    os.close(fd)
    for folder in created:  # made for the lock; kept if the store (or anything else) is in it now
        try:
            folder.rmdir()
        except OSError:
            break


class StoreLock:
    """The exclusive, advisory write lock of one store, held until :meth:`release`.

    Parameters
    ----------
    store : path
        The store file; the lock is ``<store>.lock`` beside it.  Missing
        folders are created, and deleted again on release if still empty.

    Attributes
    ----------
    path : Path
        The lock file.
    stale_pid : str or None
        The pid of a dead writer whose lock was taken over (after ``kill -9``), else None.

    Raises
    ------
    StoreLockedError
        Another live process holds the lock; the message names its pid.
    OutputPathError
        The lock file cannot be created (a read-only folder).
    """

    def __init__(self, store: str | os.PathLike) -> None:
        self.store = Path(store)
        self.path = lock_path(self.store)
        self.stale_pid: str | None = None
        self._fd: int | None = None
        self._finalizer = None
        if fcntl is None:
            return
        created = [folder for folder in (self.path.parent, *self.path.parent.parents) if not folder.exists()]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputPathError(
                message(f"cannot create the folder of the store ({exc.strerror or exc})", got=self.path.parent)
            ) from None
        try:
            while self._fd is None:
                self._fd = self._try_lock()
        except BaseException:
            for folder in created:
                try:
                    folder.rmdir()
                except OSError:
                    break
            raise
        # Released if the writer is dropped without release() (a test's writer, an exception), or at exit.
        self._finalizer = weakref.finalize(self, _release, self._fd, self.path, created)

    def _try_lock(self) -> int | None:
        """The locked file's descriptor, or None when the file was replaced meanwhile (try again)."""
        try:
            existing = os.stat(self.path)
            held_here = (existing.st_dev, existing.st_ino) in _HELD
        except OSError:
            held_here = False
        if held_here:
            # Not opened: closing any descriptor of the file would drop this process's lock.
            raise self._locked(str(os.getpid()))
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputPathError(
                message(
                    f"cannot create the lock file of the store ({exc.strerror or exc})",
                    got=self.path,
                    hint=f"choose another {option('out')}",
                )
            ) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held by a live process
            holder = os.pread(fd, 64, 0).decode(errors="replace").split()
            os.close(fd)
            raise self._locked(holder[0] if holder else "?") from None
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                os.close(fd)
                raise
            log.warning(f"the file system of '{self.store}' does not support locks: one writer per store is not enforced")
        try:
            same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder deleted it after we opened it
            os.close(fd)  # (closing drops this process's lock on it)
            return None
        _HELD.add(_key(fd))
        previous = os.read(fd, 64).decode(errors="replace").split()
        if previous:
            self.stale_pid = previous[0]
            log.info(f"the lock of '{self.store}' left by pid {self.stale_pid}, which is no longer running, was taken over")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _locked(self, pid: str) -> StoreLockedError:
        return StoreLockedError(
            message(
                f"another featx process (pid {pid}) is writing '{self.store}'",
                hint=f"wait for it to finish, or write to another {option('out')}; reading the store meanwhile is safe",
            )
        )

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._finalizer is not None and self._finalizer.alive

    def release(self) -> None:
        """Delete the lock file and release the lock (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()


def lock_store(store: str | os.PathLike) -> StoreLock | None:
    """Take the write lock of *store* before any work, or None when its folder cannot be written.

    A command takes the lock first, so that a second writer is told at once,
    before a model is loaded, and hands it to :class:`StoreWriter`, which
    releases it.  In a read-only folder there is no lock to take: the writer
    then accepts a store that is already complete and refuses any work.

    Raises
    ------
    StoreLockedError
        Another process is writing *store*.
    """
    try:
        return StoreLock(store)
    except OutputPathError:
        return None
