"""Several result events from one reply: a reply model's ``result_events()``, each published on ``bus.results``.

Where this sits: the emit step (event ▶ route ▶ adapter ▶ connector ▶ **results**). A route's ``emits`` sends
its one reply as one result; a reply that found several facts (a tracking poll that saw three new postal
events) names each as a :class:`schemas.bus.Emission`, and each becomes its own result event, confirmed
before the delivery is acked like any other output of the pipeline.

**Ids name the fact, not the delivery.** An emission's event id is uuid5(route + "/" + key), and ``key``
names the fact (``EE123456785VN/0005``): the same fact found by two polls, or re-emitted from a claim that
is already done, gets the same id, so ``results-to-igate`` and other consumers deduplicate it.

**Checked before it goes out.** Each emission's type must be a known event type and its payload must
validate against that type's model; one that does not is a defect of the connector, dead-lettered as
``mapping`` with the key and the field (never published half-checked, never dropped).
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ValidationError

from routes.amqp import event_properties
from schemas.envelope import format_validation_error
from schemas.errors import MappingError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    import pika

    from schemas.bus import Emission
    from schemas.envelope import Envelope

#: names emission ids: uuid5(EMISSION_NS, "<route>/<key>")
EMISSION_NS: Final = uuid.UUID("9d4b6e2a-0f3c-4a8d-b7e1-2c5f8a9d0e13")
VN_TZ: Final = ZoneInfo("Asia/Ho_Chi_Minh")


def emission_id(route: str, key: str) -> str:
    """The result event id of one fact a route's reply carried: the same whichever delivery found it."""
    return str(uuid.uuid5(EMISSION_NS, f"{route}/{key}"))


class Emissions:
    """Builds the result events of a route's replies; None-cost for a reply model without ``result_events``.

    Args:
        route: the route's name (the ``source`` and the id's namespace).
        reply_model: the operation's reply model.
        payload_models: every known event type → its payload model.
    """

    def __init__(self, route: str, reply_model: type[BaseModel], payload_models: Mapping[str, type[BaseModel]]) -> None:
        self.route = route
        self.reply_model = reply_model
        self.payload_models = payload_models

    @staticmethod
    def wanted(reply_model: type[BaseModel]) -> bool:
        """Whether the operation's replies carry result events."""
        return callable(getattr(reply_model, "result_events", None))

    def messages(self, reply: dict[str, Any], cause: Envelope) -> list[tuple[str, bytes, pika.BasicProperties]]:
        """``(routing key, body, properties)`` of each result event the reply carries, in its order.

        Raises:
            MappingError: the reply or one of its emissions does not validate (named by key and field).
        """
        try:
            model = self.reply_model.model_validate(reply)
            emissions: list[Emission] = model.result_events()  # type: ignore[attr-defined]  # checked by wanted()
        except ValidationError as exc:
            problem = format_validation_error(exc)
            raise MappingError(f"the reply's result events do not validate: {problem}", field="reply") from None
        return [self._message(e, cause) for e in emissions]

    def _message(self, emission: Emission, cause: Envelope) -> tuple[str, bytes, pika.BasicProperties]:
        model = self.payload_models.get(emission.event_type)
        if model is None:
            raise MappingError(
                f"result event {emission.key!r} has the unknown type {emission.event_type!r}", field="reply"
            )
        try:
            payload = model.model_validate(emission.payload).model_dump(mode="json")
        except ValidationError as exc:
            problem = format_validation_error(exc, prefix="payload.")
            message = f"result event {emission.key!r} ({emission.event_type}): {problem}"
            raise MappingError(message, field="reply") from None
        rid = emission_id(self.route, emission.key)
        body, props = result_event(
            route=self.route,
            event_id=rid,
            event_type=emission.event_type,
            occurred_at=emission.occurred_at,
            dossier_code=emission.dossier_code,
            cause=cause,
            payload=payload,
            headers={"x-key": emission.key},
        )
        return emission.event_type, body, props


def result_event(
    *,
    route: str,
    event_id: str,
    event_type: str,
    occurred_at: datetime,
    dossier_code: str | None,
    cause: Envelope,
    payload: dict[str, Any],
    headers: dict[str, Any] | None = None,
) -> tuple[bytes, pika.BasicProperties]:
    """The body and properties of a result event a route publishes on ``bus.results`` for ``cause``.

    The one shape of every result (a route's ``emits`` and each emission): it follows the cause's correlation
    id, names the route as its source, and says in ``x-cause`` which event it answers.
    """
    correlation = cause.correlation_id or str(cause.event_id)
    event = {
        "event_id": event_id,
        "event_type": event_type,
        "occurred_at": occurred_at.astimezone(VN_TZ).isoformat(),
        "source": f"igate-bus/{route}",
        "dossier_code": dossier_code,
        "correlation_id": correlation,
        "payload": payload,
    }
    props = event_properties(
        event_id=event_id,
        event_type=event_type,
        correlation_id=correlation,
        headers={"x-route": route, "x-cause": str(cause.event_id), **(headers or {})},
    )
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode(), props
