"""One dossier's path through the bus can be followed in the worker's JSON log by its correlation_id.

A dossier's events reach several routes (``dossier.received`` to bus-ack, the postal tracking result to
results-to-igate) and a route's result carries its cause's correlation id on to the next route. An
operator greps the worker's log for one id and sees every route's line for that dossier, and none of
another's. Real worker process, real broker, real iGate simulator; the log is the file the worker wrote.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from busenv import (
    SIM_PASSWORD,
    SIM_USER,
    ProcessWorker,
    declare_routes,
    env_for,
    example,
    publish,
    wait_for,
    write_config,
)

from simulators.igate import IGateSimulator

if TYPE_CHECKING:
    from pathlib import Path


def _event(event_type: str, *, dossier: str, correlation: str) -> dict[str, Any]:
    event = example(event_type)
    event.update(event_id=str(uuid.uuid4()), dossier_code=dossier, correlation_id=correlation)
    return event


def test_a_dossiers_lines_across_two_routes_share_its_correlation_id(
    amqp_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    """bus-ack and results-to-igate both log the dossier's correlation_id; another dossier's lines do not."""
    followed, other = str(uuid.uuid4()), str(uuid.uuid4())
    code, other_code = "000.00.16.H16-261126-7001", "000.00.16.H16-261126-7002"
    with IGateSimulator(username=SIM_USER, password=SIM_PASSWORD) as sim:
        config = write_config(tmp_path / "config", endpoint=sim.url)
        declare_routes(amqp_url, config)
        log = tmp_path / "worker.log"
        worker = ProcessWorker(env_for(amqp_url, sqlite_url, config, IGATE_BUS_OPS_PORT="0"), log).start()
        try:
            worker.wait_consuming(3)
            publish(
                amqp_url,
                [
                    _event("dossier.received", dossier=code, correlation=followed),
                    _event("dossier.received", dossier=other_code, correlation=other),
                ],
            )
            tracking = _event("vnpost.tracking_updated", dossier=code, correlation=followed)
            tracking["payload"]["order_number"] = code
            publish(amqp_url, [tracking], exchange="bus.results")
            wait_for(lambda: len(sim.effects()) >= 3, timeout=60, what="two notes and an update at iGate")
        finally:
            assert worker.terminate() == 0, worker.tail()
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.startswith("{")]
    processed = [line for line in lines if line["event"] == "processed"]
    assert len(processed) >= 3, worker.tail()
    assert all(line.get("correlation_id") for line in processed), "a delivery's line without its correlation_id"

    mine = [line for line in lines if line.get("correlation_id") == followed]
    assert {line["route"] for line in mine if line["event"] == "processed"} == {"bus-ack", "results-to-igate"}
    assert {line["dossier_code"] for line in mine} == {code}
    theirs = [line for line in lines if line.get("dossier_code") == other_code]
    assert theirs, "the other dossier was processed too"
    assert {line["correlation_id"] for line in theirs} == {other}
