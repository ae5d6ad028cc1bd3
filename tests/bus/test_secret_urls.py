"""The passwords in ``IGATE_BUS_AMQP_URL``, ``IGATE_BUS_STORE_URL`` and ``IGATE_BUS_MANAGEMENT_URL`` never leave
the process in clear.

The URLs are held as secrets (``config.settings.SecretUrl``): whatever renders them shows ``***`` for the
password. The end-to-end test gives a real worker a broker user of its own with a password only this test
knows, and a PostgreSQL URL with another (the server trusts local connections, so any password is
accepted and must still be hidden), then reads the worker's log, ``igate-bus status`` and the errors of
commands given a wrong password or a malformed URL: neither password may appear anywhere.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import pytest
from busenv import ProcessWorker, env_for, ping_events, publish, wait_for, write_config

from bus.wiring import management_api
from config.settings import HIDDEN, SecretStoreUrl, SecretUrl, Settings, load_settings, redact_store_url, redact_url
from schemas.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: fixed (test ids must be the same in every pytest-xdist worker), and unlike anything else a log holds
AMQP_PASSWORD = "amqp-pw-5c81a8070683"
STORE_PASSWORD = "store-pw-a95c276a2c11"
MANAGEMENT_PASSWORD = "mgmt-pw-016866f1e489"


class TestRendering:
    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("amqp://bus:s3cret@mq:5672/%2F", "amqp://bus:***@mq:5672/%2F"),
            ("amqps://bus:p%40ss@mq/igate?heartbeat=15", "amqps://bus:***@mq/igate?heartbeat=15"),
            ("amqp://bus:p@ss@mq/v", "amqp://bus:***@mq/v"),
            ("amqp://:s3cret@mq/", "amqp://:***@mq/"),
            ("amqp://mq/", "amqp://mq/"),
        ],
    )
    def test_amqp_urls(self, url: str, shown: str) -> None:
        """The password goes, whatever its characters (an unescaped @ included); the rest stays readable."""
        assert redact_url(url) == shown
        assert str(SecretUrl(url)) == shown

    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("postgresql+psycopg://bus:s3cret@db:5432/igate", "postgresql+psycopg://bus:***@db:5432/igate"),
            ("postgresql+psycopg://bus:p@ss@db/igate", "postgresql+psycopg://bus:***@db/igate"),
            ("postgresql+psycopg://bus@db/igate?password=s3cret", "postgresql+psycopg://bus@db/igate?password=***"),
            ("sqlite:///var/igate-bus.sqlite3", "sqlite:///var/igate-bus.sqlite3"),
        ],
    )
    def test_store_urls(self, url: str, shown: str) -> None:
        """SQLAlchemy's own rendering, plus a password given as a query parameter."""
        assert redact_store_url(url) == shown
        assert str(SecretStoreUrl(url)) == shown

    def test_settings_never_render_a_password(self) -> None:
        """str, repr and a JSON dump of the settings hide all three; the code that connects still gets them."""
        settings = Settings(
            amqp_url=f"amqp://bus:{AMQP_PASSWORD}@mq/v",
            store_url=f"postgresql+psycopg://bus:{STORE_PASSWORD}@db/x",
            management_url=f"http://admin:{MANAGEMENT_PASSWORD}@mq:15672",
        )
        for text in (str(settings), repr(settings), settings.model_dump_json(), str(settings.model_dump())):
            assert AMQP_PASSWORD not in text
            assert STORE_PASSWORD not in text
            assert MANAGEMENT_PASSWORD not in text
            assert HIDDEN in text
        assert AMQP_PASSWORD in settings.amqp_url.get_secret_value()
        assert settings.management_url is not None
        assert MANAGEMENT_PASSWORD in settings.management_url.get_secret_value()

    @pytest.mark.parametrize("management_url", [None, f"http://admin:{MANAGEMENT_PASSWORD}@mq:15672"])
    def test_the_management_api_client_never_renders_its_password(self, management_url: str | None) -> None:
        """The client built from the settings has the password (it logs in with it) but its repr does not."""
        settings = Settings(amqp_url=f"amqp://bus:{AMQP_PASSWORD}@mq/v", management_url=management_url)
        with management_api(settings) as api:
            expected = MANAGEMENT_PASSWORD if management_url else AMQP_PASSWORD
            assert api.password == expected
            assert expected not in repr(api)
            assert api.base_url == "http://mq:15672"

    @pytest.mark.parametrize(
        ("variable", "url", "words"),
        [
            ("IGATE_BUS_AMQP_URL", f"http://bus:{AMQP_PASSWORD}@mq/", "amqp:// or amqps://"),
            ("IGATE_BUS_AMQP_URL", f"amqp://bus:{AMQP_PASSWORD}@mq:http/", "port"),
            ("IGATE_BUS_STORE_URL", f"not a url:{STORE_PASSWORD}", "not a SQLAlchemy URL"),
            ("IGATE_BUS_MANAGEMENT_URL", f"amqp://admin:{MANAGEMENT_PASSWORD}@mq/", "http:// or https://"),
            ("IGATE_BUS_MANAGEMENT_URL", f"http://admin:{MANAGEMENT_PASSWORD}@mq:x/", "port"),
        ],
    )
    def test_a_bad_url_is_refused_without_repeating_it(
        self, monkeypatch: pytest.MonkeyPatch, variable: str, url: str, words: str
    ) -> None:
        """The error names the variable and the rule, never the value (pydantic's own message would)."""
        monkeypatch.setenv(variable, url)
        with pytest.raises(ConfigError) as caught:
            load_settings(Settings)
        assert words in str(caught.value)
        assert variable in str(caught.value)
        assert AMQP_PASSWORD not in str(caught.value)
        assert STORE_PASSWORD not in str(caught.value)
        assert MANAGEMENT_PASSWORD not in str(caught.value)


