"""Renders the Helm chart offline with Helm's own Go library (helm-python-sdk), for the deploy tests."""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path
from typing import Any

import helm_python
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "deploy" / "helm" / "opamp-gateway"
CI_FILES = sorted((CHART_DIR / "ci").glob("*.yaml"))
RELEASE = "rel"
NAMESPACE = "fleet"
FULLNAME = "rel-opamp-gateway"

Manifest = dict[str, Any]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


VALUE_SETS: dict[str, dict[str, Any]] = {"default": {}} | {
    path.name.removesuffix(".yaml"): load_yaml(path) or {} for path in CI_FILES
}
SET_NAMES = sorted(VALUE_SETS)


@functools.cache
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART_DIR)


@dataclasses.dataclass(frozen=True)
class Rendered:
    values: dict[str, Any]  # the chart's defaults merged with the value set, as Helm sees them
    manifests: tuple[Manifest, ...]
    notes: str

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str = FULLNAME) -> Manifest:
        found = [m for m in self.of_kind(kind) if m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    def maybe(self, kind: str, name: str = FULLNAME) -> Manifest | None:
        found = [m for m in self.of_kind(kind) if m["metadata"]["name"] == name]
        return found[0] if found else None

    @property
    def deployment(self) -> Manifest:
        return self.one("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.deployment["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod["containers"]
        assert [c["name"] for c in containers] == ["gateway"], "one gateway process per pod"
        container: dict[str, Any] = containers[0]
        return container

    @property
    def config(self) -> dict[str, str]:
        data: dict[str, str] = self.one("ConfigMap")["data"]
        return data

    @property
    def migrate_job(self) -> Manifest | None:
        return self.maybe("Job", f"{FULLNAME}-migrate")


def render(values: dict[str, Any]) -> Rendered:
    output = chart().render(values=copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)
    manifests: list[Manifest] = []
    notes = ""
    for path, text in output.items():
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    merged = chart().merge_values(copy.deepcopy(values))
    return Rendered(values=merged, manifests=tuple(manifests), notes=notes)


@functools.cache
def rendered_set(name: str) -> Rendered:
    return render(VALUE_SETS[name])
