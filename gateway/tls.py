"""TLS for both ports: uvicorn's ssl_* options from the settings, checked before anything listens.

Both ports serve the same certificate. Client certificates (--tls-client-ca) are required on the OpAMP
port only: that is where agents connect. The admin port authenticates with its token instead, so
Prometheus and the kubelet's probes need no client certificate there.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.settings import Settings


class TLSConfigError(ValueError):
    """A certificate, key or CA file cannot be used; the message names the file and the flag."""


def check(settings: Settings) -> None:
    """Load every TLS file once, so a bad one stops the node with a clear message before it listens."""
    if not settings.tls:
        return
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except FileNotFoundError as exc:
        raise TLSConfigError(f"--tls-cert/--tls-key: {exc.filename}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(
            f"--tls-cert {settings.tls_cert} / --tls-key {settings.tls_key}: not a PEM certificate chain "
            f"and its private key ({exc})"
        ) from None
    if settings.tls_client_ca:
        try:
            context.load_verify_locations(cafile=settings.tls_client_ca)
        except FileNotFoundError:
            raise TLSConfigError(f"--tls-client-ca {settings.tls_client_ca}: no such file") from None
        except (ssl.SSLError, OSError) as exc:
            raise TLSConfigError(
                f"--tls-client-ca {settings.tls_client_ca}: not a PEM CA certificate ({exc})"
            ) from None


def uvicorn_options(settings: Settings, *, client_certs: bool) -> dict[str, Any]:
    """Keyword arguments for uvicorn.Config: none without TLS."""
    if not settings.tls:
        return {}
    options: dict[str, Any] = {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key}
    if client_certs and settings.tls_client_ca:
        options["ssl_ca_certs"] = settings.tls_client_ca
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options
