"""The double's cluster state: composable templates, indices (mappings, settings, one shard each),
aliases, and the refresh that decides what searches see.

One lock guards everything: the HTTP server runs on its own thread and tests read the state from
theirs.
"""

from __future__ import annotations

import copy
import fnmatch
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from harness.es_double import errors, mapping

DEFAULT_REFRESH = "1s"
_INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9._+-]*$")
_DURATION = re.compile(r"^(\d+)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _alias_clash(alias: str) -> errors.EsError:
    return errors.EsError(
        400,
        "invalid_alias_name_exception",
        f"Invalid alias name [{alias}]: an index or data stream exists with the same name as the alias",
    )


def flat_settings(settings: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Settings as Elasticsearch keeps them: flat `index.*` keys, string values."""
    out: dict[str, str] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_settings(value, f"{name}."))
        else:
            if not name.startswith("index."):
                name = f"index.{name}"
            out[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def nested_settings(flat: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in sorted(flat.items()):
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _int_setting(low: int) -> Any:
    def check(text: str) -> bool:
        return text.lstrip("-").isdigit() and int(text) >= low

    return check


def _replicas_range(text: str) -> bool:
    low, _, high = text.partition("-")
    return low.isdigit() and (high.isdigit() or high == "all")


# The index settings the double knows, each with what Elasticsearch parses as a valid value; any other
# key is refused as an unknown setting, as Elasticsearch refuses it.
_SETTINGS: dict[str, Any] = {
    "index.number_of_shards": _int_setting(1),
    "index.number_of_replicas": _int_setting(0),
    "index.auto_expand_replicas": lambda t: t == "false" or _replicas_range(t),
    "index.refresh_interval": lambda t: t == "-1" or _DURATION.match(t) is not None,
    "index.blocks.write": lambda t: t in ("true", "false"),
    "index.blocks.read_only": lambda t: t in ("true", "false"),
    "index.max_result_window": _int_setting(1),
    "index.max_terms_count": _int_setting(1),
}
# What Elastic Cloud Serverless manages itself and refuses.
SERVERLESS_REFUSED = frozenset(
    {"index.number_of_shards", "index.number_of_replicas", "index.auto_expand_replicas"}
)
# Set by Elasticsearch, never by a request.
_PRIVATE = frozenset({"index.uuid", "index.provided_name", "index.creation_date", "index.version.created"})


def check_settings(flat: dict[str, str], serverless: bool) -> None:
    """Raise what Elasticsearch answers for index settings it refuses."""
    for key, value in sorted(flat.items()):
        if key in _PRIVATE:
            raise errors.illegal(f"private index setting [{key}] can not be set explicitly")
        check = _SETTINGS.get(key)
        if check is None:
            raise errors.illegal(
                f"unknown setting [{key}] please check that any required plugins are installed, or check "
                "the breaking changes documentation for removed settings"
            )
        if not check(value):
            raise errors.illegal(f"Failed to parse value [{value}] for setting [{key}]")
    refused = sorted(set(flat) & SERVERLESS_REFUSED) if serverless else []
    if refused:
        raise errors.illegal(
            f"Settings [{','.join(refused)}] are not available when running in serverless mode"
        )


def merge_mappings(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_mappings(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class Stored:
    source: dict[str, Any]
    seq_no: int
    version: int


@dataclass
class Index:
    name: str
    mappings: dict[str, Any]
    settings: dict[str, str]
    uuid: str = field(default_factory=lambda: uuid.uuid4().hex[:22])
    docs: dict[str, Stored] = field(default_factory=dict)
    # What searches see: the documents as of the last refresh.
    visible: dict[str, Stored] = field(default_factory=dict)
    next_seq_no: int = 0
    primary_term: int = 1
    generation: int = 0
    refreshed_at: float = field(default_factory=time.monotonic)

    @property
    def refresh_interval(self) -> float | None:
        """Seconds between periodic refreshes; None when refresh is off (-1)."""
        text = self.settings.get("index.refresh_interval", DEFAULT_REFRESH)
        if text == "-1":
            return None
        match = _DURATION.match(text)
        if match is None:
            raise errors.illegal(f"failed to parse setting [index.refresh_interval] with value [{text}]")
        return int(match.group(1)) * _UNITS[match.group(2)]

    @property
    def write_blocked(self) -> bool:
        return self.settings.get("index.blocks.write") == "true"

    def refresh(self) -> None:
        self.visible = dict(self.docs)
        self.generation += 1
        self.refreshed_at = time.monotonic()

    def take_seq_no(self) -> int:
        seq_no, self.next_seq_no = self.next_seq_no, self.next_seq_no + 1
        return seq_no


class Cluster:
    def __init__(self, *, serverless: bool = False) -> None:
        # Elastic Cloud Serverless: refuses shard and replica settings (SERVERLESS_REFUSED).
        self.serverless = serverless
        # search.max_buckets, a dynamic cluster setting (tests lower it rather than make 65,537 buckets).
        self.max_buckets = 65_536
        self.lock = threading.RLock()
        self.templates: dict[str, dict[str, Any]] = {}
        self.indices: dict[str, Index] = {}
        # alias -> index -> properties (is_write_index)
        self.aliases: dict[str, dict[str, dict[str, Any]]] = {}

    # -- names -------------------------------------------------------------------------------------

    def resolve(self, expression: str) -> list[Index]:
        """Indices named by a comma-separated list of index names, aliases and wildcards."""
        found: dict[str, Index] = {}
        for name in expression.split(","):
            if "*" in name:
                for index in self.indices:
                    if fnmatch.fnmatchcase(index, name):
                        found[index] = self.indices[index]
                for alias, members in self.aliases.items():
                    if fnmatch.fnmatchcase(alias, name):
                        found.update({i: self.indices[i] for i in members})
            elif name in self.aliases:
                found.update({i: self.indices[i] for i in self.aliases[name]})
            elif name in self.indices:
                found[name] = self.indices[name]
            else:
                raise errors.index_not_found(name)
        return list(found.values())

    def read_target(self, name: str) -> Index:
        """The one index a GET by id reads."""
        indices = self.resolve(name)
        if len(indices) != 1:
            names = ", ".join(sorted(i.name for i in indices))
            raise errors.illegal(
                f"alias [{name}] has more than one index associated with it [{names}], "
                "can't execute a single index op"
            )
        return indices[0]

    def write_target(self, name: str, require_alias: bool) -> Index:
        if name in self.aliases:
            members = self.aliases[name]
            writers = [i for i, p in members.items() if p.get("is_write_index")]
            if not writers and len(members) == 1:
                writers = list(members)
            if len(writers) != 1:
                raise errors.illegal(
                    f"no write index is defined for alias [{name}]. The write index may be explicitly "
                    "disabled using is_write_index=false or the alias points to multiple indices without one "
                    "being designated as a write index"
                )
            return self.indices[writers[0]]
        if require_alias:
            raise errors.require_alias(name)
        if name not in self.indices:
            # action.auto_create_index: a write to an unknown name creates the index from templates.
            self.create_index(name, {})
        return self.indices[name]

    # -- templates ---------------------------------------------------------------------------------

    def put_template(self, name: str, body: dict[str, Any]) -> None:
        patterns = body.get("index_patterns")
        if not patterns:
            raise errors.EsError(
                400,
                "action_request_validation_exception",
                "Validation Failed: 1: index patterns are missing;",
            )
        template = body.get("template", {})
        check_settings(flat_settings(template.get("settings", {})), self.serverless)
        mapping.check_mappings(template.get("mappings", {}))
        priority = int(body.get("priority", 0))
        for other, existing in self.templates.items():
            if other == name or int(existing.get("priority", 0)) != priority:
                continue
            theirs = existing["index_patterns"]
            if any(fnmatch.fnmatchcase(a, b) or fnmatch.fnmatchcase(b, a) for a in patterns for b in theirs):
                raise errors.illegal(
                    f"index template [{name}] has index patterns {patterns} matching patterns from existing "
                    f"templates [{other}] with patterns ({other} => {theirs}) that have the same priority "
                    f"[{priority}], multiple index templates may not match during index creation, please use "
                    "a different priority"
                )
        stored = {"composed_of": [], **copy.deepcopy(body)}
        self.templates[name] = stored

    def _template_for(self, index: str) -> dict[str, Any]:
        matching = [
            t
            for t in self.templates.values()
            if any(fnmatch.fnmatchcase(index, p) for p in t["index_patterns"])
        ]
        if not matching:
            return {}
        best = max(matching, key=lambda t: int(t.get("priority", 0)))
        template: dict[str, Any] = best.get("template", {})
        return template

    # -- indices -----------------------------------------------------------------------------------

    def create_index(self, name: str, body: dict[str, Any]) -> Index:
        if not _INDEX_NAME.match(name) or name != name.lower():
            raise errors.EsError(
                400,
                "invalid_index_name_exception",
                f"Invalid index name [{name}], must be lowercase",
                index=name,
            )
        if name in self.indices:
            raise errors.EsError(
                400,
                "resource_already_exists_exception",
                f"index [{name}/{self.indices[name].uuid}] already exists",
                index_uuid=self.indices[name].uuid,
                index=name,
            )
        if name in self.aliases:
            raise errors.EsError(
                400,
                "invalid_index_name_exception",
                f"Invalid index name [{name}], already exists as alias",
                index=name,
            )
        template = self._template_for(name)
        requested = flat_settings(body.get("settings", {}))
        check_settings(requested, self.serverless)
        mapping.check_mappings(body.get("mappings", {}))
        settings = {
            "index.number_of_shards": "1",
            "index.number_of_replicas": "1",
            **flat_settings(template.get("settings", {})),
            **requested,
        }
        mappings = merge_mappings(template.get("mappings", {}), body.get("mappings", {}))
        index = Index(name, mappings, settings)
        aliases = {**template.get("aliases", {}), **body.get("aliases", {})}
        for alias in aliases:
            if alias in self.indices:
                raise _alias_clash(alias)
        self.indices[name] = index
        for alias, props in aliases.items():
            self.aliases.setdefault(alias, {})[name] = dict(props or {})
        return index

    def delete_index(self, expression: str) -> None:
        if "*" in expression or expression == "_all":
            # action.destructive_requires_name, true by default since 8.0
            raise errors.illegal("Wildcard expressions or all indices are not allowed")
        for index in self.resolve(expression):
            del self.indices[index.name]
            for members in self.aliases.values():
                members.pop(index.name, None)
        self.aliases = {a: m for a, m in self.aliases.items() if m}

    def update_aliases(self, actions: list[dict[str, Any]]) -> None:
        staged = copy.deepcopy(self.aliases)
        for action in actions:
            ((kind, spec),) = action.items()
            indices = [i.name for i in self.resolve(spec["index"])] if "index" in spec else []
            alias = spec.get("alias")
            if kind == "add":
                if alias in self.indices:
                    raise _alias_clash(alias)
                for index in indices:
                    props = {"is_write_index": spec["is_write_index"]} if "is_write_index" in spec else {}
                    staged.setdefault(alias, {})[index] = props
            elif kind == "remove":
                for index in indices:
                    if index not in staged.get(alias, {}):
                        raise errors.EsError(404, "aliases_not_found_exception", f"aliases [{alias}] missing")
                    del staged[alias][index]
            else:
                raise errors.illegal(f"[aliases] unknown action [{kind}]")
        self.aliases = {a: m for a, m in staged.items() if m}

    def put_settings(self, expression: str, settings: dict[str, Any]) -> None:
        changes = flat_settings(settings)
        check_settings(changes, self.serverless)
        static = sorted(k for k in changes if k == "index.number_of_shards")
        if static:
            raise errors.illegal(f"Can't update non dynamic settings [[{static[0]}]] for open indices")
        for index in self.resolve(expression):
            index.settings.update(changes)
