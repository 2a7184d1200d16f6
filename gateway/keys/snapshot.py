"""Serving without the store at start: the key-table snapshot file and the store opened later.

The admin listener's process writes the table it loaded to a snapshot file (digests and
key records only, never a secret; mode 600; written to a temporary file and renamed), after
its cold load and again every SNAPSHOT_INTERVAL while the feed moves. A worker that starts
while the store is unreachable loads that file instead, serves from it at once, and opens
the store in the background; the change feed then catches up from the snapshot's sequence
(or reloads the whole table when the entries it missed were pruned).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

from gateway.keys.feed import FeedFollower
from gateway.keys.table import KeyTable
from gateway.ratelimit.limiters import RateLimit
from gateway.store.base import AuthRow, KeyStore, StoreUnavailableError

log = logging.getLogger("keygate.snapshot")

SNAPSHOT_FORMAT = 1  # version of the file layout below
SNAPSHOT_MODE = 0o600  # owner read/write only: the file lists every key's digest and roles
SNAPSHOT_INTERVAL = 60.0  # seconds between rewrites of the snapshot while the feed moves
REOPEN_RETRY_MIN = 0.5  # seconds before the first retry to open an unreachable store
REOPEN_RETRY_MAX = 5.0  # seconds between retries at most
CAUSE_NOT_YET = "not reached since this process started (serving keys from the snapshot)"


# Driver errors (by class name, anywhere in the error's MRO; asyncpg is optional) that
# mean the server cannot be reached or cannot take a connection now, not that data is bad.
_UNREACHABLE_DRIVER_ERRORS = frozenset(
    {
        "PostgresConnectionError",
        "OperatorInterventionError",
        "InsufficientResourcesError",
        "InterfaceError",
    }
)


def store_unreachable(error: StoreUnavailableError) -> bool:
    """Whether the store failed only because it cannot be reached (network, server away).

    A corrupt, full or read-only database is not: serving from a snapshot or retrying
    without counting a crash would hide it.
    """
    cause = error.__cause__
    if isinstance(cause, OSError | TimeoutError):
        return True
    if cause is None:
        return False
    return any(kind.__name__ in _UNREACHABLE_DRIVER_ERRORS for kind in type(cause).__mro__)


class SnapshotError(Exception):
    """The snapshot file is missing, unreadable, incomplete or for another store."""


def _encode(row: AuthRow) -> str:
    digest, key_id, name, roles, status, expires_at, previous, until, limit = row
    return json.dumps(
        [
            base64.b64encode(digest).decode(),
            key_id,
            name,
            list(roles),
            status,
            expires_at,
            None if previous is None else base64.b64encode(previous).decode(),
            until,
            None if limit is None else [limit.requests, limit.per, limit.burst],
        ],
        separators=(",", ":"),
    )


def _decode(line: str) -> AuthRow:
    """One row back from its line; anything unexpected raises SnapshotError."""
    try:
        digest, key_id, name, roles, status, expires_at, previous, until, limit = json.loads(line)
        return (
            base64.b64decode(digest, validate=True),
            int(key_id),
            str(name),
            tuple(str(role) for role in roles),
            str(status),
            None if expires_at is None else float(expires_at),
            None if previous is None else base64.b64decode(previous, validate=True),
            None if until is None else float(until),
            None if limit is None else RateLimit(int(limit[0]), limit[1], int(limit[2])),
        )
    except (ValueError, TypeError, IndexError) as error:
        raise SnapshotError(f"bad row: {error}") from None


class SnapshotWriter:
    """Streams loaded rows to a temporary file; `commit` renames it over the snapshot.

    A write failure (read-only directory, full disk) is logged once and never fails the
    load: the process simply has no newer snapshot.
    """

    def __init__(self, path: Path, location: str) -> None:
        self._path = path
        self._temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._file: Any = None
        try:
            with contextlib.suppress(FileNotFoundError):
                self._temporary.unlink()
            fd = os.open(self._temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SNAPSHOT_MODE)
            self._file = os.fdopen(fd, "w", encoding="utf-8")
            header = {"format": SNAPSHOT_FORMAT, "store": location}
            self._file.write(json.dumps(header) + "\n")
        except OSError as error:
            self._fail(error)

    def _fail(self, error: OSError) -> None:
        log.warning("cannot write the key-table snapshot %s: %s", self._path, error)
        self.abandon()

    def add(self, rows: Iterable[AuthRow]) -> None:
        """Append a chunk of rows (the same chunks the table loader gets)."""
        if self._file is None:
            return
        try:
            self._file.write("".join(_encode(row) + "\n" for row in rows))
        except OSError as error:
            self._fail(error)

    def commit(self, seq: int) -> bool:
        """Close the rows with their feed sequence and put the file in place atomically."""
        if self._file is None:
            return False
        try:
            self._file.write(json.dumps({"seq": seq}) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self._temporary, self._path)
        except OSError as error:
            self._fail(error)
            return False
        return True

    def abandon(self) -> None:
        """Drop the temporary file (the previous snapshot stays)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            self._temporary.unlink()


