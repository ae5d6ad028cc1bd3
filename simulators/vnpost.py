"""A real HTTP server that answers as VNPost's NGSP order API would, with item lives on a test-driven clock.

It records what it received, plays each item's life on a clock the tests control, and misbehaves on request.

Where it sits: it stands in for VNPost at the far end of the ``vnpost-*`` routes (event → route → adapter →
``connectors/vnpost.py`` → **here**). Tests run it in a thread on a real socket (:class:`VnpostSimulator`);
``igate-bus simulate vnpost`` runs it in the foreground.

What it answers (docs/domain.md section 3; [F] as NGSP does, [A] assumed), under the endpoint's path:

- [F] ``POST /token`` ``{customerKey, secretKey}`` → ``{token, expiresIn}``; a wrong pair is a 401. Every
  other call needs the token in the ``access_token`` header (401 otherwise).
- [F] ``POST /order/post``: the order (API A's fields in camelCase). It checks what VNPost checks: the S10
  item code and its check digit, phones ``0xxxxxxxxx``, COD and codes as integers, the required fields; a
  refusal is ``{status: "102", message: "<field>: <why>"}``. [A] An item code already used by another order
  is ``"103"``; the same order again is applied again (recorded as an effect: the simulator does not
  deduplicate) and answered ``"101"``. Accepted: ``{status: "100", itemCode, orderNumber, postage}``.
- [A] ``GET /order?clientOrderId=`` → the order, or ``{status: "404"}``.
- [F] ``POST /order/cancel`` ``{itemCode, orderNumber, reason, clientRequestId}``; ``"101"`` when already
  cancelled, ``"104"`` for an unknown item. [A] ``GET /order/cancel?clientRequestId=`` reads it back.
- [F] ``GET /order/tracking?itemCode=`` → ``{status: "100", _embedded: {rhDoc: [...]}}``, the item's events
  so far, each with [A] ``eventNo`` (1, 2, ... per item), ``statusCode``, ``statusMessage``, ``time``.

**Lives.** An accepted order gets a life: created (1) ▶ [pickup: collecting (4)] ▶ collected (6) ▶ in transit
(10) ▶ out for delivery (12) ▶ delivered (14); or, for one item in ``fail_every`` (by its code), delivery
failed (15) ▶ returned to sender (18). Each step is ``step_s`` after the previous on the simulator's clock,
which only moves when the test says (:meth:`VnpostSimulator.advance`); a cancel ends the life with 9
(before collection) or 22.

**Faults** (:class:`Faults`): latency, an error status at a rate, a hang, a dropped connection, a malformed
or hostile 200, an applied order then a dropped connection, credentials refused, a forced refusal code on
orders, and the tracking's own: ``repeat_rate`` (an event twice), ``reorder`` (events shuffled),
``drop_event_rate`` (one event left out of an answer). Control: ``GET/POST /_sim/faults``,
``/_sim/faults/schema``, ``GET /_sim/requests``, ``GET /_sim/effects``, ``POST /_sim/reset``,
``POST /_sim/clock`` ``{"advance_s": N}``.
"""

from __future__ import annotations

import collections
import hmac
import json
import os
import secrets
import time
import zlib
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Final, Literal
from urllib.parse import parse_qs, urlsplit

import structlog
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from schemas.vnpost import MAX_COD_VND, POSTAL_PHONE_PATTERN, STATUS_NAMES, ItemCode
from simulators._server import QuietHandler, ServedSimulator, SimServer, run_in_foreground, simulator_main

log = structlog.get_logger(__name__)

