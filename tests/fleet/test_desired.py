from __future__ import annotations

import hashlib
import struct

import pytest

from gateway.fleet import desired as desired_mod
from gateway.fleet.agent import AgentState
from gateway.fleet.configs import Config, ConfigFile, ConfigSpec
from gateway.fleet.desired import ConfigSet, config_hash
from gateway.fleet.selector import Expression, Selector
from gateway.proto import opamp_pb2 as pb
from tests.store.store_helpers import description

UID = bytes(range(16))
PROD = {"service.name": "otelcol-contrib", "env": "prod"}


def config(
    name: str, files: dict[str, str], *, priority: int = 0, selector: Selector | None = None, version: int = 1
) -> Config:
    spec = ConfigSpec(
        selector=selector or Selector(match=(("service.name", "otelcol-contrib"),)),
        priority=priority,
        files=tuple(sorted((k, ConfigFile("text/yaml", v.encode())) for k, v in files.items())),
    )
    return Config(name, spec, version, 1.0, 1.0, spec.digest())


def files_of(configs: ConfigSet, attributes: dict[str, str] = PROD) -> dict[str, bytes] | None:
    desired = configs.resolve(UID, attributes)
    if desired is None:
        return None
    return {k: v.body for k, v in desired.message.config.config_map.items()}


def test_union_of_matching_configs() -> None:
    configs = ConfigSet((config("base", {"a.yaml": "a"}), config("extra", {"b.yaml": "b"})))
    assert files_of(configs) == {"a.yaml": b"a", "b.yaml": b"b"}
    desired = configs.resolve(UID, PROD)
    assert desired is not None and desired.sources == ("base", "extra")


def test_higher_priority_wins_a_file_name_clash() -> None:
    low = config("aaa", {"c.yaml": "low", "only-low.yaml": "x"}, priority=1)
    high = config("zzz", {"c.yaml": "high"}, priority=2)
    for order in ((low, high), (high, low)):
        configs = ConfigSet(order)
        assert files_of(configs) == {"c.yaml": b"high", "only-low.yaml": b"x"}
        desired = configs.resolve(UID, PROD)
        assert desired is not None and desired.sources == ("zzz", "aaa")


def test_equal_priority_clash_goes_to_the_first_name() -> None:
    configs = ConfigSet((config("b", {"c.yaml": "from b"}), config("a", {"c.yaml": "from a"})))
    assert files_of(configs) == {"c.yaml": b"from a"}
    desired = configs.resolve(UID, PROD)
    # "b" gave nothing, so it is not a source.
    assert desired is not None and desired.sources == ("a",)


def test_no_match_means_no_config_not_an_empty_one() -> None:
    configs = ConfigSet((config("win", {"a": "x"}, selector=Selector(match=(("os.type", "windows"),))),))
    assert configs.resolve(UID, PROD) is None
    assert ConfigSet().resolve(UID, PROD) is None
    staged = ConfigSet((config("staged", {"a": "x"}, selector=Selector()),))
    assert staged.resolve(UID, PROD) is None


def test_selectors_pick_per_agent() -> None:
    prod_only = Selector(expressions=(Expression("env", "In", ("prod",)),))
    configs = ConfigSet((config("base", {"a": "a"}), config("prod", {"p": "p"}, selector=prod_only)))
    assert files_of(configs) == {"a": b"a", "p": b"p"}
    assert files_of(configs, {"service.name": "otelcol-contrib", "env": "dev"}) == {"a": b"a"}


def test_hash_is_the_documented_canonical_encoding() -> None:
    files = {"b.yaml": ConfigFile("text/yaml", b"B"), "a.yaml": ConfigFile("application/json", b"{}")}
    expected = hashlib.sha256()
    for name in ("a.yaml", "b.yaml"):
        f = files[name]
        for part in (name.encode(), f.content_type.encode(), f.body):
            expected.update(struct.pack(">Q", len(part)) + part)
    assert config_hash(files.items()) == expected.digest()
    # A fixed vector (also in docs/opamp.md): changing the encoding would change every agent's
    # desired hash fleet-wide, and re-send every config.
    assert (
        config_hash([("collector.yaml", ConfigFile("text/yaml", b"receivers: {}\n"))]).hex()
        == "3dbdb40254e3d1ee41eda92fa5b340eef9a1bbcc4ac9b273453cdaaef4d8774d"
    )


