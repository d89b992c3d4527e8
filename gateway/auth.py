"""Agent keys and admin tokens: loading, checking, re-reading files that change, and the ASGI guards.

A credential file holds one credential per line: the plain key, or `sha256:<64 hex digits>` of it (so
the file need not hold the secret itself), optionally after a group name: `name:key` or
`name:sha256:<hex>`. Blank lines and lines starting with `#` are ignored; a UTF-8 BOM and CRLF line
ends are accepted. Keys are kept only as SHA-256 digests and compared in constant time against every
digest; no key, digest or presented header is ever logged. Each key has a non-secret key id: its
group's name, else `sha256:` and the first 12 hex digits of its digest; agents are bound to it
(docs/security.md). A file that changes is re-read; a file that is malformed (or missing, or empty) on
re-read is an error log line and a metric, and keeps the previous credentials (or, strict, accepts
none until fixed).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.periodic import Periodic

if TYPE_CHECKING:
    from gateway.settings import Settings

logger = logging.getLogger("gateway.auth")

_HASHED = re.compile(r"sha256:([0-9a-fA-F]{64})")
_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KEY_ID_HEX = 12
AGENT_SCHEMES = ("bearer", "apikey")
ADMIN_SCHEMES = ("bearer",)


class CredentialError(ValueError):
    """A credential file or value cannot be used; the message names the file and line, never a key."""


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _is_token(text: str) -> bool:
    # Printable ASCII without spaces: what survives an HTTP header unchanged.
    return all(33 <= ord(c) <= 126 for c in text)


def valid_key_id(text: str) -> bool:
    """Whether `text` is shaped like a key id: a group name, or `sha256:` and 12 lower-case hex."""
    if text.startswith("sha256:"):
        rest = text[7:]
        return len(rest) == KEY_ID_HEX and all(c in "0123456789abcdef" for c in rest)
    return _GROUP.fullmatch(text) is not None


def key_id_of(digest: bytes) -> str:
    """The non-secret name of a key outside any group: a short prefix of its SHA-256."""
    return "sha256:" + digest.hex()[:KEY_ID_HEX]


def _split_group(line: str) -> tuple[str | None, str]:
    # `name:key` or `name:sha256:<hex>`; a line starting with sha256: is a bare digest.
    if line[:7].lower() == "sha256:":
        return None, line
    head, sep, rest = line.partition(":")
    if sep and _GROUP.fullmatch(head):
        return head, rest.strip()
    return None, line


def parse_credentials(text: str, source: str) -> dict[bytes, str]:
    """The digests of the credentials in a file's text, each with its key id (its group's name, or
    `key_id_of` it); CredentialError names the first bad line. A UTF-8 BOM and CRLF are accepted."""
    keys: dict[bytes, str] = {}
    for number, raw in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        group, line = _split_group(line)
        if line[:7].lower() == "sha256:":
            match = _HASHED.fullmatch(line)
            if match is None:
                raise CredentialError(f"{source}, line {number}: sha256: must be followed by 64 hex digits")
            digest = bytes.fromhex(match.group(1))
        elif line and _is_token(line):
            digest = _digest(line)
        else:
            raise CredentialError(
                f"{source}, line {number}: a key must be one word of printable ASCII (no spaces)"
            )
        keys[digest] = group or key_id_of(digest)
    if not keys:
        raise CredentialError(f"{source}: holds no key (only blank lines and comments)")
    return keys


def parse_inline(text: str, source: str) -> dict[bytes, str]:
    """Comma-separated credentials from a flag or an environment variable (no groups)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    for index, part in enumerate(parts, start=1):
        if not _is_token(part):
            raise CredentialError(f"{source}: key {index} must be one word of printable ASCII (no spaces)")
    return {digest: key_id_of(digest) for digest in map(_digest, parts)}


def _signature(path: str) -> tuple[int, int, int]:
    # os.stat follows symlinks: a Kubernetes Secret update swaps the ..data link, so the inode changes.
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


