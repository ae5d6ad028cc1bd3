"""Load ``routes.yaml`` and ``connectors.yaml`` so that every problem names its file, line, route and field.

Where this sits: before any message moves, the process (``igate-bus run``) and ``igate-bus check`` read the
config folder here. Integrators edit these files by hand, so an error must point at the line to fix, not at a
pydantic location. We therefore compose the YAML node tree ourselves (``yaml.SafeLoader``, never the full
loader), record the line of every mapping key and sequence item by its path (``("routes", 0, "retry")``),
report every duplicate key with both lines (PyYAML silently keeps the last one), and validate into the
models of :mod:`config.model`; a file with a duplicate key is refused even when what YAML kept is valid.
Each pydantic error becomes a :class:`ConfigProblem` placed on the deepest path element that exists in the
file, with a "did you mean" for a misspelt key.

Semantic checks that need the registries (unknown adapter, connector, operation, event type) live in
:mod:`routes.model`, which reuses :class:`ConfigProblem` and the line map kept in :class:`LoadedConfig`.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from config.model import BINDING_KEY, ROUTE_NAME, ConnectorsFile, RoutesFile

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from pathlib import Path

    from pydantic_core import ErrorDetails

#: the file names inside the config folder
ROUTES_FILE = "routes.yaml"
CONNECTORS_FILE = "connectors.yaml"
#: a config file is a page or two of YAML; anything this large is a mistake (or an attack on the parser)
MAX_FILE_BYTES = 1_048_576
#: YAML aliases can expand a small file into a huge tree ("billion laughs"); we stop walking well before that
MAX_NODES = 100_000
#: deeper nesting than this is no config of ours, and a recursive alias would otherwise never end
MAX_DEPTH = 64
#: how close a misspelling must be to be offered as "did you mean" (difflib ratio)
HINT_CUTOFF = 0.6

#: a path into a YAML document: mapping keys and sequence indexes, as pydantic reports locations
LinePath = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"

#: integrator-facing wording for the regular expressions of config.model (pydantic only quotes the pattern)
_PATTERN_WORDING: dict[str, str] = {
    BINDING_KEY: "is not a binding key: words of a-z, 0-9 and _ joined by dots; * is one word, # any words",
    ROUTE_NAME: "is not a route name: lower-case letters, digits and dashes, starting with a letter",
    r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$": "is not connector.operation, e.g. igate.add_note",
    r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$": "is not an event type, e.g. dossier.received",
    r"^[a-z][a-z0-9_]*$": "is not a connector name: lower-case letters, digits and _, starting with a letter",
}


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong in the config, placed where an integrator fixes it.

    Attributes:
        file: the YAML file, as the user named it (``config/routes.yaml``).
        line: 1-based line of the deepest part of the path that exists in the file.
        route: the route the problem belongs to (routes.yaml), ``#N`` when it has no usable name, or None.
        field: the dotted field path inside the route or connector (``retry.backoff[1]``); may be empty.
        message: what is wrong, in words an integrator understands.
        hint: the closest known name, offered as "did you mean", or None.
        connector: the connector the problem belongs to (connectors.yaml), or None.
    """

    file: Path
    line: int
    route: str | None
    field: str
    message: str
    hint: str | None = None
    connector: str | None = None

    def format(self) -> str:
        """The problem as one line: ``FILE:LINE: route NAME: FIELD: message (did you mean X?)``."""
        parts = [f"{self.file}:{self.line}"]
        if self.route is not None:
            parts.append(f"route {self.route}")
        if self.connector is not None:
            parts.append(f"connector {self.connector}")
        if self.field:
            parts.append(self.field)
        text = ": ".join([*parts, _one_line(self.message)])
        return f"{text} (did you mean {self.hint}?)" if self.hint else text

    def sort_key(self) -> tuple[str, int, str, str]:
        """Order by file, then line, then field, so output reads top to bottom."""
        return (str(self.file), self.line, self.field, self.message)

    def __str__(self) -> str:
        return self.format()


def _one_line(text: str) -> str:
    """One problem is one line: join a multi-line message, dropping caret-only lines (JMESPath's ``^``)."""
    if "\n" not in text:
        return text
    return " ".join(part.strip() for part in text.splitlines() if part.strip(" ^"))


