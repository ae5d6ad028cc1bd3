"""Golden cases and refusals of ``adapters/vilis_to_bus.py``: the land system's calls into ``vilis.status_changed``.

Each file in ``cases/vilis_to_bus/`` holds the path segment the land system posted to (``action``), its JSON
body, a ``now`` and the expected envelope. Every expected envelope must also pass the one strict parser
(:func:`schemas.envelope.parse_event`), as the ingress applies it before publishing.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.to_bus import CallbackRejected
from adapters.vilis_to_bus import MAX_NOTE, VILIS_ACTIONS, VILIS_ALIASES, vilis_action, vilis_event
from schemas.envelope import parse_event
from schemas.events import EVENT_PAYLOADS

CASES_DIR = Path(__file__).parent / "cases" / "vilis_to_bus"
CASES = sorted(CASES_DIR.glob("*.json"))
OTHER_NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
#: the edge cases each have a file, by name
REQUIRED_EDGE_CASES = frozenset(
    {"ket_thuc_dotnet_time", "ket_qua_thue_offset", "ket_qua_thue_without_date", "long_note", "chuyen_ho_so_alias"}
)


def load(name: str) -> dict[str, Any]:
    """One golden case by file stem."""
    data: dict[str, Any] = json.loads((CASES_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return data


def run(case: dict[str, Any], *, body: Any = None, now: datetime | None = None) -> dict[str, Any]:
    """The adapter on the case's call (or another body, another ``now``)."""
    at = datetime.fromisoformat(case["now"]) if now is None else now
    return vilis_event(vilis_action(case["action"]), case["body"] if body is None else body, now=at)


class TestGoldenCases:
    """Each case file: the adapter's envelope equals ``expected``, and the strict parser takes it."""

    def test_cases_exist_for_every_action_and_edge(self) -> None:
        """Every action has a case (an empty glob would make the parametrised tests vanish), and each edge."""
        actions = {vilis_action(load(p.stem)["action"]).name for p in CASES}
        assert actions == set(VILIS_ACTIONS)
        assert REQUIRED_EDGE_CASES - {p.stem for p in CASES} == set()

    @pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
    def test_matches_expected(self, path: Path) -> None:
        """The call maps to exactly the expected envelope."""
        case = load(path.stem)

        assert run(case) == case["expected"]

    @pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
    def test_expected_is_a_valid_event(self, path: Path) -> None:
        """The expected envelope passes parse_event; kind, status and dossier code agree with the action."""
        case = load(path.stem)
        action = vilis_action(case["action"])

        event = parse_event(json.dumps(case["expected"]).encode(), payload_models=EVENT_PAYLOADS)

        payload = event.payload.model_dump(mode="json")
        assert event.envelope.event_type == "vilis.status_changed"
        assert event.envelope.source == "vilis"
        assert event.envelope.dossier_code == case["body"]["SoBienNhan"]
        assert payload["kind"] == action.kind
        assert payload["status"] == event.envelope.status == action.status

    @pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
    def test_now_changes_only_the_times_the_call_does_not_carry(self, path: Path) -> None:
        """Another ``now``: occurred_at moves, so does ``at`` of a call without a date; nothing else, not the id."""
        case = load(path.stem)

        other = run(case, now=OTHER_NOW)

        expected = copy.deepcopy(case["expected"])
        assert other.pop("occurred_at") == "2031-05-06T14:08:09+07:00"
        expected.pop("occurred_at")
        if expected["payload"]["at"] == case["expected"]["occurred_at"]:
            assert other["payload"].pop("at") == "2031-05-06T14:08:09+07:00"
            expected["payload"].pop("at")
        assert other == expected

    @pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
    def test_every_time_is_vietnam_time(self, path: Path) -> None:
        """Every date-time the adapter writes is at +07:00, whatever offset the land system used."""
        expected = load(path.stem)["expected"]
        times = [expected["occurred_at"], expected["payload"]["at"], expected["payload"].get("new_appointment")]

        assert all(t.endswith("+07:00") for t in times if t is not None)


