"""Personal data: the marker that says a schema field holds it, and the masking wherever it could leak.

A dossier event carries a citizen's id number (CCCD/CMND), phone, name, address, e-mail and date of birth.
They must reach the target systems intact but never the logs, the dead-letter headers or an operator's
screen. Two mechanisms, both pure:

- **by name**: payload models mark their personal fields with :func:`sensitive`; ``schemas/events.py``
  collects the marked names once (:func:`sensitive_field_names`) and the logging chain (``bus/logging.py``)
  masks any value logged under one of them, at any depth (nameko's ``sensitive_arguments``);
- **by pattern**: :func:`scrub_text` masks Vietnamese ids, phones and e-mails found inside free text:
  exception messages, target systems' replies, the ``x-error`` header of a dead letter
  (``routes/pipeline.py``), every string the logging chain renders.

Masking keeps a two-digit hint only for numbers (``***78``), enough to tell two phones apart in a trace and
not enough to call anyone.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import unicodedata
from typing import TYPE_CHECKING, Any, get_args, get_origin

from pydantic import AliasChoices, AliasPath, BaseModel, Field
from pydantic_core import PydanticUndefined

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable, Iterator

    from pydantic.fields import FieldInfo

#: key set to True in a field's ``json_schema_extra`` (and so in the JSON schema) for personal data
SENSITIVE_KEY = "sensitive"
#: key set to True (with :data:`SENSITIVE_KEY`) for a secret: an OTP code, masked even where an operator
#: asked to see personal data (``dlq show --reveal``)
SECRET_KEY = "secret"  # noqa: S105 - a marker's name, not a secret
#: what replaces a masked value
MASK = "***"
#: trailing digits kept as a hint on a masked number
HINT_CHARS = 2
#: shorter values are masked without a hint: two digits of a short number give too much of it away
MIN_HINTED_LENGTH = 8
#: digit counts of the numbers :func:`scrub_text` masks
CMND_DIGITS, PHONE_DIGITS, MSISDN_DIGITS, CCCD_DIGITS = 9, 10, 11, 12
#: the target systems' own names for personal fields (docs/domain.md sections 1-6): their replies and faults
#: echo requests back, so text from them is masked by these keys too (matched case-insensitively)
TARGET_PERSONAL_FIELDS = frozenset(
    {
        # one-stop shop and national portal records
        "ChuHoSo", "SoGiayToChuHoSo", "SoDinhDanh", "NgaySinhChuHoSo", "SoDienThoai", "SoDienThoaiChuHoSo",
        "EmailChuHoSo", "DiaChiChuHoSo", "MaDoiTuong", "TrichYeuHoSo", "fullname", "ownerFullname",
        # PayGov, and the e-receipt providers VNPT and Viettel
        "HoTenNguoiNop", "SoCMNDNguoiNop", "CusName", "CusAddress", "CusTaxCode", "buyerName",
        "buyerAddressLine", "buyerPhoneNumber", "buyerEmail", "buyerIdNo",
        # VNPost orders and BCCI registration
        "SenderName", "SenderAddress", "SenderTel", "SenderEmail", "ReceiverName", "ReceiverAddress",
        "ReceiverTel", "ReceiverEmail", "hoVaTen", "diaChi",
        # SMS gateways (phone numbers in 84... form)
        "ReceiverID", "UserID", "MOBILELIST", "phonenumber",
        # land system
        "HoTen", "SoChungMinh", "DiaChiChiTiet", "DiaChiTaiSan", "HoTenChu",
    }
)  # fmt: skip

# One scan, alternatives tried left to right at each position. The ``keep`` group comes first so that the
# identifiers an operator needs (event ids, iGate ObjectIds, digests, S10 postal item codes) are never
# mistaken for the id numbers and phones they may contain by chance.
_SCRUB = re.compile(
    r"""
    (?P<keep>
        (?<![0-9A-Za-z])[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}(?![0-9A-Za-z])
      | (?<![0-9A-Za-z])(?:[0-9A-Fa-f]{64}|[0-9A-Fa-f]{40}|[0-9A-Fa-f]{32}|[0-9A-Fa-f]{24})(?![0-9A-Za-z])
      | (?<![0-9A-Za-z])[A-Z]{2}[0-9]{9}[A-Z]{2}(?![0-9A-Za-z])
    )
    # pydantic's own str(ValidationError) quotes the rejected input: drop it whatever it is
  | (?<=input_value=)(?P<input>.+?)(?=,\ input_type=)
  | (?P<email>(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})
  | (?P<number>(?<!\d)\+?\d{9,12}(?!\d))
  | (?P<spaced>(?<![\d+])(?:\+?84[\ .-]?|0)\d{2,3}[\ .-]\d{3}[\ .-]?\d{3,4}(?!\d))
    """,
    re.VERBOSE,
)


#: nothing :data:`_SCRUB` masks can be in a text without one of these; most log strings skip the full scan
_MAYBE_PERSONAL = re.compile(r"\d|@|input_value=")
#: a keyed value needs ``key=``, ``key:`` or ``<key>``
_MAYBE_KEYED = re.compile(r"[:=<]")


def sensitive(default: Any = PydanticUndefined, **field_kwargs: Any) -> Any:
    """A pydantic ``Field`` marked as personal data; use it where ``Field`` would go.

    Args:
        default: the field's default; required when not given.
        **field_kwargs: any other ``Field`` argument (``max_length``, ``description``...). A dict
            ``json_schema_extra`` is kept and the marker added to it.

    Returns:
        The ``FieldInfo`` (typed ``Any``, as ``Field`` is, so it can stand as a default).

    Example::

        class Applicant(BaseModel):
            name: str = sensitive(max_length=200)
    """
    extra = field_kwargs.pop("json_schema_extra", None)
    if extra is not None and not isinstance(extra, dict):
        raise TypeError("sensitive() takes json_schema_extra as a dict only")
    return Field(default, **field_kwargs, json_schema_extra={**(extra or {}), SENSITIVE_KEY: True})


def secret(default: Any = PydanticUndefined, **field_kwargs: Any) -> Any:
    """A pydantic ``Field`` holding a secret (an OTP code): personal data that even ``--reveal`` keeps masked.

    Args:
        default: the field's default; required when not given.
        **field_kwargs: any other ``Field`` argument.
    """
    extra = field_kwargs.pop("json_schema_extra", None) or {}
    return sensitive(default, **field_kwargs, json_schema_extra={**extra, SECRET_KEY: True})


def secret_field_names(models: Iterable[type[BaseModel]]) -> frozenset[str]:
    """The names (and aliases) of every field marked :func:`secret` in the models and those they nest."""
    return marked_field_names(models, SECRET_KEY)


class _LiveSecrets:
    """Secrets (OTP codes) being sent right now: any text scrubbed meanwhile has them masked.

    A gateway may echo a request in its fault or error page, and that text reaches an error message, the
    logs and a dead letter's ``x-error``; the connector cannot know where. It registers the code while it
    sends, and :func:`scrub_text` masks every run of 4-8 digits that is a registered code.
    """

    __slots__ = ("_counts", "_lock")

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, value: str) -> None:
        with self._lock:
            self._counts[value] = self._counts.get(value, 0) + 1

    def discard(self, value: str) -> None:
        with self._lock:
            left = self._counts.get(value, 0) - 1
            if left > 0:
                self._counts[value] = left
            else:
                self._counts.pop(value, None)

    def scrub(self, text: str) -> str:
        if not self._counts:
            return text
        live = self._counts
        return _DIGIT_RUN.sub(lambda m: MASK if m.group() in live else m.group(), text)


_LIVE = _LiveSecrets()
#: a run of digits an OTP code could be (codes are 4-8 digits)
_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9]{4,8}(?![0-9])")


@contextlib.contextmanager
def live_secret(value: str) -> Generator[None]:
    """Mask ``value`` in every text :func:`scrub_text` sees while the block runs (in any thread)."""
    _LIVE.add(value)
    try:
        yield
    finally:
        _LIVE.discard(value)


def is_sensitive(field: FieldInfo) -> bool:
    """Whether a model field was declared with :func:`sensitive`."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get(SENSITIVE_KEY) is True


