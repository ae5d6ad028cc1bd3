"""How long a message waits when its connector turned it away: an open breaker, the bus's credentials refused.

Where it sits: in the retry step of the pipeline (event → route → adapter → connector ▶ **retry queue** ▶ back).
Such a message was never sent, so the wait spends none of the route's attempts; instead it counts its parks
in a row in the ``x-parked`` header (cleared by the next real attempt) and climbs the route's own backoff
ladder with them, so a long outage does not bring every parked message back every few seconds:

- the ``n``-th park in a row waits ``backoff[n-1]`` (the last step repeats), as attempts do;
- and never less than the connector's ``retry_after`` (the time left before the breaker lets a trial call
  through): the first step of the ladder at least that long, or its longest, so a parked message does not
  come back while the breaker is certainly still open.

The delay queues have fixed TTLs (one queue per step of ``retry.backoff``), so a park cannot be jittered;
parked messages spread on their own, by when each met the breaker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: the header counting a message's parks in a row (our own, like ``x-attempts``)
PARKS_HEADER: Final = "x-parked"


def parks_before(headers: Mapping[str, Any]) -> int:
    """How many times in a row this message was parked before (0 without the header, or a bad value)."""
    value = headers.get(PARKS_HEADER, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def park_delay(backoff: Sequence[float], parks: int, retry_after: float | None) -> float:
    """The delay (one of ``backoff``) for a message's ``parks``-th park in a row (1 for the first).

    Args:
        backoff: the route's ``retry.backoff`` steps, in seconds.
        parks: this park's number in the row, from 1.
        retry_after: seconds before the connector may be usable again, when it knows.
    """
    ladder = backoff[min(max(parks, 1), len(backoff)) - 1]
    if retry_after is None:
        return ladder
    steps = sorted(set(backoff))
    cover = next((d for d in steps if d >= retry_after), steps[-1])
    return max(ladder, cover)
