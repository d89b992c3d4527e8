"""Configs: named sets of agent config files, each aimed at agents by a selector.

A config as the admin API takes it (`PUT /api/v1/configs/{name}`):

    {"selector": {"match": {"service.name": "otelcol-contrib"}},
     "priority": 10,
     "files": {"collector.yaml": {"content_type": "text/yaml", "body": "receivers: ..."}}}

A file's body is text (`body`, UTF-8) or binary (`body_base64`). The store keeps the parsed spec plus
`version` (1 on create, +1 on every change of content), timestamps and `hash`, the SHA-256 of the
spec's canonical encoding: a PUT of identical content changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.fleet import selector as selector_mod
from gateway.fleet.selector import Selector
from gateway.fleet.waves import ALL_AT_ONCE, InvalidRollout, RolloutStrategy, parse_strategy

NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$")
CONTENT_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*(\s*;.*)?$"
_CONTENT_TYPE = re.compile(CONTENT_TYPE_PATTERN)
# A file name is a plain name: agents may write it under their own directory, so nothing that
# leaves it (/, \, ..) and no control characters (C0, DEL, C1) that hide in logs and terminals.
_NOT_PLAIN = re.compile(r"[/\\\x00-\x1f\x7f-\x9f]|\.\.|^\.$")
# The same rule as a JSON Schema pattern, for the OpenAPI document.
FILE_NAME_PATTERN = r"^(?!\.$)(?!.*\.\.)[^/\\\x00-\x1f\x7f-\x9f]+$"
DEFAULT_CONTENT_TYPE = "text/yaml"
MAX_FILES = 64
MAX_FILE_NAME = 255
MAX_PRIORITY = 1_000_000
# Within a signed 64-bit integer (SQLite's, Elasticsearch's long), with room to count up.
MAX_VERSION = 10**18
# Fields of a config's JSON that the server computes: accepted back in a PUT (so GET -> edit -> PUT
# works, and so does copying a config to another name) and ignored. `version` is different: when
# given, it is a precondition.
_READ_ONLY = frozenset({"name", "hash", "created_at", "updated_at"})
# The `rollout` object of a config's GET holds its strategy (which a PUT sets) and the counts of its
# agents by config status (gateway/fleet/rollout.py RolloutCounts, which the server computes): a PUT
# ignores the counts, so GET -> edit -> PUT works there too.
ROLLOUT_COUNT_KEYS = frozenset(
    {"matched", "applied", "applying", "failed", "pending", "unsupported", "offline", "disconnected"}
)


class InvalidConfig(ValueError):
    """A config body the admin API refuses; `field` is the JSON path of the bad part."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True, slots=True)
class ConfigFile:
    content_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class ConfigSpec:
    """What the operator decides: the part of a config that a PUT replaces."""

    selector: Selector
    priority: int
    # Sorted by file name.
    files: tuple[tuple[str, ConfigFile], ...]
    # How a new version reaches the agents (waves.py): all at once, or in waves.
    rollout: RolloutStrategy = ALL_AT_ONCE

    @property
    def size(self) -> int:
        return sum(len(name) + len(f.content_type) + len(f.body) for name, f in self.files)

    def digest(self) -> str:
        """SHA-256 hex of the canonical encoding: equal specs hash equal on every node. A staged
        strategy is part of it (the default is not, so a config's hash stays what it was)."""
        content: dict[str, Any] = {
            "selector": self.selector.to_json(),
            "priority": self.priority,
            "files": [
                [name, f.content_type, base64.b64encode(f.body).decode("ascii")] for name, f in self.files
            ],
        }
        if self.rollout.staged:
            content["rollout"] = self.rollout.to_json()
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def same_content(self, other: ConfigSpec) -> bool:
        """Whether the agents get the same from both: everything but the rollout strategy is equal."""
        return (self.selector, self.priority, self.files) == (other.selector, other.priority, other.files)


@dataclass(frozen=True, slots=True)
class Config:
    name: str
    spec: ConfigSpec
    version: int
    created_at: float
    updated_at: float
    hash: str

    @property
    def selector(self) -> Selector:
        return self.spec.selector

    @property
    def priority(self) -> int:
        return self.spec.priority


@dataclass(frozen=True, slots=True)
class ConfigRequest:
    """A parsed PUT body: the spec, and the version the caller expects to replace (None: any)."""

    spec: ConfigSpec
    expected_version: int | None


