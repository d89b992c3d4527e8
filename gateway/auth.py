"""Agent keys and admin tokens: loading, checking, re-reading files that change, and the ASGI guards.

A credential file holds one credential per line: the plain key, or `sha256:<64 hex digits>` of it (so
the file need not hold the secret itself). Blank lines and lines starting with `#` are ignored. Keys
are kept only as SHA-256 digests and compared in constant time against every digest; no key, digest
or presented header is ever logged. A file that changes is re-read; a file that is malformed (or
missing, or empty) on re-read keeps the previous credentials and logs an error naming the line.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.periodic import Periodic

if TYPE_CHECKING:
    from gateway.settings import Settings

logger = logging.getLogger("gateway.auth")

_HASHED = re.compile(r"sha256:([0-9a-fA-F]{64})")
AGENT_SCHEMES = ("bearer", "apikey")
ADMIN_SCHEMES = ("bearer",)


class CredentialError(ValueError):
    """A credential file or value cannot be used; the message names the file and line, never a key."""


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _is_token(text: str) -> bool:
    # Printable ASCII without spaces: what survives an HTTP header unchanged.
    return all(33 <= ord(c) <= 126 for c in text)


def parse_credentials(text: str, source: str) -> frozenset[bytes]:
    """The digests of the credentials in a file's text; CredentialError names the first bad line."""
    digests: set[bytes] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line[:7].lower() == "sha256:":
            match = _HASHED.fullmatch(line)
            if match is None:
                raise CredentialError(f"{source}, line {number}: sha256: must be followed by 64 hex digits")
            digests.add(bytes.fromhex(match.group(1)))
        elif _is_token(line):
            digests.add(_digest(line))
        else:
            raise CredentialError(
                f"{source}, line {number}: a key must be one word of printable ASCII (no spaces)"
            )
    if not digests:
        raise CredentialError(f"{source}: holds no key (only blank lines and comments)")
    return frozenset(digests)


def parse_inline(text: str, source: str) -> frozenset[bytes]:
    """Comma-separated credentials from a flag or an environment variable."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    for index, part in enumerate(parts, start=1):
        if not _is_token(part):
            raise CredentialError(f"{source}: key {index} must be one word of printable ASCII (no spaces)")
    return frozenset(_digest(part) for part in parts)


def _signature(path: str) -> tuple[int, int, int]:
    # os.stat follows symlinks: a Kubernetes Secret update swaps the ..data link, so the inode changes.
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


class Credentials:
    """The accepted keys of one kind (agent keys or admin tokens): a file, fixed values, or both."""

    def __init__(self, kind: str, path: str = "", inline: str = "", inline_source: str = "") -> None:
        self.kind = kind
        self.path = path
        self._inline = parse_inline(inline, inline_source) if inline else frozenset()
        self._from_file: frozenset[bytes] = frozenset()
        self._signature: tuple[int, int, int] | None = None
        self.reloads = 0

    @property
    def enabled(self) -> bool:
        return bool(self.path or self._inline)

    @property
    def count(self) -> int:
        return len(self._inline | self._from_file)

    def load(self) -> None:
        """Read the file now; CredentialError if it cannot be used (at startup that is fatal)."""
        if not self.path:
            return
        try:
            signature = _signature(self.path)
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialError(f"{self.path}: cannot read the {self.kind} file: {exc}") from None
        self._from_file = parse_credentials(text, self.path)
        self._signature = signature

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed; True if new credentials are in use."""
        if not self.path:
            return False
        try:
            signature = _signature(self.path)
        except OSError as exc:
            if self._signature is not None:
                logger.error("keeping the previous %s: %s", self.kind, exc)
                self._signature = None
            return False
        if signature == self._signature:
            return False
        try:
            self.load()
        except CredentialError as exc:
            logger.error("keeping the previous %s: %s", self.kind, exc)
            # Do not re-parse (and re-log) the same bad file on every check.
            self._signature = signature
            return False
        self.reloads += 1
        logger.info("re-read %s: %d in use", self.kind, self.count)
        return True

    def check(self, presented: str | None) -> bool:
        """True if `presented` is one of the keys; constant time in the key, whichever matches."""
        if presented is None:
            return False
        digest = _digest(presented)
        found = False
        for known in self._inline | self._from_file:
            found |= hmac.compare_digest(known, digest)
        return found


