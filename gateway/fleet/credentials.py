"""Per-agent credentials (issue 19): the secret each agent gets for itself, and the record kept of it.

Pure. With `--agent-credentials per-agent` an agent enrolls with a shared agent key (gateway/auth.py)
and is then offered, in `connection_settings.opamp`, a credential minted for it alone
(gateway/opamp/credential_offers.py). From its first connection with that credential on, the
credential is the only one accepted for its instance_uid (docs/security.md).

A credential is `oagc1.<instance_uid as 32 hex digits>.<secret>`: 256 random bits, base64url. The uid
in it lets any node find the agent's record without a search; the store keeps only SHA-256 digests
(a random 256-bit secret needs no slow hash: nothing can be guessed from its digest), and a digest
covers the whole credential, uid included, so a digest copied to another record verifies nothing.

The record (`AgentCredential`) holds at most two digests: `active`, the credential the agent proved
it holds by connecting with it, and `pending`, one minted and offered but not used yet. An agent is on
its own credential (`per_agent`) once `active` is set; `revoked` refuses its uid altogether.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Kind = Literal["shared", "per_agent", "revoked"]
KINDS: tuple[Kind, ...] = ("shared", "per_agent", "revoked")
PREFIX = "oagc1"
_SECRET_BYTES = 32
_SECRET_CHARS = 43  # unpadded base64url of 32 bytes
_UID_HEX = 32
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_HEX = frozenset("0123456789abcdef")
# Versions the digest's input: a later format never verifies against an older record.
_DIGEST_DOMAIN = b"opamp-gateway/agent-credential/v1\n"
DIGEST_BYTES = 32


class BadCredentialRecord(ValueError):
    """A stored credential record this gateway cannot read."""


@dataclass(frozen=True, slots=True)
class Minted:
    """A credential just minted: the secret (sent once, in an offer, never stored or logged) and its
    digest (stored)."""

    token: str = field(repr=False)
    digest: bytes


@dataclass(frozen=True, slots=True)
class OwnCredential:
    """A client authenticated with an agent's own credential: whose (the uid in it), and which one."""

    uid: bytes
    digest: bytes


@dataclass(frozen=True, slots=True)
class AgentCredential:
    """What the store keeps of an agent's own credentials: digests and flags, never a secret."""

    # The credential in force: the agent connected with it (or reported its offer applied).
    active: bytes | None = None
    # Minted and offered, not used yet: accepted, and the first use makes it the active one.
    pending: bytes | None = None
    # The hash of the `opamp` settings (endpoint, heartbeat interval, a reference to the newest
    # credential: gateway/opamp/credential_offers.py) offered with the newest credential. Settings
    # that differ from it (another --public-opamp-url) need a new credential: a secret is never kept,
    # so it cannot be offered again.
    opamp_hash: bytes | None = None
    # An operator asked for a new credential (POST .../credentials/rotate): minted at the next chance.
    rotate: bool = False
    # DELETE .../credentials: nothing is accepted for the uid, neither a credential nor a shared key.
    revoked: bool = False
    # When the record last changed (seconds since the epoch).
    updated_at: float = 0.0

    @property
    def kind(self) -> Kind:
        if self.revoked:
            return "revoked"
        return "per_agent" if self.active is not None else "shared"

    @property
    def newest(self) -> bytes | None:
        """The digest the agent's offers refer to: the pending credential, else the active one."""
        return self.pending if self.pending is not None else self.active

    def accepts(self, digest: bytes) -> bool:
        """Whether `digest` is one of the credentials accepted now; constant time in both."""
        if self.revoked:
            return False
        found = False
        for known in (self.active, self.pending):
            if known is not None and hmac.compare_digest(known, digest):
                found = True
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "active": _hex(self.active),
            "pending": _hex(self.pending),
            "opamp_hash": _hex(self.opamp_hash),
            "rotate": self.rotate,
            "revoked": self.revoked,
            "updated_at": self.updated_at,
        }

    def encode(self) -> str:
        """Compact JSON, keys sorted: what SQLite stores (and compares)."""
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, raw: Any) -> AgentCredential:
        if not isinstance(raw, dict):
            raise BadCredentialRecord(f"not a credential record: {type(raw).__name__}")
        try:
            return cls(
                active=_unhex(raw.get("active")),
                pending=_unhex(raw.get("pending")),
                opamp_hash=_unhex(raw.get("opamp_hash")),
                rotate=bool(raw.get("rotate", False)),
                revoked=bool(raw.get("revoked", False)),
                updated_at=float(raw.get("updated_at") or 0.0),
            )
        except (TypeError, ValueError) as exc:
            raise BadCredentialRecord(f"not a credential record: {exc}") from None

    @classmethod
    def decode(cls, text: str | None) -> AgentCredential | None:
        if text is None:
            return None
        try:
            return cls.from_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise BadCredentialRecord(f"not a credential record: {exc}") from None


