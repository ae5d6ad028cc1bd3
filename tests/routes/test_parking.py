"""How long a message the connector turned away waits: its parks climb the route's backoff (issue 10 item 2)."""

from __future__ import annotations

import pytest

from routes.parking import PARKS_HEADER, park_delay, parks_before

DEFAULT = (5.0, 30.0, 120.0, 600.0, 3600.0)


@pytest.mark.parametrize(
    ("backoff", "parks", "retry_after", "expected"),
    [
        (DEFAULT, 1, None, 5.0),  # no breaker time known: the ladder
        (DEFAULT, 3, None, 120.0),
        (DEFAULT, 9, None, 3600.0),  # the last step repeats
        (DEFAULT, 1, 12.0, 30.0),  # never back while the breaker is certainly still open
        (DEFAULT, 1, 4.0, 5.0),
        (DEFAULT, 1, 0.0, 5.0),  # half-open, its trial out: the first step
        (DEFAULT, 4, 12.0, 600.0),  # the ladder, when it is longer
        ((1.0, 2.0, 4.0), 1, 5.0, 4.0),  # no step covers the time left: the longest
        ((0.3, 0.6), 2, 0.1, 0.6),
    ],
)
def test_park_delay_climbs_the_ladder_and_covers_the_breakers_time_left(
    backoff: tuple[float, ...], parks: int, retry_after: float | None, expected: float
) -> None:
    """The n-th park waits backoff[n-1], never less than the first step covering retry_after."""
    assert park_delay(backoff, parks, retry_after) == expected


def test_every_delay_is_a_step_of_the_backoff() -> None:
    """A delay queue exists only for the route's own steps: a park never names another."""
    for parks in range(1, 12):
        for retry_after in (None, 0.0, 0.5, 7.0, 29.0, 31.0, 10_000.0):
            assert park_delay(DEFAULT, parks, retry_after) in DEFAULT


@pytest.mark.parametrize(("value", "expected"), [(None, 0), (3, 3), (-1, 0), ("2", 0), (True, 0)])
def test_parks_before_reads_only_a_sane_count(value: object, expected: int) -> None:
    """A missing, negative or non-integer header counts as no park."""
    headers = {} if value is None else {PARKS_HEADER: value}
    assert parks_before(headers) == expected