def _integer(value: object) -> int | None:
    """An integer, also when JSON wrote it as 3.0 (JSON Schema's integers include those); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def shown_key(key: str) -> str:
    """A JSON key as an error names it: quoted when it is empty, padded or unprintable."""
    return key if key and key.isprintable() and key.strip() == key else repr(key[:64])


def check_name(name: str, what: str = "config") -> str:
    if not NAME_PATTERN.match(name):
        raise InvalidConfig(
            "name",
            f"{name[:140]!r} is not a valid {what} name: 1-128 characters of a-z, 0-9, '.', '_', '-', "
            "starting and ending with a letter or digit",
        )
    return name


def _file(name: object, raw: object, field: str) -> tuple[str, ConfigFile]:
    if not isinstance(name, str) or not name or len(name) > MAX_FILE_NAME or _NOT_PLAIN.search(name):
        shown = name[:64] if isinstance(name, str) else name
        raise InvalidConfig(
            field,
            f"file name {shown!r} is not a plain name: 1-{MAX_FILE_NAME} characters, without '/', '\\', "
            "'..' or control characters",
        )
    where = f"{field}.{name}"
    if not isinstance(raw, dict):
        raise InvalidConfig(where, "must be an object with content_type and body (or body_base64)")
    unknown = set(raw) - {"content_type", "body", "body_base64"}
    if unknown:
        raise InvalidConfig(f"{where}.{sorted(unknown)[0]}", "unknown field")
    content_type = raw.get("content_type", DEFAULT_CONTENT_TYPE)
    if not isinstance(content_type, str) or len(content_type) > 255 or not _CONTENT_TYPE.match(content_type):
        raise InvalidConfig(
            f"{where}.content_type", f"must be a media type like text/yaml, got {content_type!r}"
        )
    if ("body" in raw) == ("body_base64" in raw):
        raise InvalidConfig(where, "give exactly one of body (text) and body_base64")
    if "body" in raw:
        text = raw["body"]
        if not isinstance(text, str):
            raise InvalidConfig(f"{where}.body", f"must be a string, got {type(text).__name__}")
        body = text.encode()
    else:
        encoded = raw["body_base64"]
        if not isinstance(encoded, str):
            raise InvalidConfig(f"{where}.body_base64", f"must be a string, got {type(encoded).__name__}")
        try:
            body = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise InvalidConfig(f"{where}.body_base64", "is not valid base64") from None
    return name, ConfigFile(content_type=content_type, body=body)


def selector_size(selector: Selector) -> int:
    """The selector's bytes as compact JSON, as counted in --max-config-bytes."""
    return len(json.dumps(selector.to_json(), separators=(",", ":"), ensure_ascii=False).encode())


def parse_request(name: str, raw: object, *, max_bytes: int) -> ConfigRequest:
    """Validate a PUT body for config `name`; InvalidConfig names the first bad field."""
    check_name(name)
    if not isinstance(raw, dict):
        raise InvalidConfig("body", "must be a JSON object with selector, priority and files")
    unknown = set(raw) - {"selector", "priority", "files", "version", "rollout"} - _READ_ONLY
    if unknown:
        raise InvalidConfig(shown_key(sorted(unknown)[0]), "unknown field")
    if "selector" not in raw:
        raise InvalidConfig("selector", "is required (use {} to stage a config that matches no agent)")
    try:
        selector = selector_mod.parse(raw["selector"])
    except selector_mod.InvalidSelector as exc:
        raise InvalidConfig(exc.field, str(exc).split(": ", 1)[1]) from None
    priority = _integer(raw.get("priority", 0))
    if priority is None or abs(priority) > MAX_PRIORITY:
        raise InvalidConfig("priority", f"must be an integer from -{MAX_PRIORITY} to {MAX_PRIORITY}")
    files_raw = raw.get("files")
    if not isinstance(files_raw, dict) or not files_raw:
        raise InvalidConfig(
            "files", "must be an object of file name -> {content_type, body} with at least one file"
        )
    if len(files_raw) > MAX_FILES:
        raise InvalidConfig("files", f"at most {MAX_FILES} files per config")
    files = tuple(sorted(_file(k, v, "files") for k, v in files_raw.items()))
    spec = ConfigSpec(
        selector=selector,
        priority=priority,
        files=files,
        rollout=_strategy(raw["rollout"]) if "rollout" in raw else ALL_AT_ONCE,
    )
    # The selector counts too: every agent's resolution and every listing walks it.
    size = spec.size + selector_size(selector)
    if size > max_bytes:
        where = "files" if spec.size > max_bytes else "selector"
        raise InvalidConfig(
            where, f"the config is {size} bytes; the limit is {max_bytes} (--max-config-bytes)"
        )
    version = raw.get("version")
    if version is not None:
        version = _integer(version)
        if version is None or not 0 <= version <= MAX_VERSION:
            raise InvalidConfig(
                "version",
                f"must be an integer from 0 to {MAX_VERSION} (0: the config must not exist yet)",
            )
    return ConfigRequest(spec=spec, expected_version=version)


def _strategy(raw: object) -> RolloutStrategy:
    """The `rollout` object of a PUT body: its strategy, the read-only counts left out."""
    if isinstance(raw, dict):
        raw = {k: v for k, v in raw.items() if k not in ROLLOUT_COUNT_KEYS}
    try:
        return parse_strategy(raw)
    except InvalidRollout as exc:
        raise InvalidConfig(exc.field, str(exc).split(": ", 1)[1]) from None


def file_json(f: ConfigFile) -> dict[str, str]:
    try:
        return {"content_type": f.content_type, "body": f.body.decode()}
    except UnicodeDecodeError:
        return {"content_type": f.content_type, "body_base64": base64.b64encode(f.body).decode("ascii")}


def spec_json(spec: ConfigSpec) -> dict[str, Any]:
    """The spec as a PUT body gives it (the default strategy left out)."""
    body = {
        "selector": spec.selector.to_json(),
        "priority": spec.priority,
        "files": {name: file_json(f) for name, f in spec.files},
    }
    if spec.rollout.staged:
        body["rollout"] = spec.rollout.to_json()
    return body


def spec_from_json(raw: Mapping[str, Any]) -> ConfigSpec:
    """The inverse of spec_json, for stores that keep the spec as JSON (no size limit: already checked)."""
    return parse_request("stored", dict(raw), max_bytes=1 << 62).spec
