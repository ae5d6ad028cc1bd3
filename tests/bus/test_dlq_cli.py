# mypy: allow-untyped-defs
"""``igate-bus dlq`` as an operator runs it: real broker, real worker, the iGate simulator, a subprocess CLI.

Dead letters are made the way production makes them: a worker dead-letters an invalid event (its body holds
a citizen's name, CCCD, phone, e-mail and address) and three events iGate answers 404 to (their ``x-error``
quotes iGate's JSON reply). The three share 34 characters of their event ids, so an 8-character prefix is
ambiguous between them and the table must show more.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pika
import pytest
from busenv import (
    SIM_PASSWORD,
    SIM_USER,
    depth,
    dossier_code,
    env_for,
    get_all,
    publish,
    received_events,
    thread_worker,
    wait_for,
    write_config,
)
from busenv import cli as run_cli
from ingress_harness import private_vhost

from bus.dlq_view import MIN_PREFIX, short_ids
from routes.publisher import Publisher
from simulators.igate import IGateSimulator

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
ROUTE = "bus-ack"
TWINS = [f"0123abcd-0000-4000-8000-0000000000{i}0" for i in range(1, 4)]
#: the personal values of the invalid event, as busenv's example carries them
PERSONAL = ("Nguyễn Thị Hương", "066190012345", "0912000111", "nthuong.bmt@example.com", "Số 12 đường Lê Duẩn")


def cli(*args: str, env: dict[str, str], columns: int = 80, stdin: str | None = None) -> Any:
    """``igate-bus ARGS`` in a subprocess, 80 columns wide unless told otherwise."""
    return run_cli(*args, env=env, columns=columns, stdin=stdin)


def make_letters(amqp_url: str, store_url: str, cfg: Path) -> dict[str, Any]:
    """Run a worker until 3 rejected events and 1 invalid one are dead-lettered; returns the invalid one."""
    with IGateSimulator(username=SIM_USER, password=SIM_PASSWORD, strict_dossiers=True) as sim:
        write_config(cfg, endpoint=sim.url)
        rejected = received_events(3, prefix="X")
        for ev, event_id in zip(rejected, TWINS, strict=True):
            ev["event_id"] = event_id
        invalid = received_events(1, prefix="B")[0]
        invalid["payload"]["fees"][0]["amount_vnd"] = 1.5  # whole VND only: dead-lettered as invalid
        with thread_worker(amqp_url, store_url, cfg, routes=[ROUTE]):
            publish(amqp_url, rejected)
            _publish_with_properties(amqp_url, invalid)
            wait_for(lambda: depth(amqp_url, f"dlq.{ROUTE}") == 4, timeout=30, what="4 dead letters")
        assert len([r for r in sim.requests("/pa/dossier/") if r.get("status") == 404]) >= 3, "no 404 was answered"
    return invalid


def _publish_with_properties(amqp_url: str, event: dict[str, Any]) -> None:
    """Publish with every property a copy must keep set to something recognisable."""
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=2,
        message_id=event["event_id"],
        type=event["event_type"],
        correlation_id="corr-1",
        timestamp=1_790_000_000,
        app_id="igate-test",
    )
    body = json.dumps(event, ensure_ascii=False).encode()
    with Publisher(amqp_url) as pub:
        pub.publish_raw(body, exchange="igate.events", routing_key=event["event_type"], properties=props)


@pytest.fixture(scope="module")
def letters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    """A vhost holding the four dead letters, for the tests that only read them; (env, the invalid event)."""
    tmp = tmp_path_factory.mktemp("dlq")
    with private_vhost() as url:
        store = f"sqlite:///{tmp / 'store.sqlite3'}"
        invalid = make_letters(url, store, tmp / "cfg")
        env = env_for(url, store, tmp / "cfg", IGATE_BUS_AUDIT_LOG=str(tmp / "audit.log"))
        yield env, invalid


def test_show_masks_personal_data_by_default_and_reveal_is_audited(letters):
    """`dlq show ID`: no name, CCCD, phone, e-mail or address; `--reveal` shows them after one audit line."""
    env, invalid = letters
    shown = cli("dlq", "show", invalid["event_id"][:8], env=env)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["event_id"] == invalid["event_id"] and doc["error_kind"] == "invalid"
    assert doc["body"]["dossier_code"] == invalid["dossier_code"]
    for value in PERSONAL:
        assert value not in shown.stdout, value
    assert doc["body"]["payload"]["applicant"]["id_no"] == "***45"

    audit = Path(env["IGATE_BUS_AUDIT_LOG"])
    assert not audit.exists(), "a masked show must not be audited as a reveal"
    revealed = cli("dlq", "show", invalid["event_id"], "--reveal", "--operator", "Lê Văn Tâm", env=env)
    assert revealed.returncode == 0, revealed.stderr
    assert json.loads(revealed.stdout)["body"] == invalid
    [line] = [json.loads(x) for x in audit.read_text(encoding="utf-8").splitlines()]
    assert line["action"] == "dlq_revealed"
    assert line["operator"] == "Lê Văn Tâm" and line["os_user"]
    assert (line["queue"], line["route"], line["event_id"]) == (f"dlq.{ROUTE}", ROUTE, invalid["event_id"])
    assert line["at"].endswith("+00:00")
    assert oct(audit.stat().st_mode & 0o777) == "0o600"
    assert '"dlq_revealed"' in revealed.stderr, "the audit line is logged too"
    for value in PERSONAL:
        assert value not in audit.read_text(encoding="utf-8") and value not in revealed.stderr


def test_reveal_is_refused_when_the_audit_line_cannot_be_written(letters, tmp_path):
    """Audit log path unwritable ▶ exit 1, nothing of the letter printed."""
    env, invalid = letters
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where a folder should be")
    result = cli("dlq", "show", invalid["event_id"], "--reveal", env={**env, "IGATE_BUS_AUDIT_LOG": str(blocked / "a")})
    assert result.returncode == 1
    assert "not revealed" in result.stderr and "audit log" in result.stderr
    assert result.stdout == ""


def test_list_masks_and_fits_80_columns_with_whole_unique_ids_and_readable_reasons(letters):
    """COLUMNS=80: no line wider; every id prefix whole, unique and 8+; reasons are words, never raw JSON."""
    env, invalid = letters
    listed = cli("dlq", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    out = listed.stdout
    assert "4 dead letter(s)" in out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    rows = json.loads(cli("dlq", "list", "--json", env=env).stdout)
    prefixes = short_ids(r["event_id"] for r in rows)
    assert prefixes[invalid["event_id"]] == invalid["event_id"][:MIN_PREFIX]
    assert {len(prefixes[t]) for t in TWINS} == {35}, "the twins share 34 characters"
    cells = re.findall(r"[│|]\s*([0-9a-f-]{8,})\s*[│|]", out)
    assert sorted(cells) == sorted(prefixes.values()), out
    for value in PERSONAL:
        assert value not in out and value not in json.dumps(rows, ensure_ascii=False)

    assert '{"timestamp"' not in out and '"status":404' not in out, "the raw reply body is in the table"
    assert out.count("HTTP 404") == 3, out
    words = {w.strip(",;:.()") for r in rows for w in r["error"].split()}
    for cut in re.findall(r"(\S+)…", out):
        assert cut.strip(",;:.()│|") in words, f"{cut!r}… ends mid-word"

    wide = cli("dlq", "list", env=env, columns=200).stdout
    assert max(len(line) for line in wide.splitlines()) <= 200, wide
    assert "reason" in wide and sorted(re.findall(r"[│|]\s*([0-9a-f-]{8,})\s*[│|]", wide)) == sorted(prefixes.values())
    for i in range(3):  # one row per letter, the reply's message whole
        assert f"HTTP 404: dossier {dossier_code(i, 'X')} not found" in wide, wide


def test_ambiguous_or_too_short_prefixes_are_refused(letters):
    """8 characters shared by three ids ▶ exit 2 naming them; 7 characters ▶ exit 2; unknown ▶ exit 1."""
    env, _ = letters
    ambiguous = cli("dlq", "show", "0123abcd", env=env)
    assert ambiguous.returncode == 2
    assert "ambiguous" in ambiguous.stderr and all(t[:35] in ambiguous.stderr for t in TWINS), ambiguous.stderr
    for args in (["dlq", "replay", "--event-id", "0123abcd"], ["dlq", "purge", "--yes", "--event-id", "0123abcd"]):
        refused = cli(*args, env=env)
        assert refused.returncode == 2 and "ambiguous" in refused.stderr, (args, refused.stderr)
    short = cli("dlq", "show", "0123abc", env=env)
    assert short.returncode == 2 and "too short" in short.stderr
    unknown = cli("dlq", "show", str(uuid.uuid4()), env=env)
    assert unknown.returncode == 1 and "no dead letter" in unknown.stderr
    assert depth(env["IGATE_BUS_AMQP_URL"], f"dlq.{ROUTE}") == 4, "a refused selector touched the DLQ"


def test_replay_and_purge_by_prefix_and_replay_keeps_every_property(amqp_url, sqlite_url, tmp_path):
    """A 35-character prefix replays one twin; the replayed copy keeps content_encoding, app_id and the rest."""
    invalid = make_letters(amqp_url, sqlite_url, tmp_path / "cfg")
    env = env_for(amqp_url, sqlite_url, tmp_path / "cfg")

    replayed = cli("dlq", "replay", "--event-id", TWINS[0][:35], "--event-id", invalid["event_id"][:8], env=env)
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 2" in replayed.stdout
    purged = cli("dlq", "purge", "--yes", "--event-id", TWINS[1][:35], env=env)
    assert purged.returncode == 0 and "purged 1" in purged.stdout, purged.stderr
    left = json.loads(cli("dlq", "list", "--json", env=env).stdout)
    assert [r["event_id"] for r in left] == [TWINS[2]]

    back = {p.message_id: p for p, _ in get_all(amqp_url, f"route.{ROUTE}")}
    assert set(back) == {TWINS[0], invalid["event_id"]}
    props = back[invalid["event_id"]]
    assert (props.content_type, props.content_encoding, props.app_id) == ("application/json", "utf-8", "igate-test")
    assert (props.type, props.correlation_id, props.timestamp) == ("dossier.received", "corr-1", 1_790_000_000)
    assert props.delivery_mode == 2
    assert props.headers["x-replays"] == 1 and "x-error" not in props.headers


def test_purge_asks_before_connecting_and_a_no_purges_nothing(letters):
    """Without --yes, answering no ▶ exit 1 and the DLQ is as it was."""
    env, _ = letters
    result = cli("dlq", "purge", "--all", env=env, stdin="n\n")
    assert result.returncode == 1 and "nothing purged" in result.stderr
    assert depth(env["IGATE_BUS_AMQP_URL"], f"dlq.{ROUTE}") == 4


def test_list_with_missing_queues_keeps_pika_warnings_out_of_the_table(letters):
    """A route whose DLQ was never declared: pika's 404 warnings come after the output, on stderr."""
    env, _ = letters
    cfg = Path(env["IGATE_BUS_CONFIG_DIR"])
    text = (cfg / "routes.yaml").read_text()
    extra = cfg.parent / "cfg-extra"
    extra.mkdir(exist_ok=True)
    (extra / "connectors.yaml").write_text((cfg / "connectors.yaml").read_text())
    (extra / "routes.yaml").write_text(text.replace("name: bus-ping", "name: bus-ping-never-declared"))
    merged = subprocess.run(
        [sys.executable, "-m", "bus.cli", "dlq", "list"],
        env={**env, "IGATE_BUS_CONFIG_DIR": str(extra), "COLUMNS": "80"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, as on a terminal
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    ).stdout
    lines = merged.splitlines()
    last_table_line = max(i for i, line in enumerate(lines) if "dead letter(s)" in line)
    assert not any(line.lstrip().startswith("{") for line in lines[:last_table_line]), merged
    assert os.linesep.join(lines[last_table_line + 1 :]).count("NOT_FOUND") >= 1, merged
