"""The local-directory object store (``file://``): atomic puts by temp file + rename, fsync of the
file and its directory, ``syncfs`` for a batch (docs/architecture.md, "Object store layout")."""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    pass

from scraper.store.base import DEFAULT_CONTENT_TYPE, TMP_PREFIX, ObjectStore, StoreError, validate_key, validate_prefix

__all__ = ["LocalStore"]


class LocalStore(ObjectStore):
    """Objects as files under a directory; the embedded default (``file://./data``).

    Atomicity comes from writing a temp file in the destination directory, fsyncing it and
    ``os.replace``-ing it into place (rename is atomic within one filesystem);
    ``put_if_absent`` uses ``os.link`` instead, which fails if the target exists and so is
    an atomic create-if-absent across threads *and* processes.
    """

    group_sync = True

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.root = _parse_file_uri(uri)
        self._dirs: set[Path] = set()
        self._seq = itertools.count()

    def sync(self) -> None:
        """One syncfs(2) of the store's filesystem: data and directory entries of every object
        written since, in one flush (group commit) instead of two fsyncs per object."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            if _syncfs is None or _syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    # -- helpers

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _fail(self, op: str, where: Path | str, exc: OSError) -> NoReturn:
        raise StoreError(f"local store: {op} {where} failed: {exc.strerror or exc}") from exc

    def _write_temp(self, path: Path, data: bytes, durable: bool = True) -> Path:
        """Write ``data`` to a fsynced temp file next to ``path`` and return its path."""
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}-{next(self._seq)}-{_RUN_TAG}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            # the directory went away after it was cached (the store was removed and made again during
            # an outage): without this, every later put there, and the outage probe, failed for good
            self._dirs.discard(path.parent)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quiet(tmp)
            raise
        os.close(fd)
        return tmp

    # -- API

    def put(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE, durable: bool = True) -> None:
        """Overwrite atomically; ``content_type`` is not recorded on disk."""
        path = self._path(key)
        try:
            # durable=False (evidence snapshots): still atomic (rename), but no fsync — an OS crash
            # may lose it, which costs a replay snapshot, never data or an ack
            tmp = self._write_temp(path, data, durable)
            try:
                os.replace(tmp, path)
            except BaseException:
                _unlink_quiet(tmp)
                raise
            if durable:
                _fsync_dir(path.parent)
        except OSError as exc:
            self._fail("put", path, exc)

    def put_if_absent(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE) -> bool:
        """Create-if-absent via ``os.link`` (fails with EEXIST, never overwrites)."""
        path = self._path(key)
        try:
            if path.exists():  # cheap early-out; the link below is the real check
                return False
            tmp = self._write_temp(path, data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                _unlink_quiet(tmp)
            _fsync_dir(path.parent)
            return True
        except OSError as exc:
            self._fail("put_if_absent", path, exc)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None
        except OSError as exc:
            self._fail("get", path, exc)

    def exists(self, key: str) -> bool:
        path = self._path(key)
        try:
            return path.is_file()
        except OSError as exc:
            self._fail("exists", path, exc)

    def list(self, prefix: str = "") -> Iterator[str]:
        """The keys under ``prefix``, sorted (code point order, which equals S3's UTF-8 byte order).

        Materialised (the whole :meth:`scan`) before the first is yielded, so a concurrent writer cannot
        make the walk fail half-way through a caller's loop."""
        yield from sorted(self.scan(prefix))

    def scan(self, prefix: str = "") -> Iterator[str]:
        """Walk only the directory the prefix points into, skipping temp files, and yield keys as it goes,
        unsorted (bounded memory for huge runs); a walk error is raised once the walk is over."""
        validate_prefix(prefix)
        dir_part = prefix.rpartition("/")[0]
        start = self.root.joinpath(*dir_part.split("/")) if dir_part else self.root
        errors: list[OSError] = []

        def onerror(exc: OSError) -> None:
            if not isinstance(exc, FileNotFoundError | NotADirectoryError):
                errors.append(exc)

        for dirpath, dirnames, filenames in os.walk(start, onerror=onerror):
            dirnames[:] = [d for d in dirnames if not d.startswith(TMP_PREFIX)]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            base = "" if rel == "." else rel + "/"
            for name in filenames:
                if not name.startswith(TMP_PREFIX) and (key := base + name).startswith(prefix):
                    yield key
            if errors:
                self._fail("list", start, errors[0])

    def put_file(self, key: str, path: Path, *, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        """Copy into a temp file beside the target, fsync, rename: atomic and streamed."""
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{TMP_PREFIX}{target.name}.{os.getpid()}-{next(self._seq)}-{_RUN_TAG}")
            try:
                shutil.copyfile(path, tmp)
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, target)
            except BaseException:
                _unlink_quiet(tmp)
                raise
            _fsync_dir(target.parent)
        except OSError as exc:
            self._fail("put", target, exc)

    def delete(self, key: str) -> None:
        """Unlink the file; empty parent directories are left alone.

        Removing them would race with a concurrent ``put`` that just created the directory.
        """
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            self._fail("delete", path, exc)

    def describe(self, key: str = "") -> str:
        return str(self._path(key)) if key else str(self.root)


def _parse_file_uri(uri: str) -> Path:
    """``file:///abs``, ``file://localhost/abs`` or ``file://./rel`` (relative to cwd now).

    Relative paths are resolved once, at open time, so a later ``chdir`` does not move the
    store. The path is taken literally (no percent-decoding): these URIs are typed by people.
    """
    rest = uri[len("file://") :]
    if rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    if not rest:
        raise ValueError(f"file store URI has no path: {uri!r} (try file://./data)")
    if "@" in rest.partition("/")[0]:
        # file://user:secret@host/x named a directory "user:secret@host" and printed the secret in every summary
        raise ValueError("file store URI has credentials or a host (user@host): a file:// store is a local "
                         "directory, file:///absolute/path or file://./relative/path")
    path = Path(rest).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    return Path(os.path.normpath(path))


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _load_syncfs() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
        fn.argtypes = [ctypes.c_int]
        return fn
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()
_RUN_TAG = uuid.uuid4().hex[:8]


def _fsync_dir(path: Path) -> None:
    """Persist the directory entry so a rename/link survives power loss (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- S3