def kind_of(record: AgentCredential | None) -> Kind:
    return "shared" if record is None else record.kind


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _unhex(value: object) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected hex text, got {type(value).__name__}")
    return bytes.fromhex(value)


def digest_of(token: str) -> bytes:
    return hashlib.sha256(_DIGEST_DOMAIN + token.encode()).digest()


def mint(uid: bytes) -> Minted:
    """A new credential for the agent `uid` (16 bytes)."""
    secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).rstrip(b"=").decode("ascii")
    token = f"{PREFIX}.{uid.hex()}.{secret}"
    return Minted(token, digest_of(token))


def looks_like(token: str) -> bool:
    """Whether `token` has a credential's prefix (a shared agent key is tried first all the same)."""
    return token.startswith(PREFIX + ".")


def parse(token: str) -> OwnCredential | None:
    """The uid a well-formed credential names, with its digest; None for anything else."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        return None
    uid_hex, secret = parts[1], parts[2]
    if len(uid_hex) != _UID_HEX or not set(uid_hex) <= _HEX:
        return None
    if len(secret) != _SECRET_CHARS or not set(secret) <= _B64URL:
        return None
    try:
        uid = binascii.unhexlify(uid_hex)
    except binascii.Error:  # pragma: no cover - the characters were checked
        return None
    return OwnCredential(uid, digest_of(token))


# -- what a message may do, given the record of its uid -------------------------------------------

# What the agent is told (HTTP 401 body, WebSocket close reason). None names a secret.
OWN_CREDENTIAL_REQUIRED = (
    "unauthorized: this instance_uid has its own credential; the shared agent key is refused for it"
)
CREDENTIAL_OF_ANOTHER_AGENT = "unauthorized: this credential belongs to another instance_uid"
CREDENTIAL_REFUSED = "unauthorized: this agent credential is no longer accepted"
REVOKED = "unauthorized: the credentials of this instance_uid are revoked"


def refusal(
    record: AgentCredential | None, own: OwnCredential | None, uid: bytes, authenticated: bool
) -> str:
    """Why a message for `uid` is refused ("" if it is not): `own` is the agent credential the client
    authenticated with (None: a shared agent key, or agent keys are off when not `authenticated`)."""
    if own is not None:
        if own.uid != uid:
            return CREDENTIAL_OF_ANOTHER_AGENT
        if record is None or not record.accepts(own.digest):
            return REVOKED if record is not None and record.revoked else CREDENTIAL_REFUSED
        return ""
    if not authenticated or record is None:
        return ""
    if record.revoked:
        return REVOKED
    if record.active is not None:
        return OWN_CREDENTIAL_REQUIRED
    return ""


def activated(record: AgentCredential, digest: bytes, now: float) -> AgentCredential:
    """The record once the agent used (or reported applied) its pending credential `digest`: that one
    is active, the one before it refused from now on."""
    if record.pending is None or not hmac.compare_digest(record.pending, digest):
        return record
    return replace(record, active=record.pending, pending=None, updated_at=now)
