"""A land office (VBDLIS/ILIS, "VILIS") on a real socket: takes dossiers, plays their lives, calls the bus back.

Where it sits: the far end of the ``vilis-*`` routes (event → route → adapter → ``connectors/vilis.py`` →
**here**), and the start of the way back: as the land office works on a dossier, it calls the bus's
ingress (``POST /callbacks/vilis/{Action}/{securityCode}``, TH's route shape [F]) or, for a deployment whose
land system cannot call out, queues the change for the bus to poll. Tests run it in a thread
(:class:`VilisSimulator`); ``igate-bus simulate vilis`` runs it in the foreground.

What it answers (docs/domain.md section 6; [F] as TH's VBDLIS/ILIS clients see it, [A] the bus's assumptions):

- [F] ``POST /tiepnhan``, ``/capnhattrangthaibosunghoso``, ``/capnhattrangthaitraketquahoso``,
  ``/phanhoihososaiketqua``: JSON in, ``{data: int, status: {success, code, type, time, message}}`` out; a
  refusal is a 200 with ``success: false`` and a Vietnamese message.
- [A] HTTP Basic with the account it was built with (401 otherwise); ``MaYeuCau`` carries the bus's key and
  ``GET /tracuuyeucau?maYeuCau=KEY`` answers what was applied under it (404 naming the key when nothing).
- [A] Files: each listed ``TapTin`` is a path on the shared SFTP server with its SHA-256; when given the
  server's root (``files_root``) the land office reads every file and records whether its bytes match
  (:meth:`VilisSimulator.file_checks`), and puts its result documents there (``<dossier>/KetQua/...``), whose
  SHA-256 it sends with ``KetThucHoSo``.
- [A] ``GET /danhmuc/trangthai``: the status catalogue (the probe). ``POST /danhsachthaydoi {SoBienNhan?,
  TuMa, SoLuong}``: the changes queued for polling (of one dossier when ``SoBienNhan`` is given) after
  change number ``TuMa``, oldest first.

**A dossier's life** (:data:`LIFE`): received (the land office's receipt), moved to an officer, supplement
requested, supplement received, tax notice, finished with a result document. Each step is a call of the
ingress's land callback, made by one "land office" thread per dossier in order: the next step waits until
the bus answered the last with 2xx; a 503, a reset or a refused connection is retried (1 s apart, as a
land system's outbox would), a 4xx is recorded (:meth:`VilisSimulator.refused_calls`) and the life goes on.
``life`` chooses per dossier: ``callback``, ``poll``, ``alternate`` (by the dossier code's CRC, half each)
or ``off``.

The record: every request (:meth:`requests`) and every applied call (:meth:`effects`, keyed by
``MaYeuCau``; **not** deduplicated: a second call with the same key is applied again, as a land system
without our lookup would), the callbacks made (:meth:`callbacks`), and the file checks.

Faults (:class:`Faults`): latency, an error status at a rate (``down`` answers 503 to everything), a hang, a
dropped connection, an applied call whose answer is lost, a malformed 200, refused credentials, failing
lookups, and dossiers refused by code (``refuse_codes``); each restricted to ``only_paths``.
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import hmac
import json
import os
import queue
import threading
import time
import unicodedata
import zlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field

from simulators._server import QuietHandler, ServedSimulator, SimServer, configure_cli_logging, run_in_foreground

if TYPE_CHECKING:
    from pathlib import Path

log = structlog.get_logger(__name__)

DEFAULT_USERNAME: Final = "igate-bus"
DEFAULT_PASSWORD: Final = "simulator-only"  # noqa: S105 - the simulator's own published default
DEFAULT_PORT: Final = 8605
USERNAME_ENV: Final = "IGATE_BUS_VILIS_USERNAME"
PASSWORD_ENV: Final = "IGATE_BUS_VILIS_PASSWORD"  # noqa: S105 - a variable's name
SECURITY_CODE_ENV: Final = "IGATE_BUS_VILIS_SECURITY_CODE"
MAX_REQUEST_BYTES: Final = 4_194_304
ACTIONS: Final = {
    "/tiepnhan": "tiepnhan",
    "/capnhattrangthaibosunghoso": "capnhattrangthaibosunghoso",
    "/capnhattrangthaitraketquahoso": "capnhattrangthaitraketquahoso",
    "/phanhoihososaiketqua": "phanhoihososaiketqua",
}
LifeMode = Literal["callback", "poll", "alternate", "off"]
Rate = Annotated[float, Field(ge=0.0, le=1.0, description="Probability per request, 0 to 1.")]
#: the steps of a land dossier's life, in order: (callback action, kind it becomes on the bus)
LIFE: Final = (
    ("TiepNhanHoSoChoMotCua", "tiep_nhan"),
    ("ChuyenHoSo", "luan_chuyen"),
    ("YeuCauBoSungHoSo", "yeu_cau_bo_sung"),
    ("NhanBoSungHoSo", "nhan_bo_sung"),
    ("GuiKetQuaThue", "ket_qua_thue"),
    ("KetThucHoSo", "ket_thuc"),
)
#: the land office's texts, in Vietnamese as its officers write them (the bus must carry them intact)
TEXTS: Final = {
    "chuyen": "Chuyển hồ sơ cho chuyên viên thẩm định hiện trạng thửa đất",
    "bo_sung": "Thiếu bản sao Giấy chứng nhận quyền sử dụng đất; đề nghị công dân bổ sung trong 05 ngày",
    "thue": "Lệ phí trước bạ nhà, đất",
    "ket_thuc": "Đã cấp Giấy chứng nhận quyền sử dụng đất, quyền sở hữu nhà ở và tài sản khác gắn liền với đất",
    "tu_choi": "Hồ sơ đã tồn tại trên hệ thống đất đai, không tiếp nhận trùng",
}


class Faults(BaseModel):
    """The fault switches; a request on a faulted path draws them in the order listed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_s: float = Field(default=0.0, ge=0.0, le=600.0, description="Seconds to wait before answering.")
    down: bool = Field(default=False, description="Answer 503 to every request (the land system is down).")
    error_rate: Rate = Field(default=0.0, description="Share of requests answered with error_status instead.")
    error_status: int = Field(default=503, ge=400, le=599, description="HTTP status of an injected error.")
    timeout: Rate = Field(default=0.0, description="Share of requests that hang for hang_s, then get a reset.")
    hang_s: float = Field(default=30.0, gt=0.0, le=3600.0, description="Seconds a 'timeout' request hangs.")
    drop_connection: Rate = Field(default=0.0, description="Share of requests reset without an answer.")
    apply_then_drop_rate: Rate = Field(default=0.0, description="Share applied, then reset (the answer is lost).")
    malformed_body: Rate = Field(default=0.0, description="Share applied, then answered 200 with broken JSON.")
    refuse_credentials: bool = Field(default=False, description="Answer 401 to every call (password rotated).")
    lookup_fail_rate: Rate = Field(default=0.0, description="Fail lookups (503) at this rate, on their own.")
    refuse_codes: list[str] = Field(
        default_factory=list, description="Dossier codes (SoBienNhan) the land office refuses as duplicates."
    )
    only_paths: list[str] = Field(default_factory=list, description="Path prefixes to fault; empty = all.")
    seed: int | None = Field(default=None, description="Seeds the draws, so a run repeats exactly.")


