"""Kubernetes Secrets for the manifests under tilt/, generated (never committed).

Reads rendered manifests (`kustomize build ...`) on stdin, finds every Secret they reference
(container env, the Dapr token annotations, components' secretKeyRef, Roles' resourceNames) and
prints one Secret manifest per name with fresh values: API and app tokens, database URLs and
passwords for the development servers in tilt/infra/, the JWT signing key and the credential
master key (made by the same factories as `opsconductor up`). Values are kept in a state file
(owner-only, under the data dir) so a Tiltfile reload re-applies the same keys and passwords.
A referenced name this script cannot make is an error, so a manifest never waits for a Secret
nobody creates.

    kustomize build --load-restrictor LoadRestrictionsNone tilt/overlays/rabbitmq \
        | python tilt/k8s_secrets.py --state .data/tilt/kubernetes-secrets.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

TOKEN_ANNOTATIONS = ("dapr.io/api-token-secret", "dapr.io/app-token-secret")
# In-cluster development servers (tilt/infra/): Services in the same namespace.
POSTGRES = "postgres:5432"
RABBITMQ = "rabbitmq:5672"
REDIS = "redis:6379"
DATABASE_USER = "opsc"
DATABASE_PREFIX = "opsconductor_"


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    spec = doc.get("spec") or {}
    template = spec.get("template") or {}
    return template.get("spec") if template else None


def referenced_secrets(docs: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
    """Secret name -> keys the manifests read from it."""
    wanted: dict[str, set[str]] = {}

    def want(name: str, key: str | None) -> None:
        keys = wanted.setdefault(name, set())
        if key:
            keys.add(key)

    for doc in docs:
        kind = doc.get("kind")
        pod = _pod_spec(doc)
        if pod is not None:
            annotations = doc["spec"]["template"].get("metadata", {}).get("annotations") or {}
            for annotation in TOKEN_ANNOTATIONS:
                if annotation in annotations:
                    want(annotations[annotation], "token")
            for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
                for env in container.get("env") or []:
                    ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                    if ref:
                        want(ref["name"], ref["key"])
        elif kind == "Component" and str(doc.get("apiVersion", "")).startswith("dapr.io/"):
            for item in doc["spec"].get("metadata") or []:
                ref = item.get("secretKeyRef")
                if ref:
                    # Kubernetes secret stores read the key named like the secret by default.
                    want(ref["name"], ref.get("key") or ref["name"])
        elif kind == "Role":
            for rule in doc.get("rules") or []:
                if "secrets" in rule.get("resources", []):
                    for name in rule.get("resourceNames") or []:
                        # Read through a secret store: one key, named like the secret.
                        want(name, name)
    return wanted


def namespace_of(docs: Iterable[dict[str, Any]]) -> str | None:
    for doc in docs:
        namespace = (doc.get("metadata") or {}).get("namespace")
        if namespace and doc.get("kind") != "Namespace":
            return str(namespace)
    return None


class Values:
    """Makes (and remembers) the value of one secret key."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.passwords: dict[str, str] = state.setdefault("passwords", {})

    def password(self, server: str) -> str:
        if server not in self.passwords:
            self.passwords[server] = secrets.token_urlsafe(24)
        return self.passwords[server]

    def make(self, name: str, key: str) -> str | None:
        rules: list[tuple[str, str, Callable[[re.Match[str]], str]]] = [
            (r".+-(api|app)-token", "token", lambda _m: secrets.token_urlsafe(32)),
            (r"(?P<app>[a-z][a-z0-9]*)-database", "url", lambda m: (
                f"postgresql+asyncpg://{DATABASE_USER}:{self.password('postgres')}@{POSTGRES}/"
                f"{DATABASE_PREFIX}{m['app']}")),
            (r"postgres-admin", "password", lambda _m: self.password("postgres")),
            (r"statestore-connection", "statestore-connection", lambda _m: (
                f"postgresql://{DATABASE_USER}:{self.password('postgres')}@{POSTGRES}/"
                f"{DATABASE_PREFIX}state")),
            (r"rabbitmq-admin", "password", lambda _m: self.password("rabbitmq")),
            (r"rabbitmq-url", "rabbitmq-url", lambda _m: (
                f"amqp://{DATABASE_USER}:{self.password('rabbitmq')}@{RABBITMQ}/")),
            (r"redis-host", "redis-host", lambda _m: REDIS),
            (r"redis-username", "redis-username", lambda _m: ""),
            (r"redis-password", "redis-password", lambda _m: self.password("redis")),
            (r"redis-db", "redis-db", lambda _m: "0"),
            (r"admin-password", "password", lambda _m: secrets.token_urlsafe(18)),
        ]
        for pattern, wanted_key, make in rules:
            match = re.fullmatch(pattern, name)
            if match and key == wanted_key:
                return make(match)
        return self.application_secret(name, key)

    @staticmethod
    def application_secret(name: str, key: str) -> str | None:
        """The JWT signing key and credential master key, as embedded mode makes them."""
        from opsconductor_platform.hosting import SECRET_FACTORIES

        factory = SECRET_FACTORIES.get(name)
        return factory() if factory is not None and key == name else None


def generate(docs: list[dict[str, Any]], state: dict[str, Any]) -> list[dict[str, Any]]:
    """Secret manifests for every Secret `docs` reference; raises KeyError for unknown ones."""
    values = Values(state)
    stored: dict[str, dict[str, str]] = state.setdefault("secrets", {})
    namespace = namespace_of(docs)
    unknown = []
    manifests = []
    for name, keys in sorted(referenced_secrets(docs).items()):
        data = stored.setdefault(name, {})
        missing = [key for key in sorted(keys) if key not in data]
        for key in missing:
            value = values.make(name, key)
            if value is None:
                unknown.append(f"{name}/{key}")
            else:
                data[key] = value
        if not keys <= data.keys():
            continue
        metadata: dict[str, Any] = {"name": name,
                                    "labels": {"app.kubernetes.io/part-of": "opsconductor"}}
        if namespace:
            metadata["namespace"] = namespace
        manifests.append({"apiVersion": "v1", "kind": "Secret", "metadata": metadata,
                          "type": "Opaque", "stringData": {k: data[k] for k in sorted(keys)}})
    if unknown:
        raise KeyError("no rule makes these referenced secrets: " + ", ".join(unknown))
    return manifests


def load_state(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(state, handle, indent=1, sort_keys=True)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", type=Path, required=True,
                        help="JSON file keeping the generated values (created 0600)")
    args = parser.parse_args(argv)
    docs = [d for d in yaml.safe_load_all(sys.stdin.read()) if d]
    state = load_state(args.state)
    try:
        manifests = generate(docs, state)
    except KeyError as exc:
        print(f"tilt/k8s_secrets.py: {exc.args[0]}", file=sys.stderr)
        return 1
    save_state(args.state, state)
    yaml.safe_dump_all(manifests, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
