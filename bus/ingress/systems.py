"""The callback registry: every external system that calls the bus back, one entry each.

Where it sits: read by the app factory (``bus/ingress/app.py``), which serves each entry's route and
answers a call to any other ``/callbacks/{system}`` with a 404 naming the closest known system (or the
reason a known one has no callback yet). Each entry is a :class:`bus.ingress.callbacks.Callback` declared in
the system's own module; ``bus/ingress/callbacks.py`` says how to add one.

Not here: **PayGov** payment notices. A notice carries ``MaThamChieu``, ``SoTien``, ``TrangThaiGD`` and the
``MaXacThuc`` checksum, but ``payment.settled`` (``schemas/igate.py``) needs the applicant, the dossier's
dates and each fee by kind, which the notice does not carry; publishing it would mean inventing them. It
needs its own result type first (say ``paygov.payment_notified``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from bus.ingress.esms import ESMS
from bus.ingress.vilis import VILIS

if TYPE_CHECKING:
    from bus.ingress.callbacks import Callback

#: every callback the ingress serves (each enabled when its credential's variable is set)
CALLBACKS: Final[tuple[Callback, ...]] = (VILIS, ESMS)
#: systems that have no callback yet, with the reason
NOT_ACCEPTED: Final[dict[str, str]] = {
    "paygov": "PayGov payment notices are not accepted: no result event type carries them yet",
}
