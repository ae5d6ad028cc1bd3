"""The one hardened SOAP client factory: zeep with safe XML settings and a transport that cannot hang or flood.

Where it sits: inside the connector step (event → route → adapter → **connector** → result/DLQ). A SOAP
connector (``connectors/nps.py``, ...) builds one :class:`SoapClient` from its local WSDL and calls each
operation with :meth:`SoapClient.call`: through the kit's guard (:mod:`connectors.kit.guard`: breaker, rate
limit, total deadline, as the REST path), inside :meth:`SoapTransport.call`, which sets the operation's
deadline for the transport, and with the reply validated as the caller's model. Everything below is decided
here once, so no SOAP connector can forget it (docs/design.md Security, docs/reliability.md XML):

- **XML settings**: ``Settings(strict=True, forbid_dtd=True, forbid_entities=True, xml_huge_tree=False)``
  (and ``forbid_external=True``). zeep's parser already runs with ``resolve_entities=False``; libxml2 then
  refuses billion laughs, a quadratic blowup, trees deeper than 256 and text nodes over 10 MB. A reply with
  any ``<!DOCTYPE>`` is refused (zeep's default accepts ``<!DOCTYPE r SYSTEM "file:…">``).
- **The WSDL and its XSDs come from local files only** (:meth:`SoapTransport.load`): an ``http(s)`` or a
  file outside the allowed folders is a :class:`~schemas.errors.ConfigError`, never a fetch.
- **The request is written from a plan compiled once per operation** (:mod:`connectors._soap_wire`): zeep's
  bytes, without zeep's per-call value objects and lxml tree; whatever the plan is unsure of goes through
  zeep's own serialiser, so a malformed request still meets zeep's error. A 200 reply of the plain shape the
  plan knows (the response element, string leaves in order) is read by one strict lxml parse set as zeep's;
  any other reply (a fault, a DOCTYPE, another shape, broken XML) declines, and zeep reads it as before.
- **The transport is** :mod:`connectors._http_wire`, the REST connectors' wire (keep-alive sockets per
  origin, llhttp's parser via ``httptools``, one ``sendall`` per request, kernel read timeouts), chosen by
  measurement (issue 15). One thread, 2,000 ``dong_bo_ho_so`` calls against the portal simulator in its own
  process, six runs each (load average 6-7 from other work): the envelope's POST and reply read cost
  392-437 µs of CPU per call on a urllib3 pool and 137-174 µs on the wire (the whole call 743-814 µs
  against 481-559 µs); in ``bench/bench_soap.py`` (1,000 messages, 8 threads) 0.48-0.55 ms against
  0.18-0.19 ms per message. Where urllib3's time goes (per-request wrapper, file and header objects, a poll
  before each read) is in ``connectors/_http_wire.py``. urllib3 had itself replaced requests here (795-970 µs
  against 958-1,148 µs per call on 8 threads): requests merged session settings, ran hooks and built models
  of its own around the same pool on every call. No retries, no redirects, no proxy from the environment.
  Everything around the transport (the table below, the deadline, the cap) is this module's, so the change
  of transport changed no behaviour but one: a failed TLS handshake is known to be one (urllib3 could not
  tell it from a failed read, and said ``maybe_applied=effect``), and nothing was sent.
- **A total deadline** per operation (``timeout.total``) on top of per-read timeouts: zeep's POST has none
  by default, and a read timeout is per read, so a reply dripped one byte at a time would never
  trip it. From before the request is written, a watchdog thread shuts the socket at the deadline
  (:class:`connectors._http_wire.DeadlineCut`, as ``connectors/_http.py``), so a head or a body dripped
  under the read timeout ends within the deadline.
- **A reply size cap** (``max_reply_bytes``): a declared ``Content-Length`` over it is refused unread, and a
  streamed body is cut as soon as it passes the cap. zeep reads the body whole into memory and lxml builds a
  tree from it, so the cap is what bounds memory. Compressed replies are refused (we ask for ``identity``).
- **The status and content type are checked before zeep sees the body**: 200 and the SOAP fault statuses
  (500, 400) with an XML content type go to zeep; HTML or anything else is refused with a short scrubbed
  snippet.
- **Translation into the error tree** (:func:`translate`, and :func:`parse_answer` for a reply that is not
  the caller's model), so routes never see zeep or a socket error:

  ===================================================  =========================================================
  what happened                                        raised
  ===================================================  =========================================================
  connection refused, DNS failure, connect timeout,    ``TargetUnavailable(maybe_applied=False)``: the
  TLS handshake, a bad address                         request never left
  no reply within the read timeout, deadline passed   ``TargetTimeout`` (``maybe_applied``)
  mid-reply
  connection lost after sending, truncated reply, a    ``TargetUnavailable(maybe_applied=effect)``
  read timeout mid-body, a reply that is not HTTP
  503, 429, 408, 425                                   ``TargetUnavailable(maybe_applied=False)``
  other 5xx without a SOAP envelope                    ``TargetUnavailable(maybe_applied=effect)``
  reply over the cap, HTML, compressed, not XML,       ``TargetGarbled(maybe_applied=effect)``: the target
  DOCTYPE, entities, too deep, wrong namespace,        answered garbage; the effect may have been applied
  not the WSDL's shape, a non-200 envelope without
  a fault
  SOAP fault ``Server``/``Server.*``                   ``TargetUnavailable(maybe_applied=effect)``
  SOAP fault ``Client``/``Client.*``, ``MustUnder-     ``TargetRejected(code="soap:Client…")``
  stand``, ``VersionMismatch``
  other 4xx, redirects (never followed)                ``TargetRejected(code=str(status))``
  a control character in a header or the address      ``TargetRejected(code="invalid-request")``: not sent
  a fault code the caller names in ``refused``         :class:`connectors.kit.Refused` (a session refused:
                                                       the credential helper renews it), no verdict
  ===================================================  =========================================================

**No reply body ever reaches a log or an error message.** zeep's ``TransportError`` embeds the whole reply
(personal data, hostile payloads) and its ``Fault("Unknown fault occured")`` the whole document; they are
translated from their class and status alone, and exceptions are raised ``from None`` so no traceback
chains back to them. Fault strings are quoted only after :func:`schemas.pii.scrub_text`, clipped.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import quote, urlparse, urlsplit

import zeep
import zeep.exceptions
import zeep.helpers
from lxml import etree  # type: ignore[import-untyped]  # lxml ships no type hints
from pydantic import BaseModel, ValidationError

from connectors import _http_wire as wire
from connectors._http import ERROR_BODY_BYTES, USER_AGENT, scrub_snippet
from connectors._soap_wire import Declined, WirePlan, compile_operation
from connectors.kit.credential import Refused
from connectors.kit.guard import WATCHDOG, Guard
from schemas.errors import (
    BusError,
    ConfigError,
    MappingError,
    TargetGarbled,
    TargetRejected,
    TargetTimeout,
    TargetUnavailable,
)
from schemas.pii import TARGET_PERSONAL_FIELDS, scrub_text

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from config.model import ConnectorSpec

M = TypeVar("M", bound=BaseModel)

#: the folder of the WSDL and XSD files shipped with the package
WSDL_DIR: Final = Path(__file__).resolve().parent.parent / "schemas" / "wsdl"
#: characters of a fault string quoted in an error
FAULT_CHARS: Final = 200
#: HTTP connections kept per connector: enough for every route thread that may call it at once
POOL_SIZE: Final = 128
#: largest WSDL or XSD file read from disk
MAX_SCHEMA_BYTES: Final = 2_097_152
#: statuses whose XML body zeep parses: a reply, and the statuses SOAP 1.1 faults come with
_SOAP_STATUSES: Final = frozenset({200, 400, 500})
#: statuses that say the target did not act on the request
_NOT_APPLIED_STATUSES: Final = frozenset({408, 425, 429, 503})
_XML_MEDIA_TYPES: Final = frozenset({"text/xml", "application/xml", "application/soap+xml"})
_READ_CHUNK: Final = 65536
_CLIENT_FAULTS: Final = frozenset({"Client", "MustUnderstand", "VersionMismatch"})
#: characters kept as they are in an address's path and query (RFC 3986's, and '%' of an escape already there)
_PATH_SAFE: Final = "/:@!$&'()*+,;=%-._~"
_QUERY_SAFE: Final = _PATH_SAFE + "?"


def hardened_settings() -> zeep.Settings:
    """The zeep settings of docs/design.md: strict parsing, no DTD, no entities, no huge trees, no external fetches."""
    return zeep.Settings(
        strict=True,
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=True,
        xml_huge_tree=False,
        raw_response=False,
    )


def scrub_fault(text: str | None, *, keys: Iterable[str] = (), limit: int = FAULT_CHARS) -> str:
    """A target's fault string made fit for an error message, the DLQ headers and the logs.

    Whitespace is collapsed, ids, phones and e-mails are masked, values of ``keys`` (and of the target
    systems' own personal field names) written ``<Key>value</Key>`` or ``Key=value`` are masked, and the
    result is clipped to ``limit`` characters.
    """
    if not text:
        return ""
    flat = "".join(ch for ch in " ".join(text.split()) if ch.isprintable())
    flat = flat[: limit * 4]  # the scrub's cost is linear; no need to run it over a hostile megabyte
    clean = scrub_text(flat, keys=TARGET_PERSONAL_FIELDS | frozenset(keys))
    return clean if len(clean) <= limit else clean[:limit] + "…"


@dataclass(frozen=True, slots=True)
class SoapReply:
    """The reply zeep parses (it reads these attributes of a ``requests.Response``), after the cap and the checks."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes
    elapsed_ms: float
    encoding: str | None = None


@dataclass(slots=True)
class CallState:
    """One operation's call in flight: its deadline, whether it has an effect, and whether a POST went out.

    ``sent`` tells a request zeep could not even serialise (a mapping problem: permanent) from a reply it
    could not read (the target's problem: transient).
    """

    deadline: float
    effect: bool
    sent: bool = False


def _media_type(headers: Mapping[str, str]) -> str:
    return headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


def _charset(headers: Mapping[str, str]) -> str | None:
    """The ``charset`` of the content type, as requests' ``Response.encoding`` gave it to zeep."""
    for param in headers.get("Content-Type", "").split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip("\"'") or None
    return None


class SoapTransport(zeep.Transport):
    """zeep's transport with local-only schema loading, a total deadline, a reply cap and error translation.

    The HTTP client is :mod:`connectors._http_wire`, as in ``connectors/_http.py`` (the module docstring
    says why): one pool of keep-alive connections per origin.

    Thread-safe: the deadline and the effect flag of the operation in flight live in a thread-local set by
    :meth:`call`, so one client serves every worker thread.

    Args:
        name: the connector's name (logs).
        spec: its ``connectors.yaml`` entry: timeouts, ``max_reply_bytes``; option ``ca_file`` (PEM bundle
            to trust instead of the system's).
        schema_dirs: folders the WSDL and its XSDs may be read from; defaults to :data:`WSDL_DIR`.
    """

    def __init__(self, name: str, spec: ConnectorSpec, *, schema_dirs: Iterable[Path] = (WSDL_DIR,)) -> None:
        # zeep's own session is never used: WSDLs are read by load(), POSTs go through the pool below.
        super().__init__(  # type: ignore[no-untyped-call]  # zeep's own signatures are untyped
            cache=None, timeout=spec.timeout.connect, operation_timeout=spec.timeout.read
        )
        self.name = name
        self.spec = spec
        self._dirs = tuple(d.resolve() for d in schema_dirs)
        self._local = threading.local()
        ca_file = spec.options.get("ca_file")
        # One connector serves every route that names it, each with its own worker threads: a small pool
        # would discard connections under that load and reconnect for every call (POOL_SIZE idle ones are
        # kept; more are opened when all are busy). No proxy from the environment: it would send our traffic
        # somewhere the config does not say. No retries and no redirects: both are decided here.
        self._pools = wire.Pools(maxsize=POOL_SIZE, ca_file=str(ca_file) if ca_file else None)
        self._headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", "Accept": "text/xml"}
        # an address's pool and request target, looked up once: a client posts to one address
        self._targets: dict[str, tuple[wire.Pool, str]] = {}

    @contextlib.contextmanager
    def call(self, deadline: float, *, effect: bool) -> Iterator[CallState]:
        """Run the zeep calls inside under this deadline (monotonic time); ``effect`` as the operation says."""
        previous = getattr(self._local, "ctx", None)
        state = self._local.ctx = CallState(deadline, effect)
        try:
            yield state
        finally:
            self._local.ctx = previous

    def close(self) -> None:
        """Close the pooled connections."""
        self._targets.clear()
        self._pools.clear()
        self.session.close()

    # -- zeep's transport interface -----------------------------------------------------------------------

    def load(self, url: str) -> bytes:
        """Read a WSDL or XSD from an allowed local folder; anything else is a configuration error."""
        parsed = urlparse(url)
        if parsed.scheme not in {"", "file"}:
            raise ConfigError(f"connector {self.name!r}: the WSDL refers to {url!r}; only local files are loaded")
        path = Path(parsed.path if parsed.scheme == "file" else url).expanduser().resolve()
        if not any(path.is_relative_to(d) for d in self._dirs):
            raise ConfigError(f"connector {self.name!r}: {path} is outside the allowed schema folders")
        try:
            with path.open("rb") as fh:
                data = fh.read(MAX_SCHEMA_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"connector {self.name!r}: cannot read {path}: {exc.strerror}") from None
        if len(data) > MAX_SCHEMA_BYTES:
            raise ConfigError(f"connector {self.name!r}: {path} is over {MAX_SCHEMA_BYTES} bytes")
        return data

    def get(self, address: str, params: Any, headers: Any) -> Any:
        """Never used by a document/literal SOAP 1.1 binding; refused rather than left unguarded."""
        del params, headers
        raise ConfigError(f"connector {self.name!r}: zeep asked for a GET of {address!r}; only POST is allowed")

    def post(self, address: str, message: bytes | str, headers: dict[str, str]) -> SoapReply:
        """POST one envelope under the current deadline; the reply capped and checked, or a bus error."""
        ctx: CallState | None = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = CallState(time.monotonic() + self.spec.timeout.total, effect=True)
        started = time.monotonic()
        remaining = ctx.deadline - started
        if remaining <= 0:
            raise TargetUnavailable("the operation's deadline passed before this request was sent")
        spec = self.spec.timeout
        connect, read = min(spec.connect, remaining), min(spec.read, remaining)
        body = message.encode("utf-8") if isinstance(message, str) else message
        ctx.sent = True
        # armed before the request is written: a head dripped under the read timeout ends at the deadline too
        cut = wire.DeadlineCut()
        ticket = WATCHDOG.arm(ctx.deadline, cut.fire)
        try:
            response = self._open(address, body, headers, connect, read, ctx, cut)
            try:
                return self._reply(response, ctx, started, cut)
            finally:
                fired = cut.detach()  # before the connection goes back to its pool
                response.release(complete=not fired)
        finally:
            WATCHDOG.disarm(ticket)

    def _open(
        self,
        address: str,
        body: bytes,
        headers: dict[str, str],
        connect: float,
        read: float,
        ctx: CallState,
        cut: wire.DeadlineCut,
    ) -> wire.Response:
        """Write the request and read the reply's head, or raise the bus error that the failure means."""
        try:
            pool, target = self._target(address)
            request = wire.encode_request("POST", target, pool.host_header, {**self._headers, **headers}, body)
            return pool.exchange(request, connect_timeout=connect, read_timeout=read, head=False, watch=cut.attach)
        except _BadAddressError:
            raise TargetUnavailable(f"cannot reach {_host(address)}: bad address") from None
        except wire.InvalidRequest as exc:
            raise TargetRejected(f"request not sent: {exc}", code="invalid-request") from None
        except wire.WireError as exc:
            if cut.detach():  # the deadline shut the connection (or passed before the request was written)
                if isinstance(exc, wire.ConnectFailed):
                    raise TargetUnavailable("the operation's deadline passed before this request was sent") from None
                raise self._deadline_error(ctx) from None
            if isinstance(exc, wire.ConnectFailed):
                raise TargetUnavailable(f"cannot reach {_host(address)}: {_connect_failure(exc)}") from None
            if isinstance(exc, wire.ReadTimedOut):
                raise TargetTimeout("no answer within the read timeout") from None
            # lost after (part of) the request was written, or a reply that is not HTTP
            raise TargetUnavailable("connection lost after sending", maybe_applied=ctx.effect) from None

    # -- internals ----------------------------------------------------------------------------------------

    def _target(self, address: str) -> tuple[wire.Pool, str]:
        """The pool of ``address``'s origin and its request target, parsed once.

        Raises:
            _BadAddressError: not an http(s) URL with a host and a valid port.
        """
        found = self._targets.get(address)
        if found is not None:
            return found
        try:
            parts = urlsplit(address)
            port = parts.port
        except ValueError:
            raise _BadAddressError from None
        scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
        if scheme not in {"http", "https"} or not host:
            raise _BadAddressError
        # as urllib3 did: characters not allowed in a URL are percent-encoded, a '%' already there is kept
        target = quote(parts.path or "/", safe=_PATH_SAFE) + (
            f"?{quote(parts.query, safe=_QUERY_SAFE)}" if parts.query else ""
        )
        found = self._targets[address] = (self._pools.get(scheme, host, port), target)
        return found

    def _reply(self, response: wire.Response, ctx: CallState, started: float, cut: wire.DeadlineCut) -> SoapReply:
        status = response.status
        headers = response.headers
        if status not in _SOAP_STATUSES:
            body = self._read(response, ctx, cut, cap=ERROR_BODY_BYTES, whole=False)
            raise _status_error(status, body, headers, effect=ctx.effect)
        encoding = headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in {"", "identity"}:
            raise TargetGarbled(f"reply is {encoding}-encoded; we ask for identity", maybe_applied=ctx.effect)
        media = _media_type(headers)
        if media not in _XML_MEDIA_TYPES:
            if status == 200:
                # A page where an envelope belongs (a portal, a proxy's login form) says nothing about the
                # call and may carry anything: it is not quoted.
                raise TargetGarbled(
                    f"HTTP 200 reply is {media or 'untyped'}, not a SOAP envelope", maybe_applied=ctx.effect
                )
            body = self._read(response, ctx, cut, cap=ERROR_BODY_BYTES, whole=False)
            raise TargetUnavailable(
                f"HTTP {status} reply is {media or 'untyped'}, not a SOAP envelope: {scrub_snippet(body)}",
                maybe_applied=ctx.effect,
            )
        body = self._read(response, ctx, cut, cap=self.spec.max_reply_bytes, whole=True)
        elapsed_ms = (time.monotonic() - started) * 1000
        return SoapReply(status, headers, body, elapsed_ms, encoding=_charset(headers))

    def _read(self, response: wire.Response, ctx: CallState, cut: wire.DeadlineCut, *, cap: int, whole: bool) -> bytes:
        """The body within ``cap``; an error reply (``whole`` False) is read only as far as its snippet needs."""
        declared = response.headers.get("Content-Length", "")
        if whole and declared.isdigit() and int(declared) > cap:
            raise TargetGarbled(f"reply of {declared} bytes is over the {cap}-byte cap", maybe_applied=ctx.effect)
        body = bytearray()
        try:
            self._stream(response, ctx, cut, body, cap=cap, whole=whole)
        except (wire.WireError, OSError) as exc:
            if cut.fired:
                raise self._deadline_error(ctx) from None
            if whole:
                raise TargetUnavailable(
                    f"connection lost mid-reply ({type(exc).__name__})", maybe_applied=ctx.effect
                ) from None
        if cut.fired:
            raise self._deadline_error(ctx)
        return bytes(body[:cap])

    @staticmethod
    def _stream(
        response: wire.Response,
        ctx: CallState,
        cut: wire.DeadlineCut,
        body: bytearray,
        *,
        cap: int,
        whole: bool,
    ) -> None:
        """Read into ``body`` until the reply ends, passes ``cap`` or the deadline; a whole reply past it is garbage."""
        while chunk := response.read1(min(_READ_CHUNK, cap + 1 - len(body))):
            body += chunk
            if len(body) > cap:
                if not whole:
                    return
                raise TargetGarbled(f"reply passed the {cap}-byte cap", maybe_applied=ctx.effect)
            if time.monotonic() > ctx.deadline:
                cut.fired = True  # as the watchdog would: the reply is cut, its connection not kept
                return

    def _deadline_error(self, ctx: CallState) -> TargetTimeout:
        del ctx
        return TargetTimeout(f"the {self.spec.timeout.total:g}s deadline passed mid-reply")


class _BadAddressError(Exception):
    """The address is not an http(s) URL with a host and a valid port: nothing is sent."""


def _host(address: str) -> str:
    try:
        return urlsplit(address).hostname or "the target"
    except ValueError:
        return "the target"


def _connect_failure(exc: wire.ConnectFailed) -> str:
    """What kept the connection from opening, from the cause's class (its text may name files or peers)."""
    cause = exc.__cause__
    if isinstance(cause, TimeoutError):
        return "connect timeout"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, socket.gaierror):
        return "name not resolved"
    if isinstance(cause, ssl.SSLError):  # a certificate refused too (SSLCertVerificationError)
        return f"TLS handshake failed ({type(cause).__name__})"
    return f"cannot connect ({type(cause).__name__})"