def _names(name: str, field: FieldInfo) -> Iterator[str]:
    yield name
    for alias in (field.alias, field.serialization_alias):
        if alias:
            yield alias
    validation = field.validation_alias
    if isinstance(validation, str):
        yield validation
    elif isinstance(validation, AliasChoices):
        for choice in validation.choices:
            if isinstance(choice, str):
                yield choice
            elif choice.path and isinstance(choice.path[-1], str):
                yield choice.path[-1]
    elif isinstance(validation, AliasPath) and validation.path and isinstance(validation.path[-1], str):
        yield validation.path[-1]


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """Every model class an annotation mentions: ``Model``, ``Model | None``, ``tuple[Model, ...]``..."""
    if get_origin(annotation) is None and isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            yield annotation
        return
    for arg in get_args(annotation):
        yield from _models_in(arg)


def sensitive_field_names(models: Iterable[type[BaseModel]]) -> frozenset[str]:
    """The names (and aliases) of every field marked :func:`sensitive` in the models and the models they nest.

    Args:
        models: the payload models to walk, e.g. ``EVENT_PAYLOADS.values()``.

    Returns:
        The key names whose logged values must be masked.
    """
    return marked_field_names(models, SENSITIVE_KEY)


def marked_field_names(models: Iterable[type[BaseModel]], key: str) -> frozenset[str]:
    """The names (and aliases) of every field whose ``json_schema_extra`` sets ``key`` to True, at any depth.

    Nested models are found through optionals, unions, lists, tuples and dict values; each model is
    visited once, so recursive models are fine. A marker on an ``Annotated`` type counts as on the field.

    Args:
        models: the models to walk.
        key: the marker, e.g. :data:`SENSITIVE_KEY` or ``schemas.strict.MULTILINE_KEY``.
    """
    found: set[str] = set()
    seen: set[type[BaseModel]] = set()
    pending = list(models)
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            extra = field.json_schema_extra
            if isinstance(extra, dict) and extra.get(key) is True:
                found.update(_names(name, field))
            pending.extend(_models_in(field.annotation))
    return frozenset(found)


