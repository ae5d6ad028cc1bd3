"""A real HTTP server that answers as VNPT iGate would, records what it received, and fails on request.

Where it sits: it stands in for iGate at the far end of the routes that write back into iGate (event →
route → adapter → ``connectors/igate.py`` → **here**). Tests run it in a daemon thread on a real socket
(:class:`IGateSimulator`); ``python -m simulators.igate --port 8601`` and :func:`serve` run it standalone
(``igate-bus simulate igate``, the demo).

What it answers (docs/domain.md section 1.4; [F] = as iGate does, [A] = assumed):

- [F] ``POST /auth/realms/digo/protocol/openid-connect/token``: Keycloak's password grant. It checks the
  client id, user name and password it was built with and issues tokens that expire after
  ``token_ttl_s``; [A] the tokens are opaque random strings, not JWTs (the bus never decodes them).
  A missing, unknown or expired token on any other call is a 401 with ``WWW-Authenticate: Bearer``.
- [F] ``GET /pa/dossier/search?code=&page=&size=``: a Spring page with ``content[]``.
- [F] ``GET /pa/dossier/{code}``: the dossier JSON (``id``, ``code``, ``nationCode``, ``dossierStatus``,
  ``appointmentDate``, ``applicant.data``...); [A] also by code, not only by 24-hex id.
- [A] ``POST /pa/dossier/{code}/--bus-note``, ``PUT /pa/dossier/{code}/--bus-status`` and
  ``GET /pa/dossier/--bus-request?clientRequestId=KEY`` (see :mod:`schemas.igate_api`). [A]
  ``dossierStatus.id`` holds the national 1-10 status here; real iGate numbers its statuses 0-17.
- [A] Errors use Spring Boot's default JSON (``status``, ``error``, ``message``, ``path``). Unknown
  dossiers are created on the first note or update unless ``strict_dossiers`` is set (then 404).

The record and the effects are what tests assert on: every iGate request (method, path, query, headers
without ``Authorization``, JSON body with any password masked, which token it carried, the status or fault
it got) and every applied note/update with its ``clientRequestId``. Effects are **not** deduplicated by
``clientRequestId``: a second request with the same key is applied and counted again, so
:meth:`IGateSimulator.effect_counts` shows duplicate effects.

Faults (:class:`Faults`, set in Python or over HTTP; deterministic when given a ``seed``): latency, an
error status at a rate, a hang longer than the client's timeout, a dropped connection, a malformed 200, an
applied effect followed by a dropped connection (the ambiguous outcome), an oversized reply and a slow
drip, each restricted to ``only_paths``, ``only_methods`` and ``only_keys`` when given; and, drawn on their
own, failures of the lookup endpoint only (``lookup_fail_rate``: an error status or a dropped connection), so
a test can break reconciliation while effects still go through. Control endpoints (never recorded, never faulted):
``GET/POST /_sim/faults``, ``GET /_sim/faults/schema``, ``GET /_sim/requests``, ``GET /_sim/effects``,
``POST /_sim/reset``, ``POST /_sim/tokens/expire``, ``POST /_sim/dossiers`` (docs/simulators.md).
"""

from __future__ import annotations

import argparse
import collections
import hmac
import itertools
import json
import os
import re
import secrets
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.igate_api import AddNoteRequest, UpdateDossierRequest
from simulators._server import (
    QuietHandler,
    ServedSimulator,
    SimServer,
    configure_cli_logging,
    duration_arg,
    run_in_foreground,
)

if TYPE_CHECKING:
    from collections.abc import Callable

log = structlog.get_logger(__name__)

DEFAULT_USERNAME: Final = "igate-bus"
DEFAULT_PASSWORD: Final = "simulator-only"  # noqa: S105 - the simulator's own published default
DEFAULT_CLIENT_ID: Final = "igate-bus"
DEFAULT_REALM: Final = "digo"
DEFAULT_PORT: Final = 8601
#: how long an issued token lives unless told otherwise
DEFAULT_TOKEN_TTL_S: Final = 300.0
#: the variables the shipped connectors.yaml reads the bus's iGate credentials from (used by :func:`serve`)
USERNAME_ENV: Final = "IGATE_BUS_IGATE_USERNAME"
PASSWORD_ENV: Final = "IGATE_BUS_IGATE_PASSWORD"  # noqa: S105 - a variable's name
#: Vietnam has kept UTC+7 since 1975; a fixed offset needs no tz database
ICT: Final = timezone(timedelta(hours=7), "ICT")
MAX_REQUEST_BYTES: Final = 1_048_576
CONTROL_PREFIX: Final = "/_sim/"

