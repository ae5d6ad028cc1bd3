"""What the two SMS gateway simulators share: the record of what they sent, the fault switches, the handler.

Where it sits: behind ``connectors/sms.py`` (event → route → adapter → connector → **a gateway**). Each gateway
module (``simulators/viettel_sms.py`` SOAP, ``simulators/esms.py`` REST) parses its own protocol into a
:class:`Call` (``send``, ``lookup`` or ``probe``, with the request id, phone and content) and renders its own
answers; this module draws the faults, applies the send, and records everything, the same way for both.

The record is what tests assert on: :meth:`GatewaySimulator.sent` lists each SMS the gateway accepted with the
request id the bus sent and ``received_at`` (the simulator's wall clock when the request arrived, for
publish-to-gateway latency), :meth:`GatewaySimulator.effect_counts` counts them by request id. A gateway that
deduplicates by request id (eSMS, code 124) says so with ``dedupes``; the other counts a repeat again.
Control endpoints (never recorded, never faulted): ``GET/POST /_sim/faults``, ``GET /_sim/faults/schema``,
``GET /_sim/requests``, ``GET /_sim/effects``, ``POST /_sim/reset``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Final, Literal
from urllib.parse import parse_qs, urlsplit

import structlog
from pydantic import BaseModel, ConfigDict, Field

from simulators._server import QuietHandler, ServedSimulator, SimServer, simulator_main

log = structlog.get_logger(__name__)

MAX_REQUEST_BYTES: Final = 262_144
CONTROL_PREFIX: Final = "/_sim/"
Rate = Annotated[float, Field(ge=0.0, le=1.0, description="Probability per request, 0 to 1.")]
Op = Literal["send", "lookup", "probe"]
FaultName = Literal["down", "error", "timeout", "drop_connection", "apply_then_drop", "garbage", "hostile", "code"]


class Faults(BaseModel):
    """The fault switches; a request of a faulted operation draws them in the order they are listed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    down: bool = Field(default=False, description="Every request (sends, lookups, probes) answered 503.")
    latency_s: float = Field(default=0.0, ge=0.0, le=600.0, description="Seconds to wait before answering.")
    error_rate: Rate = Field(default=0.0, description="Share of requests answered with error_status.")
    error_status: int = Field(default=503, ge=400, le=599, description="HTTP status of an injected error.")
    echo_request: bool = Field(default=False, description="An injected error's body echoes the request (content).")
    timeout: Rate = Field(default=0.0, description="Share of requests that hang for hang_s, then get a reset.")
    hang_s: float = Field(default=30.0, gt=0.0, le=3600.0, description="Seconds a 'timeout' request hangs.")
    apply_before_hang: bool = Field(default=False, description="Send the SMS before hanging (ambiguous).")
    drop_connection: Rate = Field(default=0.0, description="Share of requests reset without an answer.")
    apply_then_drop_rate: Rate = Field(default=0.0, description="Share sent, then reset (the answer is lost).")
    garbage_rate: Rate = Field(default=0.0, description="Share sent, then answered 200 with a broken body.")
    hostile_rate: Rate = Field(default=0.0, description="Share sent, then answered with a DOCTYPE/entity reply.")
    code_rate: Rate = Field(default=0.0, description="Share answered with the gateway's own error `code`.")
    code: str = Field(default="", max_length=10, description="The gateway's error code for code_rate (e.g. 103).")
    only_ops: list[Literal["send", "lookup", "probe"]] = Field(
        default_factory=list, description="Operations to fault; empty = all."
    )
    seed: int | None = Field(default=None, description="Seed of the fault draws (deterministic runs).")


