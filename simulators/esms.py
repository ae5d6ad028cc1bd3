"""A real HTTP server that answers as the eSMS aggregator's REST API would, records what it sent, and fails on request.

Where it sits: the far end of the SMS connector's second gateway (event → route → adapter →
``connectors/sms.py`` → ``connectors/sms_esms.py`` → **here**). Tests run it in a thread
(:class:`EsmsSimulator`); ``igate-bus simulate esms`` runs it in the foreground.

What it answers (docs/domain.md section 5; [F] = eSMS's documentation, [A] = assumed):

- [F] ``POST /MainService.svc/json/SendMultipleMessage_V4_post_json/`` with ``{ApiKey, SecretKey, Phone,
  Content, Brandname, SmsType, IsUnicode, RequestId, CallbackUrl}`` → ``{CodeResult, SMSID}``: 100 accepted,
  101 bad key, 103 no balance, 104 no brandname, 108 bad phone, **124 duplicate RequestId** (it deduplicates:
  a repeated RequestId is answered 124 and not sent again; [A] the answer carries the first SMSID).
- [A] ``GET /MainService.svc/json/GetSendStatusByRequestId_get?ApiKey=&SecretKey=&RequestId=`` → 100 with
  ``SMSID`` and ``SendStatus`` 5 when it sent that request id, 118 when it has none (eSMS documents a status
  query by SMSID; one by our RequestId is assumed, so a lost answer can be reconciled).
- [A] ``GET /MainService.svc/json/GetBalance_json?ApiKey=&SecretKey=`` → ``{Balance, CodeResponse: "100"}``
  (the probe; eSMS also documents the keys as path segments, which would put them into every access log).

Faults: :class:`simulators._sms.Faults` (down, latency, errors, hangs, drops, apply-then-drop, garbage and
hostile replies, the gateway's own codes).
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar, Final

import structlog

from simulators._sms import Answer, Call, GatewaySimulator, gateway_main, serve_gateway

log = structlog.get_logger(__name__)

DEFAULT_PORT: Final = 8604
DEFAULT_API_KEY: Final = "simulator-only-key"
DEFAULT_SECRET_KEY: Final = "simulator-only-secret"  # noqa: S105 - the simulator's own published default
API_KEY_ENV: Final = "IGATE_BUS_ESMS_API_KEY"
SECRET_KEY_ENV: Final = "IGATE_BUS_ESMS_SECRET_KEY"  # noqa: S105 - a variable's name
SEND_PATH: Final = "/MainService.svc/json/SendMultipleMessage_V4_post_json/"
LOOKUP_PATH: Final = "/MainService.svc/json/GetSendStatusByRequestId_get"
BALANCE_PATH: Final = "/MainService.svc/json/GetBalance_json"
#: [F] eSMS result codes
OK, BAD_KEY, DUPLICATE, NOT_FOUND = "100", "101", "124", "118"
_MESSAGES: Final = {
    "101": "Authorize Failure",
    "103": "Balance not enough",
    "104": "Brandname not exist",
    "108": "Phone number invalid",
    "99": "Unknown error",
    "140": "IP not whitelisted",
    "146": "Template not registered",
}


def _json(data: Any, status: int = 200) -> Answer:
    return Answer(status, json.dumps(data, ensure_ascii=False).encode("utf-8"))


class EsmsSimulator(GatewaySimulator):
    """The eSMS REST API on a real socket.

    Args:
        host: where to listen.
        port: 0 for a free port.
        api_key: the ApiKey it accepts.
        secret_key: the SecretKey it accepts.
    """

    gateway: ClassVar[str] = "esms"
    thread_name: ClassVar[str] = "esms-sim"
    dedupes: ClassVar[bool] = True

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str = DEFAULT_API_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
    ) -> None:
        super().__init__(host, port)
        self.api_key = api_key
        self.secret_key = secret_key

    def _authorised(self, api_key: Any, secret_key: Any) -> bool:
        return bool(api_key == self.api_key and secret_key == self.secret_key)

    def parse(self, method: str, path: str, query: dict[str, str], body: bytes) -> Call | Answer:
        """The call of an eSMS request."""
        if method == "POST" and path == SEND_PATH:
            try:
                data = json.loads(body)
            except ValueError:
                return _json({"CodeResult": "99", "ErrorMessage": "Body is not JSON"}, 400)
            if not isinstance(data, dict):
                return _json({"CodeResult": "99", "ErrorMessage": "Body is not an object"}, 400)
            return Call(
                "send",
                request_id=str(data.get("RequestId") or ""),
                phone=str(data.get("Phone") or ""),
                content=str(data.get("Content") or ""),
                unicode=str(data.get("IsUnicode")) == "1",
                authorised=self._authorised(data.get("ApiKey"), data.get("SecretKey")),
                extra={"brandname": data.get("Brandname"), "callback": data.get("CallbackUrl")},
            )
        if method == "GET" and path == LOOKUP_PATH:
            return Call(
                "lookup",
                request_id=query.get("RequestId", ""),
                authorised=self._authorised(query.get("ApiKey"), query.get("SecretKey")),
            )
        if method == "GET" and path == BALANCE_PATH:
            return Call("probe", authorised=self._authorised(query.get("ApiKey"), query.get("SecretKey")))
        return _json({"CodeResult": "99", "ErrorMessage": f"no method {path}"}, 404)

    def answer(self, call: Call, sent: dict[str, Any] | None, *, duplicate: bool) -> Answer:
        """The JSON answers of eSMS."""
        if call.op == "send":
            assert sent is not None  # noqa: S101 - a send always has its record
            if not call.phone.isdigit() or not call.phone.startswith("84") or len(call.phone) != 11:
                return self.refusal(call, "108")
            if duplicate:
                return _json(
                    {"CodeResult": DUPLICATE, "ErrorMessage": "Duplicate RequestId", "SMSID": sent["message_id"]}
                )
            return _json({"CodeResult": OK, "CountRegenerate": 0, "SMSID": sent["message_id"]})
        if call.op == "lookup":
            if sent is None:
                return _json({"CodeResult": NOT_FOUND, "ErrorMessage": "RequestId not found"})
            return _json({"CodeResult": OK, "SMSID": sent["message_id"], "SendStatus": 5})
        return _json({"Balance": 1_000_000, "CodeResponse": OK, "UserID": 1})

    def refusal(self, call: Call, code: str) -> Answer:
        """The error answer of eSMS: HTTP 200 with the code (as the real API answers)."""
        code = BAD_KEY if code == "auth" else code
        key = "CodeResponse" if call.op == "probe" else "CodeResult"
        return _json({key: code, "ErrorMessage": _MESSAGES.get(code, "Error")})

    def garbage(self, call: Call, *, hostile: bool) -> Answer:
        """A cut JSON body, or an XML reply with a DOCTYPE."""
        del call
        if hostile:
            return Answer(200, b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x "y">]><r>&x;</r>', "text/xml")
        return Answer(200, b'{"CodeResult": "100", "SMSID": ')

    def _apply(self, call: Call, received_at: float) -> tuple[dict[str, Any], bool]:
        """A bad phone is refused before anything is sent (108), so it is no effect."""
        if not call.phone.isdigit() or not call.phone.startswith("84") or len(call.phone) != 11:
            return {"request_id": call.request_id, "message_id": "0"}, False
        return super()._apply(call, received_at)


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Run the simulator in the foreground until interrupted (``igate-bus simulate esms``)."""
    key, secret = os.environ.get(API_KEY_ENV) or DEFAULT_API_KEY, os.environ.get(SECRET_KEY_ENV) or DEFAULT_SECRET_KEY
    serve_gateway(EsmsSimulator(host, port, api_key=key, secret_key=secret), "")


def main(argv: list[str] | None = None) -> None:
    """``python -m simulators.esms [--host H] [--port P]``."""
    gateway_main(argv, name="esms", port=DEFAULT_PORT, serve=serve)


if __name__ == "__main__":
    main()
