"""``igate-bus vnpost pool load|status``: an operator loads VNPost's batch of item codes, all or nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from busenv import ROOT, cli, env_for
from vnpost_data import item_code

if TYPE_CHECKING:
    from pathlib import Path


def _env(tmp_path: Path, amqp_url: str) -> dict[str, str]:
    return env_for(amqp_url, f"sqlite:///{tmp_path / 'store.sqlite3'}", ROOT / "config")


def test_a_batch_loads_once_and_the_status_counts_it(tmp_path: Path, amqp_url: str) -> None:
    env = _env(tmp_path, amqp_url)
    batch = tmp_path / "batch.txt"
    codes = [item_code(n) for n in range(1, 31)]
    batch.write_text("# VNPost batch 2026-11\n" + "\n".join(codes[:20]) + "\n\n" + "\n".join(codes[20:]) + "\n")
    first = cli("vnpost", "pool", "load", str(batch), env=env)
    assert first.returncode == 0, first.stderr
    assert "30 code(s) added, 0 already in the pool; 30 free now" in first.stdout
    again = cli("vnpost", "pool", "load", str(batch), env=env)
    assert again.returncode == 0 and "0 code(s) added, 30 already in the pool; 30 free now" in again.stdout
    status = cli("vnpost", "pool", "status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert status.stdout.strip() == '{"free": 30, "taken": 0, "total": 30}'


def test_a_file_with_bad_lines_adds_nothing_and_names_each_line(tmp_path: Path, amqp_url: str) -> None:
    env = _env(tmp_path, amqp_url)
    good = item_code(7)
    wrong_digit = good[:10] + str((int(good[10]) + 1) % 10) + "VN"
    batch = tmp_path / "batch.txt"
    batch.write_text(f"{good}\n{wrong_digit}\nEB12345\n{good}\n")
    run = cli("vnpost", "pool", "load", str(batch), env=env)
    assert run.returncode == 1
    lines = run.stderr.splitlines()
    assert lines[0].startswith(f"{batch}:2: check digit of {wrong_digit}")
    assert lines[1].startswith(f"{batch}:3: not an S10 item code")
    assert lines[2] == f"{batch}:4: {good} is also on line 1"
    assert "nothing loaded (3 bad line(s))" in lines[3]
    assert "Traceback" not in run.stderr
    status = cli("vnpost", "pool", "status", "--json", env=env)
    assert status.stdout.strip() == '{"free": 0, "taken": 0, "total": 0}'


def test_an_empty_or_missing_file_or_another_connector_is_one_line(tmp_path: Path, amqp_url: str) -> None:
    env = _env(tmp_path, amqp_url)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    assert f"{empty}: no item codes in it" in cli("vnpost", "pool", "load", str(empty), env=env).stderr
    missing = cli("vnpost", "pool", "load", str(tmp_path / "nope.txt"), env=env)
    assert missing.returncode == 1 and "cannot read it" in missing.stderr
    binary = tmp_path / "codes.bin"
    binary.write_bytes(b"\xff\xfe\x00EB")
    assert cli("vnpost", "pool", "load", str(binary), env=env).returncode == 1
    other = tmp_path / "ok.txt"
    other.write_text(item_code(3) + "\n")
    wrong = cli("vnpost", "pool", "load", "--connector", "igate", str(other), env=env)
    assert wrong.returncode == 2 and "not vnpost" in wrong.stderr
    unknown = cli("vnpost", "pool", "status", "--connector", "vnpots", env=env)
    assert unknown.returncode == 2 and "no connector 'vnpots'" in unknown.stderr
    for run in (missing, wrong, unknown):
        assert "Traceback" not in run.stderr
