"""The ingress's line for an accepted event carries the correlation_id the worker's lines carry.

So an operator following one dossier by its correlation_id finds where it entered the bus, as well as
every route it took (tests/routes/test_correlation.py). An event iGate sent without one is followed by
its event_id, which is what the worker binds and stamps on the results in that case.
"""

from __future__ import annotations

import time
import uuid

from busenv import example
from ingress_harness import VILIS_CODE, bind_capture, client, dumps, serve, signed
from structlog.testing import capture_logs


def test_accepted_events_and_callbacks_are_logged_with_their_correlation_id(amqp_url: str) -> None:
    """With a correlation_id, it is logged; without one, the event_id stands for it; callbacks too."""
    bind_capture(amqp_url, "igate.events")
    with_id = example("dossier.received")
    with_id.update(event_id=str(uuid.uuid4()), correlation_id=str(uuid.uuid4()))
    without = example("dossier.received")
    without["event_id"] = str(uuid.uuid4())
    without.pop("correlation_id", None)
    land = {"SoBienNhan": with_id["dossier_code"], "NgayKetThuc": "2026-12-05T03:00:00", "GhiChu": "xong"}
    with serve(amqp_url) as srv, client(srv) as c, capture_logs() as logs:
        for event in (with_id, without):
            body = dumps(event)
            assert c.post("/events", content=body, headers=signed(body)).status_code == 202
        assert c.post(f"/callbacks/vilis/KetThucHoSo/{VILIS_CODE}", json=land).status_code == 200
        # the request line is logged as the response ends, which on a loaded machine can trail the answer
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if sum(x.get("event") == "ingress_request" and x.get("outcome") == "accepted" for x in logs) >= 3:
                break
            time.sleep(0.05)
    requests = [x for x in logs if x.get("event") == "ingress_request"]
    accepted = {x["event_id"]: x for x in requests if x.get("outcome") == "accepted"}
    assert accepted[with_id["event_id"]]["correlation_id"] == with_id["correlation_id"]
    assert accepted[without["event_id"]]["correlation_id"] == without["event_id"]
    [callback] = [x for x in accepted.values() if x["event_type"] == "vilis.status_changed"]
    assert callback["correlation_id"]
