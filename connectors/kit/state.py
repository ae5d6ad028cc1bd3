"""Durable rows a connector owns in the bus's store: pools, items in flight, what it saw.

Why here and not in each connector: VNPost keeps a pool of pre-issued item codes and the items it still
tracks, the e-receipt connector the payments it saw for the daily reconciliation; each would otherwise
invent its own table, its own "taken once" race and its own first-open race. One small table serves them:
``connector_state(connector, ns, key) -> status, value (JSON), version, updated_at`` in the same database
as the idempotency store (SQLite or PostgreSQL), so a worker needs no second place to keep.

What holds across threads, processes and hosts:

- :meth:`ConnectorState.put` with ``if_absent`` inserts exactly once (``INSERT ... ON CONFLICT DO
  NOTHING``): of two writers, one wins and the other learns it lost;
- :meth:`ConnectorState.update` with ``expect_version`` is a compare-and-set: every write bumps
  ``version``, so a writer that read an older row loses;
- :meth:`ConnectorState.take` moves one row from ``status`` to ``new_status`` atomically: two takers never
  get the same row (a conditional ``UPDATE`` decides; on PostgreSQL the candidate is read with ``FOR UPDATE
  SKIP LOCKED`` so takers do not queue behind each other).

A connector reaches its state as ``self.state`` (:class:`HasState`); the worker attaches it when it builds
the connector (``bus/wiring.py``), a test attaches one itself. Values are JSON objects: what a connector
keeps there must survive a restart and another process reading it, so no Python objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from routes.idempotency import IdempotencyStore, UTCDateTime, metadata

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ConnectorState", "HasState", "StateNotAttached", "StateRow", "state_table"]

#: longest connector name, namespace, key and status the table takes (the columns' width)
MAX_NAME: Final = 200
#: how many candidates :meth:`ConnectorState.take` tries before saying there is none left to take
MAX_TAKE_ROUNDS: Final = 16

state_table: Final = sa.Table(
    "connector_state",
    metadata,
    sa.Column("connector", sa.String(MAX_NAME), primary_key=True),
    sa.Column("ns", sa.String(MAX_NAME), primary_key=True),
    sa.Column("key", sa.String(MAX_NAME), primary_key=True),
    sa.Column("status", sa.String(MAX_NAME), nullable=False, server_default=""),
    sa.Column("value", sa.Text(), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Index("ix_connector_state_status", "connector", "ns", "status", "key"),
)


class StateNotAttached(RuntimeError):
    """A connector used ``self.state`` but nobody attached a store (a wiring or test defect)."""


@dataclass(frozen=True, slots=True)
class StateRow:
    """One row: its key, status, JSON value, write count and last write time (UTC)."""

    key: str
    status: str
    value: dict[str, Any]
    version: int
    updated_at: datetime


def _check(name: str, text: str) -> None:
    if not text or len(text) > MAX_NAME or any(ord(c) < 0x20 for c in text):
        raise ValueError(f"connector state: {name} must be 1-{MAX_NAME} printable characters, got {text!r}")


def _dump(value: dict[str, Any]) -> str:
    if not isinstance(value, dict):
        raise TypeError(f"connector state: a value is a JSON object (dict), not {type(value).__name__}")
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _row(r: sa.Row[Any]) -> StateRow:
    return StateRow(key=r.key, status=r.status, value=json.loads(r.value), version=r.version, updated_at=r.updated_at)


class ConnectorState:
    """One connector's rows in the store, by namespace (``ns``) and key.

    Args:
        store: the worker's open :class:`~routes.idempotency.IdempotencyStore` (shared: its engine and its
            transactions), or a store URL, which opens one that :meth:`close` closes.
        connector: the connector's name in ``connectors.yaml``; rows of other connectors are never seen.
    """

    def __init__(self, store: IdempotencyStore | str, *, connector: str) -> None:
        _check("connector", connector)
        self._owned = isinstance(store, str)
        self._store = IdempotencyStore(store) if isinstance(store, str) else store
        self.connector = connector
        self._where = state_table.c.connector == connector
        self._store.create_table(state_table)

    def _key(self, ns: str, key: str) -> sa.ColumnElement[bool]:
        _check("ns", ns)
        _check("key", key)
        return sa.and_(self._where, state_table.c.ns == ns, state_table.c.key == key)

    def put(self, ns: str, key: str, value: dict[str, Any], *, status: str = "", if_absent: bool = False) -> bool:
        """Write the row; with ``if_absent`` only when no row has that key.

        Returns:
            True when this call wrote the row; False when ``if_absent`` and the row was already there.
        """
        where = self._key(ns, key)
        text = _dump(value)
        now = datetime.now(UTC)
        fields = {"status": status, "value": text, "updated_at": now}
        with self._store.begin() as conn:
            inserted = (
                conn.execute(
                    self._store.insert(state_table)
                    .values(connector=self.connector, ns=ns, key=key, version=1, **fields)
                    .on_conflict_do_nothing()
                    .returning(state_table.c.version)
                ).first()
                is not None
            )
            if inserted or if_absent:
                return inserted
            conn.execute(sa.update(state_table).where(where).values(version=state_table.c.version + 1, **fields))
            return True

    def get(self, ns: str, key: str) -> StateRow | None:
        """The row, or None."""
        with self._store.begin() as conn:
            found = conn.execute(sa.select(state_table).where(self._key(ns, key))).first()
        return None if found is None else _row(found)

    def update(
        self,
        ns: str,
        key: str,
        *,
        value: dict[str, Any] | None = None,
        status: str | None = None,
        expect_version: int | None = None,
        expect_status: str | None = None,
    ) -> bool:
        """Change the row's value and/or status; with ``expect_*`` only if it still has that version/status.

        Returns:
            True when the row was changed; False when it is missing or another writer changed it first.
        """
        where = self._key(ns, key)
        if expect_version is not None:
            where = sa.and_(where, state_table.c.version == expect_version)
        if expect_status is not None:
            where = sa.and_(where, state_table.c.status == expect_status)
        fields: dict[str, Any] = {"updated_at": datetime.now(UTC), "version": state_table.c.version + 1}
        if value is not None:
            fields["value"] = _dump(value)
        if status is not None:
            _check("status", status)
            fields["status"] = status
        with self._store.begin() as conn:
            return conn.execute(sa.update(state_table).where(where).values(**fields)).rowcount == 1

    def take(self, ns: str, *, status: str, new_status: str, value: dict[str, Any] | None = None) -> StateRow | None:
        """Move one row (the lowest key) from ``status`` to ``new_status``, atomically; its value replaced if given.

        Returns:
            the row as written, or None when no row has ``status`` (or every candidate went to other takers).
        """
        _check("ns", ns)
        _check("status", new_status)
        text = None if value is None else _dump(value)
        where = sa.and_(self._where, state_table.c.ns == ns, state_table.c.status == status)
        for _ in range(MAX_TAKE_ROUNDS):
            with self._store.begin() as conn:
                candidate = conn.execute(
                    sa.select(state_table.c.key)
                    .where(where)
                    .order_by(state_table.c.key)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).scalar()
                if candidate is None:
                    return None
                fields: dict[str, Any] = {
                    "status": new_status,
                    "updated_at": datetime.now(UTC),
                    "version": state_table.c.version + 1,
                }
                if text is not None:
                    fields["value"] = text
                won = conn.execute(
                    sa.update(state_table).where(where, state_table.c.key == candidate).values(**fields)
                ).rowcount
                if won == 1:
                    taken = conn.execute(sa.select(state_table).where(self._key(ns, candidate))).one()
                    return _row(taken)
        return None

    def rows(
        self, ns: str, *, status: str | None = None, after_key: str | None = None, limit: int = 100
    ) -> list[StateRow]:
        """Rows of ``ns`` (with ``status``), ordered by key, after ``after_key``: page through with the last key."""
        _check("ns", ns)
        query = sa.select(state_table).where(self._where, state_table.c.ns == ns)
        if status is not None:
            query = query.where(state_table.c.status == status)
        if after_key is not None:
            query = query.where(state_table.c.key > after_key)
        with self._store.begin() as conn:
            return [_row(r) for r in conn.execute(query.order_by(state_table.c.key).limit(max(limit, 0)))]

    def count(self, ns: str, *, status: str | None = None) -> int:
        """How many rows ``ns`` has (with ``status``)."""
        _check("ns", ns)
        query = sa.select(sa.func.count()).select_from(state_table).where(self._where, state_table.c.ns == ns)
        if status is not None:
            query = query.where(state_table.c.status == status)
        with self._store.begin() as conn:
            return int(conn.execute(query).scalar_one())

    def delete(self, ns: str, key: str) -> bool:
        """Remove the row; True when there was one."""
        with self._store.begin() as conn:
            return conn.execute(sa.delete(state_table).where(self._key(ns, key))).rowcount == 1

    def close(self) -> None:
        """Close the store when this object opened it (a URL was given); a shared store stays open."""
        if self._owned:
            self._store.close()


class HasState:
    """Gives a connector ``self.state``, attached by whoever built it (the worker, or a test)."""

    _state_factory: Callable[[], ConnectorState] | None = None
    _state: ConnectorState | None = None

    def attach_state(self, state: ConnectorState | Callable[[], ConnectorState]) -> None:
        """Attach the state, or a factory called on first use (the worker's store opens only when needed)."""
        if isinstance(state, ConnectorState):
            self._state, self._state_factory = state, None
        else:
            self._state, self._state_factory = None, state

    @property
    def state(self) -> ConnectorState:
        """This connector's rows in the store.

        Raises:
            StateNotAttached: nobody attached a store to this connector.
        """
        if self._state is None:
            if self._state_factory is None:
                raise StateNotAttached(f"{type(self).__name__}: no connector state attached (attach_state)")
            self._state = self._state_factory()
        return self._state
