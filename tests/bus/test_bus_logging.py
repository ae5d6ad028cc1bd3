"""The logging chain: JSON lines, personal data masked everywhere, tracebacks without locals."""

from __future__ import annotations

import io
import json
import logging
from typing import TYPE_CHECKING, Any

import pytest
import structlog

from bus.logging import MaskPersonalData, _BusHandler, configure_logging, get_logger
from schemas.errors import ConfigError, TargetRejected
from schemas.igate import Applicant

if TYPE_CHECKING:
    from collections.abc import Iterator

CCCD = "066201001234"
PHONE = "0912345678"
NAME = "Nguyễn Văn An"
STREET = "Số 12 đường Lê Duẩn"
API_KEY = "sk-live-7f3a9c2e51d04b"
EVENT_ID = "123e4567-e89b-12d3-a456-426614174000"
DOSSIER = "000.00.16.H16-261126-0001"
#: every form in which a seeded value could leak
SEEDED = (CCCD, PHONE, PHONE[1:], "84" + PHONE[1:], NAME, "Lê Duẩn", API_KEY, "api_key")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A stream the chain writes to; structlog and the root logger are restored afterwards."""
    out = io.StringIO()
    yield out
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _BusHandler)]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """The JSON objects written so far, one per line."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def read_reply(name: str, address: dict[str, str]) -> None:
    """Fail on a reply that echoes the request, as a target's fault does."""
    raise ValueError(repr({"name": name, "address": address}))


def issue_receipt(citizen_id: str, phone: str, name: str, address: dict[str, str]) -> None:
    """Fail the way a connector does, with personal data and a key in locals and in the message."""
    api_key = API_KEY
    assert api_key
    try:
        read_reply(name, address)
    except ValueError as cause:
        raise TargetRejected(f"receipt refused for CCCD {citizen_id}, phone {phone}", code="ERR:3") from cause


def test_seeded_personal_data_never_reaches_the_json_output(stream: io.StringIO) -> None:
    """CCCD, phone, name, address and an api_key local appear nowhere; routing fields survive intact."""
    configure_logging(stream=stream)
    log = get_logger("igate_bus.route").bind(
        event_id=EVENT_ID, route="receipt", dossier_code=DOSSIER, connector="vnpt_invoice", attempt=2
    )
    address = {"province": "66", "district": "643", "detail": STREET}
    log.info(
        f"sending receipt for {CCCD} to {PHONE}",  # noqa: G004 (a careless call site is what is tested)
        id_no=CCCD,
        phone=PHONE,
        name=NAME,
        address=address,
        payload={"applicant": {"name": NAME, "phone": PHONE, "id_no": CCCD, "address": address}},
        reply=f"<Fault>CusName={NAME!r} SoCMND={CCCD}</Fault>",
    )
    try:
        issue_receipt(CCCD, PHONE, NAME, address)
    except TargetRejected:
        log.exception("send failed", outcome="permanent")

    output = stream.getvalue()
    for seeded in SEEDED:
        assert seeded not in output, seeded
    first, second = lines(stream)
    for record in (first, second):
        assert record["event_id"] == EVENT_ID
        assert record["route"] == "receipt"
        assert record["dossier_code"] == DOSSIER
        assert record["connector"] == "vnpt_invoice"
        assert record["attempt"] == 2
        assert record["logger"] == "igate_bus.route"
    assert first["level"] == "info"
    assert first["phone"] == "***78"
    assert first["payload"]["applicant"]["address"]["detail"] == "***"
    assert second["level"] == "error"
    assert second["outcome"] == "permanent"
    exc = second["exception"]
    assert [e["exc_type"] for e in exc] == ["TargetRejected", "ValueError"]
    assert "***34" in exc[0]["exc_value"]
    assert all("locals" not in frame for e in exc for frame in e["frames"])
    assert "issue_receipt" in {frame["name"] for e in exc for frame in e["frames"]}


def test_console_format_masks_the_traceback_text(stream: io.StringIO) -> None:
    """The console renderer prints a plain traceback, scrubbed, without locals."""
    configure_logging(fmt="console", stream=stream)
    try:
        issue_receipt(CCCD, PHONE, NAME, {"detail": STREET})
    except TargetRejected:
        get_logger().exception("send failed", phone=PHONE)
    output = stream.getvalue()
    assert "Traceback" in output
    assert "TargetRejected" in output
    for seeded in SEEDED:
        assert seeded not in output, seeded


