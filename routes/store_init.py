"""The store's first open, safe when several processes open a fresh database at the same moment.

Every table the bus keeps in its store (claims, and whatever other parts of the engine add: schedules,
per-dossier order, connector state) is created through :func:`prepare_store`, so two workers started
together (``igate-bus run --processes N``, or N hosts) never crash on each other's first open:

- **SQLite**: switching a fresh file to WAL takes an exclusive lock, and SQLite answers
  ``database is locked`` at once to the second process instead of waiting for its busy timeout (the
  journal-mode change does not run the busy handler), so the switch and the ``CREATE TABLE`` run under an
  exclusive ``flock`` on a sidecar file (``<database>.init.lock``) and are retried while the database is
  locked by someone outside the bus;
- **PostgreSQL**: two ``CREATE TABLE IF NOT EXISTS`` at once can both pass the check, and the loser fails
  on the catalog's unique index (``pg_type_typname_nsp_index``), so the creation runs in a transaction
  holding a transaction-level advisory lock (released at commit): the second process waits, then sees
  the tables.

One helper rather than a copy per table: a module that adds tables passes its ``MetaData`` (or a list of
tables) and, for an upgrade of an existing table, an ``upgrade`` callable run under the same lock.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final

import sqlalchemy as sa

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from sqlalchemy.engine import Connection, Engine

__all__ = ["ADVISORY_LOCK_KEY", "prepare_store", "sqlite_path"]

#: the PostgreSQL advisory lock every first open of the bus's store takes (any constant 64-bit number
#: works; this one spells "igatebus" in ASCII, so it reads back in ``pg_locks``)
ADVISORY_LOCK_KEY: Final = 0x6967617465627573
#: how long a first open keeps retrying a SQLite database another program holds locked
SQLITE_LOCKED_PATIENCE_S: Final = 30.0


def sqlite_path(url: sa.URL) -> Path | None:
    """The file of a SQLite URL; None for an in-memory database or a ``file:`` URI."""
    database = url.database or ""
    if database in {"", ":memory:"} or database.startswith("file:") or "mode=memory" in database:
        return None
    return Path(database).expanduser()


def prepare_store(
    engine: Engine,
    tables: sa.MetaData | Sequence[sa.Table],
    *,
    create: bool = True,
    upgrade: Callable[[Connection], None] | None = None,
) -> None:
    """Make the store ready: WAL on SQLite, the tables created (when ``create``), then ``upgrade`` run.

    Safe when several processes (or hosts, on PostgreSQL) call it on the same fresh database at once:
    exactly one creates each table, the others wait and find it there.

    Args:
        engine: The store's engine (SQLite or PostgreSQL).
        tables: What to create when missing: a ``MetaData`` or some of its tables.
        create: False opens an existing store (its tables are not created); WAL is still set on SQLite.
        upgrade: Run in the same transaction after the creation, under the same lock (adding a column to
            a table an earlier release made, for instance); it must be idempotent.
    """
    backend = engine.dialect.name
    if backend == "sqlite":
        path = sqlite_path(engine.url)
        with _file_lock(path):
            _retry_locked(lambda: _create_sqlite(engine, tables, create=create, upgrade=upgrade, wal=path is not None))
    elif backend == "postgresql":
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
            _create_in(conn, tables, create=create, upgrade=upgrade)
    else:
        with engine.begin() as conn:
            _create_in(conn, tables, create=create, upgrade=upgrade)


def _create_sqlite(
    engine: Engine,
    tables: sa.MetaData | Sequence[sa.Table],
    *,
    create: bool,
    upgrade: Callable[[Connection], None] | None,
    wal: bool,
) -> None:
    if wal:
        # outside a transaction: SQLite refuses to change the journal mode inside one
        with engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode = WAL").scalar()
            conn.commit()
        if str(mode).lower() != "wal":
            raise sa.exc.OperationalError("PRAGMA journal_mode = WAL", {}, RuntimeError(f"journal mode {mode}"))
    with engine.begin() as conn:
        _create_in(conn, tables, create=create, upgrade=upgrade)


def _create_in(
    conn: Connection,
    tables: sa.MetaData | Sequence[sa.Table],
    *,
    create: bool,
    upgrade: Callable[[Connection], None] | None,
) -> None:
    if create:
        if isinstance(tables, sa.MetaData):
            tables.create_all(conn, checkfirst=True)
        else:
            for table in tables:
                table.create(conn, checkfirst=True)
    if upgrade is not None:
        upgrade(conn)


@contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<database>.init.lock`` (nothing for an in-memory database).

    A sidecar file rather than the database itself: SQLite's own POSIX locks on the database file would be
    released when any descriptor of it in this process closes (a POSIX lock rule), and a sidecar keeps ours
    apart from them. The file stays (empty), like SQLite's ``-wal`` and ``-shm`` files.
    """
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.init.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _retry_locked(action: Callable[[], None]) -> None:
    """Run ``action``, again while SQLite says the database is locked (a program outside the bus holds it)."""
    deadline = time.monotonic() + SQLITE_LOCKED_PATIENCE_S
    delay = 0.01
    while True:
        try:
            action()
        except sa.exc.OperationalError as exc:
            if "locked" not in str(exc.orig) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        else:
            return
