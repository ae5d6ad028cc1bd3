"""Personal-data markers, the collection of marked names, masking, and the scrubbing of free text."""

from __future__ import annotations

import time
from typing import Annotated

import pytest
from pydantic import AliasChoices, BaseModel, Field, ValidationError
from wallclock import assert_within

from schemas.events import SENSITIVE_FIELDS
from schemas.igate import Applicant
from schemas.pii import is_sensitive, mask, scrub_text, sensitive, sensitive_field_names

CCCD = "066201001234"
PHONE = "0912345678"
NAME = "Nguyễn Văn An"


class Leaf(BaseModel):
    secret: str = sensitive()
    public: str = "x"


class Node(BaseModel):
    aliased: str = sensitive(default="", alias="soDienThoai")
    chosen: str = sensitive(default="", validation_alias=AliasChoices("hoTen", "ho_ten"))
    maybe: Leaf | None = None
    many: list[Leaf] = Field(default_factory=list)
    keyed: dict[str, tuple[Annotated[Leaf, "meta"], ...]] = Field(default_factory=dict)
    child: Node | None = None


class TestMarker:
    def test_sensitive_marks_the_field_and_its_json_schema(self) -> None:
        """A field made with sensitive() is recognised, and says so in the JSON schema."""
        assert is_sensitive(Leaf.model_fields["secret"])
        assert not is_sensitive(Leaf.model_fields["public"])
        assert Leaf.model_json_schema()["properties"]["secret"]["sensitive"] is True

    def test_sensitive_keeps_field_arguments(self) -> None:
        """Constraints and extra schema keys passed to sensitive() still apply."""

        class M(BaseModel):
            v: str = sensitive(max_length=3, json_schema_extra={"examples": ["abc"]})

        schema = M.model_json_schema()["properties"]["v"]
        assert schema["examples"] == ["abc"]
        assert schema["sensitive"] is True
        with pytest.raises(ValidationError, match="at most 3"):
            M(v="abcd")

    def test_required_unless_default(self) -> None:
        """sensitive() without a default makes a required field."""
        with pytest.raises(ValidationError, match="secret"):
            Leaf.model_validate({})


class TestSensitiveFieldNames:
    def test_walks_nested_optional_list_dict_and_recursive_models(self) -> None:
        """Names are collected through optionals, lists, dict values, Annotated and self-reference."""
        names = sensitive_field_names([Node])
        assert {"secret", "aliased", "soDienThoai", "chosen", "hoTen", "ho_ten"} <= names
        assert "public" not in names
        assert "maybe" not in names

    def test_event_schemas_mark_the_personal_fields(self) -> None:
        """The registry's names cover ids, phones, names, addresses, e-mails and birth dates."""
        assert {
            "id_no",
            "phone",
            "name",
            "address",
            "detail",
            "email",
            "birth_date",
            "dia_chi",
        } <= SENSITIVE_FIELDS

    def test_routing_and_log_keys_are_not_masked(self) -> None:
        """Keys operators trace by, and structlog's own keys, are not personal fields."""
        keep = {"event", "event_id", "route", "dossier_code", "connector", "attempt", "level", "timestamp"}
        keep |= {"logger", "exception", "status", "code", "kind", "amount_vnd", "item_code", "fkey"}
        assert not keep & SENSITIVE_FIELDS


class TestMask:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (PHONE, "***78"),
            (CCCD, "***34"),
            (NAME, "***"),
            ("an@example.com", "***"),
            ("1234", "***"),
            ("", ""),
        ],
    )
    def test_mask_keeps_a_digit_hint_only_on_long_numbers(self, value: str, expected: str) -> None:
        """Only a long number keeps its last two digits; names, e-mails and short values keep nothing."""
        assert mask(value) == expected


