"""Packages for tests: a valid body, and a stored Package made from it."""

from __future__ import annotations

import hashlib
from typing import Any

from gateway.fleet.packages import Package, PackageSpec, parse_request

SERVICE = "otelcol-contrib"


def content_hash(version: str) -> str:
    """A made-up file's SHA-256 (hex) for a version."""
    return hashlib.sha256(f"otelcol-contrib {version}".encode()).hexdigest()


def body(version: str = "0.121.0", **extra: Any) -> dict[str, Any]:
    """A PUT body of a collector build, for agents with service.name otelcol-contrib."""
    raw: dict[str, Any] = {
        "type": "top_level",
        "version": version,
        "file": {
            "download_url": f"https://artifacts.example.com/otelcol-contrib_{version}_linux_amd64.tar.gz",
            "content_hash": content_hash(version),
        },
        "selector": {"match": {"service.name": SERVICE}},
    }
    raw.update(extra)
    return raw


def spec(version: str = "0.121.0", name: str = "otelcol", **extra: Any) -> PackageSpec:
    return parse_request(name, body(version, **extra)).spec


def package(name: str = "otelcol", version: str = "0.121.0", revision: int = 1, **extra: Any) -> Package:
    s = spec(version, name, **extra)
    return Package(name, s, revision, 1.0, 1.0, s.digest())