@dataclass(slots=True)
class Call:
    """One request, parsed by the gateway module."""

    op: Op
    request_id: str = ""
    phone: str = ""
    content: str = ""
    unicode: bool = False
    authorised: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the handler writes back."""

    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"


class GatewaySimulator(ServedSimulator[Faults]):
    """A gateway's record and faults; the module subclass parses and renders its protocol.

    Args:
        host: where to listen.
        port: 0 for a free port.
    """

    #: the gateway's name in logs and records
    gateway: ClassVar[str] = "sms"
    #: the gateway answers a repeated request id as a duplicate instead of sending again
    dedupes: ClassVar[bool] = False

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._init_server(host, port, Faults())
        self._ids = itertools.count(10_000_001)
        self._by_key: dict[str, dict[str, Any]] = {}

    def _make_server(self) -> SmsServer:
        return SmsServer((self.host, self.port), GatewayHandler)

    # -- what a module implements -------------------------------------------------------------------------
    def parse(self, method: str, path: str, query: dict[str, str], body: bytes) -> Call | Answer:
        """The call a request makes, or an answer at once (a malformed request, an unknown path)."""
        raise NotImplementedError

    def answer(self, call: Call, sent: dict[str, Any] | None, *, duplicate: bool) -> Answer:
        """The answer to a handled call: a send (``sent`` is its record), a lookup (``sent`` or None), a probe."""
        raise NotImplementedError

    def refusal(self, call: Call, code: str) -> Answer:
        """The gateway's own error answer with ``code`` (bad credentials, no balance...)."""
        raise NotImplementedError

    def garbage(self, call: Call, *, hostile: bool) -> Answer:
        """A broken 200 (or, ``hostile``, one with a DOCTYPE and entities)."""
        raise NotImplementedError

    # -- the record ----------------------------------------------------------------------------------------
    def sent(self) -> list[dict[str, Any]]:
        """Every SMS the gateway accepted, in order (one per send, repeats included unless it dedupes)."""
        return self.effects()

    def effect_counts(self) -> dict[str, int]:
        """How many times each request id was sent."""
        counts: dict[str, int] = {}
        for effect in self.effects():
            counts[effect["request_id"]] = counts.get(effect["request_id"], 0) + 1
        return counts

    def requests(self) -> list[dict[str, Any]]:
        """Every recorded request (op, request id, fault, status), in order."""
        with self._lock:
            return [dict(r) for r in self._requests]

    def reset(self) -> None:
        """Forget requests, sends and faults."""
        self._reset_record()
        with self._lock:
            self._by_key.clear()

    # -- internals -----------------------------------------------------------------------------------------
    def _draw(self, op: Op) -> tuple[Faults, FaultName | None]:
        with self._lock:
            faults = self._faults
            if faults.down:
                return faults, "down"
            if faults.only_ops and op not in faults.only_ops:
                return faults, None
            rng = self._rng
            for name, rate in (
                ("error", faults.error_rate),
                ("timeout", faults.timeout),
                ("drop_connection", faults.drop_connection),
                ("apply_then_drop", faults.apply_then_drop_rate),
                ("garbage", faults.garbage_rate),
                ("hostile", faults.hostile_rate),
                ("code", faults.code_rate if faults.code else 0.0),
            ):
                if rate and rng.random() < rate:
                    return faults, name  # type: ignore[return-value]  # the names above are FaultName's
            return faults, None

    def _apply(self, call: Call, received_at: float) -> tuple[dict[str, Any], bool]:
        """Send the SMS (record it); a deduplicating gateway answers a known request id as a duplicate."""
        with self._lock:
            known = self._by_key.get(call.request_id)
            if known is not None and self.dedupes:
                return known, True
            record = {
                "request_id": call.request_id,
                "message_id": str(next(self._ids)),
                "phone": call.phone,
                "content": call.content,
                "unicode": call.unicode,
                "received_at": received_at,
                "sent_at": time.time(),
            }
            self._effects.append(record)
            self._by_key.setdefault(call.request_id, record)
            return record, False

    def _lookup(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._by_key.get(request_id)

    def _record(self, call: Call, received_at: float) -> dict[str, Any]:
        entry = {"op": call.op, "request_id": call.request_id, "at": received_at}
        with self._lock:
            self._requests.append(entry)
        return entry

    def control(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        """The ``/_sim/`` endpoints."""
        found = self._faults_control(method, path, body)
        if found is not None:
            return found
        if path == "/_sim/requests":
            return 200, self.requests()
        if path == "/_sim/effects":
            return 200, [{k: v for k, v in e.items() if k != "content"} for e in self.effects()]
        if path == "/_sim/reset" and method == "POST":
            self.reset()
            return 200, {"reset": True}
        return 404, {"error": f"no control endpoint {path}"}


class SmsServer(SimServer):
    """The socket server of a gateway simulator."""

    sim: GatewaySimulator


class GatewayHandler(QuietHandler):
    """Reads a request, lets the gateway parse it, draws a fault, sends and answers."""

    server: SmsServer

    def _handle(self) -> None:
        received_at = time.time()
        sim = self.server.sim
        body = self.read_body(MAX_REQUEST_BYTES)
        if body is None:
            self._send(Answer(413, b'{"error": "request too large"}'))
            return
        split = urlsplit(self.path)
        if split.path.startswith(CONTROL_PREFIX):
            status, data = sim.control(self.command, split.path, body)
            self._send(Answer(status, json.dumps(data, ensure_ascii=False).encode()))
            return
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        parsed = sim.parse(self.command, split.path, query, body)
        if isinstance(parsed, Answer):
            self._send(parsed)
            return
        entry = sim._record(parsed, received_at)  # noqa: SLF001 - the handler is part of the simulator
        faults, fault = sim._draw(parsed.op)  # noqa: SLF001
        entry["fault"] = fault
        if faults.latency_s:
            sim._wake.wait(faults.latency_s)  # noqa: SLF001
        self._respond(parsed, faults, fault, received_at)
        if sim.log_requests:
            log.info("sms_sim.request", gateway=sim.gateway, op=parsed.op, request_id=parsed.request_id, fault=fault)

    def _respond(self, call: Call, faults: Faults, fault: FaultName | None, received_at: float) -> None:
        if fault is not None and fault not in {"apply_then_drop", "garbage", "hostile"}:
            self._refuse(call, faults, fault, received_at)
            return
        self._handle_call(call, fault, received_at)

    def _refuse(self, call: Call, faults: Faults, fault: FaultName, received_at: float) -> None:
        """The faults that answer without handling the request (unless ``apply_before_hang``)."""
        sim = self.server.sim
        if fault == "down":
            self._send(Answer(503, b"Service Unavailable", "text/plain"))
            return
        if fault == "error":
            echo = f"error handling {call.content}" if faults.echo_request else "injected fault"
            self._send(Answer(faults.error_status, echo.encode(), "text/plain; charset=utf-8"))
            return
        if fault == "drop_connection":
            self._reset()
            return
        if fault == "timeout":
            if faults.apply_before_hang and call.op == "send" and call.authorised:
                sim._apply(call, received_at)  # noqa: SLF001
            sim._wake.wait(faults.hang_s)  # noqa: SLF001
            self._reset()
            return
        if fault == "code":
            self._send(sim.refusal(call, faults.code))

    def _handle_call(self, call: Call, fault: FaultName | None, received_at: float) -> None:
        sim = self.server.sim
        if not call.authorised:
            self._send(sim.refusal(call, "auth"))
            return
        if call.op == "send":
            record, duplicate = sim._apply(call, received_at)  # noqa: SLF001
            if fault == "apply_then_drop":
                self._reset()
            elif fault in {"garbage", "hostile"}:
                self._send(sim.garbage(call, hostile=fault == "hostile"))
            else:
                self._send(sim.answer(call, record, duplicate=duplicate))
            return
        if call.op == "lookup":
            self._send(sim.answer(call, sim._lookup(call.request_id), duplicate=False))  # noqa: SLF001
            return
        self._send(sim.answer(call, None, duplicate=False))

    def _reset(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    def _send(self, answer: Answer) -> None:
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)
        except OSError:
            self.close_connection = True


def serve_gateway(sim: GatewaySimulator, shown_url: str) -> None:
    """Run a gateway simulator in the foreground until interrupted, logging each request."""
    sim.log_requests = True
    try:
        sim.start()
        log.info("sms_sim.listening", gateway=sim.gateway, url=shown_url or sim.url)
        threading.Event().wait()
    except KeyboardInterrupt:
        log.info("sms_sim.stopping", gateway=sim.gateway)
    finally:
        sim.stop()


#: the gateways' ``main``: the simulators' one
gateway_main = simulator_main
