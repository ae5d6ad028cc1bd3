"""The two SMS gateways the SMS connector fails over between: Viettel's brandname SOAP service and eSMS's REST API.

Where it sits: inside the connector step (event → route → adapter → ``connectors/sms.py`` → **a gateway** →
result/DLQ). Each gateway is one client (``SoapClient`` or ``HttpClient``), hence one guard: its own breaker,
rate limit and deadline. A gateway sends one SMS keyed by our idempotency key (Viettel ``RequestID``, eSMS
``RequestId``), looks a key up, and answers a harmless probe. What each answer becomes
(docs/domain.md section 5; ``switch`` means the failover connector tries the next gateway, nothing was sent):

=====================================================  =========================================================
what the gateway answered                              raised / returned
=====================================================  =========================================================
accepted (Viettel result 1, eSMS 100)                  :class:`~schemas.sms.SmsReceipt`
eSMS 124 (duplicate RequestId)                         a receipt with ``duplicate=True``: it was sent before
refused our login (Viettel ``auth``, eSMS 101/140),    ``TargetUnavailable(maybe_applied=False)`` and the
no balance or brandname (eSMS 103/104/99, Viettel      gateway's breaker tripped: switch; an operator must act
``balance``)
a bad number (eSMS 108, Viettel ``phone``), a          ``TargetRejected(field="phone")``: another gateway
template refused (eSMS 146)                            would refuse it too; dead-lettered
an unknown code                                        ``TargetUnavailable(maybe_applied=True)``: reconcile
transport failures, 5xx, garbage, hostile replies      as ``connectors/_http.py`` / ``connectors/_soap.py``
=====================================================  =========================================================

Neither reply body nor the SMS text is quoted in an error; an OTP code in a gateway's echo is masked by
:func:`schemas.pii.live_secret` while the connector sends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

from pydantic import BaseModel, ConfigDict, SecretStr

from connectors._http import HttpClient
from connectors._soap import WSDL_DIR, SoapClient
from connectors.base import credential
from schemas.errors import ConfigError, TargetRejected, TargetUnavailable
from schemas.sms import SmsReceipt, encoding_of, segments

if TYPE_CHECKING:
    from config.model import ConnectorSpec
    from connectors.kit.guard import Guard
    from schemas.sms import OtpSms, SmsNotice

VIETTEL_WSDL: Final = WSDL_DIR / "viettel_bulksms.wsdl"
VIETTEL_BINDING: Final = "{http://impl.bulkSms.ws/}CpMtPortBinding"
ESMS_SEND: Final = "/MainService.svc/json/SendMultipleMessage_V4_post_json/"
ESMS_LOOKUP: Final = "/MainService.svc/json/GetSendStatusByRequestId_get"
#: the keys travel as query parameters: the call logs show the path, never the query
ESMS_BALANCE: Final = "/MainService.svc/json/GetBalance_json"
#: [F] eSMS codes (docs/domain.md section 5); 118 "no such request id" is [A]
ESMS_OK, ESMS_DUPLICATE, ESMS_NOT_FOUND = "100", "124", "118"
ESMS_ACCOUNT_CODES: Final = frozenset({"99", "101", "103", "104", "140"})
ESMS_MESSAGE_CODES: Final = frozenset({"108", "146"})
#: [A] Viettel's refusal messages start with these words
VIETTEL_ACCOUNT: Final = ("auth", "balance")
VIETTEL_PHONE: Final = "phone"
MAX_KEY_CHARS: Final = 100
#: the gateways :func:`build_gateway` knows
GATEWAY_KINDS: Final = ("viettel", "esms")


class Gateway(Protocol):
    """One SMS gateway behind the failover connector."""

    name: str
    guard: Guard
    unicode: bool

    def send(self, request: SmsNotice | OtpSms, key: str) -> SmsReceipt:
        """Send one SMS keyed ``key``."""
        ...

    def lookup(self, key: str) -> SmsReceipt | None:
        """The receipt of an SMS sent with ``key``, or None when the gateway never sent one."""
        ...

    def check(self) -> float | None:
        """A harmless call for the probe, bypassing the breaker."""
        ...

    def close(self) -> None:
        """Release sockets."""
        ...


def _text(request: SmsNotice | OtpSms, unicode: bool) -> str:
    return request.text if unicode else request.plain_text


def _receipt(provider: str, message_id: str, key: str, text: str, *, duplicate: bool = False) -> SmsReceipt:
    return SmsReceipt(
        provider=provider,
        message_id=message_id,
        request_id=key,
        encoding=encoding_of(text),
        segments=min(segments(text), 6),
        duplicate=duplicate,
    )


def _key(key: str) -> str:
    if not 0 < len(key) <= MAX_KEY_CHARS:
        raise ConfigError(f"an SMS needs an idempotency key of 1-{MAX_KEY_CHARS} characters")
    return key


class _ViettelResult(BaseModel):
    model_config = ConfigDict(extra="ignore")
    message: str | None = None
    messageId: int | None = None  # noqa: N815 - the WSDL's name
    result: int


class _ViettelDlr(BaseModel):
    model_config = ConfigDict(extra="ignore")
    result: int
    messageId: int | None = None  # noqa: N815 - the WSDL's name
    status: str | None = None


class _ViettelBalance(BaseModel):
    model_config = ConfigDict(extra="ignore")
    errCode: str  # noqa: N815 - the WSDL's name
    errDesc: str | None = None  # noqa: N815 - the WSDL's name


class ViettelGateway:
    """Viettel's brandname SOAP service (``wsCpMt``; [A] ``getDlrStatus`` by RequestID as the lookup).

    Args:
        name: ``<connector>.viettel`` (logs, breaker).
        spec: the gateway's spec (endpoint, timeouts, breaker, rate limit).
        user: ``User``; password: ``Password``; cp_code: ``CPCode``; brandname: ``ServiceID``.
        unicode: send the Vietnamese form (``ContentType`` 1) instead of the no-diacritics one.
    """

    def __init__(
        self,
        name: str,
        spec: ConnectorSpec,
        *,
        user: str,
        password: SecretStr,
        cp_code: str,
        brandname: str,
        unicode: bool,
    ) -> None:
        self.name = name
        self.unicode = unicode
        self._login = {"User": user, "CPCode": cp_code}
        self._password = password
        self._brandname = brandname
        address = spec.endpoint or ""
        self._soap = SoapClient(
            name, spec, VIETTEL_WSDL, binding=VIETTEL_BINDING, address=address, log_as="sms", keys=("Content",)
        )
        self.guard = self._soap.guard

    def _auth(self) -> dict[str, str]:
        return {**self._login, "Password": self._password.get_secret_value()}

    def send(self, request: SmsNotice | OtpSms, key: str) -> SmsReceipt:
        """``wsCpMt`` with our key as ``RequestID``."""
        text = _text(request, self.unicode)
        body = {
            **self._auth(),
            "RequestID": _key(key),
            "UserID": request.phone,
            "ReceiverID": request.phone,
            "ServiceID": self._brandname,
            "CommandCode": "bulksms",
            "Content": text,
            "ContentType": "1" if self.unicode else "0",
        }
        reply = self._soap.call("wsCpMt", body, _ViettelResult, deadline=self.guard.deadline(), effect=True)
        if reply.result == 1 and reply.messageId:
            return _receipt("viettel", str(reply.messageId), key, text)
        reason = (reply.message or "").split(":", 1)[0].strip().lower()
        if reason == VIETTEL_PHONE:
            raise TargetRejected("Viettel refused the receiver number", field="phone", code="viettel:phone")
        if reason in VIETTEL_ACCOUNT:
            self.guard.breaker.trip(f"Viettel refused the bus's account ({reason})")
            raise TargetUnavailable(f"Viettel refused the bus's account ({reason}); nothing was sent")
        raise TargetUnavailable(f"Viettel answered result {reply.result} ({reason or 'no reason'})", maybe_applied=True)

    def lookup(self, key: str) -> SmsReceipt | None:
        """``getDlrStatus`` by RequestID: result 1 found, 0 never sent."""
        body = {**self._auth(), "RequestID": _key(key)}
        reply = self._soap.call("getDlrStatus", body, _ViettelDlr, deadline=self.guard.deadline(), effect=False)
        if reply.result == 1 and reply.messageId:
            return _receipt("viettel", str(reply.messageId), key, "")
        if reply.result == 0:
            return None
        raise TargetUnavailable(f"Viettel's lookup answered result {reply.result}", maybe_applied=True)

    def check(self) -> float | None:
        """``checkBalance``, bypassing the breaker."""
        reply = self._soap.call(
            "checkBalance", self._auth(), _ViettelBalance, deadline=self.guard.deadline(), effect=False, guard=False
        )
        if reply.errCode != "0":
            raise TargetUnavailable(f"Viettel's balance check answered errCode {reply.errCode}")
        return None

    def close(self) -> None:
        """Close the pooled connections."""
        self._soap.close()


class _EsmsReply(BaseModel):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)
    CodeResult: str
    SMSID: str | None = None


class _EsmsBalance(BaseModel):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)
    CodeResponse: str


class EsmsGateway:
    """eSMS's REST API (``SendMultipleMessage_V4_post_json``; it deduplicates RequestId: 124).

    Args:
        name: ``<connector>.esms`` (logs, breaker).
        spec: the gateway's spec.
        api_key: ``ApiKey``; secret_key: ``SecretKey``; brandname: ``Brandname``.
        unicode: send the Vietnamese form (``IsUnicode`` 1).
        callback_url: where eSMS reports delivery (the ingress's ``/callbacks/esms``), or empty.
    """

    def __init__(
        self,
        name: str,
        spec: ConnectorSpec,
        *,
        api_key: SecretStr,
        secret_key: SecretStr,
        brandname: str,
        unicode: bool,
        callback_url: str = "",
    ) -> None:
        self.name = name
        self.unicode = unicode
        self._api_key = api_key
        self._secret_key = secret_key
        self._brandname = brandname
        self._callback_url = callback_url
        self._http = HttpClient(name, spec)
        self.guard = self._http.guard

    def _auth(self) -> dict[str, str]:
        return {"ApiKey": self._api_key.get_secret_value(), "SecretKey": self._secret_key.get_secret_value()}

    def send(self, request: SmsNotice | OtpSms, key: str) -> SmsReceipt:
        """One SMS with our key as ``RequestId``; 124 (a duplicate) counts as sent."""
        text = _text(request, self.unicode)
        body = {
            **self._auth(),
            "Phone": request.phone,
            "Content": text,
            "Brandname": self._brandname,
            "SmsType": "2",
            "IsUnicode": "1" if self.unicode else "0",
            "Sandbox": "0",
            "RequestId": _key(key),
        }
        if self._callback_url:
            body["CallbackUrl"] = self._callback_url
        deadline = self.guard.deadline()
        reply = self._http.request("POST", ESMS_SEND, deadline=deadline, effect=True, json_body=body, expect=_EsmsReply)
        answer = reply.parse(_EsmsReply)
        code = answer.CodeResult
        if code == ESMS_OK and answer.SMSID:
            return _receipt("esms", answer.SMSID, key, text)
        if code == ESMS_DUPLICATE:
            return _receipt("esms", answer.SMSID or f"duplicate:{key}", key, text, duplicate=True)
        if code in ESMS_MESSAGE_CODES:
            raise TargetRejected(
                f"eSMS refused the message (code {code})",
                field="phone" if code == "108" else "text",
                code=f"esms:{code}",
            )
        if code in ESMS_ACCOUNT_CODES:
            self.guard.breaker.trip(f"eSMS refused the bus's account (code {code})")
            raise TargetUnavailable(f"eSMS refused the bus's account (code {code}); nothing was sent")
        raise TargetUnavailable(f"eSMS answered the unknown code {code[:10]!r}", maybe_applied=True)

    def lookup(self, key: str) -> SmsReceipt | None:
        """[A] the status of the request id: 100 sent, 118 never."""
        params = {**self._auth(), "RequestId": _key(key)}
        reply = self._http.request(
            "GET", ESMS_LOOKUP, deadline=self.guard.deadline(), effect=False, params=params, expect=_EsmsReply
        )
        answer = reply.parse(_EsmsReply)
        if answer.CodeResult == ESMS_OK and answer.SMSID:
            return _receipt("esms", answer.SMSID, key, "")
        if answer.CodeResult == ESMS_NOT_FOUND:
            return None
        raise TargetUnavailable(f"eSMS's lookup answered code {answer.CodeResult[:10]!r}", maybe_applied=True)

    def check(self) -> float | None:
        """The balance, bypassing the breaker."""
        reply = self._http.request(
            "GET",
            ESMS_BALANCE,
            deadline=self.guard.deadline(),
            effect=False,
            params=self._auth(),
            guard=False,
            expect=_EsmsBalance,
        )
        answer = reply.parse(_EsmsBalance)
        if answer.CodeResponse != ESMS_OK:
            raise TargetUnavailable(f"eSMS's balance check answered code {answer.CodeResponse[:10]!r}")
        return reply.elapsed_ms

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()


def build_gateway(connector: str, kind: str, spec: ConnectorSpec) -> Gateway:
    """The gateway ``kind`` (``viettel`` or ``esms``) from the failover connector's ``<kind>_*`` options.

    Raises:
        ConfigError: an unknown kind, or a missing endpoint, option or credential.
    """
    if kind not in GATEWAY_KINDS:
        raise ConfigError(
            f"connector {connector!r}: unknown SMS gateway {kind!r} (known: {', '.join(GATEWAY_KINDS)})",
            field="options.gateways",
        )
    options = spec.options
    name = f"{connector}.{kind}"

    def opt(key: str, default: str | None = None) -> str:
        value = options.get(f"{kind}_{key}", default)
        if value is None or value == "":
            raise ConfigError(f"connector {connector!r} needs options.{kind}_{key}", field=f"options.{kind}_{key}")
        return str(value)

    def flag(key: str, *, default: bool) -> bool:
        value = options.get(f"{kind}_{key}", default)
        return value if isinstance(value, bool) else str(value).lower() in {"1", "true", "yes"}

    from config.model import BreakerSpec

    sub = spec.model_copy(
        update={
            "endpoint": opt("endpoint"),
            "rate_limit": float(opt("rate_limit", str(spec.rate_limit or 50))),
            "breaker": BreakerSpec.model_validate(
                {
                    "fail_max": int(opt("fail_max", str(spec.breaker.fail_max))),
                    "reset_timeout": opt("reset_timeout", f"{spec.breaker.reset_timeout * 1000:g}ms"),
                }
            ),
        }
    )
    if kind == "viettel":
        return ViettelGateway(
            name,
            sub,
            user=credential(connector, spec, "viettel_user").get_secret_value(),
            password=credential(connector, spec, "viettel_password"),
            cp_code=opt("cp_code"),
            brandname=opt("brandname"),
            unicode=flag("unicode", default=False),
        )
    if kind == "esms":
        return EsmsGateway(
            name,
            sub,
            api_key=credential(connector, spec, "esms_api_key"),
            secret_key=credential(connector, spec, "esms_secret_key"),
            brandname=opt("brandname"),
            unicode=flag("unicode", default=True),
            callback_url=str(options.get("esms_callback_url", "")),
        )
    raise ConfigError(
        f"connector {connector!r}: unknown SMS gateway {kind!r} (known: viettel, esms)", field="options.gateways"
    )