class _Answer:
    __slots__ = ("body", "status")

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body


def _ok(message: str) -> dict[str, Any]:
    """The ``status`` block of a success [F]."""
    return {"success": True, "code": 200, "type": "success", "time": datetime.now(UTC).isoformat(), "message": message}


def _fail(message: str, code: int | str) -> dict[str, Any]:
    """The ``status`` block of a refusal [F]: ``success`` false, a code and a Vietnamese message."""
    return {"success": False, "code": code, "type": "error", "time": datetime.now(UTC).isoformat(), "message": message}


def _dotnet_now() -> str:
    """Now as the land system's .NET side writes it: UTC, no offset [F]."""
    return datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds")


class VilisSimulator(ServedSimulator[Faults]):
    """The land office in a thread: ``start()``, ``stop()``, ``url``, usable as a context manager.

    Args:
        host: interface to bind.
        port: port to bind; 0 picks a free one.
        username: the account HTTP Basic must carry.
        password: its password.
        files_root: the shared SFTP server's root on disk (the land office's side of it), or None.
        bus_url: the bus's ingress (``http://host:port``) to call back, or None.
        security_code: the security code the bus gave the land system for its callbacks.
        life: how each dossier's changes reach the bus (see the module docstring).
        step_s: seconds between two steps of a dossier's life.
        retry_s: seconds between two tries of a callback the bus did not take.
    """

    thread_name = "vilis-sim"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        files_root: Path | None = None,
        bus_url: str | None = None,
        security_code: str | None = None,
        life: LifeMode = "off",
        step_s: float = 0.0,
        retry_s: float = 1.0,
    ) -> None:
        self.username = username
        self._password = password
        self.files_root = files_root
        self.bus_url = bus_url
        self.security_code = security_code
        self.life = life
        self.step_s = step_s
        self.retry_s = retry_s
        self._init_server(host, port, Faults())
        self._records = 0
        self._changes: list[dict[str, Any]] = []
        self._callbacks: list[dict[str, Any]] = []
        self._file_checks: list[dict[str, Any]] = []
        self._lives: queue.Queue[str | None] = queue.Queue()
        self._workers: list[threading.Thread] = []
        self._http: httpx.Client | None = None

    # -- lifecycle --------------------------------------------------------------------------------------

    def _make_server(self) -> SimServer:
        return _Server((self.host, self.port), _Handler)

    def start(self, *, life_threads: int = 8) -> VilisSimulator:
        """Serve, and start the land office's threads that play the dossiers' lives."""
        super().start()
        self._http = httpx.Client(timeout=httpx.Timeout(10.0, connect=3.0), trust_env=False)
        self._workers = [
            threading.Thread(target=self._play_lives, name=f"vilis-life-{i}", daemon=True) for i in range(life_threads)
        ]
        for t in self._workers:
            t.start()
        return self

    def stop(self) -> None:
        """Stop the lives (each finishes its current call), then the server."""
        for _ in self._workers:
            self._lives.put(None)
        self._wake.set()
        for t in self._workers:
            t.join(timeout=15)
        self._workers = []
        if self._http is not None:
            self._http.close()
            self._http = None
        super().stop()

    # -- the record -------------------------------------------------------------------------------------

    def requests(self, path_prefix: str = "") -> list[dict[str, Any]]:
        """The requests received (oldest first), optionally only under ``path_prefix``."""
        with self._lock:
            return [dict(r) for r in self._requests if r["path"].startswith(path_prefix)]

    def effect_counts(self, action: str | None = None) -> dict[str, int]:
        """``MaYeuCau`` → times a call with it was applied (more than 1 is a duplicate the bus caused)."""
        with self._lock:
            return dict(collections.Counter(e["key"] for e in self._effects if action in {None, e["action"]}))

    def dossier_counts(self, action: str = "tiepnhan") -> dict[str, int]:
        """``SoBienNhan`` → times ``action`` was applied for it."""
        with self._lock:
            return dict(collections.Counter(e["dossier"] for e in self._effects if e["action"] == action))

    def callbacks(self) -> list[dict[str, Any]]:
        """Every callback try: dossier, action, HTTP status (or the connection error), time."""
        with self._lock:
            return [dict(c) for c in self._callbacks]

    def refused_calls(self) -> list[dict[str, Any]]:
        """Callbacks the bus refused with a 4xx (the life went on without them)."""
        return [c for c in self.callbacks() if isinstance(c["status"], int) and 400 <= c["status"] < 500]

    def file_checks(self) -> list[dict[str, Any]]:
        """Each listed file as the land office found it on the SFTP server: ``ok``, ``missing`` or ``mismatch``."""
        with self._lock:
            return [dict(c) for c in self._file_checks]

    def mode_of(self, dossier: str) -> Literal["callback", "poll", "off"]:
        """How the changes of ``dossier`` reach the bus."""
        if self.life == "alternate":
            return "callback" if zlib.crc32(dossier.encode()) % 2 == 0 else "poll"
        return self.life

    def lives_done(self) -> int:
        """Dossiers whose whole life reached the bus (every callback taken, or every change queued)."""
        with self._lock:
            return sum(1 for e in self._effects if e["action"] == "tiepnhan" and e.get("life_done"))

    # -- the land office's work -------------------------------------------------------------------------

    def start_life(self, dossier: str) -> None:
        """Play ``dossier``'s life from now on (also for a dossier the bus never sent: a test's stray call)."""
        if self.mode_of(dossier) != "off":
            self._lives.put(dossier)

    def _play_lives(self) -> None:
        while True:
            dossier = self._lives.get()
            if dossier is None:
                return
            try:
                self._play(dossier)
            except Exception:  # a test's simulator must not die silently mid-run
                log.exception("vilis_sim.life_failed", dossier=dossier)

    def _play(self, dossier: str) -> None:
        mode = self.mode_of(dossier)
        for action, _kind in LIFE:
            if self._wake.wait(self.step_s) if self.step_s > 0 else self._wake.is_set():
                return
            body = self.step_body(dossier, action)
            if mode == "poll":
                with self._lock:
                    self._changes.append({"Ma": len(self._changes) + 1, "ThaoTac": action, "NoiDung": body})
            elif not self.call_back(dossier, action, body):
                return
        with self._lock:
            for e in self._effects:
                if e["action"] == "tiepnhan" and e["dossier"] == dossier:
                    e["life_done"] = True

    def call_back(self, dossier: str, action: str, body: dict[str, Any]) -> bool:
        """Post one change to the bus until it is taken (2xx) or refused (4xx); False when stopped."""
        url = f"{self.bus_url}/callbacks/vilis/{quote(action)}/{quote(self.security_code or '', safe='')}"
        data = json.dumps(body, ensure_ascii=False).encode()
        while not self._wake.is_set():
            status: int | str
            try:
                reply = self._client().post(url, content=data, headers={"Content-Type": "application/json"})
                status = reply.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            with self._lock:
                self._callbacks.append({"dossier": dossier, "action": action, "status": status, "at": time.time()})
            if isinstance(status, int) and status < 500 and status not in {408, 409, 429}:
                return True
            self._wake.wait(self.retry_s)
        return False

    def _client(self) -> httpx.Client:
        if self._http is None:
            raise httpx.HTTPError("the simulator is stopped")
        return self._http

    def step_body(self, dossier: str, action: str) -> dict[str, Any]:
        """The body of one step of ``dossier``'s life (times now, in the land system's .NET form)."""
        now = _dotnet_now()
        bodies: dict[str, dict[str, Any]] = {
            "TiepNhanHoSoChoMotCua": {"NguoiTiepNhan": "vpdk.buonmathuot", "NgayTiepNhan": now, "NgayHenTra": now},
            "ChuyenHoSo": {
                "MaCanBoChuyen": "cb.motcua",
                "MaCanBoNhan": "cb.thamdinh",
                "NoiDungXuLy": TEXTS["chuyen"],
                "NgayChuyen": now,
                "HanXuLy": 3.0,
            },
            # [A] decomposed (NFD), as some Windows clients of land systems send it: the bus must carry it as NFC
            "YeuCauBoSungHoSo": {
                "NgayChoBoSung": now,
                "MaCanBoXuLy": "cb.thamdinh",
                "GhiChu": unicodedata.normalize("NFD", TEXTS["bo_sung"]),
            },
            "NhanBoSungHoSo": {"NgayNhanBoSung": now, "NgayHenTraMoi": now},
            "GuiKetQuaThue": {
                "NguoiXuLy": "chicucthue.bmt",
                "NgayCoKetQuaThue": now,
                "DanhSachThongBaoThue": [
                    {"HoTenChu": "Nguyễn Thị Hương", "LoaiThue": TEXTS["thue"], "SoThongBaoThue": f"TB-{dossier[-9:]}"}
                ],
            },
            "KetThucHoSo": {
                "NgayKetThuc": now,
                "MaCanBoXuLy": "cb.thamdinh",
                "TrangThaiKetThuc": 0,
                "GhiChu": TEXTS["ket_thuc"],
                "DanhSachGiayToKetQua": self._result_docs(dossier),
            },
        }
        return {"SoBienNhan": dossier, **bodies[action]}

    def _result_docs(self, dossier: str) -> list[dict[str, Any]]:
        """The result document, written on the SFTP server when the simulator has its root."""
        data = f"GCN {dossier}: Giấy chứng nhận quyền sử dụng đất (bản quét)\n".encode() * 64
        path = f"{dossier}/KetQua/GCN-{dossier}.pdf"
        if self.files_root is not None:
            target = self.files_root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return [
            {
                "TenGiayTo": "Giấy chứng nhận quyền sử dụng đất",
                "KieuFile": "pdf",
                "LinkFile": path,
                "SoBanChinh": 1,
                "SoBanSao": 0,
                "Sha256": hashlib.sha256(data).hexdigest(),
            }
        ]

    def _check_files(self, dossier: str, body: dict[str, Any]) -> None:
        if self.files_root is None:
            return
        docs = body.get("DanhSachGiayToDinhKem") or body.get("DanhSachGiayToBoSung") or []
        for doc in docs:
            file = doc.get("TapTin") if isinstance(doc, dict) else None
            if not isinstance(file, dict) or not isinstance(file.get("DuongDan"), str):
                continue
            path = self.files_root / file["DuongDan"]
            if not path.resolve().is_relative_to(self.files_root.resolve()) or not path.is_file():
                verdict, digest = "missing", None
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                verdict = "ok" if digest == file.get("Sha256") else "mismatch"
            with self._lock:
                self._file_checks.append(
                    {"dossier": dossier, "path": file["DuongDan"], "check": verdict, "sha256": digest}
                )

    # -- requests (called from handler threads) ---------------------------------------------------------

    def _authorised(self, header: str) -> bool:
        expected = base64.b64encode(f"{self.username}:{self._password}".encode()).decode()
        return not self._faults.refuse_credentials and hmac.compare_digest(
            header.encode(), f"Basic {expected}".encode()
        )

    def _draw(self, path: str) -> str | None:
        with self._lock:
            f = self._faults
            if path == "/tracuuyeucau" and f.lookup_fail_rate > 0 and self._rng.random() < f.lookup_fail_rate:
                return "error"
            if f.only_paths and not any(path.startswith(p) for p in f.only_paths):
                return None
            if f.down:
                return "error"
            for name, rate in (
                ("error", f.error_rate),
                ("timeout", f.timeout),
                ("drop_connection", f.drop_connection),
                ("apply_then_drop", f.apply_then_drop_rate),
                ("malformed_body", f.malformed_body),
            ):
                if rate >= 1.0 or (rate > 0.0 and self._rng.random() < rate):
                    return name
        return None

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> _Answer:  # noqa: PLR0911 - one branch per endpoint
        if method == "GET" and path == "/danhmuc/trangthai":
            return _Answer(200, {"data": [{"Ma": 1, "Ten": "Đang xử lý"}, {"Ma": 2, "Ten": "Đã xử lý xong"}]})
        if method == "GET" and path == "/tracuuyeucau":
            return self._lookup((query.get("maYeuCau") or [""])[-1])
        if method == "POST" and path == "/danhsachthaydoi":
            return self._poll(body)
        action = ACTIONS.get(path)
        if action is None or method != "POST":
            return _Answer(404, {"status": _fail("Không tìm thấy", 404)})
        try:
            data = json.loads(body.decode("utf-8"))
        except ValueError:
            return _Answer(400, {"status": _fail("Dữ liệu không hợp lệ", 400)})
        dossier, key = (data.get("SoBienNhan"), data.get("MaYeuCau")) if isinstance(data, dict) else (None, None)
        if not isinstance(dossier, str) or not dossier or not isinstance(key, str) or not key:
            return _Answer(400, {"status": _fail("Thiếu SoBienNhan hoặc MaYeuCau", 400)})
        if action == "tiepnhan" and dossier in self._faults.refuse_codes:
            return _Answer(200, {"data": 0, "status": _fail(TEXTS["tu_choi"], "TRUNG_HO_SO")})
        self._check_files(dossier, data)
        with self._lock:
            self._records += 1
            record = self._records
            self._effects.append({"action": action, "key": key, "dossier": dossier, "record": record, "body": data})
        if action == "tiepnhan":
            self.start_life(dossier)
        return _Answer(200, {"data": record, "status": _ok("Tiếp nhận thành công")})

    def _lookup(self, key: str) -> _Answer:
        with self._lock:
            found = next((e for e in self._effects if e["key"] == key), None)
        if found is None:
            return _Answer(404, {"MaYeuCau": key, "status": _fail("Không tìm thấy yêu cầu", 404)})
        return _Answer(
            200, {"MaYeuCau": key, "ThaoTac": found["action"], "SoBienNhan": found["dossier"], "data": found["record"]}
        )

    def _poll(self, body: bytes) -> _Answer:
        try:
            data = json.loads(body.decode("utf-8") or "{}")
            after, size = int(data.get("TuMa", 0)), min(500, max(1, int(data.get("SoLuong", 100))))
            dossier = data.get("SoBienNhan")
        except (ValueError, TypeError, AttributeError):
            return _Answer(400, {"status": _fail("TuMa và SoLuong phải là số", 400)})
        with self._lock:
            page = [c for c in self._changes if c["Ma"] > after and dossier in {None, c["NoiDung"]["SoBienNhan"]}][
                :size
            ]
        return _Answer(200, {"data": page, "status": _ok("Thành công")})


