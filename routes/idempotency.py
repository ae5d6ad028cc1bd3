"""The idempotency store: who claimed which ``(route, event_id)``, and what came of it.

Delivery is at-least-once; effects must be exactly-once. Before a side effect the worker *claims* the event
in this store, and the claim tells it what an earlier delivery of the same event already did (see
docs/design.md, "Delivery guarantees", and docs/reliability.md, R2/R8/R17):

- ``NEW``: nothing was applied yet, send;
- ``RECLAIMED``: the effect *may* have been applied: reconcile by looking the idempotency key up at the
  target before anything is sent again;
- ``DONE``: applied; the stored reply is returned so the result event can be re-emitted unchanged;
- ``HELD``: another owner holds a live lease: try later.

**The rule.** Once a claim may have been applied, only a lookup that answers "not there"
(:meth:`IdempotencyStore.confirm_absent`) or the effect being recorded (:meth:`IdempotencyStore.complete`,
which is also what the target's own duplicate answer leads to) clears that. A failed lookup, a crash, a
store error, a reply the connector refuses, a release that says "not applied" and a permanent failure all
keep it. The store holds the rule itself, in the ``maybe_applied`` flag of the row, so no caller can clear it
by saying the wrong thing (Camel's ``removeOnFailure`` trap: the bug of issue 8 was a failed *lookup*, which
applies nothing, releasing a claim whose *send* may have applied, as "not applied").

States (``state``, ``maybe_applied`` = M) and transitions; "held" means ``in_progress`` with a live lease
owned by the caller, "taken" means its lease ended or the owner is the caller::

    from                         call                               to                            answer
    ---------------------------  ---------------------------------  ----------------------------  ---------
    (no row)                     claim                              in_progress, M=0, leased      NEW
    retry or failed (M=0)        claim                              in_progress, M=0, leased      NEW
    in_progress, live, other     claim                              unchanged                     HELD
    in_progress, taken           claim                              in_progress, M=1, leased      RECLAIMED
    any with M=1 (not done)      claim (when not HELD)              in_progress, M=1, leased      RECLAIMED
    done                         claim                              unchanged                     DONE
    held, M=1                    confirm_absent (lookup: not there) in_progress, M=0, same lease  -
    held, M=0                    release(maybe_applied=False)       retry, no lease               -
    held, M=0                    release(maybe_applied=True)        in_progress, M=1, lease ended -
    held, M=1                    release(maybe_applied=any)         in_progress, M=1, lease ended -
    held, M=0                    fail(error)                        failed, error, no lease       -
    held, M=1                    fail(error)                        in_progress, M=1, lease ended,
                                                                    error kept                    -
    anything but done            complete(result)                   done, M=0, result             -
    done                         complete                           unchanged (first result kept) -
    not held by the caller       confirm_absent / release / fail    unchanged (a warning)         -

``claim_many`` and ``complete_many`` (the batch path, driver SQL) follow the same rows: a fresh key is
inserted with M=0, every other key goes through :meth:`IdempotencyStore.claim`'s per-row path.

Claims must be atomic across threads, processes and hosts, on SQLite (the embedded default) and on
PostgreSQL (several workers). Each call is one short transaction: an ``INSERT ... ON CONFLICT DO NOTHING``
decides a fresh key (exactly one inserter wins), and an existing row is taken over with a compare-and-set
``UPDATE ... WHERE`` on the row's state, owner and attempt count, so two claimers that read the same row
cannot both win; the loser re-reads and decides again. On SQLite the first statement of every write
transaction is a write, so the transaction holds the single write lock from its start and never has to
upgrade a read snapshot (which would fail with ``SQLITE_BUSY`` instead of waiting).

**Upgrades.** The ``maybe_applied`` column came after the first release: opening a store whose table lacks
it adds it (``ALTER TABLE ... ADD COLUMN ... DEFAULT false``, on SQLite and PostgreSQL, safe when several
processes start at once). Old rows read M=0; an old row ``in_progress`` still reads RECLAIMED once its lease
ends, as it always did.

SQLAlchemy Core builds every statement but the two a batch runs (:class:`_DriverSQL`). Datetimes are stored
in UTC (``timestamptz`` on PostgreSQL, fixed-width UTC text on SQLite) and always come back UTC-aware.
"""

from __future__ import annotations

import json
import math
import threading
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite

from routes.store_init import prepare_store

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from sqlalchemy.engine import Connection, Engine

__all__ = [
    "Claim",
    "ClaimContentionError",
    "ClaimOutcome",
    "ClaimRecord",
    "IdempotencyStore",
    "UTCDateTime",
    "claims_table",
    "metadata",
]