#: [F] national status names (docs/domain.md section 1.1), used for ``dossierStatus.name``
STATUS_NAMES: Final = {
    1: "Mới đăng ký",
    2: "Được tiếp nhận",
    3: "Không được tiếp nhận",
    4: "Đang xử lý",
    5: "Yêu cầu bổ sung giấy tờ",
    6: "Yêu cầu thực hiện nghĩa vụ tài chính",
    7: "Công dân yêu cầu rút hồ sơ",
    8: "Dừng xử lý",
    9: "Đã xử lý xong",
    10: "Đã trả kết quả",
}
#: dossiers every fresh simulator holds ([A] codes in the ``{unit}-{yyMMdd}-{NNNN}`` form of docs/domain.md section 0)
SEED_DOSSIER_CODES: Final = (
    "000.00.16.H16-250312-0001",
    "000.00.16.H16-250312-0002",
    "000.00.17.H16-250313-0001",
)

Rate = Annotated[float, Field(ge=0.0, le=1.0, description="Probability per request, 0 to 1.")]
FaultName = Literal["error", "timeout", "drop_connection", "malformed_body", "apply_then_drop"]
#: the lookup endpoint (``GET /pa/dossier/--bus-request``), which ``lookup_fail_rate`` fails on its own
LOOKUP_PATH: Final = "/pa/dossier/--bus-request"


class Faults(BaseModel):
    """The fault switches; a request on a faulted path draws them in the order they are listed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_s: float = Field(default=0.0, ge=0.0, le=600.0, description="Seconds to wait before answering.")
    error_rate: Rate = Field(default=0.0, description="Share of requests answered with error_status instead.")
    error_status: int = Field(default=503, ge=400, le=599, description="HTTP status of an injected error.")
    error_body: str | None = Field(
        default=None, max_length=100_000, description="Body of an injected error; null: Spring Boot's JSON error."
    )
    timeout: Rate = Field(default=0.0, description="Share of requests that hang for hang_s, then get a reset.")
    hang_s: float = Field(default=30.0, gt=0.0, le=3600.0, description="Seconds a 'timeout' request hangs.")
    apply_before_hang: bool = Field(default=False, description="Apply the effect before hanging (ambiguous).")
    drop_connection: Rate = Field(default=0.0, description="Share of requests reset without an answer.")
    malformed_body: Rate = Field(default=0.0, description="Share applied, then answered 200 with broken JSON.")
    apply_then_drop_rate: Rate = Field(default=0.0, description="Share applied, then reset (the answer is lost).")
    oversize_bytes: int = Field(
        default=0, ge=0, le=2**34, description="Answer 200 with this many bytes and no length; 0: off."
    )
    drip_interval_s: float = Field(
        default=0.0, ge=0.0, le=60.0, description="Seconds between the bytes of a dripped answer; 0: off."
    )
    only_paths: list[str] = Field(default_factory=list, description="Path prefixes to fault; empty = all.")
    only_methods: list[Literal["GET", "POST", "PUT"]] = Field(
        default_factory=list, description="Methods to fault (e.g. POST and PUT: effects only); empty = all."
    )
    only_keys: list[str] = Field(
        default_factory=list, description="Effects to fault, by their clientRequestId (one event's); empty = all."
    )
    lookup_fail_rate: Rate = Field(
        default=0.0, description="Fail lookups (GET /pa/dossier/--bus-request) at this rate, on their own."
    )
    lookup_fail: Literal["error", "drop_connection"] = Field(
        default="error", description="How a failed lookup fails: error_status, or a reset connection."
    )
    seed: int | None = Field(default=None, description="Seeds the draws, so a run repeats exactly.")

    def covers(self, path: str, method: str = "GET", key: str | None = None) -> bool:
        """Whether the listed faults apply to ``method path`` carrying the idempotency key ``key``."""
        return (
            (not self.only_paths or any(path.startswith(prefix) for prefix in self.only_paths))
            and (not self.only_methods or method in self.only_methods)
            and (not self.only_keys or key in self.only_keys)
        )


class _NoteBody(AddNoteRequest):
    client_request_id: str = Field(min_length=1, max_length=200)


class _StatusBody(UpdateDossierRequest):
    client_request_id: str = Field(min_length=1, max_length=200)


class _Answer:
    """What a route decided: a status and a JSON body (or raw bytes), and extra headers."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}


