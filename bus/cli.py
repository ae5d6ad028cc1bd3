"""The ``igate-bus`` command line: the one entry point integrators and operators use.

Where this sits: outside the message path, it starts and inspects it. ``check`` validates the config folder
(routes.yaml, connectors.yaml) exactly as ``run`` would load it, so an integrator finds every mistake, with
its file and line, before restarting the bus. Config problems never surface as tracebacks: each is one line
``FILE:LINE: route NAME: FIELD: message``, and the exit code is 2 (the usual code for bad usage or input).

Imports of the engine are lazy (inside commands) so ``igate-bus --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

#: exit code for configuration and usage problems (click uses 2 for usage errors too)
EXIT_CONFIG = 2


@click.group(name="igate-bus", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="igate-bus", prog_name="igate-bus")
def main() -> None:
    """Integration bus between the province's one-stop shop (iGate) and the systems it serves."""


@main.command()
@click.option(
    "--config",
    "config_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder with routes.yaml and connectors.yaml (default: IGATE_BUS_CONFIG_DIR or the shipped config).",
)
def check(config_dir: Path | None) -> None:
    """Validate routes.yaml and connectors.yaml; print each problem as FILE:LINE, exit 2 if there are any."""
    from config.settings import Settings, load_settings
    from routes.model import cannot_read, check_config
    from schemas.errors import ConfigError

    try:  # the environment is checked too, even with --config: `run` would refuse it the same way
        settings = load_settings(Settings)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            click.echo(f"igate-bus: {line}", err=True)
        sys.exit(EXIT_CONFIG)
    config_dir = config_dir or settings.config_dir
    try:
        code, lines = check_config(config_dir)
    except OSError as exc:  # check_config reports unreadable files itself; this guards anything it missed
        code, lines = EXIT_CONFIG, [cannot_read(exc, config_dir)]
    for line in lines:
        click.echo(line)
    sys.exit(code)


# -- further commands ------------------------------------------------------------------------------------
# run, publish, map, dlq, topology, simulate and demo are registered here, after `check`, by the engineer who
# owns them: their code lives in bus/cli_ops.py, and each is added to the group with `main.add_command`.
# Every command must turn expected failures into one line on stderr and an exit code, never a traceback.
# -------------------------------------------------------------------------------------------------------
def _register() -> None:
    from bus.cli_dlq import dlq
    from bus.cli_list import list_
    from bus.cli_ops import COMMANDS
    from bus.cli_report import COMMANDS as REPORT_COMMANDS
    from bus.cli_serve import COMMANDS as SERVE_COMMANDS
    from bus.cli_status import COMMANDS as STATUS_COMMANDS
    from bus.cli_vnpost import COMMANDS as VNPOST_COMMANDS

    for command in [*COMMANDS, dlq, list_, *STATUS_COMMANDS, *SERVE_COMMANDS, *REPORT_COMMANDS, *VNPOST_COMMANDS]:
        main.add_command(command)


_register()

if __name__ == "__main__":
    main()
