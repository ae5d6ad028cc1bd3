# mypy: allow-untyped-defs
"""Queues and bindings left behind by removed routes: found, warned about, pruned, and nothing else touched.

Each test gets a fresh vhost on the real broker; the management API lists it, as in production. The config is
busenv's three routes (bus-ack, results-to-igate, bus-ping); the "new" config drops bus-ack and bus-ping and
one binding key of results-to-igate. Beside our queues the vhost holds another team's: ``partner.audit``
bound to ``igate.events`` with ``#``, and ``other.q``, which must come through every prune untouched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pika
import pytest
import yaml
from busenv import ProcessWorker, cli, declare_routes, env_for, ping_events, publish, wait_for, write_config

from routes.broker_admin import Binding, ManagementApi, QueueName
from routes.stale import find_stale, is_ours
from routes.topology import QueueDecl, Topology

ROOT = Path(__file__).resolve().parents[2]
FOREIGN = "partner.audit"


def _ours(name: str) -> QueueName:
    """A queue as routes/topology.py declares it (quorum route and retry queues, classic DLQs)."""
    kind, _, rest = name.partition(".")
    if kind == "route":
        return QueueName(name, "quorum", {"x-queue-type": "quorum", "x-dead-letter-routing-key": f"dlq.{rest}"})
    if kind == "retry":
        route = rest.rsplit(".", 1)[0]
        args = {"x-dead-letter-routing-key": f"route.{route}", "x-message-ttl": 5000}
        return QueueName(name, "quorum", args)
    return QueueName(name, "classic", {"x-queue-type": "classic"})


class TestFindStale:
    def test_only_our_queues_are_candidates(self):
        """Undeclared queues with our names and our arguments, and our exchanges' bindings to them; nothing else."""
        topo = Topology(
            queues=[
                QueueDecl("unrouted", {}, (("bus.unrouted", ""),)),
                QueueDecl("route.a", {}, (("igate.events", "dossier.received"),)),
                QueueDecl("dlq.a", {}),
            ]
        )
        queues = [_ours(n) for n in ("route.a", "dlq.a", "route.gone", "retry.gone.5s", "dlq.gone")]
        queues += [
            QueueName("unrouted", "classic", {"x-queue-type": "classic"}),
            QueueName("partner.audit", "classic"),
            QueueName("routes", "classic"),
            QueueName("amq.gen-x", "classic"),
            # our names, someone else's queues: their arguments are not what the bus declares
            QueueName("route.billing", "classic", {}),
            QueueName("route.their-team", "quorum", {"x-dead-letter-routing-key": "their.dlq"}),
            QueueName("dlq.their-team", "classic", {"x-max-length": 1000}),
            QueueName("retry.their-team.5s", "quorum", {"x-dead-letter-routing-key": "route.their-team"}),
        ]
        bindings = [
            Binding("igate.events", "route.a", "dossier.received"),
            Binding("igate.events", "route.a", "dossier.submitted"),  # a removed key
            Binding("igate.events", "route.gone", "bus.ping"),
            Binding("igate.events", "partner.audit", "#"),  # someone else's tap on our exchange
            Binding("igate.events", "route.billing", "payment.settled"),  # their queue with our prefix
            Binding("their.exchange", "route.a", "x"),  # not our exchange
            Binding("bus.unrouted", "unrouted", ""),
        ]
        stale = find_stale(topo, queues, bindings)
        assert [q.name for q in stale.queues] == ["dlq.gone", "retry.gone.5s", "route.gone"]
        assert stale.queues[2].bindings == (Binding("igate.events", "route.gone", "bus.ping"),)
        assert stale.bindings == (Binding("igate.events", "route.a", "dossier.submitted"),)
        assert find_stale(topo, queues[:2], bindings[:1]).lines() == []
        for q in queues[5:]:
            assert not is_ours(q), q.name