def _status_error(status: int, body: bytes, headers: Mapping[str, str], *, effect: bool) -> BusError:
    if status in _NOT_APPLIED_STATUSES:
        return TargetUnavailable(f"HTTP {status} (not applied): {scrub_snippet(body)}")
    if status >= 500:
        return TargetUnavailable(f"HTTP {status}: {scrub_snippet(body)}", maybe_applied=effect)
    if 300 <= status < 400:
        location = urlparse(headers.get("Location", ""))
        return TargetRejected(
            f"HTTP {status} redirect to {location.hostname or 'the same host'} not followed", code=str(status)
        )
    return TargetRejected(f"HTTP {status}: {scrub_snippet(body)}", code=str(status))


def fault_code(fault: zeep.exceptions.Fault) -> str:
    """The fault's code without its namespace prefix: ``Client``, ``Server.Timeout``, or ``""``."""
    code = fault.code if isinstance(fault.code, str) else ""
    return code.strip().rpartition(":")[2]


def translate(exc: Exception, *, effect: bool, keys: Iterable[str] = ()) -> BusError:
    """The bus error for an exception a zeep call raised; never quotes a reply body.

    Args:
        exc: what the zeep call raised (a :class:`BusError` from the transport is returned as it is).
        effect: whether the operation changes something at the target (decides ``maybe_applied``).
        keys: personal field names whose values a fault string may echo (masked).
    """
    if isinstance(exc, BusError):
        return exc
    if isinstance(exc, zeep.exceptions.Fault):
        code = fault_code(exc)
        head = code.split(".", 1)[0]
        text = scrub_fault(exc.message if isinstance(exc.message, str) else None, keys=keys)
        if head in _CLIENT_FAULTS:
            return TargetRejected(f"SOAP fault {code}: {text}", code=f"soap:{code}")
        if head == "Server":
            return TargetUnavailable(f"SOAP fault {code}: {text}", maybe_applied=effect)
        # zeep's "Unknown fault occured": a non-200 envelope without a Fault; its detail is the whole reply
        return TargetGarbled(f"SOAP fault without a code ({code or 'none'})", maybe_applied=effect)
    reason = _garbage_reason(exc)
    return TargetGarbled(f"reply refused: {reason}", maybe_applied=effect)