def mask(value: str) -> str:
    """Mask one personal value, keeping the last two characters when they are digits of a long number.

    ``mask("0912345678") == "***78"``, ``mask("Nguyễn Văn An") == "***"``, ``mask("") == ""``.
    """
    if not value:
        return value
    tail = value[-HINT_CHARS:]
    if len(value) >= MIN_HINTED_LENGTH and tail.isdigit():
        return MASK + tail
    return MASK


def _ascii_digits(text: str) -> str:
    # \d also matches full-width and other Unicode digits; classify them by value.
    return "".join(str(unicodedata.digit(ch)) for ch in text if ch.isdigit())


def _is_personal_number(token: str) -> bool:
    digits = _ascii_digits(token)
    if token.startswith("+"):
        return len(digits) == MSISDN_DIGITS and digits.startswith("84")  # +84xxxxxxxxx
    return (
        len(digits) == CMND_DIGITS  # old CMND; also a phone stripped of its leading 0
        or (len(digits) == PHONE_DIGITS and digits.startswith("0"))  # 0xxxxxxxxx
        or (len(digits) == MSISDN_DIGITS and digits.startswith("84"))  # 84xxxxxxxxx
        or (len(digits) == CCCD_DIGITS and digits.startswith("0"))  # CCCD: province codes are 001-096
    )


def _replace(match: re.Match[str]) -> str:
    group = match.lastgroup
    token = match.group()
    if group == "keep":
        return token
    if group == "number" and not _is_personal_number(token):
        return token  # a 9-12 digit amount or counter that no id or phone looks like
    if group == "spaced" and len(_ascii_digits(token)) != (PHONE_DIGITS if token.startswith("0") else MSISDN_DIGITS):
        return token
    return mask(token)


@functools.lru_cache(maxsize=16)
def _key_pattern(keys: frozenset[str]) -> re.Pattern[str]:
    names = "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))
    return re.compile(
        # key=value, key: 'value', "key": "value"
        rf"""(?P<lead>(?<![\w.])(?P<q>['"]?)(?:{names})(?P=q)\s*[:=]\s*)"""
        r"""(?P<value>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"|[^\s,;)}\]'"<>]+)"""
        # <key>value</key>, <ns:key attr="x">value</ns:key>: SOAP requests echoed in faults
        rf"""|(?P<xlead><(?:[\w.-]+:)?(?:{names})(?:\s[^<>]*)?>)(?P<xvalue>[^<]+)(?=</)""",
        re.IGNORECASE,
    )


def _replace_keyed(match: re.Match[str]) -> str:
    if match.group("xlead") is not None:
        return match.group("xlead") + mask(match.group("xvalue"))
    value = match.group("value")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        masked = value[0] + mask(value[1:-1]) + value[0]
    else:
        masked = mask(value)
    return match.group("lead") + masked


def scrub_text(text: str, *, keys: Iterable[str] = ()) -> str:
    """Mask Vietnamese personal data found by pattern in free text.

    Masks 12-digit CCCD and 9-digit CMND numbers, phones written ``0xxxxxxxxx``, ``84xxxxxxxxx`` or
    ``+84…`` (also with spaces, dots or dashes, and in full-width digits), e-mail addresses, and the
    ``input_value=`` pydantic puts into a ``ValidationError``'s text. UUIDs, 24/32/40/64-hex ids and S10
    postal item codes are left alone. Names and street addresses have no pattern: with ``keys`` given
    (e.g. the sensitive field names), a value written as ``key=value``, ``key='value'`` or
    ``"key": "value"`` is masked too, keys matched regardless of case, which catches the reprs of dicts and
    pydantic models and the echoes of requests in target systems' faults.

    Args:
        text: any text that may hold personal data.
        keys: field names whose quoted or unspaced values must be masked.

    Returns:
        The text with each finding replaced by :func:`mask` of it.
    """
    text = _LIVE.scrub(text)
    key_set = keys if isinstance(keys, frozenset) else frozenset(keys)
    if key_set and _MAYBE_KEYED.search(text):
        text = _key_pattern(key_set).sub(_replace_keyed, text)
    if not _MAYBE_PERSONAL.search(text):
        return text
    return _SCRUB.sub(_replace, text)
