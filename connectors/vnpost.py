"""The VNPost connector: BCCI pickup and return orders, their cancellation, and item tracking on a schedule.

Where it sits: the connector step of the ``vnpost-*`` routes (event → route → adapter → **connector** →
result/DLQ): ``bcci.pickup_requested`` and ``dossier.result_ready`` (with BCCI) → ``vnpost.create_order``;
``dossier.withdrawn``/``dossier.stopped`` with an item code → ``vnpost.cancel_order``; the scheduled
``bus.tick`` → ``vnpost.poll``, whose new tracking events each become one ``vnpost.tracking_updated``.

The wire is VNPost's NGSP REST API (docs/domain.md section 3, API B) over :class:`connectors._http.HttpClient`:
a token from ``customerKey``/``secretKey`` sent as the ``access_token`` header ([F] API A's header), cached
and renewed once when VNPost answers 401; answers ``{status, message}`` with "100" (and "101", [A] already
done) accepted. [A] Each order carries our idempotency key as ``clientOrderId`` and can be read back by it.

**The item-code pool** lives in the connector state (``self.state``, namespace ``pool``, one row per code):
``free``, or taken as ``order:<idempotency key>``. A code is taken in one atomic step keyed by the order's
idempotency key, so a retry, a redelivery or a reconcile of the same order finds the same code and never a
second one; it goes back to ``free`` when VNPost refuses the order or it is cancelled. Below
``options.pool_low`` free codes each order's reply carries a ``vnpost.pool_low`` result event (and a warning
is logged). :func:`load_pool` adds codes VNPost issued; each must pass the S10 check digit.

**Items in transit** (namespace ``items``, one row per item code, ``transit`` until finished, then
``done``). A tracking run polls at most ``options.poll_budget`` transit items from the saved cursor onwards
(wrapping round), each through the guard's rate limit. An item's tracking events are numbered; only the
contiguous run of new numbers is reported (a repeated event is ignored, a missing one waits for the next
run, so the order per item holds even when VNPost drops or reorders events). What was reported in run R is
marked acknowledged only when a later run starts from a cursor saved by R (the engine saves it after the
run's results are published): a run that died before publishing is repeated by the next, with the same
result ids. An item whose final status (delivered, returned, cancelled) is acknowledged becomes ``done``
and is never polled again.

Error table (what VNPost does → what the route sees):

=================================================  ==============================================================
VNPost                                             raised
=================================================  ==============================================================
refused connection, 503, timeout, 5xx              the client's table (``connectors/_http.py``): retried
token refused (401 on /token)                      ``CredentialsRefused``: messages wait for an operator
401 on a call                                      token renewed once, then as above
answer not "100"/"101"                             ``TargetRejected(code=answer)`` with the answer's scrubbed
                                                   message; the item code goes back to the pool
reply not JSON / wrong shape / over the cap        ``TargetGarbled``: retried, then dead-lettered ``garbled``
a reply naming another item or order               ``TargetGarbled`` (a hostile or confused answer)
the pool has no free code                          ``TargetRejected(field="item_code", code="pool_empty")``
no connector state attached                        ``ConfigError``
the key's environment variable unset               ``CredentialsRefused`` (the bus starts; messages wait)
=================================================  ==============================================================

``connectors.yaml``::

    vnpost:
      type: vnpost
      endpoint: https://donhang.vnpost.vn/apiVNPostNGSP/p1.0
      rate_limit: 20
      credentials: {customer_key: IGATE_BUS_VNPOST_KEY, secret_key: IGATE_BUS_VNPOST_SECRET}
      options:
        customer_code: DLK0001
        pool_low: 50
        poll_budget: 200
        agency_name: Bộ phận một cửa tỉnh      # the receiver of pickups, the sender of returns
        agency_phone: "02623812345"
        agency_address: 09 Lê Duẩn
        agency_province: "66"
        agency_district: "643"
        agency_ward: "24121"
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictInt, ValidationError

from connectors._http import HttpClient, HttpReply, scrub_snippet
from connectors.base import credential, required_option
from connectors.kit import CachedCredential, Credential, KitConnector, Refused, operation
from connectors.kit.state import ConnectorState, StateNotAttached
from schemas.errors import ConfigError, TargetGarbled, TargetRejected
from schemas.vnpost import (
    ACCEPTED_CODES,
    FINAL_STATUSES,
    CancelOrder,
    CancelReply,
    CreateOrder,
    OrderReply,
    PollReply,
    PollRequest,
    TrackingEntry,
    check_item_code,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from config.model import ConnectorSpec

log = structlog.get_logger(__name__)

POOL: Final = "pool"
ITEMS: Final = "items"
FREE: Final = "free"
TRANSIT: Final = "transit"
DONE: Final = "done"
TAKEN_PREFIX: Final = "order:"
DEFAULT_POOL_LOW: Final = 50
DEFAULT_POLL_BUDGET: Final = 200
#: tracking entries read per item and call; an item has a dozen in a long life
PAGE_SIZE: Final = 50
_TOKEN_REFUSED: Final = frozenset({401})
_NOT_FOUND: Final = "404"


# ---- the wire (NGSP, camelCase) ----------------------------------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class _TokenReply(_Wire):
    token: str = Field(min_length=1, max_length=4000)
    expires_in: StrictInt = Field(alias="expiresIn", ge=1, le=86_400 * 30)


class _Answer(_Wire):
    status: str = Field(max_length=10)
    message: str = Field(default="", max_length=2000)


class _OrderAnswer(_Answer):
    item_code: str | None = Field(default=None, alias="itemCode", max_length=20)
    order_number: str | None = Field(default=None, alias="orderNumber", max_length=100)
    client_order_id: str | None = Field(default=None, alias="clientOrderId", max_length=200)
    service_kind: str | None = Field(default=None, alias="serviceKind", max_length=20)
    postage: StrictInt | None = Field(default=None, ge=0)


class _TrackDoc(_Wire):
    event_no: StrictInt = Field(alias="eventNo", ge=1, le=10_000)
    item_code: str = Field(alias="itemCode", max_length=20)
    order_number: str = Field(alias="orderNumber", max_length=100)
    status_code: StrictInt = Field(alias="statusCode", ge=0, le=999)
    status_message: str = Field(default="", alias="statusMessage", max_length=500)
    time: str = Field(max_length=40)


class _Embedded(_Wire):
    rh_doc: list[_TrackDoc] = Field(default_factory=list, alias="rhDoc", max_length=PAGE_SIZE * 4)


class _TrackAnswer(_Answer):
    embedded: _Embedded = Field(default_factory=_Embedded, alias="_embedded")


class _Party(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    phone: str = Field(pattern=r"^0[0-9]{9,10}$")
    address: str = Field(min_length=1, max_length=500)
    province: str = Field(pattern=r"^[0-9]{2}$")
    district: str | None = Field(default=None, pattern=r"^[0-9]{3}$")
    ward: str = Field(pattern=r"^[0-9]{5}$")


def _int(code: str | None) -> int | None:
    return int(code) if code is not None else None


def _party(prefix: str, name: str, phone: str, address: str, province: str, district: str | None, ward: str,
           email: str | None = None) -> dict[str, Any]:  # fmt: skip
    """One end of an order in NGSP's fields (``senderName``, ``senderTel``, ``senderProvince``...)."""
    return {
        f"{prefix}Name": name,
        f"{prefix}Tel": phone,
        f"{prefix}Email": email or "",
        f"{prefix}Address": address,
        f"{prefix}Province": _int(province),
        f"{prefix}District": _int(district),
        f"{prefix}Ward": _int(ward),
    }


