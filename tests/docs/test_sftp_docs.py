"""The SFTP examples in the README and in the connector's docstring are accepted by ``igate-bus check``."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import yaml

import connectors.sftp
from config.model import ConnectorsFile
from routes.model import check_config

ROOT = Path(__file__).resolve().parents[2]
ROUTE = """\
routes:
  - name: files-to-finance
    from: {exchange: igate.events, events: [file.ready]}
    when: "payload.target == 'finance'"
    adapter: files.put_file
    to: finance_sftp.put_file
    emits: file.sent
"""


def _readme_sftp_block() -> str:
    blocks: list[str] = re.findall(
        r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.DOTALL
    )
    [block] = [b for b in blocks if b.startswith("# connectors.yaml: a partner's SFTP server")]
    return block


def test_the_readme_sftp_example_with_a_file_route_passes_check(tmp_path: Path) -> None:
    """The README's sftp connector and a file.ready route ▶ `ok: 1 route, 1 connector`."""
    (tmp_path / "connectors.yaml").write_text(_readme_sftp_block(), encoding="utf-8")
    (tmp_path / "routes.yaml").write_text(ROUTE, encoding="utf-8")
    assert check_config(tmp_path) == (0, ["ok: 1 route, 1 connector"])


def test_the_connector_docstring_example_is_a_valid_connectors_yaml() -> None:
    """The connectors.yaml snippet in connectors/sftp.py validates as a ConnectorsFile."""
    doc = connectors.sftp.__doc__ or ""
    snippet = doc.split("``connectors.yaml``::\n\n", 1)[1].split("\n\n", 1)[0]
    data = yaml.safe_load("connectors:\n" + textwrap.indent(textwrap.dedent(snippet), "  "))
    parsed = ConnectorsFile.model_validate(data)
    assert parsed.connectors["finance_sftp"].type == "sftp"