class TestScrubText:
    @pytest.mark.parametrize(
        ("text", "secret"),
        [
            (f"CCCD {CCCD} refused", CCCD),
            ("old CMND 241234567.", "241234567"),
            (f"phone={PHONE}", PHONE),
            ("SĐT: +84912345678", "912345678"),
            ("gửi 84912345678", "84912345678"),
            ("gọi 0912 345 678 nhé", "345 678"),
            ("gọi 0912.345.678", "345.678"),
            ("gọi +84 912 345 678", "912 345"),
            ("０９１２３４５６７８", "０９１２３４５６"),
            ("CCCD066201001234", CCCD),
            ("mail nguyen.van.an@example.com.vn now", "nguyen.van.an"),
        ],
    )
    def test_masks_ids_phones_and_emails(self, text: str, secret: str) -> None:
        """Each id, phone and e-mail form is masked, leaving the text around it."""
        out = scrub_text(text)
        assert secret not in out
        assert "***" in out

    @pytest.mark.parametrize(
        "text",
        [
            "event 123e4567-e89b-12d3-a456-426614174000",
            "event 123e4567-e89b-12d3-a456-426614174012 tail digits",
            "igate_id 6745a1c2e4b0f3a9d8c71e52",
            "item EB123456785VN",
            "dossier 000.00.16.H16-261126-0001",
            "procedure 1.003560.000.00.00.H16",
            "at 2026-11-26 08:30:00+07:00 and 20261126083000",
            "amount 1500000000 VND",
            "sha256 " + "0123456789" * 6 + "abcd",
        ],
    )
    def test_keeps_identifiers_dates_and_amounts(self, text: str) -> None:
        """Event ids, iGate ids, postal item codes, dossier codes, dates and large amounts pass unchanged."""
        assert scrub_text(text) == text

    def test_drops_pydantic_input_values(self) -> None:
        """A ValidationError's text loses the rejected input, whatever it was."""
        with pytest.raises(ValidationError) as info:
            Applicant.model_validate(
                {"type": 1, "name": NAME * 20, "id_type": 1, "id_no": CCCD, "phone": "0262", "address": {}}
            )
        text = str(info.value)
        assert NAME in text  # pydantic does quote it
        out = scrub_text(text)
        assert NAME not in out
        assert "input_value=***" in out

    def test_keys_mask_quoted_and_bare_values(self) -> None:
        """With keys, dict and model reprs and JSON text lose the values of personal fields."""
        text = f'Applicant(name=\'{NAME}\', id_no={CCCD}) {{"detail": "Số 12 Lê Duẩn", "route": "sms"}}'
        out = scrub_text(text, keys={"name", "id_no", "detail"})
        assert NAME not in out
        assert CCCD not in out
        assert "Lê Duẩn" not in out
        assert "name='***'" in out
        assert '"route": "sms"' in out

    def test_keys_mask_xml_elements_in_any_case(self) -> None:
        """A SOAP request echoed in a fault loses its personal elements; keys match regardless of case."""
        text = f'<ns1:CusName xsi:type="string">{NAME}</ns1:CusName><Total>600000</Total>'
        out = scrub_text(text, keys={"cusname"})
        assert NAME not in out
        assert '<ns1:CusName xsi:type="string">***</ns1:CusName>' in out
        assert "<Total>600000</Total>" in out
        assert scrub_text(f"CUSNAME={NAME!r}", keys={"CusName"}) == "CUSNAME='***'"

    def test_keys_do_not_match_inside_other_words_or_paths(self) -> None:
        """filename=, hostname= and a dotted error path are not mistaken for a personal key."""
        text = "filename=a.py hostname=bus payload.applicant.name: String too long"
        assert scrub_text(text, keys={"name"}) == text


@pytest.mark.parametrize(
    "text",
    ["a" * 50_000 + "@", "a.b_" * 20_000, "0912 " * 20_000, "9" * 50_000],
    ids=["email-run", "dotted-run", "spaced-digits", "digit-run"],
)
def test_scrub_is_linear_on_hostile_text(text: str) -> None:
    """A long reply built to make the patterns backtrack is scrubbed in well under a second."""
    start = time.perf_counter()
    scrub_text(text, keys=SENSITIVE_FIELDS)
    assert_within(time.perf_counter() - start, 0.5, "scrubbing 50,000 hostile characters")  # backtracking: hours
