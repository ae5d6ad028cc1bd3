"""The schedules part of ``igate-bus status``: each scheduled route's owner, last and next run, last outcome.

Where it sits: outside the message path, reading the schedules' rows (``routes/schedule_store.py``) from the
store every worker shares, so it shows the whole deployment whichever host asks. A schedule no worker has run
yet has no row: it is shown as ``never run`` with its next firing computed here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bus.wiring import App
    from routes.model import Route


class ScheduleStatus(BaseModel):
    """One scheduled route in ``status``."""

    route: str
    schedule: str = Field(description="``every 5m`` or ``cron 0 2 * * * (Asia/Ho_Chi_Minh)``.")
    misfire: str
    owner: str | None = Field(description="The worker holding the lease; null when nobody does now.")
    lease_until: datetime | None = None
    last_run: datetime | None = Field(default=None, description="When the last tick was fired.")
    last_scheduled_at: datetime | None = None
    next_run: datetime | None
    last_outcome: str | None = None
    last_outcome_at: datetime | None = None
    cursor: str | None = None


class SchedulesCheck(BaseModel):
    """The schedules, or why they could not be read."""

    ok: bool
    error: str | None = None
    schedules: list[ScheduleStatus] = Field(default_factory=list)


def gather_schedules(app: App, routes: Sequence[Route]) -> SchedulesCheck | None:
    """Read the rows of the routes with a schedule; None when no route has one. Never raises."""
    from bus.wiring import schedule_store
    from routes.schedule import Schedule

    scheduled = [r for r in routes if r.spec.from_.schedule is not None]
    if not scheduled:
        return None
    try:
        rows = {row.route: row for row in schedule_store(app).rows()}
    except Exception as exc:
        return SchedulesCheck(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
    now = datetime.now(UTC)
    out = []
    for route in scheduled:
        spec = route.spec.from_.schedule
        assert spec is not None  # noqa: S101 - filtered above
        row = rows.get(route.name)
        if row is None:
            out.append(
                ScheduleStatus(
                    route=route.name,
                    schedule=spec.describe(),
                    misfire=spec.misfire,
                    owner=None,
                    next_run=Schedule(spec).next_after(now),
                    last_outcome="never run",
                )
            )
            continue
        out.append(
            ScheduleStatus(
                route=route.name,
                schedule=spec.describe(),
                misfire=spec.misfire,
                owner=row.owner if row.owned(now) else None,
                lease_until=row.lease_until,
                last_run=row.last_fired_at,
                last_scheduled_at=row.last_scheduled_at,
                next_run=row.next_run_at,
                last_outcome=row.last_outcome,
                last_outcome_at=row.last_outcome_at,
                cursor=row.cursor,
            )
        )
    return SchedulesCheck(ok=True, schedules=out)


def render_schedules(check: SchedulesCheck | None, console: object) -> None:
    """Print the schedules as a table after the routes (rich ``Console``)."""
    from rich.console import Console
    from rich.table import Table

    if check is None or not isinstance(console, Console):
        return
    if not check.ok:
        console.print(f"schedules: cannot read the store: {check.error}", markup=False)
        return
    table = Table(title="schedules", title_justify="left")
    for col in ("route", "schedule", "owner", "last run", "next run", "last outcome"):
        table.add_column(col, no_wrap=True)
    for s in check.schedules:
        table.add_row(
            s.route,
            f"{s.schedule}, misfire {s.misfire}",
            s.owner or "[yellow]nobody[/]",
            _when(s.last_run),
            _when(s.next_run),
            s.last_outcome or "-",
        )
    console.print(table)


def _when(at: datetime | None) -> str:
    return "-" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