def _now_iso() -> str:
    return datetime.now(ICT).isoformat(timespec="milliseconds")


def _igate_date(at: datetime) -> str:
    """[F] iGate's date form: ``2025-09-30T17:00:00.000+0700``."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.000%z")


def _error(status: int, message: str, path: str, **extra: Any) -> _Answer:
    reasons = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}
    body = {
        "timestamp": _now_iso(),
        "status": status,
        "error": reasons.get(status, "Error"),
        "message": message,
    }
    return _Answer(status, {**body, "path": path, **extra})


class IGateSimulator(ServedSimulator[Faults]):
    """iGate in a thread: ``start()``, ``stop()``, ``url``, usable as a context manager.

    Args:
        host: interface to bind.
        port: port to bind; 0 picks a free one (read it back from :attr:`url`).
        username: the user the token endpoint accepts.
        password: its password.
        client_id: the Keycloak client id the token endpoint accepts.
        realm: the Keycloak realm in the token path.
        token_ttl_s: lifetime of issued tokens.
        strict_dossiers: answer 404 to a note or update on an unknown dossier instead of creating it.
    """

    thread_name = "igate-sim"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        client_id: str = DEFAULT_CLIENT_ID,
        realm: str = DEFAULT_REALM,
        token_ttl_s: float = DEFAULT_TOKEN_TTL_S,
        strict_dossiers: bool = False,
    ) -> None:
        self.username = username
        self.client_id = client_id
        self.realm = realm
        self.strict_dossiers = strict_dossiers
        self._password = password
        self._default_ttl = token_ttl_s
        self.token_ttl_s = token_ttl_s
        self._init_server(host, port, Faults())
        self._tokens: dict[str, tuple[int, float]] = {}
        self._dossiers: dict[str, dict[str, Any]] = {}
        self._counter = itertools.count(1)
        # (method, path pattern, handler, needs a bearer token)
        self._routes: list[tuple[str, re.Pattern[str], Callable[[_Call], _Answer], bool]] = [
            ("POST", re.compile(r"^/auth/realms/([^/]+)/protocol/openid-connect/token$"), self._token, False),
            ("GET", re.compile(r"^/pa/dossier/search$"), self._search, True),
            ("GET", re.compile(r"^/pa/dossier/--bus-request$"), self._lookup, True),
            ("POST", re.compile(r"^/pa/dossier/([^/]+)/--bus-note$"), self._note, True),
            ("PUT", re.compile(r"^/pa/dossier/([^/]+)/--bus-status$"), self._status, True),
            ("GET", re.compile(r"^/pa/dossier/([^/]+)$"), self._dossier, True),
        ]
        self._seed_dossiers()

    # -- lifecycle --------------------------------------------------------------------------------------

    def _make_server(self) -> SimServer:
        return _Server((self.host, self.port), _Handler)

    # -- control ----------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget requests, effects, tokens and faults, restore the seed dossiers, wake hanging requests."""
        self._reset_record()
        with self._lock:
            self._tokens.clear()
            self._dossiers.clear()
            self.token_ttl_s = self._default_ttl
        self._seed_dossiers()

    def expire_tokens(self) -> int:
        """Make every issued token expired now; returns how many there were."""
        with self._lock:
            count = len(self._tokens)
            self._tokens = {tok: (tid, 0.0) for tok, (tid, _) in self._tokens.items()}
        return count

    def add_dossier(self, code: str, *, igate_id: str | None = None, status: int = 2) -> dict[str, Any]:
        """Add (or replace) a dossier; returns its JSON."""
        received = datetime(2025, 3, 12, 8, 0, tzinfo=ICT)
        dossier = {
            "id": igate_id or secrets.token_hex(12),
            "code": code,
            "nationCode": f"H16.99-{code[-11:]}",  # [A] the inter-agency code's form is not public
            "dossierStatus": {"id": status, "name": STATUS_NAMES.get(status, "")},
            "dossierTaskStatus": {"name": "Chuyên viên thụ lý"},
            "procedure": {"id": "1.003560.000.00.00.H16", "name": "Đăng ký biến động đất đai"},
            # [A] a made-up applicant, so clients show they drop personal data they do not need
            "applicant": {"data": {"fullname": "Nguyễn Văn A", "phoneNumber": "0912345678"}},
            "accepter": {"fullname": "Cán bộ một cửa"},
            "appointmentDate": _igate_date(received + timedelta(days=15)),
            "currentTask": [{"id": secrets.token_hex(12)}],
        }
        with self._lock:
            self._dossiers[code] = dossier
        return dossier

    # -- the record -------------------------------------------------------------------------------------

    def requests(self, path_prefix: str = "") -> list[dict[str, Any]]:
        """The iGate requests received (oldest first), optionally only those under ``path_prefix``."""
        with self._lock:
            return [dict(r) for r in self._requests if r["path"].startswith(path_prefix)]

    def effect_counts(self) -> dict[str, int]:
        """``clientRequestId`` → times an effect with it was applied (more than 1 is a duplicate effect)."""
        with self._lock:
            return dict(collections.Counter(e["client_request_id"] for e in self._effects))

    def dossier(self, code: str) -> dict[str, Any] | None:
        """The dossier's JSON as it stands, or None."""
        with self._lock:
            found = self._dossiers.get(code)
            return json.loads(json.dumps(found)) if found is not None else None

    # -- request handling (called from handler threads) -------------------------------------------------

    def _seed_dossiers(self) -> None:
        for n, code in enumerate(SEED_DOSSIER_CODES, start=1):
            self.add_dossier(code, igate_id=f"65f0a1b2c3d4e5f6a7b8c9{n:02d}", status=2)

    def _record(self, call: _Call) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "seq": next(self._counter),
            "at": time.time(),
            "method": call.method,
            "path": call.path,
            "query": {k: v[-1] for k, v in call.query.items()},
            "headers": {k.lower(): v for k, v in call.headers.items() if k.lower() != "authorization"},
            "auth_scheme": call.auth_scheme,
            "token_id": None,
            "token_ok": False,
            "body": call.recorded_body(),
            "client_request_id": call.client_request_id(),
            "status": None,
            "fault": None,
        }
        with self._lock:
            if call.token is not None and call.token in self._tokens:
                token_id, expires = self._tokens[call.token]
                entry["token_id"] = token_id
                entry["token_ok"] = time.monotonic() < expires
            self._requests.append(entry)
        return entry

    def _draw(self, path: str, method: str, key: str | None = None) -> tuple[Faults, FaultName | None]:
        with self._lock:
            faults = self._faults
            rate = faults.lookup_fail_rate
            if path == LOOKUP_PATH and (rate >= 1.0 or (rate > 0.0 and self._rng.random() < rate)):
                return faults, faults.lookup_fail
            if not faults.covers(path, method, key):
                return Faults(), None
            draws: tuple[tuple[FaultName, float], ...] = (
                ("error", faults.error_rate),
                ("timeout", faults.timeout),
                ("drop_connection", faults.drop_connection),
                ("malformed_body", faults.malformed_body),
                ("apply_then_drop", faults.apply_then_drop_rate),
            )
            for name, rate in draws:
                if rate >= 1.0 or (rate > 0.0 and self._rng.random() < rate):
                    return faults, name
        return faults, None

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._wake.wait(seconds)

    def _route(self, call: _Call) -> _Answer:
        allowed = []
        for method, pattern, handler, needs_token in self._routes:
            match = pattern.match(call.path)
            if match is None:
                continue
            if method != call.method:
                allowed.append(method)
                continue
            call.groups = tuple(unquote(g) for g in match.groups())
            if needs_token:
                token_error = self._check_token(call)
                if token_error is not None:
                    return token_error
            return handler(call)
        if allowed:
            return _error(405, f"method {call.method} not allowed", call.path)
        return _error(404, "No message available", call.path)

    def _check_token(self, call: _Call) -> _Answer | None:
        with self._lock:
            known = self._tokens.get(call.token or "")
        if known is not None and time.monotonic() < known[1]:
            return None
        why = "expired" if known is not None else "missing or unknown"
        answer = _Answer(401, {"error": "invalid_token", "error_description": f"token {why}"})
        answer.headers["WWW-Authenticate"] = f'Bearer realm="{self.realm}", error="invalid_token"'
        return answer

    def _token(self, call: _Call) -> _Answer:
        if call.groups[0] != self.realm:
            return _Answer(404, {"error": "Realm does not exist"})
        form = call.form()
        if form.get("grant_type") != "password":
            return _Answer(400, {"error": "unsupported_grant_type"})
        if form.get("client_id") != self.client_id:
            return _Answer(401, {"error": "invalid_client", "error_description": "Invalid client credentials"})
        user_ok = hmac.compare_digest(form.get("username", "").encode(), self.username.encode())
        password_ok = hmac.compare_digest(form.get("password", "").encode(), self._password.encode())
        if not (user_ok and password_ok):
            return _Answer(401, {"error": "invalid_grant", "error_description": "Invalid user credentials"})
        token = secrets.token_urlsafe(32)
        with self._lock:
            token_id = len(self._tokens) + 1
            self._tokens[token] = (token_id, time.monotonic() + self.token_ttl_s)
            ttl = self.token_ttl_s
        return _Answer(
            200,
            {
                "access_token": token,
                "expires_in": max(1, round(ttl)),
                "refresh_expires_in": 1800,
                "refresh_token": secrets.token_urlsafe(32),
                "token_type": "Bearer",
                "not-before-policy": 0,
                "scope": "profile email",
            },
        )

    def _search(self, call: _Call) -> _Answer:
        code = call.param("code")
        try:
            page = max(0, int(call.param("page") or 0))
            size = min(100, max(1, int(call.param("size") or 20)))
        except ValueError:
            return _error(400, "page and size must be integers", call.path)
        with self._lock:
            matches = [d for c, d in sorted(self._dossiers.items()) if not code or code in c]
        return _Answer(
            200,
            {
                "content": matches[page * size : (page + 1) * size],
                "totalElements": len(matches),
                "totalPages": (len(matches) + size - 1) // size,
                "number": page,
                "size": size,
            },
        )

    def _dossier(self, call: _Call) -> _Answer:
        key = call.groups[0]
        with self._lock:
            found = self._dossiers.get(key) or next((d for d in self._dossiers.values() if d["id"] == key), None)
        if found is None:
            return _error(404, f"dossier {key} not found", call.path)
        return _Answer(200, found)

    def _lookup(self, call: _Call) -> _Answer:
        key = call.param("clientRequestId")
        if not key:
            return _error(400, "clientRequestId is required", call.path)
        with self._lock:
            first = next((e for e in self._effects if e["client_request_id"] == key), None)
        if first is None:
            return _error(404, "no bus request with this clientRequestId", call.path, clientRequestId=key)
        return _Answer(200, {"clientRequestId": key, "type": first["type"], "result": first["result"]})

    def _note(self, call: _Call) -> _Answer:
        return self._apply(call, "note", _NoteBody)

    def _status(self, call: _Call) -> _Answer:
        return self._apply(call, "status", _StatusBody)

    def _apply(self, call: _Call, kind: Literal["note", "status"], model: type[_NoteBody | _StatusBody]) -> _Answer:
        code = call.groups[0]
        try:
            body = model.model_validate(call.json())
        except (ValidationError, ValueError) as exc:
            detail = (
                "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                    for e in exc.errors(include_url=False, include_input=False)
                )
                if isinstance(exc, ValidationError)
                else "body is not JSON"
            )
            return _error(400, detail, call.path)
        if body.dossier_code != code:
            return _error(400, f"dossierCode {body.dossier_code} differs from the path's {code}", call.path)
        if self.dossier(code) is None:
            if self.strict_dossiers:
                return _error(404, f"dossier {code} not found", call.path)
            self.add_dossier(code)
        with self._lock:
            n = len(self._effects) + 1
            if isinstance(body, _StatusBody):
                if body.status is not None:
                    self._dossiers[code]["dossierStatus"] = {
                        "id": body.status,
                        "name": STATUS_NAMES[body.status],
                    }
                result = {"updateId": f"upd-{n:06d}", "dossierCode": code, "appliedAt": _now_iso()}
            else:
                result = {"noteId": f"note-{n:06d}", "dossierCode": code, "createdAt": _now_iso()}
            self._effects.append(
                {
                    "seq": n,
                    "type": kind,
                    "client_request_id": body.client_request_id,
                    "dossier_code": code,
                    "request": body.model_dump(mode="json", by_alias=True),
                    "result": result,
                    "at": time.time(),
                }
            )
        return _Answer(200, result)

    def _control(self, call: _Call) -> _Answer:  # noqa: PLR0911 - one branch per control endpoint
        route = (call.method, call.path)
        faults = self._faults_control(call.method, call.path, call.body)
        if faults is not None:
            status, body = faults
            return _Answer(status, body) if status == 200 else _error(status, body["error"], call.path)
        if route == ("GET", "/_sim/requests"):
            return _Answer(200, {"requests": self.requests(call.param("path") or "")})
        if route == ("GET", "/_sim/effects"):
            since = call.param("since")
            if since is None:
                return _Answer(200, {"effects": self.effects(), "counts": self.effect_counts()})
            try:
                return _Answer(200, {"effects": self.effects_since(since)})
            except ValueError as exc:
                return _error(400, str(exc), call.path)
        if route == ("POST", "/_sim/reset"):
            self.reset()
            return _Answer(200, {"reset": True})
        if route == ("POST", "/_sim/tokens/expire"):
            return _Answer(200, {"expired": self.expire_tokens()})
        if route == ("POST", "/_sim/dossiers"):
            try:
                data = call.json()
                dossier = self.add_dossier(str(data["code"]), status=int(data.get("status", 2)))
            except (ValueError, KeyError, TypeError):
                return _error(400, 'give {"code": ..., "status": 1-10}', call.path)
            return _Answer(200, dossier)
        return _error(404, "unknown control endpoint", call.path)


