"""Elasticsearch's error responses, with the bodies a real 9.x node sends."""

from __future__ import annotations

from typing import Any

INDEX_UUID = "d0ubl3UUIDd0ubl3UUIDdw"


class EsError(Exception):
    """An error the double answers with: an HTTP status and Elasticsearch's JSON body for it."""

    def __init__(self, status: int, kind: str, reason: str, **details: Any) -> None:
        super().__init__(f"{status} {kind}: {reason}")
        self.status = status
        self.kind = kind
        self.reason = reason
        self.details = details

    def cause(self) -> dict[str, Any]:
        """The error object as it appears in a bulk item or an mget doc (no root_cause there)."""
        out: dict[str, Any] = {"type": self.kind, "reason": self.reason}
        out.update({k: v for k, v in self.details.items() if k != "caused_by"})
        if "caused_by" in self.details:
            out["caused_by"] = self.details["caused_by"]
        return out

    def body(self) -> dict[str, Any]:
        root = {"type": self.kind, "reason": self.reason}
        root.update({k: v for k, v in self.details.items() if k != "caused_by"})
        return {"error": {"root_cause": [root], **self.cause()}, "status": self.status}


def index_not_found(name: str, reason: str | None = None) -> EsError:
    return EsError(
        404,
        "index_not_found_exception",
        reason or f"no such index [{name}]",
        **{"resource.type": "index_or_alias", "resource.id": name, "index_uuid": "_na_", "index": name},
    )


def require_alias(name: str) -> EsError:
    return index_not_found(
        name,
        f"no such index [{name}] and [require_alias] request flag is [true] and [{name}] is not an alias",
    )


def _shard(index: str) -> dict[str, str]:
    return {"index_uuid": INDEX_UUID, "shard": "0", "index": index}


def seq_no_conflict(
    index: str, doc_id: str, seq_no: int, term: int, current: tuple[int, int] | None
) -> EsError:
    tail = (
        "but no document was found"
        if current is None
        else f"current document has seqNo [{current[0]}] and primary term [{current[1]}]"
    )
    return EsError(
        409,
        "version_conflict_engine_exception",
        f"[{doc_id}]: version conflict, required seqNo [{seq_no}], primary term [{term}]. {tail}",
        **_shard(index),
    )


def already_exists(index: str, doc_id: str, version: int) -> EsError:
    return EsError(
        409,
        "version_conflict_engine_exception",
        f"[{doc_id}]: version conflict, document already exists (current version [{version}])",
        **_shard(index),
    )


def document_missing(index: str, doc_id: str) -> EsError:
    return EsError(404, "document_missing_exception", f"[{doc_id}]: document missing", **_shard(index))


def strict_mapping(field: str, parent: str) -> EsError:
    return EsError(
        400,
        "strict_dynamic_mapping_exception",
        f"[1:2] mapping set to strict, dynamic introduction of [{field}] within [{parent}] is not allowed",
    )


def bad_value(field: str, kind: str, doc_id: str, value: object) -> EsError:
    return EsError(
        400,
        "document_parsing_exception",
        f"[1:2] failed to parse field [{field}] of type [{kind}] in document with id '{doc_id}'. "
        f"Preview of field's value: '{value}'",
        caused_by={"type": "illegal_argument_exception", "reason": f"cannot parse [{value}] as [{kind}]"},
    )


def unknown_query(name: str) -> EsError:
    return EsError(
        400,
        "parsing_exception",
        f"unknown query [{name}]",
        line=1,
        col=2,
        caused_by={"type": "named_object_not_found_exception", "reason": f"[1:2] unknown field [{name}]"},
    )


def illegal(reason: str) -> EsError:
    return EsError(400, "illegal_argument_exception", reason)


def query_shard(reason: str) -> EsError:
    return EsError(400, "query_shard_exception", f"failed to create query: {reason}", index_uuid=INDEX_UUID)


def rejected(what: str = "coordinating") -> EsError:
    return EsError(
        429,
        "es_rejected_execution_exception",
        f"rejected execution of {what} operation [coordinating_and_primary_bytes=0, replica_bytes=0, "
        "all_bytes=0, coordinating_operation_bytes=1024, max_coordinating_and_primary_bytes=0]",
    )


def write_blocked(index: str) -> EsError:
    return EsError(
        403, "cluster_block_exception", f"index [{index}] blocked by: [FORBIDDEN/8/index write (api)];"
    )