class ConfigInvalid(Exception):
    """The configuration has problems; ``problems`` holds every one found, not only the first."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: list[ConfigProblem] = sorted(problems, key=ConfigProblem.sort_key)
        super().__init__("\n".join(p.format() for p in self.problems))


@dataclass(frozen=True, slots=True)
class SourceMap:
    """Where each path of one YAML file sits: the line of every mapping key and sequence item."""

    path: Path
    lines: Mapping[LinePath, int] = field(default_factory=dict)

    def has(self, loc: Sequence[str | int]) -> bool:
        """Whether this exact path exists in the file."""
        return tuple(loc) in self.lines

    def existing_prefix(self, loc: Sequence[str | int]) -> LinePath:
        """The longest leading part of ``loc`` that exists in the file (``()`` is the document itself)."""
        path = tuple(loc)
        while path and path not in self.lines:
            path = path[:-1]
        return path

    def line_of(self, loc: Sequence[str | int]) -> int:
        """The line of the deepest element of ``loc`` that exists in the file; 1 for the document."""
        return self.lines.get(self.existing_prefix(loc), 1)


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """Both files validated, with their line maps, ready for :func:`routes.model.build_routes`."""

    config_dir: Path
    routes: RoutesFile
    connectors: ConnectorsFile
    routes_source: SourceMap
    connectors_source: SourceMap

    @property
    def routes_path(self) -> Path:
        """The routes.yaml that was read."""
        return self.routes_source.path

    @property
    def connectors_path(self) -> Path:
        """The connectors.yaml that was read."""
        return self.connectors_source.path


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """The known name closest to ``name``, if any is close enough to be a plausible typo."""
    matches = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=HINT_CUTOFF)
    return matches[0] if matches else None


def format_field(loc: Sequence[str | int]) -> str:
    """``("retry", "backoff", 1)`` → ``retry.backoff[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


# -- reading YAML with lines -----------------------------------------------------------------------------


class _TooBig(Exception):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass(slots=True)
class _Walk:
    """State of one walk over a composed node tree."""

    lines: dict[LinePath, int] = field(default_factory=dict)
    #: (path of the key, first line, repeated line)
    duplicates: list[tuple[LinePath, int, int]] = field(default_factory=list)
    #: route index → its ``name``, so a problem found before validation can still name its route
    route_names: dict[int, str] = field(default_factory=dict)
    visited: int = 0

    def node(self, node: yaml.Node, path: LinePath, depth: int) -> None:
        self.visited += 1
        line = node.start_mark.line + 1
        if self.visited > MAX_NODES:
            raise _TooBig(f"more than {MAX_NODES} YAML nodes (an alias expanding too far?)", line)
        if depth > MAX_DEPTH:
            raise _TooBig(f"nested deeper than {MAX_DEPTH} levels (a recursive alias?)", line)
        if isinstance(node, yaml.MappingNode):
            self.mapping(node, path, depth, merged=False)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.lines[(*path, index)] = item.start_mark.line + 1
                self.node(item, (*path, index), depth + 1)

    def mapping(self, node: yaml.MappingNode, path: LinePath, depth: int, *, merged: bool) -> None:
        seen: dict[str, int] = {}
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "<complex key>"
            line = key_node.start_mark.line + 1
            if merged and (*path, key) in self.lines:
                continue  # the mapping sets this key itself; the merged one is overridden, legally
            if key in seen:
                self.duplicates.append(((*path, key), seen[key], line))
            seen.setdefault(key, line)
            self.lines[(*path, key)] = line
            if key == "name" and isinstance(value_node, yaml.ScalarNode) and _is_route_path(path):
                self.route_names[int(path[1])] = str(value_node.value)
            self.node(value_node, (*path, key), depth + 1)
        # ``<<: *base`` merges the keys the mapping does not set itself; their lines are those of the anchor.
        for value in merges:
            for source in value.value if isinstance(value, yaml.SequenceNode) else [value]:
                if isinstance(source, yaml.MappingNode):
                    self.mapping(source, path, depth + 1, merged=True)

    def duplicate_problems(self, file: Path) -> list[ConfigProblem]:
        problems = []
        for path, first, again in self.duplicates:
            route, connector, rel = _owner(file, path, self.route_names)
            key = path[-1]
            problems.append(
                ConfigProblem(
                    file=file,
                    line=again,
                    route=route,
                    connector=connector,
                    field=format_field(rel),
                    message=f"duplicate key {key!r} (also on line {first}; YAML would keep only one of them)",
                )
            )
        return problems


def _is_route_path(path: LinePath) -> bool:
    return len(path) == 2 and path[0] == "routes" and isinstance(path[1], int)


def _read_text(path: Path) -> tuple[str | None, list[ConfigProblem]]:
    """The file's text, or the problems that stop us from reading it as UTF-8 YAML. OSError propagates."""
    body = path.read_bytes()
    if len(body) > MAX_FILE_BYTES:
        return None, [ConfigProblem(path, 1, None, "", f"file is {len(body)} bytes, over {MAX_FILE_BYTES}")]
    try:
        return body.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        line = body[: exc.start].count(b"\n") + 1
        return None, [ConfigProblem(path, line, None, "", f"not UTF-8: byte {body[exc.start]:#04x}")]


def read_yaml(path: Path) -> tuple[Any, SourceMap, list[ConfigProblem]]:
    """Parse one YAML file into plain data and its line map, with any syntax or duplicate-key problems.

    Args:
        path: the YAML file.

    Returns:
        The data (None when it could not be parsed; ``{}`` for an empty file), the line map, and the
        problems (duplicate keys come with data; syntax errors without).

    Raises:
        OSError: the file cannot be read (missing, a folder, no permission).
    """
    text, problems = _read_text(path)
    if text is None:
        return None, SourceMap(path), problems
    loader = yaml.SafeLoader(text)
    walk = _Walk()
    try:
        node = loader.get_single_node()
        if node is None:  # an empty file, or only comments
            return {}, SourceMap(path), []
        walk.node(node, (), 0)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        return None, SourceMap(path, walk.lines), [_syntax_problem(path, exc)]
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        return None, SourceMap(path), [ConfigProblem(path, line, None, "", f"invalid YAML: {exc.reason}")]
    except _TooBig as exc:
        return None, SourceMap(path, walk.lines), [ConfigProblem(path, exc.line, None, "", exc.message)]
    finally:
        loader.dispose()
    # Duplicate keys are reported and validation still runs on what YAML kept: every problem shows at once.
    return ({} if data is None else data), SourceMap(path, walk.lines), walk.duplicate_problems(path)


def _syntax_problem(path: Path, exc: yaml.MarkedYAMLError) -> ConfigProblem:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    message = f"invalid YAML: {exc.problem or 'cannot parse'}"
    if exc.context:
        where = f" on line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
        message += f" ({exc.context}{where})"
    return ConfigProblem(path, line, None, "", message)


# -- validation with lines -------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def _owner(
    file: Path, loc: Sequence[str | int], route_names: Mapping[int, str]
) -> tuple[str | None, str | None, LinePath]:
    """The route (routes.yaml) or connector (connectors.yaml) a location belongs to, and the rest of it."""
    loc = tuple(loc)
    if file.name == CONNECTORS_FILE:
        if len(loc) >= 2 and loc[0] == "connectors":
            return None, str(loc[1]), loc[2:]
        return None, None, loc
    if len(loc) >= 2 and loc[0] == "routes" and isinstance(loc[1], int):
        return route_names.get(loc[1]) or f"#{loc[1] + 1}", None, loc[2:]
    return None, None, loc


