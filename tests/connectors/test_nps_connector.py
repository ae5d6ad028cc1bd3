"""The national portal connector against the real SOAP simulator on a real socket.

Every assertion about what was sent reads the simulator's record (what it RECEIVED), its effects, its
request-id log or a dossier's state.
"""

from __future__ import annotations

import contextlib
import importlib
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from concurrently import run_concurrently
from structlog.testing import capture_logs
from wallclock import assert_within

from config.model import ConnectorSpec
from connectors._soap import WSDL_DIR, SoapTransport, scrub_fault
from connectors.kit.guard import WATCHDOG
from connectors.nps import NAMESPACE, NpsConnector
from schemas.errors import (
    AmbiguousOutcome,
    BreakerOpen,
    ConfigError,
    CredentialsRefused,
    MappingError,
    TargetRejected,
    TargetTimeout,
    TargetUnavailable,
    TransientError,
)
from schemas.nps import (
    CapNhatTienDoHoSoMCRequest,
    DongBoDanhGiaRequest,
    DongBoHoSoMCRequest,
    HoSoMC,
    NpsReply,
    SyncResult,
    TienDoHoSo,
    TraCuuHoSoReply,
    TraCuuHoSoRequest,
)
from schemas.results import DvcqgSyncResult
from simulators.nps import DEFAULT_MADONVI, DEFAULT_PASSWORD, DEFAULT_USERNAME, NpsSimulator

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

USER_ENV = "IGATE_BUS_TEST_NPS_USERNAME"
PASSWORD_ENV = "IGATE_BUS_TEST_NPS_PASSWORD"
CODE = "000.00.16.H16-250312-0001"
CCCD = "066090001234"
PHONE = "0912345678"


@pytest.fixture(scope="module")
def sim_server() -> Iterator[NpsSimulator]:
    """One simulator for the module; each test resets it."""
    with NpsSimulator() as sim:
        yield sim


@pytest.fixture
def sim(sim_server: NpsSimulator) -> Iterator[NpsSimulator]:
    """The shared simulator with no faults, records, sessions or dossiers."""
    sim_server.reset()
    yield sim_server
    sim_server.reset()


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator's user and password in the environment variables the spec names."""
    monkeypatch.setenv(USER_ENV, DEFAULT_USERNAME)
    monkeypatch.setenv(PASSWORD_ENV, DEFAULT_PASSWORD)


def make_spec(endpoint: str, **overrides: Any) -> ConnectorSpec:
    """A connector spec for the simulator with short timeouts; ``overrides`` replace top-level fields."""
    data: dict[str, Any] = {
        "type": "nps",
        "endpoint": endpoint,
        "timeout": {"connect": "1s", "read": "1s", "total": "2s"},
        "max_reply_bytes": 1_048_576,
        "credentials": {"username": USER_ENV, "password": PASSWORD_ENV},
        "options": {"madonvi": DEFAULT_MADONVI},
        **overrides,
    }
    return ConnectorSpec.model_validate(data)


@pytest.fixture
def make_connector(sim: NpsSimulator, credentials: None) -> Iterator[Any]:
    """Build connectors against the simulator; all are closed afterwards."""
    built: list[NpsConnector] = []

    def build(**overrides: Any) -> NpsConnector:
        connector = NpsConnector("nps", make_spec(overrides.pop("endpoint", sim.endpoint), **overrides))
        built.append(connector)
        return connector

    yield build
    for connector in built:
        connector.close()


@pytest.fixture
def nps(make_connector: Any) -> NpsConnector:
    """A connector with the default test spec."""
    connector: NpsConnector = make_connector()
    return connector


def record(**changes: Any) -> HoSoMC:
    """A valid dossier record (received, status 2), with ``changes`` applied."""
    data: dict[str, Any] = {
        "MaHoSo": CODE,
        "MaTTHC": "1.003560.000.00.00.H16",
        "TenTTHC": "Đăng ký biến động quyền sử dụng đất",
        "MaLinhVuc": "DDAI",
        "TenLinhVuc": "Đất đai",
        "KenhThucHien": 2,
        "DonViXuLy": DEFAULT_MADONVI,
        "ChuHoSo": "Nguyễn Văn A",
        "LoaiDoiTuong": 1,
        "SoGiayToChuHoSo": CCCD,
        "DinhDanhCHS": [{"LoaiDinhDanh": 1, "SoDinhDanh": CCCD}],
        "SoDienThoai": PHONE,
        "Email": "nva@example.com",
        "TrichYeuHoSo": "Chuyển nhượng quyền sử dụng đất",
        "TrangThaiHoSo": 2,
        "NgayNopHoSo": "20250312080512",
        "NgayTiepNhan": "20250312093000",
        "NgayHenTra": "20250326170000",
        "DanhSachLePhi": [{"TenPhiLePhi": "Phí thẩm định", "Gia": 500_000, "LoaiPhiLePhi": "1"}],
        "DSKetNoiCSDL": [{"MaCSDL": "7"}],
        "NgayCapNhat": "20250312093000",
    }
    data.update(changes)
    return HoSoMC.model_validate(data)


def step(at: str, status: int = 4, **changes: Any) -> TienDoHoSo:
    """A processing step at ``at`` (yyyyMMddHHmmss)."""
    data: dict[str, Any] = {
        "MaHoSo": CODE,
        "NguoiXuLy": "Trần Thị B",
        "ChucDanh": "Chuyên viên",
        "ThoiDiemXuLy": at,
        "PhongBanXuLy": "Văn phòng đăng ký đất đai",
        "NoiDungXuLy": "Thẩm định hồ sơ",
        "TrangThai": status,
    }
    data.update(changes)
    return TienDoHoSo.model_validate(data)


def sync(nps: NpsConnector, key: str, *, updating: bool = False, **changes: Any) -> SyncResult:
    """Send one record through ``dong_bo_ho_so``."""
    return nps.dong_bo_ho_so(DongBoHoSoMCRequest(isUpdating=updating, data=[record(**changes)]), key)


