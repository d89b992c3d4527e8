"""The harness's process launchers: the gateway's environment and flags, readiness, the clean-exit
check on SIGTERM, and redis-server's outage and return."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness.gateway import flag_args, start_gateway
from harness.process import ProcessError, UncleanExit, spawn, wait_ready
from harness.redis_server import RedisServer
from harness.waiting import eventually, wait_until


def test_flags_are_spelled_as_serve_takes_them() -> None:
    flags = {
        "offline_after": 2,
        "log_level": "debug",
        "tls_client_ca": None,
        "insecure": False,
        "drain": True,
    }
    assert flag_args(flags) == ["--offline-after=2", "--log-level=debug", "--drain"]


def test_a_node_ignores_opamp_gateway_settings_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unparseable: a node that read it would refuse to start.
    monkeypatch.setenv("OPAMP_GATEWAY_OFFLINE_AFTER", "soon")
    node = start_gateway(tmp_path, "scrubbed")
    try:
        assert node.is_ready("readyz")
    finally:
        node.stop_cleanly()
    with pytest.raises(ProcessError, match="OPAMP_GATEWAY_OFFLINE_AFTER"):
        start_gateway(tmp_path, "inheriting", inherit_settings=True)


def test_a_process_that_exits_before_it_is_ready_is_reported_with_its_output(tmp_path: Path) -> None:
    process = spawn(
        "early", [sys.executable, "-c", "print('no config'); raise SystemExit(2)"], tmp_path / "e.log"
    )
    with pytest.raises(ProcessError, match=r"(?s)early \(pid \d+\) exited with 2.*no config"):
        wait_ready(process, lambda: False, timeout=10)


def test_a_process_never_ready_is_killed(tmp_path: Path) -> None:
    process = spawn("slow", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log")
    with pytest.raises(ProcessError, match="was not ready within 0.3s"):
        wait_ready(process, lambda: False, timeout=0.3)
    assert process.returncode is not None


@pytest.mark.parametrize(
    ("code", "complaint"),
    [
        ("signal.signal(signal.SIGTERM, signal.SIG_IGN)", "ignored SIGTERM for 0.5s; killed it"),
        ("signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))", "exited with code 3 after SIGTERM"),
    ],
)
def test_stop_cleanly_fails_unless_sigterm_alone_ends_it_with_0(
    tmp_path: Path, code: str, complaint: str
) -> None:
    script = f"import signal, sys, time\n{code}\nprint('up', flush=True)\ntime.sleep(60)\n"
    process = spawn("stubborn", [sys.executable, "-c", script], tmp_path / "p.log")
    wait_ready(process, lambda: "up" in process.log_text(), timeout=10)
    with pytest.raises(UncleanExit, match=complaint):
        process.stop_cleanly(timeout=0.5)
    assert process.returncode is not None


def test_redis_comes_back_on_the_same_port_after_an_outage(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)
    redis.start()
    try:
        port = redis.port
        redis.kill()
        assert not redis.ping()
        redis.start()
        assert redis.port == port and redis.ping()
    finally:
        assert redis.stop() == 0


@pytest.mark.anyio
async def test_eventually_awaits_async_checks_and_names_what_it_waited_for() -> None:
    calls: list[int] = []

    async def third_time() -> bool:
        calls.append(1)
        return len(calls) >= 3

    await eventually(third_time)
    with pytest.raises(AssertionError, match="timed out waiting for the moon"):
        await eventually(lambda: False, timeout=0.05, what="the moon")


def test_wait_until_returns_the_value_and_reports_the_last_one() -> None:
    assert wait_until(lambda: 42, 1, "an answer") == 42
    with pytest.raises(AssertionError, match="last value: False"):
        wait_until(lambda: False, 0.1, "truth")
