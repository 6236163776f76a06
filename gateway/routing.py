"""Routes documented by FastAPI, served without its generic per-request machinery.

FastAPI builds the OpenAPI description, validates the declarations and analyses each endpoint's
signature into a ``Dependant`` once, at start-up. Per request its handler then runs a generic
dependency solver, two exit stacks, telemetry hooks and response serialization: several times
what Starlette spends on the same route (benchmarks/README.md, "Gateway overhead", has the
measurements).

``LeanRoute`` keeps FastAPI's analysis and replaces the per-request part with a resolver
compiled from it: the endpoint's ``Request``, its path parameters, its dependencies (``async``
functions, each called once per request, recursively) and at most one body parameter (a
pydantic model read as JSON: orjson, with the standard library as the fallback that keeps
FastAPI's semantics and errors). Anything else (query, header or cookie parameters, generator
dependencies) is refused at start-up. Errors go to the app's exception handlers exactly as
FastAPI's own routes' errors do.

``add_routes`` registers a router's routes on the app directly (FastAPI's ``include_router``
wraps them in a context that rebuilds FastAPI's own handler).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

Cache = dict[Callable[..., Any], Any]  # a dependency's value, once per request
Resolve = Callable[[Request, Cache], Awaitable[Any]]
_MISSING = object()


def _body_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors located in the body, as FastAPI reports them."""
    return [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]


async def read_json(request: Request) -> Any:
    """The body as JSON, failing as FastAPI's own handler does (missing → 422, undecodable →
    422 ``json_invalid``, unreadable → 400)."""
    body = await request.body()
    if not body:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([missing])
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # NaN, lone surrogates, integers past 64 bits: the standard library reads them
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        error = {
            "type": "json_invalid",
            "loc": ("body", exc.pos),
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": exc.msg},
        }
        raise RequestValidationError([error], body=exc.doc) from exc
    except Exception as exc:  # too deep, too many digits, not UTF-8: as FastAPI answers them
        raise HTTPException(400, "There was an error parsing the body") from exc


def _body_model(dependant: Dependant) -> type[BaseModel] | None:
    if not dependant.body_params:
        return None
    (field,) = dependant.body_params
    model = field.field_info.annotation
    if not (inspect.isclass(model) and issubclass(model, BaseModel)):
        raise TypeError(f"{dependant.call}: the body must be one pydantic model")
    return model


def _call(dependant: Dependant) -> Callable[..., Any]:
    if dependant.call is None:
        raise TypeError("a dependency without a callable")
    return dependant.call


def compile_dependant(dependant: Dependant) -> Resolve:
    """The resolver of one endpoint or dependency: its arguments, then its call."""
    unsupported = (dependant.query_params, dependant.header_params, dependant.cookie_params)
    call = dependant.call
    if any(unsupported) or call is None or not inspect.iscoroutinefunction(call):
        raise TypeError(f"LeanRoute cannot serve {call}: only Request, path parameters, one "
                        "body model and async dependencies")  # fmt: skip
    request_name = dependant.request_param_name
    paths = [field.name for field in dependant.path_params]
    subs = [(d.name, _call(d), compile_dependant(d)) for d in dependant.dependencies]
    model = _body_model(dependant)
    body_name = dependant.body_params[0].name if model else None

    async def resolve(request: Request, cache: Cache) -> Any:
        kwargs: dict[str, Any] = {}
        if request_name:
            kwargs[request_name] = request
        if paths:
            found = request.path_params
            kwargs.update((name, found[name]) for name in paths)
        for name, sub_call, sub in subs:
            value = cache.get(sub_call, _MISSING)  # once per request, however many ask
            if value is _MISSING:
                value = cache[sub_call] = await sub(request, cache)
            if name is not None:
                kwargs[name] = value
        if model is not None and body_name is not None:
            try:
                kwargs[body_name] = model.model_validate(await read_json(request))
            except ValidationError as exc:
                raise RequestValidationError(_body_errors(exc)) from None
        return await call(**kwargs)

    return resolve


class LeanRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        resolve = compile_dependant(self.dependant)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            request = Request(scope, receive, send)
            response = await resolve(request, {})
            if not isinstance(response, Response):
                response = JSONResponse(response)
            await response(scope, receive, send)

        self.app = app


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """The router's routes, registered on the app as they are."""
    app.router.routes.extend(router.routes)