def order_body(request: CreateOrder, *, item_code: str, idempotency_key: str, customer_code: str,
               agency: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The NGSP ``order/post`` body: the citizen and the agency as sender and receiver by the order's kind."""
    c = request.citizen
    citizen = (c.name, c.phone, c.address, c.province, c.district, c.ward, c.email)
    desk = (agency["name"], agency["phone"], agency["address"], agency["province"], agency.get("district"),
            agency["ward"])  # fmt: skip
    sender, receiver = (citizen, desk) if request.kind == "pickup" else (desk, citizen)
    return {
        "customerCode": customer_code,
        "itemCode": item_code,
        "orderNumber": request.order_number,
        "clientOrderId": idempotency_key,
        "serviceKind": request.kind,
        "codAmount": request.cod_vnd,
        **_party("sender", *sender),
        **_party("receiver", *receiver),
        "description": request.description,
        "senderDesc": request.note,
        "flagConfig": 2,
    }


def render(operation_name: str, request: BaseModel) -> str:
    """What ``igate-bus map`` prints: the JSON body the operation would post (the item code as a placeholder)."""
    if isinstance(request, CreateOrder):
        body = order_body(
            request,
            item_code="<from the pool>",
            idempotency_key="<idempotency key>",
            customer_code="<options.customer_code>",
            agency={k: f"<options.agency_{k}>" for k in ("name", "phone", "address")}
            | {"province": None, "district": None, "ward": None},
        )
        return f"POST /order/post\n{json.dumps(body, ensure_ascii=False, indent=2)}\n"
    return f"{operation_name}\n{request.model_dump_json(indent=2)}\n"


def load_pool(state: ConnectorState, codes: Iterable[str]) -> int:
    """Add item codes VNPost issued to the pool, each once; returns how many were new.

    Raises:
        ValueError: a code is not S10 or its check digit is wrong (naming it); nothing is added then.
    """
    checked = [check_item_code(code.strip()) for code in codes]
    return sum(state.put(POOL, code, {}, status=FREE, if_absent=True) for code in checked)


class VnpostConnector(KitConnector):
    """VNPost NGSP over REST: ``create_order``, ``cancel_order`` (effects, with lookups) and ``poll`` (read).

    Args:
        name: the connector's name in ``connectors.yaml``.
        spec: its entry; see the module docstring.

    Raises:
        ConfigError: no endpoint, no ``customer_code`` or ``agency``, or a credential's variable is unset.
    """

    PROBE_ANSWERED = "tracking answered"

    def __init__(self, name: str, spec: ConnectorSpec) -> None:
        self._customer_code = required_option(name, spec, "customer_code", "VNPost's customer code")
        agency = {k: str(spec.options[f"agency_{k}"]) for k in _Party.model_fields if f"agency_{k}" in spec.options}
        try:
            self._agency = _Party.model_validate(agency).model_dump()
        except ValidationError as exc:
            where = ", ".join(f"options.agency_{e['loc'][0]}" for e in exc.errors(include_url=False))
            raise ConfigError(
                f"connector {name!r}: the agency's desk is incomplete or malformed: {where}", field="options.agency"
            ) from None
        self._pool_low = int(spec.options.get("pool_low", DEFAULT_POOL_LOW))
        self._budget = int(spec.options.get("poll_budget", DEFAULT_POLL_BUDGET))
        for key in ("customer_key", "secret_key"):
            if key not in spec.credentials:
                raise ConfigError(f"connector {name!r} needs credentials.{key}", field=f"credentials.{key}")
        self._http = HttpClient(name, spec)
        super().__init__(name, spec, guard=self._http.guard)
        self._token = CachedCredential(
            name, self._login, breaker=self.guard.breaker, what="token", issuer="VNPost", target="VNPost"
        )

    # -- the Connector protocol -------------------------------------------------------------------------

    def check(self) -> float | None:
        """Track a code that does not exist (no effect), bypassing the breaker."""
        reply = self._call("GET", "/order/tracking", params={"itemCode": "EB000000000VN"}, guard=False)
        return reply.elapsed_ms

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    # -- operations -------------------------------------------------------------------------------------

    @operation(CreateOrder, OrderReply, lookup="find_order")
    def create_order(self, request: CreateOrder, idempotency_key: str) -> OrderReply:
        """Post a BCCI order under an item code from the pool, keyed ``clientOrderId`` ([F] NGSP order/post)."""
        state = self._pool_state()
        item_code = self._code_for(state, idempotency_key)
        body = order_body(
            request,
            item_code=item_code,
            idempotency_key=idempotency_key,
            customer_code=self._customer_code,
            agency=self._agency,
        )
        answer = self._call("POST", "/order/post", json_body=body, effect=True).parse(_OrderAnswer)
        if answer.status not in ACCEPTED_CODES:
            self._give_back(state, item_code, idempotency_key)
            raise TargetRejected(
                f"VNPost refused the order: {scrub_snippet(answer.message.encode())}", code=answer.status
            )
        return self._accepted(state, request.kind, request.order_number, item_code, answer)

    def find_order(self, idempotency_key: str) -> OrderReply | None:
        """The order sent with this key, read back from VNPost; None when none was taken or VNPost has none."""
        state = self._pool_state()
        taken = state.rows(POOL, status=TAKEN_PREFIX + idempotency_key, limit=1)
        if not taken:
            return None  # no code was ever taken for it, so nothing was sent
        answer = self._call("GET", "/order", params={"clientOrderId": idempotency_key}).parse(_OrderAnswer)
        if answer.status == _NOT_FOUND:
            return None
        if answer.status not in ACCEPTED_CODES or answer.client_order_id != idempotency_key:
            raise TargetGarbled("order lookup answered for another order", maybe_applied=True)
        kind = "pickup" if answer.service_kind == "pickup" else "return"
        return self._accepted(state, kind, answer.order_number or "", taken[0].key, answer)

    @operation(CancelOrder, CancelReply, lookup="find_cancel")
    def cancel_order(self, request: CancelOrder, idempotency_key: str) -> CancelReply:
        """Cancel an order ([F] NGSP cancelOrder), keyed ``clientRequestId``; its code goes back to the pool."""
        state = self._pool_state()
        body = {
            "itemCode": request.item_code,
            "orderNumber": request.order_number,
            "reason": request.reason,
            "clientRequestId": idempotency_key,
        }
        answer = self._call("POST", "/order/cancel", json_body=body, effect=True).parse(_OrderAnswer)
        if answer.status not in ACCEPTED_CODES:
            raise TargetRejected(
                f"VNPost refused the cancellation: {scrub_snippet(answer.message.encode())}", code=answer.status
            )
        return self._cancelled(state, request.item_code, request.order_number, idempotency_key, answer.status)

    def find_cancel(self, idempotency_key: str) -> CancelReply | None:
        """The cancellation sent with this key, read back; None when VNPost has none."""
        state = self._pool_state()
        answer = self._call("GET", "/order/cancel", params={"clientRequestId": idempotency_key}).parse(_OrderAnswer)
        if answer.status == _NOT_FOUND:
            return None
        if answer.status not in ACCEPTED_CODES or not answer.item_code or not answer.order_number:
            raise TargetGarbled("cancellation lookup answered without the order", maybe_applied=True)
        try:
            item_code = check_item_code(answer.item_code)
        except ValueError:
            raise TargetGarbled("cancellation lookup named a malformed item code", maybe_applied=True) from None
        return self._cancelled(state, item_code, answer.order_number, idempotency_key, answer.status)

    @operation(PollRequest, PollReply, lookup="find_poll")
    def poll(self, request: PollRequest, idempotency_key: str = "") -> PollReply:
        """One tracking run over the items in transit, from the cursor, within the budget (see the module).

        Declared an effect (its effect is on the items' rows) so the engine records the reply before it saves
        the cursor and publishes the events: a run whose cursor is saved has its events recorded, and a
        redelivered run re-emits them from the record instead of polling with a cursor that acknowledges them.
        """
        del idempotency_key
        state = self._pool_state()
        acked_run, after = _parse_cursor(request.cursor)
        rows = state.rows(ITEMS, status=TRANSIT, after_key=after, limit=self._budget)
        if len(rows) < self._budget and after is not None:  # wrap round to the first items
            seen = {r.key for r in rows}
            rows += [r for r in state.rows(ITEMS, status=TRANSIT, limit=self._budget - len(rows)) if r.key not in seen]
        entries: list[TrackingEntry] = []
        # Rows are written only once every call of the run has answered: a run that fails part-way changes
        # nothing, so whatever happens to it (retried, dead-lettered), no item counts as reported too early.
        writes: list[tuple[str, int, dict[str, Any], str]] = []
        for row in rows:
            value = _acknowledge(row.value, acked_run)
            if value.get("final") and value["acked"] == value["upto"]:
                writes.append((row.key, row.version, value, DONE))
                continue
            new = _new_entries(
                row.key, str(value["order_number"]), self._track(row.key, request.run), acked=value["acked"]
            )
            value |= {"run": request.run, "upto": int(value["acked"]) + len(new)}
            value["final"] = (bool(new) and new[-1].status_code in FINAL_STATUSES) or bool(value.get("final"))
            writes.append((row.key, row.version, value, TRANSIT))
            entries.extend(new)
        for key, version, value, status in writes:
            # a row changed meanwhile (a cancel) keeps its change; its events, if any, are re-found next run
            state.update(ITEMS, key, value=value, status=status, expect_version=version)
        finished = sum(1 for *_, status in writes if status == DONE)
        polled = len(writes) - finished
        last = rows[-1].key if rows else ""
        return PollReply(
            run=request.run, cursor=f"{request.run}|{last}", polled=polled, finished=finished, entries=tuple(entries)
        )

    def find_poll(self, idempotency_key: str) -> PollReply | None:
        """Always None: a run that may have been cut short is run again (same run, same facts, same ids)."""
        del idempotency_key
        return None

    # -- internals --------------------------------------------------------------------------------------

    def _pool_state(self) -> ConnectorState:
        try:
            return self.state
        except StateNotAttached as exc:
            raise ConfigError(f"connector {self.name!r} needs the connector state: {exc}") from None

    def _code_for(self, state: ConnectorState, idempotency_key: str) -> str:
        """The pool's code for this order: the one already taken with its key, or a free one taken now."""
        owner = TAKEN_PREFIX + idempotency_key
        taken = state.rows(POOL, status=owner, limit=10)
        if not taken:
            row = state.take(POOL, status=FREE, new_status=owner, value={"taken_at": _now()})
            if row is None:
                raise TargetRejected(
                    "the pool of pre-issued item codes is empty: load the codes VNPost issued", field="item_code",
                    code="pool_empty",
                )  # fmt: skip
            taken = state.rows(POOL, status=owner, limit=10)
        # Two attempts of one order racing may each have taken one: keep the first by key, free the others.
        for extra in taken[1:]:
            state.update(POOL, extra.key, status=FREE, value={})
        return taken[0].key

    def _give_back(self, state: ConnectorState, item_code: str, idempotency_key: str) -> None:
        state.update(POOL, item_code, status=FREE, value={}, expect_status=TAKEN_PREFIX + idempotency_key)

    def _accepted(
        self, state: ConnectorState, kind: str, order_number: str, item_code: str, answer: _OrderAnswer
    ) -> OrderReply:
        if answer.item_code not in {None, item_code}:
            raise TargetGarbled("VNPost answered for another item code", maybe_applied=True)
        item = {"order_number": order_number, "kind": kind, "acked": 0, "upto": 0, "run": "", "final": False}
        state.put(ITEMS, item_code, item, status=TRANSIT, if_absent=True)
        free = state.count(POOL, status=FREE)
        if free < self._pool_low:
            log.warning("vnpost_pool_low", connector=self.name, free=free, threshold=self._pool_low)
        try:
            return OrderReply(
                item_code=item_code,
                order_number=order_number,
                kind="pickup" if kind == "pickup" else "return",
                answer_code="101" if answer.status == "101" else "100",
                postage_vnd=answer.postage or 0,
                pool_free=free,
                pool_low=self._pool_low,
                taken_at=_now(),
            )
        except ValidationError as exc:
            raise TargetGarbled(f"order answer is not valid ({exc.error_count()} errors)", maybe_applied=True) from None

    def _cancelled(
        self, state: ConnectorState, item_code: str, order_number: str, key: str, status: str
    ) -> CancelReply:
        row = state.get(POOL, item_code)
        if row is not None and row.status.startswith(TAKEN_PREFIX):
            state.update(POOL, item_code, status=FREE, value={"cancelled_by": key}, expect_version=row.version)
        item = state.get(ITEMS, item_code)
        if item is not None:
            state.update(ITEMS, item_code, status=DONE, value={**item.value, "cancelled": True})
        return CancelReply(
            item_code=item_code,
            order_number=order_number,
            answer_code="101" if status == "101" else "100",
            pool_free=state.count(POOL, status=FREE),
        )

    def _track(self, item_code: str, run: str) -> list[_TrackDoc]:
        # the run travels as a request id, so VNPost's logs (and the simulator's record) tie calls to runs
        params: dict[str, str | int] = {"itemCode": item_code, "pageSize": PAGE_SIZE}
        answer = self._call("GET", "/order/tracking", params=params, request_id=run).parse(_TrackAnswer)
        if answer.status not in ACCEPTED_CODES:
            raise TargetRejected(f"tracking {item_code} refused: {scrub_snippet(answer.message.encode())}",
                                 code=answer.status)  # fmt: skip
        docs = answer.embedded.rh_doc
        if any(d.item_code != item_code for d in docs):
            raise TargetGarbled(f"tracking of {item_code} answered another item's events")
        return docs

    def _call(
        self,
        method: str,
        path: str,
        *,
        effect: bool = False,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
        guard: bool = True,
        request_id: str | None = None,
    ) -> HttpReply:
        """One authenticated call under one deadline, renewing the token once on a 401 (the kit)."""
        deadline = self.guard.deadline()
        extra = {"X-Request-Id": request_id} if request_id else {}

        def send(token: Credential) -> HttpReply:
            return self._http.request(
                method,
                path.lstrip("/"),
                deadline=deadline,
                effect=effect,
                json_body=json_body,
                params=params,
                headers={"access_token": token.value.get_secret_value(), **extra},
                refused=_TOKEN_REFUSED,
                expect=_Answer,
                guard=guard,
            )

        return self._token.use(deadline, send, guard=guard)

    def _login(self, deadline: float, guard: bool) -> Credential:
        """A token for the customer key; the key is read at login, so a bus without VNPost's key still starts.

        Raises:
            Refused: the key's variable is unset (an operator's problem, as a refused key is), or VNPost
                refused it.
        """
        try:
            key = credential(self.name, self.spec, "customer_key").get_secret_value()
            secret = credential(self.name, self.spec, "secret_key").get_secret_value()
        except ConfigError as exc:
            raise Refused(str(exc)) from None
        reply = self._http.request(
            "POST",
            "token",
            deadline=deadline,
            effect=False,
            json_body={"customerKey": key, "secretKey": secret},
            refused=_TOKEN_REFUSED,
            expect=_TokenReply,
            guard=guard,
            judge=False,
        )
        granted = reply.parse(_TokenReply)
        return Credential.lasting(SecretStr(granted.token), float(granted.expires_in))


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _parse_cursor(cursor: str | None) -> tuple[str | None, str | None]:
    """``"<run>|<last item>"`` → (the run whose results were published, the item to continue after)."""
    if not cursor or "|" not in cursor:
        return None, None
    run, _, last = cursor.partition("|")
    return run or None, last or None


def _acknowledge(value: dict[str, Any], acked_run: str | None) -> dict[str, Any]:
    """The item's row with what its last run reported acknowledged, when that run's cursor was saved.

    Runs are named by their scheduled time (ISO, UTC), so they sort as they happened; a run at or before the
    last saved one has had its results published.
    """
    out = dict(value)
    run = str(out.get("run") or "")
    if run and acked_run is not None and run <= acked_run:
        out["acked"] = int(out.get("upto", 0))
    return out


def _new_entries(item_code: str, order_number: str, docs: list[_TrackDoc], *, acked: int) -> list[TrackingEntry]:
    """The item's events numbered after ``acked``, in order, up to the first gap (repeats dropped)."""
    by_no = {d.event_no: d for d in docs}
    out: list[TrackingEntry] = []
    n = acked + 1
    while n in by_no:
        d = by_no[n]
        try:
            out.append(
                TrackingEntry(
                    item_code=item_code,
                    order_number=order_number,
                    event_no=n,
                    status_code=d.status_code,
                    status_message=d.status_message,
                    at=d.time,
                )
            )
        except ValidationError as exc:
            raise TargetGarbled(f"tracking event {item_code}/{n} is not valid: {exc.error_count()} errors") from None
        n += 1
    return out


__all__ = ["VnpostConnector", "load_pool", "order_body", "render"]
