"""A SOAP 1.1 operation's envelope written from a plan compiled once, to the byte what zeep would write.

Where it sits: inside :class:`connectors._soap.SoapClient`, the connector step (event → route → adapter →
**connector** → result/DLQ). zeep serialises every call anew: it checks each keyword against the schema,
builds a tree of value objects, renders an lxml tree from it and writes the tree out. On the portal route
that was half of the connector's CPU per message (issue 15), for an envelope whose shape the WSDL fixes. So
the shape is compiled here once per operation, from zeep's own parsed schema (element names, their order,
occurrences, and each leaf's simple type, whose ``xmlvalue`` still does the conversion), and a call only
walks the plan over the request's dict, writing text.

It is a fast path, not a second serialiser with opinions of its own:

- **Same bytes.** What it writes is byte for byte what zeep writes (the tests compare the two for every
  operation of every shipped WSDL, hostile characters included), so the target sees no difference.
- **It declines what it is not sure of**, and zeep then serialises that call as before: a key the schema does
  not have, a required element missing, too many or too few items, a value that is not a plain ``str``,
  ``int``, ``bool``, ``dict`` or ``list``, an empty string or element, a character XML 1.0 cannot carry. So a
  malformed request still meets zeep's own error (a ``MappingError``, nothing sent).
- **It compiles only plain shapes**: SOAP 1.1 document/literal, sequences of elements in one namespace, no
  attributes, choices, wildcards, defaults, fixed or nillable elements. Any other operation is zeep's
  entirely (:func:`compile_operation` answers None).

The reply works the same way (:class:`ReplyPlan`): a 200 reply whose body is the operation's response
element holding only ``xs:string`` leaves, in order, is parsed once by a parser set as zeep sets its own
(``resolve_entities=False``, comments removed, no recovery, no huge trees; libxml2 fetches nothing) and read
into the dict zeep's objects would serialise to. Anything else (a DOCTYPE, a fault, a SOAP 1.2 root, an
element out of order or unknown, an attribute, a nested element, any parse error) declines, and zeep reads
the reply from its bytes as before, raising what it raised: the hostile-reply tests meet zeep's own errors.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from lxml import etree  # type: ignore[import-untyped]  # lxml ships no type hints
from zeep.wsdl.bindings.soap import Soap11Binding
from zeep.wsdl.messages.soap import DocumentMessage
from zeep.xsd import ComplexType, Element, Sequence
from zeep.xsd.types.builtins import String
from zeep.xsd.types.simple import AnySimpleType

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

SOAP_ENV: Final = "http://schemas.xmlsoap.org/soap/envelope/"
#: what zeep's writer (lxml, ``xml_declaration=True``, ``encoding="utf-8"``) puts before the envelope
_HEAD: Final = f"<?xml version='1.0' encoding='utf-8'?>\n<soap-env:Envelope xmlns:soap-env=\"{SOAP_ENV}\">"
_TAIL: Final = "</soap-env:Body></soap-env:Envelope>"
#: the prefix lxml gives the first namespace it declares in a subtree
_PREFIX: Final = "ns0"
#: text lxml writes as it is (after escaping & < > and CR): XML 1.0's characters, less lxml's refusals
_PLAIN_TEXT: Final = re.compile("[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]+")
_ESCAPES: Final = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})


class Declined(Exception):
    """The plan is not sure of this value: zeep serialises the call instead."""


@dataclass(frozen=True, slots=True)
class _Node:
    """One element of the plan: its tags, occurrences, and either a simple type or child elements."""

    key: str
    open: str
    close: str
    min_occurs: int
    max_occurs: int | None
    many: bool
    xmlvalue: Callable[[Any], str] | None
    children: tuple[_Node, ...]
    keys: frozenset[str]
    #: a string type whose ``xmlvalue`` gives a ``str`` back as it is (``xs:string`` and its restrictions)
    verbatim: bool = False


#: zeep's reply parser settings (zeep.loader.parse_xml with strict settings); built once per thread
_PARSER_SETTINGS: Final = {"remove_comments": True, "resolve_entities": False, "recover": False, "huge_tree": False}
_ENVELOPE: Final = f"{{{SOAP_ENV}}}Envelope"
_BODY: Final = f"{{{SOAP_ENV}}}Body"
_parsers = threading.local()


def _parser() -> Any:
    """This thread's reply parser (an lxml parser must not be shared between threads)."""
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = etree.XMLParser(**_PARSER_SETTINGS)
    return parser


