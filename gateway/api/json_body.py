"""A PUT's JSON body on the admin API: read up to a limit, parsed, refused with a clear error.

Configs, connection settings and packages take their bodies the same way; each then parses the
object with its own rules."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.api.errors import error

# Few enough digits for int() (past 4,300 it raises); more than any field takes.
_MAX_INT_DIGITS = 30


class RefusedBody(Exception):
    """The body is not taken; `response` says why (413, or 400 naming what is wrong)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class _TooLarge(Exception):
    pass


async def _read(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def json_int(text: str) -> int | float:
    """A JSON integer; one too long for any field (or for int(), past 4,300 digits) is read as a float
    (inf if huge), which the field's own check then refuses by name."""
    return int(text) if len(text) <= _MAX_INT_DIGITS else float(text)


async def read_json(request: Request, limit: int, too_large: str) -> Any:
    """The body parsed as JSON, read no further than `limit` bytes (`too_large`: the 413's message)."""
    try:
        raw = await _read(request, limit)
    except _TooLarge:
        raise RefusedBody(error(413, too_large)) from None
    except ClientDisconnect:
        raise RefusedBody(Response(status_code=400)) from None
    try:
        body = json.loads(raw, parse_int=json_int)
        # JSON may escape lone surrogates (\ud800) that no UTF-8 file or reply can carry.
        json.dumps(body, ensure_ascii=False).encode()
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RefusedBody(error(400, f"body: not valid JSON: {exc}")) from None
    except UnicodeEncodeError:
        raise RefusedBody(
            error(400, "body: contains an escaped lone surrogate, which is not valid Unicode")
        ) from None
    except RecursionError:
        raise RefusedBody(error(400, "body: arrays or objects nested too deeply")) from None
    return body
