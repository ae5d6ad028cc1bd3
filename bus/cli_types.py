"""Click parameter types shared by the ``igate-bus`` commands, so an option reads a value as the config does.

Where this sits: at the command line, before anything runs. A duration option (``--token-ttl 5m``) goes
through :func:`config.model.parse_duration`, the parser of routes.yaml, connectors.yaml and the
``IGATE_BUS_*`` environment, so ``5`` without a unit is refused here as it is there.
"""

from __future__ import annotations

from typing import Any

import click

from config.model import parse_duration


class DurationParam(click.ParamType[float]):
    """A duration with its unit (``500ms``, ``5s``, ``2m``, ``1h``), converted to seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        """Seconds, or click's usage error (exit 2) with the parser's own words."""
        if isinstance(value, float):  # a default, already in seconds
            return value
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


#: the one instance commands use: ``@click.option("--ttl", type=DURATION)``
DURATION = DurationParam()
