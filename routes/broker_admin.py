"""What AMQP cannot ask the broker: which queues and bindings a vhost has, and vhosts themselves.

Where it sits: beside the message path, for the operator's view of it. AMQP 0-9-1 can declare, bind and
delete, but it cannot *list*: a queue left behind by a removed route, or a binding key removed from a route,
is invisible to a worker. RabbitMQ's management plugin lists them over HTTP; ``scripts/services.sh`` enables
it (``rabbitmq-plugins enable rabbitmq_management``, applied to the running node without a restart).

Why the HTTP API rather than ``rabbitmqctl list_bindings``: workers run on several hosts, and ``rabbitmqctl``
works only on the broker's own host with its Erlang cookie (as root or ``rabbitmq``); the HTTP API answers
any host with the credentials the bus already has, in JSON rather than a table to parse. The same API
creates and deletes the demo's private vhost.

Used read-only by the worker and ``status``; the demo creates and deletes its own vhost. Deleting queues and
bindings goes over AMQP (``routes/stale.py``), where ``queue.delete if-empty`` is atomic.

Errors: every failure is a :class:`ManagementUnavailable` with one line saying what to do, never a reply body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final, Self
from urllib.parse import quote, unquote, urlsplit

import httpx

#: seconds for each request (connect, read, write, pool)
TIMEOUT_S: Final = 5.0
#: the plugin's default listener
MANAGEMENT_PORT: Final = 15672
MANAGEMENT_TLS_PORT: Final = 15671
#: AMQP's default ports, when the URL names none
AMQP_PORT: Final = 5672
AMQPS_PORT: Final = 5671
#: the largest listing we read: a vhost with more queues than this is not one of ours to guess about
MAX_REPLY_BYTES: Final = 16 * 1024 * 1024
ENABLE_HINT: Final = "enable it with `rabbitmq-plugins enable rabbitmq_management` (scripts/services.sh does)"


class ManagementUnavailable(Exception):
    """The management API could not answer (not enabled, unreachable, refused us, or said no)."""


@dataclass(frozen=True, slots=True)
class QueueName:
    """A queue the broker has in the vhost, as listed (counts come from AMQP, which is exact)."""

    name: str
    type: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Binding:
    """A binding from an exchange to a queue."""

    exchange: str
    queue: str
    routing_key: str


@dataclass(slots=True)
class ManagementApi:
    """The management API of one vhost.

    Args:
        base_url: ``http://host:15672`` (no credentials in it).
        username: the API user (the AMQP user by default).
        password: its password (left out of the repr).
        vhost: the vhost the bus uses.
        timeout_s: per request.
        amqp_port: when the API's address was guessed from the AMQP URL, that URL's port: the first call
            checks that the broker behind the API listens for AMQP there. A guessed 15672 on a host running
            two brokers (a test's private node, a second instance) would otherwise answer for the other one.
    """

    base_url: str
    username: str
    password: str = field(repr=False)  # a repr ends up in tracebacks and logs
    vhost: str
    timeout_s: float = TIMEOUT_S
    amqp_port: int | None = None
    _same_broker: bool = field(default=False, init=False, repr=False)
    _http: httpx.Client | None = field(default=None, init=False, repr=False)

    @classmethod
    def for_broker(cls, amqp_url: str, management_url: str | None = None) -> ManagementApi:
        """The API beside the broker of ``amqp_url``: same host, port 15672 (15671 with TLS), same user.

        Args:
            amqp_url: the bus's AMQP URL (its vhost is the one inspected).
            management_url: overrides host and port, and the credentials when it carries some.
        """
        amqp = urlsplit(amqp_url)
        path = amqp.path.removeprefix("/")
        vhost = unquote(path) if path else "/"
        user, password = unquote(amqp.username or "guest"), unquote(amqp.password or "guest")
        if management_url:
            given = urlsplit(management_url)
            if given.username:
                user, password = unquote(given.username), unquote(given.password or "")
            base = f"{given.scheme}://{given.hostname}" + (f":{given.port}" if given.port else "")
        else:
            tls = amqp.scheme == "amqps"
            host = amqp.hostname or "127.0.0.1"
            host = f"[{host}]" if ":" in host else host
            base = f"{'https' if tls else 'http'}://{host}:{MANAGEMENT_TLS_PORT if tls else MANAGEMENT_PORT}"
            port = amqp.port or (AMQPS_PORT if tls else AMQP_PORT)
            return cls(base.rstrip("/"), user, password, vhost, amqp_port=port)
        return cls(base.rstrip("/"), user, password, vhost)

    def _check_same_broker(self) -> None:
        """With a guessed address: the broker behind it must listen for AMQP on our AMQP URL's port."""
        if self.amqp_port is None or self._same_broker:
            return
        self._same_broker = True  # set first: the overview below goes through _get too
        try:
            rows = self._get("/api/overview", params={"columns": "listeners"}, many=False)
        except ManagementUnavailable:
            self._same_broker = False
            raise
        listeners = rows[0].get("listeners") if rows else None
        ports = sorted(
            {
                int(x["port"])
                for x in listeners or []
                if isinstance(x, dict) and str(x.get("protocol", "")).startswith("amqp") and "port" in x
            }
        )
        if self.amqp_port not in ports:
            self._same_broker = False
            raise ManagementUnavailable(
                f"the management API at {self.base_url} belongs to a broker whose AMQP port is "
                f"{', '.join(map(str, ports)) or 'unknown'}, not {self.amqp_port}: "
                "set IGATE_BUS_MANAGEMENT_URL to this broker's management API"
            )

    # -- reads -------------------------------------------------------------------------------------------
    def queues(self) -> list[QueueName]:
        """Every queue of the vhost."""
        rows = self._get(f"/api/queues/{self._v}", params={"columns": "name,type,arguments"})
        return [
            QueueName(
                str(r["name"]),
                str(r.get("type") or "classic"),
                r["arguments"] if isinstance(r.get("arguments"), dict) else {},
            )
            for r in rows
        ]

    def bindings(self) -> list[Binding]:
        """Every exchange-to-queue binding of the vhost (the default exchange's implicit ones left out)."""
        rows = self._get(f"/api/bindings/{self._v}")
        return [
            Binding(str(r["source"]), str(r["destination"]), str(r.get("routing_key", "")))
            for r in rows
            if r.get("source") and r.get("destination_type") == "queue"
        ]

    def vhosts(self) -> list[str]:
        """Every vhost of the broker."""
        return [str(r["name"]) for r in self._get("/api/vhosts", params={"columns": "name"})]

    # -- vhosts (the demo's own) -------------------------------------------------------------------------
    def create_vhost(self, name: str) -> None:
        """Create ``name`` and give the API user every permission in it."""
        self._send("PUT", f"/api/vhosts/{quote(name, safe='')}", {"description": "igate-bus", "tags": ""})
        self._send(
            "PUT",
            f"/api/permissions/{quote(name, safe='')}/{quote(self.username, safe='')}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )

    def delete_vhost(self, name: str) -> None:
        """Delete ``name`` with everything in it; a vhost already gone is not an error."""
        self._send("DELETE", f"/api/vhosts/{quote(name, safe='')}", None, missing_ok=True)

    # -- plumbing ----------------------------------------------------------------------------------------
    @property
    def _v(self) -> str:
        return quote(self.vhost, safe="")

    def _client(self) -> httpx.Client:
        """One client for this object's calls (one TLS context, one kept-alive connection); :meth:`close` ends it."""
        if self._http is None:
            self._http = httpx.Client(
                base_url=self.base_url,
                auth=(self.username, self.password),
                timeout=self.timeout_s,
                follow_redirects=False,
                headers={"accept": "application/json"},
            )
        return self._http

    def close(self) -> None:
        """Close the HTTP client (a later call opens a new one)."""
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _get(self, path: str, params: dict[str, str] | None = None, *, many: bool = True) -> list[dict[str, Any]]:
        """A listing (``many``) or one object, as a list of one."""
        self._check_same_broker()
        try:
            with self._client().stream("GET", path, params=params) as reply:
                self._check(reply, path)
                body = bytearray()
                for chunk in reply.iter_bytes():
                    body += chunk
                    if len(body) > MAX_REPLY_BYTES:
                        raise ManagementUnavailable(f"{path}: the listing is over {MAX_REPLY_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        try:
            rows = json.loads(body)
        except (ValueError, RecursionError):
            raise ManagementUnavailable(f"{self.base_url}{path}: the reply is not JSON") from None
        if not many:
            rows = [rows]
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ManagementUnavailable(f"{self.base_url}{path}: the reply is not a list of objects")
        return rows

    def _send(self, method: str, path: str, payload: dict[str, Any] | None, *, missing_ok: bool = False) -> None:
        self._check_same_broker()
        try:
            reply = self._client().request(method, path, json=payload)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if missing_ok and reply.status_code == httpx.codes.NOT_FOUND:
            return
        self._check(reply, path)

    def _check(self, reply: httpx.Response, path: str) -> None:
        status = reply.status_code
        if status in {httpx.codes.UNAUTHORIZED, httpx.codes.FORBIDDEN}:
            raise ManagementUnavailable(
                f"the management API at {self.base_url} refused user {self.username!r} (HTTP {status}): "
                "it needs the 'management' tag for listings and 'administrator' for vhosts"
            )
        if status == httpx.codes.NOT_FOUND and path.startswith("/api/queues/"):
            raise ManagementUnavailable(f"the management API at {self.base_url} has no vhost {self.vhost!r}")
        if not 200 <= status < 300:
            raise ManagementUnavailable(f"the management API at {self.base_url} answered HTTP {status} to {path}")

    def _unreachable(self, exc: httpx.HTTPError) -> ManagementUnavailable:
        return ManagementUnavailable(
            f"the management API at {self.base_url} is not reachable ({type(exc).__name__}); {ENABLE_HINT}"
        )
