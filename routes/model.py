"""The runtime route: a ``routes.yaml`` entry joined to its adapter, connector operation and condition.

Where this sits: second step of a message's path (event → **route** → adapter → connector → result/DLQ). The
YAML was already shaped by :mod:`config.loader`; here we check what only the registries know (does the adapter
exist, does the connector have that operation, does the adapter produce what the operation takes, can any
known event reach the route, does a result route feed itself) and build one :class:`Route` per entry. Every
choice is made here, once, at start (STYLE point 5): the worker never looks a name up per message.

All problems are collected before :class:`config.loader.ConfigInvalid` is raised, so ``igate-bus check``
shows an integrator everything to fix in one run, each with file, line, route and field.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from adapters.registry import ADAPTER_MODULES, Adapter
from adapters.registry import adapters as registered_adapters
from config.loader import (
    CONNECTORS_FILE,
    ConfigInvalid,
    ConfigProblem,
    LinePath,
    LoadedConfig,
    did_you_mean,
    format_field,
    load_config,
)
from connectors.base import CONNECTOR_TYPES, ConnectorType, OperationSpec, connector_type
from routes.schedule import schedule_problem
from schemas.bus import TICK_EVENT

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

    from jmespath.parser import ParsedResult
    from pydantic import BaseModel

    from config.model import RouteSpec

#: the longest delay a retry queue may hold a message; past a day, dead-letter it and replay by hand instead
MAX_BACKOFF_S = 86_400.0
#: the exchange whose events are the bus's own results (a route there must not bind what it emits)
RESULTS_EXCHANGE = "bus.results"
#: an adapter that declares this in ``accepts`` takes any event type
ANY_EVENT = "*"
#: when a name has no close match, the message lists the known names, up to this many
MAX_LISTED = 12


@dataclass(frozen=True, slots=True)
class Route:
    """One route ready to run: its spec, and everything its names resolve to.

    Queue names are not kept here: :mod:`routes.topology` derives them from ``spec.name``.

    Attributes:
        spec: the validated entry of routes.yaml.
        adapter: the registered adapter named by ``spec.adapter``.
        connector: the connector name (the part of ``spec.to`` before the dot), a key of connectors.yaml.
        operation: the operation name (after the dot).
        op_spec: the operation's request/reply models and whether it has an effect.
        when: the compiled JMESPath condition, or None when the route takes every event.
    """

    spec: RouteSpec
    adapter: Adapter
    connector: str
    operation: str
    op_spec: OperationSpec
    when: ParsedResult | None = None

    @property
    def name(self) -> str:
        """The route's name, which also names its queues."""
        return self.spec.name


# -- AMQP topic matching ---------------------------------------------------------------------------------


def binding_matches(binding_key: str, routing_key: str) -> bool:
    """Whether a topic binding key takes a routing key, as RabbitMQ decides it.

    Words are separated by dots; ``*`` matches exactly one word and ``#`` zero or more words.

    Args:
        binding_key: the pattern, e.g. ``dossier.*`` or ``#.issued``.
        routing_key: the event type, e.g. ``dossier.received``.
    """
    return _match(tuple(binding_key.split(".")), tuple(routing_key.split(".")))


@lru_cache(maxsize=4096)
def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    return bool(words) and head in ("*", words[0]) and _match(rest, words[1:])


def _accepts(adapter: Adapter, event_type: str) -> bool:
    return ANY_EVENT in adapter.accepts or any(binding_matches(a, event_type) for a in adapter.accepts)


# -- the registries, loaded so that a broken module is a problem, not a traceback --------------------------


@dataclass(slots=True)
class _Registries:
    """What the names in the config resolve against."""

    adapters: Mapping[str, Adapter]
    #: adapter module → why it could not be imported (then ``adapters`` is incomplete and unknown names are
    #: not reported, since the missing module may hold them)
    adapter_failures: dict[str, str]
    event_types: Mapping[str, type[BaseModel]]
    #: connector type name → its class, or the reason it could not be loaded
    connector_types: dict[str, ConnectorType | str]
    known_types: tuple[str, ...]


