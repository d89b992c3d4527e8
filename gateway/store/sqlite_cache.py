"""A node's copies of the HTTP agents' rows of the SQLite file, each with the row's `rev`.

Every HTTP poll reads the agent's record, since its previous poll may have reached another node.
Decoding that row is most of the read's cost, so the node keeps what it last read or wrote, and a
read only asks the file for the row's rev: if it is still the cached one, the cached record is the
stored one. Every statement that changes a row gives it a new random rev (sqlite_schema.py), so:

- an entry is always the exact row the file held while it had that rev;
- a write by any node (or process) changes the rev, so the next read fetches the whole row;
- a stale entry can only cost a read, never a lost or overwritten field.

A poll can skip even that read when the entry is *vouched for*: known to be the row, with nothing
changed in the file since but by this node's own agent batches, which keep the cache true
themselves (a touch at the cached rev puts the row it made, any other write drops the entry).
sqlite_watch.py tells the node when anything but its own agent batches committed (another node, or
this node's own sweeps and credential writes); then the cache's generation moves on and no older
entry is vouched for. An entry read while one of the node's
batches was under way is not vouched for either: the batch may have changed the row after the read.

Only records last handled over HTTP are kept: a WebSocket agent's record lives on its connection.
Used from the event loop only; the store's threads get copies of what they need.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.fleet.agent import AgentState

# Entries kept; the least recently stored goes first. An evicted agent costs one full read.
DEFAULT_LIMIT = 50_000


@dataclass(frozen=True, slots=True)
class Cached:
    state: AgentState
    rev: int
    # The generation the entry is vouched for in (None: never; it is checked by its rev).
    generation: int | None = None


def worth_caching(state: AgentState) -> bool:
    return state.transport == "http"


class RowCache:
    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._limit = limit
        self._rows: dict[bytes, Cached] = {}
        self._generation = 0

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, uid: bytes) -> Cached | None:
        return self._rows.get(uid)

    @property
    def generation(self) -> int:
        return self._generation

    def vouched(self, uid: bytes) -> AgentState | None:
        """The cached record of `uid` if it is surely the row the file holds (the caller has made
        sure that no other connection committed since the generation began); None: read it."""
        entry = self._rows.get(uid)
        if entry is None or entry.generation != self._generation:
            return None
        return entry.state

    def unvouch_all(self) -> None:
        """The file changed in ways the cache cannot follow: vouch for no entry (each is then
        checked by its rev on its next read)."""
        self._generation += 1

    def put(self, state: AgentState, rev: int, generation: int | None = None) -> None:
        """Keep `state`, the row stored under its uid while the row's rev was `rev` (and vouched for
        in `generation`)."""
        uid = state.instance_uid
        rows = self._rows
        # Re-inserting moves the entry to the end: eviction takes the least recently stored.
        rows.pop(uid, None)
        if not worth_caching(state):
            return
        rows[uid] = Cached(state, rev, generation)
        if len(rows) > self._limit:
            del rows[next(iter(rows))]

    def drop(self, uid: bytes) -> None:
        self._rows.pop(uid, None)

    def clear(self) -> None:
        self._rows.clear()
