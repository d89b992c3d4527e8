from __future__ import annotations

import pytest

from scripts.floors import NoFloorError, constraints, floors, locked

PYPROJECT = """
[project]
name = "x"
dependencies = [
    "starlette>=1.10,<2",
    "uvicorn[standard]>=0.54,<0.60",
    "Prometheus_Client~=0.26",
    "redis>=8.1,>=8.1.2,<9",
]
"""

LOCK = """\
# comment
anyio==4.16.0 \\
    --hash=sha256:aa
pytest==9.2.0 \\
    --hash=sha256:bb
    # via opamp-gateway
numpy==2.4.6 ; python_full_version < '3.12' \\
    --hash=sha256:cc
"""


def test_each_runtime_dependency_pinned_at_its_lowest_allowed_version() -> None:
    assert floors(PYPROJECT) == {
        "starlette": "1.10",
        "uvicorn[standard]": "0.54",
        "prometheus-client": "0.26",
        "redis": "8.1.2",
    }


def test_a_dependency_without_a_lower_bound_is_named() -> None:
    text = '[project]\nname = "x"\ndependencies = ["redis<9"]\n'
    with pytest.raises(NoFloorError, match="redis"):
        floors(text)


def test_locked_reads_pins_with_markers_and_hashes() -> None:
    assert locked(LOCK) == {"anyio": "4.16.0", "pytest": "9.2.0", "numpy": "2.4.6"}


def test_constraints_keep_the_test_tools_and_free_the_runtime_closure() -> None:
    runtime = "anyio==4.16.0 \\\n    --hash=sha256:aa\n"
    assert constraints(LOCK, runtime) == ["pytest==9.2.0", "numpy==2.4.6"]
