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
from schemas.pii import sensitive_field_names
from schemas.results import RESULT_EVENTS
from schemas.sftp import FILE_EVENTS

if TYPE_CHECKING:
    from pydantic import BaseModel

#: event type to payload model: iGate's events, the result events on ``bus.results``, the bus's own, files
EVENT_PAYLOADS: dict[str, type[BaseModel]] = {**IGATE_EVENTS, **RESULT_EVENTS, **BUS_EVENTS, **FILE_EVENTS}

#: field names (and aliases) marked as personal data anywhere in those models
SENSITIVE_FIELDS: frozenset[str] = sensitive_field_names(EVENT_PAYLOADS.values())
