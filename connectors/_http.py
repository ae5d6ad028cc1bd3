"""The one hardened HTTP client every REST connector builds its I/O on.

Where it sits: inside the connector step (event → route → adapter → **connector** → result/DLQ). A
connector (``connectors/igate.py``, ...) builds one :class:`HttpClient` from its ``ConnectorSpec`` and calls
:meth:`HttpClient.request`; everything below is decided here once, so no connector can forget it:

- **The transport is urllib3** (a pool per origin, no retries, no redirects of its own), chosen by
  measurement (issue 15): the iGate connector's whole ``add_note`` (guard, token, request, reply parsed)
  against the iGate simulator, 2,000 calls on 8 threads, two runs each: 459-494 µs of CPU per call on
  urllib3 and 743-903 µs on httpx at load average 18 on the 2 CPUs; 607-608 µs (1,396 calls/s) against
  704-956 µs (941-1,067 calls/s) at load 2. httpx's connection pool takes locks per call that eight
  worker threads contend for, and it builds request and response models of its own.
  Everything around the transport (the table below, the deadline, the cap) is this module's, not the
  library's, so the choice changes no behaviour.
- **Timeouts on every phase** (connect, read), each capped by what is left of the operation's
  **total deadline**. A read timeout is per read, so a target that drips one byte every few seconds
  would never trip it: once the headers are in, a watchdog thread shuts the socket when the deadline
  passes, so the call ends within the deadline even mid-body.
- **A reply size cap** (``max_reply_bytes``): a declared ``Content-Length`` over it is refused unread, and a
  streamed body is cut as soon as it passes the cap. Compressed replies are refused (we ask for
  ``identity``), because a small gzip body can expand past any cap in one decompression step.
- **No redirects to other hosts**: GET/HEAD follow at most 3 redirects to the configured origins; any
  other redirect is refused.
- **The kit's guard** (:mod:`connectors.kit.guard`): the breaker, the rate limit and the total deadline,
  exactly as the SOAP path applies them; a status the caller names in ``refused`` (401 to a request
  carrying a token) is raised as :class:`connectors.kit.Refused` for the credential helper, no verdict.
- **Translation into the error tree** (:mod:`schemas.errors`), so routes never see urllib3:

  ============================================  ===============================================
  what happened                                 raised
  ============================================  ===============================================
  connection refused, DNS failure, connect or   ``TargetUnavailable(maybe_applied=False)``: the
  pool timeout, rate-limit wait past deadline   request never left
  breaker open                                  ``BreakerOpen``: nothing sent
  read/write timeout, deadline passed mid-body  ``TargetTimeout`` (``maybe_applied`` is True)
  connection dropped after sending              ``TargetUnavailable(maybe_applied=effect)``
  503, 429, 408, 425                            ``TargetUnavailable(maybe_applied=False)``: the
                                                target said it did not do it
  500, 502, 504 and other 5xx                   ``TargetUnavailable(maybe_applied=effect)``: a
                                                crash after the write, or a proxy whose upstream
                                                may have applied it, cannot be ruled out
  reply over the size cap, compressed reply     ``TargetGarbled(maybe_applied=effect)``
  2xx whose body is not the expected JSON       ``TargetGarbled(maybe_applied=effect)``
  other 4xx, refused redirect                   ``TargetRejected(code=str(status))`` with a short
                                                scrubbed snippet of the body, never the body
  ============================================  ===============================================

  ``effect`` is what the caller says of the request: a read can never have applied anything.

Thread-safe: the engine calls one client from several worker threads.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlencode, urljoin, urlsplit

import urllib3
from pydantic import BaseModel, ValidationError
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationParseError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
    SSLError,
)

from connectors.base import endpoint
from connectors.kit.credential import Refused
from connectors.kit.guard import WATCHDOG, Guard
from schemas.errors import (
    BusError,
    ConfigError,
    TargetGarbled,
    TargetRejected,
    TargetTimeout,
    TargetUnavailable,
)
from schemas.pii import scrub_text

if TYPE_CHECKING:
    from collections.abc import Mapping

    from config.model import ConnectorSpec


M = TypeVar("M", bound=BaseModel)

#: bytes of an error reply that are read at all; the snippet comes from these and the rest is never read
ERROR_BODY_BYTES: Final = 4096
#: characters of an error reply quoted in ``TargetRejected``
SNIPPET_CHARS: Final = 160
#: redirects a GET may follow, all within the configured origins
MAX_REDIRECTS: Final = 3
USER_AGENT: Final = "igate-bus/0.1"

#: statuses that say the target did not act on the request (overloaded, throttled, gave up waiting)
_NOT_APPLIED_STATUSES: Final = frozenset({408, 425, 429, 503})
_SAFE_METHODS: Final = frozenset({"GET", "HEAD"})
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
#: the request never left: a connection (or TLS handshake) that did not open
_CONNECT_PHASE: Final = (NewConnectionError, ConnectTimeoutError, NameResolutionError, SSLError, LocationParseError)
#: urllib3 retries nothing and follows no redirect (built once: ``retries=False`` builds one per request)
_NO_RETRIES: Final = urllib3.Retry(total=False, redirect=False)
#: bytes asked of the socket per read of a reply body
_READ_CHUNK: Final = 65_536

# A server that echoes request headers in its error page would echo our token; schemas.pii does the rest.
_BEARER: Final = re.compile(r"(?i)\bbearer\s+[^\s\"',;]+")


def scrub_snippet(body: bytes, *, limit: int = SNIPPET_CHARS) -> str:
    """A short, single-line, scrubbed quote of a reply body, fit for an error message and the DLQ headers.

    Ids, phones and e-mails are masked by :func:`schemas.pii.scrub_text`, bearer tokens here.

    Args:
        body: the (already capped) body bytes.
        limit: characters kept after scrubbing.
    """
    text = body[:ERROR_BODY_BYTES].decode("utf-8", errors="replace")
    text = "".join(ch for ch in " ".join(text.split()) if ch.isprintable())
    text = scrub_text(_BEARER.sub("Bearer ***", text))
    return text if len(text) <= limit else text[:limit] + "…"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return (parts.scheme, (parts.hostname or "").lower(), port)


class _OneWrite:
    """Connection mixin: a request's line and headers go out in the same write as its body (when bytes).

    http.client writes the headers, then urllib3 the body: two writes, two TCP segments and two wake-ups of
    the target's reader per request (issue 15: four system calls per request between the two processes).
    The body is held from :meth:`request` and added to the headers' write; urllib3's own write of it is then
    skipped (it is the body's one chunk, equal to what was sent). A body urllib3 would send in several
    chunks (over ``blocksize``, or chunked transfer encoding) is left alone.
    """

    blocksize: int
    _held_body: bytes | None = None

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **kw: Any) -> None:
        whole = not kw.get("chunked") and not any(str(k).lower() == "transfer-encoding" for k in headers or ())
        self._held_body = body if whole and isinstance(body, bytes) and 0 < len(body) <= self.blocksize else None
        try:
            super().request(method, url, body, headers, **kw)  # type: ignore[misc]
        finally:
            self._held_body = None

    def send(self, data: Any) -> None:
        body = self._held_body
        if body is None:
            super().send(data)  # type: ignore[misc]
            return
        if data is body or data == body:  # the body's own write: it went out with the headers
            self._held_body = None
            return
        super().send(bytes(data) + body)  # type: ignore[misc]  # the headers: with the body


class _Connection(_OneWrite, urllib3.connection.HTTPConnection):
    """urllib3's connection, writing a request once (:class:`_OneWrite`)."""


class _TLSConnection(_OneWrite, urllib3.connection.HTTPSConnection):
    """urllib3's TLS connection, writing a request once (:class:`_OneWrite`)."""


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


class _ForeignRedirectError(Exception):
    """Raised by the request hook when a redirect leaves the configured origins."""


def _shut_socket(response: urllib3.BaseHTTPResponse, fired: threading.Event) -> None:
    """Wake a read blocked on ``response``'s socket: the deadline has passed."""
    fired.set()
    conn = response.connection
    sock = getattr(conn, "sock", None)
    if isinstance(sock, socket.socket):
        # socket.socket.shutdown, not SSLSocket.shutdown: the latter tears down TLS state under the reader.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


@dataclass(frozen=True, slots=True)
class HttpReply:
    """A reply that passed the size cap and the status check (2xx, or a status the caller accepts)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    elapsed_ms: float
    #: whether the request had a side effect; a garbled reply to it may hide an applied effect
    effect: bool
    #: the body already validated by :meth:`HttpClient.request` (its ``expect``)
    parsed: BaseModel | None = None

    def parse(self, model: type[M]) -> M:
        """The body validated as ``model``.

        Raises:
            TargetGarbled: the body is not JSON or not that shape (the target answered garbage).
        """
        if isinstance(self.parsed, model):
            return self.parsed
        try:
            return model.model_validate_json(self.body)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise TargetGarbled(
                f"HTTP {self.status} reply is not a valid {model.__name__}: {where}: {first['msg']}",
                maybe_applied=self.effect,
            ) from None


class HttpClient:
    """A urllib3 pool with the deadline, size cap, breaker, rate limit and error translation above.

    Args:
        name: the connector's name (logs, breaker).
        spec: its ``connectors.yaml`` entry: endpoint, timeouts, breaker, rate limit, reply cap; options
            ``ca_file`` (PEM bundle to trust instead of the system's) and ``max_connections`` (default 20).
        extra_origins: other URLs whose origin requests may go to (e.g. a separate Keycloak host).

    Raises:
        ConfigError: no endpoint, or not an http(s) URL.
    """

    def __init__(self, name: str, spec: ConnectorSpec, *, extra_origins: tuple[str, ...] = ()) -> None:
        self.name = name
        self.spec = spec
        base = endpoint(name, spec)
        for url in (base, *extra_origins):
            parts = urlsplit(url)
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                raise ConfigError(f"connector {name!r}: {url} is not an http(s) URL", field="endpoint")
        self._base = base.rstrip("/") + "/"
        self._origins = frozenset(_origin(u) for u in (base, *extra_origins))
        # Built once (issue 15): a request to a path under the endpoint goes straight to the endpoint's own
        # pool with its path as the target, skipping the manager's per-request URL parse and pool lookup;
        # absolute URLs and redirects take the manager's way and its origin check.
        parts = urlsplit(self._base)
        self._base_origin = (parts.scheme, parts.hostname or "", parts.port)
        self._base_path = parts.path if not (parts.query or parts.fragment) else None
        self._base_pool: urllib3.HTTPConnectionPool | None = None
        self._timeouts = urllib3.Timeout(connect=spec.timeout.connect, read=spec.timeout.read)
        self.guard = Guard(name, spec, log_as="http")
        ca_file = spec.options.get("ca_file")
        max_connections = int(spec.options.get("max_connections", 20))
        # built once: every request merges its own few headers into these
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json", "Accept-Encoding": "identity"}
        # No proxy from the environment (urllib3 reads none): it would send our traffic (and tokens)
        # somewhere the config does not say. No retries and no redirects of urllib3's own: both are decided here.
        self._pool = urllib3.PoolManager(
            num_pools=max(4, len(self._origins)),
            maxsize=max_connections,
            block=False,
            retries=False,
            ssl_context=ssl.create_default_context(cafile=str(ca_file)) if ca_file else ssl.create_default_context(),
        )
        self._pool.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}

    def request(
        self,
        method: str,
        url: str,
        *,
        deadline: float,
        effect: bool,
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        accept: frozenset[int] = frozenset(),
        refused: frozenset[int] = frozenset(),
        expect: type[BaseModel] | None = None,
        guard: bool = True,
        judge: bool = True,
    ) -> HttpReply:
        """Send one request and return its reply, or raise an error from :mod:`schemas.errors`.

        Never retries: a caller that wants a second try (a renewed token after 401) asks again.

        Args:
            method: HTTP method.
            url: a path under the endpoint, or an absolute URL on one of the allowed origins.
            deadline: monotonic time by which the whole operation must be over (``guard.deadline()``).
            effect: True when the request changes something at the target (decides ``maybe_applied``).
            json_body: sent as JSON.
            form: sent as ``application/x-www-form-urlencoded`` (the token grant).
            params: query parameters.
            headers: extra headers (``Authorization``).
            accept: non-2xx statuses returned as replies instead of raised (404 for a lookup miss).
            refused: statuses that mean the target refused the credential the request carried (401, or
                400/401 from a token endpoint): raised as :class:`connectors.kit.Refused`, no verdict.
            expect: the model a 2xx body must be; validated here, so a garbage 200 counts as a failure
                for the breaker, and kept in :attr:`HttpReply.parsed`.
            guard: False to bypass the breaker (health probes must see the target, not the breaker).
            judge: False when a success says nothing of the target (a login): only failures count.

        Raises:
            BreakerOpen: the breaker is open; nothing was sent.
            TargetUnavailable: see the module's table.
            TargetTimeout: no (complete) answer before the read timeout or the deadline.
            TargetRejected: a 4xx or a refused redirect.
            Refused: a status in ``refused``.
        """
        path = urlsplit(url).path
        with self.guard.call(deadline, guard=guard, judge=judge, method=method, path=path) as note:
            reply = self._send(
                method,
                url,
                deadline=deadline,
                effect=effect,
                json_body=json_body,
                form=form,
                params=params,
                headers=headers,
                accept=accept | refused,
            )
            if reply.status in refused:
                raise Refused(f"HTTP {reply.status}: {scrub_snippet(reply.body)}")
            if expect is not None and 200 <= reply.status < 300:
                reply = replace(reply, parsed=reply.parse(expect))
            note["status"] = reply.status
        return reply

    def close(self) -> None:
        """Close the pooled connections."""
        self._base_pool = None
        self._pool.clear()

    def _check_origin(self, url: str) -> None:
        if _origin(url) not in self._origins:
            parts = urlsplit(url)
            raise _ForeignRedirectError(f"{parts.scheme}://{parts.hostname}")

    def _timeout(self, remaining: float) -> urllib3.Timeout:
        spec = self.spec.timeout
        if remaining >= spec.connect and remaining >= spec.read:
            return self._timeouts
        return urllib3.Timeout(connect=min(spec.connect, remaining), read=min(spec.read, remaining))

    def _endpoint_pool(self) -> urllib3.HTTPConnectionPool:
        """The endpoint's pool, the one the manager holds for its origin (it never evicts: a slot per origin)."""
        pool = self._base_pool
        if pool is None:
            scheme, host, port = self._base_origin
            pool = self._base_pool = self._pool.connection_from_host(host, port, scheme)
        return pool

    def _build(
        self,
        url: str,
        json_body: Any,
        form: Mapping[str, str] | None,
        params: Mapping[str, str | int] | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[str, str | None, bytes | None, dict[str, str]]:
        """The absolute URL, its target on the endpoint's pool (None: another origin), the body and the headers."""
        relative = not url.startswith(("http://", "https://"))
        full = self._base + url.lstrip("/") if relative else url
        query = ""
        if params:
            query = ("&" if urlsplit(full).query else "?") + urlencode(dict(params))
            full += query
        target = None
        if relative and self._base_path is not None:
            target = self._base_path + url.lstrip("/") + query
        out = {**self._headers, **(headers or {})}
        body: bytes | None = None
        if json_body is not None:
            body = json.dumps(json_body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
            out["Content-Type"] = "application/json"
        elif form is not None:
            body = urlencode(dict(form)).encode()
            out["Content-Type"] = "application/x-www-form-urlencoded"
        return full, target, body, out

    def _open(
        self,
        method: str,
        url: str,
        target: str | None,
        body: bytes | None,
        headers: dict[str, str],
        remaining: float,
    ) -> tuple[urllib3.BaseHTTPResponse, str]:
        """Send, following at most MAX_REDIRECTS redirects of a GET or HEAD within the allowed origins.

        ``target``: the request's path on the endpoint's own pool (its origin is the endpoint's: no check).
        """
        for _ in range(MAX_REDIRECTS + 1):
            # the same options either way: the body streamed as it is, no redirect or retry of urllib3's own
            options: dict[str, Any] = {
                "body": body,
                "headers": headers,
                "timeout": self._timeout(remaining),
                "preload_content": False,
                "decode_content": False,
                "redirect": False,
                "retries": _NO_RETRIES,
            }
            if target is not None:
                response = self._endpoint_pool().urlopen(method, target, release_conn=False, **options)
            else:
                self._check_origin(url)
                response = self._pool.request(method, url, **options)
            target = None
            location = response.headers.get("location")
            if method not in _SAFE_METHODS or response.status not in _REDIRECTS or not location:
                return response, url
            response.drain_conn()
            response.release_conn()
            url = urljoin(url, location)
        raise _ForeignRedirectError(f"more than {MAX_REDIRECTS} redirects")

    def _send(
        self,
        method: str,
        url: str,
        *,
        deadline: float,
        effect: bool,
        json_body: Any,
        form: Mapping[str, str] | None,
        params: Mapping[str, str | int] | None,
        headers: Mapping[str, str] | None,
        accept: frozenset[int],
    ) -> HttpReply:
        started = time.monotonic()
        remaining = deadline - started
        if remaining <= 0:
            raise TargetUnavailable("the operation's deadline passed before this request was sent")
        full, target, body_bytes, request_headers = self._build(url, json_body, form, params, headers)
        fired = threading.Event()
        try:
            response, full = self._open(method, full, target, body_bytes, request_headers, remaining)
            ticket = WATCHDOG.arm(deadline, lambda: _shut_socket(response, fired))
            complete = False
            try:
                ok = 200 <= response.status < 300 or response.status in accept
                body, complete = self._read_body(response, deadline, effect=effect, whole=ok)
            finally:
                WATCHDOG.disarm(ticket)
                if not complete:  # a connection with unread bytes must not serve the next request
                    response.close()
                response.release_conn()
        except (_ForeignRedirectError, HTTPError, OSError) as exc:
            raise self._transport_error(exc, full, fired=fired.is_set(), effect=effect) from None
        elapsed_ms = (time.monotonic() - started) * 1000
        if fired.is_set():
            raise TargetTimeout(f"the {self.spec.timeout.total:g}s deadline passed mid-reply")
        if ok:
            return HttpReply(response.status, response.headers, body, elapsed_ms, effect)
        raise self._status_error(response, body, effect)

    def _transport_error(self, exc: Exception, url: str, *, fired: bool, effect: bool) -> BusError:
        """What a failure of the transport means for the effect (the module's table)."""
        if isinstance(exc, _ForeignRedirectError):
            return TargetRejected(f"redirect refused: {exc}", code="redirect")
        if isinstance(exc, _CONNECT_PHASE):
            return TargetUnavailable(f"cannot reach {urlsplit(url).hostname}: {type(exc).__name__}")
        if fired:
            return TargetTimeout(f"the {self.spec.timeout.total:g}s deadline passed mid-reply")
        if isinstance(exc, ReadTimeoutError):
            return TargetTimeout(f"no answer within the timeout ({type(exc).__name__})")
        return TargetUnavailable(f"connection lost after sending ({type(exc).__name__})", maybe_applied=effect)

    def _read_body(
        self, response: urllib3.BaseHTTPResponse, deadline: float, *, effect: bool, whole: bool
    ) -> tuple[bytes, bool]:
        """The body within the cap, and whether it was read to its end.

        An error reply is read only as far as its snippet needs.
        """
        cap = self.spec.max_reply_bytes if whole else ERROR_BODY_BYTES
        encoding = response.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise TargetGarbled(f"reply is {encoding}-encoded; we ask for identity", maybe_applied=effect)
        declared = response.headers.get("content-length", "")
        if whole and declared.isdigit() and int(declared) > cap:
            raise TargetGarbled(f"reply of {declared} bytes is over the {cap}-byte cap", maybe_applied=effect)
        body = bytearray()
        while True:
            chunk = response.read1(min(_READ_CHUNK, cap + 1 - len(body)), decode_content=False)
            if not chunk:
                return bytes(body), True
            body += chunk
            if len(body) > cap:
                if not whole:
                    return bytes(body[:cap]), False
                raise TargetGarbled(f"reply passed the {cap}-byte cap", maybe_applied=effect)
            if time.monotonic() > deadline:
                raise TargetTimeout(f"the {self.spec.timeout.total:g}s deadline passed mid-reply")

    def _status_error(self, response: urllib3.BaseHTTPResponse, body: bytes, effect: bool) -> BusError:
        status = response.status
        if status in _NOT_APPLIED_STATUSES:
            return TargetUnavailable(f"HTTP {status} (not applied): {scrub_snippet(body)}")
        if status >= 500:
            return TargetUnavailable(f"HTTP {status}: {scrub_snippet(body)}", maybe_applied=effect)
        if status < 400:
            host = urlsplit(response.headers.get("location", "")).hostname
            return TargetRejected(f"HTTP {status} redirect to {host or 'the same host'} not followed", code=str(status))
        return TargetRejected(f"HTTP {status}: {scrub_snippet(body)}", code=str(status))
