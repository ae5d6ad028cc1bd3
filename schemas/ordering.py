"""Payload of ``bus.superseded``: an event a route did not send because the target already has a newer one.

Where it sits: the result side of a route with ``order: {mode: latest}`` (routes/ordering.py). The route acks
the older event without sending it and publishes this on ``bus.results`` instead of its usual result, so the
skip is visible downstream (and in the ``unrouted`` queue when no route binds it) and never silent.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: a position as routes/ordering.py writes it: ``<occurred_at UTC, microseconds>Z/<status 00-10>/<event_id>``
POSITION_PATTERN = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z/\d\d/[0-9a-f-]{36}$"


class Superseded(BaseModel):
    """``bus.superseded``: ``event_id`` was not sent to ``target`` because ``applied`` is newer for the dossier."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    route: str = Field(min_length=1, max_length=63, description="The route that skipped the event.")
    target: str = Field(min_length=1, max_length=63, description="The order's target (routes.yaml order.target).")
    event_id: str = Field(min_length=36, max_length=36, description="The event that was not sent.")
    event_type: str = Field(min_length=1, max_length=100)
    position: str = Field(pattern=POSITION_PATTERN, description="The skipped event's position.")
    applied: str = Field(pattern=POSITION_PATTERN, description="The newer position already applied at the target.")


ORDERING_EVENTS: dict[str, type[BaseModel]] = {"bus.superseded": Superseded}
