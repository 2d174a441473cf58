"""The Dapr manifests agree with the code and with each other (no sidecar needed): components
scoped and fed secrets only by reference, the two pub/sub twins identical in what they allow,
every topic owned by one publisher, every subscription the apps declare permitted, resiliency
bounded everywhere, access control deny-by-default, and the run file covering every app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from opsconductor_contracts import topics
from opsconductor_contracts.components import PUBSUB, PUBSUB_PUBLISHER
from opsconductor_platform.dapr_setup import dapr_dir
from opsconductor_platform.hosting import HOSTED_APPS, components_dir
from opsconductor_runtime.dapr.runtime import PUBLISHING_COMPONENT_SUFFIX
from opsconductor_runtime.embedded.bindings import load_cron_bindings
from opsconductor_testing.runtime import RecordingRuntime

APP_IDS = {"gateway", "auth", "users", "targets", "jobs", "executor", "scheduler", "audit"}
TWINS = ("pubsub-rabbitmq", "pubsub-redis")
SCOPE_KEYS = ("allowedTopics", "publishingScopes", "subscriptionScopes")
# Metadata that is, or contains, a credential: only ever through secretKeyRef.
SECRET_METADATA = {"connectionstring", "url", "password", "redispassword", "redisusername",
                   "redishost", "username"}


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def components() -> dict[Path, dict[str, Any]]:
    found = {}
    for path in sorted(components_dir().rglob("*.yaml")):
        docs = load(path)
        assert len(docs) == 1, f"{path}: one component per file"
        found[path] = docs[0]
    return found


def metadata(component: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in component["spec"].get("metadata") or []}


def scopes(value: str) -> dict[str, set[str]]:
    """publishingScopes / subscriptionScopes: app=topic,topic;app=..."""
    parsed = {}
    for part in value.split(";"):
        app, _, listed = part.partition("=")
        parsed[app] = {t for t in listed.split(",") if t}
    return parsed


def all_topics() -> set[str]:
    return {v for k, v in vars(topics).items() if k.isupper() and isinstance(v, str)}


def twin(name: str, file: str = "pubsub.yaml") -> dict[str, Any]:
    return load(components_dir() / name / file)[0]


class TestComponents:
    def test_every_component_is_scoped_to_known_apps(self) -> None:
        for path, component in components().items():
            assert component["kind"] == "Component", path
            listed = component.get("scopes") or []
            assert listed, f"{path}: no scopes (every app would load it)"
            assert set(listed) <= APP_IDS, path

    def test_secrets_only_by_reference_from_a_declared_store(self) -> None:
        stores = {c["metadata"]["name"] for c in components().values()
                  if c["spec"]["type"].startswith("secretstores.")}
        for path, component in components().items():
            items = metadata(component)
            for name, item in items.items():
                if name.lower() in SECRET_METADATA:
                    assert "secretKeyRef" in item and "value" not in item, f"{path}: {name}"
            if any("secretKeyRef" in item for item in items.values()):
                assert component.get("auth", {}).get("secretStore") in stores, path

    def test_the_pubsub_twins_differ_only_in_the_broker(self) -> None:
        rabbit, redis = (twin(name) for name in TWINS)
        assert rabbit["metadata"]["name"] == redis["metadata"]["name"] == "pubsub"
        assert rabbit["scopes"] == redis["scopes"]
        for key in SCOPE_KEYS:
            assert metadata(rabbit)[key]["value"] == metadata(redis)[key]["value"], key

    @pytest.mark.parametrize("folder", TWINS)
    def test_apps_publish_through_a_component_that_subscribes_nothing(self, folder: str) -> None:
        """Same broker, exchanges and publishing scopes as `pubsub`; its own connection."""
        pubsub, publisher = twin(folder), twin(folder, "pubsub-publisher.yaml")
        assert publisher["metadata"]["name"] == PUBSUB_PUBLISHER == PUBSUB + PUBLISHING_COMPONENT_SUFFIX
        for key in ("type", "version"):
            assert publisher["spec"][key] == pubsub["spec"][key], key
        assert publisher["auth"] == pubsub["auth"] and publisher["scopes"] == pubsub["scopes"]
        mine, theirs = metadata(publisher), metadata(pubsub)
        subscribing = scopes(mine.pop("subscriptionScopes")["value"])
        if "clientName" in theirs:  # the broker's name for each connection
            assert mine.pop("clientName")["value"] == "{appID} " + PUBSUB_PUBLISHER
            assert theirs["clientName"]["value"] == "{appID} " + PUBSUB
        assert subscribing == {app: set() for app in publisher["scopes"]}
        # Everything else is pubsub's own setting: exchanges declared alike by both components.
        assert all(mine[name] == theirs[name] for name in mine)
        assert {"allowedTopics", "publishingScopes"} <= set(mine)
        if folder == "pubsub-rabbitmq":
            assert {"durable", "deletedWhenUnused", "deliveryMode", "publisherConfirm"} <= set(mine)

    def test_every_topic_is_allowed_and_owned_by_exactly_one_publisher(self) -> None:
        component = twin(TWINS[0])
        items = metadata(component)
        assert set(items["allowedTopics"]["value"].split(",")) == all_topics()
        publishing = scopes(items["publishingScopes"]["value"])
        subscribing = scopes(items["subscriptionScopes"]["value"])
        # An app missing from a scope list may use every topic: all of them must be listed.
        assert set(publishing) == set(subscribing) == set(component["scopes"])
        for topic in all_topics() - {topics.DEAD_LETTER}:
            owners = [app for app, owned in publishing.items() if topic in owned]
            assert len(owners) == 1, (topic, owners)
        # Dead letters are published by the subscriber's own sidecar.
        assert all(topics.DEAD_LETTER in owned for owned in publishing.values())

    @pytest.mark.parametrize("hosted", [a for a in HOSTED_APPS], ids=lambda a: a.app_id)
    async def test_what_each_app_subscribes_to_is_permitted(self, hosted: Any,
                                                             tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
        monkeypatch.setenv("OPSC_DATA_DIR", str(tmp_path))
        app = hosted.create(RecordingRuntime(app_id=hosted.app_id))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://app") as client:
            response = await client.get("/dapr/subscribe")
        declared = response.json() if response.status_code == 200 else []
        items = metadata(twin(TWINS[0]))
        subscribing = scopes(items["subscriptionScopes"]["value"])
        publishing = scopes(items["publishingScopes"]["value"])
        for subscription in declared:
            assert subscription["pubsubname"] == "pubsub"
            assert subscription["topic"] in subscribing[hosted.app_id], subscription
            dead_letter = subscription.get("deadLetterTopic")
            if dead_letter:
                assert dead_letter in publishing[hosted.app_id], subscription

    def test_embedded_mode_still_reads_the_cron_bindings(self) -> None:
        bindings = {b.name: b for b in load_cron_bindings(components_dir())}
        assert bindings["housekeeping"].scopes == ("auth",)


class TestConfiguration:
    def config(self) -> dict[str, Any]:
        return load(dapr_dir() / "config.yaml")[0]

    def test_access_is_denied_unless_a_rule_allows_it(self) -> None:
        spec = self.config()["spec"]
        assert spec["mtls"]["enabled"] is True
        assert spec["nameResolution"]["component"] == "sqlite"  # never mDNS multicast
        acl = spec["accessControl"]
        assert acl["defaultAction"] == "deny"
        policies = {p["appId"]: p for p in acl["policies"]}
        assert set(policies) <= APP_IDS
        for policy in policies.values():
            assert policy["defaultAction"] == "deny"
            assert policy["trustDomain"] == acl["trustDomain"] and policy["namespace"]
            for operation in policy["operations"]:
                assert operation["httpVerb"] and operation["action"] in ("allow", "deny")

    def test_the_gateway_reaches_public_routes_only(self) -> None:
        from opsconductor_gateway.routing import SEGMENT_TO_APP

        gateway = next(p for p in self.config()["spec"]["accessControl"]["policies"]
                       if p["appId"] == "gateway")
        rules = {o["name"]: o["action"] for o in gateway["operations"]}
        for segment in SEGMENT_TO_APP:
            assert rules[f"/{segment}/**"] == "allow", segment
        assert rules["/internal/**"] == "deny"
        internal_allowed = [n for n, a in rules.items()
                            if n.startswith("/internal") and a == "allow"]
        # Token introspection (API tokens at the edge) and the stored record behind live output.
        assert internal_allowed == ["/internal/api-tokens/introspect",
                                    "/internal/executions/**/stream"]

    def test_only_the_executor_may_fetch_credentials(self) -> None:
        holders = [p["appId"] for p in self.config()["spec"]["accessControl"]["policies"]
                   if any(o["name"].startswith("/internal/targets/")
                          and o["name"].endswith("/credential") and o["action"] == "allow"
                          for o in p["operations"])]
        assert holders == ["executor"]


class TestResiliency:
    def spec(self) -> dict[str, Any]:
        resiliency = load(dapr_dir() / "resiliency.yaml")[0]
        assert resiliency["kind"] == "Resiliency"
        spec: dict[str, Any] = resiliency["spec"]
        return spec

    def test_every_retry_is_bounded(self) -> None:
        for name, retry in self.spec()["policies"]["retries"].items():
            assert isinstance(retry.get("maxRetries"), int) and retry["maxRetries"] >= 0, name

    def test_every_app_and_component_has_timeout_retry_and_breaker(self) -> None:
        spec = self.spec()
        policies = spec["policies"]
        targets = spec["targets"]
        names = {c["metadata"]["name"] for path, c in components().items()
                 if "kubernetes" not in path.parts}
        for app in {a.app_id for a in HOSTED_APPS} | APP_IDS:
            app_policy = targets["apps"][app]
            assert app_policy["timeout"] in policies["timeouts"]
            assert app_policy["retry"] in policies["retries"]
            assert app_policy["circuitBreaker"] in policies["circuitBreakers"]
        for name in names:
            target = targets["components"][name]
            for direction in target.values():
                assert direction["timeout"] in policies["timeouts"], name
                assert direction["retry"] in policies["retries"], name
                assert direction["circuitBreaker"] in policies["circuitBreakers"], name


class TestRunFile:
    def test_the_run_file_starts_every_hosted_app_once(self) -> None:
        run = yaml.safe_load((dapr_dir() / "dapr.yaml").read_text())
        apps = {a["appID"]: a for a in run["apps"]}
        assert set(apps) == {a.app_id for a in HOSTED_APPS}
        ports = [a[key] for a in apps.values()
                 for key in ("appPort", "daprHTTPPort", "daprGRPCPort", "metricsPort")]
        assert len(ports) == len(set(ports))
        assert apps["gateway"]["appPort"] == 8080
        for hosted in HOSTED_APPS:
            assert f"{hosted.package}.main:create_app" in apps[hosted.app_id]["command"]
