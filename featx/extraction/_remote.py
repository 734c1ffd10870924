"""Images behind URLs, through fsspec: which schemes work, reads that are retried and pipelined.

``s3://``, ``gs://``, ``az://``, ``http(s)://`` and every other scheme fsspec
has a backend installed for.  Credentials and endpoints come from the
backend's usual environment (``AWS_ENDPOINT_URL``, ``AWS_PROFILE``,
``GOOGLE_APPLICATION_CREDENTIALS``, ...), never from featx's options.

Each process (the driver, a decoding worker, a Ray worker) makes its own
file system object on first use: an fsspec object made before a fork would
share its event loop and connections with the parent.  A read that fails
for a passing reason (a timeout, a dropped connection, a server error) is tried
:data:`READ_ATTEMPTS` times in all; a missing object or a refused access is
final at once.  :func:`read_ahead` keeps :data:`READ_AHEAD` reads in flight
per process, so that the round trips of one image overlap the decoding of
the others.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import DataError, message, option
from ._image_source import decode_bytes
from ._images import ImageDecodeError

__all__ = [
    "READ_ATTEMPTS",
    "READ_AHEAD",
    "is_url",
    "check_url",
    "filesystem",
    "read_bytes",
    "read_ahead",
    "decode_ahead",
    "listing_errors",
    "join_url",
]

#: Times a read is tried before the image is listed in /failed with the reason.
READ_ATTEMPTS = 3
#: Reads in flight per process while a batch's images are fetched.
READ_AHEAD = 8
# Seconds before the second and the third attempt.
_BACKOFF = (0.2, 1.0)

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# fsspec protocol -> (what brings it, how to install it): named in the error when it is missing.
_BACKENDS = {
    "s3": ("s3fs", "pip install 'featx[s3]'"),
    "s3a": ("s3fs", "pip install 'featx[s3]'"),
    "gs": ("gcsfs", "pip install 'featx[gcs]'"),
    "gcs": ("gcsfs", "pip install 'featx[gcs]'"),
    "az": ("adlfs", "pip install 'featx[azure]'"),
    "abfs": ("adlfs", "pip install 'featx[azure]'"),
    "abfss": ("adlfs", "pip install 'featx[azure]'"),
    "http": ("aiohttp", "pip install 'featx[http]'"),
    "https": ("aiohttp", "pip install 'featx[http]'"),
}
# Options of a protocol's file system: a listing that cannot connect fails in seconds, not minutes.
_OPTIONS: dict[str, dict[str, Any]] = {
    "s3": {"config_kwargs": {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 2}}},
}
_OPTIONS["s3a"] = _OPTIONS["s3"]
# s3fs retries some errors itself (5 times by default, backing off up to 15 s): fewer, our attempts follow.
_BACKEND_RETRIES = 2

# (process id, protocol) -> its file system; and the read-ahead threads of each process.
_FILESYSTEMS: dict[tuple[int, str], Any] = {}
_POOLS: dict[int, ThreadPoolExecutor] = {}

T = TypeVar("T")


def is_url(text: str) -> bool:
    """Whether *text* is a URL (``scheme://...``), not a local path."""
    return _URL.match(text) is not None


def _protocol(url: str) -> str:
    match = _URL.match(url)
    assert match is not None, url
    return match.group(1).lower()


def check_url(url: str) -> None:
    """Refuse a URL whose scheme no installed fsspec backend reads, naming what to install.

    Raises
    ------
    DataError
    """
    protocol = _protocol(url)
    backend = _BACKENDS.get(protocol)
    if importlib.util.find_spec("fsspec") is None:
        raise DataError(message(f"{option('data')} '{url}' is a URL, which needs fsspec", hint="pip install fsspec"))
    import fsspec

    if protocol not in fsspec.available_protocols():
        known = ", ".join(f"{p}://" for p in sorted(_BACKENDS))
        raise DataError(
            message(
                f"unknown URL scheme '{protocol}://' in {option('data')}",
                got=url,
                hint=f"featx reads {known} and every other scheme fsspec has a backend for",
            )
        )
    if backend is not None and importlib.util.find_spec(backend[0]) is None:
        raise DataError(
            message(f"{option('data')} '{url}' is a {protocol}:// URL, which needs {backend[0]}", hint=backend[1])
        )
    try:
        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as exc:
        raise DataError(message(f"{option('data')} '{url}' cannot be read", hint=str(exc))) from None


def filesystem(url: str, *, fresh: bool = False) -> tuple[Any, str]:
    """The fsspec file system of *url* in this process, and the path within it.

    *fresh* forgets what earlier listings saw (fsspec keeps them, and answers
    reads of objects added since with "not found"): a listing asks the storage.
    """
    import fsspec

    protocol = _protocol(url)
    key = (os.getpid(), protocol)
    fs = _FILESYSTEMS.get(key)
    if fs is None:
        fs = fsspec.filesystem(protocol, skip_instance_cache=True, **_OPTIONS.get(protocol, {}))
        if hasattr(fs, "retries"):
            fs.retries = _BACKEND_RETRIES
        _FILESYSTEMS[key] = fs
    elif fresh:
        fs.invalidate_cache()
    return fs, fs._strip_protocol(url)


def join_url(base: str, path: str) -> str:
    """*path* (relative, ``/`` separators) under the URL prefix *base*."""
    return base.rstrip("/") + "/" + path


def _final(exc: BaseException) -> bool:
    """Whether another attempt cannot help: the object is not there, or access is refused."""
    return isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError))


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, OSError) else f"{type(exc).__name__}: {text}"


