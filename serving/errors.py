"""Error bodies for bad input: always 4xx JSON naming the field, never a 5xx.

FastAPI's default 422 echoes the offending input back, and json.dumps refuses NaN/inf, so a request
carrying `NaN` would turn into a 500 while rendering its own 422. The handler here keeps `loc`, `msg`
and `type` (the field and the reason) and drops the echoed input.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from serving.schemas import FieldError


def _clean(err: dict) -> dict:
    return {"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}


async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": [_clean(e) for e in exc.errors()]}, status_code=422)


async def _field(_: Request, exc: FieldError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail()}, status_code=exc.status)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(FieldError, _field)