def free_port() -> int:
    """A port nothing listens on (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CountingProxy:
    """A TCP proxy in front of the simulator that counts the connections clients open through it."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.accepted = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = int(self.listener.getsockname()[1])
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            self.accepted += 1
            server = socket.create_connection(self.upstream)
            self._open += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._answer, args=(server, client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _answer(self, server: socket.socket, client: socket.socket) -> None:
        """The simulator's replies to the client: passed on as they come (DripProxy holds one back)."""
        self._pump(server, client)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.listener.close()
        for sock in self._open:
            sock.close()


#: an interim reply; the client must read past it to the real one
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class DripProxy(CountingProxy):
    """A counting proxy that feeds the simulator's next reply slowly, each write well within the read timeout.

    :meth:`arm` picks the fault for the next reply that comes back from the simulator (on any connection):
    ``"head"`` writes its head (status line and headers) one byte every ``pause`` seconds, then the rest at
    once; ``"continue"`` first writes ``interims`` whole ``100 Continue`` replies ``pause`` apart, then the
    reply. Either runs to its end unless a write fails, which is the client having closed the connection.
    What it wrote, and whether the client hung up mid-fault, is recorded for the tests' guards.
    """

    def __init__(self, upstream: tuple[str, int], *, pause: float) -> None:
        self.pause = pause
        self._mode: str | None = None
        self._interims = 0
        self._guard = threading.Lock()
        #: the fault's units written before it ended: bytes of the head, or interim replies
        self.sent = 0
        #: the units the whole fault has (the head's length, or the number of interim replies)
        self.whole = 0
        #: set when a write of the fault failed: the client closed the connection mid-fault
        self.hung_up = threading.Event()
        #: set when the fault ran to its end: the client waited through all of it
        self.completed = threading.Event()
        super().__init__(upstream)

    def arm(self, mode: str, *, interims: int = 0) -> None:
        """Feed the next reply from the simulator with fault ``mode`` (``"head"`` or ``"continue"``)."""
        with self._guard:
            self._mode, self._interims = mode, interims

    def _answer(self, server: socket.socket, client: socket.socket) -> None:
        try:
            while data := server.recv(65536):
                with self._guard:
                    mode, interims, self._mode = self._mode, self._interims, None
                if mode is not None:
                    data = self._fault(mode, interims, data, server, client)
                client.sendall(data)
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _fault(self, mode: str, interims: int, data: bytes, server: socket.socket, client: socket.socket) -> bytes:
        """Write the fault's slow part; what is left of ``data`` is the caller's to pass on.

        Raises:
            OSError: a write failed (``hung_up`` is set) or the simulator closed mid-head.
        """
        if mode == "head":
            while b"\r\n\r\n" not in data:  # the simulator writes its head in one piece; be sure of it anyway
                more = server.recv(65536)
                if not more:
                    raise OSError("the simulator closed mid-head")
                data += more
        self.whole = interims if mode == "continue" else data.index(b"\r\n\r\n") + 4
        units = [CONTINUE] * interims if mode == "continue" else [data[i : i + 1] for i in range(self.whole)]
        for unit in units:
            try:
                client.sendall(unit)
            except OSError:
                self.hung_up.set()
                raise
            self.sent += 1
            if self._stop.wait(self.pause):
                raise OSError("the proxy is closing")
        self.completed.set()
        return data if mode == "continue" else data[self.whole :]


# A reply head fed slowly, each write far within the 5 s read timeout, the 1.5 s deadline armed before the
# request is written (connectors/_soap.py: wire.DeadlineCut, Pool.exchange(watch=)): the call ends at the
# deadline. Each fault outlasts the deadline plus wallclock's slack several times over (the head: ~160
# bytes at 0.2 s, ~33 s; the interim replies: 40 at 0.2 s, 8 s), so a head read under the read timeout
# alone fails the time bound.
DRIP_FAULTS = [
    pytest.param({"mode": "head"}, id="head-one-byte-every-0.2s"),
    pytest.param({"mode": "continue", "interims": 40}, id="100-continue-every-0.2s"),
]


class TestOperations:
    """The happy paths: what the portal receives and what the bus gets back."""

    def test_create_arrives_once_with_session_header_and_the_record_intact(
        self, sim: NpsSimulator, nps: NpsConnector
    ) -> None:
        """One login, then one DongBoHoSoMC with session, madonvi and our key in the header, fields as sent."""
        result = sync(nps, "key-create")

        assert [r["operation"] for r in sim.requests()] == ["XacThuc", "DongBoHoSoMC"]
        [call] = sim.requests("DongBoHoSoMC")
        assert call["valid"] is True
        assert call["soap_action"] == f"{NAMESPACE}#DongBoHoSoMC"
        assert call["content_type"] == "text/xml; charset=utf-8"
        assert call["header"] == {"madonvi": DEFAULT_MADONVI, "maYeuCau": "key-create"}
        assert call["body"]["isUpdating"] == "false"
        [sent] = call["body"]["data"]
        assert sent["ChuHoSo"] == "Nguyễn Văn A"  # personal data reaches the portal intact
        assert sent["DinhDanhCHS"] == [{"LoaiDinhDanh": "1", "SoDinhDanh": CCCD}]
        assert sent["DanhSachLePhi"] == [{"TenPhiLePhi": "Phí thẩm định", "Gia": "500000", "LoaiPhiLePhi": "1"}]
        assert sent["NgayCapNhat"] == "20250312093000"
        assert [(e["service"], e["maYeuCau"], e["what"]) for e in sim.effects()] == [
            ("DongBoHoSoMC", "key-create", "create")
        ]
        assert result == SyncResult(service="DongBoHoSoMC", error_code="0", message="Đồng bộ thành công")

    def test_login_sends_the_configured_user_and_the_session_is_reused(
        self, sim: NpsSimulator, nps: NpsConnector
    ) -> None:
        """XacThuc carries the user from the environment; three calls share one session."""
        sync(nps, "k1")
        nps.tra_cuu_ho_so(TraCuuHoSoRequest(MaHoSo=CODE))
        nps.dong_bo_danh_gia(DongBoDanhGiaRequest(MaHoSo=CODE, MucDo=1, ThoiGian="20250401080000"), "k2")

        [login] = sim.requests("XacThuc")
        assert login["body"] == {"username": DEFAULT_USERNAME, "password": "***"}  # masked in the record only
        assert len(sim.requests()) == 4

    def test_sync_result_is_a_valid_dvcqg_sync_result_payload(self, nps: NpsConnector) -> None:
        """What the route emits as ``dvcqg.sync_result`` validates as that event's payload, field for field."""
        result = sync(nps, "k-payload")

        payload = DvcqgSyncResult.model_validate(result.model_dump(mode="json"))
        assert payload.ok
        assert payload.service == "DongBoHoSoMC"

    def test_existing_record_is_sent_again_as_an_update(self, sim: NpsSimulator, nps: NpsConnector) -> None:
        """A create refused with "đã tồn tại" is resent at once with isUpdating=true under the same key."""
        sync(nps, "k-first")
        result = sync(nps, "k-again", TrangThaiHoSo=4, NgayCapNhat="20250313080000")

        calls = sim.requests("DongBoHoSoMC")
        assert [(c["body"]["isUpdating"], c["answer"]) for c in calls] == [
            ("false", "0"),
            ("false", "2"),
            ("true", "0"),
        ]
        assert calls[2]["header"]["maYeuCau"] == "k-again"
        assert [e["what"] for e in sim.effects()] == ["create", "update"]
        assert result.ok
        dossier = sim.dossier(CODE)
        assert dossier is not None
        assert dossier["TrangThaiHoSo"] == "4"

    def test_rejected_record_is_permanent_and_sent_once(self, sim: NpsSimulator, nps: NpsConnector) -> None:
        """A record the portal refuses is a TargetRejected with its code, sent once and applied nowhere."""
        with pytest.raises(TargetRejected) as caught:
            sync(nps, "k-bad", NgayTiepNhan="20250311000000")  # received before it was submitted

        assert caught.value.code == "1"
        assert "NgayTiepNhan" in str(caught.value)
        assert len(sim.requests("DongBoHoSoMC")) == 1
        assert sim.effects() == []
        assert sim.dossier(CODE) is None

    @pytest.mark.parametrize("code", ["3", "-3"])
    def test_answer_codes_th_also_takes_as_success_are_success(
        self, sim: NpsSimulator, nps: NpsConnector, code: str
    ) -> None:
        """Issue 10 item 17 (docs/domain.md section 2: TH also accepts "3"/"-3"): a SyncResult, sent once, no error."""
        sim.set_faults(mode="ok_code", ok_code=code, only_operations=["DongBoHoSoMC"])

        result = sync(nps, f"k-ok{code}")

        assert result.error_code == code
        assert DvcqgSyncResult.model_validate(result.model_dump()).ok
        assert [r["answer"] for r in sim.requests("DongBoHoSoMC")] == ["0"]  # applied, then answered with code
        assert [r["fault"] for r in sim.requests("DongBoHoSoMC")] == ["ok_code"]  # the fault did happen
        assert len(sim.effects()) == 1
        assert nps.lookup_ho_so(f"k-ok{code}") is not None

    def test_older_status_arriving_later_never_overwrites_the_newer(self, sim: NpsSimulator, nps: NpsConnector) -> None:
        """Returned (10) at T2, then processing (4) at T1 < T2, as record and as step: the portal keeps 10."""
        sync(
            nps,
            "k-done",
            TrangThaiHoSo=10,
            NgayKetThucXuLy="20250320100000",
            NgayTra="20250321090000",
            NgayCapNhat="20250321090000",
        )
        late_record = sync(nps, "k-late", updating=True, TrangThaiHoSo=4, NgayCapNhat="20250315080000")
        late_step = nps.cap_nhat_tien_do(CapNhatTienDoHoSoMCRequest(data=[step("20250315080000")]), "k-step")

        assert late_record.ok
        assert late_step.ok
        dossier = sim.dossier(CODE)
        assert dossier is not None
        assert (dossier["TrangThaiHoSo"], dossier["NgayCapNhat"]) == ("10", "20250321090000")
        assert dossier["record"]["TrangThaiHoSo"] == "10"
        assert [(h["status"], h["taken"]) for h in dossier["history"]] == [("10", True), ("4", False), ("4", False)]
        seen = nps.tra_cuu_ho_so(TraCuuHoSoRequest(MaHoSo=CODE))
        assert seen.result is not None
        assert seen.result.TrangThaiHoSo == "10"

    def test_progress_goes_in_chunks_of_ten_the_last_carrying_the_key(
        self, sim: NpsSimulator, nps: NpsConnector
    ) -> None:
        """23 steps are three calls of 10, 10 and 3; request ids key.1, key.2 and then the key itself."""
        steps = [step(f"202503121{n // 60:01d}{n % 60:02d}00") for n in range(23)]
        result = nps.cap_nhat_tien_do(CapNhatTienDoHoSoMCRequest(data=steps), "k-steps")

        calls = sim.requests("CapNhatTienDoHoSoMC")
        assert [len(c["body"]["data"]) for c in calls] == [10, 10, 3]
        assert [c["header"]["maYeuCau"] for c in calls] == ["k-steps.1", "k-steps.2", "k-steps"]
        dossier = sim.dossier(CODE)
        assert dossier is not None
        assert len(dossier["steps"]) == 23
        assert result.service == "CapNhatTienDoHoSoMC"
        assert result.ok

    def test_rating_is_sent_and_the_portal_keeps_the_newest(self, sim: NpsSimulator, nps: NpsConnector) -> None:
        """Two ratings: the later ThoiGian wins even when it arrives first."""
        nps.dong_bo_danh_gia(DongBoDanhGiaRequest(MaHoSo=CODE, MucDo=3, ThoiGian="20250402080000"), "r-new")
        nps.dong_bo_danh_gia(
            DongBoDanhGiaRequest(MaHoSo=CODE, MucDo=1, NoiDung="Rất tốt", ThoiGian="20250401080000"), "r-old"
        )

        calls = sim.requests("DongBoDanhGia")
        assert [c["body"]["MucDo"] for c in calls] == ["3", "1"]
        dossier = sim.dossier(CODE)
        assert dossier is not None
        assert dossier["rating"] == {"MaHoSo": CODE, "MucDo": "3", "ThoiGian": "20250402080000"}

    def test_lookup_of_an_unknown_dossier_is_a_reply_not_an_error(self, nps: NpsConnector) -> None:
        """TraCuuHoSo of a code the portal lacks answers error_code 4 and no result."""
        reply = nps.tra_cuu_ho_so(TraCuuHoSoRequest(MaHoSo="000.00.16.H16-991231-9999"))

        assert isinstance(reply, TraCuuHoSoReply)
        assert reply.error_code == "4"
        assert reply.found is False

    def test_operations_describe_three_effects_with_lookups_and_one_read(self, nps: NpsConnector) -> None:
        """The engine sees the class's OPERATIONS: effects with lookups, and tra_cuu_ho_so as a read."""
        ops = nps.operations()
        assert set(ops) == set(NpsConnector.OPERATIONS)
        for name, op in ops.items():
            declared = NpsConnector.OPERATIONS[name]
            assert (op.request, op.reply, op.effect) == (declared.request, declared.reply, declared.effect)
            assert (op.lookup is not None) == declared.has_lookup
        assert ops["tra_cuu_ho_so"].effect is False

    def test_operation_refuses_the_wrong_request_model(self, sim: NpsSimulator, nps: NpsConnector) -> None:
        """A route wired to the wrong adapter gets a MappingError and nothing is sent."""
        with pytest.raises(MappingError):
            nps.operations()["dong_bo_ho_so"].call(TraCuuHoSoRequest(MaHoSo=CODE), "k")
        with pytest.raises(MappingError):
            sync(nps, "key with spaces")
        assert sim.requests() == []

    def test_record_with_every_field_is_valid_at_the_portal(self, sim: NpsSimulator, nps: NpsConnector) -> None:
        """Every field and list of HoSoMC filled: zeep serialises it and the portal's XSD accepts it."""
        full = record(
            NoiNopHoSo="2",
            GhiChu="Ghi chú",
            MaDoiTuong="techid-123",
            ThongTinKhac="Khác",
            Fax="02623123456",
            HinhThuc=1,
            ThongTinTra="Số 12 Lê Duẩn",
            NgayKetThucXuLy="20250320100000",
            NgayTra="20250321090000",
            NgayTuChoi=None,
            HoSoCoThanhPhanSoHoa=True,
            TaiKhoanDuocXacThucVoiVNeID=True,
            DuocThanhToanTrucTuyen=1,
            TrangThaiHoSo=10,
            TaiLieuNop=[
                {
                    "TepDinhKemId": "f1",
                    "TenTepDinhKem": "Đơn",
                    "IsDeleted": False,
                    "MaThanhPhanHoSo": "TP1",
                    "DuongDanTaiTepTin": "https://example.gov.vn/f1",
                    "DuocSoHoa": True,
                    "DuocTaiSuDung": False,
                    "DuocLayTuKhoDMQG": False,
                    "MaKetQuaThayThe": "KQ1",
                }
            ],
            DanhSachTepDinhKemKhac=[{"TenGiayTo": "Bản sao", "SoLuong": 2, "LoaiGiayTo": "BS"}],
            DanhSachHoSoBoSung=[
                {
                    "HoSoBoSungId": "bs1",
                    "NguoiYeuCauBoSung": "CB",
                    "NoiDungBoSung": "Thiếu bản vẽ",
                    "NgayBoSung": "20250314080000",
                    "NguoiTiepNhanBoSung": "CB2",
                    "ThongTinTiepNhan": "Đã nhận",
                    "NgayTiepNhanBoSung": "20250315080000",
                    "TrangThaiBoSung": "2",
                    "DanhSachGiayToBoSung": [{"TenGiayTo": "Bản vẽ"}],
                    "DanhSachLePhiBoSung": [{"TenPhiLePhi": "Lệ phí", "Gia": 0}],
                    "NgayHenTraTruoc": "20250326170000",
                    "NgayHenTraMoi": "20250328170000",
                }
            ],
            DanhSachGiayToKetQua=[
                {
                    "TenGiayTo": "Giấy chứng nhận",
                    "MaThanhPhanHoSo": "KQ",
                    "GiayToId": "g1",
                    "DuongDanTepTinKetQua": "https://example.gov.vn/kq",
                    "MaGiayToKetQua": "GCN",
                }
            ],
            NgayCapNhat="20250321090000",
        )

        assert nps.dong_bo_ho_so(DongBoHoSoMCRequest(data=[full]), "k-full").ok

        [call] = sim.requests("DongBoHoSoMC")
        assert call["valid"] is True
        sent = call["body"]["data"][0]
        assert sent["DanhSachHoSoBoSung"][0]["DanhSachLePhiBoSung"] == [{"TenPhiLePhi": "Lệ phí", "Gia": "0"}]
        assert sent["TaiLieuNop"][0]["DuocSoHoa"] == "1"
        dossier = sim.dossier(CODE)
        assert dossier is not None
        assert dossier["record"] == full.wire()

    def test_request_zeep_cannot_serialise_is_a_mapping_error_and_not_sent(
        self, sim: NpsSimulator, nps: NpsConnector
    ) -> None:
        """A body the WSDL does not describe fails before the POST: MappingError, nothing on the wire."""
        nps.probe()  # log in first, so the only thing left to send is the bad call
        before = len(sim.requests())

        with pytest.raises(MappingError, match="does not fit the WSDL"):
            nps._service_call(
                "DongBoHoSoMC",
                {"isUpdating": False, "data": [{"KhongCo": "x"}]},
                NpsReply,
                deadline=time.monotonic() + 2,
                effect=True,
                key="k-bad-shape",
            )

        assert len(sim.requests()) == before


class TestReconcile:
    """lookup(key): did the portal apply an earlier attempt?"""

    def test_lookup_finds_an_applied_effect_by_request_id(self, sim: NpsSimulator, nps: NpsConnector) -> None:
        """After a sync, lookup answers its SyncResult with the portal's state; nothing is sent again."""
        sync(nps, "k-applied")
        found = nps.operations()["dong_bo_ho_so"].lookup
        assert found is not None

        result = found("k-applied")

        assert isinstance(result, SyncResult)
        assert result.ok
        assert "status 2" in result.message
        [lookup] = sim.requests("TraCuuHoSo")
        assert lookup["body"] == {"MaYeuCau": "k-applied"}
        assert len(sim.requests("DongBoHoSoMC")) == 1

    def test_lookup_of_an_unknown_key_is_none(self, nps: NpsConnector) -> None:
        """A key the portal never saw: nothing was applied."""
        assert nps.lookup_ho_so("k-never") is None

    def test_lookup_of_a_refused_request_is_none(self, sim: NpsSimulator, nps: NpsConnector) -> None:
        """A request the portal refused applied nothing, so the next attempt may send it again."""
        with pytest.raises(TargetRejected):
            sync(nps, "k-refused", TrangThaiHoSo=10)  # 10 without NgayTra
        assert sim.request_log("k-refused")[0]["error_code"] == "1"

        assert nps.lookup_ho_so("k-refused") is None

    def test_lookup_of_a_key_used_by_another_service_is_ambiguous(self, nps: NpsConnector) -> None:
        """A key the portal logged for a rating is no answer about a record sync."""
        nps.dong_bo_danh_gia(DongBoDanhGiaRequest(MaHoSo=CODE, MucDo=2, ThoiGian="20250401080000"), "k-shared")

        with pytest.raises(AmbiguousOutcome):
            nps.lookup_ho_so("k-shared")

    def test_progress_lookup_needs_the_last_chunk(self, sim: NpsSimulator, nps: NpsConnector) -> None:
        """Chunks 1-2 applied and the last refused: the lookup says not applied, so all are sent again."""
        steps = [step(f"2025031210{n:02d}00") for n in range(12)]
        sim.set_faults(mode="reject", only_operations=["CapNhatTienDoHoSoMC"], rate=1.0)
        with pytest.raises(TargetRejected):
            nps.cap_nhat_tien_do(CapNhatTienDoHoSoMCRequest(data=steps), "k-chunks")
        assert len(sim.requests("CapNhatTienDoHoSoMC")) == 1  # stopped at the first refusal
        sim.set_faults()

        assert nps.lookup_tien_do("k-chunks") is None
        nps.cap_nhat_tien_do(CapNhatTienDoHoSoMCRequest(data=steps), "k-chunks")
        assert nps.lookup_tien_do("k-chunks") is not None

    def test_reply_lost_after_apply_is_reconciled_by_lookup(self, sim: NpsSimulator, nps: NpsConnector) -> None:
        """The portal applies, the reply is cut: maybe_applied, and the lookup finds it without a resend."""
        sim.set_faults(mode="truncated", only_operations=["DongBoHoSoMC"])
        with pytest.raises(TargetUnavailable) as caught:
            sync(nps, "k-cut")
        assert caught.value.maybe_applied is True
        sim.set_faults()

        assert nps.lookup_ho_so("k-cut") is not None
        assert len(sim.requests("DongBoHoSoMC")) == 1
        assert len(sim.effects()) == 1


class TestSession:
    """The portal's session: fetched once, renewed when the proxy refuses it."""

    def test_expired_session_is_renewed_once_and_the_call_sent_again(
        self, sim: NpsSimulator, nps: NpsConnector
    ) -> None:
        """Client.Session fault → one new login → the call succeeds; the portal applied it once."""
        sync(nps, "k1")
        assert sim.expire_sessions() == 1

        sync(nps, "k2", updating=True)

        assert [(r["operation"], r["answer"]) for r in sim.requests()] == [
            ("XacThuc", "0"),
            ("DongBoHoSoMC", "0"),
            ("DongBoHoSoMC", "soap:Client.Session"),
            ("XacThuc", "0"),
            ("DongBoHoSoMC", "0"),
        ]
        assert [e["maYeuCau"] for e in sim.effects()] == ["k1", "k2"]

    def test_session_is_renewed_before_the_lifetime_the_portal_gave(
        self, sim: NpsSimulator, make_connector: Any
    ) -> None:
        """With expires_in 1 s, the connector logs in again at 0.9 s, before the portal would refuse it."""
        sim.session_ttl_s = 1.0
        try:
            nps = make_connector()
            sync(nps, "k1")
            time.sleep(0.95)  # renew at 1 s - min(30 s, 1 s / 10) = 0.9 s; the session itself lives 1 s
            sync(nps, "k2", updating=True)
        finally:
            sim.session_ttl_s = 3600.0
        assert [r["operation"] for r in sim.requests()] == ["XacThuc", "DongBoHoSoMC", "XacThuc", "DongBoHoSoMC"]
        assert "soap:Client.Session" not in [r["answer"] for r in sim.requests()]

    def test_wrong_password_waits_for_an_operator_and_never_hammers_the_login(
        self, sim: NpsSimulator, make_connector: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Issue 10 item 16: the portal refuses the login ▶ transient CredentialsRefused (the event waits, no
        attempt spent), no DongBoHoSoMC sent, the breaker open so the next calls do not try the login again,
        and one ERROR line however many calls fail."""
        monkeypatch.setenv(PASSWORD_ENV, "wrong-password")
        nps = make_connector()

        with capture_logs() as logs:
            with pytest.raises(CredentialsRefused) as caught:
                sync(nps, "k1")
            for key in ("k2", "k3"):
                with pytest.raises(BreakerOpen):
                    sync(nps, key)

        error = caught.value
        assert isinstance(error, TransientError)
        assert error.waits_on_connector is True
        assert error.maybe_applied is False
        assert "error_code -1" in str(error)
        assert "wrong-password" not in str(error)
        assert [r["operation"] for r in sim.requests()] == ["XacThuc"]
        assert nps.breaker_state == "open"
        assert [e["log_level"] for e in logs if e["event"] == "credentials_refused"] == ["error"]

    def test_wrong_agency_is_a_client_fault(self, sim: NpsSimulator, make_connector: Any) -> None:
        """A madonvi the portal does not accept is refused as a client fault: permanent."""
        nps = make_connector(options={"madonvi": "000.00.99.H99"})

        with pytest.raises(TargetRejected) as caught:
            sync(nps, "k1")

        assert caught.value.code == "soap:Client.MaDonVi"
        assert sim.effects() == []


class TestFailures:
    """Timeouts, faults, 5xx and the breaker, translated into the error tree."""

    def test_server_fault_is_transient_and_maybe_applied(self, sim: NpsSimulator, nps: NpsConnector) -> None:
        """A SOAP Server fault: TargetUnavailable, maybe applied (an effect), its text quoted."""
        sim.set_faults(mode="server_fault", only_operations=["DongBoHoSoMC"], fault_string="CSDL quá tải")

        with pytest.raises(TargetUnavailable) as caught:
            sync(nps, "k1")

        assert caught.value.maybe_applied is True
        assert "CSDL quá tải" in str(caught.value)
        assert sim.requests("DongBoHoSoMC")[0]["fault"] == "server_fault"

    def test_client_fault_is_permanent(self, sim: NpsSimulator, nps: NpsConnector) -> None:
        """A SOAP Client fault: TargetRejected with the fault code."""
        sim.set_faults(mode="client_fault", only_operations=["DongBoHoSoMC"])

        with pytest.raises(TargetRejected) as caught:
            sync(nps, "k1")

        assert caught.value.code == "soap:Client"

    def test_503_is_transient_and_not_applied(self, sim: NpsSimulator, nps: NpsConnector) -> None:
        """503 says the proxy did nothing: maybe_applied False."""
        sim.set_faults(mode="http_503", only_operations=["DongBoHoSoMC"])

        with pytest.raises(TargetUnavailable) as caught:
            sync(nps, "k1")

        assert caught.value.maybe_applied is False
        assert sim.effects() == []

    def test_500_without_an_envelope_is_transient(self, sim: NpsSimulator, nps: NpsConnector) -> None:
        """A plain 500 page: TargetUnavailable, maybe applied."""
        sim.set_faults(mode="http_500", only_operations=["DongBoHoSoMC"])

        with pytest.raises(TargetUnavailable) as caught:
            sync(nps, "k1")

        assert caught.value.maybe_applied is True
        assert "HTTP 500" in str(caught.value)

    def test_slow_portal_within_the_deadline_succeeds(self, sim: NpsSimulator, nps: NpsConnector) -> None:
        """Latency under the read timeout is just slow: the call succeeds."""
        sim.set_faults(latency_s=0.3, only_operations=["DongBoHoSoMC"])
        started = time.monotonic()

        assert sync(nps, "k1").ok

        assert time.monotonic() - started >= 0.3

    def test_hanging_portal_times_out_within_the_read_timeout(self, sim: NpsSimulator, nps: NpsConnector) -> None:
        """A portal that never answers: TargetTimeout after the 1 s read timeout, not the 30 s hang."""
        sim.set_faults(mode="hang", only_operations=["DongBoHoSoMC"], hang_s=30)
        started = time.monotonic()

        with pytest.raises(TargetTimeout):
            sync(nps, "k1")

        assert_within(time.monotonic() - started, 1.5, "a hanging portal (1 s read timeout, 30 s hang)")

    def test_refused_connection_is_not_applied(self, make_connector: Any) -> None:
        """Nobody listening: TargetUnavailable before sending, so maybe_applied is False."""
        nps = make_connector(endpoint=f"http://127.0.0.1:{free_port()}/lgsp/dvcqg")

        with pytest.raises(TargetUnavailable) as caught:
            sync(nps, "k1")

        assert caught.value.maybe_applied is False
        assert "refused" in str(caught.value)

    def test_breaker_opens_after_consecutive_failures_and_sends_nothing(
        self, sim: NpsSimulator, make_connector: Any
    ) -> None:
        """fail_max 2: two server faults open the breaker; the third call is BreakerOpen and never sent."""
        nps = make_connector(breaker={"fail_max": 2, "reset_timeout": "60s"})
        sim.set_faults(mode="server_fault", only_operations=["DongBoHoSoMC"])
        for key in ("k1", "k2"):
            with pytest.raises(TargetUnavailable):
                sync(nps, key)

        with pytest.raises(BreakerOpen):
            sync(nps, "k3")

        assert len(sim.requests("DongBoHoSoMC")) == 2
        assert nps.breaker_state == "open"

    def test_concurrent_calls_share_one_login(self, sim: NpsSimulator, nps: NpsConnector) -> None:
        """Eight threads at once: one XacThuc, eight records, no errors."""
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                nps.dong_bo_ho_so(DongBoHoSoMCRequest(data=[record(MaHoSo=f"000.00.16.H16-250312-{n:04d}")]), f"k-{n}")
            except BaseException as exc:
                errors.append(exc)

        run_concurrently(work, [(n,) for n in range(8)], timeout=10)

        assert errors == []
        assert len(sim.requests("XacThuc")) == 1
        assert len(sim.dossier_codes()) == 8


class TestProbe:
    """Health from a harmless TraCuuHoSo."""

    def test_probe_is_up_when_the_portal_answers(self, sim: NpsSimulator, nps: NpsConnector) -> None:
        """The probe looks up a dossier that does not exist and changes nothing."""
        health = nps.probe()

        assert health.state == "up"
        assert [r["operation"] for r in sim.requests()] == ["XacThuc", "TraCuuHoSo"]
        assert sim.effects() == []

    def test_probe_is_degraded_when_slow(self, sim: NpsSimulator, make_connector: Any) -> None:
        """Answers slower than degraded_ms: degraded."""
        nps = make_connector(options={"madonvi": DEFAULT_MADONVI, "degraded_ms": 100})
        sim.set_faults(latency_s=0.2)

        assert nps.probe().state == "degraded"

    def test_probe_is_down_when_nobody_listens(self, make_connector: Any) -> None:
        """No portal: down, with the reason; probe never raises."""
        nps = make_connector(endpoint=f"http://127.0.0.1:{free_port()}/lgsp/dvcqg")

        health = nps.probe()

        assert health.state == "down"
        assert "unavailable" in health.detail


class TestTransport:
    """The HTTP under zeep (connectors/_http_wire.py): kept-alive connections, the deadline over a slow head, TLS
    refused before sending."""

    @pytest.fixture
    def proxy(self, sim: NpsSimulator) -> Iterator[CountingProxy]:
        """A counting proxy to the simulator."""
        host, port = urlsplit(sim.endpoint).hostname, urlsplit(sim.endpoint).port
        assert host is not None
        assert port is not None
        counting = CountingProxy((host, port))
        yield counting
        counting.close()

    def test_twenty_sequential_calls_share_one_keep_alive_connection(
        self, sim: NpsSimulator, make_connector: Any, proxy: CountingProxy
    ) -> None:
        """The login and 20 DongBoHoSoMC calls, one after the other ▶ 21 requests on ONE connection."""
        path = urlsplit(sim.endpoint).path
        nps = make_connector(endpoint=f"http://127.0.0.1:{proxy.port}{path}")

        for n in range(20):
            assert sync(nps, f"k-{n}", MaHoSo=f"000.00.16.H16-250312-{n:04d}").ok

        assert len(sim.requests("DongBoHoSoMC")) == 20  # they did go through the proxy
        assert [r["operation"] for r in sim.requests()][:1] == ["XacThuc"]
        assert proxy.accepted == 1

    def test_an_error_reply_read_to_its_end_keeps_its_connection(
        self, sim: NpsSimulator, make_connector: Any, proxy: CountingProxy
    ) -> None:
        """A 503 whose short body the snippet read whole: the next call goes on the same connection."""
        path = urlsplit(sim.endpoint).path
        nps = make_connector(endpoint=f"http://127.0.0.1:{proxy.port}{path}")
        sim.set_faults(mode="http_503", only_operations=["DongBoHoSoMC"])
        with pytest.raises(TargetUnavailable, match="HTTP 503"):
            sync(nps, "k1")
        sim.set_faults()

        assert sync(nps, "k2").ok

        assert len(sim.requests("DongBoHoSoMC")) == 2
        assert proxy.accepted == 1

    def test_a_reply_cut_at_the_deadline_closes_its_connection(
        self, sim: NpsSimulator, make_connector: Any, proxy: CountingProxy
    ) -> None:
        """A dripped reply cut by the watchdog: its unread bytes must not be read as the next reply, so the
        next call opens a new connection (and succeeds)."""
        path = urlsplit(sim.endpoint).path
        nps = make_connector(
            endpoint=f"http://127.0.0.1:{proxy.port}{path}", timeout={"connect": "1s", "read": "1s", "total": "0.5s"}
        )
        assert nps.probe().state == "up"  # the login, outside the dripped call's deadline
        sim.set_faults(mode="drip", only_operations=["DongBoHoSoMC"], drip_interval_s=0.05)
        with pytest.raises(TargetTimeout, match="deadline passed mid-reply"):
            sync(nps, "k1")
        assert proxy.accepted == 1
        sim.set_faults()

        assert sync(nps, "k2").ok

        assert proxy.accepted == 2

    def test_a_late_watchdog_action_leaves_the_released_connection_alone(
        self, sim: NpsSimulator, make_connector: Any, proxy: CountingProxy, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The watchdog runs an action it took just before the disarm after the reply was released (its
        thread runs actions outside its lock) ▶ the pooled connection is not shut: the next call uses it."""
        path = urlsplit(sim.endpoint).path
        nps = make_connector(endpoint=f"http://127.0.0.1:{proxy.port}{path}")
        assert sync(nps, "k0", MaHoSo="000.00.16.H16-250312-0100").ok
        actions: list[Callable[[], None]] = []
        arm = WATCHDOG.arm

        def capture(at: float, action: Callable[[], None]) -> int:
            actions.append(action)
            return arm(at, action)

        monkeypatch.setattr(WATCHDOG, "arm", capture)
        assert sync(nps, "k1", MaHoSo="000.00.16.H16-250312-0101").ok
        assert len(actions) == 1  # k1's reply armed it, and its connection is back in the pool

        actions[0]()  # late, as the watchdog thread could run it

        assert sync(nps, "k2", MaHoSo="000.00.16.H16-250312-0102").ok
        assert proxy.accepted == 1

    @pytest.fixture
    def drip_proxy(self, sim: NpsSimulator) -> Iterator[DripProxy]:
        """A drip proxy to the simulator, one write every 0.2 s once armed."""
        host, port = urlsplit(sim.endpoint).hostname, urlsplit(sim.endpoint).port
        assert host is not None
        assert port is not None
        dripping = DripProxy((host, port), pause=0.2)
        yield dripping
        dripping.close()

    def _dripped_call(
        self, sim: NpsSimulator, make_connector: Any, proxy: DripProxy, fault: dict[str, Any]
    ) -> tuple[NpsConnector, float]:
        """A connector through ``proxy`` (read 5 s, total 1.5 s), logged in; one DongBoHoSoMC whose reply
        carries ``fault`` ▶ TargetTimeout for the deadline (not the read timeout); the connector and the call's
        wall time."""
        path = urlsplit(sim.endpoint).path
        nps: NpsConnector = make_connector(
            endpoint=f"http://127.0.0.1:{proxy.port}{path}", timeout={"connect": "1s", "read": "5s", "total": "1.5s"}
        )
        assert nps.probe().state == "up"  # the login, outside the dripped call's deadline
        proxy.arm(**fault)
        started = time.monotonic()
        with pytest.raises(TargetTimeout, match="deadline passed") as caught:
            sync(nps, "k1")
        elapsed = time.monotonic() - started
        assert caught.value.maybe_applied is True
        assert len(sim.requests("DongBoHoSoMC")) == 1  # the request did reach the portal
        return nps, elapsed

    @pytest.mark.parametrize("fault", DRIP_FAULTS)
    def test_a_reply_head_fed_under_the_read_timeout_ends_at_the_deadline(
        self, sim: NpsSimulator, make_connector: Any, drip_proxy: DripProxy, fault: dict[str, Any]
    ) -> None:
        """The reply's head dripped one byte every 0.2 s, or 100 Continue replies streamed every 0.2 s (read
        timeout 5 s) ▶ TargetTimeout at the 1.5 s deadline, the connection closed by the client mid-head.
        Guard: the proxy wrote at least 4 units of the fault before the client hung up, and never all of it."""
        _, elapsed = self._dripped_call(sim, make_connector, drip_proxy, fault)

        assert_within(elapsed, 1.5, "a reply head fed slowly under a 1.5 s deadline")
        assert drip_proxy.hung_up.wait(3), "the client never closed the dripped connection"
        assert drip_proxy.sent >= 4, f"the fault barely happened: {drip_proxy.sent} writes"
        assert drip_proxy.sent < drip_proxy.whole
        assert not drip_proxy.completed.is_set()

    @pytest.mark.parametrize("fault", DRIP_FAULTS)
    def test_after_a_head_cut_at_the_deadline_the_next_call_opens_a_fresh_connection(
        self, sim: NpsSimulator, make_connector: Any, drip_proxy: DripProxy, fault: dict[str, Any]
    ) -> None:
        """The connection cut mid-head is closed, not pooled ▶ the next call through the same connector succeeds
        on a second connection (a pooled cut one would be "connection lost after sending")."""
        nps, _ = self._dripped_call(sim, make_connector, drip_proxy, fault)
        assert drip_proxy.accepted == 1
        assert drip_proxy.sent >= 4  # guard: the fault happened

        assert sync(nps, "k2", MaHoSo="000.00.16.H16-250312-0002").ok

        assert drip_proxy.accepted == 2
        assert len(sim.requests("DongBoHoSoMC")) == 2

    def test_tls_handshake_failure_is_not_applied_and_sends_nothing(self) -> None:
        """A peer that answers the ClientHello with plain HTTP ▶ TargetUnavailable(maybe_applied=False), and
        the peer received a TLS record, never the envelope."""
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(5)
        received = bytearray()

        def serve() -> None:
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                with conn:
                    received.extend(conn.recv(65536))
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        address = f"https://127.0.0.1:{listener.getsockname()[1]}/lgsp/dvcqg"
        transport = SoapTransport("nps", make_spec(address))
        try:
            with transport.call(time.monotonic() + 2, effect=True), pytest.raises(TargetUnavailable) as caught:
                transport.post(address, b"<envelope-marker/>", {"Content-Type": "text/xml"})
            thread.join(5)
        finally:
            transport.close()
            listener.close()

        assert caught.value.maybe_applied is False
        assert "TLS handshake failed" in str(caught.value)
        assert received[:1] == b"\x16"  # a TLS handshake record: the handshake did start
        assert b"envelope-marker" not in received


class TestConfig:
    """Configuration errors are ConfigError, and the WSDL is never fetched from the network."""

    @pytest.mark.parametrize(
        ("overrides", "needle"),
        [
            ({"options": {}}, "madonvi"),
            ({"endpoint": None}, "endpoint"),
            ({"credentials": {"username": USER_ENV}}, "credentials.password"),
            ({"options": {"madonvi": DEFAULT_MADONVI, "chunk_size": 11}}, "chunk_size"),
        ],
    )
    @pytest.mark.usefixtures("credentials")
    def test_missing_settings_are_config_errors(
        self, sim: NpsSimulator, overrides: dict[str, Any], needle: str
    ) -> None:
        """Each missing or bad setting names itself."""
        spec = make_spec(overrides.pop("endpoint", sim.endpoint), **overrides)

        with pytest.raises(ConfigError) as caught:
            NpsConnector("nps", spec)

        assert needle in str(caught.value)

    def test_unset_environment_variable_is_a_config_error(
        self, sim: NpsSimulator, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The variable a credential names must be set."""
        monkeypatch.delenv(USER_ENV, raising=False)
        monkeypatch.delenv(PASSWORD_ENV, raising=False)

        with pytest.raises(ConfigError, match=USER_ENV):
            NpsConnector("nps", make_spec(sim.endpoint))

    @pytest.mark.usefixtures("credentials")
    def test_wsdl_importing_a_url_is_refused_without_a_connection(self, sim: NpsSimulator, tmp_path: Path) -> None:
        """A WSDL whose XSD import is an http URL: ConfigError, and the listener sees no connection at all."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        text = (WSDL_DIR / "nps.wsdl").read_text(encoding="utf-8")
        wsdl = tmp_path / "nps.wsdl"
        wsdl.write_text(text.replace('schemaLocation="nps.xsd"', f'schemaLocation="http://127.0.0.1:{port}/x.xsd"'))
        try:
            with pytest.raises(ConfigError, match=r"ExternalReferenceForbidden|only local files"):
                NpsConnector("nps", make_spec(sim.endpoint, options={"madonvi": DEFAULT_MADONVI, "wsdl": str(wsdl)}))
            with pytest.raises(TimeoutError):
                listener.accept()
        finally:
            listener.close()

    def test_transport_refuses_files_outside_the_schema_folders(self, sim: NpsSimulator) -> None:
        """Only the WSDL folders may be read: /etc/passwd is not a schema."""
        transport = SoapTransport("nps", make_spec(sim.endpoint))
        try:
            with pytest.raises(ConfigError, match="outside"):
                transport.load("/etc/passwd")
            assert transport.load(str(WSDL_DIR / "nps.xsd")).startswith(b"<?xml")
        finally:
            transport.close()


class TestScrub:
    """Fault text made fit for logs."""

    def test_scrub_fault_masks_ids_phones_and_keyed_values(self) -> None:
        """CCCD, phone, e-mail and <ChuHoSo> values are masked; the reason survives."""
        text = f"Sai dữ liệu: <ChuHoSo>Nguyễn Văn A</ChuHoSo> CCCD {CCCD} SĐT {PHONE} nva@example.com"

        clean = scrub_fault(text, keys={"ChuHoSo"})

        assert CCCD not in clean
        assert PHONE not in clean
        assert "nva@example.com" not in clean
        assert "Nguyễn Văn A" not in clean
        assert clean.startswith("Sai dữ liệu")


class TestWithTheAdapters:
    """The portal accepts what ``adapters/igate_to_nps.py`` makes of the shipped example events."""

    def test_every_adapter_request_for_the_examples_is_accepted(self, sim: NpsSimulator, nps: NpsConnector) -> None:
        """Each example event an igate_to_nps adapter takes is mapped, sent, schema-valid and accepted."""
        from adapters.registry import adapters as registered
        from schemas.envelope import parse_event
        from schemas.events import EVENT_PAYLOADS

        importlib.import_module("adapters.igate_to_nps")  # registers the portal adapters
        portal = {name: a for name, a in registered().items() if name.startswith("igate_to_nps.")}
        operation_for = {op.request: name for name, op in NpsConnector.OPERATIONS.items()}
        examples = sorted((Path(__file__).resolve().parents[2] / "examples" / "events").glob("*.json"))
        sent = []
        for n, path in enumerate(examples):
            event = parse_event(path.read_bytes(), payload_models=EVENT_PAYLOADS)
            for name, adapter in sorted(portal.items()):
                if event.envelope.event_type not in adapter.accepts:
                    continue
                request = adapter(event, now=datetime(2026, 11, 26, 3, 0, tzinfo=UTC))
                operation = operation_for[type(request)]
                result = nps.operations()[operation].call(request, f"k-{n}-{name.rsplit('.', 1)[1]}")
                assert isinstance(result, SyncResult), name
                assert result.ok, (name, result)
                sent.append(operation)

        assert {"dong_bo_ho_so", "cap_nhat_tien_do", "dong_bo_danh_gia"} <= set(sent)
        assert all(r["valid"] for r in sim.requests())
        assert len(sim.effects()) >= len(sent)