def test_hash_depends_on_files_not_on_which_config_carries_them() -> None:
    one = ConfigSet((config("a", {"x": "1", "y": "2"}),))
    two = ConfigSet((config("b", {"x": "1"}), config("c", {"y": "2"}, priority=9)))
    d1, d2 = one.resolve(UID, PROD), two.resolve(UID, PROD)
    assert d1 is not None and d2 is not None
    assert d1.hash == d2.hash
    assert d1.message.config_hash == d1.hash
    changed = ConfigSet((config("a", {"x": "1", "y": "3"}),)).resolve(UID, PROD)
    assert changed is not None and changed.hash != d1.hash


def test_generation_identifies_content() -> None:
    a = ConfigSet((config("a", {"x": "1"}), config("b", {"y": "1"})))
    b = ConfigSet((config("b", {"y": "1"}), config("a", {"x": "1"})))
    assert a.generation == b.generation
    assert (
        ConfigSet((config("a", {"x": "2"}),)).generation != ConfigSet((config("a", {"x": "1"}),)).generation
    )
    assert not ConfigSet() and a


def test_desired_for_resolves_from_the_record_and_caches() -> None:
    configs = ConfigSet((config("base", {"a": "a"}),))
    state = AgentState(
        instance_uid=UID,
        enrolled_at=1.0,
        last_seen=1.0,
        description=description({"service.name": "otelcol-contrib"}),
    )
    first = configs.desired_for(state)
    assert first is not None and configs.desired_for(state) is first
    other = AgentState(
        instance_uid=UID, enrolled_at=1.0, last_seen=1.0, description=description({"service.name": "x"})
    )
    assert configs.desired_for(other) is None
    assert configs.desired_for(AgentState(instance_uid=UID, enrolled_at=1.0, last_seen=1.0)) is None


def test_agents_that_match_the_same_configs_share_one_resolution() -> None:
    prod_only = Selector(expressions=(Expression("env", "In", ("prod",)),))
    configs = ConfigSet((config("base", {"a": "a"}), config("prod", {"p": "p"}, selector=prod_only)))
    dev = {"service.name": "otelcol-contrib", "env": "dev"}
    first = configs.resolve(UID, PROD)
    assert first is not None and configs.resolve(bytes(16), PROD) is first
    other = configs.resolve(UID, dev)
    assert other is not None and other is not first and other.sources == ("base",)
    assert configs.resolve(bytes(16), dev) is other
    assert configs.resolve(UID, {"service.name": "x"}) is None


def test_reported_hash_reads_the_status() -> None:
    configs = ConfigSet()
    digest = b"\x07" * 32
    status = pb.RemoteConfigStatus(last_remote_config_hash=digest, status=pb.RemoteConfigStatuses_APPLIED)
    data = status.SerializeToString()
    assert configs.reported_hash(data) == digest
    assert configs.reported_hash(data) == digest
    assert configs.reported_hash(pb.RemoteConfigStatus().SerializeToString()) == b""


def test_caches_keyed_by_agent_bytes_are_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20, finding 4: an agent sending a new big description (or status) with each message
    must not grow the caches past their byte budget."""
    monkeypatch.setattr(desired_mod, "CACHE_BYTES", 10_000)
    configs = ConfigSet((config("base", {"a": "a"}),))
    for i in range(50):
        state = AgentState(
            instance_uid=UID,
            enrolled_at=1.0,
            last_seen=1.0,
            description=description({"service.name": "otelcol-contrib", "filler": f"{i:04}" * 500}),
        )
        assert configs.desired_for(state) is not None
        status = pb.RemoteConfigStatus(error_message=f"{i:04}" * 500).SerializeToString()
        assert configs.reported_hash(status) == b""
        assert configs._cache.bytes <= 10_000 and configs._reported.bytes <= 10_000
    assert 0 < len(configs._cache.entries) < 50 and 0 < len(configs._reported.entries) < 50
