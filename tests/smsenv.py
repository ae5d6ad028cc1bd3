"""What the SMS tests share: both gateway simulators, their credentials in the environment, the connector's spec.

The spec names environment variables of its own (``IGATE_BUS_TEST_SMS_*``) so a test never depends on the
shipped ones; :func:`sms_env` sets them to the simulators' published defaults.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from config.model import ConnectorSpec
from schemas.sms import OtpSms, SmsNotice, fold_diacritics
from simulators import esms, viettel_sms
from simulators.esms import EsmsSimulator
from simulators.viettel_sms import ViettelSmsSimulator

if TYPE_CHECKING:
    from collections.abc import Iterator

ENV = {
    "IGATE_BUS_TEST_SMS_VIETTEL_USER": viettel_sms.DEFAULT_USER,
    "IGATE_BUS_TEST_SMS_VIETTEL_PASSWORD": viettel_sms.DEFAULT_PASSWORD,
    "IGATE_BUS_TEST_SMS_ESMS_API_KEY": esms.DEFAULT_API_KEY,
    "IGATE_BUS_TEST_SMS_ESMS_SECRET_KEY": esms.DEFAULT_SECRET_KEY,
}
CREDENTIALS = {
    "viettel_user": "IGATE_BUS_TEST_SMS_VIETTEL_USER",
    "viettel_password": "IGATE_BUS_TEST_SMS_VIETTEL_PASSWORD",
    "esms_api_key": "IGATE_BUS_TEST_SMS_ESMS_API_KEY",
    "esms_secret_key": "IGATE_BUS_TEST_SMS_ESMS_SECRET_KEY",
}
PHONE = "84912000111"


def sms_env() -> None:
    """Put the simulators' credentials into the variables :data:`CREDENTIALS` names."""
    os.environ.update(ENV)


def options(viettel: ViettelSmsSimulator, esms_sim: EsmsSimulator, **extra: Any) -> dict[str, Any]:
    """The connector's options for the two simulators (Viettel first), with ``extra`` on top."""
    return {
        "gateways": "viettel,esms",
        "viettel_endpoint": viettel.url + viettel_sms.PATH,
        "viettel_cp_code": viettel_sms.DEFAULT_CP_CODE,
        "viettel_brandname": "UBND-DAKLAK",
        "esms_endpoint": esms_sim.url,
        "esms_brandname": "UBND-DAKLAK",
        **extra,
    }


def spec(
    viettel: ViettelSmsSimulator, esms_sim: EsmsSimulator, *, total: str = "3s", fail_max: int = 3, **extra: Any
) -> ConnectorSpec:
    """A spec of type ``sms`` for the simulators, with short timeouts."""
    return ConnectorSpec.model_validate(
        {
            "type": "sms",
            "timeout": {"connect": "1s", "read": total, "total": total},
            "breaker": {"fail_max": fail_max, "reset_timeout": "2s"},
            "credentials": CREDENTIALS,
            "options": options(viettel, esms_sim, **extra),
        }
    )


def simulators() -> Iterator[tuple[ViettelSmsSimulator, EsmsSimulator]]:
    """Both simulators, started; stopped at the end."""
    with ViettelSmsSimulator() as viettel, EsmsSimulator() as esms_sim:
        yield viettel, esms_sim


def notice(text: str = "Hồ sơ 000.00.16.H16-251126-0001 đã được tiếp nhận.", phone: str = PHONE) -> SmsNotice:
    """A notice request as the adapter makes it."""
    return SmsNotice(phone=phone, template="dossier.received", text=text, plain_text=fold_diacritics(text))


def otp(code: str = "482913", *, ttl_s: float = 300.0, phone: str = PHONE) -> OtpSms:
    """An OTP request expiring ``ttl_s`` from now."""
    text = f"Mã OTP nộp hồ sơ: {code}. Hiệu lực 5 phút."
    return OtpSms(
        phone=phone,
        template="otp",
        text=text,
        plain_text=fold_diacritics(text),
        otp_code=code,
        expires_at=datetime.now(UTC) + timedelta(seconds=ttl_s),
    )
