"""The Kubernetes path under tilt/: every manifest valid against its schema (the Kubernetes API
for Kubernetes objects, the Dapr CRDs of the pinned release for Dapr resources, here and in
components/ and dapr/), every service Deployment wired to its sidecar the way the platform
expects, and the Dapr resources on the cluster the same as on one machine."""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsconductor_contracts.components import CREDENTIAL_MASTER_KEY_SECRET, JWT_SIGNING_KEY_SECRET
from opsconductor_platform.hosting import HOSTED_APPS

REPO_ROOT = Path(__file__).resolve().parents[2]
TILT = REPO_ROOT / "tilt"
COMPONENTS = REPO_ROOT / "components"
DAPR = REPO_ROOT / "dapr"
OVERLAYS = ("rabbitmq", "redis")
GATEWAY = "gateway"
APP_PORT = 8000
GATEWAY_SERVICE_PORT = 8080
# Which app reads which application secret through the secret store.
SECRET_READERS = {JWT_SIGNING_KEY_SECRET: "auth", CREDENTIAL_MASTER_KEY_SECRET: "targets"}

# Fields the CRD marks required that a self-hosted daprd or Sentry takes from its command line
# (--sentry-address, --trust-domain) or defaults (the resolver's version). These two files are
# read only on one machine, never sent to an API server; the cluster's Configuration (rendered
# under tilt/) drops both sections and is validated without exceptions.
_MTLS_FROM_FLAGS = ("spec.mtls: 'controlPlaneTrustDomain' is a required property",
                    "spec.mtls: 'sentryAddress' is a required property")
SELF_HOSTED_ONLY = {
    "dapr/config.yaml": (*_MTLS_FROM_FLAGS,
                         "spec.nameResolution: 'version' is a required property"),
    "dapr/sentry.yaml": _MTLS_FROM_FLAGS,
}

PROBES = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
# The gateway's health endpoints aggregate every service (tilt/base/gateway-probes.yaml): a
# backend outage must not restart the edge. None: a TCP connection to the app port.
GATEWAY_PROBES = {"readinessProbe": "/healthz", "livenessProbe": None, "startupProbe": None}

Docs = list[dict[str, Any]]
Render = Callable[[str], Docs]


def load(path: Path) -> Docs:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def is_dapr(doc: Any) -> bool:
    return isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith("dapr.io/")


