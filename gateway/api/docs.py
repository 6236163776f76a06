"""The API's own documentation, served offline: Swagger UI at ``/docs``, ReDoc at ``/redoc``.

Their JavaScript and CSS come from the ``fastapi-offline`` package's static files (Swagger UI 5
and ReDoc 2, which render OpenAPI 3.1; ``swagger-ui-bundle`` on PyPI ships Swagger UI 4, which
cannot) and are served by the gateway itself under ``/docs/assets/``: nothing is fetched from a
CDN, so the pages work where the gateway's clients have no internet. The OpenAPI document
declares the key as a bearer (or ``X-API-Key``) security scheme on every route the guard
protects, which gives Swagger UI its Authorize button. Public, like the description itself: no
tenant is named in either.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse

from gateway.errors import not_found
from gateway.guard import PUBLIC_PATHS, PUBLIC_PREFIX
from gateway.routing import LeanRoute

router = APIRouter(include_in_schema=False, route_class=LeanRoute)
ASSETS = Path(str(resources.files("fastapi_offline") / "static"))
_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
TITLE = "tritonstack gateway"


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{TITLE} - Swagger UI",
        oauth2_redirect_url="/docs/oauth2-redirect",
        swagger_js_url=f"{PUBLIC_PREFIX}swagger-ui-bundle.js",
        swagger_css_url=f"{PUBLIC_PREFIX}swagger-ui.css",
        swagger_favicon_url=f"{PUBLIC_PREFIX}favicon.png",
    )


@router.get("/docs/oauth2-redirect")
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return get_redoc_html(
        openapi_url="/openapi.json",
        title=f"{TITLE} - ReDoc",
        redoc_js_url=f"{PUBLIC_PREFIX}redoc.standalone.js",
        redoc_favicon_url=f"{PUBLIC_PREFIX}favicon.png",
        with_google_fonts=False,
    )


@router.get(PUBLIC_PREFIX + "{name}")
async def asset(name: str) -> FileResponse:
    """One of the pages' files (a fixed list: nothing else on disk is reachable)."""
    if name not in _FILES:
        raise not_found(f"no documentation asset {name!r}")
    return FileResponse(ASSETS / name, headers={"Cache-Control": "public, max-age=86400"})


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document (built once): the routes, and the key as a security scheme on
    each route the guard authenticates."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        for path, operations in schema.get("paths", {}).items():
            if path in PUBLIC_PATHS:
                continue
            for operation in operations.values():
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
        app.openapi_schema = schema
    return app.openapi_schema
