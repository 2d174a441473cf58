"""Durable in-process pub/sub with Dapr's delivery contract.

Subscriptions are read from each app's `/dapr/subscribe`; a published CloudEvent becomes one
queued delivery per matching subscription in runtime.db (so it survives a crash), is POSTed to
the subscriber's route, retried with exponential backoff on failure or `{"status": "RETRY"}`,
and after the last attempt is moved to the subscription's dead-letter topic. A transient event
(a live copy of stored data) is delivered once and never written down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from opsconductor_runtime.embedded.store import HostStore

log = logging.getLogger("opsconductor.embedded.pubsub")


@dataclass(frozen=True)
class Subscription:
    app_id: str
    pubsub: str
    topic: str
    route: str
    dead_letter_topic: str | None


@dataclass
class DeliveryResult:
    status: int
    body: bytes


Deliver = Callable[[str, str, dict[str, Any]], Awaitable[DeliveryResult]]


def parse_subscriptions(app_id: str, declared: Any) -> list[Subscription]:
    subscriptions = []
    for item in declared or []:
        route = item.get("route")
        if not route and isinstance(item.get("routes"), dict):
            route = item["routes"].get("default")
        if not route:
            continue
        subscriptions.append(Subscription(app_id, item["pubsubname"], item["topic"],
                                          route if route.startswith("/") else "/" + route,
                                          item.get("deadLetterTopic")))
    return subscriptions


def outcome(result: DeliveryResult) -> str:
    """Dapr's rules: 2xx is success unless the body says RETRY or DROP; 404 drops; else retry."""
    if 200 <= result.status < 300:
        try:
            status = str(json.loads(result.body or b"{}").get("status", "SUCCESS")).upper()
        except (ValueError, AttributeError):
            status = "SUCCESS"
        return status if status in ("RETRY", "DROP") else "SUCCESS"
    if result.status == 404:
        return "DROP"
    return "RETRY"