class TestRules:
    def test_fields_the_bus_does_not_carry_do_not_travel(self) -> None:
        """The applicant's record the land system sends with a receipt (CCCD, phone, name) is not in the event."""
        case = load("tiep_nhan")
        applicant = case["body"]["ThongTinNguoiNopDon"]

        text = json.dumps(run(case), ensure_ascii=False)

        for value in applicant.values():
            assert value not in text

    def test_event_id_is_the_calls_identity(self) -> None:
        """The same call (keys in any order, received later) is the same event_id; another call is another."""
        case = load("nhan_bo_sung")
        body = case["body"]

        first = run(case)["event_id"]
        again = run(case, body=dict(reversed(list(body.items()))), now=OTHER_NOW)["event_id"]
        other = run(case, body={**body, "GhiChu": "x"})["event_id"]

        assert first == again
        assert first != other

    def test_an_alias_is_the_same_event_as_its_action(self) -> None:
        """DongBoTrangThaiLuanChuyenHoSo and ChuyenHoSo with the same body are one event."""
        assert VILIS_ALIASES["DongBoTrangThaiLuanChuyenHoSo"] == "ChuyenHoSo"
        assert load("chuyen_ho_so_alias")["expected"] == load("chuyen_ho_so")["expected"]

    def test_long_note_is_cut_not_refused(self) -> None:
        """A GhiChu over 2,000 characters is cut to 2,000, ending in '…'."""
        case = load("long_note")
        assert len(case["body"]["GhiChu"]) > MAX_NOTE

        note = run(case)["payload"]["note"]

        assert len(note) == MAX_NOTE
        assert note.endswith("…")


class TestRefusals:
    def test_unknown_action_suggests_the_closest(self) -> None:
        """A misspelt action ▶ 404 unknown_action naming the closest one."""
        with pytest.raises(CallbackRejected) as caught:
            vilis_action("KetThucHoso")
        assert caught.value.status == 404
        assert caught.value.code == "unknown_action"
        assert "did you mean 'KetThucHoSo'" in caught.value.detail

    def test_body_missing_a_date_names_the_field(self) -> None:
        """KetThucHoSo without NgayKetThuc ▶ invalid_callback naming NgayKetThuc."""
        case = load("ket_thuc_dotnet_time")
        body = {k: v for k, v in case["body"].items() if k != "NgayKetThuc"}

        with pytest.raises(CallbackRejected, match="NgayKetThuc: Field required") as caught:
            run(case, body=body)
        assert (caught.value.status, caught.value.code) == (422, "invalid_callback")

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"NgayKetThuc": "05/12/2026"}, "NgayKetThuc"),
            ({"NgayKetThuc": 1733367600}, "NgayKetThuc"),
            ({"SoBienNhan": ""}, "SoBienNhan"),
            ({"SoBienNhan": "x" * 61}, "SoBienNhan"),
            ({"MaCanBoXuLy": "x" * 201}, "MaCanBoXuLy"),
            ({"DanhSachGiayToKetQua": "not a list"}, "DanhSachGiayToKetQua"),
        ],
        ids=["not-iso", "number", "empty-code", "long-code", "long-staff", "docs-not-a-list"],
    )
    def test_invalid_field_is_named(self, change: dict[str, Any], field: str) -> None:
        """A date not in ISO 8601, an empty or overlong code, a list that is not one ▶ invalid_callback naming it."""
        case = load("ket_thuc_dotnet_time")

        with pytest.raises(CallbackRejected, match=field):
            run(case, body={**case["body"], **change})

    @pytest.mark.parametrize("body", [[1, 2], "text", 5, None], ids=["list", "string", "number", "null"])
    def test_body_that_is_not_an_object(self, body: Any) -> None:
        """A JSON body that is not an object ▶ invalid_callback saying what it got."""
        with pytest.raises(CallbackRejected, match="must be a JSON object"):
            vilis_event(vilis_action("KetThucHoSo"), body, now=OTHER_NOW)