class _Server(SimServer):
    error_event = "vilis_sim.connection_error"
    sim: VilisSimulator


class _Handler(QuietHandler):
    server: _Server
    server_version = "VILIS-simulator/0.1"

    def _handle(self) -> None:
        sim = self.server.sim
        body = self.read_body(MAX_REQUEST_BYTES)
        if body is None:
            self.send_json(413, {"status": _fail("Dữ liệu quá lớn", 413)})
            return
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        if path.startswith("/_sim/"):
            control = sim._faults_control(self.command, path, body)  # noqa: SLF001 - part of the simulator
            self.send_json(*(control or (404, {"error": "unknown control endpoint"})))
            return
        entry: dict[str, Any] = {"method": self.command, "path": path, "at": time.time(), "status": None}
        with sim._lock:  # noqa: SLF001
            sim._requests.append(entry)  # noqa: SLF001
        fault = sim._draw(path)  # noqa: SLF001
        entry["fault"] = fault
        sim._wake.wait(sim.faults.latency_s) if sim.faults.latency_s else None  # noqa: SLF001
        if fault == "error":
            entry["status"] = sim.faults.error_status
            self.send_json(sim.faults.error_status, {"status": _fail("Hệ thống đang bảo trì", 503)})
            return
        if fault in {"timeout", "drop_connection"}:
            if fault == "timeout":
                sim._wake.wait(sim.faults.hang_s)  # noqa: SLF001
            entry["status"] = "dropped"
            self.reset_connection()
            return
        if not sim._authorised(self.headers.get("Authorization", "")):  # noqa: SLF001
            entry["status"] = 401
            self.send_json(401, {"status": _fail("Sai tài khoản hoặc mật khẩu", 401)})
            return
        answer = sim._route(self.command, path, query, body)  # noqa: SLF001
        entry["status"] = "dropped" if fault == "apply_then_drop" else answer.status
        if fault == "apply_then_drop":
            self.reset_connection()
        elif fault == "malformed_body":
            self.send_raw_json(200, b'{"data": 1, "status": ')
        else:
            self.send_json(answer.status, answer.body)


