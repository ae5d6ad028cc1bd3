"""The SMS message catalogue: one Vietnamese template per notice (and the OTP), each with its length limit.

Where it sits: read by the adapter step of the SMS routes (event → route → ``adapters/igate_to_sms.py``
renders **a template** → ``connectors/sms.py``). The wording follows the one-stop shop's own catalogue (TH
``sms.json``, docs/domain.md section 5: NopTrucTuyen, TiepNhan, TuChoi, YeuCauBoSung, CoKetQua, TraKetQua
by post) with the apology slip of Decree 61 added; the texts carry diacritics, and a gateway that takes
only GSM-7 gets :func:`schemas.sms.fold_diacritics` of them (``Đ`` → ``D``).

**Limits are checked when this module is imported**, so ``igate-bus check`` (which imports every adapter
module) refuses a catalogue with a template that could overflow: each placeholder has a longest value, and
both forms of every template, filled with the longest values, must fit the template's ``max_segments``
(UCS-2 for the Vietnamese form, GSM-7 for the plain one). The OTP is kept to one segment
(docs/domain.md section 5), so it arrives whole and at once.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from schemas.sms import fold_diacritics, segments

if TYPE_CHECKING:
    from collections.abc import Mapping

#: longest value of each placeholder a template may use: a dossier code (``000.00.16.H16-190812-0001`` is 25;
#: room for other provinces' formats), a date ``dd/mm/yyyy``, days, minutes, an OTP code
FIELD_MAX: Final[Mapping[str, int]] = MappingProxyType(
    {"code": 40, "appointment": 10, "old": 10, "new": 10, "days": 3, "minutes": 2, "otp": 8}
)


class CatalogueError(ValueError):
    """A value does not fit its template's placeholder (the adapter makes it a mapping error)."""


class CatalogueInvalid(ImportError):
    """The catalogue has a template that is malformed or can overflow its limit; names the template.

    An ImportError, raised while the module loads: ``igate-bus check`` reports an adapter module that cannot
    be imported on the ``adapter`` line of each route using it, with this message, and exits 2.
    """


@dataclass(frozen=True, slots=True)
class Template:
    """One catalogue entry: its key, its Vietnamese text with ``{placeholders}``, its limit in segments."""

    key: str
    text: str
    max_segments: int

    def fields(self) -> tuple[str, ...]:
        """The placeholders the text uses."""
        return tuple(name for _, name, _, _ in string.Formatter().parse(self.text) if name)

    def render(self, **values: str) -> tuple[str, str]:
        """The text with ``values`` filled in, and its no-diacritics form.

        Raises:
            CatalogueError: a value is missing or longer than its placeholder's longest (the limit would no
                longer hold).
        """
        for name in self.fields():
            value = values.get(name)
            if value is None:
                raise CatalogueError(f"SMS template {self.key!r} needs {{{name}}}")
            if len(value) > FIELD_MAX[name]:
                raise CatalogueError(
                    f"SMS template {self.key!r}: {{{name}}} is {len(value)} characters, over {FIELD_MAX[name]}"
                )
        text = self.text.format(**{name: values[name] for name in self.fields()})
        return text, fold_diacritics(text)

    def problems(self) -> list[str]:
        """Why this template cannot be used: unknown placeholders, or a form that can overflow its limit."""
        unknown = [name for name in self.fields() if name not in FIELD_MAX]
        if unknown:
            return [f"SMS template {self.key!r}: unknown placeholder {{{unknown[0]}}} (known: {', '.join(FIELD_MAX)})"]
        longest = self.text.format(**{name: "0" * FIELD_MAX[name] for name in self.fields()})
        found = []
        for form, text in (("Vietnamese (UCS-2)", longest), ("no-diacritics (GSM-7)", fold_diacritics(longest))):
            count = segments(text)
            if count > self.max_segments:
                found.append(
                    f"SMS template {self.key!r}: its {form} form takes {count} segments with the longest values "
                    f"({len(text)} characters), over its limit of {self.max_segments}"
                )
        return found


def _catalogue(*templates: Template) -> Mapping[str, Template]:
    problems = [p for t in templates for p in t.problems()]
    if problems:
        raise CatalogueInvalid("; ".join(problems))
    return MappingProxyType({t.key: t for t in templates})


#: the catalogue, by key: the event type, ``dossier.returned.post``/``.desk`` by how the result went back
CATALOGUE: Final[Mapping[str, Template]] = _catalogue(
    Template("otp", "Mã OTP nộp hồ sơ: {otp}. Hiệu lực {minutes} phút. Không chia sẻ mã này.", 1),
    Template("dossier.submitted", "Hồ sơ {code} đã được gửi thành công, đang chờ cơ quan tiếp nhận.", 2),
    Template("dossier.received", "Hồ sơ {code} đã được tiếp nhận. Ngày hẹn trả kết quả: {appointment}.", 2),
    Template("dossier.refused", "Hồ sơ {code} không đủ điều kiện tiếp nhận. Lý do xem trên Cổng dịch vụ công.", 2),
    Template(
        "dossier.supplement_requested",
        "Hồ sơ {code} cần bổ sung giấy tờ trong {days} ngày. Chi tiết xem trên Cổng dịch vụ công.",
        2,
    ),
    Template("dossier.result_ready", "Hồ sơ {code} đã có kết quả. Mời ông/bà đến nhận theo giấy hẹn.", 2),
    Template(
        "dossier.overdue_apology",
        "Xin lỗi ông/bà: hồ sơ {code} trễ hẹn ngày {old}. Ngày hẹn trả mới: {new}.",
        2,
    ),
    Template("dossier.returned.post", "Kết quả hồ sơ {code} đã chuyển Bưu điện để trả đến địa chỉ của ông/bà.", 2),
    Template("dossier.returned.desk", "Hồ sơ {code} đã được trả kết quả. Cảm ơn ông/bà.", 2),
)