@pytest.fixture
def vhost(amqp_url: str, sqlite_url: str, tmp_path: Path) -> dict[str, Any]:
    """The old config declared (10-minute backoff), messages parked, foreign queues; the new config written."""
    old = write_config(tmp_path / "old", endpoint="http://127.0.0.1:9", backoff="10m")
    declare_routes(amqp_url, old)
    new = tmp_path / "new"
    new.mkdir()
    (new / "connectors.yaml").write_text((old / "connectors.yaml").read_text())
    routes = yaml.safe_load((old / "routes.yaml").read_text())
    routes["routes"] = [r for r in routes["routes"] if r["name"] == "results-to-igate"]
    routes["routes"][0]["from"]["events"] = ["vnpost.tracking_updated"]  # dvcqg.sync_result removed
    (new / "routes.yaml").write_text(yaml.safe_dump(routes))

    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(FOREIGN, durable=True)
    ch.queue_bind(FOREIGN, "igate.events", routing_key="#")
    ch.queue_declare("route.billing", durable=True)  # our prefix, their queue (classic, no dead-letter target)
    ch.queue_bind("route.billing", "igate.events", routing_key="payment.settled")
    ch.queue_declare("other.q", durable=True)
    ch.basic_publish("", "other.q", b"theirs", pika.BasicProperties(delivery_mode=2))
    # a message waiting out a 10-minute delay: it will come back to route.bus-ack, which must still be there
    ch.basic_publish("", "retry.bus-ack.10m", b"{}", pika.BasicProperties(delivery_mode=2))
    ch.close()
    conn.close()
    publish(amqp_url, ping_events(2))  # 2 messages in route.bus-ping, which nobody will consume any more
    return {"url": amqp_url, "env": env_for(amqp_url, sqlite_url, new), "new": new}


def _queues(url: str) -> dict[str, int]:
    with ManagementApi.for_broker(url) as api:
        names = [q.name for q in api.queues()]
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return {name: int(conn.channel().queue_declare(name, passive=True).method.message_count) for name in names}
    finally:
        conn.close()


def _bindings(url: str) -> set[tuple[str, str, str]]:
    with ManagementApi.for_broker(url) as api:
        return {(b.exchange, b.queue, b.routing_key) for b in api.bindings()}


