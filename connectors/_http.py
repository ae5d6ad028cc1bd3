"""The one hardened HTTP client every REST connector builds its I/O on.

Where it sits: inside the connector step (event → route → adapter → **connector** → result/DLQ). A
connector (``connectors/igate.py``, ...) builds one :class:`HttpClient` from its ``ConnectorSpec`` and calls
:meth:`HttpClient.request`; everything below is decided here once, so no connector can forget it:

- **The transport is** :mod:`connectors._http_wire` (keep-alive sockets per origin and llhttp's parser via
  ``httptools``), chosen by measurement (issue 15). The connector's whole ``add_note`` against the iGate
  simulator on 8 threads cost 743-903 µs of CPU per call on httpx and 459-608 µs on urllib3; one request on
  one thread costs 302-308 µs through a urllib3 pool and 64-75 µs on the wire module (its docstring says
  where the difference goes). No retries, no redirects of its own, no proxy from the environment.
  Everything around the transport (the table below, the deadline, the cap) is this module's, so the choice
  changes no behaviour.
- **Timeouts on every phase** (connect, read), each capped by what is left of the operation's
  **total deadline**. A read timeout is per read, so a target that drips one byte every few seconds
  would never trip it: from before the request is written, a watchdog thread shuts the socket when the
  deadline passes, so the call ends within the deadline even mid-head or mid-body.
- **A reply size cap** (``max_reply_bytes``): a declared ``Content-Length`` over it is refused unread, and a
  streamed body is cut as soon as it passes the cap. Compressed replies are refused (we ask for
  ``identity``), because a small gzip body can expand past any cap in one decompression step.
- **No redirects to other hosts**: GET/HEAD follow at most 3 redirects to the configured origins; any
  other redirect is refused.
- **The kit's guard** (:mod:`connectors.kit.guard`): the breaker, the rate limit and the total deadline,
  exactly as the SOAP path applies them; a status the caller names in ``refused`` (401 to a request
  carrying a token) is raised as :class:`connectors.kit.Refused` for the credential helper, no verdict.
- **Translation into the error tree** (:mod:`schemas.errors`), so routes never see a socket error:

  ============================================  ===============================================
  what happened                                 raised
  ============================================  ===============================================
  connection refused, DNS failure, connect      ``TargetUnavailable(maybe_applied=False)``: the
  timeout, TLS handshake, rate-limit wait past  request never left
  the deadline
  breaker open                                  ``BreakerOpen``: nothing sent
  read/write timeout, deadline passed mid-body  ``TargetTimeout`` (``maybe_applied`` is True)
  connection dropped after sending, a reply     ``TargetUnavailable(maybe_applied=effect)``
  that is not HTTP
  503, 429, 408, 425                            ``TargetUnavailable(maybe_applied=False)``: the
                                                target said it did not do it
  500, 502, 504 and other 5xx                   ``TargetUnavailable(maybe_applied=effect)``: a
                                                crash after the write, or a proxy whose upstream
                                                may have applied it, cannot be ruled out
  reply over the size cap, compressed reply     ``TargetGarbled(maybe_applied=effect)``
  2xx whose body is not the expected JSON       ``TargetGarbled(maybe_applied=effect)``
  other 4xx, refused redirect                   ``TargetRejected(code=str(status))`` with a short
                                                scrubbed snippet of the body, never the body
  a control character in a header or the path   ``TargetRejected(code="invalid-request")``: not
                                                sent (a CR/LF must never start a header)
  ============================================  ===============================================

  ``effect`` is what the caller says of the request: a read can never have applied anything.

Thread-safe: the engine calls one client from several worker threads.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlencode, urljoin, urlsplit

from pydantic import BaseModel, ValidationError

from connectors import _http_wire as wire
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


class _ForeignRedirectError(Exception):
    """Raised by the request hook when a redirect leaves the configured origins."""


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
    """Keep-alive connections per origin with the deadline, size cap, breaker, rate limit and error translation.

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
        # pool with its path as the target, no URL parse; absolute URLs and redirects are parsed and checked.
        parts = urlsplit(self._base)
        self._base_path = parts.path if not (parts.query or parts.fragment) else None
        self.guard = Guard(name, spec, log_as="http")
        ca_file = spec.options.get("ca_file")
        # built once: every request merges its own few headers into these
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json", "Accept-Encoding": "identity"}
        # No proxy from the environment: it would send our traffic (and tokens) somewhere the config does not say.
        self._pools = wire.Pools(
            maxsize=int(spec.options.get("max_connections", 20)), ca_file=str(ca_file) if ca_file else None
        )
        self._base_pool = self._pools.get(*_origin(self._base))

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
        path = url.partition("?")[0] if not url.startswith(("http://", "https://")) else urlsplit(url).path
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
                parsed = reply.parse(expect)
                reply = HttpReply(reply.status, reply.headers, reply.body, reply.elapsed_ms, reply.effect, parsed)
            note["status"] = reply.status
        return reply

    def close(self) -> None:
        """Close the pooled connections."""
        self._pools.clear()

    def _check_origin(self, url: str) -> None:
        if _origin(url) not in self._origins:
            parts = urlsplit(url)
            raise _ForeignRedirectError(f"{parts.scheme}://{parts.hostname}")

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
        cut: wire.DeadlineCut,
    ) -> tuple[wire.Response, str]:
        """Send, following at most MAX_REDIRECTS redirects of a GET or HEAD within the allowed origins.

        ``target``: the request's path on the endpoint's own pool (its origin is the endpoint's: no check).
        """
        spec = self.spec.timeout
        connect, read = min(spec.connect, remaining), min(spec.read, remaining)
        for _ in range(MAX_REDIRECTS + 1):
            if target is not None:
                pool = self._base_pool
            else:
                if not wire.VISIBLE_ASCII.fullmatch(url):  # urlsplit would drop a CR, LF or tab and send another URL
                    raise wire.InvalidRequest("the URL has a space, a control or a non-ASCII character")
                self._check_origin(url)
                pool = self._pools.get(*_origin(url))
                parts = urlsplit(url)
                target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            request = wire.encode_request(method, target, pool.host_header, headers, body)
            response = pool.exchange(
                request, connect_timeout=connect, read_timeout=read, head=method == "HEAD", watch=cut.attach
            )
            target = None
            location = response.headers.get("location")
            if method not in _SAFE_METHODS or response.status not in _REDIRECTS or not location:
                return response, url
            drained = False
            try:
                drained, _ = self._drain(response)
            finally:  # closed at once on a failed drain too (not left to the garbage collector)
                fired = cut.detach()  # before the connection goes back to its pool
                response.release(complete=drained and not fired)
            url = urljoin(url, location)
        raise _ForeignRedirectError(f"more than {MAX_REDIRECTS} redirects")

    @staticmethod
    def _drain(response: wire.Response) -> tuple[bool, int]:
        """Read a redirect's (small) body so its connection can serve again; a big one closes it instead."""
        read = 0
        while read <= ERROR_BODY_BYTES:
            chunk = response.read1(_READ_CHUNK)
            if not chunk:
                return True, read
            read += len(chunk)
        return False, read

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
        cut = wire.DeadlineCut()
        ticket = WATCHDOG.arm(deadline, cut.fire)
        try:
            response, full = self._open(method, full, target, body_bytes, request_headers, remaining, cut)
            complete = False
            try:
                ok = 200 <= response.status < 300 or response.status in accept
                body, complete = self._read_body(response, deadline, effect=effect, whole=ok)
            finally:
                fired = cut.detach()
                # a connection with unread bytes must not serve the next request
                response.release(complete=complete and not fired)
        except wire.InvalidRequest as exc:
            raise TargetRejected(f"request not sent: {exc}", code="invalid-request") from None
        except (_ForeignRedirectError, wire.WireError) as exc:
            raise self._transport_error(exc, full, fired=cut.detach(), effect=effect) from None
        finally:
            WATCHDOG.disarm(ticket)
        elapsed_ms = (time.monotonic() - started) * 1000
        if fired:
            raise TargetTimeout(f"the {self.spec.timeout.total:g}s deadline passed mid-reply")
        if ok:
            return HttpReply(response.status, response.headers, body, elapsed_ms, effect)
        raise self._status_error(response, body, effect)

    def _transport_error(self, exc: Exception, url: str, *, fired: bool, effect: bool) -> BusError:
        """What a failure of the transport means for the effect (the module's table)."""
        if isinstance(exc, _ForeignRedirectError):
            return TargetRejected(f"redirect refused: {exc}", code="redirect")
        if isinstance(exc, wire.ConnectFailed):
            return TargetUnavailable(f"cannot reach {urlsplit(url).hostname}: {exc}")
        if fired:
            return TargetTimeout(f"the {self.spec.timeout.total:g}s deadline passed mid-reply")
        if isinstance(exc, wire.ReadTimedOut):
            return TargetTimeout(f"no answer within the timeout ({exc})")
        return TargetUnavailable(f"connection lost after sending ({exc})", maybe_applied=effect)

    def _read_body(self, response: wire.Response, deadline: float, *, effect: bool, whole: bool) -> tuple[bytes, bool]:
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
            chunk = response.read1(min(_READ_CHUNK, cap + 1 - len(body)))
            if not chunk:
                return bytes(body), True
            body += chunk
            if len(body) > cap:
                if not whole:
                    return bytes(body[:cap]), False
                raise TargetGarbled(f"reply passed the {cap}-byte cap", maybe_applied=effect)
            if time.monotonic() > deadline:
                raise TargetTimeout(f"the {self.spec.timeout.total:g}s deadline passed mid-reply")

    def _status_error(self, response: wire.Response, body: bytes, effect: bool) -> BusError:
        status = response.status
        if status in _NOT_APPLIED_STATUSES:
            return TargetUnavailable(f"HTTP {status} (not applied): {scrub_snippet(body)}")
        if status >= 500:
            return TargetUnavailable(f"HTTP {status}: {scrub_snippet(body)}", maybe_applied=effect)
        if status < 400:
            host = urlsplit(response.headers.get("location", "")).hostname
            return TargetRejected(f"HTTP {status} redirect to {host or 'the same host'} not followed", code=str(status))
        return TargetRejected(f"HTTP {status}: {scrub_snippet(body)}", code=str(status))
