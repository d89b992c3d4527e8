"""The file limit a node starts with: raised to the hard limit, and a warning when it is too low."""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator

import pytest

from gateway.file_limit import RESERVE, needed, raise_file_limit
from gateway.settings import Settings


@pytest.fixture
def file_limit() -> Iterator[tuple[int, int]]:
    """This process's limit, restored afterwards (lowering the soft limit needs no privilege)."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield saved
    resource.setrlimit(resource.RLIMIT_NOFILE, saved)


def test_needed_counts_websockets_both_ports_unfinished_and_the_reserve() -> None:
    settings = Settings(max_connections=1000, max_unfinished=100)
    assert needed(settings) == 1000 + 200 + RESERVE


def test_the_soft_limit_is_raised_to_the_hard_one(
    file_limit: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    _soft, hard = file_limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    settings = Settings(max_connections=1, max_unfinished=1)
    with caplog.at_level(logging.WARNING, logger="gateway.file_limit"):
        assert raise_file_limit(settings) == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    assert not caplog.records


def test_a_limit_below_what_the_settings_can_take_is_a_warning(
    file_limit: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    soft, _hard = file_limit
    settings = Settings(max_connections=soft, max_unfinished=1)
    with caplog.at_level(logging.WARNING, logger="gateway.file_limit"):
        assert raise_file_limit(settings) >= soft
    assert "is below what --max-connections and --max-unfinished can take" in caplog.text


def test_a_limit_that_cannot_be_raised_is_a_warning(
    file_limit: tuple[int, int], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    _soft, hard = file_limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    def refuse(_which: int, _limits: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "setrlimit", refuse)
    with caplog.at_level(logging.WARNING, logger="gateway.file_limit"):
        assert raise_file_limit(Settings(max_connections=1, max_unfinished=1)) == 256
    assert f"could not raise the file limit from 256 to {hard}: not allowed" in caplog.text
