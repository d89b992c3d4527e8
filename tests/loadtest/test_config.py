"""How a scale run sizes its gateways, with and without a gateway to kill."""

from __future__ import annotations

from loadtest.config import RunConfig, gateway_args, gateways


def _max_connections(cfg: RunConfig) -> int:
    args = gateway_args(cfg)
    return int(args[args.index("--max-connections") + 1])


def test_a_run_with_a_kill_has_two_gateways_at_least_and_room_for_every_agent_on_the_others() -> None:
    assert gateways(RunConfig(agents=3000)) == 1
    killing = RunConfig(agents=3000, kill_gateway_after=20.0)
    assert gateways(killing) == 2
    three = RunConfig(agents=3000, gateways=3, kill_gateway_after=20.0)
    assert gateways(three) == 3
    # Once one is gone, the two left must take all 3,000 between them.
    assert 2 * _max_connections(three) >= 3000
    assert (
        3 * _max_connections(RunConfig(agents=3000, gateways=3))
        >= 3000
        > 2 * _max_connections(RunConfig(agents=3000, gateways=3))
    )
