"""Packages: agent installation packages (a collector build, an add-on) offered to agents by selector.

A package as the admin API takes it (`PUT /api/v1/packages/{name}`):

    {"type": "top_level",
     "version": "0.121.0",
     "file": {"download_url": "https://artifacts.example.com/otelcol-contrib_0.121.0_linux_amd64.tar.gz",
              "content_hash": "<sha256 of the file, 64 hex digits>",
              "signature": "<base64, optional>",
              "headers": {"Authorization": "Bearer ..."}},
     "selector": {"match": {"service.name": "otelcol-contrib"}},
     "priority": 0,
     "package_name": "otelcol-contrib",
     "rollout": {"strategy": "staged", "waves": [5, 25, 100]}}

The gateway never hosts package bytes: agents download the file from `download_url` (an artifact
repository) and check it against `content_hash` (and `signature`, when they verify signatures).
`package_name` is the name agents get the package under (the key of `packages_available`, default:
the package's own name); of the packages with one package_name whose selector matches an agent, the
highest priority (then name, a-z) is the one it gets, as with config files.

The store keeps the parsed spec plus `version` (the *revision*: 1 on create, +1 on every change of
content; the API calls it `revision`, since `version` is the package's own version string),
timestamps and `hash`, the SHA-256 of the spec's canonical JSON: a PUT of identical content changes
nothing. What an agent is offered (PackageAvailable, its `hash`) is in package_set.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from gateway.fleet import selector as selector_mod
from gateway.fleet.configs import (
    MAX_PRIORITY,
    MAX_VERSION,
    NAME_PATTERN,
    InvalidConfig,
    check_name,
    shown_key,
)
from gateway.fleet.selector import Selector
from gateway.fleet.waves import ALL_AT_ONCE, InvalidRollout, RolloutStrategy, parse_strategy
from gateway.proto import opamp_pb2 as pb

PackageType = Literal["top_level", "addon"]
PACKAGE_TYPES: dict[str, int] = {"top_level": pb.PackageType_TopLevel, "addon": pb.PackageType_Addon}
MAX_HEADERS = 64
MAX_HEADER_NAME = 256
MAX_TEXT = 8 * 1024
MAX_URL = 2048
MAX_PACKAGE_VERSION = 256
# A detached signature (GPG, cosign) is a few hundred bytes; this leaves room for a certificate chain.
MAX_SIGNATURE = 64 * 1024
# The rules as JSON Schema patterns too (the OpenAPI document uses them; character classes only, so
# Python and ECMA-262 agree).
HTTPS_URL_PATTERN = r"^https://[^\x00-\x20\x7f-\x9f]+$"
ANY_URL_PATTERN = r"^https?://[^\x00-\x20\x7f-\x9f]+$"
CONTENT_HASH_PATTERN = r"^[0-9a-fA-F]{64}$"
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
HEADER_VALUE_PATTERN = r"^[^\r\n]*$"
VERSION_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"
BASE64_PATTERN = r"^[A-Za-z0-9+/]*={0,2}$"
_HTTPS_URL = re.compile(HTTPS_URL_PATTERN)
_ANY_URL = re.compile(ANY_URL_PATTERN)
_CONTENT_HASH = re.compile(CONTENT_HASH_PATTERN)
_HEADER_NAME = re.compile(HEADER_NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)
_FILE_FIELDS = frozenset({"download_url", "content_hash", "signature", "headers"})
_SPEC_FIELDS = frozenset({"type", "version", "file", "selector", "priority", "package_name", "rollout"})
# Computed by the server: accepted back in a PUT (GET -> edit -> PUT works) and ignored. `revision`
# is different: when given, it is a precondition (0: the package must not exist yet).
_READ_ONLY = frozenset({"name", "hash", "created_at", "updated_at"})
# The counts a package's GET adds to its `rollout` object (gateway/fleet/package_status.py): a PUT
# ignores them, so GET -> edit -> PUT works there too.
ROLLOUT_COUNT_KEYS = frozenset(
    {
        "matched",
        "installed",
        "installing",
        "failed",
        "pending",
        "unsupported",
        "none",
        "offline",
        "disconnected",
    }
)


class InvalidPackage(InvalidConfig):
    """A package body the admin API refuses; `field` is the JSON path of the bad part."""


@dataclass(frozen=True, slots=True)
class PackageFile:
    """Where agents download the package from: a DownloadableFile."""

    download_url: str
    # The SHA-256 of the file's bytes (32 bytes).
    content_hash: bytes
    signature: bytes = b""
    # Sorted by name: sent by the agent with its GET of download_url.
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class PackageSpec:
    """What the operator decides: the part of a package that a PUT replaces."""

    selector: Selector
    priority: int
    type: PackageType
    # The package's own version, as agents report it back (agent_has_version).
    package_version: str
    file: PackageFile
    # The name agents get it under (the key of packages_available).
    package_name: str
    rollout: RolloutStrategy = ALL_AT_ONCE

    def digest(self) -> str:
        """SHA-256 hex of the canonical JSON: equal specs hash equal on every node. A staged strategy
        is part of it, the default is not (as for configs)."""
        canonical = json.dumps(spec_json(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def same_content(self, other: PackageSpec) -> bool:
        """Whether agents get the same from both: everything but the rollout strategy is equal."""
        return (
            self.selector,
            self.priority,
            self.type,
            self.package_version,
            self.file,
            self.package_name,
        ) == (
            other.selector,
            other.priority,
            other.type,
            other.package_version,
            other.file,
            other.package_name,
        )


@dataclass(frozen=True, slots=True)
class Package:
    name: str
    spec: PackageSpec
    # The revision (the API's `revision`): the rollout machinery calls it version, as for configs.
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
class PackageRequest:
    """A parsed PUT body: the spec, and the revision the caller expects to replace (None: any)."""

    spec: PackageSpec
    expected_version: int | None


@dataclass(frozen=True, slots=True)
class PackageVersion:
    """One stored revision of a package: its spec as it was, and when it was stored."""

    version: int
    hash: str
    created_at: float
    spec: PackageSpec


def version_of(package: Package) -> PackageVersion:
    """The history entry a store writes along with `package`."""
    return PackageVersion(
        version=package.version, hash=package.hash, created_at=package.updated_at, spec=package.spec
    )


def restored(name: str, entry: PackageVersion) -> Package:
    """A kept revision as a package (what agents outside a rollout's waves keep)."""
    return Package(name, entry.spec, entry.version, entry.created_at, entry.created_at, entry.hash)


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _text(value: object, field: str, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidPackage(field, f"must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise InvalidPackage(field, f"at most {limit} characters")
    return value


def _headers(raw: object) -> tuple[tuple[str, str], ...]:
    field = "file.headers"
    if not isinstance(raw, dict):
        raise InvalidPackage(field, "must be an object of HTTP header name -> value")
    if len(raw) > MAX_HEADERS:
        raise InvalidPackage(field, f"at most {MAX_HEADERS} headers")
    out: list[tuple[str, str]] = []
    for key, value in raw.items():
        if len(key) > MAX_HEADER_NAME or not _HEADER_NAME.fullmatch(key):
            raise InvalidPackage(f"{field}.{shown_key(key)}", "is not an HTTP header name")
        text = _text(value, f"{field}.{key}", MAX_TEXT)
        if "\n" in text or "\r" in text:
            raise InvalidPackage(f"{field}.{key}", "must not contain line breaks")
        out.append((key, text))
    return tuple(sorted(out))


def _file(raw: object, allow_insecure: bool) -> PackageFile:
    if not isinstance(raw, dict):
        raise InvalidPackage("file", "must be an object with download_url and content_hash")
    unknown = set(raw) - _FILE_FIELDS
    if unknown:
        raise InvalidPackage(f"file.{shown_key(sorted(unknown)[0])}", "unknown field")
    if "download_url" not in raw:
        raise InvalidPackage("file.download_url", "is required")
    url = _text(raw["download_url"], "file.download_url", MAX_URL)
    if not (_ANY_URL if allow_insecure else _HTTPS_URL).fullmatch(url):
        rule = (
            "an http:// or https:// URL"
            if allow_insecure
            else "an https:// URL (http:// only with --allow-insecure-package-urls)"
        )
        raise InvalidPackage("file.download_url", f"must be {rule} without spaces, got {url[:140]!r}")
    if "content_hash" not in raw:
        raise InvalidPackage("file.content_hash", "is required: the SHA-256 of the file, 64 hex digits")
    digest = raw["content_hash"]
    if not isinstance(digest, str) or not _CONTENT_HASH.fullmatch(digest):
        raise InvalidPackage("file.content_hash", "must be the SHA-256 of the file: 64 hex digits")
    signature = b""
    if "signature" in raw:
        text = _text(raw["signature"], "file.signature", MAX_SIGNATURE * 4 // 3 + 4)
        try:
            signature = base64.b64decode(text, validate=True)
        except ValueError:  # binascii.Error, or characters outside ASCII
            raise InvalidPackage("file.signature", "is not valid base64") from None
    return PackageFile(
        download_url=url,
        content_hash=bytes.fromhex(digest),
        signature=signature,
        headers=_headers(raw.get("headers", {})),
    )


def _strategy(raw: object) -> RolloutStrategy:
    """The `rollout` object of a PUT body: its strategy, the read-only counts left out."""
    if isinstance(raw, dict):
        raw = {k: v for k, v in raw.items() if k not in ROLLOUT_COUNT_KEYS}
    try:
        return parse_strategy(raw)
    except InvalidRollout as exc:
        raise InvalidPackage(exc.field, str(exc).split(": ", 1)[1]) from None


def parse_request(name: str, raw: object, *, allow_insecure: bool = False) -> PackageRequest:
    """Validate a PUT body for package `name`; InvalidPackage names the first bad field.
    `allow_insecure`: http:// download URLs are accepted (--allow-insecure-package-urls)."""
    try:
        check_name(name, "package")
    except InvalidConfig as exc:
        raise InvalidPackage("name", str(exc).split(": ", 1)[1]) from None
    if not isinstance(raw, dict):
        raise InvalidPackage("body", "must be a JSON object with version, file and selector")
    unknown = set(raw) - _SPEC_FIELDS - _READ_ONLY - {"revision"}
    if unknown:
        raise InvalidPackage(shown_key(sorted(unknown)[0]), "unknown field")
    kind = raw.get("type", "top_level")
    if not isinstance(kind, str) or kind not in PACKAGE_TYPES:
        raise InvalidPackage("type", f"must be top_level or addon, got {str(kind)[:40]!r}")
    if "version" not in raw:
        raise InvalidPackage("version", "is required: the package's version, e.g. 0.121.0")
    version = _text(raw["version"], "version", MAX_PACKAGE_VERSION)
    if not _VERSION.fullmatch(version):
        raise InvalidPackage("version", "must be 1-256 characters without control characters")
    if "file" not in raw:
        raise InvalidPackage("file", "is required: download_url and content_hash")
    file = _file(raw["file"], allow_insecure)
    if "selector" not in raw:
        raise InvalidPackage("selector", "is required (use {} to stage a package that matches no agent)")
    try:
        selector = selector_mod.parse(raw["selector"])
    except selector_mod.InvalidSelector as exc:
        raise InvalidPackage(exc.field, str(exc).split(": ", 1)[1]) from None
    priority = _integer(raw.get("priority", 0))
    if priority is None or abs(priority) > MAX_PRIORITY:
        raise InvalidPackage("priority", f"must be an integer from -{MAX_PRIORITY} to {MAX_PRIORITY}")
    package_name = raw.get("package_name", name)
    if not isinstance(package_name, str) or not NAME_PATTERN.match(package_name):
        raise InvalidPackage(
            "package_name",
            "must be 1-128 characters of a-z, 0-9, '.', '_', '-', starting and ending with a letter or digit",
        )
    spec = PackageSpec(
        selector=selector,
        priority=priority,
        type=cast(PackageType, kind),  # checked against PACKAGE_TYPES above
        package_version=version,
        file=file,
        package_name=package_name,
        rollout=_strategy(raw["rollout"]) if "rollout" in raw else ALL_AT_ONCE,
    )
    expected = raw.get("revision")
    if expected is not None:
        expected = _integer(expected)
        if expected is None or not 0 <= expected <= MAX_VERSION:
            raise InvalidPackage(
                "revision", f"must be an integer from 0 to {MAX_VERSION} (0: the package must not exist yet)"
            )
    return PackageRequest(spec=spec, expected_version=expected)


def file_json(f: PackageFile) -> dict[str, Any]:
    out: dict[str, Any] = {"download_url": f.download_url, "content_hash": f.content_hash.hex()}
    if f.signature:
        out["signature"] = base64.b64encode(f.signature).decode("ascii")
    if f.headers:
        out["headers"] = dict(f.headers)
    return out


def spec_json(spec: PackageSpec) -> dict[str, Any]:
    """The spec as a PUT body gives it (the default strategy left out)."""
    body: dict[str, Any] = {
        "type": spec.type,
        "version": spec.package_version,
        "file": file_json(spec.file),
        "selector": spec.selector.to_json(),
        "priority": spec.priority,
        "package_name": spec.package_name,
    }
    if spec.rollout.staged:
        body["rollout"] = spec.rollout.to_json()
    return body


def spec_from_json(raw: Mapping[str, Any]) -> PackageSpec:
    """The inverse of spec_json, for stores that keep the spec as JSON. A stored http:// URL stays
    readable whatever --allow-insecure-package-urls says now (it was accepted when it was stored)."""
    return parse_request("stored", dict(raw), allow_insecure=True).spec
