"""The fleet web UI's static files on the admin port: /ui/ (and / redirects there).

The files live in gateway/ui/ and are read once, when the admin app is built: a request only sends
bytes already in memory. They need no token (they hold no data); the page asks the admin API for
everything, with the token the operator typed. The headers lock the page to this origin: no inline
script or style, no framing, no referrer, and `nosniff` so a file is only ever what its type says.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway.api.errors import error

PREFIX = "/ui/"
FILES_DIR = Path(__file__).resolve().parent.parent / "ui"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Browsers may keep a copy but must ask again (a 304 is cheap): an upgraded node's UI is used at
    # once, and a page never mixes files from two versions for long.
    "Cache-Control": "no-cache",
}


class MissingUiFiles(RuntimeError):
    """The package was installed without gateway/ui/ (a broken wheel or a partial copy)."""


@dataclass(frozen=True, slots=True)
class _File:
    body: bytes
    media_type: str
    etag: str


def load_files(directory: Path = FILES_DIR) -> dict[str, _File]:
    """Every servable file of the UI by its name, with a content-hash ETag."""
    found: dict[str, _File] = {}
    for path in sorted(directory.iterdir()) if directory.is_dir() else ():
        media_type = _TYPES.get(path.suffix)
        if media_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        found[path.name] = _File(body, media_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"')
    if "index.html" not in found:
        raise MissingUiFiles(f"{directory}: the web UI's index.html is missing; reinstall opamp-gateway")
    return found


class UiFiles:
    """The handlers for / and /ui/{name}, over the files `load_files` read."""

    def __init__(self, files: dict[str, _File]) -> None:
        self._files = files

    async def root(self, _request: Request) -> Response:
        return RedirectResponse(PREFIX, status_code=302)

    async def file(self, request: Request) -> Response:
        name = request.path_params.get("name") or "index.html"
        found = self._files.get(name)
        if found is None:
            return error(404, f"no UI file {name!r}")
        headers = {**_SECURITY_HEADERS, "ETag": found.etag}
        if found.etag in _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.media_type, headers=headers)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
