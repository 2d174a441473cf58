"""The built web UI (a single-page app) or, when it is not built, a placeholder page."""

from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

PLACEHOLDER_TEXT = "OpsConductor — the web UI is not built yet; the API is at /api/v1"

# No inline script or style: the page must render under the gateway's CSP.
PLACEHOLDER_HTML = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>OpsConductor</title></head>
<body>
<h1>OpsConductor</h1>
<p>{PLACEHOLDER_TEXT}</p>
</body>
</html>
"""


# Never the UI: the API, and the paths a runtime or sidecar asks an app (/dapr/subscribe...).
RESERVED_PREFIXES = ("/api", "/dapr", "/internal", "/events")


def is_reserved_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in RESERVED_PREFIXES)


class SinglePageApp(StaticFiles):
    """Static files from the build; a path that is no file (a client-side route such as
    /targets/42) gets index.html. Reserved paths and missing files with an extension stay 404."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory=directory, html=False)

    async def get_response(self, path: str, scope: Scope) -> Response:
        if is_reserved_path(scope["path"]):
            raise HTTPException(status_code=404, detail="Nothing at this path")
        try:
            return await super().get_response(path, scope)
        except HTTPException as exc:
            last = scope["path"].rsplit("/", 1)[-1]
            if exc.status_code != 404 or "." in last:
                raise
        response = await super().get_response("index.html", scope)
        # The shell must be re-fetched after a deploy; hashed assets may be cached.
        response.headers["cache-control"] = "no-cache"
        return response


async def placeholder(request: Request) -> Response:
    return HTMLResponse(PLACEHOLDER_HTML, headers={"cache-control": "no-cache"})
