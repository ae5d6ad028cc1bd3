"""The one registry of event types: every payload model the bus parses, and the personal field names.

Where a message's path starts: the worker's validate step and the ingress pass :data:`EVENT_PAYLOADS` to
:func:`schemas.envelope.parse_event`, ``igate-bus check`` looks route bindings up in it, and the logging chain
(``bus/logging.py``) masks every key in :data:`SENSITIVE_FIELDS`, computed once here from the models'
:func:`schemas.pii.sensitive` markers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.bus import BUS_EVENTS
from schemas.igate import IGATE_EVENTS
from schemas.ordering import ORDERING_EVENTS
from schemas.pii import secret_field_names, sensitive_field_names
from schemas.results import RESULT_EVENTS
from schemas.sftp import FILE_EVENTS

if TYPE_CHECKING:
    from pydantic import BaseModel

#: every group of event types with who publishes it where (``igate-bus list events`` shows the origin); a new
#: group is added here once and reaches the parser, ``check``, the masking and the listing together
EVENT_GROUPS: tuple[tuple[str, dict[str, type[BaseModel]]], ...] = (
    ("iGate, on igate.events", IGATE_EVENTS),
    ("external systems and routes' emits, on bus.results", RESULT_EVENTS),
    ("the bus (bus.ping on igate.events, bus.pong on bus.results, bus.tick fired by a route's schedule)", BUS_EVENTS),
    ("file transfer (file.ready on igate.events, file.sent on bus.results)", FILE_EVENTS),
    ("the bus, a route's per-dossier order (bus.superseded on bus.results)", ORDERING_EVENTS),
)

#: event type to payload model, over every group
EVENT_PAYLOADS: dict[str, type[BaseModel]] = {name: model for _, group in EVENT_GROUPS for name, model in group.items()}

#: field names (and aliases) marked as personal data anywhere in those models
SENSITIVE_FIELDS: frozenset[str] = sensitive_field_names(EVENT_PAYLOADS.values())

#: field names marked as secrets (OTP codes): masked even by ``dlq show --reveal``
SECRET_FIELDS: frozenset[str] = secret_field_names(EVENT_PAYLOADS.values())
