"""The one error tree of the bus: every failure is either permanent or transient.

Connectors translate their libraries' errors (httpx, zeep, paramiko) into this tree at the boundary, so the
engine decides retry versus dead letter from the class alone::

    BusError
    ├── PermanentError            dead-lettered at once, never retried
    │   ├── InvalidEvent          the message does not parse or validate
    │   ├── MappingError          an adapter cannot map the event (names the field)
    │   ├── TargetRejected        the target refused the request (4xx, SOAP client fault, error code)
    │   ├── AmbiguousOutcome      an effect may have happened and the target offers no lookup
    │   ├── Expired               too late to be worth sending (an OTP past its expiry): never sent late
    │   └── ConfigError           routes.yaml / connectors.yaml / topology disagree
    └── TransientError            retried through the per-route delay queues
        ├── TargetTimeout         no answer within the deadline (the effect may have happened)
        ├── TargetUnavailable     refused connection, 5xx
        │   ├── CredentialsRefused   the target refused the bus's own credentials; an operator must act
        │   ├── HostKeyRefused       the bus refused the server's host key (unknown or changed); an operator
        │   │                        must check it
        │   └── TargetGarbled     a reply the connector refuses: hostile, malformed, wrong shape, over the cap
        ├── BreakerOpen           the connector's breaker is open; nothing was sent
        ├── Held                  the message must wait (an SMS notice in the quiet hours); nothing was sent
        └── ClaimHeld             another worker holds a live claim on this event

An open breaker, refused credentials and a refused host key say nothing about the message: they
``wait_on_connector``, so the engine parks the message without spending one of its route's attempts
(``retry_after`` says how long the connector expects to stay unusable), and a password rotation or a server
re-keyed never dead-letters a queue of events.
"""

from __future__ import annotations


class BusError(Exception):
    """Base of every error the engine knows how to route."""

    #: value of the ``x-error-kind`` header when the message is dead-lettered
    kind: str = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class PermanentError(BusError):
    """Retrying cannot help: the message goes to the route's dead-letter queue with the reason."""

    kind = "permanent"


class InvalidEvent(PermanentError):
    """The body is not a valid event (bad JSON, wrong content type, schema violation, too large)."""

    kind = "invalid"


class MappingError(PermanentError):
    """An adapter could not map the event; ``field`` names the source field."""

    kind = "mapping"


class TargetRejected(PermanentError):
    """The target system refused the request for a reason retrying will not change."""

    kind = "rejected"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message, field=field)
        self.code = code


class AmbiguousOutcome(PermanentError):
    """An effect may have been applied and the target has no lookup to tell; a person must decide."""

    kind = "ambiguous"


class Expired(PermanentError):
    """The message stopped being worth sending before it could be sent (an OTP code past its expiry).

    Checked at send time, also after retries and parking, so a late one is dead-lettered, never delivered.
    """

    kind = "expired"


class ConfigError(PermanentError):
    """Configuration and reality disagree (unknown name, refused redeclare)."""

    kind = "config"


class TransientError(BusError):
    """Worth another try later, through the route's delay queues."""

    kind = "transient"

    #: True when the request may have reached the target and taken effect (a timeout after sending);
    #: the next attempt then reconciles by lookup before sending again.
    maybe_applied: bool = False
    #: True when nothing of the message was sent because its connector cannot be used now (an open breaker,
    #: the bus's credentials refused): the message waits on the connector and spends none of its attempts.
    waits_on_connector: bool = False
    #: seconds until the connector may be usable again (an open breaker's time left), when it knows
    retry_after: float | None = None


class TargetTimeout(TransientError):
    """The target did not answer in time; the request may have been applied."""

    kind = "timeout"
    maybe_applied = True


class TargetUnavailable(TransientError):
    """The target refused, failed (5xx) or answered garbage."""

    kind = "unavailable"

    def __init__(self, message: str, *, field: str | None = None, maybe_applied: bool = False) -> None:
        super().__init__(message, field=field)
        self.maybe_applied = maybe_applied


class CredentialsRefused(TargetUnavailable):
    """The target (or its login) refused the bus's own credentials: nothing of the message was applied.

    An operator problem (a password rotated at the target), not the message's: transient, and it waits on
    the connector without spending attempts, so every event waits for the fix instead of being dead-lettered.
    """

    kind = "credentials_refused"
    waits_on_connector = True

    def __init__(self, message: str, *, field: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, field=field, maybe_applied=False)
        self.retry_after = retry_after


class HostKeyRefused(TargetUnavailable):
    """The server's host key is not the one the bus trusts (unknown, or changed): nothing was sent.

    Like refused credentials, an operator problem (a server re-keyed, or someone in the middle), not the
    message's: transient, and it waits on the connector without spending attempts until the key is checked.
    """

    kind = "host_key_refused"
    waits_on_connector = True

    def __init__(self, message: str, *, field: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, field=field, maybe_applied=False)
        self.retry_after = retry_after


class TargetGarbled(TargetUnavailable):
    """The target answered with a reply the connector refuses (hostile, malformed, wrong shape, over the cap).

    A DOCTYPE or entities, not the protocol's format, not the expected shape, compressed, or over the size
    cap. Transient for one attempt (a proxy may have hiccuped), but a target that keeps answering garbage will
    not stop by itself: the pipeline counts these replies per message (``x-garbled``) and dead-letters the
    message after a few (``retry.max_garbled``, default 3) instead of retrying for a day. The request may
    have been applied before the reply went wrong, so ``maybe_applied`` follows the operation.
    """

    kind = "garbled"


class BreakerOpen(TransientError):
    """The connector's circuit breaker is open; nothing was sent."""

    kind = "breaker_open"
    waits_on_connector = True

    def __init__(self, message: str, *, field: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after = retry_after


class Held(TransientError):
    """The message must wait for a time window (an SMS notice during the quiet hours); nothing was sent.

    It waits on the connector like an open breaker (no attempt spent), ``retry_after`` the window's end.
    """

    kind = "held"
    waits_on_connector = True

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ClaimHeld(TransientError):
    """Another worker holds a live claim on the same (route, event_id); try again after its lease."""

    kind = "claim_held"