def presented_key(headers: Headers, schemes: Iterable[str]) -> str | None:
    """The credential in `Authorization: <scheme> <credential>`, if the scheme is one of `schemes`."""
    return key_in(headers.get("authorization"), schemes)


def key_in(authorization: str | None, schemes: Iterable[str]) -> str | None:
    """The credential in an Authorization header's value, if its scheme is one of `schemes`."""
    value = authorization
    if not value:
        return None
    scheme, _, credential = value.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() not in schemes or not credential:
        return None
    return credential


class Auth:
    """Every credential the node checks, and the task that re-reads their files."""

    def __init__(self, agents: Credentials, admin: Credentials, reload_interval: float = 5.0) -> None:
        self.agents = agents
        self.admin = admin
        self._timer = Periodic("auth-reload", reload_interval, self._on_timer)

    @classmethod
    def from_settings(cls, settings: Settings) -> Auth:
        """Load every credential; CredentialError (naming the file and line) if one is unusable."""
        agents = Credentials(
            "agent keys",
            settings.agent_keys_file,
            settings.agent_keys,
            "--agent-keys/OPAMP_GATEWAY_AGENT_KEYS",
        )
        admin = Credentials("admin tokens", settings.admin_token_file)
        agents.load()
        admin.load()
        return cls(agents, admin, settings.auth_reload_interval)

    def reload(self) -> None:
        self.agents.reload_if_changed()
        self.admin.reload_if_changed()

    async def start(self) -> None:
        if self.agents.path or self.admin.path:
            self._timer.start()

    async def stop(self) -> None:
        await self._timer.stop()

    async def _on_timer(self) -> None:
        self.reload()


# -- ASGI guards ----------------------------------------------------------------------------------

OnFailure = Callable[[str], None]


def _reason(headers: Headers, schemes: Iterable[str]) -> tuple[str | None, str]:
    key = presented_key(headers, schemes)
    return key, "missing" if key is None else "invalid"


# What an agent without a valid key is told (401), here and in the raw POST /v1/opamp handler.
AGENT_DENIAL = "unauthorized: send Authorization: Bearer <agent key> (or ApiKey <agent key>)"
AGENT_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="opamp", ApiKey realm="opamp"'}


class AgentGuard:
    """Agents must present a key for POST on the OpAMP path (spec: 401 on failure). WebSocket upgrades
    never reach the ASGI app: transport/websocket.py's OpampEndpoint checks the same keys. Health
    endpoints stay open."""

    def __init__(self, app: ASGIApp, credentials: Credentials, path: str, on_failure: OnFailure) -> None:
        self.app = app
        self._credentials = credentials
        self._path = path
        self._on_failure = on_failure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self._path:
            await self.app(scope, receive, send)
            return
        if not self._credentials.enabled:
            await self.app(scope, receive, send)
            return
        key, reason = _reason(Headers(scope=scope), AGENT_SCHEMES)
        if self._credentials.check(key):
            await self.app(scope, receive, send)
            return
        self._on_failure(reason)
        response = PlainTextResponse(AGENT_DENIAL + "\n", status_code=401, headers=AGENT_CHALLENGE)
        await response(scope, receive, send)


class AdminGuard:
    """`/api/v1/...` needs `Authorization: Bearer <admin token>`; /metrics and health stay open."""

    PREFIX = "/api/"

    def __init__(self, app: ASGIApp, credentials: Credentials, on_failure: OnFailure) -> None:
        self.app = app
        self._credentials = credentials
        self._on_failure = on_failure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not scope["path"].startswith(self.PREFIX)
            or not self._credentials.enabled
        ):
            await self.app(scope, receive, send)
            return
        key, reason = _reason(Headers(scope=scope), ADMIN_SCHEMES)
        if self._credentials.check(key):
            await self.app(scope, receive, send)
            return
        self._on_failure(reason)
        response: Response = JSONResponse(
            {
                "error": {
                    "code": "unauthorized",
                    "message": "send Authorization: Bearer <admin token> (the token in --admin-token-file)",
                }
            },
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="opamp-gateway admin"'},
        )
        await response(scope, receive, send)
