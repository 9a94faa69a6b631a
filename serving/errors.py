"""Error bodies for bad input: always 4xx JSON naming the field, never a 5xx.

FastAPI's default 422 echoes the offending input back, and json.dumps refuses NaN/inf, so a request
carrying `NaN` would turn into a 500 while rendering its own 422. The handler here keeps `loc`, `msg`
and `type` (the field and the reason) and drops the echoed input.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from serving.schemas import RANK_DECODER, FieldError, RankRequest

M = TypeVar("M", bound=BaseModel)


def _clean(err: dict) -> dict:
    return {"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}


def error_response(exc: Exception) -> JSONResponse | None:
    """The 4xx response for a bad-input exception (as the installed handlers render it), else None."""
    if isinstance(exc, RequestValidationError):
        return JSONResponse({"detail": [_clean(e) for e in exc.errors()]}, status_code=422)
    if isinstance(exc, FieldError):
        return JSONResponse({"detail": exc.detail()}, status_code=exc.status)
    return None


async def _handler(_: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _handler)
    app.add_exception_handler(FieldError, _handler)


def parse_body(model: type[M], body: bytes) -> M:
    """Parse and validate a JSON body in one pass (pydantic-core), which skips building the Python
    objects json.loads would make first. Errors become FastAPI's 422 with `loc` under "body"."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None


def parse_rank(body: bytes) -> Any:
    """A /rank body as a validated request: msgspec's decoder (`schemas.FastRankRequest`, same
    attributes as `RankRequest`) for the common valid case; whatever it refuses goes through
    `parse_body(RankRequest, ...)`, which accepts it or raises the 422 naming the field."""
    try:
        return RANK_DECODER.decode(body)
    except msgspec.DecodeError:  # ValidationError is a subclass
        return parse_body(RankRequest, body)


def document_body(app: FastAPI, path: str, model: type[BaseModel]) -> None:
    """Put `model` in the OpenAPI document as the JSON body of POST `path` (for routes that read the
    raw body through `parse_body`), with its nested models as components."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = base()
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        comps.update(body.pop("$defs", {}))
        comps[model.__name__] = body
        op = schema["paths"][path]["post"]
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
