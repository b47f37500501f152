"""The state file's database: the connection, its schema migrations, transactions, the mapping
of sqlite3 errors to StoreError, and the UTC time codec.

`Database` is the base of every part of the store: it owns the one connection and the path,
and gives its subclasses the transaction and query helpers. This module imports only the
standard library, `rackwatch.errors` and the store's `_migrations` and `marks`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from rackwatch.errors import StateFileUnreadable, StoreError
from rackwatch.store._migrations import MIGRATIONS
from rackwatch.store.marks import refresh_marks


def _fill_marks(conn: sqlite3.Connection) -> None:
    agents = [row[0] for row in conn.execute("SELECT name FROM agents")]
    refresh_marks(conn, agents)


# What a step computes in Python, in the step's own transaction, after its SQL.
FILLS: dict[int, Callable[[sqlite3.Connection], None]] = {7: _fill_marks}

BUSY_TIMEOUT_S = 5.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Database:
    """The state file, opened once. Also a context manager that closes it."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path
        self._batching = False  # inside `batch()`: each write's transaction is a savepoint

    @classmethod
    def open(cls, path: Path) -> Self:
        """Open the state file for writing, creating and migrating it as needed."""
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"state file {path}: cannot create directory {exc.filename}: {exc.strerror}"
            ) from exc
        try:
            # Created here, not by SQLite, so that it is private from the first byte. SQLite
            # gives its -wal and -shm files the same mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise StoreError(f"state file {path}: {exc.strerror}") from exc
        conn = _connect(str(path), path, uri=False)
        try:
            with _mapped(path):
                conn.execute("PRAGMA journal_mode = WAL")
                # In WAL mode NORMAL loses nothing when the process dies; only a power loss
                # can drop the last commit.
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
                migrate(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    @classmethod
    def open_readonly(cls, path: Path) -> Self:
        """Open an existing state file for reading only, while a daemon may be writing it.

        In a directory this user may not write (a copy on read-only media, say), SQLite cannot
        make the file's shared-memory index: the file is then read as immutable, as it is now.
        """
        if not exists(path):
            raise StoreError(f"state file {path}: no such file")
        if not os.access(path, os.R_OK):
            raise _unreadable(path)
        uri = path.resolve().as_uri()
        conn = _connect(f"{uri}?mode=ro", path, uri=True)
        try:
            with _mapped(path):
                try:
                    version = _known_version(conn, path)
                except sqlite3.OperationalError:
                    if os.access(path.parent, os.W_OK):
                        raise
                    conn.close()
                    conn = _connect(f"{uri}?mode=ro&immutable=1", path, uri=True)
                    version = _known_version(conn, path)
        except StoreError:
            conn.close()
            raise
        if version != len(MIGRATIONS):
            conn.close()
            if version > len(MIGRATIONS):
                raise _newer(path, version, len(MIGRATIONS))
            raise StoreError(
                f"state file {path}: schema {version} is older than this rackwatch's"
                f" {len(MIGRATIONS)}; run the daemon or run-once once to upgrade it"
            )
        return cls(conn, path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Make the reads inside one consistent view of the file, whatever a writer does meanwhile.

        For reads only: a write inside would fail. Re-entrant: inside another `reading()`, it
        adds nothing.
        """
        if self._conn.in_transaction:
            yield
            return
        with _mapped(self._path):
            self._conn.execute("BEGIN DEFERRED")
        try:
            yield
        finally:
            if self._conn.in_transaction:
                with _mapped(self._path):
                    self._conn.execute("ROLLBACK")  # nothing was written

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Make the writes inside one transaction, durable when the block ends.

        Each write inside is a savepoint of it: one that raises undoes only its own changes,
        and the others are committed. An error that leaves the block undoes them all.
        """
        with _mapped(self._path):
            self._conn.execute("BEGIN IMMEDIATE")
            self._batching = True
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                self._batching = False

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with _mapped(self._path):
            if self._batching:
                self._conn.execute("SAVEPOINT write")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK TO write")
                    self._conn.execute("RELEASE write")
                    raise
                self._conn.execute("RELEASE write")
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _update(self, what: str, sql: str, params: Sequence[Any]) -> None:
        with self._transaction() as conn:
            if conn.execute(sql, params).rowcount != 1:
                raise StoreError(f"state file {self._path} has no {what}")

    def _select(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> list[sqlite3.Row]:
        with _mapped(self._path):
            return self._conn.execute(sql, params).fetchall()


def migrate(conn: sqlite3.Connection, path: Path, migrations: Sequence[str] = MIGRATIONS) -> None:
    """Apply the steps the database lacks, each in its own transaction with its version bump."""
    version = _known_version(conn, path)
    if version > len(migrations):
        raise _newer(path, version, len(migrations))
    for number, sql in enumerate(migrations[version:], start=version + 1):
        try:
            conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\n;")
            if (fill := FILLS.get(number)) is not None and migrations is MIGRATIONS:
                fill(conn)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            # Another process opening the same new file may have applied this step first.
            if user_version(conn) >= number:
                continue
            raise StoreError(
                f"state file {path}: upgrade to schema {number} failed: {exc}"
            ) from exc


def exists(path: Path) -> bool:
    """Whether the state file is there; StateFileUnreadable when this user may not look."""
    try:
        return path.is_file()
    except PermissionError:
        raise _unreadable(path) from None


def _unreadable(path: Path) -> StateFileUnreadable:
    return StateFileUnreadable(
        f"state file {path}: permission denied; run this with sudo, or as a user of a group"
        f" that may read {path.parent}"
    )


def user_version(conn: sqlite3.Connection) -> int:
    """The schema version of the database: how many steps of MIGRATIONS it has."""
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def _known_version(conn: sqlite3.Connection, path: Path) -> int:
    """`user_version`, refusing one that no rackwatch writes (below zero)."""
    version = user_version(conn)
    if version < 0:
        raise StoreError(f"state file {path}: schema {version} is not one rackwatch writes")
    return version


def _connect(database: str, path: Path, *, uri: bool) -> sqlite3.Connection:
    # isolation_level=None: sqlite3 opens no transactions of its own; ours are explicit.
    with _mapped(path):
        conn = sqlite3.connect(database, timeout=BUSY_TIMEOUT_S, isolation_level=None, uri=uri)
    conn.row_factory = sqlite3.Row
    return conn


def _newer(path: Path, version: int, known: int) -> StoreError:
    return StoreError(
        f"state file {path}: written by a newer rackwatch"
        f" (schema {version}; this one knows up to {known})"
    )


@contextmanager
def _mapped(path: Path) -> Iterator[None]:
    """Turn what sqlite3 raises into one StoreError line naming the file."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"state file {path}: {exc}") from exc


def as_text(at: datetime) -> str:
    """An aware time as the stored text: UTC ISO 8601 with microseconds, so texts sort as times."""
    if at.tzinfo is None:
        raise ValueError(f"naive datetime {at!r}: the store keeps UTC times only")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def as_stamp(at: datetime) -> int:
    """An aware time as a check stores it: integer microseconds since the epoch (UTC)."""
    if at.tzinfo is None:
        raise ValueError(f"naive datetime {at!r}: the store keeps UTC times only")
    return (at - EPOCH) // timedelta(microseconds=1)


def as_time(stored: str | int | None) -> datetime | None:
    """A stored time read back as an aware time: a text (`as_text`) or a stamp (`as_stamp`);
    None stays None."""
    if stored is None:
        return None
    if isinstance(stored, int):
        return from_stamp(stored)
    return datetime.fromisoformat(stored)


def from_stamp(stamp: int) -> datetime:
    """A check's stored time (`as_stamp`) read back as an aware time."""
    return EPOCH + timedelta(microseconds=stamp)