def _rabbitmqctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([ctl, "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def user_amqp_url(amqp_url: str) -> Iterator[str]:
    """The test's vhost reached as a broker user of its own, whose password only this test knows."""
    parts = urlsplit(amqp_url)
    vhost = parts.path.lstrip("/")
    user = f"igb-test-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_user", user, AMQP_PASSWORD)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield f"amqp://{user}:{quote(AMQP_PASSWORD, safe='')}@{parts.hostname}:{parts.port}/{vhost}"
    finally:
        _rabbitmqctl("delete_user", user)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bus.cli", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_no_password_in_the_worker_log_status_or_errors(user_amqp_url: str, pg_url: str, tmp_path: Path) -> None:
    """A worker runs on both URLs; its log, `status` and the errors of bad URLs never show either password."""
    store_url = pg_url.replace("://postgres@", f"://postgres:{STORE_PASSWORD}@")
    assert STORE_PASSWORD in store_url, "the store URL must carry the password under test"
    config = write_config(tmp_path / "config", endpoint="http://127.0.0.1:9")
    ops_port = _free_port()
    env = env_for(user_amqp_url, store_url, config, IGATE_BUS_OPS_PORT=ops_port, IGATE_BUS_LOG_LEVEL="debug")
    log = tmp_path / "worker.log"
    worker = ProcessWorker(env, log, routes="bus-ping").start()
    try:
        worker.wait_consuming(1)
        publish(user_amqp_url, ping_events(5))
        wait_for(lambda: log.read_text().count('"processed"') >= 5, timeout=60, what="5 pings processed")
        status = _cli(env, "status", "--json", "--no-probe")
    finally:
        assert worker.terminate() == 0, worker.tail()
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["bus"]["url"], "status asked the running worker, whose report includes the store and broker"

    wrong = {**env, "IGATE_BUS_AMQP_URL": user_amqp_url.replace(quote(AMQP_PASSWORD, safe=""), f"x{AMQP_PASSWORD}x")}
    refused = _cli(wrong, "dlq", "list")
    assert refused.returncode == 1
    assert "cannot reach RabbitMQ at amqp://igb-test-" in refused.stderr and HIDDEN in refused.stderr
    unreachable = _cli(wrong, "status", "--no-probe", "--url", "none")
    malformed = _cli({**env, "IGATE_BUS_AMQP_URL": f"amqp://u:{AMQP_PASSWORD}@mq:http/"}, "status")
    assert malformed.returncode == 2 and "IGATE_BUS_AMQP_URL" in malformed.stderr
    bad_store = _cli({**env, "IGATE_BUS_STORE_URL": f"nonsense:{STORE_PASSWORD}"}, "check")
    assert bad_store.returncode == 2 and "IGATE_BUS_STORE_URL" in bad_store.stderr

    seen = {
        "the worker's log": log.read_text(errors="replace"),
        "status": status.stdout + status.stderr,
        "dlq list with a wrong password": refused.stdout + refused.stderr,
        "status with a wrong password": unreachable.stdout + unreachable.stderr,
        "a malformed AMQP URL": malformed.stdout + malformed.stderr,
        "a malformed store URL": bad_store.stdout + bad_store.stderr,
    }
    assert '"processed"' in seen["the worker's log"]
    for where, text in seen.items():
        assert AMQP_PASSWORD not in text, f"the broker password appeared in {where}"
        assert STORE_PASSWORD not in text, f"the store password appeared in {where}"
