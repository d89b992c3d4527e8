"""Packages in Elasticsearch: documents in the configs index, told apart by `kind`.

A package named N is the document `package~N` (a config name never holds a '~', so the ids cannot
clash) with `kind: "package"`; config reads leave those out. The document has a config document's
fields (`version` is the package's revision), its last revisions in `history` and its rollout record
in `rollout_record`, written by the same conditional writes as configs (elasticsearch_configs.py), and
`package.name` / `package.version` / `package.type` (configs mapping version 4) for operators browsing
the index.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.fleet.packages import (
    InvalidPackage,
    Package,
    PackageVersion,
    spec_from_json,
    spec_json,
    version_of,
)
from gateway.fleet.render import timestamp
from gateway.store.elasticsearch_configs import Documents
from gateway.store.elasticsearch_documents import UnreadableDocument

KIND = "package"
ID_PREFIX = "package~"


def package_document(package: Package) -> dict[str, Any]:
    spec = package.spec
    return {
        "kind": KIND,
        "name": package.name,
        "version": package.version,
        "hash": package.hash,
        "priority": spec.priority,
        "created_at": timestamp(package.created_at),
        "updated_at": timestamp(package.updated_at),
        "selector": spec.selector.to_json(),
        "spec": spec_json(spec),
        "package": {"name": spec.package_name, "version": spec.package_version, "type": spec.type},
        "opamp": {"created_at": float(package.created_at), "updated_at": float(package.updated_at)},
    }


def package_from_source(source: Mapping[str, Any]) -> Package:
    try:
        return Package(
            name=source["name"],
            spec=spec_from_json(source["spec"]),
            version=int(source["version"]),
            created_at=float(source["opamp"]["created_at"]),
            updated_at=float(source["opamp"]["updated_at"]),
            hash=source["hash"],
        )
    except (KeyError, TypeError, ValueError, InvalidPackage) as exc:
        raise UnreadableDocument(f"not a package document of this gateway: {exc!r}") from None


def history_entry(entry: PackageVersion) -> dict[str, Any]:
    return {
        "version": entry.version,
        "hash": entry.hash,
        "created_at": entry.created_at,
        "spec": spec_json(entry.spec),
    }


def history_from_source(source: Mapping[str, Any]) -> list[PackageVersion]:
    try:
        return [
            PackageVersion(
                version=int(item["version"]),
                hash=item["hash"],
                created_at=float(item["created_at"]),
                spec=spec_from_json(item["spec"]),
            )
            for item in source.get("history", ())
        ]
    except (KeyError, TypeError, ValueError, InvalidPackage) as exc:
        raise UnreadableDocument(f"not a package history of this gateway: {exc!r}") from None


PACKAGES: Documents[Package, PackageVersion] = Documents(
    what="package",
    id_prefix=ID_PREFIX,
    kind=KIND,
    document=package_document,
    from_source=package_from_source,
    history_entry=history_entry,
    history_from_source=history_from_source,
    version_of=version_of,
    make=Package,
    number=lambda v: v.version,
)
