"""The SMS schemas: GSM-7 and UCS-2 segments, the no-diacritics fold, the gateway phone form, the catalogue."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.igate import OtpRequested, normalize_mobile, to_msisdn
from schemas.pii import live_secret, scrub_text, secret_field_names
from schemas.sms import OtpSms, SmsNotice, encoding_of, fold_diacritics, segments
from schemas.sms_catalogue import CATALOGUE, FIELD_MAX, CatalogueError, CatalogueInvalid, Template, _catalogue


class TestSegments:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("a" * 160, 1),
            ("a" * 161, 2),
            ("a" * 306, 2),
            ("a" * 307, 3),
            ("€" * 80, 1),  # extension characters take two septets each
            ("€" * 81, 2),
            ("ă" * 70, 1),
            ("ă" * 71, 2),
            ("ă" * 134, 2),
            ("ă" * 135, 3),
            ("😀" * 35, 1),  # outside the BMP: two UTF-16 units each
            ("😀" * 36, 2),
        ],
    )
    def test_segment_boundaries(self, text: str, expected: int) -> None:
        """160/153 septets for GSM-7, 70/67 UTF-16 units for UCS-2, at each boundary."""
        assert segments(text) == expected

    def test_one_diacritic_forces_ucs2(self) -> None:
        """A Vietnamese letter anywhere makes the whole SMS UCS-2."""
        assert encoding_of("Ho so da duoc tiep nhan") == "gsm7"
        assert encoding_of("Ho so đa duoc tiep nhan") == "ucs2"


class TestFold:
    @pytest.mark.parametrize(
        ("text", "plain"),
        [
            ("Đắk Lắk", "Dak Lak"),
            ("đường Hùng Vương", "duong Hung Vuong"),
            ("Hồ sơ đã được tiếp nhận.", "Ho so da duoc tiep nhan."),
            ("ỮỰỬỲỴ ữựửỳỵ", "UUUYY uuuyy"),
            ("hẹn: 10/12/2025", "hen: 10/12/2025"),
            ("tab\there", "tab?here"),
            ("中文", "??"),
        ],
    )
    def test_fold(self, text: str, plain: str) -> None:
        """Đ becomes D, marks are dropped, and whatever GSM-7 lacks becomes '?': the result is always GSM-7."""
        assert fold_diacritics(text) == plain
        assert encoding_of(fold_diacritics(text)) == "gsm7"

    def test_nfd_input_folds_the_same(self) -> None:
        """Decomposed input (as some keyboards send) folds like composed input."""
        import unicodedata

        assert fold_diacritics(unicodedata.normalize("NFD", "Đắk Lắk")) == "Dak Lak"


class TestPhones:
    @pytest.mark.parametrize("phone", ["0912000111", "+84912000111", "84912000111", "091 200 0111", "+84 91-200-0111"])
    def test_forms_accepted(self, phone: str) -> None:
        """0…, +84… and 84…, with spaces or dashes, all give 84912000111."""
        assert to_msisdn(phone) == "84912000111"

    @pytest.mark.parametrize(
        ("phone", "why"),
        [
            ("02623812345", "not a Vietnamese mobile number"),  # Đắk Lắk landline
            ("0262381234", "prefix 026"),
            ("+14155550100", "not a Vietnamese mobile number"),
            ("+442079460000", "not a Vietnamese mobile number"),
            ("01689123456", "not a Vietnamese mobile number"),  # the retired 11-digit numbers
            ("0112345678", "prefix 011"),
        ],
    )
    def test_landlines_and_foreign_numbers_refused(self, phone: str, why: str) -> None:
        """Landlines, foreign and retired numbers: a ValueError saying why, never repeating the number."""
        with pytest.raises(ValueError, match=why) as caught:
            normalize_mobile(phone)
        assert phone not in str(caught.value)

    def test_requests_take_only_the_gateway_form(self) -> None:
        """A request's phone must already be 84…: the adapter converts, nothing else may slip through."""
        with pytest.raises(ValidationError, match="at least 11"):
            SmsNotice(phone="0912000111", template="dossier.received", text="x", plain_text="x")
        with pytest.raises(ValidationError, match="84xxxxxxxxx"):
            SmsNotice(phone="+8491200011", template="dossier.received", text="x", plain_text="x")


class TestOtpSecret:
    def test_otp_code_is_marked_secret(self) -> None:
        """The event's and the request's code fields carry the secret marker (masked even by --reveal)."""
        assert "otp_code" in secret_field_names([OtpRequested, OtpSms])

    def test_live_secret_masked_in_any_text(self) -> None:
        """While a code is live, scrub_text masks it wherever it appears; after, it does not."""
        text = "gateway said: bad content 'Ma OTP 482913 het han' (ref 12345678)"
        with live_secret("482913"):
            assert "482913" not in scrub_text(text)
            assert "12345678" in scrub_text(text)  # other numbers untouched
        assert "482913" in scrub_text(text)


class TestCatalogue:
    def test_every_event_has_a_template_within_its_limit(self) -> None:
        """The shipped catalogue loads (its limits hold) and covers the notice events and the OTP."""
        assert {"otp", "dossier.received", "dossier.refused", "dossier.supplement_requested"} <= set(CATALOGUE)
        assert {"dossier.result_ready", "dossier.overdue_apology", "dossier.returned.post"} <= set(CATALOGUE)
        assert all(t.problems() == [] for t in CATALOGUE.values())
        assert CATALOGUE["otp"].max_segments == 1

    def test_too_long_template_refused_naming_it(self) -> None:
        """A template whose longest rendering overflows: the catalogue refuses to load, naming the template."""
        long = Template("dossier.received", "Hồ sơ {code} " + "đã được tiếp nhận " * 4, 1)
        with pytest.raises(CatalogueInvalid, match=r"'dossier.received'.*UCS-2.*over its limit of 1"):
            _catalogue(long)

    def test_unknown_placeholder_refused(self) -> None:
        """A placeholder without a known longest value cannot be checked, so it is refused."""
        with pytest.raises(CatalogueInvalid, match=r"unknown placeholder \{name\}"):
            _catalogue(Template("x", "Chào {name}", 1))

    def test_value_over_its_longest_refused(self) -> None:
        """Rendering with a value longer than its placeholder's limit fails (the check would not hold)."""
        with pytest.raises(CatalogueError, match="over 40"):
            CATALOGUE["dossier.received"].render(code="X" * (FIELD_MAX["code"] + 1), appointment="01/01/2026")


CHECK_WITH_LONG_OTP = """
import importlib.abc, importlib.util, sys
from pathlib import Path
SRC = Path("schemas/sms_catalogue.py").read_text(encoding="utf-8").replace(
    '"Mã OTP nộp hồ sơ: {otp}.', '"Mã OTP để xác nhận hồ sơ nộp trực tuyến của ông/bà là: {otp}.'
)
class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "schemas.sms_catalogue" else None
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        exec(compile(SRC, "schemas/sms_catalogue.py", "exec"), module.__dict__)
sys.meta_path.insert(0, Finder())
from bus.cli import main
sys.argv = ["igate-bus", "check"]
main()
"""


def test_check_refuses_a_template_that_can_overflow() -> None:
    """`igate-bus check` with an OTP template too long for one segment: exit 2, naming the template, no traceback."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-c", CHECK_WITH_LONG_OTP], cwd=root, capture_output=True, text=True, timeout=120, check=False
    )
    out = run.stdout + run.stderr
    assert run.returncode == 2, out
    assert "SMS template 'otp'" in out and "over its limit of 1" in out
    assert "routes.yaml" in out and "adapter" in out and "Traceback" not in out