@dataclass(frozen=True, slots=True)
class KeyMatch:
    """The key a client authenticated with: its digest (to notice its removal) and its key id."""

    digest: bytes
    key_id: str


class Credentials:
    """The accepted keys of one kind (agent keys or admin tokens): a file, fixed values, or both.

    `strict`: while the file is unreadable, empty or malformed, accept nothing (not the previous
    keys). Callbacks given to `on_change` run whenever the accepted keys change, so that sockets
    authenticated with a key that is gone can be closed."""

    def __init__(
        self, kind: str, path: str = "", inline: str = "", inline_source: str = "", *, strict: bool = False
    ) -> None:
        self.kind = kind
        self.path = path
        self.strict = strict
        self._inline = parse_inline(inline, inline_source) if inline else {}
        self._from_file: dict[bytes, str] = {}
        self._signature: tuple[int, int, int] | None = None
        self._broken = False
        self._listeners: list[Callable[[], None]] = []
        self.on_error: Callable[[], None] = _nothing
        self.reloads = 0

    @property
    def enabled(self) -> bool:
        return bool(self.path or self._inline)

    @property
    def count(self) -> int:
        return len(self._inline.keys() | self._from_file.keys())

    @property
    def key_ids(self) -> frozenset[str]:
        """The ids of the keys accepted now (never a key)."""
        return frozenset((self._inline | self._from_file).values())

    @property
    def refusing_all(self) -> bool:
        """Strict mode with a broken file: nothing is accepted until it is fixed."""
        return self._broken

    def on_change(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

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
        self._broken = False

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed; True if new credentials are in use."""
        if not self.path:
            return False
        try:
            signature = _signature(self.path)
        except OSError as exc:
            if self._signature is not None:
                self._failed(str(exc))
                self._signature = None
            return False
        if signature == self._signature:
            return False
        try:
            self.load()
        except CredentialError as exc:
            self._failed(str(exc))
            # Do not re-parse (and re-log) the same bad file on every check.
            self._signature = signature
            return False
        self.reloads += 1
        logger.info("re-read %s: %d in use", self.kind, self.count)
        self._changed()
        return True

    def _failed(self, message: str) -> None:
        self.on_error()
        if self.strict:
            logger.error("refusing every client until the %s file is fixed: %s", self.kind, message)
            self._broken = True
            self._changed()
        else:
            logger.error("keeping the previous %s: %s", self.kind, message)

    def _changed(self) -> None:
        for callback in self._listeners:
            callback()

    def identify(self, presented: str | None) -> KeyMatch | None:
        """The key `presented` is, if it is one of the keys; constant time in the key, whichever
        matches."""
        if presented is None or self._broken:
            return None
        digest = _digest(presented)
        found: KeyMatch | None = None
        for known, key_id in (self._inline | self._from_file).items():
            if hmac.compare_digest(known, digest):
                found = KeyMatch(known, key_id)
        return found

    def check(self, presented: str | None) -> bool:
        """True if `presented` is one of the keys."""
        return self.identify(presented) is not None

    def holds(self, digest: bytes) -> bool:
        """Whether the key with this digest is still accepted."""
        return not self._broken and (digest in self._inline or digest in self._from_file)


def _nothing() -> None:
    return None


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
            strict=settings.strict_key_file,
        )
        admin = Credentials("admin tokens", settings.admin_token_file)
        agents.load()
        admin.load()
        return cls(agents, admin, settings.auth_reload_interval)

    def count_errors(self, count: Callable[[str], None]) -> None:
        """Call `count(kind)` ("agent" or "admin") for every unusable file found on re-read."""
        self.agents.on_error = lambda: count("agent")
        self.admin.on_error = lambda: count("admin")

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
# What a client with a valid key is told when it speaks for an agent bound to another key (HTTP 401;
# a WebSocket is closed with 1008 and this reason).
KEY_MISMATCH = "unauthorized: this instance_uid is bound to another agent key"


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
