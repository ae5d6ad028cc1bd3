"""``igate-bus check`` on a route's ``order`` block: each mistake named with file, line, route and field.

Same harness as test_config_check.py (the installed CLI on a folder in ``tmp_path``), on the diagnostic
``bus-ping`` route with an ``order`` block added in block style, so every key has its own line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from test_config_check import BASE_ROUTES, _only_problem, write_config

if TYPE_CHECKING:
    from test_config_check import WriteConfig

__all__ = ["write_config"]  # the fixture, imported for pytest to find


def _ordered(block: str) -> str:
    return BASE_ROUTES.replace("    emits: bus.pong\n", "    emits: bus.pong\n    order:\n" + block)


def test_a_latest_order_block_passes(write_config: WriteConfig) -> None:
    """``order: {by: occurred_at, mode: latest, target: nps}`` is valid."""
    run = write_config(_ordered("      by: occurred_at\n      mode: latest\n      target: nps\n")).check()
    assert (run.code, run.lines) == (0, ["ok: 1 route, 1 connector"])


def test_a_fifo_order_block_passes(write_config: WriteConfig) -> None:
    """``order: {mode: fifo, target: igate}`` is valid."""
    run = write_config(_ordered("      mode: fifo\n      target: igate\n")).check()
    assert (run.code, run.lines) == (0, ["ok: 1 route, 1 connector"])


def test_an_unknown_mode_names_its_line_and_the_modes(write_config: WriteConfig) -> None:
    """``mode: lastest`` is refused on its own line, with the two modes there are."""
    cfg = write_config(_ordered("      by: occurred_at\n      mode: lastest\n      target: nps\n"))
    line = _only_problem(cfg.check())
    assert line.startswith(f"{cfg.routes}:{cfg.line('mode: lastest')}: route bus-ping: order.mode: "), line
    assert "'latest'" in line
    assert "'fifo'" in line


def test_latest_without_by_says_what_is_missing(write_config: WriteConfig) -> None:
    """Mode latest needs ``by``: what makes one event newer than another."""
    cfg = write_config(_ordered("      mode: latest\n      target: nps\n"))
    line = _only_problem(cfg.check())
    assert line.startswith(f"{cfg.routes}:{cfg.line('    order:')}: route bus-ping: order: "), line
    assert "mode latest needs by: occurred_at" in line


def test_fifo_with_by_is_refused(write_config: WriteConfig) -> None:
    """fifo orders by first sight, so a ``by`` there is a mistake, not a silent no-op."""
    cfg = write_config(_ordered("      by: occurred_at\n      mode: fifo\n      target: igate\n"))
    line = _only_problem(cfg.check())
    assert line.startswith(f"{cfg.routes}:{cfg.line('    order:')}: route bus-ping: order: "), line
    assert "mode fifo orders by when the route first saw each event" in line


def test_an_unknown_by_and_a_bad_target_are_both_reported(write_config: WriteConfig) -> None:
    """``by: received_at`` and ``target: Portal!`` are two problems, each on its line."""
    cfg = write_config(_ordered("      by: received_at\n      mode: latest\n      target: Portal!\n"))
    run = cfg.check()
    assert run.code == 2
    by_line = f"{cfg.routes}:{cfg.line('by: received_at')}: route bus-ping: order.by: "
    target_line = f"{cfg.routes}:{cfg.line('target: Portal!')}: route bus-ping: order.target: "
    assert any(line.startswith(by_line) for line in run.lines), run.lines
    assert any(line.startswith(target_line) for line in run.lines), run.lines


def test_an_unknown_key_in_order_is_named(write_config: WriteConfig) -> None:
    """A misspelt key inside ``order`` is an unknown field on its line."""
    cfg = write_config(_ordered("      mode: fifo\n      target: igate\n      targte: x\n"))
    line = _only_problem(cfg.check())
    assert line.startswith(f"{cfg.routes}:{cfg.line('targte:')}: route bus-ping: order.targte: unknown field"), line


def test_the_shipped_portal_status_routes_share_target_nps() -> None:
    """Every shipped route that sends a dossier's status to the portal keeps latest order toward nps."""
    from config.loader import load_config
    from config.settings import DEFAULT_CONFIG_DIR

    routes = load_config(DEFAULT_CONFIG_DIR).routes.routes
    status = [r for r in routes if r.to in {"nps.dong_bo_ho_so", "nps.cap_nhat_tien_do"}]
    assert len(status) == 13
    for r in status:
        assert r.order is not None, r.name
        assert (r.order.mode, r.order.by, r.order.target) == ("latest", "occurred_at", "nps"), r.name
    fifo = {r.name: (r.order.mode, r.order.target) for r in routes if r.order is not None and r not in status}
    assert fifo == {"vilis-to-igate": ("fifo", "igate")}  # the land office's changes: every one, in order


def test_fifo_release_after_passes(write_config: WriteConfig) -> None:
    """``release_after: 2h`` on a fifo route is valid."""
    run = write_config(_ordered("      mode: fifo\n      target: igate\n      release_after: 2h\n")).check()
    assert (run.code, run.lines) == (0, ["ok: 1 route, 1 connector"])


def test_fifo_release_after_needs_a_unit(write_config: WriteConfig) -> None:
    """``release_after: 7200`` (no unit) is refused on its own line."""
    cfg = write_config(_ordered("      mode: fifo\n      target: igate\n      release_after: 7200\n"))
    line = _only_problem(cfg.check())
    assert line.startswith(f"{cfg.routes}:{cfg.line('release_after: 7200')}: route bus-ping: order.release_after"), line


def test_latest_with_release_after_is_refused(write_config: WriteConfig) -> None:
    """release_after bounds fifo's wait for an unseen earlier event; latest has no such wait."""
    cfg = write_config(
        _ordered("      by: occurred_at\n      mode: latest\n      target: nps\n      release_after: 1h\n")
    )
    line = _only_problem(cfg.check())
    assert "release_after is for mode fifo" in line, line
