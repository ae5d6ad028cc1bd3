"""The HTTP ingress (``igate-bus serve``): iGate's signed events and external systems' callbacks, onto the bus.

Where it sits: the door at the start of a message's path, for senders that speak HTTP rather than AMQP.
One module per seam:

==================  =======================================================================================
``app.py``          the app factory :func:`create_app`: mounts the doors, ops endpoints, OpenAPI; lifespan
``settings.py``     :class:`IngressSettings` (``IGATE_BUS_INGRESS_*``) and the :class:`Secrets` it checks
``events.py``       ``POST /events``: signature ▶ content type ▶ strict parser ▶ replay cache ▶ publish
``callbacks.py``    the callback machinery: one :class:`~bus.ingress.callbacks.Callback` entry per system
``systems.py``      the callback registry; ``vilis.py`` and ``esms.py`` each declare one entry
``replay.py``       the replay cache: duplicate (200), replay, conflict, in flight (409)
``publish.py``      the confirmed publish behind both doors, and the replay cache kept in step
``publisher.py``    the publisher threads, one pika connection each
``requests.py``     reading a request: endpoint, content type, body bounded in size and time
``handling.py``     the endpoint wrapper: one answer, one log line, one count per request
``problems.py``     the error codes, the ``{"error", "detail"}`` body, the fallback handlers
``metrics.py``      the ingress's Prometheus series (the worker's are in ``bus/metrics.py``)
``openapi.py``      ``/openapi.json``: the envelope and every payload model
``state.py``        what the handlers share, and the publisher seam
==================  =======================================================================================

- ``POST /events``: iGate pushes one event envelope, signed (``bus/signing.py``), validated by the one
  strict parser (:func:`schemas.envelope.parse_event`, the rules the worker applies to AMQP too) and
  published on ``igate.events``. Answers ``202`` only once the broker confirmed the message.
- ``POST /callbacks/vilis/{action}/{security_code}`` and ``GET /callbacks/esms?token=...``: the land system
  and the SMS aggregator call back, each with its own authentication; the system's adapter
  (``adapters/<system>_to_bus.py``) maps the call to a result event, validated the same way and published
  on ``bus.results``. Same rule: success only after the confirm.
- ``GET /health``, ``GET /health/ready``, ``GET /metrics``: the operations router of ``bus/ops_api.py``
  with this process's health monitor (``create_app(observe=True)``, what ``serve`` does); a bare liveness
  ``GET /health`` otherwise. ``/metrics`` serves the ingress's own series either way.
- ``GET /openapi.json``: the contract, with every request and response model (and the payload model of
  each event type under ``x-payload-schemas``).

Answers of ``POST /events`` (every error body is ``{"error": "<code>", "detail": "<precise reason>"}``):

=====  ==========================================================================================
202    ``{"status": "accepted"}``: the broker confirmed the message
200    ``{"status": "duplicate"}``: this event_id, with the same content, was accepted before (a retry
       re-signed with a fresh timestamp); nothing is published again. Treat it as success.
400    ``empty_body``, ``invalid_json`` (malformed, not UTF-8, BOM, duplicate keys, NaN, too deep)
401    ``missing_timestamp``, ``invalid_timestamp``, ``stale_timestamp``, ``future_timestamp``,
       ``missing_signature``, ``malformed_signature``, ``bad_signature`` (a forged signature and a body
       altered by one byte look the same to us, by design of the HMAC)
408    ``body_timeout``: the body did not arrive within ``body_timeout``
409    ``replayed_request``: this exact signed request was already accepted (the event *is* stored);
       ``event_id_conflict``: the event_id was accepted with different content; ``event_in_flight``:
       a request with this event_id is still waiting for its confirm (retry after ``Retry-After``)
413    ``body_too_large``: over ``max_body_bytes``, whether announced by Content-Length or streamed
415    ``unsupported_media_type``: not ``application/json``
422    ``unknown_event_type`` (no schema knows it), ``event_type_not_accepted`` (a result type, which
       enters through its callback), ``invalid_event`` (envelope or payload fails its model; the detail
       names each field)
503    ``broker_unavailable``, ``broker_blocked``, ``broker_refused``, ``publish_timeout``, ``ingress_busy``,
       ``shutting_down``, with ``Retry-After``: not stored (or, after ``publish_timeout``, maybe stored:
       a re-signed retry then gets 200 duplicate or publishes it again; workers dedupe by event_id)
=====  ==========================================================================================

Why a replay is 409 and a retry 200: a byte-identical request (same timestamp, same signature) is what an
attacker who captured it would send; a sender that means to retry signs again. Both publish nothing more.
"""

from bus.ingress.app import create_app
from bus.ingress.replay import ReplayCache, Verdict
from bus.ingress.settings import IngressSettings, Secrets, read_secrets
from bus.ingress.state import EventSink

__all__ = ["EventSink", "IngressSettings", "ReplayCache", "Secrets", "Verdict", "create_app", "read_secrets"]
