"""A real SOAP server that answers as Viettel's brandname SMS gateway would, records what it sent, and fails on request.

Where it sits: the far end of the SMS connector's first gateway (event → route → adapter →
``connectors/sms.py`` → ``connectors/sms_viettel.py`` → **here**). Tests run it in a thread
(:class:`ViettelSmsSimulator`); ``igate-bus simulate viettel-sms`` runs it in the foreground.

What it answers (``schemas/wsdl/viettel_bulksms.wsdl``, docs/domain.md section 5; [F] TH's and OC's clients,
[A] assumed): SOAP 1.1 document/literal at ``POST /bulkapi``:

- [F] ``wsCpMt(User, Password, CPCode, RequestID, UserID, ReceiverID, ServiceID, CommandCode, Content,
  ContentType)`` → ``return{message, messageId, result}``, result 1 = sent; [A] 0 with ``message`` for a
  refusal (bad login, bad number, no balance). [A] It does **not** deduplicate by ``RequestID``: a repeat is
  sent (and counted) again, so the connector must never repeat a send whose outcome it does not know.
- [A] ``getDlrStatus(User, Password, CPCode, RequestID)`` → ``return{result: 1, messageId, status}`` when it
  sent that request id, ``result: 0`` when it has none (the lookup the connector reconciles with).
- [F] ``checkBalance(User, Password, CPCode)`` → ``return{errCode: "0", errDesc, balance}`` (the probe).

Requests are parsed with entities unresolved, no network and no DTD. Faults: :class:`simulators._sms.Faults`.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Final

import structlog
from lxml import etree  # type: ignore[import-untyped]  # lxml ships no type hints

from simulators._sms import Answer, Call, GatewaySimulator, gateway_main, serve_gateway

log = structlog.get_logger(__name__)

DEFAULT_PORT: Final = 8603
DEFAULT_USER: Final = "igate-bus"
DEFAULT_PASSWORD: Final = "simulator-only"  # noqa: S105 - the simulator's own published default
DEFAULT_CP_CODE: Final = "DAKLAK"
USER_ENV: Final = "IGATE_BUS_VIETTEL_SMS_USER"
PASSWORD_ENV: Final = "IGATE_BUS_VIETTEL_SMS_PASSWORD"  # noqa: S105 - a variable's name
PATH: Final = "/bulkapi"
NAMESPACE: Final = "http://impl.bulkSms.ws/"
SOAP_ENV: Final = "http://schemas.xmlsoap.org/soap/envelope/"
XML: Final = "text/xml; charset=utf-8"
#: [A] the refusal messages, by the simulator's code
_REFUSALS: Final = {"auth": "Authentication failed", "phone": "Invalid receiver", "balance": "Not enough balance"}


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False
    )


def _envelope(operation: str, fields: dict[str, Any]) -> bytes:
    env = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"S": SOAP_ENV})
    body = etree.SubElement(env, f"{{{SOAP_ENV}}}Body")
    response = etree.SubElement(body, f"{{{NAMESPACE}}}{operation}Response", nsmap={"ns2": NAMESPACE})
    ret = etree.SubElement(response, "return")
    for key, value in fields.items():
        etree.SubElement(ret, key).text = str(value)
    return bytes(etree.tostring(env, xml_declaration=True, encoding="utf-8"))


def _fault(code: str, text: str) -> Answer:
    env = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"S": SOAP_ENV})
    body = etree.SubElement(env, f"{{{SOAP_ENV}}}Body")
    fault = etree.SubElement(body, f"{{{SOAP_ENV}}}Fault")
    etree.SubElement(fault, "faultcode").text = f"S:{code}"
    etree.SubElement(fault, "faultstring").text = text
    return Answer(500, bytes(etree.tostring(env, xml_declaration=True, encoding="utf-8")), XML)


class ViettelSmsSimulator(GatewaySimulator):
    """Viettel's brandname SOAP service on a real socket.

    Args:
        host: where to listen.
        port: 0 for a free port.
        user: the User it accepts.
        password: the Password it accepts.
        cp_code: the CPCode it accepts.
    """

    gateway: ClassVar[str] = "viettel"
    thread_name: ClassVar[str] = "viettel-sms-sim"
    dedupes: ClassVar[bool] = False

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        user: str = DEFAULT_USER,
        password: str = DEFAULT_PASSWORD,
        cp_code: str = DEFAULT_CP_CODE,
    ) -> None:
        super().__init__(host, port)
        self.user = user
        self.password = password
        self.cp_code = cp_code

    def parse(self, method: str, path: str, query: dict[str, str], body: bytes) -> Call | Answer:
        """The call of a SOAP request."""
        del query
        if path != PATH or method != "POST":
            return Answer(404, b"Not Found", "text/plain")
        try:
            root = etree.fromstring(body, _parser())
        except etree.XMLSyntaxError:
            return _fault("Client", "request is not well-formed XML")
        if root.getroottree().docinfo.doctype:
            return _fault("Client", "DOCTYPE not allowed")
        found = root.find(f"{{{SOAP_ENV}}}Body")
        operation = next((child for child in found if isinstance(child.tag, str)), None) if found is not None else None
        if operation is None:
            return _fault("Client", "no operation in the SOAP body")
        name = str(etree.QName(operation).localname)
        fields = {str(etree.QName(c).localname): c.text or "" for c in operation if isinstance(c.tag, str)}
        authorised = (
            fields.get("User") == self.user
            and fields.get("Password") == self.password
            and fields.get("CPCode") == self.cp_code
        )
        op = {"wsCpMt": "send", "getDlrStatus": "lookup", "checkBalance": "probe"}.get(name)
        if op is None:
            return _fault("Client", f"unknown operation {name}")
        return Call(
            op,  # type: ignore[arg-type]  # the three values above are Op's
            request_id=fields.get("RequestID", ""),
            phone=fields.get("ReceiverID", ""),
            content=fields.get("Content", ""),
            unicode=fields.get("ContentType") == "1",
            authorised=authorised,
            extra={"service_id": fields.get("ServiceID"), "user_id": fields.get("UserID")},
        )

    def answer(self, call: Call, sent: dict[str, Any] | None, *, duplicate: bool) -> Answer:
        """The SOAP answers."""
        del duplicate
        if call.op == "send":
            assert sent is not None  # noqa: S101 - a send always has its record
            if sent.get("message_id") == "0":
                return self.refusal(call, "phone")
            body = _envelope("wsCpMt", {"message": "Success", "messageId": sent["message_id"], "result": 1})
        elif call.op == "lookup":
            fields: dict[str, Any] = {"result": 0}
            if sent is not None:
                fields = {"result": 1, "messageId": sent["message_id"], "status": "DELIVERED"}
            body = _envelope("getDlrStatus", fields)
        else:
            body = _envelope("checkBalance", {"errCode": "0", "errDesc": "OK", "balance": 1_000_000})
        return Answer(200, body, XML)

    def refusal(self, call: Call, code: str) -> Answer:
        """[A] result 0 with a message; a probe's errCode."""
        message = _REFUSALS.get(code, f"Error {code}")
        if call.op == "probe":
            return Answer(200, _envelope("checkBalance", {"errCode": code, "errDesc": message}), XML)
        operation = "wsCpMt" if call.op == "send" else "getDlrStatus"
        return Answer(200, _envelope(operation, {"message": f"{code}: {message}", "messageId": 0, "result": 0}), XML)

    def garbage(self, call: Call, *, hostile: bool) -> Answer:
        """A cut envelope, or one with a DOCTYPE and an entity."""
        del call
        if hostile:
            body = (
                b'<?xml version="1.0"?><!DOCTYPE S [<!ENTITY x "y">]>'
                b'<S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/"><S:Body>&x;</S:Body></S:Envelope>'
            )
            return Answer(200, body, XML)
        return Answer(200, b'<S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/"><S:Body>', XML)

    def _apply(self, call: Call, received_at: float) -> tuple[dict[str, Any], bool]:
        """A number not in the ``84…`` form is refused before anything is sent, so it is no effect."""
        if not call.phone.isdigit() or not call.phone.startswith("84") or len(call.phone) != 11:
            return {"request_id": call.request_id, "message_id": "0"}, False
        return super()._apply(call, received_at)


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Run the simulator in the foreground until interrupted (``igate-bus simulate viettel-sms``)."""
    user, password = os.environ.get(USER_ENV) or DEFAULT_USER, os.environ.get(PASSWORD_ENV) or DEFAULT_PASSWORD
    sim = ViettelSmsSimulator(host, port, user=user, password=password)
    serve_gateway(sim, f"http://{host}:{port}{PATH}")


def main(argv: list[str] | None = None) -> None:
    """``python -m simulators.viettel_sms [--host H] [--port P]``."""
    gateway_main(argv, name="viettel_sms", port=DEFAULT_PORT, serve=serve)


if __name__ == "__main__":
    main()
