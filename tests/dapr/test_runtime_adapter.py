"""The Dapr adapter of the runtime port against real sidecars: state with ETags and TTL on the
PostgreSQL state store, secrets with their scopes, and service invocation carrying context."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from opsconductor_contracts.components import (
    JWT_SIGNING_KEY_SECRET,
    REVOKED_JTI_PREFIX,
    SECRET_STORE,
    STATE_STORE,
)
from opsconductor_core.context import correlation_id_var, traceparent_var
from opsconductor_runtime.dapr import DaprRuntime
from opsconductor_runtime.interface import ETagMismatch, SecretNotFound

from .conftest import MakeRun, gateway_calling_users_echo, received, sdk_pointed_at

pytestmark = pytest.mark.timeout(300)


class TestState:
    async def test_etags_first_write_and_ttl(self, dapr_run: MakeRun) -> None:
        run = await dapr_run()
        auth = await run.start_sidecar("auth")
        await run.wait_healthy(auth)
        key = f"lease:{uuid.uuid4()}"
        with sdk_pointed_at(auth):
            state = DaprRuntime("auth")
            try:
                assert await state.get_state(STATE_STORE, key) is None
                # etag "" = only if absent: the first writer wins, the second is told.
                await state.save_state(STATE_STORE, key, b"replica-1", etag="")
                with pytest.raises(ETagMismatch):
                    await state.save_state(STATE_STORE, key, b"replica-2", etag="")
                first = await state.get_state(STATE_STORE, key)
                assert first is not None and first.value == b"replica-1" and first.etag

                await state.save_state(STATE_STORE, key, b"renewed", etag=first.etag)
                with pytest.raises(ETagMismatch):  # the ETag it had is spent
                    await state.save_state(STATE_STORE, key, b"stale", etag=first.etag)
                with pytest.raises(ETagMismatch):
                    await state.delete_state(STATE_STORE, key, etag=first.etag)
                current = await state.get_state(STATE_STORE, key)
                assert current is not None and current.value == b"renewed"

                await state.delete_state(STATE_STORE, key, etag=current.etag)
                assert await state.get_state(STATE_STORE, key) is None
                await state.delete_state(STATE_STORE, key, etag=current.etag)  # already gone

                # Unconditional writes, binary values, and expiry.
                await state.save_state(STATE_STORE, key, bytes(range(256)))
                await state.save_state(STATE_STORE, key, b"\x00\xff", ttl_s=1)
                assert (await state.get_state(STATE_STORE, key)).value == b"\x00\xff"  # type: ignore[union-attr]
                await asyncio.sleep(2.5)
                assert await state.get_state(STATE_STORE, key) is None
            finally:
                await state.close()

    async def test_every_service_sees_the_same_deny_list(self, dapr_run: MakeRun) -> None:
        """keyPrefix none: a jti revoked through auth's sidecar is revoked for every verifier."""
        run = await dapr_run()
        auth = await run.start_sidecar("auth")
        users = await run.start_sidecar("users")
        await run.wait_healthy(auth)
        await run.wait_healthy(users)
        key = REVOKED_JTI_PREFIX + str(uuid.uuid4())
        with sdk_pointed_at(auth):
            runtime = DaprRuntime("auth")
            await runtime.save_state(STATE_STORE, key, b"1", ttl_s=600)
            await runtime.close()
        with sdk_pointed_at(users):
            runtime = DaprRuntime("users")
            seen = await runtime.get_state(STATE_STORE, key)
            await runtime.close()
        assert seen is not None and seen.value == b"1"


class TestSecrets:
    async def test_only_the_apps_that_need_a_key_can_read_it(self, dapr_run: MakeRun) -> None:
        run = await dapr_run()
        auth = await run.start_sidecar("auth")
        users = await run.start_sidecar("users")
        await run.wait_healthy(auth)
        await run.wait_healthy(users)
        on_disk = json.loads((run.options.data_dir / "secrets.json").read_text())

        with sdk_pointed_at(auth):
            runtime = DaprRuntime("auth")
            try:
                assert await runtime.get_secret(SECRET_STORE, JWT_SIGNING_KEY_SECRET) == \
                    on_disk[JWT_SIGNING_KEY_SECRET]
                with pytest.raises(SecretNotFound):
                    await runtime.get_secret(SECRET_STORE, "no-such-secret")
                # Connection strings resolve inside components only.
                with pytest.raises(SecretNotFound):
                    await runtime.get_secret("platform-secrets", "statestore-connection")
            finally:
                await runtime.close()
        with sdk_pointed_at(users):
            runtime = DaprRuntime("users")
            try:
                with pytest.raises(SecretNotFound):  # the store is not scoped to users
                    await runtime.get_secret(SECRET_STORE, JWT_SIGNING_KEY_SECRET)
            finally:
                await runtime.close()


class TestInvoke:
    async def test_calls_carry_context_and_answers_come_back_whole(self,
                                                                   dapr_run: MakeRun) -> None:
        run = await dapr_run()
        async with gateway_calling_users_echo(run) as (runtime, _):
            traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            cid, tp = correlation_id_var.set("cid-dapr-42"), traceparent_var.set(traceparent)
            try:
                answer = await runtime.invoke(
                    "users", "POST", "/users/search", json_body={"q": "olga"},
                    headers={"X-Forwarded-For": "203.0.113.9", "Accept": "x/y"},
                    params=[("tag", "a"), ("tag", "b")])
                refused = await runtime.invoke("users", "GET", "/users/teapot")
            finally:
                correlation_id_var.reset(cid)
                traceparent_var.reset(tp)

        assert answer.status == 200
        seen = received(answer.body)
        assert (seen["method"], seen["path"]) == ("POST", "/users/search")
        assert seen["query"] == [["tag", "a"], ["tag", "b"]]
        assert json.loads(seen["body"]) == {"q": "olga"}
        headers = seen["headers"]
        assert headers["x-correlation-id"] == "cid-dapr-42"
        assert headers["traceparent"].split("-")[1] == traceparent.split("-")[1]
        assert headers["x-forwarded-for"] == "203.0.113.9"
        assert headers["content-type"].startswith("application/json")
        assert headers["dapr-caller-app-id"] == "gateway"
        # The gateway's own sidecar token never travels on to the called app.
        assert "dapr-api-token" not in headers
        # A refusal by the app is the app's answer, headers and all (not a sidecar error).
        assert refused.status == 418
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["retry-after"] == "7"
        assert refused.json()["title"] == "Teapot"
