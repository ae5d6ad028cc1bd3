"""A route's ``from.schedule``: what ``check`` refuses (FILE:LINE, field), and its firing times as pure functions.

Two workers must agree on every firing time without talking to each other (the tick id is derived from it),
so the times are tested as functions of ``now``: the interval grid, cron in the province's time zone, the
latest firing due after downtime (coalesced) and how late it is.
"""

from __future__ import annotations

import re
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from config.model import ScheduleSpec
from routes.model import check_config
from routes.schedule import Schedule, ScheduleError, tick_id

README = Path(__file__).resolve().parents[2] / "README.md"

ROUTES = textwrap.dedent("""\
    routes:
      - name: poll-noop
        from:
          schedule: {schedule}
        adapter: {adapter}
        to: noop.poll
""")
CONNECTORS = "connectors:\n  noop:\n    type: noop\n"


def _check(tmp_path: Path, schedule: str, adapter: str = "builtin.tick") -> list[str]:
    (tmp_path / "routes.yaml").write_text(ROUTES.format(schedule=schedule, adapter=adapter), encoding="utf-8")
    (tmp_path / "connectors.yaml").write_text(CONNECTORS, encoding="utf-8")
    return check_config(tmp_path)[1]


class TestCheck:
    """``igate-bus check`` passes a schedule that can fire and refuses one that cannot, naming file and line."""

    @pytest.mark.parametrize(
        "schedule",
        [
            "{every: 5m}",
            "{cron: '0 2 * * *'}",
            "{cron: '*/15 7-17 * * mon-fri', timezone: Asia/Bangkok, misfire: skip, grace: 2m}",
            "{every: 1s, misfire: run_once}",
        ],
    )
    def test_a_schedule_that_can_fire_passes(self, tmp_path: Path, schedule: str) -> None:
        """Interval or cron, with or without time zone, misfire policy and grace."""
        assert _check(tmp_path, schedule) == ["ok: 1 route, 1 connector"]

    @pytest.mark.parametrize(
        ("schedule", "field", "words"),
        [
            ("{cron: '61 2 * * *'}", "from.schedule.cron", "the last value (61) is higher than the maximum value (59)"),
            ("{cron: '0 2 * *'}", "from.schedule.cron", "give 5 fields"),
            ("{cron: '0 25 * * *'}", "from.schedule.cron", "higher than the maximum value (23)"),
            ("{cron: '0 0 31 2 *'}", "from.schedule.cron", "names no date that exists: it would never fire"),
            ("{cron: '@daily'}", "from.schedule.cron", "give 5 fields"),
            ("{every: 0s}", "from.schedule.every", "more than 0"),
            ("{every: 31d}", "from.schedule.every", "at most"),
            ("{every: 5m, timezone: Asia/Hanoi_City}", "from.schedule.timezone", "unknown time zone 'Asia/Hanoi_City'"),
            ("{every: 5m, misfire: later}", "from.schedule.misfire", "'run_once' or 'skip'"),
            ("{every: 5m, cron: '0 2 * * *'}", "from.schedule", "exactly one of every"),
            ("{timezone: UTC}", "from.schedule", "exactly one of every"),
            ("{every: 500ms}", "from.schedule.every", "at least 1s"),
            ("{every: 5m, at: 2}", "from.schedule.at", "unknown field; known fields: every, cron"),
            ("'every 12h'", "from.schedule", "write the schedule as a mapping"),
        ],
    )
    def test_a_schedule_that_cannot_fire_is_refused_with_its_line(
        self, tmp_path: Path, schedule: str, field: str, words: str
    ) -> None:
        """The error names routes.yaml, the schedule's line, the route and the field: never a traceback."""
        [problem] = _check(tmp_path, schedule)
        assert problem.startswith(f"{tmp_path / 'routes.yaml'}:4: route poll-noop: {field}: "), problem
        assert words in problem, problem

    def test_an_adapter_that_cannot_take_a_tick_is_refused(self, tmp_path: Path) -> None:
        """A route whose schedule would fire ticks its adapter cannot map is refused before anything runs."""
        [problem] = _check(tmp_path, "{every: 5m}", adapter="builtin.ping")
        assert problem.startswith(f"{tmp_path / 'routes.yaml'}:5: route poll-noop: adapter: "), problem
        assert "does not accept bus.tick (it accepts bus.ping)" in problem

    def test_the_readme_example_passes(self, tmp_path: Path) -> None:
        """The polling route the README shows checks ok (examples are tests)."""
        blocks = re.findall(r"```yaml\n(# routes.yaml \(a polling route.*?)```", README.read_text(), flags=re.DOTALL)
        assert len(blocks) == 1, "the README's polling route example is gone"
        (tmp_path / "routes.yaml").write_text(blocks[0], encoding="utf-8")
        (tmp_path / "connectors.yaml").write_text(CONNECTORS, encoding="utf-8")
        assert check_config(tmp_path)[1] == ["ok: 1 route, 1 connector"]

    def test_binding_bus_tick_is_refused(self, tmp_path: Path) -> None:
        """Ticks come only from the route's schedule: a binding for them would take ticks anyone published."""
        routes = ROUTES.format(schedule="{every: 5m}", adapter="builtin.tick").replace(
            "      schedule:", "      events: [bus.tick]\n      schedule:"
        )
        (tmp_path / "routes.yaml").write_text(routes, encoding="utf-8")
        (tmp_path / "connectors.yaml").write_text(CONNECTORS, encoding="utf-8")
        [problem] = check_config(tmp_path)[1]
        assert problem.startswith(f"{tmp_path / 'routes.yaml'}:4: route poll-noop: from.events[0]: "), problem
        assert "not bound" in problem


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


