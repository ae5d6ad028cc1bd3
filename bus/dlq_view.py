"""How the CLI shows dead letters to an operator: masked, selected by short ids, with a readable reason.

Where it sits: outside the message path, between ``routes/dlq.py`` (which reads the DLQs) and the ``igate-bus
dlq`` commands (``bus/cli_dlq.py``). A dead letter holds a citizen's whole event: by default an operator's
screen gets it masked by the very processor the logs use (:class:`bus.logging.MaskPersonalData`, driven by the
schemas' personal-data markers), so the two can never disagree. Everything here is pure.

- :func:`masked_letter` / :func:`revealed_letter`: one dead letter as a JSON-ready document;
- :func:`short_ids` and :func:`resolve_ids`: git-style event id prefixes, unique among what is listed, and
  the same prefixes accepted back as selectors (an ambiguous one refused, naming the candidates);
- :func:`reason`: the error as one short clause, cut at a word boundary, for a table column;
- :func:`printable`: any text from a message made safe for a terminal.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from bus.logging import MaskPersonalData
from schemas.events import SECRET_FIELDS
from schemas.pii import MASK

if TYPE_CHECKING:
    from collections.abc import Iterable

    from routes.dlq import DeadLetter

#: shortest event id prefix shown or accepted (8 hex digits of a UUID: one clash in ~65,000 letters)
MIN_PREFIX: Final = 8
#: what ends a cut text
ELLIPSIS: Final = "…"
#: keys of a JSON error reply that carry its human-readable reason, best first
_REPLY_REASON_KEYS: Final = ("message", "detail", "error_description", "title", "error", "faultstring", "Message")
#: ``HTTP 404: {...}`` / ``HTTP 503 (not applied): {...}``: a status, then the target's reply quoted
_HTTP_REPLY: Final = re.compile(r"^(?P<head>HTTP \d{3}(?: \([^)]*\))?):\s*(?P<body>[\[{].*)$", re.DOTALL)
#: ``"message": "dossier X not found"`` inside a reply that was cut and no longer parses
_QUOTED_KEY: Final = r'"{key}"\s*:\s*"(?P<value>(?:[^"\\]|\\.)*)"'
#: a clause ends at ``; ``, at the end of a sentence, or at a line break (``field: message`` is one clause)
_CLAUSE_END: Final = re.compile(r";\s|\.\s+(?=[A-Z(])|\n")

_MASKER: Final = MaskPersonalData()


# -- masking ---------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """Header values as JSON would show them: bytes decoded, datetimes in ISO form, tables walked."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _body(raw: bytes) -> Any:
    """The body as JSON when it is JSON, else as text (a dead letter may be any bytes: that may be why)."""
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def _hide_secrets(value: Any) -> Any:
    """``value`` with every field marked as a secret (an OTP code) masked, at any depth."""
    if isinstance(value, dict):
        return {k: MASK if k in SECRET_FIELDS and v is not None else _hide_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide_secrets(v) for v in value]
    return value


def revealed_letter(letter: DeadLetter) -> dict[str, Any]:
    """One dead letter whole, personal data included but secrets (OTP codes) never: ``dlq show --reveal``."""
    return {**letter.summary(), "headers": _plain(letter.headers), "body": _hide_secrets(_body(letter.body))}


def masked_letter(letter: DeadLetter) -> dict[str, Any]:
    """One dead letter with personal data masked exactly as the logs mask it (by field name and by pattern)."""
    masked: dict[str, Any] = _MASKER.mask_value(revealed_letter(letter))
    return masked


def masked_summary(letter: DeadLetter) -> dict[str, Any]:
    """The row ``dlq list`` shows, its texts (the error, which may quote a target's reply) masked."""
    summary: dict[str, Any] = _MASKER.mask_value(letter.summary())
    return summary


def mask_text(text: str) -> str:
    """A free text (an error, a reason) masked as the logs mask a string."""
    masked: str = _MASKER.mask_value(text)
    return masked


