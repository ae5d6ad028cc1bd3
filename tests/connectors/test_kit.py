"""The connector kit's parts on their own: the breaker's announcements, the guard's verdicts, the credential,
the probe rule and the one declaration per operation.

These are unit tests of pure logic and threading (no network: the connectors' own tests run the kit against
the simulators on real sockets). Each test says the behaviour it pins in its docstring.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from concurrently import run_concurrently
from pydantic import BaseModel, SecretStr
from structlog.testing import capture_logs
from wallclock import SLACK_S, assert_within

from config.model import BreakerSpec, ConnectorSpec
from connectors.kit import (
    Breaker,
    CachedCredential,
    Credential,
    Declared,
    Guard,
    KitConnector,
    Refused,
    Watchdog,
    operation,
    run_probe,
)
from schemas.errors import (
    BreakerOpen,
    CredentialsRefused,
    MappingError,
    TargetRejected,
    TargetTimeout,
    TargetUnavailable,
)


def spec(**overrides: Any) -> ConnectorSpec:
    """A connector spec with a breaker of ``fail_max`` 2 and a 0.2 s reset."""
    data: dict[str, Any] = {"type": "x", "breaker": {"fail_max": 2, "reset_timeout": "200ms"}, **overrides}
    return ConnectorSpec.model_validate(data)


def fail(guard: Guard, error: Exception | None = None) -> None:
    """One guarded call that raises ``error`` (a 503 by default)."""
    with pytest.raises(type(error) if error is not None else TargetUnavailable), guard.call(guard.deadline()):
        raise error if error is not None else TargetUnavailable("HTTP 503 (not applied)")


def succeed(guard: Guard, **kwargs: Any) -> None:
    """One guarded call that answers."""
    with guard.call(guard.deadline(), **kwargs):
        pass


class TestBreaker:
    """Each state change is said once, at once, with what it turned away, and told outside every lock."""

    def test_opening_turning_away_and_closing_are_each_logged_once_with_the_parked_count(self) -> None:
        """Open after fail_max ▶ breaker_opened; 5 calls turned away; a good trial ▶ breaker_closed parked=5."""
        guard = Guard("t", spec(), log_as="t")
        with capture_logs() as logs:
            fail(guard)
            fail(guard)
            for _ in range(5):
                with pytest.raises(BreakerOpen) as caught:
                    succeed(guard)
            assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 0.2
            time.sleep(0.25)
            succeed(guard)

        changes = [(e["event"], e.get("parked")) for e in logs if e["event"].startswith("breaker_")]
        assert changes == [("breaker_opened", 0), ("breaker_closed", 5)]
        opened = next(e for e in logs if e["event"] == "breaker_opened")
        assert opened["log_level"] == "warning"
        assert "HTTP 503" in opened["reason"]
        assert guard.breaker.state == "closed"

    def test_a_failed_trial_is_one_reopened_line_and_the_next_trial_waits_a_whole_reset(self) -> None:
        """open ▶ (half-open ▶ open) is said as one breaker_reopened, not two changes; retry_after restarts."""
        guard = Guard("t", spec(), log_as="t")
        told: list[tuple[str, str]] = []
        guard.breaker.subscribe(lambda old, new: told.append((old, new)))
        fail(guard)
        fail(guard)
        time.sleep(0.25)
        with capture_logs() as logs:
            fail(guard)  # the trial

        assert [e["event"] for e in logs if e["event"].startswith("breaker_")] == ["breaker_reopened"]
        assert told == [("closed", "open"), ("open", "open")]
        assert guard.breaker.retry_after is not None and guard.breaker.retry_after > 0.1

    def test_subscribers_are_told_outside_the_breaker_lock_and_may_read_any_breaker(self) -> None:
        """A subscriber that reads both breakers from another thread does not deadlock (pybreaker's RLock)."""
        a, b = Guard("a", spec(), log_as="t"), Guard("b", spec(), log_as="t")
        seen: list[str] = []

        def read_from_another_thread(_old: str, _new: str) -> None:
            reader = threading.Thread(target=lambda: seen.append(a.breaker.state + "/" + b.breaker.state))
            reader.start()
            reader.join(2)
            assert not reader.is_alive(), "reading a breaker from a subscriber blocked"

        a.breaker.subscribe(read_from_another_thread)
        fail(a)
        fail(a)

        assert seen == ["open/closed"]

    def test_a_broken_subscriber_never_changes_the_call(self) -> None:
        """A subscriber that raises is logged; the call still raises its own error and the breaker opens."""
        guard = Guard("t", spec(), log_as="t")

        def broken(_old: str, _new: str) -> None:
            raise RuntimeError("a broken subscriber")

        guard.breaker.subscribe(broken)
        with capture_logs() as logs:
            fail(guard)
            fail(guard)

        assert guard.breaker.state == "open"
        assert [e["event"] for e in logs if e["event"] == "breaker_listener_failed"] == ["breaker_listener_failed"]

    def test_trip_opens_at_once_and_a_second_trip_only_rearms(self) -> None:
        """trip() opens a closed breaker (one warning) and, while open, restarts its reset without a line."""
        breaker = Breaker("t", BreakerSpec(fail_max=10, reset_timeout="200ms"))
        with capture_logs() as logs:
            breaker.trip("credentials refused")
            time.sleep(0.15)
            breaker.trip("credentials refused")

        assert [e["event"] for e in logs if e["log_level"] != "debug"] == ["breaker_opened"]
        assert breaker.state == "open"
        assert breaker.retry_after is not None and breaker.retry_after > 0.1
        assert breaker.reason == "credentials refused"


class TestGuard:
    """What counts against the target, what counts for it, and what gives no verdict."""

    def test_answers_count_for_the_target_and_timeouts_against_it(self) -> None:
        """A 4xx-style rejection is an answer: two of them leave the breaker closed; two timeouts open it."""
        guard = Guard("t", spec(), log_as="t")
        fail(guard, TargetRejected("HTTP 422", code="422"))
        fail(guard, TargetRejected("HTTP 422", code="422"))
        assert guard.breaker.state == "closed"
        fail(guard, TargetTimeout("no answer"))
        fail(guard, TargetTimeout("no answer"))
        assert guard.breaker.state == "open"

    def test_a_login_success_does_not_close_a_half_open_breaker(self) -> None:
        """judge=False (a login): the trial slot is freed without a verdict; the next real call decides."""
        guard = Guard("t", spec(), log_as="t")
        fail(guard)
        fail(guard)
        time.sleep(0.25)

        succeed(guard, judge=False)
        assert guard.breaker.state == "open"
        succeed(guard)
        assert guard.breaker.state == "closed"

    def test_a_refused_credential_frees_the_trial_without_a_verdict(self) -> None:
        """Refused raised inside the call: no failure counted, no success, and the trial slot is free again."""
        guard = Guard("t", spec(), log_as="t")
        fail(guard)
        fail(guard)
        time.sleep(0.25)
        with pytest.raises(Refused), guard.call(guard.deadline()):
            raise Refused("HTTP 401")

        assert guard.breaker.state == "open"
        succeed(guard)  # admitted as the trial: the slot was freed
        assert guard.breaker.state == "closed"

    def test_failures_are_logged_under_the_connectors_prefix_with_the_kind(self) -> None:
        """One ``<prefix>.call_failed`` per failed call, with the request's fields and the error kind."""
        guard = Guard("t", spec(), log_as="soapx")
        with capture_logs() as logs, pytest.raises(TargetTimeout), guard.call(guard.deadline(), operation="Op"):
            raise TargetTimeout("slow")

        [line] = [e for e in logs if e["event"] == "soapx.call_failed"]
        assert (line["operation"], line["error_kind"], line["maybe_applied"]) == ("Op", "timeout", True)

    def test_an_open_breaker_refuses_before_the_rate_limit_waits(self) -> None:
        """With a 1/s limit already spent, an open breaker still answers BreakerOpen at once."""
        guard = Guard("t", spec(rate_limit=1), log_as="t")
        fail(guard)
        fail(guard)  # waits ~1 s for its slot
        started = time.monotonic()
        for _ in range(10):  # queued behind the limit they would take 10 x 1 s; refused at once, about 0
            with pytest.raises(BreakerOpen):
                succeed(guard)
        assert_within(time.monotonic() - started, 0.5, "ten calls on an open breaker under a 1/s rate limit")
        assert 0.5 + SLACK_S < 10 * 1.0, "the contrast must survive the machine's slack"


class TestCredential:
    """One credential for every thread; renewed once when refused; the bus's own refused said once."""

    def make(self, answers: list[str | None], breaker: Breaker | None = None) -> tuple[CachedCredential, list[str]]:
        """A credential whose logins hand out ``answers`` in turn (None: the issuer refuses)."""
        issued: list[str] = []

        def fetch(deadline: float, guard: bool) -> Credential:
            del deadline, guard
            value = answers[len(issued)] if len(issued) < len(answers) else answers[-1]
            issued.append(str(value))
            if value is None:
                raise Refused("error_code -1: wrong password")
            return Credential.lasting(SecretStr(value), 3600)

        breaker = breaker or Breaker("t", BreakerSpec(fail_max=5, reset_timeout="60s"))
        return CachedCredential(
            "t", fetch, breaker=breaker, what="session", issuer="the issuer", target="the target"
        ), issued

    def test_a_refused_credential_is_renewed_once_and_the_request_sent_again(self) -> None:
        """The first session refused ▶ one new login ▶ the request with the new session goes through."""
        cred, issued = self.make(["s1", "s2"])
        sent: list[str] = []

        def send(c: Credential) -> str:
            sent.append(c.value.get_secret_value())
            if c.value.get_secret_value() == "s1":
                raise Refused("soap:Client.Session")
            return "ok"

        assert cred.use(time.monotonic() + 5, send) == "ok"
        assert issued == ["s1", "s2"]
        assert sent == ["s1", "s2"]

    def test_a_fresh_credential_refused_too_is_credentials_refused_and_opens_the_breaker(self) -> None:
        """Refused twice ▶ CredentialsRefused (waits on the connector), breaker open, one ERROR line."""
        breaker = Breaker("t", BreakerSpec(fail_max=5, reset_timeout="60s"))
        cred, _ = self.make(["s1", "s2"], breaker)

        def send(c: Credential) -> str:
            raise Refused("soap:Client.Session")

        with capture_logs() as logs, pytest.raises(CredentialsRefused) as caught:
            cred.use(time.monotonic() + 5, send)

        assert caught.value.waits_on_connector and not caught.value.maybe_applied
        assert "the target refused a freshly issued session" in str(caught.value)
        assert breaker.state == "open"
        assert [e["event"] for e in logs if e["log_level"] == "error"] == ["credentials_refused"]

    def test_the_refusal_is_said_once_per_state_change_and_its_end_once(self) -> None:
        """Three refused logins ▶ one credentials_refused ERROR; the next good login ▶ one credentials_accepted."""
        cred, issued = self.make([None, None, None, "s4"])
        with capture_logs() as logs:
            for _ in range(3):
                with pytest.raises(CredentialsRefused):
                    cred.use(time.monotonic() + 5, lambda _c: "ok")
            assert cred.refused
            assert cred.use(time.monotonic() + 5, lambda _c: "ok") == "ok"

        assert [e["event"] for e in logs if e["event"].startswith("credentials_")] == [
            "credentials_refused",
            "credentials_accepted",
        ]
        assert next(e for e in logs if e["event"] == "credentials_accepted")["refusals"] == 3
        assert not cred.refused
        assert issued == ["None", "None", "None", "s4"]

    def test_threads_share_one_login(self) -> None:
        """Eight threads at once: one login, every thread gets its answer."""
        cred, issued = self.make(["s1"])
        results: list[str] = []

        def work() -> None:
            results.append(cred.use(time.monotonic() + 5, lambda c: c.value.get_secret_value()))

        run_concurrently(work, [()] * 8, timeout=5)
        assert results == ["s1"] * 8
        assert issued == ["s1"]

    def test_lifetime_renews_a_tenth_early_at_most_thirty_seconds(self) -> None:
        """1 s ▶ renew at 0.9 s; 3600 s ▶ at 3570 s; no lifetime ▶ never by time."""
        now = time.monotonic()
        assert Credential.lasting(SecretStr("x"), 1).renew_at == pytest.approx(now + 0.9, abs=0.05)
        assert Credential.lasting(SecretStr("x"), 3600).renew_at == pytest.approx(now + 3570, abs=0.05)
        assert Credential.lasting(SecretStr("x"), None).renew_at == float("inf")


class TestProbe:
    """The probe rule of every connector."""

    def test_the_rule_down_degraded_slow_up(self) -> None:
        """Raises ▶ down with the kind; breaker not closed ▶ degraded; slow ▶ degraded; else up."""
        breaker = Breaker("t", BreakerSpec(fail_max=1, reset_timeout="60s"))

        def raises() -> float | None:
            raise TargetUnavailable("connection refused")

        down = run_probe(raises, breaker=breaker, degraded_ms=100, answered="ok")
        assert (down.state, down.detail) == ("down", "unavailable: connection refused")
        assert run_probe(lambda: 150.0, breaker=breaker, degraded_ms=100, answered="ok").state == "degraded"
        up = run_probe(lambda: 5.0, breaker=breaker, degraded_ms=100, answered="ok")
        assert (up.state, up.detail, up.latency_ms) == ("up", "ok", 5.0)
        breaker.trip("test")
        degraded = run_probe(lambda: 5.0, breaker=breaker, degraded_ms=100, answered="ok")
        assert (degraded.state, degraded.detail) == ("degraded", "answers, but the breaker is open")

    def test_without_its_own_latency_the_whole_call_is_timed(self) -> None:
        """A check returning None is timed whole."""
        breaker = Breaker("t", BreakerSpec())

        def slow() -> float | None:
            time.sleep(0.05)
            return None

        health = run_probe(slow, breaker=breaker, degraded_ms=10, answered="ok")
        assert health.state == "degraded"
        assert health.latency_ms is not None and health.latency_ms >= 50


class Ask(BaseModel):
    """A request."""

    n: int


class Answer(BaseModel):
    """A reply."""

    n: int
    key: str = ""


class Demo(KitConnector):
    """A connector declared on the kit, for the declaration tests."""

    def __init__(self) -> None:
        super().__init__("demo", spec(), guard=Guard("demo", spec(), log_as="demo"))

    @operation(Ask, Answer, lookup="find")
    def send(self, request: Ask, idempotency_key: str) -> Answer:
        """Send one thing.

        More prose that ``check`` does not show.
        """
        return Answer(n=request.n, key=idempotency_key)

    def find(self, idempotency_key: str) -> Answer | None:
        """Never found."""
        del idempotency_key
        return None

    @operation(Ask, Answer, effect=False, doc="Read one thing.")
    def read(self, request: Ask, idempotency_key: str = "") -> Answer:
        """Not this line."""
        del idempotency_key
        return Answer(n=request.n)

    def check(self) -> float | None:
        """Nothing to reach."""
        return 0.0

    def close(self) -> None:
        """Nothing to release."""


class TestDeclaration:
    """One declaration per operation serves check (class) and the engine (instance)."""

    def test_the_class_describes_and_the_instance_binds_the_same_operations(self) -> None:
        """OPERATIONS and operations() come from the decorators: models, effect, lookup, doc."""
        specs = Demo.OPERATIONS
        assert set(specs) == {"send", "read"}
        assert (specs["send"].request, specs["send"].reply, specs["send"].effect) == (Ask, Answer, True)
        assert specs["send"].has_lookup and not specs["read"].has_lookup
        assert specs["send"].doc == "Send one thing."
        assert specs["read"].doc == "Read one thing."

        ops = Demo().operations()
        assert ops["send"].call(Ask(n=1), "k") == Answer(n=1, key="k")
        assert ops["send"].lookup is not None and ops["send"].lookup("k") is None
        assert ops["read"].effect is False and ops["read"].lookup is None

    def test_a_wrong_request_model_is_a_mapping_error(self) -> None:
        """The engine hands the operation another model ▶ MappingError naming both."""
        with pytest.raises(MappingError, match="demo takes Ask, got Answer"):
            Demo().operations()["send"].call(Answer(n=1), "k")

    def test_a_lookup_name_that_is_no_method_fails_when_the_class_is_defined(self) -> None:
        """A typo in lookup= is a TypeError at import, not a surprise at the first reclaim."""
        with pytest.raises(TypeError, match="lookup 'fnid'"):

            class Typo(Declared):
                @operation(Ask, Answer, lookup="fnid")
                def send(self, request: Ask, idempotency_key: str) -> Answer:
                    return Answer(n=request.n, key=idempotency_key)

                def find(self, idempotency_key: str) -> Answer | None:
                    del idempotency_key
                    return None

    def test_a_read_with_a_lookup_is_refused(self) -> None:
        """A read has nothing to reconcile."""
        with pytest.raises(TypeError, match="nothing to look up"):
            operation(Ask, Answer, effect=False, lookup="find")


class TestWatchdog:
    """An armed action runs at its time, however it was armed among others; a disarmed one never runs."""

    def test_an_earlier_deadline_armed_after_a_later_one_runs_on_time(self) -> None:
        """Arming a deadline before the one the thread sleeps towards wakes it: the early one is not late."""
        dog = Watchdog()
        fired: dict[str, float] = {}
        done = threading.Event()
        start = time.monotonic()

        def at(name: str) -> None:
            fired[name] = time.monotonic()
            done.set()

        dog.arm(start + 30, lambda: at("late"))
        dog.arm(start + 0.1, lambda: at("early"))
        assert done.wait(5)
        assert "late" not in fired
        assert fired["early"] - start >= 0.1
        assert_within(fired["early"] - start, 0.1, "the early action")

    def test_disarmed_actions_never_run_and_a_live_one_behind_them_does(self) -> None:
        """Many disarmed entries at the head of the heap are dropped; the live one after them runs once."""
        dog = Watchdog()
        ran: list[str] = []
        done = threading.Event()
        start = time.monotonic()
        tickets = [dog.arm(start + 0.05 + i / 10_000, lambda: ran.append("disarmed")) for i in range(100)]

        def live() -> None:
            ran.append("live")
            done.set()

        dog.arm(start + 0.15, live)
        for ticket in tickets:
            dog.disarm(ticket)
        assert done.wait(5)
        time.sleep(0.1)
        assert ran == ["live"]

    def test_arms_after_the_first_do_not_wake_the_thread(self) -> None:
        """A later deadline than the one the thread sleeps towards is not a reason to wake it (issue 15)."""
        dog = Watchdog()
        start = time.monotonic()
        dog.arm(start + 5, lambda: None)
        time.sleep(0.05)  # the thread sleeps towards start + 5
        notified = 0
        real_notify = dog._cond.notify

        def counting_notify(n: int = 1) -> None:
            nonlocal notified
            notified += 1
            real_notify(n)

        dog._cond.notify = counting_notify  # type: ignore[method-assign]
        for i in range(50):
            dog.disarm(dog.arm(start + 6 + i, lambda: None))
        assert notified == 0
