"""Every error a caller can get is RFC 9457 problem+json, and none leaks internals."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from opsconductor_core.app import create_service_app
from opsconductor_core.problems import (
    PROBLEM_BASE,
    PROBLEM_MEDIA_TYPE,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)
from opsconductor_core.settings import PlatformSettings

MAX_BODY = 1024


class ItemCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=20)
    count: int = Field(ge=0)


router = APIRouter()
handled: list[str] = []


@router.post("/items", status_code=201)
async def create_item(item: ItemCreate) -> dict[str, object]:
    handled.append(item.name)
    return item.model_dump()


@router.get("/items/{item_id}")
async def get_item(item_id: uuid.UUID) -> dict[str, str]:
    raise NotFound(f"Item {item_id} does not exist")


@router.post("/upload")
async def upload(request: Request) -> dict[str, int]:
    body = await request.body()
    handled.append("upload")
    return {"size": len(body)}


@router.get("/boom")
async def boom() -> None:
    raise RuntimeError("connect failed for postgresql://svc:hunter2@db/prod")


@router.get("/raise/{kind}")
async def raise_domain(kind: str) -> None:
    errors = {
        "invalid": InvalidInput("The schedule is invalid",
                                errors={"cron": "not a cron expression"}),
        "conflict": Conflict("A target with this name exists"),
        "forbidden": Forbidden("Missing permission: jobs:run"),
        "unauthorized": Unauthorized(),
        "limited": TooManyRequests(retry_after_s=7),
        "unavailable": ServiceUnavailable("The jobs service is not reachable"),
    }
    raise errors[kind]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    handled.clear()
    app = create_service_app("things", PlatformSettings(max_body_bytes=MAX_BODY), routers=[router])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://things") as c:
        yield c


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = response.json()
    assert body["status"] == status
    assert body["type"] == PROBLEM_BASE + slug
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert response.headers.get("x-correlation-id")
    return body


class TestValidation:
    async def test_body_errors_map_each_field_to_a_message(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/items", json={"name": "", "count": -1, "colour": "red"})

        body = assert_problem(response, 422, "validation")
        errors = body["errors"]
        assert isinstance(errors, dict)
        assert set(errors) == {"name", "count", "colour"}
        assert all(isinstance(m, str) and m for m in errors.values())
        assert "20" not in errors["name"] and "1 character" in errors["name"]
        assert handled == []

    async def test_missing_fields_are_named(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/items", json={})

        body = assert_problem(response, 422, "validation")
        assert set(body["errors"]) == {"name", "count"}

    async def test_path_parameter_errors_name_the_parameter(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/items/not-a-uuid")

        body = assert_problem(response, 422, "validation")
        assert set(body["errors"]) == {"item_id"}

    async def test_malformed_json_is_a_422_not_a_500(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/items", content=b"{not json",
                                     headers={"content-type": "application/json"})

        assert_problem(response, 422, "validation")

    async def test_domain_validation_error_keeps_its_field_messages(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/raise/invalid")

        body = assert_problem(response, 422, "validation")
        assert body["errors"] == {"cron": "not a cron expression"}
        assert body["detail"] == "The schedule is invalid"


class TestDomainErrors:
    async def test_not_found_names_the_resource(self, client: httpx.AsyncClient) -> None:
        item_id = uuid.uuid4()

        response = await client.get(f"/items/{item_id}")

        body = assert_problem(response, 404, "not-found")
        assert body["detail"] == f"Item {item_id} does not exist"
        assert body["instance"] == f"/items/{item_id}"
        assert "errors" not in body

    @pytest.mark.parametrize(("kind", "status", "slug"), [
        ("conflict", 409, "conflict"),
        ("forbidden", 403, "forbidden"),
        ("unavailable", 503, "unavailable"),
    ])
    async def test_status_and_type_come_from_the_error(
        self, client: httpx.AsyncClient, kind: str, status: int, slug: str
    ) -> None:
        assert_problem(await client.get(f"/raise/{kind}"), status, slug)

    async def test_unauthorized_asks_for_a_bearer_token(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/raise/unauthorized")

        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")

    async def test_rate_limit_says_when_to_retry(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/raise/limited")

        assert_problem(response, 429, "rate-limited")
        assert response.headers["retry-after"] == "7"


class TestRouting:
    async def test_unknown_path_is_a_problem_404(self, client: httpx.AsyncClient) -> None:
        body = assert_problem(await client.get("/nothing/here"), 404, "not-found")

        assert body["instance"] == "/nothing/here"

    async def test_wrong_method_is_a_problem_405_with_allow(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.delete("/items")

        assert_problem(response, 405, "method-not-allowed")
        assert response.headers["allow"] == "POST"


class TestBodyLimit:
    async def test_declared_length_over_the_cap_is_refused_unread(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.post("/upload", content=b"x" * (MAX_BODY + 1))

        body = assert_problem(response, 413, "payload-too-large")
        assert str(MAX_BODY) in str(body["detail"])
        assert handled == []

    async def test_chunked_body_over_the_cap_is_refused(self, client: httpx.AsyncClient) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(8):
                yield b"y" * 200

        response = await client.post("/upload", content=chunks())

        assert response.request.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in response.request.headers
        assert_problem(response, 413, "payload-too-large")
        assert handled == []

    async def test_chunked_json_over_the_cap_is_a_413_not_a_400(
        self, client: httpx.AsyncClient
    ) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"name": "big", "count": 1, "pad": "'
            for _ in range(8):
                yield b"z" * 200
            yield b'"}'

        response = await client.post("/items", content=chunks(),
                                     headers={"content-type": "application/json"})

        assert_problem(response, 413, "payload-too-large")
        assert handled == []

    async def test_bodies_within_the_cap_pass(self, client: httpx.AsyncClient) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"y" * 200

        exact = await client.post("/upload", content=b"x" * MAX_BODY)
        streamed = await client.post("/upload", content=chunks())

        assert exact.status_code == 200 and exact.json() == {"size": MAX_BODY}
        assert streamed.status_code == 200 and streamed.json() == {"size": 800}


class TestUnexpectedError:
    async def test_500_is_generic_without_trace_or_secret(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/boom", headers={"X-Correlation-ID": "req-500"})

        body = assert_problem(response, 500, "internal")
        assert set(body) == {"type", "title", "status", "detail", "instance"}
        for leak in ("hunter2", "Traceback", "RuntimeError", "postgresql://", 'File "'):
            assert leak not in response.text
        assert response.headers["x-correlation-id"] == "req-500"
