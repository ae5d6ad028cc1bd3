"""The portal's answer codes: which mean success, one list for the whole bus (issue 10 item 17)."""

from __future__ import annotations

import pytest

from schemas.nps import OK_CODES, NpsReply, TraCuuHoSoReply
from schemas.results import PORTAL_OK_CODES, DvcqgSyncResult


@pytest.mark.parametrize("code", ["0", "00", "3", "-3"])
def test_success_codes_of_domain_section_2_are_ok_everywhere(code: str) -> None:
    """ "0" (TH), "00" (OC), and "3"/"-3", which TH also accepts: ok for the reply and for the result event."""
    assert NpsReply(error_code=code).ok
    assert DvcqgSyncResult(service="DongBoHoSoMC", error_code=code).ok


@pytest.mark.parametrize("code", ["1", "2", "4", "-1", "30", "03", "-0"])
def test_other_codes_are_not_success(code: str) -> None:
    """A refusal, an existing record, not found, a bad login, and look-alikes are not success."""
    assert not NpsReply(error_code=code).ok
    assert not DvcqgSyncResult(service="DongBoHoSoMC", error_code=code).ok


def test_one_list_serves_the_connector_and_the_result_event() -> None:
    """The connector's list is the result event's list (no second copy to drift)."""
    assert OK_CODES is PORTAL_OK_CODES


def test_a_long_portal_message_is_clipped_not_refused() -> None:
    """A chatty portal is not a broken one: a message past 2,000 characters is kept clipped."""
    reply = TraCuuHoSoReply(error_code="0", message="x" * 10_000)

    assert reply.ok
    assert len(reply.message) == 2000
