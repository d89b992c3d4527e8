"""JSON errors for the admin API: {"error": {"code", "message"}}. Every handler answers its errors
with these."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
}
# Seconds an admin client waits before asking again after a store failure.
_STORE_RETRY_AFTER = "5"


def error(status: int, message: str, code: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code or _CODES.get(status, "error"), "message": message}}, status_code=status
    )


def store_unavailable(message: str) -> JSONResponse:
    """503 + Retry-After: the store failed (or the command could not be kept); retrying later may help."""
    response = error(503, message, "store_unavailable")
    response.headers["Retry-After"] = _STORE_RETRY_AFTER
    return response


def store_down(exc: Exception) -> JSONResponse:
    """`store_unavailable` for a store error, saying what failed."""
    return store_unavailable(f"the store is unavailable: {exc}")


async def http_exception(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail if exc.status_code != 404 else "no such endpoint"
    response = error(exc.status_code, message)
    # Starlette's 405 carries Allow (RFC 9110 requires it); keep whatever headers the exception has.
    response.headers.update(exc.headers or {})
    return response
