"""``adapters/vilis_to_igate.py``: the land office's changes on their way to iGate, and the poll's firing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from adapters.vilis_to_igate import poll, status_changed
from routes.scheduler import tick_message
from schemas.bus import BUS_EVENTS
from schemas.envelope import Event, parse_event
from schemas.errors import MappingError
from schemas.events import EVENT_PAYLOADS
from schemas.vilis import PollStaleRequest

T0 = datetime(2026, 11, 28, 19, 0, tzinfo=UTC)
MODELS = {**EVENT_PAYLOADS, **BUS_EVENTS}


def _tick() -> Event:
    body, _ = tick_message("vilis-poll", T0, fired_at=T0)
    return parse_event(body, payload_models=MODELS, received_at=T0)


def test_a_firing_asks_about_the_stale_dossiers() -> None:
    """The connector, not the tick, knows which dossiers are stale: the request is the default one."""
    assert poll(_tick(), now=T0) == PollStaleRequest()


def test_each_adapter_refuses_the_other_ones_event_naming_the_field() -> None:
    """A tick is not a change, nor a change a tick: a MappingError naming the field, never a traceback."""
    with pytest.raises(MappingError) as tick_as_change:
        status_changed(_tick(), now=T0)
    assert tick_as_change.value.field == "event_type"
    ping = parse_event(
        b'{"event_id": "0b8e6c1e-3d5a-4f3e-9a51-2f7a4c1d9e10", "event_type": "bus.ping", "source": "test",'
        b' "occurred_at": "2026-11-28T19:00:00+00:00", "payload": {"seq": 1}}',
        payload_models=MODELS,
        received_at=T0,
    )
    with pytest.raises(MappingError) as ping_as_tick:
        poll(ping, now=T0)
    assert ping_as_tick.value.field == "payload"
