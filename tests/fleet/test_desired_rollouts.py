"""Desired-config resolution during a staged rollout: agents inside the waves get the new version,
the others keep the previous one, identically in every ConfigSet (i.e. on every node)."""

from __future__ import annotations

import uuid

from gateway.fleet.configs import Config
from gateway.fleet.desired import ConfigSet, RolloutView
from gateway.fleet.selector import Selector
from gateway.fleet.waves import RolloutState, in_wave
from tests.fleet.test_desired import PROD, config

UIDS = [uuid.UUID(int=n).bytes for n in range(1, 201)]
OLD = config("base", {"c.yaml": "old"}, version=1)
NEW = config("base", {"c.yaml": "new"}, version=2)
OTHER = config("other", {"o.yaml": "o"}, priority=-1)


def _files(configs: ConfigSet, uid: bytes) -> dict[str, bytes] | None:
    desired = configs.resolve(uid, PROD)
    if desired is None:
        return None
    return {k: v.body for k, v in desired.message.config.config_map.items()}


def _staged(
    state: RolloutState = "progressing", cutoff: float = 0.25, previous: Config | None = OLD
) -> ConfigSet:
    view = RolloutView(version=2, previous=previous, state=state, cutoff=cutoff)
    return ConfigSet((NEW, OTHER), rollouts={"base": view})


def test_inside_the_wave_new_outside_previous() -> None:
    configs = _staged()
    for uid in UIDS:
        body = b"new" if in_wave(uid, 2, 0.25) else b"old"
        assert _files(configs, uid) == {"c.yaml": body, "o.yaml": b"o"}
    inside = sum(_files(configs, uid) == {"c.yaml": b"new", "o.yaml": b"o"} for uid in UIDS)
    assert 0 < inside < len(UIDS)


def test_every_node_resolves_alike() -> None:
    one, two = _staged(), _staged()
    assert one.generation == two.generation
    for uid in UIDS:
        a, b = one.resolve(uid, PROD), two.resolve(uid, PROD)
        assert a is not None and b is not None and a.hash == b.hash


def test_the_state_decides_for_everyone_once_it_ends() -> None:
    assert all(_files(_staged("completed"), uid) == {"c.yaml": b"new", "o.yaml": b"o"} for uid in UIDS)
    ended: tuple[RolloutState, ...] = ("halted", "rolled_back")
    for state in ended:
        assert all(_files(_staged(state), uid) == {"c.yaml": b"old", "o.yaml": b"o"} for uid in UIDS)


def test_a_first_version_gives_agents_outside_the_wave_nothing_from_it() -> None:
    configs = _staged(previous=None)
    outside = next(uid for uid in UIDS if not in_wave(uid, 2, 0.25))
    assert _files(configs, outside) == {"o.yaml": b"o"}
    desired = configs.resolve(outside, PROD)
    assert desired is not None and desired.sources == ("other",)


def test_the_previous_version_keeps_its_own_selector() -> None:
    old = config("base", {"c.yaml": "old"}, selector=Selector(match=(("env", "staging"),)), version=1)
    configs = _staged(previous=old)
    outside = next(uid for uid in UIDS if not in_wave(uid, 2, 0.25))
    assert _files(configs, outside) == {"o.yaml": b"o"}
    assert _files(configs, outside) != _files(ConfigSet((NEW, OTHER)), outside)


def test_a_rollout_of_another_version_is_ignored() -> None:
    stale: RolloutView[Config] = RolloutView(version=1, previous=None, state="progressing", cutoff=0.0)
    configs = ConfigSet((NEW,), rollouts={"base": stale})
    assert configs.generation == ConfigSet((NEW,)).generation
    assert all(_files(configs, uid) == {"c.yaml": b"new"} for uid in UIDS)


def test_each_wave_is_a_new_generation() -> None:
    generations = {_staged(cutoff=c).generation for c in (0.05, 0.25, 1.0)}
    generations |= {
        _staged("paused").generation,
        _staged("halted").generation,
        ConfigSet((NEW, OTHER)).generation,
    }
    assert len(generations) == 6
