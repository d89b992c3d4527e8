"""A staged config in its body: the `rollout` object a PUT takes (strategy, the read-only counts of a
GET ignored), its part in the hash, and when a new version needs a rollout (rollout_steps.staging)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.fleet.configs import ROLLOUT_COUNT_KEYS, Config, InvalidConfig, parse_request, spec_json
from gateway.fleet.rollout import RolloutCounts
from gateway.fleet.rollout_steps import Staging, staging, start
from gateway.fleet.versions import ConfigVersion
from gateway.fleet.waves import ALL_AT_ONCE

STAGED = {"strategy": "staged", "waves": [10, 100], "min_wave_seconds": 1, "max_failure_ratio": 0.1}


def _body(text: str = "a: 1\n", selector: str = "otelcol", **extra: Any) -> dict[str, Any]:
    return {"selector": {"match": {"service.name": selector}}, "files": {"c.yaml": {"body": text}}, **extra}


def _config(version: int, body: dict[str, Any]) -> Config:
    spec = parse_request("base", body, max_bytes=1 << 20).spec
    return Config("base", spec, version, 1.0, 1.0, spec.digest())


def _kept(*configs: Config) -> list[ConfigVersion]:
    return [ConfigVersion(c.version, c.hash, 1.0, c.spec) for c in sorted(configs, key=lambda c: -c.version)]


def test_the_strategy_is_part_of_the_body() -> None:
    plain = parse_request("base", _body(), max_bytes=1 << 20).spec
    assert plain.rollout == ALL_AT_ONCE
    assert "rollout" not in spec_json(plain)
    staged = parse_request("base", _body(rollout=STAGED), max_bytes=1 << 20).spec
    assert staged.rollout.staged and staged.rollout.min_wave_seconds == 1
    assert spec_json(staged)["rollout"] == {**STAGED, "require_healthy": True}
    # A staged strategy changes the hash; the default leaves it as it was before strategies existed.
    assert staged.digest() != plain.digest()
    assert parse_request("base", _body(rollout={"strategy": "all"}), max_bytes=1 << 20).spec.digest() == (
        plain.digest()
    )
    assert staged.same_content(plain)
    assert not staged.same_content(parse_request("base", _body("a: 2\n"), max_bytes=1 << 20).spec)


def test_a_get_body_puts_back_unchanged() -> None:
    """The GET's `rollout` holds the strategy and the counts: a PUT keeps the one, ignores the other."""
    assert set(RolloutCounts().to_json()) == ROLLOUT_COUNT_KEYS
    got = {**STAGED, **RolloutCounts().to_json()}
    spec = parse_request("base", _body(rollout=got), max_bytes=1 << 20).spec
    assert spec.rollout == parse_request("base", _body(rollout=STAGED), max_bytes=1 << 20).spec.rollout
    counts_only = parse_request("base", _body(rollout=RolloutCounts().to_json()), max_bytes=1 << 20)
    assert counts_only.spec.rollout == ALL_AT_ONCE


@pytest.mark.parametrize(
    ("rollout", "field"),
    [
        ("staged", "rollout"),
        ({"strategy": "canary"}, "rollout.strategy"),
        ({"strategy": "staged", "waves": [50, 20]}, "rollout.waves[1]"),
        ({"strategy": "staged", "waves": [{"count": 0}]}, "rollout.waves[0].count"),
        ({"strategy": "staged", "min_wave_seconds": -1}, "rollout.min_wave_seconds"),
        ({"strategy": "staged", "max_failure_ratio": 2}, "rollout.max_failure_ratio"),
        ({"strategy": "staged", "require_healthy": "yes"}, "rollout.require_healthy"),
        ({"strategy": "all", "waves": [5]}, "rollout.waves"),
    ],
)
def test_a_bad_strategy_names_its_field(rollout: object, field: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        parse_request("base", _body(rollout=rollout), max_bytes=1 << 20)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_when_a_version_needs_a_rollout() -> None:
    v1 = _config(1, _body())
    v2 = _config(2, _body("a: 2\n", rollout=STAGED))
    # Not staged: never. A first version: from nothing.
    assert staging(_config(2, _body("a: 2\n")), _kept(v1), None) is None
    assert staging(_config(1, _body(rollout=STAGED)), [], None) == Staging(1, None)
    # New content: from the newest older version kept.
    assert staging(v2, _kept(v1, v2), None) == Staging(2, 1)
    # Only the strategy changed: the agents get nothing new, no rollout.
    assert (
        staging(_config(3, _body("a: 2\n", rollout={**STAGED, "waves": [50]})), _kept(v1, v2), None) is None
    )
    # A new selector is new content too.
    assert staging(_config(3, _body("a: 2\n", "other", rollout=STAGED)), _kept(v1, v2), None) == Staging(3, 2)
    # While version 2 rolls out (or after it halted), version 3's others keep version 2's previous one.
    v3 = _config(3, _body("a: 3\n", rollout=STAGED))
    unfinished = start("base", 2, 1, v2.spec.rollout, 1.0, [])
    assert staging(v3, _kept(v1, v2, v3), unfinished) == Staging(3, 1)
    halted = unfinished.moved(2.0, "halted", "test")
    assert staging(v3, _kept(v1, v2, v3), halted) == Staging(3, 1)
    assert staging(v3, _kept(v1, v2, v3), halted.moved(3.0, "completed", "test")) == Staging(3, 2)
    # Only the strategy changed while version 2 rolls out: it starts again from version 1, in the new
    # waves; back to version 1's content after a halt: nothing to roll out.
    retimed = _config(3, _body("a: 2\n", rollout={**STAGED, "waves": [50]}))
    assert staging(retimed, _kept(v1, v2, retimed), unfinished) == Staging(3, 1)
    undone = _config(3, _body(rollout=STAGED))
    assert staging(undone, _kept(v1, v2, undone), halted) is None