def _default_adapters() -> tuple[Mapping[str, Adapter], dict[str, str]]:
    try:
        return registered_adapters(), {}
    except ImportError:
        failures: dict[str, str] = {}
        for module in ADAPTER_MODULES:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                failures[module] = str(exc)
        if not failures:  # the module imported this time round; nothing we can attribute
            raise
        return {}, failures


def _default_event_types() -> Mapping[str, type[BaseModel]]:
    from schemas.events import EVENT_PAYLOADS

    return EVENT_PAYLOADS


def _resolve_types(
    wanted: Iterable[str], given: Mapping[str, ConnectorType] | None
) -> tuple[dict[str, ConnectorType | str], tuple[str, ...]]:
    if given is not None:
        return {name: given[name] for name in wanted if name in given}, tuple(given)
    resolved: dict[str, ConnectorType | str] = {}
    for name in wanted:
        if name in CONNECTOR_TYPES:
            try:
                resolved[name] = connector_type(name)
            except (ImportError, AttributeError) as exc:
                resolved[name] = f"{CONNECTOR_TYPES[name]} cannot be loaded: {exc}"
    return resolved, tuple(CONNECTOR_TYPES)


# -- collecting problems ---------------------------------------------------------------------------------


def _unknown(kind: str, name: str, known: Iterable[str]) -> tuple[str, str | None]:
    """``unknown adapter 'x'`` with a "did you mean", or with the known names when none is close."""
    names = sorted(set(known))
    hint = did_you_mean(name, names)
    if hint or not names:
        return f"unknown {kind} {name!r}", hint
    listed = ", ".join(names[:MAX_LISTED]) + (", ..." if len(names) > MAX_LISTED else "")
    return f"unknown {kind} {name!r}; known: {listed}", None


@dataclass(slots=True)
class _Check:
    """The problems found so far, placed on lines through the loaded config's line maps."""

    loaded: LoadedConfig
    problems: list[ConfigProblem] = field(default_factory=list)

    def route(self, index: int, spec: RouteSpec, loc: LinePath, message: str, hint: str | None = None) -> None:
        """A problem in route number ``index`` (0-based), at ``loc`` inside it."""
        source = self.loaded.routes_source
        line = source.line_of(("routes", index, *loc))
        self.problems.append(ConfigProblem(source.path, line, spec.name, format_field(loc), message, hint))

    def connector(self, name: str, loc: LinePath, message: str, hint: str | None = None) -> None:
        """A problem in connector ``name`` of connectors.yaml."""
        source = self.loaded.connectors_source
        line = source.line_of(("connectors", name, *loc))
        self.problems.append(ConfigProblem(source.path, line, None, format_field(loc), message, hint, connector=name))

    def file(self, loc: LinePath, message: str) -> None:
        """A problem of routes.yaml as a whole."""
        source = self.loaded.routes_source
        self.problems.append(ConfigProblem(source.path, source.line_of(loc), None, "", message))


def _check_connectors(check: _Check, reg: _Registries) -> None:
    for name, spec in check.loaded.connectors.connectors.items():
        found = reg.connector_types.get(spec.type)
        if found is None:
            check.connector(name, ("type",), *_unknown("connector type", spec.type, reg.known_types))
        elif isinstance(found, str):
            check.connector(name, ("type",), f"connector type {spec.type!r}: {found}")


def _operation(check: _Check, reg: _Registries, index: int, spec: RouteSpec) -> OperationSpec | None:
    """The operation ``spec.to`` names, or None after recording why it cannot be resolved."""
    connectors = check.loaded.connectors.connectors
    conn = connectors.get(spec.connector)
    if conn is None:
        message, hint = _unknown("connector", spec.connector, connectors)
        check.route(index, spec, ("to",), f"{message} (connectors are declared in {CONNECTORS_FILE})", hint)
        return None
    found = reg.connector_types.get(conn.type)
    if found is None or isinstance(found, str):
        return None  # reported once, on the connector's `type` line
    op_spec = found.OPERATIONS.get(spec.operation)
    if op_spec is None:
        message, hint = _unknown("operation", spec.operation, found.OPERATIONS)
        check.route(index, spec, ("to",), f"{message} for connector {spec.connector} (type {conn.type})", hint)
    return op_spec