DEFAULT_PORT: Final = 8607
DEFAULT_KEY: Final = "igate-bus"
DEFAULT_SECRET: Final = "simulator-only"  # noqa: S105 - the simulator's own published default
KEY_ENV: Final = "IGATE_BUS_VNPOST_KEY"
SECRET_ENV: Final = "IGATE_BUS_VNPOST_SECRET"  # noqa: S105 - a variable's name
TOKEN_TTL_S: Final = 3600
ICT: Final = timezone(timedelta(hours=7), "ICT")
#: the simulated clock starts here (then moves only when told)
EPOCH: Final = datetime(2026, 1, 5, 8, 0, tzinfo=ICT)
MAX_REQUEST_BYTES: Final = 1_048_576
#: [A] postage of a BCCI letter-size parcel, whole VND
POSTAGE_VND: Final = 32_000

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
Fault = Literal["error", "timeout", "drop_connection", "malformed_body", "hostile_body", "apply_then_drop"]


class Faults(BaseModel):
    """The fault switches; a request on a faulted path draws them in the order listed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_s: float = Field(default=0.0, ge=0.0, le=600.0, description="Seconds to wait before answering.")
    error_rate: Rate = Field(default=0.0, description="Share of requests answered error_status.")
    error_status: int = Field(default=503, ge=400, le=599, description="HTTP status of an injected error.")
    timeout: Rate = Field(default=0.0, description="Share that hang for hang_s, then are reset.")
    hang_s: float = Field(default=30.0, gt=0.0, le=3600.0, description="Seconds a 'timeout' request hangs.")
    drop_connection: Rate = Field(default=0.0, description="Share reset without an answer.")
    malformed_body: Rate = Field(default=0.0, description="Share handled, then answered 200 with broken JSON.")
    hostile_body: Rate = Field(default=0.0, description="Share handled, then answered 200 with an XML DOCTYPE.")
    apply_then_drop_rate: Rate = Field(default=0.0, description="Share handled, then reset (answer lost).")
    only_paths: list[str] = Field(default_factory=list, description="Path suffixes to fault; empty = all.")
    refuse_credentials: bool = Field(default=False, description="Answer 401 to every token request.")
    order_answer: str | None = Field(default=None, max_length=10, description="Force this answer on order/post.")
    repeat_rate: Rate = Field(default=0.0, description="Tracking: share of answers with one event twice.")
    reorder: Rate = Field(default=0.0, description="Tracking: share of answers with the events shuffled.")
    drop_event_rate: Rate = Field(default=0.0, description="Tracking: share of answers missing one event.")
    seed: int | None = Field(default=None, description="Seeds the draws.")

    def covers(self, path: str) -> bool:
        """Whether the listed faults apply to ``path``."""
        return not self.only_paths or any(path.endswith(p) for p in self.only_paths)


class _OrderIn(BaseModel):
    """What order/post must carry; VNPost refuses the rest, naming the field."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    customer_code: str = Field(alias="customerCode", min_length=1, max_length=50)
    item_code: ItemCode = Field(alias="itemCode")
    order_number: str = Field(alias="orderNumber", min_length=1, max_length=100)
    client_order_id: str = Field(alias="clientOrderId", min_length=1, max_length=200)
    service_kind: Literal["pickup", "return"] = Field(alias="serviceKind")
    cod_amount: StrictInt = Field(alias="codAmount", ge=0, le=MAX_COD_VND)
    sender_name: str = Field(alias="senderName", min_length=1, max_length=200)
    sender_tel: str = Field(alias="senderTel", pattern=r"^0[0-9]{9,10}$")
    sender_address: str = Field(alias="senderAddress", min_length=1, max_length=500)
    sender_province: StrictInt = Field(alias="senderProvince", ge=1, le=99)
    sender_ward: StrictInt = Field(alias="senderWard", ge=1, le=99_999)
    receiver_name: str = Field(alias="receiverName", min_length=1, max_length=200)
    receiver_tel: str = Field(alias="receiverTel", pattern=r"^0[0-9]{9,10}$")
    receiver_address: str = Field(alias="receiverAddress", min_length=1, max_length=500)
    receiver_province: StrictInt = Field(alias="receiverProvince", ge=1, le=99)
    receiver_ward: StrictInt = Field(alias="receiverWard", ge=1, le=99_999)


