"""The Helm chart in deploy/helm/opamp-gateway, rendered and linted offline with Helm's own Go library.

helm-python-sdk (`helm_python`) binds Helm v4's SDK, so `render` is a real `helm template` and `lint`
a real `helm lint`; no helm binary and no cluster are involved. Every rendered manifest is checked with
kubernetes-validate's strict schemas (unknown fields rejected) for the oldest and the newest Kubernetes
the chart supports, and the invariants between the chart and the gateway are asserted on the objects.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import functools
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

import gateway
from gateway import server as gateway_server, settings as gateway_settings
from gateway.auth import parse_credentials
from gateway.cli import _refuse_insecure
from gateway.node import drain as gateway_drain
from tests.deploy.rendering import (
    CHART_DIR,
    CI_FILES,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    ROOT,
    SET_NAMES,
    VALUE_SETS,
    Rendered,
    chart,
    load_yaml,
    render,
    rendered_set as rendered_value_set,
)

# Oldest and newest Kubernetes the chart supports. The oldest is Chart.yaml's kubeVersion floor (checked
# below); the newest is the newest kubernetes-validate ships schemas for.
OLDEST_KUBERNETES = "1.29.0"
NEWEST_KUBERNETES = "1.37.0"

# The gateway's health endpoints on the OpAMP port (design.md, "External interfaces").
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"

# OPAMP_GATEWAY_* variables the chart already sets for settings that other issues are adding to
# gateway/settings.py. A name the chart uses must be a Settings field or listed here; once a setting
# lands in Settings its entry here is redundant and can go.
UPCOMING_ENV: frozenset[str] = frozenset()
SETTINGS_ENV = frozenset(
    gateway_settings.env_name(f.name) for f in dataclasses.fields(gateway_settings.Settings)
)
KNOWN_ENV = SETTINGS_ENV | UPCOMING_ENV

# Kinds whose schema is a CRD, which kubernetes-validate does not ship.
CRD_KINDS = frozenset({"ServiceMonitor"})

# Every literal credential the chart accepts, each set to a recognisable value.
SENTINELS = {
    "es-url": "https://sentinel-es-url.invalid:9200",
    "es-api-key": "sentinel-es-api-key",
    "migrate-api-key": "sentinel-migrate-api-key",
    "redis-url": "rediss://:sentinel-redis-password@redis.invalid:6380/0",
    "agent-keys": "sentinel-agent-key-1\nsentinel-agent-key-2\n",
    "admin-token": "sentinel-admin-token",
}
SENTINEL_VALUES: dict[str, Any] = {
    "store": {"type": "elasticsearch"},
    "elasticsearch": {
        "url": SENTINELS["es-url"],
        "apiKey": SENTINELS["es-api-key"],
        "migrate": {"apiKey": SENTINELS["migrate-api-key"]},
    },
    "redis": {"url": SENTINELS["redis-url"]},
    "auth": {
        "agentKeys": {"value": SENTINELS["agent-keys"]},
        "adminToken": {"value": SENTINELS["admin-token"]},
    },
    "replicaCount": 2,
}


@functools.cache
def rendered_set(name: str) -> Rendered:
    """A ci/ value set, "default", or "sentinels" (every literal credential set to a marked value)."""
    return render(SENTINEL_VALUES) if name == "sentinels" else rendered_value_set(name)


@functools.cache
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(CHART_DIR / "values.schema.json")
    return loaded


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def container_env_names(rendered: Rendered, container: dict[str, Any]) -> list[str]:
    """Names the container's environment gets: its env list plus the chart ConfigMap's keys."""
    names = [e["name"] for e in container.get("env", [])]
    for source in container.get("envFrom", []):
        if "configMapRef" in source and source["configMapRef"]["name"] == FULLNAME:
            names.extend(rendered.config)
    return names


def secret_refs(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """env name -> (Secret name, key) for every secretKeyRef of a container."""
    refs = {}
    for env in container.get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            refs[env["name"]] = (ref["name"], ref["key"])
    return refs


def pod_specs(rendered: Rendered) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "Deployment", rendered.pod
    for job in rendered.of_kind("Job"):
        yield f"Job {job['metadata']['name']}", job["spec"]["template"]["spec"]
    for pod in rendered.of_kind("Pod"):
        yield f"Pod {pod['metadata']['name']}", pod["spec"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- values and schema ---------------------------------------------------------------------------


def without_required(node: Any) -> Any:
    """The schema with every `required` removed: what a partial values file (ci/*.yaml) must meet."""
    if isinstance(node, dict):
        return {k: without_required(v) for k, v in node.items() if k != "required"}
    if isinstance(node, list):
        return [without_required(v) for v in node]
    return node


def test_schema_is_a_valid_draft7_schema() -> None:
    jsonschema.Draft7Validator.check_schema(schema())


def test_values_yaml_validates_against_the_schema() -> None:
    jsonschema.Draft7Validator(schema()).validate(load_yaml(CHART_DIR / "values.yaml"))


@pytest.mark.parametrize("path", CI_FILES, ids=lambda p: p.name)
def test_ci_values_validate_against_the_schema(path: Path) -> None:
    # Alone: no unknown key, wrong type or bad enum in the file itself.
    jsonschema.Draft7Validator(without_required(schema())).validate(load_yaml(path))
    # Merged over the defaults, as `helm install -f` sees it: the required fields too.
    jsonschema.Draft7Validator(schema()).validate(chart().merge_values(load_yaml(path)))


def test_there_are_ci_value_sets_for_the_documented_cases() -> None:
    assert {"minimal-values", "production-values", "existing-secrets-values"} <= set(VALUE_SETS)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaz": 2}, "additional properties 'replicaz' not allowed"),
        ({"store": {"type": "mysql"}}, "/store/type"),
        ({"replicaCount": "2"}, "/replicaCount"),
        ({"gateway": {"logLevel": "loud"}}, "/gateway/logLevel"),
        ({"gateway": {"port": 70000}}, "/gateway/port"),
        ({"elasticsearch": {"url": "fleet-es:9200"}}, "/elasticsearch/url"),
        ({"image": {"repository": None}}, "missing property 'repository'"),
        ({"ingress": {"enabled": True, "hostz": ["a"]}}, "additional properties 'hostz' not allowed"),
    ],
)
def test_helm_rejects_values_the_schema_forbids(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(message)):
        chart().render(values=values, name=RELEASE)


def schema_leaves(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Paths of the values the chart defines: recurse where the schema lists properties."""
    for key, sub in node.get("properties", {}).items():
        if key == "global":
            continue
        path = f"{prefix}{key}"
        if "properties" in sub:
            yield from schema_leaves(sub, path + ".")
        else:
            yield path


def lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        assert isinstance(node, dict) and part in node, f"values.yaml has no {path}"
        node = node[part]
    return node


def test_every_schema_property_has_a_default_in_values_yaml() -> None:
    values = load_yaml(CHART_DIR / "values.yaml")
    for path in schema_leaves(schema()):
        lookup(values, path)


def test_readme_documents_every_value_and_only_real_ones() -> None:
    readme = (CHART_DIR / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", readme, flags=re.MULTILINE))
    defined = set(schema_leaves(schema()))
    assert defined - documented == set(), "values missing from the README's table"
    assert documented - defined == set(), "README documents values that do not exist"


def test_chart_defaults_match_the_gateway_defaults() -> None:
    """The chart repeats the gateway's defaults; they must not drift apart."""
    values = load_yaml(CHART_DIR / "values.yaml")
    defaults = gateway_settings.Settings()
    # Structured logs in a cluster (the CLI defaults to text); sockets re-spread over the pods every
    # hour or so, since pods come and go in a cluster (the CLI leaves sockets open, issue 21).
    deliberate: dict[str, object] = {"logFormat": "json", "maxConnectionAge": 3600}
    pairs = {key: re.sub(r"([A-Z])", r"_\1", key).lower() for key in values["gateway"]}
    for key, field in pairs.items():
        expected = deliberate.get(key, getattr(defaults, field))
        assert values["gateway"][key] == expected, f"gateway.{key}: chart {values['gateway'][key]!r}"
    assert values["drain"]["seconds"] == defaults.drain_seconds
    assert values["drain"]["retryWindow"] == defaults.drain_retry_window


def test_every_gateway_setting_can_be_set_through_the_chart() -> None:
    """When a setting lands in gateway/settings.py, the chart has to expose it (or say why not here)."""
    not_in_chart: dict[str, str] = {  # env name -> why the chart never sets it
        "OPAMP_GATEWAY_ELASTICSEARCH_USERNAME": "the chart authenticates to Elasticsearch with API keys",
        "OPAMP_GATEWAY_ELASTICSEARCH_PASSWORD": "the chart authenticates to Elasticsearch with API keys",
        "OPAMP_GATEWAY_AGENT_KEYS": "keys go in a mounted file (AGENT_KEYS_FILE), re-read without a restart",
    }
    used: set[str] = set()
    for name in [*SET_NAMES, "sentinels"]:
        rendered = rendered_set(name)
        used.update(container_env_names(rendered, rendered.container))
    missing = SETTINGS_ENV - used - set(not_in_chart)
    assert missing == set(), "settings no value set of the chart passes to the gateway"


def test_app_version_is_the_gateway_version_and_the_default_image_tag() -> None:
    metadata = chart().metadata
    assert metadata["appVersion"] == gateway.__version__
    assert metadata["kubeVersion"] == f">={OLDEST_KUBERNETES}-0"
    assert rendered_set("default").container["image"] == f"opamp-gateway:{gateway.__version__}"


# --- helm lint and Kubernetes schemas ------------------------------------------------------------


@pytest.mark.parametrize("kube_version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
@pytest.mark.parametrize("name", SET_NAMES)
def test_helm_lint_is_clean(name: str, kube_version: str) -> None:
    report = helm_python.lint(
        CHART_DIR, values=copy.deepcopy(VALUE_SETS[name]), strict=True, kube_version=f"v{kube_version}"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert problems == [] and report["errors"] == []


@pytest.mark.parametrize("kube_version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
@pytest.mark.parametrize("name", [*SET_NAMES, "sentinels"])
def test_every_manifest_passes_strict_kubernetes_validation(name: str, kube_version: str) -> None:
    rendered = rendered_set(name)
    failures = []
    checked = 0
    for manifest in rendered.manifests:
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        if manifest["kind"] in CRD_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(manifest, kube_version, strict=True)
            continue
        try:
            kubernetes_validate.validate(manifest, kube_version, strict=True)
            checked += 1
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            failures.append(f"{where}: {path}: {error.message}")
    assert failures == []
    assert checked >= 5  # Deployment, Service, ConfigMap, PDB, ServiceAccount or test Pod at least


# --- invariants between the chart and the gateway ------------------------------------------------


@pytest.mark.parametrize("name", SET_NAMES)
def test_env_names_are_the_gateways(name: str) -> None:
    rendered = rendered_set(name)
    containers = [rendered.container]
    if rendered.migrate_job:
        containers.append(rendered.migrate_job["spec"]["template"]["spec"]["containers"][0])
    extra = {e["name"] for e in rendered.values.get("extraEnv", [])}
    for container in containers:
        names = container_env_names(rendered, container)
        assert len(names) == len(set(names)), f"duplicate env in {container['name']}: {names}"
        unknown = {n for n in names if n not in KNOWN_ENV and n not in extra}
        assert unknown == set(), f"{container['name']} sets variables the gateway does not read"


@pytest.mark.parametrize("name", SET_NAMES)
def test_configmap_loads_into_the_gateway_settings(name: str) -> None:
    """The ConfigMap is exactly what `opamp-gateway serve` reads; its values must parse."""
    rendered = rendered_set(name)
    environ = {k: v for k, v in rendered.config.items() if k in SETTINGS_ENV}
    environ["OPAMP_GATEWAY_NODE_ID"] = "rel-opamp-gateway-7d9f-abcde"  # the pod name, from fieldRef
    loaded = gateway_settings.load([], environ)
    ports = {p["name"]: p["containerPort"] for p in rendered.container["ports"]}
    assert (loaded.host, loaded.admin_host) == ("0.0.0.0", "0.0.0.0")
    assert (loaded.port, loaded.admin_port) == (ports["opamp"], ports["admin"])
    assert loaded.insecure_allow_anonymous is rendered.values["auth"]["allowAnonymous"]
    node_id = next(e for e in rendered.container["env"] if e["name"] == "OPAMP_GATEWAY_NODE_ID")
    assert node_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_anonymous_access_only_when_asked_for() -> None:
    assert "OPAMP_GATEWAY_INSECURE_ALLOW_ANONYMOUS" not in rendered_set("default").config
    assert "OPAMP_GATEWAY_INSECURE_ALLOW_ANONYMOUS" not in rendered_set("production-values").config
    assert rendered_set("minimal-values").config["OPAMP_GATEWAY_INSECURE_ALLOW_ANONYMOUS"] == "true"
    assert "WARNING: auth.allowAnonymous=true" in rendered_set("minimal-values").notes
    # Anonymous means anonymous: nothing is generated behind the user's back.
    assert not any(m["kind"] == "Secret" for m in rendered_set("minimal-values").manifests)
    unprotected = render({"auth": {"generate": False}})
    assert "no authentication is configured" in unprotected.notes
    assert "OPAMP_GATEWAY_AGENT_KEYS_FILE" not in unprotected.config


def _serve_settings(rendered: Rendered) -> gateway_settings.Settings:
    """What `opamp-gateway serve` reads in the pod: the ConfigMap, the env list (non-secret values)."""
    environ = {k: v for k, v in rendered.config.items() if k in SETTINGS_ENV}
    environ["OPAMP_GATEWAY_NODE_ID"] = "rel-opamp-gateway-7d9f-abcde"
    from_secrets = {
        "OPAMP_GATEWAY_REDIS_URL": "redis://from-a-secret:6379/0",
        "OPAMP_GATEWAY_ELASTICSEARCH_URL": "https://from-a-secret:9200",
    }
    for env in rendered.container.get("env", []):
        if env["name"] in SETTINGS_ENV and "valueFrom" in env:
            environ[env["name"]] = from_secrets.get(env["name"], "a-secret-value")
    return gateway_settings.load([], environ)


@pytest.mark.parametrize("name", [*SET_NAMES, "sentinels"])
def test_every_render_passes_the_secure_by_default_rule(name: str) -> None:
    """Either the auth files are passed (and mounted where the gateway looks) or anonymous access is
    explicitly asked for: a pod never starts into `serve`'s refusal (CrashLoopBackOff)."""
    rendered = rendered_set(name)
    loaded = _serve_settings(rendered)
    assert _refuse_insecure(loaded) is None
    if loaded.insecure_allow_anonymous:
        assert rendered.values["auth"]["allowAnonymous"] is True
        return
    mounts = {m["mountPath"]: m["name"] for m in rendered.container["volumeMounts"]}
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    for path in (loaded.agent_keys_file, loaded.admin_token_file):
        directory, file = path.rsplit("/", 1)
        secret = volumes[mounts[directory]]["secret"]
        assert [item["path"] for item in secret["items"]] == [file]
        written = [m for m in rendered.of_kind("Secret") if m["metadata"]["name"] == secret["secretName"]]
        if written:  # else an existing Secret the user made
            assert secret["items"][0]["key"] in written[0]["data"]


def test_default_install_generates_an_agent_key_and_an_admin_token() -> None:
    rendered = rendered_set("default")
    keys = rendered.one("Secret", f"{FULLNAME}-agent-keys")
    token = rendered.one("Secret", f"{FULLNAME}-admin-token")
    agent_key = base64.b64decode(keys["data"]["agent-keys"]).decode()
    admin_token = base64.b64decode(token["data"]["admin-token"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{48}\n", agent_key) and re.fullmatch(r"[A-Za-z0-9]{48}", admin_token)
    # The gateway accepts the generated file as it is.
    assert len(parse_credentials(agent_key, "agent-keys")) == 1
    for manifest in rendered.manifests:
        if manifest["kind"] != "Secret":
            text = yaml.safe_dump(manifest)
            assert agent_key.strip() not in text and admin_token not in text, manifest["kind"]
    assert agent_key.strip() not in rendered.notes and admin_token not in rendered.notes
    assert "generated by the chart" in rendered.notes
    assert f"get secret {FULLNAME}-admin-token" in rendered.notes
    assert f"get secret {FULLNAME}-agent-keys" in rendered.notes
    # Kept across upgrades: the value is read back from the release's own Secret when it exists.
    template = (CHART_DIR / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    assert 'lookup "v1" "Secret" .root.Release.Namespace .name' in template


def test_given_credentials_are_never_replaced_by_generated_ones() -> None:
    rendered = rendered_set("sqlite-persistence-values")
    data = rendered.one("Secret", f"{FULLNAME}-agent-keys")["data"]
    assert (
        base64.b64decode(data["agent-keys"]).decode()
        == VALUE_SETS["sqlite-persistence-values"]["auth"]["agentKeys"]["value"]
    )
    assert "generated by the chart" not in rendered.notes
    existing = rendered_set("existing-secrets-values")
    assert existing.of_kind("Secret") == []


@pytest.mark.parametrize("name", SET_NAMES)
def test_probes_use_the_gateways_health_endpoints(name: str) -> None:
    rendered = rendered_set(name)
    container = rendered.container
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    scheme = "HTTPS" if "OPAMP_GATEWAY_TLS_CERT" in rendered.config else "HTTP"
    for probe, path in [
        ("startupProbe", LIVENESS_PATH),
        ("livenessProbe", LIVENESS_PATH),
        ("readinessProbe", READINESS_PATH),
    ]:
        get = container[probe]["httpGet"]
        assert (get["path"], get["scheme"]) == (path, scheme), probe
        # Under mutual TLS the kubelet has no client certificate: it probes the admin port, which
        # serves TLS without asking for one (gateway/tls.py).
        port = (
            "OPAMP_GATEWAY_ADMIN_PORT"
            if "OPAMP_GATEWAY_TLS_CLIENT_CA" in rendered.config
            else "OPAMP_GATEWAY_PORT"
        )
        assert ports[get["port"]] == int(rendered.config[port]), probe


@pytest.mark.parametrize("name", SET_NAMES)
def test_service_exposes_opamp_and_admin_as_separate_ports(name: str) -> None:
    rendered = rendered_set(name)
    service = rendered.one("Service")
    assert service["spec"]["type"] == "ClusterIP"
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(by_name) == {"opamp", "admin"}
    assert by_name["opamp"]["port"] != by_name["admin"]["port"]
    container_ports = {p["name"] for p in rendered.container["ports"]}
    assert {p["targetPort"] for p in by_name.values()} <= container_ports
    assert service["spec"]["selector"] == rendered.deployment["spec"]["selector"]["matchLabels"]
    balancer = rendered.maybe("Service", f"{FULLNAME}-opamp")
    if balancer:  # the external Service never carries the admin port
        assert balancer["spec"]["type"] == "LoadBalancer"
        assert [p["targetPort"] for p in balancer["spec"]["ports"]] == ["opamp"]


@pytest.mark.parametrize("name", SET_NAMES)
def test_selectors_pick_exactly_the_gateway_pods(name: str) -> None:
    rendered = rendered_set(name)
    selector = rendered.deployment["spec"]["selector"]["matchLabels"]
    pod_labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(selector, pod_labels)
    others = [j["spec"]["template"]["metadata"]["labels"] for j in rendered.of_kind("Job")]
    others += [p["metadata"]["labels"] for p in rendered.of_kind("Pod")]
    for labels in others:
        assert not selects(selector, labels), "the migrate Job or test Pod would count as gateway pods"
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for manifest in rendered.of_kind(kind):
            key = "selector" if kind == "PodDisruptionBudget" else "podSelector"
            assert manifest["spec"][key]["matchLabels"] == selector, kind
    for monitor in rendered.of_kind("ServiceMonitor"):
        service = rendered.one("Service")
        assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["admin"]
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
        for balancer in rendered.of_kind("Service"):
            if balancer["metadata"]["name"] != FULLNAME:
                assert not selects(monitor["spec"]["selector"]["matchLabels"], balancer["metadata"]["labels"])


@pytest.mark.parametrize("name", SET_NAMES)
def test_pdb_exists_where_it_should(name: str) -> None:
    rendered = rendered_set(name)
    pdbs = rendered.of_kind("PodDisruptionBudget")
    assert len(pdbs) == (1 if rendered.values["podDisruptionBudget"]["enabled"] else 0)


@pytest.mark.parametrize("name", SET_NAMES)
def test_grace_period_outlasts_prestop_and_drain(name: str) -> None:
    rendered = rendered_set(name)
    command = rendered.container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    request_timeout = float(command[3])
    drain = float(rendered.config["OPAMP_GATEWAY_DRAIN_SECONDS"])
    grace = rendered.pod["terminationGracePeriodSeconds"]
    # The preStop hook takes at most the request timeout plus the drain window. After it SIGTERM
    # waits for the last sockets to take their close frame, then uvicorn's graceful shutdown runs.
    settings = gateway_settings.Settings()
    graceful = gateway_server._config(object(), "127.0.0.1", 0, settings).timeout_graceful_shutdown
    assert graceful is not None, "uvicorn would wait forever for open connections"
    assert grace >= request_timeout + drain + gateway_drain._CLOSE_TIMEOUT + graceful


@pytest.mark.parametrize("name", SET_NAMES)
def test_pods_are_hardened(name: str) -> None:
    rendered = rendered_set(name)
    for where, pod in pod_specs(rendered):
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] > 0, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["enableServiceLinks"] is False, where  # else OPAMP_GATEWAY_PORT=tcp://... leaks in
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in context["capabilities"], where
            assert container["resources"]["requests"], where
            assert container["resources"]["limits"]["memory"], where
    tmp = [m for m in rendered.container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp) == 1


@pytest.mark.parametrize("name", SET_NAMES)
def test_pods_spread_over_zones_and_nodes(name: str) -> None:
    rendered = rendered_set(name)
    constraints = rendered.pod["topologySpreadConstraints"]
    selector = rendered.deployment["spec"]["selector"]["matchLabels"]
    keys = {c["topologyKey"] for c in constraints}
    assert {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= keys
    for constraint in constraints:
        assert constraint["labelSelector"]["matchLabels"] == selector
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]


@pytest.mark.parametrize("name", SET_NAMES)
def test_sqlite_file_lives_on_a_writable_volume(name: str) -> None:
    rendered = rendered_set(name)
    config = rendered.config
    if rendered.values["store"]["type"] != "sqlite":
        assert "OPAMP_GATEWAY_SQLITE_PATH" not in config
        assert rendered.deployment["spec"]["strategy"]["type"] == "RollingUpdate"
        return
    directory = config["OPAMP_GATEWAY_SQLITE_PATH"].rsplit("/", 1)[0]
    mount = next(m for m in rendered.container["volumeMounts"] if m["mountPath"] == directory)
    volume = next(v for v in rendered.pod["volumes"] if v["name"] == mount["name"])
    assert not mount.get("readOnly")
    assert rendered.deployment["spec"]["replicas"] == 1
    if rendered.values["store"]["sqlite"]["persistence"]["enabled"]:
        assert "persistentVolumeClaim" in volume
        assert rendered.deployment["spec"]["strategy"] == {"type": "Recreate"}
        assert rendered.one("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    else:
        assert "emptyDir" in volume


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 2}, "store.type=sqlite keeps agent state in one pod's file"),
        ({"autoscaling": {"enabled": True}}, "store.type=sqlite keeps agent state in one pod's file"),
        ({"store": {"type": "elasticsearch"}}, "store.type=elasticsearch needs the cluster's address"),
        (
            {"store": {"type": "elasticsearch"}, "elasticsearch": {"url": "https://es:9200"}},
            "store.type=elasticsearch needs the gateway's API key",
        ),
        (
            {"store": {"type": "elasticsearch"}, "elasticsearch": {"url": "https://es:9200", "apiKey": "k"}},
            "needs its own privileged API key",
        ),
        ({"tls": {"enabled": True}}, "tls.enabled needs tls.existingSecret"),
        (
            {"store": {"sqlite": {"persistence": {"enabled": True}}}, "replicaCount": 3},
            "store.type=sqlite keeps agent state in one pod's file",
        ),
    ],
)
def test_impossible_combinations_fail_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        chart().render(values=values, name=RELEASE)


def test_elasticsearch_allows_many_replicas_without_migrate_when_disabled() -> None:
    rendered = render(
        {
            "store": {"type": "elasticsearch"},
            "replicaCount": 4,
            "elasticsearch": {"url": "https://es:9200", "apiKey": "k", "migrate": {"enabled": False}},
        }
    )
    assert rendered.deployment["spec"]["replicas"] == 4
    assert rendered.of_kind("Job") == []
    assert "no Redis is configured" in rendered.notes


def test_no_secret_value_outside_a_secret() -> None:
    rendered = rendered_set("sentinels")
    secrets_text = ""
    for manifest in rendered.manifests:
        if manifest["kind"] == "Secret":
            secrets_text += "".join(base64.b64decode(v).decode() for v in manifest["data"].values())
            continue
        text = yaml.safe_dump(manifest)
        for label, sentinel in SENTINELS.items():
            for line in sentinel.splitlines():
                assert line not in text, (
                    f"{label} appears in {manifest['kind']} {manifest['metadata']['name']}"
                )
    for label, sentinel in SENTINELS.items():
        assert sentinel in secrets_text, f"{label} is in no Secret: the test would prove nothing"
        assert sentinel not in rendered.notes, label
    for configmap in rendered.of_kind("ConfigMap"):
        for value in configmap["data"].values():
            assert not any(line in value for s in SENTINELS.values() for line in s.splitlines())
    for _, pod in pod_specs(rendered):
        for container in pod["containers"]:
            plain = [e["name"] for e in container.get("env", []) if "value" in e]
            assert not any(re.search(r"API_KEY|URL|TOKEN$|KEYS$", n) for n in plain), plain


def test_existing_secrets_are_referenced_and_no_secret_is_written() -> None:
    rendered = rendered_set("existing-secrets-values")
    assert rendered.of_kind("Secret") == []
    values = rendered.values
    refs = secret_refs(rendered.container)
    es = values["elasticsearch"]["existingSecret"]
    assert refs["OPAMP_GATEWAY_ELASTICSEARCH_URL"] == (es["name"], es["urlKey"])
    assert refs["OPAMP_GATEWAY_ELASTICSEARCH_API_KEY"] == (es["name"], es["apiKeyKey"])
    redis = values["redis"]["existingSecret"]
    assert refs["OPAMP_GATEWAY_REDIS_URL"] == (redis["name"], redis["urlKey"])
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in rendered.container["volumeMounts"]}
    for volume, env, setting in [
        ("agent-keys", "OPAMP_GATEWAY_AGENT_KEYS_FILE", values["auth"]["agentKeys"]),
        ("admin-token", "OPAMP_GATEWAY_ADMIN_TOKEN_FILE", values["auth"]["adminToken"]),
    ]:
        secret = volumes[volume]["secret"]
        assert secret["secretName"] == setting["existingSecret"]
        [item] = secret["items"]
        assert item["key"] == setting["key"]
        assert rendered.config[env] == f"{mounts[volume]}/{item['path']}"
    tls = volumes["tls"]["secret"]
    assert tls["secretName"] == values["tls"]["existingSecret"]
    assert rendered.config["OPAMP_GATEWAY_TLS_CERT"] == f"{mounts['tls']}/tls.crt"
    assert rendered.config["OPAMP_GATEWAY_TLS_KEY"] == f"{mounts['tls']}/tls.key"
    client_ca = volumes["tls-client-ca"]["secret"]
    assert client_ca["secretName"] == values["tls"]["clientCA"]["secretName"]
    assert rendered.config["OPAMP_GATEWAY_TLS_CLIENT_CA"].startswith(mounts["tls-client-ca"] + "/")


@pytest.mark.parametrize("name", ["production-values", "existing-secrets-values", "sentinels"])
def test_migrate_job_is_a_pre_install_hook_with_its_own_credential(name: str) -> None:
    rendered = rendered_set(name)
    job = rendered.migrate_job
    assert job is not None
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["opamp-gateway", "migrate"]
    job_refs = secret_refs(container)
    gateway_refs = secret_refs(rendered.container)
    assert (
        job_refs["OPAMP_GATEWAY_ELASTICSEARCH_API_KEY"] != gateway_refs["OPAMP_GATEWAY_ELASTICSEARCH_API_KEY"]
    )
    # A hook runs before the release's ordinary resources exist: it may read only Secrets the user
    # made beforehand or hook Secrets created before it (a lower hook weight).
    release_secrets = {
        s["metadata"]["name"]
        for s in rendered.of_kind("Secret")
        if "helm.sh/hook" not in s["metadata"].get("annotations", {})
    }
    hook_secrets = {
        s["metadata"]["name"]: s
        for s in rendered.of_kind("Secret")
        if "helm.sh/hook" in s["metadata"].get("annotations", {})
    }
    for env, (secret, key) in job_refs.items():
        assert secret not in release_secrets, (
            f"{env} reads {secret}, which does not exist yet during pre-install"
        )
        if secret in hook_secrets:
            hook = hook_secrets[secret]["metadata"]["annotations"]
            assert hook["helm.sh/hook"] == annotations["helm.sh/hook"]
            assert int(hook["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
            assert key in hook_secrets[secret]["data"]
    assert "configMapRef" not in str(container.get("envFrom", []))  # the ConfigMap is not there yet either
    assert job["spec"]["template"]["spec"].get("serviceAccountName") is None
    # The Job creates exactly the aliases the pods will use, with the settings they expect.
    plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    for env in (
        "OPAMP_GATEWAY_ELASTICSEARCH_AGENTS_ALIAS",
        "OPAMP_GATEWAY_ELASTICSEARCH_CONFIGS_ALIAS",
        "OPAMP_GATEWAY_ELASTICSEARCH_REFRESH_INTERVAL",
    ):
        assert plain[env] == rendered.config[env], env
    loaded = gateway_settings.load(["--elasticsearch-url", "https://es:9200"], plain)
    es = rendered.values["elasticsearch"]
    assert (loaded.elasticsearch_agents_alias, loaded.elasticsearch_configs_alias) == (
        es["agentsAlias"],
        es["configsAlias"],
    )


def test_chart_elasticsearch_defaults_match_the_gateway_defaults() -> None:
    values = load_yaml(CHART_DIR / "values.yaml")["elasticsearch"]
    defaults = gateway_settings.Settings()
    assert values["agentsAlias"] == defaults.elasticsearch_agents_alias
    assert values["configsAlias"] == defaults.elasticsearch_configs_alias
    assert values["refreshInterval"] == defaults.elasticsearch_refresh_interval
    assert values["timeout"] == defaults.elasticsearch_timeout


@pytest.mark.parametrize("name", SET_NAMES)
def test_autoscaler_scales_down_slowly(name: str) -> None:
    rendered = rendered_set(name)
    if not rendered.values["autoscaling"]["enabled"]:
        assert rendered.of_kind("HorizontalPodAutoscaler") == []
        assert "replicas" in rendered.deployment["spec"]
        return
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert "replicas" not in rendered.deployment["spec"], "the HPA owns the replica count"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 600
    assert down["policies"] and all(p["type"] == "Pods" and p["value"] <= 2 for p in down["policies"])
    assert all(p["periodSeconds"] >= 60 for p in down["policies"])


def test_ingress_routes_only_opamp_with_websocket_friendly_timeouts() -> None:
    rendered = rendered_set("production-values")
    ingress = rendered.one("Ingress")
    annotations = ingress["metadata"]["annotations"]
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        # Idle sockets stay open: the gateway pings well within the proxy's timeout.
        seconds = int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"])
        assert seconds >= 3600 > 2 * float(rendered.config["OPAMP_GATEWAY_WS_PING_INTERVAL"])
    body = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert body.endswith("m") and int(body[:-1]) * 2**20 >= rendered.values["gateway"]["maxMessageBytes"]
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["path"] == "/v1/opamp"
            assert path["backend"]["service"] == {"name": FULLNAME, "port": {"name": "opamp"}}
    assert "https://opamp.example.com/v1/opamp" in rendered.notes


def test_network_policy_opens_the_gateway_ports_and_needed_egress() -> None:
    rendered = rendered_set("production-values")
    policy = rendered.one("NetworkPolicy")
    ports = {p["containerPort"] for p in rendered.container["ports"]}
    opened = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert opened == ports
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {53, 9200, 6380} <= egress_ports  # DNS, Elasticsearch, Redis (rediss on 6380 in this set)


def test_config_and_secret_changes_roll_the_pods() -> None:
    base = rendered_set("production-values")
    changed_config = render(deep_merge(VALUE_SETS["production-values"], {"gateway": {"logLevel": "debug"}}))
    changed_secret = render(deep_merge(VALUE_SETS["production-values"], {"redis": {"url": "redis://o:6379"}}))

    def annotations(rendered: Rendered) -> dict[str, str]:
        found: dict[str, str] = rendered.deployment["spec"]["template"]["metadata"]["annotations"]
        return found

    assert annotations(changed_config)["checksum/config"] != annotations(base)["checksum/config"]
    assert annotations(changed_secret)["checksum/secret"] != annotations(base)["checksum/secret"]
    assert annotations(changed_secret)["checksum/config"] == annotations(base)["checksum/config"]


@pytest.mark.parametrize("name", SET_NAMES)
def test_notes_tell_how_to_reach_the_gateway(name: str) -> None:
    rendered = rendered_set(name)
    notes = rendered.notes
    assert f"port-forward service/{FULLNAME} 4320:4320" in notes
    assert f"port-forward service/{FULLNAME} 4321:4321" in notes
    assert f"{FULLNAME}.{NAMESPACE}.svc:4320/v1/opamp" in notes
    assert "{{" not in notes and "<no value>" not in notes


def test_the_production_example_in_docs_deployment_md_renders() -> None:
    text = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    match = re.search(r"`values-production\.yaml`:\n\n```yaml\n(.*?)```", text, flags=re.DOTALL)
    assert match, "docs/deployment.md lost its values-production.yaml example"
    values = yaml.safe_load(match.group(1))
    jsonschema.Draft7Validator(without_required(schema())).validate(values)
    rendered = render(values)
    for manifest in rendered.manifests:
        if manifest["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(manifest, OLDEST_KUBERNETES, strict=True)
    assert rendered.migrate_job is not None and rendered.of_kind("Secret") == []


# --- the preStop hook, run for real ----------------------------------------------------------------


class DrainRecorder(BaseHTTPRequestHandler):
    requests: list[tuple[str, str, str | None]] = []

    def do_POST(self) -> None:
        self.requests.append(("POST", self.path, self.headers.get("Authorization")))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def admin_server() -> Iterator[tuple[int, list[tuple[str, str, str | None]]]]:
    DrainRecorder.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), DrainRecorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], DrainRecorder.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run_prestop(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    command = rendered_set("production-values").container["lifecycle"]["preStop"]["exec"]["command"]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, *command[1:]], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    return result, time.monotonic() - started


def test_prestop_asks_the_gateway_to_drain_then_waits_the_drain_window(
    admin_server: tuple[int, list[tuple[str, str, str | None]]], tmp_path: Path
) -> None:
    port, requests = admin_server
    token = tmp_path / "admin-token"
    token.write_text("s3cret\n", encoding="utf-8")
    env = {
        "OPAMP_GATEWAY_ADMIN_PORT": str(port),
        "OPAMP_GATEWAY_DRAIN_SECONDS": "0.6",
        "OPAMP_GATEWAY_ADMIN_TOKEN_FILE": str(token),
        "HTTP_PROXY": "http://127.0.0.1:9",  # must be ignored for the pod's own admin port
    }
    result, elapsed = run_prestop(env)
    assert result.returncode == 0, result.stderr
    assert requests == [("POST", "/api/v1/drain", "Bearer s3cret")]
    assert "HTTP 202" in result.stdout
    assert 0.6 <= elapsed < 10


def test_prestop_still_waits_when_the_drain_request_fails(tmp_path: Path) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), DrainRecorder) as unused:
        port = unused.server_address[1]  # closed again below: nothing listens there
    result, elapsed = run_prestop(
        {"OPAMP_GATEWAY_ADMIN_PORT": str(port), "OPAMP_GATEWAY_DRAIN_SECONDS": "0.5"}
    )
    assert result.returncode == 0, result.stderr
    assert "drain request failed" in result.stdout
    assert 0.5 <= elapsed < 10
