"""Request signing for ``POST /events``: what iGate computes, and what the HTTP ingress checks first.

Where it sits: the very first step of a message's path when iGate pushes over HTTP instead of AMQP (signed
request → **signature check** → envelope validation → confirmed publish on ``igate.events``). Nothing here
does I/O or reads the clock: the caller passes ``now``, so the same functions serve the ingress, iGate
integrators' code and the tests.

The recipe (HMAC-SHA256, as Stripe and GitHub sign their webhooks, docs/reliability.md section 1)::

    timestamp = str(int(time.time()))                 # Unix seconds, UTC
    message   = timestamp.encode() + b"." + body      # body: the exact bytes sent, not re-serialised JSON
    signature = "sha256=" + hmac.new(secret, message, hashlib.sha256).hexdigest()

and two headers on the request:

====================  ==========================================================================
``X-IGate-Timestamp``  the timestamp above (digits only)
``X-IGate-Signature``  the signature above (``sha256=`` and 64 lower-case hex digits)
====================  ==========================================================================

The ingress refuses a request whose timestamp is more than the window (300 s by default) away from its own
clock, in either direction, so a captured request cannot be replayed later; within the window the ingress's
replay cache (keyed by ``event_id`` and signature) refuses it. To *retry* an event (say, after a lost
``202``), sign it again with a fresh timestamp: the ingress then answers ``200 {"status": "duplicate"}``.

Secrets are compared with :func:`hmac.compare_digest`. Several secrets may be active at once (rotation:
the new one and the old one), and a signature made with any of them is accepted.

For integrators, the same module is a small command (also ``igate-bus sign``)::

    export IGATE_BUS_INGRESS_HMAC_SECRET=...            # the shared secret
    python -m bus.signing event.json                    # prints the two headers
    python -m bus.signing event.json --curl http://127.0.0.1:8600/events   # prints a curl command
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

#: header carrying the Unix time (seconds) the request was signed at
TIMESTAMP_HEADER: Final = "X-IGate-Timestamp"
#: header carrying ``sha256=<hex>``
SIGNATURE_HEADER: Final = "X-IGate-Signature"
#: the only scheme accepted (a prefix leaves room for another algorithm later, as GitHub's does)
SCHEME: Final = "sha256="
#: default tolerance, in seconds, between the signer's clock and ours (Stripe's default)
DEFAULT_WINDOW_S: Final = 300
#: the environment variable the CLI reads the secret from by default
DEFAULT_SECRET_ENV: Final = "IGATE_BUS_INGRESS_HMAC_SECRET"  # noqa: S105 - a variable name, not a secret
#: shortest secret accepted: 32 characters (256 bits of a random hex or base64 string is plenty)
MIN_SECRET_LENGTH: Final = 32
#: a timestamp has at most this many digits (Unix seconds stay under 12 digits for 30,000 years)
_MAX_TIMESTAMP_DIGITS: Final = 12
_HEX_LENGTH: Final = 64
_HEX_DIGITS: Final = frozenset("0123456789abcdef")


class SignatureError(Exception):
    """A request's signature headers do not authenticate it; ``code`` names the rule that failed.

    Args:
        code: a stable, machine-readable reason (``missing_signature``, ``stale_timestamp``, ...).
        detail: the precise reason, in words, safe to send back to the caller.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Verified:
    """A request whose signature checked out.

    Attributes:
        timestamp: the signed Unix time.
        signature: the ``sha256=<hex>`` header value, lower-cased (the replay cache's key).
    """

    timestamp: int
    signature: str


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def signed_message(timestamp: int | str, body: bytes) -> bytes:
    """The bytes the HMAC is computed over: ``b"<timestamp>." + body``.

    Args:
        timestamp: Unix seconds.
        body: the raw request body.

    Returns:
        The message to authenticate.
    """
    return f"{timestamp}.".encode() + body


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """The ``X-IGate-Signature`` value for a body signed at ``timestamp``.

    Args:
        secret: the shared secret.
        timestamp: Unix seconds, as sent in ``X-IGate-Timestamp``.
        body: the exact bytes of the request body.

    Returns:
        ``sha256=`` followed by 64 lower-case hex digits.
    """
    return SCHEME + hmac.new(_key(secret), signed_message(timestamp, body), hashlib.sha256).hexdigest()


def signed_headers(secret: str | bytes, body: bytes, *, now: float | None = None) -> dict[str, str]:
    """Both headers for ``body``, signed at ``now`` (the current time when None).

    Args:
        secret: the shared secret.
        body: the exact bytes of the request body.
        now: Unix time to sign at.

    Returns:
        ``{"X-IGate-Timestamp": ..., "X-IGate-Signature": ...}``.
    """
    timestamp = int(time.time() if now is None else now)
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(secret, timestamp, body)}


def parse_timestamp(value: str | None) -> int:
    """The Unix time in an ``X-IGate-Timestamp`` header.

    Args:
        value: the header value, or None when the header is absent.

    Returns:
        The timestamp.

    Raises:
        SignatureError: absent, or not 1-12 ASCII digits.
    """
    if value is None or not value.strip():
        raise SignatureError("missing_timestamp", f"the {TIMESTAMP_HEADER} header is missing")
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= _MAX_TIMESTAMP_DIGITS):
        raise SignatureError(
            "invalid_timestamp", f"{TIMESTAMP_HEADER} must be Unix time in whole seconds (digits only)"
        )
    return int(text)


