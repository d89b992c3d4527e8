"""Remote configs as the admin API takes them, and the config hash computed independently of the
gateway's code, from its documented encoding (gateway/fleet/desired.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# file name -> (content type, body)
Files = Mapping[str, tuple[str, bytes]]


def expected_hash(files: Files) -> bytes:
    """SHA-256 over each file in name order: name, content type and body, each as an 8-byte
    big-endian length followed by the bytes."""
    digest = hashlib.sha256()
    for name in sorted(files):
        content_type, body = files[name]
        for part in (name.encode(), content_type.encode(), body):
            digest.update(len(part).to_bytes(8, "big") + part)
    return digest.digest()


def service_in(names: Sequence[str]) -> dict[str, Any]:
    """A selector for agents whose service.name is one of `names`."""
    return {"expressions": [{"key": "service.name", "operator": "In", "values": list(names)}]}


def config_spec(selector: dict[str, Any], files: Files, priority: int = 0) -> dict[str, Any]:
    """A PUT /api/v1/configs/{name} body with text files."""
    return {
        "selector": selector,
        "priority": priority,
        "files": {
            name: {"content_type": content_type, "body": body.decode()}
            for name, (content_type, body) in files.items()
        },
    }


def applied_config(desired_hash: str) -> Callable[[dict[str, Any]], bool]:
    """A predicate on an agent's admin JSON: it applied the config with this hash, the desired one."""

    def check(agent: dict[str, Any]) -> bool:
        sync = agent["config_sync"]
        return bool(sync["desired_hash"] == desired_hash and sync["status"] == "applied")

    return check