class EmbeddedBroker:
    def __init__(self, store: HostStore, deliver: Deliver, *, max_attempts: int = 5,
                 backoff_base_s: float = 0.5, backoff_max_s: float = 30.0,
                 concurrency: int = 32) -> None:
        self._store = store
        self._deliver = deliver
        self.max_attempts = max_attempts
        self._backoff_base = backoff_base_s
        self._backoff_max = backoff_max_s
        self._subscriptions: list[Subscription] = []
        self._ready = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._in_flight: set[int] = set()
        self._slots = asyncio.Semaphore(concurrency)
        self._worker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subscriptions)

    def set_subscriptions(self, subscriptions: list[Subscription]) -> None:
        self._subscriptions = subscriptions
        self._ready.set()

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="embedded-broker")

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def publish(self, pubsub: str, topic: str, event: dict[str, Any], *,
                      transient: bool = False) -> None:
        # Events published while apps start up wait until every subscription is known.
        await self._ready.wait()
        event = {**event, "topic": topic, "pubsubname": pubsub}
        subscribers = [s for s in self._subscriptions if s.pubsub == pubsub and s.topic == topic]
        if not subscribers:
            log.debug("no subscriber", extra={"topic": topic})
            return
        if transient:
            # A copy of stored data: one attempt each, nothing written (a row and its delete per
            # output batch was most of what live output cost the broker).
            for subscriber in subscribers:
                self._spawn(self._attempt_once(subscriber.app_id, subscriber.route, topic, event))
            return
        payload = json.dumps(event)
        now = time.time()
        rows = [(s.app_id, s.route, pubsub, topic, s.dead_letter_topic, payload, now)
                for s in subscribers]
        ids = await self._store.insert(
            "INSERT INTO deliveries (app_id, route, pubsub, topic, dead_letter_topic, payload, "
            "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        if self._worker is None:
            self._wakeup.set()
            return
        # Stored (so a crash delivers them later); the first attempt starts now, without the
        # delivery loop reading them back.
        for delivery_id, (app_id, route, _, _, dead_letter, _, _) in zip(ids, rows, strict=True):
            self._start(delivery_id, app_id, route, pubsub, topic, dead_letter, payload, 0)

    async def pending(self) -> int:
        rows = await self._store.fetch("SELECT COUNT(*) FROM deliveries")
        return int(rows[0][0])

    async def _run(self) -> None:
        await self._ready.wait()
        while True:
            try:
                wait_s = await self._dispatch_due()
            except Exception:
                log.exception("delivery loop error")
                wait_s = 1.0
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel (stop hangs).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wakeup.wait()
            self._wakeup.clear()

    async def _dispatch_due(self) -> float:
        now = time.time()
        rows = await self._store.fetch(
            "SELECT id, app_id, route, pubsub, topic, dead_letter_topic, payload, attempts "
            "FROM deliveries WHERE next_attempt_at <= ? ORDER BY id LIMIT 500", (now,))
        for row in rows:
            self._start(*row)
        upcoming = await self._store.fetch("SELECT MIN(next_attempt_at) FROM deliveries")
        next_at = upcoming[0][0] if upcoming and upcoming[0][0] is not None else None
        return 5.0 if next_at is None else max(0.01, min(5.0, next_at - time.time()))

    def _start(self, delivery_id: int, app_id: str, route: str, pubsub: str, topic: str,
               dead_letter_topic: str | None, payload: str, attempts: int) -> None:
        if delivery_id in self._in_flight:
            return
        self._in_flight.add(delivery_id)
        self._spawn(self._attempt(delivery_id, app_id, route, pubsub, topic, dead_letter_topic,
                                  payload, attempts))

    def _spawn(self, delivery: Coroutine[Any, Any, None]) -> None:
        """Run a delivery in the background; `stop` cancels what is still running."""
        task = asyncio.create_task(delivery)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _try_deliver(self, app_id: str, route: str, topic: str,
                           event: dict[str, Any]) -> str:
        """The subscriber's verdict; RETRY when the delivery itself failed."""
        async with self._slots:
            try:
                return outcome(await self._deliver(app_id, route, event))
            except Exception as exc:
                log.warning("delivery failed", extra={"topic": topic, "app_id": app_id,
                                                      "error": type(exc).__name__})
                return "RETRY"

    async def _attempt_once(self, app_id: str, route: str, topic: str,
                            event: dict[str, Any]) -> None:
        verdict = await self._try_deliver(app_id, route, topic, event)
        if verdict != "SUCCESS":
            log.info("transient event not taken", extra={"topic": topic, "app_id": app_id,
                                                         "verdict": verdict})

    async def _attempt(self, delivery_id: int, app_id: str, route: str, pubsub: str, topic: str,
                       dead_letter_topic: str | None, payload: str, attempts: int) -> None:
        delivered = False
        try:
            verdict = await self._try_deliver(app_id, route, topic, json.loads(payload))
            if verdict in ("SUCCESS", "DROP"):
                if verdict == "DROP":
                    log.warning("subscriber dropped event", extra={"topic": topic, "app_id": app_id})
                await self._store.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))
                delivered = True
                return
            attempts += 1
            if attempts >= self.max_attempts:
                await self._dead_letter(delivery_id, app_id, pubsub, topic, dead_letter_topic,
                                        payload)
                return
            delay = min(self._backoff_max, self._backoff_base * (2 ** (attempts - 1)))
            await self._store.execute(
                "UPDATE deliveries SET attempts = ?, next_attempt_at = ? WHERE id = ?",
                (attempts, time.time() + delay, delivery_id))
        finally:
            self._in_flight.discard(delivery_id)
            # A delivered row is gone: nothing for the loop to look at again. Anything else (a
            # retry scheduled, a failure) changes when it must look next.
            if not delivered:
                self._wakeup.set()

    async def _dead_letter(self, delivery_id: int, app_id: str, pubsub: str, topic: str,
                           dead_letter_topic: str | None, payload: str) -> None:
        log.error("delivery exhausted its retries", extra={
            "topic": topic, "app_id": app_id, "dead_letter_topic": dead_letter_topic})
        if dead_letter_topic and dead_letter_topic != topic:
            await self.publish(pubsub, dead_letter_topic, json.loads(payload))
        await self._store.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))
