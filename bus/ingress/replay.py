"""The ingress's replay cache: which event_ids were accepted lately, and which are being published now.

Where it sits: between validation and the confirmed publish of both doors (``bus/ingress/events.py`` and
``bus/ingress/callbacks.py``). It tells a retry (same event, re-signed: ``200 duplicate``) from a replay
(the same signed request again: ``409``), a conflict (same event_id, other content: ``409``) and a request
whose twin is still waiting for its confirm (``409`` with ``Retry-After``), and it learns an event only once
the broker confirmed it.

It lives in this process (``replay_ttl`` ≥ the signature window, ``replay_max_entries`` bounded); several
ingress processes each keep their own, and the workers' idempotency by event_id covers what slips between
them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable


class Verdict(Enum):
    """What the replay cache says about an event_id."""

    NEW = "new"
    DUPLICATE = "duplicate"
    REPLAY = "replay"
    CONFLICT = "conflict"
    IN_FLIGHT = "in_flight"


@dataclass(slots=True)
class Seen:
    """An accepted event: its content digest, when it was accepted, the signatures that carried it."""

    digest: str
    accepted_at: float
    expires: float
    signatures: set[str] = field(default_factory=set)


#: signatures remembered per event_id (each re-signed retry adds one)
MAX_SIGNATURES_PER_EVENT: Final = 16


class ReplayCache:
    """event_ids accepted (confirmed by the broker) in the last ``ttl_s`` seconds, and those being published.

    Thread-safe: requests consult it on the event loop and publisher threads record confirms in it.

    Args:
        ttl_s: how long an accepted event_id is remembered (at least the signature window).
        max_entries: bound; the oldest entries go first, and one evicted before its time is counted.
        clock: monotonic seconds (for tests).
    """

    def __init__(self, *, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._seen: OrderedDict[str, Seen] = OrderedDict()
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        #: entries evicted before their TTL because the cache was full (a replay could then get through)
        self.evicted_early = 0

    def __len__(self) -> int:
        return len(self._seen)

    def begin(self, event_id: str, *, digest: str, signature: str | None) -> tuple[Verdict, Seen | None]:
        """Classify a request for ``event_id``; a NEW one is marked in flight until :meth:`finish`.

        Args:
            event_id: the envelope's id.
            digest: a digest of the event's content.
            signature: the request's signature (None for callbacks, which have none).

        Returns:
            The verdict, and the accepted entry when there is one.
        """
        with self._lock:
            self._expire(self._clock())
            seen = self._seen.get(event_id)
            if seen is not None:
                if signature is not None and signature in seen.signatures:
                    return Verdict.REPLAY, seen
                if digest != seen.digest:
                    return Verdict.CONFLICT, seen
                if signature is not None and len(seen.signatures) < MAX_SIGNATURES_PER_EVENT:
                    seen.signatures.add(signature)
                return Verdict.DUPLICATE, seen
            if event_id in self._in_flight:
                return Verdict.IN_FLIGHT, None
            self._in_flight.add(event_id)
            return Verdict.NEW, None

    def finish(self, event_id: str, *, accepted: bool, digest: str, signature: str | None) -> None:
        """Record the outcome of a NEW request: remembered when the broker confirmed it, forgotten otherwise.

        Args:
            event_id: the envelope's id.
            accepted: whether the broker confirmed the message.
            digest: the content digest given to :meth:`begin`.
            signature: the request's signature.
        """
        with self._lock:
            self._in_flight.discard(event_id)
            if not accepted:
                return
            now = self._clock()
            self._seen[event_id] = Seen(
                digest=digest,
                accepted_at=time.time(),
                expires=now + self._ttl_s,
                signatures={signature} if signature else set(),
            )
            self._seen.move_to_end(event_id)
            while len(self._seen) > self._max:
                _, oldest = self._seen.popitem(last=False)
                if oldest.expires > now:
                    self.evicted_early += 1

    def _expire(self, now: float) -> None:
        # entries are appended in acceptance order with one TTL, so the expired ones are at the front
        while self._seen:
            first = next(iter(self._seen.values()))
            if first.expires > now:
                return
            self._seen.popitem(last=False)
