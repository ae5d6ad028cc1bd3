"""``vilis.status_changed`` → the check the land connector makes before iGate hears of a land-office change.

Where it sits: the adapter step of the ``vilis-check`` route (``bus.results`` → route → **adapter** →
``vilis.check_change`` → ``vilis.change_checked`` → ``vilis-to-igate`` → iGate). The change itself is not
touched: the connector checks the bus sent the dossier and fetches the result documents, and the checked
change is what ``results_to_igate.status_update`` writes onto the dossier in iGate. Pure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.registry import adapter
from schemas.errors import MappingError
from schemas.results import VilisStatusChanged
from schemas.vilis import CheckChangeRequest

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