#: longest route name, event id and owner the store accepts (the columns' width)
MAX_KEY_LENGTH: Final = 200
#: how many times a claim re-reads and re-decides when a concurrent writer changed the row under it
MAX_CLAIM_ROUNDS: Final = 8
#: SQLite waits this long for the write lock before giving up with "database is locked"
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000

IN_PROGRESS: Final = "in_progress"
DONE: Final = "done"
FAILED: Final = "failed"
RETRY: Final = "retry"
STATES: Final = (IN_PROGRESS, DONE, FAILED, RETRY)

_log = structlog.get_logger("igate_bus.store")


class ClaimOutcome(StrEnum):
    """What a claim found, and so what the worker must do next."""

    NEW = "new"  # nothing was applied yet: go ahead and send
    RECLAIMED = "reclaimed"  # an earlier attempt may have applied the effect: reconcile by lookup first
    DONE = "done"  # already applied; `result` holds the stored reply (re-emit it, ack)
    HELD = "held"  # another owner holds a live lease: try later


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to :meth:`IdempotencyStore.claim`.

    Attributes:
        outcome: What the claim found.
        result: The stored reply when ``outcome`` is ``DONE``, else None.
        attempts: How many times this ``(route, event_id)`` has been claimed, including this claim when it
            took the key (``NEW``/``RECLAIMED``); for ``DONE`` and ``HELD`` the count stays as it was.
    """

    outcome: ClaimOutcome
    result: dict[str, Any] | None
    attempts: int


@dataclass(frozen=True, slots=True)
class ClaimRecord:
    """One row of the store as it is, for inspection by the CLI and tests.

    Attributes:
        route: The route's name.
        event_id: The event's id (the idempotency key within the route).
        state: ``in_progress``, ``done``, ``failed`` or ``retry``.
        maybe_applied: True once the effect may have been applied and no lookup has said otherwise since.
        owner: Who claimed it last.
        attempts: How many times it has been claimed.
        claimed_at: When it was claimed last (UTC).
        lease_until: When the current lease ends (UTC); None unless ``in_progress``.
        done_at: When the effect was recorded as applied (UTC); None unless ``done``.
        result: The stored reply, for ``done``.
        error: The last permanent error recorded by :meth:`IdempotencyStore.fail`.
    """

    route: str
    event_id: str
    state: str
    maybe_applied: bool
    owner: str | None
    attempts: int
    claimed_at: datetime
    lease_until: datetime | None
    done_at: datetime | None
    result: dict[str, Any] | None
    error: str | None


class ClaimContentionError(RuntimeError):
    """The row kept changing under a claim for :data:`MAX_CLAIM_ROUNDS` rounds; the caller retries later."""


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A datetime stored in UTC and read back UTC-aware on every back end.

    PostgreSQL keeps ``timestamptz`` and psycopg returns it in the session's zone; SQLite keeps naive text,
    so the value is converted to UTC and stripped of its zone before it is written.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        """Convert an aware datetime to UTC (naive UTC for SQLite); refuse a naive one."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"the store keeps only timezone-aware datetimes, got {value!r}")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        """Return the stored value as a UTC-aware datetime."""
        del dialect
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata: Final = sa.MetaData()

#: one row per (route, event_id) ever claimed
claims_table: Final = sa.Table(
    "claims",
    metadata,
    sa.Column("route", sa.String(MAX_KEY_LENGTH), primary_key=True),
    sa.Column("event_id", sa.String(MAX_KEY_LENGTH), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    # added after the first release: _ensure_columns adds it to an older table
    sa.Column("maybe_applied", sa.Boolean(create_constraint=False), nullable=False, server_default=sa.false()),
    sa.Column("owner", sa.String(MAX_KEY_LENGTH), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("claimed_at", UTCDateTime(), nullable=False),
    sa.Column("lease_until", UTCDateTime(), nullable=True),
    sa.Column("done_at", UTCDateTime(), nullable=True),
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.CheckConstraint(f"state IN ({', '.join(repr(s) for s in STATES)})", name="claims_state_valid"),
)

_c = claims_table.c


def _key_clause(route: str, event_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(_c.route == route, _c.event_id == event_id)


def _check_key(route: str, event_id: str) -> None:
    for name, value in (("route", route), ("event_id", event_id)):
        _check_text(name, value)


def _check_text(name: str, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > MAX_KEY_LENGTH:
        raise ValueError(f"{name} is longer than {MAX_KEY_LENGTH} characters: {value[:40]!r}...")


def _check_lease(lease_s: float) -> None:
    if isinstance(lease_s, bool) or not isinstance(lease_s, int | float) or not 0 < lease_s < math.inf:
        raise ValueError(f"lease_s must be a positive number of seconds, got {lease_s!r}")


def _claim_params(route: str, event_id: str, owner: str, now: datetime, lease_until: datetime) -> dict[str, Any]:
    """The checked parameters of one key's claim (``insert_fresh``, ``select_state``, ``take_over``)."""
    _check_key(route, event_id)
    _check_text("owner", owner)
    return {
        "k_route": route,
        "k_event_id": event_id,
        "n_owner": owner,
        "n_claimed_at": now,
        "n_lease_until": lease_until,
    }


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    return now.astimezone(UTC)


