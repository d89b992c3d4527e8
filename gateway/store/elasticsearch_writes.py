"""How agent writes become `_bulk` actions that never move a record backwards.

Two nodes may write one agent out of order (an HTTP agent alternating between nodes, a WebSocket
agent that reconnected elsewhere while the old node still flushes). Every action is therefore
conditional, with optimistic concurrency: `create` when this node knows of no document, otherwise
`index`/`update` with the `if_seq_no`/`if_primary_term` it last saw. The rules are decided here in
Python against what the node last saw of the document (`Known`), the same rules the SQLite adapter
applies in SQL:

- a write whose `last_seen` is older than the stored one is dropped (only a named `pending_command`
  still lands);
- a touch (heartbeat) writes only the heartbeat fields, as a partial update;
- `pending_command` changes only when a write names it, and so does `key_id` (an adoption or an
  admin's move to another key: a node's stale copy of the record never undoes it);
- the credential record (`opamp.credential`, per-agent credentials) is never changed by an agent
  write: a full document carries the one last seen, and `put_credential` alone changes it (with the
  same optimistic concurrency, so a write that did not see it gets 409 and re-reads);
- a write for a uid that moved is dropped (the record lives on under the new uid);
- a move writes the new document and turns every older uid into a `Moved` document.

If the document changed since it was seen, Elasticsearch answers 409 and the store re-reads it and
decides again. A conditional action names the concrete index the version was seen in (see Known.index);
when that index has since been rolled over (write block), the store re-reads through the alias too.
Nothing needs a script, so nothing depends on Painless being allowed on the cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.fleet.agent import AgentWrite, uid_str
from gateway.fleet.credentials import AgentCredential, kind_of
from gateway.store.elasticsearch_documents import bounded_agent_document, heartbeat_fields, moved_document

ActionKind = Literal["create", "index", "update"]


@dataclass(frozen=True, slots=True)
class Known:
    """What this node last saw of one document, and the sequence number that version had."""

    seq_no: int
    primary_term: int
    last_seen: float = 0.0
    pending_command: int | None = None
    command_id: str = ""
    # Set for the document of a uid that moved.
    moved_to: bytes | None = None
    # The concrete index that version is in. Sequence numbers are per index and restart in the copy
    # `migrate` makes, so a conditional write names this index rather than the alias: after a
    # roll-over it meets the old index's write block instead of matching another version.
    index: str = ""
    key_id: str = ""
    # The agent's credential record in that version (None: none, on shared keys).
    credential: AgentCredential | None = None


@dataclass(frozen=True, slots=True)
class Action:
    """One bulk action, with what the document will be if it succeeds."""

    write: int  # position of its write in the batch
    uid: bytes
    kind: ActionKind
    body: dict[str, Any]
    condition: Known | None
    # What to remember once it succeeded (its seq_no comes from the response).
    after: Known

    def header(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"_id": uid_str(self.uid)}
        if self.condition is not None:
            meta["if_seq_no"] = self.condition.seq_no
            meta["if_primary_term"] = self.condition.primary_term
            if self.condition.index:
                meta["_index"] = self.condition.index
                meta["require_alias"] = False
        return {self.kind: meta}


class KnownDocuments:
    """A bounded map of uid -> Known. An evicted entry only costs a 409 and a re-read later."""

    def __init__(self, limit: int = 500_000) -> None:
        self._limit = limit
        self._docs: dict[bytes, Known] = {}

    def __len__(self) -> int:
        return len(self._docs)

    def get(self, uid: bytes) -> Known | None:
        return self._docs.get(uid)

    def put(self, uid: bytes, known: Known) -> None:
        # Re-inserting moves the entry to the end: eviction takes the least recently written.
        self._docs.pop(uid, None)
        self._docs[uid] = known
        if len(self._docs) > self._limit:
            for old in list(self._docs)[: max(1, self._limit // 10)]:
                del self._docs[old]

    def forget(self, uid: bytes) -> None:
        self._docs.pop(uid, None)


def _conditional(known: Known | None) -> tuple[ActionKind, Known | None]:
    return ("create", None) if known is None else ("index", known)


def plan(position: int, write: AgentWrite, known: Callable[[bytes], Known | None]) -> list[Action]:
    """The actions for one write, given what is known of the documents it touches (may be none)."""
    state = write.state
    uid = state.instance_uid
    current = known(uid)
    named = "pending_command" in write.changed
    rebound = "key_id" in write.changed
    old = write.previous_uid if write.previous_uid not in (None, uid) else None
    actions: list[Action] = []
    if old is not None:
        # Every earlier uid points straight at the new one, so any old uid resolves in one hop.
        for previous in dict.fromkeys((*state.previous_instance_uids, old)):
            if previous != uid:
                body = moved_document(previous, uid)
                after = Known(0, 0, moved_to=uid)
                actions.append(Action(position, previous, "index", body, None, after))
    elif current is not None and current.moved_to is not None:
        return []  # a late write for a uid that has moved: recreating it would resurrect a ghost
    if current is not None and current.moved_to is None and current.last_seen > state.last_seen:
        late = _named_fields(write, current)
        if late:
            after = Known(
                0,
                0,
                current.last_seen,
                state.pending_command if named else current.pending_command,
                state.command_id if named else current.command_id,
                key_id=state.key_id if rebound else current.key_id,
                credential=current.credential,
            )
            actions.append(Action(position, uid, "update", {"doc": {"opamp": late}}, current, after))
        return actions
    if write.is_touch and current is not None and current.moved_to is None:
        after = Known(
            0,
            0,
            state.last_seen,
            current.pending_command,
            current.command_id,
            key_id=current.key_id,
            credential=current.credential,
        )
        actions.append(Action(position, uid, "update", {"doc": heartbeat_fields(state)}, current, after))
        return actions
    pending, command_id, key_id = state.pending_command, state.command_id, state.key_id
    credential: AgentCredential | None = None
    if current is not None and current.moved_to is None:
        if not named:
            pending, command_id = current.pending_command, current.command_id
        if not rebound:
            key_id = current.key_id
        credential = current.credential
    document = bounded_agent_document(state)
    document["opamp"]["pending_command"] = pending
    document["opamp"]["command_id"] = command_id or None
    document["opamp"]["key_id"] = key_id or None
    if credential is not None:
        document["opamp"].update(credential_fields(credential))
    kind, condition = _conditional(current)
    after = Known(0, 0, state.last_seen, pending, command_id, key_id=key_id, credential=credential)
    actions.append(Action(position, uid, kind, document, condition, after))
    return actions


def credential_fields(credential: AgentCredential | None) -> dict[str, Any]:
    """The `opamp` fields of a credential record (None: cleared, on shared keys)."""
    return {
        "credential": None if credential is None else credential.to_json(),
        "credential_kind": None if credential is None else kind_of(credential),
    }


def _named_fields(write: AgentWrite, current: Known) -> dict[str, Any]:
    """The fields only a write naming them changes, where this late write changes them (it is older
    than the stored record, so nothing else of it lands)."""
    state = write.state
    out: dict[str, Any] = {}
    if "pending_command" in write.changed and (current.pending_command, current.command_id) != (
        state.pending_command,
        state.command_id,
    ):
        out["pending_command"] = state.pending_command
        out["command_id"] = state.command_id or None
    if "key_id" in write.changed and current.key_id != state.key_id:
        out["key_id"] = state.key_id or None
    return out


def rounds(writes: Sequence[AgentWrite]) -> list[list[int]]:
    """Positions of the writes, grouped so that no two writes in a group touch the same document
    (one bulk request per group; the writer's coalescing makes more than one group rare)."""
    last_round: dict[bytes, int] = {}
    groups: list[list[int]] = []
    for position, write in enumerate(writes):
        state = write.state
        ids = {state.instance_uid}
        if write.previous_uid is not None:
            ids.add(write.previous_uid)
            ids.update(state.previous_instance_uids)
        number = 1 + max((last_round.get(i, -1) for i in ids), default=-1)
        for i in ids:
            last_round[i] = number
        if number == len(groups):
            groups.append([])
        groups[number].append(position)
    return groups
