"""The simulated agents' options (the Locust command line's OpAMP group) and where each agent
connects from and to. No Locust import: the lean agent's session uses these in unit tests too."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

OPAMP_PATH = "/v1/opamp"


@dataclass(frozen=True)
class Options:
    targets: tuple[tuple[str, int], ...]
    heartbeat: float = 30.0
    reply_timeout: float = 30.0
    agent_key: str = ""
    request_uid_ratio: float = 0.0
    source_addresses: int = 4096

    @classmethod
    def of(cls, environment: Any) -> Options:
        """From a Locust environment's parsed options (and its --host when no target is given)."""
        parsed = environment.parsed_options
        raw = getattr(parsed, "opamp_targets", "") or ""
        targets = tuple(host_port(item) for item in raw.split(",") if item.strip())
        if not targets and environment.host:
            targets = (host_port(environment.host),)
        if not targets:
            raise ValueError("--opamp-targets: give at least one gateway as host:port")
        return cls(
            targets=targets,
            heartbeat=float(getattr(parsed, "heartbeat_interval", 30.0)),
            reply_timeout=float(getattr(parsed, "reply_timeout", 30.0)),
            agent_key=str(getattr(parsed, "agent_key", "") or ""),
            request_uid_ratio=float(getattr(parsed, "request_uid_ratio", 0.0)),
            source_addresses=int(getattr(parsed, "source_addresses", 4096)),
        )


def host_port(item: str) -> tuple[str, int]:
    text = item.strip().removeprefix("http://").removeprefix("ws://").split("/", 1)[0]
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--opamp-targets: {item!r} is not host:port")
    return host, int(port)


def source_address(n: int, count: int) -> str:
    """The n-th of `count` loopback addresses from 127.1.0.1 up (servers keep 127.0.0.1 to
    themselves); the last octet skips 0 and 255."""
    offset = n % max(1, count)
    return f"127.{1 + offset // 65024}.{(offset // 254) % 256}.{1 + offset % 254}"


class Targets:
    """The gateway an agent talks to: first the n-th, round-robin; after a failed connect, another
    one at random, so the agents of a gateway that is gone spread over all the others."""

    def __init__(self, targets: tuple[tuple[str, int], ...], n: int) -> None:
        self._targets = targets
        self._index = n % len(targets)

    @property
    def current(self) -> tuple[str, int]:
        return self._targets[self._index]

    def move(self) -> None:
        if len(self._targets) > 1:
            self._index = (self._index + random.randrange(1, len(self._targets))) % len(self._targets)
