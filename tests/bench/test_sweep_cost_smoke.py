"""`python -m bench.sweep_cost` runs end to end on a tiny fleet and prints one row per store."""

from __future__ import annotations

import pytest

from bench import sweep_cost


def test_sweep_cost_prints_a_row_per_store(capsys: pytest.CaptureFixture[str]) -> None:
    assert sweep_cost.main(["--agents", "600", "--runs", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "600" in line]
    assert len(rows) == 2
    assert rows[0].startswith("| SQLite, 600 |") and rows[0].endswith("| 1 query (was 2) |")
    assert rows[1].startswith("| ES double, 600 |") and rows[1].endswith("| 1 `_search` (was 1 `_mget`s) |")


def test_sweep_cost_refuses_a_fleet_smaller_than_the_waiting_commands() -> None:
    with pytest.raises(SystemExit):
        sweep_cost.main(["--agents", "2"])
