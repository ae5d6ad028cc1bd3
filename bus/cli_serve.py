"""``igate-bus serve`` (the HTTP ingress) and ``igate-bus sign`` (what iGate integrators sign requests with).

Where it sits: outside the message path, it starts its HTTP door (``bus/ingress/``): signed events from
iGate onto ``igate.events``, external systems' callbacks onto ``bus.results``. Registered in
``bus/cli.py`` through :data:`COMMANDS`. Expected failures (a missing secret, a bad setting, a port in use)
are one line on stderr and exit code 2, never a traceback.

uvicorn runs with its access log off: the land system's security code is part of its callback path and
the eSMS token part of its query, and neither may reach a log. The ingress logs each request itself, by
route template.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import click


def _fail(message: str) -> NoReturn:
    click.echo(f"igate-bus: {message}", err=True)
    sys.exit(2)


@click.command()
@click.option("--host", default=None, help="Interface to listen on (default: IGATE_BUS_INGRESS_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="TCP port (default: IGATE_BUS_INGRESS_PORT or 8600).")
@click.option(
    "--config",
    "config_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder with routes.yaml and connectors.yaml, for /health (default: IGATE_BUS_CONFIG_DIR).",
)
def serve(host: str | None, port: int | None, config_dir: Path | None) -> None:
    """Run the HTTP ingress: POST /events (signed), the callbacks, /health, /metrics, /openapi.json.

    iGate's HMAC secret is read from the variable IGATE_BUS_INGRESS_HMAC_SECRET names
    (default: IGATE_BUS_INGRESS_HMAC_SECRET itself); the land system's security code and the eSMS token
    from IGATE_BUS_VILIS_SECURITY_CODE and IGATE_BUS_ESMS_CALLBACK_TOKEN (unset: that callback is off).
    """
    import uvicorn

    from bus.ingress import IngressSettings, create_app
    from bus.logging import configure_logging
    from config.loader import ConfigInvalid
    from config.settings import Settings, load_settings
    from schemas.errors import ConfigError

    try:
        settings = load_settings(Settings, config_dir=config_dir) if config_dir else load_settings(Settings)
        overrides: dict[str, Any] = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
        ingress = load_settings(IngressSettings, **overrides)
    except ConfigError as exc:
        _fail(str(exc).replace("\n", "\nigate-bus: "))
    configure_logging(settings.log_level, settings.log_format)
    try:
        app = create_app(settings, ingress=ingress)
    except ConfigError as exc:
        _fail(str(exc))
    except ConfigInvalid as exc:
        for problem in exc.problems:
            click.echo(problem.format(), err=True)
        sys.exit(2)
    config = uvicorn.Config(
        app,
        host=ingress.host,
        port=ingress.port,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
        limit_concurrency=ingress.max_connections,
        h11_max_incomplete_event_size=16 * 1024,
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        _fail(f"could not listen on {ingress.host}:{ingress.port} (see the log above)")


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--secret-env",
    default="IGATE_BUS_INGRESS_HMAC_SECRET",
    show_default=True,
    help="Environment variable holding the shared secret.",
)
@click.option("--curl", "curl_url", default=None, metavar="URL", help="Print a curl command posting FILE to URL.")
def sign(file: Path, secret_env: str, curl_url: str | None) -> None:
    """Print the X-IGate-Timestamp and X-IGate-Signature headers for FILE, signed now.

    The signature is HMAC-SHA256 over "<timestamp>." followed by the exact bytes of FILE, as
    "sha256=<hex>"; send FILE byte for byte (curl --data-binary @FILE) within 300 s.
    """
    from bus.signing import SignatureError, curl_command, read_secret, signed_headers

    try:
        secret = read_secret(secret_env)
    except SignatureError as exc:
        _fail(exc.detail)
    headers = signed_headers(secret, file.read_bytes())
    if curl_url:
        click.echo(curl_command(curl_url, str(file), headers))
        return
    for name, value in headers.items():
        click.echo(f"{name}: {value}")


#: the commands this module adds to ``igate-bus`` (bus/cli.py registers them)
COMMANDS = [serve, sign]