def test_validation_error_text_is_scrubbed(stream: io.StringIO) -> None:
    """A pydantic ValidationError logged as text loses the input values it quotes."""
    configure_logging(stream=stream)
    bad = {
        "type": 1,
        "name": NAME,
        "id_type": 1,
        "id_no": CCCD,
        "phone": "0262",
        "address": {"detail": STREET},
    }
    try:
        Applicant.model_validate(bad)
    except Exception as exc:
        get_logger().warning("invalid", error=str(exc), exc_info=exc)
    output = stream.getvalue()
    for seeded in (CCCD, NAME, "Lê Duẩn"):
        assert seeded not in output, seeded
    assert "input_value=***" in output


def test_stdlib_records_go_through_the_same_chain(stream: io.StringIO) -> None:
    """A library logging through the standard logging module is rendered as JSON and masked."""
    configure_logging(stream=stream)
    logging.getLogger("pika.connection").warning("closing channel for %s (%s)", PHONE, CCCD)
    (record,) = lines(stream)
    assert record["logger"] == "pika.connection"
    assert record["level"] == "warning"
    assert record["event"] == "closing channel for ***78 (***34)"


def test_configuring_twice_replaces_rather_than_duplicates(stream: io.StringIO) -> None:
    """A second configuration sends each line once, to the new stream only, through one root handler."""
    first = io.StringIO()
    configure_logging(stream=first)
    log = get_logger()
    configure_logging(stream=stream)
    log.info("after")
    logging.getLogger("httpx").warning("stdlib after")
    assert first.getvalue() == ""
    assert [r["event"] for r in lines(stream)] == ["after", "stdlib after"]
    assert sum(isinstance(h, _BusHandler) for h in logging.getLogger().handlers) == 1


def test_level_filters(stream: io.StringIO) -> None:
    """Below the configured level nothing is written."""
    configure_logging(level="warning", stream=stream)
    get_logger().info("quiet")
    logging.getLogger("pika").info("quiet too")
    get_logger().warning("loud")
    assert [r["event"] for r in lines(stream)] == ["loud"]


@pytest.mark.parametrize(("level", "fmt"), [("verbose", "json"), ("info", "xml")])
def test_unknown_level_or_format_refused(stream: io.StringIO, level: str, fmt: str) -> None:
    """An unknown level or format is a configuration error naming the value."""
    with pytest.raises(ConfigError, match=level if level == "verbose" else fmt):
        configure_logging(level=level, fmt=fmt, stream=stream)


def test_vietnamese_is_not_escaped(stream: io.StringIO) -> None:
    """JSON lines keep Vietnamese readable (ensure_ascii=False)."""
    configure_logging(stream=stream)
    get_logger().info("Đã tiếp nhận hồ sơ", agency="Đắk Lắk")
    assert "Đã tiếp nhận hồ sơ" in stream.getvalue()
    assert "Đắk Lắk" in stream.getvalue()


def test_credentials_and_target_field_names_masked(stream: io.StringIO) -> None:
    """Credentials and the target systems' own personal field names are masked by key, in any case."""
    configure_logging(stream=stream)
    get_logger().info(
        "request",
        headers={"Authorization": f"Bearer {API_KEY}"},
        body={"ReceiverName": NAME, "ReceiverTel": PHONE, "CODAmount": 0},
        fault=f"<soap:Fault><detail><ns1:CusName>{NAME}</ns1:CusName></detail></soap:Fault>",
    )
    output = stream.getvalue()
    for seeded in SEEDED:
        assert seeded not in output, seeded
    (record,) = lines(stream)
    assert record["body"]["CODAmount"] == 0
    assert record["headers"]["Authorization"] == "***"


