"""The one place where errors become HTTP responses: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from myx.server import errors

log = logging.getLogger(__name__)

STATUS: dict[type[errors.MyxError], int] = {
    errors.NotFound: 404,
    errors.AlreadyExists: 409,
    errors.InvalidInput: 400,
    errors.AuthenticationFailed: 401,
    errors.PermissionDenied: 403,
    errors.StateConflict: 409,
    errors.AgentUnavailable: 502,
    errors.AgentRejected: 502,
    errors.ConfigurationError: 500,
}


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def status_for(exc: errors.MyxError) -> int:
    for cls, status in STATUS.items():
        if isinstance(exc, cls):
            return status
    return 500


async def _domain(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.MyxError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, errors.AuthenticationFailed) else None
    return JSONResponse(error_body(exc.code, exc.message), status_code=status_for(exc), headers=headers)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for item in exc.errors():
        where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body", "query", "path"))
        problems.append(f"{where or 'request'}: {item.get('msg', 'invalid')}")
    message = "; ".join(problems) or "invalid request"
    return JSONResponse(error_body("invalid_input", message), status_code=422)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 401: "unauthenticated"}.get(
        exc.status_code, "http_error"
    )
    return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s: %r", request.method, request.url.path, exc, exc_info=exc)
    return JSONResponse(error_body("internal", "internal error; see the control-server log"), status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.MyxError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
