"""Keeps the admin port safe from browsers: DNS rebinding, cross-site requests and form posts.

A page on another site can make a browser send requests to the admin port (it is on loopback or in
the cluster, where the browser can reach it): simple cross-site POSTs (text/plain, forms) need no
CORS preflight, and DNS rebinding makes the browser treat the admin port as the attacker's own
origin, so it can read the answers. Three rules, checked before anything else on the admin port:

- 421 if `Host` names neither an IP address, a loopback name, the admin address, nor an
  --admin-allowed-hosts entry (a rebinding page always sends the attacker's host name);
- 403 if `Origin` is present and is not the origin the request was sent to (cross-site);
- 415 if a POST/PUT/PATCH/DELETE carries a `Content-Type` other than application/json, or a body
  without one. No CORS headers are ever sent, so browsers keep every cross-origin answer unreadable.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.errors import error

logger = logging.getLogger("gateway.api.browser_guard")

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "127.0.0.1", "::1"})
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_UNSPECIFIED = frozenset({"", "0.0.0.0", "::"})


def host_name(host: str) -> str:
    """The name in a Host header or an Origin's authority, without the port or IPv6 brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def allowed_hosts(admin_host: str, extra: Iterable[str]) -> frozenset[str]:
    """The host names the admin port answers to (IP addresses are always answered)."""
    names = set(LOOPBACK_NAMES)
    if admin_host not in _UNSPECIFIED:
        names.add(host_name(admin_host))
    names.update(host_name(entry) for entry in extra if entry.strip())
    return frozenset(names)


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json"


def _has_body(headers: Headers) -> bool:
    if "transfer-encoding" in headers:
        return True
    length = headers.get("content-length", "0").strip()
    return length not in ("", "0")


class BrowserGuard:
    """The admin port's Host, Origin and Content-Type rules (see the module docstring)."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str]) -> None:
        self.app = app
        self._hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, code, message = refusal
        await error(status, message, code)(scope, receive, send)

    def _refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        name = host_name(host)
        if not (name in self._hosts or _is_ip(name)):
            logger.warning("refused an admin request for host %r (DNS rebinding?)", name[:100])
            return (
                421,
                "misdirected_request",
                "this admin port answers only to its own address, loopback names and --admin-allowed-hosts",
            )
        origin = headers.get("origin")
        if origin is not None and not self._same_origin(origin, host, scope):
            logger.warning("refused a cross-site admin request from origin %r", origin[:100])
            return 403, "forbidden", "cross-site requests to the admin port are refused"
        if scope["method"] in _STATE_CHANGING:
            content_type = headers.get("content-type")
            if (content_type is None and _has_body(headers)) or (
                content_type is not None and not _is_json(content_type)
            ):
                return (
                    415,
                    "unsupported_media_type",
                    "send Content-Type: application/json (or no body)",
                )
        return None

    @staticmethod
    def _same_origin(origin: str, host: str, scope: Scope) -> bool:
        scheme, sep, authority = origin.strip().lower().partition("://")
        if not sep or scheme != scope.get("scheme", "http"):
            return False
        return authority.rstrip("/") == host.strip().lower()
