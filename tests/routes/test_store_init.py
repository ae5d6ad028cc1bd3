"""The store's first open when several processes open a fresh store at once (issue 15, item 4).

Two workers started together on a fresh SQLite store used to crash one of them with ``database is locked``
at ``PRAGMA journal_mode = WAL``; on PostgreSQL two ``CREATE TABLE`` at once fail on the catalog. Each test
starts real processes that open the same fresh stores at the same instant, trial after trial, through the
idempotency store and through :func:`routes.store_init.prepare_store` with a table of their own (the way
other parts of the engine add tables).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from routes.idempotency import IdempotencyStore
from routes.store_init import ADVISORY_LOCK_KEY, prepare_store, sqlite_path

ROOT = Path(__file__).resolve().parents[2]
TRIALS = 10
PROCESSES = 2

#: what each process runs: wait for the shared start instant, then open every fresh store in turn
_CHILD = """
import json, sys, time
import sqlalchemy as sa
from routes.idempotency import IdempotencyStore
from routes.store_init import prepare_store

start, urls = float(sys.argv[1]), sys.argv[2:]
extra = sa.MetaData()
sa.Table("extra_rows", extra, sa.Column("k", sa.String(20), primary_key=True), sa.Column("v", sa.Integer))
while time.time() < start:
    pass
errors = []
for url in urls:
    try:
        store = IdempotencyStore(url)
        try:
            prepare_store(store._engine, extra)
            store.claim("r", "e1", owner="w", lease_s=30)
        finally:
            store.close()
    except Exception as exc:
        errors.append(f"{url}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
print(json.dumps(errors))
"""


def _open_together(urls: list[str]) -> list[str]:
    """Start PROCESSES processes that open each store of ``urls`` at the same moment; their errors."""
    start = time.time() + 3.0  # after every interpreter has imported SQLAlchemy
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(start), *urls],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(PROCESSES)
    ]
    errors: list[str] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        errors.extend(json.loads(out))
    return errors


@pytest.fixture
def pg_urls(pg_url: str) -> list[str]:
    """TRIALS fresh, empty stores in one fresh PostgreSQL database: a schema each, as the search path."""
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as conn:
            for i in range(TRIALS):
                conn.execute(sa.text(f"CREATE SCHEMA trial_{i}"))
    finally:
        engine.dispose()
    return [f"{pg_url}?options=-csearch_path%3Dtrial_{i}" for i in range(TRIALS)]


def _assert_ready(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        tables = set(sa.inspect(engine).get_table_names())  # in the search path's schema
        assert {"claims", "extra_rows"} <= tables, (url, tables)
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()


def test_two_processes_open_fresh_sqlite_stores_together(tmp_path: Path) -> None:
    """Two processes ▶ the same fresh SQLite file at the same instant, 10 times ▶ no error, WAL, tables there."""
    urls = [f"sqlite:///{tmp_path / f'trial-{i}' / 'store.sqlite3'}" for i in range(TRIALS)]
    assert _open_together(urls) == []
    for url in urls:
        _assert_ready(url)


_OPEN_ONE = """
import sys, time
from routes.idempotency import IdempotencyStore
IdempotencyStore(sys.argv[1]).close()
print(time.time())
"""


def _open_while_held(url: str, hold: object, release: object) -> tuple[float, float]:
    """Hold the first-open lock, start a process opening ``url``; (when we released it, when it finished)."""
    hold()  # type: ignore[operator]
    proc = subprocess.Popen([sys.executable, "-c", _OPEN_ONE, url], cwd=ROOT, stdout=subprocess.PIPE)
    time.sleep(3.0)  # its imports, then it waits on the lock
    released = time.time()
    release()  # type: ignore[operator]
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    return released, float(out)


def test_a_first_open_waits_for_the_sqlite_init_lock(tmp_path: Path) -> None:
    """The lock is what makes first opens safe: while it is held, another process's first open waits for it.

    (The crash it prevents is a race: about one open in 200 when two processes open a fresh store at once.)
    """
    db = tmp_path / "store.sqlite3"
    fd = os.open(f"{db}.init.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        released, finished = _open_while_held(
            f"sqlite:///{db}", lambda: fcntl.flock(fd, fcntl.LOCK_EX), lambda: fcntl.flock(fd, fcntl.LOCK_UN)
        )
    finally:
        os.close(fd)
    assert finished >= released


def test_a_first_open_waits_for_the_postgresql_advisory_lock(pg_url: str) -> None:
    """While a session holds the store's advisory lock, another process's first open (CREATE TABLE) waits."""
    engine = sa.create_engine(pg_url)
    conn = engine.connect()
    try:
        lock = sa.text("SELECT pg_advisory_lock(:k)")
        unlock = sa.text("SELECT pg_advisory_unlock(:k)")
        released, finished = _open_while_held(
            pg_url,
            lambda: conn.execute(lock, {"k": ADVISORY_LOCK_KEY}),
            lambda: conn.execute(unlock, {"k": ADVISORY_LOCK_KEY}),
        )
    finally:
        conn.close()
        engine.dispose()
    assert finished >= released


def test_two_processes_open_fresh_postgresql_stores_together(pg_urls: list[str]) -> None:
    """Two processes ▶ the same fresh PostgreSQL database at the same instant, 10 times ▶ no error, tables there."""
    assert _open_together(pg_urls) == []
    for url in pg_urls:
        _assert_ready(url)


def test_prepare_store_on_an_in_memory_database_creates_and_upgrades() -> None:
    """``sqlite://`` has no file to lock: the tables are created and the upgrade runs, in one transaction."""
    engine = sa.create_engine("sqlite://")
    meta = sa.MetaData()
    sa.Table("t", meta, sa.Column("k", sa.Integer, primary_key=True))
    seen: list[bool] = []
    try:
        prepare_store(engine, meta, upgrade=lambda conn: seen.append(sa.inspect(conn).has_table("t")))
        prepare_store(engine, list(meta.tables.values()), upgrade=lambda conn: seen.append(conn is not None))
    finally:
        engine.dispose()
    assert seen == [True, True]


def test_create_false_leaves_a_fresh_store_empty_but_in_wal(tmp_path: Path) -> None:
    """create=False creates no table; the file is still switched to WAL (a property of the file)."""
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    with IdempotencyStore(url, create=False) as store:
        with store._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert not sa.inspect(store._engine).has_table("claims")


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("sqlite:///file:x?mode=memory&uri=true", None),
        ("sqlite:////var/lib/igb/store.sqlite3", Path("/var/lib/igb/store.sqlite3")),
        ("sqlite:///var/store.sqlite3", Path("var/store.sqlite3")),
    ],
)
def test_sqlite_path_names_the_file_to_lock_beside(url: str, path: Path | None) -> None:
    """The lock file goes beside a database file; an in-memory database has none."""
    assert sqlite_path(sa.make_url(url)) == path
