"""The SMS connector against both gateway simulators on real sockets: failover, never twice, OTP expiry, quiet hours.

Every assertion on what was sent reads the simulators' records (what they RECEIVED and sent), and each fault
test checks the fault happened (a guard), so a test cannot pass because nothing was injected.
"""

from __future__ import annotations

import io
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import smsenv
import structlog

from bus.logging import _BusHandler, configure_logging, get_logger
from connectors.base import connector_type
from connectors.sms import QuietHours, SmsConnector
from schemas.errors import (
    BreakerOpen,
    ConfigError,
    Expired,
    Held,
    TargetGarbled,
    TargetRejected,
    TargetTimeout,
    TargetUnavailable,
    TransientError,
)
from schemas.sms import SmsReceipt
from simulators._sms import Faults

if TYPE_CHECKING:
    from collections.abc import Iterator

    from simulators.esms import EsmsSimulator
    from simulators.viettel_sms import ViettelSmsSimulator

Sims = tuple["ViettelSmsSimulator", "EsmsSimulator"]


@pytest.fixture(scope="module")
def servers() -> Iterator[Sims]:
    """Both simulators for the module; each test resets them."""
    yield from smsenv.simulators()


@pytest.fixture
def sims(servers: Sims) -> Iterator[Sims]:
    """The simulators with no faults and empty records; credentials in the environment."""
    smsenv.sms_env()
    for sim in servers:
        sim.reset()
    yield servers
    for sim in servers:
        sim.reset()


def connect(sims: Sims, **kwargs: Any) -> SmsConnector:
    """A connector over both simulators; kwargs go to :func:`smsenv.spec`."""
    conn = connector_type("sms")("sms", smsenv.spec(*sims, **kwargs))
    assert isinstance(conn, SmsConnector)
    return conn


def sends(sim: ViettelSmsSimulator | EsmsSimulator) -> int:
    """Send requests the simulator received (answered or not)."""
    return sum(1 for r in sim.requests() if r["op"] == "send")


class TestSend:
    def test_primary_takes_the_notice_in_its_plain_form(self, sims: Sims) -> None:
        """Viettel, first in the order, sends the no-diacritics form (ContentType 0) keyed by our key."""
        viettel, esms_sim = sims
        conn = connect(sims)
        try:
            receipt = conn.send_notice(smsenv.notice(), "key-1")
        finally:
            conn.close()
        assert receipt.provider == "viettel"
        assert (receipt.encoding, receipt.request_id) == ("gsm7", "key-1")
        [sent] = viettel.sent()
        assert sent["content"] == "Ho so 000.00.16.H16-251126-0001 da duoc tiep nhan."
        assert (sent["phone"], sent["unicode"]) == (smsenv.PHONE, False)
        assert esms_sim.sent() == []

    def test_esms_takes_the_vietnamese_form(self, sims: Sims) -> None:
        """eSMS (unicode by default) gets the text with diacritics and IsUnicode 1."""
        _, esms_sim = sims
        conn = connect(sims, gateways="esms")
        try:
            receipt = conn.send_notice(smsenv.notice(), "key-2")
        finally:
            conn.close()
        assert (receipt.provider, receipt.encoding, receipt.segments) == ("esms", "ucs2", 1)
        [sent] = esms_sim.sent()
        assert sent["unicode"] is True
        assert "đã được tiếp nhận" in sent["content"]

    def test_esms_duplicate_answer_counts_as_sent(self, sims: Sims) -> None:
        """eSMS answers a repeated RequestId with 124: a receipt marked duplicate, one SMS at the gateway."""
        _, esms_sim = sims
        conn = connect(sims, gateways="esms")
        try:
            first = conn.send_notice(smsenv.notice(), "key-dup")
            second = conn.send_notice(smsenv.notice(), "key-dup")
        finally:
            conn.close()
        assert (first.duplicate, second.duplicate) == (False, True)
        assert second.message_id == first.message_id
        assert esms_sim.effect_counts() == {"key-dup": 1}
        assert sends(esms_sim) == 2  # guard: the repeat did reach the gateway