def _route_names(data: Any) -> dict[int, str]:
    routes = data.get("routes") if isinstance(data, dict) else None
    if not isinstance(routes, list):
        return {}
    return {
        i: item["name"]
        for i, item in enumerate(routes)
        if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]
    }


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` so the annotation names the model or container underneath."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def annotation_at(root: type[BaseModel], loc: Sequence[str | int]) -> Any:
    """The (unwrapped) annotation of the model field at ``loc``, or None if the path leaves the models."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            found = None
            for name, info in current.model_fields.items():
                if part in (name, info.alias):
                    found = info.annotation
            if found is None:
                return None
            current = found
        elif get_origin(current) is list and isinstance(part, int):
            current = get_args(current)[0]
        elif get_origin(current) is dict and part != "[key]":
            current = get_args(current)[1]
        else:
            return None
    return _unwrap(current)


def field_names(model: type[BaseModel]) -> list[str]:
    """The keys a model accepts in YAML: aliases where set, else field names."""
    return [info.alias or name for name, info in model.model_fields.items()]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(root: type[BaseModel], err: ErrorDetails, loc: LinePath) -> tuple[str, str | None]:
    """An integrator's wording of one pydantic error, and a "did you mean" when a close name exists."""
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        parent = annotation_at(root, loc[:-1])
        known = field_names(parent) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
        hint = did_you_mean(str(loc[-1]), known)
        if hint or not known:
            return "unknown field", hint
        return f"unknown field; known fields: {', '.join(known)}", None
    if kind == "missing":
        return "required field is missing", None
    if kind == "string_pattern_mismatch":
        pattern = str(err.get("ctx", {}).get("pattern", ""))
        wording = _PATTERN_WORDING.get(pattern, f"does not match {pattern}")
        return f"{_short(value)} {wording}", None
    if kind == "literal_error":
        annotation = annotation_at(root, loc)
        allowed = get_args(annotation) if get_origin(annotation) is Literal else ()
        hint = did_you_mean(str(value), [str(a) for a in allowed]) if isinstance(value, str) else None
        return f"{_short(value)}: {err['msg'][0].lower()}{err['msg'][1:]}", hint
    message = err["msg"].removeprefix("Value error, ")
    if kind != "value_error" and isinstance(value, str | int | float | bool):
        message = f"{message} (got {_short(value)})"
    return message, None


def _refine(loc: LinePath, message: str, source: SourceMap, data: Any) -> tuple[LinePath, str]:
    """Move a validator's error from a whole field to the entry its message names (``credentials.password``).

    A field validator can only fail the field as a whole; when its message starts with a dotted path below
    that field and the entry exists in the file, the entry's own line is the one to point at, and the field
    part of the problem already names it.
    """
    if not loc or not isinstance(loc[-1], str):
        return loc, message
    match = re.match(rf"{re.escape(loc[-1])}((?:\.[A-Za-z0-9_-]+)+)\s+", message)
    if match is None:
        return loc, message
    deeper = loc + tuple(match.group(1).split(".")[1:])
    if not source.has(deeper):
        return loc, message
    rest = message[match.end() :]
    value = _value_at(data, deeper)
    return deeper, (f"{rest} (got {_short(value)})" if isinstance(value, str | int | float) else rest)


def _value_at(data: Any, loc: LinePath) -> Any:
    for part in loc:
        in_dict = isinstance(data, dict) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and part < len(data)
        if not (in_dict or in_list):
            return None
        data = data[part]
    return data


def validation_problems(
    root: type[BaseModel], exc: ValidationError, data: Any, source: SourceMap
) -> list[ConfigProblem]:
    """Turn each pydantic error into a :class:`ConfigProblem` on the line of the deepest existing path part.

    Union members report one error each under extra location parts (``...options.x.str``); those parts do
    not exist in the file, so we cut them and report one problem naming every type the value could have had.

    Args:
        root: the model the file was validated against (for field names and "did you mean").
        exc: the validation error.
        data: the data that was validated (for route names and values).
        source: the file's line map.
    """
    # place → [(message, hint, tail)], in pydantic's order
    found: dict[LinePath, list[tuple[str, str | None, LinePath]]] = {}
    for err in exc.errors(include_url=False):
        loc: LinePath = tuple(err["loc"])
        message, hint = _describe(root, err, loc)
        place = source.existing_prefix(loc)
        tail = loc[len(place) :]
        if tail[:1] == ("[key]",) or (tail and err["type"] in {"missing", "extra_forbidden"}):
            place, tail = (*place, tail[0]), tail[1:]
        elif err["type"] == "value_error" and not tail:
            place, message = _refine(place, message, source, data)
        found.setdefault(place, []).append((message, hint, tail))
    names = _route_names(data)
    problems = []
    for place, errors in found.items():
        members = [str(tail[0]) for _, _, tail in errors if len(tail) == 1]
        if len(errors) > 1 and len(members) == len(errors):
            # One value, several union members, each refusing it: say what would have been accepted.
            value = _value_at(data, place)
            joined = ", ".join(members[:-1]) + f" or {members[-1]}"
            reports: list[tuple[str, str | None]] = [(f"expected {joined} (got {_short(value)})", None)]
        else:
            reports = list(dict.fromkeys((message, hint) for message, hint, _ in errors))
        route, connector, rel = _owner(source.path, place, names)
        field_name = "name" if rel == ("[key]",) else format_field(rel)
        problems += [
            ConfigProblem(source.path, source.line_of(place), route, field_name, message, hint, connector)
            for message, hint in reports
        ]
    return problems


def _load_file(path: Path, model: type[M], top_key: str) -> tuple[M | None, SourceMap, list[ConfigProblem]]:
    data, source, problems = read_yaml(path)
    if data is None:
        return None, source, problems
    if not isinstance(data, dict):
        message = f"expected a mapping with `{top_key}:` at the top, got {type(data).__name__}"
        return None, source, [*problems, ConfigProblem(path, source.line_of(()), None, "", message)]
    try:
        validated = model.model_validate(data)
    except ValidationError as exc:
        return None, source, [*problems, *validation_problems(model, exc, data, source)]
    return (None if problems else validated), source, problems


def load_config(config_dir: Path) -> LoadedConfig:
    """Read and validate ``routes.yaml`` and ``connectors.yaml`` from ``config_dir``.

    Both files are read before anything is raised, so the integrator sees every problem at once.

    Args:
        config_dir: the folder holding both files.

    Returns:
        The validated files with their line maps.

    Raises:
        ConfigInvalid: with every syntax, duplicate-key and validation problem of both files.
        OSError: a file cannot be read (missing, a folder, no permission); the CLI reports it in one line.
    """
    routes, routes_source, problems = _load_file(config_dir / ROUTES_FILE, RoutesFile, "routes")
    connectors, connectors_source, more = _load_file(config_dir / CONNECTORS_FILE, ConnectorsFile, "connectors")
    problems += more
    if problems or routes is None or connectors is None:
        raise ConfigInvalid(problems)
    return LoadedConfig(
        config_dir=config_dir,
        routes=routes,
        connectors=connectors,
        routes_source=routes_source,
        connectors_source=connectors_source,
    )