def parse_signature(value: str | None) -> str:
    """The normalised ``sha256=<hex>`` of an ``X-IGate-Signature`` header.

    Args:
        value: the header value, or None when the header is absent.

    Returns:
        The signature, lower-cased.

    Raises:
        SignatureError: absent, another scheme, or not 64 hex digits.
    """
    if value is None or not value.strip():
        raise SignatureError("missing_signature", f"the {SIGNATURE_HEADER} header is missing")
    text = value.strip().lower()
    digest = text.removeprefix(SCHEME)
    if digest == text or len(digest) != _HEX_LENGTH or not set(digest) <= _HEX_DIGITS:
        raise SignatureError("malformed_signature", f"{SIGNATURE_HEADER} must be 'sha256=' followed by 64 hex digits")
    return text


def check_window(timestamp: int, *, now: float, window_s: int = DEFAULT_WINDOW_S) -> None:
    """Refuse a timestamp more than ``window_s`` seconds from ``now``.

    Args:
        timestamp: the signed Unix time.
        now: our Unix time.
        window_s: the tolerance, both ways.

    Raises:
        SignatureError: ``stale_timestamp`` (too old) or ``future_timestamp`` (too far ahead).
    """
    age = int(now) - timestamp
    if age > window_s:
        raise SignatureError(
            "stale_timestamp", f"the request was signed {age} s ago; requests older than {window_s} s are refused"
        )
    if -age > window_s:
        raise SignatureError(
            "future_timestamp",
            f"the request is signed {-age} s in the future; check the signer's clock (tolerance {window_s} s)",
        )


def verify(
    secrets: Iterable[str | bytes],
    *,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    window_s: int = DEFAULT_WINDOW_S,
) -> Verified:
    """Check a request's two signature headers against its raw body.

    The checks run in this order, and the first that fails is reported: headers present and well formed,
    timestamp within the window, then the HMAC under each secret (constant-time comparison).

    Args:
        secrets: the active secrets (one, or two during a rotation).
        timestamp: the ``X-IGate-Timestamp`` header value (None if absent).
        signature: the ``X-IGate-Signature`` header value (None if absent).
        body: the raw body as received.
        now: our Unix time.
        window_s: the timestamp tolerance.

    Returns:
        The verified timestamp and signature.

    Raises:
        SignatureError: with the code and reason of the first failed check.
    """
    ts = parse_timestamp(timestamp)
    given = parse_signature(signature)
    check_window(ts, now=now, window_s=window_s)
    # compare against every secret (no early exit) so the time taken does not tell which one matched
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(sign(secret, ts, body), given)
    if not matched:
        raise SignatureError(
            "bad_signature", "the signature does not match the body and timestamp (wrong secret or altered body)"
        )
    return Verified(timestamp=ts, signature=given)


# -- the integrators' command ----------------------------------------------------------------------------
def read_secret(env_name: str = DEFAULT_SECRET_ENV) -> str:
    """The secret held in an environment variable.

    Args:
        env_name: the variable's name.

    Returns:
        Its value.

    Raises:
        SignatureError: ``missing_secret`` when it is unset, empty or shorter than 32 characters.
    """
    value = os.environ.get(env_name, "")
    if len(value) < MIN_SECRET_LENGTH:
        state = "not set" if not value else f"shorter than {MIN_SECRET_LENGTH} characters"
        raise SignatureError("missing_secret", f"environment variable {env_name} is {state}")
    return value


def curl_command(url: str, body_file: str, headers: dict[str, str]) -> str:
    """A ``curl`` command line that posts ``body_file`` byte for byte with ``headers``.

    Args:
        url: the ingress's ``/events`` URL.
        body_file: the file holding the exact body that was signed.
        headers: the signature headers.

    Returns:
        The command, shell-quoted.
    """
    parts = ["curl", "-sS", "-X", "POST", url, "-H", "Content-Type: application/json"]
    for name, value in headers.items():
        parts += ["-H", f"{name}: {value}"]
    parts += ["--data-binary", f"@{body_file}"]
    return shlex.join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bus.signing FILE``: print the signature headers (or a curl command) for a body file.

    Args:
        argv: the arguments (``sys.argv[1:]`` when None).

    Returns:
        The exit code: 0, or 2 when the secret or the file is missing.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bus.signing", description="Sign an event file for POST /events of the igate-bus ingress."
    )
    parser.add_argument("file", help="the JSON body to sign, exactly as it will be sent")
    parser.add_argument("--secret-env", default=DEFAULT_SECRET_ENV, help="variable holding the shared secret")
    parser.add_argument("--curl", metavar="URL", help="print a curl command posting the file to URL")
    args = parser.parse_args(argv)
    try:
        secret = read_secret(args.secret_env)
        body = Path(args.file).read_bytes()
    except SignatureError as exc:
        print(f"signing: {exc.detail}", file=sys.stderr)  # noqa: T201 - a command's own output
        return 2
    except OSError as exc:
        print(f"signing: cannot read {args.file}: {exc.strerror}", file=sys.stderr)  # noqa: T201
        return 2
    headers = signed_headers(secret, body)
    if args.curl:
        print(curl_command(args.curl, args.file, headers))  # noqa: T201
    else:
        for name, value in headers.items():
            print(f"{name}: {value}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
