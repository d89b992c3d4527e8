"""A gateway-like writer process for test_sqlite.py: hammers one SQLite file through SQLiteStore.

Usage: python sqlite_proc_writer.py DB_PATH WORKER_ID SECONDS SHARED_UIDS_HEX

Opens the store (racing the other process to create the schema), prints "ready", waits for a line
on stdin, then writes batches for SECONDS: full and touch writes for its own agents and for the
shared ones, plus stale writes that must be dropped. Prints one JSON line: for every agent, the newest
(last_seen, sequence_num) it wrote, and for its own agents the full record it expects to be stored.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from dataclasses import replace

from gateway.fleet.agent import AgentState, AgentWrite
from gateway.store.sqlite import SQLiteStore
from tests.store.store_helpers import agent, description, full, health, touch, uid_from_int

OWN_AGENTS = 40


async def main(path: str, worker: int, seconds: float, shared: list[bytes]) -> None:
    store = SQLiteStore(path)
    await store.open()
    print("ready", flush=True)
    sys.stdin.readline()
    rng = random.Random(worker)
    own = [uid_from_int(worker << 64 | i) for i in range(OWN_AGENTS)]
    states: dict[bytes, AgentState] = {}
    newest: dict[bytes, tuple[float, int]] = {}
    counter = 0
    batches = 0
    started = time.time()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch: list[AgentWrite] = []
        for uid in rng.sample(own, 10) + rng.sample(shared, 3):
            counter += 1
            now = time.time()
            seq = worker * 10_000_000 + counter
            before = states.get(uid)
            if before is None or rng.random() < 0.3:
                state = agent(
                    uid,
                    last_seen=now,
                    sequence_num=seq,
                    healthy=rng.random() < 0.8,
                    non_identifying={"writer": worker, "n": counter},
                )
                batch.append(full(state))
            else:
                state = replace(before, last_seen=now, sequence_num=seq)
                batch.append(touch(state))
            states[uid] = state
            newest[uid] = (now, seq)
        # A write from the past (another node committing late) must never win.
        stale_uid = rng.choice(list(states))
        stale = states[stale_uid]
        batch.append(
            full(
                replace(
                    stale,
                    last_seen=stale.last_seen - 5.0,
                    sequence_num=0,
                    description=description({"stale": True}),
                    health=health(False),
                )
            )
        )
        await store.write(batch)
        batches += 1
        if batches % 5 == 0:
            await store.get(rng.choice(own))
    ended = time.time()
    await store.close()
    result = {
        "batches": batches,
        "started": started,
        "ended": ended,
        "newest": {uid.hex(): list(pair) for uid, pair in newest.items()},
        "own": {
            uid.hex(): {
                "last_seen": s.last_seen,
                "sequence_num": s.sequence_num,
                "description": (s.description or b"").hex(),
                "health": (s.health or b"").hex(),
            }
            for uid, s in states.items()
            if uid in own
        },
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(
        main(
            sys.argv[1],
            int(sys.argv[2]),
            float(sys.argv[3]),
            [bytes.fromhex(h) for h in sys.argv[4].split(",")],
        )
    )