def _adapter(check: _Check, reg: _Registries, index: int, spec: RouteSpec) -> Adapter | None:
    """The adapter ``spec.adapter`` names, or None after recording why it cannot be resolved."""
    found = reg.adapters.get(spec.adapter)
    if found is not None:
        return found
    module = f"adapters.{spec.adapter.split('.', 1)[0]}"
    if module in reg.adapter_failures:
        reason = reg.adapter_failures[module]
        check.route(index, spec, ("adapter",), f"adapter module {module} cannot be imported: {reason}")
    elif not reg.adapter_failures:
        check.route(index, spec, ("adapter",), *_unknown("adapter", spec.adapter, reg.adapters))
    return None


def _check_bindings(check: _Check, reg: _Registries, index: int, spec: RouteSpec, adapter: Adapter | None) -> None:
    for j, key in enumerate(spec.from_.events):
        loc: LinePath = ("from", "events", j)
        if key == TICK_EVENT:
            check.route(index, spec, loc, f"{TICK_EVENT} is fired by the route's schedule (from.schedule), not bound")
            continue
        # a tick never comes through an exchange (the pipeline refuses one that does): no key binds it
        matched = sorted(t for t in reg.event_types if t != TICK_EVENT and binding_matches(key, t))
        if not matched:
            hint = None if "*" in key or "#" in key else did_you_mean(key, reg.event_types)
            check.route(index, spec, loc, f"unreachable route: binds no known event type ({key!r})", hint)
            continue
        if adapter is not None:
            refused = [t for t in matched if not _accepts(adapter, t)]
            if refused:
                takes = ", ".join(sorted(adapter.accepts))
                check.route(
                    index,
                    spec,
                    loc,
                    f"adapter {adapter.name} does not accept {', '.join(refused)} (it accepts {takes})",
                )


def _check_schedule(check: _Check, index: int, spec: RouteSpec, adapter: Adapter | None) -> None:
    """A schedule must be able to fire, and the route's adapter must take the ``bus.tick`` it fires."""
    schedule = spec.from_.schedule
    if schedule is None:
        return
    if schedule.cron is not None and (problem := schedule_problem(schedule)) is not None:
        check.route(index, spec, ("from", "schedule", "cron"), problem)
    if adapter is not None and not _accepts(adapter, TICK_EVENT):
        takes = ", ".join(sorted(adapter.accepts))
        check.route(
            index,
            spec,
            ("adapter",),
            f"the route has a schedule, but adapter {adapter.name} does not accept {TICK_EVENT} (it accepts {takes})",
        )


def _check_emits(check: _Check, reg: _Registries, index: int, spec: RouteSpec) -> None:
    emits = spec.emits
    if emits is None:
        return
    if emits not in reg.event_types:
        message, hint = _unknown("event type", emits, reg.event_types)
        check.route(index, spec, ("emits",), message, hint)
    if spec.from_.exchange == RESULTS_EXCHANGE:
        loops = [key for key in spec.from_.events if binding_matches(key, emits)]
        if loops:
            check.route(
                index,
                spec,
                ("emits",),
                f"loop: the route emits {emits} on {RESULTS_EXCHANGE} and binds it there ({', '.join(loops)})",
            )


def _check_retry(check: _Check, index: int, spec: RouteSpec) -> None:
    for k, delay in enumerate(spec.retry.backoff):
        if delay > MAX_BACKOFF_S:
            check.route(
                index,
                spec,
                ("retry", "backoff", k),
                f"{delay:g}s is longer than 1 day; let the message dead-letter and replay it instead",
            )


