"""The connector kit: what every connector shares, so a new one is only schemas + adapter + connector + simulator.

Where it sits: the connector step (event → route → adapter → **connector** → result/DLQ). A connector built on
the kit gets, from one place each:

- :mod:`~connectors.kit.guard`: the breaker, the rate limit, the total deadline and the watchdog, applied the
  same way around every request, REST (``connectors/_http.py``) or SOAP (``connectors/_soap.py``);
- :mod:`~connectors.kit.credential`: one cached token or session, renewed once when refused; the bus's own
  credentials refused are an operator problem (transient, alerting once, never dead-lettered);
- :mod:`~connectors.kit.probe`: one probe rule (timing, breaker, slow, down);
- :mod:`~connectors.kit.declare`: one declaration per operation, read by ``check`` and bound for the engine;
- :mod:`~connectors.kit.connector`: the base class that ties them (``probe()``, ``breaker_state``, ``watch``).

A REST connector, whole (``connectors/igate.py`` is the worked example; ``connectors/nps.py`` the SOAP one)::

    class VnpostConnector(KitConnector):
        PROBE_ANSWERED = "tracking answered"

        def __init__(self, name: str, spec: ConnectorSpec) -> None:
            self._http = HttpClient(name, spec)
            super().__init__(name, spec, guard=self._http.guard)
            self._token = CachedCredential(name, self._login, breaker=self.guard.breaker,
                                           what="token", issuer="VNPost", target="VNPost")

        @operation(CreateOrder, OrderReply, lookup="find_order")
        def create_order(self, request: CreateOrder, idempotency_key: str) -> OrderReply:
            \"\"\"Register a postal pick-up order.\"\"\"
            deadline = self.guard.deadline()
            return self._token.use(deadline, lambda token: self._http.request(
                "POST", "/order/post", deadline=deadline, effect=True, headers={"access_token": ...},
                json_body=..., refused=frozenset({401}), expect=OrderReply)).parse(OrderReply)

        def find_order(self, idempotency_key: str) -> OrderReply | None: ...
        def check(self) -> float | None: ...   # one harmless read with guard=False
        def close(self) -> None: self._http.close()
"""

from __future__ import annotations

from connectors.kit.connector import KitConnector
from connectors.kit.credential import CachedCredential, Credential, Refused
from connectors.kit.declare import Declared, operation
from connectors.kit.guard import WATCHDOG, Breaker, Guard, TokenBucket, Watchdog
from connectors.kit.probe import DEFAULT_DEGRADED_MS, run_probe

__all__ = [
    "DEFAULT_DEGRADED_MS",
    "WATCHDOG",
    "Breaker",
    "CachedCredential",
    "Credential",
    "Declared",
    "Guard",
    "KitConnector",
    "Refused",
    "TokenBucket",
    "Watchdog",
    "operation",
    "run_probe",
]