class TestFailover:
    def test_primary_down_fails_over_and_never_sends_twice(self, sims: Sims) -> None:
        """Viettel answering 503 sent nothing: eSMS takes every message, each once; the breaker then skips Viettel."""
        viettel, esms_sim = sims
        viettel.set_faults(down=True)
        conn = connect(sims, fail_max=3)
        try:
            receipts = [conn.send_notice(smsenv.notice(), f"k{i}") for i in range(6)]
        finally:
            conn.close()
        assert {r.provider for r in receipts} == {"esms"}
        assert esms_sim.effect_counts() == {f"k{i}": 1 for i in range(6)}
        assert viettel.sent() == []
        assert sends(viettel) == 3  # guard: the fault happened, then the open breaker kept requests away

    def test_back_to_the_primary_when_it_is_healthy(self, sims: Sims) -> None:
        """After the breaker's reset timeout, the trial goes to Viettel again, and traffic stays there."""
        viettel, esms_sim = sims
        viettel.set_faults(down=True)
        conn = connect(sims, fail_max=1)
        try:
            assert conn.send_notice(smsenv.notice(), "a").provider == "esms"
            assert conn.breaker_state == "half-open"  # one of two open
            viettel.set_faults(down=False)
            time.sleep(2.2)  # the breaker's reset_timeout (2s)
            after = [conn.send_notice(smsenv.notice(), f"b{i}").provider for i in range(3)]
        finally:
            conn.close()
        assert after == ["viettel"] * 3
        assert conn.breaker_state == "closed"
        assert viettel.effect_counts() == {"b0": 1, "b1": 1, "b2": 1}
        assert esms_sim.effect_counts() == {"a": 1}

    @pytest.mark.parametrize("fault", ["timeout", "apply_then_drop"])
    def test_ambiguous_outcome_is_reconciled_not_switched(self, sims: Sims, fault: str) -> None:
        """A send whose answer was lost stops the failover; the lookup then finds it at Viettel: sent once."""
        viettel, esms_sim = sims
        if fault == "timeout":
            viettel.set_faults(timeout=1.0, hang_s=5.0, apply_before_hang=True, only_ops=["send"])
        else:
            viettel.set_faults(apply_then_drop_rate=1.0, only_ops=["send"])
        conn = connect(sims, total="1s")
        try:
            with pytest.raises((TargetTimeout, TargetUnavailable)) as caught:
                conn.send_notice(smsenv.notice(), "amb")
            assert caught.value.maybe_applied
            found = conn.lookup("amb")
        finally:
            conn.close()
        assert isinstance(found, SmsReceipt)
        assert found.provider == "viettel"
        assert viettel.effect_counts() == {"amb": 1}
        assert esms_sim.requests() == [r for r in esms_sim.requests() if r["op"] == "lookup"]  # no send at eSMS
        assert [r["fault"] for r in viettel.requests() if r["op"] == "send"] == [fault]  # guard

    def test_lookup_that_cannot_ask_every_gateway_keeps_it_maybe_applied(self, sims: Sims) -> None:
        """eSMS has no trace, Viettel's lookup fails: no None (which would send again), a transient error."""
        viettel, _ = sims
        viettel.set_faults(down=True)
        conn = connect(sims)
        try:
            with pytest.raises(TransientError) as caught:
                conn.lookup("unknown")
        finally:
            conn.close()
        assert caught.value.maybe_applied

    def test_lookup_none_when_no_gateway_sent_it(self, sims: Sims) -> None:
        """Both gateways answer "never sent": the engine may send."""
        conn = connect(sims)
        try:
            assert conn.lookup("never") is None
        finally:
            conn.close()

    def test_every_breaker_open_parks_the_message(self, sims: Sims) -> None:
        """Both gateways down: once both breakers are open, nothing is sent and the error waits on the connector."""
        viettel, esms_sim = sims
        viettel.set_faults(down=True)
        esms_sim.set_faults(down=True)
        conn = connect(sims, fail_max=1)
        try:
            with pytest.raises(TargetUnavailable):
                conn.send_notice(smsenv.notice(), "x1")
            with pytest.raises(BreakerOpen) as caught:
                conn.send_notice(smsenv.notice(), "x2")
            assert conn.breaker_state == "open"
        finally:
            conn.close()
        assert caught.value.waits_on_connector
        assert caught.value.retry_after is not None
        assert (sends(viettel), sends(esms_sim)) == (1, 1)