#: why a reply was refused, by the class zeep raised (most specific first)
_REASONS: Final[tuple[tuple[type[Exception], str], ...]] = (
    (zeep.exceptions.DTDForbidden, "it carries a DOCTYPE (DTDs are forbidden)"),
    (zeep.exceptions.EntitiesForbidden, "it declares XML entities"),
    (zeep.exceptions.ExternalReferenceForbidden, "it refers to an external resource"),
    (zeep.exceptions.XMLSyntaxError, "not a SOAP 1.1 envelope (wrong root element or namespace)"),
)


def _garbage_reason(exc: Exception) -> str:
    """Why a reply was refused, from the exception's class and status only (its text may hold the body)."""
    if isinstance(exc, zeep.exceptions.TransportError):
        return f"HTTP {exc.status_code} body is not well-formed XML (or exceeds the parser's limits)"
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    if isinstance(exc, zeep.exceptions.Error):
        return f"it does not match the WSDL ({type(exc).__name__})"
    return f"it could not be read ({type(exc).__name__})"


def build_client(name: str, spec: ConnectorSpec, wsdl: Path, *, schema_dirs: Iterable[Path] = ()) -> zeep.Client:
    """A zeep client built once from a local WSDL, with :func:`hardened_settings` and a :class:`SoapTransport`.

    Args:
        name: the connector's name.
        spec: its ``connectors.yaml`` entry.
        wsdl: the WSDL file; it and the XSDs it imports must sit in :data:`WSDL_DIR`, the WSDL's own folder
            or ``schema_dirs``.
        schema_dirs: further folders the schemas may be read from.

    Raises:
        ConfigError: the WSDL is missing, refers to anything not local, or does not parse.
    """
    wsdl = wsdl.resolve()
    transport = SoapTransport(name, spec, schema_dirs=(WSDL_DIR, wsdl.parent, *schema_dirs))
    try:
        return zeep.Client(  # type: ignore[no-untyped-call]  # zeep's own signatures are untyped
            wsdl=str(wsdl), transport=transport, settings=hardened_settings()
        )
    except ConfigError:
        transport.close()
        raise
    except (zeep.exceptions.Error, OSError, ValueError) as exc:
        transport.close()
        raise ConfigError(f"connector {name!r}: the WSDL {wsdl.name} does not load ({type(exc).__name__})") from None


