"""A circuit breaker around any Store: stop hammering a store that keeps failing.

closed -> open: after `failures` consecutive store failures (StoreError, any adapter). While open,
every call fails at once with CircuitOpen, a StoreUnavailable: agents are shed with `Unavailable` and
a jittered `retry_after` (WebSocket) or 503 + `Retry-After` (HTTP), and the store gets room to recover
instead of a retry storm.
open -> half_open: after `reset_after` seconds (jittered, so nodes do not probe in step), the next
call goes through as the probe; the others keep failing fast until it is done.
half_open -> closed when the probe succeeds, back to open when it fails.

`/readyz` calls `ping()` through the breaker, so an open circuit fails readiness and a readiness
probe can be the call that closes it. Errors that are the caller's (bad cursor, version conflict)
are not store failures and never count.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, TypeVar

from gateway.fleet.agent import AgentState, AgentWrite
from gateway.fleet.configs import Config, ConfigRequest
from gateway.fleet.connection_settings import ConnectionSettings, SettingsSpec
from gateway.fleet.credentials import AgentCredential
from gateway.fleet.packages import Package, PackageRequest, PackageVersion
from gateway.fleet.rollout_record import Rollout
from gateway.fleet.versions import ConfigVersion
from gateway.store.base import (
    AgentPage,
    AgentQuery,
    FleetSummary,
    Store,
    StoredRollout,
    StoreError,
    StoreUnavailable,
)

logger = logging.getLogger("gateway.store.breaker")

T = TypeVar("T")
State = Literal["closed", "open", "half_open"]
_JITTER = 0.2


class CircuitOpen(StoreUnavailable):
    """The breaker is open: the store was not asked."""

    def __init__(self, retry_after: float, cause: str) -> None:
        super().__init__(f"store circuit open for {retry_after:.1f}s more after repeated failures: {cause}")
        self.retry_after = retry_after


class CircuitBreaker:
    """`Store` that forwards to `store` while it works."""

    def __init__(
        self,
        store: Store,
        *,
        failures: int = 5,
        reset_after: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        on_state: Callable[[State], None] | None = None,
    ) -> None:
        self.store = store
        self._threshold = failures
        self._reset_after = reset_after
        self._clock = clock
        self._on_state = on_state
        self.state: State = "closed"
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        self.last_failure = ""
        if on_state is not None:
            on_state("closed")

    @property
    def retry_after(self) -> float:
        """Seconds until the next probe may go through (0 unless open)."""
        return max(0.0, self._open_until - self._clock()) if self.state == "open" else 0.0

    def _set(self, state: State) -> None:
        if state != self.state:
            logger.log(
                logging.WARNING if state == "open" else logging.INFO,
                "store circuit %s -> %s%s",
                self.state,
                state,
                f" ({self.last_failure})" if state == "open" else "",
            )
            self.state = state
            if self._on_state is not None:
                self._on_state(state)

    def _admit(self) -> bool:
        """Whether the call may go to the store; True when it is the half-open probe."""
        if self.state == "closed":
            return False
        if self.state == "open" and self._clock() >= self._open_until:
            self._set("half_open")
        if self.state == "half_open" and not self._probing:
            self._probing = True
            return True
        raise CircuitOpen(max(self.retry_after, 0.0), self.last_failure)

    def _failed(self, exc: StoreError, probe: bool) -> None:
        self.last_failure = str(exc)
        self._failures += 1
        if probe or (self.state == "closed" and self._failures >= self._threshold):
            self._open_until = self._clock() + self._reset_after * random.uniform(1 - _JITTER, 1 + _JITTER)
            self._set("open")

    def _succeeded(self) -> None:
        self._failures = 0
        self._set("closed")

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        probe = self._admit()
        try:
            result = await call()
        except CircuitOpen:
            raise
        except StoreError as exc:
            self._failed(exc, probe)
            raise
        else:
            self._succeeded()
            return result
        finally:
            # Also after a caller's error or a cancellation: the next call probes instead.
            if probe:
                self._probing = False

    # -- Store -------------------------------------------------------------------------------------

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        await self.store.close()

    async def ping(self) -> None:
        await self._call(self.store.ping)

    async def get(self, uid: bytes) -> AgentState | None:
        return await self._call(lambda: self.store.get(uid))

    async def write(self, writes: Sequence[AgentWrite]) -> None:
        await self._call(lambda: self.store.write(writes))

    async def list_agents(self, query: AgentQuery, now: float, offline_after: float) -> AgentPage:
        return await self._call(lambda: self.store.list_agents(query, now, offline_after))

    async def pending_commands(self, limit: int) -> dict[bytes, int]:
        return await self._call(lambda: self.store.pending_commands(limit))

    async def get_credentials(self, uids: Sequence[bytes]) -> dict[bytes, AgentCredential]:
        return await self._call(lambda: self.store.get_credentials(uids))

    async def put_credential(
        self, uid: bytes, expected: AgentCredential | None, new: AgentCredential | None
    ) -> bool:
        return await self._call(lambda: self.store.put_credential(uid, expected, new))

    async def forget(self, uid: bytes) -> bytes | None:
        return await self._call(lambda: self.store.forget(uid))

    async def forget_unseen(self, before: float, limit: int) -> int:
        return await self._call(lambda: self.store.forget_unseen(before, limit))

    async def summary(self, now: float, offline_after: float) -> FleetSummary:
        return await self._call(lambda: self.store.summary(now, offline_after))

    async def list_configs(self) -> list[Config]:
        return await self._call(self.store.list_configs)

    async def list_connection_settings(self) -> list[ConnectionSettings]:
        return await self._call(self.store.list_connection_settings)

    async def get_connection_settings(self, name: str) -> ConnectionSettings | None:
        return await self._call(lambda: self.store.get_connection_settings(name))

    async def put_connection_settings(
        self, name: str, spec: SettingsSpec, now: float
    ) -> tuple[ConnectionSettings, bool]:
        return await self._call(lambda: self.store.put_connection_settings(name, spec, now))

    async def delete_connection_settings(self, name: str) -> bool:
        return await self._call(lambda: self.store.delete_connection_settings(name))

    async def get_config(self, name: str) -> Config | None:
        return await self._call(lambda: self.store.get_config(name))

    async def put_config(self, name: str, request: ConfigRequest, now: float) -> tuple[Config, bool]:
        return await self._call(lambda: self.store.put_config(name, request, now))

    async def delete_config(self, name: str, expected_version: int | None = None) -> bool:
        return await self._call(lambda: self.store.delete_config(name, expected_version))

    async def config_versions(self, name: str) -> list[ConfigVersion]:
        return await self._call(lambda: self.store.config_versions(name))

    async def get_rollout(self, name: str) -> StoredRollout | None:
        return await self._call(lambda: self.store.get_rollout(name))

    async def list_rollouts(self) -> list[Rollout]:
        return await self._call(self.store.list_rollouts)

    async def put_rollout(self, rollout: Rollout, expected_rev: str | None) -> str | None:
        return await self._call(lambda: self.store.put_rollout(rollout, expected_rev))

    async def list_packages(self) -> list[Package]:
        return await self._call(self.store.list_packages)

    async def get_package(self, name: str) -> Package | None:
        return await self._call(lambda: self.store.get_package(name))

    async def put_package(self, name: str, request: PackageRequest, now: float) -> tuple[Package, bool]:
        return await self._call(lambda: self.store.put_package(name, request, now))

    async def delete_package(self, name: str, expected_version: int | None = None) -> bool:
        return await self._call(lambda: self.store.delete_package(name, expected_version))

    async def package_versions(self, name: str) -> list[PackageVersion]:
        return await self._call(lambda: self.store.package_versions(name))

    async def get_package_rollout(self, name: str) -> StoredRollout | None:
        return await self._call(lambda: self.store.get_package_rollout(name))

    async def list_package_rollouts(self) -> list[Rollout]:
        return await self._call(self.store.list_package_rollouts)

    async def put_package_rollout(self, rollout: Rollout, expected_rev: str | None) -> str | None:
        return await self._call(lambda: self.store.put_package_rollout(rollout, expected_rev))
