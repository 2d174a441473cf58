"""The Tiltfile with the real Tilt CLI (scripts/build-tilt.sh builds it from its Go module): it
loads in both modes, and `tilt ci` brings Dapr mode up on this machine through it, ending with
a request through the gateway and two sidecars.

Needs tilt (and kustomize for the cluster mode) from scripts/build-tilt.sh; `tilt ci` also needs
the Dapr tier (daprd, sentry, PostgreSQL, RabbitMQ: scripts/dapr-tier.sh). Missing pieces skip
loudly, and fail under CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from opsconductor_platform.dapr_setup import free_port
from opsconductor_platform.hosting import HOSTED_APPS
from opsconductor_testing.dapr import database_prefix, require_dapr
from opsconductor_testing.postgres import drop_databases_with_prefix
from opsconductor_testing.tiers import missing_dependency

REPO_ROOT = Path(__file__).resolve().parents[2]
TILTFILE = REPO_ROOT / "Tiltfile"
HOW_TO = "run scripts/build-tilt.sh"


def binary(name: str, env_var: str) -> Path:
    for candidate in (os.environ.get(env_var), REPO_ROOT / ".cache" / name / "current",
                      shutil.which(name)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    missing_dependency(f"{name}: not built; {HOW_TO}")


def tilt_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """Tilt's own state under tmp_path (not the Go and uv caches: XDG_CACHE_HOME stays), no
    kubectl context, the Tiltfile's settings; the test's environment is already synced."""
    xdg = {name: str(tmp_path / "xdg" / name.lower())
           for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME")}
    return {**os.environ, **xdg, "TILT_DISABLE_ANALYTICS": "1", "OPSC_TILT_SYNC": "0",
            "OPSC_DATA_DIR": str(tmp_path / "data"),
            "KUBECONFIG": str(tmp_path / "no-kubeconfig"), **settings}


def tiltfile_result(tmp_path: Path, **settings: str) -> dict[str, Any]:
    result = subprocess.run(
        [str(binary("tilt", "OPSC_TILT")), "alpha", "tiltfile-result", "--file", str(TILTFILE)],
        cwd=REPO_ROOT, env=tilt_env(tmp_path, **settings), capture_output=True, text=True,
        timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def manifests(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["Name"]: m for m in result["Manifests"]}


class TestTheTiltfileLoads:
    def test_without_a_cluster_each_hosted_app_is_a_local_resource(self, tmp_path: Path) -> None:
        loaded = manifests(tiltfile_result(tmp_path, OPSC_TILT_K8S="0"))
        apps = [a.app_id for a in HOSTED_APPS]
        assert set(loaded) == {"servers", "daprd", "sentry", "smoke", *apps}
        text = json.dumps(loaded)
        for app_id in apps:
            assert f'"tilt/local.py", "app", "{app_id}"' in text
        assert "tilt/local.py\", \"sentry\"" in text

    def test_with_a_cluster_each_app_is_an_image_and_a_workload(self, tmp_path: Path) -> None:
        kustomize = binary("kustomize", "OPSC_KUSTOMIZE")
        loaded = manifests(tiltfile_result(tmp_path, OPSC_TILT_K8S="1",
                                           OPSC_KUSTOMIZE=str(kustomize)))
        apps = {p.parent.name for p in (REPO_ROOT / "apps").glob("*/Dockerfile")}
        assert apps | {"postgres", "rabbitmq"} <= set(loaded)
        text = json.dumps(loaded)
        for app in apps:
            assert f"apps/{app}/Dockerfile" in text
        assert "8080" in json.dumps(loaded["gateway"])


@pytest.mark.e2e
def test_tilt_ci_runs_dapr_mode_on_this_machine(tmp_path: Path,
                                                dapr_brokers: dict[str, str]) -> None:
    tilt = binary("tilt", "OPSC_TILT")
    env = require_dapr("rabbitmq", dapr_brokers)
    prefix = database_prefix("tilt")
    port = free_port()
    settings = {"OPSC_TILT_K8S": "0", "OPSC_TILT_SERVICES": "0", "OPSC_TILT_PORT": str(port),
                "OPSC_TILT_SENTRY_PORT": str(free_port()), "OPSC_DATABASE_PREFIX": prefix,
                "OPSC_POSTGRES_URL": env["OPSC_POSTGRES_URL"],
                "OPSC_RABBITMQ_URL": env["OPSC_RABBITMQ_URL"]}
    try:
        result = subprocess.run(
            [str(tilt), "ci", "--file", str(TILTFILE), "--port", str(free_port()),
             "--timeout", "5m"],
            cwd=REPO_ROOT, env=tilt_env(tmp_path, **settings), capture_output=True, text=True,
            timeout=420, check=False)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:]
        assert "GET /api/v1/auth/jwks: 200" in output
        for app in HOSTED_APPS:
            assert f"{app.app_id} is up" in output
    finally:
        drop_databases_with_prefix(f"{env['OPSC_POSTGRES_URL']}/postgres", prefix)
    # Tilt stopped everything it started on its way out.
    ready = tmp_path / "data" / "dapr" / "tilt"
    assert sorted(ready.glob("*.ready")) == []