class TestMaskPersonalData:
    def test_masks_keys_at_any_depth_and_lists(self) -> None:
        """Personal keys are masked inside nested dicts and lists; other strings are scrubbed."""
        masker = MaskPersonalData(keys={"phone", "name"})
        out = masker(
            None,
            "info",
            {"event": f"to {PHONE}", "items": [{"phone": PHONE}, {"name": [NAME, NAME]}], "n": 3, "ok": True},
        )
        assert out == {
            "event": "to ***78",
            "items": [{"phone": "***78"}, {"name": ["***", "***"]}],
            "n": 3,
            "ok": True,
        }

    def test_models_and_objects_are_walked_or_scrubbed(self) -> None:
        """A pydantic model is dumped and masked; any other object is logged as its scrubbed text."""
        applicant = Applicant.model_validate(
            {
                "type": 1,
                "name": NAME,
                "id_type": 1,
                "id_no": CCCD,
                "phone": PHONE,
                "address": {"province": "66", "commune": "24121", "detail": STREET},
            }
        )
        out = MaskPersonalData()(None, "info", {"applicant": applicant, "error": ValueError(f"bad {CCCD}")})
        assert out["applicant"]["name"] == "***"
        assert out["applicant"]["id_no"] == "***34"
        assert out["applicant"]["address"] == {
            "province": "***",
            "district": None,
            "commune": "***",
            "detail": "***",
        }
        assert out["applicant"]["type"] == 1
        assert out["error"] == "bad ***34"

    def test_cycles_do_not_crash(self) -> None:
        """A self-referencing value is cut off at a depth, not recursed forever."""
        loop: dict[str, Any] = {"phone": PHONE}
        loop["self"] = loop
        out = MaskPersonalData()(None, "info", {"loop": loop})
        assert PHONE not in json.dumps(out, default=str)

    def test_a_key_seen_before_is_masked_the_same_way_every_time(self) -> None:
        """The shortcut for a key met before (plain text, numbers) gives what the first line got, for any value.

        The same masker logs many lines: a key first seen with a harmless value later carries a phone, a
        dict, a model or a str subclass; a masked key or the exception's is never taken for a plain one.
        """
        masker = MaskPersonalData(keys={"phone", "name"})
        first = {"note": "ok", "n": 1, "phone": PHONE, "Name": NAME, "exception": "e", "route": "r"}
        for _ in range(3):  # the second and third calls take the shortcut for the keys they met
            assert masker(None, "info", first) == {
                "note": "ok", "n": 1, "phone": "***78", "Name": "***", "exception": "e", "route": "r",
            }  # fmt: skip
        # a remembered key with a value that needs the whole way
        out = masker(
            None,
            "info",
            {
                "note": f"call {PHONE} id {CCCD}",
                "n": {"phone": PHONE, "x": CCCD},
                "route": [PHONE],
                "exception": {"exc_value": f"bad {PHONE}", "name": NAME},
            },
        )
        assert out == {
            "note": "call ***78 id ***34",
            "n": {"phone": "***78", "x": "***34"},
            "route": ["***78"],
            "exception": {"exc_value": "bad ***78", "name": NAME},  # structlog's keys, text scrubbed only
        }

        class Text(str):
            __slots__ = ()

        assert masker(None, "info", {"note": Text(PHONE), "n": None, "phone": 912345678}) == {
            "note": "***78",
            "n": None,
            "phone": "***78",
        }

    def test_exception_keys_are_not_masked(self) -> None:
        """In a rendered exception, a frame's name is kept; only its text is scrubbed."""
        frames = [{"filename": "x.py", "lineno": 1, "name": "issue_receipt"}]
        out = MaskPersonalData()(None, "error", {"exception": [{"exc_value": f"bad {PHONE}", "frames": frames}]})
        assert out["exception"] == [{"exc_value": "bad ***78", "frames": frames}]


def test_a_command_block_gives_the_callers_logging_back(stream: io.StringIO) -> None:
    """``logs_after_report`` (status, check) logs at warning into its own stream, then restores the caller's.

    Left behind, its level silenced every later INFO line of the process: a test's ``capture_logs`` saw none.
    """
    from bus.cli_logs import logs_after_report

    configure_logging(level="info", stream=stream)
    with logs_after_report():
        get_logger().info("inside, below the block's level")
    get_logger().info("after the block")
    logging.getLogger("pika").warning("stdlib after the block")
    assert [r["event"] for r in lines(stream)] == ["after the block", "stdlib after the block"]
    assert sum(isinstance(h, _BusHandler) for h in logging.getLogger().handlers) == 1