def _lines(path: Path) -> Iterator[str]:
    try:
        with path.open(encoding="utf-8") as file:
            yield from file
    except OSError as error:
        raise SnapshotError(str(error)) from None
    except UnicodeDecodeError:
        raise SnapshotError("not text") from None


def load_snapshot(path: Path, location: str, table: KeyTable) -> int:
    """Fill `table` from the snapshot at `path` taken of the store at `location`.

    Return the key count. The table changes only when the whole file is read and valid.
    """
    lines = _lines(path)
    try:
        header = json.loads(next(lines))
    except (StopIteration, ValueError):
        raise SnapshotError("no header") from None
    if not isinstance(header, dict) or header.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError("unknown format")
    if header.get("store") != location:
        raise SnapshotError(f"taken of another store ({header.get('store')})")
    loader = table.loader()
    chunk: list[AuthRow] = []
    count = 0
    for line in lines:
        if line.startswith("{"):
            try:
                seq = int(json.loads(line)["seq"])
            except (ValueError, KeyError, TypeError):
                raise SnapshotError("bad trailer") from None
            loader.add(chunk)
            loader.finish(seq)
            return count + len(chunk)
        chunk.append(_decode(line))
        if len(chunk) >= SNAPSHOT_CHUNK:
            loader.add(chunk)
            count += len(chunk)
            chunk = []
    raise SnapshotError("incomplete (no trailer)")


SNAPSHOT_CHUNK = 10_000  # rows handed to the table loader at once


async def write_snapshot(store: KeyStore, path: Path) -> int | None:
    """Write a fresh snapshot of the store's auth rows; return its sequence (None: failed)."""
    writer = SnapshotWriter(path, store.location)
    try:
        seq = await store.load_auth(writer.add)
    except BaseException:
        writer.abandon()
        raise
    return seq if writer.commit(seq) else None


async def snapshot_periodically(
    store: KeyStore, table: KeyTable, path: Path, interval: float, written: int | None
) -> None:
    """Rewrite the snapshot every `interval` seconds when the table moved since the last one."""
    while True:
        await asyncio.sleep(interval)
        if table.seq == written:
            continue
        try:
            written = await write_snapshot(store, path) or written
        except StoreUnavailableError:
            continue  # the follower and the admin API report the outage
        except Exception:
            log.exception("key-table snapshot failed; retrying later")


class PendingStore:
    """Stands in for a store that could not be opened at start, until it opens.

    Until then every store call raises StoreUnavailableError (the admin API answers 503,
    /readyz 503, the feed and usage flusher retry as in any outage); once `reopen` has
    opened the real store, every attribute is the real store's.
    """

    def __init__(self, store: KeyStore, cause: str) -> None:
        self._store = store
        self._cause = cause
        self._opened = asyncio.Event()

    @property
    def opened(self) -> bool:
        """Whether the real store is open."""
        return self._opened.is_set()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if self._opened.is_set() or not inspect.iscoroutinefunction(attribute):
            return attribute
        if name == "listen":
            return self._listen_once_open
        if name == "close":
            return self._close
        return self._unavailable

    async def _unavailable(self, *args: object, **kwargs: object) -> Any:
        raise StoreUnavailableError(self._store.location, self._cause)

    async def _close(self) -> None:
        """Nothing to close while the real store never opened."""

    async def _listen_once_open(self, wake: Callable[[], None]) -> None:
        await self._opened.wait()
        listen = cast(Any, self._store).listen
        await listen(wake)

    async def reopen(self, follower: Callable[[], FeedFollower | None]) -> None:
        """Retry opening the real store (backing off); then wake the feed follower."""
        delay = REOPEN_RETRY_MIN
        while True:
            try:
                await self._store.open()
            except StoreUnavailableError:
                await asyncio.sleep(delay)
                delay = min(REOPEN_RETRY_MAX, delay * 2)
                continue
            self._opened.set()
            log.info("store %s reachable: following the change feed again", self._store.location)
            running = follower()
            if running is not None:
                running.wake()
            return