def _dump(result: dict[str, Any]) -> str:
    if not isinstance(result, dict):
        raise TypeError(f"result must be a dict, got {type(result).__name__}")
    return json.dumps(result, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _load(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    value = json.loads(text)
    if not isinstance(value, dict):
        raise TypeError(f"stored result is not a JSON object: {text[:80]!r}")
    return value


def _decide(
    state: str, maybe_applied: bool, holder: str | None, lease_until: datetime | None, owner: str, now: datetime
) -> ClaimOutcome:
    """What claiming an existing row amounts to (the table in the module docstring).

    NEW and RECLAIMED still have to win the compare-and-set.
    """
    if state == DONE:
        return ClaimOutcome.DONE
    if state == IN_PROGRESS:
        if lease_until is not None and lease_until > now and holder != owner:
            return ClaimOutcome.HELD
        return ClaimOutcome.RECLAIMED  # the holder is gone (or is us): it may have applied the effect
    if state in {FAILED, RETRY}:
        # nothing was applied, unless the row says otherwise (the store never writes that, but a row that
        # says "maybe applied" is believed whatever its state)
        return ClaimOutcome.RECLAIMED if maybe_applied else ClaimOutcome.NEW
    raise RuntimeError(f"a claim has an unknown state {state!r}")


class _Statements:
    """The hot-path statements, built once with bound parameters so each call only binds values.

    Building a Core statement and its cache key costs more than SQLite takes to run it; a prebuilt statement
    memoises its cache key and finds its compiled form in the engine's cache.
    """

    def __init__(self, dialect_insert: Any) -> None:
        self.insert = dialect_insert
        key = sa.and_(_c.route == sa.bindparam("k_route"), _c.event_id == sa.bindparam("k_event_id"))
        when = UTCDateTime()
        self.insert_fresh = (
            dialect_insert(claims_table)
            .values(
                route=sa.bindparam("k_route"),
                event_id=sa.bindparam("k_event_id"),
                state=IN_PROGRESS,
                maybe_applied=False,
                owner=sa.bindparam("n_owner"),
                attempts=1,
                claimed_at=sa.bindparam("n_claimed_at", type_=when),
                lease_until=sa.bindparam("n_lease_until", type_=when),
            )
            .on_conflict_do_nothing(index_elements=[_c.route, _c.event_id])
            .execution_options(preserve_rowcount=True)
        )
        self.select_state = sa.select(
            _c.state, _c.maybe_applied, _c.owner, _c.attempts, _c.lease_until, _c.result
        ).where(key)
        # compare-and-set: the row must still be what we read (attempts grows with every claim)
        self.take_over = (
            sa.update(claims_table)
            .where(
                key,
                _c.state == sa.bindparam("k_state"),
                _c.attempts == sa.bindparam("k_attempts"),
                _c.owner.is_not_distinct_from(sa.bindparam("k_owner")),
            )
            .values(
                state=IN_PROGRESS,
                maybe_applied=sa.bindparam("n_maybe_applied"),
                owner=sa.bindparam("n_owner"),
                attempts=sa.bindparam("n_attempts"),
                claimed_at=sa.bindparam("n_claimed_at", type_=when),
                lease_until=sa.bindparam("n_lease_until", type_=when),
            )
        )
        upsert = dialect_insert(claims_table).values(
            route=sa.bindparam("k_route"),
            event_id=sa.bindparam("k_event_id"),
            state=DONE,
            maybe_applied=False,
            owner=sa.bindparam("n_owner"),
            attempts=1,
            claimed_at=sa.bindparam("n_done_at", type_=when),
            lease_until=None,
            done_at=sa.bindparam("n_done_at", type_=when),
            result=sa.bindparam("n_result"),
            error=None,
        )
        self.complete = upsert.on_conflict_do_update(
            index_elements=[_c.route, _c.event_id],
            set_={
                "state": DONE,
                "maybe_applied": False,
                "owner": upsert.excluded.owner,
                "lease_until": None,
                "done_at": upsert.excluded.done_at,
                "result": upsert.excluded.result,
                "error": None,
            },
            where=_c.state != DONE,  # done is final: keep the first result, the one already emitted
        ).execution_options(preserve_rowcount=True)
        held = sa.update(claims_table).where(key, _c.state == IN_PROGRESS, _c.owner == sa.bindparam("k_owner"))
        # every SET expression reads the row as it was before the UPDATE (SQL, on SQLite and PostgreSQL)
        maybe = sa.or_(_c.maybe_applied, sa.bindparam("n_applied", type_=sa.Boolean()))
        ended = sa.bindparam("n_now", type_=when)
        self.release = held.values(
            state=sa.case((maybe, IN_PROGRESS), else_=RETRY),
            maybe_applied=maybe,
            lease_until=sa.case((maybe, ended), else_=None),
        )
        self.fail = held.values(
            state=sa.case((_c.maybe_applied, IN_PROGRESS), else_=FAILED),
            lease_until=sa.case((_c.maybe_applied, ended), else_=None),
            error=sa.bindparam("n_error"),
        )
        self.confirm_absent = held.values(maybe_applied=False)


@dataclass(frozen=True, slots=True)
class DriverForms:
    """How the driver's own SQL (beside SQLAlchemy's statements) writes values as those statements do.

    One place for every part that runs hot statements on the transaction's raw connection (this store's
    batch path, ``routes/ordering.py``): the placeholder, and times through the dialect's own form of
    :class:`UTCDateTime` (on SQLite SQLAlchemy's text with the microseconds always written, not the driver's
    default adapter, which leaves out ``.000000``: one stored form, so times compare as text).
    """

    placeholder: str
    when: Callable[[datetime | None], Any]
    read_when: Callable[[Any], datetime | None]

    @classmethod
    def of(cls, dialect: sa.Dialect) -> DriverForms:
        """The forms of ``dialect``."""
        column_type = UTCDateTime().dialect_impl(dialect)
        bind = column_type.bind_processor(dialect)
        read = column_type.result_processor(dialect, None)
        return cls(
            "?" if dialect.paramstyle == "qmark" else "%s",
            bind if bind is not None else (lambda value: value),
            read if read is not None else (lambda value: value),
        )


class _DriverSQL:
    """The two statements a batch runs, as driver SQL on the transaction's own connection.

    Why: SQLAlchemy's per-execution work (parameter processing, result set-up) costs more than SQLite
    takes to run these statements, and a batch claim must learn which keys it inserted (``RETURNING``),
    which Core only offers through its slower insertmanyvalues path. Same columns, same conflict rules and
    the same stored forms (:class:`DriverForms`) as the Core
    statements of :class:`_Statements`, so every other method reads these rows as its own (the
    ``claim_many``/``complete_many`` tests read them back through :meth:`IdempotencyStore.get` on both back
    ends). Measured: half the store's CPU per message of a batch (109 ▶ 50 µs at 16 per batch on SQLite).
    """

    def __init__(self, dialect: sa.Dialect) -> None:
        forms = DriverForms.of(dialect)
        ph, self.when = forms.placeholder, forms.when
        table = claims_table.name
        self._row = "(" + ", ".join([ph] * 8) + ")"
        # the table name and placeholders are ours; every value is a bound parameter
        columns = "route, event_id, state, maybe_applied, owner, attempts, claimed_at, lease_until"
        self._insert = f"INSERT INTO {table} ({columns}) VALUES "  # noqa: S608
        self._fresh_tail = " ON CONFLICT (route, event_id) DO NOTHING RETURNING event_id"
        self.complete = (
            f"INSERT INTO {table} (route, event_id, state, maybe_applied, owner, attempts, claimed_at, lease_until,"  # noqa: S608
            f" done_at, result, error) VALUES ({', '.join([ph] * 11)}) ON CONFLICT (route, event_id) DO UPDATE SET"
            " state = excluded.state, maybe_applied = excluded.maybe_applied, owner = excluded.owner,"
            " lease_until = NULL, done_at = excluded.done_at,"
            f" result = excluded.result, error = NULL WHERE {table}.state <> '{DONE}'"
        )

    def insert_fresh(self, rows: int) -> str:
        """``INSERT`` of ``rows`` fresh claims that skips existing keys and returns the inserted ones."""
        return self._insert + ", ".join([self._row] * rows) + self._fresh_tail


class IdempotencyStore:
    """Claims and results per ``(route, event_id)`` in SQLite or PostgreSQL; thread-safe.

    One instance is shared by every worker thread of a process; each call checks a pooled connection out
    for one transaction. Several processes (and hosts, on PostgreSQL) may use the same database at once.

    Args:
        url: SQLAlchemy URL: ``sqlite:///path/file.sqlite3`` (the parent directory is created) or
            ``postgresql+psycopg://user@host/db``. ``sqlite://`` (in memory) works for one process only.
        create: Create the table when it is missing (safe when several processes start at once).

    Raises:
        ValueError: The URL names a back end other than SQLite or PostgreSQL.
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        sa_url = sa.make_url(url)
        backend = sa_url.get_backend_name()
        # a single shared connection (in-memory SQLite) must not interleave two threads' transactions
        self._lock: AbstractContextManager[Any] = nullcontext()
        if backend == "sqlite":
            self._engine = self._sqlite_engine(sa_url)
            self._sql = _Statements(sqlite.insert)
        elif backend == "postgresql":
            self._engine = sa.create_engine(sa_url, pool_pre_ping=True)
            self._sql = _Statements(postgresql.insert)
        else:
            raise ValueError(f"the idempotency store supports sqlite and postgresql, not {backend!r}")
        self._driver = _DriverSQL(self._engine.dialect)
        self._closed = False
        try:
            # WAL (SQLite) and the table, safe when several processes open a fresh store at once
            prepare_store(self._engine, [claims_table], create=create, upgrade=self._ensure_columns)
        except BaseException:
            self._engine.dispose()
            raise

    def _sqlite_engine(self, sa_url: sa.URL) -> Engine:
        database = sa_url.database or ""
        in_memory = database in {"", ":memory:"} or "mode=memory" in database
        if in_memory:
            self._lock = threading.Lock()
            engine = sa.create_engine(sa_url, poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False})
        else:
            if not database.startswith("file:"):
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(
                sa_url,
                poolclass=sa.pool.QueuePool,
                pool_size=16,
                max_overflow=48,
                connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, connection_record: Any) -> None:
            del connection_record
            cursor = dbapi_connection.cursor()
            try:
                # WAL is a property of the file, set once by prepare_store under its lock: switching to it
                # here, on every connection, is what crashed a second worker opening a fresh store
                cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
                cursor.execute("PRAGMA synchronous = NORMAL")
            finally:
                cursor.close()

        return engine

    def create_table(self, table: sa.Table, *, upgrade: Callable[[Connection], None] | None = None) -> None:
        """Create ``table`` (and its indexes) in this store's database when missing; safe across processes.

        Other parts that keep rows beside the claims (``connectors/kit/state.py``) create theirs here, so
        every table of the store is created the same way: through :func:`routes.store_init.prepare_store`,
        under its lock (a file lock on SQLite, an advisory lock on PostgreSQL); ``upgrade`` (a column that an
        earlier release's table lacks) runs under the same lock.
        """
        with self._lock:  # the one shared connection of an in-memory store
            prepare_store(self._engine, [table], upgrade=upgrade)

    def begin(self) -> AbstractContextManager[Connection]:
        """One transaction on a pooled connection (serialised on an in-memory SQLite store)."""
        return self._begin()

    @property
    def dialect(self) -> sa.Dialect:
        """The database's SQLAlchemy dialect (for a part that writes its hot statements as the driver's SQL)."""
        return self._engine.dialect

    def insert(self, table: sa.Table) -> Any:
        """The dialect's ``INSERT`` for ``table`` (it has ``on_conflict_do_nothing`` on both back ends)."""
        return self._sql.insert(table)

    @staticmethod
    def _ensure_columns(conn: Connection) -> None:
        """Add the columns a table made by an earlier release lacks (``maybe_applied``), idempotently.

        Why not a migration tool: one column, added with a constant default, which both back ends do in
        place without rewriting the table. It runs under :func:`prepare_store`'s lock, so two processes
        upgrading at once take turns and the second finds the column there.
        """
        inspector = sa.inspect(conn)
        if not inspector.has_table(claims_table.name):
            return  # opened with create=False on a store that has no table yet
        columns = {c["name"] for c in inspector.get_columns(claims_table.name)}
        if "maybe_applied" in columns:
            return
        default = "0" if conn.dialect.name == "sqlite" else "FALSE"
        conn.execute(
            sa.text(f"ALTER TABLE {claims_table.name} ADD COLUMN maybe_applied BOOLEAN NOT NULL DEFAULT {default}")
        )
        _log.info("store_upgraded", table=claims_table.name, added="maybe_applied")

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        if self._closed:
            raise RuntimeError("the idempotency store is closed")
        with self._lock, self._engine.begin() as conn:
            yield conn

    # -- the claim -----------------------------------------------------------------------------------
    def claim(self, route: str, event_id: str, *, owner: str, lease_s: float, now: datetime | None = None) -> Claim:
        """Claim ``(route, event_id)`` for ``owner`` for ``lease_s`` seconds, atomically.

        Args:
            route: The route's name.
            event_id: The event's id.
            owner: Who claims (unique per attempt, e.g. ``worker-id/random``).
            lease_s: How long the claim is exclusive; after that another owner may take it over.
            now: The current time (timezone-aware); the wall clock when None.

        Returns:
            ``NEW`` (go ahead), ``RECLAIMED`` (reconcile first), ``DONE`` (with the stored result) or
            ``HELD`` (another owner's lease is live).

        Raises:
            ValueError: An empty or over-long route, event_id or owner, a lease that is not a positive
                finite number, or a naive ``now``.
            ClaimContentionError: Concurrent writers kept changing the row (should not happen in practice).
        """
        _check_lease(lease_s)
        now = _utc(now)
        params = _claim_params(route, event_id, owner, now, now + timedelta(seconds=lease_s))
        with self._begin() as conn:
            return self._claim_in(conn, params, now)

    def claim_many(
        self, route: str, owners: dict[str, str], *, lease_s: float, now: datetime | None = None
    ) -> dict[str, Claim]:
        """Claim many events of one route in one transaction: :meth:`claim` for each, at the cost of about one.

        Why: under load every message of a batch is new, and one multi-row ``INSERT ... ON CONFLICT DO NOTHING
        RETURNING`` decides them all; only the keys it did not insert take :meth:`claim`'s per-row path (in
        the same transaction, so the outcome per key is exactly what :meth:`claim` would have said).

        Args:
            route: The route's name.
            owners: ``event_id`` ▶ owner of that attempt.
            lease_s: How long each claim is exclusive.
            now: The current time (timezone-aware); the wall clock when None.

        Returns:
            ``event_id`` ▶ :class:`Claim`, for every key of ``owners``.

        Raises:
            ValueError: As :meth:`claim`, for any key.
            ClaimContentionError: As :meth:`claim`.
        """
        return self.write_many(route, claims=owners, completions={}, lease_s=lease_s, now=now)

    def write_many(
        self,
        route: str,
        *,
        claims: dict[str, str],
        completions: dict[str, tuple[str, dict[str, Any]]],
        lease_s: float,
        now: datetime | None = None,
    ) -> dict[str, Claim]:
        """:meth:`complete_many` and :meth:`claim_many` of other keys, in one transaction.

        Why: a route's pipeline threads claim some messages while they complete others; one transaction for
        both halves the transactions per message, and on SQLite the two never wait for each other's write
        lock (the busy handler sleeps a millisecond or more per wait: a pipeline thread not sending).

        Args:
            route: The route's name.
            claims: ``event_id`` ▶ owner of the attempt claiming it.
            completions: ``event_id`` ▶ (owner, result), as :meth:`complete_many`; no key of ``claims``.
            lease_s: How long each claim is exclusive.
            now: The current time (timezone-aware); the wall clock when None.

        Returns:
            ``event_id`` ▶ :class:`Claim`, for every key of ``claims``.

        Raises:
            ValueError: As :meth:`claim` and :meth:`complete`, for any key (then nothing is written); a key
                both claimed and completed.
            TypeError: As :meth:`complete`.
            ClaimContentionError: As :meth:`claim`.
        """
        _check_lease(lease_s)
        now = _utc(now)
        if not claims.keys().isdisjoint(completions):
            raise ValueError("a key is both claimed and completed in one transaction")
        lease_until = now + timedelta(seconds=lease_s)
        rows = [_claim_params(route, event_id, owner, now, lease_until) for event_id, owner in claims.items()]
        done = self._completion_rows(route, completions)
        if not rows and not done:
            return {}
        with self._begin() as conn:
            changed = self._complete_in(conn, done)
            out = self._claim_many_in(conn, route, rows, now, lease_until)
        if 0 <= changed < len(done):
            _log.warning("claim_already_done", route=route, already_done=len(done) - changed, of=len(done))
        return out

    def _claim_many_in(
        self, conn: Connection, route: str, rows: list[dict[str, Any]], now: datetime, lease_until: datetime
    ) -> dict[str, Claim]:
        """The claims of ``rows`` inside an open transaction: one multi-row insert, the rest per row."""
        if not rows:
            return {}
        claimed_at, until = self._driver.when(now), self._driver.when(lease_until)
        flat = [
            v for p in rows for v in (route, p["k_event_id"], IN_PROGRESS, False, p["n_owner"], 1, claimed_at, until)
        ]
        cursor = conn.connection.cursor()
        try:
            cursor.execute(self._driver.insert_fresh(len(rows)), flat)
            fresh = {row[0] for row in cursor.fetchall()}
        finally:
            cursor.close()
        return {
            p["k_event_id"]: Claim(ClaimOutcome.NEW, None, 1)
            if p["k_event_id"] in fresh
            else self._claim_in(conn, p, now)
            for p in rows
        }

    def _claim_in(self, conn: Connection, params: dict[str, Any], now: datetime) -> Claim:
        """One key's claim inside an open transaction: insert, else read and compare-and-set."""
        sql = self._sql
        owner = params["n_owner"]
        for _ in range(MAX_CLAIM_ROUNDS):
            if conn.execute(sql.insert_fresh, params).rowcount == 1:
                return Claim(ClaimOutcome.NEW, None, 1)
            row = conn.execute(sql.select_state, params).first()
            if row is None:  # forgotten between our insert and our read: insert again
                continue
            outcome = _decide(row.state, bool(row.maybe_applied), row.owner, row.lease_until, owner, now)
            if outcome is ClaimOutcome.DONE:
                return Claim(outcome, _load(row.result), row.attempts)
            if outcome is ClaimOutcome.HELD:
                return Claim(outcome, None, row.attempts)
            attempts = row.attempts + 1
            cas = {
                **params,
                "k_state": row.state,
                "k_attempts": row.attempts,
                "k_owner": row.owner,
                "n_attempts": attempts,
                "n_maybe_applied": outcome is ClaimOutcome.RECLAIMED,
            }
            if conn.execute(sql.take_over, cas).rowcount == 1:
                return Claim(outcome, None, attempts)
            # someone changed the row between our read and our update: read it again
        key = f"{params['k_route']}/{params['k_event_id']}"
        raise ClaimContentionError(f"claim {key} kept changing under {MAX_CLAIM_ROUNDS} tries")

    # -- the outcomes --------------------------------------------------------------------------------
    def complete(self, route: str, event_id: str, *, owner: str, result: dict[str, Any]) -> None:
        """Record that the effect happened, with the target's reply: the claim becomes ``done``.

        Unconditional: the effect happened whoever holds the lease now (a row is created if there is none).
        A row that is already ``done`` keeps its first result, the one its result event carried (and a
        warning is logged).

        Args:
            route: The route's name.
            event_id: The event's id.
            owner: Who applied the effect.
            result: The reply to store (a JSON object) and re-emit on a duplicate delivery.

        Raises:
            ValueError: An empty route, event_id or owner, or a float JSON cannot represent (NaN, inf).
            TypeError: ``result`` is not a dict or holds a value JSON cannot represent.
        """
        _check_key(route, event_id)
        _check_text("owner", owner)
        params = {
            "k_route": route,
            "k_event_id": event_id,
            "n_owner": owner,
            "n_done_at": datetime.now(UTC),
            "n_result": _dump(result),
        }
        with self._begin() as conn:
            if conn.execute(self._sql.complete, params).rowcount != 1:
                _log.warning("claim_already_done", route=route, event_id=event_id, owner=owner)

    def complete_many(self, route: str, results: dict[str, tuple[str, dict[str, Any]]]) -> None:
        """:meth:`complete` for many events of one route, in one transaction.

        Args:
            route: The route's name.
            results: ``event_id`` ▶ (owner, result).

        Raises:
            ValueError, TypeError: As :meth:`complete`, for any key (then nothing is recorded).
        """
        self.write_many(route, claims={}, completions=results, lease_s=1.0)

    def _completion_rows(self, route: str, results: dict[str, tuple[str, dict[str, Any]]]) -> list[tuple[Any, ...]]:
        """The checked rows of :meth:`complete_many` (every one is checked before any is written)."""
        done_at = self._driver.when(datetime.now(UTC))
        rows: list[tuple[Any, ...]] = []
        for event_id, (owner, result) in results.items():
            _check_key(route, event_id)
            _check_text("owner", owner)
            rows.append((route, event_id, DONE, False, owner, 1, done_at, None, done_at, _dump(result), None))
        return rows

    def _complete_in(self, conn: Connection, rows: list[tuple[Any, ...]]) -> int:
        """Write completion ``rows`` inside an open transaction; how many changed (-1 when the driver cannot say)."""
        if not rows:
            return 0
        cursor = conn.connection.cursor()
        try:
            cursor.executemany(self._driver.complete, rows)
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def fail(self, route: str, event_id: str, *, owner: str, error: str) -> None:
        """Record a permanent rejection: the claim becomes ``failed``, unless it may have been applied.

        A claim that is not "maybe applied" becomes ``failed`` and the next claim of the event (a replay after
        the cause was fixed) is ``NEW``. One that may have been applied (a lookup was refused, say) keeps
        that: it stays ``in_progress`` with its lease ended and the error recorded, so a replay reconciles
        first. Only the owner of a claim still ``in_progress`` can fail it; otherwise nothing changes (and a
        warning is logged).

        Args:
            route: The route's name.
            event_id: The event's id.
            owner: The owner that claimed it.
            error: Why it was rejected.

        Raises:
            ValueError: An empty route, event_id or owner.
        """
        values = {"n_error": str(error), "n_now": datetime.now(UTC)}
        self._settle(route, event_id, owner=owner, stmt=self._sql.fail, values=values, what="fail")

    def release(self, route: str, event_id: str, *, owner: str, maybe_applied: bool) -> None:
        """Give a claim back after a transient failure.

        Only the owner of a claim still ``in_progress`` can release it; otherwise nothing changes (and a
        warning is logged).

        Args:
            route: The route's name.
            event_id: The event's id.
            owner: The owner that claimed it.
            maybe_applied: True when this attempt may have applied the effect (timeout, reset after sending):
                the claim stays ``in_progress`` with its lease ended now and "maybe applied", so the next
                claim is ``RECLAIMED`` and reconciles. False when this attempt surely applied nothing
                (refused before sending, a lookup that failed): the claim becomes ``retry`` and the next
                claim is ``NEW``, unless it was already "maybe applied", which only
                :meth:`confirm_absent` or :meth:`complete` clear.

        Raises:
            ValueError: An empty route, event_id or owner.
        """
        values = {"n_applied": bool(maybe_applied), "n_now": datetime.now(UTC)}
        self._settle(route, event_id, owner=owner, stmt=self._sql.release, values=values, what="release")

    def confirm_absent(self, route: str, event_id: str, *, owner: str) -> bool:
        """A lookup at the target answered "not there": the held claim is no longer "maybe applied".

        The caller keeps its claim and lease and may now send. Only the owner of a claim still
        ``in_progress`` can do this; otherwise nothing changes (and a warning is logged).

        Returns:
            True when the claim was the caller's and is cleared; False when the caller no longer holds it
            (its lease ran out and another attempt took it): then it must not send.

        Args:
            route: The route's name.
            event_id: The event's id.
            owner: The owner that claimed it (RECLAIMED) and looked it up.

        Raises:
            ValueError: An empty route, event_id or owner.
        """
        sql = self._sql.confirm_absent
        return self._settle(route, event_id, owner=owner, stmt=sql, values={}, what="confirm_absent")

    def _settle(
        self, route: str, event_id: str, *, owner: str, stmt: sa.Update, values: dict[str, Any], what: str
    ) -> bool:
        _check_key(route, event_id)
        _check_text("owner", owner)
        params = {"k_route": route, "k_event_id": event_id, "k_owner": owner, **values}
        with self._begin() as conn:
            if conn.execute(stmt, params).rowcount == 1:
                return True
        _log.warning("claim_not_held", action=what, route=route, event_id=event_id, owner=owner)
        return False

    # -- inspection ----------------------------------------------------------------------------------
    def get(self, route: str, event_id: str) -> ClaimRecord | None:
        """The stored claim of ``(route, event_id)``, or None.

        Raises:
            ValueError: An empty route or event_id.
        """
        _check_key(route, event_id)
        with self._begin() as conn:
            row = conn.execute(sa.select(claims_table).where(_key_clause(route, event_id))).first()
        if row is None:
            return None
        return ClaimRecord(
            route=row.route,
            event_id=row.event_id,
            state=row.state,
            maybe_applied=bool(row.maybe_applied),
            owner=row.owner,
            attempts=row.attempts,
            claimed_at=row.claimed_at,
            lease_until=row.lease_until,
            done_at=row.done_at,
            result=_load(row.result),
            error=row.error,
        )

    def counts(self, route: str | None = None) -> dict[str, int]:
        """How many claims are in each state, for one route or all; states with none are left out.

        Raises:
            ValueError: An empty route.
        """
        stmt = sa.select(_c.state, sa.func.count()).group_by(_c.state)
        if route is not None:
            _check_text("route", route)
            stmt = stmt.where(_c.route == route)
        with self._begin() as conn:
            return {state: int(n) for state, n in conn.execute(stmt).all()}

    def forget(self, route: str, event_id: str) -> None:
        """Delete the claim, so the event is processed afresh (``dlq replay --force`` of a done event).

        Raises:
            ValueError: An empty route or event_id.
        """
        _check_key(route, event_id)
        with self._begin() as conn:
            conn.execute(sa.delete(claims_table).where(_key_clause(route, event_id)))

    # -- life cycle ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Close every pooled connection; the store cannot be used afterwards. Idempotent."""
        self._closed = True
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
