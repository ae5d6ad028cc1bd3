"""Golden cases and refusals of ``adapters/igate_to_vilis.py`` (land dossiers → the land system's requests).

Each file in ``cases/igate_to_vilis/`` holds an adapter's name, the event (as the worker parses it) and the
expected request as the connector would put it on the wire (``connectors.vilis.wire``; spool paths left
out). Regenerate a case only after reading the difference.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jmespath
import pytest
import yaml

from adapters.igate_to_vilis import dossier_received, dossier_returned, spool_path, supplement_received
from adapters.vilis_to_bus import vilis_action, vilis_event
from connectors.vilis import wire
from schemas.envelope import Event, parse_event
from schemas.errors import MappingError
from schemas.events import EVENT_PAYLOADS

ROOT = Path(__file__).resolve().parents[2]
CASES_DIR = Path(__file__).parent / "cases" / "igate_to_vilis"
CASES = sorted(CASES_DIR.glob("*.json"))
ADAPTERS = {
    "dossier_received": dossier_received,
    "supplement_received": supplement_received,
    "dossier_returned": dossier_returned,
}
NOW = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)


def example(event_type: str) -> dict[str, Any]:
    """The shipped example of an event type."""
    data: dict[str, Any] = json.loads((ROOT / "examples" / "events" / f"{event_type}.json").read_text("utf-8"))
    return data


def parsed(data: dict[str, Any]) -> Event:
    """The event as the worker parses it."""
    return parse_event(json.dumps(data, ensure_ascii=False).encode(), payload_models=EVENT_PAYLOADS)


class TestGoldenCases:
    """Each case: the adapter's request, on the wire, equals ``expected``."""

    def test_a_case_per_adapter(self) -> None:
        """Every adapter has a case (an empty glob would make the parametrised test vanish)."""
        assert {json.loads(p.read_text("utf-8"))["adapter"] for p in CASES} == set(ADAPTERS)

    @pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
    def test_matches_expected(self, path: Path) -> None:
        """The event maps to exactly the expected request."""
        case = json.loads(path.read_text("utf-8"))
        request = ADAPTERS[case["adapter"]](parsed(case["event"]), now=NOW)
        assert wire(request, None) == case["expected"]


class TestRefusals:
    """What the land office could not take is a mapping error naming the field, never a half request."""

    def test_a_dossier_without_its_parcel(self) -> None:
        """No ``payload.land`` ▶ MappingError(field=payload.land)."""
        data = example("dossier.received")
        del data["payload"]["land"]
        with pytest.raises(MappingError) as info:
            dossier_received(parsed(data), now=NOW)
        assert info.value.field == "payload.land"

    def test_a_document_url_naming_no_file(self) -> None:
        """A URL with no path segment ▶ MappingError naming that document's url."""
        data = example("dossier.received")
        data["payload"]["documents"][1]["url"] = "https://dvcapi.daklak.gov.vn/"
        with pytest.raises(MappingError) as info:
            dossier_received(parsed(data), now=NOW)
        assert info.value.field == "payload.documents[1].url"

    def test_the_spool_path_is_the_dossier_and_the_file_id(self) -> None:
        """The export's layout: ``<dossier>/<last URL segment>``, percent-decoding included."""
        assert spool_path("D-1", "https://x.gov.vn/fi/file/ab%20c?x=1", "f") == ("D-1/ab c", "ab c")

    def test_paper_only_documents_travel_without_a_file(self) -> None:
        """A document without a URL is listed, with no TapTin."""
        request = dossier_received(parsed(example("dossier.received")), now=NOW)
        paper = [d for d in request.DanhSachGiayToDinhKem if d.TapTin is None]
        assert [d.MaGiayTo for d in paper] == ["GCN_DA_CAP"]


class TestLandOnly:
    """The shipped `when` of the land routes sends land procedures only (igate-bus map refuses the others)."""

    def _when(self) -> str:
        routes = yaml.safe_load((ROOT / "config" / "routes.yaml").read_text("utf-8"))["routes"]
        whens = {r["when"] for r in routes if r["name"].startswith("vilis-") and "when" in r}
        assert len(whens) == 1  # one list for every land route
        return str(whens.pop())

    def test_land_procedures_pass_and_others_do_not(self) -> None:
        """1.003560 (land registration) ▶ true; a civil-status procedure ▶ false; no procedure ▶ false."""
        when = jmespath.compile(self._when())
        data = example("dossier.received")
        assert when.search(parsed(data).as_dict()) is True
        other = copy.deepcopy(data)
        other["procedure_code"] = "1.001612.000.00.00.H16"
        assert when.search(parsed(other).as_dict()) is False
        del other["procedure_code"]
        assert not when.search(parsed(other).as_dict())


class TestResultFiles:
    """The land office's result documents on the SFTP server reach the bus with their SHA-256 [A]."""

    def test_a_result_on_the_sftp_server_becomes_a_result_file(self) -> None:
        """LinkFile a path + Sha256 ▶ result_files; an http link stays a document URL."""
        body = {
            "SoBienNhan": "000.00.16.H16-261126-0001",
            "NgayKetThuc": "2026-11-26T02:00:00",
            "DanhSachGiayToKetQua": [
                {"TenGiayTo": "Giấy chứng nhận", "LinkFile": "D/KetQua/GCN.pdf", "Sha256": "a" * 64},
                {"TenGiayTo": "Thông báo", "LinkFile": "https://vbdlis.example/tb.pdf"},
            ],
        }
        payload = vilis_event(vilis_action("KetThucHoSo"), body, now=NOW)["payload"]
        assert payload["result_files"] == [{"name": "Giấy chứng nhận", "path": "D/KetQua/GCN.pdf", "sha256": "a" * 64}]
        assert [d["url"] for d in payload["result_docs"]] == [None, "https://vbdlis.example/tb.pdf"]


def test_igate_bus_map_refuses_a_dossier_outside_the_land_sector(tmp_path: Path) -> None:
    """``igate-bus map`` on the land route (enabled) ▶ a land dossier renders; any other exits 1 naming the when."""
    from busenv import cli

    cfg = tmp_path / "cfg"
    cfg.mkdir()
    routes = yaml.safe_load((ROOT / "config" / "routes.yaml").read_text("utf-8"))
    for r in routes["routes"]:
        r.pop("enabled", None)
    (cfg / "routes.yaml").write_text(yaml.safe_dump(routes, allow_unicode=True), "utf-8")
    (cfg / "connectors.yaml").write_text((ROOT / "config" / "connectors.yaml").read_text("utf-8"), "utf-8")
    env = {"PATH": "/usr/bin:/bin", "IGATE_BUS_CONFIG_DIR": str(cfg)}
    land = tmp_path / "land.json"
    land.write_text(json.dumps(example("dossier.received"), ensure_ascii=False), "utf-8")
    other_event = example("dossier.received")
    other_event["procedure_code"] = "1.001612.000.00.00.H16"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(other_event, ensure_ascii=False), "utf-8")
    ok = cli("map", "--route", "vilis-dossier-received", str(land), env=env)
    assert ok.returncode == 0 and "POST {endpoint}/tiepnhan" in ok.stdout, ok.stderr
    refused = cli("map", "--route", "vilis-dossier-received", str(other), env=env)
    assert refused.returncode == 1 and "skips this event: its when (contains(" in refused.stderr