@dataclass(frozen=True, slots=True)
class ReplyPlan:
    """An operation's reply, compiled: the response element and its string leaves, in order."""

    tag: str
    #: (tag, key, required) of each leaf, in schema order
    leaves: tuple[tuple[str, str, bool], ...]

    def read(self, content: bytes) -> dict[str, str] | None:
        """The reply's values as zeep would serialise them (absent and empty leaves left out), or None to decline."""
        answer = self._answer(content)
        if answer is None:
            return None
        out: dict[str, str] = {}
        leaves = iter(self.leaves)
        for child in answer:
            for tag, key, required in leaves:  # noqa: B007 - `key` is read after the break
                # an optional leaf may be skipped; a required one may not
                if child.tag == tag:
                    break
                if required:
                    return None
            else:
                return None  # unknown, repeated or out of order (a PI has no str tag): zeep's to judge
            if child.attrib or len(child):
                return None
            if child.text is not None:
                out[key] = child.text
        if any(required for _, _, required in leaves):
            return None  # a required leaf missing
        return out

    def _answer(self, content: bytes) -> Any:
        """The response element of a plain SOAP 1.1 reply, or None."""
        try:
            root = etree.fromstring(content, _parser())
        except (etree.LxmlError, ValueError):
            return None  # zeep reads it again and raises its own error
        docinfo = root.getroottree().docinfo
        if docinfo.doctype or docinfo.internalDTD is not None or root.tag != _ENVELOPE or len(root) != 1:
            return None  # a DOCTYPE, a Header, a SOAP 1.2 root: zeep's to judge
        body = root[0]
        if body.tag != _BODY or body.attrib or len(body) != 1:
            return None
        answer = body[0]
        return answer if answer.tag == self.tag and not answer.attrib else None


def compile_reply(operation: Any) -> ReplyPlan | None:
    """The reply plan of a zeep binding operation, or None when its reply is not a sequence of string leaves."""
    message = getattr(operation, "output", None)
    if not isinstance(message, DocumentMessage) or message.body is None:
        return None
    header = getattr(message.header, "type", None)
    if getattr(message, "_is_body_wrapped", True) or getattr(header, "_element", None):
        return None  # reply headers would be read into the result
    try:
        node = _compile(message.body, top=True)
    except _Unsupported:
        return None
    if not node.children or any(not c.verbatim or c.many or c.children for c in node.children):
        return None
    if len(node.children) < 2:  # zeep unwraps a reply of one element into its bare value
        return None
    namespace = message.body.qname.namespace
    leaves = tuple(
        (f"{{{namespace}}}{c.key}" if c.open.startswith(f"<{_PREFIX}:") else c.key, c.key, c.min_occurs > 0)
        for c in node.children
    )
    return ReplyPlan(f"{{{namespace}}}{message.body.qname.localname}", leaves)


@dataclass(frozen=True, slots=True)
class WirePlan:
    """One operation's envelope, compiled: call :meth:`envelope` per request.

    Attributes:
        operation: zeep's binding operation (a reply the plan declines is read by zeep).
        http_headers: the headers zeep sends with this operation (``SOAPAction``, ``Content-Type``).
        reply: the plan of its reply, or None when zeep reads every reply.
    """

    operation: Any
    http_headers: Mapping[str, str]
    reply: ReplyPlan | None
    _body: _Node
    _headers: tuple[_Node, ...]
    _header_keys: frozenset[str]

    def envelope(self, body: Mapping[str, Any], soap_headers: Mapping[str, Any] | None) -> bytes:
        """The UTF-8 envelope zeep would write for ``body`` and ``soap_headers``.

        Raises:
            Declined: a value outside the plan; zeep is to serialise this call.
        """
        out: list[str] = [_HEAD]
        if soap_headers:
            if type(soap_headers) is not dict or not self._header_keys.issuperset(soap_headers):
                raise Declined
            out.append("<soap-env:Header>")
            written = len(out)
            for node in self._headers:
                value = soap_headers.get(node.key)
                if value is not None:
                    _element(node, value, out)
            if len(out) == written:
                raise Declined  # zeep would write an empty Header
            out.append("</soap-env:Header>")
        out.append("<soap-env:Body>")
        _element(self._body, body, out)
        out.append(_TAIL)
        try:
            return "".join(out).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: lxml refuses it, and zeep's error is the one to raise
            raise Declined from None


def _element(node: _Node, value: Any, out: list[str]) -> None:
    """Write one occurrence of ``node`` holding ``value``."""
    if node.xmlvalue is not None:
        if type(value) not in (str, int, bool):
            raise Declined
        text = node.xmlvalue(value)
        if not text or _PLAIN_TEXT.fullmatch(text) is None:
            raise Declined
        out.append(node.open)
        out.append(text.translate(_ESCAPES))
        out.append(node.close)
        return
    if type(value) is not dict or not value or not node.keys.issuperset(value):
        raise Declined
    out.append(node.open)
    _children(node.children, value, out)
    out.append(node.close)


