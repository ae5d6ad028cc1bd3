"""``igate-bus list adapters|operations|events|connectors``: what a routes.yaml may name, one line each.

Where it sits: outside the message path, for an integrator writing a route. It reads the very registries
``igate-bus check`` resolves names against (``adapters/registry.py``, ``connectors/base.py`` with each
type's ``OPERATIONS``, ``schemas/events.py``), so what is listed here is exactly what ``check`` accepts:

- ``adapters``: ``adapter:`` values, with the event types each accepts and the request model it produces;
- ``operations``: the ``to:`` part after the dot, per connector type, with the request it takes (an
  adapter must produce it) and the reply it gives (what ``emits`` carries);
- ``events``: ``from.events`` keys and ``emits`` values, with their payload model;
- ``connectors``: ``type:`` values of connectors.yaml, with their operations and the connectors of the
  config that use them.

A module that cannot be imported is listed with the reason, as ``check`` reports it, never a traceback.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import click

from bus.cli_ops import config_option

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


@dataclass(frozen=True, slots=True)
class Item:
    """One line of a listing: a name, what it takes, what it gives, its doc line, anything else worth a column."""

    name: str
    takes: str
    gives: str
    doc: str
    extra: dict[str, Any]


def doc_line(obj: Any) -> str:
    """The first line of an object's docstring (empty when it has none)."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def list_adapters() -> list[Item]:
    """Every registered adapter: name, accepted event types, produced request model."""
    from routes.model import _default_adapters

    found, failures = _default_adapters()
    items = [
        Item(a.name, ", ".join(sorted(a.accepts)), a.produces.__name__, doc_line(a.fn), {})
        for a in sorted(found.values(), key=lambda a: a.name)
    ]
    items += [Item(module, "-", "-", f"cannot be imported: {why}", {"error": why}) for module, why in failures.items()]
    return items


def _types() -> dict[str, Any]:
    """Connector type → its class, or the reason it cannot be loaded."""
    from connectors.base import CONNECTOR_TYPES, connector_type

    out: dict[str, Any] = {}
    for name in sorted(CONNECTOR_TYPES):
        try:
            out[name] = connector_type(name)
        except (ImportError, AttributeError) as exc:
            out[name] = f"{CONNECTOR_TYPES[name]} cannot be loaded: {exc}"
    return out


def list_operations() -> list[Item]:
    """Every operation of every connector type: ``type.operation``, request → reply, effect and lookup."""
    items = []
    for type_name, cls in _types().items():
        if isinstance(cls, str):
            items.append(Item(f"{type_name}.*", "-", "-", cls, {"error": cls}))
            continue
        for op, spec in sorted(cls.OPERATIONS.items()):
            effect = "effect" if spec.effect else "read"
            items.append(
                Item(
                    f"{type_name}.{op}",
                    spec.request.__name__,
                    spec.reply.__name__,
                    spec.doc.strip().splitlines()[0] if spec.doc.strip() else "",
                    {"effect": spec.effect, "lookup": spec.has_lookup, "kind": effect},
                )
            )
    return items


def list_events() -> list[Item]:
    """Every event type: its payload model, and who publishes it on which exchange."""
    from schemas.events import EVENT_GROUPS

    return [
        Item(name, "-", model.__name__, doc_line(model), {"origin": origin})
        for origin, group in EVENT_GROUPS
        for name, model in sorted(group.items())
    ]


def list_connectors(config: Path | None) -> list[Item]:
    """Every connector type: its operations, and the connectors of the config that have this type."""
    from connectors.base import CONNECTOR_TYPES

    used = _configured(config)
    items = []
    for type_name, cls in _types().items():
        names = sorted(n for n, t in used.items() if t == type_name)
        if isinstance(cls, str):
            items.append(Item(type_name, "-", "-", cls, {"error": cls, "configured": names}))
            continue
        items.append(
            Item(
                type_name,
                CONNECTOR_TYPES[type_name],
                ", ".join(sorted(cls.OPERATIONS)),
                doc_line(cls),
                {"configured": names},
            )
        )
    return items


def _configured(config: Path | None) -> dict[str, str]:
    """Connector name → type in connectors.yaml; empty when the config cannot be read (``check`` says why)."""
    from config.loader import ConfigInvalid, load_config
    from config.settings import Settings, load_settings
    from schemas.errors import ConfigError

    try:
        folder = config or load_settings(Settings).config_dir
        return {n: s.type for n, s in load_config(folder).connectors.connectors.items()}
    except (ConfigError, ConfigInvalid, OSError, ValueError):
        return {}


#: the listings that need no config
LISTERS: dict[str, Callable[[], list[Item]]] = {
    "adapters": list_adapters,
    "operations": list_operations,
    "events": list_events,
}
#: what each kind lists, and the headings of its "takes" and "gives" columns
KINDS: dict[str, tuple[str, str]] = {
    "adapters": ("accepts", "produces"),
    "operations": ("request", "reply"),
    "events": ("-", "payload"),
    "connectors": ("class", "operations"),
}


@click.command(name="list")
@click.argument("kind", type=click.Choice(list(KINDS)))
@click.option("--json", "as_json", is_flag=True, help="JSON output: one object per item.")
@config_option
def list_(kind: str, as_json: bool, config: Path | None) -> None:
    """What routes.yaml and connectors.yaml may name: adapters, operations, events or connector types."""
    items = list_connectors(config) if kind == "connectors" else LISTERS[kind]()
    takes, gives = KINDS[kind]
    if as_json:
        rows = []
        for item in items:
            row = asdict(item)
            extra = row.pop("extra")
            row = {"name": row["name"], takes: row["takes"], gives: row["gives"], "doc": row["doc"], **extra}
            row.pop("-", None)
            rows.append(row)
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for item in items:
        left = item.name if kind == "events" else f"{item.name}  {item.takes} -> {item.gives}"
        if kind == "events":
            left = f"{item.name}  {item.gives}  ({item.extra['origin']})"
        elif kind == "connectors":
            left = f"{item.name}  {item.gives}" + (
                f"  (used by: {', '.join(item.extra['configured'])})" if item.extra.get("configured") else ""
            )
        elif kind == "operations":
            left += f"  [{item.extra.get('kind', '?')}]"
        click.echo(f"{left}  # {item.doc}" if item.doc else left)
