"""Targets through the gateway of a real `opsconductor up`: an operator registers an SSH server
on a loopback sshd, tests it, approves its host key, tests again; the credential master key is
rotated while the platform runs; nothing in the data dir holds a plaintext secret."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsconductor_testing.platform import ADMIN_PASSWORD, RunningPlatform, free_port
from opsconductor_testing.sshd import SshServer

REPO = Path(__file__).resolve().parents[2]
IMPORT_PASSWORD = "E2E-Imported-Secret-2718"


@pytest.fixture
def components(tmp_path: Path) -> Path:
    """The repository's components, with the targets tick every second (rotation shows fast)."""
    directory = tmp_path / "components"
    shutil.copytree(REPO / "components", directory)
    path = directory / "targets-health.yaml"
    path.write_text(path.read_text().replace('"@every 1m"', '"@every 1s"'))
    return directory


@pytest.fixture
def targets_platform(tmp_path: Path, components: Path) -> Iterator[RunningPlatform]:
    running = RunningPlatform(
        data_dir=tmp_path / "data", port=free_port(), log_path=tmp_path / "platform.log",
        env={"OPSC_ADMIN_PASSWORD": ADMIN_PASSWORD, "OPSC_LOG_LEVEL": "INFO",
             # The sshd of this test listens on 127.0.0.1.
             "OPSC_TARGETS_ALLOW_LOOPBACK": "true", "OPSC_COMPONENTS_DIR": str(components)})
    running.start()
    yield running
    if running.process is not None and running.process.poll() is None:
        running.stop()


def data_dir_bytes(directory: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def key_ids(data_dir: Path) -> set[str]:
    connection = sqlite3.connect(data_dir / "targets.db")
    try:
        return {row[0] for row in connection.execute("SELECT key_id FROM credentials")}
    finally:
        connection.close()


def assert_absent(haystack: bytes, *secrets: str) -> None:
    for secret in secrets:
        for piece in [secret, *(line.strip() for line in secret.splitlines())]:
            if len(piece) >= 8 and not piece.startswith("-----"):
                assert piece.encode() not in haystack, "a plaintext secret is in the data dir"


class TestTargetsThroughTheGateway:
    def test_register_test_pin_test_rotate(self, targets_platform: RunningPlatform,
                                           sshd: SshServer, tmp_path: Path) -> None:
        platform = targets_platform
        token = platform.login("admin", ADMIN_PASSWORD)["access_token"]
        user, password = sshd.password_user()
        key = sshd.client_private_key
        with platform.client(token) as admin:
            created = admin.post("/api/v1/targets", json={
                "name": "web-01", "host": sshd.host, "port": sshd.port, "username": sshd.user,
                "tags": ["web"], "credential": {"type": "private_key", "private_key": key}})
            assert created.status_code == 201, created.text
            target = created.json()
            assert target["has_credential"] is True and "BEGIN" not in created.text
            by_password = admin.post("/api/v1/targets", json={
                "name": "web-02", "host": sshd.host, "port": sshd.port, "username": user,
                "host_key": sshd.host_public_key,
                "credential": {"type": "password", "password": password}})
            assert by_password.status_code == 201, by_password.text

            first = admin.post(f"/api/v1/targets/{target['id']}/test").json()
            assert (first["ok"], first["stage"]) == (False, "host_key")
            assert first["host_key_fingerprint"] == sshd.host_key_fingerprint
            pinned = admin.post(f"/api/v1/targets/{target['id']}/host-key",
                                json={"fingerprint": first["host_key_fingerprint"]})
            assert pinned.status_code == 200, pinned.text
            second = admin.post(f"/api/v1/targets/{target['id']}/test").json()
            assert second["ok"] is True, second
            assert second["os_info"].startswith("Linux ")
            assert admin.post(f"/api/v1/targets/{by_password.json()['id']}/test").json()["ok"]

            # The gateway serves neither the internal credential route nor the binding.
            assert admin.get(f"/api/v1/internal/targets/{target['id']}/credential"
                             ).status_code == 404
            assert admin.post("/api/v1/targets-health").status_code == 404
            assert admin.get(f"/api/v1/targets/{target['id']}/health").json()["items"]
            exported = admin.get("/api/v1/targets/export", params={"format": "yaml"})
            assert exported.status_code == 200 and "web-01" in exported.text

        # The CLI imports an inventory through the API, with a progress bar.
        inventory = tmp_path / "hosts.ini"
        inventory.write_text("[db]\ndb[1:3] ansible_host=192.0.2.10 ansible_user=postgres "
                             f"ansible_password={IMPORT_PASSWORD}\n")
        cli = [sys.executable, "-m", "opsconductor_platform", "targets", "import",
               str(inventory), "--url", platform.url, "--batch", "2"]
        env = {**os.environ, "OPSC_TOKEN": token}
        dry = subprocess.run([*cli, "--dry-run"], env=env, capture_output=True, text=True,
                             timeout=60)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "would create 3" in dry.stdout
        done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "created 3" in done.stdout
        again = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
        assert "unchanged 3" in again.stdout
        assert IMPORT_PASSWORD not in dry.stdout + done.stdout + again.stdout

        # Rotate the master key while the platform runs: the next ticks re-wrap every row.
        before = key_ids(platform.data_dir)
        rotate = subprocess.run([sys.executable, "-m", "opsconductor_platform", "keys", "rotate",
                                 "--data-dir", str(platform.data_dir)],
                                capture_output=True, text=True, timeout=60)
        assert rotate.returncode == 0, rotate.stderr
        keyring = json.loads(json.loads((platform.data_dir / "secrets.json").read_text())[
            "credential-master-key"])
        assert len(keyring["keys"]) == 2 and keyring["active"] not in before
        deadline = time.monotonic() + 30
        while key_ids(platform.data_dir) != {keyring["active"]} and time.monotonic() < deadline:
            time.sleep(0.2)
        assert key_ids(platform.data_dir) == {keyring["active"]}
        with platform.client(token) as admin:
            assert admin.post(f"/api/v1/targets/{target['id']}/test").json()["ok"] is True

        assert platform.stop() == 0
        everything = data_dir_bytes(platform.data_dir) + platform.output().encode()
        assert_absent(everything, key, password, IMPORT_PASSWORD)
