"""The official async client, configured from Settings, and what its errors mean for the gateway."""

from __future__ import annotations

import os
from typing import Any

import elastic_transport
from elasticsearch import ApiError, AsyncElasticsearch

from gateway.settings import Settings
from gateway.store.base import StoreError, StoreUnavailable

# Whole-request statuses the client retries itself, with jittered exponential backoff.
RETRY_STATUSES = (429, 502, 503, 504)
_TRANSIENT_TYPES = frozenset(
    {
        "es_rejected_execution_exception",
        "cluster_block_exception",  # e.g. the write block `migrate` sets while it copies an index
        "unavailable_shards_exception",
        "no_shard_available_action_exception",
        "circuit_breaking_exception",
        "process_cluster_event_timeout_exception",
    }
)


# Above this, more connections only move the queue into Elasticsearch's search and write pools.
MAX_CONNECTIONS_PER_NODE = 256


class ElasticsearchConfigError(ValueError):
    """A setting the client cannot use; the message names the flag."""


class NotMigrated(StoreError):
    """An alias the gateway needs does not exist (or predates this gateway's mapping)."""


def make_client(settings: Settings) -> AsyncElasticsearch:
    options: dict[str, Any] = {
        "request_timeout": settings.elasticsearch_timeout,
        "max_retries": 2,
        "retry_on_status": RETRY_STATUSES,
        "retry_on_timeout": False,
        "retry_backoff_base": 0.1,
        "retry_backoff_cap": 1.0,
        # One connection per request in flight: a node may have a get batch per event-loop turn
        # outstanding while its writer flushes, up to --max-inflight messages at once (the client's
        # default of 10 would queue them behind each other).
        "connections_per_node": max(10, min(settings.max_inflight, MAX_CONNECTIONS_PER_NODE)),
    }
    if settings.elasticsearch_api_key:
        options["api_key"] = settings.elasticsearch_api_key
    elif settings.elasticsearch_username:
        options["basic_auth"] = (settings.elasticsearch_username, settings.elasticsearch_password)
    if settings.elasticsearch_ca_cert:
        if not settings.elasticsearch_url.startswith("https://"):
            raise ElasticsearchConfigError("--elasticsearch-ca-cert: needs an https:// --elasticsearch-url")
        if not os.path.isfile(settings.elasticsearch_ca_cert):
            raise ElasticsearchConfigError(
                f"--elasticsearch-ca-cert: {settings.elasticsearch_ca_cert} is not a file"
            )
        options["ca_certs"] = settings.elasticsearch_ca_cert
    try:
        return AsyncElasticsearch(settings.elasticsearch_url, **options)
    except ValueError as exc:
        raise ElasticsearchConfigError(f"--elasticsearch-url: {exc}") from None


def error_type(body: object) -> str:
    """The `error.type` of an Elasticsearch error body ('' if there is none)."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("type", ""))
    return ""


def _error_reason(body: object) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("reason", ""))[:500]
    return ""


def is_transient(status: int, kind: str) -> bool:
    """A failure that may pass if the same request is sent again later."""
    return status == 429 or status >= 500 or kind in _TRANSIENT_TYPES


def store_error(exc: Exception, what: str) -> StoreError:
    """The gateway's view of a client exception: StoreUnavailable when retrying later may help."""
    if isinstance(exc, ApiError):
        kind = error_type(exc.body)
        reason = f"Elasticsearch {what}: HTTP {exc.status_code} {kind or exc.message}"
        detail = _error_reason(exc.body)
        if detail and exc.status_code == 400:
            # A refused request (a setting, a mapping): the reason says which part.
            reason = f"{reason}: {detail}"
        if kind == "media_type_header_exception":
            # An Elasticsearch 8 (or older) node refuses the 9.x client's compatible-with=9 headers.
            return StoreError(
                f"{reason}: Elasticsearch 9 required (the cluster refused the Elasticsearch 9 client's "
                "media type; is it Elasticsearch 8 or older?)"
            )
        if exc.status_code == 404 and kind == "index_not_found_exception":
            missing = exc.body["error"].get("index", "the alias")
            return NotMigrated(f"{reason}: {missing} does not exist; run `opamp-gateway migrate`")
        if exc.status_code in (401, 403) and not is_transient(exc.status_code, kind):
            return StoreError(f"{reason}: check the API key (or user) and its privileges")
        if is_transient(exc.status_code, kind):
            return StoreUnavailable(reason)
        return StoreError(reason)
    if isinstance(exc, elastic_transport.TransportError):
        return StoreUnavailable(f"Elasticsearch {what}: {type(exc).__name__}: {exc}")
    return StoreError(f"Elasticsearch {what}: {exc!r}")


# What the store catches around a client call: the client's own errors, and nothing else.
CLIENT_ERRORS = (ApiError, elastic_transport.TransportError)