def printable(text: str) -> str:
    r"""``text`` safe for a terminal: control and format characters shown escaped (ESC as ``\x1b``).

    A dead letter's fields come from whoever published the message; an escape sequence in an event type or
    an error text would otherwise be run by the operator's terminal (colours, a cleared screen, a rewritten
    title), and a bidirectional override would make it show other text than it holds. rich escapes markup,
    not these.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def terminal_json(value: Any) -> str:
    r"""Indented JSON (Vietnamese left readable) with every non-printable character as a JSON escape.

    ``json.dumps`` escapes the C0 controls but not, with ``ensure_ascii=False``, DEL, the C1 controls or the
    bidirectional overrides; those become ``\uXXXX`` here, which decodes to the same string.
    """
    text = json.dumps(value, ensure_ascii=False, indent=2, default=str)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == "\n" else json.dumps(ch)[1:-1] for ch in text)


# -- short ids -------------------------------------------------------------------------------------------
def short_ids(ids: Iterable[str], *, min_len: int = MIN_PREFIX) -> dict[str, str]:
    """Each id's shortest prefix (at least ``min_len``) that no other distinct id in ``ids`` shares.

    Args:
        ids: the ids shown together (repeats allowed: one event may be dead-lettered by two routes).
        min_len: the shortest prefix to show.

    Returns:
        id → its prefix (the whole id when no shorter prefix is unique).
    """
    distinct = sorted(set(ids))
    out: dict[str, str] = {}
    for i, current in enumerate(distinct):
        # in sorted order, the longest prefix shared with any other id is shared with a neighbour
        shared = max(
            (_common(current, distinct[j]) for j in (i - 1, i + 1) if 0 <= j < len(distinct)),
            default=0,
        )
        out[current] = current[: max(min_len, shared + 1)]
    return out


def _common(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class SelectorError(ValueError):
    """An event id selector that is too short, matches nothing, or matches several events."""


@dataclass(frozen=True, slots=True)
class Resolved:
    """What a set of selectors names: full event ids, and the selectors that matched nothing."""

    event_ids: frozenset[str]
    unmatched: tuple[str, ...]


def resolve_ids(selectors: Iterable[str], known: Iterable[str], *, min_len: int = MIN_PREFIX) -> Resolved:
    """Turn event ids or unique prefixes of them into full event ids, as git resolves short hashes.

    A selector equal to a known id names it; otherwise it must be at least ``min_len`` characters and a
    prefix of exactly one distinct known id.

    Args:
        selectors: what the operator typed (``--event-id``, or ``dlq show``'s argument).
        known: the event ids of the dead letters in the selected queues.
        min_len: the shortest prefix accepted.

    Returns:
        The full ids, and the selectors that match no dead letter (the caller decides whether that is an error).

    Raises:
        SelectorError: a selector shorter than ``min_len`` that is not a whole id, or one matching several ids
            (the message lists them, with the prefix that would tell each apart).
    """
    ids = set(known)
    found: set[str] = set()
    unmatched: list[str] = []
    for selector in selectors:
        wanted = selector.strip().lower()
        exact = {i for i in ids if i.lower() == wanted}
        if exact:
            found |= exact
            continue
        if len(wanted) < min_len:
            raise SelectorError(f"event id prefix {selector!r} is too short: give at least {min_len} characters")
        matches = sorted(i for i in ids if i.lower().startswith(wanted))
        if len(matches) > 1:
            shown = short_ids(matches, min_len=len(wanted) + 1)
            listed = ", ".join(printable(shown[m]) for m in matches[:10]) + (", ..." if len(matches) > 10 else "")
            raise SelectorError(f"event id prefix {selector!r} is ambiguous: it matches {len(matches)} ({listed})")
        if matches:
            found.add(matches[0])
        else:
            unmatched.append(selector)
    return Resolved(frozenset(found), tuple(unmatched))


# -- the reason column -----------------------------------------------------------------------------------
def reason(error: str, width: int = 60) -> str:
    """The error as a short readable reason: its first clause, cut at a word boundary with an ellipsis.

    A target's quoted JSON reply (``HTTP 404: {"status":404,"message":"dossier X not found",...}``) is
    replaced by its message (``HTTP 404: dossier X not found``): the raw body is what the ``show`` command
    is for.

    Args:
        error: the dead letter's ``x-error`` (already scrubbed of personal data by whoever wrote it).
        width: the most characters returned, the ellipsis included.
    """
    text = error.strip()
    m = _HTTP_REPLY.match(text)
    if m:
        said = _reply_reason(m.group("body"))
        text = f"{m.group('head')}: {said}" if said else m.group("head")
    else:
        end = _CLAUSE_END.search(text)
        if end:
            text = text[: end.start()]
    text = " ".join(text.split())
    return cut(text, width)


def _reply_reason(body: str) -> str | None:
    """The human-readable reason inside a quoted JSON reply, also when the quote was cut short."""
    try:
        parsed = json.loads(body.rstrip(ELLIPSIS))
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict):
        for key in _REPLY_REASON_KEYS:
            value = parsed.get(key)
            if isinstance(value, str) and value.strip():
                return value
        return None
    for key in _REPLY_REASON_KEYS:
        found = re.search(_QUOTED_KEY.format(key=re.escape(key)), body)
        if found:
            return found.group("value")
    return None


def cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters: whole, or cut at the last space before the limit + ``…``.

    A single word longer than the limit is cut inside it (there is no boundary to cut at).
    """
    if len(text) <= width:
        return text
    room = max(width - len(ELLIPSIS), 1)
    head = text[: room + 1]
    space = head.rfind(" ")
    head = head[:space] if space > 0 else head[:room]
    return head.rstrip(" ,;:-") + ELLIPSIS