def _children(nodes: tuple[_Node, ...], value: dict[str, Any], out: list[str]) -> None:
    written = len(out)
    for child in nodes:
        item = value.get(child.key)
        if item is None:
            if child.min_occurs:
                raise Declined  # zeep: "Missing element"
            continue
        if child.verbatim and type(item) is str:  # most leaves: zeep's xmlvalue would give the string back
            if not item or _PLAIN_TEXT.fullmatch(item) is None:
                raise Declined
            out.append(child.open + item.translate(_ESCAPES) + child.close)
        elif child.many and type(item) is list:
            if len(item) < child.min_occurs or (child.max_occurs is not None and len(item) > child.max_occurs):
                raise Declined
            for one in item:
                _element(child, one, out)
        else:
            _element(child, item, out)
    if len(out) == written:
        raise Declined  # lxml would write an empty element as <x/>


def compile_operation(binding: Any, name: str) -> WirePlan | None:
    """The plan of operation ``name`` of a zeep ``binding``, or None when its shape is not a plain one.

    zeep has no public API for its schema's structure: the attributes read here (``_element``,
    ``_is_body_wrapped``, ``_prefix_map_custom``) are zeep 4.3's, and a zeep that moved them makes this
    answer None (every call then zeep's own) or fail the byte-for-byte tests, never write something else.
    """
    if not isinstance(binding, Soap11Binding):
        return None
    operation = binding.get(name)  # type: ignore[no-untyped-call]  # zeep's own signatures are untyped
    message = getattr(operation, "input", None)
    if not isinstance(message, DocumentMessage) or message.body is None:
        return None
    if getattr(message, "_is_body_wrapped", True) or getattr(message.wsdl.types, "_prefix_map_custom", True):
        return None  # the body is the soap:Body itself, or zeep would declare custom prefixes on the envelope
    try:
        body = _compile(message.body, top=True)
        headers: tuple[_Node, ...] = ()
        if message.header is not None and getattr(message.header.type, "_element", None):
            headers = tuple(_compile(elm, top=True, key=part) for part, elm in message.header.type.elements)
    except _Unsupported:
        return None
    action = f'"{operation.soapaction}"' if operation.soapaction else '""'
    http_headers = {"SOAPAction": action, "Content-Type": "text/xml; charset=utf-8"}
    return WirePlan(operation, http_headers, compile_reply(operation), body, headers, frozenset(h.key for h in headers))


class _Unsupported(Exception):
    """A schema construct the plan does not write."""


def _compile(element: Any, *, top: bool = False, namespace: str = "", key: str = "") -> _Node:
    """The node of ``element``; a top element (a body or header part) declares the namespace, as lxml does."""
    if not isinstance(element, Element) or element.nillable or element.default is not None:
        raise _Unsupported
    if getattr(element, "fixed", None) is not None or (top and element.accepts_multiple):
        raise _Unsupported
    ns = element.qname.namespace or ""
    if top:
        namespace = ns
    if not namespace or ns not in {namespace, ""}:
        raise _Unsupported  # unqualified at the top, or a second namespace: lxml would declare more prefixes
    tag = f"{_PREFIX}:{element.qname.localname}" if ns else element.qname.localname
    kind = element.type
    children: tuple[_Node, ...] = ()
    if isinstance(kind, AnySimpleType):
        xmlvalue: Callable[[Any], str] | None = kind.xmlvalue
    elif isinstance(kind, ComplexType):
        xmlvalue = None
        children = tuple(_compile(child, namespace=namespace) for child in _sequence(kind))
    else:
        raise _Unsupported
    declare = f' xmlns:{_PREFIX}="{namespace}"' if top else ""
    return _Node(
        key=key or str(element.name),
        open=f"<{tag}{declare}>",
        close=f"</{tag}>",
        min_occurs=int(element.min_occurs),
        max_occurs=None if element.max_occurs == "unbounded" else int(element.max_occurs),
        many=bool(element.accepts_multiple),
        xmlvalue=xmlvalue,
        children=children,
        keys=frozenset(c.key for c in children),
        verbatim=isinstance(kind, String) and type(kind).xmlvalue is String.xmlvalue,
    )


def _sequence(kind: ComplexType) -> list[Element]:
    """The elements of a complex type that is one plain sequence of elements (what zeep then renders in order)."""
    sequence = getattr(kind, "_element", None)
    if kind.attributes or getattr(kind, "_array_type", None) or not isinstance(sequence, Sequence):
        raise _Unsupported
    if sequence.min_occurs != 1 or sequence.max_occurs != 1 or kind.elements_nested != [("_value_1", sequence)]:
        raise _Unsupported
    nested = sequence.elements_nested
    if not nested or any(not isinstance(child, Element) or child.name != name for name, child in nested):
        raise _Unsupported
    return [child for _, child in nested]
