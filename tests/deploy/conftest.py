"""What the deployment tests share: the manifests under tilt/ rendered by kustomize, the Kubernetes
API schemas (kubernetes-validate, strict) and the Dapr CRD schemas of the pinned dapr release.

Needs kustomize (scripts/build-tilt.sh kustomize) and the dapr module in Go's module cache
(scripts/build-daprd.sh puts it there); without them the tests skip loudly, and fail under CI.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from opsconductor_testing.dapr import dapr_brokers
from opsconductor_testing.tiers import missing_dependency

# The Dapr tier's broker namespaces, for `tilt ci` (test_tilt.py).
__all__ = ["dapr_brokers"]

REPO_ROOT = Path(__file__).resolve().parents[2]
TILT_DIR = REPO_ROOT / "tilt"
# Kubernetes release whose API schemas the manifests must satisfy (one kubernetes-validate ships;
# Dapr 1.16 supports it).
KUBERNETES_VERSION = "1.33.0"
DAPR_MODULE = "github.com/dapr/dapr"


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomize_binary() -> Path | None:
    for candidate in (os.environ.get("OPSC_KUSTOMIZE"),
                      REPO_ROOT / ".cache" / "kustomize" / "current", shutil.which("kustomize")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def render() -> Callable[[str], list[dict[str, Any]]]:
    """render(path under tilt/) -> the documents `kustomize build` makes of it."""
    binary = kustomize_binary()
    if binary is None:
        missing_dependency("kustomize: not built; run scripts/build-tilt.sh kustomize")

    @functools.cache
    def build(path: str) -> tuple[str, ...]:
        result = subprocess.run(
            [str(binary), "build", "--load-restrictor", "LoadRestrictionsNone",
             str(TILT_DIR / path)], capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, f"kustomize build {path}: {result.stderr}"
        return tuple(json.dumps(d) for d in yaml.safe_load_all(result.stdout) if d)

    return lambda path: [json.loads(d) for d in build(path)]


# -- Kubernetes API schemas --------------------------------------------------------------------

def kubernetes_errors(doc: dict[str, Any]) -> list[str]:
    """Problems of a Kubernetes object against the API schema (strict: unknown fields too)."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "(root)"
        return [f"{where}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [exc.message]
    return []


# -- Dapr CRD schemas ----------------------------------------------------------------------------

def pinned_dapr_version() -> str:
    """The release dapr/sidecar/go.mod builds daprd from: the one source of truth."""
    gomod = (REPO_ROOT / "dapr" / "sidecar" / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(DAPR_MODULE)}\s+(v\S+)", gomod, re.M)
    assert match, "dapr/sidecar/go.mod does not require github.com/dapr/dapr"
    return match.group(1)


def dapr_module_dir(version: str) -> Path | None:
    """The dapr module's directory in Go's module cache (never downloads: GOPROXY=off)."""
    if shutil.which("go") is None:
        return None
    env = {**os.environ, "GOPROXY": "off", "GOFLAGS": "-mod=mod"}
    result = subprocess.run(["go", "mod", "download", "-json", f"{DAPR_MODULE}@{version}"],
                            capture_output=True, text=True, env=env, timeout=60, check=False,
                            cwd=REPO_ROOT / "dapr" / "sidecar")
    try:
        directory = json.loads(result.stdout).get("Dir")
    except json.JSONDecodeError:
        return None
    return Path(directory) if directory and Path(directory).is_dir() else None


def strict_schema(node: Any) -> Any:
    """A CRD's OpenAPI v3 schema as a JSON Schema that refuses unknown fields, as the API server
    does with strict field validation: objects with declared properties get
    additionalProperties false unless x-kubernetes-preserve-unknown-fields says otherwise."""
    if isinstance(node, list):
        return [strict_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    schema = {k: strict_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in node and "additionalProperties" not in node and not preserve:
        schema["additionalProperties"] = False
    return schema


class DaprSchemas:
    """Validators per (apiVersion, kind) from the CRDs in the dapr module's Helm chart."""

    def __init__(self, crd_dir: Path) -> None:
        self.validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
        for path in sorted(crd_dir.glob("*.yaml")):
            for crd in load_yaml(path):
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for version in crd["spec"]["versions"]:
                    schema = strict_schema(version["schema"]["openAPIV3Schema"])
                    schema["required"] = sorted({*schema.get("required", []), "metadata"})
                    validator = jsonschema.Draft202012Validator(schema)
                    self.validators[(f"{group}/{version['name']}", kind)] = validator

    def errors(self, doc: dict[str, Any]) -> list[str]:
        validator = self.validators.get((doc.get("apiVersion", ""), doc.get("kind", "")))
        if validator is None:
            return [f"no Dapr schema for {doc.get('apiVersion')} {doc.get('kind')}"]
        problems = [f"{'.'.join(str(p) for p in e.path) or '(root)'}: {e.message}"
                    for e in validator.iter_errors(doc)]
        if not (doc.get("metadata") or {}).get("name"):
            problems.append("metadata.name: missing")
        return problems


@pytest.fixture(scope="session")
def dapr_schemas() -> DaprSchemas:
    version = pinned_dapr_version()
    module = dapr_module_dir(version)
    if module is None:
        missing_dependency(f"{DAPR_MODULE}@{version} is not in Go's module cache (the CRD "
                           "schemas come from it); run scripts/build-daprd.sh")
    return DaprSchemas(module / "charts" / "dapr" / "crds")


@pytest.fixture(scope="session")
def dapr_annotations() -> set[str]:
    """Every pod annotation the Dapr sidecar injector of the pinned release understands."""
    version = pinned_dapr_version()
    module = dapr_module_dir(version)
    if module is None:
        missing_dependency(f"{DAPR_MODULE}@{version} is not in Go's module cache; run "
                           "scripts/build-daprd.sh")
    source = (module / "pkg" / "injector" / "annotations" / "annotations.go").read_text()
    return set(re.findall(r'=\s*"(dapr\.io/[a-z0-9-]+)"', source))


@pytest.fixture(scope="session")
def k8s_errors() -> Callable[[dict[str, Any]], list[str]]:
    return kubernetes_errors
