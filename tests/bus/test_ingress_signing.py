# mypy: allow-untyped-defs, allow-incomplete-defs
"""The signing recipe (bus/signing.py), the replay cache and the settings of the ingress, by direct call."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from bus.cli_serve import sign as sign_command
from bus.ingress import IngressSettings, ReplayCache, Verdict, read_secrets
from bus.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    sign,
    signed_headers,
    verify,
)
from schemas.errors import ConfigError

SECRET = "test-hmac-secret-6f1c0a9e2b7d4c3a8e5f1b0d9c7a6e4f"
OTHER = "another-secret-that-is-long-enough-0123456789"
NOW = 1_764_200_000
BODY = b'{"a":1}'
#: computed independently: printf '1764200000.{"a":1}' | openssl dgst -sha256 -hmac "$SECRET"
OPENSSL_VECTOR = "sha256=4f18f35fbdd0d4d19d9001db073e52cbecfbed6745d652896152e9882dc6b5b1"


class TestSign:
    def test_matches_openssl(self):
        """The recipe is HMAC-SHA256 over "<timestamp>." + body: the same digest openssl computes."""
        assert sign(SECRET, NOW, BODY) == OPENSSL_VECTOR

    def test_headers_carry_timestamp_and_signature(self):
        """signed_headers gives both headers, the timestamp as whole seconds."""
        headers = signed_headers(SECRET, BODY, now=NOW + 0.9)
        assert headers == {TIMESTAMP_HEADER: str(NOW), SIGNATURE_HEADER: OPENSSL_VECTOR}

    def test_verify_accepts_within_window_and_with_previous_secret(self):
        """A correct signature verifies, also under the second of two active secrets (rotation)."""
        ok = verify([SECRET], timestamp=str(NOW), signature=OPENSSL_VECTOR, body=BODY, now=NOW + 300)
        assert ok.timestamp == NOW
        assert ok.signature == OPENSSL_VECTOR
        rotated = verify([OTHER, SECRET], timestamp=str(NOW), signature=OPENSSL_VECTOR, body=BODY, now=NOW)
        assert rotated.timestamp == NOW

    def test_uppercase_hex_is_the_same_signature(self):
        """Hex digits compare case-insensitively; the verified signature is lower-cased (the replay key)."""
        upper = "sha256=" + OPENSSL_VECTOR.removeprefix("sha256=").upper()
        assert verify([SECRET], timestamp=str(NOW), signature=upper, body=BODY, now=NOW).signature == OPENSSL_VECTOR

    @pytest.mark.parametrize(
        ("timestamp", "signature", "body", "now", "code"),
        [
            (None, OPENSSL_VECTOR, BODY, NOW, "missing_timestamp"),
            ("", OPENSSL_VECTOR, BODY, NOW, "missing_timestamp"),
            ("1764200000.5", OPENSSL_VECTOR, BODY, NOW, "invalid_timestamp"),
            ("-1", OPENSSL_VECTOR, BODY, NOW, "invalid_timestamp"),
            ("1" * 13, OPENSSL_VECTOR, BODY, NOW, "invalid_timestamp"),
            (str(NOW), None, BODY, NOW, "missing_signature"),
            (str(NOW), "sha1=" + "0" * 40, BODY, NOW, "malformed_signature"),
            (str(NOW), "sha256=" + "g" * 64, BODY, NOW, "malformed_signature"),
            (str(NOW), OPENSSL_VECTOR.removeprefix("sha256="), BODY, NOW, "malformed_signature"),
            (str(NOW), OPENSSL_VECTOR, BODY, NOW + 301, "stale_timestamp"),
            (str(NOW), OPENSSL_VECTOR, BODY, NOW - 301, "future_timestamp"),
            (str(NOW), OPENSSL_VECTOR, b'{"a":2}', NOW, "bad_signature"),
            (str(NOW + 1), OPENSSL_VECTOR, BODY, NOW, "bad_signature"),
            (str(NOW), sign(OTHER, NOW, BODY), BODY, NOW, "bad_signature"),
        ],
        ids=[
            "no-timestamp",
            "blank-timestamp",
            "fractional-timestamp",
            "negative-timestamp",
            "13-digit-timestamp",
            "no-signature",
            "other-scheme",
            "not-hex",
            "no-scheme",
            "301s-old",
            "301s-ahead",
            "body-changed-one-byte",
            "timestamp-changed",
            "forged-with-other-secret",
        ],
    )
    def test_each_failure_has_its_code(self, timestamp, signature, body, now, code):
        """Every way a signature can fail is refused with its own code."""
        with pytest.raises(SignatureError) as caught:
            verify([SECRET], timestamp=timestamp, signature=signature, body=body, now=now)
        assert caught.value.code == code
        assert caught.value.detail


class TestSignCommand:
    def test_prints_headers_that_verify(self, tmp_path, monkeypatch):
        """`igate-bus sign FILE` prints headers the ingress accepts for that file's bytes."""
        monkeypatch.setenv("IGATE_BUS_INGRESS_HMAC_SECRET", SECRET)
        (tmp_path / "e.json").write_bytes(BODY)
        result = CliRunner().invoke(sign_command, [str(tmp_path / "e.json")])
        assert result.exit_code == 0, result.output
        headers = dict(line.split(": ", 1) for line in result.output.splitlines())
        now = int(headers[TIMESTAMP_HEADER])
        assert verify(
            [SECRET], timestamp=headers[TIMESTAMP_HEADER], signature=headers[SIGNATURE_HEADER], body=BODY, now=now
        )

    def test_curl_line_posts_the_file_byte_for_byte(self, tmp_path, monkeypatch):
        """--curl prints a command with both headers and --data-binary @FILE."""
        monkeypatch.setenv("IGATE_BUS_INGRESS_HMAC_SECRET", SECRET)
        (tmp_path / "e.json").write_bytes(BODY)
        result = CliRunner().invoke(sign_command, [str(tmp_path / "e.json"), "--curl", "http://h:8600/events"])
        assert result.exit_code == 0, result.output
        assert f"--data-binary @{tmp_path / 'e.json'}" in result.output
        assert "X-IGate-Signature: sha256=" in result.output
        assert "http://h:8600/events" in result.output

    def test_missing_secret_is_one_line_and_exit_2(self, tmp_path, monkeypatch):
        """No secret in the environment ▶ exit 2 naming the variable, no traceback."""
        monkeypatch.delenv("IGATE_BUS_INGRESS_HMAC_SECRET", raising=False)
        (tmp_path / "e.json").write_bytes(BODY)
        result = CliRunner().invoke(sign_command, [str(tmp_path / "e.json")])
        assert result.exit_code == 2
        assert "IGATE_BUS_INGRESS_HMAC_SECRET is not set" in result.output

    def test_python_m_bus_signing(self, tmp_path):
        """`python -m bus.signing FILE` works for integrators without the igate-bus command."""
        (tmp_path / "e.json").write_bytes(BODY)
        done = subprocess.run(
            [sys.executable, "-m", "bus.signing", str(tmp_path / "e.json")],
            env={"IGATE_BUS_INGRESS_HMAC_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        ts_line, sig_line = done.stdout.splitlines()
        ts = ts_line.split(": ")[1]
        expected = hmac.new(SECRET.encode(), ts.encode() + b"." + BODY, hashlib.sha256).hexdigest()
        assert sig_line == f"{SIGNATURE_HEADER}: sha256={expected}"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestReplayCache:
    def test_lifecycle_of_an_event_id(self):
        """NEW, then in flight, then (once accepted) REPLAY for its signature, DUPLICATE for another, CONFLICT."""
        cache = ReplayCache(ttl_s=300, max_entries=10, clock=FakeClock())
        assert cache.begin("e1", digest="d", signature="s1")[0] is Verdict.NEW
        assert cache.begin("e1", digest="d", signature="s2")[0] is Verdict.IN_FLIGHT
        cache.finish("e1", accepted=True, digest="d", signature="s1")
        assert cache.begin("e1", digest="d", signature="s1")[0] is Verdict.REPLAY
        assert cache.begin("e1", digest="d", signature="s2")[0] is Verdict.DUPLICATE
        assert cache.begin("e1", digest="d", signature="s2")[0] is Verdict.REPLAY, "a re-signed retry is remembered"
        assert cache.begin("e1", digest="other", signature="s3")[0] is Verdict.CONFLICT

    def test_a_failed_publish_is_forgotten(self):
        """An event the broker did not confirm may be sent again: NEW again."""
        cache = ReplayCache(ttl_s=300, max_entries=10, clock=FakeClock())
        cache.begin("e1", digest="d", signature="s1")
        cache.finish("e1", accepted=False, digest="d", signature="s1")
        assert cache.begin("e1", digest="d", signature="s1")[0] is Verdict.NEW

    def test_entries_expire_after_ttl(self):
        """An accepted event_id is remembered for ttl_s, then forgotten."""
        clock = FakeClock()
        cache = ReplayCache(ttl_s=300, max_entries=10, clock=clock)
        cache.begin("e1", digest="d", signature="s")
        cache.finish("e1", accepted=True, digest="d", signature="s")
        clock.now += 299
        assert cache.begin("e1", digest="d", signature="s")[0] is Verdict.REPLAY
        clock.now += 2
        assert cache.begin("e1", digest="d", signature="s")[0] is Verdict.NEW
        assert len(cache) == 0

    def test_bounded_and_early_evictions_counted(self):
        """Past max_entries the oldest goes first, and an eviction before its TTL is counted."""
        cache = ReplayCache(ttl_s=300, max_entries=3, clock=FakeClock())
        for i in range(5):
            cache.begin(f"e{i}", digest="d", signature=None)
            cache.finish(f"e{i}", accepted=True, digest="d", signature=None)
        assert len(cache) == 3
        assert cache.evicted_early == 2
        assert cache.begin("e0", digest="d", signature=None)[0] is Verdict.NEW
        assert cache.begin("e4", digest="d", signature=None)[0] is Verdict.DUPLICATE


class TestSettings:
    def test_replay_ttl_must_cover_the_window(self):
        """A replay cache shorter than the signature window is refused, naming both settings."""
        with pytest.raises(ValidationError, match=r"replay_ttl \(299s\) must be at least window \(5m\)"):
            IngressSettings(window="5m", replay_ttl="299s")

    def test_accepted_types_must_have_a_schema(self):
        """An accepted event type no schema knows is refused at start."""
        with pytest.raises(ValidationError, match=r"dossier\.teleported"):
            IngressSettings(accepted_event_types=("dossier.received", "dossier.teleported"))

    def test_secrets_come_from_the_named_variables(self):
        """The HMAC secret is required and long; callback secrets are optional but long when set."""
        cfg = IngressSettings()
        with pytest.raises(ConfigError, match=r"IGATE_BUS_INGRESS_HMAC_SECRET .* is not set"):
            read_secrets(cfg, {})
        with pytest.raises(ConfigError, match="shorter than 32"):
            read_secrets(cfg, {"IGATE_BUS_INGRESS_HMAC_SECRET": "short"})
        with pytest.raises(ConfigError, match="IGATE_BUS_VILIS_SECURITY_CODE"):
            read_secrets(cfg, {"IGATE_BUS_INGRESS_HMAC_SECRET": SECRET, "IGATE_BUS_VILIS_SECURITY_CODE": "123"})
        found = read_secrets(cfg, {"IGATE_BUS_INGRESS_HMAC_SECRET": SECRET})
        assert [s.get_secret_value() for s in found.hmac] == [SECRET]
        assert found.vilis_code is None
        assert found.esms_token is None
        assert SECRET not in repr(found), "secrets must not show in a repr"

    def test_rotation_accepts_the_previous_secret(self):
        """With hmac_previous_secret_env set, both secrets are active."""
        old_name = "IGATE_BUS_OLD_HMAC"
        cfg = IngressSettings(hmac_previous_secret_env=old_name)
        found = read_secrets(cfg, {"IGATE_BUS_INGRESS_HMAC_SECRET": SECRET, old_name: OTHER})
        assert [s.get_secret_value() for s in found.hmac] == [SECRET, OTHER]