def _read_failure(exc: BaseException) -> str:
    """Why a read failed, in the words of a local file's failure where it is the same."""
    if isinstance(exc, FileNotFoundError):
        return "No such file or directory"  # s3fs's text is the key alone
    if isinstance(exc, PermissionError):
        return f"access refused: {exc}"
    return _reason(exc)


def read_bytes(url: str, start: int | None = None, end: int | None = None) -> bytes:
    """The bytes of *url* (from *start* to *end*), tried up to :data:`READ_ATTEMPTS` times.

    Raises
    ------
    OSError
        The object is missing or refused, or every attempt failed; the message is the reason.
    """
    fs, path = filesystem(url)
    for attempt in range(READ_ATTEMPTS):
        try:
            return fs.cat_file(path, start=start, end=end)
        except Exception as exc:
            if _final(exc):
                raise OSError(_read_failure(exc)) from None
            if attempt + 1 == READ_ATTEMPTS:
                raise OSError(f"{_read_failure(exc)} ({READ_ATTEMPTS} attempts)") from None
            time.sleep(_BACKOFF[min(attempt, len(_BACKOFF) - 1)])
    raise AssertionError("unreachable")


def read_ahead(tasks: Sequence[Callable[[], T]], window: int | None = None) -> Iterator[T | Exception]:
    """Run *tasks* on this process's read threads, *window* (:data:`READ_AHEAD`) at a time; yield each result in order.

    A task that raises yields its exception (the caller decides what a failed read is).
    """
    window = window or READ_AHEAD
    pool = _POOLS.get(os.getpid())
    if pool is None:
        pool = _POOLS[os.getpid()] = ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="featx-read")
    queued: deque[Future] = deque()
    upcoming = iter(tasks)
    for task in upcoming:
        queued.append(pool.submit(task))
        if len(queued) >= window:
            break
    while queued:
        future = queued.popleft()
        for task in upcoming:
            queued.append(pool.submit(task))
            break
        try:
            yield future.result()
        except Exception as exc:
            yield exc


def decode_ahead(reads: Sequence[Callable[[], bytes]], *, max_pixels: int) -> Iterator[Any]:
    """The images that *reads* return the bytes of, read :data:`READ_AHEAD` at a time, decoded here in order.

    Yields an RGB PIL image, or the :class:`ImageDecodeError` of an image that
    could not be read or decoded (:meth:`ImageSource.load_many`'s contract).
    """
    for data in read_ahead(reads):
        try:
            if isinstance(data, Exception):
                raise ImageDecodeError(f"unreadable: {data}")
            image = decode_bytes(lambda: data, max_pixels=max_pixels)
        except ImageDecodeError as exc:
            image = exc
        yield image


@contextlib.contextmanager
def listing_errors(where: str) -> Iterator[None]:
    """Turn what goes wrong while listing *where* into one line: not found, access refused, no connection."""
    remote = is_url(where)
    try:
        yield
    except DataError:
        raise
    except FileNotFoundError as exc:
        hint = "check the bucket and the path (and the endpoint: AWS_ENDPOINT_URL for S3-compatible servers)"
        raise DataError(message(f"not found: '{where}' ({exc})", hint=hint if remote else None)) from None
    except PermissionError as exc:
        hint = "check the credentials in the environment (AWS_ACCESS_KEY_ID, AWS_PROFILE, ...)"
        raise DataError(message(f"access to '{where}' refused ({exc})", hint=hint if remote else None)) from None
    except Exception as exc:
        hint = "check the endpoint (AWS_ENDPOINT_URL for S3-compatible servers) and the network"
        raise DataError(message(f"cannot read '{where}': {_reason(exc)}", hint=hint if remote else None)) from None
