"""Shared fixtures: a fresh vhost on the real RabbitMQ per test, a fresh PostgreSQL database, a SQLite file.

The broker fixture fails (never skips) when the broker is down and CI is set, as dramatiq's does; locally it
fails too, because every route test needs the real broker: `.ci/run` starts the services first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import quote

import pika
import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: the private-broker fixture (tests/chaos_broker.py) for tests that stop, kill or pause a broker, and the
#: private sshd of the SFTP tests (tests/sftpenv.py)
pytest_plugins = ["chaos_broker", "sftpenv"]

AMQP_HOST = os.environ.get("IGATE_BUS_TEST_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("IGATE_BUS_TEST_AMQP_PORT", "5672"))
PG_ADMIN_URL = os.environ.get("IGATE_BUS_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _rabbitmqctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([ctl, "-q", *args], check=True, capture_output=True, timeout=60)


def _broker_up() -> None:
    params = pika.ConnectionParameters(AMQP_HOST, AMQP_PORT, socket_timeout=3, blocked_connection_timeout=3)
    try:
        pika.BlockingConnection(params).close()
    except pika.exceptions.AMQPError as exc:
        pytest.fail(f"RabbitMQ is not reachable at {AMQP_HOST}:{AMQP_PORT} ({exc!r}); run `make services`")


@pytest.fixture(autouse=True)
def _logging_as_found() -> Iterator[None]:
    """Each test leaves logging as it found it.

    A command run in-process (``status``, ``check``) configures logging at its own level: left behind, the
    next test's ``capture_logs`` sees no INFO lines, and whether it fails hangs on which tests an xdist
    worker ran before it.
    """
    from bus.logging import saved_logging

    restore = saved_logging()
    yield
    restore()


@contextmanager
def _fresh_vhost() -> Iterator[str]:
    _broker_up()
    vhost = f"igb-test-{uuid.uuid4().hex[:10]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{quote(vhost, safe='')}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """A fresh vhost on the shared broker (nameko's rabbit_config), deleted afterwards."""
    with _fresh_vhost() as url:
        yield url


@pytest.fixture(scope="module")
def module_amqp_url() -> Iterator[str]:
    """One fresh vhost for a whole module (a vhost costs seconds); its tests leave their queues empty."""
    with _fresh_vhost() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A store URL for a SQLite file private to the test."""
    return f"sqlite:///{tmp_path / 'store.sqlite3'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the shared server, dropped afterwards."""
    import sqlalchemy as sa

    name = f"igb_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc.orig!r}); run `make services`")
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store test runs on both back ends."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite3'}"
    else:
        yield request.getfixturevalue("pg_url")
