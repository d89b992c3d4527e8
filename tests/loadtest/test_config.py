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


def test_every_gateway_of_a_100k_run_fits_its_sockets_under_the_file_limit() -> None:
    from gateway.file_limit import RESERVE

    for cfg in (RunConfig(agents=100_000), RunConfig(agents=100_000, kill_gateway_after=120.0)):
        args = gateway_args(cfg)
        unfinished = int(args[args.index("--max-unfinished") + 1])
        # The check a gateway makes at start (gateway/file_limit.py), against this machine's 20,000.
        assert _max_connections(cfg) + 2 * unfinished + RESERVE <= 20_000
        # And the survivors of a kill still have room for every agent.
        survivors = gateways(cfg) - (cfg.kill_gateway_after is not None)
        assert survivors * _max_connections(cfg) >= cfg.agents