class _Call:
    """One parsed request."""

    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        split = urlsplit(target)
        self.method = method
        self.path = split.path
        self.query = parse_qs(split.query, keep_blank_values=True)
        self.headers = headers
        self.body = body
        self.groups: tuple[str, ...] = ()
        scheme, _, credential = headers.get("Authorization", "").partition(" ")
        self.auth_scheme = scheme or None
        self.token = credential.strip() if scheme.lower() == "bearer" else None

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body else None

    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode("utf-8", errors="replace")).items()}

    def recorded_body(self) -> Any:
        """The body as the record keeps it: JSON, or a form with its secrets masked, or a short text."""
        if not self.body:
            return None
        if "x-www-form-urlencoded" in self.headers.get("Content-Type", ""):
            secret = {"password", "client_secret", "refresh_token"}
            return {k: ("***" if k in secret else v) for k, v in self.form().items()}
        try:
            return self.json()
        except ValueError:
            return {"_raw": self.body[:200].decode("utf-8", errors="replace")}

    def client_request_id(self) -> str | None:
        body = self.recorded_body()
        if isinstance(body, dict) and isinstance(body.get("clientRequestId"), str):
            return str(body["clientRequestId"])
        return self.param("clientRequestId")


class _Server(SimServer):
    error_event = "igate_sim.connection_error"
    sim: IGateSimulator


