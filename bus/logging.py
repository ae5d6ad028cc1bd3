"""The one logging chain of the process: structlog JSON lines (or console text) with personal data masked.

Every step of a message's path logs through here: the ingress, the worker's pipeline (which binds
``event_id``, ``route``, ``dossier_code``, ``connector`` and ``attempt`` once per delivery), the connectors,
and the libraries that log through the standard ``logging`` module (pika, httpx, zeep), which are routed
into the same chain. The chain, in order:

1. merge the context variables, add the level, an ISO timestamp (UTC) and the logger's name;
2. render ``exc_info``: a structured traceback **without local variables** (structlog's ``dict_tracebacks``
   shows them by default: a CCCD, a phone and an ``api_key`` in a frame's locals all reached the logs,
   docs/reliability.md "Logs"), or plain traceback text on the console;
3. :class:`MaskPersonalData`: mask every value logged under a personal field name
   (:data:`schemas.events.SENSITIVE_FIELDS`, and the target systems' names for the same data) or a
   credential's name, at any depth, and run :func:`schemas.pii.scrub_text` over every string left, the
   rendered exception included;
4. render one JSON object per line (``ensure_ascii=False``: Vietnamese stays readable) or console text.

Masking happens here only, driven by the schemas' markers; call sites never redact by hand.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, Final, TextIO, cast

import structlog
from pydantic import BaseModel
from structlog.dev import ConsoleRenderer, plain_traceback
from structlog.processors import ExceptionRenderer, JSONRenderer, TimeStamper
from structlog.tracebacks import ExceptionDictTransformer

from bus.log_buffer import LineBuffer
from schemas.errors import ConfigError
from schemas.events import SENSITIVE_FIELDS
from schemas.pii import TARGET_PERSONAL_FIELDS, mask, scrub_text

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

#: keys whose values are credentials, wherever they are logged (matched case-insensitively)
SECRET_KEYS: Final = frozenset(
    {
        "password", "passwd", "acpass", "userpass", "apipass", "secret", "secretkey", "secret_key",
        "client_secret", "api_key", "apikey", "access_token", "refresh_token", "token", "authorization",
        "session", "maxacthuc",
    }
)  # fmt: skip
#: what :class:`MaskPersonalData` masks by key: the schemas' personal fields, the target systems' names
#: for the same data, and credentials
MASKED_KEYS: Final = SENSITIVE_FIELDS | TARGET_PERSONAL_FIELDS | SECRET_KEYS
#: accepted ``level`` names
LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
#: accepted ``fmt`` names
FORMATS: Final = ("json", "console")
#: the key structlog renders an exception into; its nested keys (``name`` of a frame) are not payload fields
EXCEPTION_KEY: Final = "exception"
#: keys whose plain values only the bus itself sets (the chain's own stamps, names from the config, counters
#: and timings): passed through unscanned, since scanning them on every line of every message costs more
#: than the rest of the masking. Anything read from a message (ids, codes, errors) is still scanned.
TRUSTED_KEYS: Final = frozenset(
    {"timestamp", "level", "logger", "route", "connector", "operation", "outcome", "attempt", "duration_ms", "delay_s"}
)
_PLAIN: Final = frozenset({str, int, float, bool, type(None)})
#: nesting deeper than this is logged as scrubbed text, not walked: a cycle must not crash a log call
MAX_DEPTH: Final = 16
#: cap on the text a too-deep value is rendered to
MAX_DEEP_TEXT: Final = 2000
#: how many top-level key names :class:`MaskPersonalData` remembers as plain (a cap against a caller logging
#: a payload's keys as keyword arguments)
MAX_PLAIN_KEYS: Final = 4096


class MaskPersonalData:
    """Processor that masks personal data in an event dict; configured once, then called for every event.

    A value whose key (any case) is a personal field name or a credential is masked whole (every leaf of a
    dict or list under it); every other string is scrubbed for ids, phones and e-mails
    (:func:`schemas.pii.scrub_text`, which also masks ``name='…'``-style pairs inside text). Pydantic
    models are dumped and walked like dicts; any other object is logged as its scrubbed ``str()``, since its
    repr could carry anything. The rendered ``exception`` is scrubbed only: its keys are structlog's.

    Args:
        keys: the names to mask by; defaults to :data:`MASKED_KEYS`.
    """

    __slots__ = ("_keys", "_plain_keys")

    def __init__(self, keys: Iterable[str] = MASKED_KEYS) -> None:
        self._keys = frozenset(k.lower() for k in keys)
        #: top-level keys seen that are neither masked nor the exception's (bounded: keys are call sites' names)
        self._plain_keys: set[str] = set()

    def __call__(self, _logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
        """Return a masked copy of ``event_dict``.

        Why the shortcuts: this runs for every line of every message (issue 15). A string or number under a
        key already known to be no personal field's, no credential's and not the exception's takes the same
        path :meth:`_field` would give it (numbers pass, text is scrubbed), without the key's lowering and
        lookup and the type tests of :meth:`_walk`; anything else goes the whole way.
        """
        plain_keys = self._plain_keys
        out: EventDict = {}
        for key, value in event_dict.items():
            kind = type(value)
            if key in plain_keys:
                if kind is str:
                    out[key] = scrub_text(value, keys=self._keys)
                    continue
                if kind in _PLAIN:
                    out[key] = value
                    continue
            elif key in TRUSTED_KEYS and kind in _PLAIN:
                out[key] = value
                continue
            elif key == EXCEPTION_KEY:
                out[key] = self._scrub(value, 0)
                continue
            elif (
                type(key) is str and key.lower() not in self._keys and len(plain_keys) < MAX_PLAIN_KEYS
            ):  # fmt: skip
                plain_keys.add(key)
            out[key] = self._field(key, value, 0)
        return out

    def mask_value(self, value: Any) -> Any:
        """``value`` masked as a logged value would be: what an operator's screen shows of a message (the CLI)."""
        return self._walk(value, 0)

    def _field(self, key: Any, value: Any, depth: int) -> Any:
        if isinstance(key, str) and key.lower() in self._keys:
            return self._mask(value, depth)
        return self._walk(value, depth)

    def _text(self, value: Any) -> str:
        return scrub_text(str(value), keys=self._keys)

    def _walk(self, value: Any, depth: int) -> Any:
        if value is None or isinstance(value, bool | int | float):
            return value
        if depth >= MAX_DEPTH:
            return self._text(value)[:MAX_DEEP_TEXT]
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        if isinstance(value, dict):
            return {k: self._field(k, v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._walk(v, depth + 1) for v in value]
        return self._text(value)

    def _mask(self, value: Any, depth: int) -> Any:
        if value is None:
            return None
        if depth >= MAX_DEPTH:
            return mask(str(value)[:MAX_DEEP_TEXT])
        if isinstance(value, BaseModel):
            return self._mask(value.model_dump(mode="json"), depth + 1)
        if isinstance(value, dict):
            return {k: self._mask(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._mask(v, depth + 1) for v in value]
        return mask(str(value))

    def _scrub(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return self._text(value)
        if depth >= MAX_DEPTH:
            return self._text(value)[:MAX_DEEP_TEXT]
        if isinstance(value, dict):
            return {k: self._scrub(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(v, depth + 1) for v in value]
        return value


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's ``WriteLogger`` that remembers the name it was asked for."""

    def __init__(self, file: TextIO | None = None, name: str | None = None) -> None:
        super().__init__(file)
        self.name = name


class _BufferedLogger:
    """Writes rendered lines through a :class:`bus.log_buffer.LineBuffer`: warnings and worse at once."""

    __slots__ = ("_buffer", "name")

    def __init__(self, buffer: LineBuffer, name: str | None) -> None:
        self._buffer = buffer
        self.name = name

    def msg(self, message: str) -> None:
        self._buffer.write(message)

    def urgent(self, message: str) -> None:
        self._buffer.write(message, urgent=True)

    log = debug = info = msg
    warn = warning = err = error = critical = exception = fatal = failure = urgent


class _NamedWriteLoggerFactory:
    """Makes the loggers of one stream; ``structlog.get_logger("x")`` passes ``"x"`` here."""

    __slots__ = ("_buffer", "_file")

    def __init__(self, file: TextIO, buffer: LineBuffer | None) -> None:
        self._file = file
        self._buffer = buffer

    def __call__(self, *args: Any) -> _NamedWriteLogger | _BufferedLogger:
        name = args[0] if args and isinstance(args[0], str) else None
        if self._buffer is not None:
            return _BufferedLogger(self._buffer, name)
        return _NamedWriteLogger(self._file, name)


class _BusHandler(logging.StreamHandler[TextIO]):
    """The root handler this module installs; a second configuration finds it by its class.

    With a buffer, its lines join the structlog lines' queue, so the file keeps one order.
    """

    def __init__(self, stream: TextIO, buffer: LineBuffer | None = None) -> None:
        super().__init__(stream)
        self._buffer = buffer

    def emit(self, record: logging.LogRecord) -> None:
        if self._buffer is None:
            super().emit(record)
            return
        try:
            self._buffer.write(self.format(record), urgent=record.levelno >= logging.WARNING)
        except Exception:  # the stdlib's contract: a handler never raises into the caller
            self.handleError(record)


#: the buffer of the current configuration (closed when a new configuration replaces it)
_current_buffer: LineBuffer | None = None


def _add_logger_name(logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", None)
    if name and "logger" not in event_dict:
        event_dict["logger"] = name
    return event_dict


def configure_logging(
    level: str = "info", fmt: str = "json", stream: TextIO | None = None, *, buffered: bool = False
) -> None:
    """Configure structlog, and route the standard ``logging`` module into the same chain.

    Safe to call again: the new configuration replaces the old one (processors, level, stream) and the
    root handler installed by a previous call is swapped, never duplicated. Loggers are not cached, so a
    module-level ``log = get_logger()`` follows a later reconfiguration; a logger already bound keeps the
    configuration it was bound under.

    Args:
        level: ``debug``, ``info``, ``warning``, ``error`` or ``critical``.
        fmt: ``json`` (one object per line, for files and collectors) or ``console`` (for a terminal).
        stream: where lines go; standard error when not given, so a CLI's own output stays clean.
        buffered: write INFO and DEBUG lines a group at a time (:mod:`bus.log_buffer`: the worker).

    Raises:
        ConfigError: on an unknown level or format.
    """
    min_level = LEVELS.get(level.lower())
    if min_level is None:
        raise ConfigError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ConfigError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out = stream if stream is not None else sys.stderr
    global _current_buffer  # noqa: PLW0603 - one logging configuration per process
    if _current_buffer is not None:
        _current_buffer.close()
    buffer = _current_buffer = LineBuffer(out) if buffered else None

    timestamper = TimeStamper(fmt="iso", utc=True)
    masker = MaskPersonalData()
    renderer: Processor
    if fmt == "json":
        exceptions = ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        renderer = JSONRenderer(ensure_ascii=False)
    else:
        # Plain text rendered before masking, so the masker sees it; ConsoleRenderer's own (rich) formatter
        # would print locals, after the masker has run.
        exceptions = ExceptionRenderer()
        isatty = getattr(out, "isatty", None)
        renderer = ConsoleRenderer(
            colors=bool(isatty and isatty()), exception_formatter=plain_traceback, sort_keys=False
        )

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            _add_logger_name,
            structlog.processors.StackInfoRenderer(),
            exceptions,
            masker,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        context_class=dict,
        logger_factory=_NamedWriteLoggerFactory(out, buffer),
        cache_logger_on_first_use=False,
    )

    handler = _BusHandler(out, buffer)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                timestamper,
                structlog.stdlib.add_logger_name,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                exceptions,
                masker,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _BusHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(min_level)
    # pika narrates every socket step at INFO; its warnings and errors are what an operator needs
    for chatty in ("pika", "httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(min_level, logging.WARNING))


def saved_logging() -> Callable[[], None]:
    """Snapshot the whole logging configuration; the function returned puts it back.

    A command that configures logging for one block (``logs_after_report``) must not leave a process that
    goes on (a test run, an embedding program) filtering at its level or writing to its stream.
    """
    config = structlog.get_config()
    processors = config["processors"]  # the same list back: bound loggers hold a reference to it
    contents = list(processors)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    chatty = {name: logging.getLogger(name).level for name in ("pika", "httpx", "httpcore")}

    def restore() -> None:
        processors[:] = contents
        structlog.configure(**{**config, "processors": processors})
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, was in chatty.items():
            logging.getLogger(name).setLevel(was)

    return restore


def get_logger(name: str | None = None) -> FilteringBoundLogger:
    """A structlog logger of the configured chain; ``name`` appears as the ``logger`` key of each line."""
    logger = structlog.get_logger(name) if name else structlog.get_logger()
    return cast("FilteringBoundLogger", logger)