def _drop_none(value: Any) -> Any:
    """Absent optional elements come back from zeep as None; the reply models want them absent."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class _Read:
    """A reply the compiled plan read (connectors/_soap_wire.py): already what zeep's objects serialise to."""

    values: dict[str, str]


def parse_answer(answer: Any, model: type[M], *, effect: bool) -> M:
    """What zeep returned, validated as ``model``; a reply of another shape is the target answering garbage.

    Raises:
        TargetGarbled: the reply does not fit ``model`` (``maybe_applied`` as ``effect`` says).
    """
    data = answer.values if isinstance(answer, _Read) else _drop_none(zeep.helpers.serialize_object(answer, dict))  # type: ignore[no-untyped-call]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "reply"
        raise TargetGarbled(
            f"reply is not a valid {model.__name__}: {where}: {first['msg']}", maybe_applied=effect
        ) from None


class SoapClient:
    """One SOAP service from a local WSDL, each call guarded, under its deadline, its reply validated.

    Args:
        name: the connector's name (logs, breaker).
        spec: its ``connectors.yaml`` entry (timeouts, breaker, rate limit, reply cap, ``ca_file``).
        wsdl: the local WSDL file (see :func:`build_client`).
        binding: the qualified name of the WSDL binding to call, e.g. ``{urn:dvcqg:lgsp:v1}DvcqgHoSoBinding``.
        address: the endpoint the binding is called at.
        log_as: the prefix of the call events (``nps`` gives ``nps.call`` and ``nps.call_failed``).
        keys: personal field names whose values a fault string may echo (masked in errors).

    Raises:
        ConfigError: the WSDL is missing, refers to anything not local, or does not parse.
    """

    def __init__(
        self,
        name: str,
        spec: ConnectorSpec,
        wsdl: Path,
        *,
        binding: str,
        address: str,
        log_as: str = "soap",
        keys: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.guard = Guard(name, spec, log_as=log_as)
        self._keys = frozenset(keys)
        self._client = build_client(name, spec, wsdl)
        self._transport: SoapTransport = self._client.transport
        self._service = self._client.create_service(binding, address)  # type: ignore[no-untyped-call]
        self._binding = self._service._binding  # noqa: SLF001 - zeep's service proxy exposes its binding no other way
        self._address = address
        # compiled on an operation's first call: the WSDL fixes the envelope's shape (connectors/_soap_wire.py)
        self._plans: dict[str, WirePlan | None] = {}

    def call(
        self,
        operation: str,
        body: Mapping[str, Any],
        model: type[M],
        *,
        deadline: float,
        effect: bool,
        soap_headers: Mapping[str, Any] | None = None,
        refused: frozenset[str] = frozenset(),
        guard: bool = True,
        judge: bool = True,
    ) -> M:
        """Call one operation of the binding and return its reply as ``model``, or raise a bus error.

        Args:
            operation: the WSDL operation.
            body: its body's elements.
            model: the reply's model; a reply that does not fit is ``TargetUnavailable``.
            deadline: the operation's deadline (``guard.deadline()``).
            effect: whether the operation changes something at the target (decides ``maybe_applied``).
            soap_headers: header parts by name (zeep's ``_soapheaders``).
            refused: fault codes (``soap:Client.Session``) that mean the target refused the credential
                the call carried: raised as :class:`connectors.kit.Refused`, no verdict on the target.
            guard: False to bypass the breaker (probes).
            judge: False when success says nothing of the target (a login): only failures count.

        Raises:
            BusError: see the module's table; ``MappingError`` when zeep cannot even serialise the request.
            Refused: a fault code in ``refused``.
        """
        kwargs: dict[str, Any] = dict(body)
        if soap_headers is not None:
            kwargs["_soapheaders"] = dict(soap_headers)
        with self.guard.call(deadline, guard=guard, judge=judge, operation=operation):
            state: CallState | None = None
            try:
                with self._transport.call(deadline, effect=effect) as state:
                    answer = self._send(operation, body, soap_headers, kwargs)
                return parse_answer(answer, model, effect=effect)
            except (BusError, zeep.exceptions.Error, etree.LxmlError, ValueError, TypeError) as exc:
                if isinstance(exc, BusError) or (state is not None and state.sent):
                    error = translate(exc, effect=effect, keys=self._keys)
                else:  # zeep could not serialise the request: nothing was sent, and resending cannot help
                    error = MappingError(f"the {operation} request does not fit the WSDL ({type(exc).__name__})")
                if isinstance(error, TargetRejected) and error.code in refused:
                    raise Refused(str(error)) from None
                raise error from None

    def _send(
        self, operation: str, body: Mapping[str, Any], soap_headers: Mapping[str, Any] | None, kwargs: dict[str, Any]
    ) -> Any:
        """One operation's exchange: the envelope from its compiled plan when it takes the request, else zeep's."""
        if operation in self._plans:
            plan = self._plans[operation]
        else:  # two threads may both compile it: the same plan, so either may win
            plan = self._plans[operation] = compile_operation(self._binding, operation)
        if plan is not None:
            try:
                message = plan.envelope(body, soap_headers)
            except Declined:
                pass
            else:
                reply = self._transport.post(self._address, message, dict(plan.http_headers))
                if plan.reply is not None and reply.status_code == 200:
                    values = plan.reply.read(reply.content)
                    if values is not None:
                        return _Read(values)
                return self._binding.process_reply(self._client, plan.operation, reply)
        return getattr(self._service, operation)(**kwargs)

    def render(self, operation: str, body: Mapping[str, Any], *, soap_headers: Mapping[str, Any]) -> str:
        """The envelope :meth:`call` would send, pretty-printed, without sending it (``igate-bus map``)."""
        message = self._client.create_message(  # type: ignore[no-untyped-call]
            self._service, operation, **body, _soapheaders=dict(soap_headers)
        )
        text: str = etree.tostring(message, pretty_print=True, encoding="unicode")
        return text

    def close(self) -> None:
        """Close the pooled connections."""
        self._transport.close()
