"""The one hardened HTTP client every REST connector builds its I/O on.

Where it sits: inside the connector step (event → route → adapter → **connector** → result/DLQ). A
connector (``connectors/igate.py``, ...) builds one :class:`HttpClient` from its ``ConnectorSpec`` and calls
:meth:`HttpClient.request`; everything below is decided here once, so no connector can forget it:

- **Timeouts on every phase** (connect, write, read, pool), each capped by what is left of the operation's
  **total deadline**. httpx's read timeout is per read, so a target that drips one byte every few seconds
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
- **Translation into the error tree** (:mod:`schemas.errors`), so routes never see httpx:

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
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

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
_CONNECT_PHASE: Final = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
)

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


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


class _ForeignRedirectError(Exception):
    """Raised by the request hook when a redirect leaves the configured origins."""


def _shut_socket(response: httpx.Response, fired: threading.Event) -> None:
    """Wake a read blocked on ``response``'s socket: the deadline has passed."""
    fired.set()
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        # socket.socket.shutdown, not SSLSocket.shutdown: the latter tears down TLS state under the reader.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


@dataclass(frozen=True, slots=True)
class HttpReply:
    """A reply that passed the size cap and the status check (2xx, or a status the caller accepts)."""

    status: int
    headers: httpx.Headers
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
    """An ``httpx.Client`` with the deadline, size cap, breaker, rate limit and error translation above.

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
        urls = [httpx.URL(base), *(httpx.URL(u) for u in extra_origins)]
        for url in urls:
            if url.scheme not in {"http", "https"} or not url.host:
                raise ConfigError(f"connector {name!r}: {url} is not an http(s) URL", field="endpoint")
        self._origins = frozenset(_origin(u) for u in urls)
        self.guard = Guard(name, spec, log_as="http")
        ca_file = spec.options.get("ca_file")
        max_connections = int(spec.options.get("max_connections", 20))
        self._client = httpx.Client(
            base_url=base,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json", "Accept-Encoding": "identity"},
            verify=ssl.create_default_context(cafile=str(ca_file)) if ca_file else True,
            follow_redirects=False,
            max_redirects=MAX_REDIRECTS,
            # Proxies and .netrc from the environment would send our traffic (and tokens) somewhere the
            # config does not say.
            trust_env=False,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            event_hooks={"request": [self._check_origin]},
        )

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
        path = httpx.URL(url).path
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
        self._client.close()

    def _check_origin(self, request: httpx.Request) -> None:
        if _origin(request.url) not in self._origins:
            raise _ForeignRedirectError(f"{request.url.scheme}://{request.url.host}")

    def _timeout(self, remaining: float) -> httpx.Timeout:
        spec = self.spec.timeout
        return httpx.Timeout(
            connect=min(spec.connect, remaining),
            read=min(spec.read, remaining),
            write=min(spec.read, remaining),
            pool=min(spec.connect, remaining),
        )

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
        request = self._client.build_request(
            method,
            url,
            json=json_body,
            data=dict(form) if form is not None else None,
            params=dict(params) if params is not None else None,
            headers=dict(headers) if headers is not None else None,
            timeout=self._timeout(remaining),
        )
        fired = threading.Event()
        try:
            response = self._client.send(request, stream=True, follow_redirects=method in _SAFE_METHODS)
            ticket = WATCHDOG.arm(deadline, lambda: _shut_socket(response, fired))
            try:
                ok = 200 <= response.status_code < 300 or response.status_code in accept
                body = self._read_body(response, deadline, effect=effect, whole=ok)
            finally:
                WATCHDOG.disarm(ticket)
                response.close()
        except (_ForeignRedirectError, httpx.TooManyRedirects) as exc:
            raise TargetRejected(f"redirect refused: {exc}", code="redirect") from None
        except _CONNECT_PHASE as exc:
            raise TargetUnavailable(f"cannot reach {request.url.host}: {type(exc).__name__}") from None
        except httpx.TimeoutException as exc:
            raise TargetTimeout(f"no answer within the timeout ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            if fired.is_set():
                raise TargetTimeout(f"the {self.spec.timeout.total:g}s deadline passed mid-reply") from None
            raise TargetUnavailable(
                f"connection lost after sending ({type(exc).__name__})", maybe_applied=effect
            ) from None
        elapsed_ms = (time.monotonic() - started) * 1000
        if fired.is_set():
            raise TargetTimeout(f"the {self.spec.timeout.total:g}s deadline passed mid-reply")
        if ok:
            return HttpReply(response.status_code, response.headers, body, elapsed_ms, effect)
        raise self._status_error(response, body, effect)

    def _read_body(self, response: httpx.Response, deadline: float, *, effect: bool, whole: bool) -> bytes:
        """The body within the cap; an error reply is read only as far as its snippet needs."""
        cap = self.spec.max_reply_bytes if whole else ERROR_BODY_BYTES
        encoding = response.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise TargetGarbled(f"reply is {encoding}-encoded; we ask for identity", maybe_applied=effect)
        declared = response.headers.get("content-length", "")
        if whole and declared.isdigit() and int(declared) > cap:
            raise TargetGarbled(f"reply of {declared} bytes is over the {cap}-byte cap", maybe_applied=effect)
        body = bytearray()
        for chunk in response.iter_raw():
            body += chunk
            if len(body) > cap:
                if not whole:
                    break
                raise TargetGarbled(f"reply passed the {cap}-byte cap", maybe_applied=effect)
            if time.monotonic() > deadline:
                raise TargetTimeout(f"the {self.spec.timeout.total:g}s deadline passed mid-reply")
        return bytes(body[:cap])

    def _status_error(self, response: httpx.Response, body: bytes, effect: bool) -> BusError:
        status = response.status_code
        if status in _NOT_APPLIED_STATUSES:
            return TargetUnavailable(f"HTTP {status} (not applied): {scrub_snippet(body)}")
        if status >= 500:
            return TargetUnavailable(f"HTTP {status}: {scrub_snippet(body)}", maybe_applied=effect)
        if status < 400:
            location = httpx.URL(response.headers.get("location", ""))
            return TargetRejected(
                f"HTTP {status} redirect to {location.host or 'the same host'} not followed", code=str(status)
            )
        return TargetRejected(f"HTTP {status}: {scrub_snippet(body)}", code=str(status))
