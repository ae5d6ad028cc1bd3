# mypy: allow-untyped-defs, allow-incomplete-defs
"""schemathesis against the ingress's own /openapi.json: no 500, every answer as documented.

The ingress runs for real (uvicorn on a socket, a private vhost on the broker, the operations router with
this process's health monitor). Positive cases are sent with valid credentials (``/events`` signed, the
land system's security code and the eSMS token put in), so generation reaches the parser and the publisher,
not just the authentication; negative cases keep their own credentials, except the signature of
``/events``, so what they break is what gets tested.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests
import schemathesis
from busenv import write_config
from hypothesis import HealthCheck, settings
from ingress_harness import ESMS_TOKEN, SECRET, VILIS_CODE, bind_capture, drain, private_vhost, serve
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bus.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

if TYPE_CHECKING:
    from collections.abc import Iterator

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
_VILIS_PATH = re.compile(r"^(/callbacks/vilis/[^/]+/)[^/?]*")


class Credentials(requests.auth.AuthBase):
    """Signs /events over the exact body sent; with ``secrets``, also puts in the callbacks' credentials."""

    def __init__(self, *, secrets: bool) -> None:
        self.secrets = secrets

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        parts = urlsplit(r.url or "")
        if parts.path == "/events":
            body = r.body or b""
            raw = body.encode() if isinstance(body, str) else body
            assert isinstance(raw, bytes), "schemathesis sends prepared bodies"
            ts = int(time.time())
            r.headers[TIMESTAMP_HEADER] = str(ts)
            r.headers[SIGNATURE_HEADER] = sign(SECRET, ts, raw)
        elif self.secrets and parts.path == "/callbacks/esms":
            query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
            r.url = urlunsplit(parts._replace(query=urlencode([*query, ("token", ESMS_TOKEN)])))
        elif self.secrets and _VILIS_PATH.match(parts.path):
            r.url = urlunsplit(parts._replace(path=_VILIS_PATH.sub(rf"\g<1>{VILIS_CODE}", parts.path)))
        return r


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    """A vhost for the module; a queue catches whatever the generated requests get published."""
    with private_vhost() as url:
        bind_capture(url, "igate.events", queue="capture.events")
        bind_capture(url, "bus.results", queue="capture.results")
        yield url


@pytest.fixture(scope="module")
def ingress(broker_url, tmp_path_factory):
    """The ingress with the operations router (a config whose one target is a closed port)."""
    config = write_config(tmp_path_factory.mktemp("cfg"), endpoint="http://127.0.0.1:9/")
    env = {"IGATE_BUS_CONFIG_DIR": str(config)}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.setenv("IGATE_BUS_IGATE_USERNAME", "u")
        mp.setenv("IGATE_BUS_IGATE_PASSWORD", "p")
        with serve(broker_url, observe=True) as srv:
            yield srv


@pytest.fixture(scope="module")
def api_schema(ingress):
    """The schema as the ingress serves it."""
    schema = schemathesis.openapi.from_url(f"{ingress.url}/openapi.json")
    schema.config.generation.update(max_examples=40, database="none")
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_every_answer_as_documented(case):
    """Every generated request ▶ no 5xx but a documented 503, each status/body/header as /openapi.json says."""
    positive = case.meta is None or case.meta.generation.mode.is_positive
    case.call_and_validate(checks=CHECKS, auth=Credentials(secrets=positive), timeout=15)


def test_what_schemathesis_got_published_is_valid(broker_url):
    """Whatever the generated requests got published (if anything) is a valid event: nothing unknown got through."""
    from schemas.envelope import parse_event
    from schemas.events import EVENT_PAYLOADS

    for queue in ("capture.events", "capture.results"):
        for _, props, body in drain(broker_url, queue):
            event = parse_event(body, payload_models=EVENT_PAYLOADS, message_id=props.message_id)
            assert event.envelope.event_type == props.type
