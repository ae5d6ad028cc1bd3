"""The land office's changes on their way to iGate: the check before iGate hears of one, and the poll for them.

Where it sits: the adapter step of the ``vilis-check`` route (``bus.results`` → route → **adapter** →
``vilis.check_change`` → ``vilis.change_checked`` → ``vilis-to-igate`` → iGate). The change itself is not
touched: the connector checks the bus sent the dossier and fetches the result documents, and the checked
change is what ``results_to_igate.status_update`` writes onto the dossier in iGate. And the adapter step of
``vilis-poll`` (a schedule's ``bus.tick`` → **adapter** → ``vilis.poll_stale``), for a land system that cannot
call back: the changes it finds are ``vilis.status_changed`` result events, checked like a callback's. Pure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.registry import adapter
from schemas.bus import TICK_EVENT, Tick
from schemas.errors import MappingError
from schemas.results import VilisStatusChanged
from schemas.vilis import CheckChangeRequest, PollStaleRequest

if TYPE_CHECKING:
    from datetime import datetime

    from schemas.envelope import Event


@adapter(accepts=("vilis.status_changed",), produces=CheckChangeRequest)
def status_changed(event: Event, *, now: datetime) -> CheckChangeRequest:
    """The change, as the connector checks it.

    Raises:
        MappingError: the payload is not a ``vilis.status_changed`` (naming ``event_type``).
    """
    del now
    if not isinstance(event.payload, VilisStatusChanged):
        raise MappingError(f"expected vilis.status_changed, got {type(event.payload).__name__}", field="event_type")
    return CheckChangeRequest(change=event.payload)


@adapter(accepts=(TICK_EVENT,), produces=PollStaleRequest)
def poll(event: Event, *, now: datetime) -> PollStaleRequest:
    """A firing of the poll's schedule: ask about the stale dossiers (the connector knows which, not the tick).

    No cursor: the land office numbers each dossier's changes, and the poll asks for all of a stale dossier's
    each time (the same change found twice is one event downstream), so there is no position to keep.

    Raises:
        MappingError: the payload is not a ``bus.tick`` (naming ``payload``).
    """
    del now
    if not isinstance(event.payload, Tick):
        raise MappingError(f"expected a bus.tick payload, got {type(event.payload).__name__}", field="payload")
    return PollStaleRequest()
