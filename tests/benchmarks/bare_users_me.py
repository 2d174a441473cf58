"""The rival in bench_gateway.py: a bare FastAPI app answering /api/v1/users/me with the same
JSON, no authentication, no routing, no database — the floor any gateway adds to."""

from __future__ import annotations

import json
import os

from fastapi import FastAPI
from fastapi.responses import Response

app = FastAPI()
BODY = json.loads(os.environ.get("BARE_BODY", "{}"))


@app.get("/api/v1/users/me")
async def me() -> Response:
    return Response(json.dumps(BODY), media_type="application/json")