class TestGatewayAnswers:
    def test_viettel_bad_number_is_rejected_without_failover(self, sims: Sims) -> None:
        """Viettel refusing the number is permanent (another gateway would refuse it too): eSMS is not tried."""
        viettel, esms_sim = sims
        viettel.set_faults(code_rate=1.0, code="phone")
        conn = connect(sims)
        try:
            with pytest.raises(TargetRejected) as caught:
                conn.send_notice(smsenv.notice(), "bad")
        finally:
            conn.close()
        assert (caught.value.field, caught.value.code) == ("phone", "viettel:phone")
        assert viettel.sent() == [] and esms_sim.requests() == []

    def test_esms_bad_number_is_rejected(self, sims: Sims) -> None:
        """eSMS code 108 is a TargetRejected on field phone, nothing sent."""
        _, esms_sim = sims
        esms_sim.set_faults(code_rate=1.0, code="108")
        conn = connect(sims, gateways="esms")
        try:
            with pytest.raises(TargetRejected) as caught:
                conn.send_notice(smsenv.notice(), "bad")
        finally:
            conn.close()
        assert (caught.value.field, caught.value.code) == ("phone", "esms:108")
        assert esms_sim.sent() == []

    @pytest.mark.parametrize(("first", "code"), [("viettel", "auth"), ("viettel", "balance"), ("esms", "101")])
    def test_account_refused_trips_that_gateway_and_fails_over(self, sims: Sims, first: str, code: str) -> None:
        """Our account refused (login, balance): nothing sent there, that breaker open, the other gateway sends."""
        viettel, esms_sim = sims
        refusing, other = (viettel, esms_sim) if first == "viettel" else (esms_sim, viettel)
        refusing.set_faults(code_rate=1.0, code=code)
        order = "viettel,esms" if first == "viettel" else "esms,viettel"
        conn = connect(sims, gateways=order)
        try:
            receipt = conn.send_notice(smsenv.notice(), "acct")
            states = [g.guard.breaker.state for g in conn.gateways]
        finally:
            conn.close()
        assert receipt.provider != first
        assert states == ["open", "closed"]
        assert refusing.sent() == []
        assert other.effect_counts() == {"acct": 1}

    @pytest.mark.parametrize("fault", ["garbage_rate", "hostile_rate"])
    def test_garbled_reply_is_maybe_applied_and_not_switched(self, sims: Sims, fault: str) -> None:
        """A broken or DOCTYPE reply after the send: garbled, maybe applied; eSMS is not tried."""
        viettel, esms_sim = sims
        viettel.set_faults(Faults.model_validate({fault: 1.0}))
        conn = connect(sims)
        try:
            with pytest.raises(TargetGarbled) as caught:
                conn.send_notice(smsenv.notice(), "garb")
        finally:
            conn.close()
        assert caught.value.maybe_applied
        assert viettel.effect_counts() == {"garb": 1}
        assert sends(esms_sim) == 0


class TestOtp:
    def test_otp_sent_at_once(self, sims: Sims) -> None:
        """An OTP goes out through the first gateway with its code."""
        viettel, _ = sims
        conn = connect(sims)
        try:
            receipt = conn.send_otp(smsenv.otp("135790"), "otp-1")
        finally:
            conn.close()
        assert receipt.provider == "viettel"
        assert "135790" in viettel.sent()[0]["content"]

    def test_expired_otp_is_never_sent(self, sims: Sims) -> None:
        """Less than otp_min_left before expiry: Expired (kind expired), no request at either gateway."""
        viettel, esms_sim = sims
        conn = connect(sims, otp_min_left="15s")
        try:
            with pytest.raises(Expired) as caught:
                conn.send_otp(smsenv.otp(ttl_s=10), "otp-late")
        finally:
            conn.close()
        assert caught.value.kind == "expired"
        assert viettel.requests() == [] and esms_sim.requests() == []

    def test_expiry_checked_before_the_failover_gateway(self, sims: Sims) -> None:
        """The clock passes the expiry while Viettel fails: eSMS is not tried, the OTP is dead, not late."""
        viettel, esms_sim = sims
        viettel.set_faults(down=True)
        conn = connect(sims, otp_min_left="15s")
        request = smsenv.otp(ttl_s=60)
        calls = iter([datetime.now(UTC), request.expires_at - timedelta(seconds=5)])
        conn.clock = lambda: next(calls)
        try:
            with pytest.raises(Expired):
                conn.send_otp(request, "otp-x")
        finally:
            conn.close()
        assert sends(viettel) == 1  # guard: Viettel was tried and failed
        assert esms_sim.requests() == []

    def test_code_masked_in_errors_and_logs(self, sims: Sims) -> None:
        """A gateway echoing the request in its error: the code is in no log line and not in the error."""
        viettel, esms_sim = sims
        viettel.set_faults(error_rate=1.0, error_status=500, echo_request=True)
        esms_sim.set_faults(error_rate=1.0, error_status=502, echo_request=True)
        out = io.StringIO()
        configure_logging("debug", "json", stream=out)
        try:
            conn = connect(sims)
            try:
                with pytest.raises(TargetUnavailable) as caught:
                    conn.send_otp(smsenv.otp("907531"), "otp-echo")
                get_logger("test").warning("after", error=str(caught.value))
            finally:
                conn.close()
        finally:
            structlog.reset_defaults()
            root = logging.getLogger()
            for handler in [h for h in root.handlers if isinstance(h, _BusHandler)]:
                root.removeHandler(handler)
        assert "907531" not in str(caught.value)
        logged = out.getvalue()
        assert "907531" not in logged
        assert "call_failed" in logged  # guard: the failing calls were logged (with the echo, masked)
        assert [r["fault"] for r in viettel.requests()] == ["error"]


