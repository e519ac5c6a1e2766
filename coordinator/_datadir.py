"""The coordinator's data directory: one coordinator at a time, and the cluster id it holds.

The directory is made 0700 (an existing one too) and every file the coordinator writes in it
0600, whatever the umask: the decision log and the admin token are nobody else's business.

`DATA_DIR/coordinator.lock`
    Locked (`flock`, exclusive) by the coordinator for its whole life and released by the
    kernel when the process ends, however it ends. A second coordinator on the same
    directory (which would write the same decision log) refuses to start with
    `DataDirInUse`, naming the directory and the pid the lock file records.
`DATA_DIR/cluster-id`
    The cluster id every gtrid of this directory's log carries. Written once, at the first
    start: the configured id, else (a directory from before this file existed) the cluster of
    the newest gtrid in the log, else a generated one (`c` + 15 random base32 characters,
    1 in 2^75 to collide). So two deployments that set no cluster id never share one, and a
    collision can only be made on purpose (see `_claim` for the check of that). Afterwards a
    configured id must equal the file's: the log's gtrids and any prepared branches belong to
    the old id, and a coordinator with another id would never finish them.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from twostep.client import InvalidIdentifier
from twostep.client.tpc import LOCAL_CLUSTER, parse_gtrid, validate_cluster_id

from ._config import ConfigError

__all__ = ["CLUSTER_ID_FILE_NAME", "LOCK_FILE_NAME", "DataDir", "DataDirInUse"]

log = logging.getLogger("twostep.coordinator")

LOCK_FILE_NAME = "coordinator.lock"
CLUSTER_ID_FILE_NAME = "cluster-id"


class DataDirInUse(Exception):
    """Another live process holds the data directory's lock: it runs a coordinator on it."""


class DataDir:
    """A data directory, created if missing and locked until `close()`.

    Raises `DataDirInUse` if another process holds it, `OSError` if it cannot be created.
    """

    def __init__(self, path: Path):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)  # mkdir's mode passes through the umask, and may have existed
        self.path = path.resolve()
        lock_path = self.path / LOCK_FILE_NAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)  # a lock file from an older version may be 0644
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"data directory {self.path} is in use by another coordinator (pid {holder}, "
                f"which holds {lock_path.name}); run one coordinator per data directory"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message above, nothing else
        self._fd: int | None = fd

    def close(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None

    def cluster_id(self, configured: str, newest_gtrid: Callable[[], str | None]) -> str:
        """The cluster id of this directory (rules in the module docstring), written to its
        file if that is missing. `newest_gtrid` reads the log (only without the file).

        Raises `ConfigError` when `configured` differs from the id the directory holds, or the
        file is not a valid cluster id; `OSError` if the file cannot be written.
        """
        path = self.path / CLUSTER_ID_FILE_NAME
        held, source = self._read(path), f"{path}"
        if held is None:
            gtrid = newest_gtrid()
            if gtrid is not None:
                with contextlib.suppress(InvalidIdentifier):
                    held = parse_gtrid(gtrid).cluster
                    source = f"the gtrids of {self.path} (its decision log)"
        if configured and held and configured != held:
            raise ConfigError(
                f"cluster id {configured!r} is configured, but data directory {self.path} "
                f"belongs to cluster {held!r} ({source}): its logged transactions and their "
                f"prepared branches carry {held!r}, and a coordinator with another id would "
                "never finish them. Configure that id (or none), or use a new data directory"
            )
        cluster = held or configured or _generated()
        if not path.exists():
            _write_durably(path, cluster)
            if held:
                log.warning(
                    "kept the cluster id of the existing decision log",
                    extra={"cluster": cluster, "cluster_id_file": path},
                )
        return cluster

    @staticmethod
    def _read(path: Path) -> str | None:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise ConfigError(f"cannot read the cluster id file {path}: {why}") from None
        try:
            validate_cluster_id(text)
        except InvalidIdentifier as exc:
            raise ConfigError(f"cluster id file {path}: {exc}") from None
        if text == LOCAL_CLUSTER:
            raise ConfigError(f"cluster id file {path}: {LOCAL_CLUSTER!r} is reserved")
        return text


def _generated() -> str:
    random = base64.b32encode(secrets.token_bytes(10)).decode().lower()
    return validate_cluster_id("c" + random[:15])


def _write_durably(path: Path, text: str) -> None:
    """Write a new file whole or not at all: a temporary file, fsynced, renamed in place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{text}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
