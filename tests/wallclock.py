"""Wall-clock bounds in tests, for a shared machine with 2 CPUs under load.

A test may check that something happens *at once*, or *by its deadline* rather than never: a missing
timeout, a retry where none belongs, a parser that backtracks, a breaker that queues. It may not check how
fast: that is a measurement, and belongs in ``bench/``. The bound is the figure the design promises plus
:data:`SLACK_S`, what scheduling, garbage collection and the other processes of a loaded 2-CPU machine add
to any single measurement; every bug these tests are there for costs more than that (a hang, a retry tier,
an exponential parse), and a test whose contrast is smaller is built to widen it instead.
"""

from __future__ import annotations

from typing import Final

#: what a loaded 2-CPU machine may add to one wall-clock measurement
SLACK_S: Final = 3.0


def assert_within(elapsed_s: float, design_s: float, what: str) -> None:
    """Fail unless ``elapsed_s`` is under the design's ``design_s`` plus :data:`SLACK_S`.

    Args:
        elapsed_s: what was measured.
        design_s: what the design promises (a timeout, a deadline, "at once" as a small figure).
        what: the thing measured, for the failure message.
    """
    assert elapsed_s < design_s + SLACK_S, (
        f"{what} took {elapsed_s:.2f} s; the design allows {design_s:g} s (+{SLACK_S:g} s for a loaded machine)"
    )
