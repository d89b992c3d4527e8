"""The store contract for configs and selector queries: every adapter runs it (see test_contract)."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Literal

import pytest

from gateway.fleet.agent import facts
from gateway.fleet.configs import ConfigFile, ConfigRequest, ConfigSpec
from gateway.fleet.selector import Expression, Selector
from gateway.store.base import MAX_PAGE_SIZE, AgentQuery, Store, VersionConflict
from tests.store.store_helpers import StoreFactory, agent, full, new_uid
from tests.store.test_contract import list_all

pytestmark = pytest.mark.anyio


def spec(
    body: str = "receivers: {}\n",
    *,
    priority: int = 0,
    selector: Selector | None = None,
    files: dict[str, ConfigFile] | None = None,
) -> ConfigSpec:
    chosen = files or {"collector.yaml": ConfigFile("text/yaml", body.encode())}
    return ConfigSpec(
        selector=selector or Selector(match=(("service.name", "otelcol-contrib"),)),
        priority=priority,
        files=tuple(sorted(chosen.items())),
    )


def put(s: ConfigSpec, expected: int | None = None) -> ConfigRequest:
    return ConfigRequest(spec=s, expected_version=expected)


async def test_put_creates_version_one(store: Store) -> None:
    config, changed = await store.put_config("base", put(spec()), 100.0)
    assert changed
    assert (config.name, config.version, config.created_at, config.updated_at) == ("base", 1, 100.0, 100.0)
    assert config.hash == spec().digest()
    assert await store.get_config("base") == config
    assert await store.list_configs() == [config]


async def test_identical_put_changes_nothing(store: Store) -> None:
    first, _ = await store.put_config("base", put(spec()), 100.0)
    again, changed = await store.put_config("base", put(spec()), 200.0)
    assert not changed
    assert again == first


async def test_changed_put_bumps_the_version_and_keeps_created_at(store: Store) -> None:
    await store.put_config("base", put(spec()), 100.0)
    second, changed = await store.put_config("base", put(spec("exporters: {}\n")), 200.0)
    assert changed
    assert (second.version, second.created_at, second.updated_at) == (2, 100.0, 200.0)
    assert second.spec == spec("exporters: {}\n")


async def test_every_part_of_a_spec_round_trips(store: Store) -> None:
    rich = ConfigSpec(
        selector=Selector(
            match=(("a", "1"), ("service.name", "x")),
            expressions=(
                Expression("env", "In", ("prod", "staging")),
                Expression("canary", "DoesNotExist"),
                Expression("os.type", "NotIn", ("windows",)),
                Expression("team", "Exists"),
            ),
            instance_uids=frozenset({new_uid(), new_uid()}),
        ),
        priority=-7,
        files=(
            ("binary.bin", ConfigFile("application/octet-stream", bytes(range(256)))),
            ("collector.yaml", ConfigFile("text/yaml; charset=utf-8", "ünïcode: ✓\n".encode())),
            ("empty.yaml", ConfigFile("text/yaml", b"")),
        ),
    )
    stored, _ = await store.put_config("rich", put(rich), 1.5)
    assert (await store.get_config("rich")) == stored
    assert stored.spec == rich


async def test_list_is_sorted_by_name(store: Store) -> None:
    for name in ("b", "a", "c.d"):
        await store.put_config(name, put(spec(name)), 1.0)
    assert [c.name for c in await store.list_configs()] == ["a", "b", "c.d"]


async def test_delete(store: Store) -> None:
    await store.put_config("gone", put(spec()), 1.0)
    assert await store.delete_config("gone")
    assert await store.get_config("gone") is None
    assert not await store.delete_config("gone")
    assert await store.list_configs() == []


async def test_expected_version_guards_put_and_delete(store: Store) -> None:
    with pytest.raises(VersionConflict):
        await store.put_config("c", put(spec(), expected=1), 1.0)
    await store.put_config("c", put(spec(), expected=0), 1.0)
    with pytest.raises(VersionConflict) as caught:
        await store.put_config("c", put(spec("x: 1\n"), expected=0), 2.0)
    assert caught.value.current == 1
    updated, _ = await store.put_config("c", put(spec("x: 1\n"), expected=1), 2.0)
    assert updated.version == 2
    with pytest.raises(VersionConflict):
        await store.delete_config("c", expected_version=1)
    assert await store.get_config("c") == updated
    assert await store.delete_config("c", expected_version=2)


async def test_two_nodes_share_configs(store_factory: StoreFactory) -> None:
    node_a, node_b = await store_factory(), await store_factory()
    created, _ = await node_a.put_config("shared", put(spec()), 1.0)
    assert await node_b.get_config("shared") == created
    updated, _ = await node_b.put_config("shared", put(spec("y: 2\n"), expected=1), 2.0)
    assert await node_a.list_configs() == [updated]


# -- selector queries --------------------------------------------------------------------------------

_KEYS = ("service.name", "env", "team", "os.type")
_VALUES = ("a", "b", "c")


def _random_selector(rng: random.Random, uids: list[bytes]) -> Selector:
    match = tuple(sorted({(rng.choice(_KEYS), rng.choice(_VALUES)) for _ in range(rng.randint(0, 1))}))
    expressions: list[Expression] = []
    for _ in range(rng.randint(0, 2)):
        op = rng.choice(("In", "NotIn", "Exists", "DoesNotExist"))
        values = tuple(sorted(set(rng.sample(_VALUES, rng.randint(1, 2))))) if op in ("In", "NotIn") else ()
        expressions.append(Expression(rng.choice(_KEYS), op, values))  # type: ignore[arg-type]
    picked = frozenset(rng.sample(uids, rng.randint(0, 2))) if rng.random() < 0.3 else frozenset()
    return Selector(match=match, expressions=tuple(expressions), instance_uids=picked)


async def test_selector_query_agrees_with_selector_matches(store: Store) -> None:
    rng = random.Random(4320)
    agents = []
    for _ in range(60):
        attrs = {k: rng.choice(_VALUES) for k in _KEYS if rng.random() < 0.6}
        ident = {k: v for k, v in attrs.items() if k == "service.name"}
        non_ident = {k: v for k, v in attrs.items() if k != "service.name"}
        state = agent(service_name="", service_version="", os_type="", identifying=ident)
        # agent() adds host.name; the rest is exactly the random attributes.
        state = replace(state, description=agent(identifying=ident, non_identifying=non_ident).description)
        agents.append(state)
    await store.write([full(a) for a in agents])
    uids = [a.instance_uid for a in agents]
    for _ in range(80):
        selector = _random_selector(rng, uids)
        expected = {a.instance_uid for a in agents if selector.matches(a.instance_uid, facts(a).attributes)}
        got = await list_all(store, AgentQuery(selector=selector, limit=MAX_PAGE_SIZE))
        assert {a.instance_uid for a in got} == expected, selector


async def test_empty_selector_matches_nothing(store: Store) -> None:
    await store.write([full(agent())])
    assert await list_all(store, AgentQuery(selector=Selector(), limit=MAX_PAGE_SIZE)) == []


async def test_selector_combines_with_other_filters_and_pages(store: Store) -> None:
    prod = [agent(non_identifying={"env": "prod"}) for _ in range(7)]
    dev = [agent(non_identifying={"env": "dev"}) for _ in range(3)]
    await store.write([full(a) for a in prod + dev])
    selector = Selector(expressions=(Expression("env", "In", ("prod",)),))
    got = await list_all(store, AgentQuery(selector=selector, limit=2))
    assert sorted(a.instance_uid for a in got) == sorted(a.instance_uid for a in prod)
    narrowed = await list_all(store, AgentQuery(selector=selector, q=prod[0].uid, limit=MAX_PAGE_SIZE))
    assert [a.instance_uid for a in narrowed] == [prod[0].instance_uid]


@pytest.mark.parametrize("operator", ["Exists", "DoesNotExist"])
async def test_a_key_with_wildcard_characters_is_a_key(store: Store, operator: str) -> None:
    """`exists` takes field-name patterns: the key `team*` must not match `teamx` (nor nothing)."""
    starred = agent(identifying={"team*": "a"})
    other = agent(identifying={"teamx": "b"})
    await store.write([full(starred), full(other)])
    op: Literal["Exists", "DoesNotExist"] = "Exists" if operator == "Exists" else "DoesNotExist"
    selector = Selector(expressions=(Expression("team*", op),))
    found = await list_all(store, AgentQuery(selector=selector, limit=MAX_PAGE_SIZE))
    wanted = starred if operator == "Exists" else other
    assert [a.instance_uid for a in found] == [wanted.instance_uid]
