"""The docs keep up with the code: every flag is documented somewhere under docs/, with its
environment variable, so a new flag cannot land unexplained."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.settings import Settings, env_name

_DOCS = Path(__file__).resolve().parent.parent / "docs"


def _docs_text() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in sorted(_DOCS.glob("*.md")))


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Settings)])
def test_every_flag_is_documented(name: str) -> None:
    text = _docs_text()
    flag = "--" + name.replace("_", "-")
    assert f"`{flag}" in text, f"{flag} is not documented in docs/*.md"


def test_the_flag_tables_name_real_flags() -> None:
    """A documented `OPAMP_GATEWAY_*` variable belongs to a flag that exists (a renamed or removed
    flag leaves no stale row behind)."""
    known = {env_name(f.name) for f in dataclasses.fields(Settings)}
    rows = [line for line in _docs_text().splitlines() if line.startswith("| `--")]
    documented = []
    for row in rows:
        cells = [cell.strip(" `") for cell in row.split("|")[1:3]]
        if len(cells) == 2 and cells[1].startswith("OPAMP_GATEWAY_"):
            documented.append(cells[1])
    stale = [name for name in documented if name not in known]
    assert documented and not stale, stale