class TestTimes:
    """Firing times: the same on every worker, in the schedule's zone, coalesced after downtime."""

    def test_an_interval_fires_on_a_grid_every_worker_computes_alike(self) -> None:
        """``every: 5m`` fires at :00, :05, ... whatever time a worker started."""
        schedule = Schedule(ScheduleSpec(every="5m"))
        assert schedule.next_after(_at("2026-11-28T23:01:40.9+00:00")) == _at("2026-11-28T23:05:00+00:00")
        assert schedule.next_after(_at("2026-11-28T23:05:00+00:00")) == _at("2026-11-28T23:10:00+00:00")

    def test_cron_reads_its_fields_in_the_schedule_zone(self) -> None:
        """``0 2 * * *`` is 02:00 in Ho Chi Minh City (19:00 UTC the day before) unless another zone is named."""
        vn = Schedule(ScheduleSpec(cron="0 2 * * *"))
        utc = Schedule(ScheduleSpec(cron="0 2 * * *", timezone="UTC"))
        assert vn.next_after(_at("2026-11-28T12:00:00+00:00")) == _at("2026-11-28T19:00:00+00:00")
        assert utc.next_after(_at("2026-11-28T12:00:00+00:00")) == _at("2026-11-29T02:00:00+00:00")

    def test_nothing_is_due_before_the_next_firing(self) -> None:
        """A wake-up ahead of time fires nothing."""
        schedule = Schedule(ScheduleSpec(every="1m"))
        assert schedule.due(_at("2026-11-28T23:05:00+00:00"), _at("2026-11-28T23:04:59+00:00")) is None

    @pytest.mark.parametrize("spec", [ScheduleSpec(every="1h"), ScheduleSpec(cron="0 * * * *", timezone="UTC")])
    def test_firings_missed_while_down_are_counted_oldest_first(self, spec: ScheduleSpec) -> None:
        """Down from 02:00 to 05:20: four firings due, the oldest 02:00 (3 h 20 min late), the latest 05:00."""
        due = Schedule(spec).due(_at("2026-11-28T02:00:00+00:00"), _at("2026-11-28T05:20:00+00:00"))
        assert due is not None
        assert due.first == (_at("2026-11-28T02:00:00+00:00"), _at("2026-11-28T03:00:00+00:00"))
        assert (due.latest, due.count, due.late_s) == (_at("2026-11-28T05:00:00+00:00"), 4, 12000.0)

    def test_tick_ids_derive_from_route_and_time_only(self) -> None:
        """Same route and time (in any zone) ▶ same id; another route or time ▶ another id."""
        at = _at("2026-11-28T19:00:00+00:00")
        assert tick_id("poll", at) == tick_id("poll", at.astimezone(Schedule(ScheduleSpec(every="1m")).zone))
        assert tick_id("poll", at) != tick_id("poll-2", at)
        assert tick_id("poll", at) != tick_id("poll", at + timedelta(seconds=1))

    def test_the_apscheduler_trigger_wakes_at_the_firing_times(self) -> None:
        """The wake-up trigger and the store's arithmetic agree (a wake-up on time finds the firing due)."""
        for spec in (ScheduleSpec(every="5m"), ScheduleSpec(cron="*/5 * * * *")):
            schedule = Schedule(spec)
            now = datetime.now(UTC)
            assert schedule.trigger().get_next_fire_time(None, now) == schedule.next_after(now)

    def test_a_cron_apscheduler_refuses_is_a_schedule_error(self) -> None:
        """The worker never starts with a schedule that cannot fire (``check`` said so first)."""
        with pytest.raises(ScheduleError, match="'0 2 31 2 x'"):
            Schedule(ScheduleSpec(cron="0 2 31 2 x"))