class _Handler(QuietHandler):
    server: _Server
    server_version = "iGate-simulator/0.1"

    def _handle(self) -> None:
        sim = self.server.sim
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST_BYTES:
            self.close_connection = True  # the unread body would be taken for the next request
            self._send_json(_Answer(413, {"error": "request too large"}))
            return
        call = _Call(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
        if call.path.startswith(CONTROL_PREFIX):
            self._send_json(sim._control(call))  # noqa: SLF001 - the handler is part of the simulator
            return
        entry = sim._record(call)  # noqa: SLF001
        try:
            self._answer(call, entry)
        finally:  # one line per recorded request, through the bus's logging chain when run by `simulate`
            if sim.log_requests:
                log.info(
                    "igate_sim.request",
                    method=call.method,
                    path=call.path,
                    query=call.query,
                    status=entry.get("status"),
                    fault=entry.get("fault"),
                )

    def _answer(self, call: _Call, entry: dict[str, Any]) -> None:
        sim = self.server.sim
        faults, fault = sim._draw(call.path, call.method, call.client_request_id())  # noqa: SLF001
        entry["fault"] = fault
        sim._sleep(faults.latency_s)  # noqa: SLF001
        if fault in {"error", "drop_connection", "timeout"}:
            self._refuse(call, faults, fault, entry)
            return
        answer = sim._route(call)  # noqa: SLF001
        entry["status"] = "dropped" if fault == "apply_then_drop" else answer.status
        if fault == "apply_then_drop":
            self.reset_connection()
        elif fault == "malformed_body":
            self._send_raw(200, b'{"noteId": "note-0", "dossierCode": ')
        elif faults.oversize_bytes:
            self._send_oversize(faults.oversize_bytes)
        else:
            self._send_json(answer, drip_s=faults.drip_interval_s)

    def _refuse(self, call: _Call, faults: Faults, fault: FaultName | None, entry: dict[str, Any]) -> None:
        """The faults that answer without handling the request (unless ``apply_before_hang``)."""
        if fault == "error":
            entry["status"] = faults.error_status
            if faults.error_body is None:
                self._send_json(_error(faults.error_status, "injected fault", call.path))
            else:
                self._send_raw(faults.error_status, faults.error_body.encode("utf-8"))
        elif fault == "timeout":
            if faults.apply_before_hang:
                self.server.sim._route(call)  # noqa: SLF001
            entry["status"] = "hung"  # recorded now: the client gives up long before the hang ends
            self.server.sim._sleep(faults.hang_s)  # noqa: SLF001
            self.reset_connection()
        else:
            entry["status"] = "dropped"
            self.reset_connection()

    def _send_json(self, answer: _Answer, *, drip_s: float = 0.0) -> None:
        data = json.dumps(answer.body, ensure_ascii=False).encode("utf-8")
        self._send_raw(answer.status, data, headers=answer.headers, drip_s=drip_s)

    def _send_raw(
        self, status: int, data: bytes, *, headers: dict[str, str] | None = None, drip_s: float = 0.0
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if drip_s > 0:
                self.wfile.flush()
                for i in range(len(data)):
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    if self.server.sim._wake.wait(drip_s):  # noqa: SLF001
                        break
            else:
                self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def _send_oversize(self, size: int) -> None:
        """200 with ``size`` bytes, no Content-Length, generated as it goes (the server never holds it)."""
        chunk = b" " * 65536
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Connection", "close")
            self.end_headers()
            sent = 0
            while sent < size:
                piece = chunk[: min(len(chunk), size - sent)]
                self.wfile.write(piece)
                sent += len(piece)
        except OSError:
            pass  # the client stopped reading, as it should
        self.close_connection = True


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    token_ttl_s: float = DEFAULT_TOKEN_TTL_S,
    strict_dossiers: bool = False,
) -> None:
    """Run the simulator in the foreground until interrupted (``igate-bus simulate igate``).

    It accepts the user and password the bus itself is given (``IGATE_BUS_IGATE_USERNAME`` and
    ``IGATE_BUS_IGATE_PASSWORD``, the names the shipped ``connectors.yaml`` uses) when they are set, so a
    demo needs one environment for both; otherwise :data:`DEFAULT_USERNAME` and :data:`DEFAULT_PASSWORD`.
    """
    sim = IGateSimulator(
        host,
        port,
        username=os.environ.get(USERNAME_ENV) or DEFAULT_USERNAME,
        password=os.environ.get(PASSWORD_ENV) or DEFAULT_PASSWORD,
        token_ttl_s=token_ttl_s,
        strict_dossiers=strict_dossiers,
    )
    run_in_foreground(sim, "igate_sim", lambda: {"url": sim.url, "username": sim.username, "client_id": sim.client_id})


def main(argv: list[str] | None = None) -> None:
    """``python -m simulators.igate [--host H] [--port P] [--token-ttl S] [--strict-dossiers]``."""
    parser = argparse.ArgumentParser(prog="python -m simulators.igate", description="The iGate simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--token-ttl", type=duration_arg, default=DEFAULT_TOKEN_TTL_S, help="e.g. 5m")
    parser.add_argument("--strict-dossiers", action="store_true", help="404 on notes for unknown dossiers")
    args = parser.parse_args(argv)
    configure_cli_logging()
    serve(args.host, args.port, token_ttl_s=args.token_ttl, strict_dossiers=args.strict_dossiers)


if __name__ == "__main__":
    main()
