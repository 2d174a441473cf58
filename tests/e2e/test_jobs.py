"""Jobs end to end through the gateway of a real `opsconductor up`, on loopback OpenSSH targets,
on every runtime (embedded, Dapr with RabbitMQ, Dapr with Redis): define a job, run it on twenty
servers with mixed outcomes while following its live output over Server-Sent Events, and trust
the result; resume a stream with Last-Event-ID, cancel, approve a dangerous step, retry what
failed; and kill -9 the executor mid-run (embedded: the whole platform, restarted; Dapr mode:
the executor's own process, which the platform restarts).

One platform per runtime serves every scenario of this module (a Dapr platform takes a while to
start); each scenario registers its own targets under its own tag, and the crash comes last.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from opsconductor_testing.platform import ADMIN_PASSWORD, RunningPlatform
from opsconductor_testing.sshd import (
    SshFactory,
    SshServer,
    loopback_addresses,
    process_ids_matching,
    unique_sleep,
    wait_until,
)

from .conftest import RUNTIMES, make_platform

FINAL = {"succeeded", "failed", "canceled", "timed_out", "interrupted"}
TARGETS_ENV = {"OPSC_TARGETS_ALLOW_LOOPBACK": "true"}
EXECUTOR_APP = "opsconductor_executor.main:create_app"
# A Dapr platform's start counts toward its first scenario's time.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module", params=RUNTIMES)
def jobs_platform(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    tmp_path = tmp_path_factory.mktemp(f"jobs-{request.param}")
    running = make_platform(request.param, tmp_path, request)
    running.env |= TARGETS_ENV
    try:
        running.start()
        yield running
    finally:
        if running.process is not None and running.process.poll() is None:
            running.stop()
        running.drop_databases()


@pytest.fixture
def servers(sshd_factory: SshFactory) -> SshServer:
    """One sshd answering on twenty loopback addresses of its own (127.0.7.x)."""
    return sshd_factory(addresses=[a.replace("127.0.0.", "127.0.7.")
                                   for a in loopback_addresses(20)])


def register(client: httpx.Client, server: SshServer, address: str, name: str,
             tags: list[str], port: int | None = None) -> str:
    response = client.post("/api/v1/targets", json={
        "name": name, "host": address, "port": port or server.port, "username": server.user,
        "tags": tags, "host_key": server.host_public_key,
        "credential": {"type": "private_key", "private_key": server.client_private_key}})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def run_job(client: httpx.Client, job: httpx.Response, **body: Any) -> str:
    """Starts a run of a job just created; the execution id."""
    assert job.status_code == 201, job.text
    run = client.post(f"/api/v1/jobs/{job.json()['id']}/run", json=body)
    assert run.status_code == 202, run.text
    return str(run.json()["execution_id"])


def follow(platform: RunningPlatform, token: str, execution_id: str, *, last_event_id: int = 0,
           stop_after: int | None = None, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """Reads the SSE stream; returns [{id, event, data}] until `finished` (or `stop_after`)."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = str(last_event_id)
    messages: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    with httpx.Client(base_url=platform.url, timeout=httpx.Timeout(timeout_s)) as client, \
            client.stream("GET", f"/api/v1/executions/{execution_id}/events",
                          headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if not line:
                if current:
                    messages.append(current)
                    if current.get("event") == "finished":
                        break
                    if stop_after is not None and sum("id" in m for m in messages) >= stop_after:
                        break
                current = {}
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "id":
                current["id"] = int(value)
            elif field == "event":
                current["event"] = value
            elif field == "data":
                current["data"] = json.loads(value)
    return messages


def wait_final(client: httpx.Client, execution_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body: dict[str, Any] = client.get(f"/api/v1/executions/{execution_id}").json()
        if body["status"] in FINAL or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def output_by_target(client: httpx.Client, execution_id: str) -> dict[str, str]:
    text: dict[str, str] = {}
    after = 0
    while True:
        page = client.get(f"/api/v1/executions/{execution_id}/output",
                          params={"after_seq": after, "limit": 500}).json()
        for chunk in page["items"]:
            text[chunk["target_id"]] = text.get(chunk["target_id"], "") + chunk["data"]
            after = chunk["seq"]
        if not page["items"]:
            return text


HOSTILE = "; touch /tmp/opsc-pwned-{marker} $(id) `id` \"quoted\" 'single'\nnext line"


class TestFanOutWithLiveOutput:
    def test_twenty_targets_mixed_outcomes(self, jobs_platform: RunningPlatform,
                                           servers: SshServer) -> None:
        platform = jobs_platform
        token = platform.login("admin", ADMIN_PASSWORD)["access_token"]
        marker = uuid.uuid4().hex
        hostile = HOSTILE.format(marker=marker)
        addresses = servers.addresses
        with platform.client(token) as admin:
            ids = {register(admin, servers, address, f"web-{n:02d}", ["fleet"]): address
                   for n, address in enumerate(addresses[:19])}
            # Nothing listens on this port: the connection is refused.
            closed_port = servers.port + 1 if servers.port < 65000 else servers.port - 1
            unreachable = register(admin, servers, addresses[19], "gone-01", ["fleet"],
                                   port=closed_port)
            exit_three, slow = addresses[3], addresses[4]
            job = admin.post("/api/v1/jobs", json={
                "name": "mixed-fleet", "description": "three steps, mixed outcomes",
                "steps": [
                    {"name": "greet", "kind": "command",
                     "command": "printf 'got:%s:end\\n' {{ who }}"},
                    {"name": "decide", "kind": "command", "timeout_s": 10,
                     "command": f"case \"$SSH_CONNECTION\" in *' {exit_three} '*) exit 3;; "
                                f"*' {slow} '*) sleep 120;; esac; echo decided"},
                    {"name": "script", "kind": "script", "interpreter": "/bin/sh",
                     "script": "echo from-script\necho warn >&2\n"},
                ],
                "parameters": [{"name": "who", "type": "string", "required": True}],
                "targets": {"tags": ["fleet"]}, "concurrency": 50})
            execution_id = run_job(admin, job, parameters={"who": hostile})

            messages = follow(platform, token, execution_id)
            ids_seen = [m["id"] for m in messages if "id" in m]
            assert ids_seen == sorted(set(ids_seen)), "SSE ids repeat or go backwards"
            assert messages[-1]["event"] == "finished"
            assert messages[-1]["data"]["status"] == "failed"
            assert sum(m["event"] == "target_finished" for m in messages) == 20

            execution = wait_final(admin, execution_id)
            targets = {t["target_id"]: t for t in
                       admin.get(f"/api/v1/executions/{execution_id}/targets").json()["items"]}
            assert execution["status"] == "failed"
            assert execution["counts"]["total"] == 20
            # On failure: the targets that should have succeeded, and why they did not.
            assert execution["counts"]["succeeded"] == 17, [
                (ids.get(t["target_id"]), t["name"], t["status"], t["error"], t["exit_code"])
                for t in targets.values() if t["status"] != "succeeded"
                and ids.get(t["target_id"]) not in (exit_three, slow) and t["name"] != "gone-01"]
            by_address = {ids.get(tid, "unreachable"): t for tid, t in targets.items()}
            assert by_address[exit_three]["status"] == "failed"
            assert by_address[exit_three]["exit_code"] == 3
            assert by_address[slow]["status"] == "timed_out"
            assert targets[unreachable]["status"] == "failed"
            assert targets[unreachable]["error"]

            output = output_by_target(admin, execution_id)
            for target_id, address in ids.items():
                # The hostile value arrived as one literal argument on every target.
                assert f"got:{hostile}:end" in output[target_id], address
                if address not in (exit_three, slow):
                    assert "decided" in output[target_id] and "from-script" in output[target_id]
            streamed = "".join(m["data"]["data"] for m in messages if m["event"] == "output")
            assert streamed.count("from-script") == 17
        assert not Path(f"/tmp/opsc-pwned-{marker}").exists()


class TestResumeAndControl:
    def test_resume_cancel_approval_and_retry(self, jobs_platform: RunningPlatform,
                                              servers: SshServer) -> None:
        platform = jobs_platform
        token = platform.login("admin", ADMIN_PASSWORD)["access_token"]
        with platform.client(token) as admin:
            for n, address in enumerate(servers.addresses[:10]):
                register(admin, servers, address, f"db-{n:02d}", ["db"])

            # Resume: read part of the stream, drop it, continue from Last-Event-ID.
            chatty = admin.post("/api/v1/jobs", json={
                "name": "chatty", "targets": {"tags": ["db"]},
                "steps": [{"name": "count", "kind": "command",
                           "command": "for i in 1 2 3 4 5; do echo line-$i; sleep 0.2; done"}]})
            execution_id = run_job(admin, chatty)
            first = follow(platform, token, execution_id, stop_after=5)
            last = max(m["id"] for m in first if "id" in m)
            rest = follow(platform, token, execution_id, last_event_id=last)
            seqs = [m["id"] for m in first + rest if "id" in m]
            assert len(seqs) == len(set(seqs)), "a message came twice across the reconnect"
            stored = [c["seq"] for c in admin.get(f"/api/v1/executions/{execution_id}/output",
                                                  params={"limit": 500}).json()["items"]]
            assert set(stored) <= set(seqs), "a stored output chunk never reached the client"

            # Cancel: running commands stop on every target.
            sleep = unique_sleep()
            sleeper = admin.post("/api/v1/jobs", json={
                "name": "sleeper", "targets": {"tags": ["db"]},
                "steps": [{"name": "wait", "kind": "command", "command": f"sleep {sleep}"}]})
            execution_id = run_job(admin, sleeper)
            assert wait_until(lambda: len(process_ids_matching(f"sleep {sleep}")) >= 10, 30)
            canceled_at = time.monotonic()
            assert admin.post(f"/api/v1/executions/{execution_id}/cancel").status_code == 202
            assert wait_final(admin, execution_id, 10)["status"] == "canceled"
            assert time.monotonic() - canceled_at < 5
            assert wait_until(lambda: not process_ids_matching(f"sleep {sleep}"), 30), \
                "a canceled command is still running on its target"

            # A dangerous step is refused until someone approves that exact text.
            risky = admin.post("/api/v1/jobs", json={
                "name": "risky", "targets": {"tags": ["db"]},
                "steps": [{"name": "maybe", "kind": "command",
                           "command": "true || shutdown -h now"}]})
            assert risky.status_code == 201, risky.text
            assert risky.json()["blocked_steps"] == ["maybe"]
            refused = admin.post(f"/api/v1/jobs/{risky.json()['id']}/run", json={})
            assert refused.status_code in (403, 409), refused.text
            assert refused.headers["content-type"].startswith("application/problem+json")
            findings = admin.post("/api/v1/jobs/validate", json={
                "name": "risky-check", "targets": {"tags": ["db"]},
                "steps": [{"name": "maybe", "kind": "command",
                           "command": "true || shutdown -h now"}]}).json()
            assert any(f["severity"] == "danger" for f in findings["findings"])
            danger = risky.json()["dangerous_steps"][0]
            approval = admin.post(f"/api/v1/jobs/{risky.json()['id']}/approvals", json={
                "step_name": danger["step"], "step_sha256": danger["sha256"]})
            assert approval.status_code == 201, approval.text
            approved_run = admin.post(f"/api/v1/jobs/{risky.json()['id']}/run", json={})
            assert approved_run.status_code == 202, approved_run.text
            assert wait_final(admin, approved_run.json()["execution_id"])["status"] == "succeeded"

            # Retry-failed runs only what failed.
            flaky = admin.post("/api/v1/jobs", json={
                "name": "flaky", "targets": {"tags": ["db"]},
                "steps": [{"name": "odd", "kind": "command",
                           "command": f"case \"$SSH_CONNECTION\" in *' {servers.addresses[1]} '*)"
                                      " exit 7;; esac; echo fine"}]})
            first_run = run_job(admin, flaky)
            assert wait_final(admin, first_run)["status"] == "failed"
            retried = admin.post(f"/api/v1/executions/{first_run}/retry-failed", json={})
            assert retried.status_code == 202, retried.text
            second = wait_final(admin, retried.json()["execution_id"])
            assert second["counts"]["total"] == 1 and second["status"] == "failed"


class TestCrashRecovery:
    def test_kill_nine_mid_run_reaches_one_final_state(self, jobs_platform: RunningPlatform,
                                                       servers: SshServer) -> None:
        platform = jobs_platform
        token = platform.login("admin", ADMIN_PASSWORD)["access_token"]
        with platform.client(token) as admin:
            for n, address in enumerate(servers.addresses[:6]):
                register(admin, servers, address, f"app-{n:02d}", ["app"])
            job = admin.post("/api/v1/jobs", json={
                "name": "slow-rollout", "targets": {"tags": ["app"]}, "concurrency": 2,
                "steps": [{"name": "deploy", "kind": "command",
                           "command": "echo deploying; sleep 8; echo deployed"}]})
            execution_id = run_job(admin, job)
            # Kill once two targets printed: their step was dispatched and is still sleeping.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                started = [t for t, text in output_by_target(admin, execution_id).items()
                           if "deploying" in text]
                if len(started) >= 2:
                    break
                time.sleep(0.05)
            assert len(started) == 2, started
        if platform.runtime == "embedded":
            platform.kill()
            platform.start()
        else:
            # The executor app alone dies; the platform starts it again (on the same port).
            [executor] = platform.process_ids(EXECUTOR_APP)
            os.kill(executor, signal.SIGKILL)
            assert wait_until(lambda: platform.process_ids(EXECUTOR_APP) not in ([], [executor]),
                              30), platform.output()[-3000:]
        token = platform.login("admin", ADMIN_PASSWORD)["access_token"]
        with platform.client(token) as admin:
            execution = wait_final(admin, execution_id, 90)
            assert execution["status"] == "interrupted", execution
            targets = admin.get(f"/api/v1/executions/{execution_id}/targets").json()["items"]
            statuses = sorted(t["status"] for t in targets)
            # The two that were running may have deployed: marked, not silently re-run.
            assert statuses.count("interrupted") == 2, statuses
            assert statuses.count("succeeded") == 4, statuses
        if platform.runtime != "embedded":
            assert any(line.get("message") == "process stopped unexpectedly; restarting it"
                       and line.get("process_name") == "executor"
                       and line.get("reason") == "killed by SIGKILL"
                       for line in log_lines(platform)), "the restart was not logged"


def log_lines(platform: RunningPlatform) -> list[dict[str, Any]]:
    """The platform's own JSON log lines."""
    lines = []
    for text in platform.output().splitlines():
        if text.startswith("{"):
            try:
                lines.append(json.loads(text))
            except ValueError:
                continue
    return lines