class _CancelIn(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    item_code: ItemCode = Field(alias="itemCode")
    order_number: str = Field(alias="orderNumber", min_length=1, max_length=100)
    client_request_id: str = Field(alias="clientRequestId", min_length=1, max_length=200)


def life_of(item_code: str, kind: str, *, fail_every: int) -> list[int]:
    """The statuses an item goes through; one in ``fail_every`` (by its code) fails delivery and returns."""
    start = [1, 4, 6] if kind == "pickup" else [1, 6]
    fails = fail_every > 0 and zlib.crc32(item_code.encode()) % fail_every == 0
    return [*start, 10, 12, 15, 18] if fails else [*start, 10, 12, 14]


class VnpostSimulator(ServedSimulator[Faults]):
    """VNPost in a thread: ``start()``, ``stop()``, ``url`` (the API's base), a context manager.

    Args:
        host: interface to bind.
        port: port to bind; 0 picks a free one.
        customer_key: the key ``/token`` accepts.
        secret_key: its secret.
        step_s: simulated seconds between two statuses of an item's life.
        fail_every: one item in this many fails delivery and goes back to the sender (0: none).
        base_path: the API's path on the server.
    """

    thread_name = "vnpost-sim"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        customer_key: str = DEFAULT_KEY,
        secret_key: str = DEFAULT_SECRET,
        step_s: float = 3600.0,
        fail_every: int = 5,
        base_path: str = "/apiVNPostNGSP/p1.0",
    ) -> None:
        self.customer_key = customer_key
        self._secret = secret_key
        self.step_s = step_s
        self.fail_every = fail_every
        self.base_path = base_path.rstrip("/")
        self._init_server(host, port, Faults())
        self._clock_s = 0.0
        self._tokens: set[str] = set()
        self._orders: dict[str, dict[str, Any]] = {}  # by item code
        self._cancels: dict[str, dict[str, Any]] = {}  # by clientRequestId
        self._tracking_calls: collections.Counter[str] = collections.Counter()
        self._tracking_faults: collections.Counter[str] = collections.Counter()

    @property
    def api_url(self) -> str:
        """The endpoint to give the connector."""
        return self.url + self.base_path

    def _make_server(self) -> SimServer:
        return _Server((self.host, self.port), _Handler)

    # -- the clock and the record ----------------------------------------------------------------------

    def now(self) -> datetime:
        """The simulated time."""
        with self._lock:
            return EPOCH + timedelta(seconds=self._clock_s)

    def advance(self, seconds: float) -> datetime:
        """Move the simulated clock forward; items progress by it. Returns the new time."""
        with self._lock:
            self._clock_s += max(0.0, seconds)
        return self.now()

    def finish_lives(self) -> datetime:
        """Move the clock past the end of every life."""
        return self.advance(self.step_s * 10)

    def reset(self) -> None:
        """Forget orders, cancels, tokens, the record and the faults; the clock goes back to its start."""
        self._reset_record()
        with self._lock:
            self._clock_s = 0.0
            self._tokens.clear()
            self._orders.clear()
            self._cancels.clear()
            self._tracking_calls.clear()
            self._tracking_faults.clear()

    def requests(self, path_suffix: str = "") -> list[dict[str, Any]]:
        """The requests received (oldest first), optionally only those whose path ends with ``path_suffix``."""
        with self._lock:
            return [dict(r) for r in self._requests if r["path"].endswith(path_suffix)]

    def effect_counts(self, kind: str = "order") -> dict[str, int]:
        """Idempotency key (``clientOrderId`` / ``clientRequestId``) → times an effect of ``kind`` was applied."""
        with self._lock:
            return dict(collections.Counter(e["key"] for e in self._effects if e["type"] == kind))

    def tracking_calls(self) -> dict[str, int]:
        """Item code → tracking calls answered for it."""
        with self._lock:
            return dict(self._tracking_calls)

    def tracking_faults(self) -> dict[str, int]:
        """How many tracking answers were faulted, by fault (``repeat``, ``reorder``, ``drop``)."""
        with self._lock:
            return dict(self._tracking_faults)

    def orders(self) -> dict[str, dict[str, Any]]:
        """Accepted orders by item code."""
        with self._lock:
            return {k: dict(v) for k, v in self._orders.items()}

    def history(self, item_code: str) -> list[dict[str, Any]]:
        """The item's tracking events up to now, in order (what a faultless answer holds)."""
        with self._lock:
            order = self._orders.get(item_code)
            return self._events(order) if order is not None else []

    # -- handling (handler threads) --------------------------------------------------------------------

    def _events(self, order: dict[str, Any]) -> list[dict[str, Any]]:
        """Under the lock: the order's events whose time has come."""
        out = []
        for n, (status, offset) in enumerate(order["life"], start=1):
            if offset > self._clock_s:
                break
            at = EPOCH + timedelta(seconds=offset)
            out.append(
                {
                    "eventNo": n,
                    "itemCode": order["itemCode"],
                    "orderNumber": order["orderNumber"],
                    "statusCode": status,
                    "statusMessage": STATUS_NAMES.get(status, ""),
                    "time": at.isoformat(),
                }
            )
        return out

    def _draw(self, path: str) -> tuple[Faults, Fault | None]:
        with self._lock:
            faults = self._faults
            if not faults.covers(path):
                return faults, None
            for name, rate in (
                ("error", faults.error_rate),
                ("timeout", faults.timeout),
                ("drop_connection", faults.drop_connection),
                ("malformed_body", faults.malformed_body),
                ("hostile_body", faults.hostile_body),
                ("apply_then_drop", faults.apply_then_drop_rate),
            ):
                if rate > 0.0 and self._rng.random() < rate:
                    return faults, name  # type: ignore[return-value]
        return faults, None

    def _handle(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any) -> Any:
        """The answer (a JSON-ready dict with its HTTP status under ``_http``) to one API call."""
        if (method, path) == ("POST", "/token"):
            return self._token(body)
        with self._lock:
            authorised = headers.get("access_token", "") in self._tokens
        if not authorised:
            return {"_http": 401, "status": "401", "message": "access_token missing, unknown or expired"}
        route = {
            ("POST", "/order/post"): lambda: self._post(body),
            ("GET", "/order"): lambda: self._order(query.get("clientOrderId", "")),
            ("POST", "/order/cancel"): lambda: self._cancel(body),
            ("GET", "/order/cancel"): lambda: self._cancel_lookup(query.get("clientRequestId", "")),
            ("GET", "/order/tracking"): lambda: self._tracking(query.get("itemCode", "")),
        }.get((method, path))
        if route is None:
            return {"_http": 404, "status": "404", "message": f"no {method} {path}"}
        return route()

    def _token(self, body: Any) -> dict[str, Any]:
        body = body if isinstance(body, dict) else {}
        key_ok = hmac.compare_digest(str(body.get("customerKey", "")).encode(), self.customer_key.encode())
        secret_ok = hmac.compare_digest(str(body.get("secretKey", "")).encode(), self._secret.encode())
        if self.faults.refuse_credentials or not (key_ok and secret_ok):
            return {"_http": 401, "status": "401", "message": "customerKey/secretKey refused"}
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens.add(token)
        return {"token": token, "expiresIn": TOKEN_TTL_S}

    def _post(self, body: Any) -> dict[str, Any]:
        try:
            order = _OrderIn.model_validate(body)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return {"status": "102", "message": f"{where}: {first['msg']}"}
        forced = self.faults.order_answer
        if forced is not None and forced != "100":
            return {"status": forced, "message": "injected refusal"}
        with self._lock:
            existing = self._orders.get(order.item_code)
            if existing is not None and existing["clientOrderId"] != order.client_order_id:
                return {"status": "103", "message": f"itemCode: {order.item_code} is used by another order"}
            answer = "101" if existing is not None else "100"
            if existing is None:
                life = life_of(order.item_code, order.service_kind, fail_every=self.fail_every)
                self._orders[order.item_code] = {
                    "itemCode": order.item_code,
                    "orderNumber": order.order_number,
                    "clientOrderId": order.client_order_id,
                    "serviceKind": order.service_kind,
                    "codAmount": order.cod_amount,
                    "postage": POSTAGE_VND,
                    "life": [(s, self._clock_s + i * self.step_s) for i, s in enumerate(life)],
                }
            self._effects.append({"type": "order", "key": order.client_order_id, "item_code": order.item_code})
        return {
            "status": answer,
            "message": "OK",
            "itemCode": order.item_code,
            "orderNumber": order.order_number,
            "clientOrderId": order.client_order_id,
            "serviceKind": order.service_kind,
            "postage": POSTAGE_VND,
        }

    def _order(self, client_order_id: str) -> dict[str, Any]:
        with self._lock:
            found = next((o for o in self._orders.values() if o["clientOrderId"] == client_order_id), None)
        if found is None:
            return {"status": "404", "message": "no order with this clientOrderId"}
        return {"status": "100", "message": "OK", **{k: v for k, v in found.items() if k != "life"}}

    def _cancel(self, body: Any) -> dict[str, Any]:
        try:
            cancel = _CancelIn.model_validate(body)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            return {"status": "102", "message": f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"}
        with self._lock:
            order = self._orders.get(cancel.item_code)
            if order is None or order["orderNumber"] != cancel.order_number:
                return {"status": "104", "message": f"itemCode: no order {cancel.order_number} on this item"}
            done = self._events(order)
            last = done[-1]["statusCode"] if done else 1
            if last in {9, 22}:
                answer = "101"
            elif last in {14, 18}:
                return {"status": "105", "message": "itemCode: the item has already been delivered or returned"}
            else:
                answer = "100"
                end = 9 if last < 6 else 22
                order["life"] = [*order["life"][: len(done)], (end, self._clock_s)]
            self._cancels[cancel.client_request_id] = {"itemCode": cancel.item_code, "orderNumber": cancel.order_number}
            self._effects.append({"type": "cancel", "key": cancel.client_request_id, "item_code": cancel.item_code})
        return {"status": answer, "message": "OK", "itemCode": cancel.item_code, "orderNumber": cancel.order_number}

    def _cancel_lookup(self, client_request_id: str) -> dict[str, Any]:
        with self._lock:
            found = self._cancels.get(client_request_id)
        if found is None:
            return {"status": "404", "message": "no cancellation with this clientRequestId"}
        return {"status": "100", "message": "OK", **found}

    def _tracking(self, item_code: str) -> dict[str, Any]:
        with self._lock:
            order = self._orders.get(item_code)
            events = self._events(order) if order is not None else []
            self._tracking_calls[item_code] += 1
            faults, rng = self._faults, self._rng
            if events and faults.drop_event_rate > 0 and rng.random() < faults.drop_event_rate:
                events.pop(rng.randrange(len(events)))
                self._tracking_faults["drop"] += 1
            if events and faults.repeat_rate > 0 and rng.random() < faults.repeat_rate:
                events.insert(rng.randrange(len(events) + 1), dict(rng.choice(events)))
                self._tracking_faults["repeat"] += 1
            if len(events) > 1 and faults.reorder > 0 and rng.random() < faults.reorder:
                rng.shuffle(events)
                self._tracking_faults["reorder"] += 1
        return {"status": "100", "message": "OK", "_embedded": {"rhDoc": events}}

    def _control(self, method: str, path: str, body: bytes) -> tuple[int, Any]:  # noqa: PLR0911 - one per endpoint
        faults = self._faults_control(method, path, body)
        if faults is not None:
            return faults
        if (method, path) == ("GET", "/_sim/requests"):
            return 200, {"requests": self.requests()}
        if (method, path) == ("GET", "/_sim/effects"):
            return 200, {"effects": self.effects(), "tracking_calls": self.tracking_calls()}
        if (method, path) == ("POST", "/_sim/reset"):
            self.reset()
            return 200, {"reset": True}
        if (method, path) == ("POST", "/_sim/clock"):
            try:
                advance = float(json.loads(body or b"{}").get("advance_s", 0))
            except (ValueError, AttributeError):
                return 400, {"error": 'give {"advance_s": seconds}'}
            return 200, {"now": self.advance(advance).isoformat()}
        return 404, {"error": "unknown control endpoint"}


class _Server(SimServer):
    error_event = "vnpost_sim.connection_error"
    sim: VnpostSimulator


class _Handler(QuietHandler):
    server: _Server
    server_version = "VNPost-simulator/0.1"

    def _handle(self) -> None:
        self._serve()

    def _serve(self) -> None:
        sim = self.server.sim
        raw = self.read_body(MAX_REQUEST_BYTES)
        if raw is None:
            self.send_json(413, {"status": "413", "message": "request too large"})
            return
        split = urlsplit(self.path)
        if split.path.startswith("/_sim/"):
            self.send_json(*sim._control(self.command, split.path, raw))  # noqa: SLF001 - part of the simulator
            return
        if not split.path.startswith(sim.base_path + "/"):
            self.send_json(404, {"status": "404", "message": "not under the API's path"})
            return
        path = split.path[len(sim.base_path) :]
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        fields = body if isinstance(body, dict) else {}
        key = fields.get("clientOrderId") or fields.get("clientRequestId") or query.get("itemCode")
        entry: dict[str, Any] = {
            "at": time.time(),
            "method": self.command,
            "path": path,
            "query": query,
            "key": key,
            "run": self.headers.get("X-Request-Id"),
            "fault": None,
        }
        with sim._lock:  # noqa: SLF001
            sim._requests.append(entry)  # noqa: SLF001
        faults, fault = sim._draw(path)  # noqa: SLF001
        entry["fault"] = fault
        if sim.log_requests:
            log.info("vnpost_sim.request", method=self.command, path=path, key=key, fault=fault)
        self._answer(path, query, body, faults, fault)

    def _answer(self, path: str, query: dict[str, str], body: Any, faults: Faults, fault: Fault | None) -> None:
        """Answer one API call, or fail it as the drawn fault says."""
        sim = self.server.sim
        if faults.latency_s:
            sim._wake.wait(faults.latency_s)  # noqa: SLF001
        if fault == "error":
            self.send_json(faults.error_status, {"status": str(faults.error_status), "message": "injected fault"})
            return
        if fault in {"timeout", "drop_connection"}:
            if fault == "timeout":
                sim._wake.wait(faults.hang_s)  # noqa: SLF001
            self.reset_connection()
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        answer = sim._handle(self.command, path, query, headers, body)  # noqa: SLF001
        status = int(answer.pop("_http", 200))
        if fault == "apply_then_drop":
            self.reset_connection()
        elif fault == "malformed_body":
            self.send_raw_json(200, b'{"status": "100", "itemCode": ')
        elif fault == "hostile_body":
            self.send_raw_json(200, b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>')
        else:
            self.send_json(status, answer)


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, step_s: float = 3600.0) -> None:
    """Run the simulator in the foreground (``igate-bus simulate vnpost``), accepting the bus's own key."""
    sim = VnpostSimulator(
        host,
        port,
        customer_key=os.environ.get(KEY_ENV) or DEFAULT_KEY,
        secret_key=os.environ.get(SECRET_ENV) or DEFAULT_SECRET,
        step_s=step_s,
    )
    run_in_foreground(sim, "vnpost_sim", lambda: {"url": sim.api_url})


def main(argv: list[str] | None = None) -> None:
    """``python -m simulators.vnpost [--host H] [--port P]``."""
    simulator_main(argv, name="vnpost", port=DEFAULT_PORT, serve=serve)


if __name__ == "__main__":
    main()


__all__ = ["POSTAL_PHONE_PATTERN", "Faults", "VnpostSimulator", "life_of", "serve"]