def serve(
    host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, bus_url: str | None = None, life: LifeMode = "off"
) -> None:
    """Run the land office in the foreground until interrupted (``igate-bus simulate vilis``).

    It accepts the account the bus is given (``IGATE_BUS_VILIS_USERNAME``/``PASSWORD``) when set, and calls
    the bus back with ``IGATE_BUS_VILIS_SECURITY_CODE``, so one environment serves both sides.
    """
    sim = VilisSimulator(
        host,
        port,
        username=os.environ.get(USERNAME_ENV) or DEFAULT_USERNAME,
        password=os.environ.get(PASSWORD_ENV) or DEFAULT_PASSWORD,
        bus_url=bus_url,
        security_code=os.environ.get(SECURITY_CODE_ENV),
        life=life if bus_url else "off",
        step_s=1.0,
    )
    run_in_foreground(
        sim, "vilis_sim", lambda: {"url": sim.url, "username": sim.username, "bus_url": bus_url, "life": sim.life}
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m simulators.vilis [--host H] [--port P] [--bus-url URL] [--life MODE]``."""
    parser = argparse.ArgumentParser(prog="python -m simulators.vilis", description="The land system simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--bus-url", default=None, help="the bus's ingress, e.g. http://127.0.0.1:8600")
    parser.add_argument("--life", default="callback", choices=["callback", "poll", "alternate", "off"])
    args = parser.parse_args(argv)
    configure_cli_logging()
    serve(args.host, args.port, bus_url=args.bus_url, life=args.life)


if __name__ == "__main__":
    main()
