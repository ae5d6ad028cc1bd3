"""iGate's REST API as the bus uses it: the token grant, dossier reads, and the bus's note and status calls.

Where it sits: the last hop of the routes that go back into iGate (event → route → adapter → **these
requests** → ``connectors/igate.py`` → iGate). Adapters build :class:`AddNoteRequest` and
:class:`UpdateDossierRequest`; the connector sends them and parses the replies below; the simulator
(``simulators/igate.py``) answers with the same models, so the two cannot drift apart.

Facts and assumptions (docs/domain.md section 1.4):

- [F] Keycloak realm ``digo``, password grant at ``/auth/realms/digo/protocol/openid-connect/token``, then
  ``Authorization: Bearer``; dossier JSON carries ``id`` (24-hex ObjectId), ``code``, ``nationCode``,
  ``dossierStatus{id,name}``, ``appointmentDate`` (``2025-09-30T17:00:00.000+0700``); search is
  ``GET /pa/dossier/search`` and answers a page with ``content[]``.
- [A] iGate publishes no call for an external system to write a note or a status on a dossier. The bus
  assumes three, to be agreed with VNPT: ``POST /pa/dossier/{code}/--bus-note``,
  ``PUT /pa/dossier/{code}/--bus-status`` (both carry ``clientRequestId``, our idempotency key) and
  ``GET /pa/dossier/--bus-request?clientRequestId=KEY``, which answers the earlier result for that key
  (200) or 404. Their bodies are camelCase like the rest of iGate's JSON.
- [A] ``dossierStatus.id`` is iGate's own numbering (0-17, unpublished); requests here carry the national
  1-10 status and iGate maps it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr
from pydantic.alias_generators import to_camel

#: an iGate ObjectId: 24 lower-case hex digits
IGATE_ID_PATTERN = r"^[0-9a-f]{24}$"
#: longest note text the bus sends; [A] iGate's own comment box holds 2,000 characters
MAX_NOTE_CHARS = 2000
#: longest value in :attr:`UpdateDossierRequest.data`
MAX_DATA_VALUE_CHARS = 500

#: what a note is for; iGate shows ``bus_ack`` notes as "đã tiếp nhận bởi hệ thống tích hợp"
NoteKind = Literal["bus_ack", "status", "info", "error"]
#: which system a status update reports on (the prefix of the result event type)
SourceSystem = Literal["dvcqg", "vilis", "vnpost", "receipt", "sms", "paygov", "bus"]
#: the two effects the bus-request lookup can find
BusRequestType = Literal["note", "status"]


class _Wire(BaseModel):
    """camelCase on the wire (iGate's JSON), snake_case in Python; frozen."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid")


class _Reply(_Wire):
    """Replies ignore fields the bus does not read, so iGate can add fields without breaking us."""

    model_config = ConfigDict(extra="ignore")


class TokenReply(BaseModel):
    """Keycloak's answer to the password grant (OAuth 2 field names, not camelCase)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    access_token: SecretStr = Field(min_length=1)
    expires_in: int = Field(gt=0, description="Seconds the access token lives.")
    token_type: str = Field(default="Bearer", examples=["Bearer"])
    refresh_expires_in: int | None = None


class AddNoteRequest(_Wire):
    """A note on a dossier's history, e.g. the bus's acknowledgement of ``dossier.received``."""

    dossier_code: str = Field(min_length=1, max_length=60, examples=["000.00.16.H16-250312-0001"])
    igate_id: str | None = Field(default=None, pattern=IGATE_ID_PATTERN)
    text: str = Field(min_length=1, max_length=MAX_NOTE_CHARS)
    kind: NoteKind = "bus_ack"


class AddNoteReply(_Reply):
    """iGate's answer to a note: its id for the note."""

    note_id: str = Field(min_length=1, max_length=100)
    dossier_code: str
    created_at: AwareDatetime


class UpdateDossierRequest(_Wire):
    """What another system reported about a dossier, written back onto it (status, note, key facts)."""

    dossier_code: str = Field(min_length=1, max_length=60)
    igate_id: str | None = Field(default=None, pattern=IGATE_ID_PATTERN)
    source_system: SourceSystem
    status: int | None = Field(default=None, ge=1, le=10, description="National 1-10 status, or no change.")
    note: str = Field(default="", max_length=MAX_NOTE_CHARS)
    data: dict[str, str | int | None] = Field(default_factory=dict, max_length=50)


class UpdateDossierReply(_Reply):
    """iGate's answer to a status update."""

    update_id: str = Field(min_length=1, max_length=100)
    dossier_code: str
    applied_at: AwareDatetime


class GetDossierRequest(_Wire):
    """Read one dossier by its code (or its 24-hex id)."""

    dossier_code: str = Field(min_length=1, max_length=60)


class DossierStatus(_Reply):
    """``dossierStatus``: iGate's status id and its Vietnamese name."""

    id: int
    name: str = ""


class TaskStatus(_Reply):
    """``dossierTaskStatus``: the state of the current processing step."""

    name: str = ""


class ProcedureRef(_Reply):
    """``procedure``: the administrative procedure the dossier follows."""

    id: str | None = None
    code: str | None = None
    name: str | None = None


class DossierReply(_Reply):
    """The part of iGate's dossier JSON the bus reads; the applicant's personal data is left out on purpose.

    Unknown fields (``applicant``, ``eForm``...) are ignored, so they never enter the bus's memory or logs.
    """

    id: str = Field(pattern=IGATE_ID_PATTERN)
    code: str
    nation_code: str | None = None
    dossier_status: DossierStatus | None = None
    dossier_task_status: TaskStatus | None = None
    procedure: ProcedureRef | None = None
    appointment_date: datetime | None = None


class DossierPage(_Reply):
    """``GET /pa/dossier/search``: a Spring page of dossiers."""

    content: list[DossierReply] = Field(default_factory=list)
    total_elements: int = 0
    number: int = 0
    size: int = 0


class BusRequestLookupReply(_Reply):
    """[A] ``GET /pa/dossier/--bus-request``: the first result iGate recorded for a ``clientRequestId``."""

    client_request_id: str
    type: BusRequestType
    result: dict[str, Any]


class BusRequestMissing(_Reply):
    """[A] The 404 of ``GET /pa/dossier/--bus-request``, which names the key.

    A 404 from a route that does not exist would read as "never applied" and cause a duplicate; a 404 that
    names the key cannot be mistaken for it.
    """

    client_request_id: str


class IGateErrorReply(_Reply):
    """iGate's error body (Spring Boot's default shape); only a scrubbed snippet of it is ever logged."""

    status: int
    error: str = ""
    message: str = ""
    path: str = ""
