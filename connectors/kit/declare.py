"""One declaration per operation: what ``check`` reads from the class and what the engine calls on an instance.

Where it sits: at the connector step's boundary (event → route → adapter → **connector** → result/DLQ). A
connector's operation is one method with the :func:`operation` decorator; the class then carries
``OPERATIONS`` (request and reply models, effect, lookup: what ``igate-bus check`` needs without building
the connector) and its instances answer ``operations()`` (the same, bound, with the request type checked),
both from that one declaration::

    class VnpostConnector(KitConnector):
        @operation(CreateOrder, OrderReply, lookup="find_order")
        def create_order(self, request: CreateOrder, idempotency_key: str) -> OrderReply:
            \"\"\"Register a postal pick-up order ([F] LGSP ``/order/post``).\"\"\"
            ...

        def find_order(self, idempotency_key: str) -> OrderReply | None:
            ...

The lookup is named, not passed, so a typo fails when the class is defined, not when a claim is reclaimed.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

from connectors.base import Operation, OperationSpec, typed
from connectors.kit.state import HasState

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from pydantic import BaseModel

F = TypeVar("F", bound="Callable[..., Any]")

_MARK: Final = "__igate_bus_operation__"


@dataclass(frozen=True, slots=True)
class _Declared:
    request: type[BaseModel]
    reply: type[BaseModel]
    effect: bool
    lookup: str | None
    doc: str
    waits_on_io: bool


def operation(
    request: type[BaseModel],
    reply: type[BaseModel],
    *,
    effect: bool = True,
    lookup: str | None = None,
    doc: str = "",
    waits_on_io: bool = True,
) -> Callable[[F], F]:
    """Declare the decorated method ``(request, idempotency_key) -> reply`` an operation of its connector.

    Args:
        request: the model the route's adapter must produce; another is a :class:`~schemas.errors.MappingError`.
        reply: the model the method returns (a route's ``emits`` payload).
        effect: False for a read, which needs no claim and no lookup.
        lookup: the name of the method ``(idempotency_key) -> reply | None`` that asks the target whether an
            earlier attempt was applied; an effect without one is dead-lettered ``ambiguous`` when reclaimed.
        doc: one line for ``check`` and the docs; the method's docstring's first line by default.
        waits_on_io: False only for a connector that does no I/O (``noop``).

    Raises:
        TypeError: a read declares a lookup.
    """
    if lookup is not None and not effect:
        raise TypeError("a read (effect=False) has nothing to look up")
    declared_doc = doc

    def mark(method: F) -> F:
        text = declared_doc or (method.__doc__ or "").strip().split("\n", 1)[0]
        vars(method)[_MARK] = _Declared(request, reply, effect, lookup, text, waits_on_io)
        return method

    return mark


class Declared(HasState):
    """Gives a connector class ``OPERATIONS`` and its instances ``operations()``, from its declared operations.

    The instance needs a ``name`` (the connector's name in ``connectors.yaml``) before ``operations()``.
    """

    OPERATIONS: ClassVar[Mapping[str, OperationSpec]] = MappingProxyType({})
    _DECLARED: ClassVar[Mapping[str, _Declared]] = MappingProxyType({})
    name: str
    _bound_operations: Mapping[str, Operation] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Collect the class's operations (its bases' too) and check that each named lookup exists."""
        super().__init_subclass__(**kwargs)
        found: dict[str, _Declared] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                declared = getattr(value, _MARK, None)
                if isinstance(declared, _Declared):
                    found[attr] = declared
        for attr, declared in found.items():
            if declared.lookup is not None and not callable(getattr(cls, declared.lookup, None)):
                raise TypeError(f"{cls.__name__}.{attr}: lookup {declared.lookup!r} is not a method of the class")
        cls._DECLARED = MappingProxyType(found)
        cls.OPERATIONS = MappingProxyType(
            {
                attr: OperationSpec(d.request, d.reply, effect=d.effect, has_lookup=d.lookup is not None, doc=d.doc)
                for attr, d in found.items()
            }
        )

    def operations(self) -> Mapping[str, Operation]:
        """The operations by name, bound to this connector."""
        built = self._bound_operations
        if built is None:
            built = MappingProxyType({attr: self._bind(attr, d) for attr, d in self._DECLARED.items()})
            self._bound_operations = built
        return built

    def _bind(self, attr: str, declared: _Declared) -> Operation:
        method = getattr(self, attr)
        lookup = getattr(self, declared.lookup) if declared.lookup is not None else None
        return Operation(
            attr,
            declared.request,
            declared.reply,
            typed(self.name, declared.request, method),
            lookup,
            effect=declared.effect,
            waits_on_io=declared.waits_on_io,
        )