class TestQuietHours:
    def test_notice_held_inside_the_window_otp_not(self, sims: Sims) -> None:
        """Inside the window a notice is Held until its end (no request); an OTP goes at once."""
        viettel, _ = sims
        conn = connect(sims, quiet_hours="21:00-07:00")
        conn.clock = lambda: datetime(2026, 11, 28, 22, 30, tzinfo=UTC) - timedelta(hours=0)  # 05:30 in Vietnam
        try:
            with pytest.raises(Held) as caught:
                conn.send_notice(smsenv.notice(), "quiet")
            conn.send_otp(smsenv.otp(), "otp-q")
        finally:
            conn.close()
        assert caught.value.waits_on_connector
        assert caught.value.retry_after == pytest.approx(90 * 60)
        assert viettel.effect_counts() == {"otp-q": 1}

    def test_window_edges(self) -> None:
        """Windows across midnight and within a day; outside gives 0."""
        night = QuietHours.parse("21:00-07:00")
        assert night is not None
        at = datetime(2026, 1, 1, 14, 0, tzinfo=UTC)  # 21:00 Vietnam
        assert night.left(at) == 10 * 3600
        assert night.left(datetime(2026, 1, 1, 0, 0, tzinfo=UTC)) == 0  # 07:00 Vietnam
        noon = QuietHours.parse("12:00-13:30")
        assert noon is not None
        assert noon.left(datetime(2026, 1, 1, 5, 0, tzinfo=UTC)) == 90 * 60

    @pytest.mark.parametrize("text", ["9:00-7:00", "21:00-21:00", "25:00-07:00", "21:00", "21:00:60-07:00"])
    def test_bad_window_refused(self, text: str) -> None:
        """A window not HH:MM-HH:MM, or empty, is a ConfigError naming the option."""
        with pytest.raises(ConfigError) as caught:
            QuietHours.parse(text)
        assert caught.value.field == "options.quiet_hours"


class TestConfigAndHealth:
    def test_unknown_gateway_and_missing_option(self, sims: Sims) -> None:
        """An unknown gateway, or a gateway without its option, is a ConfigError naming the option."""
        with pytest.raises(ConfigError, match="unknown SMS gateway 'vnpt'"):
            connect(sims, gateways="viettel,vnpt")
        spec = smsenv.spec(*sims)
        options = dict(spec.options)
        del options["esms_brandname"]
        with pytest.raises(ConfigError) as caught:
            SmsConnector("sms", spec.model_copy(update={"options": options}))
        assert caught.value.field == "options.esms_brandname"

    def test_probe_up_degraded_down(self, sims: Sims) -> None:
        """Up with both answering, degraded with the primary down, down with both."""
        viettel, esms_sim = sims
        conn = connect(sims)
        try:
            assert conn.probe().state == "up"
            viettel.set_faults(down=True)
            assert conn.probe().state == "degraded"
            esms_sim.set_faults(down=True)
            health = conn.probe()
        finally:
            conn.close()
        assert health.state == "down"
        assert "sms.viettel" in health.detail and "sms.esms" in health.detail