def of_kind(docs: Docs, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def services(docs: Docs) -> dict[str, dict[str, Any]]:
    """The OpsConductor service Deployments (not the development servers)."""
    return {name: d for name, d in of_kind(docs, "Deployment").items()
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "service"}


def run_secrets_script(docs: Docs, state: Path) -> subprocess.CompletedProcess[str]:
    """tilt/k8s_secrets.py as the Tiltfile runs it: manifests on stdin, Secrets on stdout."""
    return subprocess.run([sys.executable, str(TILT / "k8s_secrets.py"), "--state", str(state)],
                          input=yaml.safe_dump_all(docs), capture_output=True, text=True,
                          timeout=120, check=False)


@functools.cache
def secrets_script() -> Any:
    spec = importlib.util.spec_from_file_location("opsconductor_tilt_k8s_secrets",
                                                  TILT / "k8s_secrets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generated_secrets(docs: Docs) -> Docs:
    """The Secrets the Tiltfile applies beside the rendered manifests."""
    manifests: Docs = secrets_script().generate(docs, {})
    return manifests


def env_secret(container: dict[str, Any], name: str) -> str | None:
    for env in container.get("env") or []:
        if env["name"] == name:
            return str(env["valueFrom"]["secretKeyRef"]["name"])
    return None


def deployment_problems(deployment: dict[str, Any], configuration: str) -> list[str]:
    """What would keep a service from running beside its sidecar as the platform expects, or
    from running locked down."""
    problems = []
    name = deployment["metadata"]["name"]
    template = deployment["spec"]["template"]
    annotations = template["metadata"].get("annotations") or {}
    pod = template["spec"]
    expected = {"dapr.io/enabled": "true", "dapr.io/app-id": name,
                "dapr.io/app-port": str(APP_PORT), "dapr.io/config": configuration,
                "dapr.io/log-as-json": "true", "dapr.io/enable-app-health-check": "true",
                "dapr.io/app-health-check-path": "/healthz"}
    for key, value in expected.items():
        if annotations.get(key) != value:
            problems.append(f"annotation {key} is {annotations.get(key)!r}, expected {value!r}")
    # Every app demands the app token its sidecar presents (the gateway only on the routes
    # its sidecar calls), as `opsconductor up --runtime dapr` sets them up.
    for key in ("sidecar-cpu-request", "sidecar-cpu-limit", "sidecar-memory-request",
                "sidecar-memory-limit", "api-token-secret", "app-token-secret"):
        if not annotations.get(f"dapr.io/{key}"):
            problems.append(f"annotation dapr.io/{key} missing")
    app_token = annotations.get("dapr.io/app-token-secret")
    containers = {c["name"]: c for c in pod["containers"]}
    app = containers.get("app")
    if app is None:
        return [*problems, "no container named app"]
    if app.get("image") != f"opsconductor/{name}":
        problems.append(f"image {app.get('image')!r} is not opsconductor/{name}")
    # The app must present and demand the same tokens its sidecar holds.
    if env_secret(app, "DAPR_API_TOKEN") != annotations.get("dapr.io/api-token-secret"):
        problems.append("DAPR_API_TOKEN does not come from the sidecar's api-token-secret")
    if env_secret(app, "APP_API_TOKEN") != app_token:
        problems.append("APP_API_TOKEN does not come from the sidecar's app-token-secret")
    ports = {p.get("name"): p["containerPort"] for p in app.get("ports") or []}
    if ports.get("http") != APP_PORT:
        problems.append(f"container port http is {ports.get('http')}, not {APP_PORT}")
    for probe, path in (PROBES if name != GATEWAY else GATEWAY_PROBES).items():
        handler = app.get(probe) or {}
        if path is None:
            if (handler.get("tcpSocket") or {}).get("port") not in ("http", APP_PORT):
                problems.append(f"{probe} is not a connection to the app port")
            continue
        get = handler.get("httpGet") or {}
        if get.get("path") != path or get.get("port") not in ("http", APP_PORT):
            problems.append(f"{probe} is not GET {path} on the app port")
    security = app.get("securityContext") or {}
    pod_security = pod.get("securityContext") or {}
    if security.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    if security.get("readOnlyRootFilesystem") is not True:
        problems.append("root filesystem is not read-only")
    if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
        problems.append("capabilities: ALL not dropped")
    if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
        problems.append("runAsNonRoot not set")
    if (security.get("runAsUser") or pod_security.get("runAsUser")) in (0, None):
        problems.append("no non-root runAsUser")
    resources = app.get("resources") or {}
    for bound in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if not (resources.get(bound) or {}).get(resource):
                problems.append(f"resources.{bound}.{resource} missing")
    return problems


def rbac_readable(docs: Docs) -> dict[str, set[str]]:
    """ServiceAccount -> Secret names its Roles let it get."""
    roles = {name: {n for rule in role.get("rules", []) if "get" in rule.get("verbs", [])
                    and "secrets" in rule.get("resources", []) for n in rule.get("resourceNames", [])}
             for name, role in of_kind(docs, "Role").items()}
    readable: dict[str, set[str]] = {}
    for binding in of_kind(docs, "RoleBinding").values():
        for subject in binding.get("subjects", []):
            if subject["kind"] == "ServiceAccount":
                readable.setdefault(subject["name"], set()).update(roles[binding["roleRef"]["name"]])
    return readable


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, render: Render) -> tuple[str, Docs]:
    return request.param, render(f"overlays/{request.param}")


class TestSchemas:
    def test_every_kubernetes_object_is_valid_for_the_api(self, overlay: tuple[str, Docs],
                                                           k8s_errors: Any) -> None:
        _, docs = overlay
        objects = [d for d in docs if not is_dapr(d)] + generated_secrets(docs)
        assert len(objects) > 20
        problems = {f"{d['kind']}/{d['metadata']['name']}": k8s_errors(d) for d in objects}
        assert {k: v for k, v in problems.items() if v} == {}

    def test_every_dapr_resource_in_the_render_is_valid_for_its_crd(
            self, overlay: tuple[str, Docs], dapr_schemas: Any) -> None:
        _, docs = overlay
        resources = [d for d in docs if is_dapr(d)]
        assert {d["kind"] for d in resources} == {"Component", "Configuration", "Resiliency"}
        problems = {f"{d['kind']}/{d['metadata']['name']}": dapr_schemas.errors(d)
                    for d in resources}
        assert {k: v for k, v in problems.items() if v} == {}

    def test_every_dapr_file_in_the_repository_is_valid_for_its_crd(self,
                                                                     dapr_schemas: Any) -> None:
        files = [*sorted(COMPONENTS.rglob("*.yaml")), *sorted(DAPR.glob("*.yaml")),
                 *sorted(TILT.rglob("*.yaml"))]
        checked, problems = 0, {}
        for path in files:
            for doc in load(path):
                if is_dapr(doc):
                    checked += 1
                    where = str(path.relative_to(REPO_ROOT))
                    errors = [e for e in dapr_schemas.errors(doc)
                              if e not in SELF_HOSTED_ONLY.get(where, ())]
                    if errors:
                        problems[f"{where}: {doc['kind']}"] = errors
        assert checked >= 10
        assert problems == {}

    def test_every_yaml_file_under_tilt_is_rendered(self) -> None:
        """A manifest no kustomization lists would escape the validation above."""
        listed: set[Path] = set()
        for kustomization in TILT.rglob("kustomization.yaml"):
            spec = load(kustomization)[0]
            entries = [*spec.get("resources", []),
                       *(p["path"] for p in spec.get("patches", []) if "path" in p)]
            listed.update((kustomization.parent / e).resolve() for e in entries)
        manifests = {p.resolve() for p in TILT.rglob("*.yaml") if p.name != "kustomization.yaml"}
        assert manifests - listed == set()


class TestValidatorsBite:
    """The checks above must be able to fail."""

    @pytest.fixture
    def deployment(self, render: Render) -> dict[str, Any]:
        return copy.deepcopy(services(render("overlays/rabbitmq"))["users"])

    def test_a_deployment_without_app_id_is_refused(self, deployment: dict[str, Any]) -> None:
        assert deployment_problems(deployment, "opsconductor") == []
        del deployment["spec"]["template"]["metadata"]["annotations"]["dapr.io/app-id"]
        assert any("dapr.io/app-id" in p for p in deployment_problems(deployment, "opsconductor"))

    def test_a_writable_privileged_container_is_refused(self, deployment: dict[str, Any]) -> None:
        app = deployment["spec"]["template"]["spec"]["containers"][0]
        app["securityContext"] = {"readOnlyRootFilesystem": False}
        problems = deployment_problems(deployment, "opsconductor")
        assert "root filesystem is not read-only" in problems
        assert "capabilities: ALL not dropped" in problems

    def test_an_app_token_the_sidecar_does_not_hold_is_refused(self,
                                                                deployment: dict[str, Any]) -> None:
        app = deployment["spec"]["template"]["spec"]["containers"][0]
        token = next(e for e in app["env"] if e["name"] == "APP_API_TOKEN")
        token["valueFrom"]["secretKeyRef"]["name"] = "auth-app-token"
        assert deployment_problems(deployment, "opsconductor") == [
            "APP_API_TOKEN does not come from the sidecar's app-token-secret"]

    def test_an_unknown_field_in_a_deployment_is_refused(self, deployment: dict[str, Any],
                                                         k8s_errors: Any) -> None:
        assert k8s_errors(deployment) == []
        deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
        assert k8s_errors(deployment) != []

    def test_a_wrongly_typed_service_port_is_refused(self, render: Render,
                                                     k8s_errors: Any) -> None:
        service = copy.deepcopy(of_kind(render("overlays/rabbitmq"), "Service")["gateway"])
        service["spec"]["ports"][0]["port"] = "eighty"
        assert k8s_errors(service) != []

    def test_a_component_with_an_unknown_field_is_refused(self, dapr_schemas: Any) -> None:
        component = load(COMPONENTS / "statestore.yaml")[0]
        assert dapr_schemas.errors(component) == []
        component["spec"]["metdata"] = component["spec"].pop("metadata")
        assert dapr_schemas.errors(component) != []

    def test_a_configuration_with_a_misspelt_policy_field_is_refused(self,
                                                                     dapr_schemas: Any) -> None:
        configuration = load(DAPR / "config.yaml")[0]
        configuration["spec"]["accessControl"]["policies"][0]["defaultActon"] = "allow"
        assert dapr_schemas.errors(configuration) != []

    def test_a_resiliency_with_a_non_numeric_retry_count_is_refused(self,
                                                                    dapr_schemas: Any) -> None:
        resiliency = load(DAPR / "resiliency.yaml")[0]
        resiliency["spec"]["policies"]["retries"]["invoke"]["maxRetries"] = "twice"
        assert dapr_schemas.errors(resiliency) != []


class TestServices:
    def test_every_service_runs_beside_its_sidecar_locked_down(self,
                                                               overlay: tuple[str, Docs]) -> None:
        _, docs = overlay
        (configuration,) = of_kind(docs, "Configuration")
        problems = {name: deployment_problems(d, configuration)
                    for name, d in services(docs).items()}
        assert {k: v for k, v in problems.items() if v} == {}

    def test_only_annotations_the_sidecar_injector_knows(self, overlay: tuple[str, Docs],
                                                         dapr_annotations: set[str]) -> None:
        _, docs = overlay
        used = {key for d in services(docs).values()
                for key in d["spec"]["template"]["metadata"]["annotations"]
                if key.startswith("dapr.io/")}
        assert used - dapr_annotations == set()

    def test_every_hosted_app_and_every_app_in_the_repository_is_deployed(
            self, overlay: tuple[str, Docs]) -> None:
        _, docs = overlay
        deployed = set(services(docs))
        assert {a.app_id for a in HOSTED_APPS} <= deployed
        with_dockerfile = {p.parent.name for p in (REPO_ROOT / "apps").glob("*/Dockerfile")}
        assert deployed == with_dockerfile

    def test_each_app_gets_its_database_under_its_own_settings_prefix(
            self, overlay: tuple[str, Docs]) -> None:
        _, docs = overlay
        for name, deployment in services(docs).items():
            if name == GATEWAY:
                continue
            settings = importlib.import_module(f"opsconductor_{name}.config").Settings
            variable = f"{settings.model_config['env_prefix']}DATABASE_URL"
            app = deployment["spec"]["template"]["spec"]["containers"][0]
            assert env_secret(app, variable) == f"{name}-database", name

    def test_each_service_has_a_service_and_the_gateway_listens_on_8080(
            self, overlay: tuple[str, Docs]) -> None:
        _, docs = overlay
        kube_services = of_kind(docs, "Service")
        for name in services(docs):
            selector = kube_services[name]["spec"]["selector"]
            assert selector == {"app.kubernetes.io/name": name}
        (port,) = kube_services[GATEWAY]["spec"]["ports"]
        assert (port["port"], port["targetPort"]) == (GATEWAY_SERVICE_PORT, "http")

    def test_the_gateway_aggregates_every_other_service(self, overlay: tuple[str, Docs]) -> None:
        _, docs = overlay
        gateway = services(docs)[GATEWAY]["spec"]["template"]["spec"]["containers"][0]
        value = next(e["value"] for e in gateway["env"] if e["name"] == "OPSC_GATEWAY_SERVICES")
        assert set(json.loads(value)) == set(services(docs)) - {GATEWAY}

    def test_every_referenced_secret_is_generated_and_the_databases_exist(
            self, overlay: tuple[str, Docs]) -> None:
        _, docs = overlay
        generated = {d["metadata"]["name"]: d for d in generated_secrets(docs)}
        for deployment in of_kind(docs, "Deployment").values():
            pod = deployment["spec"]["template"]["spec"]
            annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
            refs = [e["valueFrom"]["secretKeyRef"] for c in pod["containers"]
                    for e in c.get("env") or [] if "valueFrom" in e]
            refs += [{"name": annotations[a], "key": "token"} for a in
                     ("dapr.io/api-token-secret", "dapr.io/app-token-secret") if a in annotations]
            for ref in refs:
                assert ref["key"] in generated[ref["name"]]["stringData"], ref
        init = of_kind(docs, "ConfigMap")["postgres-init"]["data"]["databases.sql"]
        urls = [s["stringData"]["url"] for n, s in generated.items() if n.endswith("-database")]
        urls.append(generated["statestore-connection"]["stringData"]["statestore-connection"])
        for url in urls:
            assert f"CREATE DATABASE {url.rsplit('/', 1)[1]};" in init

    def test_a_secret_no_rule_can_make_is_an_error(self, render: Render,
                                                   tmp_path: Path) -> None:
        docs = copy.deepcopy(render("overlays/rabbitmq"))
        app = services(docs)["users"]["spec"]["template"]["spec"]["containers"][0]
        app["env"].append({"name": "X", "valueFrom": {"secretKeyRef": {"name": "mystery",
                                                                          "key": "k"}}})
        result = run_secrets_script(docs, tmp_path / "state.json")
        assert result.returncode == 1
        assert "mystery/k" in result.stderr
        assert result.stdout == ""

    def test_secrets_keep_their_values_across_reloads_in_an_owner_only_file(
            self, render: Render, tmp_path: Path) -> None:
        docs = render("overlays/redis")
        state = tmp_path / "tilt" / "secrets.json"
        first = run_secrets_script(docs, state)
        second = run_secrets_script(docs, state)
        assert first.returncode == second.returncode == 0, first.stderr + second.stderr
        assert first.stdout == second.stdout
        assert state.stat().st_mode & 0o777 == 0o600
        values = {d["metadata"]["name"]: d["stringData"] for d in yaml.safe_load_all(first.stdout)}
        # Both ends of each connection share one password.
        redis_password = values["redis-password"]["redis-password"]
        assert len(redis_password) >= 24
        assert values["users-database"]["url"].split(":")[2].split("@")[0] == \
            values["postgres-admin"]["password"]
        assert values["users-api-token"]["token"] != values["users-app-token"]["token"]


class TestDaprResources:
    """On the cluster the sidecars load the same components, Configuration and Resiliency as on
    one machine; only what a cluster must change differs."""

    def test_components_keep_their_names_scopes_and_settings(self,
                                                             overlay: tuple[str, Docs]) -> None:
        broker, docs = overlay
        rendered = of_kind(docs, "Component")
        sources = {d["metadata"]["name"]: d for p in sorted(COMPONENTS.glob("*.yaml"))
                   for d in load(p)}
        sources |= {d["metadata"]["name"]: d
                    for p in sorted((COMPONENTS / f"pubsub-{broker}").glob("*.yaml"))
                    for d in load(p)}
        sources["secretstore"] = load(COMPONENTS / "kubernetes" / "secretstore.yaml")[0]
        assert set(rendered) == set(sources)
        for name, source in sources.items():
            component = rendered[name]
            assert component["scopes"] == source["scopes"], name
            assert component.get("auth") == source.get("auth"), name
            if name == "platform-secrets":
                # A Kubernetes secret store instead of the connection-strings file.
                assert component["spec"] == {**source["spec"], "type": "secretstores.kubernetes",
                                             "metadata": []}
            else:
                assert component["spec"] == source["spec"], name

    def test_configuration_is_the_one_machine_configuration_on_cluster_dns(
            self, overlay: tuple[str, Docs]) -> None:
        _, docs = overlay
        (rendered,) = of_kind(docs, "Configuration").values()
        source = load(DAPR / "config.yaml")[0]
        namespaces = {d["metadata"]["namespace"] for d in services(docs).values()}
        assert len(namespaces) == 1
        expected = copy.deepcopy(source["spec"])
        del expected["nameResolution"]  # the cluster's DNS, not the one-machine registry
        del expected["mtls"]  # the control plane's setting on a cluster
        for policy in expected["accessControl"]["policies"]:
            policy["namespace"] = next(iter(namespaces))
        assert rendered["metadata"]["name"] == source["metadata"]["name"]
        assert rendered["spec"] == expected

    def test_resiliency_is_unchanged(self, overlay: tuple[str, Docs]) -> None:
        _, docs = overlay
        (rendered,) = of_kind(docs, "Resiliency").values()
        assert rendered["spec"] == load(DAPR / "resiliency.yaml")[0]["spec"]

    def test_each_sidecar_may_read_exactly_the_secrets_its_components_need(
            self, overlay: tuple[str, Docs]) -> None:
        _, docs = overlay
        readable = rbac_readable(docs)
        deployed = set(services(docs))
        for component in of_kind(docs, "Component").values():
            if (component.get("auth") or {}).get("secretStore") != "platform-secrets":
                continue
            needed = {m["secretKeyRef"]["name"] for m in component["spec"].get("metadata", [])
                      if "secretKeyRef" in m}
            for app_id in set(component["scopes"]) & deployed:
                account = services(docs)[app_id]["spec"]["template"]["spec"]["serviceAccountName"]
                assert needed <= readable.get(account, set()), (component["metadata"], app_id)
        for secret, reader in SECRET_READERS.items():
            assert {a for a, names in readable.items() if secret in names} == {reader}


class TestLocalMode:
    def test_the_local_runner_lists_the_hosted_apps(self) -> None:
        result = subprocess.run([sys.executable, str(TILT / "local.py"), "apps"],
                                capture_output=True, text=True, timeout=120, check=True)
        listed = json.loads(result.stdout)
        assert [a["app_id"] for a in listed] == [a.app_id for a in HOSTED_APPS]
        for app in listed:
            spec = importlib.util.find_spec(f"{app['package']}.main")
            assert spec is not None and spec.origin is not None
            assert (REPO_ROOT / app["dir"] / app["package"] / "main.py").resolve() == \
                Path(spec.origin).resolve()
