"""Publish-to-delivery latency of bench_dapr_latency.py: through real daprd sidecars on RabbitMQ
and on Redis Streams, and through the embedded broker, for comparison.

Dapr: a publisher sidecar (app-id bench-pub, no app) and a subscriber app (uvicorn,
_dapr_bench_subscriber.py) behind its own sidecar (bench-sub, programmatic subscription). The
project's pub/sub component (components/pubsub-<broker>/pubsub.yaml) is copied with its scopes
and topics narrowed to the two bench app-ids, connection details written in (the bench has no
secret store), in a RabbitMQ vhost / Redis database of its own. The resiliency policy is the
project's. No mTLS: pub/sub never goes sidecar to sidecar.

Each event carries its publish time (taken just before the publish call); the subscriber notes
its arrival time; both clocks are this machine's wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from _dapr_bench_load import ROOT, latency_summary
from _dapr_bench_subscriber import make_app

from opsconductor_platform.dapr_setup import find_binary, free_port
from opsconductor_testing.dapr import rabbitmq_vhost, redis_database

HERE = Path(__file__).resolve().parent
TOPIC = "bench"
PUBLISHER, SUBSCRIBER = "bench-pub", "bench-sub"


def cloud_event(seq: int) -> dict[str, Any]:
    return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": PUBLISHER, "type": TOPIC,
            "datacontenttype": "application/json",
            "data": {"seq": seq, "published_ns": time.time_ns()}}


def component(broker: str, url: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "components" / f"pubsub-{broker}" / "pubsub.yaml").read_text())
    if broker == "rabbitmq":
        values = {"connectionString": url}
    else:
        host, _, db = url.removeprefix("redis://").partition("/")
        values = {"redisHost": host, "redisDB": db or "0"}
    narrowed = {"allowedTopics": TOPIC, "publishingScopes": f"{PUBLISHER}={TOPIC}",
                "subscriptionScopes": f"{SUBSCRIBER}={TOPIC}"}
    metadata = []
    for item in doc["spec"]["metadata"]:
        name = item["name"]
        if "secretKeyRef" in item:
            if name not in values:
                continue  # no user name / password on the loopback broker
            item = {"name": name, "value": values[name]}
        elif name in narrowed:
            item = {"name": name, "value": narrowed[name]}
        metadata.append(item)
    doc["spec"]["metadata"] = metadata
    doc.pop("auth", None)
    doc["scopes"] = [PUBLISHER, SUBSCRIBER]
    return doc


def write_resources(work: Path, broker: str, url: str) -> tuple[Path, Path]:
    resources = work / "resources"
    resources.mkdir()
    (resources / "pubsub.yaml").write_text(yaml.safe_dump(component(broker, url)))
    (resources / "resiliency.yaml").write_text((ROOT / "dapr" / "resiliency.yaml").read_text())
    config = work / "config.yaml"
    # SQLite name resolution, as the project's Configuration: no mDNS multicast.
    config.write_text(yaml.safe_dump({
        "apiVersion": "dapr.io/v1alpha1", "kind": "Configuration", "metadata": {"name": "bench"},
        "spec": {"nameResolution": {"component": "sqlite", "configuration": {
            "connectionString": str(work / "name-resolution.db")}}}}))
    return resources, config


def start_daprd(app_id: str, resources: Path, config: Path, log: Path,
                app_port: int | None = None) -> tuple[subprocess.Popen[bytes], int, int]:
    http, public = free_port(), free_port()
    argv = [str(find_binary("daprd", "OPSC_DAPRD", "current")), "--app-id", app_id,
            "--mode", "standalone", "--dapr-http-port", str(http),
            "--dapr-grpc-port", str(free_port()), "--dapr-listen-addresses", "127.0.0.1",
            "--dapr-internal-grpc-port", str(free_port()),
            "--dapr-internal-grpc-listen-address", "127.0.0.1",
            "--dapr-public-port", str(public), "--dapr-public-listen-address", "127.0.0.1",
            "--metrics-port", str(free_port()), "--metrics-listen-address", "127.0.0.1",
            "--resources-path", str(resources), "--config", str(config),
            "--log-level", "warn", "--log-as-json"]
    if app_port:
        argv += ["--app-port", str(app_port), "--app-protocol", "http",
                 "--app-channel-address", "127.0.0.1"]
    env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    process = subprocess.Popen(argv, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    return process, http, public


def wait_until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if check():
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready within {timeout_s}s")


@contextlib.contextmanager
def broker_namespace(broker: str) -> Iterator[str]:
    if broker == "rabbitmq":
        base = os.environ.get("OPSC_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
        with rabbitmq_vhost(base) as url:
            yield url
    else:
        base = os.environ.get("OPSC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
        with redis_database(base) as url:
            yield url


def paced(events: int, rate: float, publish: Any) -> list[float]:
    """Publishes `events` at a fixed `rate`, on schedule (not after the previous answer);
    returns how long each publish call took, in ms."""
    durations = []
    start = time.monotonic()
    for seq in range(events):
        delay = start + seq / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        began = time.perf_counter()
        publish(cloud_event(seq))
        durations.append((time.perf_counter() - began) * 1000.0)
    return durations


def summarise(broker: str, events: int, rate: float, publish_ms: list[float],
              received: list[list[Any]]) -> dict[str, Any]:
    measured = [r for r in received if r[0] >= 0]
    unique = {r[0] for r in measured}
    delivery = [(r[2] - r[1]) / 1e6 for r in measured]
    return {"broker": broker, "events": events, "rate": rate, "delivered": len(unique),
            "duplicates": len(measured) - len(unique),
            "publish_call": latency_summary(publish_ms), "delivery": latency_summary(delivery)}


def dapr_pubsub(broker: str, events: int, rate: float, work: Path) -> dict[str, Any]:
    with broker_namespace(broker) as url:
        resources, config = write_resources(work, broker, url)
        log = work / "daprd.log"
        app_port = free_port()
        processes: list[subprocess.Popen[bytes]] = []
        try:
            sub_app = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "_dapr_bench_subscriber:app", "--host",
                 "127.0.0.1", "--port", str(app_port), "--log-level", "warning",
                 "--no-access-log"], cwd=HERE, stdout=log.open("ab"), stderr=subprocess.STDOUT)
            processes.append(sub_app)
            wait_until(lambda: httpx.get(f"http://127.0.0.1:{app_port}/healthz").is_success,
                       30, "subscriber app")
            sub, _, sub_public = start_daprd(SUBSCRIBER, resources, config, log, app_port)
            pub, pub_http, pub_public = start_daprd(PUBLISHER, resources, config, log)
            processes += [sub, pub]
            for port in (sub_public, pub_public):
                wait_until(lambda p=port: httpx.get(  # type: ignore[misc]
                    f"http://127.0.0.1:{p}/v1.0/healthz").status_code == 204, 60, "daprd")
            publish_url = f"http://127.0.0.1:{pub_http}/v1.0/publish/pubsub/{TOPIC}"
            with httpx.Client(timeout=30) as client:
                def publish(event: dict[str, Any]) -> None:
                    response = client.post(publish_url, content=json.dumps(event), headers={
                        "content-type": "application/cloudevents+json"})
                    if response.status_code != 204:
                        raise RuntimeError(f"publish refused: {response.status_code} "
                                           f"{response.text}")

                results = f"http://127.0.0.1:{app_port}/results"
                # Warm-up: until the subscription is live (a queue bound, a consumer group made)
                # events published now could be dropped; negative seqs are left out.
                warm = -1

                def delivered_one() -> bool:
                    nonlocal warm
                    event = cloud_event(warm)
                    warm -= 1
                    publish(event)
                    time.sleep(0.3)
                    return bool(client.get(results).json())

                wait_until(delivered_one, 60, f"{broker} subscription")
                paced(20, rate, lambda e: publish({**e, "data": {**e["data"], "seq": -1000}}))
                publish_ms = paced(events, rate, publish)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    received = client.get(results).json()
                    if len({r[0] for r in received if r[0] >= 0}) >= events:
                        break
                    time.sleep(0.5)
            return summarise(broker, events, rate, publish_ms, received)
        finally:
            for process in reversed(processes):
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()


async def _embedded(events: int, rate: float, work: Path) -> dict[str, Any]:
    from opsconductor_runtime.embedded import EmbeddedHost

    host = EmbeddedHost(work)
    app = make_app()
    host.register(SUBSCRIBER, app)
    await host.open()
    try:
        await host.start_delivery()
        runtime = host.runtime_for(PUBLISHER)
        for _ in range(20):  # warm-up, left out as in the Dapr runs
            event = cloud_event(0)
            await runtime.publish("pubsub", TOPIC, {**event, "data": {**event["data"],
                                                                      "seq": -1}})
            await asyncio.sleep(1 / rate)
        publish_ms = []
        start = time.monotonic()
        for seq in range(events):
            delay = start + seq / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            began = time.perf_counter()
            await runtime.publish("pubsub", TOPIC, cloud_event(seq))
            publish_ms.append((time.perf_counter() - began) * 1000.0)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://bench") as client:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                received = (await client.get("/results")).json()
                if len({r[0] for r in received if r[0] >= 0}) >= events:
                    break
                await asyncio.sleep(0.2)
    finally:
        await host.close()
    return summarise("embedded", events, rate, publish_ms, received)


def embedded_pubsub(events: int, rate: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="opsc-bench-embedded-") as tmp:
        return asyncio.run(_embedded(events, rate, Path(tmp)))


def run_all(brokers: list[str], events: int, rate: float) -> list[dict[str, Any]]:
    rows = []
    for broker in brokers:
        with tempfile.TemporaryDirectory(prefix=f"opsc-bench-{broker}-") as tmp:
            rows.append(dapr_pubsub(broker, events, rate, Path(tmp)))
    rows.append(embedded_pubsub(events, rate))
    return rows