def build_routes(
    loaded: LoadedConfig,
    *,
    adapters: Mapping[str, Adapter] | None = None,
    connector_types: Mapping[str, ConnectorType] | None = None,
    event_types: Mapping[str, type[BaseModel]] | None = None,
) -> list[Route]:
    """Resolve every route's names and check what the YAML models cannot; one :class:`Route` per entry.

    Args:
        loaded: the validated config files with their line maps.
        adapters: adapter name → adapter; defaults to the registry (:func:`adapters.registry.adapters`).
        connector_types: connector type → class; defaults to :data:`connectors.base.CONNECTOR_TYPES`,
            importing only the types connectors.yaml uses.
        event_types: every known event type → its payload model; defaults to ``schemas.events``.

    Returns:
        The routes in file order, disabled ones included (``spec.enabled`` tells).

    Raises:
        ConfigInvalid: with every problem found, in both files.
    """
    adapter_failures: dict[str, str] = {}
    if adapters is None:
        adapters, adapter_failures = _default_adapters()
    used_types = {c.type for c in loaded.connectors.connectors.values()}
    types, known_types = _resolve_types(used_types, connector_types)
    reg = _Registries(
        adapters=adapters,
        adapter_failures=adapter_failures,
        event_types=_default_event_types() if event_types is None else event_types,
        connector_types=types,
        known_types=known_types,
    )
    check = _Check(loaded)
    _check_connectors(check, reg)
    attributed = {f"adapters.{r.adapter.split('.', 1)[0]}" for r in loaded.routes.routes}
    for module, reason in adapter_failures.items():
        if module not in attributed:  # no route names it, yet the bus cannot start without it
            check.file((), f"adapter module {module} cannot be imported: {reason}")

    routes: list[Route] = []
    first_line: dict[str, int] = {}
    for index, spec in enumerate(loaded.routes.routes):
        line = loaded.routes_source.line_of(("routes", index, "name"))
        if spec.name in first_line:
            check.route(index, spec, ("name",), f"duplicate route name (first on line {first_line[spec.name]})")
        first_line.setdefault(spec.name, line)
        adapter = _adapter(check, reg, index, spec)
        op_spec = _operation(check, reg, index, spec)
        if adapter is not None and op_spec is not None and not issubclass(adapter.produces, op_spec.request):
            check.route(
                index,
                spec,
                ("adapter",),
                f"adapter {adapter.name} produces {adapter.produces.__name__}, "
                f"but {spec.to} takes {op_spec.request.__name__}",
            )
        _check_bindings(check, reg, index, spec, adapter)
        _check_schedule(check, index, spec, adapter)
        _check_emits(check, reg, index, spec)
        _check_retry(check, index, spec)
        _check_order(check, index, spec, op_spec)
        if adapter is not None and op_spec is not None:
            routes.append(_route(spec, adapter, op_spec))
    if check.problems:
        raise ConfigInvalid(check.problems)
    return routes


def _check_order(check: _Check, index: int, spec: RouteSpec, op_spec: OperationSpec | None) -> None:
    """``order`` needs state at the target; ``single_consumer`` keeps the queue's order only on one thread."""
    if spec.order is not None and op_spec is not None and not op_spec.effect:
        message = f"{spec.to} applies nothing at its target: there is no state to keep in order"
        check.route(index, spec, ("order",), message)
    if spec.single_consumer and spec.concurrency > 1:
        message = f"single_consumer keeps the queue's order only with concurrency: 1 (it is {spec.concurrency})"
        check.route(index, spec, ("single_consumer",), message)


def _route(spec: RouteSpec, adapter: Adapter, op_spec: OperationSpec) -> Route:
    import jmespath

    when = jmespath.compile(spec.when) if spec.when is not None else None  # parses: the model checked it
    return Route(spec, adapter, spec.connector, spec.operation, op_spec, when)


def check_config(config_dir: Path) -> tuple[int, list[str]]:
    """What ``igate-bus check`` prints, and its exit code: 0 and ``ok: ...``, or 2 and a line per problem.

    Args:
        config_dir: the folder holding routes.yaml and connectors.yaml.

    Returns:
        The exit code and the lines to print; problems are sorted by file and line.
    """
    try:
        loaded = load_config(config_dir)
        routes = build_routes(loaded)
    except ConfigInvalid as exc:
        return 2, [p.format() for p in exc.problems]
    except OSError as exc:
        return 2, [cannot_read(exc, config_dir)]
    n_routes, n_connectors = len(routes), len(loaded.connectors.connectors)
    return 0, [f"ok: {_count(n_routes, 'route')}, {_count(n_connectors, 'connector')}"]


def cannot_read(exc: OSError, config_dir: Path) -> str:
    """``FILE: cannot read: reason`` for a config file that is missing or unreadable."""
    return f"{exc.filename or config_dir}: cannot read: {exc.strerror or exc}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