def test_stale_queues_are_listed_warned_at_worker_start_and_shown_by_status(vhost, tmp_path):
    """--stale, `run` and `status` all name route.bus-ack, route.bus-ping, their retry/DLQs and the removed key."""
    env = vhost["env"]
    listed = cli("topology", "--stale", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    stale = json.loads(listed.stdout)["stale"]
    names = {q["name"] for q in stale["queues"]}
    assert names == {
        "route.bus-ack",
        "retry.bus-ack.10m",
        "dlq.bus-ack",
        "route.bus-ping",
        "retry.bus-ping.10m",
        "dlq.bus-ping",
    }
    assert stale["bindings"] == [
        {"exchange": "bus.results", "queue": "route.results-to-igate", "routing_key": "dvcqg.sync_result"}
    ]
    assert FOREIGN not in listed.stdout and "other.q" not in listed.stdout and "route.billing" not in listed.stdout

    status = cli("status", "--json", "--url", "none", "--no-probe", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["stale"]["lines"] == stale["lines"]
    table = cli("status", "--url", "none", "--no-probe", env=env)
    assert "topology --prune" in table.stdout and "route.bus-ping is declared by no route" in table.stdout

    log = tmp_path / "worker.log"
    worker = ProcessWorker({**env, "IGATE_BUS_OPS_PORT": "0"}, log).start()
    try:
        worker.wait_consuming(1)
        wait_for(lambda: log.read_text().count('"stale_topology"') >= 7, timeout=20, what="the stale warnings")
        assert worker.terminate() == 0
    finally:
        worker.stop()
    warned = [json.loads(x) for x in log.read_text().splitlines() if '"stale_topology"' in x]
    assert {w["finding"] for w in warned} == set(stale["lines"])
    assert all(w["level"] == "warning" and w["fix"] == "igate-bus topology --prune" for w in warned)


def test_prune_removes_only_what_is_empty_and_ours_and_says_what_it_did(vhost):
    """Empty ones deleted; route.bus-ping (2 messages) unbound and kept; route.bus-ack kept for its retry's message."""
    url, env = vhost["url"], vhost["env"]
    before = _queues(url)
    pruned = cli("topology", "--prune", env=env)
    assert pruned.returncode == 0, pruned.stderr
    out = pruned.stdout
    assert "pruned: unbound bus.results:dvcqg.sync_result -> route.results-to-igate" in out
    assert "pruned: deleted queue dlq.bus-ack" in out and "pruned: deleted queue retry.bus-ping.10m" in out
    assert "kept: queue route.bus-ping: kept with 2 message(s), now unbound" in out
    assert "kept: queue retry.bus-ack.10m: kept with 1 message(s)" in out
    assert "kept: queue route.bus-ack: kept with 1 message(s) still to come back from its retry queues" in out

    after = _queues(url)
    assert set(before) - set(after) == {"dlq.bus-ack", "dlq.bus-ping", "retry.bus-ping.10m"}
    assert after[FOREIGN] == before[FOREIGN] and after["other.q"] == 1
    bindings = _bindings(url)
    assert ("igate.events", FOREIGN, "#") in bindings, "another team's binding on our exchange was removed"
    assert not {b for b in bindings if b[1] in {"route.bus-ack", "route.bus-ping"}}
    assert ("bus.results", "route.results-to-igate", "vnpost.tracking_updated") in bindings

    publish(url, ping_events(3))  # no longer reaches the unbound queue
    assert _queues(url)["route.bus-ping"] == 2

    forced = cli("topology", "--prune", "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert "deleted queue route.bus-ping (forced: 2 message(s)" in forced.stdout
    left = _queues(url)
    assert not [q for q in left if q.startswith(("route.bus-", "retry.bus-", "dlq.bus-"))], left
    assert left["other.q"] == 1 and FOREIGN in left and "route.billing" in left
    assert ("igate.events", "route.billing", "payment.settled") in _bindings(url)
    assert "stale: 0 finding(s)" in cli("topology", "--stale", env=env).stdout


def test_a_stale_queue_with_a_consumer_is_kept_unless_forced(vhost):
    """route.bus-ping read by someone (an older worker) ▶ kept and still bound; --force deletes it."""
    url, env = vhost["url"], vhost["env"]
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        conn.channel().basic_consume("route.bus-ping", lambda *_: None)
        pruned = cli("topology", "--prune", env=env)
        assert "kept: queue route.bus-ping: kept, 1 consumer(s) still read it" in pruned.stdout, pruned.stdout
        assert ("igate.events", "route.bus-ping", "bus.ping") in _bindings(url)
    finally:
        conn.close()


def test_without_the_management_api_the_check_says_so_and_nothing_breaks(vhost, tmp_path):
    """Management API unreachable ▶ topology --stale exits 1 naming the fix; status reports it; run starts."""
    env = {**vhost["env"], "IGATE_BUS_MANAGEMENT_URL": "http://127.0.0.1:9", "IGATE_BUS_OPS_PORT": "0"}
    listed = cli("topology", "--stale", env=env)
    assert listed.returncode == 1
    assert "not reachable" in listed.stderr and "rabbitmq_management" in listed.stderr
    status = json.loads(cli("status", "--json", "--url", "none", "--no-probe", env=env).stdout)
    assert status["stale"]["checked"] is False and "not reachable" in status["stale"]["error"]
    log = tmp_path / "worker.log"
    worker = ProcessWorker(env, log).start()
    try:
        worker.wait_consuming(1)
        wait_for(lambda: '"stale_topology_unchecked"' in log.read_text(), timeout=20, what="the unchecked warning")
        assert worker.terminate() == 0
    finally:
        worker.stop()


def test_a_guessed_management_api_of_another_broker_is_refused(tmp_path):
    """AMQP on port 5999, the API guessed at :15672 answers for the broker on 5672 ▶ refused, never trusted."""
    cfg = write_config(tmp_path / "cfg", endpoint="http://127.0.0.1:9")
    env = env_for("amqp://guest:guest@127.0.0.1:5999/%2F", "sqlite:///unused.sqlite3", cfg)
    listed = cli("topology", "--stale", env=env)
    assert listed.returncode == 1
    assert "AMQP port is 5672, not 5999" in listed.stderr and "IGATE_BUS_MANAGEMENT_URL" in listed.stderr
    explicit = cli("topology", "--stale", env={**env, "IGATE_BUS_MANAGEMENT_URL": "http://127.0.0.1:15672"})
    assert explicit.returncode == 0, explicit.stderr  # said explicitly: trusted (a port-forward may differ)
